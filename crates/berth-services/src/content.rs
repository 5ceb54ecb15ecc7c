//! containerd.services.content.v1 over the core content store, including the resumable
//! bidirectional `Write` stream.

use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;

use berth_core::content::{ContentInfo, ContentStore, IngestStatus, Writer};
use berth_core::filters::Filter;
use berth_core::gc::Scheduler;
use berth_core::metadata::Timestamp;
use berth_core::{Error, Namespace};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::{
    AbortRequest, DeleteContentRequest, Info, InfoRequest, InfoResponse, ListContentRequest,
    ListContentResponse, ListStatusesRequest, ListStatusesResponse, ReadContentRequest,
    ReadContentResponse, Status as IngestPb, StatusRequest, StatusResponse, UpdateRequest,
    UpdateResponse, WriteAction, WriteContentRequest, WriteContentResponse,
};
use crate::server::content_server::Content;
use crate::status::{
    blocking, digest, labels_in, labels_out, lease, namespace, timestamp, to_status,
};
use berth_core::events::{Event, EventBus};

const CHUNK: usize = 1 << 20;

pub type GcTrigger = Scheduler;

pub struct ContentService {
    pub store: Arc<ContentStore>,
    pub gc: Scheduler,
    pub events: EventBus,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn info_pb(i: ContentInfo) -> Info {
    Info {
        digest: i.digest.to_string(),
        size: i.size,
        created_at: timestamp(i.created_at),
        updated_at: timestamp(i.updated_at),
        labels: labels_out(i.labels),
    }
}

fn status_pb(s: IngestStatus) -> IngestPb {
    IngestPb {
        started_at: timestamp(s.started_at),
        updated_at: timestamp(s.updated_at),
        r#ref: s.r#ref,
        offset: s.offset,
        total: s.total,
        expected: s.expected.map(|d| d.to_string()).unwrap_or_default(),
    }
}

fn filter(f: &[String]) -> Result<Filter, Status> {
    Filter::parse_all(f).map_err(to_status)
}

#[tonic::async_trait]
impl Content for ContentService {
    async fn info(&self, req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let ns = namespace(&req)?;
        let d = digest(&req.get_ref().digest)?;
        let store = self.store.clone();
        let i = blocking(move || store.info(&ns, &d)).await?;
        Ok(Response::new(InfoResponse {
            info: Some(info_pb(i)),
        }))
    }

    async fn update(
        &self,
        req: Request<UpdateRequest>,
    ) -> Result<Response<UpdateResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let info = req
            .info
            .ok_or_else(|| Status::invalid_argument("update needs info"))?;
        let d = digest(&info.digest)?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let store = self.store.clone();
        let i = blocking(move || store.update(&ns, &d, &labels_in(info.labels), &paths)).await?;
        Ok(Response::new(UpdateResponse {
            info: Some(info_pb(i)),
        }))
    }

    type ListStream = BoxStream<ListContentResponse>;

