//! The shim v2 task service: containerd's `Task` calls on the containers this shim keeps.
//! Each call finds its container and process, checks the state, and drives the runtime,
//! the stdio copies and the cgroup; exits arrive from the reaper and become TaskExit events.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use async_trait::async_trait;
use containerd_shim::io::Stdio;
use containerd_shim_protos::{
    api::{self, Empty},
    events::task::{
        TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM,
        TaskPaused, TaskResumed, TaskStart,
    },
    protobuf::{Message, MessageField},
    shim::oci::Options,
    shim_async::Task,
    ttrpc::{self, r#async::TtrpcContext},
};
use tokio::sync::{Mutex, Notify};

use crate::{
    cgroup::{self, ContainerCgroup},
    container::{has_own_pid_ns, timestamp, Container, Process, ProcessState},
    error::Error,
    events::EventQueue,
    reaper::{Exit, Reaper},
    residency::Quiet,
    runtime::{Runtime, RuntimeOptions},
    stdio::ProcessIo,
    warm::CgroupWarmer,
};

pub struct Shared {
    pub namespace: String,
    pub reaper: Arc<Reaper>,
    pub events: EventQueue,
    containers: Mutex<HashMap<String, Container>>,
    /// Signalled when the shim may exit: shutdown with no containers left.
    pub exit: Notify,
    /// Lets go of idle memory once the calls that start and stop processes are over.
    quiet: Arc<Quiet>,
    /// Starts the cgroup lock's grace period before the runtime moves a process.
    warmer: Option<Arc<CgroupWarmer>>,
}

#[derive(Clone)]
pub struct TaskService {
    shared: Arc<Shared>,
}

type TResult<T> = ttrpc::Result<T>;

impl TaskService {
    pub fn new(
        namespace: &str,
        reaper: Arc<Reaper>,
        events: EventQueue,
        warmer: Option<Arc<CgroupWarmer>>,
    ) -> Self {
        TaskService {
            shared: Arc::new(Shared {
                namespace: namespace.to_owned(),
                reaper,
                events,
                containers: Mutex::new(HashMap::new()),
                exit: Notify::new(),
                quiet: Arc::default(),
                warmer,
            }),
        }
    }

    /// A process is about to be moved into a container's cgroup: start the wait now.
    fn warm_cgroups(&self) {
        if let Some(w) = &self.shared.warmer {
            w.warm(&self.shared.reaper);
        }
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn publish<M: Message>(&self, topic: &'static str, event: M) {
        self.shared.events.publish(topic, &event);
    }

    /// Watches `pid` (already registered with the reaper) and records its exit.
    fn watch_exit(
        &self,
        id: &str,
        exec_id: &str,
        pid: i32,
        rx: tokio::sync::oneshot::Receiver<Exit>,
    ) {
        let this = self.clone();
        let (id, exec_id) = (id.to_owned(), exec_id.to_owned());
        tokio::spawn(async move {
            if let Ok(exit) = rx.await {
                this.process_exited(&id, &exec_id, pid, exit).await;
            }
        });
    }

    async fn process_exited(&self, id: &str, exec_id: &str, pid: i32, exit: Exit) {
        let mut containers = self.shared.containers.lock().await;
        let Some(c) = containers.get_mut(id) else {
            return;
        };
        let Ok(process) = c.process_mut(exec_id) else {
            return;
        };
        if process.pid != pid || process.state == ProcessState::Stopped {
            return;
        }
        process.set_exited(exit);
        if exec_id.is_empty() {
            if c.shared_pid_ns {
                // Without a pid namespace of its own the init's end ends nothing else.
                if let Err(e) = c.runtime.kill_all(id, libc::SIGKILL as u32).await {
                    log::warn!("kill what is left of task {id:?}: {e}");
                }
            }
            if let Some(w) = c.oom_watch.take() {
                w.abort();
            }
        }
        self.publish(
            "/tasks/exit",
            TaskExit {
                container_id: id.to_owned(),
                id: if exec_id.is_empty() { id } else { exec_id }.to_owned(),
                pid: pid as u32,
                exit_status: exit.code as u32,
                exited_at: MessageField::some(timestamp(exit.at)),
                ..Default::default()
            },
        );
    }

    async fn create_container(&self, req: &api::CreateTaskRequest) -> Result<i32, Error> {
        let id = req.id.clone();
        if id.is_empty() {
            return Err(Error::InvalidArgument("create: empty task id".into()));
        }
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(Error::Unimplemented(
                "create from a checkpoint is not supported by the berth shim".into(),
            ));
        }
        self.warm_cgroups();
        let mut containers = self.shared.containers.lock().await;
        if containers.contains_key(&id) {
            return Err(Error::AlreadyExists(format!("task {id:?} already exists")));
        }
        let bundle = PathBuf::from(&req.bundle);
        let options = runtime_options(req.options.as_ref())?;
        options.save(&bundle)?;
        let spec_path = bundle.join("config.json");
        let spec = oci_spec_shim::runtime::Spec::load(&spec_path).map_err(|e| {
            Error::InvalidArgument(format!("{} is not an OCI spec: {e}", spec_path.display()))
        })?;
        let runtime = Runtime::new(
            &bundle,
            &self.shared.namespace,
            &options,
            self.shared.reaper.clone(),
        )?;

        let rootfs = bundle.join("rootfs");
        let mut mounted = false;
        let undo_mounts = |mounted: bool| {
            if mounted {
                let _ = containerd_shim::mount::umount_recursive(rootfs.to_str(), libc::MNT_DETACH);
            }
        };
        if !req.rootfs.is_empty() {
            std::fs::create_dir_all(&rootfs).map_err(|e| Error::io("create", &rootfs, e))?;
        }
        for m in &req.rootfs {
            let mount_type = Some(m.type_.as_str()).filter(|s| !s.is_empty());
            let source = Some(m.source.as_str()).filter(|s| !s.is_empty());
            if let Err(e) =
                containerd_shim::mount::mount_rootfs(mount_type, source, &m.options, &rootfs)
            {
                undo_mounts(mounted);
                return Err(Error::InvalidArgument(format!(
                    "mount {} ({}) on {}: {e}",
                    m.source,
                    m.type_,
                    rootfs.display()
                )));
            }
            mounted = true;
        }

        let stdio = Stdio::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let prepared = match ProcessIo::prepare(
            &stdio,
            &self.shared.namespace,
            &id,
            &self.shared.reaper,
        )
        .await
        {
            Ok(p) => p,
            Err(e) => {
                undo_mounts(mounted);
                return Err(e);
            }
        };
        let mut io = prepared.io;
        let console_path = prepared.console.as_ref().map(|c| c.path().to_path_buf());
        let created = runtime
            .create(&id, &bundle, console_path.as_deref(), prepared.invocation)
            .await;
        let pid = match created {
            Ok(pid) => pid,
            Err(e) => {
                io.shutdown().await;
                let _ = runtime.delete(&id).await;
                undo_mounts(mounted);
                return Err(e);
            }
        };
        // Registered before anything can wait: an init killed right away is still seen.
        let exit_rx = self.shared.reaper.register(pid);
        if let Some(console) = prepared.console {
            let attached = match console.receive().await {
                Ok(master) => io.attach_console(master),
                Err(e) => Err(e),
            };
            if let Err(e) = attached {
                io.shutdown().await;
                let _ = runtime.delete(&id).await;
                undo_mounts(mounted);
                return Err(e);
            }
        }
        let mut init = Process::new("", stdio);
        init.pid = pid;
        init.io = Some(io);
        let cgroup = ContainerCgroup::of_pid(pid)
            .map_err(|e| log::warn!("task {id:?}: no cgroup for metrics: {e}"))
            .ok();
        containers.insert(
            id.clone(),
            Container {
                id: id.clone(),
                bundle: bundle.clone(),
                runtime,
                init,
                execs: HashMap::new(),
                paused: false,
                shared_pid_ns: !has_own_pid_ns(&spec),
                rootfs_mounted: mounted,
                cgroup,
                oom_watch: None,
            },
        );
        drop(containers);
        self.watch_exit(&id, "", pid, exit_rx);
        self.publish(
            "/tasks/create",
            TaskCreate {
                container_id: id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                checkpoint: req.checkpoint.clone(),
                pid: pid as u32,
                ..Default::default()
            },
        );
        Ok(pid)
    }

    async fn start_process(&self, id: &str, exec_id: &str) -> Result<i32, Error> {
        let mut containers = self.shared.containers.lock().await;
        let c = containers
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(format!("task {id:?} not found")))?;
        if exec_id.is_empty() {
            if c.init.state != ProcessState::Created {
                return Err(Error::FailedPrecondition(format!(
                    "cannot start task {id:?}: it is {}",
                    crate::container::state_name(c.init.state)
                )));
            }
            c.runtime.start(id).await?;
            if c.init.state == ProcessState::Created {
                c.init.state = ProcessState::Running;
            }
            let pid = c.init.pid;
            if let Some((dir, v2)) = cgroup::memory_cgroup_dir(pid) {
                let events = self.shared.events.clone();
                let cid = id.to_owned();
                c.oom_watch = Some(tokio::spawn(cgroup::watch_oom(dir, v2, move || {
                    events.publish(
                        "/tasks/oom",
                        &TaskOOM {
                            container_id: cid.clone(),
                            ..Default::default()
                        },
                    );
                })));
            }
            drop(containers);
            self.publish(
                "/tasks/start",
                TaskStart {
                    container_id: id.to_owned(),
                    pid: pid as u32,
                    ..Default::default()
                },
            );
            return Ok(pid);
        }
        c.check_running(&format!("start exec {exec_id:?}"))?;
        let process = c.process(exec_id)?;
        if process.state != ProcessState::Created {
            return Err(Error::FailedPrecondition(format!(
                "cannot start {}: it is {}",
                process.describe(id),
                crate::container::state_name(process.state)
            )));
        }
        let stdio = process.stdio.clone();
        let spec = process.spec.clone();
        let prepared =
            ProcessIo::prepare(&stdio, &self.shared.namespace, id, &self.shared.reaper).await?;
        let mut io = prepared.io;
        let console_path = prepared.console.as_ref().map(|c| c.path().to_path_buf());
        let started = c
            .runtime
            .exec(
                id,
                exec_id,
                &c.bundle,
                &spec,
                console_path.as_deref(),
                prepared.invocation,
            )
            .await;
        let pid = match started {
            Ok(pid) => pid,
            Err(e) => {
                io.shutdown().await;
                return Err(e);
            }
        };
        let exit_rx = self.shared.reaper.register(pid);
        if let Some(console) = prepared.console {
            let attached = match console.receive().await {
                Ok(master) => io.attach_console(master),
                Err(e) => Err(e),
            };
            if let Err(e) = attached {
                // As for an init: a process without the terminal it asked for is not left
                // running unreachable.
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
                io.shutdown().await;
                return Err(e);
            }
        }
        let process = c.process_mut(exec_id)?;
        process.pid = pid;
        process.state = ProcessState::Running;
        process.io = Some(io);
        drop(containers);
        self.watch_exit(id, exec_id, pid, exit_rx);
        self.publish(
            "/tasks/exec-started",
            TaskExecStarted {
                container_id: id.to_owned(),
                exec_id: exec_id.to_owned(),
                pid: pid as u32,
                ..Default::default()
            },
        );
        Ok(pid)
    }

    async fn delete_process(&self, id: &str, exec_id: &str) -> Result<api::DeleteResponse, Error> {
        let mut containers = self.shared.containers.lock().await;
        let c = containers
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(format!("task {id:?} not found")))?;
        if !exec_id.is_empty() {
            let process = c.process(exec_id)?;
            if process.state == ProcessState::Running {
                return Err(Error::FailedPrecondition(format!(
                    "cannot delete {}: it is running",
                    process.describe(id)
                )));
            }
            let mut process = c.execs.remove(exec_id).expect("looked up above");
            drop(containers);
            if let Some(io) = process.io.as_mut() {
                io.shutdown().await;
            }
            return Ok(delete_response(&process));
        }
        if c.init.state == ProcessState::Running {
            return Err(Error::FailedPrecondition(format!(
                "cannot delete task {id:?}: it is running"
            )));
        }
        let mut c = containers.remove(id).expect("looked up above");
        drop(containers);
        // A created init is still alive, waiting for start: the forced delete kills it.
        if c.init.state == ProcessState::Stopped {
            c.runtime.delete_exited(id).await?;
        } else {
            c.runtime.delete(id).await?;
        }
        if let Some(w) = c.oom_watch.take() {
            w.abort();
        }
        for (_, mut exec) in c.execs.drain() {
            if let Some(io) = exec.io.as_mut() {
                io.shutdown().await;
            }
        }
        if let Some(io) = c.init.io.as_mut() {
            io.shutdown().await;
        }
        if c.rootfs_mounted {
            let rootfs = c.bundle.join("rootfs");
            if let Err(e) =
                containerd_shim::mount::umount_recursive(rootfs.to_str(), libc::MNT_DETACH)
            {
                log::warn!("unmount {}: {e}", rootfs.display());
            }
        }
        let response = delete_response(&c.init);
        self.publish(
            "/tasks/delete",
            TaskDelete {
                container_id: id.to_owned(),
                pid: response.pid,
                exit_status: response.exit_status,
                exited_at: response.exited_at.clone(),
                id: id.to_owned(),
                ..Default::default()
            },
        );
        Ok(response)
    }

    async fn with_container<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Container) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut containers = self.shared.containers.lock().await;
        let c = containers
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(format!("task {id:?} not found")))?;
        f(c)
    }

    async fn kill_process(&self, req: &api::KillRequest) -> Result<(), Error> {
        let containers = self.shared.containers.lock().await;
        let c = containers
            .get(&req.id)
            .ok_or_else(|| Error::NotFound(format!("task {:?} not found", req.id)))?;
        let process = c.process(&req.exec_id)?;
        if req.exec_id.is_empty() && req.all {
            return c.runtime.kill_all(&req.id, req.signal).await;
        }
        if process.state == ProcessState::Stopped || process.pid <= 0 {
            return Err(Error::NotFound(format!(
                "{}: process already finished",
                process.describe(&req.id)
            )));
        }
        let signal =
            rustix::process::Signal::from_named_raw(req.signal as i32).ok_or_else(|| {
                Error::InvalidArgument(format!("signal {} is not a signal", req.signal))
            })?;
        let pid = rustix::process::Pid::from_raw(process.pid).expect("positive pid");
        match rustix::process::kill_process(pid, signal) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::SRCH) => Err(Error::NotFound(format!(
                "{}: process already finished",
                process.describe(&req.id)
            ))),
            Err(e) => Err(Error::Other(format!(
                "signal {} to {}: {e}",
                req.signal,
                process.describe(&req.id)
            ))),
        }
    }
}

