//! A process's stdio as the client asked for it: fifos the shim copies to and from through
//! pipes it owns (so output outlives a client that detaches or a daemon that restarts), a
//! terminal received over a console socket, a `file://` log, or a `binary://` logger that
//! gets the output pipes directly.

use std::{
    fs::File,
    mem::MaybeUninit,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::{net::UnixListener, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio as ProcStdio},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use containerd_shim::io::{IoTasks, Pty, Stdio};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use tokio::{io::AsyncReadExt, net::unix::pipe, task::JoinHandle};

use crate::{error::Error, reaper::Reaper, runtime::InvocationStdio};

/// How long the runtime may take to hand over a terminal after it reported success.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a `binary://` logger may take to say it is ready.
const LOGGER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long output may still drain once a process is deleted (the Go shim allows as much).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a process's output goes, from its stdout URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    None,
    Fifo(String),
    File(PathBuf),
    Binary { path: PathBuf, args: Vec<String> },
}

impl Output {
    pub fn parse(uri: &str) -> Result<Self, Error> {
        if uri.is_empty() {
            return Ok(Output::None);
        }
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Ok(Output::Fifo(uri.to_owned()));
        };
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, q),
            None => (rest, ""),
        };
        match scheme {
            "fifo" => Ok(Output::Fifo(path.to_owned())),
            "file" => Ok(Output::File(PathBuf::from(path))),
            "binary" => Ok(Output::Binary {
                path: PathBuf::from(path),
                args: query_args(query),
            }),
            other => Err(Error::InvalidArgument(format!(
                "stdio URI {uri:?}: unknown scheme {other:?} (fifo, file and binary are known)"
            ))),
        }
    }
}

/// The arguments of a `binary://` URI's query as containerd's runc shim passes them:
/// each `key=value` becomes `key`, `value`; a bare key becomes itself. Percent-escapes are
/// decoded.
fn query_args(query: &str) -> Vec<String> {
    let mut args = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) => {
                args.push(percent_decode(k));
                if !v.is_empty() {
                    args.push(percent_decode(v));
                }
            }
            None => args.push(percent_decode(pair)),
        }
    }
    args
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The shim's side of one process's stdio, kept until the process is deleted.
pub struct ProcessIo {
    pub stdio: Stdio,
    tasks: IoTasks,
    pty: Option<Pty>,
    /// Copies into a `file://` log or a `binary://` logger.
    files: Vec<JoinHandle<()>>,
    /// Where a terminal's output goes when it is logged rather than sent to a fifo: the
    /// write end of the pipe to the log file's copy or to the logger.
    console_out: Option<OwnedFd>,
}

/// What a process's runtime invocation needs: its stdio, or the console socket the
/// runtime hands the terminal back through.
pub struct Prepared {
    pub io: ProcessIo,
    pub invocation: InvocationStdio,
    pub console: Option<ConsoleSocket>,
}

fn os_pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::io("create", Path::new("pipe"), e.into()))
}

fn receiver(fd: OwnedFd) -> Result<pipe::Receiver, Error> {
    pipe::Receiver::from_owned_fd(fd).map_err(|e| Error::io("watch", Path::new("pipe"), e))
}

fn sender(fd: OwnedFd) -> Result<pipe::Sender, Error> {
    pipe::Sender::from_owned_fd(fd).map_err(|e| Error::io("watch", Path::new("pipe"), e))
}

impl ProcessIo {
    /// Sets up what `stdio` asks for; on error nothing is left open.
    pub async fn prepare(
        stdio: &Stdio,
        namespace: &str,
        container_id: &str,
        reaper: &Reaper,
    ) -> Result<Prepared, Error> {
        let mut io = ProcessIo {
            stdio: stdio.clone(),
            tasks: IoTasks::default(),
            pty: None,
            files: Vec::new(),
            console_out: None,
        };
        if stdio.terminal {
            let console = ConsoleSocket::new()?;
            if let Err(e) = io
                .prepare_console_output(namespace, container_id, reaper)
                .await
            {
                io.tasks.abort().await;
                return Err(e);
            }
            return Ok(Prepared {
                io,
                invocation: InvocationStdio::default(),
                console: Some(console),
            });
        }
        let result = io.prepare_pipes(namespace, container_id, reaper).await;
        match result {
            Ok(invocation) => Ok(Prepared {
                io,
                invocation,
                console: None,
            }),
            Err(e) => {
                io.tasks.abort().await;
                Err(e)
            }
        }
    }

