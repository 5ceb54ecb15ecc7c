//! The content store: blobs addressed by digest under `<root>/blobs/sha256/`, written
//! through resumable ingests under `<root>/ingest/`. A blob becomes visible only after
//! its bytes were fsynced, checked against size and digest, and renamed into place;
//! which namespaces see it is recorded in the metadata store in the same step.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::filters::{Filter, Filterable};
use crate::labels;
use crate::leases;
use crate::metadata::{key, ns_prefix, Bucket, Labels, MetaStore, Reader, Timestamp};
use crate::namespace::Namespace;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContentRecord {
    pub size: i64,
    pub labels: Labels,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Clone, Debug)]
pub struct ContentInfo {
    pub digest: Digest,
    pub size: i64,
    pub labels: Labels,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Filterable for ContentInfo {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "digest" => Some(self.digest.to_string()),
            [f] if f == "size" => Some(self.size.to_string()),
            _ => labels::filter_field(&self.labels, path),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct IngestMeta {
    namespace: String,
    r#ref: String,
    total: i64,
    expected: Option<String>,
    started_at: Timestamp,
}

#[derive(Clone, Debug)]
pub struct IngestStatus {
    pub r#ref: String,
    pub offset: i64,
    pub total: i64,
    pub expected: Option<Digest>,
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Filterable for IngestStatus {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "ref" => Some(self.r#ref.clone()),
            _ => None,
        }
    }
}

/// The on-disk blob and ingest area, shared by all namespaces.
pub struct BlobStore {
    root: PathBuf,
    locked: Arc<Mutex<HashSet<String>>>,
}

impl BlobStore {
    pub fn open(root: &Path) -> Result<Self> {
        for d in ["blobs/sha256", "ingest"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(Error::io("create", &p))?;
        }
        Ok(BlobStore {
            root: root.to_owned(),
            locked: Default::default(),
        })
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Every digest with a blob on disk.
    pub fn blob_digests(&self) -> Result<Vec<Digest>> {
        let dir = self.root.join("blobs/sha256");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(Error::io("read", &dir))? {
            let e = e.map_err(Error::io("read", &dir))?;
            if let Ok(d) = Digest::parse(&format!("sha256:{}", e.file_name().to_string_lossy())) {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Moves a blob aside at once (a rename); `empty_trash` deletes it later.
    pub fn retire_blob(&self, d: &Digest) -> Result<()> {
        let trash = self.root.join("trash");
        fs::create_dir_all(&trash).map_err(Error::io("create", &trash))?;
        let p = self.blob_path(d);
        let to = trash.join(format!("{}-{}", d.hex(), uuid::Uuid::new_v4().simple()));
        match fs::rename(&p, to) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("retire", p)(e)),
            _ => Ok(()),
        }
    }

    /// Deletes the blobs `retire_blob` moved aside.
    pub fn empty_trash(&self) -> Result<usize> {
        crate::snapshot::empty_trash_in(&self.root)
    }

    pub fn remove_blob(&self, d: &Digest) -> Result<()> {
        let p = self.blob_path(d);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("remove", p)(e)),
            _ => Ok(()),
        }
    }

    fn ingest_dir(&self, ns: &Namespace, r: &str) -> PathBuf {
        let name = Digest::of(format!("{}\0{}", ns.as_str(), r).as_bytes());
        self.root.join("ingest").join(name.hex())
    }

    /// Whether no writer holds the ingest in `dir` right now.
    pub fn ingest_is_unlocked(&self, dir: &Path) -> bool {
        !self
            .locked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&*dir.to_string_lossy())
    }

    fn lock(&self, dir: &Path, r: &str) -> Result<IngestLock> {
        let k = dir.to_string_lossy().into_owned();
        let mut locked = self.locked.lock().unwrap_or_else(|p| p.into_inner());
        if !locked.insert(k.clone()) {
            return Err(Error::Unavailable(format!(
                "ref {r:?} is locked: another writer is using it"
            )));
        }
        Ok(IngestLock {
            set: self.locked.clone(),
            key: k,
        })
    }

    fn read_ingest(&self, dir: &Path) -> Result<(IngestMeta, IngestStatus)> {
        let mp = dir.join("meta.json");
        let meta: IngestMeta =
            serde_json::from_slice(&fs::read(&mp).map_err(Error::io("read", &mp))?)
                .map_err(|e| Error::Database(format!("corrupt ingest {}: {e}", mp.display())))?;
        let dp = dir.join("data");
        let md = fs::metadata(&dp).map_err(Error::io("stat", &dp))?;
        let updated = md
            .modified()
            .ok()
            .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| Timestamp(d.as_nanos() as i64))
            .unwrap_or(meta.started_at);
        let status = IngestStatus {
            r#ref: meta.r#ref.clone(),
            offset: md.len() as i64,
            total: meta.total,
            expected: meta.expected.as_deref().and_then(|e| Digest::parse(e).ok()),
            started_at: meta.started_at,
            updated_at: updated,
        };
        Ok((meta, status))
    }

