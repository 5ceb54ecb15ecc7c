//! The embedded metadata database (redb): one table per kind of object, keyed by
//! `namespace\0id` strings, values are JSON records. Every API request runs in one
//! transaction, so a crash never leaves half an operation recorded.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::namespace::Namespace;

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    Namespaces,
    Images,
    Content,
    Leases,
    Snapshots,
    Containers,
    Meta,
}

impl Bucket {
    const ALL: [Bucket; 7] = [
        Bucket::Namespaces,
        Bucket::Images,
        Bucket::Content,
        Bucket::Leases,
        Bucket::Snapshots,
        Bucket::Containers,
        Bucket::Meta,
    ];

    fn table(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(match self {
            Bucket::Namespaces => "namespaces",
            Bucket::Images => "images",
            Bucket::Content => "content",
            Bucket::Leases => "leases",
            Bucket::Snapshots => "snapshots",
            Bucket::Containers => "containers",
            Bucket::Meta => "meta",
        })
    }
}

/// Key of an object inside a namespace.
pub fn key(ns: &Namespace, id: &str) -> String {
    format!("{}\0{}", ns.as_str(), id)
}

/// Prefix under which all keys of a namespace sit.
pub fn ns_prefix(ns: &Namespace) -> String {
    format!("{}\0", ns.as_str())
}

/// Nanoseconds since the epoch: the one clock every record uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(d.as_nanos() as i64)
    }
}

/// Reading side shared by read and write transactions.
pub trait Reader {
    fn get_raw(&self, b: Bucket, key: &str) -> Result<Option<Vec<u8>>>;
    fn scan_raw(&self, b: Bucket, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;

    fn get<T: DeserializeOwned>(&self, b: Bucket, key: &str) -> Result<Option<T>> {
        self.get_raw(b, key)?
            .map(|v| decode(b, key, &v))
            .transpose()
    }

    fn scan<T: DeserializeOwned>(&self, b: Bucket, prefix: &str) -> Result<Vec<(String, T)>> {
        self.scan_raw(b, prefix)?
            .into_iter()
            .map(|(k, v)| {
                let t = decode(b, &k, &v)?;
                Ok((k, t))
            })
            .collect()
    }

    fn namespace_exists(&self, ns: &Namespace) -> Result<bool> {
        Ok(self.get_raw(Bucket::Namespaces, ns.as_str())?.is_some())
    }
}

fn decode<T: DeserializeOwned>(b: Bucket, key: &str, v: &[u8]) -> Result<T> {
    serde_json::from_slice(v)
        .map_err(|e| Error::Database(format!("corrupt {b:?} record {key:?}: {e}")))
}

fn scan_table<T: ReadableTable<&'static str, &'static [u8]>>(
    t: &T,
    prefix: &str,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for item in t.range(prefix..)? {
        let (k, v) = item?;
        if !k.value().starts_with(prefix) {
            break;
        }
        out.push((k.value().to_owned(), v.value().to_vec()));
    }
    Ok(out)
}

pub struct ReadTx(ReadTransaction);

impl Reader for ReadTx {
    fn get_raw(&self, b: Bucket, key: &str) -> Result<Option<Vec<u8>>> {
        let t = self.0.open_table(b.table())?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }
    fn scan_raw(&self, b: Bucket, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        scan_table(&self.0.open_table(b.table())?, prefix)
    }
}

pub struct WriteTx(WriteTransaction);

impl Reader for WriteTx {
    fn get_raw(&self, b: Bucket, key: &str) -> Result<Option<Vec<u8>>> {
        let t = self.0.open_table(b.table())?;
        let v = t.get(key)?.map(|v| v.value().to_vec());
        Ok(v)
    }
    fn scan_raw(&self, b: Bucket, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        scan_table(&self.0.open_table(b.table())?, prefix)
    }
}

impl WriteTx {
    pub fn put<T: Serialize>(&self, b: Bucket, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| Error::Database(format!("encode {b:?} record {key:?}: {e}")))?;
        self.0
            .open_table(b.table())?
            .insert(key, bytes.as_slice())?;
        Ok(())
    }

