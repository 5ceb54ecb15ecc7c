//! Leases: named holds that keep content, snapshots and ingests from garbage collection
//! while a client works (a pull, an unpack), optionally until an expiry time.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::filters::{Filter, Filterable};
use crate::labels;
use crate::metadata::{key, ns_prefix, Bucket, Labels, MetaStore, Reader, Timestamp, WriteTx};
use crate::namespace::Namespace;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub labels: Labels,
    pub created_at: Timestamp,
    /// (type, id): type is `content`, `ingests` or `snapshots/<snapshotter>`.
    pub resources: BTreeSet<(String, String)>,
}

#[derive(Clone, Debug)]
pub struct Lease {
    pub id: String,
    pub labels: Labels,
    pub created_at: Timestamp,
}

impl Filterable for Lease {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "id" => Some(self.id.clone()),
            _ => labels::filter_field(&self.labels, path),
        }
    }
}

pub fn validate_resource_type(kind: &str) -> Result<()> {
    match kind {
        "content" | "ingests" => Ok(()),
        k if k.strip_prefix("snapshots/").is_some_and(|s| !s.is_empty()) => Ok(()),
        k => Err(Error::InvalidArgument(format!(
            "unsupported lease resource type {k:?}"
        ))),
    }
}

/// Records `(kind, id)` under the lease in the same transaction as the object's creation.
pub fn add_resource(tx: &WriteTx, ns: &Namespace, lease: &str, kind: &str, id: &str) -> Result<()> {
    validate_resource_type(kind)?;
    let k = key(ns, lease);
    let mut rec: LeaseRecord = tx
        .get(Bucket::Leases, &k)?
        .ok_or_else(|| Error::NotFound(format!("lease {lease:?} in namespace {ns:?}")))?;
    rec.resources.insert((kind.to_owned(), id.to_owned()));
    tx.put(Bucket::Leases, &k, &rec)
}

pub fn remove_resource(
    tx: &WriteTx,
    ns: &Namespace,
    lease: &str,
    kind: &str,
    id: &str,
) -> Result<()> {
    let k = key(ns, lease);
    let mut rec: LeaseRecord = tx
        .get(Bucket::Leases, &k)?
        .ok_or_else(|| Error::NotFound(format!("lease {lease:?} in namespace {ns:?}")))?;
    if rec.resources.remove(&(kind.to_owned(), id.to_owned())) {
        tx.put(Bucket::Leases, &k, &rec)?;
    }
    Ok(())
}

pub struct Leases<'a> {
    pub meta: &'a MetaStore,
}

