//! containerd's restart monitor, for the containers that ask for it with its labels:
//! `containerd.io/restart.status` = `running` keeps a container's task running, under
//! `containerd.io/restart.policy` (`always`, `unless-stopped`, `on-failure[:N]`; no label
//! is `always`), its output going to `containerd.io/restart.loguri` (or to the file
//! `containerd.io/restart.logpath`). A task's exit, seen on the event bus, restarts it at
//! once; a sweep at start-up and every 10 s starts what should run and does not (a task
//! whose shim died, a machine that rebooted). Clients stop a container for good by setting
//! the status label to `stopped` before they signal it.

use std::sync::Arc;
use std::time::Duration;

use berth_core::containers::{Container, Containers};
use berth_core::events::{Event, EventBus};
use berth_core::filters::Filter;
use berth_core::namespaces::Namespaces;
use berth_core::snapshot::Snapshots;
use berth_core::Namespace;
use tokio::sync::broadcast::error::RecvError;

use crate::manager::{CreateTask, ShimManager};
use crate::task::{Stdio, TaskKey, TaskStatus};
use crate::{Error, Result};

pub const STATUS: &str = "containerd.io/restart.status";
pub const POLICY: &str = "containerd.io/restart.policy";
pub const LOG_URI: &str = "containerd.io/restart.loguri";
pub const LOG_PATH: &str = "containerd.io/restart.logpath";
pub const COUNT: &str = "containerd.io/restart.count";

const SWEEP: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    No,
    Always,
    UnlessStopped,
    /// Restarted after a non-zero exit, at most this many times (None: without end).
    OnFailure(Option<u32>),
}

impl Policy {
    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "" | "always" => Some(Policy::Always),
            "no" => Some(Policy::No),
            "unless-stopped" => Some(Policy::UnlessStopped),
            "on-failure" => Some(Policy::OnFailure(None)),
            s => s
                .strip_prefix("on-failure:")
                .and_then(|n| n.parse().ok())
                .map(|n| Policy::OnFailure(Some(n))),
        }
    }

    /// Whether a task that ended with `exit` (None: it is simply not there) after
    /// `restarts` restarts is started again.
    pub fn restarts(self, exit: Option<u32>, restarts: u32) -> bool {
        match self {
            Policy::No => false,
            Policy::Always | Policy::UnlessStopped => true,
            Policy::OnFailure(max) => exit != Some(0) && max.is_none_or(|m| restarts < m),
        }
    }
}

pub struct RestartMonitor {
    pub containers: Arc<Containers>,
    pub snapshots: Arc<Snapshots>,
    pub namespaces: Arc<Namespaces>,
    pub runtime: Arc<ShimManager>,
    /// The runtime of a container that names none.
    pub default_runtime: String,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> berth_core::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::precondition(format!("restart monitor worker: {e}")))?
        .map_err(Error::from)
}

