//! The OCI runtime a container is made with, driven through runc's command line: berth's own
//! (`berth-container`, libcontainer in a fresh single-threaded process) by default, or a
//! runc-compatible binary named by the runtime options' `BinaryName`.

use std::{
    ffi::OsString,
    fs::File,
    io::{Read, Seek, SeekFrom},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
};

use serde_json::json;

use crate::{error::Error, own_state::OwnState, reaper::Reaper};

/// Where a container's runtime state lives when the options name no root: inside its
/// bundle, so that two daemons never share it and it goes with the bundle.
const STATE_DIR: &str = "runtime-state";
/// The runtime's JSON log in the bundle, where its errors are read from.
const LOG_FILE: &str = "log.json";
/// What the shim remembers of the options in the bundle, for `delete` after a crash.
const OPTIONS_FILE: &str = "options.json";
/// berth's own OCI runtime, looked for beside the shim's binary and then on PATH.
const OWN_RUNTIME: &str = "berth-container";

/// The runtime options containerd passes (`containerd.runc.v1.Options`) that choose and
/// configure the runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeOptions {
    pub binary_name: String,
    pub root: String,
    pub systemd_cgroup: bool,
}

impl RuntimeOptions {
    pub fn save(&self, bundle: &Path) -> Result<(), Error> {
        let v = json!({
            "binary_name": self.binary_name,
            "root": self.root,
            "systemd_cgroup": self.systemd_cgroup,
        });
        let path = bundle.join(OPTIONS_FILE);
        std::fs::write(&path, v.to_string()).map_err(|e| Error::io("write", &path, e))
    }

    /// The saved options; defaults when there are none.
    pub fn load(bundle: &Path) -> Self {
        let Ok(text) = std::fs::read_to_string(bundle.join(OPTIONS_FILE)) else {
            return Self::default();
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
        RuntimeOptions {
            binary_name: s("binary_name"),
            root: s("root"),
            systemd_cgroup: v
                .get("systemd_cgroup")
                .and_then(|x| x.as_bool())
                .unwrap_or(false),
        }
    }
}

/// The stdio a runtime invocation gets; for create and exec without a terminal the
/// container's process inherits it.
#[derive(Default)]
pub struct InvocationStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// One container's runtime: which binary, and where its state and log are.
#[derive(Debug, Clone)]
pub struct Runtime {
    binary: PathBuf,
    /// berth's own runtime rather than one the options named.
    own: bool,
    root: PathBuf,
    log: PathBuf,
    systemd_cgroup: bool,
    reaper: Arc<Reaper>,
}

impl Runtime {
    pub fn new(
        bundle: &Path,
        namespace: &str,
        options: &RuntimeOptions,
        reaper: Arc<Reaper>,
    ) -> Result<Self, Error> {
        Self::with_own_runtime(bundle, namespace, options, reaper, own_runtime)
    }

    /// As `new`, with `own` finding berth's runtime when the options name none.
    fn with_own_runtime(
        bundle: &Path,
        namespace: &str,
        options: &RuntimeOptions,
        reaper: Arc<Reaper>,
        own: impl FnOnce() -> Result<PathBuf, Error>,
    ) -> Result<Self, Error> {
        let (binary, own) = if options.binary_name.is_empty() {
            (own()?, true)
        } else {
            (find_binary(&options.binary_name)?, false)
        };
        let root = if options.root.is_empty() {
            bundle.join(STATE_DIR)
        } else {
            Path::new(&options.root).join(namespace)
        };
        Ok(Runtime {
            binary,
            own,
            root,
            log: bundle.join(LOG_FILE),
            systemd_cgroup: options.systemd_cgroup,
            reaper,
        })
    }

    /// The runtime's name for errors: `berth-container` or the binary's path.
    pub fn name(&self) -> String {
        if self.own {
            OWN_RUNTIME.into()
        } else {
            self.binary.display().to_string()
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&self.log)
            .arg("--log-format")
            .arg("json");
        if self.systemd_cgroup {
            c.arg("--systemd-cgroup");
        }
        c
    }

    /// Runs one invocation to its end; a failure carries what the runtime logged.
    async fn run(&self, mut cmd: Command, stdio: InvocationStdio, what: &str) -> Result<(), Error> {
        let started = std::time::Instant::now();
        let log_len = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        cmd.stdin(stdio.stdin.map(Stdio::from).unwrap_or_else(Stdio::null))
            .stdout(stdio.stdout.map(Stdio::from).unwrap_or_else(Stdio::null))
            .stderr(stdio.stderr.map(Stdio::from).unwrap_or_else(Stdio::null));
        let (_, exit) = self.reaper.spawn(&mut cmd).map_err(|e| Error::Runtime {
            runtime: self.name(),
            action: what.to_owned(),
            message: format!("cannot run {}: {e}", self.binary.display()),
        })?;
        // Dropping the command closes the shim's copies of the process's pipe ends.
        drop(cmd);
        let exit = exit.await.map_err(|_| Error::Runtime {
            runtime: self.name(),
            action: what.to_owned(),
            message: "its exit was never seen".into(),
        })?;
        log::debug!("{} {what}: {:?}", self.name(), started.elapsed());
        if exit.code == 0 {
            return Ok(());
        }
        let message = self
            .logged_since(log_len)
            .unwrap_or_else(|| format!("exited with status {}", exit.code));
        Err(Error::Runtime {
            runtime: self.name(),
            action: what.to_owned(),
            message,
        })
    }

