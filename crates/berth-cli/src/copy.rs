//! `berth cp` between the host and a running container: the container's side is reached
//! through `/proc/PID/root`, every path resolved inside that root (`RESOLVE_IN_ROOT`) and
//! every step below it taken without following symlinks, so nothing in the container can
//! lead the copy onto the host's own files. Files keep their mode; symlinks are copied as
//! links.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

use crate::error::{Error, Result};

fn errno(what: String) -> impl FnOnce(rustix::io::Errno) -> Error {
    move |e| Error::Io {
        what,
        err: e.into(),
    }
}

fn open_in_root(root: BorrowedFd<'_>, path: &str, flags: OFlags) -> Result<OwnedFd> {
    berth_inroot::open(root, path, flags, Mode::empty()).map_err(|e| match e {
        rustix::io::Errno::NOENT => Error::NoSuchObject(format!("path {path} in the container")),
        e => Error::Io {
            what: format!("open {path} in the container"),
            err: e.into(),
        },
    })
}

fn base_name(p: &str) -> String {
    Path::new(p.trim_end_matches('/'))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into())
}

pub fn copy(pid: u32, inside: &str, host: &Path, into_container: bool) -> Result<()> {
    let root_path = format!("/proc/{pid}/root");
    let root = rustix::fs::open(
        &root_path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno(format!("open {root_path}")))?;
    if into_container {
        let md = std::fs::symlink_metadata(host)
            .map_err(Error::io(format!("read {}", host.display())))?;
        let _ = md;
        let (dir, name) =
            match open_in_root(root.as_fd(), inside, OFlags::DIRECTORY | OFlags::RDONLY) {
                Ok(d) => (d, base_name(&host.to_string_lossy())),
                Err(Error::NoSuchObject(_)) | Err(Error::Io { .. }) => {
                    let parent = Path::new(inside)
                        .parent()
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "/".into());
                    (
                        open_in_root(root.as_fd(), &parent, OFlags::DIRECTORY | OFlags::RDONLY)?,
                        base_name(inside),
                    )
                }
                Err(e) => return Err(e),
            };
        copy_in(host, dir.as_fd(), &name)
    } else {
        let src = open_in_root(root.as_fd(), inside, OFlags::PATH | OFlags::NOFOLLOW)?;
        let dest = if host.is_dir() {
            host.join(base_name(inside))
        } else {
            host.to_owned()
        };
        copy_out(src.as_fd(), &dest)
    }
}

fn kind_of(fd: BorrowedFd<'_>) -> Result<(FileType, u32)> {
    let st = rustix::fs::fstat(fd).map_err(errno("stat in the container".into()))?;
    Ok((FileType::from_raw_mode(st.st_mode), st.st_mode & 0o7777))
}

fn reopen(fd: BorrowedFd<'_>, flags: OFlags) -> Result<OwnedFd> {
    rustix::fs::openat(fd, "", flags | OFlags::CLOEXEC, Mode::empty())
        .or_else(|_| {
            // An O_PATH descriptor is reopened through its /proc link.
            let p = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
            rustix::fs::open(p.as_str(), flags | OFlags::CLOEXEC, Mode::empty())
        })
        .map_err(errno("reopen in the container".into()))
}

fn copy_out(src: BorrowedFd<'_>, dest: &Path) -> Result<()> {
    let (kind, mode) = kind_of(src)?;
    match kind {
        FileType::RegularFile => {
            let f = std::fs::File::from(reopen(src, OFlags::RDONLY)?);
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(dest)
                .map_err(Error::io(format!("create {}", dest.display())))?;
            std::io::copy(&mut &f, &mut out)
                .map_err(Error::io(format!("write {}", dest.display())))?;
            out.flush()
                .map_err(Error::io(format!("write {}", dest.display())))?;
            let _ = std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode));
        }
        FileType::Directory => {
            match std::fs::create_dir(dest) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dest.is_dir() => {}
                Err(e) => return Err(Error::io(format!("create {}", dest.display()))(e)),
            }
            let dir = reopen(src, OFlags::RDONLY | OFlags::DIRECTORY)?;
            let names: Vec<PathBuf> = rustix::fs::Dir::read_from(&dir)
                .map_err(errno("list a directory in the container".into()))?
                .flatten()
                .map(|e| PathBuf::from(e.file_name().to_string_lossy().into_owned()))
                .filter(|n| n != Path::new(".") && n != Path::new(".."))
                .collect();
            for n in names {
                let child = rustix::fs::openat(
                    &dir,
                    &n,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(errno(format!("open {} in the container", n.display())))?;
                copy_out(child.as_fd(), &dest.join(&n))?;
            }
            let _ = std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode));
        }
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(src, "", Vec::new())
                .map_err(errno("read a link in the container".into()))?;
            let _ = std::fs::remove_file(dest);
            std::os::unix::fs::symlink(PathBuf::from(target.to_string_lossy().into_owned()), dest)
                .map_err(Error::io(format!("link {}", dest.display())))?;
        }
        _ => {} // devices, fifos and sockets are not copied, as Docker skips them
    }
    Ok(())
}

fn copy_in(src: &Path, dir: BorrowedFd<'_>, name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(Error::Invalid(format!("cannot copy to {name:?}")));
    }
    let md =
        std::fs::symlink_metadata(src).map_err(Error::io(format!("read {}", src.display())))?;
    let mode = Mode::from_raw_mode(md.permissions().mode() & 0o7777);
    let ft = md.file_type();
    if ft.is_symlink() {
        let target =
            std::fs::read_link(src).map_err(Error::io(format!("read {}", src.display())))?;
        let _ = rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::empty());
        rustix::fs::symlinkat(&target, dir, name)
            .map_err(errno(format!("link {name} in the container")))?;
    } else if ft.is_dir() {
        match rustix::fs::mkdirat(dir, name, mode) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(errno(format!("create {name} in the container"))(e)),
        }
        let sub = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno(format!("open {name} in the container")))?;
        for e in std::fs::read_dir(src).map_err(Error::io(format!("list {}", src.display())))? {
            let e = e.map_err(Error::io(format!("list {}", src.display())))?;
            copy_in(&e.path(), sub.as_fd(), &e.file_name().to_string_lossy())?;
        }
    } else if ft.is_file() {
        let out = rustix::fs::openat(
            dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            mode,
        )
        .map_err(errno(format!("create {name} in the container")))?;
        let mut out = std::fs::File::from(out);
        let mut f =
            std::fs::File::open(src).map_err(Error::io(format!("read {}", src.display())))?;
        std::io::copy(&mut f, &mut out)
            .map_err(Error::io(format!("write {name} in the container")))?;
    }
    Ok(())
}
