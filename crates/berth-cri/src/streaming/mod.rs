//! The CRI streaming server: `Exec`, `Attach` and `PortForward` answer with a URL on
//! berthd's own HTTP server carrying a single-use token; the kubelet (or any client)
//! then upgrades a request to that URL to SPDY/3.1 or WebSocket and speaks Kubernetes'
//! remote-command or port-forward protocol over it. What the streams do comes from the
//! CRI request the token stands for, never from the URL.

pub mod portforward;
pub mod remotecommand;
pub mod spdy;
pub mod tokens;
pub mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;

use crate::containers::CriContainers;
use crate::context::CriContext;
use crate::error::{Error, Result};
use tokens::{Tokens, TOKEN_TTL};

#[derive(Debug, Clone)]
pub struct StreamingConfig {
    /// Address to listen on: loopback by default, the node's address where the API
    /// server's kubelet proxy must reach it from elsewhere.
    pub address: String,
    /// 0 picks a free port at start.
    pub port: u16,
    /// Serve HTTPS with this certificate chain and key (PEM).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// A connection with nothing read or written for this long is closed (as the
    /// kubelet's streaming server does; its clients ping every 5 s).
    pub idle_timeout: std::time::Duration,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: "127.0.0.1".into(),
            port: 0,
            tls_cert: None,
            tls_key: None,
            idle_timeout: std::time::Duration::from_secs(4 * 3600),
        }
    }
}

/// When a connection last read or wrote, shared by its reader and writer.
#[derive(Clone)]
pub struct Activity {
    base: std::time::Instant,
    last_ms: Arc<std::sync::atomic::AtomicU64>,
    timeout: std::time::Duration,
}

impl Activity {
    pub fn new(timeout: std::time::Duration) -> Self {
        Activity {
            base: std::time::Instant::now(),
            last_ms: Default::default(),
            timeout,
        }
    }

    pub fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Resolves once nothing happened for the timeout.
    pub async fn expired(&self) {
        loop {
            let last = std::time::Duration::from_millis(
                self.last_ms.load(std::sync::atomic::Ordering::Relaxed),
            );
            let idle = self.base.elapsed().saturating_sub(last);
            if idle >= self.timeout {
                return;
            }
            tokio::time::sleep(self.timeout - idle).await;
        }
    }
}

/// What a token stands for.
#[derive(Debug, Clone)]
pub enum StreamRequest {
    Exec(cri::ExecRequest),
    Attach(cri::AttachRequest),
    PortForward(cri::PortForwardRequest),
}

impl StreamRequest {
    fn path(&self) -> &'static str {
        match self {
            StreamRequest::Exec(_) => "exec",
            StreamRequest::Attach(_) => "attach",
            StreamRequest::PortForward(_) => "portforward",
        }
    }
}

pub struct Streaming {
    base: String,
    idle_timeout: std::time::Duration,
    addr: SocketAddr,
    tokens: Tokens<StreamRequest>,
    /// Upgraded connections being served.
    active: std::sync::atomic::AtomicUsize,
    pub(crate) containers: Arc<CriContainers>,
    pub(crate) ctx: Arc<CriContext>,
}

