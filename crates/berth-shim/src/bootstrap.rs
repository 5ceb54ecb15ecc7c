//! How containerd (or berthd) runs a shim binary: `start` prints the address of a serving
//! shim, launching one unless the container's group (its pod) already has one; the server
//! serves the task API until it is shut down with no containers left; `delete` cleans up
//! after a shim that is gone. Addresses and flags are containerd's, so both daemons use it.
//!
//! The start reply is the bare address, which containerd 1.x reads and 2.x still accepts.
//! The task service is registered as both `containerd.task.v2.Task` (containerd 1.x and
//! berthd call it so) and `containerd.task.v3.Task` (containerd 2.x).

use std::{
    collections::HashMap,
    ffi::OsString,
    io::{Read, Write},
    os::unix::{net::UnixStream, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use containerd_shim::Flags;
use containerd_shim_protos::{
    api::DeleteResponse,
    protobuf::{Message, MessageField},
    shim_async::create_task,
};

use crate::{
    container::timestamp,
    error::Error,
    events::EventQueue,
    reaper::Reaper,
    runtime::{Runtime, RuntimeOptions},
    service::TaskService,
    warm::CgroupWarmer,
};

pub const RUNTIME_NAME: &str = "io.containerd.berth.v2";
const TASK_V3: &str = "containerd.task.v3.Task";
const TASK_V2: &str = "containerd.task.v2.Task";
/// Annotations that put containers in one group, served by one shim (a pod's).
const GROUP_ANNOTATIONS: [&str; 2] = [
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];
/// How long an exiting shim waits for its last events to reach the daemon.
const EVENTS_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `start` waits for a launched server to answer on its socket.
const SERVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The whole binary: returns its exit code.
pub fn main() -> i32 {
    let args: Vec<OsString> = std::env::args_os().collect();
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(flags) => flags,
        Err(e) => {
            eprintln!("{RUNTIME_NAME}: {e}");
            return 2;
        }
    };
    if flags.version {
        println!(
            "containerd-shim-berth-v2:\n  Version: {}",
            env!("CARGO_PKG_VERSION")
        );
        return 0;
    }
    let result = match flags.action.as_str() {
        "start" => start(&flags),
        "delete" => current_thread(delete(&flags)),
        "" if flags.info => Err(Error::Unimplemented(
            "-info: the berth shim reports no runtime features".into(),
        )),
        "" => serve(&flags),
        other => Err(Error::InvalidArgument(format!("unknown action {other:?}"))),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{RUNTIME_NAME}: {e}");
            1
        }
    }
}

fn current_thread<T>(f: impl std::future::Future<Output = Result<T, Error>>) -> Result<T, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Other(format!("start the async runtime: {e}")))?
        .block_on(f)
}

fn bundle_dir(flags: &Flags) -> Result<PathBuf, Error> {
    if !flags.bundle.is_empty() {
        return Ok(PathBuf::from(&flags.bundle));
    }
    std::env::current_dir().map_err(|e| Error::io("read", Path::new("."), e))
}

/// The group a container's shim is shared by: its pod, or itself.
fn grouping(bundle: &Path, id: &str) -> String {
    let spec: Option<serde_json::Value> = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let annotations = spec.as_ref().and_then(|s| s.get("annotations"));
    GROUP_ANNOTATIONS
        .iter()
        .find_map(|k| {
            annotations
                .and_then(|a| a.get(*k))
                .and_then(|v| v.as_str())
                .filter(|v| !v.is_empty())
        })
        .unwrap_or(id)
        .to_owned()
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

fn answers(path: &str) -> bool {
    UnixStream::connect(path).is_ok()
}

/// `start`: reuses the group's live shim or launches one, and prints its address.
fn start(flags: &Flags) -> Result<(), Error> {
    // The runtime options arrive on stdin; the server reads them from CreateTask instead.
    let _ = std::io::copy(&mut std::io::stdin().take(1 << 20), &mut std::io::sink());
    let bundle = bundle_dir(flags)?;
    let group = grouping(&bundle, &flags.id);
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &group);
    let path = socket_path(&address).to_owned();
    if !answers(&path) {
        launch(flags, &bundle, &address, &path)?;
    }
    let file = bundle.join("address");
    std::fs::write(&file, &address).map_err(|e| Error::io("write", &file, e))?;
    let mut out = std::io::stdout();
    let _ = out.write_all(address.as_bytes());
    let _ = out.flush();
    Ok(())
}

