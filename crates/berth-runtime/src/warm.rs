//! The kernel's cgroup lock made ready before a container's processes are moved. Every write
//! to a `cgroup.procs` file takes the cgroup threadgroup lock for writing, and the first
//! writer after a quiet spell waits for an RCU grace period (~7.7 ms on this VM) before it
//! gets it; writers in the grace period after that find it ready (0.08 ms). The runtime's
//! moves come in a create's critical path, so berthd pays the wait early and off it: when a
//! client prepares a container's rootfs snapshot or creates a container record (a task
//! usually follows within milliseconds: `ctr run`, Docker) and when a task create arrives.
//! A thread of the blocking pool moves berthd into the cgroup it is already in, which
//! changes nothing but takes the lock.
//! The shim does the same from its side when it starts (`berth-shim/src/warm.rs`); a warm
//! lock makes its move as cheap as the container's. Any failure is ignored: this only saves
//! time.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use berth_core::events::{Event, EventBus};

use crate::manager::lock;

/// A move that finished this recently has left the lock ready: another one would change
/// nothing.
const RECENT: Duration = Duration::from_millis(5);

pub struct CgroupWarmer {
    /// The `cgroup.procs` file of berthd's own cgroup in one of its hierarchies.
    procs: PathBuf,
    lock_state: Arc<Mutex<LockState>>,
}

/// Where the last warm-up is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum LockState {
    /// None yet, or its readiness has passed: the next one waits out a grace period.
    Cold,
    /// A warm-up is waiting for its grace period; another would only wait for the same.
    Warming,
    /// A warm-up got the lock; until then another would change nothing.
    ReadyUntil(Instant),
}

impl CgroupWarmer {
    /// The warmer for the cgroup this process is in, if it has one with a `cgroup.procs`
    /// under `/sys/fs/cgroup`.
    pub fn of_this_process() -> Option<Arc<Self>> {
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let procs = own_procs_file(&cgroups, Path::new("/sys/fs/cgroup"), std::process::id())?;
        Some(Arc::new(CgroupWarmer::at(procs)))
    }

    fn at(procs: PathBuf) -> Self {
        CgroupWarmer {
            procs,
            lock_state: Arc::new(Mutex::new(LockState::Cold)),
        }
    }

    /// Starts the grace period now on a blocking thread, unless one is under way or ended
    /// within `RECENT`. Returns whether it started one.
    pub fn warm(&self) -> bool {
        {
            let mut state = lock(&self.lock_state);
            match *state {
                LockState::Warming => return false,
                LockState::ReadyUntil(t) if Instant::now() < t => return false,
                _ => *state = LockState::Warming,
            }
        }
        let procs = self.procs.clone();
        let lock_state = self.lock_state.clone();
        // "0" moves the writing thread's whole process: berthd, into its own cgroup.
        tokio::task::spawn_blocking(move || {
            if let Err(e) = std::fs::write(&procs, "0") {
                tracing::debug!("cgroup warm-up through {}: {e}", procs.display());
            }
            *lock(&lock_state) = LockState::ReadyUntil(Instant::now() + RECENT);
        });
        true
    }

    /// Warms on every event that announces a container, for as long as the bus runs.
    pub fn follow(self: Arc<Self>, events: &EventBus) -> tokio::task::JoinHandle<()> {
        let mut rx = events.subscribe();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(e) if announces_a_container(&e.event) => {
                        self.warm();
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        })
    }
}

/// The `cgroup.procs` of this process's cgroup, looked for where hierarchies are mounted by
/// convention (`<root>/<controllers>` for v1, `<root>` or `<root>/unified` for v2) from its
/// `/proc/self/cgroup` lines. A candidate counts only if it lists `pid`: writing "0" there
/// then moves the process where it already is, whatever the mount table says.
fn own_procs_file(cgroups: &str, root: &Path, pid: u32) -> Option<PathBuf> {
    let pid = pid.to_string();
    cgroups
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let path = path.trim_start_matches('/');
            let dirs = if controllers.is_empty() {
                vec![root.join(path), root.join("unified").join(path)]
            } else {
                vec![root
                    .join(controllers.trim_start_matches("name="))
                    .join(path)]
            };
            Some(dirs)
        })
        .flatten()
        .map(|dir| dir.join("cgroup.procs"))
        .find(|procs| {
            std::fs::read_to_string(procs).is_ok_and(|text| text.lines().any(|l| l == pid))
        })
}

