//! containerd's runtime API (containers, tasks, events) driven by Debian's unmodified `ctr`
//! against a real berthd that runs containers through Debian's containerd-shim-runc-v2 and
//! runc. These tests need root. Container ids are unique per test: runc's state directory
//! is shared by every daemon on the machine.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::*;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    CreateTaskRequest, GetRequest, KillRequest, UpdateTaskRequest, WaitRequest,
};
use containerd_client::tonic::{Code, Request};

macro_rules! in_ns {
    ($r:expr, $ns:expr) => {
        containerd_client::with_namespace!($r, $ns)
    };
}

/// The STATUS column of `ctr task ls` for a task, if it is listed.
fn status_of(d: &Berthd, ns: &str, id: &str) -> Option<String> {
    d.ctr_ok(ns, &["task", "ls"]).lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first() == Some(&id)).then(|| f[2].to_owned())
    })
}

fn wait_status(d: &Berthd, ns: &str, id: &str, want: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if status_of(d, ns, id).as_deref() == Some(want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "task {id} never became {want}:\n{}\n--- berthd log ---\n{}",
        d.ctr_ok(ns, &["task", "ls"]),
        d.log()
    );
}

fn run_detached(d: &Berthd, ns: &str, img: &str, id: &str, args: &[&str]) {
    let mut a = vec!["run", "-d", img, id];
    a.extend_from_slice(args);
    d.ctr_ok(ns, &a);
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn shim_pid(d: &Berthd, ns: &str, id: &str) -> i32 {
    let p = d
        .state
        .join("io.containerd.runtime.v2.task")
        .join(ns)
        .join(id)
        .join("shim.pid");
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .parse()
        .unwrap()
}

fn bundles(d: &Berthd) -> Vec<String> {
    let base = d.state.join("io.containerd.runtime.v2.task");
    let mut v = Vec::new();
    for ns in std::fs::read_dir(base).into_iter().flatten().flatten() {
        for b in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            v.push(b.path().display().to_string());
        }
    }
    v
}

/// A gRPC client for what `ctr` does not show (exit statuses, exact codes).
fn grpc<T>(
    d: &Berthd,
    ns: &str,
    f: impl AsyncFnOnce(TasksClient<containerd_client::tonic::transport::Channel>, &str) -> T,
) -> T {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = containerd_client::connect(&d.socket).await.unwrap();
        f(TasksClient::new(ch), ns).await
    })
}

fn process(d: &Berthd, ns: &str, id: &str) -> containerd_client::types::v1::Process {
    grpc(d, ns, async |mut c, ns| {
        let req = GetRequest {
            container_id: id.into(),
            exec_id: String::new(),
        };
        let r = c.get(in_ns!(req, ns)).await.unwrap().into_inner();
        r.process.unwrap()
    })
}

/// Tasks.Wait on the init process: its exit status.
fn wait_exit(d: &Berthd, ns: &str, id: &str) -> u32 {
    grpc(d, ns, async |mut c, ns| {
        let req = WaitRequest {
            container_id: id.into(),
            exec_id: String::new(),
        };
        c.wait(in_ns!(req, ns))
            .await
            .unwrap()
            .into_inner()
            .exit_status
    })
}

#[test]
fn root_run_rm_prints_output_and_exit_status() {
    let reg = Registry::start();
    let (d, img) = berthd_with_busybox(&reg, "default");
    let out = d.ctr_ok("default", &["run", "--rm", &img, "run-echo", "echo", "hi"]);
    assert_eq!(out.trim(), "hi");
    let o = d.ctr(
        "default",
        &["run", "--rm", &img, "run-exit3", "sh", "-c", "exit 3"],
    );
    assert_eq!(o.status.code(), Some(3), "{o:?}\n{}", d.log());
    assert!(d.ctr_ok("default", &["task", "ls", "-q"]).trim().is_empty());
    assert!(d
        .ctr_ok("default", &["containers", "ls", "-q"])
        .trim()
        .is_empty());
    assert!(bundles(&d).is_empty(), "{:?}", bundles(&d));
    assert!(d.leftover_mounts().is_empty(), "{:?}", d.leftover_mounts());
}

