//! containerd.services.streaming.v1: client-opened streams that other services use by id.
//! The client's first message is a StreamInit naming the stream; berthd answers with an
//! empty message, and from then on a service (Transfer's progress, its credential
//! questions) sends and receives `Any` messages on it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use prost::{Message, Name};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::api::StreamInit;
use crate::server::streaming_server;
use crate::status::namespace;

/// The two directions of one stream, as a service sees them.
pub struct StreamHandle {
    pub to_client: mpsc::Sender<prost_types::Any>,
    pub from_client: mpsc::Receiver<prost_types::Any>,
    /// Tells this stream from a later one the client opens with the same id.
    serial: u64,
}

static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Open streams by (namespace, id); a service takes a stream out to use it.
#[derive(Clone, Default)]
pub struct StreamRegistry {
    streams: Arc<Mutex<HashMap<(String, String), StreamHandle>>>,
}

impl StreamRegistry {
    pub fn take(&self, ns: &str, id: &str) -> Option<StreamHandle> {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(ns.to_owned(), id.to_owned()))
    }

    /// Forgets the stream `(ns, id)` if it is still the one numbered `serial`: a client may
    /// have opened a new stream with the same id since.
    fn forget(&self, ns: &str, id: &str, serial: u64) -> bool {
        let mut m = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let key = (ns.to_owned(), id.to_owned());
        if m.get(&key).is_some_and(|h| h.serial == serial) {
            m.remove(&key);
            return true;
        }
        false
    }
}

pub struct StreamingService {
    pub streams: StreamRegistry,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub fn any_of<M: Message + Name>(m: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: M::full_name(),
        value: m.encode_to_vec(),
    }
}

#[tonic::async_trait]
impl streaming_server::Streaming for StreamingService {
    type StreamStream = BoxStream<prost_types::Any>;

    async fn stream(
        &self,
        req: Request<Streaming<prost_types::Any>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let ns = namespace(&req)?;
        let mut incoming = req.into_inner();
        let first = incoming
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before its StreamInit"))?;
        if !first.type_url.ends_with(&StreamInit::full_name()) {
            return Err(Status::invalid_argument(format!(
                "first message of a stream must be a StreamInit, not {:?}",
                first.type_url
            )));
        }
        let init = StreamInit::decode(first.value.as_slice())
            .map_err(|e| Status::invalid_argument(format!("StreamInit: {e}")))?;
        if init.id.is_empty() {
            return Err(Status::invalid_argument("StreamInit needs an id"));
        }
        let (to_client, out) = mpsc::channel(64);
        let (in_tx, from_client) = mpsc::channel(16);
        let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let mut m = self
                .streams
                .streams
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let key = (ns.to_string(), init.id.clone());
            if m.contains_key(&key) {
                return Err(Status::already_exists(format!(
                    "stream {:?} in namespace {ns:?}",
                    init.id
                )));
            }
            m.insert(
                key,
                StreamHandle {
                    to_client: to_client.clone(),
                    from_client,
                    serial,
                },
            );
        }
        // The acknowledgement the client waits for before using the stream.
        let _ = to_client
            .send(prost_types::Any {
                type_url: "google.protobuf.Empty".into(),
                value: Vec::new(),
            })
            .await;
        let id = init.id.clone();
        let (registry, key) = (self.streams.clone(), (ns.to_string(), init.id.clone()));

        tokio::spawn(async move {
            loop {
                match incoming.next().await {
                    Some(Ok(m)) => {
                        tracing::trace!(stream = %id, type_url = %m.type_url, "message from the client");
                        if in_tx.send(m).await.is_err() {
                            tracing::debug!(stream = %id, "nobody reads this stream");
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(stream = %id, "stream from the client failed: {e}");
                        break;
                    }
                    None => {
                        tracing::debug!(stream = %id, "client closed its side of the stream");
                        break;
                    }
                }
            }
            // A stream no transfer took before its client went away is forgotten.
            if registry.forget(&key.0, &key.1, serial) {
                tracing::debug!(stream = %id, "stream closed before any transfer used it");
            }
        });
        let out = tokio_stream::wrappers::ReceiverStream::new(out).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }
}

/// How much the receiving side lets the sender have in flight on a data stream.
const WINDOW: i32 = 1 << 20;

