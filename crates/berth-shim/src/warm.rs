//! The wait a container's first move into a cgroup would pay, started early. Every write to
//! a `cgroup.procs` file takes the kernel's cgroup threadgroup lock for writing, and the first
//! writer after a quiet spell waits for an RCU grace period (7–20 ms here, the largest single
//! wait of a create) before it gets the lock; writers within a grace period after it find the
//! lock ready. So the shim has a child move itself into the cgroup the shim is in (which
//! changes nothing) as soon as it can: when the server starts, before berthd or containerd
//! has even sent the Create, and when a Create or Exec arrives. The grace period then passes
//! while the runtime starts, reads the config and prepares, and its moves of the container's
//! processes go through at once. Any failure is ignored: this only saves time.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::reaper::Reaper;

/// A move this recent is still waiting for its grace period or has just had it: another one
/// would change nothing.
const RECENT: Duration = Duration::from_millis(5);

pub struct CgroupWarmer {
    /// The `cgroup.procs` file of the shim's own cgroup in one of its hierarchies.
    procs: CString,
    last: Mutex<Option<Instant>>,
}

impl CgroupWarmer {
    /// The warmer for the cgroup this process is in, if it has one with a `cgroup.procs`.
    pub fn of_this_process() -> Option<Self> {
        let cgroup = containerd_shim::cgroup::get_cgroup(std::process::id()).ok()?;
        let procs = cgroup
            .subsystems()
            .iter()
            .map(|s| s.to_controller().path().join("cgroup.procs"))
            .find(|p| p.exists())?;
        Some(CgroupWarmer {
            procs: CString::new(procs.as_os_str().as_bytes()).ok()?,
            last: Mutex::new(None),
        })
    }

    /// Starts the grace period now, unless a move started it within `RECENT`. The child's
    /// exit goes to the reaper, which nobody waits on.
    pub fn warm(&self, reaper: &Reaper) {
        {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < RECENT) {
                return;
            }
            *last = Some(Instant::now());
        }
        reaper.track(|| self.fork_mover());
    }

    fn fork_mover(&self) -> Option<i32> {
        let path = self.procs.as_ptr();
        // SAFETY: the child makes only async-signal-safe calls (close_range or close, open,
        // write, _exit) on memory that was ready before the fork, so it is sound whatever
        // threads the shim has. It first closes every descriptor it inherited: it lives for
        // a grace period, and a pipe end it held would keep the reader at the other end from
        // its EOF that long (`start` waits for the server's stdout to close, the shim for a
        // container's output to end). "0" in `cgroup.procs` names the writer itself.
        match unsafe { libc::fork() } {
            -1 => None,
            // SAFETY: in the child, as said above: async-signal-safe calls only.
            0 => unsafe {
                if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) != 0 {
                    for fd in 0..4096 {
                        libc::close(fd);
                    }
                }
                let fd = libc::open(path, libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, c"0".as_ptr().cast(), 1);
                }
                libc::_exit(0)
            },
            pid => Some(pid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_mover_is_reaped_and_a_second_warm_within_a_moment_is_skipped() {
        let Some(w) = CgroupWarmer::of_this_process() else {
            return; // no cgroup file system here
        };
        assert!(w.procs.to_bytes().ends_with(b"/cgroup.procs"));
        let reaper = Reaper::new();
        w.warm(&reaper);
        let first = *w.last.lock().unwrap();
        w.warm(&reaper);
        assert_eq!(
            *w.last.lock().unwrap(),
            first,
            "a second move within RECENT"
        );
        // The child ends (moved or refused) and the reaper takes it as expected, not as an
        // unclaimed exit.
        for _ in 0..500 {
            reaper.reap();
            if reaper.tracked_and_unclaimed() == (0, 0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "the mover was not reaped: {:?}",
            reaper.tracked_and_unclaimed()
        );
    }
}
