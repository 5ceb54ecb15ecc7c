//! Where Kubernetes' objects live: each pod sandbox and each CRI container is a container
//! record of containerd's model in the `k8s.io` namespace (so `ctr -n k8s.io containers
//! ls` shows them), labelled with its kind as containerd's CRI labels it, its CRI state
//! kept as a JSON extension. Names are reserved here: one pod per name/namespace/uid/
//! attempt, one container per name in its pod and attempt.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use berth_core::containers::{AnyValue, Container, Containers};
use berth_core::metadata::Labels;
use berth_core::Namespace;
use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::netns::PodNamespaces;

/// The containerd namespace Kubernetes' objects live in.
pub const NAMESPACE: &str = "k8s.io";
pub const KIND_LABEL: &str = "io.cri-containerd.kind";
const SANDBOX_EXT: &str = "io.cri-containerd.sandbox.metadata";
const CONTAINER_EXT: &str = "io.cri-containerd.container.metadata";

pub fn namespace() -> Namespace {
    Namespace::new(NAMESPACE).expect("k8s.io is a valid namespace")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub config: PodSandboxConfig,
    pub runtime_handler: String,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    pub state: SandboxState,
    pub namespaces: PodNamespaces,
    /// The pod's /dev/shm (a tmpfs), unless it shares the host's IPC namespace.
    pub shm: Option<PathBuf>,
    /// hostname, hosts and resolv.conf of the pod.
    pub files: PathBuf,
    pub ips: Vec<String>,
    pub cni_result: Option<serde_json::Value>,
    /// The init of the pod's shared PID namespace, when its containers share one.
    #[serde(default)]
    pub pid_holder: Option<u32>,
}

impl SandboxRecord {
    /// `name_namespace_uid_attempt`, the name the kubelet may not use twice.
    pub fn reserved_name(config: &PodSandboxConfig) -> Result<String> {
        let m = config
            .metadata
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("pod sandbox config needs metadata".into()))?;
        if m.name.is_empty() || m.namespace.is_empty() || m.uid.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "pod sandbox metadata needs a name, namespace and uid: {m:?}"
            )));
        }
        Ok(format!(
            "{}_{}_{}_{}",
            m.name, m.namespace, m.uid, m.attempt
        ))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub config: ContainerConfig,
    /// The image as the config named it, and what it resolved to.
    pub image_name: String,
    pub image_id: String,
    pub image_ref: String,
    pub log_path: Option<PathBuf>,
    pub cgroup_path: String,
    pub stop_signal: String,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub pid: u32,
}

impl ContainerRecord {
    /// `name_podname_podnamespace_poduid_attempt`.
    pub fn reserved_name(config: &ContainerConfig, pod: &PodSandboxConfig) -> Result<String> {
        let m = config
            .metadata
            .as_ref()
            .filter(|m| !m.name.is_empty())
            .ok_or_else(|| {
                Error::InvalidArgument("container config needs metadata with a name".into())
            })?;
        let p = pod.metadata.clone().unwrap_or_default();
        Ok(format!(
            "{}_{}_{}_{}_{}",
            m.name, p.name, p.namespace, p.uid, m.attempt
        ))
    }
}

fn ext<T: Serialize>(kind: &str, v: &T) -> Result<AnyValue> {
    Ok(AnyValue {
        type_url: format!("berth.io/cri/{kind}"),
        value: serde_json::to_vec(v)
            .map_err(|e| Error::InvalidArgument(format!("encode {kind}: {e}")))?,
    })
}

fn from_ext<T: DeserializeOwned>(c: &Container, key: &str) -> Option<T> {
    c.extensions
        .get(key)
        .and_then(|a| serde_json::from_slice(&a.value).ok())
}

