//! Mount descriptions as containerd passes them around (type, source, options), and
//! mounting them for the daemon's own use with a guard that unmounts on drop.

use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub target: String,
    pub options: Vec<String>,
}

impl Mount {
    pub fn bind(source: &Path, readonly: bool) -> Self {
        Mount {
            kind: "bind".into(),
            source: source.to_string_lossy().into_owned(),
            target: String::new(),
            options: vec![if readonly { "ro" } else { "rw" }.into(), "rbind".into()],
        }
    }

    pub fn is_readonly(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }

    /// The value of an option such as `upperdir=...`.
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .find_map(|o| o.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
    }
}

fn split_options(opts: &[String]) -> (MountFlags, bool, String) {
    let mut flags = MountFlags::empty();
    let mut bind = false;
    let mut data = Vec::new();
    for o in opts {
        match o.as_str() {
            "ro" => flags |= MountFlags::RDONLY,
            "rw" | "defaults" => {}
            "bind" => bind = true,
            "rbind" => {
                bind = true;
                flags |= MountFlags::REC;
            }
            "nosuid" => flags |= MountFlags::NOSUID,
            "nodev" => flags |= MountFlags::NODEV,
            "noexec" => flags |= MountFlags::NOEXEC,
            "noatime" => flags |= MountFlags::NOATIME,
            "relatime" => flags |= MountFlags::RELATIME,
            other => data.push(other.to_owned()),
        }
    }
    (flags, bind, data.join(","))
}

fn mount_one(m: &Mount, target: &Path) -> Result<()> {
    let (flags, bind, data) = split_options(&m.options);
    let err = |e: rustix::io::Errno| {
        Error::FailedPrecondition(format!(
            "mount {} {:?} on {}: {e}",
            m.kind,
            m.source,
            target.display()
        ))
    };
    if bind || m.kind == "bind" {
        if flags.contains(MountFlags::REC) {
            rustix::mount::mount_bind_recursive(m.source.as_str(), target).map_err(err)?;
        } else {
            rustix::mount::mount_bind(m.source.as_str(), target).map_err(err)?;
        }
        if flags.contains(MountFlags::RDONLY) {
            let remount = (flags - MountFlags::REC) | MountFlags::BIND;
            rustix::mount::mount_remount(target, remount, "").map_err(err)?;
        }
    } else {
        let data = std::ffi::CString::new(data).map_err(|_| {
            Error::InvalidArgument(format!(
                "mount options of {} {:?} contain a NUL byte",
                m.kind, m.source
            ))
        })?;
        rustix::mount::mount(
            m.source.as_str(),
            target,
            m.kind.as_str(),
            flags,
            data.as_c_str(),
        )
        .map_err(err)?;
    }
    Ok(())
}

/// Mounts all of `mounts` on `target`, in order; on failure what was mounted is undone.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target) {
            for _ in 0..i {
                let _ = unmount(target);
            }
            return Err(e);
        }
    }
    Ok(())
}

pub fn unmount(target: &Path) -> Result<()> {
    rustix::mount::unmount(target, UnmountFlags::empty())
        .or_else(|e| {
            if e == rustix::io::Errno::BUSY {
                rustix::mount::unmount(target, UnmountFlags::DETACH)
            } else {
                Err(e)
            }
        })
        .map_err(|e| Error::FailedPrecondition(format!("unmount {}: {e}", target.display())))
}

/// A temporary directory with mounts on it; dropping it unmounts and removes the directory.
pub struct TempMount {
    dir: PathBuf,
    layers: usize,
}

impl TempMount {
    pub fn new(parent: &Path, mounts: &[Mount]) -> Result<Self> {
        std::fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
        let dir = parent.join(format!("mount-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).map_err(Error::io("create", &dir))?;
        if let Err(e) = mount_all(mounts, &dir) {
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
        Ok(TempMount {
            dir,
            layers: mounts.len(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        for _ in 0..self.layers {
            if let Err(e) = unmount(&self.dir) {
                tracing::warn!("{e}");
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
