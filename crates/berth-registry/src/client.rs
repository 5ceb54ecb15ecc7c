//! The HTTP side of the distribution spec: one client per daemon, shared by every pull. It
//! picks the scheme (HTTPS, or plain HTTP for hosts configured so and for loopback hosts
//! that do not speak TLS), answers authentication challenges (basic, bearer tokens cached
//! per host and scope), and retries 5xx, 429 and connection failures with backoff, bounded.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_core::Digest;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, RANGE, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};

use crate::auth::{parse_challenge, Challenge, Credentials};
use crate::error::{Error, Result};
use crate::hosts::{self, Capability, Host, Tls};
use crate::reference::Reference;

/// Manifest media types asked for, most wanted first.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
/// Manifests and indexes larger than this are refused.
pub const MAX_MANIFEST: usize = 4 << 20;

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Credentials per registry host (as in references: `docker.io`, `127.0.0.1:5000`).
    pub credentials: HashMap<String, Credentials>,
    /// Hosts spoken to over plain HTTP.
    pub plain_http: HashSet<String>,
    /// Attempts per request beyond the first, for 5xx, 429 and connection failures.
    pub retries: u32,
    /// First backoff; doubles with each retry.
    pub backoff: Duration,
    /// A certs.d-style directory of `<registry>/hosts.toml` files.
    pub hosts_dir: Option<PathBuf>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            credentials: HashMap::new(),
            plain_http: HashSet::new(),
            retries: 4,
            backoff: Duration::from_millis(200),
            hosts_dir: None,
        }
    }
}

/// Where a request goes.
#[derive(Debug, Clone, Copy)]
pub enum Endpoint<'a> {
    /// `/v2/<repository>/<path>`
    Repo(&'a str),
    /// A URL the registry returned in a Location header.
    Location(&'a str),
}

/// What a request runs with: the registry, its repository, and per-request overrides.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub reference: &'a Reference,
    pub credentials: Option<&'a Credentials>,
    pub plain_http: bool,
    /// `pull` or `pull,push`.
    pub actions: &'static str,
    /// A hosts.toml directory the client named for this request.
    pub hosts_dir: Option<&'a Path>,
    /// The hosts to try, read from hosts.toml by `prepare` (None: the registry itself).
    pub hosts: Option<Arc<Vec<Host>>>,
}

pub struct RegistryClient {
    /// Made on first use: building it loads the TLS roots, which an idle daemon (or one
    /// that only speaks to plain-HTTP registries) never needs in memory.
    http: Mutex<Option<reqwest::Client>>,
    cfg: RegistryConfig,
    /// Authorization header values per (host, scope).
    auth: Mutex<HashMap<(String, String), String>>,
    /// Loopback hosts found not to speak TLS.
    http_fallback: Mutex<HashSet<String>>,
    /// HTTP clients for hosts with their own TLS settings.
    tls_clients: Mutex<HashMap<Tls, reqwest::Client>>,
}

