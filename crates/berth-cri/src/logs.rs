//! Container logs in the kubelet's format: what a container writes to its stdout and
//! stderr fifos becomes lines `<RFC 3339 time> <stream> <F|P> <text>` in the log file the
//! kubelet named; a line longer than 16 KiB is cut into partial (`P`) pieces, and text
//! that ends without a newline is partial too. The file can be reopened (after the
//! kubelet rotated it) while the container runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, watch, Mutex};

use crate::error::{Error, Result};

/// The longest line written whole; longer ones are split.
pub const MAX_LINE: usize = 16 << 10;
/// After the container exited, the copy ends once the fifo stays quiet this long.
const DRAIN_QUIET: Duration = Duration::from_millis(150);

/// A piece of a container's output, as attached clients receive it.
pub type Chunk = (Stream, Bytes);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// `2026-12-01T10:00:00.123456789Z`, with trailing zeros of the fraction dropped as Go's
/// RFC3339Nano drops them.
pub fn timestamp(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let base = berth_core::gc::format_rfc3339(secs);
    let base = base.trim_end_matches('Z');
    if nanos == 0 {
        return format!("{base}Z");
    }
    let frac = format!("{nanos:09}");
    format!("{base}.{}Z", frac.trim_end_matches('0'))
}

/// Turns bytes into log lines: whole lines tagged F, pieces of long lines tagged P.
#[derive(Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; returns the (tag, text) lines they complete.
    pub fn feed(&mut self, data: &[u8]) -> Vec<(char, Vec<u8>)> {
        let mut out = Vec::new();
        for &b in data {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.pending);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                out.push(('F', line));
            } else {
                self.pending.push(b);
                if self.pending.len() == MAX_LINE {
                    out.push(('P', std::mem::take(&mut self.pending)));
                }
            }
        }
        out
    }

    /// What is left when the stream ends: a partial line, if any.
    pub fn finish(&mut self) -> Option<(char, Vec<u8>)> {
        (!self.pending.is_empty()).then(|| ('P', std::mem::take(&mut self.pending)))
    }
}

/// A container's log file, shared by its streams.
pub struct ContainerLog {
    path: PathBuf,
    file: Mutex<tokio::fs::File>,
}

async fn open_log(path: &Path) -> Result<tokio::fs::File> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(Error::io("create log directory", dir))?;
    }
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .await
        .map_err(Error::io("open log", path))
}

