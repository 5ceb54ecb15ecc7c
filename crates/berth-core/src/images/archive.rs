//! Image archives: OCI image layouts in a tar (what `ctr images export`, `skopeo copy
//! oci-archive:` and Docker 25+'s `docker save` write) and Docker's `manifest.json` archives.
//! Import stores every blob through a verified content ingest under a lease until an image
//! record roots it, names the images and unpacks them; export writes an OCI layout with
//! Docker's compatibility manifest beside it. Both are blocking: callers run them off the
//! async reactor.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

use serde::Deserialize;

use super::media::{self, Kind};
use super::platform::Platform;
use super::progress::{Progress, ProgressSink};
use super::reference::Reference;
use super::resolve::{self, BlobRef, ParsedIndex};
use super::store::{Descriptor, Image};
use super::unpack::{self, ImageStores};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::leases::DaemonLease;
use crate::metadata::{Labels, Timestamp};
use crate::namespace::Namespace;

/// The annotation containerd names an image by in an archive's index.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// OCI's reference annotation (a tag, or a full reference as some tools write it).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// How long an import's lease lives if berthd dies before releasing it.
const LEASE_TTL_SECS: i64 = 24 * 3600;

/// One image in an archive's index: its target and annotations (its names, if any).
#[derive(Debug, Clone)]
pub struct ArchiveImage {
    pub target: BlobRef,
    pub annotations: BTreeMap<String, String>,
}

impl ArchiveImage {
    /// The name the archive gives the image: containerd's annotation, else an OCI
    /// `ref.name` that is a whole reference (a bare tag names nothing by itself).
    pub fn archive_name(&self) -> Option<String> {
        self.annotations
            .get(ANNOTATION_IMAGE_NAME)
            .cloned()
            .or_else(|| {
                self.annotations
                    .get(ANNOTATION_REF_NAME)
                    .filter(|r| r.contains('/') || r.contains(':'))
                    .and_then(|r| Reference::parse(r).ok())
                    .map(|r| r.to_string())
            })
    }
}

/// A prefix that names the images of an archive, as containerd 2.x clients send them
/// (`ImageReference` with `is_prefix`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamePrefix {
    pub prefix: String,
    /// Names in the archive may be anything (else only names under the prefix are kept).
    pub allow_overwrite: bool,
    /// Also name each image `<prefix>@<digest>`.
    pub add_digest: bool,
    /// ... but not an image that already got a name.
    pub skip_named_digest: bool,
}

impl NamePrefix {
    /// containerd's reference translation: a bare tag goes under the prefix; a whole
    /// reference stays as it is when overwriting is allowed, else only if it is the
    /// prefix's own (`prefix:tag`, `prefix@digest`, `prefix/...`).
    fn translate(&self, name: &str) -> Option<String> {
        let whole = name.contains('/') || name.contains(':') || name.contains('@');
        if !whole {
            return Some(format!("{}:{name}", self.prefix));
        }
        if self.allow_overwrite {
            return Some(name.to_owned());
        }
        let rest = name.strip_prefix(&self.prefix)?;
        matches!(rest.chars().next(), Some(':' | '@' | '/')).then(|| name.to_owned())
    }

    /// The names an archive entry gets under this prefix.
    fn names_for(&self, entry: &ArchiveImage) -> Vec<String> {
        let name = match (
            entry.annotations.get(ANNOTATION_IMAGE_NAME),
            entry.annotations.get(ANNOTATION_REF_NAME),
        ) {
            // containerd's own name counts only if the prefix leaves it as it is.
            (Some(n), _) => self.translate(n).filter(|t| t == n),
            (None, Some(r)) => self.translate(r),
            (None, None) => None,
        };
        let mut out: Vec<String> = name.iter().cloned().collect();
        if self.add_digest && (name.is_none() || !self.skip_named_digest) {
            out.push(format!("{}@{}", self.prefix, entry.target.digest));
        }
        out
    }
}

/// Where an import goes and what it unpacks.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Names for the archive's index itself (containerd's `ImageStore.name` and its plain
    /// extra references).
    pub index_names: Vec<String>,
    /// How the images in the archive are named. With none (and no index names), each image
    /// takes the name the archive gives it.
    pub prefixes: Vec<NamePrefix>,
    pub labels: Labels,
    /// Snapshotter and platform to unpack into.
    pub unpack: Option<(String, Platform)>,
}

