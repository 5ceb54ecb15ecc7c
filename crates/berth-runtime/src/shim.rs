//! The shim v2 bootstrap and task API. A runtime name maps to a `containerd-shim-*` binary;
//! `start` launches it with the bundle as working directory and prints the ttrpc address of
//! the shim; `delete` cleans up after a shim that can no longer be reached; every other call
//! goes over ttrpc to the `containerd.task.v2.Task` service.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio as ProcStdio;
use std::time::Duration;

use berth_core::containers::AnyValue;
use berth_core::mount::Mount;
use berth_core::Error as CoreError;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any as PbAny;
use containerd_shim_protos::protobuf::{Message, MessageField};
use tokio::io::AsyncWriteExt;

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::bundle::Bundle;
use crate::client::{ShimLauncher, TaskClient};
use crate::error::{Error, Result};
use crate::task::{time_from_wire, Exit, ProcessState, Stdio, TaskKey, TaskStatus};

/// The task service every shim v2 serves (containerd 1.x shims serve only this version).
pub const TASK_SERVICE: &str = "containerd.task.v2.Task";
/// How long a shim's `start` or `delete` subcommand may take.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(30);

/// containerd's mapping: `io.containerd.runc.v2` → `containerd-shim-runc-v2`.
pub fn binary_name(runtime: &str) -> Result<String> {
    let parts: Vec<&str> = runtime.split('.').collect();
    match parts.as_slice() {
        [.., name, version] if !name.is_empty() && !version.is_empty() => {
            Ok(format!("containerd-shim-{name}-{version}"))
        }
        _ => Err(CoreError::InvalidArgument(format!(
            "runtime name {runtime:?} is not of the form io.containerd.NAME.VERSION"
        ))
        .into()),
    }
}

/// Finds the shim binary of a runtime: an absolute path is taken as it is, a configured path
/// wins, then PATH, then the directory of berthd itself.
pub fn resolve_binary(runtime: &str, configured: &HashMap<String, PathBuf>) -> Result<PathBuf> {
    let explicit = if Path::new(runtime).is_absolute() {
        Some(PathBuf::from(runtime))
    } else {
        configured.get(runtime).cloned()
    };
    if let Some(p) = explicit {
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(Error::precondition(format!(
                "runtime {runtime:?}: shim binary {} does not exist or is not executable",
                p.display()
            )))
        };
    }
    let name = binary_name(runtime)?;
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(own) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(own);
    }
    dirs.iter()
        .map(|d| d.join(&name))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            Error::precondition(format!(
                "runtime {runtime:?}: shim binary {name} not found on PATH"
            ))
        })
}

fn is_executable(p: &Path) -> bool {
    rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok() && p.is_file()
}

/// What every bootstrap call of a shim binary needs.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub binary: PathBuf,
    /// berthd's gRPC socket, passed as `-address`.
    pub daemon_address: PathBuf,
    /// berthd's ttrpc socket, passed as TTRPC_ADDRESS; shims forward their events there.
    pub ttrpc_address: PathBuf,
    /// The binary shims may exec to publish events (`berthd publish`).
    pub publish_binary: PathBuf,
    pub debug: bool,
}