    async fn list(
        &self,
        req: Request<ListContentRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let ns = namespace(&req)?;
        let f = filter(&req.get_ref().filters)?;
        let store = self.store.clone();
        let all = blocking(move || store.list(&ns, &f)).await?;
        let batches: Vec<Result<ListContentResponse, Status>> = all
            .chunks(100)
            .map(|c| {
                Ok(ListContentResponse {
                    info: c.iter().cloned().map(info_pb).collect(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn delete(&self, req: Request<DeleteContentRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let d = digest(&req.get_ref().digest)?;
        let store = self.store.clone();
        let (n, dg) = (ns.clone(), d.clone());
        blocking(move || store.delete(&n, &dg)).await?;
        self.events.publish(
            &ns,
            Event::ContentDelete {
                digest: d.to_string(),
            },
        );
        self.gc.schedule();
        Ok(Response::new(()))
    }

    type ReadStream = BoxStream<ReadContentResponse>;

    async fn read(
        &self,
        req: Request<ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let d = digest(&r.digest)?;
        let store = self.store.clone();
        let dd = d.clone();
        let (file, size) = blocking(move || store.open(&ns, &dd)).await?;
        let (start, end) =
            berth_core::content::read_range(&d, r.offset, r.size, size).map_err(to_status)?;
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut off = start;
            let mut buf = vec![0u8; CHUNK];
            while off < end {
                let want = ((end - off) as usize).min(CHUNK);
                let msg = match file.read_at(&mut buf[..want], off as u64) {
                    Ok(0) => Err(Status::data_loss(format!("blob {d} ended early at {off}"))),
                    Ok(n) => Ok(ReadContentResponse {
                        offset: off,
                        data: buf[..n].to_vec(),
                    }),
                    Err(e) => Err(Status::internal(format!("read blob {d}: {e}"))),
                };
                let stop = msg.is_err();
                if let Ok(m) = &msg {
                    off += m.data.len() as i64;
                }
                if tx.blocking_send(msg).is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner().r#ref;
        let store = self.store.clone();
        let s = blocking(move || store.status(&ns, &r)).await?;
        Ok(Response::new(StatusResponse {
            status: Some(status_pb(s)),
        }))
    }

    async fn list_statuses(
        &self,
        req: Request<ListStatusesRequest>,
    ) -> Result<Response<ListStatusesResponse>, Status> {
        let ns = namespace(&req)?;
        let f = filter(&req.get_ref().filters)?;
        let store = self.store.clone();
        let all = blocking(move || store.list_statuses(&ns, &f)).await?;
        Ok(Response::new(ListStatusesResponse {
            statuses: all.into_iter().map(status_pb).collect(),
        }))
    }

    type WriteStream = BoxStream<WriteContentResponse>;

    async fn write(
        &self,
        req: Request<Streaming<WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        let ns = namespace(&req)?;
        let lease = lease(&req);
        let mut incoming = req.into_inner();
        let store = self.store.clone();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let result = write_stream(store, ns, lease, &mut incoming, &tx).await;
            if let Err(s) = result {
                let _ = tx.send(Err(s)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn abort(&self, req: Request<AbortRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner().r#ref;
        let store = self.store.clone();
        blocking(move || store.abort(&ns, &r)).await?;
        Ok(Response::new(()))
    }
}

/// Serves one write stream: the first message names the ref and opens (or resumes) the
/// ingest; STAT reports progress, WRITE appends at the current offset, COMMIT verifies
/// and publishes. A client that goes away leaves the ingest to be resumed.
async fn write_stream(
    store: Arc<ContentStore>,
    ns: Namespace,
    lease: Option<String>,
    incoming: &mut Streaming<WriteContentRequest>,
    tx: &mpsc::Sender<Result<WriteContentResponse, Status>>,
) -> Result<(), Status> {
    let Some(mut msg) = incoming.message().await? else {
        return Ok(());
    };
    if msg.r#ref.is_empty() {
        return Err(Status::invalid_argument(
            "first message must have a reference",
        ));
    }
    let expected = if msg.expected.is_empty() {
        None
    } else {
        Some(digest(&msg.expected)?)
    };
    let (s, n, r, l) = (store.clone(), ns.clone(), msg.r#ref.clone(), lease.clone());
    let total = msg.total;
    let mut writer: Writer =
        blocking(move || s.writer(&n, &r, total, expected.as_ref(), l.as_deref())).await?;
    loop {
        let action = WriteAction::try_from(msg.action).map_err(|_| {
            Status::invalid_argument(format!("unknown write action {}", msg.action))
        })?;
        let expected = if msg.expected.is_empty() {
            None
        } else {
            Some(digest(&msg.expected)?)
        };
        if let Some(e) = &expected {
            let (s, n, e2) = (store.clone(), ns.clone(), e.clone());
            if blocking(move || {
                s.info(&n, &e2).map(|_| true).or_else(|e| {
                    if e.is_not_found() {
                        Ok(false)
                    } else {
                        Err(e)
                    }
                })
            })
            .await?
            {
                let r = writer.reference().to_owned();
                drop(writer);
                let (s, n) = (store.clone(), ns.clone());
                let _ = blocking(move || s.abort(&n, &r)).await;
                return Err(to_status(Error::AlreadyExists(format!(
                    "content {e} in namespace {ns:?}"
                ))));
            }
        }
        let started = writer.status().started_at;
        let mut resp = WriteContentResponse {
            action: msg.action,
            started_at: timestamp(started),
            ..Default::default()
        };
        match action {
            WriteAction::Stat => {
                writer
                    .set_expectations(msg.total, expected.as_ref())
                    .map_err(to_status)?;
                let st = writer.status();
                resp.offset = st.offset;
                resp.total = if msg.total > 0 { msg.total } else { st.total };
                resp.digest = writer.digest_so_far().to_string();
                resp.updated_at = timestamp(Timestamp::now());
            }
            WriteAction::Write | WriteAction::Commit => {
                writer
                    .set_expectations(msg.total, expected.as_ref())
                    .map_err(to_status)?;
                let data = std::mem::take(&mut msg.data);
                let offset = msg.offset.max(0) as u64;
                if !data.is_empty() || (action == WriteAction::Write && offset == 0) {
                    let (w, res) = tokio::task::spawn_blocking(move || {
                        let r = writer.write_at(offset, &data);
                        (writer, r)
                    })
                    .await
                    .map_err(|e| Status::internal(format!("write worker failed: {e}")))?;
                    writer = w;
                    res.map_err(to_status)?;
                }
                resp.offset = writer.offset() as i64;
                resp.updated_at = timestamp(Timestamp::now());
                if action == WriteAction::Commit {
                    let (s, l) = (store.clone(), lease.clone());
                    let labels = labels_in(std::mem::take(&mut msg.labels));
                    let size = msg.total;
                    let d = blocking(move || {
                        s.commit(writer, size, expected.as_ref(), &labels, l.as_deref())
                    })
                    .await?;
                    resp.digest = d.to_string();
                    resp.total = resp.offset;
                    let _ = tx.send(Ok(resp)).await;
                    return Ok(());
                }
                resp.digest = writer.digest_so_far().to_string();
            }
        }
        if tx.send(Ok(resp)).await.is_err() {
            return Ok(());
        }
        match incoming.message().await {
            Ok(Some(m)) => msg = m,
            // The client closed or vanished: the ingest stays for a later resume.
            Ok(None) | Err(_) => return Ok(()),
        }
    }
}
