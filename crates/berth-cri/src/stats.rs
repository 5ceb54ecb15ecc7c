//! Container and pod statistics, read by berthd straight from the cgroup files (v1 or v2)
//! and the pod's network namespace, with a short cache, instead of one shim round-trip per
//! container per poll. CPU usage in nano-cores comes from the change since the previous
//! sample of the same cgroup.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;

use crate::context::{blocking, CriContext};
use crate::error::Result;
use crate::store::{namespace, now_ns, ContainerRecord, SandboxRecord};

/// Stats younger than this are answered from the cache.
const FRESH: Duration = Duration::from_secs(1);
/// Writable-layer sizes (a directory walk) are measured at most this often.
const LAYER_FRESH: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, Default)]
pub struct CgroupSample {
    pub at: i64,
    pub cpu_ns: u64,
    pub memory_usage: u64,
    pub working_set: u64,
    pub rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    pub limit: u64,
    pub pids: u64,
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn stat_map(p: &Path) -> HashMap<String, u64> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

fn unified() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The directory of a cgroup path under a controller (v1) or the unified tree (v2); a
/// systemd-style `slice:prefix:name` becomes its path under the slice.
fn cgroup_dir(controller: Option<&str>, cgroup: &str) -> PathBuf {
    let rel = match cgroup.split(':').collect::<Vec<_>>().as_slice() {
        [slice, prefix, name] => {
            let mut p = String::new();
            let mut acc = String::new();
            for part in slice.trim_end_matches(".slice").split('-') {
                if !acc.is_empty() {
                    acc.push('-');
                }
                acc.push_str(part);
                p.push_str(&format!("/{acc}.slice"));
            }
            format!("{p}/{prefix}-{name}.scope")
        }
        _ => cgroup.to_owned(),
    };
    let base = PathBuf::from("/sys/fs/cgroup");
    let base = match controller {
        Some(c) => base.join(c),
        None => base,
    };
    base.join(rel.trim_start_matches('/'))
}

/// Reads one cgroup now. Blocking (small reads of kernel files).
pub fn sample(cgroup: &str) -> Option<CgroupSample> {
    let mut s = CgroupSample {
        at: now_ns(),
        ..Default::default()
    };
    if unified() {
        let d = cgroup_dir(None, cgroup);
        if !d.is_dir() {
            return None;
        }
        s.cpu_ns = stat_map(&d.join("cpu.stat"))
            .get("usage_usec")
            .copied()
            .unwrap_or(0)
            * 1000;
        s.memory_usage = read_u64(&d.join("memory.current")).unwrap_or(0);
        s.limit = read_u64(&d.join("memory.max")).unwrap_or(0);
        let m = stat_map(&d.join("memory.stat"));
        let inactive = m.get("inactive_file").copied().unwrap_or(0);
        s.working_set = s.memory_usage.saturating_sub(inactive);
        s.rss = m.get("anon").copied().unwrap_or(0);
        s.page_faults = m.get("pgfault").copied().unwrap_or(0);
        s.major_page_faults = m.get("pgmajfault").copied().unwrap_or(0);
        s.pids = read_u64(&d.join("pids.current")).unwrap_or(0);
    } else {
        let cpu = ["cpu,cpuacct", "cpuacct"]
            .iter()
            .map(|c| cgroup_dir(Some(c), cgroup))
            .find(|d| d.is_dir())?;
        let mem = cgroup_dir(Some("memory"), cgroup);
        s.cpu_ns = read_u64(&cpu.join("cpuacct.usage")).unwrap_or(0);
        s.memory_usage = read_u64(&mem.join("memory.usage_in_bytes")).unwrap_or(0);
        s.limit = read_u64(&mem.join("memory.limit_in_bytes")).unwrap_or(0);
        let m = stat_map(&mem.join("memory.stat"));
        let inactive = m.get("total_inactive_file").copied().unwrap_or(0);
        s.working_set = s.memory_usage.saturating_sub(inactive);
        s.rss = m.get("total_rss").copied().unwrap_or(0);
        s.page_faults = m.get("total_pgfault").copied().unwrap_or(0);
        s.major_page_faults = m.get("total_pgmajfault").copied().unwrap_or(0);
        s.pids = read_u64(&cgroup_dir(Some("pids"), cgroup).join("pids.current")).unwrap_or(0);
    }
    Some(s)
}

fn v(n: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: n })
}

