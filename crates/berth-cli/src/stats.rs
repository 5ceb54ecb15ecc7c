//! Resource usage for `berth stats`: the task's cgroup metrics as berthd returns them
//! (containerd's cgroup v1 and v2 metrics messages, decoded here by their field numbers)
//! and the container's network counters from its namespace's /proc/net/dev.

use prost::Message;

#[derive(Clone, PartialEq, Message)]
struct PidsStat {
    #[prost(uint64, tag = "1")]
    current: u64,
    #[prost(uint64, tag = "2")]
    limit: u64,
}

#[derive(Clone, PartialEq, Message)]
struct CpuUsageV1 {
    #[prost(uint64, tag = "1")]
    total: u64,
}

#[derive(Clone, PartialEq, Message)]
struct CpuStatV1 {
    #[prost(message, optional, tag = "1")]
    usage: Option<CpuUsageV1>,
}

#[derive(Clone, PartialEq, Message)]
struct MemoryEntry {
    #[prost(uint64, tag = "1")]
    limit: u64,
    #[prost(uint64, tag = "2")]
    usage: u64,
}

#[derive(Clone, PartialEq, Message)]
struct MemoryStatV1 {
    #[prost(uint64, tag = "30")]
    total_inactive_file: u64,
    #[prost(message, optional, tag = "33")]
    usage: Option<MemoryEntry>,
}

#[derive(Clone, PartialEq, Message)]
struct MetricsV1 {
    #[prost(message, optional, tag = "2")]
    pids: Option<PidsStat>,
    #[prost(message, optional, tag = "3")]
    cpu: Option<CpuStatV1>,
    #[prost(message, optional, tag = "4")]
    memory: Option<MemoryStatV1>,
}

#[derive(Clone, PartialEq, Message)]
struct CpuStatV2 {
    #[prost(uint64, tag = "1")]
    usage_usec: u64,
}

#[derive(Clone, PartialEq, Message)]
struct MemoryStatV2 {
    #[prost(uint64, tag = "13")]
    inactive_file: u64,
    #[prost(uint64, tag = "32")]
    usage: u64,
    #[prost(uint64, tag = "33")]
    usage_limit: u64,
}

#[derive(Clone, PartialEq, Message)]
struct MetricsV2 {
    #[prost(message, optional, tag = "1")]
    pids: Option<PidsStat>,
    #[prost(message, optional, tag = "2")]
    cpu: Option<CpuStatV2>,
    #[prost(message, optional, tag = "4")]
    memory: Option<MemoryStatV2>,
}

/// One sample of a container's usage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// CPU time used, nanoseconds.
    pub cpu_ns: u64,
    /// Memory in use, without the page cache the kernel can drop.
    pub memory: u64,
    /// The limit, 0 when there is none.
    pub memory_limit: u64,
    pub pids: u64,
}

/// Decodes a metrics `Any` of either cgroup version.
pub fn decode(any: &prost_types::Any) -> Option<Sample> {
    let kind = any.type_url.rsplit('/').next().unwrap_or_default();
    let no_limit = |l: u64| if l >= 1 << 62 { 0 } else { l };
    match kind {
        "io.containerd.cgroups.v1.Metrics" => {
            let m = MetricsV1::decode(any.value.as_slice()).ok()?;
            let mem = m.memory.unwrap_or_default();
            let usage = mem.usage.unwrap_or_default();
            Some(Sample {
                cpu_ns: m.cpu.and_then(|c| c.usage).map(|u| u.total).unwrap_or(0),
                memory: usage.usage.saturating_sub(mem.total_inactive_file),
                memory_limit: no_limit(usage.limit),
                pids: m.pids.map(|p| p.current).unwrap_or(0),
            })
        }
        "io.containerd.cgroups.v2.Metrics" => {
            let m = MetricsV2::decode(any.value.as_slice()).ok()?;
            let mem = m.memory.unwrap_or_default();
            Some(Sample {
                cpu_ns: m.cpu.map(|c| c.usage_usec * 1000).unwrap_or(0),
                memory: mem.usage.saturating_sub(mem.inactive_file),
                memory_limit: no_limit(mem.usage_limit),
                pids: m.pids.map(|p| p.current).unwrap_or(0),
            })
        }
        _ => None,
    }
}

/// Bytes received and sent on the interfaces (but the loopback) of the namespace `pid`
/// lives in.
pub fn network(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap_or_default();
    let (mut rx, mut tx) = (0, 0);
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        rx += f.first().copied().unwrap_or(0);
        tx += f.get(8).copied().unwrap_or(0);
    }
    (rx, tx)
}

/// The host's memory, the limit Docker shows for an unlimited container.
pub fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_cgroup_versions_decode() {
        let v1 = MetricsV1 {
            pids: Some(PidsStat {
                current: 3,
                limit: 0,
            }),
            cpu: Some(CpuStatV1 {
                usage: Some(CpuUsageV1 { total: 5_000 }),
            }),
            memory: Some(MemoryStatV1 {
                total_inactive_file: 100,
                usage: Some(MemoryEntry {
                    limit: u64::MAX,
                    usage: 1_100,
                }),
            }),
        };
        let any = prost_types::Any {
            type_url: "io.containerd.cgroups.v1.Metrics".into(),
            value: v1.encode_to_vec(),
        };
        assert_eq!(
            decode(&any),
            Some(Sample {
                cpu_ns: 5_000,
                memory: 1_000,
                memory_limit: 0,
                pids: 3
            })
        );
        let v2 = MetricsV2 {
            pids: Some(PidsStat {
                current: 1,
                limit: 10,
            }),
            cpu: Some(CpuStatV2 { usage_usec: 7 }),
            memory: Some(MemoryStatV2 {
                inactive_file: 0,
                usage: 4096,
                usage_limit: 1 << 20,
            }),
        };
        let any = prost_types::Any {
            type_url: "types.containerd.io/io.containerd.cgroups.v2.Metrics".into(),
            value: v2.encode_to_vec(),
        };
        assert_eq!(
            decode(&any),
            Some(Sample {
                cpu_ns: 7_000,
                memory: 4096,
                memory_limit: 1 << 20,
                pids: 1
            })
        );
        assert!(decode(&prost_types::Any::default()).is_none());
    }
}
