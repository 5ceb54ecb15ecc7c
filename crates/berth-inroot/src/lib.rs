//! Opening a path inside a directory tree (a layer being unpacked, an image's `/etc`, a
//! container's root) as if that directory were `/`: an absolute path or symlink starts again
//! at the directory, `..` never climbs above it, and nothing resolves to a file outside it.
//!
//! The kernel does this itself with `openat2(RESOLVE_IN_ROOT)` since Linux 5.6, in one call,
//! and that is what [`open`] uses. Where the kernel has no `openat2` (`ENOSYS`: an older
//! kernel, or a sandbox whose seccomp filter does not know the call) the same resolution is
//! walked here one component at a time: every component is opened with `O_NOFOLLOW` relative
//! to the directory before it, a symlink's target is read and spliced into the rest of the
//! path, and `..` goes back to a directory already held open rather than asking the kernel
//! for a parent, so that a directory renamed away during the walk cannot lead out. A
//! component swapped for a symlink between two steps makes the open fail (`ELOOP` or
//! `ENOTDIR`) instead of following it.
//!
//! Where the walk and the kernel differ: the walk treats a procfs magic link as the plain
//! path it reads as (still inside the root), where `RESOLVE_NO_MAGICLINKS` refuses it.

use std::{
    os::unix::ffi::OsStrExt,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use rustix::{
    fd::{AsFd, BorrowedFd, OwnedFd},
    fs::{FileType, Mode, OFlags, ResolveFlags},
    io::{Errno, Result},
};

/// Symlinks followed in one resolution before it fails with `ELOOP`, as Linux's limit.
const MAX_SYMLINKS: usize = 40;

/// Times an `openat2` that saw a concurrent rename (`EAGAIN`) is tried again before the
/// walk takes over.
const RENAME_RETRIES: usize = 4;

/// Set once `openat2` has answered `ENOSYS`: this kernel does not have it.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens `path` inside `root` with `flags` (and `mode` when it creates), resolved as if
/// `root` were `/`. An empty path or `/` opens `root` itself. `O_CLOEXEC` is always added.
pub fn open(root: impl AsFd, path: impl AsRef<Path>, flags: OFlags, mode: Mode) -> Result<OwnedFd> {
    let root = root.as_fd();
    let path = path.as_ref();
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let rel = relative(path);
        for _ in 0..RENAME_RETRIES {
            match rustix::fs::openat2(
                root,
                rel,
                flags | OFlags::CLOEXEC,
                mode,
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                Err(Errno::NOSYS) => {
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                    break;
                }
                Err(Errno::AGAIN) => continue,
                result => return result,
            }
        }
    }
    walk(root, path, flags, mode)
}

/// The path as `openat2` takes it relative to the root: leading slashes dropped, `.` for
/// the root itself.
fn relative(path: &Path) -> &Path {
    let bytes = path.as_os_str().as_bytes();
    let start = bytes.iter().position(|b| *b != b'/').unwrap_or(bytes.len());
    if start == bytes.len() {
        Path::new(".")
    } else {
        Path::new(std::ffi::OsStr::from_bytes(&bytes[start..]))
    }
}

/// The components of `path` still to resolve, last first (so that `pop` gives the next
/// one), without empty and `.` parts.
fn components(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .rev()
        .map(<[u8]>::to_vec)
        .collect()
}

