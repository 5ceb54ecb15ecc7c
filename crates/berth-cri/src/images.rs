//! Kubernetes' images over berth's image store in `k8s.io`: an image is known by its id
//! (the config digest), its tags (`docker.io/library/busybox:1.36`) and its repo digests
//! (`docker.io/library/busybox@sha256:…`), each an image record pointing at the same
//! target, as containerd's CRI keeps them. Pulls go through berth's puller with the
//! kubelet's credentials and unpack into the snapshotter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_core::images::progress::NoProgress;
use berth_core::images::resolve::{self, BlobRef, ResolvedImage};
use berth_core::images::{unpack, Image, Platform, Reference};
use berth_core::metadata::{Labels, Timestamp};
use berth_registry::auth::Credentials;
use berth_registry::pull::PullRequest;
use k8s_cri::v1 as cri;

use crate::context::{blocking, CriContext};
use crate::error::{Error, Result};
use crate::store::namespace;

const MANAGED: &str = "io.cri-containerd.image";

/// One image as Kubernetes sees it.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// The names of the records that make it up.
    pub records: Vec<String>,
    pub size: u64,
    pub resolved: ResolvedImage,
}

impl ImageInfo {
    pub fn to_cri(&self) -> cri::Image {
        let user = self
            .resolved
            .image_config
            .config()
            .as_ref()
            .and_then(|c| c.user().clone())
            .unwrap_or_default();
        let user = user.split(':').next().unwrap_or_default().to_owned();
        let (uid, username) = match user.parse::<i64>() {
            Ok(u) => (Some(cri::Int64Value { value: u }), String::new()),
            Err(_) => (None, user),
        };
        cri::Image {
            id: self.id.clone(),
            repo_tags: self.repo_tags.clone(),
            repo_digests: self.repo_digests.clone(),
            size: self.size,
            uid,
            username,
            spec: Some(cri::ImageSpec {
                image: self.id.clone(),
                ..Default::default()
            }),
            pinned: false,
        }
    }
}

/// What is known of an image target, which never changes for its digest.
#[derive(Clone)]
struct Known {
    resolved: ResolvedImage,
    size: u64,
}

pub struct CriImages {
    ctx: Arc<CriContext>,
    known: Mutex<HashMap<String, Known>>,
    fs_usage: Mutex<Option<(Instant, berth_core::snapshot::Usage)>>,
}

/// The record name a CRI reference means: a normalised tag or digest reference, or an id.
pub fn record_name(image: &str) -> Result<String> {
    if image.starts_with("sha256:") && image.len() == 71 {
        return Ok(image.to_owned());
    }
    Ok(Reference::parse(image)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?
        .to_string())
}

impl CriImages {
    pub fn new(ctx: Arc<CriContext>) -> Arc<Self> {
        Arc::new(CriImages {
            ctx,
            known: Mutex::new(HashMap::new()),
            fs_usage: Mutex::new(None),
        })
    }

