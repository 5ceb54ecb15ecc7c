//! containerd.services.snapshots.v1 over the core snapshotters.

use std::pin::Pin;
use std::sync::Arc;

use berth_core::filters::Filter;
use berth_core::gc::Scheduler;
use berth_core::mount::Mount;
use berth_core::snapshot::{Kind, NewSnapshot, SnapshotInfo, Snapshots};
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::api::snapshots::{
    CleanupRequest, CommitSnapshotRequest, Info, Kind as KindPb, ListSnapshotsRequest,
    ListSnapshotsResponse, MountsRequest, MountsResponse, PrepareSnapshotRequest,
    PrepareSnapshotResponse, RemoveSnapshotRequest, StatSnapshotRequest, StatSnapshotResponse,
    UpdateSnapshotRequest, UpdateSnapshotResponse, UsageRequest, UsageResponse,
    ViewSnapshotRequest, ViewSnapshotResponse,
};
use crate::server::snapshots_server;
use crate::status::{blocking, labels_in, labels_out, lease, namespace, timestamp, to_status};
use crate::types::Mount as MountPb;
use berth_core::events::{Event, EventBus};

pub struct SnapshotsService {
    pub store: Arc<Snapshots>,
    pub gc: Scheduler,
    pub events: EventBus,
}

pub fn mount_out(m: Mount) -> MountPb {
    MountPb {
        r#type: m.kind,
        source: m.source,
        target: m.target,
        options: m.options,
    }
}

pub fn mount_in(m: MountPb) -> Mount {
    Mount {
        kind: m.r#type,
        source: m.source,
        target: m.target,
        options: m.options,
    }
}

fn kind_pb(k: Kind) -> i32 {
    let k = match k {
        Kind::View => KindPb::View,
        Kind::Active => KindPb::Active,
        Kind::Committed => KindPb::Committed,
    };
    k as i32
}

fn info_pb(i: SnapshotInfo) -> Info {
    Info {
        name: i.name,
        parent: i.parent.unwrap_or_default(),
        kind: kind_pb(i.kind),
        created_at: timestamp(i.created_at),
        updated_at: timestamp(i.updated_at),
        labels: labels_out(i.labels),
    }
}

impl SnapshotsService {
    /// Prepare and View differ only in the kind of snapshot they make.
    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        ns: berth_core::Namespace,
        lease: Option<String>,
        snapshotter: String,
        key: String,
        parent: String,
        labels: std::collections::HashMap<String, String>,
        kind: Kind,
    ) -> Result<Vec<MountPb>, Status> {
        let store = self.store.clone();
        let event = Event::SnapshotPrepare {
            key: key.clone(),
            parent: parent.clone(),
            snapshotter: snapshotter.clone(),
        };
        let n = ns.clone();
        let mounts = blocking(move || {
            let ns = n;
            let new = NewSnapshot {
                key: &key,
                parent: Some(parent.as_str()),
                kind,
                labels: labels_in(labels),
                lease: lease.as_deref(),
            };
            store.create(&ns, &snapshotter, new)
        })
        .await?;
        self.events.publish(&ns, event);
        Ok(mounts.into_iter().map(mount_out).collect())
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl snapshots_server::Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        req: Request<PrepareSnapshotRequest>,
    ) -> Result<Response<PrepareSnapshotResponse>, Status> {
        let (ns, lease) = (namespace(&req)?, lease(&req));
        let r = req.into_inner();
        let mounts = self
            .create(
                ns,
                lease,
                r.snapshotter,
                r.key,
                r.parent,
                r.labels,
                Kind::Active,
            )
            .await?;
        Ok(Response::new(PrepareSnapshotResponse { mounts }))
    }

    async fn view(
        &self,
        req: Request<ViewSnapshotRequest>,
    ) -> Result<Response<ViewSnapshotResponse>, Status> {
        let (ns, lease) = (namespace(&req)?, lease(&req));
        let r = req.into_inner();
        let mounts = self
            .create(
                ns,
                lease,
                r.snapshotter,
                r.key,
                r.parent,
                r.labels,
                Kind::View,
            )
            .await?;
        Ok(Response::new(ViewSnapshotResponse { mounts }))
    }

    async fn mounts(
        &self,
        req: Request<MountsRequest>,
    ) -> Result<Response<MountsResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let store = self.store.clone();
        let mounts = blocking(move || store.mounts(&ns, &r.snapshotter, &r.key)).await?;
        Ok(Response::new(MountsResponse {
            mounts: mounts.into_iter().map(mount_out).collect(),
        }))
    }

    async fn commit(&self, req: Request<CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let (ns, lease) = (namespace(&req)?, lease(&req));
        let r = req.into_inner();
        let store = self.store.clone();
        let event = Event::SnapshotCommit {
            key: r.key.clone(),
            name: r.name.clone(),
            snapshotter: r.snapshotter.clone(),
        };
        let n = ns.clone();
        blocking(move || {
            store.commit(
                &n,
                &r.snapshotter,
                &r.name,
                &r.key,
                labels_in(r.labels),
                lease.as_deref(),
            )
        })
        .await?;
        self.events.publish(&ns, event);
        Ok(Response::new(()))
    }

    async fn remove(&self, req: Request<RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let store = self.store.clone();
        let event = Event::SnapshotRemove {
            key: r.key.clone(),
            snapshotter: r.snapshotter.clone(),
        };
        let n = ns.clone();
        blocking(move || store.remove(&n, &r.snapshotter, &r.key)).await?;
        self.events.publish(&ns, event);
        self.gc.schedule();
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<StatSnapshotRequest>,
    ) -> Result<Response<StatSnapshotResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let store = self.store.clone();
        let i = blocking(move || store.stat(&ns, &r.snapshotter, &r.key)).await?;
        Ok(Response::new(StatSnapshotResponse {
            info: Some(info_pb(i)),
        }))
    }

    async fn update(
        &self,
        req: Request<UpdateSnapshotRequest>,
    ) -> Result<Response<UpdateSnapshotResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("update needs info"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let store = self.store.clone();
        let i = blocking(move || {
            store.update(
                &ns,
                &r.snapshotter,
                &info.name,
                &labels_in(info.labels),
                &paths,
            )
        })
        .await?;
        Ok(Response::new(UpdateSnapshotResponse {
            info: Some(info_pb(i)),
        }))
    }

    type ListStream = BoxStream<ListSnapshotsResponse>;

    async fn list(
        &self,
        req: Request<ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let f = Filter::parse_all(&r.filters).map_err(to_status)?;
        let store = self.store.clone();
        let all = blocking(move || store.list(&ns, &r.snapshotter, &f)).await?;
        let batches: Vec<Result<ListSnapshotsResponse, Status>> = all
            .chunks(100)
            .map(|c| {
                Ok(ListSnapshotsResponse {
                    info: c.iter().cloned().map(info_pb).collect(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(&self, req: Request<UsageRequest>) -> Result<Response<UsageResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let store = self.store.clone();
        let u = blocking(move || store.usage(&ns, &r.snapshotter, &r.key)).await?;
        Ok(Response::new(UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, req: Request<CleanupRequest>) -> Result<Response<()>, Status> {
        namespace(&req)?;
        let r = req.into_inner();
        let store = self.store.clone();
        blocking(move || store.cleanup(&r.snapshotter)).await?;
        Ok(Response::new(()))
    }
}