    /// All readable ingests with the namespace they belong to. Listing never removes
    /// anything: an ingest may be between its rename and its removal in a commit.
    pub fn ingests(&self) -> Result<Vec<(String, IngestStatus, PathBuf)>> {
        Ok(self
            .ingest_dirs()?
            .into_iter()
            .filter_map(|(dir, r)| r.ok().map(|(m, s)| (m.namespace, s, dir)))
            .collect())
    }

    /// Ingest directories that cannot be read (cut short while being created); only the
    /// collector, which excludes commits, may remove them.
    pub fn broken_ingests(&self) -> Result<Vec<PathBuf>> {
        Ok(self
            .ingest_dirs()?
            .into_iter()
            .filter(|(_, r)| r.is_err())
            .map(|(d, _)| d)
            .collect())
    }

    #[allow(clippy::type_complexity)]
    fn ingest_dirs(&self) -> Result<Vec<(PathBuf, Result<(IngestMeta, IngestStatus)>)>> {
        let dir = self.root.join("ingest");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(Error::io("read", &dir))? {
            let p = e.map_err(Error::io("read", &dir))?.path();
            let r = self.read_ingest(&p);
            out.push((p, r));
        }
        Ok(out)
    }
}

struct IngestLock {
    set: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl Drop for IngestLock {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// An open ingest. Holding it holds the ref's lock; dropping it keeps the bytes written
/// so far, so the same ref can resume from its offset later.
pub struct Writer {
    ns: Namespace,
    dir: PathBuf,
    file: File,
    hasher: Hasher,
    meta: IngestMeta,
    offset: u64,
    _lock: IngestLock,
}

impl Writer {
    pub fn status(&self) -> IngestStatus {
        IngestStatus {
            r#ref: self.meta.r#ref.clone(),
            offset: self.offset as i64,
            total: self.meta.total,
            expected: self
                .meta
                .expected
                .as_deref()
                .and_then(|e| Digest::parse(e).ok()),
            started_at: self.meta.started_at,
            updated_at: Timestamp::now(),
        }
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The file the ingest's bytes are written to. After the commit the same inode is the
    /// blob, so a reader that opened it while it grew reads on undisturbed.
    pub fn data_path(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Digest of the bytes written so far.
    pub fn digest_so_far(&self) -> Digest {
        self.hasher.clone().finish()
    }

    pub fn reference(&self) -> &str {
        &self.meta.r#ref
    }

    pub fn expected(&self) -> Option<Digest> {
        self.meta
            .expected
            .as_deref()
            .and_then(|e| Digest::parse(e).ok())
    }

    /// Updates total and expected digest as later messages of a write stream may.
    pub fn set_expectations(&mut self, total: i64, expected: Option<&Digest>) -> Result<()> {
        let mut changed = false;
        if total > 0 && total != self.meta.total {
            self.meta.total = total;
            changed = true;
        }
        if let Some(e) = expected {
            if self.meta.expected.as_deref() != Some(&e.to_string()) {
                self.meta.expected = Some(e.to_string());
                changed = true;
            }
        }
        if changed {
            write_meta(&self.dir, &self.meta)?;
        }
        Ok(())
    }

    /// Writes `data` at `offset`, which must be the current offset; offset 0 restarts the
    /// ingest from nothing.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if offset != self.offset {
            if offset != 0 {
                return Err(Error::OutOfRange(format!(
                    "write of ref {:?} at offset {offset} must occur at its current offset {}",
                    self.meta.r#ref, self.offset
                )));
            }
            self.rewind(0)?;
        }
        self.write(data)
    }

    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(data)
            .map_err(Error::io("write", self.dir.join("data")))?;
        self.hasher.update(data);
        self.offset += data.len() as u64;
        Ok(())
    }

    fn rewind(&mut self, offset: u64) -> Result<()> {
        let p = self.dir.join("data");
        self.file
            .set_len(offset)
            .map_err(Error::io("truncate", &p))?;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(Error::io("seek", &p))?;
        self.hasher = hash_prefix(&mut self.file, offset).map_err(Error::io("read", &p))?;
        self.offset = offset;
        Ok(())
    }
}

/// Lets a compressor or tar builder stream straight into an ingest.
impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Writer::write(self, buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The byte range a Read of `blob` asks for: from `offset`, `size` bytes (or to the end
/// when `size` is not positive), clamped to the blob. An offset past the end is out of range;
/// no request can overflow it.
pub fn read_range(blob: &Digest, offset: i64, size: i64, blob_size: u64) -> Result<(i64, i64)> {
    let total = i64::try_from(blob_size).unwrap_or(i64::MAX);
    let start = offset.max(0);
    if start > total {
        return Err(Error::OutOfRange(format!(
            "read of {blob} at offset {start} is past its size {total}"
        )));
    }
    let end = if size <= 0 {
        total
    } else {
        start.saturating_add(size).min(total)
    };
    Ok((start, end))
}

fn hash_prefix(f: &mut File, len: u64) -> io::Result<Hasher> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    f.seek(SeekFrom::Start(len))?;
    Ok(h)
}

fn write_meta(dir: &Path, meta: &IngestMeta) -> Result<()> {
    let tmp = dir.join("meta.json.tmp");
    let bytes = serde_json::to_vec(meta).map_err(|e| Error::Database(e.to_string()))?;
    fs::write(&tmp, bytes).map_err(Error::io("write", &tmp))?;
    fs::rename(&tmp, dir.join("meta.json")).map_err(Error::io("rename", &tmp))
}

fn fsync_dir(p: &Path) -> Result<()> {
    File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(Error::io("fsync", p))
}

/// The namespaced content store: blobs on disk, visibility and labels in metadata.
pub struct ContentStore {
    blobs: BlobStore,
    meta: Arc<MetaStore>,
    /// Held shared while content is committed, exclusively while GC removes blobs, so a
    /// blob is never removed between being written and being recorded.
    gc_lock: Arc<RwLock<()>>,
}

impl ContentStore {
    pub fn new(blobs: BlobStore, meta: Arc<MetaStore>, gc_lock: Arc<RwLock<()>>) -> Self {
        ContentStore {
            blobs,
            meta,
            gc_lock,
        }
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    fn not_found(ns: &Namespace, d: &Digest) -> Error {
        Error::NotFound(format!("content {d} in namespace {ns:?}"))
    }

    pub fn info(&self, ns: &Namespace, d: &Digest) -> Result<ContentInfo> {
        let rec: ContentRecord = self
            .meta
            .view(|tx| tx.get(Bucket::Content, &key(ns, &d.to_string())))?
            .ok_or_else(|| Self::not_found(ns, d))?;
        Ok(to_info(d.clone(), rec))
    }

    pub fn update(
        &self,
        ns: &Namespace,
        d: &Digest,
        new_labels: &Labels,
        fieldpaths: &[String],
    ) -> Result<ContentInfo> {
        self.meta.update(|tx| {
            let k = key(ns, &d.to_string());
            let mut rec: ContentRecord = tx
                .get(Bucket::Content, &k)?
                .ok_or_else(|| Self::not_found(ns, d))?;
            let rest = labels::apply_update(&mut rec.labels, new_labels, fieldpaths)?;
            if let Some(bad) = rest.first() {
                return Err(Error::InvalidArgument(format!(
                    "cannot update field {bad:?} of content {d}"
                )));
            }
            rec.updated_at = Timestamp::now();
            tx.put(Bucket::Content, &k, &rec)?;
            Ok(to_info(d.clone(), rec))
        })
    }

    /// Sets these labels, keeping the others.
    pub fn add_labels(&self, ns: &Namespace, d: &Digest, add: Labels) -> Result<ContentInfo> {
        let fields: Vec<String> = add.keys().map(|k| format!("labels.{k}")).collect();
        self.update(ns, d, &add, &fields)
    }

    pub fn list(&self, ns: &Namespace, filter: &Filter) -> Result<Vec<ContentInfo>> {
        let prefix = ns_prefix(ns);
        let recs: Vec<(String, ContentRecord)> =
            self.meta.view(|tx| tx.scan(Bucket::Content, &prefix))?;
        Ok(recs
            .into_iter()
            .filter_map(|(k, r)| {
                Digest::parse(&k[prefix.len()..])
                    .ok()
                    .map(|d| to_info(d, r))
            })
            .filter(|i| filter.matches(i))
            .collect())
    }

    /// Removes the content from the namespace; the blob goes at the next collection.
    pub fn delete(&self, ns: &Namespace, d: &Digest) -> Result<()> {
        self.meta.update(|tx| {
            if !tx.delete(Bucket::Content, &key(ns, &d.to_string()))? {
                return Err(Self::not_found(ns, d));
            }
            Ok(())
        })
    }

    /// Opens a blob visible in the namespace, with its size.
    pub fn open(&self, ns: &Namespace, d: &Digest) -> Result<(File, u64)> {
        self.info(ns, d)?;
        let p = self.blobs.blob_path(d);
        let f = File::open(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Self::not_found(ns, d),
            _ => Error::io("open", &p)(e),
        })?;
        let len = f.metadata().map_err(Error::io("stat", &p))?.len();
        Ok((f, len))
    }

    /// Opens or resumes the ingest `ref`. Fails with AlreadyExists when the expected content
    /// is already in this namespace, and Unavailable while another writer holds the ref.
    pub fn writer(
        &self,
        ns: &Namespace,
        r: &str,
        total: i64,
        expected: Option<&Digest>,
        lease: Option<&str>,
    ) -> Result<Writer> {
        if r.is_empty() {
            return Err(Error::InvalidArgument(
                "content write needs a non-empty ref".into(),
            ));
        }
        if let Some(e) = expected {
            if self
                .meta
                .view(|tx| tx.get_raw(Bucket::Content, &key(ns, &e.to_string())))?
                .is_some()
            {
                if let Some(l) = lease {
                    self.meta
                        .update(|tx| leases::add_resource(tx, ns, l, "content", &e.to_string()))?;
                }
                return Err(Error::AlreadyExists(format!(
                    "content {e} in namespace {ns:?}"
                )));
            }
            self.share(ns, e, total, lease)?;
        }
        if let Some(l) = lease {
            self.meta
                .update(|tx| leases::add_resource(tx, ns, l, "ingests", r))?;
        }
        let dir = self.blobs.ingest_dir(ns, r);
        let lock = self.blobs.lock(&dir, r)?;
        let dp = dir.join("data");
        let (meta, file, offset, hasher) = match self.blobs.read_ingest(&dir) {
            Ok((mut meta, status)) => {
                let mut file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&dp)
                    .map_err(Error::io("open", &dp))?;
                let hasher =
                    hash_prefix(&mut file, status.offset as u64).map_err(Error::io("read", &dp))?;
                if total > 0 {
                    meta.total = total;
                }
                if let Some(e) = expected {
                    meta.expected = Some(e.to_string());
                }
                write_meta(&dir, &meta)?;
                (meta, file, status.offset as u64, hasher)
            }
            Err(_) => {
                let _ = fs::remove_dir_all(&dir);
                fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
                let meta = IngestMeta {
                    namespace: ns.as_str().to_owned(),
                    r#ref: r.to_owned(),
                    total,
                    expected: expected.map(|e| e.to_string()),
                    started_at: Timestamp::now(),
                };
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&dp)
                    .map_err(Error::io("create", &dp))?;
                write_meta(&dir, &meta)?;
                (meta, file, 0, Hasher::new())
            }
        };
        Ok(Writer {
            ns: ns.clone(),
            dir,
            file,
            hasher,
            meta,
            offset,
            _lock: lock,
        })
    }

