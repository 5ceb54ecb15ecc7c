//! Garbage collection with containerd's semantics. Roots: images, containers, live leases
//! and objects labelled `containerd.io/gc.root`. Edges: `containerd.io/gc.ref.content*`
//! and `containerd.io/gc.ref.snapshot.<snapshotter>` labels, and snapshot parents.
//! Unreachable records are removed in one transaction; then blobs, snapshot directories
//! and stale ingests that no record refers to are removed from disk.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::containers::Container;
use crate::content::{ContentRecord, ContentStore};
use crate::error::Result;
use crate::images::Image;
use crate::labels::{GC_EXPIRE, GC_REF_CONTENT, GC_REF_SNAPSHOT, GC_ROOT};
use crate::leases::LeaseRecord;
use crate::metadata::{Bucket, Labels, MetaStore, NamespaceRecord, Reader, Timestamp};
use crate::snapshot::{SnapshotRecord, Snapshots};

/// An ingest nobody leases is kept this long after its last write, as containerd does.
const UNLEASED_INGEST_EXPIRY: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Node {
    Content(String, String),
    Snapshot(String, String, String),
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcStats {
    pub content_records: usize,
    pub snapshot_records: usize,
    pub leases_expired: usize,
    pub blobs_removed: usize,
    pub snapshot_dirs_removed: usize,
    pub ingests_removed: usize,
}

pub struct Collector {
    pub meta: Arc<MetaStore>,
    pub content: Arc<ContentStore>,
    pub snapshots: Arc<Snapshots>,
    pub gc_lock: Arc<RwLock<()>>,
}

/// Formats seconds since the epoch as RFC 3339 UTC (`2026-11-24T10:00:00Z`).
pub fn format_rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses an RFC 3339 UTC time such as `2026-11-24T10:00:00Z` (fractions and offsets too).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ')
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, sec) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let mut rest = &s[19..];
    let mut nanos = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits: String = frac.chars().take_while(|c| c.is_ascii_digit()).collect();
        rest = &frac[digits.len()..];
        let padded = format!("{digits:0<9}");
        nanos = padded[..9].parse().ok()?;
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (o[1..3].parse::<i64>().ok()? * 3600 + o[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    // Days from the civil date (proleptic Gregorian), then seconds.
    let (yy, mm) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some((days * 86400 + h * 3600 + mi * 60 + sec - offset) * 1_000_000_000 + nanos)
}

fn label_refs(ns: &str, labels: &Labels, out: &mut Vec<Node>) {
    for (k, v) in labels {
        if k == GC_REF_CONTENT
            || k.strip_prefix(GC_REF_CONTENT)
                .is_some_and(|r| r.starts_with('.') || r.starts_with('/'))
        {
            out.push(Node::Content(ns.to_owned(), v.clone()));
        } else if let Some(sn) = k.strip_prefix(GC_REF_SNAPSHOT) {
            let sn = sn.split('/').next().unwrap_or(sn);
            out.push(Node::Snapshot(ns.to_owned(), sn.to_owned(), v.clone()));
        }
    }
}

impl Collector {
    /// Collects garbage: records and files that no root reaches. The exclusive lock is
    /// held while records are swept and dead files moved aside, not while they are deleted.
    pub fn collect(&self) -> Result<GcStats> {
        let stats = self.mark_and_sweep()?;
        self.content.blobs().empty_trash()?;
        for sn in self.snapshots.names() {
            self.snapshots.backend(sn)?.empty_trash()?;
        }
        Ok(stats)
    }

    fn mark_and_sweep(&self) -> Result<GcStats> {
        let _gc = self.gc_lock.write().unwrap_or_else(|p| p.into_inner());
        let mut stats = GcStats::default();
        let now = Timestamp::now().0;
        let snapshotters: Vec<&'static str> = self.snapshots.names().collect();
        let (live_blobs, live_ids, leased_ingests) = self.meta.update(|tx| {
            let namespaces: Vec<(String, NamespaceRecord)> = tx.scan(Bucket::Namespaces, "")?;
            let mut roots: Vec<Node> = Vec::new();
            let mut leased_ingests = HashSet::new();
            let mut content: HashMap<(String, String), ContentRecord> = HashMap::new();
            let mut snaps: HashMap<(String, String, String), SnapshotRecord> = HashMap::new();
            for (ns, _) in &namespaces {
                let p = format!("{ns}\0");
                for (k, lease) in tx.scan::<LeaseRecord>(Bucket::Leases, &p)? {
                    let expired = lease
                        .labels
                        .get(GC_EXPIRE)
                        .and_then(|e| parse_rfc3339(e))
                        .is_some_and(|t| t < now);
                    if expired {
                        tx.delete(Bucket::Leases, &k)?;
                        stats.leases_expired += 1;
                        continue;
                    }
                    for (kind, id) in lease.resources {
                        match kind.as_str() {
                            "content" => roots.push(Node::Content(ns.clone(), id)),
                            "ingests" => {
                                leased_ingests.insert((ns.clone(), id));
                            }
                            k => {
                                if let Some(sn) = k.strip_prefix("snapshots/") {
                                    roots.push(Node::Snapshot(ns.clone(), sn.to_owned(), id));
                                }
                            }
                        }
                    }
                }
                for (_, img) in tx.scan::<Image>(Bucket::Images, &p)? {
                    roots.push(Node::Content(ns.clone(), img.target.digest.clone()));
                    label_refs(ns, &img.labels, &mut roots);
                }
                for (_, c) in tx.scan::<Container>(Bucket::Containers, &p)? {
                    if !c.snapshotter.is_empty() && !c.snapshot_key.is_empty() {
                        roots.push(Node::Snapshot(
                            ns.clone(),
                            c.snapshotter.clone(),
                            c.snapshot_key.clone(),
                        ));
                    }
                    label_refs(ns, &c.labels, &mut roots);
                }
                for (k, rec) in tx.scan::<ContentRecord>(Bucket::Content, &p)? {
                    let d = k[p.len()..].to_owned();
                    if rec.labels.contains_key(GC_ROOT) {
                        roots.push(Node::Content(ns.clone(), d.clone()));
                    }
                    content.insert((ns.clone(), d), rec);
                }
                for sn in &snapshotters {
                    let sp = format!("{sn}\0{ns}\0");
                    for (k, rec) in tx.scan::<SnapshotRecord>(Bucket::Snapshots, &sp)? {
                        let key = k[sp.len()..].to_owned();
                        if rec.labels.contains_key(GC_ROOT) {
                            roots.push(Node::Snapshot(ns.clone(), sn.to_string(), key.clone()));
                        }
                        snaps.insert((ns.clone(), sn.to_string(), key), rec);
                    }
                }
            }
            // Mark.
            let mut marked: HashSet<Node> = HashSet::new();
            while let Some(n) = roots.pop() {
                if !marked.insert(n.clone()) {
                    continue;
                }
                match &n {
                    Node::Content(ns, d) => {
                        if let Some(rec) = content.get(&(ns.clone(), d.clone())) {
                            label_refs(ns, &rec.labels, &mut roots);
                        }
                    }
                    Node::Snapshot(ns, sn, key) => {
                        if let Some(rec) = snaps.get(&(ns.clone(), sn.clone(), key.clone())) {
                            if let Some(p) = &rec.parent {
                                roots.push(Node::Snapshot(ns.clone(), sn.clone(), p.clone()));
                            }
                            label_refs(ns, &rec.labels, &mut roots);
                        }
                    }
                }
            }
            // Sweep records.
            let mut live_blobs = HashSet::new();
            for ((ns, d), _) in content {
                if marked.contains(&Node::Content(ns.clone(), d.clone())) {
                    live_blobs.insert(d);
                } else {
                    tx.delete(Bucket::Content, &format!("{ns}\0{d}"))?;
                    stats.content_records += 1;
                }
            }
            let mut live_ids: HashMap<String, HashSet<u64>> = HashMap::new();
            for ((ns, sn, key), rec) in snaps {
                if marked.contains(&Node::Snapshot(ns.clone(), sn.clone(), key.clone())) {
                    live_ids.entry(sn).or_default().insert(rec.id);
                } else {
                    tx.delete(Bucket::Snapshots, &format!("{sn}\0{ns}\0{key}"))?;
                    stats.snapshot_records += 1;
                }
            }
            Ok((live_blobs, live_ids, leased_ingests))
        })?;
        // Sweep the disk: dead files are only moved aside under the lock, so commits and
        // snapshot creation wait for renames, never for a deletion.
        let blobs = self.content.blobs();
        for d in blobs.blob_digests()? {
            if !live_blobs.contains(&d.to_string()) {
                blobs.retire_blob(&d)?;
                stats.blobs_removed += 1;
            }
        }
        for sn in &snapshotters {
            let backend = self.snapshots.backend(sn)?;
            let live = live_ids.get(*sn).cloned().unwrap_or_default();
            for id in backend.ids_on_disk()? {
                if !live.contains(&id) {
                    backend.retire(id)?;
                    stats.snapshot_dirs_removed += 1;
                }
            }
        }
        for dir in blobs.broken_ingests()? {
            if self.content.blobs().ingest_is_unlocked(&dir)
                && std::fs::remove_dir_all(&dir).is_ok()
            {
                stats.ingests_removed += 1;
            }
        }
        let cutoff = now - UNLEASED_INGEST_EXPIRY.as_nanos() as i64;
        for (ns, status, dir) in blobs.ingests()? {
            let stale = !leased_ingests.contains(&(ns, status.r#ref.clone()))
                && status.updated_at.0 < cutoff;
            if stale
                && self.content.blobs().ingest_is_unlocked(&dir)
                && std::fs::remove_dir_all(&dir).is_ok()
            {
                stats.ingests_removed += 1;
            }
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::BlobStore;
    use crate::snapshot::{Backend, Kind, Native, NewSnapshot};
    use crate::Namespace;

    fn stores(dir: &std::path::Path) -> Collector {
        let meta = Arc::new(MetaStore::open(&dir.join("meta.redb")).unwrap());
        let gc_lock = Arc::new(RwLock::new(()));
        let content = Arc::new(ContentStore::new(
            BlobStore::open(&dir.join("content")).unwrap(),
            meta.clone(),
            gc_lock.clone(),
        ));
        let native: Arc<dyn Backend> = Arc::new(Native::open(&dir.join("native")).unwrap());
        let snapshots = Arc::new(Snapshots::new(meta.clone(), vec![native], gc_lock.clone()));
        Collector {
            meta,
            content,
            snapshots,
            gc_lock,
        }
    }

    #[test]
    fn dead_files_are_deleted_after_the_lock_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let c = stores(dir.path());
        let ns = Namespace::new("default").unwrap();
        let mut w = c.content.writer(&ns, "r", 0, None, None).unwrap();
        w.write(b"garbage").unwrap();
        let d = c.content.commit(w, 0, None, &Labels::new(), None).unwrap();
        c.snapshots
            .create(
                &ns,
                "native",
                NewSnapshot {
                    key: "k",
                    parent: None,
                    kind: Kind::Active,
                    labels: Labels::new(),
                    lease: None,
                },
            )
            .unwrap();
        let trash =
            |p: &str| std::fs::read_dir(dir.path().join(p).join("trash")).map_or(0, |d| d.count());
        // Nothing roots the blob or the snapshot: both records go, their files are moved
        // aside under the lock and deleted after it.
        let stats = c.mark_and_sweep().unwrap();
        assert_eq!((stats.blobs_removed, stats.snapshot_dirs_removed), (1, 1));
        assert!(c.gc_lock.try_write().is_ok(), "the lock is free again");
        assert!(!c.content.blobs().has_blob(&d));
        assert_eq!(trash("content"), 1, "the blob waits in the trash");
        assert_eq!(trash("native"), 1, "the snapshot waits in the trash");
        c.collect().unwrap();
        assert_eq!(trash("content"), 0);
        assert_eq!(trash("native"), 0);
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        for secs in [0, 951_782_401, 1_795_000_000, 4_107_542_400] {
            assert_eq!(
                parse_rfc3339(&format_rfc3339(secs)),
                Some(secs * 1_000_000_000)
            );
        }
        assert_eq!(format_rfc3339(951_782_401), "2000-02-29T00:00:01Z");
        assert_eq!(
            parse_rfc3339("2000-03-01T00:00:01.5Z"),
            Some(951_868_801_500_000_000)
        );
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}

/// Runs the collector on its own thread: after deletions (`schedule`), on demand while a
/// caller waits (`collect_now`, for `sync` deletes), and on a timer.
#[derive(Clone)]
pub struct Scheduler {
    tx: std::sync::mpsc::Sender<Option<std::sync::mpsc::Sender<Result<GcStats>>>>,
}

impl Scheduler {
    pub fn spawn(collector: Collector, every: Duration) -> Self {
        let (tx, rx) =
            std::sync::mpsc::channel::<Option<std::sync::mpsc::Sender<Result<GcStats>>>>();
        std::thread::Builder::new()
            .name("berth-gc".into())
            .spawn(move || loop {
                let waiter = match rx.recv_timeout(every) {
                    Ok(w) => w,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                };
                // Fold requests that queued up meanwhile into this one run.
                let mut waiters: Vec<_> = waiter.into_iter().collect();
                while let Ok(w) = rx.try_recv() {
                    waiters.extend(w);
                }
                let result = collector.collect();
                match &result {
                    Ok(s) if *s != GcStats::default() => tracing::info!(?s, "garbage collected"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("garbage collection failed: {e}"),
                }
                for w in waiters {
                    let _ = w.send(
                        result
                            .as_ref()
                            .map(Clone::clone)
                            .map_err(|e| crate::Error::Database(e.to_string())),
                    );
                }
            })
            .expect("spawn gc thread");
        Scheduler { tx }
    }

    pub fn schedule(&self) {
        let _ = self.tx.send(None);
    }

    /// Runs a collection and waits for it (blocking).
    pub fn collect_now(&self) -> Result<GcStats> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.tx
            .send(Some(tx))
            .map_err(|_| crate::Error::Unavailable("garbage collector is not running".into()))?;
        rx.recv()
            .map_err(|_| crate::Error::Unavailable("garbage collector stopped".into()))?
    }
}
