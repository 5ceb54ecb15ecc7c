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

pub use crate::images::media::{
    is_layer as supported_layer, OCI_LAYER as MEDIA_TYPE_LAYER,
    OCI_LAYER_GZIP as MEDIA_TYPE_LAYER_GZIP, OCI_LAYER_ZSTD as MEDIA_TYPE_LAYER_ZSTD,
};

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
                    // Directories a layer adds files to are copied up with the attributes
                    // the lower layers give them, as overlayfs itself would.
                    lowers: m
                        .option("lowerdir")
                        .map(|l| l.split(':').map(PathBuf::from).collect())
                        .unwrap_or_default(),
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

/// Applies a layer stream straight into the upper directory of an overlay snapshot whose
/// lower layers are not there yet: whiteouts in overlayfs form, copy-ups left to
/// `apply::copy_up` once the lowers exist, and no flush yet (the commit flushes).
pub fn apply_to_upper(
    stream: impl std::io::BufRead + Send,
    digest: &Digest,
    media_type: &str,
    upper: &Path,
) -> Result<Applied> {
    if !supported_layer(media_type) {
        return Err(Error::Unsupported(format!(
            "unsupported diff media type {media_type:?} for layer {digest}"
        )));
    }
    let opts = ApplyOptions {
        overlay_whiteouts: true,
        lowers: Vec::new(),
    };
    apply_layer(upper, stream, &opts).map_err(|e| match e {
        Error::InvalidArgument(m) => Error::InvalidArgument(format!("layer {digest}: {m}")),
        other => other,
    })
}

/// Flushes the filesystem holding `dir`, so that a layer recorded as committed is on disk.
pub fn sync_fs(dir: &Path) -> Result<()> {
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::io("open", dir)(e.into()))?;
    rustix::fs::syncfs(&fd).map_err(|e| Error::io("syncfs", dir)(e.into()))
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
    apply_stream(reader, digest, media_type, mounts, scratch)
}

/// Applies a layer stream (named `digest` in errors) onto `mounts` and flushes it to disk.
pub fn apply_stream(
    stream: impl std::io::BufRead + Send,
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
    let applied = match target_of(mounts)? {
        Target::Dir(dir, opts) => {
            apply_layer(&dir, stream, &opts).and_then(|a| sync_fs(&dir).map(|()| a))
        }
        Target::Mounted(ms) => {
            let m = TempMount::new(scratch, &ms)?;
            apply_layer(m.path(), stream, &ApplyOptions::default())
                .and_then(|a| sync_fs(m.path()).map(|()| a))
        }
    };
    applied.map_err(|e| match e {
        Error::InvalidArgument(m) => Error::InvalidArgument(format!("layer {digest}: {m}")),
        other => other,
    })
}

/// What `create` made: the layer blob and the digest of its uncompressed tar.
pub struct Created {
    pub digest: Digest,
    pub size: i64,
    pub media_type: String,
    pub uncompressed: Digest,
}

fn readonly(mounts: &[Mount]) -> Vec<Mount> {
    mounts
        .iter()
        .map(|m| {
            let mut m = m.clone();
            m.options.retain(|o| o != "rw");
            if !m.is_readonly() {
                m.options.push("ro".into());
            }
            m
        })
        .collect()
}

