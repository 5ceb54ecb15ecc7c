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
}

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
        });
        let out = tokio_stream::wrappers::ReceiverStream::new(out).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }
}

/// How much the receiving side lets the sender have in flight on a data stream.
const WINDOW: i32 = 1 << 20;

fn stream_status(what: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{what}: {e}"))
}

/// Receives a data stream (Data messages, credit granted with WindowUpdate) into `path`,
/// until the client closes its side. Returns the bytes received.
pub async fn receive_to_file(mut h: StreamHandle, path: &std::path::Path) -> Result<u64, Status> {
    use crate::types::transfer::{Data, WindowUpdate};
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| stream_status(&format!("create {}", path.display()), e))?;
    let mut window = 0i32;
    let mut total = 0u64;
    loop {
        if window < WINDOW {
            let _ = h
                .to_client
                .send(any_of(&WindowUpdate { update: WINDOW }))
                .await;
            window += WINDOW;
        }
        let Some(m) = h.from_client.recv().await else {
            break;
        };
        let data = Data::decode(m.value.as_slice())
            .map_err(|e| Status::invalid_argument(format!("data stream: {e}")))?;
        file.write_all(&data.data)
            .await
            .map_err(|e| stream_status(&format!("write {}", path.display()), e))?;
        window -= data.data.len() as i32;
        total += data.data.len() as u64;
    }
    file.flush()
        .await
        .map_err(|e| stream_status(&format!("write {}", path.display()), e))?;
    Ok(total)
}

/// Sends `path` on a data stream as the client grants credit, then closes the stream.
pub async fn send_file(mut h: StreamHandle, path: &std::path::Path) -> Result<u64, Status> {
    use crate::types::transfer::{Data, WindowUpdate};
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| stream_status(&format!("open {}", path.display()), e))?;
    let mut credit = 0i64;
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        while credit <= 0 {
            let m = h.from_client.recv().await.ok_or_else(|| {
                Status::cancelled("the client closed the export stream before the end")
            })?;
            let u = WindowUpdate::decode(m.value.as_slice())
                .map_err(|e| Status::invalid_argument(format!("window update: {e}")))?;
            credit += i64::from(u.update);
        }
        let want = buf.len().min(credit as usize);
        let n = file
            .read(&mut buf[..want])
            .await
            .map_err(|e| stream_status(&format!("read {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        h.to_client
            .send(any_of(&Data {
                data: buf[..n].to_vec(),
            }))
            .await
            .map_err(|_| Status::cancelled("the client closed the export stream"))?;
        credit -= n as i64;
        total += n as u64;
    }
    // Dropping the handle ends the stream: the client reads end of data.
    drop(h);
    Ok(total)
}
