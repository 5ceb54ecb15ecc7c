//! The book of tasks: creating a task (bundle, shim start, ttrpc Create) and undoing every
//! step when one fails, deleting it, noticing a shim that dies (its pidfd becomes readable)
//! and cleaning up after it, and recovering the shims that outlived a previous berthd.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_core::containers::AnyValue;
use berth_core::metadata::Timestamp;
use berth_core::mount::Mount;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::Message;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::bundle::Bundle;
use crate::error::{Error, Result};
use crate::shim::{resolve_binary, Bootstrap, ShimClient};
use crate::task::{time_to_wire, Exit, ProcessState, Stdio, TaskStatus};

/// Where task events berth itself raises go (the daemon's event bus).
pub trait EventSink: Send + Sync {
    fn publish(&self, namespace: &str, topic: &str, event: AnyValue);
}

/// Everything needed to create a task.
#[derive(Debug, Clone, Default)]
pub struct CreateTask {
    pub namespace: String,
    pub id: String,
    /// Runtime name such as `io.containerd.runc.v2`, or an absolute shim path.
    pub runtime: String,
    /// A shim binary the client asked for explicitly, overriding the runtime name.
    pub runtime_path: Option<PathBuf>,
    pub runtime_options: Option<AnyValue>,
    pub task_options: Option<AnyValue>,
    /// The OCI runtime spec, JSON.
    pub spec: Vec<u8>,
    pub rootfs: Vec<Mount>,
    pub stdio: Stdio,
}

#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub state: PathBuf,
    pub daemon_address: PathBuf,
    pub ttrpc_address: PathBuf,
    pub publish_binary: PathBuf,
    /// Runtime name → shim binary, from berthd's configuration.
    pub runtimes: HashMap<String, PathBuf>,
    pub debug: bool,
}

/// A task: its bundle and the shim that owns it. Once the shim is gone, `dead` holds how the
/// task ended and the task stays listed as stopped until it is deleted.
pub struct Task {
    pub namespace: String,
    pub id: String,
    pub bundle: Bundle,
    pub pid: u32,
    shim: Option<ShimClient>,
    shim_pid: u32,
    bootstrap: Bootstrap,
    dead: watch::Sender<Option<Exit>>,
    closing: AtomicBool,
    log: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(h) = self.log.lock().unwrap_or_else(|e| e.into_inner()).take() {
            h.abort();
        }
    }
}

impl Task {
    /// How the task ended, if its shim is gone.
    pub fn dead_exit(&self) -> Option<Exit> {
        *self.dead.borrow()
    }

    /// The shim, for calls that need a live one.
    pub fn shim(&self) -> Result<&ShimClient> {
        match (&self.shim, self.dead_exit()) {
            (Some(s), None) => Ok(s),
            _ => Err(Error::precondition(format!(
                "task {:?} is stopped: its shim has exited",
                self.id
            ))),
        }
    }

    pub async fn state(&self, exec_id: &str) -> Result<ProcessState> {
        if let Some(exit) = self.dead_exit() {
            if !exec_id.is_empty() {
                return Err(Error::not_found(format!(
                    "process {exec_id:?} of task {:?}",
                    self.id
                )));
            }
            return Ok(ProcessState {
                container_id: self.id.clone(),
                exec_id: String::new(),
                pid: self.pid,
                status: TaskStatus::Stopped,
                stdio: Stdio::default(),
                exit_status: exit.status,
                exited_at: Some(exit.at),
            });
        }
        self.shim()?.state(exec_id).await
    }

