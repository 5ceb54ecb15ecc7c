//! containerd.services.transfer.v1: the daemon moves images itself. Registry → image store
//! is a server-side pull (berth-registry's puller, unpacking into the snapshotter the
//! client names), with progress streamed on the client's progress stream and credentials
//! asked for on its auth stream.

use std::sync::Arc;
use std::time::Duration;

use berth_core::images::progress::{NoProgress, Progress, ProgressSink};
use berth_core::Namespace;
use berth_registry::auth::Credentials;
use berth_registry::platform::Platform;
use berth_registry::pull::{PullRequest, Puller};
use berth_registry::push::{PushRequest, Pusher};
use berth_registry::Reference;
use prost::{Message, Name};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::api::TransferRequest;
use crate::server::transfer_server;
use crate::status::{blocking, labels_in, namespace, registry_status};
use crate::streaming::{any_of, StreamRegistry};
use crate::types::transfer::{
    AuthRequest, AuthResponse, ImageExportStream, ImageImportStream, ImageStore, OciRegistry,
    RegistryResolver,
};
use crate::types::Descriptor;
use berth_core::events::{Event, EventBus};
use berth_core::images::archive;

pub struct TransferService {
    pub puller: Arc<Puller>,
    pub pusher: Arc<Pusher>,
    pub streams: StreamRegistry,
    pub events: EventBus,
    pub gc: berth_core::gc::Scheduler,
    pub max_concurrent_downloads: usize,
}

/// `containerd.types.transfer.OCIRegistry`, with or without a `types.containerd.io/` prefix.
fn is<M: Name>(a: &prost_types::Any) -> bool {
    a.type_url.rsplit('/').next() == Some(M::full_name().as_str())
}

fn decode<M: Message + Default + Name>(a: &prost_types::Any) -> Result<M, Status> {
    M::decode(a.value.as_slice())
        .map_err(|e| Status::invalid_argument(format!("{}: {e}", M::full_name())))
}

/// Progress events onto the client's stream; a slow or gone client loses events, never
/// slows the pull.
struct StreamProgress(mpsc::Sender<prost_types::Any>);

impl ProgressSink for StreamProgress {
    fn progress(&self, p: Progress) {
        let msg = crate::types::transfer::Progress {
            event: p.event,
            name: p.name,
            parents: p.parents,
            progress: p.progress,
            total: p.total,
            desc: p.desc.map(|d| Descriptor {
                media_type: d.media_type,
                digest: d.digest.to_string(),
                size: d.size,
                annotations: Default::default(),
            }),
        };
        let _ = self.0.try_send(any_of(&msg));
    }
}

fn platform_in(p: &crate::types::Platform) -> Result<Platform, Status> {
    if p.os.is_empty() || p.architecture.is_empty() {
        return Err(Status::invalid_argument(format!(
            "platform {p:?} needs an os and an architecture"
        )));
    }
    Ok(Platform {
        os: p.os.clone(),
        architecture: p.architecture.clone(),
        variant: p.variant.clone(),
    })
}

impl TransferService {
    /// Asks the client for credentials on its auth stream, as containerd's clients answer.
    async fn ask_credentials(
        &self,
        ns: &Namespace,
        stream: &str,
        reference: &Reference,
    ) -> Result<Option<Credentials>, Status> {
        let Some(mut h) = self.streams.take(ns.as_str(), stream) else {
            return Err(Status::invalid_argument(format!(
                "auth stream {stream:?} is not open in namespace {ns:?}"
            )));
        };
        let req = AuthRequest {
            host: reference.registry.clone(),
            reference: reference.to_string(),
            wwwauthenticate: Vec::new(),
        };
        if h.to_client.send(any_of(&req)).await.is_err() {
            tracing::debug!(stream, "auth stream closed before the question");
            return Ok(None);
        }
        let answer = tokio::time::timeout(Duration::from_secs(30), h.from_client.recv())
            .await
            .map_err(|_| {
                Status::deadline_exceeded("client did not answer the credentials request")
            })?;
        let Some(a) = answer else {
            tracing::debug!(stream, "auth stream closed without an answer");
            return Ok(None);
        };
        let r: AuthResponse = decode(&a)?;
        tracing::debug!(host = %reference.registry, user = %r.username, "credentials from the client");
        Ok(
            (!r.username.is_empty() || !r.secret.is_empty()).then_some(Credentials {
                username: r.username,
                secret: r.secret,
            }),
        )
    }

