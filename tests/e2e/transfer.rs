//! Server-side pull through containerd's Transfer API (registry → image store), driven by
//! a gRPC client as containerd 2.x clients drive it, against docker-registry on loopback.
//! The pulled images are then checked and run with Debian's ctr. These tests need root.

use berth_e2e::transfer::{amd64, transfer, Pull};
use berth_e2e::*;
use containerd_client::tonic::Code;
use containerd_client::types::transfer::Progress;
use containerd_client::types::Platform;

fn pull_ok(d: &Berthd, ns: &str, p: Pull<'_>) -> Vec<Progress> {
    let (r, events) = transfer(&d.socket, ns, p);
    r.unwrap_or_else(|e| panic!("transfer failed: {e:?}\n--- berthd log ---\n{}", d.log()));
    events
}

/// A linux/amd64 pull of `reference` without credentials.
fn amd64_pull(reference: &str) -> Pull<'_> {
    Pull {
        reference,
        platforms: vec![amd64()],
        creds: None,
    }
}

fn pull_amd64(d: &Berthd, ns: &str, reference: &str) -> Vec<Progress> {
    pull_ok(d, ns, amd64_pull(reference))
}

/// Runs the data image's `cat /data/hello` with ctr and checks what it prints.
fn runs_data_image(d: &Berthd, ns: &str, reference: &str, id: &str) {
    let out = d.ctr_ok(ns, &["run", "--rm", reference, id, "cat", "/data/hello"]);
    assert_eq!(out, "pulled by berthd\n");
}

fn data_image() -> OciImage {
    OciImage::build(&[
        busybox_layer(),
        vec![
            Entry::Dir("data", 0o755),
            Entry::File("data/hello".into(), b"pulled by berthd\n".to_vec(), 0o644),
        ],
    ])
}

#[test]
fn root_transfer_pulls_unpacks_and_the_image_runs() {
    let reg = Registry::start();
    let img = data_image();
    let reference = img.push(&reg, "served");
    let d = Berthd::start();
    let events = pull_amd64(&d, "default", &reference);
    let names: Vec<String> = events
        .iter()
        .map(|e| format!("{} {}", e.event, e.name))
        .collect();
    for want in [
        "Resolving from OCI Registry (",
        "fetching image content",
        "waiting manifest-",
        "complete layer-",
        "extracted layer-",
        "saved",
        "Completed pull from OCI Registry (",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(want)),
            "no {want:?} in {names:#?}"
        );
    }
    let ls = d.ctr_ok("default", &["images", "ls"]);
    assert!(ls.contains(&reference), "{ls}");
    let check = d.ctr_ok("default", &["images", "check"]);
    assert!(check.contains("complete (3/3)"), "{check}");
    runs_data_image(&d, "default", &reference, "xfer-run-1");

    // A second pull of the same image fetches nothing and still succeeds.
    let again = pull_amd64(&d, "default", &reference);
    assert!(!again.iter().any(|e| e.event == "complete"), "{again:#?}");

    // By digest.
    let by_digest = format!("{}/served@{}", reg.addr, img.manifest_digest);
    pull_ok(
        &d,
        "bydigest",
        Pull {
            reference: &by_digest,
            platforms: vec![],
            creds: None,
        },
    );
    let ls = d.ctr_ok("bydigest", &["images", "ls", "-q"]);
    assert!(ls.contains(&img.manifest_digest), "{ls}");
    runs_data_image(&d, "bydigest", &by_digest, "xfer-run-2");

    // Removing the image and collecting leaves no blob behind.
    for (ns, r) in [
        ("default", reference.as_str()),
        ("bydigest", by_digest.as_str()),
    ] {
        d.ctr_ok(ns, &["images", "rm", "--sync", r]);
    }
    let blobs = std::fs::read_dir(d.root.join("io.containerd.content.v1.content/blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "blobs left after the pulled images were removed");
}

#[test]
fn root_transfer_picks_the_platform_from_an_index() {
    let reg = Registry::start();
    let mut amd = busybox_layer();
    amd.push(Entry::File("platform".into(), b"amd64\n".to_vec(), 0o644));
    let mut arm = busybox_layer();
    arm.push(Entry::File("platform".into(), b"arm64\n".to_vec(), 0o644));
    let img = OciImage::build_index(&[("arm64", vec![arm]), ("amd64", vec![amd])]);
    let reference = img.push(&reg, "multi");
    let d = Berthd::start();
    pull_amd64(&d, "default", &reference);
    let ls = d.ctr_ok("default", &["images", "ls"]);
    assert!(
        ls.contains(&img.manifest_digest),
        "the image names the index: {ls}"
    );
    assert!(
        ls.contains("application/vnd.oci.image.index.v1+json"),
        "{ls}"
    );
    let out = d.ctr_ok(
        "default",
        &[
            "run",
            "--rm",
            &reference,
            "xfer-multi-1",
            "cat",
            "/platform",
        ],
    );
    assert_eq!(out, "amd64\n");

    // A platform the index does not have is NotFound, naming it.
    let (r, _) = transfer(
        &d.socket,
        "other",
        Pull {
            reference: &reference,
            platforms: vec![Platform {
                os: "linux".into(),
                architecture: "s390x".into(),
                variant: String::new(),
                os_version: String::new(),
            }],
            creds: None,
        },
    );
    let e = r.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("linux/s390x"), "{e:?}");
}

