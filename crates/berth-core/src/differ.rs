//! Creating a layer from two trees: walks `lower` and `upper` side by side (both are
//! read-only views, so overlay whiteouts already show as absent) and writes a tar of what
//! `upper` adds or changes, with `.wh.` entries for what it removes. Parent directories
//! of a change are written before it, hardlinked files once and then as links.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};

pub struct DiffWriter<W: Write> {
    tar: tar::Builder<HashingWriter<W>>,
    emitted_dirs: HashSet<PathBuf>,
    links: HashMap<(u64, u64), PathBuf>,
    upper: PathBuf,
}

/// Hashes and counts what passes, giving the uncompressed digest of the layer.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    count: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn same_file(a: &Metadata, b: &Metadata, pa: &Path, pb: &Path) -> io::Result<bool> {
    if a.file_type() != b.file_type()
        || a.mode() != b.mode()
        || a.uid() != b.uid()
        || a.gid() != b.gid()
    {
        return Ok(false);
    }
    let ft = a.file_type();
    if ft.is_symlink() {
        return Ok(fs::read_link(pa)? == fs::read_link(pb)?);
    }
    if ft.is_block_device() || ft.is_char_device() {
        return Ok(a.rdev() == b.rdev());
    }
    if ft.is_file() {
        if a.size() != b.size() {
            return Ok(false);
        }
        if a.mtime() != b.mtime() || a.mtime_nsec() != b.mtime_nsec() {
            return Ok(false);
        }
        // Copied-up files keep their times; with whole-second times a change in the same
        // second could hide, so compare the bytes then.
        if a.mtime_nsec() == 0 {
            return same_content(pa, pb);
        }
    }
    Ok(true)
}

fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = fa.read(&mut ba)?;
        let mut m = 0;
        while m < n {
            let k = fb.read(&mut bb[m..n])?;
            if k == 0 {
                return Ok(false);
            }
            m += k;
        }
        if n == 0 {
            return Ok(fb.read(&mut bb[..1])? == 0);
        }
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

fn names(dir: &Path) -> io::Result<BTreeSet<std::ffi::OsString>> {
    match fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.map(|e| e.file_name())).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(e),
    }
}

fn header(md: &Metadata, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_metadata_in_mode(md, tar::HeaderMode::Complete);
    h.set_entry_type(kind);
    if kind != tar::EntryType::Regular {
        h.set_size(0);
    }
    h
}

impl<W: Write> DiffWriter<W> {
    pub fn new(upper: &Path, out: W) -> Self {
        let mut tar = tar::Builder::new(HashingWriter {
            inner: out,
            hasher: Hasher::new(),
            count: 0,
        });
        tar.mode(tar::HeaderMode::Complete);
        tar.follow_symlinks(false);
        DiffWriter {
            tar,
            emitted_dirs: HashSet::new(),
            links: HashMap::new(),
            upper: upper.to_owned(),
        }
    }

    /// Writes the changes from `lower` to `upper` and returns the stream's end with the
    /// uncompressed digest and size.
    pub fn write_changes(mut self, lower: &Path) -> Result<(W, Digest, u64)> {
        let upper = self.upper.clone();
        self.walk(lower, &upper, Path::new(""), true)
            .map_err(Error::io("diff", &upper))?;
        let hw = self
            .tar
            .into_inner()
            .map_err(Error::io("finish layer of", &upper))?;
        Ok((hw.inner, hw.hasher.finish(), hw.count))
    }

