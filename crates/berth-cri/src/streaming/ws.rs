//! The WebSocket forms of remote command and port forward: every message is a channel
//! number and a payload — one byte and raw bytes in binary messages, or an ASCII digit
//! and base64 in text messages (the `base64.` protocols). Remote command: 0 stdin,
//! 1 stdout, 2 stderr, 3 error (status), 4 resize; `v5.channel.k8s.io` adds the close
//! signal (255, channel) with which a client ends its stdin. Port forward: channel 2i
//! carries port i's data and 2i+1 its errors, each opened with the port (two bytes,
//! little-endian).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::{Request, Response, StatusCode};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::remotecommand::{self, Want};
use super::{header_values, plain, StreamRequest, Streaming};
use crate::exec::StreamIo;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
pub const CLOSE: u8 = 255;

/// Remote-command subprotocols, in the order a client's preference is matched; `""` is a
/// request that named none.
const REMOTE: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
    "",
];
const PORT_FORWARD: &[&str] = &["v4.channel.k8s.io", "v4.base64.channel.k8s.io", ""];

/// How messages are framed on a negotiated protocol.
#[derive(Debug, Clone, Copy)]
pub struct Framing {
    pub base64: bool,
    pub version: u8,
}

impl Framing {
    pub fn of(protocol: &str) -> Framing {
        Framing {
            base64: protocol.contains("base64"),
            version: remotecommand::version_of(protocol),
        }
    }

    pub fn encode(&self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut s = String::with_capacity(1 + data.len() * 4 / 3 + 4);
            s.push((b'0' + channel) as char);
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
            Message::Text(s.into())
        } else {
            let mut v = Vec::with_capacity(1 + data.len());
            v.push(channel);
            v.extend_from_slice(data);
            Message::Binary(v.into())
        }
    }

    /// A message's channel and payload; `None` for what carries no channel data.
    pub fn decode(&self, m: Message) -> Option<(u8, Bytes)> {
        let raw: Bytes = match m {
            Message::Binary(b) => b,
            Message::Text(t) => Bytes::copy_from_slice(t.as_bytes()),
            _ => return None,
        };
        if raw.is_empty() {
            return None;
        }
        if self.version >= 5 && raw[0] == CLOSE {
            return Some((CLOSE, raw.slice(1..)));
        }
        if self.base64 {
            let ch = raw[0].wrapping_sub(b'0');
            let data = base64::engine::general_purpose::STANDARD
                .decode(&raw[1..])
                .ok()?;
            Some((ch, Bytes::from(data)))
        } else {
            Some((raw[0], raw.slice(1..)))
        }
    }
}

pub fn is_websocket(req: &Request<Incoming>) -> bool {
    header_values(req, "upgrade")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("websocket"))
        && header_values(req, "connection")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("upgrade"))
}

pub fn upgrade(
    s: Arc<Streaming>,
    req: Request<Incoming>,
    r: StreamRequest,
) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "a WebSocket upgrade takes GET\n",
        );
    }
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    if req
        .headers()
        .get("sec-websocket-version")
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return plain(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Version must be 13\n",
        );
    }
    let supported = match r {
        StreamRequest::PortForward(_) => PORT_FORWARD,
        _ => REMOTE,
    };
    let offered = header_values(&req, "sec-websocket-protocol");
    let chosen = if offered.is_empty() {
        Some(String::new())
    } else {
        offered
            .iter()
            .find(|p| supported.contains(&p.as_str()))
            .cloned()
    };
    let Some(chosen) = chosen else {
        return plain(
            StatusCode::FORBIDDEN,
            &format!(
                "requested protocol(s) are not supported: {offered:?}; supports {supported:?}\n"
            ),
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let framing = Framing::of(&chosen);
    super::on_upgrade(&s.clone(), req, move |io| async move {
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        match r {
            StreamRequest::PortForward(pf) => {
                super::portforward::serve_ws(s, ws, framing, pf).await
            }
            r => serve_remote(s, ws, framing, r).await,
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    // A client that asked for no protocol gets no protocol header (not an empty one).
    if !chosen.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&chosen) {
            h.insert("sec-websocket-protocol", v);
        }
    }
    resp
}

/// The writing half of a connection: a task sending what is queued on `out`.
pub struct Writer {
    pub out: mpsc::Sender<Message>,
    task: tokio::task::JoinHandle<()>,
    /// Touched by every message sent or read; the reader closes on its expiry.
    pub activity: super::Activity,
}

pub type Reader<S> = futures::stream::SplitStream<WebSocketStream<S>>;

/// Splits a connection into its writer and the messages read.
pub fn split<S>(ws: WebSocketStream<S>, activity: super::Activity) -> (Writer, Reader<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, incoming) = ws.split();
    let (out, mut rx) = mpsc::channel::<Message>(32);
    activity.touch();
    let a = activity.clone();
    let task = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                break;
            }
            a.touch();
        }
        let _ = sink.close().await;
    });
    (
        Writer {
            out,
            task,
            activity,
        },
        incoming,
    )
}

