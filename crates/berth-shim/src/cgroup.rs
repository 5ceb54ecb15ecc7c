//! A container's cgroup as the shim reads it: its processes, its metrics in containerd's
//! types, resource updates, and OOM kills (cgroup v1 `memory.oom_control` through an
//! eventfd, cgroup v2 `memory.events` through inotify).

use std::{
    fs::File,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use tokio::io::unix::AsyncFd;

use crate::error::Error;

/// The cgroup a container's init was put in, found once after create.
pub struct ContainerCgroup {
    cgroup: cgroups_rs::fs::Cgroup,
}

impl ContainerCgroup {
    pub fn of_pid(pid: i32) -> Result<Self, Error> {
        let cgroup = containerd_shim::cgroup::get_cgroup(pid as u32)
            .map_err(|e| Error::Other(format!("cgroup of pid {pid}: {e}")))?;
        Ok(ContainerCgroup { cgroup })
    }

    /// Every process in the cgroup. On cgroup v1 only the freezer's hierarchy is read: a
    /// hierarchy the runtime did not place the container in (a named or the unified one
    /// of a hybrid host) holds it at its root, with every process of the machine.
    pub fn pids(&self) -> Vec<u32> {
        use cgroups_rs::fs::Controller as _;
        let procs = if self.cgroup.v2() {
            self.cgroup.procs()
        } else {
            match self
                .cgroup
                .controller_of::<cgroups_rs::fs::freezer::FreezerController>()
            {
                Some(f) => f.procs(),
                None => self.cgroup.procs(),
            }
        };
        let mut pids: Vec<u32> = procs.into_iter().map(|p| p.pid as u32).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Metrics as containerd's `io.containerd.cgroups.v1.Metrics` or `.v2.Metrics`.
    pub fn metrics(&self) -> Result<Any, Error> {
        if self.cgroup.v2() {
            let metrics = containerd_shim::cgroup::collect_metrics_v2(&self.cgroup)
                .map_err(|e| Error::Other(format!("cgroup metrics: {e}")))?;
            Ok(crate::events::any("io.containerd.cgroups.v2", &metrics))
        } else {
            let mut metrics = containerd_shim::cgroup::collect_metrics(&self.cgroup)
                .map_err(|e| Error::Other(format!("cgroup metrics: {e}")))?;
            self.fill_v1(&mut metrics);
            Ok(crate::events::any("io.containerd.cgroups.v1", &metrics))
        }
    }

    /// What the shim crate's v1 collection leaves out: CPU time, which v1 keeps in
    /// `cpuacct.usage` (not `cpu.stat`), and the memory limit.
    fn fill_v1(&self, metrics: &mut containerd_shim_protos::cgroups::metrics::Metrics) {
        use cgroups_rs::fs::{cpuacct::CpuAcctController, memory::MemController};
        if let Some(acct) = self.cgroup.controller_of::<CpuAcctController>() {
            let usage = acct.cpuacct().usage;
            metrics.mut_cpu().mut_usage().set_total(usage);
        }
        if let Some(mem) = self.cgroup.controller_of::<MemController>() {
            let limit = mem.memory_stat().limit_in_bytes;
            if limit > 0 {
                metrics.mut_memory().mut_usage().set_limit(limit as u64);
            }
        }
    }

    /// Applies an OCI `LinuxResources` (JSON, as UpdateTask carries it).
    pub fn update(&self, resources_json: &[u8]) -> Result<(), Error> {
        let resources: oci_spec_shim::runtime::LinuxResources =
            serde_json::from_slice(resources_json).map_err(|e| {
                Error::InvalidArgument(format!("resources are not an OCI LinuxResources: {e}"))
            })?;
        containerd_shim::cgroup::update_resources(&self.cgroup, &resources)
            .map_err(|e| Error::Other(format!("update resources: {e}")))
    }
}

/// The memory cgroup directory of `pid` and whether it is cgroup v2.
pub fn memory_cgroup_dir(pid: i32) -> Option<(PathBuf, bool)> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    memory_dir_from(&cgroups, &mountinfo)
}

fn memory_dir_from(cgroups: &str, mountinfo: &str) -> Option<(PathBuf, bool)> {
    let mut unified = None;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            let mount = cgroup_mount(mountinfo, |fstype, options| {
                fstype == "cgroup" && options.split(',').any(|o| o == "memory")
            })?;
            return Some((join_cgroup(&mount, path), false));
        }
        if controllers.is_empty() {
            unified = Some(path.to_owned());
        }
    }
    let path = unified?;
    let mount = cgroup_mount(mountinfo, |fstype, _| fstype == "cgroup2")?;
    let dir = join_cgroup(&mount, &path);
    // On a hybrid host the v2 hierarchy has no memory controller.
    dir.join("memory.events").exists().then_some((dir, true))
}

