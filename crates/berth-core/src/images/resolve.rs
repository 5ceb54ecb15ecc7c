//! Reading an image, typed: an index's entries and which of them serve a platform, a
//! manifest's config and layers (media types checked), a config's diff ids, and chain ids.
//! Parsing takes bytes, so a puller can check what a registry sent before storing it;
//! `resolve` reads the same objects back from the content store.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io::Read;

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

use super::media::{self, Kind};
use super::platform::Platform;
use super::store::Descriptor;
use crate::content::ContentStore;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::metadata::Labels;
use crate::namespace::Namespace;

/// Manifests, indexes and configs larger than this are refused rather than read into memory.
pub const MAX_JSON_BLOB: i64 = 16 << 20;

/// A blob an image refers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobRef {
    pub digest: Digest,
    pub size: i64,
    pub media_type: String,
}

impl BlobRef {
    fn from_oci(d: &oci_spec::image::Descriptor, what: &dyn Display) -> Result<BlobRef> {
        let digest = Digest::parse(d.digest().as_ref())
            .map_err(|e| Error::InvalidArgument(format!("{what}: {e}")))?;
        let size = i64::try_from(d.size()).map_err(|_| {
            Error::InvalidArgument(format!("{what}: size of {digest} is out of range"))
        })?;
        Ok(BlobRef {
            digest,
            size,
            media_type: d.media_type().to_string(),
        })
    }

    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.to_string(),
            size: self.size,
            annotations: BTreeMap::new(),
        }
    }

    /// The descriptor of an image record, checked.
    pub fn of(d: &Descriptor, what: &dyn Display) -> Result<BlobRef> {
        Ok(BlobRef {
            digest: d.validate(&what.to_string())?,
            size: d.size,
            media_type: d.media_type.clone(),
        })
    }
}

/// A layer with the digest of its uncompressed tar, as the config lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    pub blob: BlobRef,
    pub diff_id: Digest,
}

#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub blob: BlobRef,
    pub platform: Option<Platform>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct ParsedIndex {
    pub entries: Vec<IndexEntry>,
}

#[derive(Debug, Clone)]
pub struct ParsedManifest {
    pub config: BlobRef,
    pub layers: Vec<BlobRef>,
}

#[derive(Debug, Clone)]
pub struct ParsedConfig {
    pub diff_ids: Vec<Digest>,
    pub config: ImageConfiguration,
}

/// One platform's image, fully read: what pull, import, unpack and CRI need of it.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub manifest: BlobRef,
    pub config: BlobRef,
    pub layers: Vec<LayerRef>,
    /// The snapshot name of each layer's stack: chain id of layers 0..=i.
    pub chain_ids: Vec<Digest>,
    pub image_config: ImageConfiguration,
}

impl ResolvedImage {
    /// The snapshot holding the whole image, if it has layers.
    pub fn top_chain(&self) -> Option<&Digest> {
        self.chain_ids.last()
    }
}

/// containerd's chain IDs: the first diff ID, then sha256 of "<parent chain> <diff id>".
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => Digest::of(format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

fn json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &dyn Display) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::InvalidArgument(format!("{what}: {e}")))
}

pub fn parse_index(bytes: &[u8], what: &dyn Display) -> Result<ParsedIndex> {
    let index: ImageIndex = json(bytes, what)?;
    let mut entries = Vec::with_capacity(index.manifests().len());
    for m in index.manifests() {
        let blob = BlobRef::from_oci(m, what)?;
        let platform = m.platform().as_ref().map(|p| Platform {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone().unwrap_or_default(),
        });
        let annotations = m
            .annotations()
            .as_ref()
            .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        entries.push(IndexEntry {
            blob,
            platform,
            annotations,
        });
    }
    Ok(ParsedIndex { entries })
}

