//! Per-registry host configuration in containerd's `hosts.toml` layout: a directory holding
//! `<registry>/hosts.toml` (`docker.io`, `127.0.0.1:5000`, or `_default`). Mirrors are tried
//! in the order they are written, then the registry itself (`server`); each host says what
//! it may be used for (`resolve`, `pull`, `push`), its scheme (plain HTTP with `http://`),
//! a CA to trust, client certificates, whether to skip verification, and extra headers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    Resolve,
    Pull,
    Push,
}

/// How to reach one host; `tls` decides which HTTP client serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// `scheme://host[:port][/path]`, the base that `/v2/...` (or, with override_path, the
    /// repository path) is appended to.
    pub base: String,
    pub capabilities: Vec<Capability>,
    pub tls: Tls,
    pub headers: Vec<(String, String)>,
    /// A mirror rather than the registry itself: asked with `?ns=<registry>`.
    pub mirror: bool,
    /// Unconfigured loopback registries may turn out to speak plain HTTP; configured hosts
    /// get exactly the scheme they were given.
    pub http_fallback: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Tls {
    pub ca: Vec<PathBuf>,
    /// (certificate, key); a single PEM holding both has no separate key.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    pub skip_verify: bool,
}

impl Host {
    pub fn can(&self, c: Capability) -> bool {
        self.capabilities.contains(&c)
    }

    /// The hosts of a registry with no configuration: the registry itself over `scheme`.
    pub fn default_for(api_host: &str, scheme: &str) -> Host {
        Host {
            base: format!("{scheme}://{api_host}/v2"),
            capabilities: vec![Capability::Resolve, Capability::Pull, Capability::Push],
            tls: Tls::default(),
            headers: Vec::new(),
            mirror: false,
            http_fallback: true,
        }
    }
}

/// A hosts.toml: the server's own settings (those of a host entry) plus its mirrors.
#[derive(Deserialize, Default)]
struct File {
    server: Option<String>,
    #[serde(flatten)]
    settings: HostEntry,
    #[serde(default)]
    host: toml::Table,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HostEntry {
    capabilities: Option<Vec<String>>,
    ca: Option<OneOrMany>,
    client: Option<ClientCerts>,
    skip_verify: Option<bool>,
    override_path: Option<bool>,
    #[serde(default)]
    header: BTreeMap<String, OneOrMany>,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn list(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum ClientCerts {
    One(String),
    Pairs(Vec<Vec<String>>),
    List(Vec<String>),
}

fn capabilities(list: Option<Vec<String>>, file: &Path) -> Result<Vec<Capability>> {
    let Some(list) = list else {
        return Ok(vec![Capability::Resolve, Capability::Pull]);
    };
    list.iter()
        .map(|c| match c.as_str() {
            "resolve" => Ok(Capability::Resolve),
            "pull" => Ok(Capability::Pull),
            "push" => Ok(Capability::Push),
            other => Err(Error::InvalidArgument(format!(
                "{}: unknown capability {other:?} (resolve, pull, push)",
                file.display()
            ))),
        })
        .collect()
}

fn resolve_path(dir: &Path, p: String) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        dir.join(p)
    }
}

fn tls(dir: &Path, ca: Option<OneOrMany>, client: Option<ClientCerts>, skip: Option<bool>) -> Tls {
    Tls {
        ca: ca
            .map(OneOrMany::list)
            .unwrap_or_default()
            .into_iter()
            .map(|p| resolve_path(dir, p))
            .collect(),
        client: match client {
            None => Vec::new(),
            Some(ClientCerts::One(p)) => vec![(resolve_path(dir, p), None)],
            Some(ClientCerts::List(v)) => v
                .into_iter()
                .map(|p| (resolve_path(dir, p), None))
                .collect(),
            Some(ClientCerts::Pairs(v)) => v
                .into_iter()
                .filter_map(|pair| {
                    let mut it = pair.into_iter();
                    let cert = it.next()?;
                    Some((
                        resolve_path(dir, cert),
                        it.next().map(|k| resolve_path(dir, k)),
                    ))
                })
                .collect(),
        },
        skip_verify: skip.unwrap_or(false),
    }
}

fn headers(h: BTreeMap<String, OneOrMany>) -> Vec<(String, String)> {
    h.into_iter()
        .flat_map(|(k, v)| v.list().into_iter().map(move |v| (k.clone(), v)))
        .collect()
}

fn base(url: &str, override_path: bool, file: &Path) -> Result<String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{}: host {url:?} needs a scheme (http:// or https://)",
            file.display()
        ))
    })?;
    if scheme != "http" && scheme != "https" {
        return Err(Error::InvalidArgument(format!(
            "{}: host {url:?}: scheme must be http or https",
            file.display()
        )));
    }
    let rest = rest.trim_end_matches('/');
    if override_path || rest.ends_with("/v2") {
        Ok(format!("{scheme}://{rest}"))
    } else {
        Ok(format!("{scheme}://{rest}/v2"))
    }
}

