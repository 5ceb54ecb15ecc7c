//! The containers a shim keeps and their processes, as state machines: a process is
//! created, running or stopped; a container is also paused or not. An operation in the wrong
//! state is refused with the state it found.

use std::{collections::HashMap, path::PathBuf, time::SystemTime};

use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::types::task::Status;
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    cgroup::ContainerCgroup, error::Error, reaper::Exit, runtime::Runtime, stdio::ProcessIo,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    /// Made but not started: an init waiting for `start`, or an exec only recorded.
    Created,
    Running,
    Stopped,
}

/// A container's init or one of its execs.
pub struct Process {
    pub exec_id: String,
    pub pid: i32,
    pub state: ProcessState,
    pub io: Option<ProcessIo>,
    pub stdio: containerd_shim::io::Stdio,
    /// An exec's OCI process, JSON, until it starts.
    pub spec: Vec<u8>,
    exit_tx: watch::Sender<Option<Exit>>,
}

impl Process {
    pub fn new(exec_id: &str, stdio: containerd_shim::io::Stdio) -> Self {
        Process {
            exec_id: exec_id.to_owned(),
            pid: 0,
            state: ProcessState::Created,
            io: None,
            stdio,
            spec: Vec::new(),
            exit_tx: watch::channel(None).0,
        }
    }

    pub fn exit(&self) -> Option<Exit> {
        *self.exit_tx.borrow()
    }

    pub fn set_exited(&mut self, exit: Exit) {
        self.state = ProcessState::Stopped;
        self.exit_tx.send_replace(Some(exit));
    }

    pub fn watch_exit(&self) -> watch::Receiver<Option<Exit>> {
        self.exit_tx.subscribe()
    }

    /// The task status containerd sees, `paused` being the container's.
    pub fn status(&self, paused: bool) -> Status {
        match self.state {
            ProcessState::Created => Status::CREATED,
            ProcessState::Stopped => Status::STOPPED,
            ProcessState::Running if paused => Status::PAUSED,
            ProcessState::Running => Status::RUNNING,
        }
    }

    pub fn describe(&self, container_id: &str) -> String {
        if self.exec_id.is_empty() {
            format!("task {container_id:?}")
        } else {
            format!("exec {:?} of task {container_id:?}", self.exec_id)
        }
    }
}

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub runtime: Runtime,
    pub init: Process,
    pub execs: HashMap<String, Process>,
    pub paused: bool,
    /// Whether the container shares the host's (or another's) pid namespace, so that its
    /// init's end does not end the rest.
    pub shared_pid_ns: bool,
    pub rootfs_mounted: bool,
    pub cgroup: Option<ContainerCgroup>,
    pub oom_watch: Option<JoinHandle<()>>,
}

impl Container {
    /// The process `exec_id` names (empty: the init).
    pub fn process(&self, exec_id: &str) -> Result<&Process, Error> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs.get(exec_id).ok_or_else(|| {
            Error::NotFound(format!("exec {exec_id:?} of task {:?} not found", self.id))
        })
    }

    pub fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process, Error> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        let id = self.id.clone();
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id:?} of task {id:?} not found")))
    }

    /// Refuses what needs a running, unpaused container.
    pub fn check_running(&self, what: &str) -> Result<(), Error> {
        match (self.init.state, self.paused) {
            (ProcessState::Running, false) => Ok(()),
            (ProcessState::Running, true) => Err(Error::FailedPrecondition(format!(
                "cannot {what}: task {:?} is paused",
                self.id
            ))),
            (state, _) => Err(Error::FailedPrecondition(format!(
                "cannot {what}: task {:?} is {}",
                self.id,
                state_name(state)
            ))),
        }
    }
}

pub fn state_name(state: ProcessState) -> &'static str {
    match state {
        ProcessState::Created => "created, not started",
        ProcessState::Running => "running",
        ProcessState::Stopped => "stopped",
    }
}

pub fn timestamp(at: SystemTime) -> Timestamp {
    let d = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut t = Timestamp::new();
    t.seconds = d.as_secs() as i64;
    t.nanos = d.subsec_nanos() as i32;
    t
}

/// Whether the spec gives the container a pid namespace of its own.
pub fn has_own_pid_ns(spec: &oci_spec_shim::runtime::Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .map(|ns| {
            ns.iter().any(|n| {
                n.typ() == oci_spec_shim::runtime::LinuxNamespaceType::Pid && n.path().is_none()
            })
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_state_and_pause() {
        let mut p = Process::new("", Default::default());
        assert_eq!(p.status(false), Status::CREATED);
        p.state = ProcessState::Running;
        assert_eq!(p.status(false), Status::RUNNING);
        assert_eq!(p.status(true), Status::PAUSED);
        let rx = p.watch_exit();
        p.set_exited(Exit {
            code: 3,
            at: SystemTime::UNIX_EPOCH,
        });
        assert_eq!(p.status(true), Status::STOPPED);
        assert_eq!(rx.borrow().map(|e| e.code), Some(3));
    }

    #[test]
    fn pid_namespace_of_the_spec() {
        let own: oci_spec_shim::runtime::Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid"},{"type":"mount"}]}}"#,
        )
        .unwrap();
        assert!(has_own_pid_ns(&own));
        let joined: oci_spec_shim::runtime::Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid","path":"/proc/1/ns/pid"}]}}"#,
        )
        .unwrap();
        assert!(!has_own_pid_ns(&joined));
        let host: oci_spec_shim::runtime::Spec =
            serde_json::from_str(r#"{"ociVersion":"1.0.2","linux":{"namespaces":[]}}"#).unwrap();
        assert!(!has_own_pid_ns(&host));
    }
}
