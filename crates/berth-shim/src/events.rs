//! Task events to the daemon (`TTRPC_ADDRESS`, `containerd.services.events.ttrpc.v1.Events/
//! Forward`), in order. The daemon may be down (crashed, restarting): an event that cannot be
//! delivered is retried, with a fresh connection each time, until the daemon is back, so that
//! an exit that happened while it was away still reaches it. An event the daemon refuses is
//! logged and dropped.

use std::time::Duration;

use containerd_shim_protos::{
    protobuf::MessageDyn,
    shim::{event::Envelope, events::ForwardRequest},
    shim_async::{Client, EventsClient},
};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::service::Event;

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

fn envelope(namespace: &str, topic: &str, event: Box<dyn MessageDyn>) -> Option<Envelope> {
    let any = containerd_shim::util::convert_to_any(event)
        .map_err(|e| log::warn!("encode {topic}: {e}"))
        .ok()?;
    let mut envelope = Envelope::new();
    envelope.set_timestamp(crate::container::timestamp(std::time::SystemTime::now()));
    envelope.set_namespace(namespace.to_owned());
    envelope.set_topic(topic.to_owned());
    envelope.set_event(any);
    Some(envelope)
}

/// Delivers events from `rx` until the sender is gone.
pub async fn forward(address: String, namespace: String, mut rx: UnboundedReceiver<Event>) {
    let address = client_address(&address);
    let mut client: Option<EventsClient> = None;
    while let Some((topic, event)) = rx.recv().await {
        let Some(envelope) = envelope(&namespace, topic, event) else {
            continue;
        };
        let mut request = ForwardRequest::new();
        request.set_envelope(envelope);
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
}