    /// A terminal logged to a `file://` or `binary://` URI: the pipe its output will be
    /// copied into, with the file copy or the logger (whose stderr stays empty) already
    /// on the other end.
    async fn prepare_console_output(
        &mut self,
        namespace: &str,
        container_id: &str,
        reaper: &Reaper,
    ) -> Result<(), Error> {
        match Output::parse(&self.stdio.stdout)? {
            Output::File(path) => {
                let (r, w) = os_pipe()?;
                let file = open_log_file(&path)?;
                self.files
                    .push(tokio::spawn(copy_to_file(receiver(r)?, file)));
                self.console_out = Some(w);
            }
            Output::Binary { path, args } => {
                let (out_r, out_w) = os_pipe()?;
                let (err_r, err_w) = os_pipe()?;
                start_logger(&path, &args, namespace, container_id, out_r, err_r, reaper).await?;
                drop(err_w);
                self.console_out = Some(out_w);
            }
            Output::None | Output::Fifo(_) => {}
        }
        Ok(())
    }

    async fn prepare_pipes(
        &mut self,
        namespace: &str,
        container_id: &str,
        reaper: &Reaper,
    ) -> Result<InvocationStdio, Error> {
        let mut invocation = InvocationStdio::default();
        if !self.stdio.stdin.is_empty() {
            let (r, w) = os_pipe()?;
            self.tasks
                .copy_from_fifo(&self.stdio.stdin, sender(w)?)
                .map_err(|e| Error::Other(format!("stdin {}: {e}", self.stdio.stdin)))?;
            invocation.stdin = Some(r);
        }
        match Output::parse(&self.stdio.stdout)? {
            Output::None => {}
            Output::Fifo(path) => invocation.stdout = Some(self.fifo_output(&path, "stdout")?),
            Output::File(path) => {
                let (out_r, out_w) = os_pipe()?;
                let (err_r, err_w) = os_pipe()?;
                for r in [out_r, err_r] {
                    let file = open_log_file(&path)?;
                    self.files
                        .push(tokio::spawn(copy_to_file(receiver(r)?, file)));
                }
                invocation.stdout = Some(out_w);
                invocation.stderr = Some(err_w);
                return Ok(invocation);
            }
            Output::Binary { path, args } => {
                let (out_r, out_w) = os_pipe()?;
                let (err_r, err_w) = os_pipe()?;
                start_logger(&path, &args, namespace, container_id, out_r, err_r, reaper).await?;
                invocation.stdout = Some(out_w);
                invocation.stderr = Some(err_w);
                return Ok(invocation);
            }
        }
        match Output::parse(&self.stdio.stderr)? {
            Output::None => {}
            Output::Fifo(path) => invocation.stderr = Some(self.fifo_output(&path, "stderr")?),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "stderr {other:?} must follow stdout's file or binary URI"
                )))
            }
        }
        Ok(invocation)
    }

    /// A pipe whose read end is copied to the fifo at `path`; returns the write end for the
    /// process.
    fn fifo_output(&self, path: &str, stream: &str) -> Result<OwnedFd, Error> {
        let (r, w) = os_pipe()?;
        self.tasks
            .copy_to_fifo(receiver(r)?, path)
            .map_err(|e| Error::Other(format!("{stream} {path}: {e}")))?;
        Ok(w)
    }

    /// Takes the terminal's master the runtime sent and copies between it and the fifos.
    pub fn attach_console(&mut self, master: File) -> Result<(), Error> {
        let pty = Pty::new(master).map_err(|e| Error::Other(format!("console: {e}")))?;
        if !self.stdio.stdin.is_empty() {
            self.tasks
                .copy_from_fifo(&self.stdio.stdin, pty.clone())
                .map_err(|e| Error::Other(format!("stdin {}: {e}", self.stdio.stdin)))?;
        }
        match Output::parse(&self.stdio.stdout)? {
            Output::Fifo(path) => self
                .tasks
                .copy_to_fifo(pty.clone(), &path)
                .map_err(|e| Error::Other(format!("stdout {path}: {e}")))?,
            Output::None => {}
            Output::File(_) | Output::Binary { .. } => {
                let Some(w) = self.console_out.take() else {
                    return Err(Error::Other("the terminal's log was not prepared".into()));
                };
                let mut to = sender(w)?;
                let mut from = pty.clone();
                self.files.push(tokio::spawn(async move {
                    // Ends when the terminal hangs up (EIO) with the process's exit.
                    let _ = tokio::io::copy(&mut from, &mut to).await;
                }));
            }
        }
        self.pty = Some(pty);
        Ok(())
    }

    pub fn resize(&self, width: u32, height: u32) -> Result<(), Error> {
        let Some(pty) = &self.pty else {
            return Err(Error::FailedPrecondition(
                "the process has no terminal to resize".into(),
            ));
        };
        let size = rustix::termios::Winsize {
            ws_row: height.min(u16::MAX as u32) as u16,
            ws_col: width.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(pty.as_fd(), size)
            .map_err(|e| Error::Other(format!("resize the terminal: {e}")))
    }

    pub fn close_stdin(&self) {
        self.tasks.close_input();
    }

    /// Lets output drain (bounded), then stops every copy and lets go of the fifos.
    pub async fn shutdown(&mut self) {
        self.tasks.shutdown().await;
        self.pty = None;
        for handle in self.files.drain(..) {
            let abort = handle.abort_handle();
            if tokio::time::timeout(DRAIN_TIMEOUT, handle).await.is_err() {
                abort.abort();
            }
        }
    }
}

