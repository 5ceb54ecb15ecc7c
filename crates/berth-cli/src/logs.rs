//! Container logs in Docker's json-file format, one JSON object a line
//! (`{"log":"hi\n","stream":"stdout","time":"…"}`). The writer is `berth` itself, started by
//! the shim as a `binary://` logger: it outlives the command that ran the container and
//! berthd restarts alike, and holds an exclusive lock on the file while it writes, so a
//! reader knows when the last line is in. The reader does `--tail`, `--since`,
//! `--timestamps` and `--follow`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Docker splits lines longer than this into partial entries.
const MAX_LINE: usize = 16 * 1024;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Entry {
    pub log: String,
    pub stream: String,
    pub time: String,
}

/// The `binary://` URI that makes the shim start this binary as the logger of `path`.
pub fn logger_uri(path: &Path) -> Result<String> {
    let exe = std::env::current_exe().map_err(Error::io("find the berth binary"))?;
    Ok(format!(
        "binary://{}?{}={}",
        percent_encode(&exe.to_string_lossy()),
        LOGGER_ARG,
        percent_encode(&path.to_string_lossy())
    ))
}

/// The hidden subcommand the shim runs.
pub const LOGGER_ARG: &str = "__logger";

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The logger's main: fds 3 and 4 are the container's stdout and stderr, fd 5 is closed
/// once the log is open and locked (the shim waits for that before starting the container).
pub fn run_logger(path: &Path) -> Result<()> {
    // SAFETY: the shim passes these descriptors to its logger; nothing else in this process
    // owns them.
    let (out, err, ready) = unsafe {
        (
            OwnedFd::from_raw_fd(3),
            OwnedFd::from_raw_fd(4),
            OwnedFd::from_raw_fd(5),
        )
    };
    let file = open_for_append(path)?;
    rustix::fs::flock(&file, FlockOperation::LockExclusive)
        .map_err(|e| Error::io(format!("lock {}", path.display()))(e.into()))?;
    drop(ready);
    let file = Arc::new(Mutex::new(file));
    let threads: Vec<_> = [(out, "stdout"), (err, "stderr")]
        .into_iter()
        .map(|(fd, stream)| {
            let file = file.clone();
            std::thread::spawn(move || copy_lines(File::from(fd), stream, &file))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let f = file.lock().unwrap_or_else(|p| p.into_inner());
    let _ = f.sync_data();
    Ok(())
}

fn open_for_append(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(Error::io(format!("open {}", path.display())))
}

fn copy_lines(src: File, stream: &str, file: &Mutex<File>) {
    let mut r = BufReader::with_capacity(64 * 1024, src);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match r
            .by_ref()
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let entry = Entry {
            log: String::from_utf8_lossy(&line[..n]).into_owned(),
            stream: stream.to_owned(),
            time: crate::time::rfc3339(SystemTime::now()),
        };
        let Ok(mut json) = serde_json::to_vec(&entry) else {
            continue;
        };
        json.push(b'\n');
        let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
        if f.write_all(&json).is_err() {
            break;
        }
    }
}

/// True while a logger holds the file (the container may still write to it).
pub fn writer_active(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    match rustix::fs::flock(&f, FlockOperation::NonBlockingLockShared) {
        Ok(()) => {
            let _ = rustix::fs::flock(&f, FlockOperation::Unlock);
            false
        }
        Err(_) => true,
    }
}

/// A flag one side raises and the other waits on: the container has exited.
#[derive(Default)]
pub struct Exited {
    done: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Exited {
    pub fn set(&self) {
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Waits up to `d`; true while the container has not exited.
    pub fn still_running(&self, d: Duration) -> bool {
        let g = self.done.lock().unwrap_or_else(|p| p.into_inner());
        let (g, _) = self
            .cv
            .wait_timeout_while(g, d, |done| !*done)
            .unwrap_or_else(|p| p.into_inner());
        !*g
    }
}

/// Waits up to `limit` for the logger to write its last line.
pub fn wait_for_writer(path: &Path, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while writer_active(path) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    pub tail: Option<usize>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    pub timestamps: bool,
}

/// Prints the entries of `path` after `opts`, returning the offset read to.
pub fn print(
    path: &Path,
    opts: &ReadOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u64> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(format!("read {}", path.display()))(e)),
    };
    let mut text = Vec::new();
    f.read_to_end(&mut text)
        .map_err(Error::io(format!("read {}", path.display())))?;
    // Only whole lines; a line being written is read on the next pass.
    let complete = text
        .iter()
        .rposition(|b| *b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    let entries: Vec<Entry> = text[..complete]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .filter(|e: &Entry| in_window(e, opts))
        .collect();
    let skip = match opts.tail {
        Some(n) => entries.len().saturating_sub(n),
        None => 0,
    };
    for e in &entries[skip..] {
        emit(e, opts.timestamps, out, err)?;
    }
    Ok(complete as u64)
}

fn in_window(e: &Entry, opts: &ReadOptions) -> bool {
    if opts.since.is_none() && opts.until.is_none() {
        return true;
    }
    let Some(t) = crate::time::parse_rfc3339(&e.time) else {
        return true;
    };
    opts.since.is_none_or(|s| t >= s) && opts.until.is_none_or(|u| t <= u)
}

fn emit(e: &Entry, timestamps: bool, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    let w: &mut dyn Write = if e.stream == "stderr" { err } else { out };
    let r = if timestamps {
        write!(w, "{} {}", e.time, e.log)
    } else {
        w.write_all(e.log.as_bytes())
    };
    r.and_then(|()| w.flush())
        .map_err(Error::io("write the log"))
}

/// Prints what is appended to `path` after `offset` until `keep_going` says stop and the
/// writer has finished. `keep_going(d)` may wait up to `d` for news before it answers.
pub fn follow(
    path: &Path,
    mut offset: u64,
    opts: &ReadOptions,
    mut keep_going: impl FnMut(Duration) -> bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<()> {
    let mut pending = Vec::new();
    let mut last_pass = false;
    loop {
        if let Ok(mut f) = File::open(path) {
            if f.seek(SeekFrom::Start(offset)).is_ok() {
                let mut buf = Vec::new();
                if let Ok(n) = f.read_to_end(&mut buf) {
                    offset += n as u64;
                    pending.extend_from_slice(&buf);
                }
            }
        }
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            if let Ok(e) = serde_json::from_slice::<Entry>(&line) {
                if in_window(&e, opts) {
                    emit(&e, opts.timestamps, out, err)?;
                }
            }
        }
        if last_pass {
            return Ok(());
        }
        if !keep_going(Duration::from_millis(100)) {
            wait_for_writer(path, Duration::from_secs(2));
            last_pass = true;
            continue;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_log(path: &Path, entries: &[(&str, &str, &str)]) {
        let mut f = open_for_append(path).unwrap();
        for (stream, log, time) in entries {
            let e = Entry {
                log: (*log).into(),
                stream: (*stream).into(),
                time: (*time).into(),
            };
            writeln!(f, "{}", serde_json::to_string(&e).unwrap()).unwrap();
        }
    }

    #[test]
    fn tail_since_and_timestamps() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c/c-json.log");
        write_log(
            &p,
            &[
                ("stdout", "one\n", "2026-12-01T08:00:00.000000000Z"),
                ("stderr", "two\n", "2026-12-01T08:00:01.000000000Z"),
                ("stdout", "three\n", "2026-12-01T08:00:02.000000000Z"),
            ],
        );
        let (mut out, mut err) = (Vec::new(), Vec::new());
        print(&p, &ReadOptions::default(), &mut out, &mut err).unwrap();
        assert_eq!(String::from_utf8_lossy(&out), "one\nthree\n");
        assert_eq!(String::from_utf8_lossy(&err), "two\n");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let o = ReadOptions {
            tail: Some(1),
            timestamps: true,
            ..Default::default()
        };
        print(&p, &o, &mut out, &mut err).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out),
            "2026-12-01T08:00:02.000000000Z three\n"
        );
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let o = ReadOptions {
            since: crate::time::parse_rfc3339("2026-12-01T08:00:01Z"),
            ..Default::default()
        };
        print(&p, &o, &mut out, &mut err).unwrap();
        assert_eq!(String::from_utf8_lossy(&out), "three\n");
        assert_eq!(String::from_utf8_lossy(&err), "two\n");
    }

    #[test]
    fn the_writer_lock_tells_when_the_log_is_complete() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x-json.log");
        let f = open_for_append(&p).unwrap();
        assert!(!writer_active(&p));
        rustix::fs::flock(&f, FlockOperation::LockExclusive).unwrap();
        assert!(writer_active(&p));
        drop(f);
        assert!(!writer_active(&p));
    }

    #[test]
    fn long_lines_are_split_as_docker_splits_them() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l.log");
        let src = d.path().join("src");
        std::fs::write(&src, format!("{}\nshort\n", "x".repeat(MAX_LINE + 10))).unwrap();
        let file = Mutex::new(open_for_append(&p).unwrap());
        copy_lines(File::open(&src).unwrap(), "stdout", &file);
        let text = std::fs::read_to_string(&p).unwrap();
        let entries: Vec<Entry> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].log.len(), MAX_LINE);
        assert_eq!(entries[1].log, "xxxxxxxxxx\n");
        assert_eq!(entries[2].log, "short\n");
        assert_eq!(percent_encode("/a b/c"), "/a%20b/c");
    }
}