/// Receives a data stream (Data messages, credit granted with WindowUpdate) into `path`,
/// until the client closes its side. Returns the bytes received.
/// Cancels the stream I/O of a transfer when the request that runs it is dropped.
pub struct CancelOnDrop(pub tokio::sync::watch::Sender<bool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// Waits, on a blocking thread, for the next message from the client, or for the
/// transfer to be cancelled.
fn next_message(
    h: &mut StreamHandle,
    cancel: &mut tokio::sync::watch::Receiver<bool>,
    rt: &tokio::runtime::Handle,
) -> std::io::Result<Option<prost_types::Any>> {
    if *cancel.borrow() {
        return Err(std::io::Error::other("the transfer was cancelled"));
    }
    rt.block_on(async {
        tokio::select! {
            m = h.from_client.recv() => Ok(m),
            _ = cancel.wait_for(|c| *c) => Err(std::io::Error::other("the transfer was cancelled")),
        }
    })
}

/// The bytes a client streams in (Data messages), readable on a blocking thread; credit is
/// granted a window at a time as the bytes are consumed.
pub struct StreamReader {
    h: StreamHandle,
    cancel: tokio::sync::watch::Receiver<bool>,
    rt: tokio::runtime::Handle,
    buf: Vec<u8>,
    pos: usize,
    window: i64,
    done: bool,
}

impl StreamReader {
    pub fn new(h: StreamHandle, cancel: tokio::sync::watch::Receiver<bool>) -> Self {
        StreamReader {
            h,
            cancel,
            rt: tokio::runtime::Handle::current(),
            buf: Vec::new(),
            pos: 0,
            window: 0,
            done: false,
        }
    }
}

impl std::io::Read for StreamReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        use crate::types::transfer::{Data, WindowUpdate};
        loop {
            if self.pos < self.buf.len() {
                let n = out.len().min(self.buf.len() - self.pos);
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            if self.window < i64::from(WINDOW / 2) {
                // A client that already closed its side needs no more credit.
                let _ = self
                    .h
                    .to_client
                    .blocking_send(any_of(&WindowUpdate { update: WINDOW }));
                self.window += i64::from(WINDOW);
            }
            match next_message(&mut self.h, &mut self.cancel, &self.rt)? {
                None => self.done = true,
                Some(m) => {
                    let d = Data::decode(m.value.as_slice()).map_err(|e| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("data stream: {e}"),
                        )
                    })?;
                    self.window -= d.data.len() as i64;
                    self.buf = d.data;
                    self.pos = 0;
                }
            }
        }
    }
}

/// Bytes streamed out to a client (Data messages) from a blocking thread, as fast as the
/// client grants credit.
pub struct StreamWriter {
    h: StreamHandle,
    cancel: tokio::sync::watch::Receiver<bool>,
    rt: tokio::runtime::Handle,
    credit: i64,
    pub written: u64,
}

impl StreamWriter {
    pub fn new(h: StreamHandle, cancel: tokio::sync::watch::Receiver<bool>) -> Self {
        StreamWriter {
            h,
            cancel,
            rt: tokio::runtime::Handle::current(),
            credit: 0,
            written: 0,
        }
    }
}

impl std::io::Write for StreamWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        use crate::types::transfer::{Data, WindowUpdate};
        if data.is_empty() {
            return Ok(0);
        }
        while self.credit <= 0 {
            let m = next_message(&mut self.h, &mut self.cancel, &self.rt)?.ok_or_else(|| {
                std::io::Error::other("the client closed the export stream before the end")
            })?;
            let u = WindowUpdate::decode(m.value.as_slice()).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("window update: {e}"),
                )
            })?;
            self.credit += i64::from(u.update);
        }
        let n = data.len().min(self.credit as usize).min(256 << 10);
        self.h
            .to_client
            .blocking_send(any_of(&Data {
                data: data[..n].to_vec(),
            }))
            .map_err(|_| std::io::Error::other("the client closed the export stream"))?;
        self.credit -= n as i64;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(serial: u64) -> StreamHandle {
        let (to_client, _) = mpsc::channel(1);
        let (_, from_client) = mpsc::channel(1);
        StreamHandle {
            to_client,
            from_client,
            serial,
        }
    }

    /// The cleanup of a stream whose client went away must not take a newer stream the
    /// client opened under the same id (a transfer then found its progress stream gone).
    #[test]
    fn a_closed_stream_forgets_only_itself() {
        let r = StreamRegistry::default();
        let key = ("default".to_owned(), "progress-1".to_owned());
        r.streams.lock().unwrap().insert(key.clone(), handle(2));
        assert!(
            !r.forget("default", "progress-1", 1),
            "an older stream's cleanup"
        );
        assert!(r.take("default", "progress-1").is_some());
        r.streams.lock().unwrap().insert(key, handle(3));
        assert!(r.forget("default", "progress-1", 3));
        assert!(r.take("default", "progress-1").is_none());
    }
}
