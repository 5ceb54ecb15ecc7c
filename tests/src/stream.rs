//! Clients of berthd's CRI streaming server, for tests and benchmarks, over both
//! transports the kubelet proxies: SPDY/3.1 (berth-cri's codec on its client side; the
//! codec itself is checked against frames another zlib wrote) and WebSocket
//! (tokio-tungstenite, with the channel framing written here from the protocol).
//! One session type serves both, so that every test runs on each transport.

use std::time::{Duration, Instant};

use base64::Engine as _;
use berth_cri::streaming::spdy;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// SPDY/3.1 with this remote-command protocol.
    Spdy(&'static str),
    /// WebSocket with this subprotocol (`v5.channel.k8s.io`, `v4.base64.channel.k8s.io`…).
    WebSocket(&'static str),
}

pub const TRANSPORTS: [Transport; 3] = [
    Transport::Spdy("v4.channel.k8s.io"),
    Transport::WebSocket("v5.channel.k8s.io"),
    Transport::WebSocket("v4.base64.channel.k8s.io"),
];

/// What the client asked the streams for (as in the CRI request).
#[derive(Debug, Clone, Copy, Default)]
pub struct Want {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

enum Input {
    Stdin(Bytes),
    CloseStdin,
    Resize(u16, u16),
}

#[derive(Debug)]
enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
    Error(Bytes),
}

/// An exec or attach in progress.
pub struct Session {
    input: mpsc::Sender<Input>,
    output: mpsc::Receiver<Output>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub error: Vec<u8>,
}

/// How a session ended.
#[derive(Debug)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The error stream: a `Status` object from v4 on.
    pub error: String,
}

impl Outcome {
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.error)
            .unwrap_or_else(|e| panic!("error stream {:?}: {e}", self.error))
    }
}

/// The status code of an HTTP request made to `url` as an upgrade of `transport`.
#[derive(Debug)]
pub struct Refused(pub u16, pub String);

/// Writes an HTTP/1.1 upgrade request and reads the response head (byte by byte, so
/// that nothing after it is consumed).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Connects to an `http://` URL's host, or an `https://` one's with TLS trusting `ca`.
async fn connect(
    url: &str,
    ca: Option<&std::path::Path>,
) -> Result<(Box<dyn Io>, String, String), Refused> {
    let (tls, rest) = match url.strip_prefix("https://") {
        Some(r) => (true, r),
        None => (false, url.strip_prefix("http://").expect("an http(s) URL")),
    };
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let tcp = TcpStream::connect(host)
        .await
        .map_err(|e| Refused(0, e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    if !tls {
        return Ok((Box::new(tcp), host.to_owned(), path.to_owned()));
    }
    use rustls_pki_types::pem::PemObject;
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let ca = ca.expect("an https URL needs the CA to trust");
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(
        host.rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(host)
            .to_owned(),
    )
    .unwrap();
    let s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| Refused(0, format!("TLS: {e}")))?;
    Ok((Box::new(s), host.to_owned(), path.to_owned()))
}

async fn http_upgrade(
    url: &str,
    headers: &[(&str, &str)],
    ca: Option<&std::path::Path>,
) -> Result<Box<dyn Io>, Refused> {
    let (mut s, host, path) = connect(url, ca).await?;
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| Refused(0, e.to_string()))?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        match s.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => return Err(Refused(0, "connection closed".into())),
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let code: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if code != 101 {
        let mut body = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut body))
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or(0);
        return Err(Refused(
            code,
            format!("{text}{}", String::from_utf8_lossy(&body[..n])),
        ));
    }
    Ok(s)
}

fn ws_channel(base64: bool, m: Message) -> Option<(u8, Vec<u8>)> {
    match m {
        Message::Binary(b) if !b.is_empty() => Some((b[0], b[1..].to_vec())),
        Message::Text(t) if base64 && !t.is_empty() => {
            let t = t.as_bytes();
            let data = base64::engine::general_purpose::STANDARD
                .decode(&t[1..])
                .expect("base64 payload");
            Some((t[0] - b'0', data))
        }
        _ => None,
    }
}

