//! Applying a layer from the content store onto a snapshot's mounts. When the mounts are
//! an overlay (or a plain bind) the layer is written straight into the directory that
//! holds the snapshot's changes, without mounting anything.

use std::path::{Path, PathBuf};

use crate::apply::{apply_layer, Applied, ApplyOptions};
use crate::content::ContentStore;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::mount::{Mount, TempMount};
use crate::namespace::Namespace;

pub const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// Layer media types the applier takes (compression is read from the bytes).
pub fn supported_layer(media_type: &str) -> bool {
    let base = media_type.split(';').next().unwrap_or("").trim();
    matches!(
        base,
        "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    )
}

enum Target {
    Dir(PathBuf, ApplyOptions),
    Mounted(Vec<Mount>),
}

fn target_of(mounts: &[Mount]) -> Result<Target> {
    match mounts {
        [m] if m.kind == "overlay" && !m.is_readonly() => match m.option("upperdir") {
            Some(upper) => Ok(Target::Dir(
                upper.into(),
                ApplyOptions {
                    overlay_whiteouts: true,
                },
            )),
            None => Err(Error::InvalidArgument(
                "overlay mount without upperdir is read-only: cannot apply a layer to it".into(),
            )),
        },
        [m] if m.kind == "bind" && !m.is_readonly() => Ok(Target::Dir(
            m.source.clone().into(),
            ApplyOptions::default(),
        )),
        [] => Err(Error::InvalidArgument(
            "apply needs at least one mount".into(),
        )),
        ms if ms.iter().any(Mount::is_readonly) => Err(Error::InvalidArgument(
            "cannot apply a layer to read-only mounts".into(),
        )),
        ms => Ok(Target::Mounted(ms.to_vec())),
    }
}

/// Applies the layer blob `digest` (visible in `ns`) onto `mounts`; `scratch` is where a
/// temporary mount point may be made.
pub fn apply(
    content: &ContentStore,
    ns: &Namespace,
    digest: &Digest,
    media_type: &str,
    mounts: &[Mount],
    scratch: &Path,
) -> Result<Applied> {
    if !supported_layer(media_type) {
        return Err(Error::Unsupported(format!(
            "unsupported diff media type {media_type:?} for layer {digest}"
        )));
    }
    let (file, _) = content.open(ns, digest)?;
    let reader = std::io::BufReader::with_capacity(1 << 20, file);
    let applied = match target_of(mounts)? {
        Target::Dir(dir, opts) => apply_layer(&dir, reader, opts),
        Target::Mounted(ms) => {
            let m = TempMount::new(scratch, &ms)?;
            apply_layer(m.path(), reader, ApplyOptions::default())
        }
    };
    applied.map_err(|e| match e {
        Error::InvalidArgument(m) => Error::InvalidArgument(format!("layer {digest}: {m}")),
        other => other,
    })
}