    fn known(&self, target: &BlobRef) -> Result<Known> {
        let key = target.digest.to_string();
        if let Some(k) = self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(k.clone());
        }
        let ns = namespace();
        let resolved =
            resolve::resolve(&self.ctx.images.content, &ns, target, &Platform::default())?;
        let size = [&resolved.manifest, &resolved.config]
            .iter()
            .map(|b| b.size)
            .chain(resolved.layers.iter().map(|l| l.blob.size))
            .sum::<i64>()
            .max(0) as u64;
        let k = Known { resolved, size };
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, k.clone());
        Ok(k)
    }

    /// Every image, grouped by id. Blocking.
    pub fn all(&self) -> Result<Vec<ImageInfo>> {
        let ns = namespace();
        let records = self
            .ctx
            .images
            .images
            .list(&ns, &berth_core::filters::Filter::default())?;
        let mut by_id: Vec<ImageInfo> = Vec::new();
        for r in records {
            let Ok(target) = BlobRef::of(&r.target, &format_args!("image {:?}", r.name)) else {
                continue;
            };
            let Ok(k) = self.known(&target) else {
                continue; // not complete for this platform: not an image Kubernetes can run
            };
            let id = k.resolved.config.digest.to_string();
            let info = match by_id.iter_mut().find(|i| i.id == id) {
                Some(i) => i,
                None => {
                    by_id.push(ImageInfo {
                        id: id.clone(),
                        repo_tags: Vec::new(),
                        repo_digests: Vec::new(),
                        records: Vec::new(),
                        size: k.size,
                        resolved: k.resolved.clone(),
                    });
                    by_id.last_mut().expect("just pushed")
                }
            };
            info.records.push(r.name.clone());
            if r.name == id {
                continue;
            }
            if r.name.contains('@') {
                info.repo_digests.push(r.name.clone());
            } else {
                info.repo_tags.push(r.name.clone());
            }
        }
        for i in &mut by_id {
            i.repo_tags.sort();
            i.repo_digests.sort();
        }
        Ok(by_id)
    }

    /// The image a reference or id names, if the store has it. Blocking.
    pub fn find(&self, image: &str) -> Result<Option<ImageInfo>> {
        if image.is_empty() {
            return Err(Error::InvalidArgument("no image named".into()));
        }
        let name = record_name(image)?;
        Ok(self
            .all()?
            .into_iter()
            .find(|i| i.id == name || i.records.contains(&name)))
    }

    /// Like `find`, an error naming the image when it is not there.
    pub fn get(&self, image: &str) -> Result<ImageInfo> {
        self.find(image)?
            .ok_or_else(|| Error::NotFound(format!("image {image:?}")))
    }

    /// `get`, off the async reactor.
    pub async fn image(self: &Arc<Self>, image: &str) -> Result<ImageInfo> {
        let (me, image) = (self.clone(), image.to_owned());
        blocking(move || me.get(&image)).await
    }

    pub async fn list(
        self: &Arc<Self>,
        filter: Option<cri::ImageFilter>,
    ) -> Result<Vec<cri::Image>> {
        let me = self.clone();
        let want = filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        blocking(move || {
            let all = me.all()?;
            let name = want.map(|w| record_name(&w)).transpose()?;
            Ok(all
                .iter()
                .filter(|i| {
                    name.as_ref()
                        .is_none_or(|n| i.id == *n || i.records.contains(n))
                })
                .map(ImageInfo::to_cri)
                .collect())
        })
        .await
    }

    pub async fn status(self: &Arc<Self>, image: &str) -> Result<Option<ImageInfo>> {
        let (me, image) = (self.clone(), image.to_owned());
        blocking(move || me.find(&image)).await
    }

    /// Pulls an image with the kubelet's credentials; returns its id.
    pub async fn pull(
        self: &Arc<Self>,
        image: &str,
        auth: Option<cri::AuthConfig>,
    ) -> Result<String> {
        let reference =
            Reference::parse(image).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let credentials = auth.and_then(|a| credentials(&a, &reference));
        let req = PullRequest {
            namespace: namespace(),
            reference: reference.clone(),
            source: image.to_owned(),
            name: reference.to_string(),
            labels: Labels::from([(MANAGED.to_owned(), "managed".to_owned())]),
            credentials,
            plain_http: false,
            hosts_dir: None,
            platforms: vec![Platform::default()],
            all_metadata: false,
            unpack: Some(self.ctx.cfg.snapshotter.clone()),
            max_concurrent_downloads: self.ctx.cfg.max_concurrent_downloads,
        };
        let pulled = self
            .ctx
            .puller
            .pull(&req, Arc::new(NoProgress))
            .await
            .inspect_err(|_| self.ctx.gc.schedule())?;
        let (me, target, repo) = (self.clone(), pulled.image.target.clone(), reference.name());
        blocking(move || {
            let t = BlobRef::of(&target, &"pulled image")?;
            let k = me.known(&t)?;
            let id = k.resolved.config.digest.to_string();
            let ns = namespace();
            for name in [format!("{repo}@{}", t.digest), id.clone()] {
                me.ctx.images.images.put(
                    &ns,
                    Image {
                        name,
                        labels: Labels::from([(MANAGED.to_owned(), "managed".to_owned())]),
                        target: target.clone(),
                        created_at: Timestamp::now(),
                        updated_at: Timestamp::now(),
                    },
                )?;
            }
            Ok(id)
        })
        .await
    }

    /// Removes every record of the image a reference names; an image that is not there is
    /// removed already.
    pub async fn remove(self: &Arc<Self>, image: &str) -> Result<()> {
        let (me, image) = (self.clone(), image.to_owned());
        blocking(move || {
            let Some(info) = me.find(&image)? else {
                return Ok(());
            };
            let ns = namespace();
            for r in &info.records {
                match me.ctx.images.images.delete(&ns, r) {
                    Err(e) if !e.is_not_found() => return Err(e.into()),
                    _ => {}
                }
            }
            me.ctx.gc.schedule();
            Ok(())
        })
        .await
    }

    /// The image filesystem: the snapshotter's directory and what it holds, measured at
    /// most every 30 seconds.
    pub async fn fs_usage(self: &Arc<Self>) -> Result<berth_core::snapshot::Usage> {
        if let Some((at, u)) = *self.fs_usage.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < Duration::from_secs(30) {
                return Ok(u);
            }
        }
        let dir = self.ctx.cfg.snapshotter_root.clone();
        let u = blocking(move || Ok(berth_core::snapshot::disk_usage(&dir)?)).await?;
        *self.fs_usage.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), u));
        Ok(u)
    }

    /// Makes sure an image's layers are unpacked (an image imported without unpacking).
    pub async fn ensure_unpacked(self: &Arc<Self>, info: &ImageInfo) -> Result<()> {
        let (ctx, image) = (self.ctx.clone(), info.resolved.clone());
        blocking(move || {
            let ns = namespace();
            let sn = ctx.cfg.snapshotter.clone();
            if !unpack::is_unpacked(&ctx.images, &ns, &sn, &image) {
                unpack::unpack(&ctx.images, &ns, None, &sn, &image)?;
            }
            Ok(())
        })
        .await
    }
}