#[test]
fn root_run_with_stdin_reads_until_end_of_input() {
    let reg = Registry::start();
    let (d, img) = berthd_with_busybox(&reg, "default");
    let mut child = Command::new("ctr")
        .arg("-a")
        .arg(&d.socket)
        .args(["run", "--rm", &img, "stdin-1", "sh", "-c", "cat; echo done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // ctr 1.6 only closes the task's stdin if input ends after the task exists (it loses
    // an end of input that comes sooner, with containerd too), so the input is paced.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"line one\n").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    stdin.write_all(b"line two\n").unwrap();
    drop(stdin);
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("ctr run never saw the end of its input\n{}", d.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{}", out_of(&out), d.log());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "line one\nline two\ndone\n"
    );
}

#[test]
fn root_detached_task_exec_ps_pause_resume_kill_metrics_rm() {
    let reg = Registry::start();
    let ns = "life";
    let (d, img) = berthd_with_busybox(&reg, ns);
    let events = EventWatch::start(&d);
    run_detached(&d, ns, &img, "life-1", TERMINABLE);
    wait_status(&d, ns, "life-1", "RUNNING");
    let shim = shim_pid(&d, ns, "life-1");

    let o = d.ctr(
        ns,
        &[
            "task",
            "exec",
            "--exec-id",
            "e1",
            "life-1",
            "sh",
            "-c",
            "echo from-exec; exit 7",
        ],
    );
    assert_eq!(o.status.code(), Some(7), "{}", out_of(&o));
    assert!(out_of(&o).contains("from-exec"), "{}", out_of(&o));

    let ls = d.ctr_ok(ns, &["task", "ls"]);
    let pid: String = ls
        .lines()
        .find(|l| l.starts_with("life-1"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .to_owned();
    let ps = d.ctr_ok(ns, &["task", "ps", "life-1"]);
    assert!(
        ps.lines()
            .any(|l| l.split_whitespace().next() == Some(&pid)),
        "{ps}"
    );

    d.ctr_ok(ns, &["task", "pause", "life-1"]);
    wait_status(&d, ns, "life-1", "PAUSED");
    d.ctr_ok(ns, &["task", "resume", "life-1"]);
    wait_status(&d, ns, "life-1", "RUNNING");

    let metrics = d.ctr_ok(ns, &["task", "metrics", "life-1"]);
    assert!(metrics.contains("life-1"), "{metrics}");
    assert!(metrics.contains("memory"), "{metrics}");

    // ctr 1.6 has no `task update`; send what newer clients send.
    grpc(&d, ns, async |mut c, ns| {
        c.update(in_ns!(
            UpdateTaskRequest {
                container_id: "life-1".into(),
                resources: Some(prost_types::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
                        .into(),
                    value: br#"{"memory":{"limit":67108864}}"#.to_vec(),
                }),
                annotations: Default::default(),
            },
            ns
        ))
        .await
        .unwrap()
    });
    let limit = std::fs::read_to_string(
        Path::new("/sys/fs/cgroup/memory")
            .join(ns)
            .join("life-1/memory.limit_in_bytes"),
    )
    .or_else(|_| {
        std::fs::read_to_string(
            Path::new("/sys/fs/cgroup")
                .join(ns)
                .join("life-1/memory.max"),
        )
    })
    .unwrap();
    assert_eq!(limit.trim(), "67108864");

    d.ctr_ok(ns, &["task", "kill", "-s", "SIGTERM", "life-1"]);
    wait_status(&d, ns, "life-1", "STOPPED");
    let info = d.ctr_ok(ns, &["containers", "info", "life-1"]);
    assert!(info.contains("io.containerd.runc.v2"), "{info}");
    d.ctr_ok(ns, &["task", "rm", "life-1"]);
    d.ctr_ok(ns, &["containers", "rm", "life-1"]);
    assert!(d.ctr_ok(ns, &["task", "ls", "-q"]).trim().is_empty());
    assert!(d.ctr_ok(ns, &["containers", "ls", "-q"]).trim().is_empty());
    let text = events.finish();
    let topics = EventWatch::topics(&text, &["/tasks/"]);
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exit",
            "/tasks/delete"
        ],
        "{text}"
    );
    let start = Instant::now();
    while alive(shim) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(shim), "shim {shim} still running after task rm");
    assert!(bundles(&d).is_empty(), "{:?}", bundles(&d));
    assert!(d.leftover_mounts().is_empty(), "{:?}", d.leftover_mounts());
}

