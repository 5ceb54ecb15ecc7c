//! Streamed exec and attach: a process in a running container (or the container's own
//! stdio) joined to a client's streams, whatever transport carries them. The transports
//! (SPDY, WebSocket) live in `streaming`; here the streams are channels of bytes.
//!
//! A client that goes away drops the future: an exec's process is then killed and its
//! fifos removed (by a guard, so that no path forgets it); an attach only detaches.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_core::containers::AnyValue;
use berth_runtime::client::TaskClient;
use berth_runtime::Stdio;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc};

use crate::containers::{key, state_of, CriContainers, PROCESS_TYPE};
use crate::context::blocking;
use crate::error::{Error, Result};
use crate::logs::{self, Stream};
use k8s_cri::v1 as cri;

/// After the process exited, its output is awaited at most this long (a child it left
/// behind may hold the pipe open).
const DRAIN: Duration = Duration::from_secs(2);

/// A terminal size from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct TermSize {
    #[serde(rename = "Width", alias = "width")]
    pub width: u16,
    #[serde(rename = "Height", alias = "height")]
    pub height: u16,
}

/// A client's streams. `stdin` ends (its sender dropped) when the client closes it; a
/// closed `stdout`/`stderr` receiver means the client is gone.
#[derive(Default)]
pub struct StreamIo {
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    pub resize: Option<mpsc::Receiver<TermSize>>,
}

/// Kills and removes an exec'd process unless disarmed: runs when the client went away.
struct ExecGuard {
    shim: Option<Arc<dyn TaskClient>>,
    exec_id: String,
    files: Vec<PathBuf>,
}

impl Drop for ExecGuard {
    fn drop(&mut self) {
        let files = std::mem::take(&mut self.files);
        let shim = self.shim.take();
        let exec_id = std::mem::take(&mut self.exec_id);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            if let Some(shim) = shim {
                let _ = shim.kill(&exec_id, libc::SIGKILL as u32, false).await;
                let _ = tokio::time::timeout(Duration::from_secs(10), shim.wait(&exec_id)).await;
                let _ = shim.delete(&exec_id).await;
            }
            for f in files {
                let _ = tokio::fs::remove_file(&f).await;
            }
        });
    }
}

/// Copies a fifo to a client stream (or drains it when the client did not ask for it)
/// until the writer closes it.
async fn pump_out(mut rx: tokio::net::unix::pipe::Receiver, to: Option<mpsc::Sender<Bytes>>) {
    let mut buf = vec![0u8; 32 << 10];
    let mut to = to;
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(t) = &to {
                    if t.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        to = None; // the client is gone; keep draining
                    }
                }
            }
        }
    }
}

/// Exec and attach need a running container.
pub(crate) fn check_running(r: &crate::store::ContainerRecord) -> Result<()> {
    if state_of(r) != cri::ContainerState::ContainerRunning {
        return Err(Error::FailedPrecondition(format!(
            "container {:?} is {}, not running",
            r.id,
            state_of(r).as_str_name()
        )));
    }
    Ok(())
}

