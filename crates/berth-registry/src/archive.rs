//! OCI image layout archives (what `ctr images export`, `skopeo copy oci-archive:` and
//! Docker 25+'s `docker save` write): importing one into the stores, every blob verified
//! against its digest and held by a lease until an image roots it, and exporting images
//! from the stores as one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use berth_core::images::{Descriptor, Image};
use berth_core::metadata::{Labels, Timestamp};
use berth_core::{Digest, Namespace};

use crate::error::{Error, Result};
use crate::platform::Platform;
use crate::pull::{chain_ids, unpack_layer, Layer, Stores};
use crate::reference::Reference;

const NAME: &str = "io.containerd.image.name";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Unavailable(format!("worker failed: {e}")))?
}

fn read_json(stores: &Stores, ns: &Namespace, d: &Digest) -> Result<serde_json::Value> {
    let (f, _) = stores.content.open(ns, d)?;
    serde_json::from_reader(std::io::BufReader::new(f))
        .map_err(|e| Error::InvalidArgument(format!("{d} is not JSON: {e}")))
}

fn digest_of(v: &serde_json::Value) -> Result<Digest> {
    Ok(Digest::parse(v["digest"].as_str().unwrap_or_default())?)
}

fn is_index(media_type: &str) -> bool {
    media_type.contains("index") || media_type.contains("manifest.list")
}

/// Labels the blobs an index or manifest points to as its GC references (children that
/// are not in the store are skipped, as for an index pulled for one platform).
fn label_refs(stores: &Stores, ns: &Namespace, d: &Digest, media_type: &str) -> Result<()> {
    let v = read_json(stores, ns, d)?;
    let mut labels = Labels::new();
    if is_index(media_type) {
        for (i, m) in v["manifests"].as_array().into_iter().flatten().enumerate() {
            let md = digest_of(m)?;
            if stores.content.info(ns, &md).is_ok() {
                labels.insert(
                    format!("containerd.io/gc.ref.content.m.{i}"),
                    md.to_string(),
                );
                label_refs(stores, ns, &md, m["mediaType"].as_str().unwrap_or_default())?;
            }
        }
    } else {
        labels.insert(
            "containerd.io/gc.ref.content.config".into(),
            digest_of(&v["config"])?.to_string(),
        );
        for (i, l) in v["layers"].as_array().into_iter().flatten().enumerate() {
            labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                digest_of(l)?.to_string(),
            );
        }
    }
    let fields: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
    stores.content.update(ns, d, &labels, &fields)?;
    Ok(())
}

/// Where an import goes and what it unpacks.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Name for an image the archive does not name.
    pub name: String,
    pub labels: Labels,
    /// Snapshotter and platform to unpack into.
    pub unpack: Option<(String, Platform)>,
}

/// Imports an OCI layout archive (plain or gzip-compressed tar) into `ns`.
pub async fn import(
    stores: &Stores,
    ns: &Namespace,
    archive: &Path,
    opts: &ImportOptions,
) -> Result<Vec<Image>> {
    let lease = {
        let (meta, ns) = (stores.meta.clone(), ns.clone());
        let expire = berth_core::gc::format_rfc3339(Timestamp::now().0 / 1_000_000_000 + 3600);
        blocking(move || {
            let mut l = Labels::new();
            l.insert(berth_core::labels::GC_EXPIRE.into(), expire);
            Ok(berth_core::leases::Leases { meta: &meta }
                .create(&ns, "", l)?
                .id)
        })
        .await?
    };
    let r = import_leased(stores, ns, archive, opts, &lease).await;
    let (meta, n) = (stores.meta.clone(), ns.clone());
    let _ =
        blocking(move || Ok(berth_core::leases::Leases { meta: &meta }.delete(&n, &lease)?)).await;
    r
}

