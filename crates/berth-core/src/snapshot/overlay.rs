//! The overlayfs snapshotter: each snapshot is `snapshots/<id>/{fs,work}`; an active
//! snapshot mounts its parents' `fs` dirs as lower layers under its own upper dir.

use std::fs;
use std::path::{Path, PathBuf};

use super::{disk_usage, empty_trash_in, ids_in, remove_dir, retire_dir, Backend, Kind, Usage};
use crate::error::{Error, Result};
use crate::mount::{Mount, TempMount};

pub struct Overlay {
    root: PathBuf,
}

impl Overlay {
    /// Opens the snapshotter at `root`, checking that this kernel and file system can
    /// serve overlay mounts there.
    pub fn open(root: &Path) -> Result<Self> {
        let snaps = root.join("snapshots");
        fs::create_dir_all(&snaps).map_err(Error::io("create", &snaps))?;
        let o = Overlay {
            root: root.to_owned(),
        };
        o.probe()?;
        Ok(o)
    }

    fn probe(&self) -> Result<()> {
        let base = self.root.join("probe");
        let _ = fs::remove_dir_all(&base);
        for d in ["lower1", "lower2", "upper", "work"] {
            fs::create_dir_all(base.join(d)).map_err(Error::io("create", base.join(d)))?;
        }
        let m = Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                format!("workdir={}", base.join("work").display()),
                format!("upperdir={}", base.join("upper").display()),
                format!(
                    "lowerdir={}:{}",
                    base.join("lower1").display(),
                    base.join("lower2").display()
                ),
            ],
        };
        let r = TempMount::new(&base, &[m]).map(drop);
        let _ = fs::remove_dir_all(&base);
        r.map_err(|e| {
            Error::FailedPrecondition(format!(
                "overlayfs is not usable under {}: {e}",
                self.root.display()
            ))
        })
    }

    pub fn fs_dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string()).join("fs")
    }

    fn work_dir(&self, id: u64) -> PathBuf {
        self.root
            .join("snapshots")
            .join(id.to_string())
            .join("work")
    }
}

impl Backend for Overlay {
    fn name(&self) -> &'static str {
        "overlayfs"
    }

    fn parents_only_in_mounts(&self) -> bool {
        true
    }

    fn create(&self, id: u64, _parents: &[u64], _kind: Kind) -> Result<()> {
        for d in [self.fs_dir(id), self.work_dir(id)] {
            fs::create_dir_all(&d).map_err(Error::io("create", &d))?;
        }
        Ok(())
    }

    fn mounts(&self, id: u64, kind: Kind, parents: &[u64]) -> Vec<Mount> {
        let readonly = kind == Kind::View;
        match parents {
            [] => vec![Mount::bind(&self.fs_dir(id), readonly)],
            [only] if readonly => vec![Mount::bind(&self.fs_dir(*only), true)],
            _ => {
                let lower = parents
                    .iter()
                    .map(|p| self.fs_dir(*p).display().to_string())
                    .collect::<Vec<_>>()
                    .join(":");
                let mut options = Vec::new();
                if !readonly {
                    options.push("index=off".to_string());
                    options.push(format!("workdir={}", self.work_dir(id).display()));
                    options.push(format!("upperdir={}", self.fs_dir(id).display()));
                }
                options.push(format!("lowerdir={lower}"));
                vec![Mount {
                    kind: "overlay".into(),
                    source: "overlay".into(),
                    target: String::new(),
                    options,
                }]
            }
        }
    }

    fn remove(&self, id: u64) -> Result<()> {
        let d = self.root.join("snapshots").join(id.to_string());
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
