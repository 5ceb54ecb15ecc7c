//! containerd.services.version.v1: berth's version.

use tonic::{Request, Response, Status};

use crate::api::VersionResponse;
use crate::server::version_server::Version;

pub struct VersionService;

#[tonic::async_trait]
impl Version for VersionService {
    async fn version(&self, _req: Request<()>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: format!("v{}-berth", env!("CARGO_PKG_VERSION")),
            revision: option_env!("BERTH_REVISION")
                .unwrap_or("unknown")
                .to_owned(),
        }))
    }
}