/// Writes the changes from `lower` to `upper` as a layer into the content store, labelled
/// `containerd.io/uncompressed` with the tar's digest. `lower` may be empty (a base layer).
#[allow(clippy::too_many_arguments)]
pub fn create(
    content: &ContentStore,
    ns: &Namespace,
    lower: &[Mount],
    upper: &[Mount],
    media_type: &str,
    r: &str,
    mut labels: crate::metadata::Labels,
    lease: Option<&str>,
    scratch: &Path,
) -> Result<Created> {
    let media_type = if media_type.is_empty() {
        MEDIA_TYPE_LAYER_GZIP
    } else {
        media_type
    };
    if ![
        MEDIA_TYPE_LAYER,
        MEDIA_TYPE_LAYER_GZIP,
        MEDIA_TYPE_LAYER_ZSTD,
    ]
    .contains(&media_type)
    {
        return Err(Error::Unsupported(format!(
            "unsupported diff media type {media_type:?}"
        )));
    }
    if upper.is_empty() {
        return Err(Error::InvalidArgument(
            "diff needs the mounts of the upper (right) tree".into(),
        ));
    }
    let r = if r.is_empty() {
        format!("diff-{}", uuid::Uuid::new_v4().simple())
    } else {
        r.to_owned()
    };
    let empty;
    let lower_dir: Option<TempMount> = if lower.is_empty() {
        None
    } else {
        Some(TempMount::new(scratch, &readonly(lower))?)
    };
    let upper_dir = TempMount::new(scratch, &readonly(upper))?;
    let lower_path = match &lower_dir {
        Some(m) => m.path(),
        None => {
            empty = tempfile_dir(scratch)?;
            empty.as_path()
        }
    };
    let writer = content.writer(ns, &r, 0, None, lease)?;
    let diff =
        crate::differ::DiffWriter::new(upper_dir.path(), Compressor::new(media_type, writer)?);
    let result = diff.write_changes(lower_path);
    if lower_dir.is_none() {
        let _ = std::fs::remove_dir(lower_path);
    }
    let (compressor, uncompressed, _) = result?;
    let writer = compressor.finish()?;
    labels.insert(
        crate::labels::UNCOMPRESSED.to_owned(),
        uncompressed.to_string(),
    );
    let size = writer.offset() as i64;
    let digest = match content.commit(writer, 0, None, &labels, lease) {
        Ok(d) => d,
        Err(Error::AlreadyExists(_)) => {
            // The same layer was made before: it is committed; make sure it carries the label.
            let existing = content.list(
                ns,
                &crate::filters::Filter::parse_all(&[format!(
                    "labels.\"{}\"=={uncompressed}",
                    crate::labels::UNCOMPRESSED
                )])?,
            )?;
            existing
                .into_iter()
                .map(|i| i.digest)
                .next()
                .ok_or_else(|| Error::NotFound(format!("committed diff of ref {r:?}")))?
        }
        Err(e) => return Err(e),
    };
    Ok(Created {
        digest,
        size,
        media_type: media_type.to_owned(),
        uncompressed,
    })
}

fn tempfile_dir(scratch: &Path) -> Result<PathBuf> {
    let p = scratch.join(format!("empty-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&p).map_err(Error::io("create", &p))?;
    Ok(p)
}

enum Compressor {
    Plain(crate::content::Writer),
    Gzip(flate2::write::GzEncoder<crate::content::Writer>),
    Zstd(zstd::stream::write::Encoder<'static, crate::content::Writer>),
}

impl Compressor {
    fn new(media_type: &str, w: crate::content::Writer) -> Result<Self> {
        Ok(match media_type {
            MEDIA_TYPE_LAYER_GZIP => Compressor::Gzip(flate2::write::GzEncoder::new(
                w,
                flate2::Compression::fast(),
            )),
            MEDIA_TYPE_LAYER_ZSTD => Compressor::Zstd(
                zstd::stream::write::Encoder::new(w, 3).map_err(Error::io("zstd", "layer"))?,
            ),
            _ => Compressor::Plain(w),
        })
    }

    fn finish(self) -> Result<crate::content::Writer> {
        match self {
            Compressor::Plain(w) => Ok(w),
            Compressor::Gzip(g) => g.finish().map_err(Error::io("gzip", "layer")),
            Compressor::Zstd(z) => z.finish().map_err(Error::io("zstd", "layer")),
        }
    }
}

impl std::io::Write for Compressor {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Compressor::Plain(w) => std::io::Write::write(w, buf),
            Compressor::Gzip(g) => g.write(buf),
            Compressor::Zstd(z) => z.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Compressor::Plain(w) => std::io::Write::flush(w),
            Compressor::Gzip(g) => g.flush(),
            Compressor::Zstd(z) => z.flush(),
        }
    }
}