/// The kubelet's credentials for the registry of `reference`, as containerd reads them:
/// ignored when they name another server; user and password, else an identity token, else
/// `auth` (base64 of `user:password`).
pub fn credentials(a: &cri::AuthConfig, reference: &Reference) -> Option<Credentials> {
    if !a.server_address.is_empty() {
        let host = a
            .server_address
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        let host = if host == "index.docker.io" || host == "registry-1.docker.io" {
            "docker.io"
        } else {
            host
        };
        if host != reference.registry {
            return None;
        }
    }
    if !a.username.is_empty() {
        return Some(Credentials {
            username: a.username.clone(),
            secret: a.password.clone(),
        });
    }
    if !a.identity_token.is_empty() {
        return Some(Credentials {
            username: String::new(),
            secret: a.identity_token.clone(),
        });
    }
    if !a.auth.is_empty() {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&a.auth)
            .ok()?;
        let s = String::from_utf8(raw).ok()?;
        let (u, p) = s.split_once(':')?;
        return Some(Credentials {
            username: u.to_owned(),
            secret: p.trim_end_matches('\0').to_owned(),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_credentials_are_read_as_containerd_reads_them() {
        let r = Reference::parse("127.0.0.1:5000/app:1").unwrap();
        let basic = cri::AuthConfig {
            auth: "dXNlcjpwYXNz".into(), // user:pass
            ..Default::default()
        };
        assert_eq!(credentials(&basic, &r).unwrap().username, "user");
        let other = cri::AuthConfig {
            username: "u".into(),
            server_address: "https://elsewhere.example".into(),
            ..Default::default()
        };
        assert!(credentials(&other, &r).is_none());
        assert!(credentials(&cri::AuthConfig::default(), &r).is_none());
    }

    #[test]
    fn references_and_ids_name_records() {
        assert_eq!(
            record_name("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        let id = format!("sha256:{}", "a".repeat(64));
        assert_eq!(record_name(&id).unwrap(), id);
        assert!(record_name("Bad/Ref").is_err());
    }
}
