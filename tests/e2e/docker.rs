//! Docker's daemon (Debian's dockerd 20.10, unmodified) as a client of berthd: it starts on
//! a berthd with an empty root, runs, execs into, pauses, measures and stops its containers
//! through berthd, and keeps working when berthd is killed and started again. Needs root.

use std::time::{Duration, Instant};

use berth_e2e::docker::{docker_archive, Dockerd};
use berth_e2e::*;

fn loaded(d: &Berthd) -> (Dockerd, tempfile::TempDir) {
    let docker = Dockerd::start(&d.socket, &["--add-runtime", "nosuch=/nonexistent/runc"]);
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("bb.tar");
    docker_archive(&OciImage::build(&[busybox_layer()]), "bb:latest", &archive);
    let out = docker.docker_ok(&["load", "-i", archive.to_str().unwrap()]);
    assert!(out.contains("bb:latest"), "{out}");
    (docker, tmp)
}

/// The task of container `id` as berthd lists it in dockerd's namespace.
fn task_status(d: &Berthd, id: &str) -> String {
    d.ctr_ok("moby", &["task", "ls"])
        .lines()
        .find(|l| l.starts_with(id))
        .map(|l| l.split_whitespace().last().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

fn full_id(docker: &Dockerd, name: &str) -> String {
    docker
        .docker_ok(&["inspect", "-f", "{{.Id}}", name])
        .trim()
        .to_owned()
}

#[test]
fn root_dockerd_runs_its_containers_through_berthd() {
    let mut d = Berthd::start();
    let (docker, _tmp) = loaded(&d);

    let hi = docker.docker_ok(&["run", "--rm", "--network", "none", "bb", "echo", "hi"]);
    assert_eq!(hi, "hi\n");
    let three = docker.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "bb",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(three.status.code(), Some(3), "the exit code comes through");

    docker.docker_ok(&[
        "run",
        "-d",
        "--name",
        "d1",
        "--network",
        "none",
        "bb",
        "sleep",
        "1000",
    ]);
    let id = full_id(&docker, "d1");
    assert_eq!(task_status(&d, &id), "RUNNING");
    assert_eq!(
        docker.docker_ok(&["exec", "d1", "echo", "alive"]),
        "alive\n"
    );
    let top = docker.docker_ok(&["top", "d1"]);
    assert!(top.contains("sleep 1000"), "{top}");
    let stats = docker.docker_ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}} {{.MemUsage}} {{.PIDs}}",
        "d1",
    ]);
    assert!(
        stats.starts_with("d1 ") && !stats.contains("0B / 0B"),
        "memory is measured: {stats}"
    );
    assert!(stats.trim().ends_with(" 1"), "one process: {stats}");
    docker.docker_ok(&["pause", "d1"]);
    assert_eq!(task_status(&d, &id), "PAUSED");
    assert!(docker.docker_ok(&["ps"]).contains("(Paused)"));
    docker.docker_ok(&["unpause", "d1"]);
    assert_eq!(task_status(&d, &id), "RUNNING");

    // berthd dies and comes back; dockerd reconnects and carries on with the container.
    d.kill();
    d.spawn();
    let t = Instant::now();
    assert_eq!(
        docker.docker_after_reconnect(&["exec", "d1", "echo", "alive"]),
        "alive\n"
    );
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "exec took {:?}",
        t.elapsed()
    );
    // And dockerd hears the exits of the execs it starts from now on.
    let t = Instant::now();
    assert_eq!(
        docker.docker_ok(&["exec", "d1", "echo", "again"]),
        "again\n"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "exec took {:?}",
        t.elapsed()
    );
    docker.docker_ok(&["stop", "-t", "1", "d1"]);
    let state = docker.docker_ok(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{.State.ExitCode}}",
        "d1",
    ]);
    assert_eq!(state.trim(), "exited 137", "SIGKILL after the stop timeout");
    docker.docker_ok(&["rm", "d1"]);
    assert_eq!(task_status(&d, &id), "", "the task is gone from berthd");

    // A runtime binary nobody has: the error names it.
    let bad = docker.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--runtime",
        "nosuch",
        "bb",
        "true",
    ]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("/nonexistent/runc"),
        "{err}"
    );
}

#[test]
fn root_containers_outlive_dockerd_and_berthd_with_live_restore() {
    let mut d = Berthd::start();
    let (mut docker, _tmp) = loaded(&d);
    docker.stop();
    docker.set_args(&["--live-restore"]);
    docker.spawn();
    docker.docker_ok(&[
        "run",
        "-d",
        "--name",
        "lr1",
        "--network",
        "none",
        "bb",
        "sleep",
        "1000",
    ]);
    let id = full_id(&docker, "lr1");
    // dockerd goes away and comes back: the container runs on.
    docker.stop();
    assert_eq!(task_status(&d, &id), "RUNNING");
    docker.spawn();
    assert_eq!(
        docker.docker_ok(&["exec", "lr1", "echo", "alive"]),
        "alive\n"
    );
    // berthd goes away and comes back too.
    d.kill();
    d.spawn();
    assert_eq!(
        docker.docker_after_reconnect(&["exec", "lr1", "echo", "again"]),
        "again\n"
    );
    docker.docker_ok(&["rm", "-f", "lr1"]);
    assert_eq!(task_status(&d, &id), "");
}
