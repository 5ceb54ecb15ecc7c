//! A blob on its way into the content store, as an unpack reading along sees it. The
//! download's writer records how far the ingest file is written and keeps the last few
//! megabytes it wrote in memory; a `Follower` hands those chunks to the layer's decoder
//! as they are (no copy, no read back from the file) and reads from the file only what
//! has already left memory (an unpack that fell behind).

use std::collections::VecDeque;
use std::io::{BufRead, Read};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

use crate::pull::lock;

/// How many bytes of the latest chunks a landing keeps for its reader.
const RECENT_BYTES: usize = 8 << 20;
/// How much a reader that fell behind reads from the file at a time.
const FILE_READ: usize = 1 << 20;
/// How long a reader waits between checks of a stalled landing.
const POLL: Duration = Duration::from_millis(200);

#[derive(Default)]
pub(crate) struct Landing {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// The ingest file being written, and how far.
    file: Option<PathBuf>,
    written: u64,
    /// Bumped each time the download starts over into a new file.
    generation: u32,
    /// Some(true): committed and verified; Some(false): the download failed or was dropped.
    done: Option<bool>,
    /// The latest chunks written, each with its offset in the blob, oldest first.
    recent: VecDeque<(u64, Bytes)>,
    recent_len: usize,
}

impl Landing {
    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut lock(&self.state));
        self.changed.notify_all();
    }

    fn wait<'a>(&self, s: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait_timeout(s, POLL)
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0)
    }

    /// A download (re)starts writing `file` at `offset`.
    pub(crate) fn started(&self, file: PathBuf, offset: u64) {
        self.update(|s| {
            s.generation += 1;
            s.file = Some(file);
            s.written = offset;
            s.recent.clear();
            s.recent_len = 0;
        });
    }

    /// `chunk` is in the file, ending at `end`.
    pub(crate) fn wrote(&self, end: u64, chunk: Bytes) {
        self.update(|s| {
            s.written = end;
            if chunk.is_empty() {
                return;
            }
            s.recent_len += chunk.len();
            s.recent.push_back((end - chunk.len() as u64, chunk));
            while s.recent_len > RECENT_BYTES {
                match s.recent.pop_front() {
                    Some((_, c)) => s.recent_len -= c.len(),
                    None => break,
                }
            }
        });
    }

    pub(crate) fn finish(&self, ok: bool) {
        self.update(|s| {
            if s.done.is_none() {
                s.done = Some(ok);
            }
            s.recent.clear();
            s.recent_len = 0;
        });
    }

    /// Blocks until the blob is committed (true) or its download failed (false).
    pub(crate) fn wait_done(&self) -> bool {
        let mut s = lock(&self.state);
        loop {
            if let Some(ok) = s.done {
                return ok;
            }
            s = self.wait(s);
        }
    }

    /// A reader of the blob as it arrives; None once it is committed (read it from the
    /// store) or failed.
    pub(crate) fn follow(self: &Arc<Self>, size: u64) -> Option<Follower> {
        let mut s = lock(&self.state);
        loop {
            if s.done.is_some() {
                return None;
            }
            if let Some(path) = &s.file {
                let file = std::fs::File::open(path).ok()?;
                return Some(Follower {
                    landing: self.clone(),
                    file,
                    pos: 0,
                    size,
                    generation: s.generation,
                    piece: Bytes::new(),
                    buf: Vec::new(),
                    buf_at: 0,
                });
            }
            s = self.wait(s);
        }
    }
}

/// Marks a landing failed unless the download got to mark it committed.
pub(crate) struct LandingGuard<'a>(pub(crate) &'a Arc<Landing>);

impl Drop for LandingGuard<'_> {
    fn drop(&mut self) {
        self.0.finish(false);
    }
}

/// Reads a blob while it is written: at the written end it waits for more bytes until the
/// blob's size is reached. A download that starts over or fails ends the read with an
/// error, and the unpack falls back to the committed blob.
pub(crate) struct Follower {
    landing: Arc<Landing>,
    file: std::fs::File,
    /// Offset in the blob of the next byte handed out.
    pos: u64,
    size: u64,
    generation: u32,
    /// Bytes at `pos` from a chunk still in memory.
    piece: Bytes,
    /// Bytes at `pos` read from the file (from `buf_at` on).
    buf: Vec<u8>,
    buf_at: usize,
}

/// Where the next bytes come from.
enum Next {
    Memory(Bytes),
    File,
}