/// Runs a call's work on a task of its own. ttrpc drops a handler whose client went away
/// or whose deadline passed; the work then still finishes, so a container is either not
/// made (everything undone) or made and recorded, never half of it.
async fn to_the_end<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(work)
        .await
        .map_err(|e| Error::Other(format!("the call's work failed: {e}")))?
}

fn delete_response(p: &Process) -> api::DeleteResponse {
    let exit = p.exit();
    api::DeleteResponse {
        pid: p.pid.max(0) as u32,
        exit_status: exit.map(|e| e.code as u32).unwrap_or(0),
        exited_at: MessageField::some(timestamp(
            exit.map(|e| e.at)
                .unwrap_or_else(std::time::SystemTime::now),
        )),
        ..Default::default()
    }
}

/// The runtime options from containerd's Any (`containerd.runc.v1.Options`, or the older
/// `runctypes`): an empty or unknown Any means the defaults.
fn runtime_options(
    any: Option<&containerd_shim_protos::protobuf::well_known_types::any::Any>,
) -> Result<RuntimeOptions, Error> {
    let Some(any) = any.filter(|a| !a.value.is_empty()) else {
        return Ok(RuntimeOptions::default());
    };
    if any.type_url.ends_with("runtimeoptions.v1.Options") {
        return config_options(&any.value);
    }
    if !any.type_url.ends_with("containerd.runc.v1.Options") {
        log::info!("runtime options of type {:?} are not read", any.type_url);
        return Ok(RuntimeOptions::default());
    }
    let options = Options::parse_from_bytes(&any.value)
        .map_err(|e| Error::InvalidArgument(format!("runtime options: {e}")))?;
    Ok(RuntimeOptions {
        binary_name: options.binary_name,
        root: options.root,
        systemd_cgroup: options.systemd_cgroup,
    })
}

