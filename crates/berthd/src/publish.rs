//! `berthd publish`: the publish binary shims exec for each event. Reads one protobuf
//! `google.protobuf.Any` from stdin and publishes it to the daemon at --address.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::PublishRequest;
use containerd_client::tonic::Request;
use prost::Message;

pub async fn run(address: &Path, topic: &str, namespace: &str) -> Result<()> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .context("read event from stdin")?;
    let event =
        prost_types::Any::decode(buf.as_slice()).context("event on stdin is not a protobuf Any")?;
    let channel = containerd_client::connect(address)
        .await
        .with_context(|| format!("connect to {}", address.display()))?;
    let req = containerd_client::with_namespace!(
        PublishRequest {
            topic: topic.to_owned(),
            event: Some(event)
        },
        namespace
    );
    EventsClient::new(channel)
        .publish(req)
        .await
        .with_context(|| format!("publish {topic} to {}", address.display()))?;
    Ok(())
}
