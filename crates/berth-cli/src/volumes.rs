//! Named volumes: directories under the command line's data root
//! (`volumes/<name>/_data`, as Docker lays them out), created on first use by `-v NAME:/dir`
//! or by `berth volume create`, removed only when no container uses them; and the `-v` and
//! `--mount` flags turned into the spec's mounts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::containers::Paths;
use crate::error::{Error, Result};

pub const LABEL_VOLUMES: &str = "berth/volumes";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VolumeInfo {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Driver")]
    pub driver: String,
    #[serde(rename = "Mountpoint")]
    pub mountpoint: PathBuf,
    #[serde(rename = "CreatedAt")]
    pub created_at: String,
    #[serde(rename = "Labels", default)]
    pub labels: BTreeMap<String, String>,
}

pub struct Volumes {
    dir: PathBuf,
}

impl Volumes {
    pub fn new(paths: &Paths) -> Volumes {
        Volumes {
            dir: paths.root.join("volumes"),
        }
    }

    fn meta(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("volume.json")
    }

    pub fn get(&self, name: &str) -> Result<VolumeInfo> {
        let b = std::fs::read(self.meta(name))
            .map_err(|_| Error::NoSuchObject(format!("volume {name}")))?;
        serde_json::from_slice(&b).map_err(|e| Error::Invalid(format!("volume {name}: {e}")))
    }

    pub fn list(&self) -> Result<Vec<VolumeInfo>> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if let Some(n) = e.file_name().to_str() {
                    if let Ok(v) = self.get(n) {
                        out.push(v);
                    }
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Makes the volume, or returns it if it exists (as `docker volume create` does).
    pub fn create(&self, name: &str, labels: BTreeMap<String, String>) -> Result<VolumeInfo> {
        if !crate::containers::valid_name(name) || name.len() < 2 {
            return Err(Error::Invalid(format!(
                "invalid volume name {name:?}: at least two of letters, digits, '_', '.' and '-'"
            )));
        }
        if let Ok(v) = self.get(name) {
            return Ok(v);
        }
        let data = self.dir.join(name).join("_data");
        std::fs::create_dir_all(&data).map_err(Error::io(format!("create {}", data.display())))?;
        let info = VolumeInfo {
            name: name.to_owned(),
            driver: "local".into(),
            mountpoint: data,
            created_at: crate::time::rfc3339(std::time::SystemTime::now()),
            labels,
        };
        let meta = self.meta(name);
        let tmp = meta.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&info).unwrap_or_default())
            .and_then(|()| std::fs::rename(&tmp, &meta))
            .map_err(Error::io(format!("write {}", meta.display())))?;
        Ok(info)
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        self.get(name)?;
        let d = self.dir.join(name);
        std::fs::remove_dir_all(&d).map_err(Error::io(format!("remove {}", d.display())))
    }
}

/// The volumes a container's labels say it uses.
pub fn used_by(labels: &std::collections::HashMap<String, String>) -> Vec<String> {
    labels
        .get(LABEL_VOLUMES)
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}

/// A mount asked for with `-v` or `--mount`, before it is resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Wanted {
    Bind {
        source: PathBuf,
        target: String,
        readonly: bool,
        create: bool,
    },
    Volume {
        name: Option<String>,
        target: String,
        readonly: bool,
    },
    Tmpfs {
        target: String,
        size: Option<i64>,
    },
}

fn check_target(t: &str, flag: &str) -> Result<String> {
    if !t.starts_with('/') || t == "/" {
        return Err(Error::Invalid(format!(
            "invalid {flag}: the container path {t:?} must be absolute and not /"
        )));
    }
    Ok(t.to_owned())
}

/// `-v HOST:CTR[:ro]`, `-v NAME:CTR[:ro]`, `-v CTR` (an anonymous volume).
pub fn parse_volume_flag(s: &str) -> Result<Wanted> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, target, opts) = match parts.as_slice() {
        [t] => (None, *t, ""),
        [s, t] => (Some(*s), *t, ""),
        [s, t, o] => (Some(*s), *t, *o),
        _ => {
            return Err(Error::Invalid(format!(
                "invalid volume {s:?}: use SOURCE:TARGET[:ro]"
            )))
        }
    };
    let mut readonly = false;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => readonly = true,
            "rw" | "z" | "Z" => {}
            other => {
                return Err(Error::Invalid(format!(
                    "invalid volume option {other:?} in {s:?}"
                )))
            }
        }
    }
    let target = check_target(target, "volume")?;
    Ok(match src {
        None => Wanted::Volume {
            name: None,
            target,
            readonly,
        },
        Some(p) if p.starts_with('/') => Wanted::Bind {
            source: PathBuf::from(p),
            target,
            readonly,
            create: true,
        },
        Some(p) if p.starts_with('.') => {
            return Err(Error::Invalid(format!(
                "invalid volume {s:?}: a host path must be absolute"
            )))
        }
        Some(n) => Wanted::Volume {
            name: Some(n.to_owned()),
            target,
            readonly,
        },
    })
}