async fn import_leased(
    stores: &Stores,
    ns: &Namespace,
    archive: &Path,
    opts: &ImportOptions,
    lease: &str,
) -> Result<Vec<Image>> {
    let (s, n, path, l) = (
        stores.clone(),
        ns.clone(),
        archive.to_path_buf(),
        lease.to_owned(),
    );
    let index = blocking(move || store_blobs(&s, &n, &path, &l)).await?;
    let entries = index["manifests"].as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "archive {}: index.json lists no images",
            archive.display()
        )));
    }
    let mut images = Vec::new();
    for e in entries {
        let d = digest_of(&e)?;
        let media_type = e["mediaType"].as_str().unwrap_or_default().to_owned();
        let size = e["size"].as_i64().unwrap_or(0);
        let ann = |k: &str| e["annotations"][k].as_str().map(str::to_owned);
        let name = ann(NAME)
            .or_else(|| ann(REF_NAME).filter(|r| r.contains('/') || r.contains(':')))
            .or_else(|| (!opts.name.is_empty()).then(|| opts.name.clone()))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "image {d} in archive {} has no name: give one in the destination",
                    archive.display()
                ))
            })?;
        let (s, n, dd, mt) = (stores.clone(), ns.clone(), d.clone(), media_type.clone());
        blocking(move || label_refs(&s, &n, &dd, &mt)).await?;
        if let Some((sn, platform)) = &opts.unpack {
            unpack(stores, ns, lease, &d, &media_type, sn, platform).await?;
        }
        let image = Image {
            name,
            labels: opts.labels.clone(),
            target: Descriptor {
                media_type,
                digest: d.to_string(),
                size,
                annotations: BTreeMap::new(),
            },
            created_at: Timestamp::now(),
            updated_at: Timestamp::now(),
        };
        let (images_store, n) = (stores.images.clone(), ns.clone());
        let img = blocking(move || {
            Ok(match images_store.create(&n, image.clone()) {
                Err(e) if e.is_already_exists() => images_store.update(&n, image, &[])?,
                r => r?,
            })
        })
        .await?;
        images.push(img);
    }
    Ok(images)
}

/// Stores one archive entry in the content store: verified against `expected` when its name
/// says its digest, else hashed as it is written. Returns its digest and size.
fn store_entry(
    stores: &Stores,
    ns: &Namespace,
    lease: &str,
    entry: &mut dyn std::io::Read,
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
    match stores.content.writer(ns, &r, size, expected, Some(lease)) {
        Ok(mut w) => {
            std::io::copy(entry, &mut w)
                .map_err(|e| Error::InvalidArgument(format!("{what}: {e}")))?;
            stores
                .content
                .commit(w, size, expected, &Labels::new(), Some(lease))
                .map_err(|e| match e {
                    berth_core::Error::FailedPrecondition(m) => {
                        Error::Mismatch(format!("{what}: {m}"))
                    }
                    e => e.into(),
                })
        }
        Err(e) if e.is_already_exists() => Ok(expected
            .cloned()
            .expect("only an expected digest can already exist")),
        Err(e) => Err(e.into()),
    }
}

/// Reads the archive: blobs go into the content store (verified). Returns the OCI index of
/// what it holds: its own index.json, or one made from a Docker archive's manifest.json.
fn store_blobs(
    stores: &Stores,
    ns: &Namespace,
    path: &Path,
    lease: &str,
) -> Result<serde_json::Value> {
    let what = path.display().to_string();
    let file = std::fs::File::open(path)
        .map_err(|e| Error::InvalidArgument(format!("archive {what}: {e}")))?;
    let reader = berth_core::apply::decompress(file)?;
    let mut tar = tar::Archive::new(reader);
    let mut index = None;
    let mut docker_manifest = None;
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
        let size = entry.header().size().unwrap_or(0) as i64;
        let here = format!("archive {what}: {name}");
        if name == "index.json" || name == "manifest.json" {
            let v = serde_json::from_reader::<_, serde_json::Value>(&mut entry)
                .map_err(|e| Error::InvalidArgument(format!("{here}: {e}")))?;
            if name == "index.json" {
                index = Some(v)
            } else {
                docker_manifest = Some(v)
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
    if let (true, Some(index)) = (layout, index) {
        return Ok(index);
    }
    let Some(manifest) = docker_manifest else {
        return Err(Error::InvalidArgument(format!(
            "archive {what} has neither an oci-layout with index.json nor a Docker manifest.json"
        )));
    };
    docker_index(stores, ns, lease, &what, &manifest, &files)
}

/// Makes image manifests for the images of a Docker archive (`manifest.json`: Config,
/// RepoTags, Layers by path) and returns an index of them, one entry per tag.
fn docker_index(
    stores: &Stores,
    ns: &Namespace,
    lease: &str,
    what: &str,
    manifest: &serde_json::Value,
    files: &BTreeMap<String, (Digest, i64)>,
) -> Result<serde_json::Value> {
    let file = |p: &str| {
        files.get(p).cloned().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "archive {what}: manifest.json names {p:?}, which the archive lacks"
            ))
        })
    };
    let mut entries = Vec::new();
    for img in manifest.as_array().into_iter().flatten() {
        let (cd, cs) = file(img["Config"].as_str().unwrap_or_default())?;
        let mut layers = Vec::new();
        for l in img["Layers"].as_array().into_iter().flatten() {
            let (ld, ls) = file(l.as_str().unwrap_or_default())?;
            layers.push(serde_json::json!({
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar", "digest": ld.to_string(), "size": ls,
            }));
        }
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cd.to_string(), "size": cs},
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
        for tag in img["RepoTags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str())
        {
            let name = Reference::parse(tag)?.to_string();
            entries.push(serde_json::json!({
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "digest": md.to_string(), "size": m.len(), "annotations": {NAME: name},
            }));
        }
        if img["RepoTags"].as_array().is_none_or(|t| t.is_empty()) {
            entries.push(serde_json::json!({
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "digest": md.to_string(), "size": m.len(),
            }));
        }
    }
    Ok(serde_json::json!({"schemaVersion": 2, "manifests": entries}))
}