/// Imports an archive (a tar stream, plain or compressed, named `what` in errors) into
/// `ns`: every blob verified, the images named and unpacked. Returns the image records
/// written; a failure leaves nothing but garbage for the collector.
pub fn import(
    stores: &ImageStores,
    ns: &Namespace,
    archive: impl Read + Send,
    what: &str,
    opts: &ImportOptions,
    progress: &dyn ProgressSink,
) -> Result<Vec<Image>> {
    let lease = DaemonLease::take(stores.meta.clone(), ns, LEASE_TTL_SECS)?;
    progress.progress(Progress::status("Importing"));
    let found = store_archive(stores, ns, archive, what, lease.id())?;
    let mut named: Vec<(String, BlobRef)> = Vec::new();
    for entry in &found {
        label_refs(stores, ns, &entry.target)?;
        let names: Vec<String> = if !opts.prefixes.is_empty() {
            opts.prefixes
                .iter()
                .flat_map(|p| p.names_for(entry))
                .collect()
        } else if opts.index_names.is_empty() {
            vec![entry.archive_name().ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "image {} in archive {what} has no name: give a name or a prefix",
                    entry.target.digest
                ))
            })?]
        } else {
            Vec::new()
        };
        if let Some((sn, platform)) = &opts.unpack {
            match resolve::resolve(&stores.content, ns, &entry.target, platform) {
                Ok(image) if runs_on(&image, platform) => {
                    unpack::unpack(stores, ns, Some(lease.id()), sn, &image)?
                }
                Ok(_) => {}
                Err(e)
                    if e.is_not_found() && media::kind(&entry.target.media_type) == Kind::Index =>
                {
                    tracing::debug!(image = %entry.target.digest, "nothing to unpack for {platform}: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        named.extend(names.into_iter().map(|n| (n, entry.target.clone())));
    }
    if !opts.index_names.is_empty() {
        let index = store_index(stores, ns, lease.id(), what, &found)?;
        named.extend(opts.index_names.iter().map(|n| (n.clone(), index.clone())));
    }
    let mut images = Vec::new();
    for (name, target) in named {
        let img = stores.images.put(
            ns,
            Image {
                name,
                labels: opts.labels.clone(),
                target: target.descriptor(),
                created_at: Timestamp::now(),
                updated_at: Timestamp::now(),
            },
        )?;
        progress.progress(Progress {
            event: "saved".into(),
            name: img.name.clone(),
            parents: Vec::new(),
            progress: 0,
            total: 0,
            desc: Some(target),
        });
        images.push(img);
    }
    progress.progress(Progress::status("Completed import"));
    Ok(images)
}

/// Whether a resolved image's config says it runs on `platform` (a config that names no
/// platform runs anywhere).
fn runs_on(image: &resolve::ResolvedImage, platform: &Platform) -> bool {
    let c = &image.image_config;
    let (os, arch) = (c.os().to_string(), c.architecture().to_string());
    (os.is_empty() && arch.is_empty())
        || platform.matches(&os, &arch, c.variant().as_deref().unwrap_or(""))
}

/// Stores the archive's index (as the archive lists its images) as a blob of its own, so
/// that an image can name the whole archive.
fn store_index(
    stores: &ImageStores,
    ns: &Namespace,
    lease: &str,
    what: &str,
    entries: &[ArchiveImage],
) -> Result<BlobRef> {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "mediaType": e.target.media_type, "digest": e.target.digest.to_string(),
                "size": e.target.size, "annotations": e.annotations,
            })
        })
        .collect();
    let bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": manifests,
    }))
    .map_err(|e| Error::InvalidArgument(format!("index of {what}: {e}")))?;
    let d = Digest::of(&bytes);
    store_entry(
        stores,
        ns,
        lease,
        &mut &bytes[..],
        bytes.len() as i64,
        Some(&d),
        &format!("archive {what}: index"),
    )?;
    let blob = BlobRef {
        digest: d,
        size: bytes.len() as i64,
        media_type: media::OCI_INDEX.into(),
    };
    label_refs(stores, ns, &blob)?;
    Ok(blob)
}

