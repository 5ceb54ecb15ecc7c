//! Unpacking an image into snapshots: each layer is applied onto a new active snapshot over
//! its parent's chain, its uncompressed digest checked against the config's diff id, and
//! committed under its chain id. A layer whose chain exists is skipped; a failure or a
//! dropped unpack removes its active snapshot, so only committed layers ever remain.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use super::resolve::{LayerRef, ResolvedImage};
use super::store::Images;
use crate::apply::Applied;
use crate::content::ContentStore;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::metadata::{Labels, MetaStore};
use crate::mount::Mount;
use crate::namespace::Namespace;
use crate::snapshot::{Kind, NewSnapshot, Snapshots};

/// The stores pull, import, export and unpack work on.
#[derive(Clone)]
pub struct ImageStores {
    pub meta: Arc<MetaStore>,
    pub content: Arc<ContentStore>,
    pub images: Arc<Images>,
    pub snapshots: Arc<Snapshots>,
    /// Where temporary mount points and scratch files may be made (under --state).
    pub scratch: PathBuf,
}

/// One layer being applied onto its own active snapshot. Dropped before `commit`, it
/// removes the snapshot.
pub struct LayerUnpack<'a> {
    stores: &'a ImageStores,
    ns: Namespace,
    snapshotter: String,
    key: String,
    chain: Digest,
    lease: Option<String>,
    mounts: Vec<Mount>,
    done: bool,
}

impl<'a> LayerUnpack<'a> {
    /// Prepares the snapshot for the layer whose chain id is `chain` over `parent`; None
    /// when that chain is already committed.
    pub fn begin(
        stores: &'a ImageStores,
        ns: &Namespace,
        snapshotter: &str,
        chain: &Digest,
        parent: Option<&Digest>,
        lease: Option<&str>,
    ) -> Result<Option<LayerUnpack<'a>>> {
        let chain_s = chain.to_string();
        if stores.snapshots.stat(ns, snapshotter, &chain_s).is_ok() {
            return Ok(None);
        }
        let key = format!("extract-{}-{chain_s}", uuid::Uuid::new_v4().simple());
        let parent = parent.map(ToString::to_string);
        let mounts = stores.snapshots.create(
            ns,
            snapshotter,
            NewSnapshot {
                key: &key,
                parent: parent.as_deref(),
                kind: Kind::Active,
                labels: Labels::new(),
                lease,
            },
        )?;
        Ok(Some(LayerUnpack {
            stores,
            ns: ns.clone(),
            snapshotter: snapshotter.to_owned(),
            key,
            chain: chain.clone(),
            lease: lease.map(str::to_owned),
            mounts,
            done: false,
        }))
    }

    /// Applies the (possibly compressed) layer stream and checks its uncompressed digest.
    pub fn apply(&mut self, layer: &LayerRef, stream: impl Read + Send) -> Result<Applied> {
        let applied = crate::diff::apply_stream(
            stream,
            &layer.blob.digest,
            &layer.blob.media_type,
            &self.mounts,
            &self.stores.scratch,
        )?;
        if applied.digest != layer.diff_id {
            return Err(Error::FailedPrecondition(format!(
                "layer {} unpacks to {} but the image config says {}",
                layer.blob.digest, applied.digest, layer.diff_id
            )));
        }
        Ok(applied)
    }

    /// Commits the snapshot under the chain id. Another unpack that committed the same
    /// chain first wins; this one's snapshot goes.
    pub fn commit(mut self) -> Result<()> {
        let r = self.stores.snapshots.commit(
            &self.ns,
            &self.snapshotter,
            &self.chain.to_string(),
            &self.key,
            Labels::new(),
            self.lease.as_deref(),
        );
        match r {
            Ok(()) => {
                self.done = true;
                Ok(())
            }
            Err(e) if e.is_already_exists() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for LayerUnpack<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self
                .stores
                .snapshots
                .remove(&self.ns, &self.snapshotter, &self.key)
            {
                tracing::warn!(key = %self.key, "remove unfinished layer snapshot: {e}");
            }
        }
    }
}

/// Applies one layer from the content store onto the snapshot `chain` over `parent`.
pub fn unpack_layer(
    stores: &ImageStores,
    ns: &Namespace,
    lease: Option<&str>,
    snapshotter: &str,
    layer: &LayerRef,
    parent: Option<&Digest>,
    chain: &Digest,
) -> Result<()> {
    let Some(mut u) = LayerUnpack::begin(stores, ns, snapshotter, chain, parent, lease)? else {
        return Ok(());
    };
    let (file, _) = stores.content.open(ns, &layer.blob.digest)?;
    u.apply(layer, std::io::BufReader::with_capacity(1 << 20, file))?;
    u.commit()
}

/// The labels an unpacked image leaves: each layer blob names its uncompressed digest, the
/// config keeps the top snapshot (`containerd.io/gc.ref.snapshot.<snapshotter>`).
pub fn label_unpacked(
    stores: &ImageStores,
    ns: &Namespace,
    image: &ResolvedImage,
    snapshotter: &str,
) -> Result<()> {
    for l in &image.layers {
        let mut labels = Labels::new();
        labels.insert(crate::labels::UNCOMPRESSED.into(), l.diff_id.to_string());
        stores.content.add_labels(ns, &l.blob.digest, labels)?;
    }
    if let Some(top) = image.top_chain() {
        let mut labels = Labels::new();
        labels.insert(
            format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
            top.to_string(),
        );
        stores
            .content
            .add_labels(ns, &image.config.digest, labels)?;
    }
    Ok(())
}

/// Unpacks a resolved image whose blobs are all in the content store.
pub fn unpack(
    stores: &ImageStores,
    ns: &Namespace,
    lease: Option<&str>,
    snapshotter: &str,
    image: &ResolvedImage,
) -> Result<()> {
    for (i, layer) in image.layers.iter().enumerate() {
        let parent = i.checked_sub(1).map(|p| &image.chain_ids[p]);
        unpack_layer(
            stores,
            ns,
            lease,
            snapshotter,
            layer,
            parent,
            &image.chain_ids[i],
        )?;
    }
    label_unpacked(stores, ns, image, snapshotter)
}

/// Whether every layer of the image is committed in `snapshotter`.
pub fn is_unpacked(
    stores: &ImageStores,
    ns: &Namespace,
    snapshotter: &str,
    image: &ResolvedImage,
) -> bool {
    image.top_chain().is_none_or(|top| {
        stores
            .snapshots
            .stat(ns, snapshotter, &top.to_string())
            .is_ok_and(|i| i.kind == Kind::Committed)
    })
}
