//! Snapshots: namespaced records (name, parent, kind, labels) in metadata, and a backend
//! per snapshotter that keeps each snapshot's directory by numeric id. The record's
//! parent chain decides the mounts; backends only know ids.

mod native;
mod overlay;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

pub use native::Native;
pub use overlay::Overlay;

use crate::error::{Error, Result};
use crate::filters::{Filter, Filterable};
use crate::labels;
use crate::leases;
use crate::metadata::{Bucket, Labels, MetaStore, Reader, Timestamp, WriteTx};
use crate::mount::Mount;
use crate::namespace::Namespace;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    View,
    Active,
    Committed,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: u64,
    pub kind: Kind,
    pub parent: Option<String>,
    pub labels: Labels,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Clone, Debug)]
pub struct SnapshotInfo {
    pub name: String,
    pub parent: Option<String>,
    pub kind: Kind,
    pub labels: Labels,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Filterable for SnapshotInfo {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "name" => Some(self.name.clone()),
            [f] if f == "parent" => self.parent.clone(),
            [f] if f == "kind" => Some(format!("{:?}", self.kind).to_lowercase()),
            _ => labels::filter_field(&self.labels, path),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub size: i64,
    pub inodes: i64,
}

/// What a snapshotter does on disk, by snapshot id.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// Creates the directories of snapshot `id` whose parents are `parents` (nearest first).
    fn create(&self, id: u64, parents: &[u64], kind: Kind) -> Result<()>;
    fn mounts(&self, id: u64, kind: Kind, parents: &[u64]) -> Vec<Mount>;
    fn remove(&self, id: u64) -> Result<()>;
    /// Moves the directory of `id` aside at once (a rename); `empty_trash` deletes it later,
    /// outside any lock.
    fn retire(&self, id: u64) -> Result<()>;
    /// Deletes what `retire` moved aside; returns how many directories went.
    fn empty_trash(&self) -> Result<usize>;
    fn usage(&self, id: u64) -> Result<Usage>;
    /// Ids that have a directory on disk.
    fn ids_on_disk(&self) -> Result<Vec<u64>>;
    /// Whether a snapshot's parents matter only to its mounts (overlayfs), so that an
    /// active snapshot can be filled first and given its parent later.
    fn parents_only_in_mounts(&self) -> bool {
        false
    }
}

fn record_key(sn: &str, ns: &Namespace, key: &str) -> String {
    format!("{sn}\0{}\0{key}", ns.as_str())
}

fn prefix(sn: &str, ns: &Namespace) -> String {
    format!("{sn}\0{}\0", ns.as_str())
}

/// What Prepare and View ask for.
pub struct NewSnapshot<'a> {
    pub key: &'a str,
    pub parent: Option<&'a str>,
    pub kind: Kind,
    pub labels: Labels,
    pub lease: Option<&'a str>,
}

pub struct Snapshots {
    meta: Arc<MetaStore>,
    backends: BTreeMap<&'static str, Arc<dyn Backend>>,
    gc_lock: Arc<RwLock<()>>,
}

fn not_found(sn: &str, ns: &Namespace, key: &str) -> Error {
    Error::NotFound(format!(
        "snapshot {key:?} in snapshotter {sn} of namespace {ns:?}"
    ))
}