#[test]
fn root_transfer_with_basic_auth() {
    let reg = Registry::start_with_htpasswd("berth", "s3cret");
    let img = data_image();
    let reference = img.push_as(&reg, "private", Some("berth:s3cret"));
    let d = Berthd::start();
    let (r, _) = transfer(
        &d.socket,
        "default",
        Pull {
            reference: &reference,
            platforms: vec![amd64()],
            creds: Some(("berth", "wrong")),
        },
    );
    let e = r.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(
        e.message().contains(&reg.addr),
        "the registry is named: {e:?}"
    );
    let (r, _) = transfer(&d.socket, "default", amd64_pull(&reference));
    assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);
    pull_ok(
        &d,
        "default",
        Pull {
            reference: &reference,
            platforms: vec![amd64()],
            creds: Some(("berth", "s3cret")),
        },
    );
    runs_data_image(&d, "default", &reference, "xfer-auth-1");
}

#[test]
fn root_transfer_bad_references_and_unknown_images() {
    let reg = Registry::start();
    let d = Berthd::start();
    let (r, _) = transfer(
        &d.socket,
        "default",
        Pull {
            reference: "UPPER/Case:tag",
            platforms: vec![],
            creds: None,
        },
    );
    let e = r.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("UPPER/Case:tag"), "{e:?}");
    let missing = format!("{}/nothing:here", reg.addr);
    let (r, _) = transfer(
        &d.socket,
        "default",
        Pull {
            reference: &missing,
            platforms: vec![],
            creds: None,
        },
    );
    let e = r.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("nothing"), "{e:?}");
    assert!(d
        .ctr_ok("default", &["images", "ls", "-q"])
        .trim()
        .is_empty());
}

/// busybox plus a 4 MB layer that does not compress; returns the image and that layer's digest.
fn noisy_image() -> (OciImage, String) {
    let img = OciImage::build(&[
        busybox_layer(),
        vec![Entry::File("noise.bin".into(), noise(4 << 20, 7), 0o644)],
    ]);
    let layer = img.layer_digests()[1].clone();
    (img, layer)
}

fn via(proxy: &Proxy, repo: &str) -> String {
    format!("{}/{repo}:latest", proxy.addr)
}