/// Labels an index or manifest with the GC references to its children in the store.
pub fn label_refs(stores: &ImageStores, ns: &Namespace, blob: &BlobRef) -> Result<()> {
    let bytes = resolve::read_json_blob(&stores.content, ns, &blob.digest)?;
    let what = format_args!("{} {}", media::short_name(&blob.media_type), blob.digest);
    let labels = match media::kind(&blob.media_type) {
        Kind::Index => {
            let index = resolve::parse_index(&bytes, &what)?;
            let present = |d: &Digest| stores.content.info(ns, d).is_ok();
            for e in &index.entries {
                if present(&e.blob.digest) {
                    label_refs(stores, ns, &e.blob)?;
                }
            }
            index.gc_labels(present)
        }
        Kind::Manifest => resolve::parse_manifest(&bytes, &what)?.gc_labels(),
        _ => return Ok(()),
    };
    stores.content.add_labels(ns, &blob.digest, labels)?;
    Ok(())
}

/// Stores one archive entry in the content store: verified against `expected` when its
/// name says its digest, else hashed as it is written. A failure leaves no ingest.
fn store_entry(
    stores: &ImageStores,
    ns: &Namespace,
    lease: &str,
    entry: &mut dyn Read,
    size: i64,
    expected: Option<&Digest>,
    what: &str,
) -> Result<Digest> {
    let r = format!(
        "import-{}",
        expected.map_or_else(
            || uuid::Uuid::new_v4().simple().to_string(),
            ToString::to_string
        )
    );
    let mut w = match stores.content.writer(ns, &r, size, expected, Some(lease)) {
        Ok(w) => w,
        Err(e) if e.is_already_exists() => {
            return expected.cloned().ok_or_else(|| {
                Error::FailedPrecondition(format!("{what}: ingest {r:?} exists already"))
            })
        }
        Err(e) => return Err(e),
    };
    if w.offset() > 0 {
        // A leftover of an earlier, interrupted import: start over from the archive.
        w.write_at(0, &[])?;
    }
    let copied = std::io::copy(entry, &mut w)
        .map_err(|e| Error::InvalidArgument(format!("{what}: archive cut short: {e}")));
    let committed = copied.and_then(|n| {
        if (n as i64) < size {
            return Err(Error::InvalidArgument(format!(
                "{what}: archive cut short after {n} of {size} bytes"
            )));
        }
        stores
            .content
            .commit(w, size, expected, &Labels::new(), Some(lease))
            .map_err(|e| match e {
                Error::FailedPrecondition(m) => Error::FailedPrecondition(format!("{what}: {m}")),
                e => e,
            })
    });
    if committed.is_err() {
        let _ = stores.content.abort(ns, &r);
    }
    committed
}

/// A `manifest.json` entry of a Docker archive.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Reads the archive: blobs go into the content store (verified). Returns the images it
/// holds: its own index.json, or one made from a Docker archive's manifest.json.
fn store_archive(
    stores: &ImageStores,
    ns: &Namespace,
    archive: impl Read + Send,
    what: &str,
    lease: &str,
) -> Result<Vec<ArchiveImage>> {
    let reader = crate::apply::decompress(archive)?;
    let mut tar = tar::Archive::new(reader);
    let mut index = None;
    let mut docker_manifest: Option<Vec<DockerArchiveEntry>> = None;
    let mut layout = false;
    // Files of a Docker archive, by path: (digest, size).
    let mut files: BTreeMap<String, (Digest, i64)> = BTreeMap::new();
    let entries = tar
        .entries()
        .map_err(|e| Error::InvalidArgument(format!("archive {what} is not a tar: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| Error::InvalidArgument(format!("archive {what}: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| Error::InvalidArgument(format!("archive {what}: {e}")))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        let size = i64::try_from(entry.header().size().unwrap_or(0))
            .map_err(|_| Error::InvalidArgument(format!("archive {what}: {name}: size")))?;
        let here = format!("archive {what}: {name}");
        if name == "index.json" || name == "manifest.json" {
            if size > resolve::MAX_JSON_BLOB {
                return Err(Error::InvalidArgument(format!("{here}: too large")));
            }
            let mut bytes = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| Error::InvalidArgument(format!("{here}: {e}")))?;
            if name == "index.json" {
                index = Some(resolve::parse_index(&bytes, &here)?);
            } else {
                docker_manifest = Some(
                    serde_json::from_slice(&bytes)
                        .map_err(|e| Error::InvalidArgument(format!("{here}: {e}")))?,
                );
            }
        } else if name == "oci-layout" {
            layout = true;
        } else if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            let d = Digest::parse(&format!("sha256:{hex}"))
                .map_err(|e| Error::InvalidArgument(format!("{here}: {e}")))?;
            let d = store_entry(
                stores,
                ns,
                lease,
                &mut entry,
                size,
                Some(&d),
                &format!("archive {what}: blob {d}"),
            )?;
            files.insert(name, (d, size));
        } else if name.ends_with(".tar") || name.ends_with(".json") {
            // A Docker archive's config or layer, named by path: hashed as it is stored.
            let d = store_entry(stores, ns, lease, &mut entry, size, None, &here)?;
            files.insert(name, (d, size));
        }
    }
    let images = match (layout, index, docker_manifest) {
        (true, Some(index), _) => index_images(&index),
        (_, _, Some(manifest)) => docker_images(stores, ns, lease, what, &manifest, &files)?,
        _ => {
            return Err(Error::InvalidArgument(format!(
            "archive {what} has neither an oci-layout with index.json nor a Docker manifest.json"
        )))
        }
    };
    if images.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "archive {what} lists no images"
        )));
    }
    for img in &images {
        if stores.content.info(ns, &img.target.digest).is_err() {
            return Err(Error::InvalidArgument(format!(
                "archive {what} lists image {} but does not hold it",
                img.target.digest
            )));
        }
    }
    Ok(images)
}