    pub fn delete(&self, b: Bucket, key: &str) -> Result<bool> {
        Ok(self.0.open_table(b.table())?.remove(key)?.is_some())
    }

    /// Writes in a namespace create it, as containerd does.
    pub fn ensure_namespace(&self, ns: &Namespace) -> Result<()> {
        if !self.namespace_exists(ns)? {
            self.put(
                Bucket::Namespaces,
                ns.as_str(),
                &NamespaceRecord {
                    labels: Labels::new(),
                    created_at: Timestamp::now(),
                },
            )?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub labels: Labels,
    pub created_at: Timestamp,
}

/// Bytes of metadata pages redb keeps in memory.
const METADATA_CACHE: usize = 512 << 10;

pub struct MetaStore {
    db: Database,
}

impl MetaStore {
    pub fn open(path: &Path) -> Result<Self> {
        // redb caches up to 1 GiB of pages by default; a daemon's metadata is read from the
        // page cache just as well, so the cache stays small and berthd's memory with it.
        let db = Database::builder()
            .set_cache_size(METADATA_CACHE)
            .create(path)
            .map_err(|e| Error::Database(format!("open {}: {e}", path.display())))?;
        let tx = db.begin_write()?;
        for b in Bucket::ALL {
            tx.open_table(b.table())?;
        }
        tx.commit()?;
        Ok(MetaStore { db })
    }

    pub fn view<T>(&self, f: impl FnOnce(&ReadTx) -> Result<T>) -> Result<T> {
        let tx = ReadTx(self.db.begin_read()?);
        f(&tx)
    }

    /// Runs `f` in one write transaction, committed only when `f` succeeds.
    pub fn update<T>(&self, f: impl FnOnce(&WriteTx) -> Result<T>) -> Result<T> {
        let tx = WriteTx(self.db.begin_write()?);
        let out = f(&tx)?;
        tx.0.commit()?;
        Ok(out)
    }

    /// A value that stays the same for the life of this root (the server UUID).
    pub fn stable_value(&self, name: &str, make: impl FnOnce() -> String) -> Result<String> {
        self.update(|tx| {
            if let Some(v) = tx.get::<String>(Bucket::Meta, name)? {
                return Ok(v);
            }
            let v = make();
            tx.put(Bucket::Meta, name, &v)?;
            Ok(v)
        })
    }

    /// Next value of a counter kept in the database (snapshot ids).
    pub fn next_id(tx: &WriteTx, name: &str) -> Result<u64> {
        let n = tx.get::<u64>(Bucket::Meta, name)?.unwrap_or(0) + 1;
        tx.put(Bucket::Meta, name, &n)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_commit_or_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let m = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        let ns = Namespace::new("default").unwrap();
        m.update(|tx| tx.put(Bucket::Images, &key(&ns, "a"), &1u32))
            .unwrap();
        let failed: Result<()> = m.update(|tx| {
            tx.put(Bucket::Images, &key(&ns, "b"), &2u32)?;
            Err(Error::InvalidArgument("boom".into()))
        });
        assert!(failed.is_err());
        let all: Vec<(String, u32)> = m
            .view(|tx| tx.scan(Bucket::Images, &ns_prefix(&ns)))
            .unwrap();
        assert_eq!(all, vec![(key(&ns, "a"), 1)]);
        let other = Namespace::new("default2").unwrap();
        m.update(|tx| tx.put(Bucket::Images, &key(&other, "c"), &3u32))
            .unwrap();
        let all: Vec<(String, u32)> = m
            .view(|tx| tx.scan(Bucket::Images, &ns_prefix(&ns)))
            .unwrap();
        assert_eq!(all.len(), 1);
        let u1 = m.stable_value("uuid", || "x".into()).unwrap();
        let u2 = m.stable_value("uuid", || "y".into()).unwrap();
        assert_eq!(u1, u2);
    }
}
