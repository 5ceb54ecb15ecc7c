//! Unpacking an image into snapshots: each layer is applied onto a new active snapshot over
//! its parent's chain, its uncompressed digest checked against the config's diff id, and
//! committed under its chain id. A layer whose chain exists is skipped; a failure or a
//! dropped unpack removes its active snapshot, so only committed layers ever remain.

use std::io::BufRead;
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
/// removes the snapshot (blocking: drop it off the async reactor).
///
/// With `early`, on a snapshotter that keeps parents only in its mounts (overlayfs), the
/// layer is written before its parent exists: the snapshot gets its parent, and the
/// directories the layer only implied get the lower layers' attributes, at `commit`,
/// which must then come after the parent's.
pub struct LayerUnpack {
    stores: ImageStores,
    ns: Namespace,
    snapshotter: String,
    key: String,
    chain: Digest,
    /// The parent to adopt at commit (written early), if any.
    pending_parent: Option<Digest>,
    lease: Option<String>,
    mounts: Vec<Mount>,
    applied: Option<Applied>,
    done: bool,
}

impl LayerUnpack {
    /// Prepares the snapshot for the layer whose chain id is `chain` over `parent`; None
    /// when that chain is already committed.
    pub fn begin(
        stores: &ImageStores,
        ns: &Namespace,
        snapshotter: &str,
        chain: &Digest,
        parent: Option<&Digest>,
        lease: Option<&str>,
        early: bool,
    ) -> Result<Option<LayerUnpack>> {
        let chain_s = chain.to_string();
        if stores.snapshots.stat(ns, snapshotter, &chain_s).is_ok() {
            return Ok(None);
        }
        let early = early
            && parent.is_some()
            && stores
                .snapshots
                .backend(snapshotter)?
                .parents_only_in_mounts();
        let key = format!("extract-{}-{chain_s}", uuid::Uuid::new_v4().simple());
        let parent_s = if early {
            None
        } else {
            parent.map(ToString::to_string)
        };
        let mounts = stores.snapshots.create(
            ns,
            snapshotter,
            NewSnapshot {
                key: &key,
                parent: parent_s.as_deref(),
                kind: Kind::Active,
                labels: Labels::new(),
                lease,
            },
        )?;
        Ok(Some(LayerUnpack {
            stores: stores.clone(),
            ns: ns.clone(),
            snapshotter: snapshotter.to_owned(),
            key,
            chain: chain.clone(),
            pending_parent: if early { parent.cloned() } else { None },
            lease: lease.map(str::to_owned),
            mounts,
            applied: None,
            done: false,
        }))
    }

    /// The directory an early layer is written into: its snapshot's own.
    fn early_dir(&self) -> Result<std::path::PathBuf> {
        match self.mounts.as_slice() {
            [m] if m.kind == "bind" => Ok(m.source.clone().into()),
            _ => Err(Error::FailedPrecondition(format!(
                "snapshot {:?} of an early layer is not a plain directory",
                self.key
            ))),
        }
    }

    /// Applies the (possibly compressed) layer stream and checks its uncompressed digest.
    pub fn apply(&mut self, layer: &LayerRef, stream: impl BufRead + Send) -> Result<()> {
        let applied = if self.pending_parent.is_some() {
            crate::diff::apply_to_upper(
                stream,
                &layer.blob.digest,
                &layer.blob.media_type,
                &self.early_dir()?,
            )?
        } else {
            crate::diff::apply_stream(
                stream,
                &layer.blob.digest,
                &layer.blob.media_type,
                &self.mounts,
                &self.stores.scratch,
            )?
        };
        if applied.digest != layer.diff_id {
            return Err(Error::FailedPrecondition(format!(
                "layer {} unpacks to {} but the image config says {}",
                layer.blob.digest, applied.digest, layer.diff_id
            )));
        }
        self.applied = Some(applied);
        Ok(())
    }

    /// Commits the snapshot under the chain id (an early layer first takes its parent,
    /// which must be committed by now, and copies up from it). Another unpack that
    /// committed the same chain first wins; this one's snapshot goes.
    pub fn commit(mut self) -> Result<()> {
        if let Some(parent) = self.pending_parent.take() {
            let upper = self.early_dir()?;
            let mounts = self.stores.snapshots.adopt_parent(
                &self.ns,
                &self.snapshotter,
                &self.key,
                &parent.to_string(),
            )?;
            let lowers: Vec<std::path::PathBuf> = mounts
                .first()
                .and_then(|m| m.option("lowerdir"))
                .map(|l| l.split(':').map(Into::into).collect())
                .unwrap_or_default();
            let implicit = self
                .applied
                .as_ref()
                .map(|a| a.implicit_dirs.clone())
                .unwrap_or_default();
            crate::apply::copy_up(&upper, &lowers, &implicit)?;
            crate::diff::sync_fs(&upper)?;
        }
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

impl Drop for LayerUnpack {
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
    let Some(mut u) = LayerUnpack::begin(stores, ns, snapshotter, chain, parent, lease, false)?
    else {
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