fn ws_frame(base64: bool, ch: u8, data: &[u8]) -> Message {
    if base64 {
        let mut s = String::new();
        s.push((b'0' + ch) as char);
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
        Message::Text(s.into())
    } else {
        let mut v = vec![ch];
        v.extend_from_slice(data);
        Message::Binary(v.into())
    }
}

async fn ws_connect(
    url: &str,
    protocol: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>, Refused>
{
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    match tokio_tungstenite::connect_async_with_config(req, None, true).await {
        Ok((ws, resp)) => {
            let chosen = resp
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok());
            assert_eq!(chosen, Some(protocol), "negotiated subprotocol");
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(Refused(
            r.status().as_u16(),
            String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => Err(Refused(0, e.to_string())),
    }
}

/// Sends to a session's input from another task than the one reading it.
#[derive(Clone)]
pub struct InputHandle(mpsc::Sender<Input>);

impl InputHandle {
    pub async fn send(&self, data: &[u8]) {
        for c in data.chunks(32 << 10) {
            let _ = self.0.send(Input::Stdin(Bytes::copy_from_slice(c))).await;
        }
    }

    pub async fn close_stdin(&self) {
        let _ = self.0.send(Input::CloseStdin).await;
    }
}

impl Session {
    pub fn input(&self) -> InputHandle {
        InputHandle(self.input.clone())
    }

    /// Opens a session on the URL CRI Exec or Attach returned.
    pub async fn open(url: &str, transport: Transport, want: Want) -> Result<Session, Refused> {
        Self::open_with(url, transport, want, None).await
    }

    /// The same, for an `https://` URL signed by `ca` (SPDY only).
    pub async fn open_with(
        url: &str,
        transport: Transport,
        want: Want,
        ca: Option<&std::path::Path>,
    ) -> Result<Session, Refused> {
        let (in_tx, in_rx) = mpsc::channel(16);
        let (out_tx, out_rx) = mpsc::channel(64);
        match transport {
            Transport::Spdy(proto) => {
                let io = http_upgrade(
                    url,
                    &[
                        ("Connection", "Upgrade"),
                        ("Upgrade", "SPDY/3.1"),
                        ("X-Stream-Protocol-Version", proto),
                    ],
                    ca,
                )
                .await?;
                spdy_session(io, want, in_rx, out_tx).await;
            }
            Transport::WebSocket(proto) => {
                let ws = ws_connect(url, proto).await?;
                // The channels come from the CRI request on the server's side.
                ws_session(ws, proto, in_rx, out_tx);
            }
        }
        Ok(Session {
            input: in_tx,
            output: out_rx,
            stdout: Vec::new(),
            stderr: Vec::new(),
            error: Vec::new(),
        })
    }

    pub async fn send(&self, data: &[u8]) {
        for c in data.chunks(32 << 10) {
            let _ = self
                .input
                .send(Input::Stdin(Bytes::copy_from_slice(c)))
                .await;
        }
    }

    pub async fn close_stdin(&self) {
        let _ = self.input.send(Input::CloseStdin).await;
    }

    pub async fn resize(&self, width: u16, height: u16) {
        let _ = self.input.send(Input::Resize(width, height)).await;
    }

    fn take(&mut self, o: Output) {
        match o {
            Output::Stdout(b) => self.stdout.extend_from_slice(&b),
            Output::Stderr(b) => self.stderr.extend_from_slice(&b),
            Output::Error(b) => self.error.extend_from_slice(&b),
        }
    }

    /// Reads until stdout contains `what` (panics after `limit`).
    pub async fn read_until(&mut self, what: &str, limit: Duration) {
        self.read_until_n(what, 1, limit).await
    }

    /// Reads until stdout contains `what` `n` times (panics after `limit`).
    pub async fn read_until_n(&mut self, what: &str, n: usize, limit: Duration) {
        let end = Instant::now() + limit;
        while String::from_utf8_lossy(&self.stdout).matches(what).count() < n {
            let left = end.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.output.recv()).await {
                Ok(Some(o)) => self.take(o),
                Ok(None) => panic!(
                    "the session ended before {what:?}; stdout {:?}, error {:?}",
                    String::from_utf8_lossy(&self.stdout),
                    String::from_utf8_lossy(&self.error)
                ),
                Err(_) => panic!(
                    "no {what:?} within {limit:?}; stdout {:?}",
                    String::from_utf8_lossy(&self.stdout)
                ),
            }
        }
    }

    /// Reads to the end of the session.
    pub async fn finish(mut self, limit: Duration) -> Outcome {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.output.recv()).await {
                Ok(Some(o)) => self.take(o),
                Ok(None) => break,
                Err(_) => panic!(
                    "the session did not end within {limit:?}; stdout {:?}",
                    String::from_utf8_lossy(&self.stdout)
                ),
            }
        }
        Outcome {
            stdout: self.stdout,
            stderr: self.stderr,
            error: String::from_utf8_lossy(&self.error).into_owned(),
        }
    }
}