impl ParsedIndex {
    /// The entries serving `platforms` (an entry without a platform serves any), in the
    /// order the platforms are asked for, each once; with `all`, every entry after them.
    pub fn select(&self, platforms: &[Platform], all: bool) -> Vec<(usize, &IndexEntry)> {
        let mut chosen: Vec<(usize, &IndexEntry)> = Vec::new();
        let mut push = |i: usize, e| {
            if !chosen.iter().any(|(c, _)| *c == i) {
                chosen.push((i, e));
            }
        };
        for p in platforms {
            let exact = self.entries.iter().enumerate().find(|(_, e)| {
                e.platform
                    .as_ref()
                    .is_some_and(|ep| p.matches(&ep.os, &ep.architecture, &ep.variant))
            });
            let any = || {
                self.entries.iter().enumerate().find(|(_, e)| {
                    e.platform.is_none() && media::kind(&e.blob.media_type) != Kind::Index
                })
            };
            if let Some((i, e)) = exact.or_else(any) {
                push(i, e);
            }
        }
        if all {
            for (i, e) in self.entries.iter().enumerate() {
                push(i, e);
            }
        }
        chosen
    }

    /// The index's `containerd.io/gc.ref.content.m.<i>` labels, for the entries `keep` says
    /// are in the store.
    pub fn gc_labels(&self, keep: impl Fn(&Digest) -> bool) -> Labels {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| keep(&e.blob.digest))
            .map(|(i, e)| {
                (
                    format!("containerd.io/gc.ref.content.m.{i}"),
                    e.blob.digest.to_string(),
                )
            })
            .collect()
    }
}

pub fn parse_manifest(bytes: &[u8], what: &dyn Display) -> Result<ParsedManifest> {
    let m: ImageManifest = json(bytes, what)?;
    let config = BlobRef::from_oci(m.config(), what)?;
    if media::kind(&config.media_type) != Kind::Config {
        return Err(Error::InvalidArgument(format!(
            "{what}: config media type {:?} is not an image config",
            config.media_type
        )));
    }
    let mut layers = Vec::with_capacity(m.layers().len());
    for l in m.layers() {
        let l = BlobRef::from_oci(l, what)?;
        if !media::is_layer(&l.media_type) {
            return Err(Error::InvalidArgument(format!(
                "{what}: layer {} has unsupported media type {:?}",
                l.digest, l.media_type
            )));
        }
        layers.push(l);
    }
    Ok(ParsedManifest { config, layers })
}

impl ParsedManifest {
    /// `containerd.io/gc.ref.content.config` and `.l.<i>`: the manifest keeps its blobs.
    pub fn gc_labels(&self) -> Labels {
        let mut l = Labels::new();
        l.insert(
            "containerd.io/gc.ref.content.config".into(),
            self.config.digest.to_string(),
        );
        for (i, b) in self.layers.iter().enumerate() {
            l.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                b.digest.to_string(),
            );
        }
        l
    }

    /// Joins the manifest with its config into one platform's image.
    pub fn resolve(self, manifest: BlobRef, config: ParsedConfig) -> Result<ResolvedImage> {
        if config.diff_ids.len() != self.layers.len() {
            return Err(Error::InvalidArgument(format!(
                "config {} of manifest {} lists {} diff ids for {} layers",
                self.config.digest,
                manifest.digest,
                config.diff_ids.len(),
                self.layers.len()
            )));
        }
        let chain_ids = chain_ids(&config.diff_ids);
        let layers = self
            .layers
            .into_iter()
            .zip(config.diff_ids)
            .map(|(blob, diff_id)| LayerRef { blob, diff_id })
            .collect();
        Ok(ResolvedImage {
            manifest,
            config: self.config,
            layers,
            chain_ids,
            image_config: config.config,
        })
    }
}

pub fn parse_config(bytes: &[u8], what: &dyn Display) -> Result<ParsedConfig> {
    let config: ImageConfiguration = json(bytes, what)?;
    let diff_ids = config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| Digest::parse(d).map_err(|e| Error::InvalidArgument(format!("{what}: {e}"))))
        .collect::<Result<_>>()?;
    Ok(ParsedConfig { diff_ids, config })
}

