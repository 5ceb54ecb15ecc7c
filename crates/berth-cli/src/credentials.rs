//! Registry credentials kept as Docker keeps them: `$DOCKER_CONFIG/config.json` (else
//! `~/.docker/config.json`), `{"auths": {"HOST": {"auth": base64("user:password")}}}`,
//! written owner-only, replaced whole so that a crash never leaves half a file.

use std::path::PathBuf;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::error::{Error, Result};

pub fn config_path() -> PathBuf {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return PathBuf::from(d).join("config.json");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".docker").join("config.json")
}

fn load() -> Result<Value> {
    let p = config_path();
    match std::fs::read(&p) {
        Ok(b) => {
            serde_json::from_slice(&b).map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({})),
        Err(e) => Err(Error::Io {
            what: format!("read {}", p.display()),
            err: e,
        }),
    }
}

fn save(v: &Value) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let p = config_path();
    let dir = p.parent().unwrap_or(std::path::Path::new("/"));
    std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
    let tmp = p.with_extension(format!("json.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::io(format!("write {}", tmp.display())))?;
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    let r = f.write_all(&body).and_then(|()| f.sync_all());
    if let Err(e) = r.and_then(|()| std::fs::rename(&tmp, &p)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Io {
            what: format!("write {}", p.display()),
            err: e,
        });
    }
    Ok(())
}

/// Docker Hub's credentials are filed under its index address.
fn key(host: &str) -> String {
    match host {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
            "https://index.docker.io/v1/".to_owned()
        }
        h => h.to_owned(),
    }
}

/// The user name and password stored for `host`, if any.
pub fn lookup(host: &str) -> Result<Option<(String, String)>> {
    let v = load()?;
    let Some(entry) = v["auths"].get(key(host)) else {
        return Ok(None);
    };
    if let Some(auth) = entry["auth"].as_str().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth)
            .map_err(|e| {
                Error::Invalid(format!("{}: auth of {host}: {e}", config_path().display()))
            })?;
        let s = String::from_utf8_lossy(&raw).into_owned();
        if let Some((u, p)) = s.split_once(':') {
            return Ok(Some((u.to_owned(), p.to_owned())));
        }
    }
    match (entry["username"].as_str(), entry["password"].as_str()) {
        (Some(u), Some(p)) => Ok(Some((u.to_owned(), p.to_owned()))),
        _ => Ok(None),
    }
}

pub fn store(host: &str, user: &str, password: &str) -> Result<()> {
    let mut v = load()?;
    if !v.is_object() {
        v = json!({});
    }
    if !v["auths"].is_object() {
        v["auths"] = json!({});
    }
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    v["auths"][key(host)] = json!({ "auth": auth });
    save(&v)
}

/// Forgets `host`'s credentials; false when there were none.
pub fn erase(host: &str) -> Result<bool> {
    let mut v = load()?;
    let removed = v["auths"]
        .as_object_mut()
        .map(|a| a.remove(&key(host)).is_some())
        .unwrap_or(false);
    if removed {
        save(&v)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_in_dockers_format() {
        let dir = tempfile::tempdir().unwrap();
        // Only this test reads or sets DOCKER_CONFIG in this test binary.
        std::env::set_var("DOCKER_CONFIG", dir.path());
        assert_eq!(lookup("127.0.0.1:5000").unwrap(), None);
        store("127.0.0.1:5000", "alice", "s3:cret").unwrap();
        assert_eq!(
            lookup("127.0.0.1:5000").unwrap(),
            Some(("alice".into(), "s3:cret".into()))
        );
        let raw: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            raw["auths"]["127.0.0.1:5000"]["auth"],
            "YWxpY2U6czM6Y3JldA=="
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("config.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(erase("127.0.0.1:5000").unwrap());
        assert!(!erase("127.0.0.1:5000").unwrap());
        assert_eq!(lookup("127.0.0.1:5000").unwrap(), None);
    }
}