async fn spdy_session(
    io: Box<dyn Io>,
    want: Want,
    mut input: mpsc::Receiver<Input>,
    out: mpsc::Sender<Output>,
) {
    let mut conn = spdy::Connection::new(io, false, None);
    // The order client-go opens them in, each after the previous one's reply.
    let mut kinds = vec!["error"];
    if want.stdin {
        kinds.push("stdin");
    }
    if want.stdout {
        kinds.push("stdout");
    }
    if want.stderr && !want.tty {
        kinds.push("stderr");
    }
    if want.tty {
        kinds.push("resize");
    }
    let mut streams = Vec::new();
    for t in kinds {
        let h = vec![("streamtype".to_owned(), t.to_owned())];
        let s = conn.open(h).await.expect("stream opened");
        streams.push((t, s));
    }
    let mut readers = Vec::new();
    let mut stdin = None;
    let mut resize = None;
    for (t, s) in streams {
        match t {
            "stdin" => stdin = Some(s.tx),
            "resize" => resize = Some(s.tx),
            _ => {
                let out = out.clone();
                let mut rx = s.rx;
                readers.push(tokio::spawn(async move {
                    while let Some(b) = rx.recv().await {
                        let o = match t {
                            "stdout" => Output::Stdout(b),
                            "stderr" => Output::Stderr(b),
                            _ => Output::Error(b),
                        };
                        if out.send(o).await.is_err() {
                            return;
                        }
                    }
                }));
            }
        }
    }
    tokio::spawn(async move {
        let writer = async {
            while let Some(i) = input.recv().await {
                match i {
                    Input::Stdin(b) => {
                        if let Some(s) = &stdin {
                            let _ = s.send(&b).await;
                        }
                    }
                    Input::CloseStdin => {
                        if let Some(s) = stdin.take() {
                            s.finish().await;
                        }
                    }
                    Input::Resize(w, h) => {
                        if let Some(s) = &resize {
                            let j = format!("{{\"Width\":{w},\"Height\":{h}}}\n");
                            let _ = s.send(j.as_bytes()).await;
                        }
                    }
                }
            }
            // The session was dropped: the client vanishes.
        };
        let readers_done = async {
            for r in readers {
                let _ = r.await;
            }
        };
        tokio::select! {
            _ = writer => {
                drop(conn); // cut, not closed: as a killed client's connection ends
                return;
            }
            _ = readers_done => {}
        }
        drop(out);
        conn.close(Duration::ZERO).await;
    });
}

fn ws_session(
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    proto: &'static str,
    mut input: mpsc::Receiver<Input>,
    out: mpsc::Sender<Output>,
) {
    let base64 = proto.contains("base64");
    let v5 = proto == "v5.channel.k8s.io";
    let (mut sink, mut stream) = ws.split();
    tokio::spawn(async move {
        while let Some(i) = input.recv().await {
            let m = match i {
                Input::Stdin(b) => ws_frame(base64, 0, &b),
                Input::CloseStdin if v5 => Message::Binary(vec![255u8, 0].into()),
                Input::CloseStdin => continue,
                Input::Resize(w, h) => ws_frame(
                    base64,
                    4,
                    format!("{{\"Width\":{w},\"Height\":{h}}}").as_bytes(),
                ),
            };
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
            let Some((ch, data)) = ws_channel(base64, m) else {
                continue;
            };
            if data.is_empty() {
                continue; // the "streams are up" message
            }
            let o = match ch {
                1 => Output::Stdout(data.into()),
                2 => Output::Stderr(data.into()),
                3 => Output::Error(data.into()),
                _ => continue,
            };
            if out.send(o).await.is_err() {
                return;
            }
        }
    });
}

