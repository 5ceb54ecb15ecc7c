//! containerd.services.events.v1 over berth-core's event bus, and the edge where events
//! become protobuf: berth's typed events are encoded as containerd's `containerd.events.*`
//! messages for subscribers, and what clients publish or shims forward is decoded into the
//! typed events berth reads (task exits, OOMs, ...) or kept opaque.

use std::pin::Pin;

use berth_core::events::{Envelope as Event, Event as E, EventBus, TaskIo};
use berth_core::filters::{Filter, Filterable};
use berth_core::metadata::Timestamp;
use berth_core::mount::Mount;
use berth_core::Namespace;
use containerd_client::events as pb;
use futures::Stream;
use prost::{Message, Name};
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use crate::api::{ForwardRequest, PublishRequest, SubscribeRequest};
use crate::server::events_server;
use crate::status::{any_out, labels_out, namespace, timestamp, to_status};
use crate::types::Envelope;

fn any<M: Message + Name>(m: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: M::full_name(),
        value: m.encode_to_vec(),
    }
}

fn time_in(t: Option<prost_types::Timestamp>) -> Option<Timestamp> {
    t.filter(|t| t.seconds > 0 || t.nanos > 0)
        .map(|t| Timestamp(t.seconds * 1_000_000_000 + i64::from(t.nanos)))
}

fn time_out(t: Option<Timestamp>) -> Option<prost_types::Timestamp> {
    t.and_then(timestamp)
}

fn mounts_out(m: &[Mount]) -> Vec<crate::types::Mount> {
    m.iter()
        .map(|m| crate::types::Mount {
            r#type: m.kind.clone(),
            source: m.source.clone(),
            target: m.target.clone(),
            options: m.options.clone(),
        })
        .collect()
}

/// The protobuf form of a typed event, as containerd names and encodes it.
pub fn encode(e: &E) -> prost_types::Any {
    use crate::api::{ImageCreate, ImageDelete, ImageUpdate};
    match e.clone() {
        E::NamespaceCreate { name, labels } => any(&pb::NamespaceCreate {
            name,
            labels: labels_out(labels),
        }),
        E::NamespaceUpdate { name, labels } => any(&pb::NamespaceUpdate {
            name,
            labels: labels_out(labels),
        }),
        E::NamespaceDelete { name } => any(&pb::NamespaceDelete { name }),
        E::ImageCreate { name, labels } => any(&ImageCreate {
            name,
            labels: labels_out(labels),
        }),
        E::ImageUpdate { name, labels } => any(&ImageUpdate {
            name,
            labels: labels_out(labels),
        }),
        E::ImageDelete { name } => any(&ImageDelete { name }),
        E::ContainerCreate {
            id,
            image,
            runtime,
            runtime_options,
        } => any(&pb::ContainerCreate {
            id,
            image,
            runtime: Some(pb::container_create::Runtime {
                name: runtime,
                options: runtime_options.map(any_out),
            }),
        }),
        E::ContainerUpdate {
            id,
            image,
            labels,
            snapshot_key,
        } => any(&pb::ContainerUpdate {
            id,
            image,
            labels: labels_out(labels),
            snapshot_key,
        }),
        E::ContainerDelete { id } => any(&pb::ContainerDelete { id }),
        E::ContentCreate { digest, size } => any(&pb::ContentCreate { digest, size }),
        E::ContentDelete { digest } => any(&pb::ContentDelete { digest }),
        E::SnapshotPrepare {
            key,
            parent,
            snapshotter,
        } => any(&pb::SnapshotPrepare {
            key,
            parent,
            snapshotter,
        }),
        E::SnapshotCommit {
            key,
            name,
            snapshotter,
        } => any(&pb::SnapshotCommit {
            key,
            name,
            snapshotter,
        }),
        E::SnapshotRemove { key, snapshotter } => any(&pb::SnapshotRemove { key, snapshotter }),
        E::TaskCreate {
            container_id,
            bundle,
            rootfs,
            io,
            checkpoint,
            pid,
        } => any(&pb::TaskCreate {
            container_id,
            bundle,
            rootfs: mounts_out(&rootfs),
            io: Some(pb::TaskIo {
                stdin: io.stdin,
                stdout: io.stdout,
                stderr: io.stderr,
                terminal: io.terminal,
            }),
            checkpoint,
            pid,
        }),
        E::TaskStart { container_id, pid } => any(&pb::TaskStart { container_id, pid }),
        E::TaskDelete {
            container_id,
            pid,
            exit_status,
            exited_at,
            id,
        } => any(&pb::TaskDelete {
            container_id,
            pid,
            exit_status,
            exited_at: time_out(exited_at),
            id,
        }),
        E::TaskExit {
            container_id,
            id,
            pid,
            exit_status,
            exited_at,
        } => any(&pb::TaskExit {
            container_id,
            id,
            pid,
            exit_status,
            exited_at: time_out(exited_at),
        }),
        E::TaskOom { container_id } => any(&pb::TaskOom { container_id }),
        E::TaskExecAdded {
            container_id,
            exec_id,
        } => any(&pb::TaskExecAdded {
            container_id,
            exec_id,
        }),
        E::TaskExecStarted {
            container_id,
            exec_id,
            pid,
        } => any(&pb::TaskExecStarted {
            container_id,
            exec_id,
            pid,
        }),
        E::TaskPaused { container_id } => any(&pb::TaskPaused { container_id }),
        E::TaskResumed { container_id } => any(&pb::TaskResumed { container_id }),
        E::TaskCheckpointed {
            container_id,
            checkpoint,
        } => any(&pb::TaskCheckpointed {
            container_id,
            checkpoint,
        }),
        E::Opaque { type_url, value } => prost_types::Any { type_url, value },
    }
}

