//! Pod startup through CRI, for bench/cri.sh, as the kubelet starts a pod: RunPodSandbox,
//! CreateContainer, StartContainer of a sleeper whose image is present.
//!
//! `cri_pods start SOCKET IMAGE COUNT CONCURRENCY LOGDIR CGROUP_PARENT TAG` starts COUNT
//! pods, CONCURRENCY at a time, and prints `median_ms p99_ms wall_s` of the per-pod times,
//! `run MS create MS start MS` (each call's median), then one line per pod: `ms`. `cri_pods teardown SOCKET` stops and removes every pod,
//! ten at a time, and prints `wall_s`. `cri_pods pull SOCKET IMAGE` pulls through the
//! ImageService, retrying while the runtime is still coming up.
//!
//! `cri_pods stream SOCKET IMAGE ROUNDS LOGDIR DAEMON_PID`, for bench/streaming.sh: in one
//! pod, ROUNDS ExecSync and ROUNDS streamed execs (SPDY) of `true`, one port forward
//! reading 256 MiB from a server in the pod, and the memory (PSS) of the daemon and its
//! shims before and with 20 exec streams open. Prints `execsync MS...`, `exec MS...`,
//! `forward MBPS`, `memory STREAMS DAEMON_BEFORE DAEMON_WITH SHIMS_BEFORE SHIMS_WITH` (KiB).

use std::time::{Duration, Instant};

use berth_e2e::cri::{container_config, pod_config, v1 as cri};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

type Client = RuntimeServiceClient<Channel>;

fn fail(what: &str, e: tonic::Status) -> ! {
    eprintln!("cri_pods: {what}: {:?}: {}", e.code(), e.message());
    std::process::exit(1)
}

/// The same explicit seccomp profile to every runtime (they differ on an unset one:
/// berthd applies its default, containerd 1.6 none), as the kubelet sends it for pods
/// with `seccompProfile: RuntimeDefault`.
fn runtime_default(mut config: cri::ContainerConfig) -> cri::ContainerConfig {
    if let Some(sc) = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
    {
        sc.seccomp = Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        });
    }
    config
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
    let mut config = runtime_default(config);
    if let Some(l) = config.linux.as_mut() {
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

fn pss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// PSS of the shims serving the daemon on `socket`.
fn shims_pss(socket: &str) -> u64 {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            let c = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let c = String::from_utf8_lossy(&c);
            c.contains("containerd-shim") && c.contains(socket)
        })
        .map(pss)
        .sum()
}

async fn stream(args: &[String]) {
    use berth_e2e::stream::{Session, SpdyForward, Transport, Want};
    let [socket, image, rounds, logs, daemon] = args else {
        eprintln!("usage: cri_pods stream SOCKET IMAGE ROUNDS LOGDIR DAEMON_PID");
        std::process::exit(2);
    };
    let rounds: usize = rounds.parse().expect("ROUNDS");
    let daemon: u32 = daemon.parse().expect("DAEMON_PID");
    let ch = containerd_client::connect(socket).await.expect("connect");
    let mut c = Client::new(ch);
    let mut pod = pod_config("stream", std::path::Path::new(logs), "");
    if let Some(m) = pod.metadata.as_mut() {
        m.uid = format!("stream-{}", std::process::id());
    }
    let pod_id = c
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| fail("run pod", e))
        .into_inner()
        .pod_sandbox_id;
    let mut ids = Vec::new();
    for (name, script) in [
        ("sleeper", "exec sleep 3600"),
        (
            "source",
            "while true; do head -c 268435456 /dev/zero | nc -l -p 5000; done",
        ),
    ] {
        let cid = c
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(runtime_default(container_config(name, image, script))),
                sandbox_config: Some(pod.clone()),
            })
            .await
            .unwrap_or_else(|e| fail(&format!("create {name}"), e))
            .into_inner()
            .container_id;
        c.start_container(cri::StartContainerRequest {
            container_id: cid.clone(),
        })
        .await
        .unwrap_or_else(|e| fail(&format!("start {name}"), e));
        ids.push(cid);
    }
    let sleeper = ids[0].clone();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;

    let mut sync = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let r = c
            .exec_sync(cri::ExecSyncRequest {
                container_id: sleeper.clone(),
                cmd: vec!["true".into()],
                timeout: 10,
            })
            .await
            .unwrap_or_else(|e| fail("ExecSync", e))
            .into_inner();
        assert_eq!(r.exit_code, 0);
        sync.push(ms(t.elapsed()));
    }
    let want = Want {
        stdin: false,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let exec_req = |cmd: &[&str], want: Want| cri::ExecRequest {
        container_id: sleeper.clone(),
        cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
        tty: want.tty,
        stdin: want.stdin,
        stdout: want.stdout,
        stderr: want.stderr,
    };
    let mut streamed = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let url = c
            .exec(exec_req(&["true"], want))
            .await
            .unwrap_or_else(|e| fail("Exec", e))
            .into_inner()
            .url;
        let s = Session::open(&url, Transport::Spdy("v4.channel.k8s.io"), want)
            .await
            .unwrap_or_else(|e| panic!("exec stream: {e:?}"));
        let out = s.finish(Duration::from_secs(30)).await;
        assert_eq!(out.status()["status"], "Success", "{}", out.error);
        streamed.push(ms(t.elapsed()));
    }
    println!(
        "execsync {}",
        sync.iter()
            .map(|v| format!("{v:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "exec {}",
        streamed
            .iter()
            .map(|v| format!("{v:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );

    // 256 MiB from the pod through one forwarded connection.
    const TOTAL: usize = 256 << 20;
    let started = Instant::now();
    let rate = loop {
        let url = c
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: pod_id.clone(),
                port: vec![5000],
            })
            .await
            .unwrap_or_else(|e| fail("PortForward", e))
            .into_inner()
            .url;
        let mut f = SpdyForward::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("port forward: {e:?}"));
        let mut data = f.open_data(5000).await;
        let t = Instant::now();
        let mut got = 0usize;
        while got < TOTAL {
            match data.rx.recv().await {
                Some(b) => got += b.len(),
                None => break,
            }
        }
        let secs = t.elapsed().as_secs_f64();
        data.tx.reset().await;
        f.close().await;
        if got >= TOTAL {
            break TOTAL as f64 / secs / 1e6;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no data from the pod's server"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("forward {rate:.1}");

    // Memory with exec streams open (each a `cat` waiting on its stdin).
    const OPEN: usize = 20;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (d0, s0) = (pss(daemon), shims_pss(socket));
    let interactive = Want {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let mut open = Vec::new();
    for _ in 0..OPEN {
        let url = c
            .exec(exec_req(&["cat"], interactive))
            .await
            .unwrap_or_else(|e| fail("Exec", e))
            .into_inner()
            .url;
        let mut s = Session::open(&url, Transport::Spdy("v4.channel.k8s.io"), interactive)
            .await
            .unwrap_or_else(|e| panic!("exec stream: {e:?}"));
        s.send(b"up\n").await;
        s.read_until("up", Duration::from_secs(10)).await;
        open.push(s);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (d1, s1) = (pss(daemon), shims_pss(socket));
    println!("memory {OPEN} {d0} {d1} {s0} {s1}");
    for s in &open {
        s.close_stdin().await;
    }
    for s in open {
        s.finish(Duration::from_secs(10)).await;
    }
    let _ = c
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await;
    let _ = c
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id,
        })
        .await;
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
        Some("stream") => stream(&args[2..]).await,
        _ => {
            eprintln!("usage: cri_pods start|teardown|pull SOCKET ...");
            std::process::exit(2);
        }
    }
}
