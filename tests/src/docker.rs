//! Debian's dockerd as a client of berthd (`dockerd --containerd SOCKET`), on temporary
//! directories, driven by the docker CLI; cleaned up however a test ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::{require, wait_for, OciImage};

pub struct Dockerd {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    containerd: PathBuf,
    args: Vec<String>,
    /// Docker's containers go below a cgroup of this daemon's own, removed on drop.
    cgroup: crate::CgroupParent,
}

impl Dockerd {
    /// Starts dockerd against the containerd API at `containerd`, with no bridge network
    /// and no iptables (tests run containers with `--network none`).
    pub fn start(containerd: &Path, extra: &[&str]) -> Self {
        require("dockerd");
        require("docker");
        let dir = tempfile::Builder::new()
            .prefix("berth-dockerd")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("docker.sock");
        let tag = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut d = Dockerd {
            cgroup: crate::CgroupParent::new(&tag),
            child: None,
            dir,
            socket,
            containerd: containerd.to_owned(),
            args: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        d.spawn();
        d
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("dockerd.log"))
            .unwrap();
        let p = |s: &str| self.dir.path().join(s);
        let child = Command::new("dockerd")
            .arg("--containerd")
            .arg(&self.containerd)
            .arg("--data-root")
            .arg(p("data"))
            .arg("--exec-root")
            .arg(p("exec"))
            .arg("--pidfile")
            .arg(p("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(["--bridge=none", "--iptables=false", "--ip-masq=false"])
            .arg("--cgroup-parent")
            .arg(&self.cgroup.0)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let d = &*self;
        wait_for("dockerd", Duration::from_secs(60), || {
            d.docker(&["version"]).status.success()
        });
    }

    /// Also give dockerd these flags from its next start on.
    pub fn set_args(&mut self, extra: &[&str]) {
        self.args = extra.iter().map(|s| (*s).to_owned()).collect();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// `docker -H SOCKET ARGS...`, bounded in time.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["-s", "KILL", "120", "docker", "-H"])
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .output()
            .unwrap()
    }

    /// Like `docker`, failing the test with the output and dockerd's log.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed ({}): {}\n{}\n--- dockerd log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like `docker_ok`, for the first call after berthd came back: dockerd's gRPC
    /// connection may still be in its reconnect backoff, which answers "unavailable" at once.
    pub fn docker_after_reconnect(&self, args: &[&str]) -> String {
        let t = std::time::Instant::now();
        loop {
            let out = self.docker(args);
            // docker exec reports a daemon error on stdout.
            let err = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success()
                || !err.contains("unavailable")
                || t.elapsed() > Duration::from_secs(30)
            {
                return self.docker_ok(args);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM and wait (dockerd stops its containers unless it runs with live-restore).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: sending a signal to our own child process by pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t = std::time::Instant::now();
            while t.elapsed() < Duration::from_secs(60) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
            self.stop();
        }
        // Whatever is left of runc's state for docker's containers, and the mounts.
        let runc_root = self.dir.path().join("exec/runtime-runc/moby");
        for e in std::fs::read_dir(&runc_root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["delete", "--force"])
                .arg(e.file_name())
                .stderr(Stdio::null())
                .status();
        }
        crate::unmount_below(self.dir.path());
    }
}

/// The image as a `docker save` archive tagged `tag`, written by skopeo.
pub fn docker_archive(img: &OciImage, tag: &str, out: &Path) {
    require("skopeo");
    let st = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:latest", img.dir.path().display()))
        .arg(format!("docker-archive:{}:{tag}", out.display()))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}
