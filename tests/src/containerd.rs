//! Debian's containerd with its CRI plugin, as a peer: the same CRI calls and streaming
//! clients that drive berthd drive it, so what berth speaks is checked against the Go
//! implementations Kubernetes uses (its streaming server is the kubelet's own code).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cri::CniNet;

pub struct ContainerdCri {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl ContainerdCri {
    /// Starts containerd on `net`, with `pause` as its sandbox image and `registry`
    /// (`127.0.0.1:PORT`) reached over plain HTTP.
    pub fn start(net: &CniNet, pause: &str, registry: &str) -> Self {
        crate::require("containerd");
        let dir = tempfile::Builder::new()
            .prefix("berth-containerd")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("containerd.sock");
        let p = |s: &str| dir.path().join(s).display().to_string();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{conf}"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry}"]
    endpoint = ["http://{registry}"]
"#,
            root = p("root"),
            state = p("state"),
            sock = socket.display(),
            conf = net.dir.path().join("conf").display(),
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        crate::live_enter();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let s = socket.clone();
        crate::wait_for("containerd socket", Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&s).is_ok()
        });
        ContainerdCri {
            child: Some(child),
            dir,
            socket,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for ContainerdCri {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
        // Shims of pods a failed test left behind.
        let _ = Command::new("pkill")
            .args(["-9", "-f"])
            .arg(format!(
                "containerd-shim-runc-v2 .*-address {}",
                self.socket.display()
            ))
            .status();
        crate::unmount_below(self.dir.path());
        crate::note_namespace("k8s.io");
        crate::live_leave();
    }
}

/// Debian's containerd with only containerd's API (its CRI plugin off), on temporary
/// directories, with berth's shim on its PATH: the unmodified peer berth's shim must serve.
pub struct Containerd {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Containerd {
    pub fn start() -> Self {
        crate::require("containerd");
        let dir = tempfile::Builder::new()
            .prefix("berth-containerd")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("containerd.sock");
        let p = |s: &str| dir.path().join(s).display().to_string();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
"#,
            root = p("root"),
            state = p("state"),
            sock = socket.display(),
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        crate::live_enter();
        let mut c = Containerd {
            child: None,
            dir,
            socket,
        };
        c.spawn();
        c
    }

    /// Starts (or, after `kill`, restarts) the daemon on the same directories.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("containerd.log"))
            .unwrap();
        let shim_dir = crate::berthd_binary().parent().unwrap().to_path_buf();
        let path = format!(
            "{}:{}",
            shim_dir.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .env("PATH", path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let s = self.socket.clone();
        crate::wait_for("containerd socket", Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&s).is_ok()
        });
    }

    /// SIGKILL, as a crash would; shims and containers stay.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr(&self, ns: &str, args: &[&str]) -> std::process::Output {
        crate::ctr_on(&self.socket, ns, args)
    }

    pub fn ctr_ok(&self, ns: &str, args: &[&str]) -> String {
        crate::ctr_ok_on(&self.socket, ns, args, || self.log())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
        // Shims (and their containers) a failed test left behind.
        crate::kill_berth_shims(&self.socket);
        crate::remove_shim_sockets(&self.dir.path().join("state"));
        crate::unmount_below(self.dir.path());
        crate::live_leave();
    }
}
