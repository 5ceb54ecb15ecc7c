//! Kubernetes' CRI on berthd, driven as the kubelet drives it (k8s-cri's client on berthd's
//! socket): images pulled from a registry on loopback, pods on a CNI bridge network of the
//! test's own with a port mapping, containers sharing the pod's localhost, ExecSync, logs
//! in the kubelet's format, exit codes, cgroup limits, users and read-only roots, and a
//! teardown that leaves nothing. Needs root.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use berth_e2e::cri::{container_config, pod_config, v1 as cri, CniNet, Cri};
use berth_e2e::*;
use containerd_client::tonic::Code;

fn busybox_registry() -> (Registry, String) {
    let reg = Registry::start();
    let reference = OciImage::build(&[busybox_layer()]).push(&reg, "busybox");
    (reg, reference)
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn http_get(addr: &str) -> std::io::Result<String> {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn cgroup_file(controller: &str, parent: &str, id: &str, file: &str) -> String {
    std::fs::read_to_string(format!("/sys/fs/cgroup/{controller}{parent}/{id}/{file}"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Everything a pod holds on the host, to check that a teardown left none of it.
fn leftovers(d: &Berthd, net: &CniNet) -> (Vec<String>, usize, Vec<String>) {
    (d.leftover_mounts(), net.ports(), net.allocated())
}

#[test]
fn root_a_pod_runs_its_containers_on_the_network_and_leaves_nothing() {
    // Declared first so that it is dropped last, after the pods below it are gone.
    let cgroup = CgroupParent::new("pod");
    let (_reg, image) = busybox_registry();
    let net = CniNet::new(1, None);
    let mut d = Berthd::start_with_config(&net.berthd_config());
    let mut c = Cri::connect(&d.socket);
    let id = c
        .pull(&image)
        .unwrap_or_else(|e| panic!("pull: {e:?}\n{}", d.log()));
    assert!(id.starts_with("sha256:"), "{id}");

    let logs = tempfile::tempdir().unwrap();
    let parent = cgroup.0.clone();
    let mut pod = pod_config("web", logs.path(), &parent);
    pod.port_mappings = vec![cri::PortMapping {
        protocol: 0,
        container_port: 80,
        host_port: 18080 + (std::process::id() % 1000) as i32,
        host_ip: String::new(),
    }];
    let pod_id = c
        .run_pod(pod.clone())
        .unwrap_or_else(|e| panic!("run pod: {e:?}\n{}", d.log()));
    let st = c.pod_status(&pod_id);
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    let ip = st.network.unwrap().ip;
    assert!(ip.starts_with(&net.subnet_prefix), "pod ip {ip}");

    // A web server, and a neighbour that reaches it on the pod's localhost.
    let mut web = container_config(
        "httpd",
        &image,
        "busybox mkdir -p /www && echo hello-from-pod > /www/index.html && exec busybox httpd -f -p 80 -h /www",
    );
    let mut linux = web.linux.clone().unwrap();
    linux.resources = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        ..Default::default()
    });
    web.linux = Some(linux);
    let web_id = c
        .create(&pod_id, web, &pod)
        .unwrap_or_else(|e| panic!("create: {e:?}\n{}", d.log()));
    c.start(&web_id)
        .unwrap_or_else(|e| panic!("start: {e:?}\n{}", d.log()));
    let side = c
        .create(
            &pod_id,
            container_config("side", &image, "exec sleep 3600"),
            &pod,
        )
        .unwrap();
    c.start(&side).unwrap();
    let mut last = None;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        let r = c.exec(
            &side,
            &["busybox", "wget", "-qO-", "http://127.0.0.1:80/"],
            5,
        );
        let done = r.as_ref().is_ok_and(|r| r.exit_code == 0);
        last = Some(r);
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let web_status = c.status(&web_id);
    assert!(
        last.as_ref()
            .is_some_and(|r| r.as_ref().is_ok_and(|r| r.exit_code == 0)),
        "httpd never answered: {last:?}\n{web_status:?}\n{}",
        d.log()
    );
    let r = c
        .exec(
            &side,
            &["busybox", "wget", "-qO-", "http://127.0.0.1:80/"],
            5,
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&r.stdout), "hello-from-pod\n");
    let r = c
        .exec(&side, &["sh", "-c", "echo err >&2; exit 4"], 5)
        .unwrap();
    assert_eq!((r.exit_code, r.stderr.as_slice()), (4, &b"err\n"[..]));

    // From the host: the pod IP, and the mapped port on the bridge's address.
    let body = http_get(&format!("{ip}:80")).unwrap();
    assert!(body.contains("hello-from-pod"), "{body}");
    let gateway = format!("{}.1", net.subnet_prefix);
    let host_port = pod.port_mappings[0].host_port;
    let body =
        http_get(&format!("{gateway}:{host_port}")).unwrap_or_else(|e| panic!("host port: {e}"));
    assert!(body.contains("hello-from-pod"), "{body}");

    // Limits are in the container's cgroup.
    assert_eq!(
        cgroup_file("memory", &parent, &web_id, "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(
        cgroup_file("cpu", &parent, &web_id, "cpu.cfs_quota_us"),
        "50000"
    );
    assert_eq!(cgroup_file("cpu", &parent, &web_id, "cpu.shares"), "512");

    // An ExecSync that times out kills only itself.
    let e = c.exec(&side, &["sleep", "30"], 1).unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert_eq!(
        c.status(&side).state,
        cri::ContainerState::ContainerRunning as i32
    );

    // Logs in the kubelet's format, partial lines included, and reopened after rotation.
    let talk = c
        .create(
            &pod_id,
            container_config(
                "talk",
                &image,
                "echo out-line; echo err-line >&2; while true; do echo tick; sleep 0.1; done",
            ),
            &pod,
        )
        .unwrap();
    c.start(&talk).unwrap();
    let log = logs.path().join("talk/0.log");
    wait_until("log lines", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains(" stdout F tick"))
    });
    let text = std::fs::read_to_string(&log).unwrap();
    for want in [" stdout F out-line\n", " stderr F err-line\n"] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    let first = text.lines().next().unwrap();
    let ts = first.split(' ').next().unwrap();
    assert!(ts.contains('T') && ts.ends_with('Z'), "{first}");
    std::fs::rename(&log, logs.path().join("talk/0.log.1")).unwrap();
    let req = cri::ReopenContainerLogRequest {
        container_id: talk.clone(),
    };
    c.call(|x| x.runtime.reopen_container_log(req)).unwrap();
    wait_until("the reopened log", Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains(" stdout F tick"))
    });

    // An exit code, with its time and reason.
    let seven = c
        .create(
            &pod_id,
            container_config(
                "seven",
                &image,
                "printf '%020000d\\n' 0; printf partial-end; exit 7",
            ),
            &pod,
        )
        .unwrap();
    c.start(&seven).unwrap();
    wait_until("exit 7", Duration::from_secs(10), || {
        c.status(&seven).state == cri::ContainerState::ContainerExited as i32
    });
    let s = c.status(&seven);
    assert_eq!((s.exit_code, s.reason.as_str()), (7, "Error"));
    assert!(s.finished_at >= s.started_at && s.started_at > 0);
    // A line longer than 16 KiB is cut into a partial piece; text without a newline at the
    // end is partial too.
    let text = std::fs::read_to_string(logs.path().join("seven/0.log")).unwrap();
    let tags: Vec<(&str, usize)> = text
        .lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let (_, _, tag, msg) = (
                f.next(),
                f.next(),
                f.next().unwrap(),
                f.next().unwrap_or(""),
            );
            (tag, msg.len())
        })
        .collect();
    assert_eq!(
        tags,
        [
            ("P", 16384),
            ("F", 20000 - 16384),
            ("P", "partial-end".len())
        ],
        "{text}"
    );

    // uid 1000 on a read-only root cannot write to /.
    let mut locked = container_config("locked", &image, "exec sleep 3600");
    let mut sc = locked.linux.clone().unwrap().security_context.unwrap();
    sc.run_as_user = Some(cri::Int64Value { value: 1000 });
    sc.readonly_rootfs = true;
    locked.linux.as_mut().unwrap().security_context = Some(sc);
    let locked = c.create(&pod_id, locked, &pod).unwrap();
    c.start(&locked).unwrap();
    let r = c.exec(&locked, &["id", "-u"], 5).unwrap();
    assert_eq!(String::from_utf8_lossy(&r.stdout), "1000\n");
    let r = c.exec(&locked, &["busybox", "touch", "/probe"], 5).unwrap();
    assert_ne!(r.exit_code, 0);
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("Read-only file system"),
        "{r:?}"
    );

    // The same pod is listed, with its containers, after berthd is killed and restarted.
    d.kill();
    d.spawn();
    let mut c2 = Cri::connect(&d.socket);
    assert_eq!(
        c2.pod_status(&pod_id).state,
        cri::PodSandboxState::SandboxReady as i32
    );
    assert_eq!(
        c2.status(&web_id).state,
        cri::ContainerState::ContainerRunning as i32
    );
    assert_eq!(c2.status(&seven).exit_code, 7);
    let r = c2
        .exec(
            &side,
            &["busybox", "wget", "-qO-", "http://127.0.0.1:80/"],
            5,
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&r.stdout), "hello-from-pod\n");
    let stop = cri::StopContainerRequest {
        container_id: web_id.clone(),
        timeout: 2,
    };
    c2.call(|x| x.runtime.stop_container(stop)).unwrap();
    assert_eq!(
        c2.status(&web_id).state,
        cri::ContainerState::ContainerExited as i32
    );

    // Teardown leaves no namespace, veth, address, mount, cgroup or shim.
    c2.stop_pod(&pod_id).unwrap();
    c2.stop_pod(&pod_id).unwrap();
    c2.remove_pod(&pod_id).unwrap();
    c2.remove_pod(&pod_id).unwrap();
    assert_eq!(leftovers(&d, &net), (vec![], 0, vec![]));
    for id in [&web_id, &side, &talk, &seven, &locked] {
        assert!(!std::path::Path::new(&format!("/sys/fs/cgroup/memory{parent}/{id}")).exists());
    }
    let shims = std::process::Command::new("pgrep")
        .args([
            "-f",
            &format!("containerd-shim.*-address {}", d.socket.display()),
        ])
        .output()
        .unwrap();
    assert!(
        shims.stdout.is_empty(),
        "shims left: {}",
        String::from_utf8_lossy(&shims.stdout)
    );
    let req = cri::ListPodSandboxRequest { filter: None };
    assert!(c2
        .call(|x| x.runtime.list_pod_sandbox(req))
        .unwrap()
        .items
        .is_empty());

    // After the restart a new pod runs too: one PID namespace for the pod, a Guaranteed
    // container's oom_score_adj, and GetContainerEvents following the container's life.
    let events = c2.watch_events();
    let mut pod2 = pod_config("web2", logs.path(), &parent);
    if let Some(sc) = pod2.linux.as_mut().unwrap().security_context.as_mut() {
        sc.namespace_options.as_mut().unwrap().pid = cri::NamespaceMode::Pod as i32;
    }
    let pod2_id = c2
        .run_pod(pod2.clone())
        .unwrap_or_else(|e| panic!("run pod after restart: {e:?}\n{}", d.log()));
    let ip2 = c2.pod_status(&pod2_id).network.unwrap().ip;
    let mut web2 = container_config(
        "httpd2",
        &image,
        "busybox mkdir -p /www && echo second-pod > /www/index.html && exec busybox httpd -f -p 80 -h /www",
    );
    let linux = web2.linux.as_mut().unwrap();
    let sc = linux.security_context.as_mut().unwrap();
    sc.namespace_options.as_mut().unwrap().pid = cri::NamespaceMode::Pod as i32;
    linux.resources = Some(cri::LinuxContainerResources {
        oom_score_adj: -997,
        ..Default::default()
    });
    let web2_id = c2.create(&pod2_id, web2, &pod2).unwrap();
    c2.start(&web2_id)
        .unwrap_or_else(|e| panic!("start after restart: {e:?}\n{}", d.log()));
    wait_until("the second pod's server", Duration::from_secs(10), || {
        http_get(&format!("{ip2}:80")).is_ok_and(|b| b.contains("second-pod"))
    });
    // PID 1 of the pod is its namespace holder; scores below berthd's own are raised to
    // it when berthd lacks CAP_SYS_RESOURCE, and Status says so.
    let procs = cgroup_file("memory", &parent, &web2_id, "cgroup.procs");
    let main_pid = procs.lines().next().expect("the container's process");
    let score = std::fs::read_to_string(format!("/proc/{main_pid}/oom_score_adj")).unwrap();
    let can_lower = cap_sys_resource();
    let bundle = d
        .state
        .join("io.containerd.runtime.v2.task/k8s.io")
        .join(&web2_id)
        .join("config.json");
    assert_eq!(
        score.trim(),
        if can_lower { "-997" } else { "0" },
        "{}",
        std::fs::read_to_string(bundle).unwrap_or_default()
    );
    let r = c2.exec(&web2_id, &["cat", "/proc/1/cmdline"], 5).unwrap();
    let init = String::from_utf8_lossy(&r.stdout).replace('\0', " ");
    assert!(init.contains("pause"), "{init}");
    let req = cri::StatusRequest { verbose: false };
    let conditions = c2
        .call(|x| x.runtime.status(req))
        .unwrap()
        .status
        .unwrap()
        .conditions;
    let clamped = conditions.iter().find(|c| c.r#type == "OOMScoreAdjClamped");
    assert_eq!(clamped.is_some(), !can_lower, "{conditions:?}");
    c2.stop_pod(&pod2_id).unwrap();
    c2.remove_pod(&pod2_id).unwrap();
    assert_eq!(leftovers(&d, &net), (vec![], 0, vec![]));
    wait_until("container events", Duration::from_secs(5), || {
        events
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| *id == web2_id)
            .count()
            >= 4
    });
    let kinds: Vec<i32> = events
        .lock()
        .unwrap()
        .iter()
        .filter(|(id, _)| *id == web2_id)
        .map(|(_, k)| *k)
        .collect();
    use cri::ContainerEventType as E;
    assert_eq!(
        kinds,
        [
            E::ContainerCreatedEvent as i32,
            E::ContainerStartedEvent as i32,
            E::ContainerStoppedEvent as i32,
            E::ContainerDeletedEvent as i32
        ]
    );
}

