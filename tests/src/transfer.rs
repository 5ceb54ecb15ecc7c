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