fn blob_files(d: &Berthd) -> Vec<String> {
    std::fs::read_dir(d.root.join("io.containerd.content.v1.content/blobs/sha256"))
        .map(|r| {
            r.flatten()
                .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn root_transfer_resumes_a_cut_off_blob_and_retries_server_errors() {
    let reg = Registry::start();
    let (img, layer) = noisy_image();
    img.push(&reg, "noisy");

    let cut = Proxy::faulty(&reg.addr, &layer, Fault::CutHalf, 1);
    let d = Berthd::start();
    let reference = via(&cut, "noisy");
    pull_amd64(&d, "default", &reference);
    let asks: Vec<_> = cut
        .requests()
        .into_iter()
        .filter(|(l, _)| l.contains(&layer))
        .collect();
    assert_eq!(asks.len(), 2, "{asks:#?}");
    let resumed_from = asks[1]
        .1
        .as_deref()
        .expect("the second request resumes with Range");
    assert!(
        resumed_from.starts_with("bytes=") && resumed_from != "bytes=0-",
        "{resumed_from}"
    );
    let out = d.ctr_ok(
        "default",
        &[
            "run",
            "--rm",
            &reference,
            "xfer-cut-1",
            "sh",
            "-c",
            "ls -l /noise.bin",
        ],
    );
    assert!(out.contains(&(4 << 20).to_string()), "{out}");
    drop(d);

    let flaky = Proxy::faulty(&reg.addr, &layer, Fault::Fail500, 2);
    let d = Berthd::start();
    pull_ok(
        &d,
        "default",
        Pull {
            reference: &via(&flaky, "noisy"),
            platforms: vec![amd64()],
            creds: None,
        },
    );
    assert_eq!(flaky.gets(&layer), 3, "two 500s, then the blob");
}

#[test]
fn root_transfer_never_stores_a_blob_that_does_not_match_its_digest() {
    let reg = Registry::start();
    let (img, layer) = noisy_image();
    img.push(&reg, "noisy");

    let liar = Proxy::faulty(&reg.addr, &layer, Fault::Corrupt, 1000);
    let d = Berthd::start();
    let (r, _) = transfer(
        &d.socket,
        "default",
        Pull {
            reference: &via(&liar, "noisy"),
            platforms: vec![amd64()],
            creds: None,
        },
    );
    let e = r.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains(&layer), "the digest is named: {e:?}");
    assert!(
        !blob_files(&d).contains(&layer),
        "a corrupt blob was stored"
    );
    let content = d.ctr_ok("default", &["content", "ls"]);
    assert!(
        !content.lines().any(|l| l.starts_with(&layer)),
        "content lists the corrupt blob:\n{content}"
    );
    assert!(d
        .ctr_ok("default", &["images", "ls", "-q"])
        .trim()
        .is_empty());
    // What the failed pull did store (manifest, config, busybox layer) is collected.
    let start = std::time::Instant::now();
    while !blob_files(&d).is_empty() && start.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        blob_files(&d),
        Vec::<String>::new(),
        "blobs left after a failed pull"
    );
    drop(d);

    // Corrupted once, then served right: the retry succeeds.
    let once = Proxy::faulty(&reg.addr, &layer, Fault::Corrupt, 1);
    let d = Berthd::start();
    pull_ok(
        &d,
        "default",
        Pull {
            reference: &via(&once, "noisy"),
            platforms: vec![amd64()],
            creds: None,
        },
    );
    assert!(blob_files(&d).contains(&layer));
}

#[test]
fn root_ten_concurrent_pulls_fetch_each_blob_once() {
    let reg = Registry::start();
    let (img, _) = noisy_image();
    img.push(&reg, "noisy");
    let counter = Proxy::faulty(&reg.addr, "no-fault", Fault::Fail500, 0);
    let d = Berthd::start();
    let reference = via(&counter, "noisy");
    std::thread::scope(|s| {
        for i in 0..10 {
            let (d, reference) = (&d, &reference);
            s.spawn(move || {
                pull_ok(
                    d,
                    &format!("many-{i}"),
                    Pull {
                        reference,
                        platforms: vec![amd64()],
                        creds: None,
                    },
                );
            });
        }
    });
    for layer in img.layer_digests() {
        assert_eq!(
            counter.gets(&layer),
            1,
            "layer {layer} fetched more than once"
        );
    }
    for i in 0..10 {
        let ls = d.ctr_ok(&format!("many-{i}"), &["images", "ls", "-q"]);
        assert!(ls.contains(&reference), "{ls}");
    }
}

#[test]
fn root_push_to_another_repository_and_registry_then_pull_back_identical() {
    let reg = Registry::start();
    let other = Registry::start();
    // A 20 MB layer goes up in chunks, the small ones in one request each.
    let img = OciImage::build(&[
        busybox_layer(),
        vec![Entry::File("big.bin".into(), noise(20 << 20, 11), 0o644)],
    ]);
    let source = img.push(&reg, "src");
    let d = Berthd::start();
    pull_amd64(&d, "default", &source);

    // Same registry, another repository: blobs are mounted across repositories.
    let same = format!("{}/dst:v1", reg.addr);
    berth_e2e::transfer::push(&d.socket, "default", &source, &same)
        .unwrap_or_else(|e| panic!("push to {same}: {e:?}\n{}", d.log()));
    // Another registry: every blob uploaded.
    let far = format!("{}/copy:v1", other.addr);
    berth_e2e::transfer::push(&d.socket, "default", &source, &far)
        .unwrap_or_else(|e| panic!("push to {far}: {e:?}\n{}", d.log()));
    // Again: everything is there already.
    berth_e2e::transfer::push(&d.socket, "default", &source, &far).unwrap();
    let log = d.log();
    assert!(
        log.contains("blob mounted across repositories"),
        "no cross-repository mount:\n{log}"
    );
    assert!(
        log.contains("blob chunk uploaded"),
        "no chunked upload:\n{log}"
    );
    assert!(
        log.contains("registry has the blob already"),
        "existing blobs not skipped:\n{log}"
    );

    for (i, r) in [&same, &far].into_iter().enumerate() {
        let ns = format!("back-{i}");
        pull_amd64(&d, &ns, r);
        let ls = d.ctr_ok(&ns, &["images", "ls"]);
        assert!(
            ls.contains(&img.manifest_digest),
            "{r} came back as another manifest: {ls}"
        );
    }
    // And a client other than berthd reads the pushed image.
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{far}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(&out.stdout), img.manifest_digest);

    let e = berth_e2e::transfer::push(&d.socket, "default", "no/such:image", &far).unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}