/// Whether this process may lower oom_score_adj below its own (CAP_SYS_RESOURCE).
fn cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    eff & (1 << 24) != 0
}

#[test]
fn root_cri_refuses_bad_requests_by_name_and_leaves_nothing() {
    let (_reg, image) = busybox_registry();
    let net = CniNet::new(2, None);
    let d = Berthd::start_with_config(&net.berthd_config());
    let mut c = Cri::connect(&d.socket);
    let missing = format!("{}/nothing-here:1", image.split('/').next().unwrap());
    let e = c.pull(&missing).unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("nothing-here"), "{e:?}");
    c.pull(&image).unwrap();

    let logs = tempfile::tempdir().unwrap();
    let pod = pod_config("bad", logs.path(), "");
    let e = c
        .create("no-such-pod", container_config("x", &image, "true"), &pod)
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("no-such-pod"), "{e:?}");

    let pod_id = c.run_pod(pod.clone()).unwrap();
    let e = c.run_pod(pod.clone()).unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(e.message().contains(&pod_id), "{e:?}");

    let e = c
        .create(
            &pod_id,
            container_config("x", "example.com/absent:1", "true"),
            &pod,
        )
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("example.com/absent:1"), "{e:?}");

    let mut seccomp = container_config("y", &image, "true");
    let sc = seccomp
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap();
    sc.seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: "/nonexistent/profile.json".into(),
    });
    let e = c.create(&pod_id, seccomp, &pod).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("/nonexistent/profile.json"), "{e:?}");
    // The failed creates left their names free.
    c.create(&pod_id, container_config("y", &image, "true"), &pod)
        .unwrap();

    // Stopping and removing what does not exist succeeds.
    c.stop_pod("no-such-pod").unwrap();
    c.remove_pod("no-such-pod").unwrap();
    let req = cri::StopContainerRequest {
        container_id: "no-such-container".into(),
        timeout: 1,
    };
    c.call(|x| x.runtime.stop_container(req)).unwrap();
    let req = cri::RemoveContainerRequest {
        container_id: "no-such-container".into(),
    };
    c.call(|x| x.runtime.remove_container(req)).unwrap();
    c.stop_pod(&pod_id).unwrap();
    c.remove_pod(&pod_id).unwrap();
    assert_eq!(leftovers(&d, &net), (vec![], 0, vec![]));

    // shareProcessNamespace: the pod's containers see each other's processes.
    let mut shared = pod_config("shared", logs.path(), "");
    let shared_ns = cri::NamespaceOption {
        pid: cri::NamespaceMode::Pod as i32,
        ..berth_e2e::cri::kubelet_namespaces()
    };
    shared
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options = Some(shared_ns.clone());
    let shared_id = c
        .run_pod(shared.clone())
        .unwrap_or_else(|e| panic!("{e:?}\n{}", d.log()));
    let mut a = container_config("a", &image, "exec sleep 3601");
    a.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options = Some(shared_ns.clone());
    let mut b = container_config("b", &image, "exec sleep 3602");
    b.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options = Some(shared_ns);
    let (a, b) = (
        c.create(&shared_id, a, &shared).unwrap(),
        c.create(&shared_id, b, &shared).unwrap(),
    );
    c.start(&a).unwrap();
    c.start(&b).unwrap();
    let ps = c.exec(&b, &["ps"], 5).unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        ps.contains("sleep 3601") && ps.contains("sleep 3602"),
        "{ps}"
    );
    c.stop_pod(&shared_id).unwrap();
    c.remove_pod(&shared_id).unwrap();
    assert_eq!(leftovers(&d, &net), (vec![], 0, vec![]));

    // A CNI plugin that fails: RunPodSandbox fails with its message, and nothing stays.
    let broken = CniNet::new(
        3,
        Some(
            serde_json::json!({"type": "bridge", "bridge": "btbroken", "ipam": {"type": "host-local", "ranges": [[{"subnet": "not-a-subnet"}]]}}),
        ),
    );
    let d2 = Berthd::start_with_config(&broken.berthd_config());
    let mut c2 = Cri::connect(&d2.socket);
    let e = c2.run_pod(pod_config("net", logs.path(), "")).unwrap_err();
    assert!(
        e.message().contains("bridge") && e.message().contains("not-a-subnet"),
        "{e:?}"
    );
    assert!(
        d2.leftover_mounts().is_empty(),
        "{:?}",
        d2.leftover_mounts()
    );
    let req = cri::ListPodSandboxRequest { filter: None };
    assert!(c2
        .call(|x| x.runtime.list_pod_sandbox(req))
        .unwrap()
        .items
        .is_empty());
    // ... and the name is free for a retry.
    let e = c2.run_pod(pod_config("net", logs.path(), "")).unwrap_err();
    assert_ne!(e.code(), Code::AlreadyExists, "{e:?}");
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "btbroken"])
        .stderr(std::process::Stdio::null())
        .status();
}