/// When a cgroup was read, the sample, and the sample before it.
type Sampled = (Instant, CgroupSample, Option<CgroupSample>);

pub struct Stats {
    ctx: Arc<CriContext>,
    /// cgroup → its latest samples.
    cache: Mutex<HashMap<String, Sampled>>,
    layers: Mutex<HashMap<String, (Instant, berth_core::snapshot::Usage)>>,
}

impl Stats {
    pub fn new(ctx: Arc<CriContext>) -> Arc<Self> {
        Arc::new(Stats {
            ctx,
            cache: Mutex::new(HashMap::new()),
            layers: Mutex::new(HashMap::new()),
        })
    }

    /// The cgroup's latest sample and nano-cores, read again when the cache is stale.
    fn cgroup(&self, cgroup: &str) -> Option<(CgroupSample, u64)> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (cur, prev) = match cache.get(cgroup) {
            Some((at, s, p)) if at.elapsed() < FRESH => (*s, *p),
            old => {
                let before = old.map(|(_, s, _)| *s);
                let s = sample(cgroup)?;
                cache.insert(cgroup.to_owned(), (Instant::now(), s, before));
                (s, before)
            }
        };
        let cores = prev
            .filter(|p| cur.at > p.at && cur.cpu_ns >= p.cpu_ns)
            .map(|p| {
                ((cur.cpu_ns - p.cpu_ns) as u128 * 1_000_000_000 / (cur.at - p.at) as u128) as u64
            })
            .unwrap_or(0);
        Some((cur, cores))
    }

    fn writable_layer(&self, id: &str) -> berth_core::snapshot::Usage {
        if let Some((at, u)) = self
            .layers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            if at.elapsed() < LAYER_FRESH {
                return *u;
            }
        }
        let u = self
            .ctx
            .images
            .snapshots
            .usage(&namespace(), &self.ctx.cfg.snapshotter, id)
            .unwrap_or_default();
        self.layers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), (Instant::now(), u));
        u
    }

    fn usage(s: &CgroupSample, cores: u64) -> (cri::CpuUsage, cri::MemoryUsage) {
        let available = if s.limit > 0 && s.limit < (1 << 62) {
            s.limit.saturating_sub(s.working_set)
        } else {
            0
        };
        (
            cri::CpuUsage {
                timestamp: s.at,
                usage_core_nano_seconds: v(s.cpu_ns),
                usage_nano_cores: v(cores),
            },
            cri::MemoryUsage {
                timestamp: s.at,
                working_set_bytes: v(s.working_set),
                available_bytes: v(available),
                usage_bytes: v(s.memory_usage),
                rss_bytes: v(s.rss),
                page_faults: v(s.page_faults),
                major_page_faults: v(s.major_page_faults),
            },
        )
    }

    /// One container's stats. Blocking.
    pub fn container(&self, r: &ContainerRecord) -> cri::ContainerStats {
        let (cpu, memory) = match self.cgroup(&r.cgroup_path) {
            Some((s, cores)) => {
                let (c, m) = Self::usage(&s, cores);
                (Some(c), Some(m))
            }
            None => (None, None),
        };
        let layer = self.writable_layer(&r.id);
        cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: r.id.clone(),
                metadata: r.config.metadata.clone(),
                labels: r.config.labels.clone(),
                annotations: r.config.annotations.clone(),
            }),
            cpu,
            memory,
            writable_layer: Some(cri::FilesystemUsage {
                timestamp: now_ns(),
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: self.ctx.cfg.snapshotter_root.display().to_string(),
                }),
                used_bytes: v(layer.size.max(0) as u64),
                inodes_used: v(layer.inodes.max(0) as u64),
            }),
            swap: None,
        }
    }

    /// A pod's stats: its cgroup parent, its network interfaces, its containers. Blocking.
    pub fn pod(&self, s: &SandboxRecord, containers: &[ContainerRecord]) -> cri::PodSandboxStats {
        let parent = s
            .config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .unwrap_or_default();
        let (cpu, memory, process) =
            match (!parent.is_empty()).then(|| self.cgroup(&parent)).flatten() {
                Some((smp, cores)) => {
                    let (c, m) = Self::usage(&smp, cores);
                    (
                        Some(c),
                        Some(m),
                        Some(cri::ProcessUsage {
                            timestamp: smp.at,
                            process_count: v(smp.pids),
                        }),
                    )
                }
                None => (None, None, None),
            };
        let network = s
            .namespaces
            .net
            .as_ref()
            .filter(|n| crate::netns::is_open(n))
            .and_then(|n| network_usage(n).ok());
        cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: s.id.clone(),
                metadata: s.config.metadata.clone(),
                labels: s.config.labels.clone(),
                annotations: s.config.annotations.clone(),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu,
                memory,
                network,
                process,
                containers: containers
                    .iter()
                    .filter(|c| c.sandbox_id == s.id)
                    .map(|c| self.container(c))
                    .collect(),
            }),
            windows: None,
        }
    }

    /// Stats of the running containers `pick` selects.
    pub async fn containers(
        self: &Arc<Self>,
        pick: impl Fn(&ContainerRecord) -> bool + Send + 'static,
    ) -> Result<Vec<cri::ContainerStats>> {
        let me = self.clone();
        blocking(move || {
            Ok(me
                .ctx
                .store
                .containers()?
                .iter()
                .filter(|c| crate::containers::state_of(c) == cri::ContainerState::ContainerRunning)
                .filter(|c| pick(c))
                .map(|c| me.container(c))
                .collect())
        })
        .await
    }

    /// Stats of the ready pods `pick` selects.
    pub async fn pods(
        self: &Arc<Self>,
        pick: impl Fn(&SandboxRecord) -> bool + Send + 'static,
    ) -> Result<Vec<cri::PodSandboxStats>> {
        let me = self.clone();
        blocking(move || {
            let containers: Vec<ContainerRecord> = me
                .ctx
                .store
                .containers()?
                .into_iter()
                .filter(|c| crate::containers::state_of(c) == cri::ContainerState::ContainerRunning)
                .collect();
            Ok(me
                .ctx
                .store
                .sandboxes()?
                .iter()
                .filter(|s| s.state == crate::store::SandboxState::Ready)
                .filter(|s| pick(s))
                .map(|s| me.pod(s, &containers))
                .collect())
        })
        .await
    }
}