fn hosts_toml(dir: &std::path::Path, registry: &str, text: &str) {
    let d = dir.join(registry);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("hosts.toml"), text).unwrap();
}

#[test]
fn root_hosts_toml_mirrors_come_first_and_the_server_backs_them() {
    use berth_e2e::transfer::{transfer_with, Resolver};
    let mirror = Registry::start();
    let origin = Registry::start();
    let img = data_image();
    img.push(&mirror, "app");
    img.push(&origin, "only-at-origin");
    let hosts = tempfile::tempdir().unwrap();
    // The registry itself is unreachable: the mirror serves.
    hosts_toml(
        hosts.path(),
        "origin.invalid",
        &format!(
            "server = \"http://127.0.0.1:1\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            mirror.addr
        ),
    );
    // The mirror lacks the image: the server serves.
    hosts_toml(
        hosts.path(),
        "origin2.invalid",
        &format!(
            "server = \"http://{}\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            origin.addr, mirror.addr
        ),
    );
    let d = Berthd::start();
    for (i, r) in [
        "origin.invalid/app:latest",
        "origin2.invalid/only-at-origin:latest",
    ]
    .into_iter()
    .enumerate()
    {
        let (res, _) = transfer_with(
            &d.socket,
            "default",
            Pull {
                reference: r,
                platforms: vec![amd64()],
                creds: None,
            },
            Resolver {
                https: true,
                host_dir: Some(hosts.path()),
            },
        );
        res.unwrap_or_else(|e| panic!("{r}: {e:?}\n{}", d.log()));
        runs_data_image(&d, "default", r, &format!("xfer-mirror-{i}"));
    }
}

#[test]
fn root_hosts_toml_tls_is_verified_against_its_ca() {
    use berth_e2e::transfer::{transfer_with, Resolver};
    let ca = TestCa::new();
    let reg = Registry::start_tls(&ca);
    let img = data_image();
    let reference = img.push(&reg, "secure");
    let hosts = tempfile::tempdir().unwrap();
    let d = Berthd::start();
    let pull = |ns: &str| {
        transfer_with(
            &d.socket,
            ns,
            Pull {
                reference: &reference,
                platforms: vec![amd64()],
                creds: None,
            },
            Resolver {
                https: true,
                host_dir: Some(hosts.path()),
            },
        )
        .0
    };
    // Configured for HTTPS without its CA: the certificate is refused.
    hosts_toml(
        hosts.path(),
        &reg.addr,
        &format!("server = \"https://{}\"\n", reg.addr),
    );
    let e = pull("no-ca").unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().to_lowercase().contains("certificate"), "{e:?}");
    // With the CA.
    hosts_toml(
        hosts.path(),
        &reg.addr,
        &format!(
            "server = \"https://{}\"\nca = \"{}\"\n",
            reg.addr,
            ca.ca_pem().display()
        ),
    );
    pull("with-ca").unwrap_or_else(|e| panic!("{e:?}\n{}", d.log()));
    // Skipping verification.
    hosts_toml(
        hosts.path(),
        &reg.addr,
        &format!("server = \"https://{}\"\nskip_verify = true\n", reg.addr),
    );
    pull("skip-verify").unwrap_or_else(|e| panic!("{e:?}\n{}", d.log()));
}

