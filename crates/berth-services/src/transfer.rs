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
        progress: Option<mpsc::Sender<prost_types::Any>>,
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
        let unpack = dst.unpacks.first().map(|u| {
            if u.snapshotter.is_empty() {
                "overlayfs".to_owned()
            } else {
                u.snapshotter.clone()
            }
        });
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
        let sink: Arc<dyn ProgressSink> = match &progress {
            Some(tx) => Arc::new(StreamProgress(tx.clone())),
            None => Arc::new(NoProgress),
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
        progress: Option<mpsc::Sender<prost_types::Any>>,
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
        let pushed = match &progress {
            Some(tx) => self.pusher.push(&req, &StreamProgress(tx.clone())).await,
            None => self.pusher.push(&req, &NoProgress).await,
        }
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

    /// A scratch file under --state for an archive on its way in or out.
    fn scratch_file(&self, what: &str) -> std::path::PathBuf {
        self.puller
            .stores()
            .scratch
            .join(format!("{what}-{}.tar", uuid::Uuid::new_v4().simple()))
    }

    async fn import(
        &self,
        ns: Namespace,
        src: ImageImportStream,
        dst: ImageStore,
    ) -> Result<(), Status> {
        let h = self.stream(&ns, &src.stream)?;
        let _ = std::fs::create_dir_all(&self.puller.stores().scratch);
        let path = self.scratch_file("import");
        let result = async {
            crate::streaming::receive_to_file(h, &path).await?;
            let unpack = match dst.unpacks.first() {
                Some(u) => Some((
                    if u.snapshotter.is_empty() {
                        "overlayfs".to_owned()
                    } else {
                        u.snapshotter.clone()
                    },
                    match &u.platform {
                        Some(p) => platform_in(p)?,
                        None => Platform::default(),
                    },
                )),
                None => None,
            };
            let opts = archive::ImportOptions {
                name: dst.name.clone(),
                labels: labels_in(dst.labels.clone()),
                unpack,
            };
            let (stores, n, p) = (self.puller.stores().clone(), ns.clone(), path.clone());
            blocking(move || archive::import(&stores, &n, &p, &opts)).await
        }
        .await;
        let _ = std::fs::remove_file(&path);
        let images = result.inspect_err(|_| self.gc.schedule())?;
        for img in images {
            tracing::info!(image = %img.name, digest = %img.target.digest, "imported");
            self.events.publish(
                &ns,
                Event::ImageCreate {
                    name: img.name.clone(),
                    labels: img.labels,
                },
            );
        }
        Ok(())
    }

    async fn export(
        &self,
        ns: Namespace,
        src: ImageStore,
        dst: ImageExportStream,
    ) -> Result<(), Status> {
        if src.name.is_empty() {
            return Err(Status::invalid_argument(
                "export needs the name of an image in the store",
            ));
        }
        let h = self.stream(&ns, &dst.stream)?;
        let _ = std::fs::create_dir_all(&self.puller.stores().scratch);
        let path = self.scratch_file("export");
        let result = async {
            let (stores, n, p, name) = (
                self.puller.stores().clone(),
                ns.clone(),
                path.clone(),
                src.name.clone(),
            );
            let opts = archive::ExportOptions {
                docker_manifest: !dst.skip_compatibility_manifest,
                ..Default::default()
            };
            blocking(move || {
                let img = stores.images.get(&n, &name)?;
                let mut f =
                    std::fs::File::create(&p).map_err(berth_core::Error::io("create", &p))?;
                archive::export(
                    &stores,
                    &n,
                    &[archive::ExportImage {
                        name: img.name,
                        target: img.target,
                    }],
                    &mut f,
                    &opts,
                )
            })
            .await?;
            crate::streaming::send_file(h, &path).await
        }
        .await;
        let _ = std::fs::remove_file(&path);
        result.map(|n| tracing::info!(image = %src.name, bytes = n, "exported"))
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
        if is::<OciRegistry>(&src) && is::<ImageStore>(&dst) {
            self.pull(ns, decode(&src)?, decode(&dst)?, progress)
                .await?;
            return Ok(Response::new(()));
        }
        if is::<ImageImportStream>(&src) && is::<ImageStore>(&dst) {
            self.import(ns, decode(&src)?, decode(&dst)?).await?;
            return Ok(Response::new(()));
        }
        if is::<ImageStore>(&src) && is::<ImageExportStream>(&dst) {
            self.export(ns, decode(&src)?, decode(&dst)?).await?;
            return Ok(Response::new(()));
        }
        if is::<ImageStore>(&src) && is::<OciRegistry>(&dst) {
            self.push(ns, decode(&src)?, decode(&dst)?, progress)
                .await?;
            return Ok(Response::new(()));
        }
        Err(Status::unimplemented(format!(
            "transfer from {:?} to {:?} is not implemented in berthd yet (registry to image store and back are)",
            src.type_url, dst.type_url
        )))
    }
}