impl RestartMonitor {
    /// Starts watching exits and sweeping.
    pub fn spawn(self: Arc<Self>, bus: &EventBus) {
        let mut rx = bus.subscribe();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(env) => {
                        if let Event::TaskExit {
                            container_id,
                            id,
                            exit_status,
                            ..
                        } = &env.event
                        {
                            if id.is_empty() || id == container_id {
                                if let Ok(ns) = Namespace::new(&env.namespace) {
                                    me.on_exit(&ns, container_id, Some(*exit_status)).await;
                                }
                            }
                        }
                    }
                    // Missed exits are found by the next sweep.
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                }
            }
        });
        tokio::spawn(async move {
            loop {
                self.sweep().await;
                tokio::time::sleep(SWEEP).await;
            }
        });
    }

    /// Containers asked to run whose task is not running.
    async fn sweep(&self) {
        let (namespaces, containers) = (self.namespaces.clone(), self.containers.clone());
        let wanted = blocking(move || {
            let mut out = Vec::new();
            for (ns, _) in namespaces.list()? {
                for c in containers.list(&ns, &Filter::default())? {
                    if c.labels.get(STATUS).map(String::as_str) == Some("running") {
                        out.push((ns.clone(), c));
                    }
                }
            }
            Ok(out)
        })
        .await;
        let Ok(wanted) = wanted else { return };
        for (ns, c) in wanted {
            let Ok(key) = TaskKey::new(ns.as_str(), &c.id) else {
                continue;
            };
            let exit = match self.runtime.get(&key) {
                Ok(task) => match task.state("").await {
                    Ok(s) if s.status != TaskStatus::Stopped => continue,
                    Ok(s) => Some(s.exit_status),
                    Err(_) => task.dead_exit().map(|e| e.status),
                },
                Err(_) => None,
            };
            self.on_exit(&ns, &c.id, exit).await;
        }
    }

    async fn on_exit(&self, ns: &Namespace, id: &str, exit: Option<u32>) {
        let (containers, n, i) = (self.containers.clone(), ns.clone(), id.to_owned());
        let Ok(c) = blocking(move || containers.get(&n, &i)).await else {
            return;
        };
        if c.labels.get(STATUS).map(String::as_str) != Some("running") {
            return;
        }
        let policy = c.labels.get(POLICY).map(String::as_str).unwrap_or("");
        let Some(policy) = Policy::parse(policy) else {
            tracing::warn!(container = %id, policy, "unknown restart policy");
            return;
        };
        let count: u32 = c
            .labels
            .get(COUNT)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if !policy.restarts(exit, count) {
            return;
        }
        match self.restart(ns, c, count).await {
            Ok(()) => tracing::info!(namespace = %ns, container = %id, "restarted"),
            Err(e) => tracing::warn!(namespace = %ns, container = %id, "restart failed: {e}"),
        }
    }

    async fn restart(&self, ns: &Namespace, c: Container, count: u32) -> Result<()> {
        let key = TaskKey::new(ns.as_str(), &c.id)?;
        if self.runtime.get(&key).is_ok() {
            match self.runtime.delete(&key).await {
                Ok(_) => {}
                Err(e) if e.kind() == berth_core::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let spec = c
            .spec
            .clone()
            .ok_or_else(|| Error::precondition(format!("container {:?} has no spec", c.id)))?
            .value;
        let terminal = serde_json::from_slice::<serde_json::Value>(&spec)
            .map(|s| s["process"]["terminal"] == serde_json::Value::Bool(true))
            .unwrap_or(false);
        let out = match (c.labels.get(LOG_URI), c.labels.get(LOG_PATH)) {
            (Some(uri), _) => uri.clone(),
            (None, Some(path)) => format!("file://{path}"),
            (None, None) => String::new(),
        };
        let (snapshots, n, sn, sk) = (
            self.snapshots.clone(),
            ns.clone(),
            c.snapshotter.clone(),
            c.snapshot_key.clone(),
        );
        let rootfs = blocking(move || snapshots.mounts(&n, &sn, &sk)).await?;
        let task = self
            .runtime
            .create(CreateTask {
                key: key.clone(),
                runtime: if c.runtime_name.is_empty() {
                    self.default_runtime.clone()
                } else {
                    c.runtime_name.clone()
                },
                runtime_path: None,
                runtime_options: c.runtime_options.clone(),
                task_options: None,
                spec,
                rootfs,
                stdio: Stdio {
                    stdin: String::new(),
                    stdout: out.clone(),
                    stderr: if terminal { String::new() } else { out },
                    terminal,
                },
            })
            .await?;
        if let Err(e) = async { task.shim()?.start("").await }.await {
            let _ = self.runtime.delete(&key).await;
            return Err(e);
        }
        // A client that marked the container stopped while this restart was under way
        // may have found no task to signal: it is stopped here instead.
        let (containers, n, i) = (self.containers.clone(), ns.clone(), c.id.clone());
        let now = blocking(move || containers.get(&n, &i)).await?;
        if now.labels.get(STATUS).map(String::as_str) != Some("running") {
            if let Ok(shim) = task.shim() {
                let _ = shim.kill("", libc::SIGKILL as u32, true).await;
            }
            let _ = task.wait("").await;
            return Ok(());
        }
        let mut counted = c;
        counted.labels.insert(COUNT.into(), (count + 1).to_string());
        let (containers, n) = (self.containers.clone(), ns.clone());
        blocking(move || containers.update(&n, counted, &[format!("labels.{COUNT}")])).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_read_and_decide_as_containerds() {
        assert_eq!(
            Policy::parse("on-failure:3"),
            Some(Policy::OnFailure(Some(3)))
        );
        assert_eq!(Policy::parse(""), Some(Policy::Always));
        assert_eq!(Policy::parse("sometimes"), None);
        assert!(Policy::Always.restarts(Some(0), 100));
        assert!(!Policy::No.restarts(Some(1), 0));
        let f = Policy::OnFailure(Some(2));
        assert!(f.restarts(Some(1), 1) && !f.restarts(Some(1), 2) && !f.restarts(Some(0), 0));
        assert!(Policy::OnFailure(None).restarts(None, 1000));
    }
}