fn openpty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors we then own; the name and termios are optional.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

#[test]
fn root_run_with_terminal_echoes_input() {
    let reg = Registry::start();
    let (d, img) = berthd_with_busybox(&reg, "default");
    let (master, slave) = openpty();
    let mut child = Command::new("ctr")
        .arg("-a")
        .arg(&d.socket)
        .args(["run", "-t", "--rm", &img, "pty-1", "sh"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    let mut m = std::fs::File::from(master);
    let mut reader = m.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let until = |want: &str, seen: &mut Vec<u8>| {
        let start = Instant::now();
        while !String::from_utf8_lossy(seen).contains(want) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "never saw {want:?} on the terminal; got {:?}\n{}",
                String::from_utf8_lossy(seen),
                d.log()
            );
            if let Ok(b) = rx.recv_timeout(Duration::from_millis(200)) {
                seen.extend(b);
            }
        }
    };
    std::thread::sleep(Duration::from_millis(500));
    m.write_all(b"echo typed-$((6*7))\r").unwrap();
    // The terminal echoes what was typed, then the shell prints the result.
    until("echo typed-$((6*7))", &mut seen);
    until("typed-42", &mut seen);
    m.write_all(b"exit 4\r").unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "ctr run -t did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(4));
    let _ = m.as_raw_fd();
    assert!(bundles(&d).is_empty(), "{:?}", bundles(&d));
}

#[test]
fn root_events_show_a_run_in_order() {
    let reg = Registry::start();
    let (d, img) = berthd_with_busybox(&reg, "default");
    let events = EventWatch::start(&d);
    let out = d.ctr_ok("default", &["run", "--rm", &img, "ev-1", "echo", "hi"]);
    assert_eq!(out.trim(), "hi");
    let text = events.finish();
    let topics = EventWatch::topics(&text, &["/tasks/", "/containers/"]);
    assert_eq!(
        topics,
        [
            "/containers/create",
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete",
            "/containers/delete"
        ],
        "{text}"
    );
    assert!(
        text.lines()
            .filter(|l| l.contains("/tasks/"))
            .all(|l| l.contains("ev-1")),
        "{text}"
    );
}

#[test]
fn root_runc_binary_option_selects_the_runtime() {
    let reg = Registry::start();
    let (d, img) = berthd_with_busybox(&reg, "default");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls");
    let wrapper = dir.path().join("runc-recorder");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\nexec runc \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&wrapper).unwrap().permissions(),
        0o755,
    );
    Command::new("chmod")
        .arg("755")
        .arg(&wrapper)
        .status()
        .unwrap();
    let out = d.ctr_ok(
        "default",
        &[
            "run",
            "--rm",
            "--runc-binary",
            wrapper.to_str().unwrap(),
            &img,
            "wrapped-1",
            "echo",
            "wrapped",
        ],
    );
    assert_eq!(out.trim(), "wrapped");
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    for verb in ["create", "start", "delete"] {
        assert!(
            calls
                .lines()
                .any(|l| l.split_whitespace().any(|w| w == verb)),
            "wrapper never ran `{verb}`:\n{calls}"
        );
    }
    assert!(calls.contains("wrapped-1"), "{calls}");
}

