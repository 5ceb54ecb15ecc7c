//! A Transfer API client as containerd 2.x clients drive it: a progress stream, an auth
//! stream answering credential questions, and one Transfer call (registry → image store).

use std::path::Path;
use std::time::Duration;

use containerd_client::services::v1::streaming_client::StreamingClient;
use containerd_client::services::v1::transfer_client::TransferClient;
use containerd_client::services::v1::{StreamInit, TransferOptions, TransferRequest};
use containerd_client::tonic::{Request, Status};
use containerd_client::types::transfer::{
    AuthRequest, AuthResponse, ImageStore, OciRegistry, Progress, RegistryResolver,
    UnpackConfiguration,
};
use containerd_client::types::Platform;
use prost::{Message, Name};
use tokio_stream::StreamExt;

pub fn any<M: Message + Name>(m: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: M::full_name(),
        value: m.encode_to_vec(),
    }
}

/// Opens a stream on the Streaming service; returns the sender for the client's messages
/// and the server's messages.
pub async fn open_stream(
    ch: &containerd_client::tonic::transport::Channel,
    ns: &str,
    id: &str,
) -> (
    tokio::sync::mpsc::Sender<prost_types::Any>,
    containerd_client::tonic::Streaming<prost_types::Any>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(any(&StreamInit { id: id.into() })).await.unwrap();
    let req =
        containerd_client::with_namespace!(tokio_stream::wrappers::ReceiverStream::new(rx), ns);
    let mut s = StreamingClient::new(ch.clone())
        .stream(req)
        .await
        .unwrap()
        .into_inner();
    s.message().await.unwrap().expect("stream acknowledged");
    (tx, s)
}

pub struct Pull<'a> {
    pub reference: &'a str,
    pub platforms: Vec<Platform>,
    /// (user, password) answered on the auth stream.
    pub creds: Option<(&'a str, &'a str)>,
}

pub fn amd64() -> Platform {
    Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: String::new(),
        os_version: String::new(),
    }
}

/// How berthd is told to reach the registry.
#[derive(Default)]
pub struct Resolver<'a> {
    /// `https` instead of the plain HTTP loopback registries speak.
    pub https: bool,
    /// A hosts.toml directory.
    pub host_dir: Option<&'a Path>,
}

/// Runs one Transfer pull over plain HTTP with progress (and credentials when given);
/// returns the result and the progress events seen.
pub fn transfer(socket: &Path, ns: &str, p: Pull<'_>) -> (Result<(), Status>, Vec<Progress>) {
    transfer_with(socket, ns, p, Resolver::default())
}

/// `transfer`, with the resolver settings given.
pub fn transfer_with(
    socket: &Path,
    ns: &str,
    p: Pull<'_>,
    resolver: Resolver<'_>,
) -> (Result<(), Status>, Vec<Progress>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = containerd_client::connect(socket).await.unwrap();
        let (_ptx, mut progress) = open_stream(&ch, ns, "progress-1").await;
        let mut auth_stream = String::new();
        let mut answer = None;
        if let Some((u, pw)) = p.creds {
            let (atx, mut arx) = open_stream(&ch, ns, "auth-1").await;
            auth_stream = "auth-1".into();
            let (u, pw) = (u.to_owned(), pw.to_owned());
            answer = Some(tokio::spawn(async move {
                let q = arx.message().await.unwrap().unwrap();
                let q = AuthRequest::decode(q.value.as_slice()).unwrap();
                atx.send(any(&AuthResponse {
                    auth_type: 1,
                    secret: pw,
                    username: u,
                    expire_at: None,
                }))
                .await
                .unwrap();
                // Dropping either half would reset the stream before berthd reads the
                // answer; a client keeps its stream until the transfer is over.
                (q.host, atx, arx)
            }));
        }
        let req = TransferRequest {
            source: Some(any(&OciRegistry {
                reference: p.reference.into(),
                resolver: Some(RegistryResolver {
                    auth_stream,
                    default_scheme: if resolver.https { "https" } else { "http" }.into(),
                    host_dir: resolver
                        .host_dir
                        .map(|d| d.display().to_string())
                        .unwrap_or_default(),
                    ..Default::default()
                }),
            })),
            destination: Some(any(&ImageStore {
                name: p.reference.into(),
                platforms: p.platforms.clone(),
                unpacks: vec![UnpackConfiguration {
                    platform: p.platforms.first().cloned(),
                    snapshotter: "overlayfs".into(),
                }],
                ..Default::default()
            })),
            options: Some(TransferOptions {
                progress_stream: "progress-1".into(),
            }),
        };
        let r = TransferClient::new(ch.clone())
            .transfer(containerd_client::with_namespace!(req, ns))
            .await
            .map(|_| ());
        if let Some(a) = answer {
            let (host, _, _) = a.await.unwrap();
            assert_eq!(host, p.reference.split('/').next().unwrap());
        }
        let mut events = Vec::new();
        while let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_millis(300), progress.next()).await
        {
            events.push(Progress::decode(m.value.as_slice()).unwrap());
        }
        (r, events)
    })
}

/// Pushes `image` (a name in the store) to `reference` through the Transfer API.
pub fn push(socket: &Path, ns: &str, image: &str, reference: &str) -> Result<(), Status> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = containerd_client::connect(socket).await.unwrap();
        let req = TransferRequest {
            source: Some(any(&ImageStore {
                name: image.into(),
                ..Default::default()
            })),
            destination: Some(any(&OciRegistry {
                reference: reference.into(),
                resolver: Some(RegistryResolver {
                    default_scheme: "http".into(),
                    ..Default::default()
                }),
            })),
            options: None,
        };
        TransferClient::new(ch)
            .transfer(containerd_client::with_namespace!(req, ns))
            .await
            .map(|_| ())
    })
}

