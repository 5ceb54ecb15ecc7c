//! The layer applier: unpacks an OCI layer (tar, optionally gzip or zstd) into a snapshot
//! directory, producing the tree the image spec defines: whiteouts and opaque directories
//! remove what lower layers had, hardlinks, symlinks, devices, owners, modes, xattrs and
//! times are kept. Every path is resolved as if the snapshot were `/` (`berth-inroot`:
//! `openat2(RESOLVE_IN_ROOT)`, or the same walk in user space without it), so `..`, absolute
//! symlinks and symlinked parents can never reach outside the snapshot. A parent that is a
//! symlink in a lower layer is followed too, as on the merged view.
//!
//! Applied to an overlay upper directory, whiteouts are written in overlayfs' own form
//! (a 0/0 character device, `trusted.overlay.opaque=y`) instead of deleting anything.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

#[derive(Clone, Debug, Default)]
pub struct ApplyOptions {
    /// Write whiteouts as overlayfs does instead of deleting (for an overlay upper dir).
    pub overlay_whiteouts: bool,
    /// The overlay's lower directories, topmost first: a directory the layer needs but does
    /// not carry is made with the attributes the lowers give it (a copy-up).
    pub lowers: Vec<PathBuf>,
}

/// What was applied: digest and size of the uncompressed tar stream (the layer's diff id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub digest: Digest,
    pub size: u64,
    /// Directories the layer needed but did not carry, made on the way to its entries;
    /// with no lowers given, `copy_up` gives them their attributes once the lowers exist.
    pub implicit_dirs: Vec<PathBuf>,
}

/// Wraps a layer stream in the decompressor its first bytes call for.
pub fn decompress<'a>(r: impl Read + Send + 'a) -> Result<Box<dyn Read + Send + 'a>> {
    decompress_buffered(BufReader::with_capacity(1 << 20, r))
}

/// What a layer stream's first bytes say it is.
enum Compression {
    Gzip,
    Zstd,
    Plain,
}

impl Compression {
    fn of(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::Plain
        }
    }

    fn wrap<'a>(self, r: impl BufRead + Send + 'a) -> Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(r).map_err(Error::io("zstd", "layer"))?,
            ),
            Compression::Plain => Box::new(r),
        })
    }
}

/// `decompress` for a stream that buffers itself: the decoder reads its buffers in place.
pub fn decompress_buffered<'a>(
    mut r: impl BufRead + Send + 'a,
) -> Result<Box<dyn Read + Send + 'a>> {
    const MAGIC: usize = 4;
    let head = r.fill_buf().map_err(Error::io("read", "layer"))?;
    if head.len() >= MAGIC || head.is_empty() {
        return Compression::of(head).wrap(r);
    }
    // A first piece too short to tell: take the magic out and put it back in front.
    let mut magic = Vec::with_capacity(MAGIC);
    (&mut r)
        .take(MAGIC as u64)
        .read_to_end(&mut magic)
        .map_err(Error::io("read", "layer"))?;
    Compression::of(&magic).wrap(io::Cursor::new(magic).chain(r))
}

struct Hashing<R> {
    inner: R,
    hasher: Hasher,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

fn bad(entry: &str, why: &str) -> Error {
    Error::InvalidArgument(format!("layer entry {entry:?}: {why}"))
}

/// Splits a tar name into clean components: `.` and empty parts go, a leading `/` is
/// relative to the snapshot root, and `..` is refused outright.
pub fn clean_path(name: &[u8]) -> Result<Vec<OsString>> {
    let mut out = Vec::new();
    for part in name.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(bad(
                    &String::from_utf8_lossy(name),
                    "path contains \"..\" and would escape the snapshot",
                ))
            }
            p => out.push(OsString::from_vec(p.to_vec())),
        }
    }
    Ok(out)
}

fn join(parts: &[OsString]) -> PathBuf {
    let mut p = PathBuf::new();
    for c in parts {
        p.push(c);
    }
    p
}

/// Opens a directory below `root`, resolving symlinks as if `root` were `/`.
fn open_dir(root: &OwnedFd, rel: &[OsString]) -> io::Result<OwnedFd> {
    let p = join(rel);
    let p: &Path = if rel.is_empty() { Path::new(".") } else { &p };
    berth_inroot::open(root, p, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
        .map_err(io::Error::from)
}

/// Opens the parent directory, creating missing directories on the way. A dangling
/// symlink on the way is followed as the kernel would inside the root: its target is
/// created below the root, never outside it. A created directory takes mode, owner, times
/// and xattrs from the lower layers when they have it (else 0755, owned by root).
fn open_parent(root: &OwnedFd, parent: &[OsString], up: &mut CopyUp<'_>) -> io::Result<OwnedFd> {
    open_parent_depth(root, parent, 0, up)
}

fn open_parent_depth(
    root: &OwnedFd,
    parent: &[OsString],
    depth: u32,
    up: &mut CopyUp<'_>,
) -> io::Result<OwnedFd> {
    match open_dir(root, parent) {
        Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {}
        other => return other,
    }
    if depth > 40 {
        return Err(Errno::LOOP.into());
    }
    for i in 1..=parent.len() {
        match open_dir(root, &parent[..i]) {
            Ok(_) => continue,
            Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
                // A symlink of a lower layer is followed, as on the merged view containerd
                // applies to, rather than hidden behind a directory made here.
                let found = up.topmost(&parent[..i]);
                if let Lower::Symlink(target) = &found {
                    let resolved = through_symlink(parent, i, target);
                    return open_parent_depth(root, &resolved, depth + 1, up);
                }
                let up_dir = open_dir(root, &parent[..i - 1])?;
                let name = parent[i - 1].as_os_str();
                match rustix::fs::mkdirat(&up_dir, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) => up.copy(&up_dir, &parent[..i], found)?,
                    Err(Errno::EXIST) => {
                        let target = rustix::fs::readlinkat(&up_dir, name, Vec::new())?;
                        let resolved = through_symlink(parent, i, target.as_bytes());
                        return open_parent_depth(root, &resolved, depth + 1, up);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e),
        }
    }
    open_dir(root, parent)
}

/// `path` with its first `i` components replaced by where the symlink at `path[..i]`, whose
/// target is `target`, points: lexically, `..` never above the root.
fn through_symlink(path: &[OsString], i: usize, target: &[u8]) -> Vec<OsString> {
    let mut resolved: Vec<OsString> = if target.starts_with(b"/") {
        Vec::new()
    } else {
        path[..i - 1].to_vec()
    };
    for part in target.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                resolved.pop();
            }
            p => resolved.push(OsString::from_vec(p.to_vec())),
        }
    }
    resolved.extend_from_slice(&path[i..]);
    resolved
}

