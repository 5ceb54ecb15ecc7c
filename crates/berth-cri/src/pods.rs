//! Pod sandboxes without an infra container: a pod is its namespaces (network, IPC, UTS)
//! pinned under berthd's state directory, its /dev/shm, its hostname, hosts and
//! resolv.conf files, and its place on the CNI network. Nothing runs for a pod itself, so a
//! pod costs no process, no shim and no runtime call to start.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use k8s_cri::v1 as cri;
use serde_json::json;

use crate::cni::Attachment;
use crate::containers::CriContainers;
use crate::context::{blocking, CriContext};
use crate::error::{Error, Result};
use crate::netns::{self, PodNamespaces, Want};
use crate::store::{now_ns, SandboxRecord, SandboxState};

/// The `oom_score_adj` of a sandbox's own process (the kubelet's value for pod infra).
const SANDBOX_OOM_SCORE_ADJ: i64 = -998;

/// NamespaceMode values.
const POD: i32 = 0;
const NODE: i32 = 2;

/// Starts the init of a pod's shared PID namespace; returns its pid.
fn start_pid_holder(cmd: &[String]) -> Result<u32> {
    let (prog, args) = cmd.split_first().ok_or_else(|| {
        Error::FailedPrecondition("no program to hold a shared PID namespace is configured".into())
    })?;
    let out = std::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(Error::io("run", prog))?;
    let pid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| {
            Error::FailedPrecondition(format!(
                "{prog} did not start a PID namespace: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        })?;
    Ok(pid)
}

/// Whether `pid` is still a pod's PID-namespace holder (and not a recycled pid).
fn is_pid_holder(pid: u32) -> bool {
    let own = std::fs::read_link("/proc/self/ns/pid").ok();
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    theirs.is_some() && theirs != own && cmd.split(|b| *b == 0).any(|a| a == b"pause")
}

fn stop_pid_holder(pid: u32) {
    if is_pid_holder(pid) {
        if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
}

pub struct Pods {
    ctx: Arc<CriContext>,
    containers: Arc<CriContainers>,
}

fn cni_args(id: &str, config: &cri::PodSandboxConfig) -> Vec<(String, String)> {
    let m = config.metadata.clone().unwrap_or_default();
    vec![
        ("IgnoreUnknown".into(), "1".into()),
        ("K8S_POD_NAMESPACE".into(), m.namespace),
        ("K8S_POD_NAME".into(), m.name),
        ("K8S_POD_INFRA_CONTAINER_ID".into(), id.to_owned()),
        ("K8S_POD_UID".into(), m.uid),
    ]
}

fn capabilities(config: &cri::PodSandboxConfig) -> serde_json::Map<String, serde_json::Value> {
    let mut caps = serde_json::Map::new();
    let ports: Vec<serde_json::Value> = config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let proto = match p.protocol {
                1 => "udp",
                2 => "sctp",
                _ => "tcp",
            };
            json!({"hostPort": p.host_port, "containerPort": p.container_port,
                   "protocol": proto, "hostIP": p.host_ip})
        })
        .collect();
    if !ports.is_empty() {
        caps.insert("portMappings".into(), json!(ports));
    }
    if let Some(d) = &config.dns_config {
        caps.insert(
            "dns".into(),
            json!({"servers": d.servers, "searches": d.searches, "options": d.options}),
        );
    }
    let annotations = &config.annotations;
    let rate = |k: &str| annotations.get(k).and_then(|v| parse_quantity(v));
    let (ingress, egress) = (
        rate("kubernetes.io/ingress-bandwidth"),
        rate("kubernetes.io/egress-bandwidth"),
    );
    if ingress.is_some() || egress.is_some() {
        let mut b = serde_json::Map::new();
        if let Some(r) = ingress {
            b.insert("ingressRate".into(), json!(r));
            b.insert("ingressBurst".into(), json!(u32::MAX));
        }
        if let Some(r) = egress {
            b.insert("egressRate".into(), json!(r));
            b.insert("egressBurst".into(), json!(u32::MAX));
        }
        caps.insert("bandwidth".into(), serde_json::Value::Object(b));
    }
    caps
}

/// A Kubernetes quantity in bits per second (`10M`, `1Gi`, `500k`).
fn parse_quantity(v: &str) -> Option<u64> {
    let (num, mul) = match v.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => {
            let m = match &v[i..] {
                "k" => 1_000,
                "M" => 1_000_000,
                "G" => 1_000_000_000,
                "Ki" => 1 << 10,
                "Mi" => 1 << 20,
                "Gi" => 1 << 30,
                _ => return None,
            };
            (&v[..i], m)
        }
        None => (v, 1),
    };
    num.parse::<u64>().ok().map(|n| n * mul)
}

/// The pod's resolv.conf: its DNS config, or the host's.
fn resolv_conf(config: &cri::PodSandboxConfig) -> String {
    match &config.dns_config {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            let mut s = String::new();
            if !d.searches.is_empty() {
                s.push_str(&format!("search {}\n", d.searches.join(" ")));
            }
            for n in &d.servers {
                s.push_str(&format!("nameserver {n}\n"));
            }
            if !d.options.is_empty() {
                s.push_str(&format!("options {}\n", d.options.join(" ")));
            }
            s
        }
        _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    }
}