    /// The last error the runtime logged after the log was `from` bytes long.
    fn logged_since(&self, from: u64) -> Option<String> {
        let mut f = File::open(&self.log).ok()?;
        f.seek(SeekFrom::Start(from)).ok()?;
        let mut text = String::new();
        f.read_to_string(&mut text).ok()?;
        last_error_in_log(&text)
    }

    /// Creates the container; its init waits for `start`. Returns the init's pid.
    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        console_socket: Option<&Path>,
        stdio: InvocationStdio,
    ) -> Result<i32, Error> {
        let pid_file = bundle.join("init.pid");
        let mut cmd = self.command();
        cmd.arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file);
        if let Some(socket) = console_socket {
            cmd.arg("--console-socket").arg(socket);
        }
        cmd.arg(id).current_dir(bundle);
        self.run(cmd, stdio, "create").await?;
        read_pid(&pid_file)
    }

    pub async fn start(&self, id: &str) -> Result<(), Error> {
        if let Some(mut state) = self.own_state(id).filter(OwnState::startable_by_shim) {
            let started = std::time::Instant::now();
            state.start()?;
            log::debug!("{OWN_RUNTIME} start, by the shim: {:?}", started.elapsed());
            return Ok(());
        }
        let mut cmd = self.command();
        cmd.arg("start").arg(id);
        self.run(cmd, InvocationStdio::default(), "start").await
    }

    /// Starts a process in the container from its OCI process JSON. Returns its pid.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        bundle: &Path,
        process_json: &[u8],
        console_socket: Option<&Path>,
        stdio: InvocationStdio,
    ) -> Result<i32, Error> {
        let process = bundle.join(format!("exec-{exec_id}.json"));
        let pid_file = bundle.join(format!("exec-{exec_id}.pid"));
        std::fs::write(&process, process_json).map_err(|e| Error::io("write", &process, e))?;
        let mut cmd = self.command();
        cmd.arg("exec")
            .arg("--process")
            .arg(&process)
            .arg("--detach")
            .arg("--pid-file")
            .arg(&pid_file);
        if let Some(socket) = console_socket {
            cmd.arg("--console-socket").arg(socket);
        }
        cmd.arg(id);
        let result = self.run(cmd, stdio, "exec").await;
        let _ = std::fs::remove_file(&process);
        result?;
        let pid = read_pid(&pid_file);
        let _ = std::fs::remove_file(&pid_file);
        pid
    }

    pub async fn kill_all(&self, id: &str, signal: u32) -> Result<(), Error> {
        let mut cmd = self.command();
        cmd.arg("kill").arg("--all").arg(id).arg(signal.to_string());
        self.run(cmd, InvocationStdio::default(), "kill").await
    }

    pub async fn pause(&self, id: &str) -> Result<(), Error> {
        let mut cmd = self.command();
        cmd.arg("pause").arg(id);
        self.run(cmd, InvocationStdio::default(), "pause").await
    }

    pub async fn resume(&self, id: &str) -> Result<(), Error> {
        let mut cmd = self.command();
        cmd.arg("resume").arg(id);
        self.run(cmd, InvocationStdio::default(), "resume").await
    }

    /// Deletes a container whose init has exited and been reaped. The shim removes one of
    /// berth's own runtime itself when only its cgroups and state are left to remove.
    pub async fn delete_exited(&self, id: &str) -> Result<(), Error> {
        if let Some(state) = self.own_state(id).filter(OwnState::removable_by_shim) {
            let started = std::time::Instant::now();
            state.remove().await?;
            log::debug!("{OWN_RUNTIME} delete, by the shim: {:?}", started.elapsed());
            return Ok(());
        }
        self.delete(id).await
    }

    /// berth-container's state of container `id`, when it is berth's own runtime's and
    /// outside systemd's cgroups.
    fn own_state(&self, id: &str) -> Option<OwnState> {
        if !self.own || self.systemd_cgroup {
            return None;
        }
        OwnState::load(&self.root, id)
    }

    /// Deletes the container's runtime state (and, forced, what still runs). A container
    /// the runtime does not know is already deleted.
    pub async fn delete(&self, id: &str) -> Result<(), Error> {
        let mut cmd = self.command();
        cmd.arg("delete").arg("--force").arg(id);
        match self.run(cmd, InvocationStdio::default(), "delete").await {
            Err(Error::Runtime { message, .. })
                if message.contains("does not exist") || message.contains("not found") =>
            {
                Ok(())
            }
            other => other,
        }
    }
}