/// The options of a runtime that is not runc's as CRI and `ctr --runtime-config-path` pass
/// them (`runtimeoptions.v1.Options`: a TOML file's path or the TOML itself), read for the
/// same keys as runc's options: `BinaryName`, `Root`, `SystemdCgroup`.
fn config_options(value: &[u8]) -> Result<RuntimeOptions, Error> {
    use containerd_shim_protos::protobuf::CodedInputStream;
    let mut input = CodedInputStream::from_bytes(value);
    let (mut path, mut body) = (String::new(), String::new());
    let bad = |e: containerd_shim_protos::protobuf::Error| {
        Error::InvalidArgument(format!("runtime options (runtimeoptions.v1.Options): {e}"))
    };
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(bad)? {
        match tag >> 3 {
            2 => path = input.read_string().map_err(bad)?,
            3 => body = input.read_string().map_err(bad)?,
            _ => input
                .skip_field(
                    containerd_shim_protos::protobuf::rt::WireType::new(tag & 7).ok_or_else(
                        || Error::InvalidArgument(format!("runtime options: bad tag {tag}")),
                    )?,
                )
                .map_err(bad)?,
        }
    }
    if body.is_empty() && !path.is_empty() {
        body = std::fs::read_to_string(&path)
            .map_err(|e| Error::InvalidArgument(format!("runtime config file {path}: {e}")))?;
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(default, rename_all = "PascalCase")]
    struct Config {
        binary_name: String,
        root: String,
        systemd_cgroup: bool,
    }
    let config: Config = toml::from_str(&body).map_err(|e| {
        let source = if path.is_empty() {
            "runtime options".to_owned()
        } else {
            path.clone()
        };
        Error::InvalidArgument(format!("{source} is not TOML runtime options: {e}"))
    })?;
    Ok(RuntimeOptions {
        binary_name: config.binary_name,
        root: config.root,
        systemd_cgroup: config.systemd_cgroup,
    })
}

