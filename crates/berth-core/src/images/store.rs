//! The image store: named references to a target descriptor, per namespace, in metadata.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::filters::{Filter, Filterable};
use crate::labels;
use crate::metadata::{key, ns_prefix, Bucket, Labels, MetaStore, Reader, Timestamp};
use crate::namespace::Namespace;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn validate(&self, what: &str) -> Result<Digest> {
        let d = Digest::parse(&self.digest)
            .map_err(|e| Error::InvalidArgument(format!("{what}: target digest: {e}")))?;
        if self.size <= 0 {
            return Err(Error::InvalidArgument(format!(
                "{what}: target size must be greater than zero"
            )));
        }
        if self.media_type.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{what}: target media type must be set"
            )));
        }
        Ok(d)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    pub labels: Labels,
    pub target: Descriptor,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Filterable for Image {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "name" => Some(self.name.clone()),
            [t, f] if t == "target" && f == "digest" => Some(self.target.digest.clone()),
            [t, f] if t == "target" && f == "mediatype" => Some(self.target.media_type.clone()),
            [a, rest @ ..] if a == "annotations" && !rest.is_empty() => {
                self.target.annotations.get(&rest.join(".")).cloned()
            }
            _ => labels::filter_field(&self.labels, path),
        }
    }
}

pub struct Images {
    meta: Arc<MetaStore>,
}

fn not_found(ns: &Namespace, name: &str) -> Error {
    Error::NotFound(format!("image {name:?} in namespace {ns:?}"))
}

impl Images {
    pub fn new(meta: Arc<MetaStore>) -> Self {
        Images { meta }
    }

    fn validate(img: &Image) -> Result<()> {
        if img.name.is_empty() {
            return Err(Error::InvalidArgument(
                "image name must not be empty".into(),
            ));
        }
        labels::validate(&img.labels)?;
        img.target.validate(&format!("image {:?}", img.name))?;
        Ok(())
    }

    pub fn get(&self, ns: &Namespace, name: &str) -> Result<Image> {
        self.meta
            .view(|tx| tx.get(Bucket::Images, &key(ns, name)))?
            .ok_or_else(|| not_found(ns, name))
    }

    pub fn list(&self, ns: &Namespace, filter: &Filter) -> Result<Vec<Image>> {
        let all: Vec<(String, Image)> = self
            .meta
            .view(|tx| tx.scan(Bucket::Images, &ns_prefix(ns)))?;
        Ok(all
            .into_iter()
            .map(|(_, i)| i)
            .filter(|i| filter.matches(i))
            .collect())
    }

    pub fn create(&self, ns: &Namespace, mut img: Image) -> Result<Image> {
        Self::validate(&img)?;
        self.meta.update(|tx| {
            tx.ensure_namespace(ns)?;
            let k = key(ns, &img.name);
            if tx.get_raw(Bucket::Images, &k)?.is_some() {
                return Err(Error::AlreadyExists(format!(
                    "image {:?} in namespace {ns:?}",
                    img.name
                )));
            }
            let now = Timestamp::now();
            img.created_at = now;
            img.updated_at = now;
            tx.put(Bucket::Images, &k, &img)?;
            Ok(img)
        })
    }

    pub fn update(&self, ns: &Namespace, new: Image, fieldpaths: &[String]) -> Result<Image> {
        if new.name.is_empty() {
            return Err(Error::InvalidArgument(
                "image name must not be empty".into(),
            ));
        }
        self.meta.update(|tx| {
            let k = key(ns, &new.name);
            let mut cur: Image = tx
                .get(Bucket::Images, &k)?
                .ok_or_else(|| not_found(ns, &new.name))?;
            if fieldpaths.is_empty() {
                let created = cur.created_at;
                cur = new.clone();
                cur.created_at = created;
            } else {
                let rest = labels::apply_update(&mut cur.labels, &new.labels, fieldpaths)?;
                for path in rest {
                    if path == "target" {
                        cur.target = new.target.clone();
                    } else if path == "annotations" {
                        cur.target.annotations = new.target.annotations.clone();
                    } else if let Some(k) = path.strip_prefix("annotations.") {
                        match new.target.annotations.get(k) {
                            Some(v) => cur.target.annotations.insert(k.to_owned(), v.clone()),
                            None => cur.target.annotations.remove(k),
                        };
                    } else {
                        return Err(Error::InvalidArgument(format!(
                            "cannot update field {path:?} of image {:?}",
                            new.name
                        )));
                    }
                }
            }
            Self::validate(&cur)?;
            cur.updated_at = Timestamp::now();
            tx.put(Bucket::Images, &k, &cur)?;
            Ok(cur)
        })
    }

    /// Creates the image, or points an existing one at the new target and labels.
    pub fn put(&self, ns: &Namespace, img: Image) -> Result<Image> {
        match self.create(ns, img.clone()) {
            Err(e) if e.is_already_exists() => self.update(ns, img, &[]),
            r => r,
        }
    }

    pub fn delete(&self, ns: &Namespace, name: &str) -> Result<()> {
        self.meta.update(|tx| {
            if !tx.delete(Bucket::Images, &key(ns, name))? {
                return Err(not_found(ns, name));
            }
            Ok(())
        })
    }
}