#[test]
fn root_containers_survive_a_daemon_kill_and_are_found_again() {
    let reg = Registry::start();
    let ns = "survive";
    let (mut d, img) = berthd_with_busybox(&reg, ns);
    run_detached(&d, ns, &img, "keep-1", TERMINABLE);
    run_detached(&d, ns, &img, "keep-2", TERMINABLE);
    run_detached(
        &d,
        ns,
        &img,
        "exits-1",
        &["sh", "-c", "while ! test -e /go; do sleep 1; done; exit 5"],
    );
    for id in ["keep-1", "keep-2", "exits-1"] {
        wait_status(&d, ns, id, "RUNNING");
    }
    d.kill();
    // While berthd is down, one container exits on its own.
    let rootfs = d
        .state
        .join("io.containerd.runtime.v2.task")
        .join(ns)
        .join("exits-1/rootfs");
    std::fs::write(rootfs.join("go"), b"").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    d.spawn();
    wait_status(&d, ns, "keep-1", "RUNNING");
    wait_status(&d, ns, "keep-2", "RUNNING");
    wait_status(&d, ns, "exits-1", "STOPPED");
    let status = process(&d, ns, "exits-1").exit_status;
    assert_eq!(status, 5);

    let o = d.ctr(
        ns,
        &[
            "task",
            "exec",
            "--exec-id",
            "after",
            "keep-1",
            "sh",
            "-c",
            "echo still-here",
        ],
    );
    assert!(
        out_of(&o).contains("still-here"),
        "{}\n{}",
        out_of(&o),
        d.log()
    );
    d.ctr_ok(ns, &["task", "kill", "-s", "SIGTERM", "keep-2"]);
    let code = wait_exit(&d, ns, "keep-2");
    assert_eq!(code, 0);
    d.ctr_ok(ns, &["task", "kill", "-s", "SIGKILL", "keep-1"]);
    wait_status(&d, ns, "keep-1", "STOPPED");
    for id in ["keep-1", "keep-2", "exits-1"] {
        d.ctr_ok(ns, &["task", "rm", id]);
        d.ctr_ok(ns, &["containers", "rm", id]);
    }
    assert!(bundles(&d).is_empty(), "{:?}", bundles(&d));
    assert!(d.leftover_mounts().is_empty(), "{:?}", d.leftover_mounts());
}

fn cgroup_exists(ns: &str, id: &str) -> bool {
    ["memory", "pids", "cpu", "unified", ""].iter().any(|c| {
        Path::new("/sys/fs/cgroup")
            .join(c)
            .join(ns)
            .join(id)
            .exists()
    })
}

#[test]
fn root_twenty_concurrent_containers_run_and_leave_nothing() {
    let reg = Registry::start();
    let ns = "twenty";
    let (d, img) = berthd_with_busybox(&reg, ns);
    let ids: Vec<String> = (0..20).map(|i| format!("many-{i}")).collect();
    std::thread::scope(|s| {
        for id in &ids {
            let (d, img) = (&d, &img);
            s.spawn(move || run_detached(d, ns, img, id, TERMINABLE));
        }
    });
    let shims: Vec<i32> = ids.iter().map(|id| shim_pid(&d, ns, id)).collect();
    for id in &ids {
        wait_status(&d, ns, id, "RUNNING");
    }
    std::thread::scope(|s| {
        for id in &ids {
            let d = &d;
            s.spawn(move || {
                d.ctr_ok(ns, &["task", "kill", "-s", "SIGKILL", id]);
                wait_status(d, ns, id, "STOPPED");
                d.ctr_ok(ns, &["task", "rm", id]);
                d.ctr_ok(ns, &["containers", "rm", id]);
            });
        }
    });
    assert!(d.ctr_ok(ns, &["task", "ls", "-q"]).trim().is_empty());
    assert!(bundles(&d).is_empty(), "{:?}", bundles(&d));
    assert!(d.leftover_mounts().is_empty(), "{:?}", d.leftover_mounts());
    let start = Instant::now();
    while shims.iter().any(|p| alive(*p)) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(shims.iter().all(|p| !alive(*p)), "shims left running");
    let cgroups: Vec<&String> = ids.iter().filter(|id| cgroup_exists(ns, id)).collect();
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
}

