//! containerd.services.images.v1 over the core image store.

use std::sync::Arc;

use berth_core::filters::Filter;
use berth_core::gc::Scheduler;
use berth_core::images::{Descriptor, Image, Images};
use berth_core::metadata::Timestamp;
use tonic::{Request, Response, Status};

use crate::api::{
    CreateImageRequest, CreateImageResponse, DeleteImageRequest, GetImageRequest, GetImageResponse,
    Image as ImagePb, ListImagesRequest, ListImagesResponse, UpdateImageRequest,
    UpdateImageResponse,
};
use crate::server::images_server;
use crate::status::{
    blocking, collect_after_delete, labels_in, labels_out, namespace, timestamp, to_status,
};
use crate::types::Descriptor as DescriptorPb;
use berth_core::events::{Event, EventBus};

pub struct ImagesService {
    pub store: Arc<Images>,
    pub gc: Scheduler,
    pub events: EventBus,
}

pub fn descriptor_in(d: DescriptorPb) -> Descriptor {
    Descriptor {
        media_type: d.media_type,
        digest: d.digest,
        size: d.size,
        annotations: d.annotations.into_iter().collect(),
    }
}

pub fn descriptor_out(d: Descriptor) -> DescriptorPb {
    DescriptorPb {
        media_type: d.media_type,
        digest: d.digest,
        size: d.size,
        annotations: d.annotations.into_iter().collect(),
    }
}

fn image_in(i: ImagePb) -> Image {
    Image {
        name: i.name,
        labels: labels_in(i.labels),
        target: descriptor_in(i.target.unwrap_or_default()),
        created_at: Timestamp::default(),
        updated_at: Timestamp::default(),
    }
}

fn image_out(i: Image) -> ImagePb {
    ImagePb {
        name: i.name,
        labels: labels_out(i.labels),
        target: Some(descriptor_out(i.target)),
        created_at: timestamp(i.created_at),
        updated_at: timestamp(i.updated_at),
    }
}

#[tonic::async_trait]
impl images_server::Images for ImagesService {
    async fn get(
        &self,
        req: Request<GetImageRequest>,
    ) -> Result<Response<GetImageResponse>, Status> {
        let ns = namespace(&req)?;
        let name = req.into_inner().name;
        let store = self.store.clone();
        let i = blocking(move || store.get(&ns, &name)).await?;
        Ok(Response::new(GetImageResponse {
            image: Some(image_out(i)),
        }))
    }

    async fn list(
        &self,
        req: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let ns = namespace(&req)?;
        let f = Filter::parse_all(&req.get_ref().filters).map_err(to_status)?;
        let store = self.store.clone();
        let all = blocking(move || store.list(&ns, &f)).await?;
        Ok(Response::new(ListImagesResponse {
            images: all.into_iter().map(image_out).collect(),
        }))
    }

    async fn create(
        &self,
        req: Request<CreateImageRequest>,
    ) -> Result<Response<CreateImageResponse>, Status> {
        let ns = namespace(&req)?;
        let img = req
            .into_inner()
            .image
            .ok_or_else(|| Status::invalid_argument("image is required"))?;
        let store = self.store.clone();
        let n = ns.clone();
        let i = blocking(move || store.create(&n, image_in(img))).await?;
        self.events.publish(
            &ns,
            Event::ImageCreate {
                name: i.name.clone(),
                labels: i.labels.clone(),
            },
        );
        Ok(Response::new(CreateImageResponse {
            image: Some(image_out(i)),
        }))
    }

    async fn update(
        &self,
        req: Request<UpdateImageRequest>,
    ) -> Result<Response<UpdateImageResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let img = r
            .image
            .ok_or_else(|| Status::invalid_argument("image is required"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let store = self.store.clone();
        let n = ns.clone();
        let i = blocking(move || store.update(&n, image_in(img), &paths)).await?;
        self.events.publish(
            &ns,
            Event::ImageUpdate {
                name: i.name.clone(),
                labels: i.labels.clone(),
            },
        );
        self.gc.schedule();
        Ok(Response::new(UpdateImageResponse {
            image: Some(image_out(i)),
        }))
    }

    async fn delete(&self, req: Request<DeleteImageRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let store = self.store.clone();
        let name = r.name.clone();
        let n = ns.clone();
        blocking(move || store.delete(&n, &name)).await?;
        self.events.publish(
            &ns,
            Event::ImageDelete {
                name: r.name.clone(),
            },
        );
        collect_after_delete(&self.gc, r.sync).await?;
        Ok(Response::new(()))
    }
}
