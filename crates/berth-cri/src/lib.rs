//! berth-cri: Kubernetes' model over berth's core and runtime, without gRPC — pod sandboxes
//! (namespaces pinned without an infra container, CNI networking), CRI containers (OCI specs
//! from the kubelet's configs, tasks through shims, logs in the kubelet's format), images as
//! the kubelet names them, and statistics from the cgroups. Split by resource: `pods`,
//! `containers`, `images`, `stats`; the CRI gRPC services in berth-services are thin
//! adapters over these.

pub use berth_cni::cni;
pub mod containers;
pub mod context;
pub mod error;
pub mod exec;
pub mod images;
pub mod logs;
pub mod monitor;
pub use berth_cni::netns;
pub mod pods;
pub mod spec;
pub mod stats;
pub mod store;
pub mod streaming;
pub mod users;

use std::sync::Arc;

pub use context::{ContainerEvent, ContainerEventKind, CriConfig, CriContext};
pub use error::{Error, Result};

/// The resource modules of one CRI runtime, sharing one context.
pub struct Cri {
    pub ctx: Arc<CriContext>,
    pub pods: Arc<pods::Pods>,
    pub containers: Arc<containers::CriContainers>,
    pub images: Arc<images::CriImages>,
    pub stats: Arc<stats::Stats>,
    pub streaming: Arc<streaming::Streaming>,
}

impl Cri {
    /// Builds the modules, brings containers in line with their tasks (after a restart
    /// some ended or lost their log copiers), follows task exits from then on, and serves
    /// the streaming server.
    pub async fn start(
        ctx: Arc<CriContext>,
        streaming: &streaming::StreamingConfig,
    ) -> Result<Arc<Cri>> {
        let images = images::CriImages::new(ctx.clone());
        let containers = containers::CriContainers::new(ctx.clone(), images.clone());
        let pods = pods::Pods::new(ctx.clone(), containers.clone());
        let stats = stats::Stats::new(ctx.clone());
        tokio::spawn(monitor::follow_exits(containers.clone()));
        monitor::reconcile(&containers).await;
        let streaming =
            streaming::Streaming::start(streaming, ctx.clone(), containers.clone()).await?;
        Ok(Arc::new(Cri {
            ctx,
            pods,
            containers,
            images,
            stats,
            streaming,
        }))
    }
}