/// Reads a manifest, index or config from the store, refusing one too large to be JSON.
pub fn read_json_blob(content: &ContentStore, ns: &Namespace, d: &Digest) -> Result<Vec<u8>> {
    let (f, size) = content.open(ns, d)?;
    if size as i64 > MAX_JSON_BLOB {
        return Err(Error::InvalidArgument(format!(
            "{d} is {size} bytes, more than a manifest or config may be ({MAX_JSON_BLOB})"
        )));
    }
    let mut buf = Vec::with_capacity(size as usize);
    f.take(size)
        .read_to_end(&mut buf)
        .map_err(Error::io("read", d.to_string()))?;
    Ok(buf)
}

/// The manifest of `target` for `platform`: the target itself or its index's entry.
pub fn manifest_for(
    content: &ContentStore,
    ns: &Namespace,
    target: &BlobRef,
    platform: &Platform,
) -> Result<BlobRef> {
    match media::kind(&target.media_type) {
        Kind::Manifest => Ok(target.clone()),
        Kind::Index => {
            let bytes = read_json_blob(content, ns, &target.digest)?;
            let index = parse_index(&bytes, &format_args!("index {}", target.digest))?;
            let (_, entry) = index
                .select(std::slice::from_ref(platform), false)
                .into_iter()
                .next()
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "manifest for platform {platform} in index {}",
                        target.digest
                    ))
                })?;
            match media::kind(&entry.blob.media_type) {
                Kind::Manifest => Ok(entry.blob.clone()),
                // An index of indexes: follow it.
                Kind::Index => manifest_for(content, ns, &entry.blob, platform),
                _ => Err(Error::InvalidArgument(format!(
                    "index {} lists {} of media type {:?}, not an image manifest",
                    target.digest, entry.blob.digest, entry.blob.media_type
                ))),
            }
        }
        _ => Err(Error::InvalidArgument(format!(
            "{} has media type {:?}, not an image index or manifest",
            target.digest, target.media_type
        ))),
    }
}

