//! Container networks: `host` (the host's own), `none` (a namespace with only a loopback)
//! and bridge networks through CNI — the default `bridge` (made on first use) and those
//! `berth network create` makes. Each bridge network is a conflist (bridge with outbound
//! NAT and host-local addresses, then portmap for `-p`) in a directory of its own under
//! the command line's data root. A container's network namespace is pinned on a file
//! before the container exists, so it survives restarts of the container and of berthd,
//! and is released (CNI DEL from the cached result, then unmounted) when it is removed.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use berth_cni::cni::{Attachment, Cni, CniSettings};
use berth_cni::netns::{self, Want};
use containerd_client::services::v1::Container;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::containers::Paths;
use crate::error::{Error, Result};

pub const DEFAULT_NETWORK: &str = "bridge";
pub const LABEL_NETNS: &str = "berth/netns";
pub const LABEL_IPS: &str = "berth/ips";
pub const LABEL_CNI_PATH: &str = "berth/cni-path";

/// How a container is networked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Host,
    None,
    /// A bridge network by name.
    Named(String),
}

impl Mode {
    pub fn parse(s: &str) -> Mode {
        match s {
            "host" => Mode::Host,
            "none" => Mode::None,
            "" | "default" => Mode::Named(DEFAULT_NETWORK.into()),
            n => Mode::Named(n.to_owned()),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Mode::Host => "host",
            Mode::None => "none",
            Mode::Named(n) => n,
        }
    }
}

/// A published port: `[IP:]HOST:CONTAINER[/PROTO]`, or `CONTAINER` for a free host port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    #[serde(rename = "hostIP")]
    pub host_ip: String,
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    pub protocol: String,
}

impl PortMapping {
    pub fn parse(s: &str) -> Result<PortMapping> {
        let bad = || {
            Error::Invalid(format!(
                "invalid port mapping {s:?}: use [IP:]HOST:CONTAINER[/tcp|udp]"
            ))
        };
        let (spec, protocol) = match s.rsplit_once('/') {
            Some((p, proto)) if proto == "tcp" || proto == "udp" || proto == "sctp" => (p, proto),
            Some(_) => return Err(bad()),
            None => (s, "tcp"),
        };
        let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
        let port = |p: &str| p.parse::<u16>().ok();
        let (host_ip, host, ctr) = match parts.as_slice() {
            [c] => ("", Some(0), port(c)),
            [c, h] => ("", if h.is_empty() { Some(0) } else { port(h) }, port(c)),
            [c, h, ip] => (*ip, if h.is_empty() { Some(0) } else { port(h) }, port(c)),
            _ => return Err(bad()),
        };
        let (Some(host_port), Some(container_port)) = (host, ctr) else {
            return Err(bad());
        };
        if container_port == 0
            || (!host_ip.is_empty() && host_ip.parse::<std::net::IpAddr>().is_err())
        {
            return Err(bad());
        }
        Ok(PortMapping {
            host_ip: host_ip.to_owned(),
            host_port,
            container_port,
            protocol: protocol.to_owned(),
        })
    }

    /// `0.0.0.0:8080->80/tcp`, as `docker ps` shows it.
    pub fn describe(&self) -> String {
        let ip = if self.host_ip.is_empty() {
            "0.0.0.0"
        } else {
            &self.host_ip
        };
        format!(
            "{ip}:{}->{}/{}",
            self.host_port, self.container_port, self.protocol
        )
    }
}

/// A free host port for `-P` and `-p CONTAINER`: one the kernel hands out now.
pub fn free_port(protocol: &str) -> Result<u16> {
    let port = if protocol == "udp" {
        std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| s.local_addr())
    } else {
        std::net::TcpListener::bind("0.0.0.0:0").and_then(|s| s.local_addr())
    };
    Ok(port.map_err(Error::io("find a free port"))?.port())
}

/// What `network create` records beside the conflist.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkInfo {
    pub name: String,
    pub id: String,
    pub driver: String,
    pub subnet: String,
    pub gateway: String,
    pub bridge: String,
    pub created: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Clone)]
pub struct Networks {
    dir: PathBuf,
    ipam_dir: PathBuf,
    cache_dir: PathBuf,
    netns_dir: PathBuf,
    bin_dirs: Vec<PathBuf>,
}

fn valid_network_name(n: &str) -> bool {
    crate::containers::valid_name(n) && n.len() <= 64 && !matches!(n, "host" | "none" | "default")
}