impl Snapshots {
    pub fn new(
        meta: Arc<MetaStore>,
        backends: Vec<Arc<dyn Backend>>,
        gc_lock: Arc<RwLock<()>>,
    ) -> Self {
        let backends = backends.into_iter().map(|b| (b.name(), b)).collect();
        Snapshots {
            meta,
            backends,
            gc_lock,
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.backends.keys().copied()
    }

    pub fn backend(&self, sn: &str) -> Result<&Arc<dyn Backend>> {
        if sn.is_empty() {
            return Err(Error::InvalidArgument(
                "snapshotter argument missing".into(),
            ));
        }
        self.backends.get(sn).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "snapshotter not loaded: {sn} (berthd serves: {})",
                self.names().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// Parent ids of the snapshot whose parent is `parent`, nearest first.
    fn chain(
        tx: &impl Reader,
        sn: &str,
        ns: &Namespace,
        mut parent: Option<String>,
    ) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        while let Some(p) = parent {
            let rec: SnapshotRecord = tx
                .get(Bucket::Snapshots, &record_key(sn, ns, &p))?
                .ok_or_else(|| not_found(sn, ns, &p))?;
            ids.push(rec.id);
            parent = rec.parent;
        }
        Ok(ids)
    }

    pub fn create(&self, ns: &Namespace, sn: &str, req: NewSnapshot<'_>) -> Result<Vec<Mount>> {
        let NewSnapshot {
            key,
            parent,
            kind,
            labels: new_labels,
            lease,
        } = req;
        let backend = self.backend(sn)?.clone();
        if key.is_empty() {
            return Err(Error::InvalidArgument(
                "snapshot key must not be empty".into(),
            ));
        }
        labels::validate(&new_labels)?;
        let parent = parent.filter(|p| !p.is_empty()).map(str::to_owned);
        // Check and allocate first; the directory is made before the record, so a crash in
        // between leaves only an unreferenced directory for the collector.
        let (id, parents) = self.meta.update(|tx| {
            if tx
                .get_raw(Bucket::Snapshots, &record_key(sn, ns, key))?
                .is_some()
            {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {key:?} in snapshotter {sn} of namespace {ns:?}"
                )));
            }
            if let Some(p) = &parent {
                let rec: SnapshotRecord = tx
                    .get(Bucket::Snapshots, &record_key(sn, ns, p))?
                    .ok_or_else(|| {
                        Error::NotFound(format!(
                            "parent snapshot {p:?} in snapshotter {sn} of namespace {ns:?}"
                        ))
                    })?;
                if rec.kind != Kind::Committed {
                    return Err(Error::InvalidArgument(format!(
                        "parent snapshot {p:?} is not a committed snapshot"
                    )));
                }
            }
            let parents = Self::chain(tx, sn, ns, parent.clone())?;
            Ok((MetaStore::next_id(tx, "snapshot-id")?, parents))
        })?;
        let _gc = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        backend.create(id, &parents, kind)?;
        let now = Timestamp::now();
        let rec = SnapshotRecord {
            id,
            kind,
            parent: parent.clone(),
            labels: new_labels,
            created_at: now,
            updated_at: now,
        };
        let recorded = self.meta.update(|tx| {
            tx.ensure_namespace(ns)?;
            let k = record_key(sn, ns, key);
            if tx.get_raw(Bucket::Snapshots, &k)?.is_some() {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {key:?} in snapshotter {sn} of namespace {ns:?}"
                )));
            }
            tx.put(Bucket::Snapshots, &k, &rec)?;
            if let Some(l) = lease {
                leases::add_resource(tx, ns, l, &format!("snapshots/{sn}"), key)?;
            }
            Ok(())
        });
        if let Err(e) = recorded {
            let _ = backend.remove(id);
            return Err(e);
        }
        Ok(backend.mounts(id, kind, &parents))
    }

    fn get(&self, tx: &impl Reader, ns: &Namespace, sn: &str, key: &str) -> Result<SnapshotRecord> {
        tx.get(Bucket::Snapshots, &record_key(sn, ns, key))?
            .ok_or_else(|| not_found(sn, ns, key))
    }

    pub fn mounts(&self, ns: &Namespace, sn: &str, key: &str) -> Result<Vec<Mount>> {
        let backend = self.backend(sn)?;
        let (rec, parents) = self.meta.view(|tx| {
            let rec = self.get(tx, ns, sn, key)?;
            let parents = Self::chain(tx, sn, ns, rec.parent.clone())?;
            Ok((rec, parents))
        })?;
        if rec.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is committed: mounts are only for active snapshots and views"
            )));
        }
        Ok(backend.mounts(rec.id, rec.kind, &parents))
    }

    pub fn commit(
        &self,
        ns: &Namespace,
        sn: &str,
        name: &str,
        key: &str,
        new_labels: Labels,
        lease: Option<&str>,
    ) -> Result<()> {
        self.backend(sn)?;
        labels::validate(&new_labels)?;
        if name.is_empty() {
            return Err(Error::InvalidArgument(
                "commit needs a snapshot name".into(),
            ));
        }
        self.meta.update(|tx| {
            let mut rec = self.get(tx, ns, sn, key)?;
            if rec.kind != Kind::Active {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} is {:?}, only an active snapshot can be committed",
                    rec.kind
                )));
            }
            let nk = record_key(sn, ns, name);
            if tx.get_raw(Bucket::Snapshots, &nk)?.is_some() {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {name:?} in snapshotter {sn} of namespace {ns:?}"
                )));
            }
            tx.delete(Bucket::Snapshots, &record_key(sn, ns, key))?;
            rec.kind = Kind::Committed;
            rec.labels.extend(new_labels);
            rec.updated_at = Timestamp::now();
            tx.put(Bucket::Snapshots, &nk, &rec)?;
            if let Some(l) = lease {
                leases::add_resource(tx, ns, l, &format!("snapshots/{sn}"), name)?;
            }
            Ok(())
        })
    }

    /// Gives an active snapshot made without a parent the committed `parent` it was meant
    /// to have, where the snapshotter keeps parents only in its mounts: a layer can be
    /// written while the layer below it is still being written. Returns the new mounts.
    pub fn adopt_parent(
        &self,
        ns: &Namespace,
        sn: &str,
        key: &str,
        parent: &str,
    ) -> Result<Vec<Mount>> {
        let backend = self.backend(sn)?;
        if !backend.parents_only_in_mounts() {
            return Err(Error::Unsupported(format!(
                "snapshotter {sn} cannot give snapshot {key:?} a parent after it was made"
            )));
        }
        let (rec, parents) = self.meta.update(|tx| {
            let k = record_key(sn, ns, key);
            let mut rec = self.get(tx, ns, sn, key)?;
            if rec.kind != Kind::Active || rec.parent.is_some() {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} is not an active snapshot without a parent"
                )));
            }
            let p = self.get(tx, ns, sn, parent)?;
            if p.kind != Kind::Committed {
                return Err(Error::FailedPrecondition(format!(
                    "parent snapshot {parent:?} is not committed"
                )));
            }
            rec.parent = Some(parent.to_owned());
            rec.updated_at = Timestamp::now();
            tx.put(Bucket::Snapshots, &k, &rec)?;
            let parents = Self::chain(tx, sn, ns, rec.parent.clone())?;
            Ok((rec, parents))
        })?;
        Ok(backend.mounts(rec.id, rec.kind, &parents))
    }

    pub fn remove(&self, ns: &Namespace, sn: &str, key: &str) -> Result<()> {
        let backend = self.backend(sn)?.clone();
        let id = self.meta.update(|tx| {
            let rec = self.get(tx, ns, sn, key)?;
            let children: Vec<(String, SnapshotRecord)> =
                tx.scan(Bucket::Snapshots, &prefix(sn, ns))?;
            if let Some((child, _)) = children
                .iter()
                .find(|(_, r)| r.parent.as_deref() == Some(key))
            {
                let child = child.rsplit('\0').next().unwrap_or_default();
                return Err(Error::FailedPrecondition(format!(
                    "cannot remove snapshot {key:?}: snapshot {child:?} has it as parent"
                )));
            }
            tx.delete(Bucket::Snapshots, &record_key(sn, ns, key))?;
            Ok(rec.id)
        })?;
        backend.remove(id)
    }

    pub fn stat(&self, ns: &Namespace, sn: &str, key: &str) -> Result<SnapshotInfo> {
        self.backend(sn)?;
        let rec = self.meta.view(|tx| self.get(tx, ns, sn, key))?;
        Ok(info(key, rec))
    }

    pub fn update(
        &self,
        ns: &Namespace,
        sn: &str,
        key: &str,
        new_labels: &Labels,
        fieldpaths: &[String],
    ) -> Result<SnapshotInfo> {
        self.backend(sn)?;
        self.meta.update(|tx| {
            let mut rec = self.get(tx, ns, sn, key)?;
            let rest = labels::apply_update(&mut rec.labels, new_labels, fieldpaths)?;
            if let Some(bad) = rest.first() {
                return Err(Error::InvalidArgument(format!(
                    "cannot update field {bad:?} of snapshot {key:?}"
                )));
            }
            rec.updated_at = Timestamp::now();
            tx.put(Bucket::Snapshots, &record_key(sn, ns, key), &rec)?;
            Ok(info(key, rec))
        })
    }

    pub fn list(&self, ns: &Namespace, sn: &str, filter: &Filter) -> Result<Vec<SnapshotInfo>> {
        self.backend(sn)?;
        let p = prefix(sn, ns);
        let recs: Vec<(String, SnapshotRecord)> =
            self.meta.view(|tx| tx.scan(Bucket::Snapshots, &p))?;
        Ok(recs
            .into_iter()
            .map(|(k, r)| info(&k[p.len()..], r))
            .filter(|i| filter.matches(i))
            .collect())
    }

    pub fn usage(&self, ns: &Namespace, sn: &str, key: &str) -> Result<Usage> {
        let backend = self.backend(sn)?;
        let rec = self.meta.view(|tx| self.get(tx, ns, sn, key))?;
        backend.usage(rec.id)
    }

    /// Every snapshot id any namespace still records, per snapshotter.
    pub(crate) fn live_ids(tx: &WriteTx, sn: &str) -> Result<std::collections::HashSet<u64>> {
        let recs: Vec<(String, SnapshotRecord)> = tx.scan(Bucket::Snapshots, &format!("{sn}\0"))?;
        Ok(recs.into_iter().map(|(_, r)| r.id).collect())
    }

    /// Removes directories of ids no record refers to (left by deletes or crashes).
    pub fn cleanup(&self, sn: &str) -> Result<usize> {
        let backend = self.backend(sn)?.clone();
        let _gc = self.gc_lock.write().unwrap_or_else(|p| p.into_inner());
        let live = self.meta.update(|tx| Self::live_ids(tx, sn))?;
        let mut removed = 0;
        for id in backend.ids_on_disk()? {
            if !live.contains(&id) {
                backend.remove(id)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn info(name: &str, r: SnapshotRecord) -> SnapshotInfo {
    SnapshotInfo {
        name: name.to_owned(),
        parent: r.parent,
        kind: r.kind,
        labels: r.labels,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

/// Directories `<root>/snapshots/<id>` as both backends lay them out.
pub(crate) fn ids_in(dir: &Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(Error::io("read", dir))? {
        let e = e.map_err(Error::io("read", dir))?;
        if let Some(id) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
            out.push(id);
        }
    }
    Ok(out)
}

/// Moves `dir` into `<root>/trash` under a unique name; a directory already gone is fine.
pub(crate) fn retire_dir(dir: &Path, root: &Path) -> Result<()> {
    let trash = root.join("trash");
    std::fs::create_dir_all(&trash).map_err(Error::io("create", &trash))?;
    let name = format!(
        "{}-{}",
        dir.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        uuid::Uuid::new_v4().simple()
    );
    match std::fs::rename(dir, trash.join(name)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("retire", dir)(e)),
        _ => Ok(()),
    }
}

/// Deletes everything in `<root>/trash`.
pub(crate) fn empty_trash_in(root: &Path) -> Result<usize> {
    let trash = root.join("trash");
    let entries = match std::fs::read_dir(&trash) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("read", &trash)(e)),
    };
    let mut n = 0;
    for e in entries {
        let p = e.map_err(Error::io("read", &trash))?.path();
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(Error::io("remove", &p))?;
        n += 1;
    }
    Ok(n)
}

/// Removes a snapshot directory; one that is already gone is fine.
pub(crate) fn remove_dir(d: &Path) -> Result<()> {
    match std::fs::remove_dir_all(d) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", d)(e)),
        _ => Ok(()),
    }
}