impl Follower {
    fn next(&self) -> std::io::Result<Next> {
        let mut s = lock(&self.landing.state);
        loop {
            if s.generation != self.generation {
                return Err(std::io::Error::other("the download started over"));
            }
            let pos = self.pos;
            // The chunks are in offset order: the one holding `pos` is the last that starts
            // at or before it, if it reaches that far.
            let after = s.recent.partition_point(|(at, _)| *at <= pos);
            if let Some((at, c)) = after.checked_sub(1).and_then(|i| s.recent.get(i)) {
                if pos < at + c.len() as u64 {
                    let from = (pos - at) as usize;
                    let to = c.len().min((self.size - at) as usize);
                    return Ok(Next::Memory(c.slice(from..to)));
                }
            }
            if s.written > pos || s.done == Some(true) {
                return Ok(Next::File);
            }
            if s.done == Some(false) {
                return Err(std::io::Error::other("the download failed"));
            }
            s = self.landing.wait(s);
        }
    }
}

impl BufRead for Follower {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.piece.is_empty() && self.buf_at >= self.buf.len() && self.pos < self.size {
            match self.next()? {
                Next::Memory(b) => self.piece = b,
                Next::File => {
                    let want = FILE_READ.min((self.size - self.pos) as usize);
                    self.buf.resize(want, 0);
                    let n = self.file.read_at(&mut self.buf, self.pos)?;
                    self.buf.truncate(n);
                    self.buf_at = 0;
                    if n == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the ingest file is shorter than the download says",
                        ));
                    }
                }
            }
        }
        if !self.piece.is_empty() {
            Ok(&self.piece)
        } else {
            Ok(&self.buf[self.buf_at..])
        }
    }

    fn consume(&mut self, n: usize) {
        if !self.piece.is_empty() {
            let n = n.min(self.piece.len());
            let _ = self.piece.split_to(n);
            self.pos += n as u64;
        } else {
            let n = n.min(self.buf.len() - self.buf_at);
            self.buf_at += n;
            self.pos += n as u64;
        }
    }
}

impl Read for Follower {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn blob(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Writes `data` in `chunk`-sized pieces to the landing's file, as the download does.
    fn write_all(landing: &Landing, path: &std::path::Path, data: &[u8], chunk: usize) {
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        let mut end = 0u64;
        for c in data.chunks(chunk) {
            f.write_all(c).unwrap();
            end += c.len() as u64;
            landing.wrote(end, Bytes::copy_from_slice(c));
        }
    }

    fn setup(dir: &tempfile::TempDir) -> (Arc<Landing>, PathBuf) {
        let path = dir.path().join("ingest");
        std::fs::File::create(&path).unwrap();
        let landing = Arc::new(Landing::default());
        landing.started(path.clone(), 0);
        (landing, path)
    }

    #[test]
    fn a_reader_along_gets_every_byte_while_the_writer_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (landing, path) = setup(&dir);
        let data = blob(3 << 20);
        let mut f = landing.follow(data.len() as u64).unwrap();
        let (l2, d2) = (landing.clone(), data.clone());
        let w = std::thread::spawn(move || {
            write_all(&l2, &path, &d2, 100_000);
            l2.finish(true);
        });
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        w.join().unwrap();
        assert_eq!(got, data);
    }

    #[test]
    fn a_reader_that_fell_behind_reads_what_left_memory_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (landing, path) = setup(&dir);
        // More than the landing keeps in memory, written before the reader starts.
        let data = blob(RECENT_BYTES * 2 + 12345);
        let mut f = landing.follow(data.len() as u64).unwrap();
        write_all(&landing, &path, &data, 300_000);
        assert!(lock(&landing.state).recent_len <= RECENT_BYTES);
        let mut got = Vec::new();
        // Small reads cross the boundary between file and memory more than once.
        let mut small = [0u8; 70_001];
        loop {
            let n = f.read(&mut small).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got.len(), data.len());
        assert!(got == data);
    }

    #[test]
    fn a_download_that_starts_over_or_fails_ends_the_read_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (landing, path) = setup(&dir);
        let data = blob(1000);
        let mut f = landing.follow(2000).unwrap();
        write_all(&landing, &path, &data, 500);
        let mut buf = vec![0u8; 1000];
        f.read_exact(&mut buf).unwrap();
        landing.started(path.clone(), 0);
        let e = f.read(&mut buf).unwrap_err();
        assert!(e.to_string().contains("started over"), "{e}");

        let mut g = landing.follow(2000).unwrap();
        landing.finish(false);
        let e = g.read(&mut buf).unwrap_err();
        assert!(e.to_string().contains("failed"), "{e}");
        assert!(landing.follow(2000).is_none());
    }
}
