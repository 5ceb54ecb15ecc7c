//! The namespace store: create, label, list and delete namespaces; a namespace can only
//! be deleted once nothing lives in it.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::labels;
use crate::metadata::{ns_prefix, Bucket, Labels, MetaStore, NamespaceRecord, Reader, Timestamp};
use crate::namespace::Namespace;

pub struct Namespaces {
    meta: Arc<MetaStore>,
    snapshotters: Vec<&'static str>,
}

fn not_found(ns: &Namespace) -> Error {
    Error::NotFound(format!("namespace {ns:?}"))
}

impl Namespaces {
    pub fn new(meta: Arc<MetaStore>, snapshotters: Vec<&'static str>) -> Self {
        Namespaces { meta, snapshotters }
    }

    pub fn create(&self, ns: &Namespace, labels_in: Labels) -> Result<()> {
        labels::validate(&labels_in)?;
        self.meta.update(|tx| {
            if tx.namespace_exists(ns)? {
                return Err(Error::AlreadyExists(format!("namespace {ns:?}")));
            }
            tx.put(
                Bucket::Namespaces,
                ns.as_str(),
                &NamespaceRecord {
                    labels: labels_in,
                    created_at: Timestamp::now(),
                },
            )
        })
    }

    pub fn get(&self, ns: &Namespace) -> Result<Labels> {
        let rec: NamespaceRecord = self
            .meta
            .view(|tx| tx.get(Bucket::Namespaces, ns.as_str()))?
            .ok_or_else(|| not_found(ns))?;
        Ok(rec.labels)
    }

    /// The labels of a namespace, as containerd answers Get: a namespace nobody created
    /// has none (clients such as dockerd read their defaults this way before creating
    /// anything in it).
    pub fn labels(&self, ns: &Namespace) -> Result<Labels> {
        match self.get(ns) {
            Err(e) if e.is_not_found() => Ok(Labels::new()),
            r => r,
        }
    }

    pub fn list(&self) -> Result<Vec<(Namespace, Labels)>> {
        let all: Vec<(String, NamespaceRecord)> =
            self.meta.view(|tx| tx.scan(Bucket::Namespaces, ""))?;
        Ok(all
            .into_iter()
            .filter_map(|(n, r)| Namespace::new(&n).ok().map(|n| (n, r.labels)))
            .collect())
    }

    /// `labels.KEY` paths set or (for an empty value) remove one label; no paths replace all.
    pub fn update(&self, ns: &Namespace, new: &Labels, fieldpaths: &[String]) -> Result<Labels> {
        labels::validate(new)?;
        self.meta.update(|tx| {
            let mut rec: NamespaceRecord = tx
                .get(Bucket::Namespaces, ns.as_str())?
                .ok_or_else(|| not_found(ns))?;
            if fieldpaths.is_empty() {
                rec.labels = new.clone();
            }
            for path in fieldpaths {
                let Some(k) = path.strip_prefix("labels.") else {
                    return Err(Error::InvalidArgument(format!(
                        "cannot update field {path:?} of namespace {ns:?}"
                    )));
                };
                match new.get(k).filter(|v| !v.is_empty()) {
                    Some(v) => rec.labels.insert(k.to_owned(), v.clone()),
                    None => rec.labels.remove(k),
                };
            }
            rec.labels.retain(|_, v| !v.is_empty());
            tx.put(Bucket::Namespaces, ns.as_str(), &rec)?;
            Ok(rec.labels)
        })
    }

    pub fn delete(&self, ns: &Namespace) -> Result<()> {
        self.meta.update(|tx| {
            if !tx.namespace_exists(ns)? {
                return Err(not_found(ns));
            }
            let p = ns_prefix(ns);
            let mut in_use = Vec::new();
            for (b, what) in [
                (Bucket::Images, "images"),
                (Bucket::Content, "blobs"),
                (Bucket::Containers, "containers"),
            ] {
                if !tx.scan_raw(b, &p)?.is_empty() {
                    in_use.push(what.to_string());
                }
            }
            for sn in &self.snapshotters {
                if !tx
                    .scan_raw(Bucket::Snapshots, &format!("{sn}\0{p}"))?
                    .is_empty()
                {
                    in_use.push(format!("snapshot-{sn}"));
                }
            }
            if !in_use.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "namespace {ns:?} must be empty, but it still has {}",
                    in_use.join(", ")
                )));
            }
            for (k, _) in tx.scan_raw(Bucket::Leases, &p)? {
                tx.delete(Bucket::Leases, &k)?;
            }
            tx.delete(Bucket::Namespaces, ns.as_str())?;
            Ok(())
        })
    }
}