#[test]
fn root_status_reports_runtime_and_network_readiness() {
    let d = Berthd::start_with_config("[cri]\ncni_conf_dir = \"/nonexistent/cni\"\n");
    let mut c = Cri::connect(&d.socket);
    let s = c
        .call(|x| x.runtime.status(cri::StatusRequest { verbose: false }))
        .unwrap()
        .status
        .unwrap();
    let cond = |t: &str| {
        s.conditions
            .iter()
            .find(|c| c.r#type == t)
            .cloned()
            .unwrap()
    };
    assert!(cond("RuntimeReady").status);
    let n = cond("NetworkReady");
    assert!(!n.status && n.reason == "NetworkPluginNotReady", "{n:?}");
    assert!(n.message.contains("/nonexistent/cni"), "{n:?}");
    let v = c
        .call(|x| x.runtime.version(cri::VersionRequest::default()))
        .unwrap();
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("berth", "v1")
    );
    let rc = c
        .call(|x| x.runtime.runtime_config(cri::RuntimeConfigRequest {}))
        .unwrap();
    assert_eq!(
        rc.linux.unwrap().cgroup_driver,
        cri::CgroupDriver::Cgroupfs as i32
    );
}

#[test]
fn root_the_kubelets_pod_cidr_fills_the_cni_template() {
    // The test network's configuration becomes a template; the conf dir starts empty.
    let net = CniNet::new(3, None);
    let conf = net.dir.path().join("conf");
    let file = conf.join("10-test.conflist");
    let text = std::fs::read_to_string(&file).unwrap();
    let cidr = format!("{}.0/24", net.subnet_prefix);
    let template = net.dir.path().join("template.conflist");
    std::fs::write(&template, text.replace(&cidr, "{{.PodCIDR}}")).unwrap();
    std::fs::remove_file(&file).unwrap();
    let config = format!(
        "{}cni_conf_template = \"{}\"\n",
        net.berthd_config(),
        template.display()
    );
    let d = Berthd::start_with_config(&config);
    let mut c = Cri::connect(&d.socket);
    let network_ready = |c: &mut Cri| {
        let req = cri::StatusRequest { verbose: false };
        let s = c.call(|x| x.runtime.status(req)).unwrap().status.unwrap();
        s.conditions
            .iter()
            .any(|c| c.r#type == "NetworkReady" && c.status)
    };
    assert!(!network_ready(&mut c));

    let update = |cidr: &str| cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig {
                pod_cidr: cidr.into(),
            }),
        }),
    };
    let req = update("not-a-cidr");
    let e = c
        .call(|x| x.runtime.update_runtime_config(req))
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("not-a-cidr"), "{e:?}");
    assert!(!network_ready(&mut c));

    let req = update(&cidr);
    c.call(|x| x.runtime.update_runtime_config(req)).unwrap();
    assert!(network_ready(&mut c));
    let logs = tempfile::tempdir().unwrap();
    let pod = c
        .run_pod(pod_config("templated", logs.path(), ""))
        .unwrap_or_else(|e| panic!("run pod: {e:?}\n{}", d.log()));
    let ip = c.pod_status(&pod).network.unwrap().ip;
    assert!(ip.starts_with(&net.subnet_prefix), "{ip} not in {cidr}");
    c.stop_pod(&pod).unwrap();
    c.remove_pod(&pod).unwrap();
    assert_eq!(leftovers(&d, &net), (vec![], 0, vec![]));
}