/// Reads one platform's image from the content store.
pub fn resolve(
    content: &ContentStore,
    ns: &Namespace,
    target: &BlobRef,
    platform: &Platform,
) -> Result<ResolvedImage> {
    let manifest = manifest_for(content, ns, target, platform)?;
    let bytes = read_json_blob(content, ns, &manifest.digest)?;
    let parsed = parse_manifest(&bytes, &format_args!("manifest {}", manifest.digest))?;
    let cbytes = read_json_blob(content, ns, &parsed.config.digest)?;
    let config = parse_config(&cbytes, &format_args!("config {}", parsed.config.digest))?;
    parsed.resolve(manifest, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    #[test]
    fn chain_ids_follow_containerd() {
        let (a, b) = (d("a"), d("b"));
        let chains = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chains[0], a);
        use sha2::Digest as _;
        let want = hex::encode(sha2::Sha256::digest(format!("{a} {b}").as_bytes()));
        assert_eq!(chains[1].to_string(), format!("sha256:{want}"));
    }

    fn index(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(name, p)| {
                let mut m = serde_json::json!({
                    "mediaType": media::OCI_MANIFEST, "digest": d(name).to_string(), "size": 10,
                });
                if let Some(p) = p {
                    let parts: Vec<&str> = p.split('/').collect();
                    m["platform"] = serde_json::json!({"os": parts[0], "architecture": parts[1]});
                }
                m
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
            .unwrap()
    }

    #[test]
    fn index_selection_prefers_the_platform_and_keeps_order() {
        let idx = parse_index(
            &index(&[("arm", Some("linux/arm64")), ("amd", Some("linux/amd64"))]),
            &"test",
        )
        .unwrap();
        let amd = Platform::parse("linux/amd64").unwrap();
        let arm = Platform::parse("linux/arm64").unwrap();
        let sel = idx.select(std::slice::from_ref(&amd), false);
        assert_eq!(sel.len(), 1);
        assert_eq!(sel[0].1.blob.digest, d("amd"));
        let sel = idx.select(std::slice::from_ref(&amd), true);
        assert_eq!(sel.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 0]);
        let sel = idx.select(&[arm, amd], false);
        assert_eq!(sel.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1]);
        let none = idx.select(&[Platform::parse("linux/s390x").unwrap()], false);
        assert!(none.is_empty());
        let untagged = parse_index(&index(&[("x", None)]), &"test").unwrap();
        assert_eq!(untagged.select(&[Platform::default()], false).len(), 1);
        let labels = idx.gc_labels(|dg| *dg == d("amd"));
        assert_eq!(labels.len(), 1);
        assert_eq!(
            labels["containerd.io/gc.ref.content.m.1"],
            d("amd").to_string()
        );
    }

    #[test]
    fn manifests_with_wrong_media_types_are_refused_by_digest() {
        let m = |config_mt: &str, layer_mt: &str| {
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "config": {"mediaType": config_mt, "digest": d("c").to_string(), "size": 2},
                "layers": [{"mediaType": layer_mt, "digest": d("l").to_string(), "size": 3}],
            }))
            .unwrap()
        };
        let ok = parse_manifest(&m(media::OCI_CONFIG, media::OCI_LAYER_GZIP), &"m").unwrap();
        assert_eq!(ok.layers[0].size, 3);
        assert_eq!(ok.gc_labels().len(), 2);
        let e = parse_manifest(&m("text/plain", media::OCI_LAYER_GZIP), &"manifest X").unwrap_err();
        assert!(e.to_string().contains("manifest X"), "{e}");
        let e = parse_manifest(&m(media::OCI_CONFIG, "text/plain"), &"m").unwrap_err();
        assert!(e.to_string().contains(&d("l").to_string()), "{e}");
        for junk in [&b"{"[..], b"[]", b"{\"config\": 5}", b"\xff\xfe"] {
            assert!(parse_manifest(junk, &"m").is_err());
            assert!(parse_index(junk, &"i").is_err());
            assert!(parse_config(junk, &"c").is_err());
        }
    }

    #[test]
    fn a_config_must_list_one_diff_id_per_layer() {
        let cfg = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [d("u1").to_string()]},
        }))
        .unwrap();
        let parsed = parse_config(&cfg, &"c").unwrap();
        let manifest = ParsedManifest {
            config: BlobRef {
                digest: d("c"),
                size: 1,
                media_type: media::OCI_CONFIG.into(),
            },
            layers: vec![],
        };
        let mref = manifest.config.clone();
        let e = manifest.resolve(mref, parsed.clone()).unwrap_err();
        assert!(e.to_string().contains("1 diff ids for 0 layers"), "{e}");
    }

    /// A bounded stand-in for fuzzing (see fuzz/): valid manifests, indexes and configs
    /// with bytes flipped, cut, spliced and swapped for JSON punctuation. Every outcome is
    /// an error or a value, never a panic.
    #[test]
    fn mutated_documents_never_panic() {
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": d("c").to_string(), "size": 2},
            "layers": [{"mediaType": media::OCI_LAYER_GZIP, "digest": d("l").to_string(), "size": 3,
                        "annotations": {"a": "b"}}],
        }))
        .unwrap();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {"Env": ["A=1"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [d("u").to_string()]},
        }))
        .unwrap();
        let seeds = [
            manifest,
            config,
            index(&[("a", Some("linux/amd64")), ("b", None)]),
        ];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..6000 {
            let mut data = seeds[round % 3].clone();
            for _ in 0..(1 + next() % 6) {
                let at = (next() as usize) % data.len();
                match next() % 5 {
                    0 => data[at] ^= 1 << (next() % 8),
                    1 => {
                        let p = b"{}[]:,\"-9e0";
                        data[at] = p[(next() as usize) % p.len()];
                    }
                    2 => data.truncate(at.max(1)),
                    3 => {
                        let p = b"\"0123456789";
                        data.insert(at, p[(next() as usize) % p.len()]);
                    }
                    _ => {
                        let from = (next() as usize) % data.len();
                        let len = (next() as usize % 32).min(data.len() - from.max(at));
                        let chunk = data[from..from + len].to_vec();
                        data[at..at + len].copy_from_slice(&chunk);
                    }
                }
            }
            let _ = parse_manifest(&data, &"m");
            let _ = parse_config(&data, &"c");
            if let Ok(i) = parse_index(&data, &"i") {
                let _ = i.select(&[Platform::default()], true);
            }
        }
    }
}