/// `--mount type=bind|volume|tmpfs,source=…,target=…[,readonly][,tmpfs-size=…]`.
pub fn parse_mount_flag(s: &str) -> Result<Wanted> {
    let mut kind = "volume".to_owned();
    let (mut source, mut target, mut readonly, mut size) = (None, None, false, None);
    for kv in s.split(',') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "type" => kind = v.to_owned(),
            "source" | "src" => source = Some(v.to_owned()),
            "target" | "dst" | "destination" => target = Some(v.to_owned()),
            "readonly" | "ro" => readonly = v.is_empty() || v == "true" || v == "1",
            "tmpfs-size" => size = Some(crate::spec::parse_bytes(v)?),
            "bind-propagation" | "consistency" => {}
            other => {
                return Err(Error::Invalid(format!(
                    "unknown --mount key {other:?} in {s:?}"
                )))
            }
        }
    }
    let target = check_target(
        &target.ok_or_else(|| Error::Invalid(format!("--mount {s:?} needs target=")))?,
        "mount",
    )?;
    match kind.as_str() {
        "bind" => {
            let src =
                source.ok_or_else(|| Error::Invalid(format!("--mount {s:?} needs source=")))?;
            if !src.starts_with('/') {
                return Err(Error::Invalid(format!(
                    "--mount source {src:?} must be an absolute path"
                )));
            }
            Ok(Wanted::Bind {
                source: src.into(),
                target,
                readonly,
                create: false,
            })
        }
        "volume" => Ok(Wanted::Volume {
            name: source,
            target,
            readonly,
        }),
        "tmpfs" => Ok(Wanted::Tmpfs { target, size }),
        other => Err(Error::Invalid(format!(
            "unknown mount type {other:?}: bind, volume or tmpfs"
        ))),
    }
}

/// Turns what was asked into spec mounts, making volumes (and `-v` host directories) that
/// do not exist yet; returns the mounts and the names of the volumes used.
pub fn resolve(volumes: &Volumes, wanted: &[Wanted]) -> Result<(Vec<Value>, Vec<String>)> {
    let mut mounts = Vec::new();
    let mut used = Vec::new();
    for w in wanted {
        match w {
            Wanted::Bind {
                source,
                target,
                readonly,
                create,
            } => {
                if !source.exists() {
                    if *create {
                        std::fs::create_dir_all(source)
                            .map_err(Error::io(format!("create {}", source.display())))?;
                    } else {
                        return Err(Error::Invalid(format!(
                            "invalid mount config for type \"bind\": bind source path does not exist: {}",
                            source.display()
                        )));
                    }
                }
                mounts.push(bind(source, target, *readonly));
            }
            Wanted::Volume {
                name,
                target,
                readonly,
            } => {
                let name = name.clone().unwrap_or_else(crate::containers::new_id);
                let v = volumes.create(&name, BTreeMap::new())?;
                mounts.push(bind(&v.mountpoint, target, *readonly));
                used.push(name);
            }
            Wanted::Tmpfs { target, size } => {
                let mut opts = vec!["nosuid".to_owned(), "nodev".to_owned(), "noexec".to_owned()];
                if let Some(s) = size {
                    opts.push(format!("size={s}"));
                }
                mounts.push(json!({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": opts}));
            }
        }
    }
    Ok((mounts, used))
}

fn bind(source: &Path, target: &str, readonly: bool) -> Value {
    json!({
        "destination": target,
        "type": "bind",
        "source": source.display().to_string(),
        "options": ["rbind", "rprivate", if readonly { "ro" } else { "rw" }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_flags_read_as_docker_reads_them() {
        assert_eq!(
            parse_volume_flag("/srv:/data:ro").unwrap(),
            Wanted::Bind {
                source: "/srv".into(),
                target: "/data".into(),
                readonly: true,
                create: true
            }
        );
        assert_eq!(
            parse_volume_flag("cache:/var/cache").unwrap(),
            Wanted::Volume {
                name: Some("cache".into()),
                target: "/var/cache".into(),
                readonly: false
            }
        );
        assert!(matches!(
            parse_volume_flag("/anon").unwrap(),
            Wanted::Volume { name: None, .. }
        ));
        for bad in ["a:b", "./x:/y", "/x:/y:zz", "a:/b:ro:x", "x:/"] {
            assert!(parse_volume_flag(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_mount_flag("type=tmpfs,target=/run,tmpfs-size=1m").unwrap(),
            Wanted::Tmpfs {
                target: "/run".into(),
                size: Some(1 << 20)
            }
        );
        assert!(matches!(
            parse_mount_flag("type=bind,src=/etc,dst=/h,readonly").unwrap(),
            Wanted::Bind {
                readonly: true,
                create: false,
                ..
            }
        ));
        assert!(parse_mount_flag("type=bind,src=rel,dst=/h").is_err());
        assert!(parse_mount_flag("type=nfs,dst=/h").is_err());
    }

    #[test]
    fn volumes_are_made_once_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let v = Volumes::new(&Paths {
            root: d.path().to_owned(),
        });
        let a = v.create("data", BTreeMap::new()).unwrap();
        std::fs::write(a.mountpoint.join("f"), "x").unwrap();
        assert_eq!(v.create("data", BTreeMap::new()).unwrap(), a);
        assert_eq!(v.list().unwrap().len(), 1);
        let (mounts, used) = resolve(&v, &[parse_volume_flag("data:/d:ro").unwrap()]).unwrap();
        assert_eq!(used, ["data"]);
        assert_eq!(mounts[0]["source"], a.mountpoint.display().to_string());
        assert_eq!(mounts[0]["options"][2], "ro");
        let missing = d.path().join("missing");
        let e = resolve(
            &v,
            &[Wanted::Bind {
                source: missing,
                target: "/m".into(),
                readonly: false,
                create: false,
            }],
        )
        .unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        v.remove("data").unwrap();
        assert!(v.get("data").is_err() && v.remove("data").is_err());
    }
}
