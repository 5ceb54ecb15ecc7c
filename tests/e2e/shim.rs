//! berth's own shim (`containerd-shim-berth-v2`, runtime `io.containerd.berth.v2`), which
//! makes containers in-process with youki's libcontainer, driven by Debian's unmodified `ctr`
//! through berthd and through Debian's containerd. These tests need root.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_e2e::containerd::Containerd;
use berth_e2e::*;

const BERTH: &str = "io.containerd.berth.v2";
const RUNC: &str = "io.containerd.runc.v2";

/// The STATUS column of `ctr task ls` output for a task.
fn status_in(listing: &str, id: &str) -> Option<String> {
    listing.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first() == Some(&id)).then(|| f[2].to_owned())
    })
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not happen within 20 s");
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// The pid of the berth shim serving `id` under a daemon at `socket`.
fn berth_shim_pids(socket: &Path) -> Vec<i32> {
    let out = std::process::Command::new("pgrep")
        .args([
            "-f",
            &format!("containerd-shim-berth-v2 .*-address {}", socket.display()),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn task_pid(listing: &str, id: &str) -> i32 {
    listing
        .lines()
        .skip(1)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f[1].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("task {id} not listed:\n{listing}"))
}

#[test]
fn berth_shim_runs_containers_under_berthd_as_root() {
    let reg = Registry::start();
    let ns = "shim-life";
    let (d, img) = berthd_with_busybox(&reg, ns);

    // A whole run, its output through the fifos, and nothing left of it.
    let out = d.ctr_ok(
        ns,
        &[
            "run",
            "--runtime",
            BERTH,
            "--rm",
            &img,
            "sl-echo",
            "echo",
            "hi",
        ],
    );
    assert_eq!(out.trim(), "hi");
    let failed = d.ctr(
        ns,
        &[
            "run",
            "--runtime",
            BERTH,
            "--rm",
            &img,
            "sl-exit",
            "sh",
            "-c",
            "exit 7",
        ],
    );
    assert_eq!(failed.status.code(), Some(7), "{}", out_of(&failed));
    // The shim removes an exited container's cgroups itself: none is left in any
    // hierarchy.
    for id in ["sl-echo", "sl-exit"] {
        let left: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .map(|h| h.unwrap().path().join(ns).join(id))
            .filter(|dir| dir.exists())
            .collect();
        assert!(left.is_empty(), "cgroups left behind: {left:?}");
    }

    // Detached, with exec, pause/resume, metrics, pids and kill.
    let mut run = vec!["run", "-d", "--runtime", BERTH, &img, "sl-long"];
    run.extend_from_slice(TERMINABLE);
    d.ctr_ok(ns, &run);
    let listing = d.ctr_ok(ns, &["task", "ls"]);
    assert_eq!(status_in(&listing, "sl-long").as_deref(), Some("RUNNING"));
    let pid = task_pid(&listing, "sl-long");
    assert_eq!(berth_shim_pids(&d.socket).len(), 1);
    // The shim server runs without glibc's thread caches (its heap stays flat over execs).
    let environ =
        std::fs::read(format!("/proc/{}/environ", berth_shim_pids(&d.socket)[0])).unwrap();
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|v| v.starts_with(b"GLIBC_TUNABLES=")
                && v.ends_with(b"glibc.malloc.tcache_count=0")),
        "{}",
        String::from_utf8_lossy(&environ)
    );

    let exec = d.ctr(
        ns,
        &[
            "task",
            "exec",
            "--exec-id",
            "e1",
            "sl-long",
            "sh",
            "-c",
            "echo from-exec; exit 3",
        ],
    );
    assert_eq!(exec.status.code(), Some(3), "{}", out_of(&exec));
    assert_eq!(String::from_utf8_lossy(&exec.stdout).trim(), "from-exec");

    // An exec id in use is refused; the first one keeps running.
    let mut held = std::process::Command::new("ctr")
        .arg("-a")
        .arg(&d.socket)
        .args([
            "-n",
            ns,
            "task",
            "exec",
            "--exec-id",
            "held",
            "sl-long",
            "sleep",
            "30",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the held exec to show in ps", || {
        d.ctr_ok(ns, &["task", "ps", "sl-long"]).contains("held")
    });
    let again = d.ctr(
        ns,
        &["task", "exec", "--exec-id", "held", "sl-long", "true"],
    );
    assert!(!again.status.success());
    assert!(
        out_of(&again).contains("already exists"),
        "{}",
        out_of(&again)
    );
    d.ctr_ok(
        ns,
        &["task", "kill", "--exec-id", "held", "-s", "KILL", "sl-long"],
    );
    let _ = held.wait();

    d.ctr_ok(ns, &["task", "pause", "sl-long"]);
    assert_eq!(
        status_in(&d.ctr_ok(ns, &["task", "ls"]), "sl-long").as_deref(),
        Some("PAUSED")
    );
    let frozen = d.ctr(ns, &["task", "exec", "--exec-id", "e2", "sl-long", "true"]);
    assert!(!frozen.status.success(), "exec into a paused task ran");
    assert!(out_of(&frozen).contains("paused"), "{}", out_of(&frozen));
    d.ctr_ok(ns, &["task", "resume", "sl-long"]);
    assert_eq!(
        status_in(&d.ctr_ok(ns, &["task", "ls"]), "sl-long").as_deref(),
        Some("RUNNING")
    );

    let metrics = d.ctr_ok(ns, &["task", "metrics", "sl-long"]);
    assert!(metrics.contains("memory.usage_in_bytes"), "{metrics}");
    assert!(metrics.contains("pids.current"), "{metrics}");
    let ps = d.ctr_ok(ns, &["task", "ps", "sl-long"]);
    assert!(ps.contains(&pid.to_string()), "{ps}");

    let events = EventWatch::start(&d);
    d.ctr_ok(ns, &["task", "kill", "sl-long"]);
    wait_until("sl-long to stop", || {
        status_in(&d.ctr_ok(ns, &["task", "ls"]), "sl-long").as_deref() == Some("STOPPED")
    });
    assert!(!alive(pid));
    d.ctr_ok(ns, &["task", "delete", "sl-long"]);
    d.ctr_ok(ns, &["container", "rm", "sl-long"]);
    let topics = EventWatch::topics(&events.finish(), &["/tasks/"]);
    assert_eq!(topics, ["/tasks/exit", "/tasks/delete"], "{topics:?}");

    wait_until("the shim to exit", || berth_shim_pids(&d.socket).is_empty());
    assert!(d.leftover_mounts().is_empty(), "{:?}", d.leftover_mounts());
}

