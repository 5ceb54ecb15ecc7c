//! containerd.services.leases.v1 over the core lease store.

use std::sync::Arc;

use berth_core::filters::Filter;
use berth_core::gc::Scheduler;
use berth_core::leases::{self, Lease, Leases};
use berth_core::metadata::MetaStore;
use tonic::{Request, Response, Status};

use crate::api::{
    AddResourceRequest, CreateRequest, CreateResponse, DeleteRequest, DeleteResourceRequest,
    Lease as LeasePb, ListRequest, ListResourcesRequest, ListResourcesResponse, ListResponse,
    Resource,
};
use crate::server::leases_server;
use crate::status::{
    blocking, collect_after_delete, digest, labels_in, labels_out, namespace, timestamp, to_status,
};

pub struct LeasesService {
    pub meta: Arc<MetaStore>,
    pub gc: Scheduler,
}

fn lease_pb(l: Lease) -> LeasePb {
    LeasePb {
        id: l.id,
        created_at: timestamp(l.created_at),
        labels: labels_out(l.labels),
    }
}

fn resource(r: Option<Resource>) -> Result<Resource, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument("resource is required"))?;
    leases::validate_resource_type(&r.r#type).map_err(to_status)?;
    if r.r#type == "content" {
        digest(&r.id)?;
    }
    Ok(r)
}

#[tonic::async_trait]
impl leases_server::Leases for LeasesService {
    async fn create(
        &self,
        req: Request<CreateRequest>,
    ) -> Result<Response<CreateResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let meta = self.meta.clone();
        let l = blocking(move || Leases { meta: &meta }.create(&ns, &r.id, labels_in(r.labels)))
            .await?;
        Ok(Response::new(CreateResponse {
            lease: Some(lease_pb(l)),
        }))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let meta = self.meta.clone();
        let id = r.id.clone();
        blocking(move || Leases { meta: &meta }.delete(&ns, &id)).await?;
        collect_after_delete(&self.gc, r.sync).await?;
        Ok(Response::new(()))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let ns = namespace(&req)?;
        let f = Filter::parse_all(&req.get_ref().filters).map_err(to_status)?;
        let meta = self.meta.clone();
        let all = blocking(move || Leases { meta: &meta }.list(&ns, &f)).await?;
        Ok(Response::new(ListResponse {
            leases: all.into_iter().map(lease_pb).collect(),
        }))
    }

    async fn add_resource(&self, req: Request<AddResourceRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let res = resource(r.resource)?;
        let meta = self.meta.clone();
        blocking(move || Leases { meta: &meta }.add_resource(&ns, &r.id, &res.r#type, &res.id))
            .await?;
        Ok(Response::new(()))
    }

    async fn delete_resource(
        &self,
        req: Request<DeleteResourceRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let res = resource(r.resource)?;
        let meta = self.meta.clone();
        blocking(move || Leases { meta: &meta }.delete_resource(&ns, &r.id, &res.r#type, &res.id))
            .await?;
        self.gc.schedule();
        Ok(Response::new(()))
    }

    async fn list_resources(
        &self,
        req: Request<ListResourcesRequest>,
    ) -> Result<Response<ListResourcesResponse>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().id;
        let meta = self.meta.clone();
        let all = blocking(move || Leases { meta: &meta }.resources(&ns, &id)).await?;
        Ok(Response::new(ListResourcesResponse {
            resources: all
                .into_iter()
                .map(|(t, id)| Resource { id, r#type: t })
                .collect(),
        }))
    }
}
