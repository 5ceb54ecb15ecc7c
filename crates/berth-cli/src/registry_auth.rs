//! `berth login`'s check that the credentials work, as Docker's daemon makes it: the
//! registry's `/v2/` asked with them (Basic), or its token service when it asks for a
//! Bearer token. The only request the command line makes to anything but berthd.

use std::time::Duration;

use base64::Engine as _;

use crate::error::{Error, Result};

/// `key="value"` pairs of a `WWW-Authenticate` challenge.
fn challenge_params(h: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = h.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_owned();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            match q.split_once('"') {
                Some((v, n)) => (v.to_owned(), n),
                None => (q.to_owned(), ""),
            }
        } else {
            match after.split_once(',') {
                Some((v, n)) => (v.trim().to_owned(), n),
                None => (after.trim().to_owned(), ""),
            }
        };
        out.push((k, v));
        rest = next.trim_start_matches(',').trim();
    }
    out
}

pub async fn check(host: &str, user: &str, password: &str) -> Result<()> {
    let api_host = if host == "docker.io" {
        "registry-1.docker.io"
    } else {
        host
    };
    let base = format!("{}://{api_host}/v2/", crate::transfer::default_scheme(host));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Error::Daemon(format!("make an HTTP client: {e}")))?;
    let unreachable = |e: reqwest::Error| Error::Daemon(format!("login to {host}: {e}"));
    let denied = || {
        Error::Daemon(format!(
            "login to {host} failed: unauthorized: incorrect username or password"
        ))
    };
    let first = http.get(&base).send().await.map_err(unreachable)?;
    if first.status().is_success() {
        // A registry that asks for nothing accepts anyone.
        return Ok(());
    }
    if first.status() != reqwest::StatusCode::UNAUTHORIZED {
        return Err(Error::Daemon(format!(
            "login to {host}: {base} answered {}",
            first.status()
        )));
    }
    let header = first
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Basic")
        .to_owned();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let (scheme, params) = header.split_once(' ').unwrap_or((&header, ""));
    let ok = if scheme.eq_ignore_ascii_case("bearer") {
        let p = challenge_params(params);
        let get = |k: &str| p.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
        let realm = get("realm").ok_or_else(|| {
            Error::Daemon(format!("login to {host}: a Bearer challenge without realm"))
        })?;
        let mut q = vec![("account", user.to_owned())];
        if let Some(s) = get("service") {
            q.push(("service", s));
        }
        http.get(&realm)
            .query(&q)
            .header(reqwest::header::AUTHORIZATION, format!("Basic {basic}"))
            .send()
            .await
            .map_err(unreachable)?
            .status()
            .is_success()
    } else {
        http.get(&base)
            .header(reqwest::header::AUTHORIZATION, format!("Basic {basic}"))
            .send()
            .await
            .map_err(unreachable)?
            .status()
            .is_success()
    };
    if ok {
        Ok(())
    } else {
        Err(denied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_read() {
        let p = challenge_params(
            r#"realm="https://auth.example/token",service="registry.example",scope="x""#,
        );
        assert_eq!(p[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(p[1].1, "registry.example");
        assert_eq!(p.len(), 3);
    }
}
