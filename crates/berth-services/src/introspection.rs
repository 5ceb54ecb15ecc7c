//! containerd.services.introspection.v1: the plugins berthd really serves, and a server
//! UUID that stays the same for the life of the root directory.

use tonic::{Request, Response, Status};

use crate::api::{
    Plugin, PluginInfoRequest, PluginInfoResponse, PluginsRequest, PluginsResponse, ServerResponse,
};
use crate::server::introspection_server::Introspection;
use crate::status::to_status;
use crate::types::Platform;

pub struct IntrospectionService {
    pub uuid: String,
    /// (type, id, requires) of everything berthd serves.
    pub plugins: Vec<(String, String, Vec<String>)>,
}

impl IntrospectionService {
    pub fn new(uuid: String, snapshotters: &[&str]) -> Self {
        let mut plugins = vec![
            (
                "io.containerd.content.v1".to_string(),
                "content".to_string(),
                vec![],
            ),
            (
                "io.containerd.metadata.v1".into(),
                "redb".into(),
                vec![
                    "io.containerd.content.v1".into(),
                    "io.containerd.snapshotter.v1".into(),
                ],
            ),
            (
                "io.containerd.differ.v1".into(),
                "walking".into(),
                vec!["io.containerd.metadata.v1".into()],
            ),
            (
                "io.containerd.gc.v1".into(),
                "scheduler".into(),
                vec!["io.containerd.metadata.v1".into()],
            ),
            (
                "io.containerd.lease.v1".into(),
                "manager".into(),
                vec!["io.containerd.metadata.v1".into()],
            ),
        ];
        plugins.push((
            "io.containerd.runtime.v2".into(),
            "task".into(),
            vec![
                "io.containerd.event.v1".into(),
                "io.containerd.metadata.v1".into(),
            ],
        ));
        plugins.push(("io.containerd.event.v1".into(), "exchange".into(), vec![]));
        for sn in snapshotters {
            plugins.push((
                "io.containerd.snapshotter.v1".into(),
                sn.to_string(),
                vec![],
            ));
        }
        for svc in [
            "containers",
            "content",
            "diff",
            "events",
            "images",
            "introspection",
            "leases",
            "namespaces",
            "snapshots",
            "streaming",
            "tasks",
            "transfer",
            "version",
        ] {
            plugins.push((
                "io.containerd.grpc.v1".into(),
                svc.into(),
                vec!["io.containerd.metadata.v1".into()],
            ));
        }
        IntrospectionService { uuid, plugins }
    }
}

#[tonic::async_trait]
impl Introspection for IntrospectionService {
    async fn plugins(
        &self,
        req: Request<PluginsRequest>,
    ) -> Result<Response<PluginsResponse>, Status> {
        use berth_core::filters::{Filter, Filterable};
        struct P<'a>(&'a (String, String, Vec<String>));
        impl Filterable for P<'_> {
            fn field(&self, path: &[String]) -> Option<String> {
                match path {
                    [f] if f == "type" => Some(self.0 .0.clone()),
                    [f] if f == "id" => Some(self.0 .1.clone()),
                    _ => None,
                }
            }
        }
        let f = Filter::parse_all(&req.get_ref().filters).map_err(to_status)?;
        let platform = Platform {
            os: "linux".into(),
            architecture: std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64"),
            variant: String::new(),
            os_version: String::new(),
        };
        let plugins = self
            .plugins
            .iter()
            .filter(|p| f.matches(&P(p)))
            .map(|(t, id, requires)| Plugin {
                r#type: t.clone(),
                id: id.clone(),
                requires: requires.clone(),
                platforms: if t == "io.containerd.snapshotter.v1" {
                    vec![platform.clone()]
                } else {
                    vec![]
                },
                ..Default::default()
            })
            .collect();
        Ok(Response::new(PluginsResponse { plugins }))
    }

    async fn server(&self, _req: Request<()>) -> Result<Response<ServerResponse>, Status> {
        Ok(Response::new(ServerResponse {
            uuid: self.uuid.clone(),
            pid: std::process::id() as u64,
            ..Default::default()
        }))
    }

    async fn plugin_info(
        &self,
        _req: Request<PluginInfoRequest>,
    ) -> Result<Response<PluginInfoResponse>, Status> {
        Err(Status::unimplemented(
            "berthd does not serve PluginInfo yet",
        ))
    }
}