fn read_pid(path: &Path) -> Result<i32, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Error::Runtime {
            runtime: "runtime".into(),
            action: "create".into(),
            message: format!("pid file {} holds {:?}, not a pid", path.display(), text),
        })
}

/// The last error a runtime wrote to its JSON log (`--log F --log-format json`), which is
/// what runc, crun and berth-container say went wrong.
fn last_error_in_log(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|v| v.get("level").and_then(|l| l.as_str()) == Some("error"))
        .and_then(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_owned))
}

/// `berth-container` beside this binary (where it is built and installed), else on PATH.
fn own_runtime() -> Result<PathBuf, Error> {
    let exe =
        std::env::current_exe().map_err(|e| Error::io("find", Path::new("/proc/self/exe"), e))?;
    own_runtime_for(&exe, std::env::var_os("PATH"))
}

fn own_runtime_for(exe: &Path, path: Option<OsString>) -> Result<PathBuf, Error> {
    let beside = exe.with_file_name(OWN_RUNTIME);
    if beside.is_file() {
        return Ok(beside);
    }
    on_path(OWN_RUNTIME, path).ok_or_else(|| {
        Error::NotFound(format!(
            "berth's OCI runtime {OWN_RUNTIME:?} not found beside {} or in PATH",
            exe.display()
        ))
    })
}

/// A runtime binary by path or by name on PATH.
fn find_binary(name: &str) -> Result<PathBuf, Error> {
    let candidate = Path::new(name);
    if candidate.is_absolute() {
        return if candidate.is_file() {
            Ok(candidate.to_path_buf())
        } else {
            Err(Error::NotFound(format!("runtime binary {name} not found")))
        };
    }
    on_path(name, std::env::var_os("PATH"))
        .ok_or_else(|| Error::NotFound(format!("runtime binary {name:?} not found in PATH")))
}

/// The first file called `name` in the directories of `path` (a default PATH when unset).
fn on_path(name: &str, path: Option<OsString>) -> Option<PathBuf> {
    let path = path
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_error_is_the_last_error_line() {
        let log = concat!(
            "{\"level\":\"info\",\"msg\":\"starting\"}\n",
            "{\"level\":\"error\",\"msg\":\"first\"}\n",
            "not json\n",
            "{\"level\":\"error\",\"msg\":\"mount /proc: permission denied\"}\n",
            "{\"level\":\"warning\",\"msg\":\"late\"}\n",
        );
        assert_eq!(
            last_error_in_log(log).as_deref(),
            Some("mount /proc: permission denied")
        );
        assert_eq!(last_error_in_log("{\"level\":\"info\"}"), None);
    }

    #[test]
    fn berths_runtime_is_found_beside_the_shim_then_on_path_and_named_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, elsewhere) = (dir.path().join("bin"), dir.path().join("elsewhere"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        let shim = bin.join("containerd-shim-berth-v2");
        let path = Some(OsString::from(elsewhere.as_os_str()));
        let e = own_runtime_for(&shim, path.clone())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"berth-container\" not found beside") && e.contains("bin"),
            "{e}"
        );
        std::fs::write(elsewhere.join(OWN_RUNTIME), "").unwrap();
        assert_eq!(
            own_runtime_for(&shim, path.clone()).unwrap(),
            elsewhere.join(OWN_RUNTIME)
        );
        std::fs::write(bin.join(OWN_RUNTIME), "").unwrap();
        assert_eq!(own_runtime_for(&shim, path).unwrap(), bin.join(OWN_RUNTIME));
    }

    #[test]
    fn options_round_trip_through_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RuntimeOptions::load(dir.path()), RuntimeOptions::default());
        let o = RuntimeOptions {
            binary_name: "crun".into(),
            root: "/run/x".into(),
            systemd_cgroup: true,
        };
        o.save(dir.path()).unwrap();
        assert_eq!(RuntimeOptions::load(dir.path()), o);
    }

    #[test]
    fn runtime_state_goes_in_the_bundle_unless_a_root_is_given() {
        let reaper = Reaper::new();
        let r = Runtime::with_own_runtime(
            Path::new("/b"),
            "ns",
            &RuntimeOptions::default(),
            reaper.clone(),
            || Ok(PathBuf::from("/bin/berth-container")),
        )
        .unwrap();
        assert_eq!(r.root, Path::new("/b/runtime-state"));
        assert!(r.own);
        assert_eq!(r.binary, Path::new("/bin/berth-container"));
        let r = Runtime::new(
            Path::new("/b"),
            "ns",
            &RuntimeOptions {
                binary_name: "sh".into(),
                root: "/run/r".into(),
                systemd_cgroup: false,
            },
            reaper.clone(),
        )
        .unwrap();
        assert_eq!(r.root, Path::new("/run/r/ns"));
        assert!(!r.own);
        let e = Runtime::new(
            Path::new("/b"),
            "ns",
            &RuntimeOptions {
                binary_name: "no-such-runtime-binary".into(),
                ..Default::default()
            },
            reaper,
        )
        .unwrap_err();
        assert!(e.to_string().contains("no-such-runtime-binary"), "{e}");
    }
}
