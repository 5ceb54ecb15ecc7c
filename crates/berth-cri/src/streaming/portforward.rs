//! Port forwarding into a pod: each forwarded connection is a TCP connection to
//! `localhost:PORT` made inside the pod's network namespace, copied both ways. Over SPDY
//! the client opens an error and a data stream per connection (paired by `requestid`);
//! over WebSocket each requested port has a data and an error channel.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use k8s_cri::v1 as cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;

use super::spdy::{self, StreamWriter};
use super::ws::{self, Framing};
use super::Streaming;
use crate::context::blocking;
use crate::error::{Error, Result};

const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// After one direction ended, the other gets this long to finish (as socat does).
const HALF_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The pod's sandbox, which must be ready to forward into.
pub(crate) async fn ready_sandbox(
    ctx: &Arc<crate::context::CriContext>,
    pod: &str,
) -> Result<crate::store::SandboxRecord> {
    let (c, id) = (ctx.clone(), pod.to_owned());
    let sb = blocking(move || c.store.sandbox(&id)).await?;
    if sb.state != crate::store::SandboxState::Ready {
        return Err(Error::FailedPrecondition(format!(
            "pod sandbox {:?} is not ready",
            sb.id
        )));
    }
    Ok(sb)
}

/// Connects to `localhost:port` in the pod's network namespace (IPv4, then IPv6).
pub async fn dial(
    ctx: &Arc<crate::context::CriContext>,
    pod: &str,
    port: u16,
) -> Result<TcpStream> {
    if port == 0 {
        return Err(Error::InvalidArgument("invalid port 0".into()));
    }
    let sb = ready_sandbox(ctx, pod).await?;
    let connect = move || -> Result<std::net::TcpStream> {
        let v4 = std::net::TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            DIAL_TIMEOUT,
        );
        let e4 = match v4 {
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        std::net::TcpStream::connect_timeout(
            &SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            DIAL_TIMEOUT,
        )
        .map_err(|e6| {
            Error::FailedPrecondition(format!(
                "failed to connect to localhost:{port} in pod sandbox {pod:?}: IPv4: {e4}, IPv6: {e6}",
                pod = sb.id
            ))
        })
    };
    let stream = match sb.namespaces.net.clone() {
        // The socket is made inside the namespace and stays bound to it.
        Some(net) => tokio::task::spawn_blocking(move || crate::netns::in_netns(&net, connect))
            .await
            .map_err(|e| Error::Internal(format!("port forward dial: {e}")))??,
        None => blocking(connect).await?,
    };
    let _ = stream.set_nodelay(true);
    stream
        .set_nonblocking(true)
        .map_err(|e| Error::Internal(format!("port forward socket: {e}")))?;
    TcpStream::from_std(stream).map_err(|e| Error::Internal(format!("port forward socket: {e}")))
}

/// Copies between the pod's connection and a client's byte streams until the pod side
/// ends (then the client's side gets a moment to finish) or the client's does.
async fn copy(
    conn: TcpStream,
    mut from_client: mpsc::Receiver<Bytes>,
    to_client: impl Fn(Bytes) -> futures::future::BoxFuture<'static, bool>,
) {
    let (mut rd, mut wr) = conn.into_split();
    let upstream = async move {
        while let Some(b) = from_client.recv().await {
            if wr.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    let downstream = async move {
        let mut buf = bytes::BytesMut::new();
        loop {
            buf.reserve(spdy::CHUNK);
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if !to_client(buf.split().freeze()).await {
                        return;
                    }
                }
            }
        }
    };
    tokio::pin!(upstream, downstream);
    tokio::select! {
        _ = &mut downstream => {
            let _ = tokio::time::timeout(HALF_CLOSE_GRACE, &mut upstream).await;
        }
        _ = &mut upstream => {
            downstream.await;
        }
    }
}

fn forward_error(port: u16, pod: &str, e: &Error) -> String {
    format!("error forwarding port {port} to pod {pod}, uid : {e}")
}

/// One forwarded connection over SPDY: its data and error streams.
async fn forward_spdy(
    s: Arc<Streaming>,
    pod: String,
    port: u16,
    data: spdy::Stream,
    error: StreamWriter,
) {
    match dial(&s.ctx, &pod, port).await {
        Ok(conn) => {
            let tx = data.tx.clone();
            copy(conn, data.rx, move |b| {
                let tx = tx.clone();
                Box::pin(async move { tx.send_bytes(b).await.is_ok() })
            })
            .await;
        }
        Err(e) => {
            let _ = error.send(forward_error(port, &pod, &e).as_bytes()).await;
        }
    }
    data.tx.finish().await;
    error.finish().await;
}

