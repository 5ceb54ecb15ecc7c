//! The container store: a container is metadata only (spec, runtime, image, snapshot),
//! per namespace. Its snapshot is a garbage-collection root while it exists.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::filters::{Filter, Filterable};
use crate::labels;
use crate::metadata::{key, ns_prefix, Bucket, Labels, MetaStore, Reader, Timestamp};
use crate::namespace::Namespace;

/// A typed protobuf value (`google.protobuf.Any`) kept as it came.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnyValue {
    pub type_url: String,
    #[serde(with = "hex_bytes")]
    pub value: Vec<u8>,
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub labels: Labels,
    pub image: String,
    pub runtime_name: String,
    pub runtime_options: Option<AnyValue>,
    pub spec: Option<AnyValue>,
    pub snapshotter: String,
    pub snapshot_key: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub extensions: BTreeMap<String, AnyValue>,
    pub sandbox: String,
}

impl Filterable for Container {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "id" => Some(self.id.clone()),
            [f] if f == "image" => Some(self.image.clone()),
            [r, n] if r == "runtime" && n == "name" => Some(self.runtime_name.clone()),
            [f] if f == "snapshotter" => Some(self.snapshotter.clone()),
            _ => labels::filter_field(&self.labels, path),
        }
    }
}

fn not_found(ns: &Namespace, id: &str) -> Error {
    Error::NotFound(format!("container {id:?} in namespace {ns:?}"))
}

fn validate(c: &Container) -> Result<()> {
    let what = format!("container {:?}", c.id);
    crate::namespace::Namespace::new(&c.id).map_err(|_| {
        Error::InvalidArgument(format!(
            "{what}: invalid id, must match [A-Za-z0-9]+([._-][A-Za-z0-9]+)*"
        ))
    })?;
    labels::validate(&c.labels)?;
    if c.runtime_name.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{what}: runtime name must be set"
        )));
    }
    if c.spec.is_none() {
        return Err(Error::InvalidArgument(format!("{what}: spec must be set")));
    }
    if !c.snapshot_key.is_empty() && c.snapshotter.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{what}: snapshotter must be set when a snapshot key is"
        )));
    }
    Ok(())
}

pub struct Containers {
    meta: Arc<MetaStore>,
}

impl Containers {
    pub fn new(meta: Arc<MetaStore>) -> Self {
        Containers { meta }
    }

    pub fn get(&self, ns: &Namespace, id: &str) -> Result<Container> {
        self.meta
            .view(|tx| tx.get(Bucket::Containers, &key(ns, id)))?
            .ok_or_else(|| not_found(ns, id))
    }

    pub fn list(&self, ns: &Namespace, filter: &Filter) -> Result<Vec<Container>> {
        let all: Vec<(String, Container)> = self
            .meta
            .view(|tx| tx.scan(Bucket::Containers, &ns_prefix(ns)))?;
        Ok(all
            .into_iter()
            .map(|(_, c)| c)
            .filter(|c| filter.matches(c))
            .collect())
    }

    pub fn create(&self, ns: &Namespace, mut c: Container) -> Result<Container> {
        validate(&c)?;
        self.meta.update(|tx| {
            tx.ensure_namespace(ns)?;
            let k = key(ns, &c.id);
            if tx.get_raw(Bucket::Containers, &k)?.is_some() {
                return Err(Error::AlreadyExists(format!(
                    "container {:?} in namespace {ns:?}",
                    c.id
                )));
            }
            let now = Timestamp::now();
            c.created_at = now;
            c.updated_at = now;
            tx.put(Bucket::Containers, &k, &c)?;
            Ok(c)
        })
    }

