//! Images as the command line sees them through berthd's API: an image record's target
//! resolved (index → this machine's manifest → config) by reading blobs from the content
//! service, the layers' chain ids for the snapshot a container starts from, and lookups by
//! name, short name or image id as Docker allows.

use containerd_client::services::v1::{
    GetImageRequest, Image, ListImagesRequest, ReadContentRequest,
};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::reference::Reference;

/// Manifests and configs are small; anything larger is not one.
const MAX_METADATA_BLOB: i64 = 8 << 20;

#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: String,
    /// The digest of the record's target (index or manifest).
    pub target: String,
    pub manifest: String,
    pub config_digest: String,
    pub config: Value,
    pub layers: Vec<Layer>,
    pub chain_ids: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Layer {
    pub digest: String,
    pub size: i64,
    pub media_type: String,
}

impl Resolved {
    /// The image id Docker shows: the config's digest.
    pub fn id(&self) -> &str {
        &self.config_digest
    }

    pub fn short_id(&self) -> String {
        short_digest(&self.config_digest)
    }

    /// The snapshot a container of this image starts from.
    pub fn top_chain(&self) -> Option<&str> {
        self.chain_ids.last().map(String::as_str)
    }

    /// Compressed size: the layers plus the config, as they were pulled.
    pub fn size(&self) -> i64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    /// `config.<field>` of the image config, if set.
    pub fn config_field(&self, field: &str) -> Option<&Value> {
        self.config
            .get("config")
            .and_then(|c| c.get(field))
            .filter(|v| !v.is_null())
    }

    pub fn created(&self) -> Option<&str> {
        self.config.get("created").and_then(Value::as_str)
    }
}

pub fn short_digest(d: &str) -> String {
    let hex = d.split_once(':').map(|(_, h)| h).unwrap_or(d);
    hex.chars().take(12).collect()
}

/// Reads a whole small blob from the content service.
pub async fn read_blob(client: &Client, digest: &str, what: &str) -> Result<Vec<u8>> {
    let mut stream = client
        .content()
        .read(client.req(ReadContentRequest {
            digest: digest.to_owned(),
            offset: 0,
            size: 0,
        }))
        .await
        .map_err(|s| blob_error(s, digest, what))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|s| blob_error(s, digest, what))?;
        out.extend_from_slice(&chunk.data);
        if out.len() as i64 > MAX_METADATA_BLOB {
            return Err(Error::Invalid(format!(
                "{what} {digest} is larger than {MAX_METADATA_BLOB} bytes"
            )));
        }
    }
    Ok(out)
}

fn blob_error(s: tonic::Status, digest: &str, what: &str) -> Error {
    if s.code() == Code::NotFound {
        Error::NoSuchObject(format!(
            "{what} {digest} (the image's content is incomplete)"
        ))
    } else {
        s.into()
    }
}

fn parse_json(bytes: &[u8], what: &str, digest: &str) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| Error::Invalid(format!("{what} {digest}: {e}")))
}

/// This machine's platform as OCI names it.
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    ("linux", arch)
}

fn is_index(media_type: &str, v: &Value) -> bool {
    media_type.contains("index")
        || media_type.contains("manifest.list")
        || v.get("manifests").is_some()
}

/// Resolves an image record to this machine's manifest, config and layers.
pub async fn resolve(client: &Client, image: &Image) -> Result<Resolved> {
    let target = image
        .target
        .as_ref()
        .ok_or_else(|| Error::Invalid(format!("image {} has no target", image.name)))?;
    let mut digest = target.digest.clone();
    let mut media_type = target.media_type.clone();
    for _ in 0..4 {
        let bytes = read_blob(client, &digest, "manifest").await?;
        let v = parse_json(&bytes, "manifest", &digest)?;
        if is_index(&media_type, &v) {
            let (os, arch) = host_platform();
            let m = v["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| {
                    let p = &m["platform"];
                    p.is_null() || (p["os"] == os && p["architecture"] == arch)
                })
                .ok_or_else(|| {
                    Error::NoSuchImage(format!(
                        "{}: no manifest for {os}/{arch} in index {digest}",
                        image.name
                    ))
                })?;
            digest = m["digest"].as_str().unwrap_or_default().to_owned();
            media_type = m["mediaType"].as_str().unwrap_or_default().to_owned();
            continue;
        }
        let config_digest = v["config"]["digest"]
            .as_str()
            .ok_or_else(|| Error::Invalid(format!("manifest {digest} has no config")))?
            .to_owned();
        let config = parse_json(
            &read_blob(client, &config_digest, "image config").await?,
            "image config",
            &config_digest,
        )?;
        let layers: Vec<Layer> = v["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| Layer {
                digest: l["digest"].as_str().unwrap_or_default().to_owned(),
                size: l["size"].as_i64().unwrap_or(0),
                media_type: l["mediaType"].as_str().unwrap_or_default().to_owned(),
            })
            .collect();
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str().map(str::to_owned))
            .collect();
        if diff_ids.len() != layers.len() {
            return Err(Error::Invalid(format!(
                "image {}: config {config_digest} lists {} layers, manifest {digest} {}",
                image.name,
                diff_ids.len(),
                layers.len()
            )));
        }
        return Ok(Resolved {
            name: image.name.clone(),
            target: target.digest.clone(),
            manifest: digest,
            config_digest,
            config,
            layers,
            chain_ids: chain_ids(&diff_ids),
        });
    }
    Err(Error::Invalid(format!(
        "image {}: indexes nest too deep",
        image.name
    )))
}

/// The OCI chain ids of a stack of layer diff ids.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{parent} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

pub async fn list(client: &Client) -> Result<Vec<Image>> {
    Ok(client
        .images()
        .list(client.req(ListImagesRequest { filters: vec![] }))
        .await?
        .into_inner()
        .images)
}

/// The image record `name` names: a reference (normalised as Docker does), a stored name
/// as is, or an image id (full or a unique prefix of at least 4 hex digits).
pub async fn find(client: &Client, name: &str) -> Result<Image> {
    let mut candidates = vec![name.to_owned()];
    if let Ok(r) = Reference::parse(name) {
        candidates.insert(0, r.to_string());
    }
    for c in &candidates {
        match client
            .images()
            .get(client.req(GetImageRequest { name: c.clone() }))
            .await
        {
            Ok(r) => {
                if let Some(i) = r.into_inner().image {
                    return Ok(i);
                }
            }
            Err(s) if s.code() == Code::NotFound || s.code() == Code::InvalidArgument => {}
            Err(s) => return Err(s.into()),
        }
    }
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut hits: Vec<Image> = Vec::new();
        for i in list(client).await? {
            if let Ok(r) = resolve(client, &i).await {
                let id = r.config_digest.trim_start_matches("sha256:");
                if id.starts_with(hex) && !hits.iter().any(|h: &Image| h.target == i.target) {
                    hits.push(i);
                }
            }
        }
        match hits.len() {
            1 => return Ok(hits.remove(0)),
            0 => {}
            _ => {
                return Err(Error::Conflict(format!(
                    "image id {name} is ambiguous: it matches several images"
                )))
            }
        }
    }
    Err(Error::NoSuchImage(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        let want = hex::encode(Sha256::digest(format!("{a} {b}").as_bytes()));
        assert_eq!(c[1], format!("sha256:{want}"));
        assert_eq!(short_digest(&a), "aaaaaaaaaaaa");
    }
}
