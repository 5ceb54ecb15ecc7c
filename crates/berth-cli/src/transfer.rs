//! Image transfers through berthd's Transfer service, as containerd 2.x clients drive it:
//! a progress stream the daemon reports into, an auth stream on which the command line
//! answers credential questions from Docker's config.json, and one Transfer call.

use std::sync::atomic::{AtomicU64, Ordering};

use containerd_client::services::v1::{StreamInit, TransferOptions, TransferRequest};
use containerd_client::types::transfer::{
    AuthRequest, AuthResponse, ImageStore, OciRegistry, Progress, RegistryResolver,
    UnpackConfiguration,
};
use containerd_client::types::Platform;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::client::{any_of, Client, SNAPSHOTTER};
use crate::error::{Error, Result};
use crate::reference::Reference;

/// A bidirectional stream on berthd's Streaming service.
pub struct Stream {
    pub id: String,
    pub tx: mpsc::Sender<prost_types::Any>,
    pub rx: tonic::Streaming<prost_types::Any>,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

pub fn stream_id(kind: &str) -> String {
    format!(
        "berth-{kind}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn open_stream(client: &Client, kind: &str) -> Result<Stream> {
    let id = stream_id(kind);
    let (tx, rx) = mpsc::channel(16);
    tx.send(any_of(&StreamInit { id: id.clone() }))
        .await
        .map_err(|_| Error::Daemon("stream closed before it opened".into()))?;
    let mut rx = client
        .streaming()
        .stream(client.req(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await?
        .into_inner();
    // berthd acknowledges the stream before it is usable.
    rx.message().await?;
    Ok(Stream { id, tx, rx })
}

/// Registries on this machine speak plain HTTP, as Docker allows for 127.0.0.0/8.
pub fn default_scheme(host: &str) -> &'static str {
    let h = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    let h = h.trim_start_matches('[').trim_end_matches(']');
    if h == "localhost" || h == "::1" || h.starts_with("127.") {
        "http"
    } else {
        "https"
    }
}

fn resolver(reference: &Reference, auth_stream: String) -> RegistryResolver {
    RegistryResolver {
        auth_stream,
        default_scheme: default_scheme(&reference.domain).into(),
        ..Default::default()
    }
}

/// Answers berthd's credential questions for this transfer from Docker's config.json;
/// the stream is kept open until the transfer is over.
async fn answer_auth(client: &Client) -> Result<(String, tokio::task::JoinHandle<()>)> {
    let mut s = open_stream(client, "auth").await?;
    let id = s.id.clone();
    let task = tokio::spawn(async move {
        while let Ok(Some(q)) = s.rx.message().await {
            let Ok(q) = AuthRequest::decode(q.value.as_slice()) else {
                break;
            };
            let creds = crate::credentials::lookup(&q.host).ok().flatten();
            let answer = match creds {
                Some((u, p)) => AuthResponse {
                    auth_type: 1,
                    secret: p,
                    username: u,
                    expire_at: None,
                },
                None => AuthResponse::default(),
            };
            if s.tx.send(any_of(&answer)).await.is_err() {
                break;
            }
        }
    });
    Ok((id, task))
}

pub fn host_platform() -> Platform {
    let (os, arch) = crate::image::host_platform();
    Platform {
        os: os.into(),
        architecture: arch.into(),
        variant: String::new(),
        os_version: String::new(),
    }
}

/// Pulls `reference` for this machine and unpacks it, reporting progress to `on_progress`.
pub async fn pull(
    client: &Client,
    reference: &Reference,
    mut on_progress: impl FnMut(Progress),
) -> Result<()> {
    let mut progress = open_stream(client, "progress").await?;
    let (auth_id, auth) = answer_auth(client).await?;
    let name = reference.to_string();
    let req = TransferRequest {
        source: Some(any_of(&OciRegistry {
            reference: name.clone(),
            resolver: Some(resolver(reference, auth_id)),
        })),
        destination: Some(any_of(&ImageStore {
            name,
            platforms: vec![host_platform()],
            unpacks: vec![UnpackConfiguration {
                platform: Some(host_platform()),
                snapshotter: SNAPSHOTTER.into(),
            }],
            ..Default::default()
        })),
        options: Some(TransferOptions {
            progress_stream: progress.id.clone(),
        }),
    };
    let result = call_with_progress(client, req, &mut progress, &mut on_progress).await;
    auth.abort();
    result.map_err(|s| registry_error(s, reference))
}

/// Pushes the stored image `image` to `reference`.
pub async fn push(
    client: &Client,
    image: &str,
    reference: &Reference,
    mut on_progress: impl FnMut(Progress),
) -> Result<()> {
    let mut progress = open_stream(client, "progress").await?;
    let (auth_id, auth) = answer_auth(client).await?;
    let req = TransferRequest {
        source: Some(any_of(&ImageStore {
            name: image.to_owned(),
            platforms: vec![host_platform()],
            ..Default::default()
        })),
        destination: Some(any_of(&OciRegistry {
            reference: reference.to_string(),
            resolver: Some(resolver(reference, auth_id)),
        })),
        options: Some(TransferOptions {
            progress_stream: progress.id.clone(),
        }),
    };
    let result = call_with_progress(client, req, &mut progress, &mut on_progress).await;
    auth.abort();
    result.map_err(|s| registry_error(s, reference))
}

/// One Transfer call, with the progress berthd streams meanwhile passed to `on_progress`.
async fn call_with_progress(
    client: &Client,
    req: TransferRequest,
    progress: &mut Stream,
    on_progress: &mut impl FnMut(Progress),
) -> std::result::Result<(), tonic::Status> {
    let mut transfer = client.transfer();
    let call = transfer.transfer(client.req(req));
    tokio::pin!(call);
    let mut decode = |m: prost_types::Any| {
        if let Ok(p) = Progress::decode(m.value.as_slice()) {
            on_progress(p);
        }
    };
    let result = loop {
        tokio::select! {
            r = &mut call => break r,
            m = progress.rx.next() => match m {
                Some(Ok(m)) => decode(m),
                // The progress stream ended early; the transfer's answer still counts.
                _ => break (&mut call).await,
            },
        }
    };
    // Whatever progress is still queued was sent before the answer.
    while let Ok(Some(Ok(m))) =
        tokio::time::timeout(std::time::Duration::from_millis(50), progress.rx.next()).await
    {
        decode(m);
    }
    result.map(|_| ())
}

/// A registry's refusal in the words Docker uses.
fn registry_error(s: tonic::Status, reference: &Reference) -> Error {
    let msg = s.message().to_owned();
    let lower = msg.to_ascii_lowercase();
    match s.code() {
        tonic::Code::NotFound => Error::Daemon(format!(
            "manifest for {} not found: manifest unknown",
            reference.familiar()
        )),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            Error::Daemon(format!("{}: access denied: {msg}", reference.domain))
        }
        _ if lower.contains("401") || lower.contains("unauthorized") => Error::Daemon(format!(
            "{}: access denied (wrong or missing credentials; run `berth login {}`): {msg}",
            reference.domain, reference.domain
        )),
        _ => s.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http() {
        assert_eq!(default_scheme("127.0.0.1:5000"), "http");
        assert_eq!(default_scheme("localhost:5000"), "http");
        assert_eq!(default_scheme("[::1]:5000"), "http");
        assert_eq!(default_scheme("docker.io"), "https");
        assert_eq!(default_scheme("registry.example.com:5000"), "https");
    }
}
