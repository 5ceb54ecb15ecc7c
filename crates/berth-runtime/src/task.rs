//! What berth knows of a task's processes: their status as an enum, their stdio, and how
//! they exited. Conversions to and from the shim's wire types live here too.

use berth_core::metadata::Timestamp;
use berth_core::{ContainerId, Namespace};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp as PbTimestamp;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::types::task::Status as PbStatus;

/// Which task: the namespace and the container it runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskKey {
    pub namespace: Namespace,
    pub id: ContainerId,
}

impl TaskKey {
    pub fn new(namespace: &str, id: &str) -> berth_core::Result<Self> {
        Ok(TaskKey {
            namespace: Namespace::new(namespace)?,
            id: ContainerId::new(id)?,
        })
    }
}

impl std::fmt::Display for TaskKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.id)
    }
}

/// containerd's task states, numbered as containerd numbers them on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Unknown = 0,
    Created = 1,
    Running = 2,
    Stopped = 3,
    Paused = 4,
    Pausing = 5,
}

impl TaskStatus {
    pub fn from_wire(v: PbStatus) -> Self {
        match v {
            PbStatus::CREATED => TaskStatus::Created,
            PbStatus::RUNNING => TaskStatus::Running,
            PbStatus::STOPPED => TaskStatus::Stopped,
            PbStatus::PAUSED => TaskStatus::Paused,
            PbStatus::PAUSING => TaskStatus::Pausing,
            PbStatus::UNKNOWN => TaskStatus::Unknown,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TaskStatus::Unknown => "unknown",
            TaskStatus::Created => "created",
            TaskStatus::Running => "running",
            TaskStatus::Stopped => "stopped",
            TaskStatus::Paused => "paused",
            TaskStatus::Pausing => "pausing",
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: u32,
    pub status: u32,
    pub at: Timestamp,
}

/// The stdio a process was created with: fifo paths (or empty), and whether it has a pty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// One process of a task as the shim reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessState {
    pub container_id: String,
    pub exec_id: String,
    pub pid: u32,
    pub status: TaskStatus,
    pub stdio: Stdio,
    pub exit_status: u32,
    pub exited_at: Option<Timestamp>,
}

impl ProcessState {
    /// What is known of a task's init process when its shim cannot be asked.
    pub fn unknown(container_id: &str, pid: u32) -> Self {
        ProcessState {
            container_id: container_id.to_owned(),
            exec_id: String::new(),
            pid,
            status: TaskStatus::Unknown,
            stdio: Stdio::default(),
            exit_status: 0,
            exited_at: None,
        }
    }
}

pub(crate) fn time_from_wire(t: &MessageField<PbTimestamp>) -> Option<Timestamp> {
    t.as_ref()
        .filter(|t| t.seconds > 0 || t.nanos > 0)
        .map(|t| Timestamp(t.seconds * 1_000_000_000 + i64::from(t.nanos)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_zero_means_none() {
        let t = Timestamp(1_700_000_000_123_456_789);
        let wire = MessageField::some(PbTimestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_789,
            ..Default::default()
        });
        assert_eq!(time_from_wire(&wire), Some(t));
        assert_eq!(
            time_from_wire(&MessageField::some(PbTimestamp::new())),
            None
        );
        assert_eq!(time_from_wire(&MessageField::none()), None);
    }

    #[test]
    fn statuses_keep_containerd_numbers() {
        assert_eq!(TaskStatus::from_wire(PbStatus::PAUSED) as i32, 4);
        assert_eq!(TaskStatus::from_wire(PbStatus::STOPPED).name(), "stopped");
    }
}
