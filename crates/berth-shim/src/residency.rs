//! What an idle shim keeps resident. A shim lives as long as its container and is idle
//! nearly all that time, yet starting it and creating the container ran most of its code:
//! once a second has passed with no call, it gives back the heap's free pages and drops its
//! mappings of its own binary's read-only pages. Those pages stay in the page cache (shared
//! by every shim), and what the shim runs later maps them again with a minor fault; pages a
//! process has written to (copy-on-write, such as relocated data) are never dropped.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long the shim must go without a call before it lets go.
const QUIET: Duration = Duration::from_secs(1);

/// Counts calls, so that a release waits for the shim to be quiet.
#[derive(Default)]
pub struct Quiet {
    calls: AtomicU64,
}

impl Quiet {
    /// A call finished: release the shim's idle memory if no other call follows within
    /// `QUIET`. Needs a tokio runtime.
    pub fn after_call(self: &Arc<Self>) {
        let seen = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(QUIET).await;
            if this.calls.load(Ordering::SeqCst) == seen {
                release();
            }
        });
    }
}

/// Gives the heap's free pages back and drops the mappings of the binary's untouched pages.
/// Runs on the shim's one runtime thread when nothing else is going on: the reads are of
/// the process's own /proc files (memory, a fraction of a millisecond), and a blocking
/// thread would cost the shim more memory than this gives back.
pub fn release() {
    // SAFETY: malloc_trim only walks glibc's own heap bookkeeping; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    for (start, end) in clean_mappings_of(&smaps, &exe) {
        // SAFETY: the range is a whole mapping of the executable that is not writable and
        // holds no page of the process's own (no copy-on-write copy): its contents are the
        // file's, which a later access maps again unchanged. No Rust object lives there.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

/// The mappings in `smaps` of the file `exe` that are not writable and have no anonymous
/// (copied-on-write) pages.
fn clean_mappings_of(smaps: &str, exe: &Path) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    // The mapping being read: its range, and whether it may be dropped so far.
    let mut current: Option<(usize, usize, bool)> = None;
    let finish = |c: Option<(usize, usize, bool)>, out: &mut Vec<(usize, usize)>| {
        if let Some((s, e, true)) = c {
            out.push((s, e));
        }
    };
    for line in smaps.lines() {
        if let Some((s, e, perms, path)) = mapping_header(line) {
            finish(current.take(), &mut out);
            let ours = Path::new(path) == exe && !perms.contains('w') && perms.starts_with('r');
            current = Some((s, e, ours));
        } else if let Some(kb) = line.strip_prefix("Anonymous:") {
            let anon = kb.trim().trim_end_matches("kB").trim();
            if anon != "0" {
                if let Some(c) = current.as_mut() {
                    c.2 = false;
                }
            }
        }
    }
    finish(current, &mut out);
    out
}

/// `start-end perms offset dev inode path` → (start, end, perms, path).
fn mapping_header(line: &str) -> Option<(usize, usize, &str, &str)> {
    let mut f = line.split_whitespace();
    let (range, perms) = (f.next()?, f.next()?);
    let (s, e) = range.split_once('-')?;
    let (s, e) = (
        usize::from_str_radix(s, 16).ok()?,
        usize::from_str_radix(e, 16).ok()?,
    );
    if perms.len() != 4 {
        return None;
    }
    let (_offset, _dev, _inode) = (f.next()?, f.next()?, f.next()?);
    Some((s, e, perms, f.next().unwrap_or("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_binarys_read_only_mappings_without_copies_are_dropped() {
        let smaps = "\
00200000-00345000 r--p 00000000 00:2a 123 /usr/bin/shim
Rss:                 704 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
00345000-005cd000 r-xp 00144000 00:2a 123 /usr/bin/shim
Rss:                 864 kB
Anonymous:             0 kB
005cd000-005d2000 r--p 003cc000 00:2a 123 /usr/bin/shim
Rss:                  20 kB
Anonymous:            20 kB
005d2000-005d6000 rw-p 003d0000 00:2a 123 /usr/bin/shim
Anonymous:             4 kB
7f0000000000-7f0000001000 r--p 00000000 00:2a 9 /usr/lib/other.so
Anonymous:             0 kB
0c5d4000-0c5fe000 rw-p 00000000 00:00 0 [heap]
Anonymous:           160 kB
";
        assert_eq!(
            clean_mappings_of(smaps, Path::new("/usr/bin/shim")),
            vec![(0x200000, 0x345000), (0x345000, 0x5cd000)]
        );
        assert!(clean_mappings_of(smaps, Path::new("/usr/bin/other")).is_empty());
    }

    #[test]
    fn releasing_leaves_the_running_binary_working() {
        // This test binary drops its own clean pages and goes on running its code.
        release();
        let v: Vec<u64> = (0..1000).collect();
        assert_eq!(v.iter().sum::<u64>(), 499_500);
        release();
        assert_eq!(format!("{}", 42), "42");
    }
}
