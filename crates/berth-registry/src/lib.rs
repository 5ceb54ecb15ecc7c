//! berth-registry: the image side's distribution-spec client. It parses references as users
//! type them, authenticates (anonymous, basic, bearer tokens from the registry's challenge),
//! resolves tags to manifests, fetches blobs into the content store with verification,
//! HTTP Range resume and bounded retries, and pulls whole images: download and unpack
//! overlap, each layer applied as soon as it and its parent are ready.

pub mod archive;
pub mod auth;
pub mod client;
pub mod error;
pub mod hosts;
pub mod platform;
pub mod pull;
pub mod push;
pub mod reference;

pub use client::{RegistryClient, RegistryConfig};
pub use error::{Error, Result};
pub use reference::Reference;
