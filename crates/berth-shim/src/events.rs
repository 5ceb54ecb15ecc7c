//! Task events to the daemon (`TTRPC_ADDRESS`, `containerd.services.events.ttrpc.v1.Events/
//! Forward`), in order. The daemon may be down (crashed, restarting): an event that cannot be
//! delivered is retried, with a fresh connection each time, until the daemon is back, so that
//! an exit that happened while it was away still reaches it. An event the daemon refuses is
//! logged and dropped. Payloads are named from the message's own name, never through
//! protobuf reflection, whose descriptors would cost every shim a few hundred KiB of heap.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use containerd_shim_protos::{
    protobuf::{well_known_types::any::Any, Message},
    shim::{event::Envelope, events::ForwardRequest},
    shim_async::{Client, EventsClient},
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// One event: its topic and its payload.
pub struct Event {
    pub topic: &'static str,
    pub event: Any,
}

/// `message` as an Any named `package.Name`.
pub fn any<M: Message>(package: &str, message: &M) -> Any {
    Any {
        type_url: format!("{package}.{}", M::NAME),
        value: message.write_to_bytes().unwrap_or_default(),
        ..Default::default()
    }
}

/// The sending side: cheap to clone, and it knows how many events are not delivered yet.
#[derive(Clone)]
pub struct EventQueue {
    tx: UnboundedSender<Event>,
    pending: Arc<AtomicUsize>,
}

impl EventQueue {
    pub fn new() -> (Self, UnboundedReceiver<Event>, Arc<AtomicUsize>) {
        let (tx, rx) = unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        (
            EventQueue {
                tx,
                pending: pending.clone(),
            },
            rx,
            pending,
        )
    }

    /// Queues a `containerd.events` task event.
    pub fn publish<M: Message>(&self, topic: &'static str, event: &M) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self
            .tx
            .send(Event {
                topic,
                event: any("containerd.events", event),
            })
            .is_err()
        {
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Waits (at most `limit`) until every queued event is delivered or dropped: a shim that
    /// exits must not take its last events (the task's delete) with it.
    pub async fn flushed(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.pending.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

const FORWARD_TIMEOUT_NS: i64 = 5_000_000_000;
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The ttrpc address as the client takes it (daemons pass a bare socket path).
fn client_address(address: &str) -> String {
    if address.contains("://") {
        address.to_owned()
    } else {
        format!("unix://{address}")
    }
}

fn envelope(namespace: &str, topic: &str, event: Any) -> Envelope {
    let mut envelope = Envelope::new();
    envelope.set_timestamp(crate::container::timestamp(std::time::SystemTime::now()));
    envelope.set_namespace(namespace.to_owned());
    envelope.set_topic(topic.to_owned());
    envelope.set_event(event);
    envelope
}

/// Delivers events from `rx` until every sender is gone; `pending` counts down as each is
/// delivered or dropped.
pub async fn forward(
    address: String,
    namespace: String,
    mut rx: UnboundedReceiver<Event>,
    pending: Arc<AtomicUsize>,
) {
    let address = client_address(&address);
    let mut client: Option<EventsClient> = None;
    while let Some(Event { topic, event }) = rx.recv().await {
        let mut request = ForwardRequest::new();
        request.set_envelope(envelope(&namespace, topic, event));
        let mut delay = RETRY_FIRST;
        loop {
            if client.is_none() {
                client = Client::connect(&address).await.ok().map(EventsClient::new);
            }
            if let Some(c) = &client {
                let ctx = ttrpc::context::with_timeout(FORWARD_TIMEOUT_NS);
                match c.forward(ctx, &request).await {
                    Ok(_) => break,
                    Err(ttrpc::Error::RpcStatus(status)) => {
                        log::warn!("{address} refused {topic}: {}", status.message());
                        break;
                    }
                    Err(e) => {
                        log::debug!("forward {topic} to {address}: {e}; retrying");
                        client = None;
                    }
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
        }
        pending.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_paths_become_unix_addresses() {
        assert_eq!(
            client_address("/run/containerd/containerd.sock.ttrpc"),
            "unix:///run/containerd/containerd.sock.ttrpc"
        );
        assert_eq!(client_address("unix:///x"), "unix:///x");
    }

    #[test]
    fn payloads_are_named_without_reflection() {
        let exit = containerd_shim_protos::events::task::TaskExit {
            container_id: "c1".into(),
            exit_status: 3,
            ..Default::default()
        };
        let a = any("containerd.events", &exit);
        assert_eq!(a.type_url, "containerd.events.TaskExit");
        let back =
            containerd_shim_protos::events::task::TaskExit::parse_from_bytes(&a.value).unwrap();
        assert_eq!((back.container_id.as_str(), back.exit_status), ("c1", 3));
    }
}