/// The lower layers of an overlay, for copying up the directories a layer adds to.
struct CopyUp<'a> {
    lowers: &'a [OwnedFd],
    /// Times to restore once the layer is written (creating children changes them).
    times: &'a mut Vec<DirTimes>,
    /// Every directory made this way.
    made: &'a mut Vec<Vec<OsString>>,
}

enum Lower {
    Dir(rustix::fs::Stat, OwnedFd),
    /// A symlink, with its target.
    Symlink(Vec<u8>),
    /// Deleted or replaced by a non-directory in this lower, or hidden by an opaque parent.
    Hidden,
    Absent,
}

fn is_whiteout(st: &rustix::fs::Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

fn look_in_lower(lower: &OwnedFd, rel: &[OsString]) -> Lower {
    let Some((name, parent)) = rel.split_last() else {
        return Lower::Absent;
    };
    if let Ok(pdir) = open_dir(lower, parent) {
        match rustix::fs::statat(&pdir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return match open_subdir(&pdir, name.as_os_str()) {
                    Ok(fd) => Lower::Dir(st, fd),
                    Err(_) => Lower::Hidden,
                };
            }
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                return match rustix::fs::readlinkat(&pdir, name.as_os_str(), Vec::new()) {
                    Ok(target) if !target.as_bytes().is_empty() => {
                        Lower::Symlink(target.into_bytes())
                    }
                    _ => Lower::Hidden,
                };
            }
            Ok(_) => return Lower::Hidden,
            Err(_) => {}
        }
    }
    // Not here: a whiteout or opaque directory on the way hides the lowers below this one.
    for k in 1..=rel.len() {
        let Some((n, p)) = rel[..k].split_last() else {
            continue;
        };
        let Ok(pdir) = open_dir(lower, p) else {
            return Lower::Absent;
        };
        match rustix::fs::statat(&pdir, n.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if is_whiteout(&st) => return Lower::Hidden,
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                let mut v = [0u8; 1];
                if k < rel.len()
                    && open_dir(lower, &rel[..k]).is_ok_and(|fd| {
                        rustix::fs::fgetxattr(&fd, OPAQUE_XATTR, &mut v).is_ok() && v[0] == b'y'
                    })
                {
                    return Lower::Hidden;
                }
            }
            Ok(_) => return Lower::Hidden,
            Err(_) => return Lower::Absent,
        }
    }
    Lower::Absent
}

impl CopyUp<'_> {
    /// What the topmost lower holding `rel` has there.
    fn topmost(&self, rel: &[OsString]) -> Lower {
        for lower in self.lowers {
            match look_in_lower(lower, rel) {
                Lower::Absent => continue,
                found => return found,
            }
        }
        Lower::Absent
    }

    /// Gives the directory just made at `rel` (in `parent`) the attributes of `found`, what
    /// the topmost lower has at that path, when it is a directory.
    fn copy(&mut self, parent: &OwnedFd, rel: &[OsString], found: Lower) -> io::Result<()> {
        let Some(name) = rel.last() else {
            return Ok(());
        };
        self.made.push(rel.to_vec());
        let Lower::Dir(st, from) = found else {
            return Ok(());
        };
        let fd = open_subdir(parent, name.as_os_str())?;
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(st.st_uid)),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
        )?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(st.st_mode & 0o7777))?;
        copy_xattrs(&from, &fd, &join(rel))?;
        self.times.push(DirTimes {
            path: rel.to_vec(),
            times: Timestamps {
                last_access: Timespec {
                    tv_sec: st.st_atime,
                    tv_nsec: st.st_atime_nsec as _,
                },
                last_modification: Timespec {
                    tv_sec: st.st_mtime,
                    tv_nsec: st.st_mtime_nsec as _,
                },
            },
        });
        Ok(())
    }
}

