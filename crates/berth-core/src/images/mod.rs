//! Images: the named records in metadata (`store`), and the typed reading of what they point
//! to — references and platforms as users write them, index → manifest for a platform →
//! config → diff ids → chain ids (`resolve`), unpacking a resolved image into snapshots
//! (`unpack`), and OCI/Docker archives (`archive`). Pull, import, export, the image
//! services and CRI all go through here; nothing in this module talks to a registry.

pub mod archive;
pub mod media;
pub mod platform;
pub mod progress;
pub mod reference;
pub mod resolve;
mod store;
pub mod unpack;

pub use platform::Platform;
pub use reference::Reference;
pub use resolve::{chain_ids, BlobRef, LayerRef, ResolvedImage};
pub use store::{Descriptor, Image, Images};
pub use unpack::ImageStores;