/// Unpacks the manifest for `platform` of an imported image.
async fn unpack(
    stores: &Stores,
    ns: &Namespace,
    lease: &str,
    root: &Digest,
    media_type: &str,
    sn: &str,
    platform: &Platform,
) -> Result<()> {
    let mut manifest = root.clone();
    if is_index(media_type) {
        let (s, n, d) = (stores.clone(), ns.clone(), root.clone());
        let index = blocking(move || read_json(&s, &n, &d)).await?;
        let entry = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| {
                let p = &m["platform"];
                platform.matches(
                    p["os"].as_str().unwrap_or_default(),
                    p["architecture"].as_str().unwrap_or_default(),
                    p["variant"].as_str().unwrap_or_default(),
                )
            })
            .ok_or_else(|| {
                Error::NotFound(format!("manifest for platform {platform} in index {root}"))
            })?;
        manifest = digest_of(entry)?;
    }
    let (s, n, d) = (stores.clone(), ns.clone(), manifest.clone());
    let m = blocking(move || read_json(&s, &n, &d)).await?;
    let config = digest_of(&m["config"])?;
    let (s, n, c) = (stores.clone(), ns.clone(), config.clone());
    let cfg = blocking(move || read_json(&s, &n, &c)).await?;
    let diff_ids: Vec<Digest> = cfg["rootfs"]["diff_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| Ok(Digest::parse(v.as_str().unwrap_or_default())?))
        .collect::<Result<_>>()?;
    let layers = m["layers"].as_array().cloned().unwrap_or_default();
    if layers.len() != diff_ids.len() {
        return Err(Error::InvalidArgument(format!(
            "config {config} lists {} diff ids for {} layers",
            diff_ids.len(),
            layers.len()
        )));
    }
    let chains = chain_ids(&diff_ids);
    for (i, l) in layers.iter().enumerate() {
        let layer = Layer {
            digest: digest_of(l)?,
            media_type: l["mediaType"].as_str().unwrap_or_default().to_owned(),
            diff_id: diff_ids[i].clone(),
        };
        let parent = i.checked_sub(1).map(|p| &chains[p]);
        unpack_layer(stores, ns, lease, sn, &layer, parent, &chains[i]).await?;
    }
    if let Some(top) = chains.last() {
        let mut l = Labels::new();
        l.insert(
            format!("containerd.io/gc.ref.snapshot.{sn}"),
            top.to_string(),
        );
        let fields = vec![format!("labels.containerd.io/gc.ref.snapshot.{sn}")];
        let (s, n) = (stores.clone(), ns.clone());
        blocking(move || Ok(s.content.update(&n, &config, &l, &fields).map(|_| ())?)).await?;
    }
    Ok(())
}

/// Writes the named images, with every blob they reference that the store holds, as an OCI
/// layout tar at `out`; with `docker_manifest`, also the `manifest.json` that `docker load`
/// reads (one entry per image, for its first manifest in the store).
pub async fn export(
    stores: &Stores,
    ns: &Namespace,
    names: &[String],
    out: &Path,
    docker_manifest: bool,
) -> Result<()> {
    let (s, n, names, out): (Stores, Namespace, Vec<String>, PathBuf) = (
        stores.clone(),
        ns.clone(),
        names.to_vec(),
        out.to_path_buf(),
    );
    blocking(move || export_blocking(&s, &n, &names, &out, docker_manifest)).await
}