pub async fn serve_spdy(
    s: Arc<Streaming>,
    mut conn: spdy::Connection,
    req: cri::PortForwardRequest,
) {
    use std::collections::HashMap;
    let pod = req.pod_sandbox_id;
    // requestid → the stream that came first, waiting for its partner.
    let mut waiting: HashMap<String, (spdy::Stream, tokio::time::Instant)> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(st) = conn.incoming.recv().await {
        let kind = spdy::header(&st.headers, "streamtype")
            .unwrap_or("")
            .to_owned();
        let port = spdy::header(&st.headers, "port").and_then(|p| p.parse::<u16>().ok());
        let (Some(port), "data" | "error") = (port.filter(|p| *p > 0), kind.as_str()) else {
            tracing::debug!(headers = ?st.headers, "port forward: a stream without a valid port or type");
            st.tx.reset().await;
            continue;
        };
        let request = spdy::header(&st.headers, "requestid")
            .map(str::to_owned)
            .unwrap_or_else(|| {
                // Old clients send none: the error stream's id, or the data stream's less 2.
                if kind == "error" {
                    st.id.to_string()
                } else {
                    (st.id.saturating_sub(2)).to_string()
                }
            });
        let now = tokio::time::Instant::now();
        waiting.retain(|_, (_, since)| now.duration_since(*since) < Duration::from_secs(30));
        match waiting.remove(&request) {
            Some((other, _)) => {
                let other_kind = spdy::header(&other.headers, "streamtype").unwrap_or("");
                let (data, error) = match (kind.as_str(), other_kind) {
                    ("data", "error") => (st, other),
                    ("error", "data") => (other, st),
                    _ => {
                        let msg = format!(
                            "error processing stream for request {request}: {kind} stream already assigned"
                        );
                        let w = if kind == "error" { &st.tx } else { &other.tx };
                        let _ = w.send(msg.as_bytes()).await;
                        st.tx.finish().await;
                        other.tx.finish().await;
                        continue;
                    }
                };
                tasks.spawn(forward_spdy(s.clone(), pod.clone(), port, data, error.tx));
            }
            None => {
                waiting.insert(request, (st, now));
            }
        }
    }
    // The client is gone: its forwards end with it.
    tasks.abort_all();
    conn.close(Duration::ZERO).await;
}

pub async fn serve_ws<S>(
    s: Arc<Streaming>,
    sock: WebSocketStream<S>,
    framing: Framing,
    req: cri::PortForwardRequest,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (writer, mut incoming) = ws::split(sock, s.activity());
    let activity = writer.activity.clone();
    let ports: Vec<u16> = req.port.iter().map(|p| *p as u16).collect();
    let mut inputs = Vec::new();
    let mut forwards = tokio::task::JoinSet::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        for ch in [data_ch, err_ch] {
            let _ = writer
                .out
                .send(framing.encode(ch, &port.to_le_bytes()))
                .await;
        }
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        inputs.push(tx);
        let (s, pod, out) = (s.clone(), req.pod_sandbox_id.clone(), writer.out.clone());
        forwards.spawn(async move {
            match dial(&s.ctx, &pod, port).await {
                Ok(conn) => {
                    copy(conn, rx, move |b| {
                        let out = out.clone();
                        Box::pin(async move { out.send(framing.encode(data_ch, &b)).await.is_ok() })
                    })
                    .await
                }
                Err(e) => {
                    let msg = forward_error(port, &pod, &e);
                    let _ = out.send(framing.encode(err_ch, msg.as_bytes())).await;
                }
            }
        });
    }
    let read = async {
        while let Some(m) = ws::next_message(&mut incoming, &activity).await {
            let Some((ch, data)) = framing.decode(m) else {
                continue;
            };
            if ch % 2 == 0 {
                if let Some(tx) = inputs.get((ch / 2) as usize) {
                    if !data.is_empty() {
                        let _ = tx.send(data).await;
                    }
                }
            }
        }
    };
    let all_done = async { while forwards.join_next().await.is_some() {} };
    tokio::select! {
        _ = read => {
            // The client closed or vanished: stop forwarding.
        }
        _ = all_done => {}
    }
    writer.close().await;
}
