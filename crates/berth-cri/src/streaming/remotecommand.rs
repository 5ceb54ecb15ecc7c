//! Kubernetes' remote-command protocol (exec and attach) over SPDY: the client opens an
//! error stream and the stdio streams it asked for (and a resize stream with a TTY from
//! v3 on); the server runs the command and reports on the error stream — from v4 on as
//! a `Status` object, before that as text and only on failure.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::spdy::{self, StreamWriter};
use super::{StreamRequest, Streaming};
use crate::error::{Error, Result};
use crate::exec::{StreamIo, TermSize};

/// How long the client has to open its streams.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// After the status, how long the client gets to read it and hang up.
pub const LINGER: Duration = Duration::from_secs(2);

/// Protocol version from its name: 1 (`channel.k8s.io`) to 5.
pub fn version_of(name: &str) -> u8 {
    match name {
        "v5.channel.k8s.io" => 5,
        "v4.channel.k8s.io" | "v4.base64.channel.k8s.io" => 4,
        "v3.channel.k8s.io" => 3,
        "v2.channel.k8s.io" => 2,
        _ => 1,
    }
}

/// The streams a request asked for.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Want {
    pub fn of(r: &StreamRequest) -> Want {
        match r {
            StreamRequest::Exec(e) => Want {
                stdin: e.stdin,
                stdout: e.stdout,
                stderr: e.stderr && !e.tty,
                tty: e.tty,
            },
            StreamRequest::Attach(a) => Want {
                stdin: a.stdin,
                stdout: a.stdout,
                stderr: a.stderr && !a.tty,
                tty: a.tty,
            },
            StreamRequest::PortForward(_) => Want {
                stdin: false,
                stdout: false,
                stderr: false,
                tty: false,
            },
        }
    }
}

/// What ran, and how it ended: the error stream's text, if the version reports it.
pub fn status_message(version: u8, r: &StreamRequest, result: &Result<i32>) -> Option<String> {
    let (what, cmd) = match r {
        StreamRequest::Exec(e) => ("error executing command in container", Some(&e.cmd)),
        _ => ("error attaching to container", None),
    };
    let failure: Option<(String, String, Option<i32>)> = match result {
        Ok(0) => None,
        Ok(code) => {
            let cmd = cmd
                .map(|c| format!("[{}]", c.join(" ")))
                .unwrap_or_default();
            Some((
                format!(
                    "command terminated with non-zero exit code: error executing command {cmd}, exit code {code}"
                ),
                "NonZeroExitCode".into(),
                Some(*code),
            ))
        }
        Err(e) => Some((
            format!("Internal error occurred: {what}: {e}"),
            "InternalError".into(),
            None,
        )),
    };
    if version < 4 {
        return failure.map(|(m, _, _)| m);
    }
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    Some(match failure {
        None => r#"{"metadata":{},"status":"Success"}"#.to_owned(),
        Some((message, reason, Some(code))) => format!(
            r#"{{"metadata":{{}},"status":"Failure","message":{},"reason":{},"details":{{"causes":[{{"reason":"ExitCode","message":"{code}"}}]}}}}"#,
            q(&message),
            q(&reason)
        ),
        Some((message, reason, None)) => {
            let cause = message.trim_start_matches("Internal error occurred: ");
            format!(
                r#"{{"metadata":{{}},"status":"Failure","message":{},"reason":{},"details":{{"causes":[{{"message":{}}}]}},"code":500}}"#,
                q(&message),
                q(&reason),
                q(cause)
            )
        }
    })
}

/// Runs the request with `io`: exec returns its exit status, attach 0 when it ends.
pub async fn run(s: &Streaming, r: &StreamRequest, io: StreamIo) -> Result<i32> {
    match r {
        StreamRequest::Exec(e) => {
            s.containers
                .exec_stream(&e.container_id, e.cmd.clone(), e.tty, io)
                .await
        }
        StreamRequest::Attach(a) => s.containers.attach(&a.container_id, io).await.map(|_| 0),
        StreamRequest::PortForward(_) => Err(Error::InvalidArgument(
            "a port-forward token does not run commands".into(),
        )),
    }
}

/// Terminal sizes from the client's bytes (one JSON object after another, split anywhere).
pub fn decode_resizes(mut brx: mpsc::Receiver<Bytes>) -> mpsc::Receiver<TermSize> {
    let (stx, srx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::new();
        while let Some(b) = brx.recv().await {
            buf.extend_from_slice(&b);
            let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<TermSize>();
            let mut used = 0;
            loop {
                match it.next() {
                    Some(Ok(size)) => {
                        used = it.byte_offset();
                        if stx.send(size).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => {
                        tracing::debug!("resize stream: {e}");
                        return;
                    }
                    None => {
                        used = it.byte_offset();
                        break;
                    }
                }
            }
            buf.drain(..used);
            if buf.len() > 4096 {
                return;
            }
        }
    });
    srx
}