fn write_files(dir: &Path, config: &cri::PodSandboxConfig, hostname: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(Error::io("write", &p))
    };
    write("hostname", &format!("{hostname}\n"))?;
    let mut hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    if !hosts
        .lines()
        .any(|l| l.split_whitespace().skip(1).any(|h| h == "localhost"))
    {
        hosts.push_str("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    }
    write("hosts", &hosts)?;
    write("resolv.conf", &resolv_conf(config))
}

fn mount_shm(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(Error::io("create", p))?;
    use rustix::mount::{mount, MountFlags};
    mount(
        "shm",
        p,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        Some(c"mode=1777,size=67108864"),
    )
    .map_err(|e| Error::io("mount shm at", p)(e.into()))
}

fn unmount_shm(p: &Path) {
    while rustix::mount::unmount(p, rustix::mount::UnmountFlags::DETACH).is_ok() {}
    let _ = std::fs::remove_dir(p);
}

impl Pods {
    pub fn new(ctx: Arc<CriContext>, containers: Arc<CriContainers>) -> Arc<Self> {
        Arc::new(Pods { ctx, containers })
    }

    /// RunPodSandbox. A failure at any step undoes the earlier ones: no namespace, mount,
    /// IP allocation or record is left, and the name is free again.
    pub async fn run(
        &self,
        config: cri::PodSandboxConfig,
        runtime_handler: String,
    ) -> Result<String> {
        let name = SandboxRecord::reserved_name(&config)?;
        let id = crate::store::new_id();
        self.ctx.store.reserve(&name, &id, "pod sandbox")?;
        let (ctx, sid, cfg) = (self.ctx.clone(), id.clone(), config.clone());
        let made = blocking(move || make_sandbox(&ctx, &sid, cfg, runtime_handler)).await;
        if let Err(e) = made {
            self.ctx.store.release(&name);
            return Err(e);
        }
        Ok(id)
    }

    async fn sandbox(&self, id: &str) -> Result<Option<SandboxRecord>> {
        let (ctx, id) = (self.ctx.clone(), id.to_owned());
        match blocking(move || ctx.store.sandbox(&id)).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn containers_of(&self, id: &str) -> Result<Vec<String>> {
        Ok(self
            .containers
            .all()
            .await?
            .into_iter()
            .filter(|c| c.sandbox_id == id)
            .map(|c| c.id)
            .collect())
    }

    /// StopPodSandbox: its containers are killed, it leaves the network, its namespaces and
    /// /dev/shm go. Stopping a pod that is stopped, or not there, succeeds.
    pub async fn stop(&self, id: &str) -> Result<()> {
        let Some(mut s) = self.sandbox(id).await? else {
            return Ok(());
        };
        for c in self.containers_of(id).await? {
            self.containers.stop(&c, 0).await?;
        }
        if s.state == SandboxState::NotReady
            && s.namespaces.net.as_ref().is_none_or(|n| !n.exists())
        {
            return Ok(());
        }
        let ctx = self.ctx.clone();
        s = blocking(move || {
            if let Some(net) = &s.namespaces.net {
                let open = netns::is_open(net);
                ctx.cni.del(&Attachment {
                    container_id: s.id.clone(),
                    netns: open.then(|| net.clone()),
                    args: cni_args(&s.id, &s.config),
                    capabilities: capabilities(&s.config),
                })?;
            }
            netns::remove(&s.namespaces);
            if let Some(shm) = &s.shm {
                unmount_shm(shm);
            }
            if let Some(pid) = s.pid_holder.take() {
                stop_pid_holder(pid);
            }
            s.state = SandboxState::NotReady;
            ctx.store.put_sandbox(&s)?;
            Ok(s)
        })
        .await?;
        tracing::debug!(pod = %s.id, "pod sandbox stopped");
        Ok(())
    }

    /// RemovePodSandbox: stopped first, its containers removed, its files and record gone.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let Some(s) = self.sandbox(id).await? else {
            return Ok(());
        };
        self.stop(id).await?;
        for c in self.containers_of(id).await? {
            self.containers.remove(&c).await?;
        }
        let (ctx, sid) = (self.ctx.clone(), id.to_owned());
        blocking(move || {
            let _ = std::fs::remove_dir_all(ctx.sandbox_dir(&sid));
            let _ = std::fs::remove_dir_all(ctx.sandbox_files(&sid));
            ctx.store.delete(&sid)?;
            if let Ok(n) = SandboxRecord::reserved_name(&s.config) {
                ctx.store.release(&n);
            }
            Ok(())
        })
        .await
    }

    /// PodSandboxStatus, with containerd's verbose `info`.
    pub async fn status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<(cri::PodSandboxStatus, HashMap<String, String>)> {
        let s = self
            .sandbox(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {id:?}")))?;
        let mut info = HashMap::new();
        if verbose {
            let v = json!({
                "pid": 0, "processStatus": if s.state == SandboxState::Ready { "running" } else { "stopped" },
                "netNamespaceClosed": s.namespaces.net.as_ref().is_none_or(|n| !netns::is_open(n)),
                "netns": s.namespaces.net, "ipc": s.namespaces.ipc, "uts": s.namespaces.uts,
                "config": s.config, "cniResult": s.cni_result, "runtimeHandler": s.runtime_handler,
            });
            info.insert("info".to_owned(), v.to_string());
        }
        Ok((sandbox_status(&s), info))
    }

    pub async fn all(&self) -> Result<Vec<SandboxRecord>> {
        let ctx = self.ctx.clone();
        blocking(move || ctx.store.sandboxes()).await
    }

    /// ListPodSandbox with the kubelet's filter (id prefix, state, labels).
    pub async fn list(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>> {
        let f = filter.unwrap_or_default();
        Ok(self
            .all()
            .await?
            .into_iter()
            .filter(|s| f.id.is_empty() || s.id.starts_with(&f.id))
            .filter(|s| {
                f.state
                    .as_ref()
                    .is_none_or(|st| st.state == state_of(s) as i32)
            })
            .filter(|s| {
                f.label_selector
                    .iter()
                    .all(|(k, v)| s.config.labels.get(k) == Some(v))
            })
            .map(|s| cri::PodSandbox {
                id: s.id.clone(),
                metadata: s.config.metadata.clone(),
                state: state_of(&s) as i32,
                created_at: s.created_at,
                labels: s.config.labels.clone(),
                annotations: s.config.annotations.clone(),
                runtime_handler: s.runtime_handler.clone(),
            })
            .collect())
    }
}

pub fn state_of(s: &SandboxRecord) -> cri::PodSandboxState {
    match s.state {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady,
        SandboxState::NotReady => cri::PodSandboxState::SandboxNotready,
    }
}

pub fn sandbox_status(s: &SandboxRecord) -> cri::PodSandboxStatus {
    let ready = s.state == SandboxState::Ready;
    let ips = if ready { s.ips.clone() } else { Vec::new() };
    let options = s
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|c| c.namespace_options.clone());
    cri::PodSandboxStatus {
        id: s.id.clone(),
        metadata: s.config.metadata.clone(),
        state: state_of(s) as i32,
        created_at: s.created_at,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: ips.first().cloned().unwrap_or_default(),
            additional_ips: ips
                .iter()
                .skip(1)
                .map(|ip| cri::PodIp { ip: ip.clone() })
                .collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace { options }),
        }),
        labels: s.config.labels.clone(),
        annotations: s.config.annotations.clone(),
        runtime_handler: s.runtime_handler.clone(),
    }
}

