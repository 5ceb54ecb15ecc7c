//! containerd's image API driven by Debian's unmodified `ctr` against a real berthd and a
//! real docker-registry on loopback. These tests need root (mounts, chown).

use berth_e2e::*;

#[test]
fn root_pull_list_check_and_remove_busybox() {
    let reg = Registry::start();
    let img = OciImage::build(&[
        busybox_layer(),
        vec![
            Entry::Dir("data", 0o755),
            Entry::File("data/hello".into(), b"hi\n".to_vec(), 0o644),
        ],
    ]);
    let reference = img.push(&reg, "busybox");
    let d = Berthd::start();

    d.ctr_ok("default", &["images", "pull", "--plain-http", &reference]);
    let ls = d.ctr_ok("default", &["images", "ls"]);
    assert!(ls.contains(&reference), "{ls}");
    let check = d.ctr_ok("default", &["images", "check"]);
    assert!(check.contains("complete (3/3)"), "{check}");
    let snaps = d.ctr_ok("default", &["snapshots", "ls"]);
    assert_eq!(
        snaps.lines().filter(|l| l.contains("Committed")).count(),
        2,
        "{snaps}"
    );
    let content = d.ctr_ok("default", &["content", "ls"]);
    assert!(content.contains(&img.manifest_digest), "{content}");

    d.ctr_ok("default", &["images", "rm", "--sync", &reference]);
    assert!(d
        .ctr_ok("default", &["images", "ls", "-q"])
        .trim()
        .is_empty());
    assert!(d
        .ctr_ok("default", &["content", "ls", "-q"])
        .trim()
        .is_empty());
    assert!(d.ctr_ok("default", &["snapshots", "ls"]).lines().count() <= 1);
    let blobs = std::fs::read_dir(d.root.join("io.containerd.content.v1.content/blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "blobs left on disk after image removal");
    let snapdirs = std::fs::read_dir(
        d.root
            .join("io.containerd.snapshotter.v1.overlayfs/snapshots"),
    )
    .unwrap()
    .count();
    assert_eq!(
        snapdirs, 0,
        "snapshot directories left on disk after image removal"
    );
}

fn pulled(reg: &Registry, layers: &[Vec<Entry>], repo: &str) -> (Berthd, OciImage, String) {
    let img = OciImage::build(layers);
    let reference = img.push(reg, repo);
    let d = Berthd::start();
    d.ctr_ok("default", &["images", "pull", "--plain-http", &reference]);
    (d, img, reference)
}

#[test]
fn root_version_plugins_and_namespaces() {
    let d = Berthd::start();
    let v = d.ctr_ok("default", &["version"]);
    assert!(v.contains("berth"), "{v}");
    let plugins = d.ctr_ok("default", &["plugins", "ls"]);
    for p in [
        "io.containerd.snapshotter.v1",
        "overlayfs",
        "io.containerd.content.v1",
        "io.containerd.grpc.v1",
    ] {
        assert!(plugins.contains(p), "{p} missing from plugins:\n{plugins}");
    }
    d.ctr_ok("default", &["namespaces", "create", "team-a", "owner=me"]);
    let ls = d.ctr_ok("default", &["namespaces", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("team-a") && l.contains("owner=me")),
        "{ls}"
    );
    d.ctr_ok(
        "default",
        &["namespaces", "label", "team-a", "owner=", "tier=gold"],
    );
    let ls = d.ctr_ok("default", &["namespaces", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("team-a") && l.contains("tier=gold") && !l.contains("owner")),
        "{ls}"
    );
    let dup = d.ctr("default", &["namespaces", "create", "team-a"]);
    assert!(
        !dup.status.success() && out_of(&dup).contains("already exists"),
        "{}",
        out_of(&dup)
    );
    let bad = d.ctr("default", &["namespaces", "create", "bad/name"]);
    assert!(
        !bad.status.success() && out_of(&bad).contains("invalid"),
        "{}",
        out_of(&bad)
    );
    let missing = d.ctr("default", &["namespaces", "label", "nobody", "a=b"]);
    assert!(
        !missing.status.success() && out_of(&missing).contains("namespace \"nobody\" not found"),
        "{}",
        out_of(&missing)
    );
    // A namespace holding content cannot be removed.
    d.ctr_ok("busy", &["leases", "create", "--id", "hold"]);
    let mut c = std::process::Command::new("ctr");
    c.arg("-a")
        .arg(&d.socket)
        .args(["-n", "busy", "content", "ingest", "x"])
        .stdin(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"held").unwrap();
    assert!(child.wait().unwrap().success());
    let busy = d.ctr("default", &["namespaces", "rm", "busy"]);
    assert!(out_of(&busy).contains("must be empty"), "{}", out_of(&busy));
    // A namespace with a lease only can go; one with content cannot.
    d.ctr_ok("team-a", &["leases", "create", "--id", "l1"]);
    assert!(d.ctr_ok("team-a", &["leases", "ls"]).contains("l1"));
    d.ctr_ok("default", &["namespaces", "rm", "team-a"]);
    assert!(!d
        .ctr_ok("default", &["namespaces", "ls", "-q"])
        .contains("team-a"));
    // SIGTERM stops berthd cleanly and removes its socket; the UUID survives a restart.
    let mut d = d;
    assert!(d.stop().success());
    assert!(!d.socket.exists(), "socket left behind after SIGTERM");
}

#[test]
fn root_second_daemon_on_same_root_refuses() {
    let d = Berthd::start();
    let out = std::process::Command::new(berthd_binary())
        .arg("--root")
        .arg(&d.root)
        .arg("--state")
        .arg(d.dir.path().join("state2"))
        .arg("--address")
        .arg(d.dir.path().join("second.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another berthd is already running"),
        "{}",
        out_of(&out)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode");
}

#[test]
fn root_tag_export_import_and_mount() {
    let reg = Registry::start();
    let data = vec![
        Entry::Dir("data", 0o755),
        Entry::File("data/hello".into(), b"hi\n".to_vec(), 0o640),
    ];
    let (d, _img, reference) = pulled(&reg, &[busybox_layer(), data], "busybox");
    d.ctr_ok(
        "default",
        &["images", "tag", &reference, "example.com/copy:1"],
    );
    assert!(d
        .ctr_ok("default", &["images", "ls", "-q"])
        .contains("example.com/copy:1"));

    let tarball = d.dir.path().join("export.tar");
    d.ctr_ok(
        "default",
        &["images", "export", tarball.to_str().unwrap(), &reference],
    );
    d.ctr_ok(
        "other",
        &[
            "images",
            "import",
            "--base-name",
            "imported/busybox",
            tarball.to_str().unwrap(),
        ],
    );
    let ls = d.ctr_ok("other", &["images", "ls", "-q"]);
    assert!(!ls.trim().is_empty(), "nothing imported: {ls}");
    let check = d.ctr_ok("other", &["images", "check"]);
    assert!(check.contains("complete"), "{check}");

    let target = d.dir.path().join("mnt");
    std::fs::create_dir_all(&target).unwrap();
    d.ctr_ok(
        "default",
        &["images", "mount", &reference, target.to_str().unwrap()],
    );
    let hello = std::fs::read_to_string(target.join("data/hello"));
    let busybox = target.join("bin/busybox").exists();
    d.ctr_ok(
        "default",
        &["images", "unmount", "--rm", target.to_str().unwrap()],
    );
    assert_eq!(hello.unwrap(), "hi\n");
    assert!(busybox);
    assert!(d.leftover_mounts().is_empty(), "{:?}", d.leftover_mounts());
}

#[test]
fn root_commit_with_wrong_digest_publishes_nothing() {
    let d = Berthd::start();
    let blobs = d.root.join("io.containerd.content.v1.content/blobs/sha256");
    let wrong = sha256(b"not this");
    let run = |args: &[&str]| {
        let mut c = std::process::Command::new("ctr");
        c.arg("-a")
            .arg(&d.socket)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"some bytes")
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(&[
        "content",
        "ingest",
        "--expected-digest",
        &wrong,
        "ref-digest",
    ]);
    assert!(!out.status.success());
    assert!(
        out_of(&out).contains("unexpected digest") && out_of(&out).contains(&wrong),
        "{}",
        out_of(&out)
    );
    assert_eq!(
        std::fs::read_dir(&blobs).unwrap().count(),
        0,
        "a blob was published"
    );
    assert!(d
        .ctr_ok("default", &["content", "ls", "-q"])
        .trim()
        .is_empty());
    // The right digest goes through.
    let out = run(&[
        "content",
        "ingest",
        "--expected-digest",
        &sha256(b"some bytes"),
        "ref-ok",
    ]);
    assert!(out.status.success(), "{}", out_of(&out));
    assert!(d
        .ctr_ok("default", &["content", "ls", "-q"])
        .contains(&sha256(b"some bytes")));
}

#[test]
fn root_hostile_layer_is_refused_and_writes_nothing_outside() {
    let reg = Registry::start();
    let img = OciImage::build(&[
        busybox_layer(),
        vec![Entry::RawFile(
            "../../../../../../tmp/berth-escape-test",
            b"pwned",
        )],
    ]);
    let reference = img.push(&reg, "evil");
    let d = Berthd::start();
    let _ = std::fs::remove_file("/tmp/berth-escape-test");
    let out = d.ctr("default", &["images", "pull", "--plain-http", &reference]);
    assert!(
        !out.status.success(),
        "hostile image unpacked: {}",
        out_of(&out)
    );
    assert!(out_of(&out).contains("escape"), "{}", out_of(&out));
    assert!(
        !std::path::Path::new("/tmp/berth-escape-test").exists(),
        "a layer wrote outside its snapshot"
    );
    assert!(d.leftover_mounts().is_empty());
}

#[test]
fn root_unknown_objects_and_bad_filters() {
    let d = Berthd::start();
    let out = d.ctr("default", &["images", "rm", "nope:latest"]);
    assert!(out_of(&out).contains("not found"), "{}", out_of(&out));
    let out = d.ctr("default", &["images", "ls", "name~=("]);
    assert!(!out.status.success(), "{}", out_of(&out));
    let out = d.ctr("default", &["leases", "rm", "nolease"]);
    assert!(out_of(&out).contains("not found"), "{}", out_of(&out));
    d.ctr_ok("default", &["leases", "create", "--id", "dup"]);
    let out = d.ctr("default", &["leases", "create", "--id", "dup"]);
    assert!(out_of(&out).contains("already exists"), "{}", out_of(&out));
    let out = d.ctr("default", &["snapshots", "--snapshotter", "zfs", "ls"]);
    assert!(
        out_of(&out).contains("snapshotter not loaded"),
        "{}",
        out_of(&out)
    );
}

/// Every path below `root` with its type, mode, owner, link target or content hash, and
/// for hardlinked files the set of paths sharing the inode.
fn tree(root: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut inodes: std::collections::HashMap<u64, Vec<String>> = Default::default();
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let md = std::fs::symlink_metadata(&path).unwrap();
            let what = if md.file_type().is_symlink() {
                format!("link->{}", std::fs::read_link(&path).unwrap().display())
            } else if md.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else {
                inodes.entry(md.ino()).or_default().push(rel.clone());
                format!("file:{}", sha256(&std::fs::read(&path).unwrap()))
            };
            out.insert(
                rel,
                format!(
                    "{what} mode={:o} owner={}:{}",
                    md.mode() & 0o7777,
                    md.uid(),
                    md.gid()
                ),
            );
        }
    }
    for mut group in inodes.into_values().filter(|g| g.len() > 1) {
        group.sort();
        out.insert(format!("hardlinks:{}", group[0]), group.join(","));
    }
    out
}

#[test]
fn root_three_layer_image_unpacks_like_umoci() {
    require("umoci");
    let reg = Registry::start();
    let mut l1 = busybox_layer();
    l1.extend([
        Entry::Dir("a", 0o755),
        Entry::File("a/keep".into(), b"v1".to_vec(), 0o644),
        Entry::File("a/gone".into(), b"bye".to_vec(), 0o644),
        Entry::Dir("d", 0o750),
        Entry::File("d/x".into(), b"x".to_vec(), 0o600),
        Entry::Dir("o", 0o755),
        Entry::File("o/lower".into(), b"lower".to_vec(), 0o644),
        Entry::Dir("p", 0o700),
    ]);
    let l2 = vec![
        Entry::Dir("a", 0o755),
        Entry::Whiteout("a/gone"),
        Entry::Whiteout("d"),
        Entry::Dir("o", 0o711),
        Entry::Opaque("o"),
        Entry::File("o/new".into(), b"new".to_vec(), 0o640),
        Entry::File("f".into(), b"linked".to_vec(), 0o604),
        Entry::Hardlink("f-link", "f"),
        Entry::Symlink("s", "a/keep"),
    ];
    let l3 = vec![
        Entry::Dir("a", 0o755),
        Entry::File("a/keep".into(), b"v3".to_vec(), 0o600),
        Entry::File("z".into(), b"z".to_vec(), 0o644),
        // Into a private directory of the first layer, without naming it: it stays private.
        Entry::File("p/.profile".into(), b"x".to_vec(), 0o600),
    ];
    let img = OciImage::build(&[l1, l2, l3]);
    let reference = img.push(&reg, "three");
    let d = Berthd::start();
    d.ctr_ok("default", &["images", "pull", "--plain-http", &reference]);
    let snaps = d.ctr_ok("default", &["snapshots", "ls"]);
    assert_eq!(
        snaps.lines().filter(|l| l.contains("Committed")).count(),
        3,
        "{snaps}"
    );

    let target = d.dir.path().join("mnt");
    std::fs::create_dir_all(&target).unwrap();
    d.ctr_ok(
        "default",
        &["images", "mount", &reference, target.to_str().unwrap()],
    );
    let ours = tree(&target);
    d.ctr_ok(
        "default",
        &["images", "unmount", "--rm", target.to_str().unwrap()],
    );

    let bundle = d.dir.path().join("umoci-bundle");
    let out = std::process::Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:latest", img.dir.path().display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(out.status.success(), "umoci unpack: {}", out_of(&out));
    let theirs = tree(&bundle.join("rootfs"));
    assert_eq!(ours, theirs, "berth's unpack differs from umoci's");
    assert_eq!(
        ours.get("a/keep")
            .map(|s| s.starts_with(&format!("file:{}", sha256(b"v3")))),
        Some(true)
    );
    assert!(
        !ours.contains_key("a/gone") && !ours.contains_key("d") && !ours.contains_key("o/lower")
    );
    assert!(
        ours.get("p").is_some_and(|s| s.contains("700")),
        "{:?}",
        ours.get("p")
    );

    // The server-side pull writes layers before their parents are there: the same tree.
    berth_e2e::transfer::transfer(
        &d.socket,
        "xfer",
        berth_e2e::transfer::Pull {
            reference: &reference,
            platforms: vec![berth_e2e::transfer::amd64()],
            creds: None,
        },
    )
    .0
    .unwrap_or_else(|e| panic!("transfer: {e:?}\n{}", d.log()));
    d.ctr_ok(
        "xfer",
        &["images", "mount", &reference, target.to_str().unwrap()],
    );
    let pulled = tree(&target);
    d.ctr_ok(
        "xfer",
        &["images", "unmount", "--rm", target.to_str().unwrap()],
    );
    assert_eq!(
        pulled, theirs,
        "the server-side pull differs from umoci's unpack"
    );
    assert!(ours.contains_key("hardlinks:f"), "{ours:?}");
}

#[test]
fn root_sigkill_mid_pull_leaves_no_partial_blob_and_retry_completes() {
    let reg = Registry::start();
    // A 64 MiB incompressible layer, so the pull is still streaming when berthd dies.
    let mut big = vec![0u8; 64 << 20];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for chunk in big.chunks_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
    }
    let img = OciImage::build(&[
        busybox_layer(),
        vec![Entry::File("big.bin".into(), big, 0o644)],
    ]);
    let reference = img.push(&reg, "big");
    let mut d = Berthd::start();
    let ingest = d.root.join("io.containerd.content.v1.content/ingest");
    let mut pull = std::process::Command::new("ctr")
        .arg("-a")
        .arg(&d.socket)
        .args(["images", "pull", "--plain-http", &reference])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill berthd while an ingest holds part of a blob: more than nothing, less than its
    // total, so the kill provably lands mid-download.
    let start = std::time::Instant::now();
    let partial = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let written = std::fs::metadata(e.path().join("data")).map_or(0, |m| m.len());
                let total = std::fs::read(e.path().join("meta.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .and_then(|m| m["total"].as_u64())
                    .unwrap_or(0);
                written > 0 && written < total
            })
    };
    while !partial(&ingest) && start.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(partial(&ingest), "the kill would not land mid-download");
    d.kill();
    let _ = pull.wait();
    d.spawn();
    // Nothing is visible under a digest it does not match.
    let blobs = d.root.join("io.containerd.content.v1.content/blobs/sha256");
    for e in std::fs::read_dir(&blobs).unwrap() {
        let e = e.unwrap();
        let data = std::fs::read(e.path()).unwrap();
        assert_eq!(
            sha256(&data),
            format!("sha256:{}", e.file_name().to_string_lossy()),
            "a blob does not match its digest"
        );
    }
    let listed = d.ctr_ok("default", &["content", "ls", "-q"]);
    for dg in listed.split_whitespace() {
        assert!(blobs.join(&dg[7..]).exists(), "{dg} listed but not on disk");
    }
    d.ctr_ok("default", &["images", "pull", "--plain-http", &reference]);
    let check = d.ctr_ok("default", &["images", "check"]);
    assert!(check.contains("complete (3/3)"), "{check}");
}

