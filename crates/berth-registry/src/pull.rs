//! Pulling an image into the stores: resolve the reference, choose the platforms'
//! manifests, fetch configs and layers (concurrently, bounded; each verified while it
//! streams, resumed with Range after an interruption, fetched once however many pulls want
//! it), and unpack each layer while it is still arriving: the applier reads the layer's
//! ingest file as it grows, so inflating and writing files overlap the download. A layer's
//! snapshot is committed only once its blob is verified and its uncompressed digest matches
//! the config. Everything is held by a lease of berthd's until the image record roots it,
//! so a failed, cancelled or killed pull leaves only garbage.

use std::collections::HashMap;
use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_core::content::Writer;
use berth_core::images::media::{self, Kind};
use berth_core::images::progress::{ref_key, Progress, ProgressSink};
use berth_core::images::resolve::{self, BlobRef, LayerRef, ParsedIndex, ResolvedImage};
use berth_core::images::unpack::{self, ImageStores, LayerUnpack};
use berth_core::images::{Image, Platform, Reference};
use berth_core::leases::DaemonLease;
use berth_core::metadata::{Labels, Timestamp};
use berth_core::{Digest, Namespace};
use futures::StreamExt;

use crate::auth::Credentials;
use crate::client::{error_chain, RegistryClient, Target};
use crate::error::{Error, Result};
use crate::landing::{Landing, LandingGuard};

/// Attempts per blob: interrupted downloads resume from what the store holds.
const BLOB_ATTEMPTS: u32 = 6;
/// How long a pull's lease outlives a berthd that died without releasing it (it is
/// released at the next start anyway).
const LEASE_TTL_SECS: i64 = 24 * 3600;
/// Chunks in flight between the network and a blob's writer thread.
const WRITE_QUEUE: usize = 64;

#[derive(Debug, Clone)]
pub struct PullRequest {
    pub namespace: Namespace,
    pub reference: Reference,
    /// The reference as the client wrote it, for progress messages.
    pub source: String,
    /// The image record's name; the normalised reference when empty.
    pub name: String,
    pub labels: Labels,
    pub credentials: Option<Credentials>,
    pub plain_http: bool,
    /// A hosts.toml directory for this request (else the daemon's).
    pub hosts_dir: Option<PathBuf>,
    /// Platforms whose content is fetched; the first is unpacked. Empty: every platform,
    /// or this machine's when unpacking.
    pub platforms: Vec<Platform>,
    /// Also fetch the manifests and configs (not the layers) of the other platforms.
    pub all_metadata: bool,
    /// Snapshotter to unpack into; None fetches only.
    pub unpack: Option<String>,
    pub max_concurrent_downloads: usize,
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
    stores: ImageStores,
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

type InflightMap = Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>;

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A place in the per-digest download gates; the last one out removes the gate, so the
/// map holds only downloads in progress.
struct Inflight<'a> {
    map: &'a InflightMap,
    digest: Digest,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> Inflight<'a> {
    fn enter(map: &'a InflightMap, d: &Digest) -> Self {
        let gate = lock(map).entry(d.clone()).or_default().clone();
        Inflight {
            map,
            digest: d.clone(),
            gate,
        }
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        let mut m = lock(self.map);
        // The map's reference and ours: nobody else waits on this digest.
        if Arc::strong_count(&self.gate) == 2 {
            m.remove(&self.digest);
        }
    }
}

/// The pull's lease, released off the reactor however the pull ends.
struct PullLease(Option<DaemonLease>);

impl Drop for PullLease {
    fn drop(&mut self) {
        if let Some(l) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(h) => drop(h.spawn_blocking(move || drop(l))),
                Err(_) => drop(l),
            }
        }
    }
}

/// Everything one pull works with.
struct Ctx<'a> {
    req: &'a PullRequest,
    target: Target<'a>,
    lease: String,
    progress: Arc<dyn ProgressSink>,
    landings: Landings,
}

/// The landings of one pull. However the pull ends (an error, or its future dropped when
/// the client goes away), nothing may go on waiting for a download.
#[derive(Default)]
struct Landings(HashMap<Digest, Arc<Landing>>);

impl Landings {
    fn get(&self, d: &Digest) -> Option<&Arc<Landing>> {
        self.0.get(d)
    }
}

