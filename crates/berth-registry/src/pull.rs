//! Pulling an image into the stores: resolve the reference, choose the platform's manifest,
//! fetch the config and layers (concurrently, bounded; each verified while it streams,
//! resumed with Range after an interruption, fetched once however many pulls want it), and
//! apply each layer to its snapshot as soon as it and its parent are ready. Everything is
//! held by a lease until the image record roots it, so a failed pull leaves only garbage.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use berth_core::content::ContentStore;
use berth_core::images::{Descriptor, Image, Images};
use berth_core::metadata::{Labels, MetaStore, Timestamp};
use berth_core::snapshot::{Kind, NewSnapshot, Snapshots};
use berth_core::{Digest, Namespace};
use futures::StreamExt;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

use crate::auth::Credentials;
use crate::client::{error_chain, RegistryClient, Target};
use crate::error::{Error, Result};
use crate::platform::Platform;
use crate::reference::Reference;

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];
/// Attempts per blob: interrupted downloads resume from what the store holds.
const BLOB_ATTEMPTS: u32 = 6;

/// The stores a pull writes into.
#[derive(Clone)]
pub struct Stores {
    pub meta: Arc<MetaStore>,
    pub content: Arc<ContentStore>,
    pub images: Arc<Images>,
    pub snapshots: Arc<Snapshots>,
    /// Where temporary mount points may be made while applying layers.
    pub scratch: PathBuf,
}

#[derive(Debug, Clone)]
pub struct PullRequest {
    pub namespace: Namespace,
    pub reference: Reference,
    /// The image record's name; the normalised reference when empty.
    pub name: String,
    pub labels: Labels,
    pub credentials: Option<Credentials>,
    pub plain_http: bool,
    /// A hosts.toml directory for this request (else the daemon's).
    pub hosts_dir: Option<std::path::PathBuf>,
    /// Platforms whose content is fetched; the first is unpacked. Empty: this machine's.
    pub platforms: Vec<Platform>,
    pub all_platforms: bool,
    /// Snapshotter to unpack into; None fetches only.
    pub unpack: Option<String>,
    pub max_concurrent_downloads: usize,
}

/// One progress event, as the Transfer API streams them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub event: &'static str,
    pub name: String,
    pub progress: i64,
    pub total: i64,
    pub media_type: String,
    pub digest: String,
}

pub trait ProgressSink: Send + Sync {
    fn progress(&self, p: Progress);
}

/// A sink that drops everything.
pub struct NoProgress;
impl ProgressSink for NoProgress {
    fn progress(&self, _: Progress) {}
}

/// What a pull produced.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub image: Image,
    /// Blobs fetched from the registry (not already in the store).
    pub fetched: usize,
}

pub struct Puller {
    client: Arc<RegistryClient>,
    stores: Stores,
    /// One download per digest at a time, whoever asks: the second waiter finds it stored.
    inflight: InflightMap,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> berth_core::Result<T> + Send + 'static,
) -> Result<T> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Unavailable(format!("worker failed: {e}")))??)
}

fn desc_of(d: &oci_spec::image::Descriptor) -> Result<(Digest, i64, String)> {
    let digest = Digest::parse(d.digest().as_ref())?;
    Ok((digest, d.size() as i64, d.media_type().to_string()))
}

type InflightMap = Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>;

/// A place in the per-digest download gates; the last one out removes the gate, so the
/// map holds only downloads in progress.
struct Inflight<'a> {
    map: &'a InflightMap,
    digest: Digest,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> Inflight<'a> {
    fn enter(map: &'a InflightMap, d: &Digest) -> Self {
        let gate = map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(d.clone())
            .or_default()
            .clone();
        Inflight {
            map,
            digest: d.clone(),
            gate,
        }
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // The map's reference and ours: nobody else waits on this digest.
        if Arc::strong_count(&self.gate) == 2 {
            m.remove(&self.digest);
        }
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

struct Ctx<'a> {
    req: &'a PullRequest,
    target: Target<'a>,
    lease: String,
    progress: &'a dyn ProgressSink,
}

impl Puller {
    pub fn new(client: Arc<RegistryClient>, stores: Stores) -> Self {
        Puller {
            client,
            stores,
            inflight: Mutex::new(HashMap::new()),
        }
    }