fn labels_of(map: &HashMap<String, String>, kind: &str) -> Labels {
    let mut l: Labels = map
        .iter()
        .filter(|(k, v)| {
            berth_core::labels::validate(&Labels::from([((*k).clone(), (*v).clone())])).is_ok()
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    l.insert(KIND_LABEL.into(), kind.into());
    l
}

/// The records, and the names they hold.
pub struct CriStore {
    containers: Arc<Containers>,
    ns: Namespace,
    names: Mutex<HashMap<String, String>>,
    /// The runtime pod records name (a pod runs nothing itself; its containers use it).
    runtime: String,
    /// Held across a container record's read and write, so concurrent changes (a start and
    /// the exit that follows it at once) both land.
    updating: Mutex<()>,
}

impl CriStore {
    /// Opens the store and reserves the names of every pod and container it holds.
    pub fn open(containers: Arc<Containers>, runtime: &str) -> Result<Self> {
        let s = CriStore {
            containers,
            ns: namespace(),
            names: Mutex::new(HashMap::new()),
            runtime: runtime.to_owned(),
            updating: Mutex::new(()),
        };
        let pods = s.sandboxes()?;
        let mut names = HashMap::new();
        for p in &pods {
            if let Ok(n) = SandboxRecord::reserved_name(&p.config) {
                names.insert(n, p.id.clone());
            }
        }
        for c in s.containers()? {
            if let Some(p) = pods.iter().find(|p| p.id == c.sandbox_id) {
                if let Ok(n) = ContainerRecord::reserved_name(&c.config, &p.config) {
                    names.insert(n, c.id.clone());
                }
            }
        }
        *s.names.lock().unwrap_or_else(|e| e.into_inner()) = names;
        Ok(s)
    }

    pub fn core(&self) -> &Arc<Containers> {
        &self.containers
    }

    /// Reserves `name` for `id`; the same pair again is fine.
    pub fn reserve(&self, name: &str, id: &str, what: &str) -> Result<()> {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        match names.get(name) {
            Some(holder) if holder != id => Err(Error::AlreadyExists(format!(
                "{what} name {name:?} is reserved for {holder:?}"
            ))),
            _ => {
                names.insert(name.to_owned(), id.to_owned());
                Ok(())
            }
        }
    }

    pub fn release(&self, name: &str) {
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    pub fn put_sandbox(&self, s: &SandboxRecord) -> Result<()> {
        let mut extensions = std::collections::BTreeMap::new();
        extensions.insert(SANDBOX_EXT.to_owned(), ext("sandbox", s)?);
        // The pod's "spec" says what it is: its namespaces and where its containers go.
        let m = s.config.metadata.clone().unwrap_or_default();
        let ns = |kind: &str, p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| serde_json::json!({"type": kind, "path": p}))
        };
        let namespaces: Vec<serde_json::Value> = [
            ns("network", &s.namespaces.net),
            ns("ipc", &s.namespaces.ipc),
            ns("uts", &s.namespaces.uts),
        ]
        .into_iter()
        .flatten()
        .collect();
        let spec = serde_json::json!({
            "ociVersion": "1.1.0",
            "hostname": s.config.hostname,
            "annotations": {
                "io.kubernetes.cri.container-type": "sandbox",
                "io.kubernetes.cri.sandbox-id": s.id,
                "io.kubernetes.cri.sandbox-name": m.name,
                "io.kubernetes.cri.sandbox-namespace": m.namespace,
                "io.kubernetes.cri.sandbox-uid": m.uid,
                "io.kubernetes.cri.sandbox-log-directory": s.config.log_directory,
            },
            "linux": {
                "namespaces": namespaces,
                "cgroupsPath": s.config.linux.as_ref().map(|l| l.cgroup_parent.clone()).unwrap_or_default(),
            },
        });
        let c = Container {
            id: s.id.clone(),
            labels: labels_of(&s.config.labels, "sandbox"),
            runtime_name: self.runtime.clone(),
            spec: Some(AnyValue {
                type_url: crate::containers::SPEC_TYPE.into(),
                value: serde_json::to_vec(&spec).unwrap_or_default(),
            }),
            extensions,
            ..Default::default()
        };
        match self.containers.create(&self.ns, c.clone()) {
            Err(e) if e.is_already_exists() => {
                self.containers.update(
                    &self.ns,
                    c,
                    &["extensions".to_owned(), "spec".to_owned()],
                )?;
                Ok(())
            }
            r => r.map(|_| ()).map_err(Error::from),
        }
    }

    pub fn sandbox(&self, id: &str) -> Result<SandboxRecord> {
        let c = self.containers.get(&self.ns, id).map_err(|e| {
            if e.is_not_found() {
                Error::NotFound(format!("pod sandbox {id:?}"))
            } else {
                e.into()
            }
        })?;
        from_ext(&c, SANDBOX_EXT).ok_or_else(|| Error::NotFound(format!("pod sandbox {id:?}")))
    }

    pub fn sandboxes(&self) -> Result<Vec<SandboxRecord>> {
        Ok(self
            .containers
            .list(&self.ns, &berth_core::filters::Filter::default())?
            .iter()
            .filter_map(|c| from_ext(c, SANDBOX_EXT))
            .collect())
    }

    /// Creates the container's record: the containerd container (spec, snapshot) with
    /// its CRI state.
    pub fn create_container(&self, mut core: Container, r: &ContainerRecord) -> Result<()> {
        core.extensions
            .insert(CONTAINER_EXT.to_owned(), ext("container", r)?);
        core.labels = labels_of(&r.config.labels, "container");
        self.containers.create(&self.ns, core)?;
        Ok(())
    }

    /// Changes a container record in place.
    pub fn update_container(
        &self,
        id: &str,
        f: impl FnOnce(&mut ContainerRecord),
    ) -> Result<ContainerRecord> {
        let _held = self.updating.lock().unwrap_or_else(|e| e.into_inner());
        let mut r = self.container(id)?;
        f(&mut r);
        self.put_container(&r)?;
        Ok(r)
    }

    pub fn put_container(&self, r: &ContainerRecord) -> Result<()> {
        let mut core = self.containers.get(&self.ns, &r.id)?;
        core.extensions
            .insert(CONTAINER_EXT.to_owned(), ext("container", r)?);
        self.containers
            .update(&self.ns, core, &["extensions".to_owned()])?;
        Ok(())
    }

    /// The containerd container behind a CRI container (its spec and snapshot).
    pub fn core_container(&self, id: &str) -> Result<Container> {
        Ok(self.containers.get(&self.ns, id)?)
    }

    pub fn container(&self, id: &str) -> Result<ContainerRecord> {
        let c = self.containers.get(&self.ns, id).map_err(|e| {
            if e.is_not_found() {
                Error::NotFound(format!("container {id:?}"))
            } else {
                e.into()
            }
        })?;
        from_ext(&c, CONTAINER_EXT).ok_or_else(|| Error::NotFound(format!("container {id:?}")))
    }

    pub fn containers(&self) -> Result<Vec<ContainerRecord>> {
        Ok(self
            .containers
            .list(&self.ns, &berth_core::filters::Filter::default())?
            .iter()
            .filter_map(|c| from_ext(c, CONTAINER_EXT))
            .collect())
    }

    /// Removes a record (pod or container); one that is gone already is fine.
    pub fn delete(&self, id: &str) -> Result<()> {
        match self.containers.delete(&self.ns, id) {
            Err(e) if e.is_not_found() => Ok(()),
            r => r.map_err(Error::from),
        }
    }
}

/// A new random id, as containerd's: 64 hex digits.
pub fn new_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Now, in nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    berth_core::metadata::Timestamp::now().0
}