impl Bootstrap {
    fn command(&self, bundle: &Bundle) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.binary);
        c.arg("-namespace")
            .arg(bundle.key.namespace.as_str())
            .arg("-address")
            .arg(&self.daemon_address)
            .arg("-publish-binary")
            .arg(&self.publish_binary)
            .arg("-id")
            .arg(bundle.key.id.as_str());
        if self.debug {
            c.arg("-debug");
        }
        c.current_dir(&bundle.path)
            .env("TTRPC_ADDRESS", &self.ttrpc_address)
            .stdin(ProcStdio::piped())
            .stdout(ProcStdio::piped())
            .stderr(ProcStdio::piped())
            .kill_on_drop(true);
        c
    }

    async fn run(
        &self,
        mut cmd: tokio::process::Command,
        action: &'static str,
        stdin: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let err = |reason: String| Error::ShimBinary {
            binary: self.binary.display().to_string(),
            action,
            reason,
        };
        let mut child = cmd.spawn().map_err(|e| err(e.to_string()))?;
        if let Some(mut w) = child.stdin.take() {
            // A shim that does not read its stdin is not an error.
            let _ = w.write_all(&stdin).await;
        }
        let out = tokio::time::timeout(BOOTSTRAP_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| err(format!("did not finish within {BOOTSTRAP_TIMEOUT:?}")))?
            .map_err(|e| err(e.to_string()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let msg = stderr.trim();
            return Err(err(if msg.is_empty() {
                out.status.to_string()
            } else {
                format!("{}: {msg}", out.status)
            }));
        }
        Ok(out.stdout)
    }

    /// Runs `SHIM ... start` and returns the address the shim listens on. The runtime options
    /// go to the shim's stdin as a protobuf Any, as containerd sends them.
    pub async fn start(&self, bundle: &Bundle, options: Option<&AnyValue>) -> Result<String> {
        let mut cmd = self.command(bundle);
        cmd.arg("start");
        let stdin = options
            .map(any_to_wire)
            .map(|a| a.write_to_bytes().unwrap_or_default());
        let out = self.run(cmd, "start", stdin.unwrap_or_default()).await?;
        let address = String::from_utf8_lossy(&out).trim().to_owned();
        if address.is_empty() {
            return Err(Error::ShimBinary {
                binary: self.binary.display().to_string(),
                action: "start",
                reason: "printed no address".into(),
            });
        }
        Ok(address)
    }

    /// Runs `SHIM ... -bundle B delete`: the shim's own cleanup (kill what is left, delete
    /// the runtime's state, unmount the rootfs) for a shim that is gone.
    pub async fn delete(&self, bundle: &Bundle) -> Result<Exit> {
        let mut cmd = self.command(bundle);
        cmd.arg("-bundle").arg(&bundle.path).arg("delete");
        let out = self.run(cmd, "delete", Vec::new()).await?;
        let r = api::DeleteResponse::parse_from_bytes(&out).map_err(|e| Error::ShimBinary {
            binary: self.binary.display().to_string(),
            action: "delete",
            reason: format!("unreadable answer: {e}"),
        })?;
        Ok(Exit {
            pid: r.pid,
            status: r.exit_status,
            at: time_from_wire(&r.exited_at).unwrap_or_else(berth_core::metadata::Timestamp::now),
        })
    }
}

/// Removes the socket a dead shim listened on (the bundle's `address`): a killed shim cannot
/// remove it itself. A shim that still answers there (serving the rest of a pod) keeps it,
/// and only a socket file is ever removed.
async fn remove_dead_socket(bundle: &Bundle) {
    use std::os::unix::fs::FileTypeExt;
    let Ok(address) = tokio::fs::read_to_string(bundle.path.join("address")).await else {
        return;
    };
    let path = address.trim().trim_start_matches("unix://");
    if path.is_empty() || tokio::net::UnixStream::connect(path).await.is_ok() {
        return;
    }
    if let Ok(meta) = tokio::fs::symlink_metadata(path).await {
        if meta.file_type().is_socket() {
            let _ = tokio::fs::remove_file(path).await;
        }
    }
}

pub fn any_to_wire(a: &AnyValue) -> PbAny {
    PbAny {
        type_url: a.type_url.clone(),
        value: a.value.clone(),
        ..Default::default()
    }
}

pub fn any_from_wire(a: &MessageField<PbAny>) -> Option<AnyValue> {
    a.as_ref().map(|a| AnyValue {
        type_url: a.type_url.clone(),
        value: a.value.clone(),
    })
}

/// A ttrpc connection to one shim, for one task.
#[derive(Clone)]
pub struct ShimClient {
    id: String,
    namespace: String,
    client: ttrpc::asynchronous::Client,
}

impl ShimClient {
    pub async fn connect(address: &str, key: &TaskKey) -> Result<ShimClient> {
        let (namespace, id) = (key.namespace.as_str(), key.id.as_str());
        let client = tokio::time::timeout(
            Duration::from_secs(10),
            ttrpc::asynchronous::Client::connect(address),
        )
        .await
        .map_err(|_| Error::ShimUnavailable {
            id: id.to_owned(),
            reason: format!("connect to {address} timed out"),
        })?
        .map_err(|e| Error::ShimUnavailable {
            id: id.to_owned(),
            reason: format!("connect to {address}: {e}"),
        })?;
        Ok(ShimClient {
            id: id.to_owned(),
            namespace: namespace.to_owned(),
            client,
        })
    }