/// `a.b.c.d/len` → (network, prefix length).
fn parse_subnet(s: &str) -> Result<(Ipv4Addr, u8)> {
    let bad = || {
        Error::Invalid(format!(
            "invalid subnet {s:?}: use an IPv4 range such as 10.89.5.0/24"
        ))
    };
    let (ip, len) = s.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if !(8..=30).contains(&len) {
        return Err(bad());
    }
    let mask = u32::MAX << (32 - len);
    Ok((Ipv4Addr::from(u32::from(ip) & mask), len))
}

/// The IPv4 ranges the host routes already (its LANs, other bridges), from
/// /proc/net/route: a new network must not hide them.
fn host_routes() -> Vec<(Ipv4Addr, u8)> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            // The default route covers everything and hides nothing.
            (mask != 0).then(|| {
                (
                    Ipv4Addr::from(u32::from_be(dest)),
                    u32::from_be(mask).count_ones() as u8,
                )
            })
        })
        .collect()
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Deletes a network's bridge, which the CNI bridge plugin makes on first use and never
/// removes.
fn delete_bridge(name: &str) -> Result<()> {
    if !link_exists(name) {
        return Ok(());
    }
    let out = std::process::Command::new("ip")
        .args(["link", "delete", name, "type", "bridge"])
        .output()
        .map_err(Error::io(format!("run ip link delete {name}")))?;
    if out.status.success() || !link_exists(name) {
        Ok(())
    } else {
        Err(Error::Daemon(format!(
            "delete bridge {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let len = a.1.min(b.1);
    let mask = u32::MAX << (32 - len);
    u32::from(a.0) & mask == u32::from(b.0) & mask
}

impl Networks {
    pub fn new(paths: &Paths, bin_dirs: Vec<PathBuf>) -> Networks {
        Networks {
            dir: paths.root.join("networks"),
            ipam_dir: paths.root.join("ipam"),
            cache_dir: paths.root.join("cni-cache"),
            netns_dir: paths.root.join("netns"),
            bin_dirs,
        }
    }

    fn net_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn cni(&self, name: &str) -> Cni {
        Cni::new(CniSettings {
            conf_dir: self.net_dir(name),
            bin_dirs: self.bin_dirs.clone(),
            cache_dir: self.cache_dir.clone(),
            conf_template: None,
        })
    }

    pub fn list(&self) -> Result<Vec<NetworkInfo>> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Ok(out);
        };
        for e in rd.flatten() {
            let p = e.path().join("network.json");
            if let Ok(b) = std::fs::read(&p) {
                if let Ok(i) = serde_json::from_slice::<NetworkInfo>(&b) {
                    out.push(i);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// A network by name, id or unique id prefix.
    pub fn get(&self, what: &str) -> Result<NetworkInfo> {
        let all = self.list()?;
        if let Some(n) = all.iter().find(|n| n.name == what || n.id == what) {
            return Ok(n.clone());
        }
        let hits: Vec<&NetworkInfo> = all.iter().filter(|n| n.id.starts_with(what)).collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::NoSuchObject(format!("network {what}"))),
            _ => Err(Error::Conflict(format!("network id {what} is ambiguous"))),
        }
    }

    /// Makes a bridge network; the default one when `name` is `bridge`.
    pub fn create(
        &self,
        name: &str,
        subnet: Option<&str>,
        labels: std::collections::BTreeMap<String, String>,
    ) -> Result<NetworkInfo> {
        if !valid_network_name(name) {
            return Err(Error::Invalid(format!(
                "invalid network name {name:?}: letters, digits, '_', '.' and '-', not host, none or default"
            )));
        }
        let existing = self.list()?;
        if existing.iter().any(|n| n.name == name) {
            return Err(Error::Conflict(format!(
                "network with name {name} already exists"
            )));
        }
        let mut taken: Vec<(Ipv4Addr, u8)> = existing
            .iter()
            .filter_map(|n| parse_subnet(&n.subnet).ok())
            .collect();
        taken.extend(host_routes());
        let net = match subnet {
            Some(s) => {
                let n = parse_subnet(s)?;
                if let Some(o) = existing
                    .iter()
                    .find(|x| parse_subnet(&x.subnet).is_ok_and(|t| overlaps(t, n)))
                {
                    return Err(Error::Conflict(format!(
                        "subnet {s} overlaps network {} ({})",
                        o.name, o.subnet
                    )));
                }
                n
            }
            None => {
                let start = if name == DEFAULT_NETWORK { 0 } else { 1 };
                (start..=255u8)
                    .map(|i| (Ipv4Addr::new(10, 89, i, 0), 24))
                    .find(|c| !taken.iter().any(|t| overlaps(*t, *c)))
                    .ok_or_else(|| Error::Conflict("no free subnet left in 10.89.0.0/16".into()))?
            }
        };
        let id = crate::containers::new_id();
        // The default network's bridge is berth0, unless another berthd's has that name.
        let bridge = if name == DEFAULT_NETWORK && !link_exists("berth0") {
            "berth0".to_owned()
        } else {
            format!("br-{}", &id[..12])
        };
        let gateway = Ipv4Addr::from(u32::from(net.0) + 1);
        let info = NetworkInfo {
            name: name.to_owned(),
            id,
            driver: "bridge".into(),
            subnet: format!("{}/{}", net.0, net.1),
            gateway: gateway.to_string(),
            bridge: bridge.clone(),
            created: crate::time::rfc3339(std::time::SystemTime::now()),
            labels,
        };
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": format!("berth-{name}"),
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": bridge,
                    "isGateway": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": info.subnet, "gateway": info.gateway}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": self.ipam_dir.display().to_string(),
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {"type": "firewall"}
            ]
        });
        let dir = self.net_dir(name);
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
        let write = |file: &str, v: &Value| -> Result<()> {
            let p = dir.join(file);
            let tmp = dir.join(format!(".{file}.tmp"));
            std::fs::write(&tmp, serde_json::to_vec_pretty(v).unwrap_or_default())
                .and_then(|()| std::fs::rename(&tmp, &p))
                .map_err(Error::io(format!("write {}", p.display())))
        };
        let r = write(&format!("{name}.conflist"), &conflist).and_then(|()| {
            write(
                "network.json",
                &serde_json::to_value(&info).unwrap_or_default(),
            )
        });
        if let Err(e) = r {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(info)
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        if let Ok(info) = self.get(name) {
            delete_bridge(&info.bridge)?;
        }
        let dir = self.net_dir(name);
        std::fs::remove_dir_all(&dir).map_err(Error::io(format!("remove {}", dir.display())))
    }

    /// The network a container joins, made first if it is the default one.
    fn ensure(&self, name: &str) -> Result<NetworkInfo> {
        match self.get(name) {
            Ok(n) => Ok(n),
            Err(Error::NoSuchObject(_)) if name == DEFAULT_NETWORK => {
                match self.create(DEFAULT_NETWORK, None, Default::default()) {
                    Ok(n) => Ok(n),
                    // Another `berth run` made it at the same moment.
                    Err(Error::Conflict(_)) => self.get(name),
                    Err(e) => Err(e),
                }
            }
            Err(Error::NoSuchObject(_)) => Err(Error::NoSuchObject(format!(
                "network {name} (create it with `berth network create {name}`)"
            ))),
            Err(e) => Err(e),
        }
    }

    /// Gives container `id` its network namespace (and its place on a bridge network, with
    /// `ports` published); returns the namespace path and the addresses it got. On failure
    /// nothing is left.
    pub fn attach(&self, id: &str, mode: &Mode, ports: &[PortMapping]) -> Result<Attached> {
        let dir = self.netns_dir.join(id);
        let network = match mode {
            Mode::Host => return Ok(Attached::default()),
            Mode::None => None,
            Mode::Named(n) => Some(self.ensure(n)?),
        };
        let ns = netns::create(
            &dir,
            Want {
                net: true,
                ipc: false,
                uts: false,
            },
            "",
        )
        .map_err(|e| Error::Daemon(format!("network namespace for {id}: {e}")))?;
        let Some(path) = ns.net.clone() else {
            return Err(Error::Daemon(format!(
                "network namespace for {id} was not made"
            )));
        };
        let Some(network) = network else {
            return Ok(Attached {
                netns: Some(path),
                ips: Vec::new(),
                gateway: None,
            });
        };
        let mut caps = serde_json::Map::new();
        if !ports.is_empty() {
            caps.insert(
                "portMappings".into(),
                serde_json::to_value(ports).unwrap_or_default(),
            );
        }
        let at = Attachment {
            container_id: id.to_owned(),
            netns: Some(path.clone()),
            args: vec![("IgnoreUnknown".into(), "1".into())],
            capabilities: caps,
        };
        match self.cni(&network.name).add(&at) {
            Ok(added) => Ok(Attached {
                netns: Some(path),
                ips: added.ips,
                gateway: Some(network.gateway),
            }),
            Err(e) => {
                netns::remove(&ns);
                let _ = std::fs::remove_dir(&dir);
                Err(Error::Daemon(format!(
                    "connect container {id} to network {}: {e}",
                    network.name
                )))
            }
        }
    }

    /// Undoes `attach` for a container, from its labels; what is gone already is fine.
    pub fn release(&self, c: &Container) -> Result<()> {
        let Some(path) = c.labels.get(LABEL_NETNS).map(PathBuf::from) else {
            return Ok(());
        };
        if let Some(name) = c.labels.get(crate::containers::LABEL_NETWORK) {
            if let Mode::Named(n) = Mode::parse(name) {
                // portmap finds the rules to delete from the same mappings ADD was given.
                let mut capabilities = serde_json::Map::new();
                if let Some(p) = c.labels.get(crate::containers::LABEL_PORTS) {
                    if let Ok(v) = serde_json::from_str::<Value>(p) {
                        capabilities.insert("portMappings".into(), v);
                    }
                }
                let at = Attachment {
                    container_id: c.id.clone(),
                    netns: netns::is_open(&path).then(|| path.clone()),
                    args: vec![("IgnoreUnknown".into(), "1".into())],
                    capabilities,
                };
                self.cni(&n).del(&at).map_err(|e| {
                    Error::Daemon(format!("disconnect {} from network {n}: {e}", c.id))
                })?;
            }
        }
        let pinned = netns::PodNamespaces {
            net: Some(path.clone()),
            ipc: None,
            uts: None,
        };
        // Only a namespace berth pinned for this container is touched.
        if path.starts_with(&self.netns_dir)
            && path.parent().and_then(Path::file_name) == Some(c.id.as_ref())
        {
            netns::remove(&pinned);
            if let Some(d) = path.parent() {
                let _ = std::fs::remove_dir(d);
            }
        }
        Ok(())
    }

    /// Names of the containers of `all` on network `name`.
    pub fn users<'a>(name: &str, all: &'a [Container]) -> Vec<&'a Container> {
        all.iter()
            .filter(|c| {
                c.labels
                    .get(crate::containers::LABEL_NETWORK)
                    .map(String::as_str)
                    == Some(name)
            })
            .collect()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Attached {
    pub netns: Option<PathBuf>,
    pub ips: Vec<String>,
    pub gateway: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mappings_read_as_docker_reads_them() {
        let p = PortMapping::parse("8080:80").unwrap();
        assert_eq!(
            (p.host_port, p.container_port, p.protocol.as_str()),
            (8080, 80, "tcp")
        );
        let p = PortMapping::parse("127.0.0.1:53:5353/udp").unwrap();
        assert_eq!(
            (p.host_ip.as_str(), p.host_port, p.protocol.as_str()),
            ("127.0.0.1", 53, "udp")
        );
        assert_eq!(PortMapping::parse("80").unwrap().host_port, 0);
        assert_eq!(
            PortMapping::parse("8080:80").unwrap().describe(),
            "0.0.0.0:8080->80/tcp"
        );
        for bad in [
            "",
            "x:80",
            "80:0",
            "1:2:3:4",
            "8080:80/icmp",
            "nope:1:2",
            "70000:80",
        ] {
            assert!(PortMapping::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn networks_get_their_own_subnets() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths {
            root: d.path().to_owned(),
        };
        let n = Networks::new(&paths, vec![]);
        let a = n.create("bridge", None, Default::default()).unwrap();
        let b = n.create("front", None, Default::default()).unwrap();
        // Subnets the host already routes are skipped.
        let routed = host_routes();
        for net in [&a, &b] {
            let sub = parse_subnet(&net.subnet).unwrap();
            assert!(!routed.iter().any(|r| overlaps(*r, sub)), "{}", net.subnet);
            assert!(net.subnet.starts_with("10.89."), "{}", net.subnet);
        }
        assert_ne!(a.subnet, b.subnet);
        assert!(a.bridge == "berth0" || a.bridge.starts_with("br-"));
        assert!(b.bridge.starts_with("br-") && b.bridge.len() <= 15);
        assert!(matches!(
            n.create("front", None, Default::default()),
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            n.create(
                "x",
                Some(&b.subnet.replace("/24", "/25")),
                Default::default()
            ),
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            n.create("host", None, Default::default()),
            Err(Error::Invalid(_))
        ));
        let c = n
            .create("c", Some("192.168.77.0/24"), Default::default())
            .unwrap();
        assert_eq!(c.gateway, "192.168.77.1");
        let conf = berth_cni::cni::parse_network(
            &std::fs::read(d.path().join("networks/front/front.conflist")).unwrap(),
            Path::new("front.conflist"),
        )
        .unwrap();
        assert_eq!(conf.plugins.len(), 3);
        assert_eq!(n.get(&b.id[..10]).unwrap().name, "front");
        n.remove("front").unwrap();
        assert!(n.get("front").is_err());
    }
}