fn index_images(index: &ParsedIndex) -> Vec<ArchiveImage> {
    index
        .entries
        .iter()
        .map(|e| ArchiveImage {
            target: e.blob.clone(),
            annotations: e.annotations.clone(),
        })
        .collect()
}

/// Makes image manifests for the images of a Docker archive (`manifest.json`: Config,
/// RepoTags, Layers by path), one entry per tag.
fn docker_images(
    stores: &ImageStores,
    ns: &Namespace,
    lease: &str,
    what: &str,
    manifest: &[DockerArchiveEntry],
    files: &BTreeMap<String, (Digest, i64)>,
) -> Result<Vec<ArchiveImage>> {
    let file = |p: &str| {
        files.get(p).cloned().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "archive {what}: manifest.json names {p:?}, which the archive lacks"
            ))
        })
    };
    let mut out = Vec::new();
    for img in manifest {
        let (cd, cs) = file(&img.config)?;
        let mut layers = Vec::new();
        for l in &img.layers {
            let (ld, ls) = file(l)?;
            layers.push(serde_json::json!({
                "mediaType": media::DOCKER_LAYER, "digest": ld.to_string(), "size": ls,
            }));
        }
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::DOCKER_MANIFEST,
            "config": {"mediaType": media::DOCKER_CONFIG, "digest": cd.to_string(), "size": cs},
            "layers": layers,
        }))
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let md = Digest::of(&m);
        store_entry(
            stores,
            ns,
            lease,
            &mut &m[..],
            m.len() as i64,
            Some(&md),
            &format!("archive {what}: manifest"),
        )?;
        let target = BlobRef {
            digest: md,
            size: m.len() as i64,
            media_type: media::DOCKER_MANIFEST.into(),
        };
        let tags = img.repo_tags.clone().unwrap_or_default();
        if tags.is_empty() {
            out.push(ArchiveImage {
                target: target.clone(),
                annotations: BTreeMap::new(),
            });
        }
        for tag in tags {
            let r = Reference::parse(&tag)?;
            let mut annotations =
                BTreeMap::from([(ANNOTATION_IMAGE_NAME.to_owned(), r.to_string())]);
            if let Some(t) = &r.tag {
                annotations.insert(ANNOTATION_REF_NAME.to_owned(), t.clone());
            }
            out.push(ArchiveImage {
                target: target.clone(),
                annotations,
            });
        }
    }
    Ok(out)
}

/// What an export writes.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Also write the `manifest.json` that `docker load` reads.
    pub docker_manifest: bool,
    /// Manifests of these platforms (an index's other manifests are left out).
    pub platforms: Vec<Platform>,
    /// Every manifest of an index, all of which must then be in the store.
    pub all_platforms: bool,
    /// Leave out layers marked non-distributable.
    pub skip_non_distributable: bool,
}

/// An image to export: the name written into the archive and its target.
#[derive(Debug, Clone)]
pub struct ExportImage {
    pub name: String,
    pub target: Descriptor,
}