/// Bytes and inodes used under `path` (not following links, not crossing devices).
pub fn disk_usage(path: &Path) -> Result<Usage> {
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let mut u = Usage::default();
    let mut stack = vec![path.to_owned()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).map_err(Error::io("stat", &p))?;
        if seen.insert((md.dev(), md.ino())) {
            u.inodes += 1;
            u.size += (md.blocks() * 512) as i64;
        }
        if md.is_dir() {
            for e in std::fs::read_dir(&p).map_err(Error::io("read", &p))? {
                stack.push(e.map_err(Error::io("read", &p))?.path());
            }
        }
    }
    Ok(u)
}

#[cfg(test)]
mod conformance {
    //! One suite every snapshotter must pass; needs root (it mounts).
    use super::*;
    use crate::mount::TempMount;

    fn suite(make: impl Fn(&Path) -> Arc<dyn Backend>) {
        let t = tempfile::tempdir().unwrap();
        let meta = Arc::new(MetaStore::open(&t.path().join("m.redb")).unwrap());
        let backend = make(&t.path().join("sn"));
        let sn = backend.name();
        let s = Snapshots::new(meta, vec![backend.clone()], Default::default());
        let ns = Namespace::new("default").unwrap();
        let new = |key, parent, kind| NewSnapshot {
            key,
            parent,
            kind,
            labels: Labels::new(),
            lease: None,
        };
        let scratch = t.path().join("mnt");

        let m = s
            .create(&ns, sn, new("base-work", None, Kind::Active))
            .unwrap();
        {
            let mnt = TempMount::new(&scratch, &m).unwrap();
            std::fs::write(mnt.path().join("a"), "a").unwrap();
        }
        s.commit(&ns, sn, "base", "base-work", Labels::new(), None)
            .unwrap();
        let m = s
            .create(&ns, sn, new("child-work", Some("base"), Kind::Active))
            .unwrap();
        {
            let mnt = TempMount::new(&scratch, &m).unwrap();
            assert_eq!(std::fs::read_to_string(mnt.path().join("a")).unwrap(), "a");
            std::fs::write(mnt.path().join("b"), "b").unwrap();
            std::fs::remove_file(mnt.path().join("a")).unwrap();
        }
        s.commit(&ns, sn, "child", "child-work", Labels::new(), None)
            .unwrap();
        let m = s
            .create(&ns, sn, new("view", Some("child"), Kind::View))
            .unwrap();
        {
            let mnt = TempMount::new(&scratch, &m).unwrap();
            assert!(!mnt.path().join("a").exists());
            assert_eq!(std::fs::read_to_string(mnt.path().join("b")).unwrap(), "b");
            assert!(
                std::fs::write(mnt.path().join("c"), "c").is_err(),
                "{sn}: a view is writable"
            );
        }
        // The base is untouched by its child.
        let m = s
            .create(&ns, sn, new("base-view", Some("base"), Kind::View))
            .unwrap();
        {
            let mnt = TempMount::new(&scratch, &m).unwrap();
            assert!(mnt.path().join("a").exists() && !mnt.path().join("b").exists());
        }

        let err = |r: Result<Vec<Mount>>| r.unwrap_err().kind();
        assert_eq!(
            err(s.create(&ns, sn, new("view", None, Kind::Active))),
            crate::ErrorKind::AlreadyExists
        );
        assert_eq!(
            err(s.create(&ns, sn, new("x", Some("missing"), Kind::Active))),
            crate::ErrorKind::NotFound
        );
        s.create(&ns, sn, new("active", Some("child"), Kind::Active))
            .unwrap();
        assert_eq!(
            err(s.create(&ns, sn, new("y", Some("active"), Kind::Active))),
            crate::ErrorKind::InvalidArgument
        );
        assert_eq!(
            s.commit(&ns, sn, "z", "view", Labels::new(), None)
                .unwrap_err()
                .kind(),
            crate::ErrorKind::FailedPrecondition
        );
        assert_eq!(
            s.commit(&ns, sn, "base", "active", Labels::new(), None)
                .unwrap_err()
                .kind(),
            crate::ErrorKind::AlreadyExists
        );
        assert_eq!(
            s.remove(&ns, sn, "base").unwrap_err().kind(),
            crate::ErrorKind::FailedPrecondition
        );
        assert_eq!(
            s.mounts(&ns, sn, "base").unwrap_err().kind(),
            crate::ErrorKind::FailedPrecondition
        );

        let committed = Filter::parse_all(&["kind==committed"]).unwrap();
        assert_eq!(s.list(&ns, sn, &committed).unwrap().len(), 2);
        assert_eq!(
            s.stat(&ns, sn, "child").unwrap().parent.as_deref(),
            Some("base")
        );
        let labels: Labels = [("team".to_string(), "a".to_string())].into();
        let i = s
            .update(&ns, sn, "child", &labels, &["labels.team".to_string()])
            .unwrap();
        assert_eq!(i.labels.get("team").map(String::as_str), Some("a"));
        assert!(s.usage(&ns, sn, "child").unwrap().inodes >= 1);
        let other = Namespace::new("other").unwrap();
        assert!(s.stat(&other, sn, "child").unwrap_err().is_not_found());

        for key in ["active", "view", "base-view", "child", "base"] {
            s.remove(&ns, sn, key).unwrap();
        }
        assert!(s.list(&ns, sn, &Filter::default()).unwrap().is_empty());
        s.cleanup(sn).unwrap();
        assert!(
            backend.ids_on_disk().unwrap().is_empty(),
            "{sn}: directories left"
        );
    }

    #[test]
    fn root_overlayfs_passes_the_snapshotter_suite() {
        suite(|p| Arc::new(Overlay::open(p).expect("overlayfs must be usable on this machine")));
    }

    #[test]
    fn root_native_passes_the_snapshotter_suite() {
        suite(|p| Arc::new(Native::open(p).unwrap()));
    }
}
