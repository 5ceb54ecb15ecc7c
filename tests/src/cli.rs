//! The `berth` command line as a test drives it: against one berthd, with its own data
//! root and Docker config directory, and everything it made (containers, their networks,
//! bridges, pinned namespaces) removed when the test ends, failed or not.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};

use crate::{Berthd, Entry, OciImage};

/// Tests that use bridge networks take turns: the host's routes decide each new network's
/// subnet, and a bridge only appears with its first container.
static NETWORKS: Mutex<()> = Mutex::new(());

pub fn berth_binary() -> PathBuf {
    let p = crate::target_dir().join("berth");
    assert!(
        p.exists(),
        "{} is missing: build the workspace first",
        p.display()
    );
    p
}

pub struct BerthCli {
    pub socket: PathBuf,
    pub ns: String,
    pub data: tempfile::TempDir,
    pub docker_config: PathBuf,
    _turn: MutexGuard<'static, ()>,
}

impl BerthCli {
    pub fn new(d: &Berthd, ns: &str) -> Self {
        let turn = NETWORKS.lock().unwrap_or_else(|e| e.into_inner());
        let data = tempfile::Builder::new()
            .prefix("berth-cli")
            .tempdir()
            .unwrap();
        let docker_config = data.path().join("docker");
        crate::note_namespace(ns);
        BerthCli {
            socket: d.socket.clone(),
            ns: ns.to_owned(),
            data,
            docker_config,
            _turn: turn,
        }
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(berth_binary());
        c.env("BERTH_ADDRESS", &self.socket)
            .env("BERTH_DATA_ROOT", self.data.path())
            .env("BERTH_NAMESPACE", &self.ns)
            .env("DOCKER_CONFIG", &self.docker_config)
            // A backtrace must never reach a user, even with this set.
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null());
        c
    }

    /// `berth ARGS`, in the shell form a tmux pane runs it.
    pub fn shell_line(&self, args: &str) -> String {
        format!(
            "env BERTH_ADDRESS={} BERTH_DATA_ROOT={} BERTH_NAMESPACE={} DOCKER_CONFIG={} {} {args}",
            self.socket.display(),
            self.data.path().display(),
            self.ns,
            self.docker_config.display(),
            berth_binary().display()
        )
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.command().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("panicked")
                && !err.contains("stack backtrace")
                && !err.contains("Status {"),
            "berth {args:?} printed a panic or a raw status: {err}"
        );
        out
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "berth {args:?} failed ({:?}): {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The bridges of the networks this data root made.
    pub fn bridges(&self) -> Vec<String> {
        let mut out = Vec::new();
        for root in std::fs::read_dir(self.data.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            for n in std::fs::read_dir(root.path().join("networks"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let Ok(b) = std::fs::read(n.path().join("network.json")) else {
                    continue;
                };
                let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
                if let Some(b) = v["bridge"].as_str() {
                    out.push(b.to_owned());
                }
            }
        }
        out
    }
}

impl Drop for BerthCli {
    fn drop(&mut self) {
        let ids = self.command().args(["ps", "-aq", "--no-trunc"]).output();
        if let Ok(o) = ids {
            for id in String::from_utf8_lossy(&o.stdout).lines() {
                let _ = self.command().args(["rm", "-f", id]).output();
            }
        }
        crate::unmount_below(self.data.path());
        for b in self.bridges() {
            let _ = Command::new("ip").args(["link", "delete", &b]).output();
        }
    }
}

fn applets(names: &[&str]) -> Vec<Entry> {
    names
        .iter()
        .map(|a| Entry::Symlink(Box::leak(format!("bin/{a}").into_boxed_str()), "busybox"))
        .collect()
}

/// A three-layer image: busybox, more applets with /etc/passwd and /etc/group, and a
/// page for httpd in /www.
pub fn three_layer_image() -> OciImage {
    let mut second = applets(&[
        "httpd", "ping", "dd", "head", "wc", "hostname", "tty", "seq", "tail", "grep", "mkdir",
    ]);
    second.push(Entry::File(
        "etc/passwd".into(),
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n".to_vec(),
        0o644,
    ));
    second.push(Entry::File(
        "etc/group".into(),
        b"root:x:0:\nwheel:x:10:root\nnogroup:x:65534:\n".to_vec(),
        0o644,
    ));
    second.push(Entry::Dir("tmp", 0o1777));
    let third = vec![
        Entry::Dir("www", 0o755),
        Entry::File(
            "www/index.html".into(),
            b"hello from berth\n".to_vec(),
            0o644,
        ),
    ];
    OciImage::build(&[crate::busybox_layer(), second, third])
}

/// A TCP port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` from 127.0.0.1:`port`; the body, or None when nothing answered.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// Whether anything under `dir` is mounted.
pub fn mounted_below(dir: &Path) -> bool {
    !crate::mounts_below(dir).is_empty()
}
