//! berth-services: containerd's API v1 services as thin adapters over berth-core. Each
//! module turns requests into core calls and results into responses; errors become gRPC
//! statuses in exactly one place (`status`).

/// `google.protobuf.Empty`, as prost represents it.
pub type Empty = ();

pub mod containers;
pub mod content;
pub mod cri;
pub mod diff;
pub mod events;
pub mod images;
pub mod introspection;
pub mod leases;
pub mod namespaces;
pub mod shim_events;
pub mod snapshots;
pub mod status;
pub mod streaming;
pub mod tasks;
pub mod transfer;
pub mod version;

/// The generated server traits and servers, one module per service.
#[allow(clippy::all, clippy::pedantic, unused_qualifications)]
pub mod server {
    macro_rules! generated {
        ($($file:literal),*) => {$(include!(concat!(env!("OUT_DIR"), "/", $file));)*};
    }
    generated!(
        "containerd.services.version.v1.Version.rs",
        "containerd.services.namespaces.v1.Namespaces.rs",
        "containerd.services.introspection.v1.Introspection.rs",
        "containerd.services.content.v1.Content.rs",
        "containerd.services.images.v1.Images.rs",
        "containerd.services.leases.v1.Leases.rs",
        "containerd.services.snapshots.v1.Snapshots.rs",
        "containerd.services.diff.v1.Diff.rs",
        "containerd.services.containers.v1.Containers.rs",
        "containerd.services.events.v1.Events.rs",
        "containerd.services.tasks.v1.Tasks.rs",
        "containerd.services.streaming.v1.Streaming.rs",
        "containerd.services.transfer.v1.Transfer.rs"
    );
}

pub use containerd_client::services::v1 as api;
pub use containerd_client::types;
