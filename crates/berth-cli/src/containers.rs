//! Containers as the command line keeps them: berthd's container records, with what
//! Docker users name them by (a name, an id or a unique id prefix) and what `berth` adds in
//! labels (name, log path, ports, stop signal), their task's state, and their removal with
//! everything they own (task, snapshot, log, files).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::snapshots::RemoveSnapshotRequest;
use containerd_client::services::v1::{
    Container, DeleteContainerRequest, DeleteTaskRequest, GetRequest, KillRequest,
    ListContainersRequest, ListTasksRequest, WaitRequest,
};
use containerd_client::types::v1::{Process, Status};
use tonic::Code;

use crate::client::Client;
use crate::error::{Error, Result};

pub const LABEL_NAME: &str = "berth/name";
pub const LABEL_LOG: &str = "berth/log-path";
pub const LABEL_STATE_DIR: &str = "berth/state-dir";
pub const LABEL_STOP_SIGNAL: &str = "berth/stop-signal";
pub const LABEL_PORTS: &str = "berth/ports";
pub const LABEL_NETWORK: &str = "berth/network";
pub const LABEL_TTY: &str = "berth/tty";
pub const LABEL_STDIN: &str = "berth/stdin";
/// containerd's restart monitor labels, which berthd acts on.
pub const RESTART_STATUS: &str = "containerd.io/restart.status";
pub const RESTART_POLICY: &str = "containerd.io/restart.policy";
pub const RESTART_LOG_URI: &str = "containerd.io/restart.loguri";
pub const RESTART_COUNT: &str = "containerd.io/restart.count";

/// `--restart` as Docker reads it: no, always, unless-stopped, on-failure[:N].
pub fn parse_restart(s: &str) -> Result<Option<String>> {
    let ok = match s {
        "no" | "" => return Ok(None),
        "always" | "unless-stopped" | "on-failure" => true,
        s => s
            .strip_prefix("on-failure:")
            .is_some_and(|n| n.parse::<u32>().is_ok()),
    };
    if ok {
        Ok(Some(s.to_owned()))
    } else {
        Err(Error::Invalid(format!(
            "invalid restart policy {s:?}: no, always, unless-stopped or on-failure[:N]"
        )))
    }
}

/// Tells berthd's restart monitor whether the container is meant to run (a stop by the
/// user is not a failure to restart from). Containers without a policy are left alone.
pub async fn set_restart_status(client: &Client, c: &Container, running: bool) -> Result<()> {
    if !c.labels.contains_key(RESTART_POLICY) {
        return Ok(());
    }
    let mut c = c.clone();
    c.labels.insert(
        RESTART_STATUS.into(),
        if running { "running" } else { "stopped" }.into(),
    );
    client
        .containers()
        .update(
            client.req(containerd_client::services::v1::UpdateContainerRequest {
                container: Some(c),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec![format!("labels.{RESTART_STATUS}")],
                }),
            }),
        )
        .await?;
    Ok(())
}

/// Where the command line keeps its own files for one berthd: logs, /etc files, fifos.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    /// `data_root/<8 hex of the address>`, so that two daemons never share files.
    pub fn new(data_root: &Path, address: &Path) -> Paths {
        use sha2::Digest as _;
        let h = sha2::Sha256::digest(address.to_string_lossy().as_bytes());
        Paths {
            root: data_root.join(&hex::encode(h)[..8]),
        }
    }

    pub fn container_dir(&self, ns: &str, id: &str) -> PathBuf {
        self.root.join("containers").join(ns).join(id)
    }

    pub fn fifo_dir(&self) -> PathBuf {
        self.root.join("fifo")
    }
}

/// What `ps` shows of a container's task.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Created,
    Running { pid: u32 },
    Paused { pid: u32 },
    Exited { code: u32, at: Option<SystemTime> },
    Unknown,
}

impl State {
    pub fn of(task: Option<&Process>) -> State {
        let Some(t) = task else {
            return State::Created;
        };
        match Status::try_from(t.status) {
            Ok(Status::Created) => State::Created,
            Ok(Status::Running) => State::Running { pid: t.pid },
            Ok(Status::Paused) | Ok(Status::Pausing) => State::Paused { pid: t.pid },
            Ok(Status::Stopped) => State::Exited {
                code: t.exit_status,
                at: t.exited_at.as_ref().map(crate::time::from_timestamp),
            },
            _ => State::Unknown,
        }
    }

    pub fn word(&self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running { .. } => "running",
            State::Paused { .. } => "paused",
            State::Exited { .. } => "exited",
            State::Unknown => "unknown",
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self, State::Running { .. } | State::Paused { .. })
    }

    /// `Up 3 seconds`, `Exited (0) 2 minutes ago`, as `docker ps` says it.
    pub fn describe(&self, started: SystemTime) -> String {
        let since = |t: SystemTime| {
            crate::time::human_duration(SystemTime::now().duration_since(t).unwrap_or_default())
        };
        match self {
            State::Created => "Created".into(),
            State::Running { .. } => format!("Up {}", since(started)),
            State::Paused { .. } => format!("Up {} (Paused)", since(started)),
            State::Exited { code, at } => match at {
                Some(t) => format!("Exited ({code}) {} ago", since(*t)),
                None => format!("Exited ({code})"),
            },
            State::Unknown => "Unknown".into(),
        }
    }
}