    pub fn client(&self) -> &Arc<RegistryClient> {
        &self.client
    }

    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    pub async fn pull(&self, req: &PullRequest, progress: &dyn ProgressSink) -> Result<Pulled> {
        let ns = req.namespace.clone();
        let meta = self.stores.meta.clone();
        let expire = berth_core::gc::format_rfc3339(Timestamp::now().0 / 1_000_000_000 + 3600);
        let lease = blocking(move || {
            let mut l = Labels::new();
            l.insert(berth_core::labels::GC_EXPIRE.into(), expire);
            berth_core::leases::Leases { meta: &meta }.create(&ns, "", l)
        })
        .await?
        .id;
        let ctx = Ctx {
            req,
            target: Target {
                reference: &req.reference,
                credentials: req.credentials.as_ref(),
                plain_http: req.plain_http,
                actions: "pull",
                hosts_dir: req.hosts_dir.as_deref(),
            },
            lease: lease.clone(),
            progress,
        };
        let r = self.pull_leased(&ctx).await;
        let (meta, ns) = (self.stores.meta.clone(), req.namespace.clone());
        if let Err(e) =
            blocking(move || berth_core::leases::Leases { meta: &meta }.delete(&ns, &lease)).await
        {
            tracing::warn!("delete pull lease: {e}");
        }
        r
    }