/// The events a container's create follows within milliseconds: its rootfs snapshot
/// prepared by a client (`ctr run`, Docker; not a layer's `extract-` snapshot of an unpack)
/// and its record created.
fn announces_a_container(e: &Event) -> bool {
    match e {
        Event::ContainerCreate { .. } => true,
        Event::SnapshotPrepare { key, .. } => !key.starts_with("extract-"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_warm_under_way_or_just_ended_is_enough_and_a_container_create_warms() {
        let dir = tempfile::tempdir().unwrap();
        let procs = dir.path().join("cgroup.procs");
        let w = Arc::new(CgroupWarmer::at(procs.clone()));
        assert!(w.warm());
        assert!(!w.warm());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !matches!(*lock(&w.lock_state), LockState::ReadyUntil(_)) {
            assert!(Instant::now() < deadline, "the warm-up never ended");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Ready: nothing to do until the readiness has passed.
        *lock(&w.lock_state) = LockState::ReadyUntil(Instant::now() + Duration::from_secs(60));
        assert!(!w.warm(), "while the lock is ready");
        *lock(&w.lock_state) = LockState::ReadyUntil(Instant::now() - Duration::from_millis(1));
        assert!(w.warm(), "once its readiness has passed");
        while !matches!(*lock(&w.lock_state), LockState::ReadyUntil(_)) {
            assert!(Instant::now() < deadline, "the warm-up never ended");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        *lock(&w.lock_state) = LockState::Cold;
        std::fs::remove_file(&procs).ok();

        let bus = EventBus::default();
        let follower = w.clone().follow(&bus);
        let ns = berth_core::Namespace::new("default").unwrap();
        bus.publish(
            &ns,
            Event::ContainerCreate {
                id: "c1".into(),
                image: String::new(),
                runtime: String::new(),
                runtime_options: None,
            },
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&procs).ok().as_deref() != Some("0") {
            assert!(
                Instant::now() < deadline,
                "no warm-up after a container create"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        follower.abort();
    }

    #[test]
    fn a_rootfs_prepare_and_a_container_create_announce_a_container() {
        let prepare = |key: &str| Event::SnapshotPrepare {
            key: key.into(),
            parent: "sha256:p".into(),
            snapshotter: "overlayfs".into(),
        };
        assert!(announces_a_container(&prepare("c1")));
        assert!(!announces_a_container(&prepare("extract-1-sha256:abc")));
        assert!(!announces_a_container(&Event::ContainerDelete {
            id: "c1".into()
        }));
    }

    #[test]
    fn the_procs_file_is_one_that_lists_this_process() {
        let root = tempfile::tempdir().unwrap();
        let file = |rel: &str, text: &str| {
            let p = root.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        // The memory hierarchy's directory exists but does not list the process: skipped.
        file("memory/a/b/cgroup.procs", "1\n2\n");
        file("cpu,cpuacct/a/cgroup.procs", "7\n42\n");
        file("unified/a/cgroup.procs", "42\n");
        let cgroups = "5:memory:/a/b\n4:cpu,cpuacct:/a\n0::/a\n";
        assert_eq!(
            own_procs_file(cgroups, root.path(), 42),
            Some(root.path().join("cpu,cpuacct/a/cgroup.procs"))
        );
        assert_eq!(
            own_procs_file("0::/a\n", root.path(), 42),
            Some(root.path().join("unified/a/cgroup.procs"))
        );
        assert_eq!(own_procs_file(cgroups, root.path(), 9), None);
        assert_eq!(own_procs_file("garbage", root.path(), 42), None);
    }

    #[test]
    fn this_process_has_a_cgroup_to_warm() {
        let w = CgroupWarmer::of_this_process().expect("a cgroup.procs of this process");
        assert!(w.procs.ends_with("cgroup.procs") && w.procs.exists());
    }
}