    /// The reference, resolver settings and credentials of a registry end of a transfer.
    async fn registry(
        &self,
        ns: &Namespace,
        r: OciRegistry,
    ) -> Result<(Reference, RegistryResolver, Option<Credentials>), Status> {
        let reference = Reference::parse(&r.reference).map_err(crate::status::to_status)?;
        let resolver = r.resolver.unwrap_or_default();
        let credentials = if resolver.auth_stream.is_empty() {
            None
        } else {
            self.ask_credentials(ns, &resolver.auth_stream, &reference)
                .await?
        };
        Ok((reference, resolver, credentials))
    }

    async fn pull(
        &self,
        ns: Namespace,
        src: OciRegistry,
        dst: ImageStore,
        sink: Arc<dyn ProgressSink>,
    ) -> Result<(), Status> {
        let src_reference = src.reference.clone();
        let (reference, resolver, credentials) = self.registry(&ns, src).await?;
        let mut platforms: Vec<Platform> = Vec::new();
        for u in &dst.unpacks {
            if let Some(p) = &u.platform {
                platforms.push(platform_in(p)?);
            }
        }
        for p in &dst.platforms {
            let p = platform_in(p)?;
            if !platforms.contains(&p) {
                platforms.push(p);
            }
        }
        let unpack = dst.unpacks.first().map(|u| snapshotter_of(&u.snapshotter));
        let req = PullRequest {
            source: src_reference,
            namespace: ns.clone(),
            name: dst.name.clone(),
            labels: labels_in(dst.labels),
            credentials,
            plain_http: resolver.default_scheme == "http",
            hosts_dir: (!resolver.host_dir.is_empty()).then(|| resolver.host_dir.clone().into()),
            platforms,
            all_metadata: dst.all_metadata,
            unpack,
            max_concurrent_downloads: self.max_concurrent_downloads,
            reference,
        };
        let pulled = self.puller.pull(&req, sink).await.map_err(|e| {
            // What the failed pull stored is no longer leased: collect it.
            self.gc.schedule();
            registry_status(e)
        })?;
        tracing::info!(image = %pulled.image.name, digest = %pulled.image.target.digest, fetched = pulled.fetched, "pulled");
        self.events.publish(
            &ns,
            Event::ImageCreate {
                name: pulled.image.name.clone(),
                labels: pulled.image.labels.clone(),
            },
        );
        Ok(())
    }
}

impl TransferService {
    async fn push(
        &self,
        ns: Namespace,
        src: ImageStore,
        dst: OciRegistry,
        sink: Arc<dyn ProgressSink>,
    ) -> Result<(), Status> {
        if src.name.is_empty() {
            return Err(Status::invalid_argument(
                "push needs the name of an image in the store",
            ));
        }
        let (reference, resolver, credentials) = self.registry(&ns, dst).await?;
        let req = PushRequest {
            namespace: ns,
            image: src.name,
            reference,
            credentials,
            plain_http: resolver.default_scheme == "http",
            hosts_dir: (!resolver.host_dir.is_empty()).then(|| resolver.host_dir.clone().into()),
        };
        let pushed = self
            .pusher
            .push(&req, &*sink)
            .await
            .map_err(registry_status)?;
        tracing::info!(image = %req.image, to = %req.reference, digest = %pushed.digest, "pushed");
        Ok(())
    }
}

impl TransferService {
    fn stream(&self, ns: &Namespace, id: &str) -> Result<crate::streaming::StreamHandle, Status> {
        self.streams.take(ns.as_str(), id).ok_or_else(|| {
            Status::invalid_argument(format!("stream {id:?} is not open in namespace {ns:?}"))
        })
    }

    fn publish_images(&self, ns: &Namespace, images: &[berth_core::images::Image], what: &str) {
        for img in images {
            tracing::info!(image = %img.name, digest = %img.target.digest, "{what}");
            self.events.publish(
                ns,
                Event::ImageCreate {
                    name: img.name.clone(),
                    labels: img.labels.clone(),
                },
            );
        }
    }