/// Copies what the command writes to a SPDY stream, then finishes the stream.
fn spdy_sink(w: StreamWriter) -> (mpsc::Sender<Bytes>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    let h = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if w.send_bytes(b).await.is_err() {
                return;
            }
        }
        w.finish().await;
    });
    (tx, h)
}

pub async fn serve_spdy(
    s: Arc<Streaming>,
    mut conn: spdy::Connection,
    version: u8,
    r: StreamRequest,
) {
    let want = Want::of(&r);
    let expected = 1
        + usize::from(want.stdin)
        + usize::from(want.stdout)
        + usize::from(want.stderr)
        + usize::from(want.tty && version >= 3);
    let mut got: Vec<spdy::Stream> = Vec::new();
    let waited = tokio::time::timeout(STREAM_CREATION_TIMEOUT, async {
        while got.len() < expected {
            let Some(st) = conn.incoming.recv().await else {
                return false;
            };
            match spdy::header(&st.headers, "streamtype") {
                Some("error" | "stdin" | "stdout" | "stderr" | "resize") => got.push(st),
                other => tracing::debug!("remote command: unexpected stream type {other:?}"),
            }
        }
        true
    })
    .await;
    if !matches!(waited, Ok(true)) {
        tracing::debug!("remote command: the client did not open its streams");
        conn.close(Duration::ZERO).await;
        return;
    }
    let mut error = None;
    let mut io = StreamIo::default();
    let mut sinks = Vec::new();
    for st in got {
        match spdy::header(&st.headers, "streamtype").unwrap_or("") {
            "error" => error = Some(st.tx),
            "stdin" if want.stdin => io.stdin = Some(st.rx),
            "stdout" if want.stdout => {
                let (tx, h) = spdy_sink(st.tx);
                io.stdout = Some(tx);
                sinks.push(h);
            }
            "stderr" if want.stderr => {
                let (tx, h) = spdy_sink(st.tx);
                io.stderr = Some(tx);
                sinks.push(h);
            }
            "resize" if want.tty => io.resize = Some(decode_resizes(st.rx)),
            _ => {}
        }
    }
    let mut closed = conn.closed.clone();
    let result = tokio::select! {
        r = run(&s, &r, io) => r,
        _ = closed.wait_for(|c| *c) => {
            // The client is gone: dropping the run ends (an exec: kills) its process.
            tracing::debug!("remote command: client went away");
            return;
        }
    };
    for h in sinks {
        let _ = h.await;
    }
    if let Some(e) = error {
        if let Some(msg) = status_message(version, &r, &result) {
            let _ = e.send(msg.as_bytes()).await;
        }
        e.finish().await;
    }
    conn.close(LINGER).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1 as cri;

    fn exec(cmd: &[&str]) -> StreamRequest {
        StreamRequest::Exec(cri::ExecRequest {
            container_id: "c".into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }

    #[test]
    fn statuses_are_what_kubectl_decodes() {
        let r = exec(&["sh", "-c", "exit 7"]);
        assert_eq!(
            status_message(4, &r, &Ok(0)).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        let failed = status_message(4, &r, &Ok(7)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&failed).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "7");
        assert_eq!(
            v["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 7], exit code 7"
        );
        let internal = status_message(5, &r, &Err(Error::NotFound("container \"x\"".into())));
        let v: serde_json::Value = serde_json::from_str(&internal.unwrap()).unwrap();
        assert_eq!(v["reason"], "InternalError");
        assert_eq!(v["code"], 500);
        assert!(v["message"]
            .as_str()
            .unwrap()
            .contains("container \"x\" not found"));
        // Before v4: nothing on success, text on failure.
        assert_eq!(status_message(3, &r, &Ok(0)), None);
        assert!(status_message(2, &r, &Ok(3))
            .unwrap()
            .contains("exit code 3"));
    }

    #[tokio::test]
    async fn resize_events_decode_across_and_within_chunks() {
        let (tx, rx) = mpsc::channel(8);
        let mut sizes = decode_resizes(rx);
        tx.send(Bytes::from_static(b"{\"Width\":80,\"Hei"))
            .await
            .unwrap();
        tx.send(Bytes::from_static(
            b"ght\":24}\n{\"Width\":100,\"Height\":40}{\"width\":1,\"height\":2}",
        ))
        .await
        .unwrap();
        assert_eq!(
            sizes.recv().await,
            Some(TermSize {
                width: 80,
                height: 24
            })
        );
        assert_eq!(
            sizes.recv().await,
            Some(TermSize {
                width: 100,
                height: 40
            })
        );
        assert_eq!(
            sizes.recv().await,
            Some(TermSize {
                width: 1,
                height: 2
            })
        );
        drop(tx);
        assert_eq!(sizes.recv().await, None);
    }
}
