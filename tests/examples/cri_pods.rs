//! Pod startup through CRI, for bench/cri.sh, as the kubelet starts a pod: RunPodSandbox,
//! CreateContainer, StartContainer of a sleeper whose image is present.
//!
//! `cri_pods start SOCKET IMAGE COUNT CONCURRENCY LOGDIR CGROUP_PARENT TAG` starts COUNT
//! pods, CONCURRENCY at a time, and prints `median_ms p99_ms wall_s` of the per-pod times,
//! `run MS create MS start MS` (each call's median), then one line per pod: `ms`. `cri_pods teardown SOCKET` stops and removes every pod,
//! ten at a time, and prints `wall_s`. `cri_pods pull SOCKET IMAGE` pulls through the
//! ImageService, retrying while the runtime is still coming up.

use std::time::{Duration, Instant};

use berth_e2e::cri::{container_config, pod_config, v1 as cri};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

type Client = RuntimeServiceClient<Channel>;

fn fail(what: &str, e: tonic::Status) -> ! {
    eprintln!("cri_pods: {what}: {:?}: {}", e.code(), e.message());
    std::process::exit(1)
}

/// A pod's RunPodSandbox, CreateContainer and StartContainer times.
type Phases = [Duration; 3];

async fn one_pod(
    mut c: Client,
    image: String,
    logs: String,
    parent: String,
    name: String,
) -> Phases {
    let t = Instant::now();
    let mut pod = pod_config(&name, std::path::Path::new(&logs), &parent);
    if let Some(m) = pod.metadata.as_mut() {
        m.uid = format!("{name}-{}", std::process::id());
    }
    let id = c
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| fail(&format!("run pod {name}"), e))
        .into_inner()
        .pod_sandbox_id;
    let ran = t.elapsed();
    let mut config = container_config("sleeper", &image, "");
    config.command = vec!["sleep".into(), "3600".into()];
    if let Some(l) = config.linux.as_mut() {
        // The same explicit profile to every runtime (they differ on an unset one).
        if let Some(sc) = l.security_context.as_mut() {
            sc.seccomp = Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            });
        }
        // A BestEffort pod's container, as the kubelet sends it.
        l.resources = Some(cri::LinuxContainerResources {
            oom_score_adj: 1000,
            cpu_shares: 2,
            ..Default::default()
        });
    }
    let cid = c
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: id,
            config: Some(config),
            sandbox_config: Some(pod),
        })
        .await
        .unwrap_or_else(|e| fail(&format!("create container in {name}"), e))
        .into_inner()
        .container_id;
    let created = t.elapsed();
    c.start_container(cri::StartContainerRequest { container_id: cid })
        .await
        .unwrap_or_else(|e| fail(&format!("start container in {name}"), e));
    [ran, created - ran, t.elapsed() - created]
}

async fn start(args: &[String]) {
    let [socket, image, count, conc, logs, parent, tag] = args else {
        eprintln!("usage: cri_pods start SOCKET IMAGE COUNT CONCURRENCY LOGDIR CGROUP_PARENT TAG");
        std::process::exit(2);
    };
    let count: usize = count.parse().expect("COUNT");
    let conc: usize = conc.parse().expect("CONCURRENCY");
    let ch = containerd_client::connect(socket).await.expect("connect");
    let c = Client::new(ch);
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(conc));
    let wall = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..count {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let f = one_pod(
            c.clone(),
            image.clone(),
            logs.clone(),
            parent.clone(),
            format!("{tag}-{i}"),
        );
        tasks.push(tokio::spawn(async move {
            let d = f.await;
            drop(permit);
            d
        }));
    }
    let mut times = Vec::new();
    for t in tasks {
        times.push(t.await.unwrap());
    }
    let wall = wall.elapsed();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let sorted = |f: &dyn Fn(&Phases) -> Duration| {
        let mut v: Vec<Duration> = times.iter().map(f).collect();
        v.sort();
        v
    };
    let total = sorted(&|p| p.iter().sum());
    let median = ms(total[total.len() / 2]);
    let p99 = ms(total[(total.len() * 99).div_ceil(100) - 1]);
    println!("{median:.1} {p99:.1} {:.3}", wall.as_secs_f64());
    let phase = |i: usize| {
        let v = sorted(&|p| p[i]);
        ms(v[v.len() / 2])
    };
    println!(
        "run {:.1} create {:.1} start {:.1}",
        phase(0),
        phase(1),
        phase(2)
    );
    for t in &times {
        println!("{:.1}", ms(t.iter().sum()));
    }
}

async fn teardown(args: &[String]) {
    let [socket] = args else {
        eprintln!("usage: cri_pods teardown SOCKET");
        std::process::exit(2);
    };
    let ch = containerd_client::connect(socket).await.expect("connect");
    let mut c = Client::new(ch);
    let wall = Instant::now();
    let pods = c
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap_or_else(|e| fail("list pods", e))
        .into_inner()
        .items;
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(10));
    let mut tasks = Vec::new();
    for p in pods {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: p.id.clone(),
            })
            .await
            .unwrap_or_else(|e| fail(&format!("stop pod {}", p.id), e));
            c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: p.id.clone(),
            })
            .await
            .unwrap_or_else(|e| fail(&format!("remove pod {}", p.id), e));
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!("{:.3}", wall.elapsed().as_secs_f64());
}

async fn pull(args: &[String]) {
    let [socket, image] = args else {
        eprintln!("usage: cri_pods pull SOCKET IMAGE");
        std::process::exit(2);
    };
    let mut last = None;
    for _ in 0..50 {
        if let Ok(ch) = containerd_client::connect(socket).await {
            let mut c = k8s_cri::v1::image_service_client::ImageServiceClient::new(ch);
            let req = cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: None,
            };
            match c.pull_image(req).await {
                Ok(_) => return,
                Err(e) => last = Some(e),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fail(
        &format!("pull {image}"),
        last.unwrap_or_else(|| tonic::Status::unavailable("no connection")),
    )
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("start") => start(&args[2..]).await,
        Some("teardown") => teardown(&args[2..]).await,
        Some("pull") => pull(&args[2..]).await,
        _ => {
            eprintln!("usage: cri_pods start|teardown|pull SOCKET ...");
            std::process::exit(2);
        }
    }
}