#[async_trait]
impl Task for TaskService {
    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TResult<api::StateResponse> {
        Ok(self
            .with_container(&req.id, |c| {
                let p = c.process(&req.exec_id)?;
                let exit = p.exit();
                Ok(api::StateResponse {
                    id: if req.exec_id.is_empty() {
                        c.id.clone()
                    } else {
                        req.exec_id.clone()
                    },
                    bundle: c.bundle.display().to_string(),
                    pid: p.pid.max(0) as u32,
                    status: p.status(c.paused).into(),
                    stdin: p.stdio.stdin.clone(),
                    stdout: p.stdio.stdout.clone(),
                    stderr: p.stdio.stderr.clone(),
                    terminal: p.stdio.terminal,
                    exit_status: exit.map(|e| e.code as u32).unwrap_or(0),
                    exited_at: match exit {
                        Some(e) => MessageField::some(timestamp(e.at)),
                        None => MessageField::none(),
                    },
                    exec_id: req.exec_id.clone(),
                    ..Default::default()
                })
            })
            .await?)
    }

    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TResult<api::CreateTaskResponse> {
        let this = self.clone();
        let pid = to_the_end(async move { this.create_container(&req).await }).await;
        self.shared.quiet.after_call();
        let pid = pid?;
        Ok(api::CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TResult<api::StartResponse> {
        let this = self.clone();
        let pid = to_the_end(async move { this.start_process(&req.id, &req.exec_id).await }).await;
        self.shared.quiet.after_call();
        let pid = pid?;
        Ok(api::StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TResult<api::DeleteResponse> {
        let this = self.clone();
        let deleted =
            to_the_end(async move { this.delete_process(&req.id, &req.exec_id).await }).await;
        self.shared.quiet.after_call();
        Ok(deleted?)
    }
    async fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TResult<api::PidsResponse> {
        Ok(self
            .with_container(&req.id, |c| {
                let execs: HashMap<u32, String> = c
                    .execs
                    .values()
                    .filter(|p| p.pid > 0)
                    .map(|p| (p.pid as u32, p.exec_id.clone()))
                    .collect();
                let mut pids = c.cgroup.as_ref().map(|g| g.pids()).unwrap_or_default();
                if pids.is_empty() && c.init.pid > 0 && c.init.state != ProcessState::Stopped {
                    pids.push(c.init.pid as u32);
                }
                let processes = pids
                    .into_iter()
                    .map(|pid| {
                        let mut info = containerd_shim_protos::api::ProcessInfo {
                            pid,
                            ..Default::default()
                        };
                        if let Some(exec_id) = execs.get(&pid) {
                            let details = containerd_shim_protos::shim::oci::ProcessDetails {
                                exec_id: exec_id.clone(),
                                ..Default::default()
                            };
                            info.info = MessageField::some(crate::events::any(
                                "containerd.runc.v1",
                                &details,
                            ));
                        }
                        info
                    })
                    .collect();
                Ok(api::PidsResponse {
                    processes,
                    ..Default::default()
                })
            })
            .await?)
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TResult<Empty> {
        let mut containers = self.shared.containers.lock().await;
        let c = containers
            .get_mut(&req.id)
            .ok_or_else(|| Error::NotFound(format!("task {:?} not found", req.id)))?;
        c.check_running("pause")?;
        c.runtime.pause(&req.id).await?;
        c.paused = true;
        drop(containers);
        self.publish(
            "/tasks/paused",
            TaskPaused {
                container_id: req.id.clone(),
                ..Default::default()
            },
        );
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TResult<Empty> {
        let mut containers = self.shared.containers.lock().await;
        let c = containers
            .get_mut(&req.id)
            .ok_or_else(|| Error::NotFound(format!("task {:?} not found", req.id)))?;
        if !c.paused {
            return Err(Error::FailedPrecondition(format!(
                "cannot resume task {:?}: it is not paused",
                req.id
            ))
            .into());
        }
        c.runtime.resume(&req.id).await?;
        c.paused = false;
        drop(containers);
        self.publish(
            "/tasks/resumed",
            TaskResumed {
                container_id: req.id.clone(),
                ..Default::default()
            },
        );
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> TResult<Empty> {
        Err(Error::Unimplemented(format!(
            "checkpoint of task {:?}: the berth shim does not checkpoint containers",
            req.id
        ))
        .into())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TResult<Empty> {
        self.kill_process(&req).await?;
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TResult<Empty> {
        if req.exec_id.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "exec into task {:?}: empty exec id",
                req.id
            ))
            .into());
        }
        let spec = req
            .spec
            .as_ref()
            .map(|s| s.value.clone())
            .unwrap_or_default();
        if serde_json::from_slice::<oci_spec_shim::runtime::Process>(&spec).is_err() {
            return Err(Error::InvalidArgument(format!(
                "exec {:?} into task {:?}: the spec is not an OCI process",
                req.exec_id, req.id
            ))
            .into());
        }
        // The process is made at its Start, which follows at once.
        self.warm_cgroups();
        self.with_container(&req.id, |c| {
            if c.execs.contains_key(&req.exec_id) {
                return Err(Error::AlreadyExists(format!(
                    "exec {:?} of task {:?} already exists",
                    req.exec_id, req.id
                )));
            }
            c.check_running(&format!("exec {:?}", req.exec_id))?;
            let mut p = Process::new(
                &req.exec_id,
                Stdio::new(&req.stdin, &req.stdout, &req.stderr, req.terminal),
            );
            p.spec = spec;
            c.execs.insert(req.exec_id.clone(), p);
            Ok(())
        })
        .await?;
        self.publish(
            "/tasks/exec-added",
            TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
        );
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TResult<Empty> {
        self.with_container(&req.id, |c| {
            let p = c.process(&req.exec_id)?;
            match &p.io {
                Some(io) => io.resize(req.width, req.height),
                None => Err(Error::FailedPrecondition(format!(
                    "resize {}: it has not started",
                    p.describe(&req.id)
                ))),
            }
        })
        .await?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TResult<Empty> {
        self.with_container(&req.id, |c| {
            let p = c.process(&req.exec_id)?;
            if req.stdin {
                if let Some(io) = &p.io {
                    io.close_stdin();
                }
            }
            Ok(())
        })
        .await?;
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TResult<Empty> {
        let resources = req
            .resources
            .as_ref()
            .map(|r| r.value.clone())
            .unwrap_or_default();
        self.with_container(&req.id, |c| {
            if c.init.state == ProcessState::Stopped {
                return Err(Error::FailedPrecondition(format!(
                    "cannot update task {:?}: it is stopped",
                    req.id
                )));
            }
            match &c.cgroup {
                Some(g) => g.update(&resources),
                None => Err(Error::FailedPrecondition(format!(
                    "cannot update task {:?}: it has no cgroup",
                    req.id
                ))),
            }
        })
        .await?;
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TResult<api::WaitResponse> {
        let mut rx = self
            .with_container(&req.id, |c| Ok(c.process(&req.exec_id)?.watch_exit()))
            .await?;
        let exit = loop {
            if let Some(exit) = *rx.borrow_and_update() {
                break exit;
            }
            if rx.changed().await.is_err() {
                return Err(Error::NotFound(format!(
                    "task {:?} was deleted while waited for",
                    req.id
                ))
                .into());
            }
        };
        Ok(api::WaitResponse {
            exit_status: exit.code as u32,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TResult<api::StatsResponse> {
        let stats = self
            .with_container(&req.id, |c| match &c.cgroup {
                Some(g) => g.metrics(),
                None => Err(Error::NotFound(format!("task {:?} has no cgroup", req.id))),
            })
            .await?;
        Ok(api::StatsResponse {
            stats: MessageField::some(stats),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TResult<api::ConnectResponse> {
        let task_pid = {
            let containers = self.shared.containers.lock().await;
            containers
                .get(&req.id)
                .map(|c| c.init.pid.max(0) as u32)
                .unwrap_or(0)
        };
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TResult<Empty> {
        if self.shared.containers.lock().await.is_empty() {
            self.shared.exit.notify_one();
        }
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::well_known_types::any::Any;

    #[tokio::test]
    async fn a_call_dropped_midway_still_finishes_its_work() {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        let call = to_the_end(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, Error>(())
        });
        // The client's deadline passes first: ttrpc drops the handler.
        let r = tokio::time::timeout(std::time::Duration::from_millis(5), call).await;
        assert!(r.is_err());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(done.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn runtime_options_from_the_any() {
        assert_eq!(runtime_options(None).unwrap(), RuntimeOptions::default());
        let options = Options {
            binary_name: "/usr/bin/crun".into(),
            root: "/run/crun".into(),
            systemd_cgroup: false,
            ..Default::default()
        };
        let any = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: options.write_to_bytes().unwrap(),
            ..Default::default()
        };
        let parsed = runtime_options(Some(&any)).unwrap();
        assert_eq!(parsed.binary_name, "/usr/bin/crun");
        assert_eq!(parsed.root, "/run/crun");
        let bad = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![0xff, 0xff, 0xff],
            ..Default::default()
        };
        assert!(runtime_options(Some(&bad)).is_err());
    }

    /// `runtimeoptions.v1.Options` with field 2 (config_path) or 3 (config_body).
    fn runtimeoptions(field: u32, text: &str) -> Any {
        let mut value = vec![(field << 3 | 2) as u8, text.len() as u8];
        value.extend_from_slice(text.as_bytes());
        Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn runtime_options_from_a_config_file_or_body() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berth.toml");
        std::fs::write(&file, "BinaryName = \"crun\"\nOther = 1\n").unwrap();
        let parsed = runtime_options(Some(&runtimeoptions(2, file.to_str().unwrap()))).unwrap();
        assert_eq!(parsed.binary_name, "crun");
        let parsed = runtime_options(Some(&runtimeoptions(
            3,
            "Root = \"/run/r\"\nSystemdCgroup = true",
        )))
        .unwrap();
        assert_eq!(
            (parsed.root.as_str(), parsed.systemd_cgroup),
            ("/run/r", true)
        );
        let e = runtime_options(Some(&runtimeoptions(2, "/nonexistent/berth.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/berth.toml"), "{e}");
        let e = runtime_options(Some(&runtimeoptions(3, "BinaryName = "))).unwrap_err();
        assert!(e.to_string().contains("TOML"), "{e}");
    }
}
