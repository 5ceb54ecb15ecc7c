//! Starting and removing a container that `berth-container` made, done by the shim itself
//! when nothing asks for the runtime's own code: executing `berth-container start` costs
//! ~1.3 ms and `berth-container delete` ~3.5 ms (libcgroups reads the mount table a dozen
//! times through its safe procfs path), on every container's way.
//!
//! What the shim reads here is `berth-container`'s state directory, `<root>/<id>`, as
//! youki's libcontainer (the version this workspace pins) writes it: `state.json` (the
//! OCI state with `status`, `useSystemd`, `intelRdtDir`), `youki_config.json` (the spec's
//! hooks and the resolved `cgroup_path`) and `notify.sock` (where the init waits for
//! start). Anything the shim does not handle the same way — hooks to run, systemd's
//! cgroups, an Intel RDT group, a status it does not expect, a file it cannot read — makes
//! it leave the work to `berth-container`, so that both ways end in the same state.

use std::{
    io::Write,
    os::{fd::AsRawFd, unix::net::UnixStream},
    path::{Component, Path, PathBuf},
    time::Duration,
};

use serde_json::Value;

use crate::error::Error;

const STATE_FILE: &str = "state.json";
const CONFIG_FILE: &str = "youki_config.json";
const NOTIFY_SOCKET: &str = "notify.sock";
/// The cgroup v1 controllers libcontainer places a container in (libcgroups' list).
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "hugetlb",
    "memory",
    "pids",
    "perf_event",
    "blkio",
    "net_prio",
    "net_cls",
    "freezer",
];
/// Waits between tries to remove a cgroup whose last processes are still leaving it.
const RMDIR_BACKOFF: &[u64] = &[5, 10, 20, 50, 100];

/// One container's state directory as `berth-container` left it.
#[derive(Debug)]
pub struct OwnState {
    dir: PathBuf,
    state: Value,
    /// The cgroup's path inside each hierarchy, when the shim can remove it by itself.
    cgroup_path: Option<PathBuf>,
    poststart_hooks: bool,
    poststop_hooks: bool,
}

impl OwnState {
    /// The state of container `id` under the runtime root; None when it cannot be read
    /// (the caller then leaves the work to `berth-container`, which says what is wrong).
    pub fn load(root: &Path, id: &str) -> Option<Self> {
        let dir = root.join(id);
        let read = |name: &str| -> Option<Value> {
            serde_json::from_slice(&std::fs::read(dir.join(name)).ok()?).ok()
        };
        let (state, config) = (read(STATE_FILE)?, read(CONFIG_FILE)?);
        Some(Self::from_documents(dir, state, &config))
    }

    fn from_documents(dir: PathBuf, state: Value, config: &Value) -> Self {
        let has_hooks = |kind: &str| {
            config
                .pointer(&format!("/hooks/{kind}"))
                .is_some_and(|h| !h.is_null() && h.as_array().is_none_or(|a| !a.is_empty()))
        };
        let cgroup_path = config
            .get("cgroup_path")
            .and_then(Value::as_str)
            .map(PathBuf::from)
            .filter(|p| removable_cgroup_path(p));
        OwnState {
            dir,
            cgroup_path,
            poststart_hooks: has_hooks("poststart"),
            poststop_hooks: has_hooks("poststop"),
            state,
        }
    }

    fn status(&self) -> &str {
        self.state
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// Created and waiting, with no poststart hooks to run.
    pub fn startable_by_shim(&self) -> bool {
        self.status() == "created" && !self.poststart_hooks
    }

    /// Nothing to remove but a cgroup on cgroupfs and the state directory.
    pub fn removable_by_shim(&self) -> bool {
        let no_systemd = self.state.get("useSystemd") == Some(&Value::Bool(false));
        let no_rdt = self.state.get("intelRdtDir").is_none_or(Value::is_null);
        self.cgroup_path.is_some()
            && no_systemd
            && no_rdt
            && !self.poststop_hooks
            && matches!(self.status(), "created" | "running" | "stopped" | "paused")
    }

    /// Lets the init run its process (it waits on the notify socket), then records the
    /// container as running.
    pub fn start(&mut self) -> Result<(), Error> {
        let failed = |message: String| Error::Runtime {
            runtime: "berth-container".into(),
            action: "start".into(),
            message,
        };
        // Through the directory's descriptor: a socket path is limited to 107 bytes, and
        // bundles nest deep.
        let dir = std::fs::File::open(&self.dir).map_err(|e| Error::io("open", &self.dir, e))?;
        let socket = format!("/proc/self/fd/{}/{NOTIFY_SOCKET}", dir.as_raw_fd());
        let mut stream = UnixStream::connect(&socket).map_err(|e| {
            failed(format!(
                "the container's init is not waiting on {}: {e}",
                self.dir.join(NOTIFY_SOCKET).display()
            ))
        })?;
        stream
            .write_all(b"start container")
            .map_err(|e| failed(format!("notify the container's init: {e}")))?;
        drop(stream);
        self.state["status"] = Value::from("running");
        self.save()
    }

    /// Writes the state back whole, by rename, so that a reader never sees half of it.
    fn save(&self) -> Result<(), Error> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(".state.json.shim");
        std::fs::write(&tmp, self.state.to_string()).map_err(|e| Error::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io("replace", &path, e))
    }

