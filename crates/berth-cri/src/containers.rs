//! CRI containers: made from the kubelet's config (an active snapshot over the image, the
//! OCI spec, a containerd container record in `k8s.io`), run as tasks through shims, their
//! output copied into the kubelet's log file, stopped with the stop signal and then
//! SIGKILL, and reported with the states, times, exit codes and reasons the kubelet reads.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_core::containers::{AnyValue, Container};
use berth_core::snapshot::{Kind, NewSnapshot};
use berth_runtime::{CreateTask, Stdio, TaskKey, TaskStatus};
use k8s_cri::v1 as cri;
use tokio::sync::{broadcast, watch};

use crate::context::{blocking, ContainerEventKind, CriContext, LiveLog};
use crate::error::{Error, Result};
use crate::images::CriImages;
use crate::logs::{self, ContainerLog, Stream};
use crate::store::{namespace, now_ns, ContainerRecord, SandboxState};

pub const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
pub(crate) const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const RESOURCES_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
/// How long a stop waits for the exit after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(30);
/// ExecSync output kept per stream.
const EXEC_OUTPUT_LIMIT: usize = 16 << 20;
/// Output chunks an attached client may fall behind by before it misses some.
const ATTACH_BACKLOG: usize = 1024;

/// The CRI state of a container record (and its task, if it runs).
pub fn state_of(r: &ContainerRecord) -> cri::ContainerState {
    if r.finished_at > 0 {
        cri::ContainerState::ContainerExited
    } else if r.started_at > 0 {
        cri::ContainerState::ContainerRunning
    } else {
        cri::ContainerState::ContainerCreated
    }
}

pub struct CriContainers {
    pub(crate) ctx: Arc<CriContext>,
    images: Arc<CriImages>,
}

pub(crate) fn key(id: &str) -> Result<TaskKey> {
    Ok(TaskKey::new(crate::store::NAMESPACE, id)?)
}

impl CriContainers {
    pub fn new(ctx: Arc<CriContext>, images: Arc<CriImages>) -> Arc<Self> {
        Arc::new(CriContainers { ctx, images })
    }

    pub fn context(&self) -> &Arc<CriContext> {
        &self.ctx
    }

