//! The book of tasks: creating a task (bundle, shim start, ttrpc Create) and undoing every
//! step when one fails, deleting it, noticing a shim that dies and cleaning up after it,
//! and recovering the shims that outlived a previous berthd.
//!
//! Creation runs to its end on its own tokio task, whatever happens to the request that
//! asked for it: a client that gives up (the kubelet times out and retries as a matter of
//! course) leaves a task nobody waits for, which is then removed again, and a retry of the
//! same task waits for that removal instead of tripping over half of it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_core::containers::AnyValue;
use berth_core::events::{Event, EventBus};
use berth_core::metadata::Timestamp;
use berth_core::mount::Mount;
use tokio::sync::{oneshot, watch};

use crate::bundle::Bundle;
use crate::client::{ShimLauncher, TaskClient};
use crate::error::{Error, Result};
use crate::shim::{resolve_binary, Bootstrap};
use crate::task::{Exit, ProcessState, Stdio, TaskKey, TaskStatus};
use crate::warm::CgroupWarmer;

/// How long a create waits for another create of the same task to finish.
const CREATE_WAIT: Duration = Duration::from_secs(60);

/// Everything needed to create a task.
#[derive(Debug, Clone)]
pub struct CreateTask {
    pub key: TaskKey,
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
    pub key: TaskKey,
    pub bundle: Bundle,
    pub pid: u32,
    shim: Option<Arc<dyn TaskClient>>,
    shim_pid: u32,
    bootstrap: Bootstrap,
    dead: watch::Sender<Option<Exit>>,
    closing: AtomicBool,
    log: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(h) = lock(&self.log).take() {
            h.abort();
        }
    }
}

impl Task {
    pub fn id(&self) -> &str {
        self.key.id.as_str()
    }

    /// How the task ended, if its shim is gone.
    pub fn dead_exit(&self) -> Option<Exit> {
        *self.dead.borrow()
    }

    /// The shim, for calls that need a live one.
    pub fn shim(&self) -> Result<Arc<dyn TaskClient>> {
        match (&self.shim, self.dead_exit()) {
            (Some(s), None) => Ok(s.clone()),
            _ => Err(Error::precondition(format!(
                "task {:?} is stopped: its shim has exited",
                self.key.id
            ))),
        }
    }

    pub async fn state(&self, exec_id: &str) -> Result<ProcessState> {
        if let Some(exit) = self.dead_exit() {
            return self.stopped_state(exec_id, exit);
        }
        match self.shim()?.state(exec_id).await {
            // The task was deleted while the call was on its way: report how it ended.
            Err(e @ Error::ShimUnavailable { .. }) => match self.dead_exit() {
                Some(exit) => self.stopped_state(exec_id, exit),
                None => Err(e),
            },
            r => r,
        }
    }

    /// The state of a task whose shim is gone (or going): its init stopped with `exit`, and
    /// no other process.
    fn stopped_state(&self, exec_id: &str, exit: Exit) -> Result<ProcessState> {
        if !exec_id.is_empty() {
            return Err(Error::not_found(format!(
                "process {exec_id:?} of task {:?}",
                self.key.id
            )));
        }
        Ok(ProcessState {
            container_id: self.id().to_owned(),
            exec_id: String::new(),
            pid: self.pid,
            status: TaskStatus::Stopped,
            stdio: Stdio::default(),
            exit_status: exit.status,
            exited_at: Some(exit.at),
        })
    }