/// The resolution `openat2(RESOLVE_IN_ROOT)` does, in user space.
fn walk(root: BorrowedFd<'_>, path: &Path, mut flags: OFlags, mode: Mode) -> Result<OwnedFd> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() > 1 && bytes.ends_with(b"/") {
        // As in the kernel, a trailing slash asks for a directory.
        flags |= OFlags::DIRECTORY;
    }
    let mut pending = components(bytes);
    // The directories below the root that the walk is in, each held open (`O_PATH`); `..`
    // drops the last. Empty: at the root.
    let mut dirs: Vec<OwnedFd> = Vec::new();
    let mut symlinks = 0;
    loop {
        let at = dirs.last().map_or(root, AsFd::as_fd);
        let Some(name) = pending.pop() else {
            // The path ended on the directory the walk is in (or was empty).
            return rustix::fs::openat(at, ".", flags | OFlags::CLOEXEC, mode);
        };
        if name == b".." {
            dirs.pop();
            continue;
        }
        let name = std::ffi::OsStr::from_bytes(&name);
        let last = pending.is_empty();
        if last
            && (flags.contains(OFlags::NOFOLLOW) || flags.contains(OFlags::CREATE | OFlags::EXCL))
        {
            // The final component is not followed: opened (or created) as it is.
            return rustix::fs::openat(at, name, flags | OFlags::CLOEXEC, mode);
        }
        let step = match rustix::fs::openat(
            at,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Err(Errno::NOENT) if last && flags.contains(OFlags::CREATE) => {
                return rustix::fs::openat(
                    at,
                    name,
                    flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    mode,
                );
            }
            other => other?,
        };
        match FileType::from_raw_mode(rustix::fs::fstat(&step)?.st_mode) {
            FileType::Symlink => {
                symlinks += 1;
                if symlinks > MAX_SYMLINKS {
                    return Err(Errno::LOOP);
                }
                let target = rustix::fs::readlinkat(&step, "", Vec::new())?;
                let target = target.as_bytes();
                if target.is_empty() {
                    return Err(Errno::NOENT);
                }
                if target.starts_with(b"/") {
                    dirs.clear();
                }
                if target.ends_with(b"/") && last {
                    flags |= OFlags::DIRECTORY;
                }
                pending.extend(components(target));
            }
            FileType::Directory if !last => dirs.push(step),
            _ if !last => return Err(Errno::NOTDIR),
            _ => {
                // Opened again with the caller's flags, still without following: a symlink
                // put there since the look above fails rather than being followed.
                let fd =
                    rustix::fs::openat(at, name, flags | OFlags::NOFOLLOW | OFlags::CLOEXEC, mode)?;
                if flags.contains(OFlags::PATH)
                    && FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) == FileType::Symlink
                {
                    return Err(Errno::LOOP);
                }
                return Ok(fd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A tree with the ways out a layer or an image might try.
    fn tree() -> (tempfile::TempDir, OwnedFd) {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::create_dir_all(r.join("d/sub")).unwrap();
        std::fs::create_dir_all(r.join("new")).unwrap();
        std::fs::write(r.join("file"), "f").unwrap();
        symlink("/etc", r.join("abs")).unwrap();
        symlink("../../../../etc", r.join("up")).unwrap();
        symlink("..", r.join("d/back")).unwrap();
        symlink("loop2", r.join("loop1")).unwrap();
        symlink("loop1", r.join("loop2")).unwrap();
        symlink("/etc/", r.join("slash")).unwrap();
        symlink("sub/../../abs/passwd", r.join("d/chain")).unwrap();
        let fd = rustix::fs::open(r, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        (dir, fd)
    }

    /// What an open came to: the file's device and inode, or the error.
    type Outcome = std::result::Result<(u64, u64), Errno>;

    fn outcome(r: Result<OwnedFd>) -> Outcome {
        r.map(|fd| {
            let st = rustix::fs::fstat(&fd).unwrap();
            (st.st_dev, st.st_ino)
        })
    }

    fn ino(path: &Path) -> (u64, u64) {
        let st = rustix::fs::lstat(path).unwrap();
        (st.st_dev, st.st_ino)
    }

    #[test]
    fn the_walk_resolves_as_the_kernel_does() {
        let (dir, root) = tree();
        let passwd = Ok(ino(&dir.path().join("etc/passwd")));
        let etc = Ok(ino(&dir.path().join("etc")));
        let rd = OFlags::RDONLY;
        let cases: &[(&str, OFlags, Outcome)] = &[
            ("etc/passwd", rd, passwd),
            ("/etc/passwd", rd, passwd),
            ("abs/passwd", rd, passwd),
            ("up/passwd", rd, passwd),
            ("../../etc/passwd", rd, passwd),
            ("d/back/etc/passwd", rd, passwd),
            ("d/sub/../../etc/./passwd", rd, passwd),
            ("d/chain", rd, passwd),
            ("abs", rd | OFlags::DIRECTORY, etc),
            ("slash", rd, etc),
            (
                "abs",
                OFlags::PATH | OFlags::NOFOLLOW,
                Ok(ino(&dir.path().join("abs"))),
            ),
            ("", rd, Ok(ino(dir.path()))),
            ("/", rd, Ok(ino(dir.path()))),
            ("..", rd, Ok(ino(dir.path()))),
            ("loop1", rd, Err(Errno::LOOP)),
            ("file/x", rd, Err(Errno::NOTDIR)),
            ("file/", rd, Err(Errno::NOTDIR)),
            ("missing", rd, Err(Errno::NOENT)),
            ("missing/x", rd, Err(Errno::NOENT)),
            ("abs", rd | OFlags::NOFOLLOW, Err(Errno::LOOP)),
        ];
        for (path, flags, want) in cases {
            let kernel = outcome(rustix::fs::openat2(
                &root,
                relative(Path::new(path)),
                *flags | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ));
            let walked = outcome(walk(root.as_fd(), Path::new(path), *flags, Mode::empty()));
            assert_eq!(&kernel, want, "openat2 of {path:?}");
            assert_eq!(&walked, want, "walk of {path:?}");
            assert_eq!(outcome(open(&root, path, *flags, Mode::empty())), *want);
        }
    }

    #[test]
    fn creating_through_a_dangling_symlink_stays_inside() {
        let (dir, root) = tree();
        symlink("/new/made", dir.path().join("dangling")).unwrap();
        let flags = OFlags::WRONLY | OFlags::CREATE;
        let fd = walk(
            root.as_fd(),
            Path::new("dangling"),
            flags,
            Mode::from_raw_mode(0o600),
        )
        .unwrap();
        rustix::io::write(&fd, b"in").unwrap();
        assert_eq!(std::fs::read(dir.path().join("new/made")).unwrap(), b"in");
        // Exclusive creation never follows the final symlink.
        assert_eq!(
            outcome(walk(
                root.as_fd(),
                Path::new("dangling"),
                flags | OFlags::EXCL,
                Mode::from_raw_mode(0o600)
            )),
            Err(Errno::EXIST)
        );
        // A missing file is created where the path says.
        walk(
            root.as_fd(),
            Path::new("d/sub/x"),
            flags,
            Mode::from_raw_mode(0o600),
        )
        .unwrap();
        assert!(dir.path().join("d/sub/x").is_file());
    }

    /// Makes `openat2` answer `ENOSYS` for the calling thread only, as a kernel older than
    /// 5.6 (or a sandbox that does not know the call) would.
    #[cfg(target_arch = "x86_64")]
    fn refuse_openat2_in_this_thread() {
        const NR_OPENAT2: u32 = 437;
        let filter = [
            // The syscall number, at offset 0 of seccomp_data.
            libc::sock_filter {
                code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
                jt: 0,
                jf: 0,
                k: 0,
            },
            libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                jt: 0,
                jf: 1,
                k: NR_OPENAT2,
            },
            libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
            },
            libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ALLOW,
            },
        ];
        let program = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: plain prctl calls; both attributes (no_new_privs, the filter) belong to the
        // calling thread alone, and `program` points at `filter`, which outlives the call
        // (the kernel copies the program).
        unsafe {
            assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
            assert_eq!(
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &program as *const libc::sock_fprog
                ),
                0
            );
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn without_openat2_open_walks_and_stays_inside() {
        let (dir, root) = tree();
        let passwd = ino(&dir.path().join("etc/passwd"));
        // A thread of its own: the filter dies with it. Other tests may then walk too, which
        // resolves the same.
        std::thread::spawn(move || {
            refuse_openat2_in_this_thread();
            assert_eq!(
                rustix::fs::openat2(
                    &root,
                    "etc",
                    OFlags::RDONLY,
                    Mode::empty(),
                    ResolveFlags::IN_ROOT
                )
                .unwrap_err(),
                Errno::NOSYS
            );
            for path in [
                "/etc/passwd",
                "up/passwd",
                "d/chain",
                "abs/../../etc/passwd",
            ] {
                let got = outcome(open(&root, path, OFlags::RDONLY, Mode::empty()));
                assert_eq!(got, Ok(passwd), "{path:?}");
            }
            assert!(NO_OPENAT2.load(Ordering::Relaxed));
            assert_eq!(
                outcome(open(&root, "loop1", OFlags::RDONLY, Mode::empty())),
                Err(Errno::LOOP)
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn too_many_symlinks_is_a_loop() {
        let (dir, root) = tree();
        // 41 links in a chain, each to the next: one more than the kernel follows.
        for i in 0..41 {
            symlink(format!("c{}", i + 1), dir.path().join(format!("c{i}"))).unwrap();
        }
        std::fs::write(dir.path().join("c41"), "end").unwrap();
        assert_eq!(
            outcome(walk(
                root.as_fd(),
                Path::new("c0"),
                OFlags::RDONLY,
                Mode::empty()
            )),
            Err(Errno::LOOP)
        );
        assert!(walk(root.as_fd(), Path::new("c1"), OFlags::RDONLY, Mode::empty()).is_ok());
    }
}