#[test]
fn root_transfer_with_bearer_tokens_from_the_challenge() {
    let reg = Registry::start();
    let img = data_image();
    img.push(&reg, "tokened");
    let front = Proxy::token_auth(&reg.addr, "berth", "t0ken-pass");
    let reference = via(&front, "tokened");
    let d = Berthd::start();
    let pull = |ns: &str, creds| {
        transfer(
            &d.socket,
            ns,
            Pull {
                reference: &reference,
                platforms: vec![amd64()],
                creds,
            },
        )
        .0
    };
    let e = pull("default", Some(("berth", "wrong"))).unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains(&front.addr), "{e:?}");
    pull("default", Some(("berth", "t0ken-pass"))).unwrap_or_else(|e| panic!("{e:?}\n{}", d.log()));
    // The token is reused for the next pull: no new token request.
    pull("second", Some(("berth", "t0ken-pass"))).unwrap();
    assert_eq!(front.gets("/token?"), 2, "{:#?}", front.requests());
    runs_data_image(&d, "second", &reference, "xfer-bearer-1");
}

#[test]
fn root_export_and_import_oci_archives_through_transfer() {
    use berth_e2e::transfer::{export_archive, import_archive};
    let reg = Registry::start();
    let img = data_image();
    let reference = img.push(&reg, "archived");
    let d = Berthd::start();
    pull_amd64(&d, "default", &reference);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("image.tar");
    export_archive(&d.socket, "default", &reference, &archive)
        .unwrap_or_else(|e| panic!("export: {e:?}\n{}", d.log()));
    // Another tool reads it as the same image.
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}", archive.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(&out.stdout), img.manifest_digest);
    // ... and as a Docker archive, through the compatibility manifest.json.
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("docker-archive:{}", archive.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&img.diff_ids[1]));

    // Into another daemon: imported, unpacked, runnable.
    let e2 = Berthd::start();
    import_archive(&e2.socket, "imported", &archive, "")
        .unwrap_or_else(|e| panic!("import: {e:?}\n{}", e2.log()));
    let ls = e2.ctr_ok("imported", &["images", "ls"]);
    assert!(
        ls.contains(&reference) && ls.contains(&img.manifest_digest),
        "{ls}"
    );
    let snaps = e2.ctr_ok("imported", &["snapshots", "ls"]);
    assert_eq!(
        snaps.lines().filter(|l| l.contains("Committed")).count(),
        2,
        "{snaps}"
    );
    runs_data_image(&e2, "imported", &reference, "xfer-import-1");

    // A Docker archive (manifest.json, configs and layer tars by path), as skopeo writes it.
    let docker = dir.path().join("docker.tar");
    let out = std::process::Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:latest", img.dir.path().display()))
        .arg(format!(
            "docker-archive:{}:berth/dockerized:v1",
            docker.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    import_archive(&e2.socket, "docker", &docker, "")
        .unwrap_or_else(|e| panic!("docker import: {e:?}\n{}", e2.log()));
    let name = "docker.io/berth/dockerized:v1";
    assert!(e2.ctr_ok("docker", &["images", "ls", "-q"]).contains(name));
    runs_data_image(&e2, "docker", name, "xfer-import-2");

    // A blob whose bytes do not match its name is refused, naming it; no image appears.
    let mut bytes = std::fs::read(&archive).unwrap();
    let layer = img.layer_digests()[1].clone();
    let tar_name = format!("blobs/sha256/{}", &layer[7..]);
    let at = bytes
        .windows(tar_name.len())
        .position(|w| w == tar_name.as_bytes())
        .expect("layer entry in the archive");
    // The entry's data starts at the next 512-byte block after its header.
    let data = (at / 512 + 1) * 512;
    bytes[data + 10] ^= 0xff;
    let bad = dir.path().join("bad.tar");
    std::fs::write(&bad, &bytes).unwrap();
    let e3 = Berthd::start();
    let e = import_archive(&e3.socket, "default", &bad, "").unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains(&layer), "{e:?}");
    assert!(e3
        .ctr_ok("default", &["images", "ls", "-q"])
        .trim()
        .is_empty());

    // Not an OCI layout at all.
    let junk = dir.path().join("junk.tar");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "hello.txt", &b"hi\n"[..]).unwrap();
    std::fs::write(&junk, b.into_inner().unwrap()).unwrap();
    let e = import_archive(&e3.socket, "default", &junk, "").unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("oci-layout"), "{e:?}");
}