    /// Waits for a process to exit. For the init process, a shim that dies meanwhile
    /// ends the wait with the exit its cleanup reported.
    pub async fn wait(&self, exec_id: &str) -> Result<Exit> {
        if exec_id.is_empty() {
            if let Some(e) = self.dead_exit() {
                return Ok(e);
            }
        }
        let shim = self.shim()?;
        let mut dead = self.dead.subscribe();
        let died = async move {
            let exit = dead.wait_for(Option::is_some).await.map(|e| *e);
            match exit {
                Ok(e) => e.unwrap_or(Exit {
                    pid: 0,
                    status: 255,
                    at: Timestamp::now(),
                }),
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            r = shim.wait(exec_id) => match r {
                Err(Error::ShimUnavailable { .. }) if exec_id.is_empty() => {
                    // The shim went away: its cleanup reports the exit shortly.
                    let mut dead = self.dead.subscribe();
                    let unavailable = |reason: &str| Error::ShimUnavailable { id: self.id().to_owned(), reason: reason.into() };
                    let e = tokio::time::timeout(Duration::from_secs(40), dead.wait_for(Option::is_some))
                        .await
                        .map_err(|_| unavailable("shim died and its cleanup did not finish"))?
                        .map(|e| *e)
                        .map_err(|_| unavailable("task was removed"))?;
                    e.ok_or_else(|| unavailable("task was removed"))
                }
                r => r,
            },
            e = died, if exec_id.is_empty() => Ok(e),
        }
    }
}

pub struct ShimManager {
    cfg: ManagerConfig,
    launcher: Arc<dyn ShimLauncher>,
    tasks: Mutex<HashMap<TaskKey, Arc<Task>>>,
    /// Creates in progress; the receiver turns true when one has finished either way.
    creating: Mutex<HashMap<TaskKey, watch::Receiver<bool>>>,
    events: EventBus,
    /// Readies the kernel's cgroup lock ahead of a create, once `warm_cgroups` set it.
    warmer: std::sync::OnceLock<Arc<CgroupWarmer>>,
}

/// A create in progress. Dropped when the create has finished (and, if abandoned, been
/// undone): it leaves the map and wakes whoever waits on the same task.
struct Reservation {
    m: Arc<ShimManager>,
    key: TaskKey,
    done: watch::Sender<bool>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        lock(&self.m.creating).remove(&self.key);
        let _ = self.done.send(true);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn already_exists(key: &TaskKey) -> Error {
    Error::Core(berth_core::Error::AlreadyExists(format!(
        "task {:?} in namespace {:?}",
        key.id, key.namespace
    )))
}

impl ShimManager {
    pub fn new(cfg: ManagerConfig, launcher: Arc<dyn ShimLauncher>, events: EventBus) -> Arc<Self> {
        Arc::new(ShimManager {
            cfg,
            launcher,
            tasks: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashMap::new()),
            events,
            warmer: std::sync::OnceLock::new(),
        })
    }

    /// From now on, readies the kernel's cgroup lock when a client prepares a rootfs, creates
    /// a container record or a task, so that the runtime's moves into cgroups do not wait
    /// (`warm.rs`). Does nothing where this process has no cgroup to move into.
    pub fn warm_cgroups(&self) {
        if let Some(w) = CgroupWarmer::of_this_process() {
            if self.warmer.set(w.clone()).is_ok() {
                w.follow(&self.events);
            }
        }
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

    /// Claims the right to create `key`. A create of the same task still running (or being
    /// undone after its client gave up) is waited for; a task that exists is refused.
    async fn reserve(self: &Arc<Self>, key: &TaskKey) -> Result<Reservation> {
        loop {
            let mut other = {
                if lock(&self.tasks).contains_key(key) {
                    return Err(already_exists(key));
                }
                let mut creating = lock(&self.creating);
                match creating.get(key) {
                    Some(rx) => rx.clone(),
                    None => {
                        let (done, rx) = watch::channel(false);
                        creating.insert(key.clone(), rx);
                        return Ok(Reservation {
                            m: self.clone(),
                            key: key.clone(),
                            done,
                        });
                    }
                }
            };
            tokio::time::timeout(CREATE_WAIT, other.wait_for(|d| *d))
                .await
                .map_err(|_| {
                    Error::Core(berth_core::Error::Unavailable(format!(
                        "task {:?} in namespace {:?} is still being created by another request",
                        key.id, key.namespace
                    )))
                })?
                .ok();
        }
    }

    pub fn get(&self, key: &TaskKey) -> Result<Arc<Task>> {
        lock(&self.tasks).get(key).cloned().ok_or_else(|| {
            Error::not_found(format!(
                "task {:?} in namespace {:?}",
                key.id, key.namespace
            ))
        })
    }

    pub fn list(&self, ns: &berth_core::Namespace) -> Vec<Arc<Task>> {
        let mut v: Vec<_> = lock(&self.tasks)
            .values()
            .filter(|t| t.key.namespace == *ns)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.key.id.cmp(&b.key.id));
        v
    }

