//! containerd.services.events.v1: an in-process event bus. berthd's own object events
//! (namespaces, images, containers, content, snapshots) and events published or forwarded
//! by clients and shims reach every subscriber whose filters match.

use std::pin::Pin;

use berth_core::filters::{Filter, Filterable};
use berth_core::metadata::Timestamp;
use berth_core::Namespace;
use futures::Stream;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use crate::api::{ForwardRequest, PublishRequest, SubscribeRequest};
use crate::server::events_server;
use crate::status::{namespace, timestamp, to_status};
use crate::types::Envelope;

/// Cloneable handle to the bus; publishing never blocks (slow subscribers lose the oldest).
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Envelope>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            tx: broadcast::channel(1024).0,
        }
    }
}

impl EventBus {
    pub fn publish<M: prost::Message + prost::Name>(&self, ns: &Namespace, topic: &str, event: &M) {
        let any = prost_types::Any {
            type_url: M::full_name(),
            value: event.encode_to_vec(),
        };
        self.send(Envelope {
            timestamp: timestamp(Timestamp::now()),
            namespace: ns.to_string(),
            topic: topic.to_owned(),
            event: Some(any),
        });
    }

    pub(crate) fn send(&self, e: Envelope) {
        // No subscriber is not an error.
        let _ = self.tx.send(e);
    }
}

impl berth_runtime::EventSink for EventBus {
    fn publish(&self, namespace: &str, topic: &str, event: berth_core::containers::AnyValue) {
        self.send(Envelope {
            timestamp: timestamp(Timestamp::now()),
            namespace: namespace.to_owned(),
            topic: topic.to_owned(),
            event: Some(crate::status::any_out(event)),
        });
    }
}

struct Matchable<'a>(&'a Envelope);

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
        self.bus.send(Envelope {
            timestamp: timestamp(Timestamp::now()),
            namespace: ns.to_string(),
            topic: r.topic,
            event: Some(event),
        });
        Ok(Response::new(()))
    }

    async fn forward(&self, req: Request<ForwardRequest>) -> Result<Response<()>, Status> {
        let env = req
            .into_inner()
            .envelope
            .ok_or_else(|| Status::invalid_argument("forward needs an envelope"))?;
        validate_topic(&env.topic)?;
        Namespace::new(&env.namespace).map_err(to_status)?;
        self.bus.send(env);
        Ok(Response::new(()))
    }

    type SubscribeStream = BoxStream<Envelope>;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let filter = Filter::parse_all(&req.get_ref().filters).map_err(to_status)?;
        let mut rx = self.bus.tx.subscribe();
        let stream = async_stream::stream! {
            loop {
                match rx.recv().await {
                    Ok(e) if filter.matches(&Matchable(&e)) => yield Ok(e),
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
}