impl CriContainers {
    /// Runs `cmd` in the container with the client's streams; returns its exit status.
    pub async fn exec_stream(
        self: &Arc<Self>,
        id: &str,
        cmd: Vec<String>,
        tty: bool,
        io: StreamIo,
    ) -> Result<i32> {
        if cmd.is_empty() {
            return Err(Error::InvalidArgument("exec needs a command".into()));
        }
        let r = self.record(id).await?;
        check_running(&r)?;
        let task = self.ctx.runtime.get(&key(id)?)?;
        let shim = task.shim()?;
        let exec_id = format!("exec-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let dir = self.ctx.container_dir(id);
        let path = |s: &str| dir.join(format!("{exec_id}-{s}"));
        let (inp, out, err) = (path("in"), path("out"), path("err"));
        let want_stdin = io.stdin.is_some();
        let want_err = !tty;
        let mut files = vec![out.clone()];
        if want_stdin {
            files.push(inp.clone());
        }
        if want_err {
            files.push(err.clone());
        }
        let mut guard = ExecGuard {
            shim: None,
            exec_id: exec_id.clone(),
            files: files.clone(),
        };
        let (ctx, cid) = (self.ctx.clone(), id.to_owned());
        let process = blocking(move || {
            for f in &files {
                logs::make_fifo(f)?;
            }
            let core = ctx.store.core_container(&cid)?;
            let spec: serde_json::Value = core
                .spec
                .as_ref()
                .and_then(|s| serde_json::from_slice(&s.value).ok())
                .unwrap_or_default();
            let mut p = spec["process"].clone();
            p["args"] = serde_json::json!(cmd);
            p["terminal"] = serde_json::json!(tty);
            if tty {
                let env = p["env"].as_array().cloned().unwrap_or_default();
                let mut env: Vec<_> = env
                    .into_iter()
                    .filter(|e| !e.as_str().is_some_and(|s| s.starts_with("TERM=")))
                    .collect();
                env.push(serde_json::json!("TERM=xterm"));
                p["env"] = serde_json::json!(env);
            }
            Ok(p)
        })
        .await?;
        // Opened read-write first, so that the shim's open never waits for a reader.
        let out_rw = logs::open_fifo(&out)?;
        let err_rw = if want_err {
            Some(logs::open_fifo(&err)?)
        } else {
            None
        };
        let stdin_tx = if want_stdin {
            Some(logs::open_fifo_writer(&inp)?)
        } else {
            None
        };
        let stdio = Stdio {
            stdin: if want_stdin {
                inp.display().to_string()
            } else {
                String::new()
            },
            stdout: out.display().to_string(),
            stderr: if want_err {
                err.display().to_string()
            } else {
                String::new()
            },
            terminal: tty,
        };
        let spec = AnyValue {
            type_url: PROCESS_TYPE.into(),
            value: serde_json::to_vec(&process).unwrap_or_default(),
        };
        let t0 = std::time::Instant::now();
        shim.exec(&exec_id, &stdio, &spec).await?;
        guard.shim = Some(shim.clone());
        let t_exec = t0.elapsed();
        shim.start(&exec_id).await?;
        let t_start = t0.elapsed();
        // The shim holds the writing ends now: reopen read-only, so that the copy sees
        // the end of the output when the shim closes them.
        let reopen = |p: &PathBuf| {
            tokio::net::unix::pipe::OpenOptions::new()
                .open_receiver(p)
                .map_err(Error::io("open fifo", p))
        };
        let out_rx = reopen(&out)?;
        drop(out_rw);
        let err_rx = match err_rw {
            Some(rw) => {
                let rx = reopen(&err)?;
                drop(rw);
                Some(rx)
            }
            None => None,
        };
        let StreamIo {
            stdin,
            stdout,
            stderr,
            resize,
        } = io;
        let mut pumps = AbortOnDrop(vec![tokio::spawn(pump_out(out_rx, stdout))]);
        if let Some(rx) = err_rx {
            pumps.0.push(tokio::spawn(pump_out(rx, stderr)));
        }
        let mut side = Vec::new();
        if let (Some(mut from), Some(mut to)) = (stdin, stdin_tx) {
            let (shim, exec_id) = (shim.clone(), exec_id.clone());
            side.push(tokio::spawn(async move {
                while let Some(b) = from.recv().await {
                    if to.write_all(&b).await.is_err() {
                        break;
                    }
                }
                drop(to);
                let _ = shim.close_io(&exec_id, true).await;
            }));
        }
        if let Some(sizes) = resize {
            side.push(spawn_resizer(shim.clone(), exec_id.clone(), sizes));
        }
        // Side tasks end with the exec (or with the client), never outlive it.
        let _side = AbortOnDrop(side);
        let exit = shim.wait(&exec_id).await?;
        let t_wait = t0.elapsed();
        let drained = async {
            for p in pumps.0.iter_mut() {
                let _ = p.await;
            }
        };
        let _ = tokio::time::timeout(DRAIN, drained).await;
        let t_drain = t0.elapsed();
        guard.shim = None;
        let _ = shim.delete(&exec_id).await;
        tracing::debug!(
            container = %id,
            exec_ms = t_exec.as_millis() as u64,
            start_ms = t_start.as_millis() as u64,
            wait_ms = t_wait.as_millis() as u64,
            drained_ms = t_drain.as_millis() as u64,
            deleted_ms = t0.elapsed().as_millis() as u64,
            "exec ended"
        );
        Ok(exit.status as i32)
    }

    /// Joins the container's stdio until the client detaches (closes stdin or goes) or
    /// the container's output ends. Output has no history: it starts with what comes next.
    pub async fn attach(self: &Arc<Self>, id: &str, io: StreamIo) -> Result<()> {
        let r = self.record(id).await?;
        check_running(&r)?;
        let (output, stdin_fifo) = {
            let logs = self.ctx.logs.lock().unwrap_or_else(|e| e.into_inner());
            let live = logs.get(id).ok_or_else(|| {
                Error::FailedPrecondition(format!("container {id:?} has no output being copied"))
            })?;
            (live.output.upgrade(), live.stdin.clone())
        };
        let Some(output) = output else {
            return Ok(()); // its output has ended already
        };
        let mut sub = output.subscribe();
        drop(output);
        let task = self.ctx.runtime.get(&key(id)?)?;
        let shim = task.shim()?;
        let StreamIo {
            stdin,
            stdout,
            stderr,
            resize,
        } = io;
        let mut side = Vec::new();
        if let Some(sizes) = resize {
            side.push(spawn_resizer(shim.clone(), String::new(), sizes));
        }
        let _side = AbortOnDrop(side);
        // Client stdin, when both sides have one; its end detaches the client. With
        // StdinOnce the container's stdin closes when this first attach ends, however.
        let _once = match (&stdin, &stdin_fifo) {
            (Some(_), Some(fifo)) if r.config.stdin_once => Some(CloseStdin {
                fifo: fifo.clone(),
                shim: shim.clone(),
            }),
            _ => None,
        };
        let input = async {
            match (stdin, stdin_fifo) {
                (Some(mut from), Some(fifo)) => {
                    while let Some(b) = from.recv().await {
                        let mut w = fifo.lock().await;
                        let Some(to) = w.as_mut() else { break };
                        if to.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                }
                (Some(mut from), None) => {
                    // The container takes no input: what the client sends is dropped.
                    while from.recv().await.is_some() {}
                }
                (None, _) => std::future::pending().await,
            }
        };
        let copy_out = async {
            loop {
                match sub.recv().await {
                    Ok((Stream::Stdout, b)) => {
                        if let Some(t) = &stdout {
                            if t.send(b).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok((Stream::Stderr, b)) => {
                        if let Some(t) = &stderr {
                            if t.send(b).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(container = %id, "attached client fell behind: {n} chunks of output skipped");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        };
        tokio::select! {
            _ = input => {},
            _ = copy_out => {},
        }
        Ok(())
    }
}

/// Closes a container's stdin (StdinOnce) when the attach that used it ends, also when
/// its client vanished and the attach was dropped.
struct CloseStdin {
    fifo: Arc<tokio::sync::Mutex<Option<tokio::net::unix::pipe::Sender>>>,
    shim: Arc<dyn TaskClient>,
}

impl Drop for CloseStdin {
    fn drop(&mut self) {
        let (fifo, shim) = (self.fifo.clone(), self.shim.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                fifo.lock().await.take();
                let _ = shim.close_io("", true).await;
            });
        }
    }
}

/// Passes the client's terminal sizes to the process's pty (empty sizes are ignored).
fn spawn_resizer(
    shim: Arc<dyn TaskClient>,
    exec_id: String,
    mut sizes: mpsc::Receiver<TermSize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(s) = sizes.recv().await {
            if s.width > 0 && s.height > 0 {
                let _ = shim
                    .resize_pty(&exec_id, s.width.into(), s.height.into())
                    .await;
            }
        }
    })
}

/// Aborts its tasks when dropped (the request ended or was dropped).
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
