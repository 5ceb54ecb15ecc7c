//! The connection to berthd: one gRPC channel over its unix socket, every request tagged
//! with the namespace (and a lease while a container's parts are being made), and a client
//! per containerd service.

use std::path::{Path, PathBuf};

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::introspection_client::IntrospectionClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::streaming_client::StreamingClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::transfer_client::TransferClient;
use containerd_client::services::v1::version_client::VersionClient;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;

use crate::error::{Error, Result};

/// The snapshotter berth's containers and pulls use.
pub const SNAPSHOTTER: &str = "overlayfs";

#[derive(Clone)]
pub struct Client {
    channel: Channel,
    namespace: MetadataValue<tonic::metadata::Ascii>,
    namespace_name: String,
    lease: Option<MetadataValue<tonic::metadata::Ascii>>,
    address: PathBuf,
}

impl Client {
    pub async fn connect(address: &Path, namespace: &str) -> Result<Client> {
        let ns = MetadataValue::try_from(namespace)
            .ok()
            .filter(|_| valid_namespace(namespace))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "namespace {namespace:?} is not valid: use letters, digits, '.', '_' and '-', starting with a letter or digit"
                ))
            })?;
        if !address.exists() {
            return Err(Error::Connect {
                address: address.display().to_string(),
                reason: "no such socket".into(),
            });
        }
        let channel = containerd_client::connect(address)
            .await
            .map_err(|e| Error::Connect {
                address: address.display().to_string(),
                reason: source_chain(&e),
            })?;
        Ok(Client {
            channel,
            namespace: ns,
            namespace_name: namespace.to_owned(),
            lease: None,
            address: address.to_owned(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace_name
    }

    pub fn address(&self) -> &Path {
        &self.address
    }

    /// This client with every request made under `lease`.
    pub fn with_lease(&self, lease: &str) -> Result<Client> {
        let v = MetadataValue::try_from(lease)
            .map_err(|_| Error::Invalid(format!("lease id {lease:?} is not valid")))?;
        Ok(Client {
            lease: Some(v),
            ..self.clone()
        })
    }

    /// `msg` as a request in this client's namespace (and lease).
    pub fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert("containerd-namespace", self.namespace.clone());
        if let Some(l) = &self.lease {
            r.metadata_mut().insert("containerd-lease", l.clone());
        }
        r
    }

    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }
    pub fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    pub fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.channel.clone())
    }
    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }
    pub fn introspection(&self) -> IntrospectionClient<Channel> {
        IntrospectionClient::new(self.channel.clone())
    }
    pub fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }
    pub fn namespaces(&self) -> NamespacesClient<Channel> {
        NamespacesClient::new(self.channel.clone())
    }
    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    pub fn streaming(&self) -> StreamingClient<Channel> {
        StreamingClient::new(self.channel.clone())
    }
    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
    pub fn transfer(&self) -> TransferClient<Channel> {
        TransferClient::new(self.channel.clone())
    }
    pub fn version(&self) -> VersionClient<Channel> {
        VersionClient::new(self.channel.clone())
    }
}

/// containerd's rule for namespace names.
fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 76
        && ns.as_bytes()[0].is_ascii_alphanumeric()
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// An `Any` of a protobuf message, named as containerd names its types.
pub fn any_of<M: prost::Message + prost::Name>(m: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: M::full_name(),
        value: m.encode_to_vec(),
    }
}

/// An `Any` holding JSON, as containerd stores OCI specs.
pub fn json_any(type_url: &str, v: &serde_json::Value) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.to_owned(),
        value: serde_json::to_vec(v).unwrap_or_default(),
    }
}

pub const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
pub const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_follow_containerds_rule() {
        assert!(valid_namespace("default") && valid_namespace("k8s.io"));
        assert!(!valid_namespace("") && !valid_namespace("-x") && !valid_namespace("a b"));
        assert!(!valid_namespace("a\nb"));
    }
}