    async fn pull_leased(&self, ctx: &Ctx<'_>) -> Result<Pulled> {
        let reference = &ctx.req.reference;
        let name = reference.to_string();
        ctx.progress.progress(Progress {
            event: "resolving",
            name: name.clone(),
            progress: 0,
            total: 0,
            media_type: String::new(),
            digest: String::new(),
        });
        let (root_type, root_digest, root_bytes) = self
            .client
            .manifest(&ctx.target, &reference.object())
            .await?;
        ctx.progress.progress(Progress {
            event: "resolved",
            name: name.clone(),
            progress: 0,
            total: root_bytes.len() as i64,
            media_type: root_type.clone(),
            digest: root_digest.to_string(),
        });
        let root = Descriptor {
            media_type: root_type.clone(),
            digest: root_digest.to_string(),
            size: root_bytes.len() as i64,
            annotations: BTreeMap::new(),
        };
        let platforms = if ctx.req.platforms.is_empty() {
            vec![Platform::default()]
        } else {
            ctx.req.platforms.clone()
        };
        let mut fetched = 0;
        // (manifest digest, bytes) of the manifests to fetch, the unpack one first.
        let mut manifests: Vec<(Digest, Vec<u8>)> = Vec::new();
        let mut index_labels = Labels::new();
        if INDEX_TYPES.contains(&root_type.as_str()) {
            let index: ImageIndex = serde_json::from_slice(&root_bytes).map_err(|e| {
                Error::InvalidArgument(format!("index {root_digest} of {name}: {e}"))
            })?;
            let mut chosen: Vec<(usize, &oci_spec::image::Descriptor)> = Vec::new();
            for p in &platforms {
                if let Some(pos) = index.manifests().iter().position(|m| {
                    m.platform().as_ref().is_some_and(|mp| {
                        p.matches(
                            &mp.os().to_string(),
                            &mp.architecture().to_string(),
                            mp.variant().as_deref().unwrap_or(""),
                        )
                    })
                }) {
                    if !chosen.iter().any(|(i, _)| *i == pos) {
                        chosen.push((pos, &index.manifests()[pos]));
                    }
                }
            }
            if ctx.req.all_platforms {
                for (i, m) in index.manifests().iter().enumerate() {
                    if !chosen.iter().any(|(c, _)| *c == i) {
                        chosen.push((i, m));
                    }
                }
            }
            if chosen.is_empty() {
                let want: Vec<String> = platforms.iter().map(ToString::to_string).collect();
                return Err(Error::NotFound(format!(
                    "manifest for platform {} in index {root_digest} of {name}",
                    want.join(", ")
                )));
            }
            for (i, m) in chosen {
                let (d, size, mt) = desc_of(m)?;
                if !MANIFEST_TYPES.contains(&mt.as_str()) {
                    return Err(Error::InvalidArgument(format!(
                        "index {root_digest} of {name} lists {d} with media type {mt:?}, not an image manifest"
                    )));
                }
                let (_, got, bytes) = self.client.manifest(&ctx.target, &d.to_string()).await?;
                if got != d || bytes.len() as i64 != size {
                    return Err(Error::Mismatch(format!(
                        "manifest {d} of {name}: the registry sent {} bytes with digest {got}",
                        bytes.len()
                    )));
                }
                index_labels.insert(format!("containerd.io/gc.ref.content.m.{i}"), d.to_string());
                manifests.push((d, bytes));
            }
        } else if MANIFEST_TYPES.contains(&root_type.as_str()) {
            manifests.push((root_digest.clone(), root_bytes.clone()));
        } else {
            return Err(Error::InvalidArgument(format!(
                "{name} resolves to {root_digest} of media type {root_type:?}, not an image index or manifest"
            )));
        }

        let mut layer_jobs = Vec::new();
        let mut unpack_plan = None;
        let sem = Arc::new(tokio::sync::Semaphore::new(
            ctx.req.max_concurrent_downloads.max(1),
        ));
        for (n, (mdigest, mbytes)) in manifests.iter().enumerate() {
            let manifest: ImageManifest = serde_json::from_slice(mbytes).map_err(|e| {
                Error::InvalidArgument(format!("manifest {mdigest} of {name}: {e}"))
            })?;
            let (cdigest, csize, ctype) = desc_of(manifest.config())?;
            if !CONFIG_TYPES.contains(&ctype.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "manifest {mdigest} of {name}: config media type {ctype:?} is not an image config"
                )));
            }
            let mut mlabels = Labels::new();
            mlabels.insert(
                "containerd.io/gc.ref.content.config".into(),
                cdigest.to_string(),
            );
            let mut layers = Vec::new();
            for (i, l) in manifest.layers().iter().enumerate() {
                let (d, size, mt) = desc_of(l)?;
                if !berth_core::diff::supported_layer(&mt) {
                    return Err(Error::InvalidArgument(format!(
                        "manifest {mdigest} of {name}: layer {d} has unsupported media type {mt:?}"
                    )));
                }
                mlabels.insert(format!("containerd.io/gc.ref.content.l.{i}"), d.to_string());
                layers.push((d, size, mt));
            }
            fetched += self.fetch_blob(ctx, &cdigest, csize, &ctype).await?;
            let (file, _) = {
                let (c, ns, d) = (
                    self.stores.content.clone(),
                    ctx.req.namespace.clone(),
                    cdigest.clone(),
                );
                blocking(move || c.open(&ns, &d)).await?
            };
            let config: ImageConfiguration = serde_json::from_reader(std::io::BufReader::new(file))
                .map_err(|e| Error::InvalidArgument(format!("config {cdigest} of {name}: {e}")))?;
            let diff_ids: Vec<Digest> = config
                .rootfs()
                .diff_ids()
                .iter()
                .map(|d| Digest::parse(d))
                .collect::<berth_core::Result<_>>()?;
            if diff_ids.len() != layers.len() {
                return Err(Error::InvalidArgument(format!(
                    "config {cdigest} of {name} lists {} diff ids for {} layers",
                    diff_ids.len(),
                    layers.len()
                )));
            }
            // Store the manifest itself now that what it points to is known to be sound.
            fetched += self.store_bytes(ctx, mdigest, mbytes, &mlabels).await?;
            for l in &layers {
                if !layer_jobs.contains(l) {
                    layer_jobs.push(l.clone());
                }
            }
            if n == 0 {
                if let Some(sn) = &ctx.req.unpack {
                    unpack_plan = Some((sn.clone(), cdigest.clone(), layers.clone(), diff_ids));
                }
            }
        }
        if INDEX_TYPES.contains(&root_type.as_str()) {
            fetched += self
                .store_bytes(ctx, &root_digest, &root_bytes, &index_labels)
                .await?;
        }

        // Downloads run concurrently (bounded); unpack takes each layer in order as it lands,
        // in the same task, so downloading goes on while a layer is being applied.
        let (landed_tx, mut landed_rx) = tokio::sync::mpsc::unbounded_channel::<Digest>();
        let downloads = async {
            let mut n = 0;
            let mut s = futures::stream::iter(layer_jobs.into_iter().map(|(d, size, mt)| {
                let sem = sem.clone();
                async move {
                    let _permit = sem.acquire_owned().await.expect("semaphore open");
                    let n = self.fetch_blob(ctx, &d, size, &mt).await?;
                    Ok::<_, Error>((d, n))
                }
            }))
            .buffer_unordered(usize::MAX);
            while let Some(r) = s.next().await {
                let (d, k) = r?;
                n += k;
                let _ = landed_tx.send(d);
            }
            Ok::<_, Error>(n)
        };
        let unpack = async {
            let Some((sn, cdigest, layers, diff_ids)) = &unpack_plan else {
                return Ok(());
            };
            let chains = chain_ids(diff_ids);
            let mut landed = std::collections::HashSet::new();
            for (i, (d, _, mt)) in layers.iter().enumerate() {
                while !landed.contains(d) {
                    match landed_rx.recv().await {
                        Some(got) => {
                            landed.insert(got);
                        }
                        // The downloads ended with an error, which try_join reports.
                        None => return Ok(()),
                    }
                }
                ctx.progress.progress(Progress {
                    event: "unpacking",
                    name: format!("layer-{d}"),
                    progress: 0,
                    total: 0,
                    media_type: mt.clone(),
                    digest: d.to_string(),
                });
                let parent = i.checked_sub(1).map(|p| &chains[p]);
                self.unpack_layer(ctx, sn, d, mt, &diff_ids[i], parent, &chains[i])
                    .await?;
                let mut ul = Labels::new();
                ul.insert("containerd.io/uncompressed".into(), diff_ids[i].to_string());
                self.add_labels(ctx, d, ul).await?;
            }
            let mut cl = Labels::new();
            if let Some(top) = chains.last() {
                cl.insert(
                    format!("containerd.io/gc.ref.snapshot.{sn}"),
                    top.to_string(),
                );
            }
            self.add_labels(ctx, cdigest, cl).await
        };
        let (n, ()) = tokio::try_join!(downloads, unpack)?;
        fetched += n;

        let image = Image {
            name: if ctx.req.name.is_empty() {
                name.clone()
            } else {
                ctx.req.name.clone()
            },
            labels: ctx.req.labels.clone(),
            target: root,
            created_at: Timestamp::now(),
            updated_at: Timestamp::now(),
        };
        let (images, ns) = (self.stores.images.clone(), ctx.req.namespace.clone());
        let img = image.clone();
        let image = blocking(move || match images.create(&ns, img.clone()) {
            Err(e) if e.is_already_exists() => images.update(&ns, img, &[]),
            r => r,
        })
        .await?;
        ctx.progress.progress(Progress {
            event: "saved",
            name: image.name.clone(),
            progress: 0,
            total: 0,
            media_type: image.target.media_type.clone(),
            digest: image.target.digest.clone(),
        });
        Ok(Pulled { image, fetched })
    }

    async fn add_labels(&self, ctx: &Ctx<'_>, d: &Digest, labels: Labels) -> Result<()> {
        let (c, ns, d) = (
            self.stores.content.clone(),
            ctx.req.namespace.clone(),
            d.clone(),
        );
        blocking(move || {
            let mut info = c.info(&ns, &d)?;
            let fields: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
            info.labels.extend(labels);
            c.update(&ns, &d, &info.labels, &fields)
        })
        .await?;
        Ok(())
    }

    /// Stores bytes already fetched (manifests, indexes). Returns 1 when newly stored.
    async fn store_bytes(
        &self,
        ctx: &Ctx<'_>,
        d: &Digest,
        bytes: &[u8],
        labels: &Labels,
    ) -> Result<usize> {
        let (c, ns, d, bytes, labels, lease) = (
            self.stores.content.clone(),
            ctx.req.namespace.clone(),
            d.clone(),
            bytes.to_vec(),
            labels.clone(),
            ctx.lease.clone(),
        );
        let (c2, ns2, d2, l2) = (c.clone(), ns.clone(), d.clone(), labels.clone());
        let stored = blocking(move || {
            let r = format!("pull-{d}");
            match c.writer(&ns, &r, bytes.len() as i64, Some(&d), Some(&lease)) {
                Ok(mut w) => {
                    w.write(&bytes)?;
                    c.commit(w, bytes.len() as i64, Some(&d), &labels, Some(&lease))?;
                    Ok(1)
                }
                Err(e) if e.is_already_exists() => Ok(0),
                Err(e) => Err(e),
            }
        })
        .await?;
        if stored == 0 && !l2.is_empty() {
            let fields: Vec<String> = l2.keys().map(|k| format!("labels.{k}")).collect();
            blocking(move || c2.update(&ns2, &d2, &l2, &fields)).await?;
        }
        Ok(stored)
    }

    /// Downloads one blob into the content store, verified; returns 1 if it was fetched, 0
    /// if the store already had it.
    async fn fetch_blob(&self, ctx: &Ctx<'_>, d: &Digest, size: i64, mt: &str) -> Result<usize> {
        let entry = Inflight::enter(&self.inflight, d);
        let _held = entry.gate.clone().lock_owned().await;
        let name = format!(
            "{}-{d}",
            if mt.contains("config") {
                "config"
            } else {
                "layer"
            }
        );
        let report = |event: &'static str, progress: i64| {
            ctx.progress.progress(Progress {
                event,
                name: name.clone(),
                progress,
                total: size,
                media_type: mt.to_owned(),
                digest: d.to_string(),
            })
        };
        let ingest = format!("pull-{d}");
        let mut mismatches = 0;
        let mut last_err = None;
        for attempt in 0..BLOB_ATTEMPTS {
            let (c, ns, dd, lease, r) = (
                self.stores.content.clone(),
                ctx.req.namespace.clone(),
                d.clone(),
                ctx.lease.clone(),
                ingest.clone(),
            );
            let writer =
                match blocking(move || c.writer(&ns, &r, size, Some(&dd), Some(&lease))).await {
                    Ok(w) => w,
                    Err(Error::Core(e)) if e.is_already_exists() => {
                        report("exists", size);
                        return Ok(0);
                    }
                    Err(e) => return Err(e),
                };
            let offset = writer.offset();
            if attempt == 0 {
                report(
                    if offset > 0 {
                        "resuming"
                    } else {
                        "downloading"
                    },
                    offset as i64,
                );
            }
            let outcome = if offset as i64 >= size {
                Ok(writer)
            } else {
                match self.client.blob(&ctx.target, d, offset).await {
                    Ok((resp, true)) => self.stream_into(writer, resp, size, &report).await,
                    Ok((_, false)) => {
                        // The registry ignored the range: start this blob again.
                        drop(writer);
                        let (c, ns, r) = (
                            self.stores.content.clone(),
                            ctx.req.namespace.clone(),
                            ingest.clone(),
                        );
                        blocking(move || c.abort(&ns, &r)).await?;
                        continue;
                    }
                    Err(e @ (Error::NotFound(_) | Error::Unauthenticated { .. })) => return Err(e),
                    Err(e) => Err(e),
                }
            };
            let writer = match outcome {
                Ok(w) => w,
                Err(e) => {
                    tracing::debug!(digest = %d, "blob download interrupted: {e}");
                    last_err = Some(e);
                    tokio::time::sleep(std::time::Duration::from_millis(100 << attempt.min(5)))
                        .await;
                    continue;
                }
            };
            let (c, dd, lease, ns, r) = (
                self.stores.content.clone(),
                d.clone(),
                ctx.lease.clone(),
                ctx.req.namespace.clone(),
                ingest.clone(),
            );
            match blocking(move || c.commit(writer, size, Some(&dd), &Labels::new(), Some(&lease)))
                .await
            {
                Ok(_) => {
                    report("complete", size);
                    return Ok(1);
                }
                Err(Error::Core(e)) if e.is_already_exists() => {
                    report("exists", size);
                    return Ok(0);
                }
                Err(Error::Core(berth_core::Error::FailedPrecondition(msg))) => {
                    // The bytes do not match the digest; the ingest was discarded.
                    mismatches += 1;
                    let c = self.stores.content.clone();
                    let _ = blocking(move || c.abort(&ns, &r)).await;
                    if mismatches >= 2 {
                        return Err(Error::Mismatch(format!(
                            "blob {d} of {}: the registry's bytes do not match the digest ({msg})",
                            ctx.req.reference.name()
                        )));
                    }
                    last_err = Some(Error::Mismatch(msg));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            Error::Unavailable(format!("blob {d} of {}: gave up", ctx.req.reference.name()))
        }))
    }

    /// Streams a response body into the writer on a blocking thread. Stops with an error on
    /// a cut-off body or one longer than the descriptor says.
    async fn stream_into(
        &self,
        mut writer: berth_core::content::Writer,
        resp: reqwest::Response,
        size: i64,
        report: &(dyn Fn(&'static str, i64) + Sync),
    ) -> Result<berth_core::content::Writer> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<bytes::Bytes>(32);
        let sink = tokio::task::spawn_blocking(move || {
            for chunk in rx {
                writer.write(&chunk)?;
            }
            Ok::<_, berth_core::Error>(writer)
        });
        let mut body = resp.bytes_stream();
        let mut received = 0i64;
        let mut reported = 0i64;
        let mut failure = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(b) => {
                    received += b.len() as i64;
                    if tx.send(b).is_err() {
                        break;
                    }
                    if received - reported >= 4 << 20 {
                        reported = received;
                        report("downloading", received);
                    }
                }
                Err(e) => {
                    failure = Some(Error::Unavailable(format!(
                        "body cut off: {}",
                        error_chain(&e)
                    )));
                    break;
                }
            }
        }
        drop(tx);
        let writer = sink
            .await
            .map_err(|e| Error::Unavailable(format!("writer failed: {e}")))??;
        if let Some(f) = failure {
            return Err(f);
        }
        if writer.offset() as i64 > size {
            return Err(Error::Mismatch(format!(
                "the registry sent more than the {size} bytes the descriptor says"
            )));
        }
        if (writer.offset() as i64) < size {
            return Err(Error::Unavailable(format!(
                "body ended after {} of {size} bytes",
                writer.offset()
            )));
        }
        Ok(writer)
    }

    #[allow(clippy::too_many_arguments)]
    async fn unpack_layer(
        &self,
        ctx: &Ctx<'_>,
        sn: &str,
        d: &Digest,
        mt: &str,
        diff_id: &Digest,
        parent: Option<&Digest>,
        chain: &Digest,
    ) -> Result<()> {
        let layer = Layer {
            digest: d.clone(),
            media_type: mt.to_owned(),
            diff_id: diff_id.clone(),
        };
        unpack_layer(
            &self.stores,
            &ctx.req.namespace,
            &ctx.lease,
            sn,
            &layer,
            parent,
            chain,
        )
        .await
    }
}