fn decode_as<M: Message + Default>(a: &prost_types::Any, f: impl FnOnce(M) -> E) -> E {
    match M::decode(a.value.as_slice()) {
        Ok(m) => f(m),
        Err(_) => E::Opaque {
            type_url: a.type_url.clone(),
            value: a.value.clone(),
        },
    }
}

/// Reads an event someone forwarded: task events become typed (CRI and the runtime act on
/// them), anything else, or anything that does not decode, stays as it came.
pub fn decode(a: prost_types::Any) -> E {
    let name = a.type_url.rsplit('/').next().unwrap_or_default().to_owned();
    let full = |n: &str| format!("containerd.events.{n}");
    match name.as_str() {
        n if n == full("TaskCreate") => decode_as(&a, |m: pb::TaskCreate| {
            let io = m.io.unwrap_or_default();
            E::TaskCreate {
                container_id: m.container_id,
                bundle: m.bundle,
                rootfs: m
                    .rootfs
                    .into_iter()
                    .map(|r| Mount {
                        kind: r.r#type,
                        source: r.source,
                        target: r.target,
                        options: r.options,
                    })
                    .collect(),
                io: TaskIo {
                    stdin: io.stdin,
                    stdout: io.stdout,
                    stderr: io.stderr,
                    terminal: io.terminal,
                },
                checkpoint: m.checkpoint,
                pid: m.pid,
            }
        }),
        n if n == full("TaskStart") => decode_as(&a, |m: pb::TaskStart| E::TaskStart {
            container_id: m.container_id,
            pid: m.pid,
        }),
        n if n == full("TaskDelete") => decode_as(&a, |m: pb::TaskDelete| E::TaskDelete {
            container_id: m.container_id,
            pid: m.pid,
            exit_status: m.exit_status,
            exited_at: time_in(m.exited_at),
            id: m.id,
        }),
        n if n == full("TaskExit") => decode_as(&a, |m: pb::TaskExit| E::TaskExit {
            container_id: m.container_id,
            id: m.id,
            pid: m.pid,
            exit_status: m.exit_status,
            exited_at: time_in(m.exited_at),
        }),
        n if n == full("TaskOOM") => decode_as(&a, |m: pb::TaskOom| E::TaskOom {
            container_id: m.container_id,
        }),
        n if n == full("TaskExecAdded") => decode_as(&a, |m: pb::TaskExecAdded| E::TaskExecAdded {
            container_id: m.container_id,
            exec_id: m.exec_id,
        }),
        n if n == full("TaskExecStarted") => {
            decode_as(&a, |m: pb::TaskExecStarted| E::TaskExecStarted {
                container_id: m.container_id,
                exec_id: m.exec_id,
                pid: m.pid,
            })
        }
        n if n == full("TaskPaused") => decode_as(&a, |m: pb::TaskPaused| E::TaskPaused {
            container_id: m.container_id,
        }),
        n if n == full("TaskResumed") => decode_as(&a, |m: pb::TaskResumed| E::TaskResumed {
            container_id: m.container_id,
        }),
        n if n == full("TaskCheckpointed") => {
            decode_as(&a, |m: pb::TaskCheckpointed| E::TaskCheckpointed {
                container_id: m.container_id,
                checkpoint: m.checkpoint,
            })
        }
        _ => E::Opaque {
            type_url: a.type_url,
            value: a.value,
        },
    }
}

/// An envelope for subscribers.
pub fn envelope_out(e: &Event) -> Envelope {
    Envelope {
        timestamp: timestamp(e.timestamp),
        namespace: e.namespace.clone(),
        topic: e.topic.clone(),
        event: Some(encode(&e.event)),
    }
}

