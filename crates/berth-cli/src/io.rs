//! A container's or exec's stdio while `berth` is attached: fifos the shim writes to and
//! reads from (made in a directory of their own, removed when done), the local terminal
//! in raw mode for `-t` with its size passed on as it changes, and stdin closed on the
//! container's side when ours ends.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use crate::error::{Error, Result};

pub struct Fifos {
    dir: PathBuf,
    pub stdin: Option<PathBuf>,
    pub stdout: PathBuf,
    pub stderr: Option<PathBuf>,
}

impl Fifos {
    /// Makes the fifos under `base/<name>`; stderr only without a terminal (a terminal
    /// merges it into stdout).
    pub fn new(base: &Path, name: &str, stdin: bool, tty: bool) -> Result<Fifos> {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
        let mk = |n: &str| -> Result<PathBuf> {
            let p = dir.join(n);
            let _ = std::fs::remove_file(&p);
            rustix::fs::mkfifoat(rustix::fs::CWD, &p, rustix::fs::Mode::from_raw_mode(0o600))
                .map_err(|e| Error::io(format!("make fifo {}", p.display()))(e.into()))?;
            Ok(p)
        };
        let f = Fifos {
            stdin: if stdin { Some(mk("stdin")?) } else { None },
            stdout: mk("stdout")?,
            stderr: if tty { None } else { Some(mk("stderr")?) },
            dir,
        };
        Ok(f)
    }

    pub fn uris(&self) -> (String, String, String) {
        let s = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        (
            s(&self.stdin),
            self.stdout.display().to_string(),
            s(&self.stderr),
        )
    }

    /// Opens our ends before the shim opens its own, so that neither side waits.
    pub fn open(&self) -> Result<Opened> {
        let rx = |p: &Path| {
            pipe::OpenOptions::new()
                .open_receiver(p)
                .map_err(Error::io(format!("open {}", p.display())))
        };
        let stdin = match &self.stdin {
            Some(p) => Some(
                pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(p)
                    .map_err(Error::io(format!("open {}", p.display())))?,
            ),
            None => None,
        };
        Ok(Opened {
            stdin,
            stdout: rx(&self.stdout)?,
            stderr: self.stderr.as_deref().map(rx).transpose()?,
        })
    }
}

impl Drop for Fifos {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Opened {
    pub stdin: Option<pipe::Sender>,
    pub stdout: pipe::Receiver,
    pub stderr: Option<pipe::Receiver>,
}

/// Copies the container's output to ours until it ends (call once the shim holds the
/// fifos), and our stdin to the container; `on_stdin_end` runs when our stdin is done.
pub struct Copying {
    outputs: Vec<tokio::task::JoinHandle<()>>,
    stdin: Option<tokio::task::JoinHandle<()>>,
}

impl Copying {
    pub fn start(o: Opened, on_stdin_end: impl FnOnce() + Send + 'static) -> Copying {
        let mut outputs = vec![tokio::spawn(copy_out(o.stdout, false))];
        if let Some(e) = o.stderr {
            outputs.push(tokio::spawn(copy_out(e, true)));
        }
        let stdin = o.stdin.map(|mut tx| {
            tokio::spawn(async move {
                let mut input = tokio::io::stdin();
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match input.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tx.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                drop(tx);
                on_stdin_end();
            })
        });
        Copying { outputs, stdin }
    }

    /// Waits for the output to end (the container's side closed it).
    pub async fn finish(self) {
        for o in self.outputs {
            let _ = o.await;
        }
        if let Some(s) = self.stdin {
            s.abort();
        }
    }
}

async fn copy_out(mut rx: pipe::Receiver, stderr: bool) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if stderr {
        Box::new(tokio::io::stderr())
    } else {
        Box::new(tokio::io::stdout())
    };
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.write_all(&buf[..n]).await.is_err() || out.flush().await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Our terminal in raw mode while it lives; restored on drop.
pub struct RawTerminal {
    saved: Option<rustix::termios::Termios>,
}

impl RawTerminal {
    pub fn enter() -> RawTerminal {
        let stdin = std::io::stdin();
        let fd = stdin.as_fd();
        let Ok(saved) = rustix::termios::tcgetattr(fd) else {
            return RawTerminal { saved: None };
        };
        let mut raw = saved.clone();
        raw.make_raw();
        if rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &raw).is_err() {
            return RawTerminal { saved: None };
        }
        RawTerminal { saved: Some(saved) }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(s) = &self.saved {
            let stdin = std::io::stdin();
            let _ =
                rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Now, s);
        }
    }
}

/// Our terminal's size (columns, rows), if stdout or stdin is a terminal.
pub fn terminal_size() -> Option<(u32, u32)> {
    let try_fd = |fd: std::os::fd::BorrowedFd<'_>| {
        rustix::termios::tcgetwinsize(fd)
            .ok()
            .filter(|w| w.ws_col > 0 && w.ws_row > 0)
            .map(|w| (u32::from(w.ws_col), u32::from(w.ws_row)))
    };
    try_fd(std::io::stdout().as_fd()).or_else(|| try_fd(std::io::stdin().as_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_are_made_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let dir;
        {
            let f = Fifos::new(d.path(), "x", true, true).unwrap();
            dir = f.dir.clone();
            assert!(f.stderr.is_none());
            use std::os::unix::fs::FileTypeExt;
            assert!(std::fs::metadata(&f.stdout).unwrap().file_type().is_fifo());
            let (i, o, e) = f.uris();
            assert!(i.ends_with("/stdin") && o.ends_with("/stdout") && e.is_empty());
        }
        assert!(!dir.exists());
    }
}
