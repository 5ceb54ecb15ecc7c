//! berth-registry: only what talks to a registry. It authenticates (anonymous, basic,
//! bearer tokens from the registry's challenge), reads hosts.toml, resolves tags to
//! manifests, fetches blobs into the content store with verification, HTTP Range resume
//! and bounded retries, pulls whole images (unpacking each layer while it arrives, through
//! berth-core's image module) and pushes them. References and platforms are berth-core's.

pub mod auth;
pub mod client;
pub mod error;
pub mod hosts;
mod landing;
pub mod pull;
pub mod push;

pub use berth_core::images::{platform, reference, Platform, Reference};
pub use client::{RegistryClient, RegistryConfig};
pub use error::{Error, Result};