/// Writes the images, with every blob they reference that the store holds, as an OCI
/// layout tar into `out`. The archive is complete when this returns; on error `out` holds
/// garbage the caller removes.
pub fn export(
    stores: &ImageStores,
    ns: &Namespace,
    images: &[ExportImage],
    out: &mut dyn Write,
    opts: &ExportOptions,
    progress: &dyn ProgressSink,
) -> Result<()> {
    progress.progress(Progress::status("Exporting"));
    let mut blobs: BTreeSet<Digest> = BTreeSet::new();
    let mut manifests = Vec::new();
    let mut docker = Vec::new();
    for img in images {
        let root = BlobRef::of(&img.target, &format_args!("image {:?}", img.name))?;
        collect(stores, ns, &root, true, opts, &mut blobs)?;
        if opts.docker_manifest {
            docker.extend(docker_entry(stores, ns, &root, &img.name, opts)?);
        }
        let mut ann = serde_json::Map::new();
        ann.insert(ANNOTATION_IMAGE_NAME.into(), img.name.clone().into());
        if let Some(tag) = Reference::parse(&img.name).ok().and_then(|r| r.tag) {
            ann.insert(ANNOTATION_REF_NAME.into(), tag.into());
        }
        manifests.push(serde_json::json!({
            "mediaType": img.target.media_type, "digest": img.target.digest,
            "size": img.target.size, "annotations": ann,
        }));
    }
    let io = |e: std::io::Error| Error::io("write", "export archive")(e);
    let mut tar = tar::Builder::new(out);
    let mut put = |name: &str, data: &mut dyn Read, size: u64| -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, data).map_err(io)
    };
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    put("oci-layout", &mut &layout[..], layout.len() as u64)?;
    for d in &blobs {
        let (f, size) = stores.content.open(ns, d)?;
        put(
            &format!("blobs/sha256/{}", d.hex()),
            &mut f.take(size),
            size,
        )?;
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": manifests,
    }))
    .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    put("index.json", &mut &index[..], index.len() as u64)?;
    if opts.docker_manifest {
        let m = serde_json::to_vec(&docker).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        put("manifest.json", &mut &m[..], m.len() as u64)?;
    }
    tar.into_inner().map_err(io)?.flush().map_err(io)?;
    progress.progress(Progress::status("Completed export"));
    Ok(())
}

fn platform_wanted(opts: &ExportOptions, p: Option<&Platform>) -> bool {
    opts.all_platforms
        || opts.platforms.is_empty()
        || p.is_none_or(|p| {
            opts.platforms
                .iter()
                .any(|want| want.matches(&p.os, &p.architecture, &p.variant))
        })
}

/// A `manifest.json` entry for an image: its config and layers by path in the archive,
/// for the first manifest of a wanted platform the store holds.
fn docker_entry(
    stores: &ImageStores,
    ns: &Namespace,
    root: &BlobRef,
    name: &str,
    opts: &ExportOptions,
) -> Result<Option<serde_json::Value>> {
    let blob_path = |d: &Digest| format!("blobs/sha256/{}", d.hex());
    let manifest = match media::kind(&root.media_type) {
        Kind::Index => {
            let bytes = resolve::read_json_blob(&stores.content, ns, &root.digest)?;
            let index = resolve::parse_index(&bytes, &format_args!("index {}", root.digest))?;
            let Some(e) = index.entries.iter().find(|e| {
                media::kind(&e.blob.media_type) == Kind::Manifest
                    && platform_wanted(opts, e.platform.as_ref())
                    && stores.content.info(ns, &e.blob.digest).is_ok()
            }) else {
                return Ok(None);
            };
            e.blob.clone()
        }
        _ => root.clone(),
    };
    let bytes = resolve::read_json_blob(&stores.content, ns, &manifest.digest)?;
    let m = resolve::parse_manifest(&bytes, &format_args!("manifest {}", manifest.digest))?;
    let layers: Vec<String> = m.layers.iter().map(|l| blob_path(&l.digest)).collect();
    let tag = Reference::parse(name).map_or_else(|_| name.to_owned(), |r| r.familiar());
    Ok(Some(serde_json::json!({
        "Config": blob_path(&m.config.digest),
        "RepoTags": [tag],
        "Layers": layers,
    })))
}