    async fn call<Req: Message, Resp: Message>(
        &self,
        method: &str,
        req: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp> {
        let mut r = ttrpc::Request::new();
        r.service = TASK_SERVICE.to_owned();
        r.method = method.to_owned();
        r.timeout_nano = timeout.map_or(0, |t| t.as_nanos() as i64);
        let mut md = HashMap::new();
        md.insert(
            "containerd-namespace-ttrpc".to_owned(),
            vec![self.namespace.clone()],
        );
        r.metadata = ttrpc::context::to_pb(md);
        r.payload = req.write_to_bytes().map_err(|e| Error::ShimUnavailable {
            id: self.id.clone(),
            reason: format!("encode {method}: {e}"),
        })?;
        let call = self.client.request(r);
        let res = match timeout {
            // The ttrpc deadline travels to the shim; this one guards against a shim that hangs.
            Some(t) => tokio::time::timeout(t + Duration::from_secs(1), call)
                .await
                .map_err(|_| Error::ShimUnavailable {
                    id: self.id.clone(),
                    reason: format!("{method} timed out after {t:?}"),
                })?,
            None => call.await,
        }
        .map_err(|e| Error::from_ttrpc(&self.id, e))?;
        Resp::parse_from_bytes(&res.payload).map_err(|e| Error::ShimUnavailable {
            id: self.id.clone(),
            reason: format!("decode {method} answer: {e}"),
        })
    }
}

#[async_trait::async_trait]
impl TaskClient for ShimClient {
    async fn create(
        &self,
        bundle: &Bundle,
        rootfs: &[Mount],
        stdio: &Stdio,
        options: Option<&AnyValue>,
    ) -> Result<u32> {
        let req = api::CreateTaskRequest {
            id: self.id.clone(),
            bundle: bundle.path.to_string_lossy().into_owned(),
            rootfs: rootfs
                .iter()
                .map(|m| api::Mount {
                    type_: m.kind.clone(),
                    source: m.source.clone(),
                    target: m.target.clone(),
                    options: m.options.clone(),
                    ..Default::default()
                })
                .collect(),
            terminal: stdio.terminal,
            stdin: stdio.stdin.clone(),
            stdout: stdio.stdout.clone(),
            stderr: stdio.stderr.clone(),
            options: options.map(any_to_wire).into(),
            ..Default::default()
        };
        let r: api::CreateTaskResponse = self.call("Create", &req, None).await?;
        Ok(r.pid)
    }

    async fn start(&self, exec_id: &str) -> Result<u32> {
        let req = api::StartRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        let r: api::StartResponse = self.call("Start", &req, None).await?;
        Ok(r.pid)
    }

    async fn delete(&self, exec_id: &str) -> Result<Exit> {
        let req = api::DeleteRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        let r: api::DeleteResponse = self.call("Delete", &req, None).await?;
        Ok(Exit {
            pid: r.pid,
            status: r.exit_status,
            at: time_from_wire(&r.exited_at).unwrap_or_else(berth_core::metadata::Timestamp::now),
        })
    }

    async fn state(&self, exec_id: &str) -> Result<ProcessState> {
        let req = api::StateRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        let r: api::StateResponse = self
            .call("State", &req, Some(Duration::from_secs(10)))
            .await?;
        Ok(ProcessState {
            container_id: self.id.clone(),
            exec_id: r.exec_id.clone(),
            pid: r.pid,
            status: TaskStatus::from_wire(r.status.enum_value_or_default()),
            stdio: Stdio {
                stdin: r.stdin.clone(),
                stdout: r.stdout.clone(),
                stderr: r.stderr.clone(),
                terminal: r.terminal,
            },
            exit_status: r.exit_status,
            exited_at: time_from_wire(&r.exited_at),
        })
    }

    async fn wait(&self, exec_id: &str) -> Result<Exit> {
        let req = api::WaitRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        let r: api::WaitResponse = self.call("Wait", &req, None).await?;
        Ok(Exit {
            pid: 0,
            status: r.exit_status,
            at: time_from_wire(&r.exited_at).unwrap_or_else(berth_core::metadata::Timestamp::now),
        })
    }

    async fn kill(&self, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let req = api::KillRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            signal,
            all,
            ..Default::default()
        };
        let _: api::Empty = self.call("Kill", &req, None).await?;
        Ok(())
    }