    /// Content is shared between namespaces, as with containerd's default policy: when
    /// the expected blob is already on disk (verified when it was committed) and its size
    /// fits, it is recorded in this namespace without a second upload, and the writer is
    /// answered AlreadyExists, which clients take as "already have it".
    fn share(&self, ns: &Namespace, d: &Digest, total: i64, lease: Option<&str>) -> Result<()> {
        let _gc = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let Ok(md) = fs::metadata(self.blobs.blob_path(d)) else {
            return Ok(());
        };
        if total > 0 && md.len() != total as u64 {
            return Ok(());
        }
        let now = Timestamp::now();
        self.meta.update(|tx| {
            tx.ensure_namespace(ns)?;
            let k = key(ns, &d.to_string());
            if tx.get_raw(Bucket::Content, &k)?.is_none() {
                let rec = ContentRecord {
                    size: md.len() as i64,
                    labels: Labels::new(),
                    created_at: now,
                    updated_at: now,
                };
                tx.put(Bucket::Content, &k, &rec)?;
            }
            if let Some(l) = lease {
                leases::add_resource(tx, ns, l, "content", &d.to_string())?;
            }
            Ok(())
        })?;
        Err(Error::AlreadyExists(format!(
            "content {d} in namespace {ns:?}"
        )))
    }

