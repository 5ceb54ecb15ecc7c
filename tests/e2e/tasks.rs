//! containerd's runtime API (containers, tasks, events) driven by Debian's unmodified `ctr`
//! against a real berthd that runs containers through Debian's containerd-shim-runc-v2 and
//! runc. These tests need root. Container ids are unique per test: runc's state directory
//! is shared by every daemon on the machine.

use berth_e2e::*;

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
}