impl Drop for Landings {
    fn drop(&mut self) {
        for l in self.0.values() {
            l.finish(false);
        }
    }
}

/// A manifest chosen for the pull, with the names of its parents in the progress tree.
struct Chosen {
    blob: BlobRef,
    bytes: Vec<u8>,
    parents: Vec<String>,
    /// Only its config is wanted (another platform's metadata).
    metadata_only: bool,
}

impl Puller {
    pub fn new(client: Arc<RegistryClient>, stores: ImageStores) -> Self {
        Puller {
            client,
            stores,
            inflight: Mutex::new(HashMap::new()),
        }
    }

    pub fn client(&self) -> &Arc<RegistryClient> {
        &self.client
    }

    pub fn stores(&self) -> &ImageStores {
        &self.stores
    }

    pub async fn pull(&self, req: &PullRequest, progress: Arc<dyn ProgressSink>) -> Result<Pulled> {
        let source = format!("OCI Registry ({})", req.source);
        progress.progress(Progress::status(format!("Resolving from {source}")));
        let (meta, ns) = (self.stores.meta.clone(), req.namespace.clone());
        let lease = PullLease(Some(
            blocking(move || DaemonLease::take(meta, &ns, LEASE_TTL_SECS)).await?,
        ));
        let mut target = Target {
            reference: &req.reference,
            credentials: req.credentials.as_ref(),
            plain_http: req.plain_http,
            actions: "pull",
            hosts_dir: req.hosts_dir.as_deref(),
            hosts: None,
        };
        self.client.prepare(&mut target).await?;
        let mut ctx = Ctx {
            req,
            target,
            lease: lease
                .0
                .as_ref()
                .map(|l| l.id().to_owned())
                .unwrap_or_default(),
            progress: progress.clone(),
            landings: Landings::default(),
        };
        let pulled = self.pull_leased(&mut ctx, &source).await;
        // However the pull ended, nothing may wait on a download any more.
        drop(std::mem::take(&mut ctx.landings));
        // Released before answering, so a collection the caller starts sees it gone.
        let mut lease = lease;
        let held = lease.0.take();
        blocking(move || {
            drop(held);
            Ok(())
        })
        .await?;
        let pulled = pulled?;
        progress.progress(Progress::status(format!("Completed pull from {source}")));
        Ok(pulled)
    }

    fn unpack_platforms(req: &PullRequest) -> Vec<Platform> {
        if req.platforms.is_empty() && req.unpack.is_some() {
            vec![Platform::default()]
        } else {
            req.platforms.clone()
        }
    }

