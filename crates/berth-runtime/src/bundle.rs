//! OCI bundles under the state directory, laid out as containerd lays them out
//! (`<state>/io.containerd.runtime.v2.task/<namespace>/<id>`): config.json, the rootfs mount
//! point, the `log` fifo the shim writes to, and what berth needs to find the shim again.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use berth_core::Error as CoreError;

use crate::error::{Error, Result};

pub const TASK_DIR: &str = "io.containerd.runtime.v2.task";
/// Where berth records the shim binary a bundle was started with, for cleanup after a restart.
const SHIM_BINARY_FILE: &str = "shim-binary";

#[derive(Debug, Clone)]
pub struct Bundle {
    pub path: PathBuf,
    pub namespace: String,
    pub id: String,
}

/// containerd's identifier rule: alphanumerics joined by single `.`, `_` or `-`, at most 76.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 76
        && id
            .split(['.', '_', '-'])
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(CoreError::InvalidArgument(format!(
            "container id {id:?} is not a valid identifier (alphanumerics joined by '.', '_' or '-', at most 76)"
        ))
        .into())
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let f = CoreError::io(op, path.to_path_buf());
    move |e| Error::Core(f(e))
}

impl Bundle {
    pub fn path_for(state: &Path, ns: &str, id: &str) -> PathBuf {
        state.join(TASK_DIR).join(ns).join(id)
    }

    /// Writes a new bundle. A leftover directory of a task that no longer exists is replaced;
    /// on failure nothing is left behind.
    pub fn create(state: &Path, ns: &str, id: &str, spec: &[u8], shim: &Path) -> Result<Bundle> {
        validate_id(id)?;
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
            path: Self::path_for(state, ns, id),
            namespace: ns.to_owned(),
            id: id.to_owned(),
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

    /// A bundle found on disk, as recovery finds them.
    pub fn open(path: PathBuf) -> Option<Bundle> {
        let id = path.file_name()?.to_str()?.to_owned();
        let namespace = path.parent()?.file_name()?.to_str()?.to_owned();
        Some(Bundle {
            path,
            namespace,
            id,
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

    /// Removes the bundle. The rootfs is unmounted first; a rootfs that stays mounted is an
    /// error, never a reason to delete through into the container's files.
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
                self.id
            )));
        }
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &self.path)(e)),
        }
        // The namespace directory goes with its last bundle.
        if let Some(parent) = self.path.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        Ok(())
    }
}

/// Whether `path` is a mount point in this mount namespace.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape_mountinfo(m) == want)
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
            "default",
            "c1",
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
        assert_eq!(
            (found[0].namespace.as_str(), found[0].id.as_str()),
            ("default", "c1")
        );
        b.remove().unwrap();
        assert!(!state.path().join(TASK_DIR).join("default").exists());
    }

    #[test]
    fn bad_spec_leaves_nothing() {
        let state = tempfile::tempdir().unwrap();
        for spec in [&b"not json"[..], b"[1]"] {
            let e = Bundle::create(state.path(), "ns", "c1", spec, Path::new("/x")).unwrap_err();
            assert!(e.to_string().contains("\"c1\""), "{e}");
        }
        assert!(!Bundle::path_for(state.path(), "ns", "c1").exists());
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), r"/a b\c");
    }
}