    /// An archive streamed in by the client → the image store: read as it arrives (no
    /// scratch file), every blob verified, images named as the destination asks.
    async fn import(
        &self,
        ns: Namespace,
        src: ImageImportStream,
        dst: ImageStore,
        progress: Arc<dyn ProgressSink>,
    ) -> Result<(), Status> {
        let h = self.stream(&ns, &src.stream)?;
        let unpack = match dst.unpacks.first() {
            Some(u) => Some((
                snapshotter_of(&u.snapshotter),
                match &u.platform {
                    Some(p) => platform_in(p)?,
                    None => Platform::default(),
                },
            )),
            None => None,
        };
        let mut index_names = Vec::new();
        if !dst.name.is_empty() {
            index_names.push(dst.name.clone());
        }
        let mut prefixes = Vec::new();
        for r in &dst.extra_references {
            if r.is_prefix {
                prefixes.push(archive::NamePrefix {
                    prefix: r.name.clone(),
                    allow_overwrite: r.allow_overwrite,
                    add_digest: r.add_digest,
                    skip_named_digest: r.skip_named_digest,
                });
            } else {
                index_names.push(r.name.clone());
            }
        }
        let opts = archive::ImportOptions {
            index_names,
            prefixes,
            labels: labels_in(dst.labels.clone()),
            unpack,
        };
        let (cancel, watch) = tokio::sync::watch::channel(false);
        let _cancel = crate::streaming::CancelOnDrop(cancel);
        let (stores, n, what) = (
            self.puller.stores().clone(),
            ns.clone(),
            format!("stream {:?}", src.stream),
        );
        let images = blocking(move || {
            let reader = crate::streaming::StreamReader::new(h, watch);
            archive::import(&stores, &n, reader, &what, &opts, &*progress)
        })
        .await
        .inspect_err(|_| self.gc.schedule())?;
        self.publish_images(&ns, &images, "imported");
        Ok(())
    }

    /// The images an image-store source names: its name, then its extra references, each
    /// by its exact name; a missing one is refused before anything is written.
    fn named_images(src: &ImageStore) -> Result<Vec<String>, Status> {
        let mut names = Vec::new();
        if !src.name.is_empty() {
            names.push(src.name.clone());
        }
        for r in &src.extra_references {
            if r.is_prefix {
                return Err(Status::unimplemented(format!(
                    "exporting the images under prefix {:?} is not implemented: name them",
                    r.name
                )));
            }
            names.push(r.name.clone());
        }
        if names.is_empty() {
            return Err(Status::invalid_argument(
                "export needs an image: the store's name or its extra references",
            ));
        }
        Ok(names)
    }

    /// Images of the store → an archive streamed out to the client as it is written.
    async fn export(
        &self,
        ns: Namespace,
        src: ImageStore,
        dst: ImageExportStream,
        progress: Arc<dyn ProgressSink>,
    ) -> Result<(), Status> {
        // The stream is taken first: however the export ends, dropping it closes it.
        let h = self.stream(&ns, &dst.stream)?;
        let names = Self::named_images(&src)?;
        let mut platforms = Vec::new();
        for p in &dst.platforms {
            platforms.push(platform_in(p)?);
        }
        if platforms.is_empty() && !dst.all_platforms {
            platforms.push(Platform::default());
        }
        let opts = archive::ExportOptions {
            docker_manifest: !dst.skip_compatibility_manifest,
            platforms,
            all_platforms: dst.all_platforms,
            skip_non_distributable: dst.skip_non_distributable,
        };
        let stores = self.puller.stores().clone();
        let (s, n) = (stores.clone(), ns.clone());
        let images = blocking(move || {
            names
                .iter()
                .map(|name| {
                    let img = s.images.get(&n, name)?;
                    Ok(archive::ExportImage {
                        name: img.name,
                        target: img.target,
                    })
                })
                .collect::<berth_core::Result<Vec<_>>>()
        })
        .await?;
        let (cancel, watch) = tokio::sync::watch::channel(false);
        let _cancel = crate::streaming::CancelOnDrop(cancel);
        let n = ns.clone();
        let written = blocking(move || {
            let mut w = std::io::BufWriter::with_capacity(
                256 << 10,
                crate::streaming::StreamWriter::new(h, watch),
            );
            archive::export(&stores, &n, &images, &mut w, &opts, &*progress)?;
            let w = w
                .into_inner()
                .map_err(|e| berth_core::Error::io("write", "export stream")(e.into_error()))?;
            Ok(w.written)
        })
        .await?;
        tracing::info!(bytes = written, "exported");
        Ok(())
    }