/// The interfaces of a pod's network namespace (`/proc/net/dev` as seen from inside).
fn network_usage(net: &Path) -> Result<cri::NetworkUsage> {
    let text = crate::netns::in_netns(net, || {
        std::fs::read_to_string("/proc/thread-self/net/dev")
            .map_err(crate::Error::io("read", "/proc/thread-self/net/dev"))
    })?;
    let mut interfaces = Vec::new();
    for l in text.lines().skip(2) {
        let Some((name, rest)) = l.split_once(':') else {
            continue;
        };
        let n: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if n.len() < 16 || name.trim() == "lo" {
            continue;
        }
        interfaces.push(cri::NetworkInterfaceUsage {
            name: name.trim().to_owned(),
            rx_bytes: v(n[0]),
            rx_errors: v(n[2]),
            tx_bytes: v(n[8]),
            tx_errors: v(n[10]),
        });
    }
    Ok(cri::NetworkUsage {
        timestamp: now_ns(),
        default_interface: interfaces
            .iter()
            .find(|i| i.name == crate::cni::IFNAME)
            .cloned(),
        interfaces,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_cgroups_become_paths() {
        assert_eq!(
            cgroup_dir(Some("memory"), "kubepods-burstable-pod1.slice:cri-berth:c1"),
            PathBuf::from("/sys/fs/cgroup/memory/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-berth-c1.scope")
        );
        assert_eq!(
            cgroup_dir(None, "/kubepods/pod1/c1"),
            PathBuf::from("/sys/fs/cgroup/kubepods/pod1/c1")
        );
    }
}
