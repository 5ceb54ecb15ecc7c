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
use tokio::sync::{
    mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender},
    Notify,
};

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

/// How many events are queued and not yet delivered (or dropped), and a wake-up for when
/// that reaches zero.
#[derive(Default)]
pub struct Pending {
    count: AtomicUsize,
    drained: Notify,
}

impl Pending {
    fn add(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    fn done(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.drained.notify_waiters();
        }
    }
}

/// The sending side: cheap to clone, and it knows how many events are not delivered yet.
#[derive(Clone)]
pub struct EventQueue {
    tx: UnboundedSender<Event>,
    pending: Arc<Pending>,
}

impl EventQueue {
    pub fn new() -> (Self, UnboundedReceiver<Event>, Arc<Pending>) {
        let (tx, rx) = unbounded_channel();
        let pending = Arc::new(Pending::default());
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
        self.pending.add();
        if self
            .tx
            .send(Event {
                topic,
                event: any("containerd.events", event),
            })
            .is_err()
        {
            self.pending.done();
        }
    }

    /// Waits (at most `limit`) until every queued event is delivered or dropped: a shim that
    /// exits must not take its last events (the task's delete) with it.
    pub async fn flushed(&self, limit: Duration) {
        let drained = async {
            loop {
                let notified = self.pending.drained.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.pending.count.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, drained).await;
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
    pending: Arc<Pending>,
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
        pending.done();
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

    #[tokio::test]
    async fn flushing_waits_for_delivery_and_no_longer() {
        let (queue, mut rx, pending) = EventQueue::new();
        queue.flushed(Duration::from_secs(5)).await; // nothing queued: at once
        let exit = containerd_shim_protos::events::task::TaskExit::default();
        queue.publish("/tasks/exit", &exit);
        queue.publish("/tasks/delete", &exit);
        let t = tokio::time::Instant::now();
        let deliver = tokio::spawn(async move {
            for _ in 0..2 {
                rx.recv().await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
                pending.done();
            }
        });
        queue.flushed(Duration::from_secs(5)).await;
        assert!(t.elapsed() >= Duration::from_millis(40));
        assert!(t.elapsed() < Duration::from_secs(2));
        deliver.await.unwrap();
        // An event that is never delivered holds a flush for the limit only.
        queue.publish("/tasks/exit", &exit);
        let t = tokio::time::Instant::now();
        queue.flushed(Duration::from_millis(50)).await;
        assert!(t.elapsed() < Duration::from_secs(2));
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