/// One layer to apply: its blob, media type and the uncompressed digest the config names.
pub struct Layer {
    pub digest: Digest,
    pub media_type: String,
    pub diff_id: Digest,
}

/// Applies one layer onto a new snapshot named by its chain ID over `parent`, unless that
/// snapshot exists already; the uncompressed digest must match the config's diff ID.
pub async fn unpack_layer(
    stores: &Stores,
    ns: &Namespace,
    lease: &str,
    sn: &str,
    layer: &Layer,
    parent: Option<&Digest>,
    chain: &Digest,
) -> Result<()> {
    {
        let stores = stores.clone();
        let (ns, sn, d, mt, diff_id) = (
            ns.clone(),
            sn.to_owned(),
            layer.digest.clone(),
            layer.media_type.clone(),
            layer.diff_id.clone(),
        );
        let (parent, chain, lease) = (
            parent.map(ToString::to_string),
            chain.to_string(),
            lease.to_owned(),
        );
        blocking(move || {
            if stores.snapshots.stat(&ns, &sn, &chain).is_ok() {
                return Ok(());
            }
            let key = format!("extract-{}-{chain}", uuid::Uuid::new_v4().simple());
            let mounts = stores.snapshots.create(
                &ns,
                &sn,
                NewSnapshot {
                    key: &key,
                    parent: parent.as_deref(),
                    kind: Kind::Active,
                    labels: Labels::new(),
                    lease: Some(&lease),
                },
            )?;
            let applied =
                berth_core::diff::apply(&stores.content, &ns, &d, &mt, &mounts, &stores.scratch);
            let result = match applied {
                Ok(a) if a.digest != diff_id => {
                    Err(berth_core::Error::FailedPrecondition(format!(
                        "layer {d} unpacks to {} but the image config says {diff_id}",
                        a.digest
                    )))
                }
                Ok(_) => match stores.snapshots.commit(
                    &ns,
                    &sn,
                    &chain,
                    &key,
                    Labels::new(),
                    Some(&lease),
                ) {
                    Err(e) if e.is_already_exists() => Err(e),
                    r => return r,
                },
                Err(e) => Err(e),
            };
            let _ = stores.snapshots.remove(&ns, &sn, &key);
            match result {
                // Another pull committed the same chain first: use theirs.
                Err(e) if e.is_already_exists() => Ok(()),
                r => r,
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_gates_are_removed_by_the_last_one_out() {
        let map = InflightMap::default();
        let d = Digest::of(b"blob");
        let first = Inflight::enter(&map, &d);
        let second = Inflight::enter(&map, &d);
        assert!(Arc::ptr_eq(&first.gate, &second.gate));
        drop(first);
        assert_eq!(
            map.lock().unwrap().len(),
            1,
            "a waiter still holds the gate"
        );
        drop(second);
        assert!(map.lock().unwrap().is_empty());
    }

    #[test]
    fn chain_ids_follow_containerd() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let chains = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chains[0], a);
        use sha2::Digest as _;
        let want = hex::encode(sha2::Sha256::digest(format!("{a} {b}").as_bytes()));
        assert_eq!(chains[1].to_string(), format!("sha256:{want}"));
    }
}
