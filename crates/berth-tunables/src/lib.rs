//! glibc keeps up to seven freed chunks of every small size in a cache per thread, out of
//! reach of `malloc_trim`. A process that lives as long as berthd or a shim server keeps
//! those chunks scattered over its heap for good: after 200 concurrent container runs they
//! held about 2 MB of berthd resident, and a shim's heap in use crept up with every exec
//! (151 KiB idle, 186 KiB after 3,100 execs, flat at 130 KiB without the caches). The
//! caches can only be turned off through the `GLIBC_TUNABLES` environment variable, which
//! glibc reads when a process starts: so the process is started (or starts itself again)
//! with [`start_without_thread_caches`], and the caller's own value travels beside it in
//! [`CALLERS_TUNABLES`] so that [`restore_callers_tunables`] can put it back before the
//! process starts anything of its own (runtimes, loggers, containers).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// The tunable that turns glibc's per-thread caches off.
const NO_THREAD_CACHES: &str = "glibc.malloc.tcache_count=0";

/// Set beside `GLIBC_TUNABLES` to the caller's own value of it (possibly empty).
pub const CALLERS_TUNABLES: &str = "BERTH_CALLERS_GLIBC_TUNABLES";

/// The `GLIBC_TUNABLES` to start a resident process with: the caller's tunables with the
/// thread caches turned off, or None when the caller chose a cache size itself (or is
/// already such a process, so that nothing is appended twice).
fn with_no_thread_caches(callers: &OsStr) -> Option<OsString> {
    let set_by_caller = callers
        .as_bytes()
        .split(|b| *b == b':')
        .any(|t| t.starts_with(b"glibc.malloc.tcache_count="));
    if set_by_caller {
        return None;
    }
    let mut out = callers.as_bytes().to_vec();
    if !out.is_empty() {
        out.push(b':');
    }
    out.extend_from_slice(NO_THREAD_CACHES.as_bytes());
    Some(OsString::from_vec(out))
}

/// Sets `command` to start without glibc's thread caches, keeping this process's own
/// `GLIBC_TUNABLES` beside it for [`restore_callers_tunables`]. Returns false, leaving the
/// command as it was, when this process's tunables size the caches already.
pub fn start_without_thread_caches(command: &mut std::process::Command) -> bool {
    let callers = std::env::var_os("GLIBC_TUNABLES").unwrap_or_default();
    let Some(tunables) = with_no_thread_caches(&callers) else {
        return false;
    };
    command
        .env("GLIBC_TUNABLES", tunables)
        .env(CALLERS_TUNABLES, callers);
    true
}

/// In a process started so by [`start_without_thread_caches`]: puts the caller's `GLIBC_TUNABLES`
/// back, so that what this process starts inherits the caller's environment. Returns
/// whether the process was so started.
///
/// # Safety
/// Changes the environment: no other thread may exist yet.
pub unsafe fn restore_callers_tunables() -> bool {
    let Some(callers) = std::env::var_os(CALLERS_TUNABLES) else {
        return false;
    };
    if callers.is_empty() {
        std::env::remove_var("GLIBC_TUNABLES");
    } else {
        std::env::set_var("GLIBC_TUNABLES", &callers);
    }
    std::env::remove_var(CALLERS_TUNABLES);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_caches_are_turned_off_after_the_callers_tunables_unless_the_caller_sized_them() {
        assert_eq!(
            with_no_thread_caches(OsStr::new("")).unwrap(),
            "glibc.malloc.tcache_count=0"
        );
        assert_eq!(
            with_no_thread_caches(OsStr::new("glibc.malloc.arena_max=1")).unwrap(),
            "glibc.malloc.arena_max=1:glibc.malloc.tcache_count=0"
        );
        assert_eq!(
            with_no_thread_caches(OsStr::new(
                "glibc.malloc.mxfast=0:glibc.malloc.tcache_count=3"
            )),
            None
        );
        // A longer name that only starts alike is not the caller's choice.
        assert!(with_no_thread_caches(OsStr::new("glibc.malloc.tcache_counts=1")).is_some());
    }

    #[test]
    fn the_callers_tunables_are_put_back_and_the_carrier_removed() {
        // SAFETY: the only test of this crate that touches the environment.
        unsafe {
            assert!(!restore_callers_tunables());
            std::env::set_var("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0");
            std::env::set_var(CALLERS_TUNABLES, "glibc.malloc.arena_max=2");
            assert!(restore_callers_tunables());
            assert_eq!(
                std::env::var("GLIBC_TUNABLES").unwrap(),
                "glibc.malloc.arena_max=2"
            );
            assert!(std::env::var_os(CALLERS_TUNABLES).is_none());
            std::env::set_var(CALLERS_TUNABLES, "");
            assert!(restore_callers_tunables());
            assert!(std::env::var_os("GLIBC_TUNABLES").is_none());
        }
    }
}