    /// Removes the container after its init has exited: any process still in its cgroups is
    /// killed, the cgroups are removed, then the state directory.
    pub async fn remove(self) -> Result<(), Error> {
        let Some(path) = &self.cgroup_path else {
            return Err(Error::Other(
                "the cgroup is not the shim's to remove".into(),
            ));
        };
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::io("read", Path::new("/proc/self/mountinfo"), e))?;
        for dir in cgroup_dirs(&mountinfo, path) {
            remove_cgroup(&dir).await?;
        }
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("remove", &self.dir, e))
            }
            _ => Ok(()),
        }
    }
}

/// A cgroup path the shim may remove: below a hierarchy's root, without `..`.
fn removable_cgroup_path(path: &Path) -> bool {
    let mut normal = 0;
    for c in path.components() {
        match c {
            Component::Normal(_) => normal += 1,
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return false,
        }
    }
    normal > 0
}

/// The directories of cgroup `path` that libcontainer makes: in each v1 hierarchy of a
/// controller it manages (legacy and hybrid hosts), or in the unified hierarchy when
/// `/sys/fs/cgroup` is one.
fn cgroup_dirs(mountinfo: &str, path: &Path) -> Vec<PathBuf> {
    let relative: PathBuf = path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    let mut mounts: Vec<PathBuf> = Vec::new();
    let mut unified = None;
    for (fstype, options, point) in crate::cgroup::mounts(mountinfo) {
        let managed = || options.split(',').any(|o| V1_CONTROLLERS.contains(&o));
        match fstype {
            "cgroup" if managed() && !mounts.contains(&point) => mounts.push(point),
            "cgroup2" if point == Path::new("/sys/fs/cgroup") => unified = Some(point),
            _ => {}
        }
    }
    if let Some(root) = unified {
        mounts = vec![root];
    }
    mounts.into_iter().map(|m| m.join(&relative)).collect()
}

/// Kills what is left in one cgroup directory and removes it, trying again while its last
/// processes leave; a directory that is not there is already removed.
async fn remove_cgroup(dir: &Path) -> Result<(), Error> {
    let mut waits = RMDIR_BACKOFF.iter();
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                let Some(wait) = waits.next() else {
                    return Err(Error::Runtime {
                        runtime: "berth-container".into(),
                        action: "delete".into(),
                        message: format!("remove cgroup {}: {e}", dir.display()),
                    });
                };
                kill_members(dir);
                tokio::time::sleep(Duration::from_millis(*wait)).await;
            }
        }
    }
}

