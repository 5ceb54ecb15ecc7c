//! OCI bundles under the state directory, laid out as containerd lays them out
//! (`<state>/io.containerd.runtime.v2.task/<namespace>/<id>`): config.json, the rootfs mount
//! point, the `log` fifo the shim writes to, and what berth needs to find the shim again.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use berth_core::Error as CoreError;
use berth_core::{ContainerId, Namespace};

use crate::error::{Error, Result};
use crate::task::TaskKey;

pub const TASK_DIR: &str = "io.containerd.runtime.v2.task";
/// Where berth records the shim binary a bundle was started with, for cleanup after a restart.
const SHIM_BINARY_FILE: &str = "shim-binary";

#[derive(Debug, Clone)]
pub struct Bundle {
    pub path: PathBuf,
    pub key: TaskKey,
}

/// containerd's identifier rule, for exec ids: alphanumerics joined by single `.`, `_` or
/// `-`, at most 76.
pub fn validate_id(id: &str) -> Result<()> {
    ContainerId::new(id).map(|_| ()).map_err(Error::from)
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let f = CoreError::io(op, path.to_path_buf());
    move |e| Error::Core(f(e))
}

impl Bundle {
    pub fn path_for(state: &Path, key: &TaskKey) -> PathBuf {
        state
            .join(TASK_DIR)
            .join(key.namespace.as_str())
            .join(key.id.as_str())
    }