/// Ingests under the content store that hold part of a blob: (bytes written, total).
fn partial_ingests(d: &Berthd) -> Vec<(u64, i64)> {
    let dir = d.root.join("io.containerd.content.v1.content/ingest");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let written = std::fs::metadata(e.path().join("data")).ok()?.len();
            let meta: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path().join("meta.json")).ok()?).ok()?;
            Some((written, meta["total"].as_i64()?))
        })
        .collect()
}

#[test]
fn root_sigkill_mid_server_side_pull_leaves_nothing_after_restart() {
    let reg = Registry::start();
    let (img, layer) = noisy_image();
    img.push(&reg, "noisy");
    // The proxy sends half of the big layer and then holds the connection: berthd is
    // killed while that blob is provably half downloaded.
    let staller = Proxy::faulty(&reg.addr, &layer, Fault::StallHalf, 1);
    let mut d = Berthd::start();
    let (socket, reference) = (d.socket.clone(), via(&staller, "noisy"));
    let pulling = std::thread::spawn(move || {
        transfer(
            &socket,
            "default",
            Pull {
                reference: &reference,
                platforms: vec![amd64()],
                creds: None,
            },
        )
        .0
    });
    let start = std::time::Instant::now();
    let half_stored = |d: &Berthd| {
        partial_ingests(d)
            .iter()
            .any(|(w, t)| *w > 0 && (*w as i64) < *t)
    };
    while (staller.stalled() == 0 || !half_stored(&d))
        && start.elapsed() < std::time::Duration::from_secs(20)
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(staller.stalled(), 1, "the layer download never started");
    assert!(
        half_stored(&d),
        "no half-written ingest: {:?}",
        partial_ingests(&d)
    );
    d.kill();
    assert!(pulling.join().unwrap().is_err(), "the pull outlived berthd");

    d.spawn();
    // The dead pull's lease is gone, and what it stored is collected.
    let leases = d.ctr_ok("default", &["leases", "ls"]);
    assert!(!leases.contains("berth.io/daemon-lease"), "{leases}");
    let start = std::time::Instant::now();
    let leftovers = |d: &Berthd| {
        (
            blob_files(d),
            partial_ingests(d),
            d.ctr_ok("default", &["snapshots", "ls"])
                .lines()
                .skip(1)
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        )
    };
    while leftovers(&d) != (vec![], vec![], vec![])
        && start.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        leftovers(&d),
        (vec![], vec![], vec![]),
        "left by the killed pull\n{}",
        d.log()
    );
    // The next pull of the same image completes and runs.
    let direct = format!("{}/noisy:latest", reg.addr);
    pull_ok(&d, "default", amd64_pull(&direct));
    let check = d.ctr_ok("default", &["images", "check"]);
    assert!(check.contains("complete (3/3)"), "{check}");
}