fn join_cgroup(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

/// The mount point of the first cgroup filesystem `wanted` accepts.
fn cgroup_mount(mountinfo: &str, wanted: impl Fn(&str, &str) -> bool) -> Option<PathBuf> {
    mounts(mountinfo)
        .find(|(fstype, options, _)| wanted(fstype, options))
        .map(|(_, _, point)| point)
}

/// Every mount of a mount table (`/proc/self/mountinfo`) as (type, super options, mount
/// point); lines it cannot read are skipped.
pub fn mounts(mountinfo: &str) -> impl Iterator<Item = (&str, &str, PathBuf)> {
    mountinfo.lines().filter_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let mut post = post.split(' ');
        let (fstype, _source, options) = (post.next()?, post.next()?, post.next().unwrap_or(""));
        let point = pre.split(' ').nth(4)?;
        Some((fstype, options, PathBuf::from(point)))
    })
}

/// Watches the memory cgroup at `dir` and calls `on_oom` for each OOM kill in it, until
/// the cgroup goes away.
pub async fn watch_oom(dir: PathBuf, v2: bool, on_oom: impl Fn()) {
    let result = if v2 {
        watch_v2(&dir, &on_oom).await
    } else {
        watch_v1(&dir, &on_oom).await
    };
    if let Err(e) = result {
        log::warn!("OOM watch on {} ended: {e}", dir.display());
    }
}

async fn watch_v1(dir: &Path, on_oom: &impl Fn()) -> std::io::Result<()> {
    let efd: OwnedFd = rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )?;
    let control = File::open(dir.join("memory.oom_control"))?;
    std::fs::write(
        dir.join("cgroup.event_control"),
        format!("{} {}", efd.as_raw_fd(), control.as_raw_fd()),
    )?;
    // SAFETY: the AsyncFd owns the eventfd, so it stays open for as long as it is registered.
    let efd = unsafe { AsyncFd::register(efd) }?;
    loop {
        let mut guard = efd.readable().await?;
        let mut buf = [0u8; 8];
        match rustix::io::read(guard.get_inner(), &mut buf) {
            Ok(_) => {
                guard.clear_ready();
                // The eventfd also fires when the cgroup is removed.
                if !dir.join("memory.oom_control").exists() {
                    return Ok(());
                }
                on_oom();
            }
            Err(rustix::io::Errno::AGAIN) => guard.clear_ready(),
            Err(e) => return Err(e.into()),
        }
    }
}

fn oom_kills(events: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(events).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

async fn watch_v2(dir: &Path, on_oom: &impl Fn()) -> std::io::Result<()> {
    use rustix::fs::inotify;
    let events = dir.join("memory.events");
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
    inotify::add_watch(&fd, &events, inotify::WatchFlags::MODIFY)?;
    // SAFETY: the AsyncFd owns the inotify descriptor for as long as it is registered.
    let fd = unsafe { AsyncFd::register(fd) }?;
    let mut seen = oom_kills(&events).unwrap_or(0);
    loop {
        let mut guard = fd.readable().await?;
        let mut buf = [0u8; 1024];
        match rustix::io::read(guard.get_inner(), &mut buf) {
            Ok(_) => {
                guard.clear_ready();
                let Some(now) = oom_kills(&events) else {
                    return Ok(()); // the cgroup is gone
                };
                for _ in seen..now {
                    on_oom();
                }
                seen = seen.max(now);
            }
            Err(rustix::io::Errno::AGAIN) => guard.clear_ready(),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 30 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
30 25 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
31 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn v1_memory_directory_from_proc() {
        let cgroups = "12:cpu,cpuacct:/default/c1\n9:memory:/default/c1\n0::/default/c1\n";
        assert_eq!(
            memory_dir_from(cgroups, MOUNTINFO),
            Some((PathBuf::from("/sys/fs/cgroup/memory/default/c1"), false))
        );
    }

    #[test]
    fn no_memory_controller_means_no_watch() {
        // The v2 directory has no memory.events on a hybrid host.
        let cgroups = "0::/nonexistent-berth-test\n";
        assert_eq!(memory_dir_from(cgroups, MOUNTINFO), None);
        assert_eq!(memory_dir_from("garbage", MOUNTINFO), None);
    }

    #[test]
    fn oom_kill_count_is_read_from_memory_events() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("memory.events");
        std::fs::write(&events, "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n").unwrap();
        assert_eq!(oom_kills(&events), Some(2));
        assert_eq!(oom_kills(&dir.path().join("nope")), None);
    }
}
