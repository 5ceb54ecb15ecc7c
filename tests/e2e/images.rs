//! containerd's image API driven by Debian's unmodified `ctr` against a real berthd and a
//! real docker-registry on loopback. These tests need root (mounts, chown).

use berth_e2e::*;

fn out_of(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn root_pull_list_check_and_remove_busybox() {
    let reg = Registry::start();
    let img = OciImage::build(&[busybox_layer(), vec![Entry::Dir("data", 0o755), Entry::File("data/hello".into(), b"hi\n".to_vec(), 0o644)]]);
    let reference = img.push(&reg, "busybox");
    let d = Berthd::start();

    d.ctr_ok("default", &["images", "pull", "--plain-http", &reference]);
    let ls = d.ctr_ok("default", &["images", "ls"]);
    assert!(ls.contains(&reference), "{ls}");
    let check = d.ctr_ok("default", &["images", "check"]);
    assert!(check.contains("complete (3/3)"), "{check}");
    let snaps = d.ctr_ok("default", &["snapshots", "ls"]);
    assert_eq!(snaps.lines().filter(|l| l.contains("Committed")).count(), 2, "{snaps}");
    let content = d.ctr_ok("default", &["content", "ls"]);
    assert!(content.contains(&img.manifest_digest), "{content}");

    d.ctr_ok("default", &["images", "rm", "--sync", &reference]);
    assert!(d.ctr_ok("default", &["images", "ls", "-q"]).trim().is_empty());
    assert!(d.ctr_ok("default", &["content", "ls", "-q"]).trim().is_empty());
    assert!(d.ctr_ok("default", &["snapshots", "ls"]).lines().count() <= 1);
    let blobs = std::fs::read_dir(d.root.join("io.containerd.content.v1.content/blobs/sha256")).unwrap().count();
    assert_eq!(blobs, 0, "blobs left on disk after image removal");
    let snapdirs = std::fs::read_dir(d.root.join("io.containerd.snapshotter.v1.overlayfs/snapshots")).unwrap().count();
    assert_eq!(snapdirs, 0, "snapshot directories left on disk after image removal");
    let _ = out_of;
}