/// Launches the server in a session of its own and waits until it listens (or says why not).
fn launch(flags: &Flags, bundle: &Path, address: &str, path: &str) -> Result<(), Error> {
    if let Some(dir) = Path::new(path).parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    }
    let _ = std::fs::remove_file(path);
    let exe =
        std::env::current_exe().map_err(|e| Error::io("find", Path::new("/proc/self/exe"), e))?;
    let mut cmd = Command::new(exe);
    cmd.current_dir(bundle)
        .args([
            "-namespace",
            &flags.namespace,
            "-id",
            &flags.id,
            "-address",
            &flags.address,
        ])
        .args(["-socket", address]);
    if !flags.publish_binary.is_empty() {
        cmd.args(["-publish-binary", &flags.publish_binary]);
    }
    if flags.debug {
        cmd.arg("-debug");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // The server lives as long as its containers: without glibc's thread caches its heap
    // in use stays flat over any number of execs (see `berth_tunables`).
    berth_tunables::start_without_thread_caches(&mut cmd);
    // SAFETY: setsid is async-signal-safe; the server must not share the daemon's session,
    // so that signals to the daemon's process group do not reach it.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Other(format!("launch the shim server: {e}")))?;
    // The server closes this pipe once it listens, or writes why it could not first.
    let mut said = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut said);
    }
    let deadline = std::time::Instant::now() + SERVE_TIMEOUT;
    while !answers(path) {
        if let Ok(Some(status)) = child.try_wait() {
            let said = said.trim();
            return Err(Error::Other(if said.is_empty() {
                format!("shim server exited with {status} before serving")
            } else {
                format!("shim server: {said}")
            }));
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            return Err(Error::Other(format!(
                "shim server did not listen on {path} within {SERVE_TIMEOUT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// The server: set up before any thread exists (subreaper, log), then one async thread.
fn serve(flags: &Flags) -> Result<(), Error> {
    // SAFETY: the server has no other thread yet.
    unsafe { berth_tunables::restore_callers_tunables() };
    if flags.socket.is_empty() {
        return Err(Error::InvalidArgument(
            "-socket is required to serve".into(),
        ));
    }
    if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        return Err(Error::Other(format!("become the child subreaper: {e}")));
    }
    // containerd and berthd read the shim's log from the `log` fifo in the bundle.
    if Path::new("log").exists() {
        if let Err(e) =
            containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id)
        {
            eprintln!("{RUNTIME_NAME}: log: {e}");
        }
    }
    let result = current_thread(serve_tasks(flags));
    if let Err(e) = &result {
        // Until it listens the server's stdout is `start`'s pipe: tell it why.
        println!("{e}");
        log::error!("{e}");
    }
    result
}

async fn serve_tasks(flags: &Flags) -> Result<(), Error> {
    // Before any child exists, so that no exit is missed.
    let sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        .map_err(|e| Error::Other(format!("watch SIGCHLD: {e}")))?;
    let reaper = Reaper::new();
    tokio::spawn(reaper.clone().run(sigchld));
    // The Create that follows will move the container's processes: start the wait for the
    // cgroup lock before it arrives.
    let warmer = CgroupWarmer::of_this_process().map(Arc::new);
    if let Some(w) = &warmer {
        w.warm(&reaper);
    }

    let path = socket_path(&flags.socket).to_owned();
    if Path::new(&path).exists() {
        if answers(&path) {
            // Another server of the same group won the race; `start` reports its address.
            release_start_pipe();
            return Ok(());
        }
        let _ = std::fs::remove_file(&path);
    }

    let ttrpc_address = std::env::var("TTRPC_ADDRESS").map_err(|_| {
        Error::InvalidArgument("TTRPC_ADDRESS is not set: no address to publish events to".into())
    })?;
    let (events, rx, pending) = EventQueue::new();
    tokio::spawn(crate::events::forward(
        ttrpc_address,
        flags.namespace.clone(),
        rx,
        pending,
    ));

    let service = TaskService::new(&flags.namespace, reaper, events.clone(), warmer);
    let shared = service.shared();
    let v3 = create_task(Arc::new(service.clone()));
    let v2: HashMap<_, _> = create_task(Arc::new(service))
        .into_iter()
        .map(|(name, s)| (name.replace(TASK_V3, TASK_V2), s))
        .collect();
    let mut server = ttrpc::asynchronous::Server::new()
        .bind(&format!("unix://{path}"))
        .map_err(|e| Error::Other(format!("listen on {path}: {e}")))?
        .register_service(v3)
        .register_service(v2);
    server
        .start()
        .await
        .map_err(|e| Error::Other(format!("serve on {path}: {e}")))?;
    release_start_pipe();
    log::info!("serving {RUNTIME_NAME} tasks on {path}");

    shared.exit.notified().await;
    events.flushed(EVENTS_FLUSH_TIMEOUT).await;
    let _ = server.shutdown().await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Points stdout at stderr (/dev/null), which closes `start`'s pipe: the signal that the
/// server listens.
fn release_start_pipe() {
    let _ = rustix::stdio::dup2_stdout(rustix::stdio::stderr());
}

/// `delete`: what is left of a container whose shim is gone is killed and deleted by its
/// runtime, and its rootfs unmounted.
async fn delete(flags: &Flags) -> Result<(), Error> {
    let sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        .map_err(|e| Error::Other(format!("watch SIGCHLD: {e}")))?;
    let reaper = Reaper::new();
    tokio::spawn(reaper.clone().run(sigchld));
    let bundle = bundle_dir(flags)?;
    let options = RuntimeOptions::load(&bundle);
    let runtime = Runtime::new(&bundle, &flags.namespace, &options, reaper)?;
    if let Err(e) = runtime.delete(&flags.id).await {
        eprintln!("{RUNTIME_NAME}: delete {:?}: {e}", flags.id);
    }
    let rootfs = bundle.join("rootfs");
    if let Err(e) = containerd_shim::mount::umount_recursive(rootfs.to_str(), libc::MNT_DETACH) {
        eprintln!("{RUNTIME_NAME}: unmount {}: {e}", rootfs.display());
    }
    // A shim that was killed leaves its socket behind; one that still answers serves other
    // containers of the same pod and keeps it.
    if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
        let path = socket_path(address.trim());
        if Path::new(path).exists() && !answers(path) {
            let _ = std::fs::remove_file(path);
        }
    }
    let pid = std::fs::read_to_string(bundle.join("init.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let response = DeleteResponse {
        pid,
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: MessageField::some(timestamp(std::time::SystemTime::now())),
        ..Default::default()
    };
    let bytes = response
        .write_to_bytes()
        .map_err(|e| Error::Other(format!("encode the delete answer: {e}")))?;
    let mut out = std::io::stdout();
    let _ = out.write_all(&bytes);
    let _ = out.flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_share_a_group() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(grouping(dir.path(), "c1"), "c1");
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod1"}}"#,
        )
        .unwrap();
        assert_eq!(grouping(dir.path(), "c1"), "pod1");
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod1","io.containerd.runc.v2.group":"g"}}"#,
        )
        .unwrap();
        assert_eq!(grouping(dir.path(), "c1"), "g");
    }

    #[test]
    fn socket_paths() {
        assert_eq!(
            socket_path("unix:///run/containerd/s/ab"),
            "/run/containerd/s/ab"
        );
        assert_eq!(socket_path("/run/x"), "/run/x");
    }
}