/// The hosts for `registry` from `dir` (mirrors first, then the server), or None when the
/// directory has no file for it (nor a `_default`).
pub fn load(dir: &Path, registry: &str, api_host: &str) -> Result<Option<Vec<Host>>> {
    let mut file = dir.join(registry).join("hosts.toml");
    if !file.exists() {
        file = dir.join("_default").join("hosts.toml");
        if !file.exists() {
            return Ok(None);
        }
    }
    let here = file.parent().expect("file has a directory").to_path_buf();
    let text = std::fs::read_to_string(&file)
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", file.display())))?;
    let f: File = toml::from_str(&text)
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", file.display())))?;
    let mut hosts = Vec::new();
    // Mirrors in the order the file lists them (toml::Table keeps insertion order only with
    // preserve_order, so order by position in the text).
    let mut entries: Vec<(usize, String, toml::Value)> = f
        .host
        .into_iter()
        .map(|(url, v)| {
            (
                text.find(&format!("\"{url}\"")).unwrap_or(usize::MAX),
                url,
                v,
            )
        })
        .collect();
    entries.sort_by_key(|(pos, _, _)| *pos);
    for (_, url, v) in entries {
        let e: HostEntry = v.try_into().map_err(|e| {
            Error::InvalidArgument(format!("{}: host {url:?}: {e}", file.display()))
        })?;
        hosts.push(Host {
            base: base(&url, e.override_path.unwrap_or(false), &file)?,
            capabilities: capabilities(e.capabilities, &file)?,
            tls: tls(&here, e.ca, e.client, e.skip_verify),
            headers: headers(e.header),
            mirror: true,
            http_fallback: false,
        });
    }
    let server = f.server.unwrap_or_else(|| format!("https://{api_host}"));
    let own = f.settings;
    hosts.push(Host {
        base: base(&server, own.override_path.unwrap_or(false), &file)?,
        capabilities: match own.capabilities {
            Some(c) => capabilities(Some(c), &file)?,
            None => vec![Capability::Resolve, Capability::Pull, Capability::Push],
        },
        tls: tls(&here, own.ca, own.client, own.skip_verify),
        headers: headers(own.header),
        mirror: false,
        http_fallback: false,
    });
    Ok(Some(hosts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_in_order_then_server() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("docker.io");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("hosts.toml"),
            r#"
server = "https://registry-1.docker.io"

[host."http://127.0.0.1:5001"]
  capabilities = ["pull", "resolve"]

[host."https://mirror.example/base"]
  capabilities = ["pull"]
  ca = "ca.pem"
  client = [["c.pem", "k.pem"]]
  skip_verify = true
  override_path = true
  [host."https://mirror.example/base".header]
    x-token = "abc"
"#,
        )
        .unwrap();
        let hosts = load(dir.path(), "docker.io", "registry-1.docker.io")
            .unwrap()
            .unwrap();
        assert_eq!(hosts.len(), 3);
        assert_eq!(hosts[0].base, "http://127.0.0.1:5001/v2");
        assert!(hosts[0].mirror && hosts[0].can(Capability::Resolve));
        assert_eq!(hosts[1].base, "https://mirror.example/base");
        assert!(!hosts[1].can(Capability::Resolve));
        assert_eq!(hosts[1].tls.ca, vec![d.join("ca.pem")]);
        assert_eq!(
            hosts[1].tls.client,
            vec![(d.join("c.pem"), Some(d.join("k.pem")))]
        );
        assert!(hosts[1].tls.skip_verify);
        assert_eq!(
            hosts[1].headers,
            vec![("x-token".to_owned(), "abc".to_owned())]
        );
        assert_eq!(hosts[2].base, "https://registry-1.docker.io/v2");
        assert!(!hosts[2].mirror && hosts[2].can(Capability::Push));
        assert!(load(dir.path(), "ghcr.io", "ghcr.io").unwrap().is_none());
    }

    #[test]
    fn bad_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("r.example");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("hosts.toml"), "[host.\"ftp://x\"]\n").unwrap();
        let e = load(dir.path(), "r.example", "r.example").unwrap_err();
        assert!(
            e.to_string().contains("hosts.toml") && e.to_string().contains("ftp://x"),
            "{e}"
        );
        std::fs::write(
            d.join("hosts.toml"),
            "[host.\"https://x\"]\ncapabilities = [\"fly\"]\n",
        )
        .unwrap();
        assert!(load(dir.path(), "r.example", "r.example")
            .unwrap_err()
            .to_string()
            .contains("fly"));
    }
}
