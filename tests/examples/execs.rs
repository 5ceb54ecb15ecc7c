//! Execs into one running container through berthd's Tasks API, for bench/shim.sh:
//! `execs SOCKET NAMESPACE CONTAINER COUNT` runs COUNT execs of `true`, one after another
//! (Exec, Start, Wait, DeleteProcess, no stdio), and prints `median_ms p99_ms wall_s`.

use std::time::Instant;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, StartRequest, WaitRequest,
};
use containerd_client::tonic::Request;

macro_rules! in_ns {
    ($r:expr, $ns:expr) => {
        containerd_client::with_namespace!($r, $ns)
    };
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, ns, id, count] = &args[..] else {
        eprintln!("usage: execs SOCKET NAMESPACE CONTAINER COUNT");
        std::process::exit(2);
    };
    let count: usize = count.parse().expect("COUNT");
    let ch = containerd_client::connect(socket).await.expect("connect");
    let mut containers = ContainersClient::new(ch.clone());
    let mut tasks = TasksClient::new(ch);
    let c = containers
        .get(in_ns!(GetContainerRequest { id: id.clone() }, ns))
        .await
        .expect("get container")
        .into_inner()
        .container
        .expect("container");
    let spec: serde_json::Value =
        serde_json::from_slice(&c.spec.expect("spec").value).expect("spec JSON");
    let mut process = spec["process"].clone();
    process["args"] = serde_json::json!(["true"]);
    process["terminal"] = serde_json::json!(false);
    let any = prost_types::Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
        value: serde_json::to_vec(&process).unwrap(),
    };
    let mut times = Vec::with_capacity(count);
    let wall = Instant::now();
    for i in 0..count {
        let exec_id = format!("bench-{i}");
        let t = Instant::now();
        tasks
            .exec(in_ns!(
                ExecProcessRequest {
                    container_id: id.clone(),
                    exec_id: exec_id.clone(),
                    spec: Some(any.clone()),
                    ..Default::default()
                },
                ns
            ))
            .await
            .expect("exec");
        tasks
            .start(in_ns!(
                StartRequest {
                    container_id: id.clone(),
                    exec_id: exec_id.clone(),
                },
                ns
            ))
            .await
            .expect("start");
        let w = tasks
            .wait(in_ns!(
                WaitRequest {
                    container_id: id.clone(),
                    exec_id: exec_id.clone(),
                },
                ns
            ))
            .await
            .expect("wait")
            .into_inner();
        assert_eq!(w.exit_status, 0, "exec {exec_id} failed");
        tasks
            .delete_process(in_ns!(
                DeleteProcessRequest {
                    container_id: id.clone(),
                    exec_id,
                },
                ns
            ))
            .await
            .expect("delete process");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    println!("{median:.2} {p99:.2} {:.1}", wall.elapsed().as_secs_f64());
}