    /// CreateContainer: nothing runs yet.
    pub async fn create(
        self: &Arc<Self>,
        sandbox_id: &str,
        config: cri::ContainerConfig,
    ) -> Result<String> {
        let ctx = self.ctx.clone();
        let sid = sandbox_id.to_owned();
        let sandbox = blocking(move || ctx.store.sandbox(&sid)).await?;
        if sandbox.state != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {sandbox_id:?} is not ready"
            )));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .filter(|i| !i.is_empty())
            .ok_or_else(|| Error::InvalidArgument("container config names no image".into()))?;
        let name = ContainerRecord::reserved_name(&config, &sandbox.config)?;
        let id = crate::store::new_id();
        self.ctx.store.reserve(&name, &id, "container")?;
        let made = async {
            let image = self.images.image(&image_name).await?;
            let target_pid = match config
                .linux
                .as_ref()
                .and_then(|l| l.security_context.as_ref())
                .and_then(|s| s.namespace_options.as_ref())
                .filter(|o| o.pid == 3)
            {
                Some(o) => Some(self.get(&o.target_id).await?.pid).filter(|p| *p != 0),
                None => None,
            };
            self.images.ensure_unpacked(&image).await?;
            let (ctx, cid, top, cfg, sb, img) = (
                self.ctx.clone(),
                id.clone(),
                image.resolved.top_chain().map(ToString::to_string),
                config.clone(),
                sandbox.clone(),
                image.clone(),
            );
            let image_for_record = image_name.clone();
            blocking(move || {
                let ns = namespace();
                let sn = ctx.cfg.snapshotter.clone();
                let mounts = ctx.images.snapshots.create(
                    &ns,
                    &sn,
                    NewSnapshot {
                        key: &cid,
                        parent: top.as_deref(),
                        kind: Kind::Active,
                        labels: Default::default(),
                        lease: None,
                    },
                )?;
                let built = (|| {
                    let layers = crate::users::layer_dirs(&mounts);
                    let lc = cfg.linux.clone().unwrap_or_default();
                    let sc = lc.security_context.as_ref();
                    let user = crate::spec::user_string(sc, &img.resolved.image_config)?;
                    let supplemental = sc
                        .map(|s| s.supplemental_groups.clone())
                        .unwrap_or_default();
                    // SupplementalGroupsPolicy Strict (1) leaves the image's groups out.
                    let merge = sc.is_none_or(|s| s.supplemental_groups_policy == 0);
                    let identity = crate::users::resolve(&user, &layers, &supplemental, merge)?;
                    let (spec, cgroup) = crate::spec::container_spec(&crate::spec::Input {
                        id: &cid,
                        target_pid,
                        config: &cfg,
                        sandbox: &sb,
                        image: &img.resolved.image_config,
                        image_name: &image_for_record,
                        identity: &identity,
                        oom_floor: &ctx.oom_floor,
                    })?;
                    let log_path = (!sb.config.log_directory.is_empty()
                        && !cfg.log_path.is_empty())
                    .then(|| PathBuf::from(&sb.config.log_directory).join(&cfg.log_path));
                    let stop_signal = img
                        .resolved
                        .image_config
                        .config()
                        .as_ref()
                        .and_then(|c| c.stop_signal().clone())
                        .unwrap_or_default();
                    let record = ContainerRecord {
                        id: cid.clone(),
                        sandbox_id: sb.id.clone(),
                        config: cfg.clone(),
                        image_name: image_for_record.clone(),
                        image_id: img.id.clone(),
                        image_ref: img
                            .repo_digests
                            .first()
                            .cloned()
                            .unwrap_or_else(|| img.id.clone()),
                        log_path,
                        cgroup_path: cgroup,
                        stop_signal,
                        created_at: now_ns(),
                        started_at: 0,
                        finished_at: 0,
                        exit_code: 0,
                        reason: String::new(),
                        message: String::new(),
                        pid: 0,
                    };
                    let core = Container {
                        id: cid.clone(),
                        image: image_for_record.clone(),
                        runtime_name: ctx.cfg.runtime.clone(),
                        spec: Some(AnyValue {
                            type_url: SPEC_TYPE.into(),
                            value: spec,
                        }),
                        snapshotter: sn.clone(),
                        snapshot_key: cid.clone(),
                        sandbox: sb.id.clone(),
                        ..Default::default()
                    };
                    ctx.store.create_container(core, &record)?;
                    Ok::<_, Error>(())
                })();
                if built.is_err() {
                    let _ = ctx.images.snapshots.remove(&ns, &sn, &cid);
                }
                built
            })
            .await
        }
        .await;
        match made {
            Ok(()) => {
                self.ctx.emit(ContainerEventKind::Created, &id, sandbox_id);
                Ok(id)
            }
            Err(e) => {
                self.ctx.store.release(&name);
                Err(e)
            }
        }
    }

    pub(crate) async fn record(&self, id: &str) -> Result<ContainerRecord> {
        let (ctx, id) = (self.ctx.clone(), id.to_owned());
        blocking(move || ctx.store.container(&id)).await
    }

    /// Starts copying a running container's output into its log.
    pub async fn attach_logs(&self, r: &ContainerRecord) -> Result<()> {
        let dir = self.ctx.container_dir(&r.id);
        let path = r
            .log_path
            .clone()
            .unwrap_or_else(|| PathBuf::from("/dev/null"));
        let log = ContainerLog::open(&path).await?;
        let (exited, rx) = watch::channel(false);
        let (tap, _) = broadcast::channel(ATTACH_BACKLOG);
        let out = logs::open_fifo(&dir.join("stdout"))?;
        let err = if r.config.tty {
            None
        } else {
            Some(logs::open_fifo(&dir.join("stderr"))?)
        };
        // Held open (read and write, so opening never waits) for attached clients; the
        // shim sees its end when berthd closes it.
        let stdin = if r.config.stdin {
            let tx = logs::open_fifo_writer(&dir.join("stdin"))?;
            Some(Arc::new(tokio::sync::Mutex::new(Some(tx))))
        } else {
            None
        };
        let output = tap.downgrade();
        let mut copiers = vec![tokio::spawn(logs::copy(
            out,
            Stream::Stdout,
            log.clone(),
            rx.clone(),
            tap.clone(),
        ))];
        if let Some(err) = err {
            copiers.push(tokio::spawn(logs::copy(
                err,
                Stream::Stderr,
                log.clone(),
                rx,
                tap,
            )));
        }
        self.ctx
            .logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                r.id.clone(),
                LiveLog {
                    log,
                    exited,
                    copiers,
                    output,
                    stdin,
                },
            );
        Ok(())
    }

    /// Ends the copying of a container's output once what it wrote is in the log.
    async fn detach_logs(&self, id: &str) {
        let live = self
            .ctx
            .logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(l) = live {
            let _ = l.exited.send(true);
            for c in l.copiers {
                let _ = tokio::time::timeout(Duration::from_secs(5), c).await;
            }
        }
    }

    /// StartContainer: the task is created and started; its output goes to the log.
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<()> {
        let r = self.record(id).await?;
        let state = state_of(&r);
        if state != cri::ContainerState::ContainerCreated {
            return Err(Error::FailedPrecondition(format!(
                "container {id:?} is {}, not created",
                state.as_str_name()
            )));
        }
        let (ctx, sid) = (self.ctx.clone(), r.sandbox_id.clone());
        let sandbox = blocking(move || ctx.store.sandbox(&sid)).await?;
        if sandbox.state != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {:?} of container {id:?} is not ready",
                sandbox.id
            )));
        }
        let started = self.start_task(&r).await;
        match started {
            Ok((pid, at)) => {
                // The exit may have been recorded already (a container that ends at once).
                let (ctx, cid) = (self.ctx.clone(), id.to_owned());
                let r = blocking(move || {
                    ctx.store.update_container(&cid, |r| {
                        r.started_at = at;
                        r.pid = pid;
                    })
                })
                .await?;
                self.ctx
                    .emit(ContainerEventKind::Started, id, &r.sandbox_id);
                Ok(())
            }
            Err(e) => {
                self.detach_logs(id).await;
                let (ctx, cid, msg) = (self.ctx.clone(), id.to_owned(), e.to_string());
                let _ = blocking(move || {
                    ctx.store.update_container(&cid, |r| {
                        let now = now_ns();
                        r.started_at = now;
                        r.finished_at = now;
                        r.exit_code = 128;
                        r.reason = "StartError".into();
                        r.message = msg;
                    })
                })
                .await;
                Err(e)
            }
        }
    }

    /// Creates and starts the task; returns its pid and when it was started.
    async fn start_task(self: &Arc<Self>, r: &ContainerRecord) -> Result<(u32, i64)> {
        let dir = self.ctx.container_dir(&r.id);
        let (tty, stdin) = (r.config.tty, r.config.stdin);
        let (ctx, id, d) = (self.ctx.clone(), r.id.clone(), dir.clone());
        let (core, mounts) = blocking(move || {
            std::fs::create_dir_all(&d).map_err(Error::io("create", &d))?;
            logs::make_fifo(&d.join("stdout"))?;
            if !tty {
                logs::make_fifo(&d.join("stderr"))?;
            }
            if stdin {
                logs::make_fifo(&d.join("stdin"))?;
            }
            let core = ctx.store.core_container(&id)?;
            let mounts =
                ctx.images
                    .snapshots
                    .mounts(&namespace(), &core.snapshotter, &core.snapshot_key)?;
            Ok((core, mounts))
        })
        .await?;
        self.attach_logs(r).await?;
        let spec = core.spec.map(|s| s.value).ok_or_else(|| {
            Error::FailedPrecondition(format!("container {:?} has no spec", r.id))
        })?;
        let task = self
            .ctx
            .runtime
            .create(CreateTask {
                key: key(&r.id)?,
                runtime: self.ctx.cfg.runtime.clone(),
                runtime_path: None,
                runtime_options: None,
                task_options: None,
                spec,
                rootfs: mounts,
                stdio: Stdio {
                    stdin: if stdin {
                        dir.join("stdin").display().to_string()
                    } else {
                        String::new()
                    },
                    stdout: dir.join("stdout").display().to_string(),
                    stderr: if tty {
                        String::new()
                    } else {
                        dir.join("stderr").display().to_string()
                    },
                    terminal: tty,
                },
            })
            .await?;
        let at = now_ns();
        match task.shim()?.start("").await {
            Ok(pid) => Ok((pid, at)),
            Err(e) => {
                let _ = self.ctx.runtime.delete(&task.key).await;
                Err(e.into())
            }
        }
    }

    /// StopContainer: the stop signal, then SIGKILL after `timeout` seconds. A container
    /// that is not running, or not there, is stopped already.
    pub async fn stop(self: &Arc<Self>, id: &str, timeout: i64) -> Result<()> {
        let r = match self.record(id).await {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        if state_of(&r) != cri::ContainerState::ContainerRunning {
            return Ok(());
        }
        let k = key(id)?;
        let Ok(task) = self.ctx.runtime.get(&k) else {
            // The task is gone (berthd found it dead): record how it ended.
            self.record_exit(id, None).await;
            return Ok(());
        };
        let Ok(shim) = task.shim() else {
            let exit = task.dead_exit();
            self.record_exit(id, exit.map(|e| (e.status, e.at.0))).await;
            return Ok(());
        };
        if timeout > 0 {
            let sig = signal_number(&r.stop_signal).unwrap_or(libc::SIGTERM as u32);
            let _ = shim.kill("", sig, false).await;
            if let Ok(Ok(exit)) =
                tokio::time::timeout(Duration::from_secs(timeout as u64), task.wait("")).await
            {
                self.record_exit(id, Some((exit.status, exit.at.0))).await;
                return Ok(());
            }
        }
        match shim.kill("", libc::SIGKILL as u32, true).await {
            Ok(()) => {}
            Err(e) if e.kind() == berth_core::ErrorKind::NotFound => {}
            Err(e) => tracing::debug!(container = %id, "SIGKILL: {e}"),
        }
        match tokio::time::timeout(KILL_WAIT, task.wait("")).await {
            Ok(Ok(exit)) => {
                self.record_exit(id, Some((exit.status, exit.at.0))).await;
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(Error::FailedPrecondition(format!(
                "container {id:?} did not exit within {KILL_WAIT:?} of SIGKILL"
            ))),
        }
    }

    /// Records how a container ended (once), deletes its task and lets its logs drain.
    pub async fn record_exit(&self, id: &str, exit: Option<(u32, i64)>) {
        let oom = self
            .ctx
            .oom_killed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        // What the container wrote is in its log before it is reported ended.
        self.detach_logs(id).await;
        let (ctx, cid) = (self.ctx.clone(), id.to_owned());
        let recorded = blocking(move || {
            let mut first = false;
            let r = ctx.store.update_container(&cid, |r| {
                if r.finished_at != 0 {
                    return;
                }
                first = true;
                let (code, at) = exit.unwrap_or((255, now_ns()));
                r.finished_at = if at > 0 { at } else { now_ns() };
                r.exit_code = code as i32;
                r.reason = if exit.is_none() {
                    "Unknown".into()
                } else if oom {
                    "OOMKilled".into()
                } else if code == 0 {
                    "Completed".into()
                } else {
                    "Error".into()
                };
            })?;
            Ok((r, first))
        })
        .await;
        match recorded {
            Ok((r, true)) => self
                .ctx
                .emit(ContainerEventKind::Stopped, id, &r.sandbox_id),
            Ok(_) => {}
            Err(e) if e.is_not_found() => return,
            Err(e) => tracing::warn!(container = %id, "record exit: {e}"),
        }
        if let Ok(k) = key(id) {
            if self.ctx.runtime.get(&k).is_ok() {
                if let Err(e) = self.ctx.runtime.delete(&k).await {
                    tracing::debug!(container = %id, "delete exited task: {e}");
                }
            }
        }
    }

    /// RemoveContainer: a running container is killed first; the task, snapshot, record
    /// and name go. Removing what is not there succeeds.
    pub async fn remove(self: &Arc<Self>, id: &str) -> Result<()> {
        let r = match self.record(id).await {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        if state_of(&r) == cri::ContainerState::ContainerRunning {
            self.stop(id, 0).await?;
        }
        let k = key(id)?;
        if self.ctx.runtime.get(&k).is_ok() {
            self.ctx.runtime.delete(&k).await?;
        }
        self.detach_logs(id).await;
        let (ctx, id2, dir) = (self.ctx.clone(), id.to_owned(), self.ctx.container_dir(id));
        let sandbox_id = r.sandbox_id.clone();
        blocking(move || {
            let core = ctx.store.core_container(&id2).ok();
            if let Some(c) = core {
                match ctx
                    .images
                    .snapshots
                    .remove(&namespace(), &c.snapshotter, &c.snapshot_key)
                {
                    Err(e) if !e.is_not_found() => return Err(e.into()),
                    _ => {}
                }
            }
            ctx.store.delete(&id2)?;
            if let Ok(pod) = ctx.store.sandbox(&r.sandbox_id) {
                if let Ok(n) = ContainerRecord::reserved_name(&r.config, &pod.config) {
                    ctx.store.release(&n);
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
            ctx.gc.schedule();
            Ok(())
        })
        .await?;
        self.ctx.emit(ContainerEventKind::Deleted, id, &sandbox_id);
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<ContainerRecord> {
        self.record(id).await
    }

    pub async fn all(&self) -> Result<Vec<ContainerRecord>> {
        let ctx = self.ctx.clone();
        blocking(move || ctx.store.containers()).await
    }

    /// ContainerStatus, and the verbose info (containerd's `info` JSON).
    pub async fn status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<(cri::ContainerStatus, HashMap<String, String>)> {
        let r = self.record(id).await?;
        let mut info = HashMap::new();
        if verbose {
            let (ctx, cid) = (self.ctx.clone(), id.to_owned());
            let core = blocking(move || ctx.store.core_container(&cid)).await?;
            let spec: serde_json::Value = core
                .spec
                .as_ref()
                .and_then(|s| serde_json::from_slice(&s.value).ok())
                .unwrap_or_default();
            let v = serde_json::json!({
                "sandboxID": r.sandbox_id, "pid": r.pid, "removing": false,
                "snapshotKey": core.snapshot_key, "snapshotter": core.snapshotter,
                "runtimeType": core.runtime_name, "config": r.config, "runtimeSpec": spec,
            });
            info.insert("info".to_owned(), v.to_string());
        }
        Ok((container_status(&r), info))
    }

    /// UpdateContainerResources: the running task's cgroup, and the recorded spec.
    pub async fn update_resources(
        &self,
        id: &str,
        resources: cri::LinuxContainerResources,
    ) -> Result<()> {
        let r = self.record(id).await?;
        let json = crate::spec::resources(&resources);
        if state_of(&r) == cri::ContainerState::ContainerRunning {
            let task = self.ctx.runtime.get(&key(id)?)?;
            task.shim()?
                .update(
                    Some(&AnyValue {
                        type_url: RESOURCES_TYPE.into(),
                        value: serde_json::to_vec(&json).unwrap_or_default(),
                    }),
                    HashMap::new(),
                )
                .await?;
        }
        let (ctx, cid) = (self.ctx.clone(), id.to_owned());
        blocking(move || {
            let mut core = ctx.store.core_container(&cid)?;
            if let Some(s) = &mut core.spec {
                let mut spec: serde_json::Value =
                    serde_json::from_slice(&s.value).unwrap_or_default();
                let devices = spec["linux"]["resources"]["devices"].clone();
                spec["linux"]["resources"] = json;
                spec["linux"]["resources"]["devices"] = devices;
                s.value = serde_json::to_vec(&spec).unwrap_or_default();
                ctx.store
                    .core()
                    .update(&namespace(), core, &["spec".to_owned()])?;
            }
            ctx.store.update_container(&cid, |r| {
                let mut linux = r.config.linux.clone().unwrap_or_default();
                linux.resources = Some(resources);
                r.config.linux = Some(linux);
            })?;
            Ok(())
        })
        .await
    }

    /// ReopenContainerLog: only for a running container.
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let r = self.record(id).await?;
        if state_of(&r) != cri::ContainerState::ContainerRunning {
            return Err(Error::FailedPrecondition(format!(
                "container {id:?} is not running"
            )));
        }
        let log = self
            .ctx
            .logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(|l| l.log.clone())
            .ok_or_else(|| Error::FailedPrecondition(format!("container {id:?} has no log")))?;
        log.reopen().await
    }

    /// ExecSync: the command's output (each stream capped at 16 MiB) and exit status. A
    /// timeout kills only the exec'd process, never the container.
    pub async fn exec_sync(
        self: &Arc<Self>,
        id: &str,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Result<(Vec<u8>, Vec<u8>, i32)> {
        let (otx, orx) = tokio::sync::mpsc::channel(16);
        let (etx, erx) = tokio::sync::mpsc::channel(16);
        let collect = |mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>| {
            tokio::spawn(async move {
                let mut v = Vec::new();
                while let Some(b) = rx.recv().await {
                    let room = EXEC_OUTPUT_LIMIT.saturating_sub(v.len());
                    v.extend_from_slice(&b[..b.len().min(room)]);
                }
                v
            })
        };
        let (oh, eh) = (collect(orx), collect(erx));
        let io = crate::exec::StreamIo {
            stdout: Some(otx),
            stderr: Some(etx),
            ..Default::default()
        };
        let shown = format!("{cmd:?}");
        let run = self.exec_stream(id, cmd, false, io);
        let status = if timeout > 0 {
            match tokio::time::timeout(Duration::from_secs(timeout as u64), run).await {
                Ok(r) => r?,
                // Dropping the run kills the process and removes its fifos.
                Err(_) => {
                    return Err(Error::Core(berth_core::Error::DeadlineExceeded(format!(
                        "command {shown} in container {id:?} timed out after {timeout}s"
                    ))))
                }
            }
        } else {
            run.await?
        };
        let stdout = oh.await.unwrap_or_default();
        let stderr = eh.await.unwrap_or_default();
        Ok((stdout, stderr, status))
    }
}

/// A signal by name (`SIGTERM`, `TERM`, `15`), as images give their stop signal.
pub fn signal_number(s: &str) -> Option<u32> {
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<u32>() {
        return Some(n);
    }
    let name = s.trim_start_matches("SIG");
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "WINCH" => libc::SIGWINCH,
        "STOP" => libc::SIGSTOP,
        "PWR" => libc::SIGPWR,
        _ => return None,
    };
    Some(n as u32)
}

/// The status the kubelet reads.
pub fn container_status(r: &ContainerRecord) -> cri::ContainerStatus {
    let state = state_of(r);
    let mounts = r.config.mounts.clone();
    let linux = r.config.linux.clone().unwrap_or_default();
    cri::ContainerStatus {
        id: r.id.clone(),
        metadata: r.config.metadata.clone(),
        state: state as i32,
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        exit_code: r.exit_code,
        image: Some(cri::ImageSpec {
            image: r.image_name.clone(),
            ..Default::default()
        }),
        image_ref: r.image_ref.clone(),
        reason: r.reason.clone(),
        message: r.message.clone(),
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        mounts,
        log_path: r
            .log_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        resources: linux.resources.map(|l| cri::ContainerResources {
            linux: Some(l),
            windows: None,
        }),
        image_id: r.image_id.clone(),
        ..Default::default()
    }
}

/// The task behind a record, if berthd still has it live.
pub fn task_running(ctx: &CriContext, id: &str) -> bool {
    key(id)
        .ok()
        .and_then(|k| ctx.runtime.get(&k).ok())
        .is_some_and(|t| t.dead_exit().is_none())
}

/// Used by recovery: the task's status as the shim reports it.
pub async fn task_status(ctx: &CriContext, id: &str) -> Option<(TaskStatus, u32, i64)> {
    let t = ctx.runtime.get(&key(id).ok()?).ok()?;
    let s = t.state("").await.ok()?;
    Some((
        s.status,
        s.exit_status,
        s.exited_at.map(|t| t.0).unwrap_or(0),
    ))
}