    /// Waits for a process to exit. For the init process, a shim that dies meanwhile
    /// ends the wait with the exit its cleanup reported.
    pub async fn wait(&self, exec_id: &str) -> Result<Exit> {
        if exec_id.is_empty() {
            if let Some(e) = self.dead_exit() {
                return Ok(e);
            }
        }
        let shim = self.shim()?.clone();
        let mut dead = self.dead.subscribe();
        let died = async move {
            loop {
                if let Some(e) = *dead.borrow_and_update() {
                    return e;
                }
                if dead.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            r = shim.wait(exec_id) => match r {
                Err(Error::ShimUnavailable { .. }) if exec_id.is_empty() => {
                    // The shim went away: its cleanup reports the exit shortly.
                    let mut dead = self.dead.subscribe();
                    let e = tokio::time::timeout(Duration::from_secs(40), dead.wait_for(Option::is_some))
                        .await
                        .map_err(|_| Error::ShimUnavailable { id: self.id.clone(), reason: "shim died and its cleanup did not finish".into() })?
                        .map_err(|_| Error::ShimUnavailable { id: self.id.clone(), reason: "task was removed".into() })?;
                    Ok(e.expect("waited for some"))
                }
                r => r,
            },
            e = died, if exec_id.is_empty() => Ok(e),
        }
    }
}

pub struct ShimManager {
    cfg: ManagerConfig,
    tasks: Mutex<HashMap<(String, String), Arc<Task>>>,
    creating: Mutex<HashSet<(String, String)>>,
    events: Arc<dyn EventSink>,
}

/// Frees a create reservation however the create ends.
struct Reservation<'a> {
    m: &'a ShimManager,
    key: (String, String),
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(&self.m.creating).remove(&self.key);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ShimManager {
    pub fn new(cfg: ManagerConfig, events: Arc<dyn EventSink>) -> Arc<Self> {
        Arc::new(ShimManager {
            cfg,
            tasks: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
            events,
        })
    }

    fn bootstrap(&self, binary: PathBuf) -> Bootstrap {
        Bootstrap {
            binary,
            daemon_address: self.cfg.daemon_address.clone(),
            ttrpc_address: self.cfg.ttrpc_address.clone(),
            publish_binary: self.cfg.publish_binary.clone(),
            debug: self.cfg.debug,
        }
    }

    fn reserve(&self, ns: &str, id: &str) -> Result<Reservation<'_>> {
        let key = (ns.to_owned(), id.to_owned());
        let exists = || {
            Error::Core(berth_core::Error::AlreadyExists(format!(
                "task {id:?} in namespace {ns:?}"
            )))
        };
        if lock(&self.tasks).contains_key(&key) {
            return Err(exists());
        }
        if !lock(&self.creating).insert(key.clone()) {
            return Err(exists());
        }
        Ok(Reservation { m: self, key })
    }

    pub fn get(&self, ns: &str, id: &str) -> Result<Arc<Task>> {
        lock(&self.tasks)
            .get(&(ns.to_owned(), id.to_owned()))
            .cloned()
            .ok_or_else(|| Error::not_found(format!("task {id:?} in namespace {ns:?}")))
    }