fn open_log_file(path: &Path) -> Result<tokio::fs::File, Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io("open log file", path, e))?;
    Ok(tokio::fs::File::from_std(file))
}

async fn copy_to_file(mut from: pipe::Receiver, mut to: tokio::fs::File) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tokio::io::AsyncWriteExt::write_all(&mut to, &buf[..n])
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    let _ = tokio::io::AsyncWriteExt::flush(&mut to).await;
}

/// Starts a `binary://` logger as containerd's shims do: the output pipes as fds 3 and 4,
/// a pipe it closes once ready as fd 5, and CONTAINER_ID / CONTAINER_NAMESPACE in its
/// environment. Returns once it is ready.
async fn start_logger(
    path: &Path,
    args: &[String],
    namespace: &str,
    container_id: &str,
    stdout: OwnedFd,
    stderr: OwnedFd,
    reaper: &Reaper,
) -> Result<(), Error> {
    let (ready_r, ready_w) = os_pipe()?;
    // Moved above the target numbers first, so that no dup2 below overwrites a source.
    let high = |fd: &OwnedFd| -> Result<OwnedFd, Error> {
        rustix::io::fcntl_dupfd_cloexec(fd, 10)
            .map_err(|e| Error::io("duplicate", Path::new("pipe"), e.into()))
    };
    let fds = [high(&stdout)?, high(&stderr)?, high(&ready_w)?];
    drop((stdout, stderr, ready_w));
    let raw: [i32; 3] = [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()];
    let mut cmd = Command::new(path);
    cmd.args(args)
        .env("CONTAINER_ID", container_id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(ProcStdio::null())
        .stdout(ProcStdio::null())
        .stderr(ProcStdio::null());
    // SAFETY: dup2 is async-signal-safe; the sources are open, distinct from the targets
    // (all at 10 or above) and stay open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in raw.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    reaper
        .spawn(&mut cmd)
        .map_err(|e| Error::NotFound(format!("logging binary {}: {e}", path.display())))?;
    drop(cmd);
    drop(fds);
    let mut ready = receiver(ready_r)?;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(LOGGER_READY_TIMEOUT, ready.read(&mut byte)).await {
        Ok(_) => Ok(()),
        Err(_) => Err(Error::Other(format!(
            "logging binary {} did not get ready within {LOGGER_READY_TIMEOUT:?}",
            path.display()
        ))),
    }
}

static CONSOLE_SEQ: AtomicU64 = AtomicU64::new(0);

/// A socket the runtime connects to with the terminal's master (runc's
/// `--console-socket`), in a directory of its own that goes when it is dropped.
pub struct ConsoleSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: Option<UnixListener>,
}

