//! A CRI client as the kubelet drives berthd (k8s-cri's generated client over berthd's
//! socket, calls made blocking for tests), and a CNI network of the test's own: a bridge
//! with its own name and subnet, host-local addresses kept in the test's directory, port
//! mappings through portmap. Both clean up however a test ends.

use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

pub use k8s_cri::v1;

pub struct Cri {
    rt: tokio::runtime::Runtime,
    clients: Clients,
    /// Pods made through this client, stopped and removed when it goes.
    made: std::sync::Mutex<Vec<String>>,
}

pub struct Clients {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

impl Cri {
    pub fn connect(socket: &Path) -> Self {
        // Pods without a cgroup parent go below `/k8s.io`, removed with the last daemon.
        crate::note_namespace("k8s.io");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let ch = rt.block_on(containerd_client::connect(socket)).unwrap();
        Cri {
            clients: Clients {
                runtime: RuntimeServiceClient::new(ch.clone()),
                images: ImageServiceClient::new(ch),
            },
            rt,
            made: Default::default(),
        }
    }

    /// Runs one call to completion: `cri.call(|c| c.runtime.version(req))`.
    pub fn call<'a, T, F>(
        &'a mut self,
        f: impl FnOnce(&'a mut Clients) -> F,
    ) -> Result<T, tonic::Status>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let Cri { rt, clients, .. } = self;
        rt.block_on(f(clients)).map(tonic::Response::into_inner)
    }

    pub fn run_pod(&mut self, config: cri::PodSandboxConfig) -> Result<String, tonic::Status> {
        let id = self
            .call(|c| {
                c.runtime.run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                })
            })?
            .pod_sandbox_id;
        self.made.lock().unwrap().push(id.clone());
        Ok(id)
    }

    pub fn create(
        &mut self,
        pod: &str,
        config: cri::ContainerConfig,
        pod_config: &cri::PodSandboxConfig,
    ) -> Result<String, tonic::Status> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        Ok(self.call(|c| c.runtime.create_container(req))?.container_id)
    }

    pub fn start(&mut self, id: &str) -> Result<(), tonic::Status> {
        let req = cri::StartContainerRequest {
            container_id: id.into(),
        };
        self.call(|c| c.runtime.start_container(req)).map(|_| ())
    }

    pub fn status(&mut self, id: &str) -> cri::ContainerStatus {
        let req = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.call(|c| c.runtime.container_status(req))
            .unwrap()
            .status
            .unwrap()
    }

    pub fn exec(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<cri::ExecSyncResponse, tonic::Status> {
        let req = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout,
        };
        self.call(|c| c.runtime.exec_sync(req))
    }

    pub fn pod_status(&mut self, id: &str) -> cri::PodSandboxStatus {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        };
        self.call(|c| c.runtime.pod_sandbox_status(req))
            .unwrap()
            .status
            .unwrap()
    }

    pub fn stop_pod(&mut self, id: &str) -> Result<(), tonic::Status> {
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call(|c| c.runtime.stop_pod_sandbox(req)).map(|_| ())
    }

    pub fn remove_pod(&mut self, id: &str) -> Result<(), tonic::Status> {
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call(|c| c.runtime.remove_pod_sandbox(req)).map(|_| ())
    }

    /// Follows GetContainerEvents in the background: (container id, event type) as they come.
    pub fn watch_events(&mut self) -> std::sync::Arc<std::sync::Mutex<Vec<(String, i32)>>> {
        let mut client = self.clients.runtime.clone();
        let mut stream = self
            .rt
            .block_on(client.get_container_events(cri::GetEventsRequest {}))
            .unwrap()
            .into_inner();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = seen.clone();
        self.rt.spawn(async move {
            while let Ok(Some(e)) = stream.message().await {
                out.lock()
                    .unwrap()
                    .push((e.container_id, e.container_event_type));
            }
        });
        seen
    }

    pub fn pull(&mut self, image: &str) -> Result<String, tonic::Status> {
        let req = cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        };
        Ok(self.call(|c| c.images.pull_image(req))?.image_ref)
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        let made = std::mem::take(&mut *self.made.lock().unwrap());
        for id in made {
            let _ = self.stop_pod(&id);
            let _ = self.remove_pod(&id);
        }
    }
}

/// A pod config as the kubelet writes one.
pub fn pod_config(name: &str, log_dir: &Path, cgroup_parent: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        labels: [("app".to_owned(), name.to_owned())].into(),
        ..Default::default()
    }
}

/// What the kubelet asks for a pod without shareProcessNamespace: the pod's network and
/// IPC, a PID namespace per container.
pub fn kubelet_namespaces() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A container config running `args` (through `/bin/sh -c` when one string).
pub fn container_config(name: &str, image: &str, script: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}/0.log"),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                // What the kubelet sends by default.
                masked_paths: [
                    "/proc/acpi",
                    "/proc/kcore",
                    "/proc/keys",
                    "/proc/latency_stats",
                    "/proc/timer_list",
                    "/proc/timer_stats",
                    "/proc/sched_debug",
                    "/proc/scsi",
                    "/sys/firmware",
                ]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
                readonly_paths: [
                    "/proc/bus",
                    "/proc/fs",
                    "/proc/irq",
                    "/proc/sys",
                    "/proc/sysrq-trigger",
                ]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A CNI network of one test: its own bridge name, subnet and address store.
pub struct CniNet {
    pub dir: tempfile::TempDir,
    pub bridge: String,
    pub subnet_prefix: String,
}

impl CniNet {
    /// `extra` replaces the plugin list's first plugin when given (to make it fail).
    pub fn new(tag: u8, first_plugin: Option<serde_json::Value>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("berth-cni")
            .tempdir()
            .unwrap();
        let bridge = format!("bt{}{tag}", std::process::id() % 10000);
        let subnet_prefix = format!("10.{}.{tag}", 100 + std::process::id() % 100);
        let conf = dir.path().join("conf");
        std::fs::create_dir_all(&conf).unwrap();
        let bridge_plugin = first_plugin.unwrap_or_else(|| {
            serde_json::json!({
                "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                "hairpinMode": true,
                "ipam": {"type": "host-local", "dataDir": dir.path().join("ipam"),
                         "ranges": [[{"subnet": format!("{subnet_prefix}.0/24")}]],
                         "routes": [{"dst": "0.0.0.0/0"}]}
            })
        });
        let list = serde_json::json!({
            "cniVersion": "1.0.0", "name": format!("berth-test-{tag}"),
            "plugins": [bridge_plugin, {"type": "portmap", "capabilities": {"portMappings": true}}],
        });
        std::fs::write(conf.join("10-test.conflist"), list.to_string()).unwrap();
        CniNet {
            dir,
            bridge,
            subnet_prefix,
        }
    }

    /// berthd's configuration for this network.
    pub fn berthd_config(&self) -> String {
        format!(
            "[cri]\ncni_conf_dir = \"{}\"\ncni_bin_dirs = [\"/usr/lib/cni\", \"/opt/cni/bin\"]\n",
            self.dir.path().join("conf").display()
        )
    }

    /// Addresses host-local still holds.
    pub fn allocated(&self) -> Vec<String> {
        let d: PathBuf = self.dir.path().join("ipam");
        std::fs::read_dir(&d)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|net| {
                std::fs::read_dir(net.path())
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    /// Interfaces enslaved to the bridge (one veth per attached pod).
    pub fn ports(&self) -> usize {
        std::fs::read_dir(format!("/sys/class/net/{}/brif", self.bridge))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for CniNet {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
    }
}