/// Gathers a root and what it references. An index's manifests that the store lacks
/// (other platforms) or that are not wanted are left out; a manifest's config and layers
/// must all be there.
fn collect(
    stores: &ImageStores,
    ns: &Namespace,
    blob: &BlobRef,
    required: bool,
    opts: &ExportOptions,
    out: &mut BTreeSet<Digest>,
) -> Result<()> {
    if stores.content.info(ns, &blob.digest).is_err() {
        return if required {
            Err(Error::FailedPrecondition(format!(
                "blob {} is not in the content store: pull the image completely before exporting it",
                blob.digest
            )))
        } else {
            Ok(())
        };
    }
    out.insert(blob.digest.clone());
    let bytes = resolve::read_json_blob(&stores.content, ns, &blob.digest)?;
    let what = format_args!("{} {}", media::short_name(&blob.media_type), blob.digest);
    match media::kind(&blob.media_type) {
        Kind::Index => {
            let index = resolve::parse_index(&bytes, &what)?;
            let mut any = false;
            for e in &index.entries {
                if platform_wanted(opts, e.platform.as_ref()) {
                    let before = out.len();
                    collect(stores, ns, &e.blob, opts.all_platforms, opts, out)?;
                    any |= out.len() > before;
                }
            }
            if !any && !index.entries.is_empty() {
                let want: Vec<String> = opts.platforms.iter().map(ToString::to_string).collect();
                return Err(Error::NotFound(format!(
                    "manifest for platform {} of index {} in the store",
                    want.join(", "),
                    blob.digest
                )));
            }
        }
        Kind::Manifest => {
            let m = resolve::parse_manifest(&bytes, &what)?;
            for b in std::iter::once(&m.config).chain(m.layers.iter()) {
                if opts.skip_non_distributable && media::is_non_distributable(&b.media_type) {
                    continue;
                }
                if stores.content.info(ns, &b.digest).is_err() {
                    return Err(Error::FailedPrecondition(format!(
                        "blob {} of manifest {} is not in the content store: pull the image completely before exporting it",
                        b.digest, blob.digest
                    )));
                }
                out.insert(b.digest.clone());
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(annotations: &[(&str, &str)]) -> ArchiveImage {
        ArchiveImage {
            target: BlobRef {
                digest: Digest::of(b"m"),
                size: 1,
                media_type: media::OCI_MANIFEST.into(),
            },
            annotations: annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn prefixes_name_images_as_containerd_does() {
        let d = Digest::of(b"m");
        let dated = NamePrefix {
            prefix: "import-2026-11-30".into(),
            allow_overwrite: true,
            ..Default::default()
        };
        // A bare tag goes under the prefix; a whole name stays when overwriting is allowed.
        assert_eq!(
            dated.names_for(&entry(&[(ANNOTATION_REF_NAME, "latest")])),
            ["import-2026-11-30:latest"]
        );
        assert_eq!(
            dated.names_for(&entry(&[
                (ANNOTATION_IMAGE_NAME, "docker.io/library/alpine:3.19"),
                (ANNOTATION_REF_NAME, "3.19")
            ])),
            ["docker.io/library/alpine:3.19"]
        );
        // An explicit base name keeps only names of its own.
        let base = NamePrefix {
            prefix: "foo/bar".into(),
            ..Default::default()
        };
        assert!(base
            .names_for(&entry(&[(ANNOTATION_IMAGE_NAME, "docker.io/x/y:1")]))
            .is_empty());
        assert_eq!(
            base.names_for(&entry(&[(ANNOTATION_IMAGE_NAME, "foo/bar:2")])),
            ["foo/bar:2"]
        );
        // Digest names: for every image, or only the unnamed ones.
        let digests = NamePrefix {
            prefix: "foo/bar".into(),
            add_digest: true,
            ..Default::default()
        };
        assert_eq!(
            digests.names_for(&entry(&[(ANNOTATION_REF_NAME, "v1")])),
            ["foo/bar:v1".to_owned(), format!("foo/bar@{d}")]
        );
        let unnamed_only = NamePrefix {
            skip_named_digest: true,
            ..digests.clone()
        };
        assert_eq!(
            unnamed_only.names_for(&entry(&[(ANNOTATION_REF_NAME, "v1")])),
            ["foo/bar:v1"]
        );
        assert_eq!(
            unnamed_only.names_for(&entry(&[])),
            [format!("foo/bar@{d}")]
        );
    }
}