    pub fn list(&self, ns: &str) -> Vec<Arc<Task>> {
        let mut v: Vec<_> = lock(&self.tasks)
            .values()
            .filter(|t| t.namespace == ns)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Creates a task: bundle, shim, ttrpc Create. Any failure undoes what was done, so no
    /// bundle, mount or shim is left behind, and the shim's own message is returned.
    pub async fn create(self: &Arc<Self>, req: CreateTask) -> Result<Arc<Task>> {
        let _r = self.reserve(&req.namespace, &req.id)?;
        let binary = match &req.runtime_path {
            Some(p) => resolve_binary(&p.to_string_lossy(), &HashMap::new())?,
            None => resolve_binary(&req.runtime, &self.cfg.runtimes)?,
        };
        let (state, ns, id, spec) = (
            self.cfg.state.clone(),
            req.namespace.clone(),
            req.id.clone(),
            req.spec.clone(),
        );
        let b2 = binary.clone();
        let bundle =
            tokio::task::spawn_blocking(move || Bundle::create(&state, &ns, &id, &spec, &b2))
                .await
                .expect("bundle writer panicked")?;
        let bootstrap = self.bootstrap(binary);
        let log = spawn_log_reader(&bundle);
        let options = req.task_options.as_ref().or(req.runtime_options.as_ref());
        let undo = |shim: Option<ShimClient>| {
            let (bootstrap, bundle) = (bootstrap.clone(), bundle.clone());
            async move {
                if let Some(s) = shim {
                    let _ = s.shutdown().await;
                }
                if let Err(e) = bootstrap.delete(&bundle).await {
                    tracing::debug!(task = %bundle.id, "shim cleanup after failed create: {e}");
                }
                if let Err(e) = bundle.remove() {
                    tracing::warn!(task = %bundle.id, "remove bundle after failed create: {e}");
                }
            }
        };
        let address = match bootstrap.start(&bundle, options).await {
            Ok(a) => a,
            Err(e) => {
                log.abort();
                if let Err(e) = bundle.remove() {
                    tracing::warn!(task = %bundle.id, "remove bundle after failed start: {e}");
                }
                return Err(e);
            }
        };
        let shim = match ShimClient::connect(&address, &req.namespace, &req.id).await {
            Ok(s) => s,
            Err(e) => {
                undo(None).await;
                log.abort();
                return Err(e);
            }
        };
        let pid = match shim.create(&bundle, &req.rootfs, &req.stdio, options).await {
            Ok(pid) => pid,
            Err(e) => {
                undo(Some(shim)).await;
                log.abort();
                return Err(e);
            }
        };
        let shim_pid = match shim.connect_info().await {
            Ok((shim_pid, _)) => shim_pid,
            Err(_) => bundle.shim_pid().map_or(0, |p| p as u32),
        };
        bundle.record_shim_pid(shim_pid);
        let task = Arc::new(Task {
            namespace: req.namespace.clone(),
            id: req.id.clone(),
            bundle,
            pid,
            shim: Some(shim),
            shim_pid,
            bootstrap,
            dead: watch::channel(None).0,
            closing: AtomicBool::new(false),
            log: Mutex::new(Some(log)),
        });
        lock(&self.tasks).insert((req.namespace, req.id), task.clone());
        self.watch(task.clone());
        Ok(task)
    }

    /// Deletes a task: the shim deletes the init process (refusing a running one), then it is
    /// shut down and the bundle removed. A task whose shim died is simply forgotten.
    pub async fn delete(&self, ns: &str, id: &str) -> Result<Exit> {
        let task = self.get(ns, id)?;
        if let Some(exit) = task.dead_exit() {
            self.forget(&task);
            let _ = task.bundle.remove();
            self.publish_delete(&task, exit);
            return Ok(exit);
        }
        let shim = task.shim()?.clone();
        let exit = shim.delete("").await?;
        task.closing.store(true, Ordering::SeqCst);
        shim.shutdown().await?;
        if let Some(fd) = pidfd(task.shim_pid) {
            let _ = tokio::time::timeout(Duration::from_secs(5), wait_readable(fd)).await;
        }
        self.forget(&task);
        if let Err(e) = task.bundle.remove() {
            tracing::warn!(task = %id, "remove bundle: {e}");
        }
        Ok(exit)
    }

    fn forget(&self, task: &Task) {
        lock(&self.tasks).remove(&(task.namespace.clone(), task.id.clone()));
        if let Some(h) = lock(&task.log).take() {
            h.abort();
        }
    }

    /// Watches the shim's pidfd; when the shim exits while its task is still ours, cleans up.
    fn watch(self: &Arc<Self>, task: Arc<Task>) {
        let Some(fd) = pidfd(task.shim_pid) else {
            tracing::warn!(task = %task.id, shim_pid = task.shim_pid, "cannot watch shim");
            return;
        };
        let m = Arc::downgrade(self);
        tokio::spawn(async move {
            wait_readable(fd).await;
            if task.closing.load(Ordering::SeqCst) {
                return;
            }
            if let Some(m) = m.upgrade() {
                m.on_shim_death(&task).await;
            }
        });
    }

    async fn on_shim_death(&self, task: &Task) {
        tracing::warn!(task = %task.id, ns = %task.namespace, shim_pid = task.shim_pid, "shim died; cleaning up");
        let exit = self
            .cleanup_dead(&task.bootstrap, &task.bundle, task.pid)
            .await;
        task.dead.send_replace(Some(exit));
        if let Some(h) = lock(&task.log).take() {
            h.abort();
        }
        self.publish_exit(&task.namespace, &task.id, exit);
    }

    /// The shim's `delete` subcommand (kills what is left, unmounts the rootfs), then the
    /// bundle goes. Returns the exit to report.
    async fn cleanup_dead(&self, bootstrap: &Bootstrap, bundle: &Bundle, pid: u32) -> Exit {
        let exit = match bootstrap.delete(bundle).await {
            Ok(e) => Exit {
                pid: if e.pid == 0 { pid } else { e.pid },
                ..e
            },
            Err(e) => {
                tracing::warn!(task = %bundle.id, "shim delete: {e}");
                Exit {
                    pid,
                    status: 255,
                    at: Timestamp::now(),
                }
            }
        };
        if let Err(e) = bundle.remove() {
            tracing::warn!(task = %bundle.id, "remove bundle of dead shim: {e}");
        }
        exit
    }

    fn publish_exit(&self, ns: &str, id: &str, exit: Exit) {
        let e = ev::TaskExit {
            container_id: id.to_owned(),
            id: id.to_owned(),
            pid: exit.pid,
            exit_status: exit.status,
            exited_at: time_to_wire(exit.at),
            ..Default::default()
        };
        self.events.publish(
            ns,
            "/tasks/exit",
            AnyValue {
                type_url: "containerd.events.TaskExit".into(),
                value: e.write_to_bytes().unwrap_or_default(),
            },
        );
    }

    fn publish_delete(&self, task: &Task, exit: Exit) {
        let e = ev::TaskDelete {
            container_id: task.id.clone(),
            pid: exit.pid,
            exit_status: exit.status,
            exited_at: time_to_wire(exit.at),
            ..Default::default()
        };
        self.events.publish(
            &task.namespace,
            "/tasks/delete",
            AnyValue {
                type_url: "containerd.events.TaskDelete".into(),
                value: e.write_to_bytes().unwrap_or_default(),
            },
        );
    }

    /// Finds the shims a previous berthd left: live ones are reconnected and watched again,
    /// dead ones are cleaned up with their `delete` subcommand and listed as stopped.
    pub async fn recover(self: &Arc<Self>) {
        let state = self.cfg.state.clone();
        let bundles = tokio::task::spawn_blocking(move || Bundle::list(&state))
            .await
            .unwrap_or_default();
        for bundle in bundles {
            let Some(binary) = bundle.shim_binary() else {
                tracing::warn!(bundle = %bundle.path.display(), "bundle without a shim record; removing");
                let _ = bundle.remove();
                continue;
            };
            let bootstrap = self.bootstrap(binary);
            let live = match bundle.shim_address() {
                Some(a) => match ShimClient::connect(&a, &bundle.namespace, &bundle.id).await {
                    Ok(c) => c.connect_info().await.map(|(s, t)| (c, s, t)),
                    Err(e) => Err(e),
                },
                None => Err(Error::ShimUnavailable {
                    id: bundle.id.clone(),
                    reason: "no address recorded".into(),
                }),
            };
            let key = (bundle.namespace.clone(), bundle.id.clone());
            match live {
                Ok((client, shim_pid, task_pid)) => {
                    tracing::info!(task = %bundle.id, ns = %bundle.namespace, shim_pid, "reconnected to shim");
                    bundle.record_shim_pid(shim_pid);
                    let log = spawn_log_reader(&bundle);
                    let task = Arc::new(Task {
                        namespace: bundle.namespace.clone(),
                        id: bundle.id.clone(),
                        bundle,
                        pid: task_pid,
                        shim: Some(client),
                        shim_pid,
                        bootstrap,
                        dead: watch::channel(None).0,
                        closing: AtomicBool::new(false),
                        log: Mutex::new(Some(log)),
                    });
                    lock(&self.tasks).insert(key, task.clone());
                    self.watch(task);
                }
                Err(e) => {
                    tracing::warn!(task = %bundle.id, ns = %bundle.namespace, "shim is gone ({e}); cleaning up");
                    let exit = self.cleanup_dead(&bootstrap, &bundle, 0).await;
                    self.publish_exit(&bundle.namespace, &bundle.id, exit);
                    let task = Arc::new(Task {
                        namespace: bundle.namespace.clone(),
                        id: bundle.id.clone(),
                        pid: exit.pid,
                        bundle,
                        shim: None,
                        shim_pid: 0,
                        bootstrap,
                        dead: watch::channel(Some(exit)).0,
                        closing: AtomicBool::new(false),
                        log: Mutex::new(None),
                    });
                    lock(&self.tasks).insert(key, task);
                }
            }
        }
    }
}

fn pidfd(pid: u32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK).ok()
}

/// Resolves when the process behind the pidfd has exited.
async fn wait_readable(fd: OwnedFd) {
    // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it until dropped, so the
    // descriptor stays open and the same for the registration's whole life.
    match unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
        Ok(a) => {
            let _ = a.readable().await;
        }
        Err(e) => {
            tracing::warn!("watch pidfd: {e}");
            std::future::pending::<()>().await;
        }
    }
}

/// Copies what the shim writes to its `log` fifo into berthd's log. The fifo is opened
/// read-write so the shim never sees a closed reader; the reader is aborted with the task.
fn spawn_log_reader(bundle: &Bundle) -> tokio::task::JoinHandle<()> {
    let path = bundle.log_fifo();
    let id = bundle.id.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let rx = match tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&path)
        {
            Ok(rx) => rx,
            Err(e) => {
                tracing::debug!(task = %id, "shim log {}: {e}", path.display());
                return;
            }
        };
        let mut lines = tokio::io::BufReader::new(rx).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            tracing::debug!(target: "shim", task = %id, "{l}");
        }
    })
}
