//! containerd.services.containers.v1 over the core container store.

use std::pin::Pin;
use std::sync::Arc;

use berth_core::containers::{Container, Containers};
use berth_core::filters::Filter;
use berth_core::gc::Scheduler;
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::api::container::Runtime;
use crate::api::{
    Container as ContainerPb, CreateContainerRequest, CreateContainerResponse,
    DeleteContainerRequest, GetContainerRequest, GetContainerResponse, ListContainerMessage,
    ListContainersRequest, ListContainersResponse, UpdateContainerRequest, UpdateContainerResponse,
};
use crate::server::containers_server;
use crate::status::{
    any_in, any_out, blocking, labels_in, labels_out, namespace, timestamp, to_status,
};
use berth_core::events::{Event, EventBus};

pub struct ContainersService {
    pub store: Arc<Containers>,
    pub gc: Scheduler,
    pub events: EventBus,
}

fn container_in(c: ContainerPb) -> Container {
    let (runtime_name, runtime_options) = match c.runtime {
        Some(r) => (r.name, r.options.map(any_in)),
        None => (String::new(), None),
    };
    Container {
        id: c.id,
        labels: labels_in(c.labels),
        image: c.image,
        runtime_name,
        runtime_options,
        spec: c.spec.map(any_in),
        snapshotter: c.snapshotter,
        snapshot_key: c.snapshot_key,
        extensions: c
            .extensions
            .into_iter()
            .map(|(k, v)| (k, any_in(v)))
            .collect(),
        sandbox: c.sandbox,
        ..Default::default()
    }
}

fn container_out(c: Container) -> ContainerPb {
    ContainerPb {
        id: c.id,
        labels: labels_out(c.labels),
        image: c.image,
        runtime: Some(Runtime {
            name: c.runtime_name,
            options: c.runtime_options.map(any_out),
        }),
        spec: c.spec.map(any_out),
        snapshotter: c.snapshotter,
        snapshot_key: c.snapshot_key,
        created_at: timestamp(c.created_at),
        updated_at: timestamp(c.updated_at),
        extensions: c
            .extensions
            .into_iter()
            .map(|(k, v)| (k, any_out(v)))
            .collect(),
        sandbox: c.sandbox,
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl ContainersService {
    async fn list_all(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Vec<Container>, Status> {
        let ns = namespace(&req)?;
        let f = Filter::parse_all(&req.get_ref().filters).map_err(to_status)?;
        let store = self.store.clone();
        blocking(move || store.list(&ns, &f)).await
    }
}

#[tonic::async_trait]
impl containers_server::Containers for ContainersService {
    async fn get(
        &self,
        req: Request<GetContainerRequest>,
    ) -> Result<Response<GetContainerResponse>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().id;
        let store = self.store.clone();
        let c = blocking(move || store.get(&ns, &id)).await?;
        Ok(Response::new(GetContainerResponse {
            container: Some(container_out(c)),
        }))
    }

    async fn list(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let all = self.list_all(req).await?;
        Ok(Response::new(ListContainersResponse {
            containers: all.into_iter().map(container_out).collect(),
        }))
    }

    type ListStreamStream = BoxStream<ListContainerMessage>;

    async fn list_stream(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Response<Self::ListStreamStream>, Status> {
        let all = self.list_all(req).await?;
        let msgs: Vec<Result<ListContainerMessage, Status>> = all
            .into_iter()
            .map(|c| {
                Ok(ListContainerMessage {
                    container: Some(container_out(c)),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(msgs))))
    }

    async fn create(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let ns = namespace(&req)?;
        let c = req
            .into_inner()
            .container
            .ok_or_else(|| Status::invalid_argument("container is required"))?;
        let store = self.store.clone();
        let n = ns.clone();
        let c = blocking(move || store.create(&n, container_in(c))).await?;
        self.events.publish(
            &ns,
            Event::ContainerCreate {
                id: c.id.clone(),
                image: c.image.clone(),
                runtime: c.runtime_name.clone(),
                runtime_options: c.runtime_options.clone(),
            },
        );
        Ok(Response::new(CreateContainerResponse {
            container: Some(container_out(c)),
        }))
    }

    async fn update(
        &self,
        req: Request<UpdateContainerRequest>,
    ) -> Result<Response<UpdateContainerResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let c = r
            .container
            .ok_or_else(|| Status::invalid_argument("container is required"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let store = self.store.clone();
        let n = ns.clone();
        let c = blocking(move || store.update(&n, container_in(c), &paths)).await?;
        let event = Event::ContainerUpdate {
            id: c.id.clone(),
            image: c.image.clone(),
            labels: c.labels.clone(),
            snapshot_key: c.snapshot_key.clone(),
        };
        self.events.publish(&ns, event);
        self.gc.schedule();
        Ok(Response::new(UpdateContainerResponse {
            container: Some(container_out(c)),
        }))
    }

    async fn delete(&self, req: Request<DeleteContainerRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().id;
        let store = self.store.clone();
        let (n, i) = (ns.clone(), id.clone());
        blocking(move || store.delete(&n, &i)).await?;
        self.events.publish(&ns, Event::ContainerDelete { id });
        self.gc.schedule();
        Ok(Response::new(()))
    }
}
