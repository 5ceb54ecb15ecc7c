//! containerd.services.diff.v1: applying layers onto snapshot mounts, and creating a
//! layer from the difference of two mounts.

use std::path::PathBuf;
use std::sync::Arc;

use berth_core::content::ContentStore;
use berth_core::diff::{self, MEDIA_TYPE_LAYER};
use tonic::{Request, Response, Status};

use crate::api::{ApplyRequest, ApplyResponse, DiffRequest, DiffResponse};
use crate::server::diff_server;
use crate::snapshots::mount_in;
use crate::status::{blocking, digest, labels_in, lease, namespace};
use crate::types::Descriptor;

pub struct DiffService {
    pub content: Arc<ContentStore>,
    /// Where temporary mount points for applying onto non-overlay mounts are made.
    pub scratch: PathBuf,
}

#[tonic::async_trait]
impl diff_server::Diff for DiffService {
    async fn apply(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let desc = r
            .diff
            .ok_or_else(|| Status::invalid_argument("apply needs the layer descriptor"))?;
        let d = digest(&desc.digest)?;
        let mounts: Vec<_> = r.mounts.into_iter().map(mount_in).collect();
        let (content, scratch) = (self.content.clone(), self.scratch.clone());
        let applied =
            blocking(move || diff::apply(&content, &ns, &d, &desc.media_type, &mounts, &scratch))
                .await?;
        Ok(Response::new(ApplyResponse {
            applied: Some(Descriptor {
                media_type: MEDIA_TYPE_LAYER.to_owned(),
                digest: applied.digest.to_string(),
                size: applied.size as i64,
                annotations: Default::default(),
            }),
        }))
    }

    async fn diff(&self, req: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        let (ns, lease) = (namespace(&req)?, lease(&req));
        let r = req.into_inner();
        let left: Vec<_> = r.left.into_iter().map(mount_in).collect();
        let right: Vec<_> = r.right.into_iter().map(mount_in).collect();
        let (content, scratch) = (self.content.clone(), self.scratch.clone());
        let labels = labels_in(r.labels);
        let c = blocking(move || {
            diff::create(
                &content,
                &ns,
                &left,
                &right,
                &r.media_type,
                &r.r#ref,
                labels,
                lease.as_deref(),
                &scratch,
            )
        })
        .await?;
        Ok(Response::new(DiffResponse {
            diff: Some(Descriptor {
                media_type: c.media_type,
                digest: c.digest.to_string(),
                size: c.size,
                annotations: Default::default(),
            }),
        }))
    }
}