/// An envelope someone forwarded, checked.
pub fn envelope_in(e: Envelope) -> Result<Event, Status> {
    validate_topic(&e.topic)?;
    Namespace::new(&e.namespace).map_err(to_status)?;
    Ok(Event {
        timestamp: time_in(e.timestamp).unwrap_or_else(Timestamp::now),
        namespace: e.namespace,
        topic: e.topic,
        event: e.event.map(decode).unwrap_or(E::Opaque {
            type_url: String::new(),
            value: Vec::new(),
        }),
    })
}

struct Matchable<'a>(&'a Event);

impl Filterable for Matchable<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "namespace" => Some(self.0.namespace.clone()),
            [f] if f == "topic" => Some(self.0.topic.clone()),
            _ => None,
        }
    }
}

pub(crate) fn validate_topic(topic: &str) -> Result<(), Status> {
    if topic.len() < 2 || !topic.starts_with('/') || topic.contains("//") || topic.ends_with('/') {
        return Err(Status::invalid_argument(format!(
            "invalid event topic {topic:?}: must look like /a/b"
        )));
    }
    Ok(())
}

pub struct EventsService {
    pub bus: EventBus,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl events_server::Events for EventsService {
    async fn publish(&self, req: Request<PublishRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        validate_topic(&r.topic)?;
        let event = r
            .event
            .ok_or_else(|| Status::invalid_argument("publish needs an event"))?;
        self.bus.send(Event {
            timestamp: Timestamp::now(),
            namespace: ns.to_string(),
            topic: r.topic,
            event: decode(event),
        });
        Ok(Response::new(()))
    }

    async fn forward(&self, req: Request<ForwardRequest>) -> Result<Response<()>, Status> {
        let env = req
            .into_inner()
            .envelope
            .ok_or_else(|| Status::invalid_argument("forward needs an envelope"))?;
        self.bus.send(envelope_in(env)?);
        Ok(Response::new(()))
    }

    type SubscribeStream = BoxStream<Envelope>;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let filter = Filter::parse_all(&req.get_ref().filters).map_err(to_status)?;
        let mut rx = self.bus.subscribe();
        let stream = async_stream::stream! {
            loop {
                match rx.recv().await {
                    Ok(e) if filter.matches(&Matchable(&e)) => yield Ok(envelope_out(&e)),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!("event subscriber fell behind: {n} events dropped"),
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        for ok in ["/images/create", "/tasks/exit"] {
            validate_topic(ok).unwrap();
        }
        for bad in ["", "/", "images", "/a//b", "/a/"] {
            assert!(validate_topic(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn task_events_round_trip_through_protobuf() {
        let events = [
            E::TaskExit {
                container_id: "c".into(),
                id: "e1".into(),
                pid: 9,
                exit_status: 3,
                exited_at: Some(Timestamp(1_700_000_000_000_000_001)),
            },
            E::TaskCreate {
                container_id: "c".into(),
                bundle: "/b".into(),
                rootfs: vec![Mount {
                    kind: "overlay".into(),
                    source: "overlay".into(),
                    target: String::new(),
                    options: vec!["lowerdir=/a".into()],
                }],
                io: TaskIo {
                    stdin: "/i".into(),
                    stdout: "/o".into(),
                    stderr: String::new(),
                    terminal: true,
                },
                checkpoint: String::new(),
                pid: 4,
            },
            E::TaskOom {
                container_id: "c".into(),
            },
            E::TaskExecStarted {
                container_id: "c".into(),
                exec_id: "e".into(),
                pid: 5,
            },
        ];
        for e in events {
            let a = encode(&e);
            assert!(
                a.type_url.starts_with("containerd.events."),
                "{}",
                a.type_url
            );
            assert_eq!(decode(a), e);
        }
    }

    #[test]
    fn unknown_and_undecodable_events_pass_through_unchanged() {
        let a = prost_types::Any {
            type_url: "example.com/Thing".into(),
            value: vec![1, 2, 3],
        };
        let e = decode(a.clone());
        assert_eq!(encode(&e), a);
        let bad = prost_types::Any {
            type_url: "containerd.events.TaskExit".into(),
            value: vec![0xff, 0xff, 0xff],
        };
        assert_eq!(encode(&decode(bad.clone())), bad);
    }

    #[test]
    fn images_keep_containerd_names() {
        let a = encode(&E::ImageCreate {
            name: "x".into(),
            labels: Default::default(),
        });
        assert_eq!(a.type_url, "containerd.services.images.v1.ImageCreate");
    }
}