#[test]
fn root_missing_shim_and_rejected_spec_leave_nothing() {
    let reg = Registry::start();
    let (d, img) = berthd_with_busybox(&reg, "default");
    let o = d.ctr(
        "default",
        &[
            "run",
            "--rm",
            "--runtime",
            "io.containerd.nosuch.v1",
            &img,
            "noshim-1",
            "true",
        ],
    );
    assert!(!o.status.success());
    let msg = out_of(&o);
    assert!(msg.contains("containerd-shim-nosuch-v1"), "{msg}");
    assert!(msg.contains("failed precondition"), "{msg}");

    let o = d.ctr(
        "default",
        &["run", "--rm", &img, "badspec-1", "/no/such/binary"],
    );
    assert!(!o.status.success());
    let msg = out_of(&o);
    assert!(
        msg.contains("/no/such/binary"),
        "runc's own message expected: {msg}"
    );
    assert!(bundles(&d).is_empty(), "{:?}", bundles(&d));
    assert!(d.leftover_mounts().is_empty(), "{:?}", d.leftover_mounts());
    let shims = Command::new("pgrep")
        .args(["-f", "-id badspec-1"])
        .output()
        .unwrap();
    assert!(shims.stdout.is_empty(), "shim left: {}", out_of(&shims));
}

#[test]
fn root_killed_shim_turns_task_stopped_and_releases_it() {
    let reg = Registry::start();
    let ns = "shimkill";
    let (d, img) = berthd_with_busybox(&reg, ns);
    run_detached(&d, ns, &img, "orphan-1", TERMINABLE);
    wait_status(&d, ns, "orphan-1", "RUNNING");
    let shim = shim_pid(&d, ns, "orphan-1");
    let bundle = d
        .state
        .join("io.containerd.runtime.v2.task")
        .join(ns)
        .join("orphan-1");
    let address = std::fs::read_to_string(bundle.join("address")).unwrap();
    let socket = address.trim().trim_start_matches("unix://").to_owned();
    assert!(Path::new(&socket).exists(), "{socket}");
    let task_pid = process(&d, ns, "orphan-1").pid;
    // SAFETY: killing the shim process this test's daemon started.
    unsafe { libc::kill(shim, libc::SIGKILL) };
    wait_status(&d, ns, "orphan-1", "STOPPED");
    // A killed shim cannot remove its socket: its cleanup does.
    assert!(!Path::new(&socket).exists(), "{socket} left behind");
    let exit = wait_exit(&d, ns, "orphan-1");
    // The shim's cleanup kills what is left of the container: 128 + SIGKILL.
    assert_eq!(exit, 137, "exit of a task whose shim died");
    let start = Instant::now();
    while alive(task_pid as i32) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !alive(task_pid as i32),
        "container process outlived its shim's cleanup"
    );
    assert!(d.leftover_mounts().is_empty(), "{:?}", d.leftover_mounts());
    d.ctr_ok(ns, &["task", "rm", "orphan-1"]);
    d.ctr_ok(ns, &["containers", "rm", "orphan-1"]);
    assert!(bundles(&d).is_empty(), "{:?}", bundles(&d));
    assert!(!cgroup_exists(ns, "orphan-1"), "cgroup left");
}