#[test]
fn berth_shim_reports_oom_kills_as_root() {
    let reg = Registry::start();
    let ns = "shim-oom";
    let (d, img) = berthd_with_busybox(&reg, ns);
    let events = EventWatch::start(&d);
    // busybox tail buffers a line that never ends: memory grows until the limit.
    let out = d.ctr(
        ns,
        &[
            "run",
            "--runtime",
            BERTH,
            "--rm",
            "--memory-limit",
            "16777216",
            &img,
            "so-oom",
            "sh",
            "-c",
            "tail /dev/zero",
        ],
    );
    assert_eq!(out.status.code(), Some(137), "{}", out_of(&out));
    let topics = EventWatch::topics(&events.finish(), &["/tasks/oom", "/tasks/exit"]);
    assert!(
        topics.iter().any(|t| t == "/tasks/oom"),
        "{topics:?}\n{}",
        d.log()
    );
}

#[test]
fn berth_shim_survives_a_berthd_crash_as_root() {
    let reg = Registry::start();
    let ns = "shim-restart";
    let (mut d, img) = berthd_with_busybox(&reg, ns);
    for id in ["sr-1", "sr-2"] {
        let mut run = vec!["run", "-d", "--runtime", BERTH, &img, id];
        run.extend_from_slice(TERMINABLE);
        d.ctr_ok(ns, &run);
    }
    let before = d.ctr_ok(ns, &["task", "ls"]);
    let pids = [task_pid(&before, "sr-1"), task_pid(&before, "sr-2")];
    d.kill();
    assert!(pids.iter().all(|p| alive(*p)));
    d.spawn();
    let after = d.ctr_ok(ns, &["task", "ls"]);
    for (id, pid) in [("sr-1", pids[0]), ("sr-2", pids[1])] {
        assert_eq!(status_in(&after, id).as_deref(), Some("RUNNING"), "{after}");
        assert_eq!(task_pid(&after, id), pid);
        let exec = d.ctr_ok(
            ns,
            &["task", "exec", "--exec-id", "x", id, "echo", "still-here"],
        );
        assert_eq!(exec.trim(), "still-here");
        d.ctr_ok(ns, &["task", "kill", id]);
        wait_until("the task to stop", || {
            status_in(&d.ctr_ok(ns, &["task", "ls"]), id).as_deref() == Some("STOPPED")
        });
        d.ctr_ok(ns, &["task", "delete", id]);
        d.ctr_ok(ns, &["container", "rm", id]);
    }
    wait_until("the shims to exit", || {
        berth_shim_pids(&d.socket).is_empty()
    });
}