#[test]
fn root_snapshot_diff_creates_a_layer_with_whiteouts() {
    let reg = Registry::start();
    let data = vec![
        Entry::Dir("data", 0o755),
        Entry::File("data/old".into(), b"old".to_vec(), 0o644),
    ];
    let (d, img, _reference) = pulled(&reg, &[busybox_layer(), data], "busybox");
    // The chain id of the top layer names its committed snapshot.
    let snaps = d.ctr_ok("default", &["snapshots", "ls"]);
    let top = snaps
        .lines()
        .find(|l| {
            l.contains("Committed")
                && l.split_whitespace()
                    .nth(1)
                    .is_some_and(|p| p.starts_with("sha256:"))
        })
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no committed child snapshot: {snaps}"))
        .to_owned();
    d.ctr_ok("default", &["snapshots", "prepare", "work", &top]);
    let target = d.dir.path().join("work");
    std::fs::create_dir_all(&target).unwrap();
    let mounts = d.ctr_ok(
        "default",
        &["snapshots", "mounts", target.to_str().unwrap(), "work"],
    );
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(&mounts)
        .status()
        .unwrap();
    assert!(st.success(), "mount: {mounts}");
    std::fs::write(target.join("data/new"), "new").unwrap();
    std::fs::remove_file(target.join("data/old")).unwrap();
    let st = std::process::Command::new("umount")
        .arg(&target)
        .status()
        .unwrap();
    assert!(st.success());

    // ctr writes the new layer blob itself to stdout.
    let out = d.ctr("default", &["snapshots", "diff", "--keep", "work"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = sha256(&out.stdout);
    let info = d.ctr_ok("default", &["content", "ls"]);
    assert!(
        info.lines()
            .any(|l| l.starts_with(&digest) && l.contains("containerd.io/uncompressed")),
        "{info}"
    );
    let blob = std::fs::read(
        d.root
            .join("io.containerd.content.v1.content/blobs/sha256")
            .join(&digest[7..]),
    )
    .unwrap();
    let mut names = Vec::new();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(&blob[..]));
    for e in a.entries().unwrap() {
        names.push(e.unwrap().path().unwrap().to_string_lossy().into_owned());
    }
    assert!(
        names.contains(&"data/new".to_string()) && names.contains(&"data/.wh.old".to_string()),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("bin")),
        "unchanged files in the diff: {names:?}"
    );
    let _ = img;
}