    /// Image store → image store: the destination names (its name and plain extra
    /// references) point at the source image's target; existing ones are overwritten, as
    /// containerd does.
    async fn tag(&self, ns: Namespace, src: ImageStore, dst: ImageStore) -> Result<(), Status> {
        if src.name.is_empty() {
            return Err(Status::invalid_argument(
                "tag needs the name of the source image",
            ));
        }
        let mut names = Vec::new();
        if !dst.name.is_empty() {
            names.push(dst.name.clone());
        }
        for r in &dst.extra_references {
            if r.is_prefix {
                return Err(Status::unimplemented(format!(
                    "tagging under prefix {:?} is not implemented: name the new image",
                    r.name
                )));
            }
            names.push(r.name.clone());
        }
        if names.is_empty() {
            return Err(Status::invalid_argument(
                "tag needs the name of the new image",
            ));
        }
        let labels = labels_in(dst.labels);
        let (images, n, from) = (self.puller.stores().images.clone(), ns.clone(), src.name);
        let tagged = blocking(move || {
            let source = images.get(&n, &from)?;
            names
                .into_iter()
                .map(|name| {
                    images.put(
                        &n,
                        berth_core::images::Image {
                            name,
                            labels: labels.clone(),
                            target: source.target.clone(),
                            created_at: berth_core::metadata::Timestamp::now(),
                            updated_at: berth_core::metadata::Timestamp::now(),
                        },
                    )
                })
                .collect::<berth_core::Result<Vec<_>>>()
        })
        .await?;
        self.publish_images(&ns, &tagged, "tagged");
        Ok(())
    }
}

/// The snapshotter an unpack names, overlayfs when it names none.
fn snapshotter_of(s: &str) -> String {
    if s.is_empty() {
        "overlayfs".to_owned()
    } else {
        s.to_owned()
    }
}

#[tonic::async_trait]
impl transfer_server::Transfer for TransferService {
    async fn transfer(&self, req: Request<TransferRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let (Some(src), Some(dst)) = (r.source, r.destination) else {
            return Err(Status::invalid_argument(
                "transfer needs a source and a destination",
            ));
        };
        let progress = match r
            .options
            .map(|o| o.progress_stream)
            .filter(|s| !s.is_empty())
        {
            Some(id) => Some(
                self.streams
                    .take(ns.as_str(), &id)
                    .ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "progress stream {id:?} is not open in namespace {ns:?}"
                        ))
                    })?
                    .to_client,
            ),
            None => None,
        };
        let sink: Arc<dyn ProgressSink> = match progress {
            Some(tx) => Arc::new(StreamProgress(tx)),
            None => Arc::new(NoProgress),
        };
        if is::<OciRegistry>(&src) && is::<ImageStore>(&dst) {
            self.pull(ns, decode(&src)?, decode(&dst)?, sink).await?;
            return Ok(Response::new(()));
        }
        if is::<ImageImportStream>(&src) && is::<ImageStore>(&dst) {
            self.import(ns, decode(&src)?, decode(&dst)?, sink).await?;
            return Ok(Response::new(()));
        }
        if is::<ImageStore>(&src) && is::<ImageExportStream>(&dst) {
            self.export(ns, decode(&src)?, decode(&dst)?, sink).await?;
            return Ok(Response::new(()));
        }
        if is::<ImageStore>(&src) && is::<OciRegistry>(&dst) {
            self.push(ns, decode(&src)?, decode(&dst)?, sink).await?;
            return Ok(Response::new(()));
        }
        if is::<ImageStore>(&src) && is::<ImageStore>(&dst) {
            self.tag(ns, decode(&src)?, decode(&dst)?).await?;
            return Ok(Response::new(()));
        }
        Err(Status::unimplemented(format!(
            "transfer from {:?} to {:?} is not implemented in berthd (registry, image store, archive streams)",
            src.type_url, dst.type_url
        )))
    }
}