/// Checks a pull's progress against containerd 2.x's: status lines first and last, one
/// tree rooted at the reference in which every blob is first `waiting` and every parent
/// is a node seen before, layers `extracted` last, the image `saved`.
fn assert_containerd_2x_pull_progress(events: &[Progress], reference: &str, root_kind: &str) {
    let shown: Vec<String> = events
        .iter()
        .map(|e| format!("{} | {} | {:?}", e.event, e.name, e.parents))
        .collect();
    let source = format!("OCI Registry ({reference})");
    assert_eq!(
        events[0].event,
        format!("Resolving from {source}"),
        "{shown:#?}"
    );
    assert_eq!(
        events[1].event,
        format!("Pulling from {source}"),
        "{shown:#?}"
    );
    assert!(events[0].name.is_empty() && events[1].name.is_empty());
    assert_eq!(
        (events[2].event.as_str(), events[2].name.as_str()),
        ("fetching image content", reference),
        "{shown:#?}"
    );
    let last = events.last().unwrap();
    assert_eq!(
        last.event,
        format!("Completed pull from {source}"),
        "{shown:#?}"
    );
    let mut seen: Vec<String> = vec![reference.to_owned()];
    for e in &events[3..events.len() - 1] {
        if e.event == "saved" {
            assert_eq!(e.name, reference);
            continue;
        }
        assert!(
            e.name.contains("-sha256:"),
            "blob event names a blob: {e:?}"
        );
        if !seen.contains(&e.name) {
            assert_eq!(e.event, "waiting", "a blob's first event: {shown:#?}");
            seen.push(e.name.clone());
        }
        for p in &e.parents {
            assert!(
                seen.contains(p),
                "parent {p} of {} not drawn yet: {shown:#?}",
                e.name
            );
        }
        if e.event == "already exists" {
            assert!(e.parents.is_empty(), "{e:?}");
        }
        assert!(e.desc.is_some(), "{e:?}");
    }
    let root = &events[3];
    assert!(root.name.starts_with(root_kind), "{shown:#?}");
    assert_eq!(root.parents, [reference], "{shown:#?}");
    for e in events.iter().filter(|e| e.name.starts_with("layer-")) {
        let manifest = e.parents.first().map(String::as_str).unwrap_or("");
        assert!(
            e.event == "already exists" || manifest.starts_with("manifest-"),
            "a layer hangs off its manifest: {e:?}"
        );
    }
    let layers: Vec<&String> = seen.iter().filter(|n| n.starts_with("layer-")).collect();
    assert!(!layers.is_empty());
    for l in layers {
        let mine: Vec<&str> = events
            .iter()
            .filter(|e| &e.name == l)
            .map(|e| e.event.as_str())
            .collect();
        assert_eq!(mine.first(), Some(&"waiting"), "{l}: {mine:?}");
        assert!(
            mine.contains(&"complete") || mine.contains(&"already exists"),
            "{l}: {mine:?}"
        );
        assert_eq!(mine.last(), Some(&"extracted"), "{l}: {mine:?}");
    }
    assert!(events.iter().any(|e| e.event == "saved"), "{shown:#?}");
}

#[test]
fn root_pull_progress_is_containerd_2x_s() {
    let reg = Registry::start();
    let img = data_image();
    let reference = img.push(&reg, "tree");
    let d = Berthd::start();
    let events = pull_amd64(&d, "default", &reference);
    assert_containerd_2x_pull_progress(&events, &reference, "manifest-");
    assert!(events
        .iter()
        .any(|e| e.event == "complete" && e.name.starts_with("layer-")));

    // An index: index → manifest → config and layers.
    let mut amd = busybox_layer();
    amd.push(Entry::File("platform".into(), b"amd64\n".to_vec(), 0o644));
    let multi = OciImage::build_index(&[("arm64", vec![busybox_layer()]), ("amd64", vec![amd])]);
    let multi_ref = multi.push(&reg, "multi-tree");
    let events = pull_amd64(&d, "default", &multi_ref);
    assert_containerd_2x_pull_progress(&events, &multi_ref, "index-");
    let manifest = events
        .iter()
        .find(|e| e.name.starts_with("manifest-"))
        .unwrap();
    assert_eq!(manifest.parents, [events[3].name.clone()]);
}

fn image_ref(name: &str) -> containerd_client::types::transfer::ImageReference {
    containerd_client::types::transfer::ImageReference {
        name: name.into(),
        ..Default::default()
    }
}