fn is_loopback(host: &str) -> bool {
    let h = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let h = h.trim_start_matches('[').trim_end_matches(']');
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl RegistryClient {
    pub fn new(cfg: RegistryConfig) -> Result<Self> {
        Ok(RegistryClient {
            http: Mutex::new(None),
            cfg,
            auth: Mutex::new(HashMap::new()),
            http_fallback: Mutex::new(HashSet::new()),
            tls_clients: Mutex::new(HashMap::new()),
        })
    }

    fn scheme(&self, t: &Target<'_>) -> &'static str {
        let host = t.reference.api_host();
        if t.plain_http
            || self.cfg.plain_http.contains(host)
            || self.cfg.plain_http.contains(&t.reference.registry)
            || lock(&self.http_fallback).contains(host)
        {
            "http"
        } else {
            "https"
        }
    }

    fn credentials<'a>(&'a self, t: &'a Target<'_>) -> Option<&'a Credentials> {
        t.credentials
            .or_else(|| self.cfg.credentials.get(&t.reference.registry))
    }

    fn scope(t: &Target<'_>) -> String {
        format!("repository:{}:{}", t.reference.repository, t.actions)
    }

    /// Sends `method` to `/v2/<repo>/<path>`, authenticating and retrying as needed.
    pub async fn send(
        &self,
        t: &Target<'_>,
        method: Method,
        path: &str,
        headers: HeaderMap,
    ) -> Result<Response> {
        self.send_body(t, method, Endpoint::Repo(path), headers, None)
            .await
    }

    /// Reads the target's hosts.toml (when the registry has one) and builds the HTTP
    /// clients its TLS settings need, on a blocking thread: files are read once per
    /// pull or push, never on the reactor.
    pub async fn prepare(self: &Arc<Self>, t: &mut Target<'_>) -> Result<()> {
        let Some(dir) = t.hosts_dir.or(self.cfg.hosts_dir.as_deref()) else {
            return Ok(());
        };
        let (me, dir) = (self.clone(), dir.to_path_buf());
        let (registry, api_host) = (
            t.reference.registry.clone(),
            t.reference.api_host().to_owned(),
        );
        let hosts = tokio::task::spawn_blocking(move || -> Result<Option<Vec<Host>>> {
            let hosts = hosts::load(&dir, &registry, &api_host)?;
            for h in hosts.iter().flatten() {
                me.build_http(&h.tls)?;
            }
            Ok(hosts)
        })
        .await
        .map_err(|e| Error::Unavailable(format!("worker failed: {e}")))??;
        t.hosts = hosts.map(Arc::new);
        Ok(())
    }

    /// The hosts to try for a target: from hosts.toml when there is one for the registry,
    /// else the registry itself.
    fn hosts(&self, t: &Target<'_>) -> Vec<Host> {
        match &t.hosts {
            Some(h) => h.to_vec(),
            None => vec![Host::default_for(t.reference.api_host(), self.scheme(t))],
        }
    }

    /// The client for hosts with default TLS settings.
    fn default_http(&self) -> Result<reqwest::Client> {
        let mut g = lock(&self.http);
        if let Some(c) = &*g {
            return Ok(c.clone());
        }
        let c = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .pool_max_idle_per_host(16)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::InvalidArgument(format!("http client: {e}")))?;
        *g = Some(c.clone());
        Ok(c)
    }

    /// The HTTP client for a host's TLS settings, as `prepare` built it.
    fn http_for(&self, tls: &Tls) -> Result<reqwest::Client> {
        if *tls == Tls::default() {
            return self.default_http();
        }
        lock(&self.tls_clients).get(tls).cloned().ok_or_else(|| {
            Error::InvalidArgument(format!("no HTTP client prepared for TLS settings {tls:?}"))
        })
    }

    /// Builds (once per distinct setting) the HTTP client for a host's TLS settings,
    /// reading its CA and certificate files. Blocking.
    fn build_http(&self, tls: &Tls) -> Result<reqwest::Client> {
        if *tls == Tls::default() {
            return self.default_http();
        }
        if let Some(c) = lock(&self.tls_clients).get(tls) {
            return Ok(c.clone());
        }
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| Error::InvalidArgument(format!("{}: {e}", p.display())))
        };
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(tls.skip_verify);
        for ca in &tls.ca {
            let cert = reqwest::Certificate::from_pem(&read(ca)?)
                .map_err(|e| Error::InvalidArgument(format!("CA {}: {e}", ca.display())))?;
            b = b.add_root_certificate(cert);
        }
        if let Some((cert, key)) = tls.client.first() {
            let mut pem = read(cert)?;
            if let Some(k) = key {
                pem.push(b'\n');
                pem.extend(read(k)?);
            }
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                Error::InvalidArgument(format!("client certificate {}: {e}", cert.display()))
            })?;
            b = b.identity(id);
        }
        let c = b
            .build()
            .map_err(|e| Error::InvalidArgument(format!("http client: {e}")))?;
        lock(&self.tls_clients).insert(tls.clone(), c.clone());
        Ok(c)
    }

    /// The URL of an endpoint on a host: a repository path, or a Location the host handed
    /// out (absolute, or relative to the host).
    fn url(t: &Target<'_>, host: &Host, e: &Endpoint<'_>) -> String {
        match e {
            Endpoint::Repo(path) => {
                let url = format!("{}/{}/{path}", host.base, t.reference.repository);
                if host.mirror {
                    let sep = if url.contains('?') { '&' } else { '?' };
                    format!("{url}{sep}ns={}", t.reference.registry)
                } else {
                    url
                }
            }
            Endpoint::Location(l) if l.starts_with("http://") || l.starts_with("https://") => {
                (*l).to_owned()
            }
            Endpoint::Location(l) => format!("{}{l}", origin(&host.base)),
        }
    }

    /// Like `send`, with a body (kept so that a retry can send it again). Hosts are tried in
    /// order among those able to serve the request; a host that fails or lacks the object
    /// hands over to the next.
    pub async fn send_body(
        &self,
        t: &Target<'_>,
        method: Method,
        endpoint: Endpoint<'_>,
        headers: HeaderMap,
        body: Option<bytes::Bytes>,
    ) -> Result<Response> {
        let need = if t.actions.contains("push") {
            Capability::Push
        } else {
            match endpoint {
                Endpoint::Repo(p) if p.starts_with("manifests/") && !p.contains("sha256:") => {
                    Capability::Resolve
                }
                _ => Capability::Pull,
            }
        };
        let hosts: Vec<Host> = self.hosts(t).into_iter().filter(|h| h.can(need)).collect();
        if hosts.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "registry {}: no configured host may be used to {need:?}",
                t.reference.registry
            )));
        }
        let last = hosts.len() - 1;
        for (i, host) in hosts.iter().enumerate() {
            let r = self
                .send_to(t, host, &method, &endpoint, &headers, &body)
                .await;
            match r {
                Ok(resp) if resp.status() == StatusCode::NOT_FOUND && i < last => {
                    tracing::debug!(host = %host.base, "not on this host; trying the next");
                }
                Err(Error::Unavailable(e)) if i < last => {
                    tracing::debug!(host = %host.base, "host failed ({e}); trying the next");
                }
                r => return r,
            }
        }
        unreachable!("the last host always returns")
    }

    async fn send_to(
        &self,
        t: &Target<'_>,
        host: &Host,
        method: &Method,
        endpoint: &Endpoint<'_>,
        headers: &HeaderMap,
        body: &Option<bytes::Bytes>,
    ) -> Result<Response> {
        let api_host = t.reference.api_host().to_owned();
        let registry = t.reference.registry.clone();
        let key = (origin(&host.base), Self::scope(t));
        let http = self.http_for(&host.tls)?;
        let mut host = host.clone();
        let mut answered_challenge = false;
        let mut attempt = 0;
        loop {
            let url = Self::url(t, &host, endpoint);
            let mut rb = http.request(method.clone(), &url).headers(headers.clone());
            for (k, v) in &host.headers {
                rb = rb.header(k.as_str(), v.as_str());
            }
            if let Some(b) = body {
                rb = rb.body(b.clone());
            }
            if let Some(a) = lock(&self.auth).get(&key) {
                rb = rb.header(AUTHORIZATION, a.clone());
            }
            let failure = match rb.send().await {
                Err(e) => {
                    if host.base.starts_with("https://")
                        && host.http_fallback
                        && is_loopback(&api_host)
                        && (e.is_connect() || e.is_request())
                    {
                        tracing::debug!(host = %api_host, "loopback registry does not speak TLS; using plain HTTP");
                        lock(&self.http_fallback).insert(api_host.clone());
                        host.base = host.base.replacen("https://", "http://", 1);
                        continue;
                    }
                    format!("{method} {url}: {}", error_chain(&e))
                }
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED => {
                    if answered_challenge {
                        return Err(Error::Unauthenticated {
                            registry,
                            reason: format!("credentials refused for {}", t.reference.repository),
                        });
                    }
                    answered_challenge = true;
                    let value = self.answer_challenge(t, &resp).await?;
                    lock(&self.auth).insert(key.clone(), value);
                    continue;
                }
                Ok(resp)
                    if resp.status() == StatusCode::TOO_MANY_REQUESTS
                        || resp.status().is_server_error() =>
                {
                    format!("{method} {url}: {}", resp.status())
                }
                Ok(resp) => return Ok(resp),
            };
            if attempt >= self.cfg.retries {
                return Err(Error::Unavailable(format!(
                    "registry {registry}: {failure} (after {} attempts)",
                    attempt + 1
                )));
            }
            let wait = self.cfg.backoff * 2u32.saturating_pow(attempt);
            tracing::debug!(%failure, ?wait, "retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn answer_challenge(&self, t: &Target<'_>, resp: &Response) -> Result<String> {
        let registry = &t.reference.registry;
        let challenge = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(parse_challenge)
            .next()
            .ok_or_else(|| Error::Unauthenticated {
                registry: registry.clone(),
                reason: "401 without a challenge berth understands".into(),
            })?;
        let creds = self.credentials(t);
        match challenge {
            Challenge::Basic => {
                creds
                    .map(Credentials::basic_header)
                    .ok_or_else(|| Error::Unauthenticated {
                        registry: registry.clone(),
                        reason: "basic authentication required and no credentials given".into(),
                    })
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let scope = scope.unwrap_or_else(|| Self::scope(t));
                let mut q: Vec<(&str, String)> = vec![("scope", scope)];
                if let Some(s) = service {
                    q.push(("service", s));
                }
                let mut rb = self.default_http()?.get(&realm).query(&q);
                if let Some(c) = creds {
                    rb = rb.header(AUTHORIZATION, c.basic_header());
                }
                let r = rb.send().await.map_err(|e| {
                    Error::Unavailable(format!(
                        "registry {registry}: token from {realm}: {}",
                        error_chain(&e)
                    ))
                })?;
                if r.status() == StatusCode::UNAUTHORIZED || r.status() == StatusCode::FORBIDDEN {
                    return Err(Error::Unauthenticated {
                        registry: registry.clone(),
                        reason: format!("token service {realm} refused the credentials"),
                    });
                }
                if !r.status().is_success() {
                    return Err(Error::Unavailable(format!(
                        "registry {registry}: token from {realm}: {}",
                        r.status()
                    )));
                }
                #[derive(serde::Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let tok: Token = r.json().await.map_err(|e| {
                    Error::Unavailable(format!("registry {registry}: token from {realm}: {e}"))
                })?;
                let tok = tok
                    .token
                    .or(tok.access_token)
                    .ok_or_else(|| Error::Unauthenticated {
                        registry: registry.clone(),
                        reason: format!("token service {realm} returned no token"),
                    })?;
                Ok(format!("Bearer {tok}"))
            }
        }
    }

    /// Fetches the manifest or index a reference names. Returns its media type, digest and
    /// bytes; a pinned digest is checked against the bytes.
    pub async fn manifest(
        &self,
        t: &Target<'_>,
        object: &str,
    ) -> Result<(String, Digest, Vec<u8>)> {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        let resp = self
            .send(t, Method::GET, &format!("manifests/{object}"), h)
            .await?;
        let what = format!("manifest {}:{object}", t.reference.name());
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(Error::NotFound(what));
        }
        if !resp.status().is_success() {
            return Err(Error::Unavailable(format!("{what}: {}", resp.status())));
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_owned());
        if resp
            .content_length()
            .is_some_and(|l| l as usize > MAX_MANIFEST)
        {
            return Err(Error::InvalidArgument(format!(
                "{what} is larger than {MAX_MANIFEST} bytes"
            )));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| Error::Unavailable(format!("{what}: {}", error_chain(&e))))?;
        if body.len() > MAX_MANIFEST {
            return Err(Error::InvalidArgument(format!(
                "{what} is larger than {MAX_MANIFEST} bytes"
            )));
        }
        let digest = Digest::of(&body);
        if let Ok(want) = Digest::parse(object) {
            if want != digest {
                return Err(Error::Mismatch(format!(
                    "{what}: the registry sent content with digest {digest}"
                )));
            }
        }
        #[derive(serde::Deserialize)]
        struct Head {
            #[serde(rename = "mediaType")]
            media_type: Option<String>,
        }
        let declared = serde_json::from_slice::<Head>(&body)
            .map_err(|e| Error::InvalidArgument(format!("{what} is not JSON: {e}")))?
            .media_type;
        let media_type = declared
            .or(content_type)
            .filter(|m| !m.is_empty() && m != "application/json")
            .ok_or_else(|| Error::InvalidArgument(format!("{what} has no media type")))?;
        Ok((media_type, digest, body.to_vec()))
    }

    /// Starts fetching a blob from `offset` (a Range request when non-zero). Returns the
    /// response and whether it starts at `offset` (a registry may ignore the range).
    pub async fn blob(
        &self,
        t: &Target<'_>,
        digest: &Digest,
        offset: u64,
    ) -> Result<(Response, bool)> {
        let mut h = HeaderMap::new();
        if offset > 0 {
            h.insert(
                RANGE,
                HeaderValue::try_from(format!("bytes={offset}-"))
                    .map_err(|e| Error::InvalidArgument(format!("range from {offset}: {e}")))?,
            );
        }
        let resp = self
            .send(t, Method::GET, &format!("blobs/{digest}"), h)
            .await?;
        let what = format!("blob {digest} of {}", t.reference.name());
        match resp.status() {
            StatusCode::NOT_FOUND => Err(Error::NotFound(what)),
            StatusCode::PARTIAL_CONTENT if offset > 0 => Ok((resp, true)),
            StatusCode::RANGE_NOT_SATISFIABLE => Err(Error::Mismatch(format!(
                "{what}: the registry has fewer than {offset} bytes"
            ))),
            s if s.is_success() => Ok((resp, offset == 0)),
            s => Err(Error::Unavailable(format!("{what}: {s}"))),
        }
    }
}

/// `scheme://authority` of a URL.
fn origin(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            format!("{scheme}://{}", rest.split('/').next().unwrap_or(rest))
        }
        None => url.to_owned(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// reqwest's error with its causes, which carry the useful part (connection refused...).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1:5000",
            "localhost",
            "localhost:80",
            "[::1]:5000",
            "127.0.0.2",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["registry-1.docker.io", "10.0.0.1:5000", "ghcr.io"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