    /// Verifies and publishes the ingest. `size` 0 means "whatever was written". On a size
    /// or digest mismatch the ingest is discarded and nothing is published.
    pub fn commit(
        &self,
        mut w: Writer,
        size: i64,
        expected: Option<&Digest>,
        new_labels: &Labels,
        lease: Option<&str>,
    ) -> Result<Digest> {
        labels::validate(new_labels)?;
        let ns = w.ns.clone();
        let r = w.meta.r#ref.clone();
        let expected = expected.cloned().or_else(|| w.expected());
        let size = if size > 0 { size } else { w.meta.total };
        let fail = |w: &Writer, msg: String| {
            let _ = fs::remove_dir_all(&w.dir);
            Err(Error::FailedPrecondition(msg))
        };
        if size > 0 && size as u64 != w.offset {
            let msg = format!(
                "commit of ref {r:?}: unexpected size {}, expected {size}",
                w.offset
            );
            return fail(&w, msg);
        }
        let actual = std::mem::take(&mut w.hasher).finish();
        if let Some(e) = &expected {
            if *e != actual {
                let msg = format!("commit of ref {r:?}: unexpected digest {actual}, expected {e}");
                return fail(&w, msg);
            }
        }
        let dp = w.dir.join("data");
        w.file.sync_all().map_err(Error::io("fsync", &dp))?;
        let _gc = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let target = self.blobs.blob_path(&actual);
        if target.exists() {
            fs::remove_dir_all(&w.dir).map_err(Error::io("remove", &w.dir))?;
        } else {
            fs::rename(&dp, &target).map_err(Error::io("rename", &dp))?;
            fsync_dir(target.parent().unwrap_or(Path::new("/")))?;
            fs::remove_dir_all(&w.dir).map_err(Error::io("remove", &w.dir))?;
        }
        let now = Timestamp::now();
        let size = w.offset as i64;
        self.meta.update(|tx| {
            tx.ensure_namespace(&ns)?;
            let k = key(&ns, &actual.to_string());
            if tx.get_raw(Bucket::Content, &k)?.is_some() {
                return Err(Error::AlreadyExists(format!(
                    "content {actual} in namespace {ns:?}"
                )));
            }
            let rec = ContentRecord {
                size,
                labels: new_labels.clone(),
                created_at: now,
                updated_at: now,
            };
            tx.put(Bucket::Content, &k, &rec)?;
            if let Some(l) = lease {
                leases::add_resource(tx, &ns, l, "content", &actual.to_string())?;
                leases::remove_resource(tx, &ns, l, "ingests", &r)?;
            }
            Ok(())
        })?;
        Ok(actual)
    }

