//! Kubernetes CRI v1 (`runtime.v1.RuntimeService` and `runtime.v1.ImageService`) as thin
//! adapters over berth-cri's resource modules; errors become statuses in `status::cri_status`.

use std::pin::Pin;
use std::sync::Arc;

use berth_cri::{ContainerEventKind, Cri};
use futures::Stream;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use crate::status::cri_status;

type R<T> = Result<Response<T>, Status>;

fn ok<T>(t: T) -> R<T> {
    Ok(Response::new(t))
}

/// `runtime.v1.RuntimeService`.
pub struct CriRuntimeService {
    pub cri: Arc<Cri>,
}

/// `runtime.v1.ImageService`.
pub struct CriImageService {
    pub cri: Arc<Cri>,
}

fn event_type(k: ContainerEventKind) -> cri::ContainerEventType {
    match k {
        ContainerEventKind::Created => cri::ContainerEventType::ContainerCreatedEvent,
        ContainerEventKind::Started => cri::ContainerEventType::ContainerStartedEvent,
        ContainerEventKind::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
        ContainerEventKind::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
    }
}

#[tonic::async_trait]
impl RuntimeService for CriRuntimeService {
    async fn version(&self, _req: Request<cri::VersionRequest>) -> R<cri::VersionResponse> {
        ok(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "berth".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        })
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> R<cri::RunPodSandboxResponse> {
        let r = req.into_inner();
        let config = r
            .config
            .ok_or_else(|| Status::invalid_argument("RunPodSandbox needs a config"))?;
        let id = self
            .cri
            .pods
            .run(config, r.runtime_handler)
            .await
            .map_err(cri_status)?;
        ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> R<cri::StopPodSandboxResponse> {
        self.cri
            .pods
            .stop(&req.get_ref().pod_sandbox_id)
            .await
            .map_err(cri_status)?;
        ok(cri::StopPodSandboxResponse {})
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> R<cri::RemovePodSandboxResponse> {
        self.cri
            .pods
            .remove(&req.get_ref().pod_sandbox_id)
            .await
            .map_err(cri_status)?;
        ok(cri::RemovePodSandboxResponse {})
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> R<cri::PodSandboxStatusResponse> {
        let r = req.into_inner();
        let (status, info) = self
            .cri
            .pods
            .status(&r.pod_sandbox_id, r.verbose)
            .await
            .map_err(cri_status)?;
        let containers: Vec<cri::ContainerStatus> = self
            .cri
            .containers
            .all()
            .await
            .map_err(cri_status)?
            .iter()
            .filter(|c| c.sandbox_id == r.pod_sandbox_id)
            .map(berth_cri::containers::container_status)
            .collect();
        ok(cri::PodSandboxStatusResponse {
            status: Some(status),
            info,
            containers_statuses: containers,
            timestamp: berth_cri::store::now_ns(),
        })
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> R<cri::ListPodSandboxResponse> {
        let items = self
            .cri
            .pods
            .list(req.into_inner().filter)
            .await
            .map_err(cri_status)?;
        ok(cri::ListPodSandboxResponse { items })
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> R<cri::CreateContainerResponse> {
        let r = req.into_inner();
        let config = r
            .config
            .ok_or_else(|| Status::invalid_argument("CreateContainer needs a config"))?;
        let id = self
            .cri
            .containers
            .create(&r.pod_sandbox_id, config)
            .await
            .map_err(cri_status)?;
        ok(cri::CreateContainerResponse { container_id: id })
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> R<cri::StartContainerResponse> {
        self.cri
            .containers
            .start(&req.get_ref().container_id)
            .await
            .map_err(cri_status)?;
        ok(cri::StartContainerResponse {})
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> R<cri::StopContainerResponse> {
        let r = req.into_inner();
        self.cri
            .containers
            .stop(&r.container_id, r.timeout)
            .await
            .map_err(cri_status)?;
        ok(cri::StopContainerResponse {})
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> R<cri::RemoveContainerResponse> {
        self.cri
            .containers
            .remove(&req.get_ref().container_id)
            .await
            .map_err(cri_status)?;
        ok(cri::RemoveContainerResponse {})
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> R<cri::ListContainersResponse> {
        let f = req.into_inner().filter.unwrap_or_default();
        let containers = self
            .cri
            .containers
            .all()
            .await
            .map_err(cri_status)?
            .iter()
            .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
            .filter(|c| f.pod_sandbox_id.is_empty() || c.sandbox_id.starts_with(&f.pod_sandbox_id))
            .filter(|c| {
                f.state
                    .as_ref()
                    .is_none_or(|s| s.state == berth_cri::containers::state_of(c) as i32)
            })
            .filter(|c| {
                f.label_selector
                    .iter()
                    .all(|(k, v)| c.config.labels.get(k) == Some(v))
            })
            .map(|c| cri::Container {
                id: c.id.clone(),
                pod_sandbox_id: c.sandbox_id.clone(),
                metadata: c.config.metadata.clone(),
                image: Some(cri::ImageSpec {
                    image: c.image_name.clone(),
                    ..Default::default()
                }),
                image_ref: c.image_ref.clone(),
                state: berth_cri::containers::state_of(c) as i32,
                created_at: c.created_at,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                image_id: c.image_id.clone(),
            })
            .collect();
        ok(cri::ListContainersResponse { containers })
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> R<cri::ContainerStatusResponse> {
        let r = req.into_inner();
        let (status, info) = self
            .cri
            .containers
            .status(&r.container_id, r.verbose)
            .await
            .map_err(cri_status)?;
        ok(cri::ContainerStatusResponse {
            status: Some(status),
            info,
        })
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> R<cri::UpdateContainerResourcesResponse> {
        let r = req.into_inner();
        if let Some(linux) = r.linux {
            self.cri
                .containers
                .update_resources(&r.container_id, linux)
                .await
                .map_err(cri_status)?;
        }
        ok(cri::UpdateContainerResourcesResponse {})
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> R<cri::ReopenContainerLogResponse> {
        self.cri
            .containers
            .reopen_log(&req.get_ref().container_id)
            .await
            .map_err(cri_status)?;
        ok(cri::ReopenContainerLogResponse {})
    }

    async fn exec_sync(&self, req: Request<cri::ExecSyncRequest>) -> R<cri::ExecSyncResponse> {
        let r = req.into_inner();
        let (stdout, stderr, exit_code) = self
            .cri
            .containers
            .exec_sync(&r.container_id, r.cmd, r.timeout)
            .await
            .map_err(cri_status)?;
        ok(cri::ExecSyncResponse {
            stdout,
            stderr,
            exit_code,
        })
    }

    async fn exec(&self, req: Request<cri::ExecRequest>) -> R<cri::ExecResponse> {
        let url = self
            .cri
            .streaming
            .exec(req.into_inner())
            .await
            .map_err(cri_status)?;
        ok(cri::ExecResponse { url })
    }

    async fn attach(&self, req: Request<cri::AttachRequest>) -> R<cri::AttachResponse> {
        let url = self
            .cri
            .streaming
            .attach(req.into_inner())
            .await
            .map_err(cri_status)?;
        ok(cri::AttachResponse { url })
    }

    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> R<cri::PortForwardResponse> {
        let url = self
            .cri
            .streaming
            .port_forward(req.into_inner())
            .await
            .map_err(cri_status)?;
        ok(cri::PortForwardResponse { url })
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> R<cri::ContainerStatsResponse> {
        let id = req.into_inner().container_id;
        let r = self.cri.containers.get(&id).await.map_err(cri_status)?;
        let stats = self.cri.stats.clone();
        let s = tokio::task::spawn_blocking(move || stats.container(&r))
            .await
            .map_err(|e| Status::internal(format!("stats worker: {e}")))?;
        ok(cri::ContainerStatsResponse { stats: Some(s) })
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> R<cri::ListContainerStatsResponse> {
        let f = req.into_inner().filter.unwrap_or_default();
        let stats = self
            .cri
            .stats
            .containers(move |c| {
                (f.id.is_empty() || c.id.starts_with(&f.id))
                    && (f.pod_sandbox_id.is_empty() || c.sandbox_id.starts_with(&f.pod_sandbox_id))
                    && f.label_selector
                        .iter()
                        .all(|(k, v)| c.config.labels.get(k) == Some(v))
            })
            .await
            .map_err(cri_status)?;
        ok(cri::ListContainerStatsResponse { stats })
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> R<cri::PodSandboxStatsResponse> {
        let id = req.into_inner().pod_sandbox_id;
        let want = id.clone();
        let mut stats = self
            .cri
            .stats
            .pods(move |s| s.id == want)
            .await
            .map_err(cri_status)?;
        let s = stats.pop().ok_or_else(|| {
            Status::not_found(format!("pod sandbox {id:?} not found or not ready"))
        })?;
        ok(cri::PodSandboxStatsResponse { stats: Some(s) })
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> R<cri::ListPodSandboxStatsResponse> {
        let f = req.into_inner().filter.unwrap_or_default();
        let stats = self
            .cri
            .stats
            .pods(move |s| {
                (f.id.is_empty() || s.id.starts_with(&f.id))
                    && f.label_selector
                        .iter()
                        .all(|(k, v)| s.config.labels.get(k) == Some(v))
            })
            .await
            .map_err(cri_status)?;
        ok(cri::ListPodSandboxStatsResponse { stats })
    }

    async fn update_runtime_config(
        &self,
        req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> R<cri::UpdateRuntimeConfigResponse> {
        let cidr = req
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        if cidr.is_empty() {
            return ok(cri::UpdateRuntimeConfigResponse {});
        }
        let cri_ = self.cri.clone();
        let given = cidr.clone();
        let written = tokio::task::spawn_blocking(move || cri_.ctx.cni.apply_pod_cidr(&given))
            .await
            .map_err(|e| Status::internal(format!("runtime config worker: {e}")))?
            .map_err(|e| crate::status::cri_status(e.into()))?;
        match written {
            Some(file) => {
                tracing::info!(pod_cidr = %cidr, file = %file.display(), "CNI configuration written for the node's pod CIDR")
            }
            None => {
                tracing::info!(pod_cidr = %cidr, "pod CIDR from the kubelet; no CNI template is configured, so the CNI configuration decides pod addresses")
            }
        }
        ok(cri::UpdateRuntimeConfigResponse {})
    }

    async fn status(&self, req: Request<cri::StatusRequest>) -> R<cri::StatusResponse> {
        let verbose = req.get_ref().verbose;
        let cri_ = self.cri.clone();
        let network = tokio::task::spawn_blocking(move || cri_.ctx.cni.ready())
            .await
            .map_err(|e| Status::internal(format!("status worker: {e}")))?;
        let mut conditions = vec![cri::RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        }];
        let mut info = std::collections::HashMap::new();
        match &network {
            Ok(n) => {
                conditions.push(cri::RuntimeCondition {
                    r#type: "NetworkReady".into(),
                    status: true,
                    reason: String::new(),
                    message: String::new(),
                });
                if verbose {
                    info.insert("cniconfig".into(), n.raw.to_string());
                }
            }
            Err(e) => conditions.push(cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message: format!("Network plugin returns error: {e}"),
            }),
        }
        if verbose {
            info.insert("streaming".into(), self.cri.streaming.info().to_string());
        }
        if let Some(message) = self.cri.ctx.oom_floor.clamped() {
            // Informational: the kubelet only requires the two conditions above.
            conditions.push(cri::RuntimeCondition {
                r#type: "OOMScoreAdjClamped".into(),
                status: true,
                reason: "NoCapSysResource".into(),
                message,
            });
        }
        ok(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            runtime_handlers: vec![cri::RuntimeHandler {
                name: String::new(),
                features: Some(cri::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: false,
                    user_namespaces: false,
                }),
            }],
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: true,
            }),
        })
    }

    async fn checkpoint_container(
        &self,
        _req: Request<cri::CheckpointContainerRequest>,
    ) -> R<cri::CheckpointContainerResponse> {
        Err(Status::unimplemented(
            "checkpointing containers is not implemented in berthd",
        ))
    }

    type GetContainerEventsStream =
        Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

    async fn get_container_events(
        &self,
        _req: Request<cri::GetEventsRequest>,
    ) -> R<Self::GetContainerEventsStream> {
        let mut rx = self.cri.ctx.events.subscribe();
        let cri_ = self.cri.clone();
        let stream = async_stream::stream! {
            loop {
                match rx.recv().await {
                    Ok(e) => {
                        let container = cri_.containers.get(&e.container_id).await.ok();
                        let pod = cri_.pods.status(&e.sandbox_id, false).await.ok().map(|(s, _)| s);
                        yield Ok(cri::ContainerEventResponse {
                            container_id: e.container_id.clone(),
                            container_event_type: event_type(e.kind) as i32,
                            created_at: e.at,
                            pod_sandbox_status: pod,
                            containers_statuses: container.iter().map(berth_cri::containers::container_status).collect(),
                        });
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!("CRI event subscriber fell behind: {n} events dropped"),
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        };
        ok(Box::pin(stream))
    }

    async fn list_metric_descriptors(
        &self,
        _req: Request<cri::ListMetricDescriptorsRequest>,
    ) -> R<cri::ListMetricDescriptorsResponse> {
        ok(cri::ListMetricDescriptorsResponse {
            descriptors: Vec::new(),
        })
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> R<cri::ListPodSandboxMetricsResponse> {
        ok(cri::ListPodSandboxMetricsResponse {
            pod_metrics: Vec::new(),
        })
    }

    async fn runtime_config(
        &self,
        _req: Request<cri::RuntimeConfigRequest>,
    ) -> R<cri::RuntimeConfigResponse> {
        ok(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
            }),
        })
    }
}

#[tonic::async_trait]
impl ImageService for CriImageService {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> R<cri::ListImagesResponse> {
        let images = self
            .cri
            .images
            .list(req.into_inner().filter)
            .await
            .map_err(cri_status)?;
        ok(cri::ListImagesResponse { images })
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> R<cri::ImageStatusResponse> {
        let r = req.into_inner();
        let image = r.image.map(|i| i.image).unwrap_or_default();
        let found = self.cri.images.status(&image).await.map_err(cri_status)?;
        let mut info = std::collections::HashMap::new();
        if let (Some(i), true) = (&found, r.verbose) {
            let v = serde_json::json!({
                "chainID": i.resolved.top_chain().map(ToString::to_string),
                "imageSpec": i.resolved.image_config,
            });
            info.insert("info".to_owned(), v.to_string());
        }
        // An image the node does not have is an empty answer, not an error.
        ok(cri::ImageStatusResponse {
            image: found.as_ref().map(berth_cri::images::ImageInfo::to_cri),
            info,
        })
    }

    async fn pull_image(&self, req: Request<cri::PullImageRequest>) -> R<cri::PullImageResponse> {
        let r = req.into_inner();
        let image = r
            .image
            .map(|i| i.image)
            .filter(|i| !i.is_empty())
            .ok_or_else(|| Status::invalid_argument("PullImage needs an image"))?;
        let id = self
            .cri
            .images
            .pull(&image, r.auth)
            .await
            .map_err(cri_status)?;
        ok(cri::PullImageResponse { image_ref: id })
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> R<cri::RemoveImageResponse> {
        let image = req.into_inner().image.map(|i| i.image).unwrap_or_default();
        self.cri.images.remove(&image).await.map_err(cri_status)?;
        ok(cri::RemoveImageResponse {})
    }

    async fn image_fs_info(
        &self,
        _req: Request<cri::ImageFsInfoRequest>,
    ) -> R<cri::ImageFsInfoResponse> {
        let u = self.cri.images.fs_usage().await.map_err(cri_status)?;
        let fs = cri::FilesystemUsage {
            timestamp: berth_cri::store::now_ns(),
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: self.cri.ctx.cfg.snapshotter_root.display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value {
                value: u.size.max(0) as u64,
            }),
            inodes_used: Some(cri::UInt64Value {
                value: u.inodes.max(0) as u64,
            }),
        };
        ok(cri::ImageFsInfoResponse {
            image_filesystems: vec![fs],
            container_filesystems: Vec::new(),
        })
    }
}