/// A `manifest.json` entry for an image: its config and layers by path in the archive.
fn docker_entry(
    stores: &Stores,
    ns: &Namespace,
    root: &Digest,
    media_type: &str,
    name: &str,
) -> Result<Option<serde_json::Value>> {
    let blob_path = |d: &Digest| format!("blobs/sha256/{}", &d.to_string()[7..]);
    let mut manifest = root.clone();
    if is_index(media_type) {
        let index = read_json(stores, ns, root)?;
        let Some(m) = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| digest_of(m).is_ok_and(|d| stores.content.info(ns, &d).is_ok()))
        else {
            return Ok(None);
        };
        manifest = digest_of(m)?;
    }
    let m = read_json(stores, ns, &manifest)?;
    let layers: Vec<String> = m["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| digest_of(l).map(|d| blob_path(&d)))
        .collect::<Result<_>>()?;
    Ok(Some(serde_json::json!({
        "Config": blob_path(&digest_of(&m["config"])?),
        "RepoTags": [name],
        "Layers": layers,
    })))
}

fn export_blocking(
    stores: &Stores,
    ns: &Namespace,
    names: &[String],
    out: &Path,
    docker_manifest: bool,
) -> Result<()> {
    let mut blobs: BTreeSet<Digest> = BTreeSet::new();
    let mut manifests = Vec::new();
    let mut docker = Vec::new();
    for name in names {
        let img = stores.images.get(ns, name)?;
        let root = Digest::parse(&img.target.digest)?;
        collect(stores, ns, &root, &img.target.media_type, true, &mut blobs)?;
        if docker_manifest {
            docker.extend(docker_entry(
                stores,
                ns,
                &root,
                &img.target.media_type,
                name,
            )?);
        }
        let mut ann = serde_json::Map::new();
        ann.insert(NAME.into(), name.clone().into());
        if let Some(tag) = Reference::parse(name).ok().and_then(|r| r.tag) {
            ann.insert(REF_NAME.into(), tag.into());
        }
        manifests.push(serde_json::json!({
            "mediaType": img.target.media_type, "digest": img.target.digest,
            "size": img.target.size, "annotations": ann,
        }));
    }
    let io = |e: std::io::Error| Error::Core(berth_core::Error::io("write", out)(e));
    let file = std::fs::File::create(out).map_err(io)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mut put = |name: &str, data: &mut dyn std::io::Read, size: u64| -> Result<()> {
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
        let (mut f, size) = stores.content.open(ns, d)?;
        put(
            &format!("blobs/sha256/{}", &d.to_string()[7..]),
            &mut f,
            size,
        )?;
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests,
    }))
    .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    put("index.json", &mut &index[..], index.len() as u64)?;
    if docker_manifest {
        let m = serde_json::to_vec(&docker).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        put("manifest.json", &mut &m[..], m.len() as u64)?;
    }
    tar.into_inner().map_err(io)?.flush().map_err(io)?;
    Ok(())
}

/// Gathers a root and what it references; an index's manifests that are not in the store
/// (other platforms) are left out, a manifest's config and layers must all be there.
fn collect(
    stores: &Stores,
    ns: &Namespace,
    d: &Digest,
    media_type: &str,
    required: bool,
    out: &mut BTreeSet<Digest>,
) -> Result<()> {
    if stores.content.info(ns, d).is_err() {
        return if required {
            Err(Error::Core(berth_core::Error::FailedPrecondition(format!(
                "blob {d} is not in the content store: pull the image completely before exporting it"
            ))))
        } else {
            Ok(())
        };
    }
    out.insert(d.clone());
    let v = read_json(stores, ns, d)?;
    if is_index(media_type) {
        for m in v["manifests"].as_array().into_iter().flatten() {
            collect(
                stores,
                ns,
                &digest_of(m)?,
                m["mediaType"].as_str().unwrap_or_default(),
                false,
                out,
            )?;
        }
    } else {
        for b in std::iter::once(&v["config"]).chain(v["layers"].as_array().into_iter().flatten()) {
            let bd = digest_of(b)?;
            if stores.content.info(ns, &bd).is_err() {
                return Err(Error::Core(berth_core::Error::FailedPrecondition(format!(
                    "blob {bd} of manifest {d} is not in the content store: pull the image completely before exporting it"
                ))));
            }
            out.insert(bd);
        }
    }
    Ok(())
}