    fn ensure_parents(&mut self, rel: &Path) -> io::Result<()> {
        let mut chain = Vec::new();
        let mut p = rel.parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            if self.emitted_dirs.contains(d) {
                break;
            }
            chain.push(d.to_owned());
            p = d.parent();
        }
        for d in chain.into_iter().rev() {
            let md = fs::symlink_metadata(self.upper.join(&d))?;
            let mut h = header(&md, tar::EntryType::Directory);
            self.tar.append_data(&mut h, &d, io::empty())?;
            self.emitted_dirs.insert(d);
        }
        Ok(())
    }

    fn emit(&mut self, rel: &Path, md: &Metadata) -> io::Result<()> {
        self.ensure_parents(rel)?;
        let full = self.upper.join(rel);
        let ft = md.file_type();
        if ft.is_dir() {
            let mut h = header(md, tar::EntryType::Directory);
            self.tar.append_data(&mut h, rel, io::empty())?;
            self.emitted_dirs.insert(rel.to_owned());
        } else if ft.is_symlink() {
            let mut h = header(md, tar::EntryType::Symlink);
            self.tar.append_link(&mut h, rel, fs::read_link(&full)?)?;
        } else if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = self.links.get(&(md.dev(), md.ino())) {
                    let first = first.clone();
                    let mut h = header(md, tar::EntryType::Link);
                    return self.tar.append_link(&mut h, rel, first);
                }
                self.links.insert((md.dev(), md.ino()), rel.to_owned());
            }
            let mut h = header(md, tar::EntryType::Regular);
            self.tar.append_data(&mut h, rel, File::open(&full)?)?;
        } else {
            let kind = if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else if ft.is_fifo() {
                tar::EntryType::Fifo
            } else {
                return Ok(()); // sockets do not belong in layers
            };
            let mut h = header(md, kind);
            let dev = md.rdev();
            h.set_device_major(rustix::fs::major(dev))?;
            h.set_device_minor(rustix::fs::minor(dev))?;
            self.tar.append_data(&mut h, rel, io::empty())?;
        }
        Ok(())
    }

    fn whiteout(&mut self, rel: &Path) -> io::Result<()> {
        self.ensure_parents(rel)?;
        let name = format!(
            ".wh.{}",
            rel.file_name().unwrap_or_default().to_string_lossy()
        );
        let path = rel
            .parent()
            .map(|p| p.join(&name))
            .unwrap_or_else(|| name.into());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(0);
        h.set_mode(0o644);
        h.set_mtime(0);
        self.tar.append_data(&mut h, path, io::empty())
    }

    /// Compares directory `rel`; `lower_ok` says whether `lower/rel` is a directory whose
    /// entries may be compared (it is not when the type changed above).
    fn walk(&mut self, lower: &Path, upper: &Path, rel: &Path, lower_ok: bool) -> io::Result<()> {
        let up = names(&upper.join(rel))?;
        let low = if lower_ok {
            names(&lower.join(rel))?
        } else {
            BTreeSet::new()
        };
        for name in up.union(&low) {
            let r = rel.join(name);
            let umd = match fs::symlink_metadata(upper.join(&r)) {
                Ok(m) => Some(m),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            let lmd = if lower_ok && low.contains(name) {
                fs::symlink_metadata(lower.join(&r)).ok()
            } else {
                None
            };
            match (umd, lmd) {
                (None, Some(_)) => self.whiteout(&r)?,
                (None, None) => {}
                (Some(u), l) => {
                    let changed = match &l {
                        Some(l) => !same_file(&u, l, &upper.join(&r), &lower.join(&r))?,
                        None => true,
                    };
                    if changed {
                        self.emit(&r, &u)?;
                    }
                    if u.is_dir() {
                        // Where a file became a directory, everything below is new.
                        let lower_is_dir = l.as_ref().is_some_and(|l| l.is_dir());
                        self.walk(lower, upper, &r, lower_is_dir)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::{apply_layer, ApplyOptions};

    #[test]
    fn diff_then_apply_reproduces_upper() {
        let t = tempfile::tempdir().unwrap();
        let (lower, upper, copy) = (
            t.path().join("lower"),
            t.path().join("upper"),
            t.path().join("copy"),
        );
        for d in [&lower, &upper] {
            fs::create_dir_all(d.join("etc/sub")).unwrap();
            fs::write(d.join("etc/keep"), "same").unwrap();
            fs::write(d.join("etc/sub/gone"), "x").unwrap();
            fs::create_dir_all(d.join("olddir/deep")).unwrap();
        }
        // Make `keep` identical in both, including times.
        let t0 = filetime(&lower.join("etc/keep"));
        set_mtime(&upper.join("etc/keep"), t0);
        fs::remove_file(upper.join("etc/sub/gone")).unwrap();
        fs::remove_dir_all(upper.join("olddir")).unwrap();
        fs::write(upper.join("new"), "new").unwrap();
        fs::hard_link(upper.join("new"), upper.join("new-link")).unwrap();
        std::os::unix::fs::symlink("etc/keep", upper.join("ln")).unwrap();

        let (tar, digest, size) = DiffWriter::new(&upper, Vec::new())
            .write_changes(&lower)
            .unwrap();
        assert_eq!(Digest::of(&tar), digest);
        assert_eq!(size, tar.len() as u64);
        let mut names = Vec::new();
        let mut a = tar::Archive::new(&tar[..]);
        for e in a.entries().unwrap() {
            names.push(e.unwrap().path().unwrap().to_string_lossy().into_owned());
        }
        assert!(names.contains(&"etc/sub/.wh.gone".to_string()), "{names:?}");
        assert!(names.contains(&".wh.olddir".to_string()), "{names:?}");
        assert!(!names.iter().any(|n| n.starts_with("olddir/")), "{names:?}");
        assert!(
            !names.contains(&"etc/keep".to_string()),
            "unchanged file in diff: {names:?}"
        );

        // lower + diff == upper
        fs::create_dir_all(&copy).unwrap();
        let cp = std::process::Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", lower.display()))
            .arg(&copy)
            .status()
            .unwrap();
        assert!(cp.success());
        apply_layer(&copy, &tar[..], &ApplyOptions::default()).unwrap();
        assert!(!copy.join("olddir").exists() && !copy.join("etc/sub/gone").exists());
        assert_eq!(fs::read_to_string(copy.join("new-link")).unwrap(), "new");
        assert_eq!(
            fs::metadata(copy.join("new")).unwrap().ino(),
            fs::metadata(copy.join("new-link")).unwrap().ino()
        );
        assert_eq!(
            fs::read_link(copy.join("ln")).unwrap(),
            PathBuf::from("etc/keep")
        );
    }

    fn filetime(p: &Path) -> (i64, i64) {
        let m = fs::metadata(p).unwrap();
        (m.mtime(), m.mtime_nsec())
    }

    fn set_mtime(p: &Path, (s, ns): (i64, i64)) {
        let t = rustix::fs::Timespec {
            tv_sec: s,
            tv_nsec: ns as _,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            p,
            &rustix::fs::Timestamps {
                last_access: t,
                last_modification: t,
            },
            rustix::fs::AtFlags::empty(),
        )
        .unwrap();
    }
}