    async fn exec(&self, exec_id: &str, stdio: &Stdio, spec: &AnyValue) -> Result<()> {
        let req = api::ExecProcessRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            terminal: stdio.terminal,
            stdin: stdio.stdin.clone(),
            stdout: stdio.stdout.clone(),
            stderr: stdio.stderr.clone(),
            spec: MessageField::some(any_to_wire(spec)),
            ..Default::default()
        };
        let _: api::Empty = self.call("Exec", &req, None).await?;
        Ok(())
    }

    async fn resize_pty(&self, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let req = api::ResizePtyRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            width,
            height,
            ..Default::default()
        };
        let _: api::Empty = self.call("ResizePty", &req, None).await?;
        Ok(())
    }

    async fn close_io(&self, exec_id: &str, stdin: bool) -> Result<()> {
        let req = api::CloseIORequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            stdin,
            ..Default::default()
        };
        let _: api::Empty = self.call("CloseIO", &req, None).await?;
        Ok(())
    }

    async fn pause(&self) -> Result<()> {
        let req = api::PauseRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        let _: api::Empty = self.call("Pause", &req, None).await?;
        Ok(())
    }

    async fn resume(&self) -> Result<()> {
        let req = api::ResumeRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        let _: api::Empty = self.call("Resume", &req, None).await?;
        Ok(())
    }

    /// The task's processes: pid and, where the shim gives it, runtime-specific info.
    async fn pids(&self) -> Result<Vec<(u32, Option<AnyValue>)>> {
        let req = api::PidsRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        let r: api::PidsResponse = self.call("Pids", &req, None).await?;
        Ok(r.processes
            .iter()
            .map(|p| (p.pid, any_from_wire(&p.info)))
            .collect())
    }

    async fn update(
        &self,
        resources: Option<&AnyValue>,
        annotations: HashMap<String, String>,
    ) -> Result<()> {
        let req = api::UpdateTaskRequest {
            id: self.id.clone(),
            resources: resources.map(any_to_wire).into(),
            annotations,
            ..Default::default()
        };
        let _: api::Empty = self.call("Update", &req, None).await?;
        Ok(())
    }

    /// Cgroup statistics as the shim encodes them (cgroups v1 or v2 metrics types).
    async fn stats(&self) -> Result<Option<AnyValue>> {
        let req = api::StatsRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        let r: api::StatsResponse = self
            .call("Stats", &req, Some(Duration::from_secs(10)))
            .await?;
        Ok(any_from_wire(&r.stats))
    }

    /// The shim's own pid and the task's, as a liveness check.
    async fn connect_info(&self) -> Result<(u32, u32)> {
        let req = api::ConnectRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        let r: api::ConnectResponse = self
            .call("Connect", &req, Some(Duration::from_secs(5)))
            .await?;
        Ok((r.shim_pid, r.task_pid))
    }

    /// Asks the shim to exit; it does once it has no tasks left. The connection closing
    /// while the shim goes away is the expected answer.
    async fn shutdown(&self) -> Result<()> {
        let req = api::ShutdownRequest {
            id: self.id.clone(),
            now: false,
            ..Default::default()
        };
        match self
            .call::<_, api::Empty>("Shutdown", &req, Some(Duration::from_secs(5)))
            .await
        {
            Ok(_) | Err(Error::ShimUnavailable { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The real launcher: shim binaries run with the v2 bootstrap, ttrpc connections, and a
/// pidfd on each shim process.
pub struct ProcessLauncher;

#[async_trait::async_trait]
impl ShimLauncher for ProcessLauncher {
    async fn start(
        &self,
        bootstrap: &Bootstrap,
        bundle: &Bundle,
        options: Option<&AnyValue>,
    ) -> Result<String> {
        bootstrap.start(bundle, options).await
    }

    async fn connect(&self, address: &str, key: &TaskKey) -> Result<Arc<dyn TaskClient>> {
        Ok(Arc::new(ShimClient::connect(address, key).await?))
    }

    async fn cleanup(&self, bootstrap: &Bootstrap, bundle: &Bundle) -> Result<Exit> {
        let exit = bootstrap.delete(bundle).await;
        remove_dead_socket(bundle).await;
        exit
    }

    fn exited(&self, pid: u32) -> Option<BoxFuture<'static, ()>> {
        let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
        let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK).ok()?;
        // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it until dropped, so the
        // descriptor stays open and the same for the registration's whole life.
        let afd = match unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        } {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("watch pidfd of shim {pid:?}: {e}");
                return None;
            }
        };
        Some(Box::pin(async move {
            let _ = afd.readable().await;
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_names_map_to_shim_binaries() {
        assert_eq!(
            binary_name("io.containerd.runc.v2").unwrap(),
            "containerd-shim-runc-v2"
        );
        assert_eq!(
            binary_name("io.containerd.berth.v1").unwrap(),
            "containerd-shim-berth-v1"
        );
        assert!(binary_name("runc").is_err());
        assert!(binary_name("io.containerd.runc.").is_err());
    }

    #[test]
    fn a_missing_shim_is_named() {
        let e = resolve_binary("io.containerd.nosuch.v9", &HashMap::new()).unwrap_err();
        assert!(e.to_string().contains("containerd-shim-nosuch-v9"), "{e}");
        assert_eq!(e.kind(), berth_core::ErrorKind::FailedPrecondition);
        let e = resolve_binary("/nonexistent/shim", &HashMap::new()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/shim"), "{e}");
    }
}