    /// Creates a task: bundle, shim, ttrpc Create. Any failure undoes what was done, so no
    /// bundle, mount or shim is left behind, and the shim's own message is returned. The
    /// work goes on if the caller is dropped; a task nobody received is removed again.
    pub async fn create(self: &Arc<Self>, req: CreateTask) -> Result<Arc<Task>> {
        if let Some(w) = self.warmer.get() {
            w.warm();
        }
        let reservation = self.reserve(&req.key).await?;
        let (tx, rx) = oneshot::channel();
        let me = self.clone();
        tokio::spawn(async move {
            let _reservation = reservation;
            match me.build(req).await {
                Ok(task) => {
                    lock(&me.tasks).insert(task.key.clone(), task.clone());
                    me.watch(task.clone());
                    if let Err(Ok(task)) = tx.send(Ok(task)) {
                        tracing::warn!(task = %task.key, "the client gave up on creating this task; removing it");
                        me.abandon(&task).await;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        rx.await.map_err(|_| {
            Error::Core(berth_core::Error::Unavailable(
                "task creation was interrupted".into(),
            ))
        })?
    }

    /// The steps of a create, each undone if a later one fails.
    async fn build(&self, req: CreateTask) -> Result<Arc<Task>> {
        let binary = match &req.runtime_path {
            Some(p) => resolve_binary(&p.to_string_lossy(), &HashMap::new())?,
            None => resolve_binary(&req.runtime, &self.cfg.runtimes)?,
        };
        let (state, key, spec, b2) = (
            self.cfg.state.clone(),
            req.key.clone(),
            req.spec.clone(),
            binary.clone(),
        );
        let bundle = tokio::task::spawn_blocking(move || Bundle::create(&state, &key, &spec, &b2))
            .await
            .map_err(|e| Error::precondition(format!("bundle writer failed: {e}")))??;
        let bootstrap = self.bootstrap(binary);
        let log = spawn_log_reader(&bundle);
        let options = req.task_options.as_ref().or(req.runtime_options.as_ref());
        let t0 = std::time::Instant::now();
        let built = async {
            let address = self.launcher.start(&bootstrap, &bundle, options).await?;
            let launched = t0.elapsed();
            let shim = match self.launcher.connect(&address, &req.key).await {
                Ok(s) => s,
                Err(e) => {
                    self.cleanup_after_failure(&bootstrap, &bundle, None).await;
                    return Err(e);
                }
            };
            let pid = match shim.create(&bundle, &req.rootfs, &req.stdio, options).await {
                Ok(pid) => pid,
                Err(e) => {
                    self.cleanup_after_failure(&bootstrap, &bundle, Some(&shim))
                        .await;
                    return Err(e);
                }
            };
            Ok((shim, pid, launched))
        }
        .await;
        let (shim, pid, launched) = match built {
            Ok(v) => v,
            Err(e) => {
                log.abort();
                remove_bundle(&bundle).await;
                return Err(e);
            }
        };
        tracing::debug!(
            task = %req.key.id,
            shim_start_ms = launched.as_millis() as u64,
            total_ms = t0.elapsed().as_millis() as u64,
            "task created"
        );
        let shim_pid = match shim.connect_info().await {
            Ok((shim_pid, _)) => shim_pid,
            Err(_) => bundle.shim_pid().map_or(0, |p| p as u32),
        };
        bundle.record_shim_pid(shim_pid);
        Ok(Arc::new(Task {
            key: req.key,
            bundle,
            pid,
            shim: Some(shim),
            shim_pid,
            bootstrap,
            dead: watch::channel(None).0,
            closing: AtomicBool::new(false),
            log: Mutex::new(Some(log)),
        }))
    }

    /// After a failed create step: the shim (if reached) is told to go, and its `delete`
    /// subcommand cleans up what the runtime made.
    async fn cleanup_after_failure(
        &self,
        bootstrap: &Bootstrap,
        bundle: &Bundle,
        shim: Option<&Arc<dyn TaskClient>>,
    ) {
        if let Some(s) = shim {
            let _ = s.shutdown().await;
        }
        if let Err(e) = self.launcher.cleanup(bootstrap, bundle).await {
            tracing::debug!(task = %bundle.key, "shim cleanup after failed create: {e}");
        }
    }

    /// Removes a task whose creator went away: its created process is deleted (killed if
    /// need be), the shim goes, and so does the bundle.
    async fn abandon(&self, task: &Arc<Task>) {
        if self.delete(&task.key).await.is_ok() {
            return;
        }
        if let Ok(shim) = task.shim() {
            let _ = shim.kill("", 9, true).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), shim.wait("")).await;
        }
        if let Err(e) = self.delete(&task.key).await {
            tracing::warn!(task = %task.key, "remove abandoned task: {e}");
        }
    }

    /// Deletes a task: the shim deletes the init process (refusing a running one), then it is
    /// shut down and the bundle removed. A task whose shim died is simply forgotten.
    pub async fn delete(&self, key: &TaskKey) -> Result<Exit> {
        let task = self.get(key)?;
        let exit = match task.dead_exit() {
            Some(exit) => {
                // The shim is gone, so berth reports the delete it cannot.
                self.forget(&task);
                remove_bundle(&task.bundle).await;
                self.publish_delete(&task, exit);
                exit
            }
            None => {
                let shim = task.shim()?;
                let exit = shim.delete("").await?;
                task.closing.store(true, Ordering::SeqCst);
                // From here the task is stopped whatever its shim answers: a Get or Wait
                // arriving while the shim shuts down reports this exit rather than a shim
                // that cannot be reached.
                task.dead.send_replace(Some(exit));
                shim.shutdown().await?;
                // A shim serving other tasks too (a pod's, grouped) stays up: only a shim
                // left with no task is waited for.
                let shared = lock(&self.tasks)
                    .values()
                    .any(|t| t.shim_pid == task.shim_pid && t.key != task.key);
                if !shared {
                    if let Some(gone) = self.launcher.exited(task.shim_pid) {
                        let _ = tokio::time::timeout(Duration::from_secs(5), gone).await;
                    }
                }
                self.forget(&task);
                remove_bundle(&task.bundle).await;
                exit
            }
        };
        Ok(exit)
    }

    fn forget(&self, task: &Task) {
        lock(&self.tasks).remove(&task.key);
        if let Some(h) = lock(&task.log).take() {
            h.abort();
        }
    }

    /// Watches the shim process; when it exits while its task is still ours, cleans up.
    fn watch(self: &Arc<Self>, task: Arc<Task>) {
        let Some(gone) = self.launcher.exited(task.shim_pid) else {
            tracing::warn!(task = %task.key, shim_pid = task.shim_pid, "cannot watch shim");
            return;
        };
        let m = Arc::downgrade(self);
        tokio::spawn(async move {
            gone.await;
            if task.closing.load(Ordering::SeqCst) {
                return;
            }
            if let Some(m) = m.upgrade() {
                m.on_shim_death(&task).await;
            }
        });
    }

    async fn on_shim_death(&self, task: &Task) {
        tracing::warn!(task = %task.key, shim_pid = task.shim_pid, "shim died; cleaning up");
        let exit = self
            .cleanup_dead(&task.bootstrap, &task.bundle, task.pid)
            .await;
        task.dead.send_replace(Some(exit));
        if let Some(h) = lock(&task.log).take() {
            h.abort();
        }
        self.publish_exit(&task.key, exit);
    }

    /// The shim's `delete` subcommand (kills what is left, unmounts the rootfs), then the
    /// bundle goes. Returns the exit to report.
    async fn cleanup_dead(&self, bootstrap: &Bootstrap, bundle: &Bundle, pid: u32) -> Exit {
        let exit = match self.launcher.cleanup(bootstrap, bundle).await {
            Ok(e) => Exit {
                pid: if e.pid == 0 { pid } else { e.pid },
                ..e
            },
            Err(e) => {
                tracing::warn!(task = %bundle.key, "shim delete: {e}");
                Exit {
                    pid,
                    status: 255,
                    at: Timestamp::now(),
                }
            }
        };
        remove_bundle(bundle).await;
        exit
    }

    fn publish_exit(&self, key: &TaskKey, exit: Exit) {
        self.events.publish(
            &key.namespace,
            Event::TaskExit {
                container_id: key.id.to_string(),
                id: key.id.to_string(),
                pid: exit.pid,
                exit_status: exit.status,
                exited_at: Some(exit.at),
            },
        );
    }

    fn publish_delete(&self, task: &Task, exit: Exit) {
        self.events.publish(
            &task.key.namespace,
            Event::TaskDelete {
                container_id: task.key.id.to_string(),
                pid: exit.pid,
                exit_status: exit.status,
                exited_at: Some(exit.at),
                id: String::new(),
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
                remove_bundle(&bundle).await;
                continue;
            };
            let bootstrap = self.bootstrap(binary);
            let live = match bundle.shim_address() {
                Some(a) => match self.launcher.connect(&a, &bundle.key).await {
                    Ok(c) => c.connect_info().await.map(|(s, t)| (c, s, t)),
                    Err(e) => Err(e),
                },
                None => Err(Error::ShimUnavailable {
                    id: bundle.key.id.to_string(),
                    reason: "no address recorded".into(),
                }),
            };
            let key = bundle.key.clone();
            match live {
                Ok((client, shim_pid, task_pid)) => {
                    tracing::info!(task = %key, shim_pid, "reconnected to shim");
                    bundle.record_shim_pid(shim_pid);
                    let log = spawn_log_reader(&bundle);
                    let task = Arc::new(Task {
                        key: key.clone(),
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
                    tracing::warn!(task = %key, "shim is gone ({e}); cleaning up");
                    let exit = self.cleanup_dead(&bootstrap, &bundle, 0).await;
                    self.publish_exit(&key, exit);
                    let task = Arc::new(Task {
                        key: key.clone(),
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

/// Removes a bundle off the reactor (it unmounts and walks directories).
async fn remove_bundle(bundle: &Bundle) {
    let b = bundle.clone();
    match tokio::task::spawn_blocking(move || b.remove()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(task = %bundle.key, "remove bundle: {e}"),
        Err(e) => tracing::warn!(task = %bundle.key, "remove bundle: {e}"),
    }
}

/// Copies what the shim writes to its `log` fifo into berthd's log. The fifo is opened
/// read-write so the shim never sees a closed reader; the reader is aborted with the task.
fn spawn_log_reader(bundle: &Bundle) -> tokio::task::JoinHandle<()> {
    let path = bundle.log_fifo();
    let key = bundle.key.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let rx = match tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&path)
        {
            Ok(rx) => rx,
            Err(e) => {
                tracing::debug!(task = %key, "shim log {}: {e}", path.display());
                return;
            }
        };
        let mut lines = tokio::io::BufReader::new(rx).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            tracing::debug!(target: "shim", task = %key, "{l}");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;
    use futures::FutureExt;
    use tokio::sync::Notify;

    /// A shim that records what it was asked, can hold Create until told, and dies on cue.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<String>>,
        hold_create: Mutex<Option<Arc<Notify>>>,
        hold_shutdown: Mutex<Option<Arc<Notify>>>,
        fail_create: AtomicBool,
        deaths: Mutex<HashMap<u32, watch::Sender<bool>>>,
        /// Shims connected so far: each gets a pid of its own (7, 8, ...), as real ones do,
        /// so that one shim's death is never taken for another's.
        connected: std::sync::atomic::AtomicU32,
    }

    impl Fake {
        fn record(&self, c: impl Into<String>) {
            lock(&self.calls).push(c.into());
        }
        fn calls(&self) -> Vec<String> {
            lock(&self.calls).clone()
        }
        fn kill_shim(&self, pid: u32) {
            lock(&self.deaths)
                .entry(pid)
                .or_insert_with(|| watch::channel(false).0)
                .send_replace(true);
        }
    }

    struct FakeClient(Arc<Fake>, String, u32);

    #[async_trait::async_trait]
    impl TaskClient for FakeClient {
        async fn create(
            &self,
            _: &Bundle,
            _: &[Mount],
            _: &Stdio,
            _: Option<&AnyValue>,
        ) -> Result<u32> {
            self.0.record(format!("create {}", self.1));
            let hold = lock(&self.0.hold_create).clone();
            if let Some(n) = hold {
                n.notified().await;
            }
            if self.0.fail_create.load(Ordering::SeqCst) {
                return Err(Error::Shim {
                    code: 2,
                    message: "OCI runtime create failed: no such file".into(),
                });
            }
            Ok(4242)
        }
        async fn start(&self, _: &str) -> Result<u32> {
            Ok(4242)
        }
        async fn delete(&self, _: &str) -> Result<Exit> {
            self.0.record(format!("delete {}", self.1));
            Ok(Exit {
                pid: 4242,
                status: 0,
                at: Timestamp::now(),
            })
        }
        async fn state(&self, _: &str) -> Result<ProcessState> {
            Ok(ProcessState::unknown(&self.1, 4242))
        }
        async fn wait(&self, _: &str) -> Result<Exit> {
            std::future::pending().await
        }
        async fn kill(&self, _: &str, _: u32, _: bool) -> Result<()> {
            self.0.record(format!("kill {}", self.1));
            Ok(())
        }
        async fn exec(&self, _: &str, _: &Stdio, _: &AnyValue) -> Result<()> {
            Ok(())
        }
        async fn resize_pty(&self, _: &str, _: u32, _: u32) -> Result<()> {
            Ok(())
        }
        async fn close_io(&self, _: &str, _: bool) -> Result<()> {
            Ok(())
        }
        async fn pause(&self) -> Result<()> {
            Ok(())
        }
        async fn resume(&self) -> Result<()> {
            Ok(())
        }
        async fn pids(&self) -> Result<Vec<(u32, Option<AnyValue>)>> {
            Ok(vec![])
        }
        async fn update(&self, _: Option<&AnyValue>, _: HashMap<String, String>) -> Result<()> {
            Ok(())
        }
        async fn stats(&self) -> Result<Option<AnyValue>> {
            Ok(None)
        }
        async fn connect_info(&self) -> Result<(u32, u32)> {
            Ok((self.2, 4242))
        }
        async fn shutdown(&self) -> Result<()> {
            self.0.record(format!("shutdown {}", self.1));
            let hold = lock(&self.0.hold_shutdown).clone();
            if let Some(n) = hold {
                n.notified().await;
            }
            self.0.kill_shim(self.2);
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl ShimLauncher for Arc<Fake> {
        async fn start(&self, _: &Bootstrap, b: &Bundle, _: Option<&AnyValue>) -> Result<String> {
            self.record(format!("start {}", b.key.id));
            Ok(format!("unix:///fake/{}", b.key.id))
        }
        async fn connect(&self, _: &str, key: &TaskKey) -> Result<Arc<dyn TaskClient>> {
            let pid = 7 + self.connected.fetch_add(1, Ordering::SeqCst);
            Ok(Arc::new(FakeClient(self.clone(), key.id.to_string(), pid)))
        }
        async fn cleanup(&self, _: &Bootstrap, b: &Bundle) -> Result<Exit> {
            self.record(format!("cleanup {}", b.key.id));
            Ok(Exit {
                pid: 4242,
                status: 137,
                at: Timestamp::now(),
            })
        }
        fn exited(&self, pid: u32) -> Option<BoxFuture<'static, ()>> {
            let mut rx = lock(&self.deaths)
                .entry(pid)
                .or_insert_with(|| watch::channel(false).0)
                .subscribe();
            Some(
                async move {
                    let _ = rx.wait_for(|dead| *dead).await;
                }
                .boxed(),
            )
        }
    }

    fn manager(state: &std::path::Path) -> (Arc<ShimManager>, Arc<Fake>, EventBus) {
        let fake = Arc::new(Fake::default());
        let bus = EventBus::default();
        let m = ShimManager::new(
            ManagerConfig {
                state: state.to_owned(),
                daemon_address: "/x.sock".into(),
                ttrpc_address: "/x.sock.ttrpc".into(),
                publish_binary: "/bin/true".into(),
                runtimes: HashMap::new(),
                debug: false,
            },
            Arc::new(fake.clone()),
            bus.clone(),
        );
        (m, fake, bus)
    }

    fn req(id: &str) -> CreateTask {
        CreateTask {
            key: TaskKey::new("default", id).unwrap(),
            runtime: "io.containerd.runc.v2".into(),
            runtime_path: Some("/bin/true".into()),
            runtime_options: None,
            task_options: None,
            spec: br#"{"ociVersion":"1.0.2"}"#.to_vec(),
            rootfs: vec![],
            stdio: Stdio::default(),
        }
    }

    #[tokio::test]
    async fn create_then_delete_leaves_nothing() {
        let state = tempfile::tempdir().unwrap();
        let (m, fake, _) = manager(state.path());
        let t = m.create(req("c1")).await.unwrap();
        assert_eq!(t.pid, 4242);
        assert!(t.bundle.path.is_dir());
        let e = m.create(req("c1")).await.err().unwrap();
        assert_eq!(e.kind(), berth_core::ErrorKind::AlreadyExists);
        m.delete(&t.key).await.unwrap();
        assert!(m.get(&t.key).is_err());
        assert!(!t.bundle.path.exists());
        assert_eq!(
            fake.calls(),
            ["start c1", "create c1", "delete c1", "shutdown c1"]
        );
    }

    #[tokio::test]
    async fn a_task_being_deleted_reads_as_stopped_while_its_shim_shuts_down() {
        let state = tempfile::tempdir().unwrap();
        let (m, fake, _) = manager(state.path());
        let t = m.create(req("c1")).await.unwrap();
        let gate = Arc::new(Notify::new());
        *lock(&fake.hold_shutdown) = Some(gate.clone());
        let m2 = m.clone();
        let key = t.key.clone();
        let deleting = tokio::spawn(async move { m2.delete(&key).await });
        while !fake.calls().contains(&"shutdown c1".to_owned()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Still in the book, its shim going away: Get and Wait answer with the exit.
        let seen = m.get(&t.key).unwrap();
        let st = seen.state("").await.unwrap();
        assert_eq!((st.status, st.exit_status), (TaskStatus::Stopped, 0));
        assert_eq!(seen.wait("").await.unwrap().status, 0);
        gate.notify_waiters();
        deleting.await.unwrap().unwrap();
        assert!(m.get(&t.key).is_err());
    }

    #[tokio::test]
    async fn a_failed_create_is_undone_and_names_the_runtime_error() {
        let state = tempfile::tempdir().unwrap();
        let (m, fake, _) = manager(state.path());
        fake.fail_create.store(true, Ordering::SeqCst);
        let e = m.create(req("c1")).await.err().unwrap();
        assert!(e.to_string().contains("OCI runtime create failed"), "{e}");
        assert!(m
            .list(&berth_core::Namespace::new("default").unwrap())
            .is_empty());
        assert!(!Bundle::path_for(state.path(), &TaskKey::new("default", "c1").unwrap()).exists());
        assert_eq!(
            fake.calls(),
            ["start c1", "create c1", "shutdown c1", "cleanup c1"]
        );
        fake.fail_create.store(false, Ordering::SeqCst);
        m.create(req("c1")).await.unwrap();
    }

    #[tokio::test]
    async fn a_create_its_client_gave_up_on_is_removed_and_a_retry_succeeds() {
        let state = tempfile::tempdir().unwrap();
        let (m, fake, _) = manager(state.path());
        let gate = Arc::new(Notify::new());
        *lock(&fake.hold_create) = Some(gate.clone());
        // The client times out while the shim is in Create.
        let first = tokio::time::timeout(Duration::from_millis(100), m.create(req("c1"))).await;
        assert!(first.is_err(), "the first create should still be waiting");
        // The retry arrives while the abandoned create is still running.
        let m2 = m.clone();
        let retry = tokio::spawn(async move { m2.create(req("c1")).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        *lock(&fake.hold_create) = None;
        gate.notify_waiters();
        let t = retry.await.unwrap().unwrap();
        assert_eq!(m.get(&t.key).unwrap().pid, 4242);
        let calls = fake.calls();
        // The abandoned task was created, then deleted and its shim shut down, before the
        // retry started its own shim.
        let pos = |c: &str| calls.iter().position(|x| x == c).unwrap();
        assert!(
            pos("delete c1") < calls.iter().rposition(|x| x == "start c1").unwrap(),
            "{calls:?}"
        );
        assert_eq!(
            calls.iter().filter(|c| *c == "start c1").count(),
            2,
            "{calls:?}"
        );
        assert!(t.bundle.path.is_dir(), "the retry's bundle is there");
    }

    #[tokio::test]
    async fn a_dead_shim_is_cleaned_up_and_its_exit_published() {
        let state = tempfile::tempdir().unwrap();
        let (m, fake, bus) = manager(state.path());
        let mut events = bus.subscribe();
        let t = m.create(req("c1")).await.unwrap();
        fake.kill_shim(7);
        let exit = tokio::time::timeout(Duration::from_secs(5), t.wait(""))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exit.status, 137);
        let env = events.recv().await.unwrap();
        assert_eq!(env.topic, "/tasks/exit");
        assert!(matches!(
            env.event,
            Event::TaskExit {
                exit_status: 137,
                ..
            }
        ));
        assert_eq!(t.state("").await.unwrap().status, TaskStatus::Stopped);
        assert!(t.shim().is_err());
        assert!(fake.calls().contains(&"cleanup c1".to_owned()));
        m.delete(&t.key).await.unwrap();
        let env = events.recv().await.unwrap();
        assert_eq!(env.topic, "/tasks/delete");
    }
}
