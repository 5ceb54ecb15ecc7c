//! The handles the Kubernetes model works with — stores, the runtime, CNI, the event
//! buses — shared by its resource modules (pods, containers, images, stats), which hold
//! no state of their own beyond what lives here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use berth_core::events::EventBus;
use berth_core::gc::Scheduler;
use berth_core::images::ImageStores;
use berth_registry::pull::Puller;
use berth_runtime::ShimManager;
use tokio::sync::{broadcast, watch};

use crate::cni::Cni;
use crate::logs::ContainerLog;
use crate::store::CriStore;

#[derive(Debug, Clone)]
pub struct CriConfig {
    /// Durable files of pods (hostname, hosts, resolv.conf) and CNI results.
    pub root: PathBuf,
    /// Namespaces, /dev/shm and fifos of pods and containers.
    pub state: PathBuf,
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

/// A running container's log: the file, and a flag its copiers watch for the exit; what
/// they copy is also offered to attached clients, and the container's stdin (when its
/// config asked for one) is held open here for them.
pub struct LiveLog {
    pub log: Arc<ContainerLog>,
    pub exited: watch::Sender<bool>,
    pub copiers: Vec<tokio::task::JoinHandle<()>>,
    /// The copiers hold the strong ends: the channel closes when the output has ended.
    pub output: broadcast::WeakSender<crate::logs::Chunk>,
    pub stdin: Option<Arc<tokio::sync::Mutex<Option<tokio::net::unix::pipe::Sender>>>>,
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
    pub oom_floor: OomFloor,
}

/// The lowest `oom_score_adj` berthd can give the processes it starts. Lowering a score
/// below one's own takes CAP_SYS_RESOURCE; without it (as in many VMs and nested
/// containers) a kubelet's −998 for sandboxes or −997 for Guaranteed pods would fail every
/// container, so such asks are raised to berthd's own score, logged once, and reported in
/// the CRI Status conditions.
#[derive(Debug)]
pub struct OomFloor {
    floor: i64,
    clamped: AtomicBool,
}

const CAP_SYS_RESOURCE: u32 = 24;

impl OomFloor {
    /// The floor of this process: −1000 with CAP_SYS_RESOURCE, else its own score.
    pub fn probe() -> OomFloor {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let effective = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        let own = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        OomFloor::new(effective & (1 << CAP_SYS_RESOURCE) != 0, own)
    }

    pub fn new(can_lower: bool, own: i64) -> OomFloor {
        OomFloor {
            floor: if can_lower { -1000 } else { own },
            clamped: AtomicBool::new(false),
        }
    }

    /// The score to give a process that asks for `want`.
    pub fn clamp(&self, want: i64) -> i64 {
        if want >= self.floor {
            return want;
        }
        if !self.clamped.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                asked = want,
                given = self.floor,
                "berthd lacks CAP_SYS_RESOURCE: oom_score_adj below its own cannot be set, so it is raised to berthd's own (reported once)"
            );
        }
        self.floor
    }

    /// Why scores were raised, once they have been.
    pub fn clamped(&self) -> Option<String> {
        self.clamped.load(Ordering::Relaxed).then(|| {
            format!(
                "berthd lacks CAP_SYS_RESOURCE; oom_score_adj values below {} were raised to {}",
                self.floor, self.floor
            )
        })
    }
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

#[cfg(test)]
mod tests {
    use super::OomFloor;

    #[test]
    fn scores_below_the_floor_are_raised_and_reported() {
        let f = OomFloor::new(false, 0);
        assert_eq!(f.clamp(1000), 1000);
        assert_eq!(f.clamped(), None);
        assert_eq!(f.clamp(-998), 0);
        assert!(f.clamped().unwrap().contains("CAP_SYS_RESOURCE"));
        let f = OomFloor::new(true, 0);
        assert_eq!(f.clamp(-998), -998);
        assert_eq!(f.clamped(), None);
    }
}