impl ConsoleSocket {
    pub fn new() -> Result<Self, Error> {
        let seq = CONSOLE_SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("berth-pty-{}-{seq}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        let path = dir.join("pty.sock");
        let _ = std::fs::remove_file(&path);
        let listener = match UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(Error::io("listen on", &path, e));
            }
        };
        Ok(ConsoleSocket {
            dir,
            path,
            listener: Some(listener),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The master the runtime sent.
    pub async fn receive(mut self) -> Result<File, Error> {
        let Some(listener) = self.listener.take() else {
            return Err(Error::Other("console socket already used".into()));
        };
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("listen on", &self.path, e))?;
        let listener = tokio::net::UnixListener::from_std(listener)
            .map_err(|e| Error::io("listen on", &self.path, e))?;
        let received = tokio::time::timeout(CONSOLE_TIMEOUT, async {
            let (stream, _) = listener.accept().await?;
            loop {
                stream.readable().await?;
                match stream.try_io(tokio::io::Interest::READABLE, || {
                    receive_fd(&stream).map_err(std::io::Error::from)
                }) {
                    Ok(fd) => return Ok::<_, std::io::Error>(fd),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        match received {
            Ok(Ok(fd)) => Ok(File::from(fd)),
            Ok(Err(e)) => Err(Error::io("receive the terminal on", &self.path, e)),
            Err(_) => Err(Error::Other(format!(
                "the runtime sent no terminal on {} within {CONSOLE_TIMEOUT:?}",
                self.path.display()
            ))),
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One file descriptor passed with SCM_RIGHTS (runc sends the path "/dev/ptmx" with it).
fn receive_fd(stream: &impl AsFd) -> Result<OwnedFd, rustix::io::Errno> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut data = [0u8; 4096];
    let msg = rustix::net::recvmsg(
        stream,
        &mut [std::io::IoSliceMut::new(&mut data)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message {
            if let Some(fd) = fds.next() {
                return Ok(fd);
            }
        }
    }
    if msg.bytes == 0 {
        return Err(rustix::io::Errno::CONNRESET);
    }
    Err(rustix::io::Errno::BADMSG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_uris() {
        assert_eq!(Output::parse("").unwrap(), Output::None);
        assert_eq!(
            Output::parse("/run/x/c-stdout").unwrap(),
            Output::Fifo("/run/x/c-stdout".into())
        );
        assert_eq!(
            Output::parse("fifo:///run/x/o").unwrap(),
            Output::Fifo("/run/x/o".into())
        );
        assert_eq!(
            Output::parse("file:///var/log/c.log").unwrap(),
            Output::File("/var/log/c.log".into())
        );
        assert_eq!(
            Output::parse("binary:///usr/bin/logger?id=abc&flag&dir=%2Fvar%2Flog").unwrap(),
            Output::Binary {
                path: "/usr/bin/logger".into(),
                args: vec![
                    "id".into(),
                    "abc".into(),
                    "flag".into(),
                    "dir".into(),
                    "/var/log".into()
                ]
            }
        );
        let e = Output::parse("http://x/y").unwrap_err();
        assert!(e.to_string().contains("\"http\""), "{e}");
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
