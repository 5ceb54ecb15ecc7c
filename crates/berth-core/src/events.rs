//! The event bus: what happened to namespaces, images, containers, content, snapshots and
//! tasks, as Rust types on one in-process broadcast channel. Stores, the runtime and CRI
//! publish and subscribe here; the API edge encodes events for clients (containerd's
//! `containerd.events.*` messages) and decodes what shims and clients forward. An event
//! berth does not interpret travels as it came (`Event::Opaque`).

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::metadata::{Labels, Timestamp};
use crate::mount::Mount;
use crate::namespace::Namespace;

/// The stdio a task was created with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskIo {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    NamespaceCreate {
        name: String,
        labels: Labels,
    },
    NamespaceUpdate {
        name: String,
        labels: Labels,
    },
    NamespaceDelete {
        name: String,
    },
    ImageCreate {
        name: String,
        labels: Labels,
    },
    ImageUpdate {
        name: String,
        labels: Labels,
    },
    ImageDelete {
        name: String,
    },
    ContainerCreate {
        id: String,
        image: String,
        runtime: String,
        runtime_options: Option<crate::containers::AnyValue>,
    },
    ContainerUpdate {
        id: String,
        image: String,
        labels: Labels,
        snapshot_key: String,
    },
    ContainerDelete {
        id: String,
    },
    ContentCreate {
        digest: String,
        size: i64,
    },
    ContentDelete {
        digest: String,
    },
    SnapshotPrepare {
        key: String,
        parent: String,
        snapshotter: String,
    },
    SnapshotCommit {
        key: String,
        name: String,
        snapshotter: String,
    },
    SnapshotRemove {
        key: String,
        snapshotter: String,
    },
    TaskCreate {
        container_id: String,
        bundle: String,
        rootfs: Vec<Mount>,
        io: TaskIo,
        checkpoint: String,
        pid: u32,
    },
    TaskStart {
        container_id: String,
        pid: u32,
    },
    TaskDelete {
        container_id: String,
        pid: u32,
        exit_status: u32,
        exited_at: Option<Timestamp>,
        /// The process id: empty or the container id for the init process.
        id: String,
    },
    TaskExit {
        container_id: String,
        /// The process id: the container id for the init process, else the exec id.
        id: String,
        pid: u32,
        exit_status: u32,
        exited_at: Option<Timestamp>,
    },
    TaskOom {
        container_id: String,
    },
    TaskExecAdded {
        container_id: String,
        exec_id: String,
    },
    TaskExecStarted {
        container_id: String,
        exec_id: String,
        pid: u32,
    },
    TaskPaused {
        container_id: String,
    },
    TaskResumed {
        container_id: String,
    },
    TaskCheckpointed {
        container_id: String,
        checkpoint: String,
    },
    /// Something berth passes on without reading: a protobuf `Any`.
    Opaque {
        type_url: String,
        value: Vec<u8>,
    },
}

impl Event {
    /// containerd's topic for the event; None for an opaque one (its sender named it).
    pub fn topic(&self) -> Option<&'static str> {
        Some(match self {
            Event::NamespaceCreate { .. } => "/namespaces/create",
            Event::NamespaceUpdate { .. } => "/namespaces/update",
            Event::NamespaceDelete { .. } => "/namespaces/delete",
            Event::ImageCreate { .. } => "/images/create",
            Event::ImageUpdate { .. } => "/images/update",
            Event::ImageDelete { .. } => "/images/delete",
            Event::ContainerCreate { .. } => "/containers/create",
            Event::ContainerUpdate { .. } => "/containers/update",
            Event::ContainerDelete { .. } => "/containers/delete",
            Event::ContentCreate { .. } => "/content/create",
            Event::ContentDelete { .. } => "/content/delete",
            Event::SnapshotPrepare { .. } => "/snapshot/prepare",
            Event::SnapshotCommit { .. } => "/snapshot/commit",
            Event::SnapshotRemove { .. } => "/snapshot/remove",
            Event::TaskCreate { .. } => "/tasks/create",
            Event::TaskStart { .. } => "/tasks/start",
            Event::TaskDelete { .. } => "/tasks/delete",
            Event::TaskExit { .. } => "/tasks/exit",
            Event::TaskOom { .. } => "/tasks/oom",
            Event::TaskExecAdded { .. } => "/tasks/exec-added",
            Event::TaskExecStarted { .. } => "/tasks/exec-started",
            Event::TaskPaused { .. } => "/tasks/paused",
            Event::TaskResumed { .. } => "/tasks/resumed",
            Event::TaskCheckpointed { .. } => "/tasks/checkpointed",
            Event::Opaque { .. } => return None,
        })
    }

    /// The container a task event is about.
    pub fn task_container(&self) -> Option<&str> {
        match self {
            Event::TaskCreate { container_id, .. }
            | Event::TaskStart { container_id, .. }
            | Event::TaskDelete { container_id, .. }
            | Event::TaskExit { container_id, .. }
            | Event::TaskOom { container_id }
            | Event::TaskExecAdded { container_id, .. }
            | Event::TaskExecStarted { container_id, .. }
            | Event::TaskPaused { container_id }
            | Event::TaskResumed { container_id }
            | Event::TaskCheckpointed { container_id, .. } => Some(container_id),
            _ => None,
        }
    }
}

/// An event with where and when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub timestamp: Timestamp,
    pub namespace: String,
    pub topic: String,
    pub event: Event,
}

/// How many events a subscriber may fall behind before it loses the oldest.
const BUS_CAPACITY: usize = 1024;

/// Cloneable handle to the bus. Publishing never blocks: a subscriber that falls behind
/// loses the oldest events and is told how many.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Envelope>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            tx: broadcast::channel(BUS_CAPACITY).0,
        }
    }
}

impl EventBus {
    /// Publishes one of berth's own events, now, under its containerd topic.
    pub fn publish(&self, ns: &Namespace, event: Event) {
        let topic = event.topic().unwrap_or("/berth/opaque").to_owned();
        self.send(Envelope {
            timestamp: Timestamp::now(),
            namespace: ns.to_string(),
            topic,
            event,
        });
    }

    /// Passes on an event someone else raised (a shim, a client), as it was.
    pub fn send(&self, e: Envelope) {
        // No subscriber is not an error.
        let _ = self.tx.send(Arc::new(e));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Envelope>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_get_typed_events_with_their_topic() {
        let bus = EventBus::default();
        let mut rx = bus.subscribe();
        let ns = Namespace::new("default").unwrap();
        bus.publish(
            &ns,
            Event::TaskExit {
                container_id: "c1".into(),
                id: "c1".into(),
                pid: 42,
                exit_status: 7,
                exited_at: None,
            },
        );
        let e = rx.recv().await.unwrap();
        assert_eq!(e.topic, "/tasks/exit");
        assert_eq!(e.namespace, "default");
        assert_eq!(e.event.task_container(), Some("c1"));
        assert!(matches!(e.event, Event::TaskExit { exit_status: 7, .. }));
    }

    #[tokio::test]
    async fn a_slow_subscriber_loses_the_oldest_and_is_told() {
        let bus = EventBus::default();
        let mut rx = bus.subscribe();
        let ns = Namespace::new("default").unwrap();
        for i in 0..(BUS_CAPACITY + 10) {
            bus.publish(
                &ns,
                Event::ImageDelete {
                    name: format!("i{i}"),
                },
            );
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(10))
        ));
    }
}