    /// Writes a new bundle. A leftover directory of a task that no longer exists is replaced;
    /// on failure nothing is left behind.
    pub fn create(state: &Path, key: &TaskKey, spec: &[u8], shim: &Path) -> Result<Bundle> {
        let id = &key.id;
        match serde_json::from_slice::<serde_json::Value>(spec) {
            Ok(serde_json::Value::Object(_)) => {}
            Ok(_) => {
                return Err(CoreError::InvalidArgument(format!(
                    "runtime spec of container {id:?} is not a JSON object"
                ))
                .into())
            }
            Err(e) => {
                return Err(CoreError::InvalidArgument(format!(
                    "runtime spec of container {id:?} is not valid JSON: {e}"
                ))
                .into())
            }
        }
        let b = Bundle {
            path: Self::path_for(state, key),
            key: key.clone(),
        };
        if b.path.exists() {
            tracing::warn!(bundle = %b.path.display(), "replacing a stale bundle");
            b.remove()?;
        }
        let parent = b.path.parent().expect("bundle path has a parent");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(parent)
            .map_err(io("create", parent))?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&b.path)
            .map_err(io("create", &b.path))?;
        if let Err(e) = b.fill(spec, shim) {
            let _ = std::fs::remove_dir_all(&b.path);
            return Err(e);
        }
        Ok(b)
    }

    fn fill(&self, spec: &[u8], shim: &Path) -> Result<()> {
        let config = self.path.join("config.json");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&config)
            .and_then(|mut f| f.write_all(spec))
            .map_err(io("write", &config))?;
        let rootfs = self.rootfs();
        std::fs::DirBuilder::new()
            .mode(0o711)
            .create(&rootfs)
            .map_err(io("create", &rootfs))?;
        let log = self.path.join("log");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &log,
            rustix::fs::Mode::from_raw_mode(0o700),
        )
        .map_err(|e| io("mkfifo", &log)(e.into()))?;
        let rec = self.path.join(SHIM_BINARY_FILE);
        std::fs::write(&rec, shim.as_os_str().as_encoded_bytes()).map_err(io("write", &rec))?;
        Ok(())
    }

    /// A bundle found on disk, as recovery finds them; a directory whose names are not a
    /// namespace and a container id is no bundle of ours.
    pub fn open(path: PathBuf) -> Option<Bundle> {
        let id = ContainerId::new(path.file_name()?.to_str()?).ok()?;
        let namespace = Namespace::new(path.parent()?.file_name()?.to_str()?).ok()?;
        Some(Bundle {
            path,
            key: TaskKey { namespace, id },
        })
    }

    /// Every bundle under `state`, by namespace directory.
    pub fn list(state: &Path) -> Vec<Bundle> {
        let mut out = Vec::new();
        let Ok(namespaces) = std::fs::read_dir(state.join(TASK_DIR)) else {
            return out;
        };
        for ns in namespaces.flatten() {
            let Ok(ids) = std::fs::read_dir(ns.path()) else {
                continue;
            };
            out.extend(ids.flatten().filter_map(|e| Bundle::open(e.path())));
        }
        out
    }

    pub fn rootfs(&self) -> PathBuf {
        self.path.join("rootfs")
    }

    pub fn log_fifo(&self) -> PathBuf {
        self.path.join("log")
    }

    /// The ttrpc address the shim wrote when it started.
    pub fn shim_address(&self) -> Option<String> {
        let s = std::fs::read_to_string(self.path.join("address")).ok()?;
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_owned())
    }

    pub fn shim_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.path.join("shim.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Records the shim's pid where containerd's newer shims write it themselves, so that
    /// operators and cleanup find the shim of a bundle.
    pub fn record_shim_pid(&self, pid: u32) {
        if self.shim_pid().is_none() && pid != 0 {
            let _ = std::fs::write(self.path.join("shim.pid"), pid.to_string());
        }
    }

    pub fn shim_binary(&self) -> Option<PathBuf> {
        let bytes = std::fs::read(self.path.join(SHIM_BINARY_FILE)).ok()?;
        Some(PathBuf::from(std::ffi::OsString::from(
            String::from_utf8(bytes).ok()?,
        )))
    }

    /// Removes the bundle (blocking: unmounts and walks directories). The rootfs is
    /// unmounted first; a rootfs that stays mounted is an error, never a reason to delete
    /// through into the container's files, and the removal never crosses into any mount.
    pub fn remove(&self) -> Result<()> {
        let rootfs = self.rootfs();
        for _ in 0..16 {
            if !is_mount_point(&rootfs) {
                break;
            }
            berth_core::mount::unmount(&rootfs)?;
        }
        if is_mount_point(&rootfs) {
            return Err(Error::precondition(format!(
                "rootfs {} of task {:?} is still mounted",
                rootfs.display(),
                self.key.id
            )));
        }
        match remove_tree_on_one_fs(&self.path) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                return Err(Error::precondition(format!(
                    "bundle {} of task {:?} has something mounted inside: {e}",
                    self.path.display(),
                    self.key.id
                )))
            }
            Err(e) => return Err(io("remove", &self.path)(e)),
        }
        // The namespace directory goes with its last bundle.
        if let Some(parent) = self.path.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        Ok(())
    }
}

/// Whether `path` is the root of a mount, as the kernel says (statx's mount-root
/// attribute), whatever way the path is spelt.
pub fn is_mount_point(path: &Path) -> bool {
    use rustix::fs::{statx, AtFlags, StatxAttributes, StatxFlags, CWD};
    match statx(
        CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    ) {
        Ok(st) => {
            let known = st.stx_attributes_mask;
            let attrs = st.stx_attributes;
            if known.contains(StatxAttributes::MOUNT_ROOT) {
                return attrs.contains(StatxAttributes::MOUNT_ROOT);
            }
            // Kernels before 5.8: a different device than the parent's is a mount.
            let parent = path.parent().unwrap_or(Path::new("/"));
            statx(CWD, parent, AtFlags::empty(), StatxFlags::BASIC_STATS).is_ok_and(|p| {
                (p.stx_dev_major, p.stx_dev_minor) != (st.stx_dev_major, st.stx_dev_minor)
            })
        }
        Err(_) => false,
    }
}

