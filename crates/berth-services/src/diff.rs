//! containerd.services.diff.v1: applying layers onto snapshot mounts. Creating a layer
//! from two mounts (`Diff`) is not built yet and answers Unimplemented saying so.

use std::path::PathBuf;
use std::sync::Arc;

use berth_core::content::ContentStore;
use berth_core::diff::{self, MEDIA_TYPE_LAYER};
use tonic::{Request, Response, Status};

use crate::api::{ApplyRequest, ApplyResponse, DiffRequest, DiffResponse};
use crate::server::diff_server;
use crate::snapshots::mount_in;
use crate::status::{blocking, digest, namespace};
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

    async fn diff(&self, _req: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        Err(Status::unimplemented(
            "berthd does not create layers from mounts (Diff) yet",
        ))
    }
}