/// Capabilities, no_new_privs, seccomp and the mount table a container sees.
fn security_view(
    d: &Berthd,
    ns: &str,
    img: &str,
    runtime: &str,
    id: &str,
    seccomp: bool,
) -> String {
    let mut args = vec!["run", "--runtime", runtime, "--rm"];
    if seccomp {
        args.push("--seccomp");
    }
    args.extend_from_slice(&[
        img,
        id,
        "sh",
        "-c",
        "grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status; \
         sed -E 's/^[0-9]+ [0-9]+ [0-9:]+ [^ ]+ ([^ ]+) ([^ ]+) .*- ([^ ]+) .*$/\\1 \\2 \\3/' \
         /proc/self/mountinfo | sed 's/,relatime//' | sort",
    ]);
    let out = d.ctr_ok(ns, &args);
    out.lines()
        .map(|l| {
            // Sources and per-container options differ (overlay dirs, ids), not the shape.
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() == 3 {
                let opts: Vec<&str> = f[1]
                    .split(',')
                    .filter(|o| ["ro", "rw", "nosuid", "nodev", "noexec"].contains(o))
                    .collect();
                format!("{} {} {}", f[0], opts.join(","), f[2])
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn berth_shim_security_defaults_match_runc_as_root() {
    let reg = Registry::start();
    let ns = "shim-sec";
    let (d, img) = berthd_with_busybox(&reg, ns);
    for seccomp in [false, true] {
        let runc = security_view(&d, ns, &img, RUNC, "ss-runc", seccomp);
        let berth = security_view(&d, ns, &img, BERTH, "ss-berth", seccomp);
        assert!(runc.contains("NoNewPrivs:\t1"), "{runc}");
        assert!(runc.contains("CapBnd:\t00000000a80425fb"), "{runc}");
        let filtered = if seccomp {
            "Seccomp:\t2"
        } else {
            "Seccomp:\t0"
        };
        assert!(runc.contains(filtered), "{runc}");
        assert!(
            runc.contains("/proc/keys rw,nosuid tmpfs"),
            "masked paths: {runc}"
        );
        assert!(
            runc.contains("/proc/sys ro,nosuid,nodev,noexec proc"),
            "{runc}"
        );
        assert_eq!(berth, runc, "berth shim vs runc:\n{berth}\n---\n{runc}");
    }
}

#[test]
fn berth_shim_bad_input_leaves_nothing_as_root() {
    let reg = Registry::start();
    let ns = "shim-bad";
    let (d, img) = berthd_with_busybox(&reg, ns);

    // A bind mount of a source that does not exist: the runtime's error names it.
    let out = d.ctr(
        ns,
        &[
            "run",
            "--runtime",
            BERTH,
            "--rm",
            "--mount",
            "type=bind,src=/nonexistent-berth-src,dst=/x,options=rbind:ro",
            &img,
            "sb-mount",
            "true",
        ],
    );
    assert!(!out.status.success());
    assert!(
        out_of(&out).contains("/nonexistent-berth-src"),
        "{}\n{}",
        out_of(&out),
        d.log()
    );
    let _ = d.ctr(ns, &["container", "rm", "sb-mount"]);
    assert!(d.leftover_mounts().is_empty(), "{:?}", d.leftover_mounts());
    wait_until("the shim to exit", || berth_shim_pids(&d.socket).is_empty());
    assert!(
        !Path::new("/sys/fs/cgroup/memory")
            .join(ns)
            .join("sb-mount")
            .exists(),
        "cgroup left behind"
    );

    // A spec asking for a cgroup controller this host does not have (hugetlb is not mounted
    // here; where it is, the page size is not one): the error names it, nothing is left.
    let rootfs = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(rootfs.path().join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.path().join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.path().join("bin/sh")).unwrap();
    let mut spec: serde_json::Value =
        serde_json::from_str(&d.ctr_ok(ns, &["oci", "spec"])).unwrap();
    spec["root"] = serde_json::json!({"path": rootfs.path(), "readonly": true});
    spec["process"]["args"] = serde_json::json!(["sh", "-c", "echo ran"]);
    spec["linux"]["cgroupsPath"] = serde_json::json!(format!("/{ns}/sb-hugetlb"));
    spec["linux"]["resources"]["hugepageLimits"] =
        serde_json::json!([{"pageSize": "3MB", "limit": 1048576}]);
    let spec_file = rootfs.path().join("spec.json");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    let out = d.ctr(
        ns,
        &[
            "run",
            "--runtime",
            BERTH,
            "--rm",
            "--config",
            spec_file.to_str().unwrap(),
            "sb-hugetlb",
        ],
    );
    assert!(!out.status.success());
    assert!(out_of(&out).contains("hugetlb"), "{}", out_of(&out));
    let _ = d.ctr(ns, &["container", "rm", "sb-hugetlb"]);
    wait_until("the shim to exit", || berth_shim_pids(&d.socket).is_empty());
    for controller in ["memory", "pids", "cpu", "devices", "freezer"] {
        let leaf = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(ns)
            .join("sb-hugetlb");
        assert!(!leaf.exists(), "{} left behind", leaf.display());
    }
    assert!(d.leftover_mounts().is_empty(), "{:?}", d.leftover_mounts());

    // The shim killed: the task is reported stopped and its container is gone.
    let mut run = vec!["run", "-d", "--runtime", BERTH, &img, "sb-kill"];
    run.extend_from_slice(TERMINABLE);
    d.ctr_ok(ns, &run);
    let pid = task_pid(&d.ctr_ok(ns, &["task", "ls"]), "sb-kill");
    let shims = berth_shim_pids(&d.socket);
    assert_eq!(shims.len(), 1);
    let bundle = d
        .state
        .join("io.containerd.runtime.v2.task")
        .join(ns)
        .join("sb-kill");
    let address = std::fs::read_to_string(bundle.join("address")).unwrap();
    let socket = address.trim().trim_start_matches("unix://").to_owned();
    assert!(Path::new(&socket).exists());
    // SAFETY: signalling the shim by pid.
    unsafe { libc::kill(shims[0], libc::SIGKILL) };
    wait_until("the task to be reported stopped", || {
        status_in(&d.ctr_ok(ns, &["task", "ls"]), "sb-kill").as_deref() != Some("RUNNING")
    });
    wait_until("the container process to be gone", || !alive(pid));
    wait_until("the dead shim's socket to be removed", || {
        !Path::new(&socket).exists()
    });
    let _ = d.ctr(ns, &["task", "delete", "sb-kill"]);
    d.ctr_ok(ns, &["container", "rm", "sb-kill"]);
    assert!(d.leftover_mounts().is_empty(), "{:?}", d.leftover_mounts());
}

#[test]
fn berth_shim_runs_runc_when_asked_as_root() {
    let reg = Registry::start();
    let ns = "shim-runc";
    let (d, img) = berthd_with_busybox(&reg, ns);
    // A runc that records how it is called, named by the runtime options (`BinaryName`)
    // as ctr passes them to a runtime that is not runc's (`--runtime-config-path`).
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("calls");
    let wrapper = dir.path().join("runc-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\nexec runc \"$@\"\n",
            calls.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("755")
        .arg(&wrapper)
        .status()
        .unwrap();
    let config = dir.path().join("berth.toml");
    std::fs::write(&config, format!("BinaryName = \"{}\"\n", wrapper.display())).unwrap();
    let out = d.ctr_ok(
        ns,
        &[
            "run",
            "--runtime",
            BERTH,
            "--runtime-config-path",
            config.to_str().unwrap(),
            "--rm",
            &img,
            "sr-runc",
            "sh",
            "-c",
            "echo via-runc",
        ],
    );
    assert_eq!(out.trim(), "via-runc");
    let calls = std::fs::read_to_string(&calls).unwrap();
    for verb in [" create ", " start ", " delete "] {
        assert!(
            calls.contains(verb),
            "runc was not asked to{verb}:\n{calls}"
        );
    }

    // A runtime binary that does not exist is named.
    std::fs::write(&config, "BinaryName = \"/nonexistent/runc\"\n").unwrap();
    let out = d.ctr(
        ns,
        &[
            "run",
            "--runtime",
            BERTH,
            "--runtime-config-path",
            config.to_str().unwrap(),
            "--rm",
            &img,
            "sr-bin",
            "true",
        ],
    );
    assert!(!out.status.success());
    assert!(
        out_of(&out).contains("/nonexistent/runc"),
        "{}",
        out_of(&out)
    );
    let _ = d.ctr(ns, &["container", "rm", "sr-bin"]);
    assert!(d.leftover_mounts().is_empty(), "{:?}", d.leftover_mounts());
}

#[test]
fn berth_shim_serves_debian_containerd_as_root() {
    let reg = Registry::start();
    let img = OciImage::build(&[busybox_layer()]).push(&reg, "busybox");
    let ns = "shim-ctrd";
    let mut c = Containerd::start();
    c.ctr_ok(ns, &["images", "pull", "--plain-http", &img]);

    let out = c.ctr_ok(
        ns,
        &[
            "run",
            "--runtime",
            BERTH,
            "--rm",
            &img,
            "sc-echo",
            "echo",
            "hi",
        ],
    );
    assert_eq!(out.trim(), "hi", "{}", c.log());

    let events = EventWatch::on_socket(&c.socket);
    let mut run = vec!["run", "-d", "--runtime", BERTH, &img, "sc-long"];
    run.extend_from_slice(TERMINABLE);
    c.ctr_ok(ns, &run);
    let exec = c.ctr_ok(
        ns,
        &["task", "exec", "--exec-id", "e1", "sc-long", "echo", "in"],
    );
    assert_eq!(exec.trim(), "in");
    c.ctr_ok(ns, &["task", "pause", "sc-long"]);
    assert_eq!(
        status_in(&c.ctr_ok(ns, &["task", "ls"]), "sc-long").as_deref(),
        Some("PAUSED")
    );
    c.ctr_ok(ns, &["task", "resume", "sc-long"]);
    let metrics = c.ctr_ok(ns, &["task", "metrics", "sc-long"]);
    assert!(metrics.contains("memory.usage_in_bytes"), "{metrics}");

    // containerd killed and started again: the container still runs and answers.
    let pid = task_pid(&c.ctr_ok(ns, &["task", "ls"]), "sc-long");
    c.kill();
    assert!(alive(pid));
    c.spawn();
    assert_eq!(
        status_in(&c.ctr_ok(ns, &["task", "ls"]), "sc-long").as_deref(),
        Some("RUNNING")
    );
    let exec = c.ctr_ok(
        ns,
        &[
            "task",
            "exec",
            "--exec-id",
            "e2",
            "sc-long",
            "echo",
            "again",
        ],
    );
    assert_eq!(exec.trim(), "again");
    c.ctr_ok(ns, &["task", "kill", "sc-long"]);
    wait_until("sc-long to stop", || {
        status_in(&c.ctr_ok(ns, &["task", "ls"]), "sc-long").as_deref() == Some("STOPPED")
    });
    c.ctr_ok(ns, &["task", "delete", "sc-long"]);
    c.ctr_ok(ns, &["container", "rm", "sc-long"]);

    let topics = EventWatch::topics(&events.finish(), &["/tasks/"]);
    for want in ["/tasks/exec-added", "/tasks/paused", "/tasks/resumed"] {
        assert!(topics.iter().any(|t| t == want), "no {want} in {topics:?}");
    }

    // OOM kills reach containerd as TaskOOM (a new watch: the old one ended with containerd).
    let events = EventWatch::on_socket(&c.socket);
    let out = c.ctr(
        ns,
        &[
            "run",
            "--runtime",
            BERTH,
            "--rm",
            "--memory-limit",
            "16777216",
            &img,
            "sc-oom",
            "sh",
            "-c",
            "tail /dev/zero",
        ],
    );
    assert_eq!(out.status.code(), Some(137), "{}", out_of(&out));
    let topics = EventWatch::topics(&events.finish(), &["/tasks/"]);
    assert!(
        topics.iter().any(|t| t == "/tasks/oom"),
        "no /tasks/oom in {topics:?}"
    );
    wait_until("the shims to exit", || {
        berth_shim_pids(&c.socket).is_empty()
    });
}

#[test]
fn berth_shim_serves_a_pod_from_one_process_as_root() {
    let reg = Registry::start();
    let ns = "shim-pod";
    let (d, img) = berthd_with_busybox(&reg, ns);
    let ids = ["sp-1", "sp-2", "sp-3", "sp-4", "sp-5"];
    for id in ids {
        let mut run = vec![
            "run",
            "-d",
            "--runtime",
            BERTH,
            "--annotation",
            "io.kubernetes.cri.sandbox-id=pod-a",
            &img,
            id,
        ];
        run.extend_from_slice(TERMINABLE);
        d.ctr_ok(ns, &run);
    }
    let listing = d.ctr_ok(ns, &["task", "ls"]);
    for id in ids {
        assert_eq!(
            status_in(&listing, id).as_deref(),
            Some("RUNNING"),
            "{listing}"
        );
    }
    let shims = berth_shim_pids(&d.socket);
    assert_eq!(shims.len(), 1, "one shim for the pod: {shims:?}");
    // Exec and metrics reach each container through the shared shim.
    let out = d.ctr_ok(
        ns,
        &["task", "exec", "--exec-id", "x", "sp-3", "echo", "three"],
    );
    assert_eq!(out.trim(), "three");
    // The shim stays while any of the pod's containers is left, and goes with the last.
    for (i, id) in ids.iter().enumerate() {
        d.ctr_ok(ns, &["task", "kill", id]);
        wait_until("the task to stop", || {
            status_in(&d.ctr_ok(ns, &["task", "ls"]), id).as_deref() == Some("STOPPED")
        });
        d.ctr_ok(ns, &["task", "delete", id]);
        d.ctr_ok(ns, &["container", "rm", id]);
        if i + 1 < ids.len() {
            assert_eq!(berth_shim_pids(&d.socket), shims);
        }
    }
    wait_until("the pod's shim to exit", || {
        berth_shim_pids(&d.socket).is_empty()
    });
    assert!(d.leftover_mounts().is_empty(), "{:?}", d.leftover_mounts());
}

#[test]
fn berth_shim_writes_file_and_binary_log_uris_as_root() {
    let reg = Registry::start();
    let ns = "shim-logs";
    let (d, img) = berthd_with_busybox(&reg, ns);
    let dir = tempfile::tempdir().unwrap();

    // file://: stdout and stderr appended to one file, also when nobody is attached.
    let log = dir.path().join("c.log");
    let uri = format!("file://{}", log.display());
    d.ctr_ok(
        ns,
        &[
            "run",
            "-d",
            "--runtime",
            BERTH,
            "--log-uri",
            &uri,
            &img,
            "sl-file",
            "sh",
            "-c",
            "echo to-stdout; echo to-stderr >&2",
        ],
    );
    wait_until("the file log to be written", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("to-stdout") && text.contains("to-stderr")
    });

    // binary://: the logger gets stdout on fd 3, stderr on fd 4 and closes fd 5 when ready;
    // its arguments come from the URI's query, the container's id from its environment.
    let logger = dir.path().join("logger");
    std::fs::write(
        &logger,
        "#!/bin/sh\nout=$2\nexec 5>&-\n{ echo \"id=$CONTAINER_ID ns=$CONTAINER_NAMESPACE\"; cat <&3; cat <&4; } > \"$out\"\n",
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("755")
        .arg(&logger)
        .status()
        .unwrap();
    let out = dir.path().join("binary.log");
    let uri = format!("binary://{}?out={}", logger.display(), out.display());
    d.ctr_ok(
        ns,
        &[
            "run",
            "-d",
            "--runtime",
            BERTH,
            "--log-uri",
            &uri,
            &img,
            "sl-binary",
            "sh",
            "-c",
            "echo via-logger; echo err-via-logger >&2",
        ],
    );
    wait_until("the logger to write", || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        text.contains("err-via-logger")
    });
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.starts_with(&format!("id=sl-binary ns={ns}\n")),
        "{text}"
    );
    assert!(text.contains("via-logger\n"), "{text}");

    for id in ["sl-file", "sl-binary"] {
        wait_until("the task to stop", || {
            status_in(&d.ctr_ok(ns, &["task", "ls"]), id).as_deref() == Some("STOPPED")
        });
        d.ctr_ok(ns, &["task", "delete", id]);
        d.ctr_ok(ns, &["container", "rm", id]);
    }
    wait_until("the shims to exit", || {
        berth_shim_pids(&d.socket).is_empty()
    });
}
