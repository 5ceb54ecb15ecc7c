//! The native snapshotter: every snapshot is a full copy of its parent's tree, for file
//! systems where overlayfs cannot serve. Slow to prepare, but works anywhere.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{disk_usage, empty_trash_in, ids_in, remove_dir, retire_dir, Backend, Kind, Usage};
use crate::error::{Error, Result};
use crate::mount::Mount;

pub struct Native {
    root: PathBuf,
}

impl Native {
    pub fn open(root: &Path) -> Result<Self> {
        let snaps = root.join("snapshots");
        fs::create_dir_all(&snaps).map_err(Error::io("create", &snaps))?;
        Ok(Native {
            root: root.to_owned(),
        })
    }

    pub fn fs_dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }
}

impl Backend for Native {
    fn name(&self) -> &'static str {
        "native"
    }

    fn create(&self, id: u64, parents: &[u64], kind: Kind) -> Result<()> {
        let dir = self.fs_dir(id);
        match parents.first().filter(|_| kind == Kind::Active) {
            None => fs::create_dir_all(&dir).map_err(Error::io("create", &dir)),
            Some(p) => {
                // `cp -a` keeps owners, modes, times, xattrs, hardlinks and device nodes.
                let src = self.fs_dir(*p);
                let out = Command::new("cp")
                    .arg("-a")
                    .arg("--")
                    .arg(&src)
                    .arg(&dir)
                    .output()
                    .map_err(Error::io("run cp -a from", &src))?;
                if !out.status.success() {
                    let _ = fs::remove_dir_all(&dir);
                    return Err(Error::FailedPrecondition(format!(
                        "copy snapshot {} to {}: {}",
                        src.display(),
                        dir.display(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
                Ok(())
            }
        }
    }

    fn mounts(&self, id: u64, kind: Kind, parents: &[u64]) -> Vec<Mount> {
        match (kind, parents.first()) {
            // A view never changes, so it can show its parent directly.
            (Kind::View, Some(p)) => vec![Mount::bind(&self.fs_dir(*p), true)],
            _ => vec![Mount::bind(&self.fs_dir(id), kind == Kind::View)],
        }
    }

    fn remove(&self, id: u64) -> Result<()> {
        let d = self.fs_dir(id);
        remove_dir(&d)
    }

    fn retire(&self, id: u64) -> Result<()> {
        retire_dir(
            &self.root.join("snapshots").join(id.to_string()),
            &self.root,
        )
    }

    fn empty_trash(&self) -> Result<usize> {
        empty_trash_in(&self.root)
    }

    fn usage(&self, id: u64) -> Result<Usage> {
        disk_usage(&self.fs_dir(id))
    }

    fn ids_on_disk(&self) -> Result<Vec<u64>> {
        ids_in(&self.root.join("snapshots"))
    }
}