#[test]
fn root_write_resumes_from_offset_after_client_disconnects() {
    use containerd_client::services::v1::content_client::ContentClient;
    use containerd_client::services::v1::{StatusRequest, WriteAction, WriteContentRequest};
    use containerd_client::tonic::Request;

    let d = Berthd::start();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let expected = sha256(&data);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        macro_rules! ns {
            ($r:expr) => {
                containerd_client::with_namespace!($r, "default")
            };
        }
        let channel = containerd_client::connect(&d.socket).await.unwrap();
        let mut client = ContentClient::new(channel.clone());
        let msg = |action: WriteAction, offset: usize, chunk: &[u8]| WriteContentRequest {
            action: action as i32,
            r#ref: "resume-me".into(),
            total: data.len() as i64,
            expected: expected.clone(),
            offset: offset as i64,
            data: chunk.to_vec(),
            labels: Default::default(),
        };
        // First client: writes 1 MB and vanishes without committing.
        {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let mut resp = client
                .write(ns!(tokio_stream::wrappers::ReceiverStream::new(rx)))
                .await
                .unwrap()
                .into_inner();
            tx.send(msg(WriteAction::Stat, 0, &[])).await.unwrap();
            assert_eq!(resp.message().await.unwrap().unwrap().offset, 0);
            tx.send(msg(WriteAction::Write, 0, &data[..1_000_000]))
                .await
                .unwrap();
            assert_eq!(resp.message().await.unwrap().unwrap().offset, 1_000_000);
            drop(tx);
            drop(resp);
        }
        // The ingest keeps its bytes (the writer lock is released as the stream ends).
        let mut offset = 0;
        for _ in 0..100 {
            match client
                .status(ns!(StatusRequest {
                    r#ref: "resume-me".into()
                }))
                .await
            {
                Ok(s) => {
                    offset = s.into_inner().status.unwrap().offset;
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
        assert_eq!(offset, 1_000_000);
        // Second client: STAT tells it where to go on, a wrong offset is refused, then it finishes.
        // Like ctr, retry while the old stream still holds the ref (Unavailable).
        let mut attempt = 0;
        let (tx, mut resp, st) = loop {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let mut resp = client
                .write(ns!(tokio_stream::wrappers::ReceiverStream::new(rx)))
                .await
                .unwrap()
                .into_inner();
            tx.send(msg(WriteAction::Stat, 0, &[])).await.unwrap();
            match resp.message().await {
                Ok(Some(st)) => break (tx, resp, st),
                Err(e)
                    if e.code() == containerd_client::tonic::Code::Unavailable && attempt < 50 =>
                {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => panic!("reopen: {other:?}"),
            }
        };
        assert_eq!(st.offset, 1_000_000);
        tx.send(msg(WriteAction::Write, 1_000_000, &data[1_000_000..]))
            .await
            .unwrap();
        assert_eq!(
            resp.message().await.unwrap().unwrap().offset,
            data.len() as i64
        );
        tx.send(msg(WriteAction::Commit, data.len(), &[]))
            .await
            .unwrap();
        let done = resp.message().await.unwrap().unwrap();
        assert_eq!(done.digest, expected);

        // Writing at an offset past the end is OutOfRange, naming the ref.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut resp = client
            .write(ns!(tokio_stream::wrappers::ReceiverStream::new(rx)))
            .await
            .unwrap()
            .into_inner();
        let mut bad = msg(WriteAction::Write, 5, b"x");
        bad.r#ref = "other".into();
        bad.expected = String::new();
        tx.send(bad).await.unwrap();
        let err = loop {
            match resp.message().await {
                Err(e) => break e,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("no error for a write past the end"),
            }
        };
        assert_eq!(
            err.code(),
            containerd_client::tonic::Code::OutOfRange,
            "{err}"
        );
        assert!(err.message().contains("\"other\""), "{err}");
    });
    assert!(d
        .ctr_ok("default", &["content", "ls", "-q"])
        .contains(&expected));
}

#[test]
fn root_second_namespace_shares_content_and_unpacks_its_own_snapshots() {
    let reg = Registry::start();
    let (d, _img, reference) = pulled(&reg, &[busybox_layer()], "busybox");
    let before = std::fs::read_dir(d.root.join("io.containerd.content.v1.content/blobs/sha256"))
        .unwrap()
        .count();
    d.ctr_ok("second", &["images", "pull", "--plain-http", &reference]);
    let check = d.ctr_ok("second", &["images", "check"]);
    assert!(
        check.contains("complete (2/2)") && check.contains("true"),
        "{check}"
    );
    assert_eq!(
        d.ctr_ok("second", &["snapshots", "ls"])
            .lines()
            .filter(|l| l.contains("Committed"))
            .count(),
        1
    );
    let after = std::fs::read_dir(d.root.join("io.containerd.content.v1.content/blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(before, after, "blobs stored twice");
    // Removing the image in one namespace keeps the other's content.
    d.ctr_ok("default", &["images", "rm", "--sync", &reference]);
    assert!(d
        .ctr_ok("second", &["images", "check"])
        .contains("complete (2/2)"));
}

#[test]
fn root_containers_create_list_info_label_and_remove() {
    let reg = Registry::start();
    let (d, _img, reference) = pulled(&reg, &[busybox_layer()], "busybox");
    d.ctr_ok(
        "default",
        &[
            "containers",
            "create",
            "--label",
            "team=a",
            &reference,
            "c1",
        ],
    );
    let ls = d.ctr_ok("default", &["containers", "ls"]);
    assert!(
        ls.lines().any(|l| l.starts_with("c1")
            && l.contains(&reference)
            && l.contains("io.containerd.runc.v2")),
        "{ls}"
    );
    let info = d.ctr_ok("default", &["containers", "info", "c1"]);
    assert!(
        info.contains("\"Spec\"")
            && info.contains("\"SnapshotKey\": \"c1\"")
            && info.contains("team"),
        "{info}"
    );
    let dup = d.ctr("default", &["containers", "create", &reference, "c1"]);
    assert!(out_of(&dup).contains("already exists"), "{}", out_of(&dup));
    let filtered = d.ctr_ok("default", &["containers", "ls", "labels.team==a"]);
    assert!(filtered.contains("c1"), "{filtered}");
    assert!(!d
        .ctr_ok("default", &["containers", "ls", "labels.team==b"])
        .contains("c1"));
    d.ctr_ok("default", &["containers", "label", "c1", "team=b"]);
    assert!(d
        .ctr_ok("default", &["containers", "ls", "labels.team==b"])
        .contains("c1"));

    // The container keeps its snapshot chain alive after the image is gone.
    d.ctr_ok("default", &["images", "rm", "--sync", &reference]);
    let snaps = d.ctr_ok("default", &["snapshots", "ls"]);
    assert!(
        snaps
            .lines()
            .any(|l| l.starts_with("c1 ") && l.contains("Active")),
        "{snaps}"
    );
    assert!(snaps.lines().any(|l| l.contains("Committed")), "{snaps}");

    d.ctr_ok("default", &["containers", "rm", "c1"]);
    let missing = d.ctr("default", &["containers", "info", "c1"]);
    assert!(
        out_of(&missing).contains("not found"),
        "{}",
        out_of(&missing)
    );
    d.ctr_ok("default", &["leases", "create", "--id", "trigger-gc"]);
    d.ctr_ok("default", &["leases", "rm", "--sync", "trigger-gc"]);
    assert!(
        d.ctr_ok("default", &["snapshots", "ls"]).lines().count() <= 1,
        "snapshots left after the container went"
    );
}

#[test]
fn root_events_stream_object_changes_in_order() {
    let d = Berthd::start();
    let events = EventWatch::start(&d);
    d.ctr_ok("default", &["namespaces", "create", "evns"]);
    d.ctr_ok("default", &["snapshots", "prepare", "work", ""]);
    d.ctr_ok("default", &["snapshots", "commit", "done", "work"]);
    d.ctr_ok("default", &["snapshots", "rm", "done"]);
    let mut c = std::process::Command::new("ctr");
    c.arg("-a")
        .arg(&d.socket)
        .args(["content", "ingest", "blob"])
        .stdin(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"event me").unwrap();
    assert!(child.wait().unwrap().success());
    d.ctr_ok("default", &["content", "rm", &sha256(b"event me")]);
    let text = events.finish();
    let topics = EventWatch::topics(&text, &["/"]);
    assert_eq!(
        topics,
        [
            "/namespaces/create",
            "/snapshot/prepare",
            "/snapshot/commit",
            "/snapshot/remove",
            "/content/delete"
        ],
        "events:\n{text}"
    );
    assert!(
        text.contains("\"key\":\"work\"") || text.contains("work"),
        "{text}"
    );
}

#[test]
fn root_publish_subcommand_delivers_a_shim_event() {
    use prost::Message;
    let d = Berthd::start();
    let events = EventWatch::start(&d);
    let oom = containerd_client::events::TaskOom {
        container_id: "published-by-shim".into(),
    };
    let any = containerd_client::to_any(&oom).encode_to_vec();
    let publish = |bytes: &[u8]| {
        let mut child = std::process::Command::new(berthd_binary())
            .arg("--address")
            .arg(&d.socket)
            .args(["publish", "--topic", "/tasks/oom", "--namespace", "pubns"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), bytes).unwrap();
        child.wait_with_output().unwrap()
    };
    let ok = publish(&any);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Garbage on stdin is refused with a message, and publishes nothing.
    let bad = publish(b"\xff\xff\xff not protobuf");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a protobuf Any"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let text = events.finish();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("/tasks/oom")).collect();
    assert_eq!(lines.len(), 1, "events:\n{text}");
    assert!(lines[0].contains("pubns"), "{text}");
    assert!(lines[0].contains("published-by-shim"), "{text}");
}

/// Pulls and runs an image whose second layer writes through symlinks: its own (relative
/// and escaping, absolute) and one that only the first layer has. Everything lands where
/// the links point with the snapshot as root, as on containerd's merged view, nothing
/// outside, and the container reads it.
fn layers_through_symlinks_unpack_inside_and_run(d: &Berthd, reg: &Registry, tag: &str) {
    let mut l1 = busybox_layer();
    l1.extend([
        Entry::Dir("tmp", 0o1777),
        Entry::Symlink("lower-up", "../../../../../../tmp"),
    ]);
    let l2 = vec![
        Entry::Symlink("up", "../../../../../../tmp"),
        Entry::Symlink("abs", "/tmp"),
        Entry::File(format!("up/berth-{tag}-up"), b"up ".to_vec(), 0o644),
        Entry::File(format!("abs/berth-{tag}-abs"), b"abs ".to_vec(), 0o644),
        Entry::File(
            format!("lower-up/berth-{tag}-lower"),
            b"lower".to_vec(),
            0o644,
        ),
    ];
    let reference = OciImage::build(&[l1, l2]).push(reg, tag);
    let files = ["up", "abs", "lower"].map(|f| format!("/tmp/berth-{tag}-{f}"));
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    d.ctr_ok("default", &["images", "pull", "--plain-http", &reference]);
    for f in &files {
        assert!(
            !std::path::Path::new(f).exists(),
            "{f}: a layer wrote outside its snapshot"
        );
    }
    let mut args = vec!["run", "--rm", &reference, tag, "cat"];
    args.extend(files.iter().map(String::as_str));
    assert_eq!(d.ctr_ok("default", &args), "up abs lower");
    assert!(d.leftover_mounts().is_empty(), "{:?}", d.leftover_mounts());
}

#[test]
fn root_layers_write_through_their_own_and_lower_symlinks_inside() {
    let reg = Registry::start();
    let d = Berthd::start();
    layers_through_symlinks_unpack_inside_and_run(&d, &reg, "through-links");
}

#[test]
fn root_without_openat2_layers_unpack_inside_and_the_image_runs() {
    // A kernel older than 5.6 has no openat2: berthd walks each path itself and must land
    // where the kernel would have, inside the snapshot.
    let reg = Registry::start();
    let d = Berthd::start_without_openat2();
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    assert!(
        status.lines().any(|l| l == "Seccomp:\t2"),
        "berthd runs without its filter: {status}"
    );
    layers_through_symlinks_unpack_inside_and_run(&d, &reg, "no-openat2");
}