    async fn pull_leased(&self, ctx: &mut Ctx<'_>, source: &str) -> Result<Pulled> {
        let req = ctx.req;
        let reference = &req.reference;
        let name = reference.to_string();
        let (root_type, root_digest, root_bytes) = self
            .client
            .manifest(&ctx.target, &reference.object())
            .await?;
        let root = BlobRef {
            digest: root_digest.clone(),
            size: root_bytes.len() as i64,
            media_type: root_type.clone(),
        };
        ctx.progress
            .progress(Progress::status(format!("Pulling from {source}")));
        ctx.progress.progress(Progress {
            event: "fetching image content".into(),
            name: name.clone(),
            parents: Vec::new(),
            progress: 0,
            total: 0,
            desc: Some(root.clone()),
        });
        let top = vec![name.clone()];
        let platforms = Self::unpack_platforms(req);
        let mut fetched = 0;
        let mut chosen: Vec<Chosen> = Vec::new();
        let mut stored: Vec<Digest> = Vec::new();
        let mut index: Option<ParsedIndex> = None;
        match media::kind(&root_type) {
            Kind::Index => {
                ctx.progress
                    .progress(Progress::blob("waiting", &root, &top, 0));
                let parsed =
                    resolve::parse_index(&root_bytes, &format_args!("index {root_digest} of {name}"))?;
                let wanted = parsed.select(&platforms, platforms.is_empty());
                if wanted.is_empty() {
                    let want: Vec<String> = platforms.iter().map(ToString::to_string).collect();
                    return Err(Error::NotFound(format!(
                        "manifest for platform {} in index {root_digest} of {name}",
                        want.join(", ")
                    )));
                }
                let mut picks: Vec<(BlobRef, bool)> =
                    wanted.iter().map(|(_, e)| (e.blob.clone(), false)).collect();
                if req.all_metadata {
                    for e in &parsed.entries {
                        if !picks.iter().any(|(b, _)| *b == e.blob) {
                            picks.push((e.blob.clone(), true));
                        }
                    }
                }
                let parents = vec![ref_key(&root)];
                for (blob, metadata_only) in picks {
                    if media::kind(&blob.media_type) != Kind::Manifest {
                        if metadata_only {
                            continue; // attestations and nested indexes are not platform images
                        }
                        return Err(Error::InvalidArgument(format!(
                            "index {root_digest} of {name} lists {} with media type {:?}, not an image manifest",
                            blob.digest, blob.media_type
                        )));
                    }
                    ctx.progress
                        .progress(Progress::blob("waiting", &blob, &parents, 0));
                    let (_, got, bytes) = self
                        .client
                        .manifest(&ctx.target, &blob.digest.to_string())
                        .await?;
                    if got != blob.digest || bytes.len() as i64 != blob.size {
                        return Err(Error::Mismatch(format!(
                            "manifest {} of {name}: the registry sent {} bytes with digest {got}",
                            blob.digest,
                            bytes.len()
                        )));
                    }
                    chosen.push(Chosen {
                        blob,
                        bytes,
                        parents: parents.clone(),
                        metadata_only,
                    });
                }
                index = Some(parsed);
            }
            Kind::Manifest => {
                ctx.progress.progress(Progress::blob("waiting", &root, &top, 0));
                chosen.push(Chosen {
                blob: root.clone(),
                bytes: root_bytes.clone(),
                parents: top.clone(),
                metadata_only: false,
            })
            }
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "{name} resolves to {root_digest} of media type {root_type:?}, not an image index or manifest"
                )))
            }
        }

        // Configs first (small, and they say what the layers must unpack to), then the
        // manifests themselves, now that what they point to is known to be sound.
        let mut images: Vec<ResolvedImage> = Vec::new();
        let mut layer_parents: Vec<(LayerRef, Vec<String>)> = Vec::new();
        for c in chosen {
            let what = format!("manifest {} of {name}", c.blob.digest);
            let parsed = resolve::parse_manifest(&c.bytes, &what)?;
            let mparents = vec![ref_key(&c.blob)];
            fetched += self
                .fetch_blob(ctx, &parsed.config, &mparents, None)
                .await?;
            let (content, ns, cd) = (
                self.stores.content.clone(),
                req.namespace.clone(),
                parsed.config.digest.clone(),
            );
            let cbytes = blocking(move || resolve::read_json_blob(&content, &ns, &cd)).await?;
            let config = resolve::parse_config(
                &cbytes,
                &format_args!("config {} of {name}", parsed.config.digest),
            )?;
            let labels = parsed.gc_labels();
            let image = parsed.resolve(c.blob.clone(), config)?;
            stored.push(c.blob.digest.clone());
            fetched += self
                .store_bytes(ctx, &c.blob, &c.bytes, &labels, &c.parents)
                .await?;
            if !c.metadata_only {
                for l in &image.layers {
                    match layer_parents.iter_mut().find(|(x, _)| x.blob == l.blob) {
                        Some((_, p)) => p.extend(mparents.iter().cloned()),
                        None => layer_parents.push((l.clone(), mparents.clone())),
                    }
                }
                images.push(image);
            }
        }
        if let Some(index) = &index {
            let labels = index.gc_labels(|d| stored.contains(d));
            fetched += self
                .store_bytes(ctx, &root, &root_bytes, &labels, &top)
                .await?;
        }

        for (l, _) in &layer_parents {
            ctx.landings
                .0
                .insert(l.blob.digest.clone(), Arc::new(Landing::default()));
        }
        let unpack_image = match &req.unpack {
            Some(sn) => images.first().map(|i| (sn.clone(), i.clone())),
            None => None,
        };
        // Downloads run concurrently (bounded); the unpack follows them layer by layer.
        let sem = Arc::new(tokio::sync::Semaphore::new(
            req.max_concurrent_downloads.max(1),
        ));
        let ctx = &*ctx;
        let downloads = async {
            let mut n = 0;
            let jobs: Vec<(LayerRef, Vec<String>)> = layer_parents.clone();
            let mut s = futures::stream::iter(jobs.into_iter().map(|(l, parents)| {
                let sem = sem.clone();
                let fut: std::pin::Pin<
                    Box<dyn std::future::Future<Output = Result<usize>> + Send + '_>,
                > = Box::pin(async move {
                    let _permit = sem
                        .acquire_owned()
                        .await
                        .map_err(|_| Error::Unavailable("download slots closed".into()))?;
                    let landing = ctx.landings.get(&l.blob.digest).cloned();
                    self.fetch_blob(ctx, &l.blob, &parents, landing).await
                });
                fut
            }))
            .buffer_unordered(usize::MAX);
            while let Some(r) = s.next().await {
                n += r?;
            }
            Ok::<_, Error>(n)
        };
        let unpacking = async {
            match &unpack_image {
                Some((sn, image)) => self.unpack(ctx, sn, image, &layer_parents).await,
                None => Ok(()),
            }
        };
        let (n, ()) = tokio::try_join!(downloads, unpacking)?;
        fetched += n;

        let (stores, ns) = (self.stores.clone(), req.namespace.clone());
        let record = Image {
            name: if req.name.is_empty() {
                name.clone()
            } else {
                req.name.clone()
            },
            labels: req.labels.clone(),
            target: root.descriptor(),
            created_at: Timestamp::now(),
            updated_at: Timestamp::now(),
        };
        let image = blocking(move || stores.images.put(&ns, record)).await?;
        ctx.progress.progress(Progress {
            event: "saved".into(),
            name: image.name.clone(),
            parents: Vec::new(),
            progress: 0,
            total: 0,
            desc: Some(root),
        });
        Ok(Pulled { image, fetched })
    }

    /// Unpacks the image's layers, each read as it lands. Layers are written side by side
    /// (a bounded number at a time) and committed in order, each on its parent.
    async fn unpack(
        &self,
        ctx: &Ctx<'_>,
        sn: &str,
        image: &ResolvedImage,
        parents: &[(LayerRef, Vec<String>)],
    ) -> Result<()> {
        let slots = Arc::new(tokio::sync::Semaphore::new(
            ctx.req.max_concurrent_downloads.max(2),
        ));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = async {
            for (i, layer) in image.layers.iter().enumerate() {
                let landing = ctx
                    .landings
                    .get(&layer.blob.digest)
                    .cloned()
                    .ok_or_else(|| {
                        Error::Unavailable(format!(
                            "layer {} is not being fetched",
                            layer.blob.digest
                        ))
                    })?;
                let lparents = parents
                    .iter()
                    .find(|(l, _)| l.blob == layer.blob)
                    .map(|(_, p)| p.clone())
                    .unwrap_or_default();
                let slot = slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Error::Unavailable("unpack slots closed".into()))?;
                let progress = ctx.progress.clone();
                let (stores, ns, sn, lease) = (
                    self.stores.clone(),
                    ctx.req.namespace.clone(),
                    sn.to_owned(),
                    ctx.lease.clone(),
                );
                let (layer, chain, parent) = (
                    layer.clone(),
                    image.chain_ids[i].clone(),
                    i.checked_sub(1).map(|p| image.chain_ids[p].clone()),
                );
                let job = tokio::task::spawn_blocking(move || {
                    let _slot = slot;
                    let prepared = prepare_landing(
                        &stores,
                        &ns,
                        &lease,
                        &sn,
                        &layer,
                        &chain,
                        parent.as_ref(),
                        &landing,
                        &*progress,
                        &lparents,
                    );
                    (prepared, layer, lparents)
                });
                if tx.send(job).is_err() {
                    break;
                }
            }
            drop(tx);
            Ok::<_, Error>(())
        };
        let commit = async {
            while let Some(job) = rx.recv().await {
                let (prepared, layer, lparents) = job
                    .await
                    .map_err(|e| Error::Unavailable(format!("unpack worker failed: {e}")))?;
                let Some(u) = prepared? else { continue };
                let progress = ctx.progress.clone();
                blocking(move || {
                    u.commit()?;
                    progress.progress(Progress::blob(
                        "extracted",
                        &layer.blob,
                        &lparents,
                        layer.blob.size,
                    ));
                    Ok(())
                })
                .await?;
            }
            Ok::<_, Error>(())
        };
        tokio::try_join!(start, commit)?;
        let (stores, ns, sn, image) = (
            self.stores.clone(),
            ctx.req.namespace.clone(),
            sn.to_owned(),
            image.clone(),
        );
        blocking(move || unpack::label_unpacked(&stores, &ns, &image, &sn)).await
    }

    /// Stores bytes already fetched (manifests, indexes). Returns 1 when newly stored.
    async fn store_bytes(
        &self,
        ctx: &Ctx<'_>,
        blob: &BlobRef,
        bytes: &[u8],
        labels: &Labels,
        parents: &[String],
    ) -> Result<usize> {
        let (c, ns, d, bytes, labels, lease) = (
            self.stores.content.clone(),
            ctx.req.namespace.clone(),
            blob.digest.clone(),
            bytes.to_vec(),
            labels.clone(),
            ctx.lease.clone(),
        );
        let r = ref_key(blob);
        let stored =
            blocking(
                move || match c.writer(&ns, &r, bytes.len() as i64, Some(&d), Some(&lease)) {
                    Ok(mut w) => {
                        w.write_at(0, &bytes)?;
                        c.commit(w, bytes.len() as i64, Some(&d), &labels, Some(&lease))?;
                        Ok(1)
                    }
                    Err(e) if e.is_already_exists() => {
                        if !labels.is_empty() {
                            c.add_labels(&ns, &d, labels)?;
                        }
                        Ok(0)
                    }
                    Err(e) => Err(e),
                },
            )
            .await?;
        let event = if stored == 1 {
            "complete"
        } else {
            "already exists"
        };
        let parents = if stored == 1 { parents } else { &[] };
        ctx.progress
            .progress(Progress::blob(event, blob, parents, blob.size));
        Ok(stored)
    }

    /// Downloads one blob into the content store, verified; returns 1 if it was fetched, 0
    /// if the store already had it. `landing` learns where the bytes go as they arrive.
    async fn fetch_blob(
        &self,
        ctx: &Ctx<'_>,
        blob: &BlobRef,
        parents: &[String],
        landing: Option<Arc<Landing>>,
    ) -> Result<usize> {
        let landing = landing.unwrap_or_default();
        let _unlanded = LandingGuard(&landing);
        let (d, size) = (&blob.digest, blob.size);
        let report = |event: &str, done: i64| {
            ctx.progress.progress(Progress::blob(
                event,
                blob,
                if event == "already exists" {
                    &[]
                } else {
                    parents
                },
                done,
            ))
        };
        report("waiting", 0);
        let entry = Inflight::enter(&self.inflight, d);
        let _held = entry.gate.clone().lock_owned().await;
        let ingest = ref_key(blob);
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
                        landing.finish(true);
                        report("already exists", size);
                        return Ok(0);
                    }
                    Err(e) => return Err(e),
                };
            let offset = writer.offset();
            landing.started(writer.data_path(), offset);
            let outcome = if offset as i64 >= size {
                Ok(writer)
            } else {
                match self.client.blob(&ctx.target, d, offset).await {
                    Ok((resp, true)) => {
                        self.stream_into(writer, resp, size, landing.clone(), &|n| {
                            report("downloading", n)
                        })
                        .await
                    }
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
                    tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
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
                    landing.finish(true);
                    report("complete", size);
                    return Ok(1);
                }
                Err(Error::Core(e)) if e.is_already_exists() => {
                    landing.finish(true);
                    report("already exists", size);
                    return Ok(0);
                }
                Err(Error::Core(berth_core::Error::FailedPrecondition(msg))) => {
                    // The bytes do not match the digest; the ingest was discarded.
                    mismatches += 1;
                    let c = self.stores.content.clone();
                    let _ = blocking(move || match c.abort(&ns, &r) {
                        Err(e) if e.is_not_found() => Ok(()),
                        r => r,
                    })
                    .await;
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

    /// Streams a response body into the writer, which runs on a blocking thread fed through
    /// a bounded queue: a slow disk slows the download, never a runtime thread. Stops with
    /// an error on a cut-off body or one longer than the descriptor says.
    async fn stream_into(
        &self,
        mut writer: Writer,
        resp: reqwest::Response,
        size: i64,
        landing: Arc<Landing>,
        report: &(dyn Fn(i64) + Sync),
    ) -> Result<Writer> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(WRITE_QUEUE);
        let sink = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = rx.blocking_recv() {
                writer.write(&chunk)?;
                landing.wrote(writer.offset(), chunk);
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
                    if received > size {
                        failure = Some(Error::Mismatch(format!(
                            "the registry sent more than the {size} bytes the descriptor says"
                        )));
                        break;
                    }
                    if tx.send(b).await.is_err() {
                        break;
                    }
                    if received - reported >= 4 << 20 {
                        reported = received;
                        report(received);
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
        if (writer.offset() as i64) < size {
            return Err(Error::Unavailable(format!(
                "body ended after {} of {size} bytes",
                writer.offset()
            )));
        }
        Ok(writer)
    }
}

/// Applies one layer onto its snapshot, reading it as it lands, and waits for its blob to
/// be verified; returns the snapshot ready to commit (None if the chain exists already).
/// If reading along fails (the download restarted, or sent bytes it then had to fetch
/// again), the layer is applied afresh from the committed blob.
#[allow(clippy::too_many_arguments)]
fn prepare_landing(
    stores: &ImageStores,
    ns: &Namespace,
    lease: &str,
    sn: &str,
    layer: &LayerRef,
    chain: &Digest,
    parent: Option<&Digest>,
    landing: &Arc<Landing>,
    progress: &dyn ProgressSink,
    parents: &[String],
) -> berth_core::Result<Option<LayerUnpack>> {
    let begin = || LayerUnpack::begin(stores, ns, sn, chain, parent, Some(lease), true);
    let Some(mut u) = begin()? else {
        landing_wait(landing, &layer.blob)?;
        return Ok(None);
    };
    progress.progress(Progress::blob("extracting", &layer.blob, parents, 0));
    let size = layer.blob.size.max(0) as u64;
    let streamed = landing
        .follow(size)
        .map(|f| u.apply(layer, counting(f, &layer.blob, parents, progress)));
    match streamed {
        Some(Ok(())) => landing_wait(landing, &layer.blob)?,
        Some(Err(e)) => {
            landing_wait(landing, &layer.blob)?;
            tracing::debug!(layer = %layer.blob.digest, "reading along failed ({e}); applying the stored blob");
            drop(u);
            let Some(again) = begin()? else {
                return Ok(None);
            };
            u = again;
            apply_stored(stores, ns, &mut u, layer)?;
        }
        None => {
            landing_wait(landing, &layer.blob)?;
            apply_stored(stores, ns, &mut u, layer)?;
        }
    }
    Ok(Some(u))
}

fn counting<'a, R: BufRead + Send + 'a>(
    inner: R,
    blob: &BlobRef,
    parents: &[String],
    progress: &'a dyn ProgressSink,
) -> impl BufRead + Send + 'a {
    let (blob, parents) = (blob.clone(), parents.to_vec());
    let report = move |n: i64| {
        progress.progress(Progress::blob("extracting", &blob, &parents, n));
    };
    Counting {
        inner,
        done: 0,
        reported: 0,
        report,
    }
}

/// Counts what the applier consumed, for `extracting` progress.
struct Counting<R, F> {
    inner: R,
    done: i64,
    reported: i64,
    report: F,
}

impl<R: BufRead, F: Fn(i64)> Counting<R, F> {
    fn count(&mut self, n: usize) {
        self.done += n as i64;
        if self.done - self.reported >= 8 << 20 {
            self.reported = self.done;
            (self.report)(self.done);
        }
    }
}

impl<R: BufRead, F: Fn(i64)> Read for Counting<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count(n);
        Ok(n)
    }
}

impl<R: BufRead, F: Fn(i64)> BufRead for Counting<R, F> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.inner.consume(n);
        self.count(n);
    }
}

fn landing_wait(landing: &Landing, blob: &BlobRef) -> berth_core::Result<()> {
    if landing.wait_done() {
        Ok(())
    } else {
        Err(berth_core::Error::Unavailable(format!(
            "layer {} was not fetched",
            blob.digest
        )))
    }
}

fn apply_stored(
    stores: &ImageStores,
    ns: &Namespace,
    u: &mut LayerUnpack,
    layer: &LayerRef,
) -> berth_core::Result<()> {
    let (file, _) = stores.content.open(ns, &layer.blob.digest)?;
    u.apply(layer, std::io::BufReader::with_capacity(1 << 20, file))?;
    Ok(())
}