impl Leases<'_> {
    pub fn create(&self, ns: &Namespace, id: &str, labels_in: Labels) -> Result<Lease> {
        labels::validate(&labels_in)?;
        let id = if id.is_empty() {
            generate_id()
        } else {
            id.to_owned()
        };
        self.meta.update(|tx| {
            tx.ensure_namespace(ns)?;
            let k = key(ns, &id);
            if tx.get_raw(Bucket::Leases, &k)?.is_some() {
                return Err(Error::AlreadyExists(format!(
                    "lease {id:?} in namespace {ns:?}"
                )));
            }
            let rec = LeaseRecord {
                labels: labels_in,
                created_at: Timestamp::now(),
                resources: BTreeSet::new(),
            };
            tx.put(Bucket::Leases, &k, &rec)?;
            Ok(Lease {
                id,
                labels: rec.labels,
                created_at: rec.created_at,
            })
        })
    }

    pub fn delete(&self, ns: &Namespace, id: &str) -> Result<()> {
        self.meta.update(|tx| {
            if !tx.delete(Bucket::Leases, &key(ns, id))? {
                return Err(Error::NotFound(format!("lease {id:?} in namespace {ns:?}")));
            }
            Ok(())
        })
    }

    pub fn list(&self, ns: &Namespace, filter: &Filter) -> Result<Vec<Lease>> {
        let prefix = ns_prefix(ns);
        let recs: Vec<(String, LeaseRecord)> =
            self.meta.view(|tx| tx.scan(Bucket::Leases, &prefix))?;
        Ok(recs
            .into_iter()
            .map(|(k, r)| Lease {
                id: k[prefix.len()..].to_owned(),
                labels: r.labels,
                created_at: r.created_at,
            })
            .filter(|l| filter.matches(l))
            .collect())
    }

    pub fn add_resource(&self, ns: &Namespace, lease: &str, kind: &str, id: &str) -> Result<()> {
        self.meta.update(|tx| add_resource(tx, ns, lease, kind, id))
    }

    pub fn delete_resource(&self, ns: &Namespace, lease: &str, kind: &str, id: &str) -> Result<()> {
        self.meta
            .update(|tx| remove_resource(tx, ns, lease, kind, id))
    }

    pub fn resources(&self, ns: &Namespace, lease: &str) -> Result<Vec<(String, String)>> {
        let rec: LeaseRecord = self
            .meta
            .view(|tx| tx.get(Bucket::Leases, &key(ns, lease)))?
            .ok_or_else(|| Error::NotFound(format!("lease {lease:?} in namespace {ns:?}")))?;
        Ok(rec.resources.into_iter().collect())
    }
}

/// Marks a lease berthd took for its own work (a pull, import or export it runs): such
/// leases die with the daemon and are released when it starts again.
pub const DAEMON_LEASE: &str = "berth.io/daemon-lease";

/// A lease berthd holds while it works; deleted when dropped. Its content becomes garbage
/// unless something else (an image record) roots it by then.
pub struct DaemonLease {
    meta: std::sync::Arc<MetaStore>,
    ns: Namespace,
    id: String,
}

impl DaemonLease {
    /// Takes a lease that also expires after `ttl_secs`, in case nobody releases it.
    pub fn take(meta: std::sync::Arc<MetaStore>, ns: &Namespace, ttl_secs: i64) -> Result<Self> {
        let mut l = Labels::new();
        l.insert(
            labels::GC_EXPIRE.into(),
            crate::gc::format_rfc3339(Timestamp::now().0 / 1_000_000_000 + ttl_secs),
        );
        l.insert(DAEMON_LEASE.into(), "true".into());
        let id = Leases { meta: &meta }.create(ns, "", l)?.id;
        Ok(DaemonLease {
            meta,
            ns: ns.clone(),
            id,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for DaemonLease {
    fn drop(&mut self) {
        if let Err(e) = (Leases { meta: &self.meta }).delete(&self.ns, &self.id) {
            tracing::warn!(lease = %self.id, "release lease: {e}");
        }
    }
}

/// Deletes the leases a previous berthd took for its own work, in every namespace: what
/// they held is garbage now. Returns the ingests they held, (namespace, ref), which no
/// one will resume.
pub fn release_daemon_leases(meta: &MetaStore) -> Result<Vec<(Namespace, String)>> {
    meta.update(|tx| {
        let all: Vec<(String, LeaseRecord)> = tx.scan(Bucket::Leases, "")?;
        let mut ingests = Vec::new();
        for (k, rec) in all {
            if !rec.labels.contains_key(DAEMON_LEASE) {
                continue;
            }
            tx.delete(Bucket::Leases, &k)?;
            let Some(ns) = k.split('\0').next().and_then(|n| Namespace::new(n).ok()) else {
                continue;
            };
            ingests.extend(
                rec.resources
                    .into_iter()
                    .filter(|(kind, _)| kind == "ingests")
                    .map(|(_, r)| (ns.clone(), r)),
            );
        }
        Ok(ingests)
    })
}

fn generate_id() -> String {
    let u = uuid::Uuid::new_v4();
    format!("{}-{}", Timestamp::now().0, &u.simple().to_string()[..8])
}