/// A port-forward connection over SPDY: each `request` is one forwarded TCP connection.
pub struct SpdyForward {
    conn: spdy::Connection,
    next: u32,
}

impl SpdyForward {
    pub async fn connect(url: &str) -> Result<SpdyForward, Refused> {
        let io = http_upgrade(
            url,
            &[
                ("Connection", "Upgrade"),
                ("Upgrade", "SPDY/3.1"),
                ("X-Stream-Protocol-Version", "portforward.k8s.io"),
            ],
            None,
        )
        .await?;
        Ok(SpdyForward {
            conn: spdy::Connection::new(io, false, None),
            next: 0,
        })
    }

    /// Sends `data` to `port` in the pod and reads until the pod closes: (data, error text).
    pub async fn request(&mut self, port: u16, data: &[u8]) -> (Vec<u8>, String) {
        let (mut error, mut data_s) = self.open_pair(port).await;
        data_s.tx.send(data).await.unwrap();
        let mut got = Vec::new();
        while let Some(b) = data_s.rx.recv().await {
            got.extend_from_slice(&b);
        }
        let mut err = Vec::new();
        while let Some(b) = error.rx.recv().await {
            err.extend_from_slice(&b);
        }
        (got, String::from_utf8_lossy(&err).into_owned())
    }

    /// Opens a forwarded connection and returns its data stream (for throughput tests).
    pub async fn open_data(&mut self, port: u16) -> spdy::Stream {
        self.open_pair(port).await.1
    }

    /// The error stream (this side finished, as client-go does) and the data stream of
    /// one forwarded connection.
    async fn open_pair(&mut self, port: u16) -> (spdy::Stream, spdy::Stream) {
        let id = self.next.to_string();
        self.next += 1;
        let h = |t: &str| {
            vec![
                ("streamtype".to_owned(), t.to_owned()),
                ("port".to_owned(), port.to_string()),
                ("requestid".to_owned(), id.clone()),
            ]
        };
        let error = self.conn.open(h("error")).await.expect("error stream");
        error.tx.finish().await;
        let data = self.conn.open(h("data")).await.expect("data stream");
        (error, data)
    }

    pub async fn close(self) {
        self.conn.close(Duration::ZERO).await;
    }
}

/// A port forward over WebSocket to the ports of the CRI request (in order): sends
/// `data[i]` to port i and reads until the server closes, returning (data, errors) per port.
pub async fn ws_forward(
    url: &str,
    protocol: &'static str,
    ports: &[u16],
    data: &[&[u8]],
    limit: Duration,
) -> Result<Vec<(Vec<u8>, String)>, Refused> {
    let base64 = protocol.contains("base64");
    let ws = ws_connect(url, protocol).await?;
    let (mut sink, mut stream) = ws.split();
    let mut got = vec![(Vec::new(), Vec::new()); ports.len()];
    let mut opened = vec![false; ports.len() * 2];
    let run = async {
        // Each channel opens with its port; then the requests go out.
        while opened.iter().any(|o| !o) {
            let Some(Ok(m)) = stream.next().await else {
                panic!("closed before every channel opened");
            };
            let Some((ch, d)) = ws_channel(base64, m) else {
                continue;
            };
            let i = (ch / 2) as usize;
            assert_eq!(
                d,
                ports[i].to_le_bytes(),
                "channel {ch} opens with its port"
            );
            opened[ch as usize] = true;
        }
        for (i, d) in data.iter().enumerate() {
            sink.send(ws_frame(base64, (2 * i) as u8, d)).await.unwrap();
        }
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
            let Some((ch, d)) = ws_channel(base64, m) else {
                continue;
            };
            let i = (ch / 2) as usize;
            if ch % 2 == 0 {
                got[i].0.extend_from_slice(&d);
            } else {
                got[i].1.extend_from_slice(&d);
            }
        }
    };
    tokio::time::timeout(limit, run)
        .await
        .expect("port forward within its time");
    Ok(got
        .into_iter()
        .map(|(d, e)| (d, String::from_utf8_lossy(&e).into_owned()))
        .collect())
}