    pub fn status(&self, ns: &Namespace, r: &str) -> Result<IngestStatus> {
        let dir = self.blobs.ingest_dir(ns, r);
        self.blobs
            .read_ingest(&dir)
            .map(|(_, s)| s)
            .map_err(|_| Error::NotFound(format!("ingest ref {r:?} in namespace {ns:?}")))
    }

    pub fn list_statuses(&self, ns: &Namespace, filter: &Filter) -> Result<Vec<IngestStatus>> {
        Ok(self
            .blobs
            .ingests()?
            .into_iter()
            .filter(|(n, s, _)| n == ns.as_str() && filter.matches(s))
            .map(|(_, s, _)| s)
            .collect())
    }

    pub fn abort(&self, ns: &Namespace, r: &str) -> Result<()> {
        let dir = self.blobs.ingest_dir(ns, r);
        let _lock = self.blobs.lock(&dir, r)?;
        if !dir.exists() {
            return Err(Error::NotFound(format!(
                "ingest ref {r:?} in namespace {ns:?}"
            )));
        }
        fs::remove_dir_all(&dir).map_err(Error::io("remove", &dir))
    }
}

fn to_info(digest: Digest, r: ContentRecord) -> ContentInfo {
    ContentInfo {
        digest,
        size: r.size,
        labels: r.labels,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn read_ranges_never_overflow() {
        let d = Digest::of(b"x");
        assert_eq!(super::read_range(&d, 0, 0, 10).unwrap(), (0, 10));
        assert_eq!(super::read_range(&d, 3, 4, 10).unwrap(), (3, 7));
        assert_eq!(super::read_range(&d, 3, i64::MAX, 10).unwrap(), (3, 10));
        assert_eq!(
            super::read_range(&d, i64::MIN, i64::MAX, 10).unwrap(),
            (0, 10)
        );
        assert_eq!(super::read_range(&d, 10, 1, 10).unwrap(), (10, 10));
        let e = super::read_range(&d, i64::MAX, i64::MAX, 10).unwrap_err();
        assert!(e.to_string().contains(&d.to_string()), "{e}");
        assert_eq!(
            super::read_range(&d, 5, -1, u64::MAX).unwrap(),
            (5, i64::MAX)
        );
    }

    use super::*;

    fn store() -> (tempfile::TempDir, ContentStore) {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(MetaStore::open(&dir.path().join("meta.redb")).unwrap());
        let blobs = BlobStore::open(&dir.path().join("content")).unwrap();
        (dir, ContentStore::new(blobs, meta, Default::default()))
    }

    #[test]
    fn write_resume_commit() {
        let (_d, cs) = store();
        let ns = Namespace::new("default").unwrap();
        let data = b"hello world".to_vec();
        let dg = Digest::of(&data);
        let mut w = cs
            .writer(&ns, "r1", data.len() as i64, Some(&dg), None)
            .unwrap();
        assert!(matches!(
            cs.writer(&ns, "r1", 0, None, None),
            Err(Error::Unavailable(_))
        ));
        w.write_at(0, &data[..5]).unwrap();
        drop(w);
        let mut w = cs.writer(&ns, "r1", 0, None, None).unwrap();
        assert_eq!(w.offset(), 5);
        assert!(matches!(w.write_at(7, b"x"), Err(Error::OutOfRange(_))));
        w.write_at(5, &data[5..]).unwrap();
        let got = cs.commit(w, 0, None, &Labels::new(), None).unwrap();
        assert_eq!(got, dg);
        assert_eq!(cs.info(&ns, &dg).unwrap().size, 11);
        let other = Namespace::new("other").unwrap();
        assert!(cs.info(&other, &dg).unwrap_err().is_not_found());
        assert!(matches!(
            cs.writer(&ns, "r2", 0, Some(&dg), None),
            Err(Error::AlreadyExists(_))
        ));
        assert!(cs
            .list_statuses(&ns, &Filter::default())
            .unwrap()
            .is_empty());
        // Another namespace expecting the same blob shares it without uploading again.
        assert!(matches!(
            cs.writer(&other, "r3", 11, Some(&dg), None),
            Err(Error::AlreadyExists(_))
        ));
        assert_eq!(cs.info(&other, &dg).unwrap().size, 11);
        // ... but not with a size that does not fit.
        let third = Namespace::new("third").unwrap();
        let w = cs.writer(&third, "r4", 12, Some(&dg), None).unwrap();
        assert_eq!(w.offset(), 0);
    }

    #[test]
    fn mismatched_commit_publishes_nothing() {
        let (_d, cs) = store();
        let ns = Namespace::new("default").unwrap();
        let wrong = Digest::of(b"something else");
        let mut w = cs.writer(&ns, "r", 0, Some(&wrong), None).unwrap();
        w.write(b"data").unwrap();
        assert!(matches!(
            cs.commit(w, 0, None, &Labels::new(), None),
            Err(Error::FailedPrecondition(_))
        ));
        let mut w = cs.writer(&ns, "r", 0, None, None).unwrap();
        w.write(b"data").unwrap();
        assert!(matches!(
            cs.commit(w, 3, None, &Labels::new(), None),
            Err(Error::FailedPrecondition(_))
        ));
        assert!(!cs.blobs().has_blob(&wrong));
        assert!(!cs.blobs().has_blob(&Digest::of(b"data")));
        assert!(cs.blobs().blob_digests().unwrap().is_empty());
        assert!(cs.blobs().ingests().unwrap().is_empty());
    }
}