/// The next message, or `None` when the peer closed, failed or stayed idle too long.
pub async fn next_message<S>(
    incoming: &mut Reader<S>,
    activity: &super::Activity,
) -> Option<Message>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::select! {
        m = incoming.next() => match m {
            Some(Ok(m)) if !matches!(m, Message::Close(_)) => {
                activity.touch();
                Some(m)
            }
            _ => None,
        },
        _ = activity.expired() => {
            tracing::debug!("websocket connection idle for too long: closed");
            None
        }
    }
}

impl Writer {
    /// Sends a normal close after everything queued and waits for it to go out.
    pub async fn close(self) {
        let _ = self
            .out
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        drop(self.out);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Frames what the command writes on `channel`.
fn sink(
    out: mpsc::Sender<Message>,
    framing: Framing,
    channel: u8,
) -> (mpsc::Sender<Bytes>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    let h = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if out.send(framing.encode(channel, &b)).await.is_err() {
                return;
            }
        }
    });
    (tx, h)
}

async fn serve_remote<S>(
    s: Arc<Streaming>,
    ws: WebSocketStream<S>,
    framing: Framing,
    r: StreamRequest,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let want = Want::of(&r);
    let (sock, mut incoming) = split(ws, s.activity());
    let activity = sock.activity.clone();
    // One empty message tells the client the streams are up.
    let first = if want.stdout {
        STDOUT
    } else if want.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = sock.out.send(framing.encode(first, &[])).await;
    let mut io = StreamIo::default();
    let mut sinks = Vec::new();
    if want.stdout {
        let (tx, h) = sink(sock.out.clone(), framing, STDOUT);
        io.stdout = Some(tx);
        sinks.push(h);
    }
    if want.stderr {
        let (tx, h) = sink(sock.out.clone(), framing, STDERR);
        io.stderr = Some(tx);
        sinks.push(h);
    }
    let mut stdin_tx = None;
    if want.stdin {
        let (tx, rx) = mpsc::channel(16);
        stdin_tx = Some(tx);
        io.stdin = Some(rx);
    }
    let mut resize_tx = None;
    if want.tty {
        let (tx, rx) = mpsc::channel(8);
        let sizes = remotecommand::decode_resizes(rx);
        resize_tx = Some(tx);
        io.resize = Some(sizes);
    }
    // Client messages to the command's stdin and resize; the end of them is the
    // client's end (a close or a vanished connection).
    let incoming_ref = &mut incoming;
    let read = async move {
        let incoming = incoming_ref;
        while let Some(m) = next_message(incoming, &activity).await {
            let Some((ch, data)) = framing.decode(m) else {
                continue;
            };
            match ch {
                STDIN => {
                    if let Some(tx) = &stdin_tx {
                        if !data.is_empty() && tx.send(data).await.is_err() {
                            stdin_tx = None;
                        }
                    }
                }
                RESIZE => {
                    if let Some(tx) = &resize_tx {
                        let _ = tx.send(data).await;
                    }
                }
                CLOSE => {
                    if data.len() != 1 {
                        break; // a malformed close signal ends the connection
                    }
                    match data[0] {
                        STDIN => stdin_tx = None,
                        RESIZE => resize_tx = None,
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    };
    let result = tokio::select! {
        r = remotecommand::run(&s, &r, io) => r,
        _ = read => {
            tracing::debug!("remote command (websocket): client went away");
            return; // dropping the run kills an exec's process
        }
    };
    for h in sinks {
        let _ = h.await;
    }
    if let Some(msg) = remotecommand::status_message(framing.version, &r, &result) {
        let _ = sock.out.send(framing.encode(ERROR, msg.as_bytes())).await;
    }
    sock.close().await;
    // The client reads to the end and answers the close; then the connection goes.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = incoming.next().await {}
    })
    .await;
}
