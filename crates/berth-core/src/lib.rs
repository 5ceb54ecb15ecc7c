//! berth-core: the parts of a container runtime daemon that know nothing of gRPC —
//! content store, metadata, snapshotters, mounts, the layer applier, images (resolution,
//! unpack, archives), leases, garbage collection and the event bus.

pub mod apply;
pub mod containers;
pub mod content;
pub mod diff;
pub mod differ;
pub mod digest;
pub mod error;
pub mod events;
pub mod filters;
pub mod gc;
pub mod images;
pub mod labels;
pub mod leases;
pub mod metadata;
pub mod mount;
pub mod namespace;
pub mod namespaces;
pub mod snapshot;

pub use digest::Digest;
pub use error::{Error, ErrorKind, Result};
pub use namespace::{ContainerId, Namespace};