/// Removes a directory tree without following symlinks and without entering a directory
/// on another mount (EXDEV), so a mount left inside is never emptied.
fn remove_tree_on_one_fs(path: &Path) -> std::io::Result<()> {
    use rustix::fs::{fstat, openat, unlinkat, AtFlags, Dir, Mode, OFlags, CWD};
    fn clear(dir: &std::os::fd::OwnedFd, dev: u64) -> std::io::Result<()> {
        let mut names = Vec::new();
        for e in Dir::read_from(dir)? {
            let e = e?;
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(std::ffi::CString::new(n).map_err(std::io::Error::other)?);
            }
        }
        for n in names {
            match unlinkat(dir, n.as_c_str(), AtFlags::empty()) {
                Ok(()) => continue,
                Err(rustix::io::Errno::ISDIR) | Err(rustix::io::Errno::PERM) => {}
                Err(e) => return Err(e.into()),
            }
            let sub = openat(
                dir,
                n.as_c_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            if fstat(&sub)?.st_dev != dev || is_mount_root_fd(&sub) {
                return Err(std::io::Error::from_raw_os_error(libc::EXDEV));
            }
            clear(&sub, dev)?;
            unlinkat(dir, n.as_c_str(), AtFlags::REMOVEDIR)?;
        }
        Ok(())
    }
    let top = openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let dev = fstat(&top)?.st_dev;
    clear(&top, dev)?;
    std::fs::remove_dir(path)
}

fn is_mount_root_fd(fd: &std::os::fd::OwnedFd) -> bool {
    use rustix::fs::{statx, AtFlags, StatxAttributes, StatxFlags};
    statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)
        .is_ok_and(|st| st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_containerd_rules() {
        for ok in ["a", "web-1", "a.b_c-d", "A9"] {
            validate_id(ok).unwrap();
        }
        for bad in ["", "..", "../x", "a/b", "-a", "a-", "a..b", &"x".repeat(77)] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn create_writes_bundle_and_remove_takes_it_away() {
        let state = tempfile::tempdir().unwrap();
        let b = Bundle::create(
            state.path(),
            &TaskKey::new("default", "c1").unwrap(),
            br#"{"ociVersion":"1.0.2"}"#,
            Path::new("/usr/bin/containerd-shim-runc-v2"),
        )
        .unwrap();
        assert!(b.path.join("config.json").is_file());
        assert!(b.rootfs().is_dir());
        assert_eq!(
            b.shim_binary().unwrap(),
            Path::new("/usr/bin/containerd-shim-runc-v2")
        );
        let found = Bundle::list(state.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].key.to_string(), "default/c1");
        b.remove().unwrap();
        assert!(!state.path().join(TASK_DIR).join("default").exists());
    }

    #[test]
    fn bad_spec_leaves_nothing() {
        let state = tempfile::tempdir().unwrap();
        for spec in [&b"not json"[..], b"[1]"] {
            let key = TaskKey::new("ns", "c1").unwrap();
            let e = Bundle::create(state.path(), &key, spec, Path::new("/x")).unwrap_err();
            assert!(e.to_string().contains("\"c1\""), "{e}");
            assert!(!Bundle::path_for(state.path(), &key).exists());
        }
    }

    #[test]
    fn mount_points_are_known_by_identity_not_by_spelling() {
        assert!(is_mount_point(Path::new("/proc")));
        assert!(is_mount_point(Path::new("/proc/../proc")));
        let d = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(d.path()));
    }

    #[test]
    fn root_removal_never_enters_another_mount() {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test needs root to mount"
        );
        let d = tempfile::tempdir().unwrap();
        let bundle = d.path().join("b");
        let inner = bundle.join("rootfs/mnt");
        std::fs::create_dir_all(&inner).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), b"keep").unwrap();
        rustix::mount::mount_bind(outside.path(), &inner).unwrap();
        let e = remove_tree_on_one_fs(&bundle).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
        assert!(outside.path().join("precious").exists());
        rustix::mount::unmount(&inner, rustix::mount::UnmountFlags::DETACH).unwrap();
        remove_tree_on_one_fs(&bundle).unwrap();
        assert!(!bundle.exists());
    }
}
