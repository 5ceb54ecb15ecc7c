//! Pushing an image from the stores to a registry: every blob the image references (configs
//! and layers; skipped when the registry has it, mounted from the source repository when it
//! is on the same registry), uploaded whole when small and in chunks when large, then the
//! manifests, then the index, so the registry never sees a reference to a missing blob.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use berth_core::{Digest, Namespace};
use reqwest::header::{
    HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION,
};
use reqwest::{Method, StatusCode};

use crate::auth::Credentials;
use crate::client::{Endpoint, RegistryClient, Target};
use crate::error::{Error, Result};
use berth_core::images::media::{self, Kind};
use berth_core::images::progress::{Progress, ProgressSink};
use berth_core::images::resolve::{self, BlobRef};
use berth_core::images::{ImageStores, Reference};

/// Blobs up to this size go up in one PUT; larger ones in PATCH chunks of this size.
pub const CHUNK: u64 = 16 << 20;

#[derive(Debug, Clone)]
pub struct PushRequest {
    pub namespace: Namespace,
    /// The image in the store to push.
    pub image: String,
    pub reference: Reference,
    pub credentials: Option<Credentials>,
    pub plain_http: bool,
    /// A hosts.toml directory for this request (else the daemon's).
    pub hosts_dir: Option<std::path::PathBuf>,
}

pub struct Pusher {
    client: Arc<RegistryClient>,
    stores: ImageStores,
}

/// A header value from what an image record says (a media type): refused, never a panic,
/// when it holds what HTTP headers cannot carry.
fn header(v: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(v).map_err(|_| {
        Error::InvalidArgument(format!(
            "{v:?} cannot be sent in an HTTP header (control characters or non-ASCII)"
        ))
    })
}

impl Pusher {
    pub fn new(client: Arc<RegistryClient>, stores: ImageStores) -> Self {
        Pusher { client, stores }
    }

