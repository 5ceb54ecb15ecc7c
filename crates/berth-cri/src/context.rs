//! The handles the Kubernetes model works with — stores, the runtime, CNI, the event
//! buses — shared by its resource modules (pods, containers, images, stats), which hold
//! no state of their own beyond what lives here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use berth_core::events::EventBus;
use berth_core::gc::Scheduler;
use berth_core::images::ImageStores;
use berth_registry::pull::Puller;
use berth_runtime::ShimManager;
use tokio::sync::{broadcast, watch};

use crate::cni::{Cni, CniSettings};
use crate::logs::ContainerLog;
use crate::store::CriStore;

#[derive(Debug, Clone)]
pub struct CriConfig {
    /// Durable files of pods (hostname, hosts, resolv.conf) and CNI results.
    pub root: PathBuf,
    /// Namespaces, /dev/shm and fifos of pods and containers.
    pub state: PathBuf,
    pub cni: CniSettings,
    pub snapshotter: String,
    /// The snapshotter's directory, reported as the image filesystem.
    pub snapshotter_root: PathBuf,
    /// Runtime for containers (a shim v2 runtime name).
    pub runtime: String,
    pub max_concurrent_downloads: usize,
    /// The program that holds a pod's shared PID namespace (`berthd pause`); it prints the
    /// pid of the namespace's init.
    pub pause_command: Vec<String>,
}

/// What the kubelet's GetContainerEvents stream reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerEventKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

#[derive(Debug, Clone)]
pub struct ContainerEvent {
    pub kind: ContainerEventKind,
    pub container_id: String,
    pub sandbox_id: String,
    pub at: i64,
}

/// A running container's log: the file, and a flag its copiers watch for the exit.
pub struct LiveLog {
    pub log: Arc<ContainerLog>,
    pub exited: watch::Sender<bool>,
    pub copiers: Vec<tokio::task::JoinHandle<()>>,
}

pub struct CriContext {
    pub cfg: CriConfig,
    pub store: CriStore,
    pub images: ImageStores,
    pub puller: Arc<Puller>,
    pub runtime: Arc<ShimManager>,
    pub bus: EventBus,
    pub gc: Scheduler,
    pub cni: Cni,
    pub events: broadcast::Sender<ContainerEvent>,
    pub logs: Mutex<HashMap<String, LiveLog>>,
    /// Containers whose task reported an OOM kill.
    pub oom_killed: Mutex<std::collections::HashSet<String>>,
}

impl CriContext {
    pub fn emit(&self, kind: ContainerEventKind, container_id: &str, sandbox_id: &str) {
        let _ = self.events.send(ContainerEvent {
            kind,
            container_id: container_id.to_owned(),
            sandbox_id: sandbox_id.to_owned(),
            at: crate::store::now_ns(),
        });
    }

    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.cfg.state.join("sandboxes").join(id)
    }

    pub fn sandbox_files(&self, id: &str) -> PathBuf {
        self.cfg.root.join("sandboxes").join(id)
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.cfg.state.join("containers").join(id)
    }
}

/// Runs blocking work (disk, metadata, CNI) off the async reactor.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> crate::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| crate::Error::FailedPrecondition(format!("worker failed: {e}")))?
}