/// One Transfer call with a progress stream: returns its result and the progress seen.
async fn call_with_progress(
    ch: &containerd_client::tonic::transport::Channel,
    ns: &str,
    source: prost_types::Any,
    destination: prost_types::Any,
) -> (Result<(), Status>, Vec<Progress>) {
    let id = format!("progress-{}", std::process::id());
    let (_ptx, mut progress) = open_stream(ch, ns, &id).await;
    let req = TransferRequest {
        source: Some(source),
        destination: Some(destination),
        options: Some(TransferOptions {
            progress_stream: id,
        }),
    };
    let r = TransferClient::new(ch.clone())
        .transfer(containerd_client::with_namespace!(req, ns))
        .await
        .map(|_| ());
    let mut events = Vec::new();
    while let Ok(Some(Ok(m))) =
        tokio::time::timeout(Duration::from_millis(300), progress.next()).await
    {
        events.push(Progress::decode(m.value.as_slice()).unwrap());
    }
    (r, events)
}

/// Streams an archive into berthd (data sent as berthd grants credit) to `dst`.
pub fn import_to(
    socket: &Path,
    ns: &str,
    bytes: Vec<u8>,
    dst: ImageStore,
) -> (Result<(), Status>, Vec<Progress>) {
    use containerd_client::types::transfer::{Data, ImageImportStream, WindowUpdate};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = containerd_client::connect(socket).await.unwrap();
        let (tx, mut rx) = open_stream(&ch, ns, "import-1").await;
        let sender = tokio::spawn(async move {
            let mut sent = 0;
            while sent < bytes.len() {
                let Ok(Some(m)) = rx.message().await else {
                    break;
                };
                let credit = WindowUpdate::decode(m.value.as_slice()).unwrap().update as usize;
                let end = bytes.len().min(sent + credit);
                for chunk in bytes[sent..end].chunks(64 << 10) {
                    if tx
                        .send(any(&Data {
                            data: chunk.to_vec(),
                        }))
                        .await
                        .is_err()
                    {
                        return rx;
                    }
                }
                sent = end;
            }
            // Closing our side tells berthd the archive is complete; the response half
            // stays open until the transfer is over.
            drop(tx);
            rx
        });
        let src = ImageImportStream {
            stream: "import-1".into(),
            media_type: String::new(),
            force_compress: false,
        };
        let r = call_with_progress(&ch, ns, any(&src), any(&dst)).await;
        let _rx = sender.await.unwrap();
        r
    })
}

/// Imports an archive file, unpacking it for linux/amd64; `name` names the archive's
/// index (empty: each image takes the name the archive gives it).
pub fn import_archive(socket: &Path, ns: &str, archive: &Path, name: &str) -> Result<(), Status> {
    let dst = ImageStore {
        name: name.into(),
        unpacks: vec![UnpackConfiguration {
            platform: Some(amd64()),
            snapshotter: "overlayfs".into(),
        }],
        ..Default::default()
    };
    import_to(socket, ns, std::fs::read(archive).unwrap(), dst).0
}

/// Exports from `src` into an archive streamed back (credit granted as it is read).
pub fn export_from(
    socket: &Path,
    ns: &str,
    src: ImageStore,
    dst: containerd_client::types::transfer::ImageExportStream,
) -> (Result<(), Status>, Vec<u8>, Vec<Progress>) {
    use containerd_client::types::transfer::{Data, ImageExportStream, WindowUpdate};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = containerd_client::connect(socket).await.unwrap();
        let (tx, mut rx) = open_stream(&ch, ns, "export-1").await;
        let receiver = tokio::spawn(async move {
            let mut data = Vec::new();
            tx.send(any(&WindowUpdate { update: 1 << 20 }))
                .await
                .unwrap();
            while let Ok(Some(m)) = rx.message().await {
                let d = Data::decode(m.value.as_slice()).unwrap();
                let _ = tx
                    .send(any(&WindowUpdate {
                        update: d.data.len() as i32,
                    }))
                    .await;
                data.extend(d.data);
            }
            data
        });
        let dst = ImageExportStream {
            stream: "export-1".into(),
            ..dst
        };
        let (r, events) = call_with_progress(&ch, ns, any(&src), any(&dst)).await;
        let data = receiver.await.unwrap();
        (r, data, events)
    })
}

/// Exports the image named `image` into `out`.
pub fn export_archive(socket: &Path, ns: &str, image: &str, out: &Path) -> Result<(), Status> {
    let src = ImageStore {
        name: image.into(),
        ..Default::default()
    };
    let (r, data, _) = export_from(socket, ns, src, Default::default());
    if r.is_ok() {
        std::fs::write(out, data).unwrap();
    }
    r
}

/// Image store → image store, as `ctr image tag` in containerd 2.x.
pub fn tag(socket: &Path, ns: &str, src: ImageStore, dst: ImageStore) -> Result<(), Status> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = containerd_client::connect(socket).await.unwrap();
        let req = TransferRequest {
            source: Some(any(&src)),
            destination: Some(any(&dst)),
            options: None,
        };
        TransferClient::new(ch)
            .transfer(containerd_client::with_namespace!(req, ns))
            .await
            .map(|_| ())
    })
}
