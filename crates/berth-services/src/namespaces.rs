//! containerd.services.namespaces.v1 over the core namespace store.

use std::sync::Arc;

use berth_core::namespaces::Namespaces;
use berth_core::Namespace;
use tonic::{Request, Response, Status};

use crate::api::{
    CreateNamespaceRequest, CreateNamespaceResponse, DeleteNamespaceRequest, GetNamespaceRequest,
    GetNamespaceResponse, ListNamespacesRequest, ListNamespacesResponse, Namespace as NamespacePb,
    UpdateNamespaceRequest, UpdateNamespaceResponse,
};
use crate::server::namespaces_server;
use crate::status::{blocking, labels_in, labels_out, to_status};
use berth_core::events::{Event, EventBus};

pub struct NamespacesService {
    pub store: Arc<Namespaces>,
    pub gc: berth_core::gc::Scheduler,
    pub events: EventBus,
}

fn name(s: &str) -> Result<Namespace, Status> {
    Namespace::new(s).map_err(to_status)
}

#[tonic::async_trait]
impl namespaces_server::Namespaces for NamespacesService {
    async fn get(
        &self,
        req: Request<GetNamespaceRequest>,
    ) -> Result<Response<GetNamespaceResponse>, Status> {
        let ns = name(&req.get_ref().name)?;
        let store = self.store.clone();
        let n = ns.clone();
        let labels = blocking(move || store.labels(&n)).await?;
        Ok(Response::new(GetNamespaceResponse {
            namespace: Some(NamespacePb {
                name: ns.to_string(),
                labels: labels_out(labels),
            }),
        }))
    }

    async fn list(
        &self,
        _req: Request<ListNamespacesRequest>,
    ) -> Result<Response<ListNamespacesResponse>, Status> {
        let store = self.store.clone();
        let all = blocking(move || store.list()).await?;
        Ok(Response::new(ListNamespacesResponse {
            namespaces: all
                .into_iter()
                .map(|(n, l)| NamespacePb {
                    name: n.to_string(),
                    labels: labels_out(l),
                })
                .collect(),
        }))
    }

    async fn create(
        &self,
        req: Request<CreateNamespaceRequest>,
    ) -> Result<Response<CreateNamespaceResponse>, Status> {
        let pb = req
            .into_inner()
            .namespace
            .ok_or_else(|| Status::invalid_argument("namespace is required"))?;
        let ns = name(&pb.name)?;
        let store = self.store.clone();
        let labels = labels_in(pb.labels.clone());
        let n = ns.clone();
        blocking(move || store.create(&n, labels)).await?;
        self.events.publish(
            &ns,
            Event::NamespaceCreate {
                name: pb.name.clone(),
                labels: labels_in(pb.labels.clone()),
            },
        );
        Ok(Response::new(CreateNamespaceResponse {
            namespace: Some(pb),
        }))
    }

    async fn update(
        &self,
        req: Request<UpdateNamespaceRequest>,
    ) -> Result<Response<UpdateNamespaceResponse>, Status> {
        let req = req.into_inner();
        let pb = req
            .namespace
            .ok_or_else(|| Status::invalid_argument("namespace is required"))?;
        let ns = name(&pb.name)?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let store = self.store.clone();
        let labels = labels_in(pb.labels);
        let n = ns.clone();
        let labels = blocking(move || store.update(&n, &labels, &paths)).await?;
        self.events.publish(
            &ns,
            Event::NamespaceUpdate {
                name: ns.to_string(),
                labels: labels.clone(),
            },
        );
        Ok(Response::new(UpdateNamespaceResponse {
            namespace: Some(NamespacePb {
                name: ns.to_string(),
                labels: labels_out(labels),
            }),
        }))
    }

    async fn delete(&self, req: Request<DeleteNamespaceRequest>) -> Result<Response<()>, Status> {
        let ns = name(&req.get_ref().name)?;
        let store = self.store.clone();
        let n = ns.clone();
        blocking(move || store.delete(&n)).await?;
        self.events.publish(
            &ns,
            Event::NamespaceDelete {
                name: ns.to_string(),
            },
        );
        self.gc.schedule();
        Ok(Response::new(()))
    }
}