#[test]
fn root_containerd_2x_tag_export_and_import_round_trip() {
    use berth_e2e::transfer::{export_from, import_to, tag};
    use containerd_client::types::transfer::{
        ImageExportStream, ImageReference, ImageStore, UnpackConfiguration,
    };
    let reg = Registry::start();
    let img = data_image();
    let reference = img.push(&reg, "roundtrip");
    let d = Berthd::start();
    pull_amd64(&d, "default", &reference);

    // Tag: image store → image store.
    let tagged = "example.com/tagged:v1";
    tag(
        &d.socket,
        "default",
        ImageStore {
            name: reference.clone(),
            ..Default::default()
        },
        ImageStore {
            name: tagged.into(),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("tag: {e:?}\n{}", d.log()));
    let ls = d.ctr_ok("default", &["images", "ls"]);
    let digest_of = |name: &str| {
        ls.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(2))
            .map(str::to_owned)
    };
    assert_eq!(digest_of(tagged), digest_of(&reference), "{ls}");

    // Export with the image named only in the extra references, as 2.x's ctr sends it.
    let (r, archive, events) = export_from(
        &d.socket,
        "default",
        ImageStore {
            extra_references: vec![image_ref(tagged)],
            ..Default::default()
        },
        ImageExportStream {
            platforms: vec![amd64()],
            ..Default::default()
        },
    );
    r.unwrap_or_else(|e| panic!("export: {e:?}\n{}", d.log()));
    let statuses: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(statuses, ["Exporting", "Completed export"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tagged.tar");
    std::fs::write(&path, &archive).unwrap();
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}", path.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(&out.stdout), img.manifest_digest);
    let out = std::process::Command::new("tar")
        .arg("-xOf")
        .arg(&path)
        .arg("manifest.json")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(tagged),
        "RepoTags"
    );

    // Import into another berthd under ctr 2.x's default dated prefix: the archive's own
    // name is kept, the image unpacked and run.
    let e2 = Berthd::start();
    let unpacks = vec![UnpackConfiguration {
        platform: Some(amd64()),
        snapshotter: "overlayfs".into(),
    }];
    let (r, events) = import_to(
        &e2.socket,
        "default",
        archive.clone(),
        ImageStore {
            extra_references: vec![ImageReference {
                name: "import-2026-12-01".into(),
                is_prefix: true,
                allow_overwrite: true,
                ..Default::default()
            }],
            unpacks: unpacks.clone(),
            ..Default::default()
        },
    );
    r.unwrap_or_else(|e| panic!("import: {e:?}\n{}", e2.log()));
    let shown: Vec<(String, String)> = events
        .iter()
        .map(|e| (e.event.clone(), e.name.clone()))
        .collect();
    assert_eq!(
        shown,
        [
            ("Importing".into(), String::new()),
            ("saved".into(), tagged.to_owned()),
            ("Completed import".into(), String::new())
        ]
    );
    runs_data_image(&e2, "default", tagged, "xfer-2x-import");

    // A base name of their own drops names outside it; digest names stand in.
    let (r, _) = import_to(
        &e2.socket,
        "based",
        archive,
        ImageStore {
            extra_references: vec![ImageReference {
                name: "foo/bar".into(),
                is_prefix: true,
                add_digest: true,
                ..Default::default()
            }],
            unpacks,
            ..Default::default()
        },
    );
    r.unwrap_or_else(|e| panic!("import: {e:?}\n{}", e2.log()));
    let names = e2.ctr_ok("based", &["images", "ls", "-q"]);
    assert_eq!(
        names.trim(),
        format!("foo/bar@{}", img.manifest_digest),
        "{names}"
    );
}

#[test]
fn root_transfer_refuses_missing_images_and_truncated_archives_leaving_nothing() {
    use berth_e2e::transfer::{export_from, import_to};
    use containerd_client::types::transfer::ImageStore;
    let reg = Registry::start();
    let img = data_image();
    let reference = img.push(&reg, "refused");
    let d = Berthd::start();
    pull_amd64(&d, "default", &reference);
    // Exporting an image that does not exist: NotFound naming it, no byte sent.
    let (r, data, _) = export_from(
        &d.socket,
        "default",
        ImageStore {
            extra_references: vec![image_ref(&reference), image_ref("example.com/nope:1")],
            ..Default::default()
        },
        Default::default(),
    );
    let e = r.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("example.com/nope:1"), "{e:?}");
    assert!(
        data.is_empty(),
        "{} bytes sent for a failed export",
        data.len()
    );

    // A truncated archive: the blob it cuts is named; nothing is left after collection.
    let (r, archive, _) = export_from(
        &d.socket,
        "default",
        ImageStore {
            name: reference.clone(),
            ..Default::default()
        },
        Default::default(),
    );
    r.unwrap();
    let layer = img.layer_digests()[0].clone();
    let tar_name = format!("blobs/sha256/{}", &layer[7..]);
    let at = archive
        .windows(tar_name.len())
        .position(|w| w == tar_name.as_bytes())
        .expect("layer entry in the archive");
    let cut = archive[..(at / 512 + 1) * 512 + 4096].to_vec();
    let e2 = Berthd::start();
    let (r, _) = import_to(&e2.socket, "default", cut, ImageStore::default());
    let e = r.unwrap_err();
    assert!(e.message().contains(&layer), "the cut blob is named: {e:?}");
    let start = std::time::Instant::now();
    while (!blob_files(&e2).is_empty() || !partial_ingests(&e2).is_empty())
        && start.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(blob_files(&e2), Vec::<String>::new());
    assert_eq!(partial_ingests(&e2), vec![]);
    assert!(e2
        .ctr_ok("default", &["images", "ls", "-q"])
        .trim()
        .is_empty());
}