/// The steps of RunPodSandbox, each undone if a later one fails. Blocking.
fn make_sandbox(
    ctx: &CriContext,
    id: &str,
    config: cri::PodSandboxConfig,
    runtime_handler: String,
) -> Result<()> {
    let opts = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|c| c.namespace_options.clone())
        .unwrap_or_default();
    let host_net = opts.network == NODE;
    let host_ipc = opts.ipc == NODE;
    let hostname = if config.hostname.is_empty() {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    } else {
        config.hostname.clone()
    };
    let dir = ctx.sandbox_dir(id);
    let files = ctx.sandbox_files(id);
    let mut s = SandboxRecord {
        id: id.to_owned(),
        config: config.clone(),
        runtime_handler,
        created_at: now_ns(),
        state: SandboxState::Ready,
        namespaces: PodNamespaces {
            net: None,
            ipc: None,
            uts: None,
        },
        shm: None,
        files: files.clone(),
        ips: Vec::new(),
        cni_result: None,
        pid_holder: None,
    };
    let undo = |s: &SandboxRecord, attached: bool| {
        if attached {
            if let Err(e) = ctx.cni.del(&Attachment {
                container_id: id.to_owned(),
                netns: s.namespaces.net.clone(),
                args: cni_args(id, &config),
                capabilities: capabilities(&config),
            }) {
                tracing::warn!(pod = %id, "undo network: {e}");
            }
        }
        netns::remove(&s.namespaces);
        if let Some(shm) = &s.shm {
            unmount_shm(shm);
        }
        if let Some(pid) = s.pid_holder {
            stop_pid_holder(pid);
        }
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&files);
    };
    let r = (|| {
        write_files(&files, &config, &hostname)?;
        if !host_net {
            // Checked before anything is made: a node without CNI cannot run pods.
            ctx.cni.ready()?;
        }
        s.namespaces = netns::create(
            &dir.join("ns"),
            Want {
                net: !host_net,
                ipc: !host_ipc,
                uts: !host_net,
            },
            &hostname,
        )?;
        if !host_ipc {
            let shm = dir.join("shm");
            mount_shm(&shm)?;
            s.shm = Some(shm);
        }
        if opts.pid == POD {
            let pid = start_pid_holder(&ctx.cfg.pause_command)?;
            s.pid_holder = Some(pid);
            // A sandbox's own process is the last the OOM killer should pick.
            let score = ctx.oom_floor.clamp(SANDBOX_OOM_SCORE_ADJ);
            std::fs::write(format!("/proc/{pid}/oom_score_adj"), score.to_string())
                .map_err(Error::io("set the oom_score_adj of", format!("pid {pid}")))?;
        }
        Ok::<_, Error>(())
    })();
    if let Err(e) = r {
        undo(&s, false);
        return Err(e);
    }
    if let Some(net) = s.namespaces.net.clone() {
        match ctx.cni.add(&Attachment {
            container_id: id.to_owned(),
            netns: Some(net),
            args: cni_args(id, &config),
            capabilities: capabilities(&config),
        }) {
            Ok(added) => {
                s.ips = added.ips;
                s.cni_result = Some(added.result);
            }
            Err(e) => {
                undo(&s, false);
                return Err(e.into());
            }
        }
    }
    if let Err(e) = ctx.store.put_sandbox(&s) {
        undo(&s, true);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_and_port_mappings_follow_kubernetes() {
        assert_eq!(parse_quantity("10M"), Some(10_000_000));
        assert_eq!(parse_quantity("1Gi"), Some(1 << 30));
        assert_eq!(parse_quantity("x"), None);
        let cfg = cri::PodSandboxConfig {
            port_mappings: vec![
                cri::PortMapping {
                    protocol: 1,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: String::new(),
                },
                cri::PortMapping {
                    protocol: 0,
                    container_port: 80,
                    host_port: 0,
                    host_ip: String::new(),
                },
            ],
            ..Default::default()
        };
        let caps = capabilities(&cfg);
        assert_eq!(
            caps["portMappings"],
            json!([{"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": ""}])
        );
    }

    #[test]
    fn resolv_conf_from_the_dns_config() {
        let cfg = cri::PodSandboxConfig {
            dns_config: Some(cri::DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            ..Default::default()
        };
        assert_eq!(
            resolv_conf(&cfg),
            "search default.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
    }
}