fn copy_xattrs(from: &OwnedFd, to: &OwnedFd, shown: &Path) -> io::Result<()> {
    // Linux caps a name list and a value at 64 KiB each.
    let mut names = vec![0u8; 64 << 10];
    let n = match rustix::fs::flistxattr(from, &mut names[..]) {
        Ok(n) => n,
        Err(Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut value = vec![0u8; 64 << 10];
    for key in names[..n].split(|b| *b == 0).filter(|k| !k.is_empty()) {
        let Ok(key) = std::str::from_utf8(key) else {
            continue;
        };
        if key.starts_with(OVERLAY_XATTR_PREFIX) {
            continue;
        }
        let len = rustix::fs::fgetxattr(from, key, &mut value[..])?;
        set_xattr(to, key, &value[..len], shown)?;
    }
    Ok(())
}

/// Sets an xattr with containerd's tolerance: a filesystem without xattrs, or a refused
/// `security.*` attribute, is skipped with a warning instead of failing the layer.
fn set_xattr(fd: &OwnedFd, key: &str, value: &[u8], shown: &Path) -> io::Result<()> {
    match rustix::fs::fsetxattr(fd, key, value, XattrFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Errno::NOTSUP) => {
            tracing::warn!(path = %shown.display(), key, "xattr not supported here; skipped");
            Ok(())
        }
        Err(Errno::PERM | Errno::ACCESS) if key.starts_with("security.") => {
            tracing::warn!(path = %shown.display(), key, "xattr refused; skipped");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes `name` in `dir` and, for a directory, everything below it, never following links.
pub fn remove_all_at(dir: &impl AsFd, name: &OsStr) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let sub = open_subdir(dir, name)?;
    clear_dir(&sub, &HashSet::new(), Path::new(""))?;
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The names in a directory, without `.` and `..`, read before any is changed.
fn entry_names(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let n = e?.file_name().to_bytes().to_vec();
        if n != b"." && n != b".." {
            names.push(OsString::from_vec(n));
        }
    }
    Ok(names)
}

/// Opens the directory `name` in `dir`, never following a symlink there.
fn open_subdir(dir: &impl AsFd, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Empties a directory except for the paths in `keep` (relative to the layer root).
fn clear_dir(dir: &OwnedFd, keep: &HashSet<PathBuf>, at: &Path) -> io::Result<()> {
    for n in entry_names(dir)? {
        if !keep.contains(&at.join(&n)) {
            remove_all_at(dir, &n)?;
        }
    }
    Ok(())
}

struct DirTimes {
    path: Vec<OsString>,
    times: Timestamps,
}

fn timestamps(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime as i64,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Applies the (possibly compressed) layer in `layer` onto the directory `root`.
pub fn apply_layer(
    root: &Path,
    layer: impl BufRead + Send,
    opts: &ApplyOptions,
) -> Result<Applied> {
    let rootfd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open", root)(e.into()))?;
    let lowers = opts
        .lowers
        .iter()
        .map(|l| {
            rustix::fs::open(
                l,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::io("open lower", l)(e.into()))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut hashing = Hashing {
        inner: decompress_buffered(layer)?,
        hasher: Hasher::new(),
        count: 0,
    };
    let implicit_dirs;
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let mut applier = Applier {
            root: &rootfd,
            overlay_whiteouts: opts.overlay_whiteouts,
            lowers: &lowers,
            created: HashSet::new(),
            times: Vec::new(),
            implicit: Vec::new(),
            buf: vec![0; 256 << 10],
        };
        let entries = archive
            .entries()
            .map_err(|e| Error::InvalidArgument(format!("layer is not a tar stream: {e}")))?;
        for entry in entries {
            let mut entry = entry
                .map_err(|e| Error::InvalidArgument(format!("corrupt layer tar stream: {e}")))?;
            applier.entry(&mut entry)?;
        }
        // Directory times last: creating their children changed them. The last word on a
        // directory (its own entry after a copy-up) wins.
        let mut done = HashSet::new();
        for d in applier.times.iter().rev() {
            if !done.insert(&d.path) {
                continue;
            }
            if let Ok(fd) = open_dir(&rootfd, &d.path) {
                let _ = rustix::fs::futimens(&fd, &d.times);
            }
        }
        implicit_dirs = std::mem::take(&mut applier.implicit)
            .into_iter()
            .map(|p| join(&p))
            .collect();
    }
    // The diff id covers the whole stream, including padding after the end-of-archive marker.
    io::copy(&mut hashing, &mut io::sink())
        .map_err(|e| Error::InvalidArgument(format!("corrupt layer stream: {e}")))?;
    Ok(Applied {
        digest: hashing.hasher.finish(),
        size: hashing.count,
        implicit_dirs,
    })
}

/// Gives directories a layer made without lowers (`Applied::implicit_dirs`, parents
/// first) the attributes the lowers, topmost first, have for them: the copy-up of a layer
/// written before the layers below it were.
pub fn copy_up(upper: &Path, lowers: &[PathBuf], dirs: &[PathBuf]) -> Result<()> {
    if dirs.is_empty() || lowers.is_empty() {
        return Ok(());
    }
    let open = |p: &Path| {
        rustix::fs::open(
            p,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io("open", p)(e.into()))
    };
    let root = open(upper)?;
    let lowers = lowers.iter().map(|l| open(l)).collect::<Result<Vec<_>>>()?;
    let mut times = Vec::new();
    let mut made = Vec::new();
    let mut up = CopyUp {
        lowers: &lowers,
        times: &mut times,
        made: &mut made,
    };
    let mut moved: Vec<Vec<OsString>> = Vec::new();
    for d in dirs {
        let rel = clean_path(d.as_os_str().as_bytes())?;
        if moved.iter().any(|m| rel.starts_with(m)) {
            continue; // went with the directory above it
        }
        let Some((_, parent)) = rel.split_last() else {
            continue;
        };
        // Where a lower layer has a symlink, the layer's entries below it belong where the
        // symlink points, as they would have gone had the layer been applied onto its lowers.
        let found = up.topmost(&rel);
        if let Lower::Symlink(target) = &found {
            let to = through_symlink(&rel, rel.len(), target);
            if !to.starts_with(&rel) {
                move_below(&root, &rel, &to, &mut up)
                    .map_err(Error::io("move what the layer put below", upper.join(d)))?;
                moved.push(rel);
                continue;
            }
        }
        if !moved.is_empty() && open_dir(&root, &rel).is_err() {
            continue; // an entry moved here from below a lower's symlink replaced it
        }
        let pfd = open_dir(&root, parent).map_err(Error::io("open", upper.join(d)))?;
        up.copy(&pfd, &rel, found)
            .map_err(Error::io("copy up", upper.join(d)))?;
    }
    for t in times.iter().rev() {
        if let Ok(fd) = open_dir(&root, &t.path) {
            let _ = rustix::fs::futimens(&fd, &t.times);
        }
    }
    Ok(())
}

/// Moves the entries of the directory `from` (one this layer made where a lower layer has a
/// symlink) into the directory `to`, made (with copy-ups) if the layer lacks it, and removes
/// `from`. Where both hold an entry of a name, two directories merge and otherwise the moved
/// entry wins.
fn move_below(
    root: &OwnedFd,
    from: &[OsString],
    to: &[OsString],
    up: &mut CopyUp<'_>,
) -> io::Result<()> {
    let src = open_dir(root, from)?;
    let dst = open_parent(root, to, up)?;
    if same_file(&src, &dst)? {
        return Ok(()); // the symlink leads back here: nothing to move
    }
    merge_into(&src, &dst)?;
    keep_opaque(&src, &dst)?;
    let (name, parent) = from
        .split_last()
        .expect("a moved directory is not the root");
    rustix::fs::unlinkat(
        open_dir(root, parent)?,
        name.as_os_str(),
        AtFlags::REMOVEDIR,
    )?;
    Ok(())
}

/// An opaque marker the layer put on a directory it moves goes with its entries: it hides
/// what the lowers have where they now are.
fn keep_opaque(from: &OwnedFd, to: &OwnedFd) -> io::Result<()> {
    let mut v = [0u8; 1];
    if rustix::fs::fgetxattr(from, OPAQUE_XATTR, &mut v).is_ok_and(|n| n == 1 && v[0] == b'y') {
        rustix::fs::fsetxattr(to, OPAQUE_XATTR, b"y", XattrFlags::empty())?;
    }
    Ok(())
}

fn same_file(a: &OwnedFd, b: &OwnedFd) -> io::Result<bool> {
    let (a, b) = (rustix::fs::fstat(a)?, rustix::fs::fstat(b)?);
    Ok((a.st_dev, a.st_ino) == (b.st_dev, b.st_ino))
}

fn merge_into(src: &OwnedFd, dst: &OwnedFd) -> io::Result<()> {
    for name in entry_names(src)? {
        let is_dir = |at: &OwnedFd| {
            rustix::fs::statat(at, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
        };
        match rustix::fs::renameat_with(
            src,
            name.as_os_str(),
            dst,
            name.as_os_str(),
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {}
            Err(Errno::EXIST) if is_dir(src) && is_dir(dst) => {
                let (from, into) = (open_subdir(src, &name)?, open_subdir(dst, &name)?);
                if !same_file(&from, &into)? {
                    merge_into(&from, &into)?;
                    keep_opaque(&from, &into)?;
                    rustix::fs::unlinkat(src, name.as_os_str(), AtFlags::REMOVEDIR)?;
                }
            }
            Err(Errno::EXIST) => {
                // Not two directories: what was there goes (rename cannot put a directory
                // over a file, nor anything over a non-empty directory).
                remove_all_at(dst, &name)?;
                rustix::fs::renameat(src, name.as_os_str(), dst, name.as_os_str())?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

struct Applier<'a> {
    root: &'a OwnedFd,
    overlay_whiteouts: bool,
    lowers: &'a [OwnedFd],
    /// Paths this layer created, which an opaque marker must not remove.
    created: HashSet<PathBuf>,
    times: Vec<DirTimes>,
    /// Directories made on the way to entries, not given by the layer itself.
    implicit: Vec<Vec<OsString>>,
    /// File contents pass through here: large enough that a big file takes few syscalls.
    buf: Vec<u8>,
}

fn copy_file(from: &mut impl Read, to: &mut File, buf: &mut [u8]) -> io::Result<u64> {
    use std::io::Write;
    let mut n = 0u64;
    loop {
        let got = match from.read(buf) {
            Ok(0) => return Ok(n),
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..got])?;
        n += got as u64;
    }
}

impl Applier<'_> {
    fn copy_up(&mut self) -> CopyUp<'_> {
        CopyUp {
            lowers: self.lowers,
            times: &mut self.times,
            made: &mut self.implicit,
        }
    }
}

struct Pax {
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<u64>,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn pax_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Pax {
    let mut p = Pax {
        uid: None,
        gid: None,
        mtime: None,
        xattrs: Vec::new(),
    };
    if let Ok(Some(exts)) = entry.pax_extensions() {
        for ext in exts.flatten() {
            let Ok(k) = ext.key() else { continue };
            let num = || {
                ext.value()
                    .ok()
                    .and_then(|v| v.split('.').next().and_then(|s| s.parse().ok()))
            };
            match k {
                "uid" => p.uid = num(),
                "gid" => p.gid = num(),
                "mtime" => p.mtime = num(),
                k => {
                    if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                        p.xattrs.push((name.to_owned(), ext.value_bytes().to_vec()));
                    }
                }
            }
        }
    }
    p
}

impl Applier<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let path = clean_path(&raw)?;
        let Some((name, parent)) = path.split_last() else {
            return Ok(()); // the root itself keeps the snapshot's own attributes
        };
        let io_err = |op: &'static str| {
            let shown = shown.clone();
            move |e: io::Error| Error::Io {
                op,
                path: PathBuf::from(shown),
                source: e,
            }
        };
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE.as_bytes() {
            return self.opaque(parent).map_err(io_err("apply opaque marker"));
        }
        if let Some(target) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if target.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                return Ok(()); // other aufs metadata (.wh..wh.plnk etc.) carries nothing
            }
            if target.is_empty() || target == b"." || target == b".." || target.contains(&b'/') {
                return Err(bad(&shown, "whiteout names no file in its directory"));
            }
            return self
                .whiteout(parent, OsStr::from_bytes(target), entry)
                .map_err(io_err("apply whiteout"));
        }

        let header = entry.header().clone();
        let kind = header.entry_type();
        let pax = pax_of(entry);
        let uid = pax.uid.or_else(|| header.uid().ok()).unwrap_or(0);
        let gid = pax.gid.or_else(|| header.gid().ok()).unwrap_or(0);
        let mode = header
            .mode()
            .map_err(|e| bad(&shown, &format!("bad mode: {e}")))?
            & 0o7777;
        let mtime = pax.mtime.or_else(|| header.mtime().ok()).unwrap_or(0);
        let root = self.root;
        let dir =
            open_parent(root, parent, &mut self.copy_up()).map_err(io_err("open parent of"))?;
        let existing = rustix::fs::statat(&dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW).ok();
        let existing_is_dir =
            existing.is_some_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory);
        if existing.is_some() && !(kind.is_dir() && existing_is_dir) {
            remove_all_at(&dir, name).map_err(io_err("replace"))?;
        }
        match kind {
            tar::EntryType::Directory => {
                if !existing_is_dir {
                    rustix::fs::mkdirat(&dir, name.as_os_str(), Mode::from_raw_mode(0o700))
                        .map_err(|e| io_err("mkdir")(e.into()))?;
                }
                let fd =
                    open_subdir(&dir, name.as_os_str()).map_err(|e| io_err("open")(e.into()))?;
                finish_fd(&fd, uid, gid, mode, &pax.xattrs, Path::new(&shown))
                    .map_err(io_err("set attributes of"))?;
                // The layer says what this directory is: no copy-up for it.
                self.implicit.retain(|p| p != &path);
                self.times.push(DirTimes {
                    path: path.clone(),
                    times: timestamps(mtime),
                });
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let fd = rustix::fs::openat(
                    &dir,
                    name.as_os_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| io_err("create")(e.into()))?;
                let mut f = File::from(fd);
                copy_file(entry, &mut f, &mut self.buf).map_err(io_err("write"))?;
                let fd = OwnedFd::from(f);
                finish_fd(&fd, uid, gid, mode, &pax.xattrs, Path::new(&shown))
                    .map_err(io_err("set attributes of"))?;
                rustix::fs::futimens(&fd, &timestamps(mtime))
                    .map_err(|e| io_err("set times of")(e.into()))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad(&shown, "symlink without target"))?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &dir, name.as_os_str())
                    .map_err(|e| io_err("symlink")(e.into()))?;
                set_owner(&dir, name, uid, gid).map_err(io_err("chown"))?;
                set_times(&dir, name, mtime).map_err(io_err("set times of"))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad(&shown, "hardlink without target"))?;
                let tpath = clean_path(&target)?;
                let Some((tname, tparent)) = tpath.split_last() else {
                    return Err(bad(&shown, "hardlink to the snapshot root"));
                };
                let tdir =
                    open_dir(self.root, tparent).map_err(io_err("open hardlink target of"))?;
                let st = rustix::fs::statat(&tdir, tname.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| io_err("find hardlink target of")(e.into()))?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    return Err(bad(&shown, "hardlink to a directory"));
                }
                rustix::fs::linkat(
                    &tdir,
                    tname.as_os_str(),
                    &dir,
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| io_err("hardlink")(e.into()))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (ft, dev) = match kind {
                    tar::EntryType::Fifo => (FileType::Fifo, 0),
                    k => {
                        let major = header.device_major().ok().flatten().unwrap_or(0);
                        let minor = header.device_minor().ok().flatten().unwrap_or(0);
                        let ft = if k == tar::EntryType::Char {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        };
                        (ft, rustix::fs::makedev(major, minor))
                    }
                };
                rustix::fs::mknodat(&dir, name.as_os_str(), ft, Mode::from_raw_mode(0o600), dev)
                    .map_err(|e| io_err("mknod")(e.into()))?;
                set_owner(&dir, name, uid, gid).map_err(io_err("chown"))?;
                // Just created by us as a device node, so chmod cannot follow a symlink here.
                rustix::fs::chmodat(
                    &dir,
                    name.as_os_str(),
                    Mode::from_raw_mode(mode),
                    AtFlags::empty(),
                )
                .map_err(|e| io_err("chmod")(e.into()))?;
                set_times(&dir, name, mtime).map_err(io_err("set times of"))?;
            }
            // Global and per-file extension headers are consumed by the tar reader.
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => {
                return Err(bad(
                    &shown,
                    &format!("unsupported tar entry type {other:?}"),
                ))
            }
        }
        self.created.insert(join(&path));
        Ok(())
    }

    fn opaque(&mut self, parent: &[OsString]) -> io::Result<()> {
        let root = self.root;
        let dir = open_parent(root, parent, &mut self.copy_up())?;
        if self.overlay_whiteouts {
            rustix::fs::fsetxattr(&dir, OPAQUE_XATTR, b"y", XattrFlags::empty())?;
        } else {
            clear_dir(&dir, &self.created, &join(parent))?;
        }
        Ok(())
    }

    fn whiteout<R: Read>(
        &mut self,
        parent: &[OsString],
        target: &OsStr,
        entry: &tar::Entry<'_, R>,
    ) -> io::Result<()> {
        let dir = match open_dir(self.root, parent) {
            Ok(d) => d,
            // Nothing below a missing directory to hide, unless overlay lower layers have it.
            Err(e)
                if e.raw_os_error() == Some(Errno::NOENT.raw_os_error())
                    && !self.overlay_whiteouts =>
            {
                return Ok(())
            }
            Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
                let root = self.root;
                open_parent(root, parent, &mut self.copy_up())?
            }
            Err(e) => return Err(e),
        };
        remove_all_at(&dir, target)?;
        if self.overlay_whiteouts {
            rustix::fs::mknodat(
                &dir,
                target,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )?;
            let uid = entry.header().uid().unwrap_or(0);
            let gid = entry.header().gid().unwrap_or(0);
            rustix::fs::chownat(
                &dir,
                target,
                Some(uid_of(uid)),
                Some(gid_of(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        Ok(())
    }
}

fn finish_fd(
    fd: &OwnedFd,
    uid: u64,
    gid: u64,
    mode: u32,
    xattrs: &[(String, Vec<u8>)],
    shown: &Path,
) -> io::Result<()> {
    // Owner before mode: chown clears set-id bits.
    rustix::fs::fchown(fd, Some(uid_of(uid)), Some(gid_of(gid)))?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?;
    for (k, v) in xattrs {
        if k.starts_with(OVERLAY_XATTR_PREFIX) {
            continue; // a layer must not forge overlayfs whiteouts or redirects
        }
        set_xattr(fd, k, v, shown)?;
    }
    Ok(())
}

/// Owner of an entry made by name, never following it if it is a symlink.
fn set_owner(dir: &OwnedFd, name: &OsStr, uid: u64, gid: u64) -> io::Result<()> {
    rustix::fs::chownat(
        dir,
        name,
        Some(uid_of(uid)),
        Some(gid_of(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)
}

fn set_times(dir: &OwnedFd, name: &OsStr, mtime: u64) -> io::Result<()> {
    rustix::fs::utimensat(dir, name, &timestamps(mtime), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(io::Error::from)
}

fn uid_of(id: u64) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(id as u32)
}

fn gid_of(id: u64) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(id as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// Builds a tar from raw entries, writing names byte for byte (the tar crate's
    /// safe setters would refuse the hostile ones these tests need).
    struct Layer(tar::Builder<Vec<u8>>);

    impl Layer {
        fn new() -> Self {
            Layer(tar::Builder::new(Vec::new()))
        }
        fn entry(
            mut self,
            name: &str,
            kind: tar::EntryType,
            link: &str,
            data: &[u8],
            mode: u32,
        ) -> Self {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            if !link.is_empty() {
                h.as_gnu_mut().unwrap().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_uid(rustix::process::getuid().as_raw() as u64);
            h.set_gid(rustix::process::getgid().as_raw() as u64);
            h.set_mtime(1_000_000);
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }
        fn file(self, name: &str, data: &str) -> Self {
            self.entry(name, tar::EntryType::Regular, "", data.as_bytes(), 0o644)
        }
        fn dir(self, name: &str) -> Self {
            self.entry(name, tar::EntryType::Directory, "", b"", 0o755)
        }
        fn symlink(self, name: &str, target: &str) -> Self {
            self.entry(name, tar::EntryType::Symlink, target, b"", 0o777)
        }
        fn hardlink(self, name: &str, target: &str) -> Self {
            self.entry(name, tar::EntryType::Link, target, b"", 0o644)
        }
        fn bytes(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
        /// A pax header for the next entry carrying `xattrs`.
        fn xattrs(mut self, xattrs: &[(&str, &[u8])]) -> Self {
            let exts: Vec<(String, &[u8])> = xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                .collect();
            self.0
                .append_pax_extensions(exts.iter().map(|(k, v)| (k.as_str(), *v)))
                .unwrap();
            self
        }
    }

    fn overlay_onto(lowers: Vec<PathBuf>) -> ApplyOptions {
        ApplyOptions {
            overlay_whiteouts: true,
            lowers,
        }
    }

    #[test]
    fn root_directories_a_layer_adds_to_take_the_lower_layers_attributes() {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test needs root to chown"
        );
        let t = tempfile::tempdir().unwrap();
        let (lower, upper) = (t.path().join("lower"), t.path().join("upper"));
        let user = lower.join("home/user");
        std::fs::create_dir_all(&user).unwrap();
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::set_permissions(&user, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&user, Some(1000), Some(1000)).unwrap();
        rustix::fs::setxattr(&user, "user.note", b"private", XattrFlags::empty()).unwrap();
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &user,
            &timestamps(1_234_567),
            AtFlags::empty(),
        )
        .unwrap();
        let layer = Layer::new()
            .file("home/user/.profile", "export X=1\n")
            .bytes();
        apply_layer(
            &upper,
            io::Cursor::new(layer),
            &overlay_onto(vec![lower.clone()]),
        )
        .unwrap();
        let got = std::fs::metadata(upper.join("home/user")).unwrap();
        assert_eq!(
            got.mode() & 0o7777,
            0o700,
            "a private directory stays private"
        );
        assert_eq!((got.uid(), got.gid()), (1000, 1000));
        assert_eq!(got.mtime(), 1_234_567);
        let mut v = [0u8; 16];
        let n = rustix::fs::getxattr(upper.join("home/user"), "user.note", &mut v).unwrap();
        assert_eq!(&v[..n], b"private");

        // A higher lower layer that deleted /home hides the lowest one: nothing to copy.
        let hider = t.path().join("hider");
        std::fs::create_dir_all(&hider).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            hider.join("home"),
            FileType::CharacterDevice,
            Mode::empty(),
            0,
        )
        .unwrap();
        let fresh = t.path().join("fresh");
        std::fs::create_dir_all(&fresh).unwrap();
        let layer = Layer::new().file("home/user/.profile", "x").bytes();
        apply_layer(
            &fresh,
            io::Cursor::new(layer),
            &overlay_onto(vec![hider, lower]),
        )
        .unwrap();
        let got = std::fs::metadata(fresh.join("home/user")).unwrap();
        assert_eq!((got.mode() & 0o7777, got.uid()), (0o755, 0));
    }

    #[test]
    fn root_xattrs_the_filesystem_cannot_hold_are_skipped_not_fatal() {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test needs root to mount"
        );
        let t = tempfile::tempdir().unwrap();
        // ramfs keeps no extended attributes at all.
        rustix::mount::mount(
            "ramfs",
            t.path(),
            "ramfs",
            rustix::mount::MountFlags::empty(),
            None,
        )
        .unwrap();
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = rustix::mount::unmount(self.0, rustix::mount::UnmountFlags::DETACH);
            }
        }
        let _u = Unmount(t.path());
        let layer = Layer::new()
            .xattrs(&[("user.a", b"b"), ("trusted.b", b"c")])
            .file("bin/ping", "elf")
            .bytes();
        apply(t.path(), layer).unwrap();
        assert_eq!(
            std::fs::read_to_string(t.path().join("bin/ping")).unwrap(),
            "elf"
        );
    }

    fn sandbox() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("rootfs");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "keep").unwrap();
        (t, root, outside)
    }

    fn apply(root: &Path, layer: Vec<u8>) -> Result<Applied> {
        apply_layer(root, io::Cursor::new(layer), &ApplyOptions::default())
    }

    fn outside_untouched(outside: &Path) {
        let names: Vec<_> = std::fs::read_dir(outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![OsString::from("secret")],
            "something was written outside the snapshot"
        );
        assert_eq!(
            std::fs::read_to_string(outside.join("secret")).unwrap(),
            "keep"
        );
    }

    #[test]
    fn dotdot_entries_are_refused() {
        let (_t, root, outside) = sandbox();
        for name in [
            "../outside/pwned",
            "a/../../outside/pwned",
            "/../outside/pwned",
        ] {
            let err = apply(&root, Layer::new().file(name, "x").bytes()).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{name}: {err}");
            assert!(err.to_string().contains("escape"), "{err}");
        }
        outside_untouched(&outside);
    }

    #[test]
    fn absolute_paths_stay_inside() {
        let (_t, root, outside) = sandbox();
        apply(&root, Layer::new().file("/etc/passwd", "root").bytes()).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("etc/passwd")).unwrap(),
            "root"
        );
        outside_untouched(&outside);
    }

    #[test]
    fn symlinked_parents_resolve_inside() {
        let (_t, root, outside) = sandbox();
        let out = outside.to_str().unwrap().to_owned();
        let layer = Layer::new()
            .symlink("abs", &out)
            .symlink("rel", "../../../../../../../../..")
            .file("abs/pwned", "x")
            .file("rel/pwned2", "y")
            .bytes();
        apply(&root, layer).unwrap();
        outside_untouched(&outside);
        // Both landed inside the snapshot, where the links point when it is the root.
        assert_eq!(
            std::fs::read_to_string(root.join(out.trim_start_matches('/')).join("pwned")).unwrap(),
            "x"
        );
        assert_eq!(std::fs::read_to_string(root.join("pwned2")).unwrap(), "y");
    }

    /// A lower layer with `tmp` (1777, holding a directory `y`) and the symlinks
    /// `up -> ../../../tmp`, `abs -> /tmp`.
    fn lower_with_symlinks(t: &Path) -> PathBuf {
        let lower = t.join("lower");
        std::fs::create_dir_all(lower.join("tmp/y")).unwrap();
        std::fs::set_permissions(
            lower.join("tmp"),
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )
        .unwrap();
        std::os::unix::fs::symlink("../../../tmp", lower.join("up")).unwrap();
        std::os::unix::fs::symlink("/tmp", lower.join("abs")).unwrap();
        lower
    }

    fn mode_of(p: &Path) -> u32 {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o7777
    }

    #[test]
    fn a_lower_layers_symlinked_parent_is_followed_when_applied_onto_it() {
        let t = tempfile::tempdir().unwrap();
        let lower = lower_with_symlinks(t.path());
        let upper = t.path().join("upper");
        std::fs::create_dir_all(&upper).unwrap();
        let layer = Layer::new()
            .file("up/f", "f")
            .file("abs/sub/g", "g")
            .bytes();
        apply_layer(&upper, io::Cursor::new(layer), &overlay_onto(vec![lower])).unwrap();
        assert_all_in_tmp(&upper, &[("f", "f"), ("sub/g", "g")]);
    }

    /// The files (path below `tmp`, contents) are in the upper's `tmp`, copied up with the
    /// lower's mode, and nothing was left under the symlinks' names.
    fn assert_all_in_tmp(upper: &Path, files: &[(&str, &str)]) {
        for (path, text) in files {
            let got = std::fs::read_to_string(upper.join("tmp").join(path)).unwrap();
            assert_eq!(&got, text, "tmp/{path}");
        }
        assert!(!upper.join("up").exists() && !upper.join("abs").exists());
        assert_eq!(mode_of(&upper.join("tmp")), 0o1777, "tmp copied up");
    }

    /// Applies a layer of `files` (path, contents) before its lowers exist (a pull's layers
    /// side by side), then copies it up over `lower_with_symlinks`. Returns the upper
    /// directory.
    fn applied_over_symlinks(t: &Path, files: &[(&str, &str)]) -> PathBuf {
        let layer = files
            .iter()
            .fold(Layer::new(), |l, (path, text)| l.file(path, text))
            .bytes();
        let upper = t.join("upper");
        std::fs::create_dir_all(&upper).unwrap();
        let applied =
            apply_layer(&upper, io::Cursor::new(layer), &overlay_onto(Vec::new())).unwrap();
        let lower = lower_with_symlinks(t);
        copy_up(&upper, &[lower], &applied.implicit_dirs).unwrap();
        upper
    }

    #[test]
    fn a_lower_layers_symlinked_parent_is_followed_at_commit() {
        let t = tempfile::tempdir().unwrap();
        let files = [("up/f", "f"), ("abs/sub/g", "g"), ("tmp/sub/h", "h")];
        let upper = applied_over_symlinks(t.path(), &files);
        assert_all_in_tmp(&upper, &[("f", "f"), ("sub/g", "g"), ("sub/h", "h")]);
    }

    #[test]
    fn a_moved_entry_replaces_what_the_layer_had_under_the_target() {
        let t = tempfile::tempdir().unwrap();
        // Through the lower's `up` the layer writes a directory `x` and a file `y` into
        // `tmp`, where it also has a file `x` and a directory `y` (one the lower has too, so
        // that its copy-up would fail on the file that replaced it).
        let files = [
            ("up/x/f", "f"),
            ("up/y", "y"),
            ("tmp/x", "file"),
            ("tmp/y/in", "i"),
        ];
        let upper = applied_over_symlinks(t.path(), &files);
        assert_all_in_tmp(&upper, &[("x/f", "f"), ("y", "y")]);
    }

    #[test]
    fn an_opaque_marker_under_a_lower_symlink_moves_with_the_entries() {
        let t = tempfile::tempdir().unwrap();
        let upper = applied_over_symlinks(t.path(), &[("up/.wh..wh..opq", ""), ("up/f", "f")]);
        assert_all_in_tmp(&upper, &[("f", "f")]);
        let mut v = [0u8; 1];
        let tmp = std::fs::File::open(upper.join("tmp")).unwrap();
        assert_eq!(rustix::fs::fgetxattr(&tmp, OPAQUE_XATTR, &mut v), Ok(1));
        assert_eq!(&v, b"y");
    }

    /// Applies a one-file layer at `file` before its lowers exist, then copies it up over a
    /// lower that has the symlink `link -> target(the sandbox's outside directory)`.
    fn applied_then_copied_up(
        file: &str,
        link: &str,
        target: impl FnOnce(&Path) -> String,
    ) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let (t, upper, outside) = sandbox();
        let layer = Layer::new().file(file, "x").bytes();
        let applied =
            apply_layer(&upper, io::Cursor::new(layer), &overlay_onto(Vec::new())).unwrap();
        let lower = t.path().join("lower");
        std::fs::create_dir_all(&lower).unwrap();
        std::os::unix::fs::symlink(target(&outside), lower.join(link)).unwrap();
        copy_up(&upper, &[lower], &applied.implicit_dirs).unwrap();
        (t, upper, outside)
    }

    #[test]
    fn a_lower_symlink_out_of_the_root_moves_entries_inside_it() {
        let (_t, upper, outside) = applied_then_copied_up("esc/pwned", "esc", |out| {
            format!("../../../../..{}", out.display())
        });
        outside_untouched(&outside);
        let out = outside.to_str().unwrap();
        let inside = upper.join(out.trim_start_matches('/')).join("pwned");
        assert_eq!(std::fs::read_to_string(inside).unwrap(), "x");
        // A symlink back into itself moves nothing.
        let (_t, upper, _) = applied_then_copied_up("loop/f", "loop", |_| "loop/inner".into());
        assert_eq!(std::fs::read_to_string(upper.join("loop/f")).unwrap(), "x");
    }

    #[test]
    fn hardlinks_cannot_reach_out() {
        let (_t, root, outside) = sandbox();
        let err = apply(
            &root,
            Layer::new().hardlink("h", "../outside/secret").bytes(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        let out = outside.to_str().unwrap().to_owned();
        let layer = Layer::new()
            .symlink("l", &out)
            .hardlink("h2", "l/secret")
            .bytes();
        let err = apply(&root, layer).unwrap_err();
        assert!(err.to_string().contains("hardlink target"), "{err}");
        // A write through the link must not change the outside file either.
        assert!(!root.join("h2").exists());
        outside_untouched(&outside);
    }

    #[test]
    fn hostile_whiteouts_are_refused() {
        let (_t, root, outside) = sandbox();
        for name in [".wh..", "a/.wh..."] {
            assert!(
                apply(&root, Layer::new().dir("a").file(name, "").bytes()).is_err(),
                "{name}"
            );
        }
        let out = outside.to_str().unwrap().to_owned();
        apply(
            &root,
            Layer::new()
                .symlink("l", &out)
                .file("l/.wh.secret", "")
                .bytes(),
        )
        .unwrap();
        outside_untouched(&outside);
    }

    #[test]
    fn whiteouts_opaque_and_links_produce_the_spec_tree() {
        let (_t, root, _o) = sandbox();
        let base = Layer::new()
            .dir("etc")
            .file("etc/keep", "k")
            .file("etc/gone", "g")
            .dir("var")
            .dir("var/lib")
            .file("var/lib/old", "o")
            .dir("opq")
            .file("opq/lower", "l")
            .bytes();
        apply(&root, base).unwrap();
        let top = Layer::new()
            .file("etc/.wh.gone", "")
            .file(".wh.var", "")
            .dir("opq")
            .file("opq/new", "n")
            .file("opq/.wh..wh..opq", "")
            .file("data", "d")
            .hardlink("data-link", "data")
            .symlink("link", "/etc/keep")
            .bytes();
        let applied = apply(&root, top.clone()).unwrap();
        assert_eq!(applied.size, top.len() as u64);
        assert_eq!(applied.digest, Digest::of(&top));
        assert!(root.join("etc/keep").exists());
        assert!(!root.join("etc/gone").exists());
        assert!(!root.join("var").exists());
        assert!(
            root.join("opq/new").exists(),
            "opaque removed a file of its own layer"
        );
        assert!(!root.join("opq/lower").exists());
        let a = std::fs::metadata(root.join("data")).unwrap();
        let b = std::fs::metadata(root.join("data-link")).unwrap();
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
        assert_eq!(
            std::fs::read_link(root.join("link")).unwrap(),
            PathBuf::from("/etc/keep")
        );
        assert_eq!(a.permissions().mode() & 0o7777, 0o644);
        assert_eq!(
            std::fs::metadata(root.join("opq")).unwrap().mtime(),
            1_000_000
        );
    }

    /// A one-file layer: plain, gzip'd and zstd'd.
    fn one_file_layer() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        use std::io::Write;
        let plain = Layer::new().file("f", "hello").bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&plain[..], 1).unwrap();
        (plain, gz, zst)
    }

    #[test]
    fn compressed_layers_report_the_uncompressed_digest() {
        let (_t, root, _o) = sandbox();
        let (plain, gz, zst) = one_file_layer();
        for layer in [gz, zst] {
            let applied = apply(&root, layer).unwrap();
            assert_eq!(applied.digest, Digest::of(&plain));
        }
        assert!(apply(&root, b"definitely not a tar file, just some text that is long enough to fill a header block and then some more text to be sure it is long enough........................................................................................................................................................................................................................................................................................................................................................".to_vec()).is_err());
    }

    /// A stream that hands out its bytes a few at a time, as a network body may.
    struct Dribble(Vec<u8>, usize, usize);

    impl Read for Dribble {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.fill_buf()?.len().min(out.len());
            out[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.consume(n);
            Ok(n)
        }
    }

    impl BufRead for Dribble {
        fn fill_buf(&mut self) -> io::Result<&[u8]> {
            let end = (self.1 + self.2).min(self.0.len());
            Ok(&self.0[self.1..end])
        }
        fn consume(&mut self, n: usize) {
            self.1 += n;
        }
    }

    #[test]
    fn buffered_streams_in_pieces_too_short_to_show_the_magic_still_decompress() {
        let (_t, root, _o) = sandbox();
        let (plain, gz, zst) = one_file_layer();
        for layer in [gz, zst, plain.clone()] {
            for piece in [1, 3, 4, 1000] {
                let applied = apply_layer(
                    &root,
                    Dribble(layer.clone(), 0, piece),
                    &ApplyOptions::default(),
                )
                .unwrap();
                assert_eq!(applied.digest, Digest::of(&plain), "pieces of {piece}");
            }
        }
    }

    /// A bounded stand-in for fuzzing: flips, truncates and splices bytes of valid layers
    /// (plain and gzip) and applies each result. Every outcome must be an error or a tree,
    /// never a panic and never a write outside the snapshot.
    #[test]
    fn mutated_layers_never_panic_or_escape() {
        use std::io::Write;
        let (_t, root, outside) = sandbox();
        let out = outside.to_str().unwrap().to_owned();
        let base = Layer::new()
            .dir("a")
            .file("a/f", "hello")
            .symlink("a/l", &out)
            .hardlink("a/h", "a/f")
            .file("a/.wh.x", "")
            .file("b/.wh..wh..opq", "")
            .bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&base).unwrap();
        let seeds = [base.clone(), gz.finish().unwrap()];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..3000 {
            let mut data = seeds[round % 2].clone();
            for _ in 0..(1 + next() % 8) {
                let at = (next() as usize) % data.len();
                match next() % 4 {
                    0 => data[at] ^= 1 << (next() % 8),
                    1 => data[at] = b"./\0."[(next() % 4) as usize],
                    2 => data.truncate(at.max(1)),
                    _ => {
                        let from = (next() as usize) % data.len();
                        let len = (next() as usize % 64).min(data.len() - from.max(at));
                        let chunk = data[from..from + len].to_vec();
                        data[at..at + len].copy_from_slice(&chunk);
                    }
                }
            }
            let dir = root.join(format!("r{round}"));
            std::fs::create_dir_all(&dir).unwrap();
            let _ = apply(&dir, data);
            outside_untouched(&outside);
        }
    }
}