pub fn name_of(c: &Container) -> String {
    c.labels
        .get(LABEL_NAME)
        .cloned()
        .unwrap_or_else(|| c.id.clone())
}

pub async fn list(client: &Client) -> Result<Vec<Container>> {
    Ok(client
        .containers()
        .list(client.req(ListContainersRequest { filters: vec![] }))
        .await?
        .into_inner()
        .containers)
}

/// Every task in the namespace, by container id.
pub async fn tasks(client: &Client) -> Result<HashMap<String, Process>> {
    Ok(client
        .tasks()
        .list(client.req(ListTasksRequest {
            filter: String::new(),
        }))
        .await?
        .into_inner()
        .tasks
        .into_iter()
        .map(|t| (t.id.clone(), t))
        .collect())
}

pub async fn task(client: &Client, id: &str) -> Result<Option<Process>> {
    match client
        .tasks()
        .get(client.req(GetRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        }))
        .await
    {
        Ok(r) => Ok(r.into_inner().process),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(s.into()),
    }
}

/// The container `what` names: its id, its name, or a prefix of exactly one id.
pub async fn find(client: &Client, what: &str) -> Result<Container> {
    if what.is_empty() {
        return Err(Error::Invalid("a container name or id is needed".into()));
    }
    let all = list(client).await?;
    pick(all, what)
}

fn pick(all: Vec<Container>, what: &str) -> Result<Container> {
    if let Some(c) = all.iter().find(|c| c.id == what) {
        return Ok(c.clone());
    }
    let what_name = what.strip_prefix('/').unwrap_or(what);
    if let Some(c) = all
        .iter()
        .find(|c| c.labels.get(LABEL_NAME).map(String::as_str) == Some(what_name))
    {
        return Ok(c.clone());
    }
    let hits: Vec<&Container> = all.iter().filter(|c| c.id.starts_with(what)).collect();
    match hits.len() {
        1 => Ok(hits[0].clone()),
        0 => Err(Error::NoSuchContainer(what.to_owned())),
        _ => Err(Error::Conflict(format!(
            "{what} matches several containers: give more of the id"
        ))),
    }
}

/// A name for a container made without `--name`, not in use in `taken`.
pub fn generate_name(taken: &[String]) -> String {
    const LEFT: &[&str] = &[
        "brave", "calm", "eager", "fond", "gentle", "happy", "keen", "lucid", "merry", "nifty",
        "proud", "quiet", "sharp", "steady", "swift", "tender", "vivid", "witty", "bold", "clever",
    ];
    const RIGHT: &[&str] = &[
        "anchor", "beacon", "bollard", "buoy", "cargo", "compass", "harbor", "hull", "keel",
        "lantern", "mast", "mooring", "pier", "quay", "rudder", "sail", "tide", "wharf", "dock",
        "jetty",
    ];
    let mut seed = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut seed, rustix::rand::GetRandomFlags::empty());
    let mut n = u64::from_le_bytes(seed);
    for attempt in 0.. {
        let l = LEFT[(n % LEFT.len() as u64) as usize];
        let r = RIGHT[((n / 7) % RIGHT.len() as u64) as usize];
        let name = if attempt < 20 {
            format!("{l}_{r}")
        } else {
            format!("{l}_{r}{attempt}")
        };
        if !taken.contains(&name) {
            return name;
        }
        n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    }
    unreachable!("the loop above returns")
}

/// A container id as Docker makes them: 64 random hex digits.
pub fn new_id() -> String {
    let mut b = [0u8; 32];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    hex::encode(b)
}

/// Docker's rule for names.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Sends `signal` to the container's processes and waits up to `grace` for the task to
/// stop, then kills it.
pub async fn stop(client: &Client, c: &Container, grace: Duration) -> Result<()> {
    set_restart_status(client, c, false).await?;
    let state = State::of(task(client, &c.id).await?.as_ref());
    if !state.is_running() {
        return Ok(());
    }
    let mut tasks = client.tasks();
    // A wait opened before the signal cannot miss the exit.
    let mut waiter = client.tasks();
    let wait = waiter.wait(client.req(WaitRequest {
        container_id: c.id.clone(),
        exec_id: String::new(),
    }));
    tokio::pin!(wait);
    if matches!(state, State::Paused { .. }) {
        let _ = tasks
            .resume(
                client.req(containerd_client::services::v1::ResumeTaskRequest {
                    container_id: c.id.clone(),
                }),
            )
            .await;
    }
    let sig = c
        .labels
        .get(LABEL_STOP_SIGNAL)
        .and_then(|s| crate::signal::parse(s).ok())
        .unwrap_or(libc::SIGTERM as u32);
    kill(client, &c.id, sig, false).await?;
    if tokio::time::timeout(grace, &mut wait).await.is_ok() {
        return Ok(());
    }
    kill(client, &c.id, libc::SIGKILL as u32, true).await?;
    match tokio::time::timeout(Duration::from_secs(30), &mut wait).await {
        Ok(_) => Ok(()),
        Err(_) => Err(Error::Daemon(format!(
            "container {} did not stop within 30 s of SIGKILL",
            name_of(c)
        ))),
    }
}