impl ContainerLog {
    pub async fn open(path: &Path) -> Result<Arc<Self>> {
        Ok(Arc::new(ContainerLog {
            path: path.to_owned(),
            file: Mutex::new(open_log(path).await?),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the file again at its path (the kubelet moved the old one away).
    pub async fn reopen(&self) -> Result<()> {
        let f = open_log(&self.path).await?;
        let mut cur = self.file.lock().await;
        let _ = cur.flush().await;
        *cur = f;
        Ok(())
    }

    async fn write(&self, stream: Stream, lines: &[(char, Vec<u8>)]) {
        if lines.is_empty() {
            return;
        }
        let now = timestamp(berth_core::metadata::Timestamp::now().0);
        let mut buf = Vec::new();
        for (tag, text) in lines {
            buf.extend_from_slice(format!("{now} {} {tag} ", stream.name()).as_bytes());
            buf.extend_from_slice(text);
            buf.push(b'\n');
        }
        let mut f = self.file.lock().await;
        if let Err(e) = f.write_all(&buf).await {
            tracing::warn!(log = %self.path.display(), "write container log: {e}");
        }
    }
}

/// Opens a fifo's reading end before anyone writes to it. It is opened for reading and
/// writing, so it never reports an end while the shim is between writers, and a writer
/// opening it never finds it without a reader. Needs a tokio runtime.
pub fn open_fifo(fifo: &Path) -> Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(fifo)
        .map_err(Error::io("open fifo", fifo))
}

/// Opens a fifo's writing end for a process's stdin, read-write for the same reasons: the
/// open never waits for the shim, and the shim sees the end only when this end closes.
pub fn open_fifo_writer(fifo: &Path) -> Result<tokio::net::unix::pipe::Sender> {
    tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(fifo)
        .map_err(Error::io("open fifo", fifo))
}

/// Copies one fifo into the log until the container has exited and the fifo is drained;
/// what it reads also goes to `tap` (attached clients), when anyone listens.
pub async fn copy(
    mut rx: tokio::net::unix::pipe::Receiver,
    stream: Stream,
    log: Arc<ContainerLog>,
    mut exited: watch::Receiver<bool>,
    tap: broadcast::Sender<Chunk>,
) {
    let mut split = LineSplitter::default();
    let mut buf = vec![0u8; 32 << 10];
    loop {
        let done = *exited.borrow();
        let read = if done {
            match tokio::time::timeout(DRAIN_QUIET, rx.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => break, // quiet after the exit: drained
            }
        } else {
            tokio::select! {
                r = rx.read(&mut buf) => r,
                _ = exited.changed() => continue,
            }
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tap.receiver_count() > 0 {
                    let _ = tap.send((stream, Bytes::copy_from_slice(&buf[..n])));
                }
                let lines = split.feed(&buf[..n]);
                log.write(stream, &lines).await;
            }
        }
    }
    if let Some(rest) = split.finish() {
        log.write(stream, &[rest]).await;
    }
    let mut f = log.file.lock().await;
    let _ = f.flush().await;
}

/// Makes a fifo (mode 0600) at `p`, replacing a stale one.
pub fn make_fifo(p: &Path) -> Result<()> {
    let _ = std::fs::remove_file(p);
    rustix::fs::mkfifoat(rustix::fs::CWD, p, rustix::fs::Mode::from_raw_mode(0o600))
        .map_err(|e| Error::io("mkfifo", p)(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_nano_without_trailing_zeros() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(1_500_000_000), "1970-01-01T00:00:01.5Z");
        assert_eq!(timestamp(123), "1970-01-01T00:00:00.000000123Z");
    }

    #[test]
    fn lines_are_full_or_partial() {
        let mut s = LineSplitter::default();
        let out = s.feed(b"one\r\ntw");
        assert_eq!(out, [('F', b"one".to_vec())]);
        assert_eq!(s.feed(b"o\n\n"), [('F', b"two".to_vec()), ('F', vec![])]);
        let long = vec![b'x'; MAX_LINE + 10];
        let out = s.feed(&long);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].0, out[0].1.len()), ('P', MAX_LINE));
        assert_eq!(s.feed(b"\n"), [('F', vec![b'x'; 10])]);
        s.feed(b"tail");
        assert_eq!(s.finish(), Some(('P', b"tail".to_vec())));
        assert_eq!(s.finish(), None);
    }

    #[tokio::test]
    async fn a_fifo_is_copied_into_cri_lines_and_the_log_reopens() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("out");
        make_fifo(&fifo).unwrap();
        let path = t.path().join("pod/c/0.log");
        let log = ContainerLog::open(&path).await.unwrap();
        let (tx, rx) = watch::channel(false);
        let (tap, mut tapped) = broadcast::channel(8);
        let copier = tokio::spawn(copy(
            open_fifo(&fifo).unwrap(),
            Stream::Stderr,
            log.clone(),
            rx,
            tap,
        ));
        let mut w = tokio::net::unix::pipe::OpenOptions::new()
            .open_sender(&fifo)
            .unwrap();
        w.write_all(b"hello\npart").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::rename(&path, t.path().join("rotated")).unwrap();
        log.reopen().await.unwrap();
        w.write_all(b"ial\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(true).unwrap();
        copier.await.unwrap();
        let mut seen = Vec::new();
        while let Ok((s, b)) = tapped.recv().await {
            assert_eq!(s, Stream::Stderr);
            seen.extend_from_slice(&b);
        }
        assert_eq!(
            seen, b"hello\npartial\n",
            "the tap sees the bytes, then its end"
        );
        let first = std::fs::read_to_string(t.path().join("rotated")).unwrap();
        let second = std::fs::read_to_string(&path).unwrap();
        assert!(first.ends_with(" stderr F hello\n"), "{first}");
        assert!(second.ends_with(" stderr F partial\n"), "{second}");
        let ts = first.split(' ').next().unwrap();
        assert!(ts.ends_with('Z') && ts.contains('T'), "{ts}");
    }
}