/// SIGKILL to every process in the cgroup (`cgroup.kill` where the kernel has it).
fn kill_members(dir: &Path) {
    if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state(config: Value, state: Value) -> OwnState {
        OwnState::from_documents(PathBuf::from("/r/c1"), state, &config)
    }

    fn plain_state(status: &str) -> Value {
        json!({"ociVersion": "1.1.0", "id": "c1", "status": status, "pid": 42,
               "bundle": "/b", "useSystemd": false, "intelRdtDir": null})
    }

    #[test]
    fn a_plain_container_is_started_and_removed_by_the_shim() {
        let config = json!({"hooks": null, "cgroup_path": "/default/c1"});
        let s = state(config.clone(), plain_state("created"));
        assert!(s.startable_by_shim() && s.removable_by_shim());
        assert_eq!(s.cgroup_path.as_deref(), Some(Path::new("/default/c1")));
        let s = state(config, plain_state("stopped"));
        assert!(!s.startable_by_shim() && s.removable_by_shim());
    }

    #[test]
    fn hooks_systemd_rdt_and_odd_paths_are_left_to_berth_container() {
        let hooks =
            |kind: &str| json!({"hooks": {kind: [{"path": "/bin/true"}]}, "cgroup_path": "/c"});
        let s = state(hooks("poststart"), plain_state("created"));
        assert!(!s.startable_by_shim() && s.removable_by_shim());
        let s = state(hooks("poststop"), plain_state("stopped"));
        assert!(!s.removable_by_shim());
        // Hooks of other kinds, or empty lists, change nothing here.
        let s = state(hooks("prestart"), plain_state("created"));
        assert!(s.startable_by_shim() && s.removable_by_shim());
        let s = state(
            json!({"hooks": {"poststop": []}, "cgroup_path": "/c"}),
            plain_state("stopped"),
        );
        assert!(s.removable_by_shim());

        let config = json!({"hooks": null, "cgroup_path": "/c"});
        let mut systemd = plain_state("stopped");
        systemd["useSystemd"] = json!(true);
        assert!(!state(config.clone(), systemd).removable_by_shim());
        let mut rdt = plain_state("stopped");
        rdt["intelRdtDir"] = json!("/sys/fs/resctrl/c1");
        assert!(!state(config.clone(), rdt).removable_by_shim());
        let mut unknown = plain_state("stopped");
        unknown.as_object_mut().unwrap().remove("useSystemd");
        assert!(!state(config.clone(), unknown).removable_by_shim());
        assert!(!state(config, plain_state("creating")).removable_by_shim());
        for path in ["/", "", "/a/../../b", "../x"] {
            let s = state(json!({"cgroup_path": path}), plain_state("stopped"));
            assert!(!s.removable_by_shim(), "{path:?}");
        }
        assert!(state(json!({}), plain_state("stopped"))
            .cgroup_path
            .is_none());
    }

    const HYBRID: &str = "\
25 30 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
31 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
32 25 0:30 / /sys/fs/cgroup/rdma rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,rdma
";

    #[test]
    fn cgroup_directories_are_those_of_libcontainers_hierarchies() {
        // Not the named systemd hierarchy, not the unified one of a hybrid host, not a
        // controller libcontainer does not manage; a shared mount once.
        assert_eq!(
            cgroup_dirs(HYBRID, Path::new("/default/c1")),
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/default/c1"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/default/c1"),
            ]
        );
        let unified = "24 30 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup_dirs(unified, Path::new("k8s/pod/c1")),
            vec![PathBuf::from("/sys/fs/cgroup/k8s/pod/c1")]
        );
    }

    #[tokio::test]
    async fn a_missing_cgroup_is_already_removed_and_a_busy_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        remove_cgroup(&dir.path().join("gone")).await.unwrap();
        let busy = dir.path().join("busy");
        std::fs::create_dir_all(busy.join("child")).unwrap();
        let e = remove_cgroup(&busy).await.unwrap_err().to_string();
        assert!(e.contains("remove cgroup") && e.contains("busy"), "{e}");
    }

    #[tokio::test]
    async fn start_notifies_the_waiting_init_and_records_it_running() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a-long-runtime-root-".repeat(6));
        let cdir = root.join("c1");
        std::fs::create_dir_all(&cdir).unwrap();
        std::fs::write(cdir.join(STATE_FILE), plain_state("created").to_string()).unwrap();
        std::fs::write(
            cdir.join(CONFIG_FILE),
            r#"{"hooks":null,"cgroup_path":"/c1"}"#,
        )
        .unwrap();
        assert!(cdir.join(NOTIFY_SOCKET).as_os_str().len() > 108);
        let mut s = OwnState::load(&root, "c1").unwrap();
        // No init listening yet: the error names the socket.
        let e = s.start().unwrap_err().to_string();
        assert!(
            e.contains("not waiting") && e.contains(NOTIFY_SOCKET),
            "{e}"
        );

        let listener = {
            let d = std::fs::File::open(&cdir).unwrap();
            std::os::unix::net::UnixListener::bind(format!(
                "/proc/self/fd/{}/{NOTIFY_SOCKET}",
                d.as_raw_fd()
            ))
            .unwrap()
        };
        let init = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut got = String::new();
            std::io::Read::read_to_string(&mut c, &mut got).unwrap();
            got
        });
        let mut s = OwnState::load(&root, "c1").unwrap();
        s.start().unwrap();
        assert_eq!(init.join().unwrap(), "start container");
        let saved: Value =
            serde_json::from_slice(&std::fs::read(cdir.join(STATE_FILE)).unwrap()).unwrap();
        let mut expected = plain_state("created");
        expected["status"] = json!("running");
        assert_eq!(saved, expected);
        assert!(!OwnState::load(&root, "c1").unwrap().startable_by_shim());
        assert!(OwnState::load(&root, "missing").is_none());
    }
}