#[test]
fn root_unknown_tasks_are_not_found_and_create_twice_already_exists() {
    let reg = Registry::start();
    let ns = "codes";
    let (d, img) = berthd_with_busybox(&reg, ns);
    let o = d.ctr(ns, &["task", "kill", "nosuch-1"]);
    assert!(out_of(&o).contains("not found"), "{}", out_of(&o));
    let o = d.ctr(ns, &["task", "exec", "--exec-id", "x", "nosuch-1", "true"]);
    assert!(out_of(&o).contains("not found"), "{}", out_of(&o));
    run_detached(&d, ns, &img, "dup-1", TERMINABLE);
    wait_status(&d, ns, "dup-1", "RUNNING");
    let codes = grpc(&d, ns, async |mut c, ns| {
        let wait = c
            .wait(in_ns!(
                WaitRequest {
                    container_id: "nosuch-1".into(),
                    exec_id: String::new()
                },
                ns
            ))
            .await
            .unwrap_err();
        let kill = c
            .kill(in_ns!(
                KillRequest {
                    container_id: "nosuch-1".into(),
                    exec_id: String::new(),
                    signal: 15,
                    all: false
                },
                ns
            ))
            .await
            .unwrap_err();
        let twice = c
            .create(in_ns!(
                CreateTaskRequest {
                    container_id: "dup-1".into(),
                    ..Default::default()
                },
                ns
            ))
            .await
            .unwrap_err();
        let no_container = c
            .create(in_ns!(
                CreateTaskRequest {
                    container_id: "nosuch-1".into(),
                    ..Default::default()
                },
                ns
            ))
            .await
            .unwrap_err();
        (wait, kill, twice, no_container)
    });
    assert_eq!(codes.0.code(), Code::NotFound, "{:?}", codes.0);
    assert!(codes.0.message().contains("nosuch-1"), "{:?}", codes.0);
    assert_eq!(codes.1.code(), Code::NotFound, "{:?}", codes.1);
    assert_eq!(codes.2.code(), Code::AlreadyExists, "{:?}", codes.2);
    assert!(codes.2.message().contains("dup-1"), "{:?}", codes.2);
    assert_eq!(codes.3.code(), Code::NotFound, "{:?}", codes.3);
    let o = d.ctr(ns, &["task", "checkpoint", "dup-1"]);
    assert!(!o.status.success());
    assert!(out_of(&o).contains("not implemented"), "{}", out_of(&o));
    d.ctr_ok(ns, &["task", "kill", "-s", "SIGKILL", "dup-1"]);
    wait_status(&d, ns, "dup-1", "STOPPED");
    d.ctr_ok(ns, &["task", "rm", "dup-1"]);
    d.ctr_ok(ns, &["containers", "rm", "dup-1"]);
}

/// containerd's restart monitor labels, set by Debian's ctr as nerdctl sets them: berthd
/// restarts the task with its output to the log path, and leaves it stopped once the
/// status label says so.
#[test]
fn root_restart_labels_keep_a_ctr_container_running_until_marked_stopped() {
    let reg = Registry::start();
    let (d, img) = berthd_with_busybox(&reg, "default");
    let log = d.dir.path().join("restarted.log");
    d.ctr_ok(
        "default",
        &[
            "run",
            "-d",
            "--label",
            "containerd.io/restart.status=running",
            "--label",
            "containerd.io/restart.policy=always",
            "--label",
            &format!("containerd.io/restart.logpath={}", log.display()),
            &img,
            "again",
            "sh",
            "-c",
            "echo up; sleep 0.3; exit 2",
        ],
    );
    let start = Instant::now();
    while std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("up")
        .count()
        < 2
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not restarted twice:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let info = d.ctr_ok("default", &["containers", "info", "again"]);
    assert!(info.contains("containerd.io/restart.count"), "{info}");
    d.ctr_ok(
        "default",
        &[
            "containers",
            "label",
            "again",
            "containerd.io/restart.status=stopped",
        ],
    );
    // The current run ends by itself (exit 2) and is not started again.
    let start = Instant::now();
    while status_of(&d, "default", "again").as_deref() != Some("STOPPED") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            d.ctr_ok("default", &["task", "ls"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines = std::fs::read_to_string(&log).unwrap().matches("up").count();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        status_of(&d, "default", "again").as_deref(),
        Some("STOPPED")
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap().matches("up").count(),
        lines
    );
    d.ctr_ok("default", &["task", "rm", "again"]);
    d.ctr_ok("default", &["containers", "rm", "again"]);
}