impl Streaming {
    /// Binds the listener and serves it from then on.
    pub async fn start(
        cfg: &StreamingConfig,
        ctx: Arc<CriContext>,
        containers: Arc<CriContainers>,
    ) -> Result<Arc<Streaming>> {
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(c), Some(k)) => {
                // Reads the PEM files: off the async threads.
                let (c, k) = (c.clone(), k.clone());
                Some(crate::context::blocking(move || tls_acceptor(&c, &k)).await?)
            }
            (None, None) => None,
            _ => {
                return Err(Error::InvalidArgument(
                    "streaming TLS needs both a certificate and a key".into(),
                ))
            }
        };
        let host = cfg.address.trim_start_matches('[').trim_end_matches(']');
        let bind = format!(
            "{}:{}",
            if host.contains(':') {
                format!("[{host}]")
            } else {
                host.to_owned()
            },
            cfg.port
        );
        let listener = tokio::net::TcpListener::bind(&bind).await.map_err(|e| {
            Error::InvalidArgument(format!("streaming server cannot listen on {bind}: {e}"))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Internal(format!("streaming listener address: {e}")))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let s = Arc::new(Streaming {
            base: format!("{scheme}://{addr}"),
            idle_timeout: cfg.idle_timeout,
            addr,
            tokens: Tokens::new(TOKEN_TTL),
            active: Default::default(),
            containers,
            ctx,
        });
        let server = s.clone();
        tokio::spawn(async move {
            loop {
                let (conn, _) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("streaming server accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Small frames (replies, statuses, keystrokes) go out at once.
                let _ = conn.set_nodelay(true);
                let (server, tls) = (server.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => match acceptor.accept(conn).await {
                            Ok(c) => server.serve_connection(c).await,
                            Err(e) => tracing::debug!("streaming TLS handshake: {e}"),
                        },
                        None => server.serve_connection(conn).await,
                    }
                });
            }
        });
        tracing::info!(url = %s.base, "CRI streaming server listening");
        Ok(s)
    }

    pub(crate) fn activity(&self) -> Activity {
        Activity::new(self.idle_timeout)
    }

    pub fn address(&self) -> SocketAddr {
        self.addr
    }

    /// Outstanding tokens (for tests and status).
    pub fn pending(&self) -> usize {
        self.tokens.len()
    }

    /// What the streaming server holds now, for CRI Status (verbose): its URL, tokens
    /// waiting for their connection, connections being served, and the daemon's live
    /// async tasks (a connection that ended must leave none behind).
    pub fn info(&self) -> serde_json::Value {
        serde_json::json!({
            "url": self.base,
            "pendingTokens": self.pending(),
            "activeSessions": self.active.load(std::sync::atomic::Ordering::Relaxed),
            "runtimeTasks": tokio::runtime::Handle::current().metrics().num_alive_tasks(),
        })
    }

    /// Counts a served connection until the returned guard is dropped.
    pub(crate) fn session(self: &Arc<Self>) -> ActiveSession {
        self.active
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ActiveSession(self.clone())
    }

    fn url(&self, r: StreamRequest) -> Result<String> {
        let path = r.path();
        let token = self.tokens.insert(r)?;
        Ok(format!("{}/{path}/{token}", self.base))
    }

    /// CRI Exec: checks the request and the container, returns the URL to stream it.
    pub async fn exec(&self, req: cri::ExecRequest) -> Result<String> {
        check_stdio(
            &req.container_id,
            req.tty,
            req.stdin,
            req.stdout,
            req.stderr,
        )?;
        if req.cmd.is_empty() {
            return Err(Error::InvalidArgument("exec needs a command".into()));
        }
        self.running(&req.container_id).await?;
        self.url(StreamRequest::Exec(req))
    }

    pub async fn attach(&self, req: cri::AttachRequest) -> Result<String> {
        check_stdio(
            &req.container_id,
            req.tty,
            req.stdin,
            req.stdout,
            req.stderr,
        )?;
        self.running(&req.container_id).await?;
        self.url(StreamRequest::Attach(req))
    }

    pub async fn port_forward(&self, req: cri::PortForwardRequest) -> Result<String> {
        if req.pod_sandbox_id.is_empty() {
            return Err(Error::InvalidArgument(
                "missing required pod_sandbox_id".into(),
            ));
        }
        if let Some(p) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(Error::InvalidArgument(format!("invalid port {p}")));
        }
        portforward::ready_sandbox(&self.ctx, &req.pod_sandbox_id).await?;
        self.url(StreamRequest::PortForward(req))
    }

    async fn running(&self, id: &str) -> Result<()> {
        crate::exec::check_running(&self.containers.get(id).await?)
    }

    async fn serve_connection<T>(self: Arc<Self>, io: T)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let svc = hyper::service::service_fn(move |req| {
            let s = self.clone();
            async move { Ok::<_, std::convert::Infallible>(s.handle(req)) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades()
            .await;
    }

    fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::POST {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        let mut parts = req.uri().path().trim_start_matches('/').splitn(2, '/');
        let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if token.is_empty() || token.contains('/') {
            return not_found();
        }
        // Taken out on first use, fresh or not, the right kind or not.
        let Some(r) = self.tokens.take(token) else {
            return not_found();
        };
        if r.path() != kind {
            return not_found();
        }
        if ws::is_websocket(&req) {
            ws::upgrade(self, req, r)
        } else {
            spdy_upgrade(self, req, r)
        }
    }
}

pub(crate) struct ActiveSession(Arc<Streaming>);

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.0
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn check_stdio(id: &str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<()> {
    if id.is_empty() {
        return Err(Error::InvalidArgument(
            "missing required container_id".into(),
        ));
    }
    if tty && stderr {
        return Err(Error::InvalidArgument(
            "tty and stderr cannot both be true".into(),
        ));
    }
    if !stdin && !stdout && !stderr {
        return Err(Error::InvalidArgument(
            "one of stdin, stdout, or stderr must be set".into(),
        ));
    }
    Ok(())
}

pub(crate) fn plain(code: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn not_found() -> Response<Full<Bytes>> {
    plain(StatusCode::NOT_FOUND, "404 page not found\n")
}

/// Every value of a (possibly repeated, comma-separated) header, in order.
pub(crate) fn header_values(req: &Request<Incoming>, name: &str) -> Vec<String> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

fn header_has(req: &Request<Incoming>, name: hyper::header::HeaderName, want: &str) -> bool {
    header_values(req, name.as_str())
        .iter()
        .any(|v| v.to_ascii_lowercase().contains(want))
}

/// Remote-command protocols over SPDY, best first; v5 is v4 on SPDY.
const SPDY_REMOTE: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
const SPDY_PORT_FORWARD: &[&str] = &["portforward.k8s.io"];

fn spdy_upgrade(
    s: Arc<Streaming>,
    req: Request<Incoming>,
    r: StreamRequest,
) -> Response<Full<Bytes>> {
    if !header_has(&req, CONNECTION, "upgrade") || !header_has(&req, UPGRADE, "spdy/3.1") {
        return plain(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request (want Connection: Upgrade, Upgrade: SPDY/3.1 or websocket)\n",
        );
    }
    let offered = header_values(&req, "x-stream-protocol-version");
    if offered.is_empty() {
        return plain(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: X-Stream-Protocol-Version is required\n",
        );
    }
    let supported = match r {
        StreamRequest::PortForward(_) => SPDY_PORT_FORWARD,
        _ => SPDY_REMOTE,
    };
    let Some(chosen) = offered
        .iter()
        .find(|p| supported.contains(&p.as_str()))
        .cloned()
    else {
        let mut resp = plain(
            StatusCode::FORBIDDEN,
            &format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}\n"
            ),
        );
        for p in supported {
            resp.headers_mut().append(
                "x-accepted-stream-protocol-versions",
                HeaderValue::from_static(p),
            );
        }
        return resp;
    };
    let version = remotecommand::version_of(&chosen);
    on_upgrade(&s.clone(), req, move |io| async move {
        let conn = spdy::Connection::new(io, true, Some(Activity::new(s.idle_timeout)));
        match r {
            StreamRequest::PortForward(pf) => portforward::serve_spdy(s, conn, pf).await,
            r => remotecommand::serve_spdy(s, conn, version, r).await,
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if let Ok(v) = HeaderValue::from_str(&chosen) {
        h.insert("x-stream-protocol-version", v);
    }
    resp
}

/// Serves the connection `req` upgrades (after the 101 went out) with `serve`, counted
/// as an open session while it lasts.
pub(crate) fn on_upgrade<F, Fut>(s: &Arc<Streaming>, req: Request<Incoming>, serve: F)
where
    F: FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let upgrade = hyper::upgrade::on(req);
    let active = s.session();
    tokio::spawn(async move {
        let _active = active;
        match upgrade.await {
            Ok(io) => serve(TokioIo::new(io)).await,
            Err(e) => tracing::debug!("streaming upgrade: {e}"),
        }
    });
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect())
        .map_err(|e| {
            Error::InvalidArgument(format!("streaming TLS certificate {}: {e}", cert.display()))
        })?;
    if certs.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "streaming TLS certificate {} holds no certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::InvalidArgument(format!("streaming TLS key {}: {e}", key.display())))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| Error::InvalidArgument(format!("streaming TLS configuration: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