pub async fn kill(client: &Client, id: &str, signal: u32, all: bool) -> Result<()> {
    match client
        .tasks()
        .kill(client.req(KillRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
            signal,
            all,
        }))
        .await
    {
        Ok(_) => Ok(()),
        // Already gone: what a kill wanted.
        Err(s) if s.code() == Code::NotFound => Ok(()),
        Err(s) => Err(s.into()),
    }
}

/// Deletes a stopped (or never started) task, if there is one.
pub async fn delete_task(client: &Client, id: &str) -> Result<()> {
    match client
        .tasks()
        .delete(client.req(DeleteTaskRequest {
            container_id: id.to_owned(),
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::NotFound => Ok(()),
        Err(s) => Err(s.into()),
    }
}

/// Removes the container and all it owns; a running one only when `force` (killed first).
pub async fn remove(
    client: &Client,
    networks: &crate::network::Networks,
    c: &Container,
    force: bool,
) -> Result<()> {
    let state = State::of(task(client, &c.id).await?.as_ref());
    if state.is_running() {
        if !force {
            return Err(Error::Conflict(format!(
                "cannot remove container {}: container is {}: stop the container before removing or force remove",
                name_of(c),
                state.word()
            )));
        }
        stop(client, c, Duration::ZERO).await?;
    }
    delete_task(client, &c.id).await?;
    match client
        .containers()
        .delete(client.req(DeleteContainerRequest { id: c.id.clone() }))
        .await
    {
        Ok(_) => {}
        Err(s) if s.code() == Code::NotFound => {}
        Err(s) => return Err(s.into()),
    }
    if !c.snapshot_key.is_empty() {
        match client
            .snapshots()
            .remove(client.req(RemoveSnapshotRequest {
                snapshotter: c.snapshotter.clone(),
                key: c.snapshot_key.clone(),
            }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(s.into()),
        }
    }
    {
        let (n, c) = (networks.clone(), c.clone());
        tokio::task::spawn_blocking(move || n.release(&c))
            .await
            .map_err(|e| Error::Daemon(format!("network release stopped: {e}")))??;
    }
    if let Some(dir) = c.labels.get(LABEL_STATE_DIR) {
        let dir = Path::new(dir);
        // Only a directory berth made for this container (named by its id) is removed.
        if dir.file_name().and_then(|n| n.to_str()) == Some(c.id.as_str()) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, name: &str) -> Container {
        Container {
            id: id.into(),
            labels: [(LABEL_NAME.to_owned(), name.to_owned())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn containers_are_found_by_id_name_or_prefix() {
        let all = vec![c("abc123", "web"), c("abd456", "db")];
        assert_eq!(pick(all.clone(), "web").unwrap().id, "abc123");
        assert_eq!(pick(all.clone(), "/db").unwrap().id, "abd456");
        assert_eq!(pick(all.clone(), "abc").unwrap().id, "abc123");
        assert!(matches!(pick(all.clone(), "ab"), Err(Error::Conflict(_))));
        let e = pick(all, "nope").unwrap_err();
        assert_eq!(e.to_string(), "no such container: nope");
    }

    #[test]
    fn restart_policies_read_as_dockers() {
        assert_eq!(parse_restart("no").unwrap(), None);
        assert_eq!(parse_restart("always").unwrap().as_deref(), Some("always"));
        assert_eq!(
            parse_restart("on-failure:3").unwrap().as_deref(),
            Some("on-failure:3")
        );
        for bad in ["sometimes", "on-failure:x", "on-failure:-1", "Always"] {
            let e = parse_restart(bad).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn names_and_ids_look_like_dockers() {
        let n = generate_name(&[]);
        assert!(valid_name(&n) && n.contains('_'));
        assert_eq!(new_id().len(), 64);
        assert!(!valid_name("-x") && !valid_name("a b") && valid_name("web.1"));
    }

    #[test]
    fn states_read_as_docker_ps_says_them() {
        let p = Process {
            status: Status::Stopped as i32,
            exit_status: 3,
            ..Default::default()
        };
        assert_eq!(
            State::of(Some(&p)).describe(SystemTime::now()),
            "Exited (3)"
        );
        assert_eq!(State::of(None), State::Created);
        let r = Process {
            status: Status::Running as i32,
            pid: 7,
            ..Default::default()
        };
        assert!(State::of(Some(&r))
            .describe(SystemTime::now())
            .starts_with("Up "));
    }
}