    async fn read_async(
        &self,
        ns: &Namespace,
        d: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<bytes::Bytes> {
        let (c, ns, d) = (self.stores.content.clone(), ns.clone(), d.clone());
        tokio::task::spawn_blocking(move || -> Result<bytes::Bytes> {
            let (mut f, _) = c.open(&ns, &d)?;
            let io = |op| {
                let d = d.to_string();
                move |e| Error::Core(berth_core::Error::io(op, d)(e))
            };
            f.seek(SeekFrom::Start(offset)).map_err(io("seek"))?;
            let mut buf = Vec::with_capacity(len as usize);
            f.take(len).read_to_end(&mut buf).map_err(io("read"))?;
            Ok(buf.into())
        })
        .await
        .map_err(|e| Error::Unavailable(format!("worker failed: {e}")))?
    }

    pub async fn push(
        &self,
        req: &PushRequest,
        progress: &dyn ProgressSink,
    ) -> Result<berth_core::images::Descriptor> {
        let ns = req.namespace.clone();
        let (images, n, name) = (self.stores.images.clone(), ns.clone(), req.image.clone());
        let image = tokio::task::spawn_blocking(move || images.get(&n, &name))
            .await
            .map_err(|e| Error::Unavailable(format!("worker failed: {e}")))??;
        let mut t = Target {
            reference: &req.reference,
            credentials: req.credentials.as_ref(),
            plain_http: req.plain_http,
            actions: "pull,push",
            hosts_dir: req.hosts_dir.as_deref(),
            hosts: None,
        };
        self.client.prepare(&mut t).await?;
        // Where blobs may be mounted from: the image's own repository, if it is on the
        // same registry.
        let from = Reference::parse(&image.name)
            .ok()
            .filter(|r| {
                r.registry == req.reference.registry && r.repository != req.reference.repository
            })
            .map(|r| r.repository);
        let root = berth_core::images::BlobRef::of(
            &image.target,
            &format_args!("image {:?}", image.name),
        )?;
        let read_json = |d: Digest| {
            let (c, ns) = (self.stores.content.clone(), ns.clone());
            async move {
                tokio::task::spawn_blocking(move || resolve::read_json_blob(&c, &ns, &d))
                    .await
                    .map_err(|e| Error::Unavailable(format!("worker failed: {e}")))?
                    .map(bytes::Bytes::from)
                    .map_err(Error::from)
            }
        };
        let root_bytes = read_json(root.digest.clone()).await?;
        let mut manifests: Vec<(Digest, String, bytes::Bytes)> = Vec::new();
        let root_type = image.target.media_type.clone();
        match media::kind(&root_type) {
            Kind::Index => {
                let index =
                    resolve::parse_index(&root_bytes, &format_args!("index {}", root.digest))?;
                for e in index.entries {
                    let d = e.blob.digest.clone();
                    let bytes = read_json(d.clone()).await.map_err(|e| match e {
                        Error::Core(c) if c.is_not_found() => Error::Core(berth_core::Error::FailedPrecondition(format!(
                            "manifest {d} of image {:?} is not in the content store (pull all platforms to push the index)",
                            image.name
                        ))),
                        e => e,
                    })?;
                    manifests.push((d, e.blob.media_type, bytes));
                }
            }
            Kind::Manifest => {
                manifests.push((root.digest.clone(), root_type.clone(), root_bytes.clone()))
            }
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "image {:?} points at {} of media type {root_type:?}, not an index or manifest",
                    image.name, root.digest
                )))
            }
        }
        for (md, _, bytes) in &manifests {
            let m = resolve::parse_manifest(bytes, &format_args!("manifest {md}"))?;
            for b in std::iter::once(&m.config).chain(m.layers.iter()) {
                self.push_blob(&t, &ns, b, from.as_deref(), progress)
                    .await?;
            }
        }
        let root = root.digest;
        let children = manifests.len() > 1 || manifests[0].0 != root;
        if children {
            for (d, mt, bytes) in &manifests {
                self.put_manifest(&t, &d.to_string(), mt, bytes.clone())
                    .await?;
            }
        }
        let tag = req.reference.object();
        self.put_manifest(&t, &tag, &root_type, root_bytes).await?;
        progress.progress(Progress {
            event: "pushed".into(),
            name: req.reference.to_string(),
            parents: Vec::new(),
            progress: image.target.size,
            total: image.target.size,
            desc: Some(BlobRef {
                digest: root,
                size: image.target.size,
                media_type: root_type,
            }),
        });
        Ok(image.target)
    }

    async fn put_manifest(
        &self,
        t: &Target<'_>,
        object: &str,
        mt: &str,
        bytes: bytes::Bytes,
    ) -> Result<()> {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, header(mt)?);
        let r = self
            .client
            .send_body(
                t,
                Method::PUT,
                Endpoint::Repo(&format!("manifests/{object}")),
                h,
                Some(bytes),
            )
            .await?;
        if !r.status().is_success() {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            return Err(Error::Unavailable(format!(
                "registry {}: put manifest {object} of {}: {status}: {}",
                t.reference.registry,
                t.reference.repository,
                text.trim()
            )));
        }
        Ok(())
    }

    async fn push_blob(
        &self,
        t: &Target<'_>,
        ns: &Namespace,
        blob: &BlobRef,
        from: Option<&str>,
        progress: &dyn ProgressSink,
    ) -> Result<()> {
        let (d, size) = (&blob.digest, blob.size.max(0) as u64);
        let report = |event: &str, done: u64| {
            progress.progress(Progress::blob(event, blob, &[], done as i64))
        };
        let head = self
            .client
            .send(t, Method::HEAD, &format!("blobs/{d}"), HeaderMap::new())
            .await?;
        if head.status().is_success() {
            tracing::debug!(digest = %d, to = %t.reference, "registry has the blob already");
            report("already exists", size);
            return Ok(());
        }
        let start = match from {
            Some(repo) => format!("blobs/uploads/?mount={d}&from={repo}"),
            None => "blobs/uploads/".to_owned(),
        };
        let r = self
            .client
            .send_body(
                t,
                Method::POST,
                Endpoint::Repo(&start),
                HeaderMap::new(),
                None,
            )
            .await?;
        if r.status() == StatusCode::CREATED && from.is_some() {
            tracing::debug!(digest = %d, from = from.unwrap_or_default(), to = %t.reference.repository, "blob mounted across repositories");
            report("mounted", size);
            return Ok(());
        }
        if r.status() != StatusCode::ACCEPTED {
            return Err(Error::Unavailable(format!(
                "registry {}: start upload of {d}: {}",
                t.reference.registry,
                r.status()
            )));
        }
        let mut location = location(&r, d)?;
        let mut offset = 0u64;
        if size > CHUNK {
            while offset < size {
                let len = CHUNK.min(size - offset);
                let chunk = self.read_async(ns, d, offset, len).await?;
                let mut h = HeaderMap::new();
                h.insert(CONTENT_TYPE, header("application/octet-stream")?);
                h.insert(
                    CONTENT_RANGE,
                    header(&format!("{offset}-{}", offset + len - 1))?,
                );
                h.insert(CONTENT_LENGTH, header(&len.to_string())?);
                let r = self
                    .client
                    .send_body(
                        t,
                        Method::PATCH,
                        Endpoint::Location(&location),
                        h,
                        Some(chunk),
                    )
                    .await?;
                if r.status() != StatusCode::ACCEPTED {
                    return Err(Error::Unavailable(format!(
                        "registry {}: upload chunk {offset}+{len} of {d}: {}",
                        t.reference.registry,
                        r.status()
                    )));
                }
                location = location_of(&r).unwrap_or(location);
                offset += len;
                tracing::debug!(digest = %d, offset, size, "blob chunk uploaded");
                report("uploading", offset);
            }
        }
        let rest = if offset < size {
            Some(self.read_async(ns, d, offset, size - offset).await?)
        } else {
            None
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={d}");
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, header("application/octet-stream")?);
        h.insert(
            CONTENT_LENGTH,
            header(&rest.as_ref().map_or(0, |b| b.len()).to_string())?,
        );
        let r = self
            .client
            .send_body(
                t,
                Method::PUT,
                Endpoint::Location(&url),
                h,
                Some(rest.unwrap_or_default()),
            )
            .await?;
        if r.status() != StatusCode::CREATED {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            return Err(Error::Unavailable(format!(
                "registry {}: finish upload of {d}: {status}: {}",
                t.reference.registry,
                text.trim()
            )));
        }
        report("complete", size);
        Ok(())
    }
}

fn location_of(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn location(r: &reqwest::Response, d: &Digest) -> Result<String> {
    location_of(r).ok_or_else(|| {
        Error::Unavailable(format!(
            "registry answered the upload of {d} without a Location"
        ))
    })
}
