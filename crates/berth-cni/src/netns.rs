//! A pod's namespaces held open without a process: a short-lived thread unshares the
//! network, IPC and UTS namespaces, brings the loopback up, sets the hostname, and
//! bind-mounts each namespace onto a file under berthd's state directory. Containers join
//! those files; the namespaces outlive berthd and are found again by their paths.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use rustix::mount::{mount_bind, unmount, UnmountFlags};
use rustix::thread::{unshare_unsafe, UnshareFlags};

use crate::error::{Error, Result};

/// The namespace files of one pod.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodNamespaces {
    /// Absent for a pod on the host's network.
    pub net: Option<PathBuf>,
    /// Absent for a pod in the host's IPC namespace.
    pub ipc: Option<PathBuf>,
    /// Absent for a pod on the host's network (it keeps the host's name too).
    pub uts: Option<PathBuf>,
}

/// Which namespaces a pod gets of its own.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
}

fn io(op: &'static str, p: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    Error::io(op, p.to_path_buf())
}

/// Makes the namespaces under `dir` (created), named `<kind>`. On failure nothing is left.
pub fn create(dir: &Path, want: Want, hostname: &str) -> Result<PodNamespaces> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let path = |k: &str| dir.join(k);
    let mut made = PodNamespaces {
        net: want.net.then(|| path("net")),
        ipc: want.ipc.then(|| path("ipc")),
        uts: want.uts.then(|| path("uts")),
    };
    for p in [&made.net, &made.ipc, &made.uts].into_iter().flatten() {
        std::fs::File::create(p).map_err(io("create", p))?;
    }
    let (job, hostname) = (made.clone(), hostname.to_owned());
    let r = std::thread::Builder::new()
        .name("berth-netns".into())
        .spawn(move || pin_on_this_thread(&job, &hostname))
        .map_err(io("spawn namespace thread for", dir))?
        .join()
        .unwrap_or_else(|_| {
            Err(Error::FailedPrecondition(
                "the namespace thread panicked".into(),
            ))
        });
    if let Err(e) = r {
        remove(&made);
        let _ = std::fs::remove_dir(dir);
        return Err(e);
    }
    if !want.net {
        made.net = None;
    }
    Ok(made)
}

/// Runs on a thread of its own, which exits afterwards: its namespaces live on only
/// through the bind mounts.
fn pin_on_this_thread(ns: &PodNamespaces, hostname: &str) -> Result<()> {
    let mut flags = UnshareFlags::empty();
    if ns.net.is_some() {
        flags |= UnshareFlags::NEWNET;
    }
    if ns.ipc.is_some() {
        flags |= UnshareFlags::NEWIPC;
    }
    if ns.uts.is_some() {
        flags |= UnshareFlags::NEWUTS;
    }
    // SAFETY: unshare affects only this thread's namespaces, which no other code shares;
    // the thread ends when this function returns.
    unsafe { unshare_unsafe(flags) }
        .map_err(|e| Error::FailedPrecondition(format!("unshare: {e}")))?;
    if ns.uts.is_some() && !hostname.is_empty() {
        rustix::system::sethostname(hostname.as_bytes())
            .map_err(|e| Error::InvalidArgument(format!("hostname {hostname:?}: {e}")))?;
    }
    if ns.net.is_some() {
        loopback_up()?;
    }
    for (kind, p) in [("net", &ns.net), ("ipc", &ns.ipc), ("uts", &ns.uts)] {
        if let Some(p) = p {
            let src = PathBuf::from(format!("/proc/thread-self/ns/{kind}"));
            mount_bind(&src, p).map_err(|e| {
                Error::FailedPrecondition(format!("pin {kind} namespace at {}: {e}", p.display()))
            })?;
        }
    }
    Ok(())
}

/// Brings `lo` up in this thread's network namespace.
fn loopback_up() -> Result<()> {
    let fail = |what: &str, e: std::io::Error| {
        Error::FailedPrecondition(format!("bring up the loopback: {what}: {e}"))
    };
    // SAFETY: a plain socket(2) call; the descriptor is owned and closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(fail("socket", std::io::Error::last_os_error()));
    }
    let name = CString::new("lo").map_err(|e| fail("name", std::io::Error::other(e)))?;
    // SAFETY: ifreq is plain data; zeroed is a valid value for it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes_with_nul()) {
        *d = *s as libc::c_char;
    }
    // SAFETY: fd is a valid socket and req a valid ifreq for these ioctls.
    let r = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
            -1
        } else {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req)
        }
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the descriptor this function opened.
    unsafe { libc::close(fd) };
    if r < 0 {
        return Err(fail("ioctl", err));
    }
    Ok(())
}

/// Whether a namespace file still holds a namespace (a bind mount of nsfs).
pub fn is_open(p: &Path) -> bool {
    rustix::fs::statfs(p).is_ok_and(|s| s.f_type == 0x6e73_6673) // NSFS_MAGIC
}

/// Unmounts and removes the namespace files; what is already gone is fine.
pub fn remove(ns: &PodNamespaces) {
    for p in [&ns.net, &ns.ipc, &ns.uts].into_iter().flatten() {
        for _ in 0..4 {
            if unmount(p, UnmountFlags::DETACH).is_err() {
                break;
            }
        }
        let _ = std::fs::remove_file(p);
    }
}

/// Runs `f` on a thread inside the network namespace at `net` (to read or set what only
/// exists there), then lets the thread go.
pub fn in_netns<T: Send + 'static, E: From<Error> + Send + 'static>(
    net: &Path,
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    let net = net.to_owned();
    std::thread::Builder::new()
        .name("berth-in-netns".into())
        .spawn(move || {
            let file = std::fs::File::open(&net).map_err(io("open", &net))?;
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&file),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(|e| Error::FailedPrecondition(format!("join {}: {e}", net.display())))?;
            f()
        })
        .map_err(|e| Error::FailedPrecondition(format!("spawn netns thread: {e}")))?
        .join()
        .unwrap_or_else(|_| Err(Error::FailedPrecondition("netns thread panicked".into()).into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_namespaces_are_pinned_with_their_hostname_and_removed() {
        assert!(rustix::process::geteuid().is_root(), "this test needs root");
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("pod");
        let ns = create(
            &dir,
            Want {
                net: true,
                ipc: true,
                uts: true,
            },
            "pod-host",
        )
        .unwrap();
        let net = ns.net.clone().unwrap();
        assert!(is_open(&net) && is_open(ns.uts.as_ref().unwrap()));
        // Inside: only the loopback, and it is up.
        let names = in_netns::<_, Error>(&net, || {
            let mut out = Vec::new();
            // SAFETY: if_nameindex returns a list terminated by a zero entry, freed below.
            unsafe {
                let list = libc::if_nameindex();
                let mut p = list;
                while !p.is_null() && (*p).if_index != 0 {
                    out.push(
                        std::ffi::CStr::from_ptr((*p).if_name)
                            .to_string_lossy()
                            .into_owned(),
                    );
                    p = p.add(1);
                }
                libc::if_freenameindex(list);
            }
            Ok(out)
        })
        .unwrap();
        assert_eq!(names, ["lo"]);
        use std::os::unix::fs::MetadataExt;
        assert_ne!(
            std::fs::metadata(&net).unwrap().ino(),
            std::fs::metadata("/proc/self/ns/net").unwrap().ino(),
            "the pod has a network namespace of its own"
        );
        remove(&ns);
        assert!(!net.exists());
        remove(&ns); // twice is fine
    }
}