    /// Updates the mutable fields; without field paths, all of them. The runtime and the
    /// snapshotter are fixed at creation.
    pub fn update(
        &self,
        ns: &Namespace,
        new: Container,
        fieldpaths: &[String],
    ) -> Result<Container> {
        const ALL: [&str; 5] = ["labels", "spec", "extensions", "image", "snapshotkey"];
        let defaults: Vec<String> = ALL.iter().map(|s| s.to_string()).collect();
        let paths = if fieldpaths.is_empty() {
            &defaults[..]
        } else {
            fieldpaths
        };
        self.meta.update(|tx| {
            let k = key(ns, &new.id);
            let mut cur: Container = tx
                .get(Bucket::Containers, &k)?
                .ok_or_else(|| not_found(ns, &new.id))?;
            if fieldpaths.is_empty()
                && !new.runtime_name.is_empty()
                && new.runtime_name != cur.runtime_name
            {
                return Err(Error::InvalidArgument(format!(
                    "container {:?}: runtime cannot be changed",
                    new.id
                )));
            }
            for path in paths {
                match path.as_str() {
                    "labels" => cur.labels = new.labels.clone(),
                    "spec" => cur.spec = new.spec.clone(),
                    "extensions" => cur.extensions = new.extensions.clone(),
                    "image" => cur.image = new.image.clone(),
                    "snapshotkey" => cur.snapshot_key = new.snapshot_key.clone(),
                    p => {
                        if let Some(l) = p.strip_prefix("labels.") {
                            match new.labels.get(l) {
                                Some(v) => cur.labels.insert(l.to_owned(), v.clone()),
                                None => cur.labels.remove(l),
                            };
                        } else if let Some(e) = p.strip_prefix("extensions.") {
                            match new.extensions.get(e) {
                                Some(v) => cur.extensions.insert(e.to_owned(), v.clone()),
                                None => cur.extensions.remove(e),
                            };
                        } else {
                            return Err(Error::InvalidArgument(format!(
                                "cannot update field {p:?} of container {:?}",
                                new.id
                            )));
                        }
                    }
                }
            }
            validate(&cur)?;
            cur.updated_at = Timestamp::now();
            tx.put(Bucket::Containers, &k, &cur)?;
            Ok(cur)
        })
    }

    pub fn delete(&self, ns: &Namespace, id: &str) -> Result<()> {
        self.meta.update(|tx| {
            if tx.delete(Bucket::Containers, &key(ns, id))? {
                Ok(())
            } else {
                Err(not_found(ns, id))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_updates() {
        let dir = tempfile::tempdir().unwrap();
        let store = Containers::new(Arc::new(
            MetaStore::open(&dir.path().join("m.redb")).unwrap(),
        ));
        let ns = Namespace::new("default").unwrap();
        let spec = Some(AnyValue {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: b"{}".to_vec(),
        });
        let c = Container {
            id: "c1".into(),
            runtime_name: "io.containerd.runc.v2".into(),
            spec: spec.clone(),
            ..Default::default()
        };
        for bad in [
            Container {
                runtime_name: String::new(),
                ..c.clone()
            },
            Container {
                spec: None,
                ..c.clone()
            },
            Container {
                id: "bad/id".into(),
                ..c.clone()
            },
            Container {
                snapshot_key: "k".into(),
                ..c.clone()
            },
        ] {
            assert_eq!(
                store.create(&ns, bad).unwrap_err().kind(),
                crate::ErrorKind::InvalidArgument
            );
        }
        store.create(&ns, c.clone()).unwrap();
        assert!(store
            .create(&ns, c.clone())
            .unwrap_err()
            .is_already_exists());
        let other = Container {
            runtime_name: "io.containerd.other.v1".into(),
            ..c.clone()
        };
        assert_eq!(
            store.update(&ns, other, &[]).unwrap_err().kind(),
            crate::ErrorKind::InvalidArgument
        );
        let bad_path = ["runtime".to_string()];
        assert_eq!(
            store.update(&ns, c.clone(), &bad_path).unwrap_err().kind(),
            crate::ErrorKind::InvalidArgument
        );
        let labelled = Container {
            labels: [("a".to_string(), "1".to_string())].into(),
            ..c.clone()
        };
        let got = store
            .update(&ns, labelled, &["labels.a".to_string()])
            .unwrap();
        assert_eq!(got.labels.get("a").map(String::as_str), Some("1"));
        assert_eq!(got.spec, spec);
        store.delete(&ns, "c1").unwrap();
        assert!(store.delete(&ns, "c1").unwrap_err().is_not_found());
    }
}
