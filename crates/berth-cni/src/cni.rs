//! A CNI client (spec 1.0): the network configuration is the first `.conflist`, `.conf` or
//! `.json` in the configuration directory by name, read again whenever it changes; its
//! plugins are found in the binary directories and run in order for ADD (each given the
//! previous one's result) and in reverse for DEL (each given the cached final result). The
//! result of an ADD is cached with the configuration it was made with, so DEL works after
//! the configuration changed or the namespace is gone. Blocking: callers run it off the
//! async reactor.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// The interface a pod's network gets.
pub const IFNAME: &str = "eth0";
/// How long one plugin may take.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct CniSettings {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    /// Where ADD results are kept for DEL (under --root: they must survive a restart).
    pub cache_dir: PathBuf,
    /// A configuration with `{{.PodCIDR}}` placeholders, written into `conf_dir` as
    /// [`TEMPLATED_CONF`] once the kubelet sends the node's pod CIDR (UpdateRuntimeConfig).
    pub conf_template: Option<PathBuf>,
}

/// The file a configuration template becomes.
pub const TEMPLATED_CONF: &str = "10-berth-cri.conflist";

/// Fills a configuration template: `{{.PodCIDR}}` is the first of the node's pod CIDRs
/// (the kubelet sends them comma-separated), `{{.PodCIDRRanges}}` the JSON list of all.
pub fn render_template(template: &str, pod_cidr: &str) -> Result<String> {
    let ranges: Vec<&str> = pod_cidr
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .collect();
    for r in &ranges {
        let ok = r.split_once('/').is_some_and(|(ip, bits)| {
            ip.parse::<std::net::IpAddr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= 128)
        });
        if !ok {
            return Err(Error::InvalidArgument(format!(
                "pod CIDR {r:?} is not an address range"
            )));
        }
    }
    let first = ranges
        .first()
        .ok_or_else(|| Error::InvalidArgument("no pod CIDR given".into()))?;
    Ok(template.replace("{{.PodCIDR}}", first).replace(
        "{{.PodCIDRRanges}}",
        &serde_json::to_string(&ranges).unwrap_or_default(),
    ))
}

/// A loaded network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
    pub file: PathBuf,
    /// The list as JSON, as cached beside a result.
    pub raw: Value,
}

/// One attachment of a pod to the network.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    /// Empty when the namespace is already gone (DEL only).
    pub netns: Option<PathBuf>,
    /// `CNI_ARGS`, in order.
    pub args: Vec<(String, String)>,
    /// Capability arguments (`portMappings`, `dns`, `bandwidth`, ...), given to the plugins
    /// that declare the capability.
    pub capabilities: serde_json::Map<String, Value>,
}

/// What ADD produced: the result JSON and the pod's addresses (those of `eth0` first).
#[derive(Debug, Clone, PartialEq)]
pub struct Added {
    pub result: Value,
    pub ips: Vec<String>,
}

pub struct Cni {
    settings: CniSettings,
    /// The last configuration read, with the file's modification time.
    loaded: Mutex<Option<(PathBuf, SystemTime, Network)>>,
}

fn cni_err(plugin: &str, command: &'static str, network: &str, message: String) -> Error {
    Error::Cni {
        plugin: plugin.to_owned(),
        command,
        network: network.to_owned(),
        message,
    }
}

impl Cni {
    pub fn new(settings: CniSettings) -> Self {
        Cni {
            settings,
            loaded: Mutex::new(None),
        }
    }

    pub fn settings(&self) -> &CniSettings {
        &self.settings
    }

    /// The configuration file in use: the first by name.
    fn config_file(&self) -> Result<PathBuf> {
        let dir = &self.settings.conf_dir;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| {
                Error::FailedPrecondition(format!("no CNI configuration: {}: {e}", dir.display()))
            })?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x == "conflist" || x == "conf" || x == "json")
            })
            .collect();
        files.sort();
        files.into_iter().next().ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "no CNI configuration in {} (a .conflist, .conf or .json file)",
                dir.display()
            ))
        })
    }

    /// The network configuration, read again when the file changed.
    pub fn network(&self) -> Result<Network> {
        let file = self.config_file()?;
        let mtime = std::fs::metadata(&file)
            .and_then(|m| m.modified())
            .map_err(Error::io("stat", &file))?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((f, t, n)) = &*loaded {
            if *f == file && *t == mtime {
                return Ok(n.clone());
            }
        }
        let bytes = std::fs::read(&file).map_err(Error::io("read", &file))?;
        let net = parse_network(&bytes, &file)?;
        *loaded = Some((file, mtime, net.clone()));
        Ok(net)
    }

    /// Writes the configuration template for the node's pod CIDR; returns the file written,
    /// or None when no template is configured. The result must parse as a network before
    /// it replaces the previous file.
    pub fn apply_pod_cidr(&self, pod_cidr: &str) -> Result<Option<PathBuf>> {
        let Some(template) = &self.settings.conf_template else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(template).map_err(Error::io("read", template))?;
        let rendered = render_template(&text, pod_cidr)?;
        let file = self.settings.conf_dir.join(TEMPLATED_CONF);
        parse_network(rendered.as_bytes(), &file)?;
        std::fs::create_dir_all(&self.settings.conf_dir)
            .map_err(Error::io("create", &self.settings.conf_dir))?;
        let tmp = self
            .settings
            .conf_dir
            .join(format!(".{TEMPLATED_CONF}.tmp"));
        std::fs::write(&tmp, rendered).map_err(Error::io("write", &tmp))?;
        std::fs::rename(&tmp, &file).map_err(Error::io("rename", &file))?;
        Ok(Some(file))
    }

    /// Whether networking can work: a configuration and every plugin it names.
    pub fn ready(&self) -> Result<Network> {
        let net = self.network()?;
        for p in &net.plugins {
            let kind = p["type"].as_str().unwrap_or_default();
            self.plugin_binary(kind, &net.name)?;
        }
        Ok(net)
    }

    fn plugin_binary(&self, kind: &str, network: &str) -> Result<PathBuf> {
        if kind.is_empty() || kind.contains('/') {
            return Err(Error::InvalidArgument(format!(
                "CNI network {network:?} names a plugin type {kind:?}"
            )));
        }
        self.settings
            .bin_dirs
            .iter()
            .map(|d| d.join(kind))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                let dirs: Vec<String> = self
                    .settings
                    .bin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect();
                Error::FailedPrecondition(format!(
                    "CNI plugin {kind:?} of network {network:?} not found in {}",
                    dirs.join(":")
                ))
            })
    }

    fn cache_file(&self, net: &str, id: &str) -> PathBuf {
        self.settings
            .cache_dir
            .join(format!("{net}-{id}-{IFNAME}.json"))
    }

    /// Attaches the pod: every plugin's ADD in order. A failure deletes what the chain
    /// did so far and names the plugin and its message.
    pub fn add(&self, at: &Attachment) -> Result<Added> {
        let net = self.ready()?;
        let mut prev: Option<Value> = None;
        for (i, p) in net.plugins.iter().enumerate() {
            match self.run(&net, p, "ADD", at, prev.as_ref()) {
                Ok(r) => prev = Some(r),
                Err(e) => {
                    // Undo what the earlier plugins (and this one) may have done.
                    for q in net.plugins[..=i].iter().rev() {
                        let _ = self.run(&net, q, "DEL", at, prev.as_ref());
                    }
                    return Err(e);
                }
            }
        }
        let result = prev.unwrap_or_else(|| json!({"cniVersion": net.cni_version}));
        let cache = json!({"kind": "berth-cni-cache/v1", "config": net.raw, "result": result,
                           "containerId": at.container_id, "ifName": IFNAME});
        let file = self.cache_file(&net.name, &at.container_id);
        std::fs::create_dir_all(&self.settings.cache_dir)
            .map_err(Error::io("create", &self.settings.cache_dir))?;
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&cache).unwrap_or_default())
            .and_then(|()| std::fs::rename(&tmp, &file))
            .map_err(Error::io("write", &file))?;
        Ok(Added {
            ips: pod_ips(&result),
            result,
        })
    }

    /// Detaches the pod: every plugin's DEL in reverse order, with the cached result and
    /// configuration when there are some. Idempotent; the namespace may be gone.
    pub fn del(&self, at: &Attachment) -> Result<()> {
        let cached = self.cached(&at.container_id);
        let (net, prev, cache_file) = match cached {
            Some((file, v)) => (
                parse_network(&serde_json::to_vec(&v["config"]).unwrap_or_default(), &file)?,
                Some(v["result"].clone()),
                Some(file),
            ),
            None => match self.network() {
                Ok(n) => (n, None, None),
                // No configuration and nothing cached: nothing was attached.
                Err(_) => return Ok(()),
            },
        };
        for p in net.plugins.iter().rev() {
            self.run(&net, p, "DEL", at, prev.as_ref())?;
        }
        if let Some(f) = cache_file {
            let _ = std::fs::remove_file(f);
        }
        Ok(())
    }

    /// The cached ADD of a container, whatever network it was made in.
    fn cached(&self, container_id: &str) -> Option<(PathBuf, Value)> {
        let suffix = format!("-{container_id}-{IFNAME}.json");
        std::fs::read_dir(&self.settings.cache_dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().ends_with(&suffix))
            })
            .and_then(|p| {
                let v: Value = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
                Some((p, v))
            })
    }

    /// The addresses a previous ADD gave the pod, from the cache.
    pub fn cached_ips(&self, container_id: &str) -> Vec<String> {
        self.cached(container_id)
            .map(|(_, v)| pod_ips(&v["result"]))
            .unwrap_or_default()
    }

    fn run(
        &self,
        net: &Network,
        plugin: &Value,
        command: &'static str,
        at: &Attachment,
        prev: Option<&Value>,
    ) -> Result<Value> {
        let kind = plugin["type"].as_str().unwrap_or_default().to_owned();
        let bin = self.plugin_binary(&kind, &net.name)?;
        let mut conf = plugin.clone();
        conf["name"] = json!(net.name);
        conf["cniVersion"] = json!(net.cni_version);
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        let caps: BTreeMap<String, Value> = plugin["capabilities"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, on)| on.as_bool() == Some(true))
            .filter_map(|(k, _)| at.capabilities.get(k).map(|v| (k.clone(), v.clone())))
            .collect();
        if !caps.is_empty() {
            conf["runtimeConfig"] = json!(caps);
        }
        let args: Vec<String> = at.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let path = std::env::join_paths(&self.settings.bin_dirs)
            .map_err(|e| Error::InvalidArgument(format!("CNI bin dirs: {e}")))?;
        let mut child = Command::new(&bin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &at.container_id)
            .env(
                "CNI_NETNS",
                at.netns.as_deref().map(Path::as_os_str).unwrap_or_default(),
            )
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_ARGS", args.join(";"))
            .env("CNI_PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(Error::io("run CNI plugin", &bin))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&serde_json::to_vec(&conf).unwrap_or_default());
        }
        let out = wait_bounded(child, PLUGIN_TIMEOUT)
            .map_err(|e| cni_err(&kind, command, &net.name, format!("{e}")))?;
        let stdout: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if !out.status.success() {
            let msg = match (stdout["msg"].as_str(), stdout["details"].as_str()) {
                (Some(m), Some(d)) if !d.is_empty() => format!("{m}: {d}"),
                (Some(m), _) => m.to_owned(),
                _ => {
                    let err = String::from_utf8_lossy(&out.stderr);
                    let text = String::from_utf8_lossy(&out.stdout);
                    format!("{} {}", text.trim(), err.trim()).trim().to_owned()
                }
            };
            return Err(cni_err(&kind, command, &net.name, msg));
        }
        Ok(stdout)
    }
}

fn wait_bounded(
    mut child: std::process::Child,
    limit: Duration,
) -> std::io::Result<std::process::Output> {
    let start = std::time::Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return child.wait_with_output();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other(format!(
                "did not finish within {limit:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A `.conflist` as it is, or a single plugin's `.conf` as a list of one.
pub fn parse_network(bytes: &[u8], file: &Path) -> Result<Network> {
    let bad = |why: String| {
        Error::InvalidArgument(format!("CNI configuration {}: {why}", file.display()))
    };
    let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let name = v["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad("no network name".into()))?
        .to_owned();
    let cni_version = v["cniVersion"].as_str().unwrap_or("0.4.0").to_owned();
    let plugins = match v["plugins"].as_array() {
        Some(p) => p.clone(),
        None if v["type"].is_string() => vec![v.clone()],
        None => return Err(bad("neither \"plugins\" nor a plugin \"type\"".into())),
    };
    if plugins.is_empty() {
        return Err(bad("no plugins".into()));
    }
    let raw = json!({"cniVersion": cni_version, "name": name, "plugins": plugins});
    Ok(Network {
        name,
        cni_version,
        plugins,
        file: file.to_owned(),
        raw,
    })
}

/// The pod's addresses from a result: those on `eth0` (the sandbox side) first, without
/// their prefix length.
pub fn pod_ips(result: &Value) -> Vec<String> {
    let ifaces = result["interfaces"].as_array().cloned().unwrap_or_default();
    let mut first = Vec::new();
    let mut rest = Vec::new();
    for ip in result["ips"].as_array().into_iter().flatten() {
        let Some(addr) = ip["address"].as_str() else {
            continue;
        };
        let addr = addr.split('/').next().unwrap_or(addr).to_owned();
        let on_eth0 = ip["interface"]
            .as_u64()
            .and_then(|i| ifaces.get(i as usize))
            .is_some_and(|i| i["name"] == IFNAME);
        if on_eth0 {
            first.push(addr);
        } else {
            rest.push(addr);
        }
    }
    // IPv4 before IPv6, as the kubelet takes the first as the pod IP.
    first.sort_by_key(|a| a.contains(':'));
    first.extend(rest);
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_plugin_configs_become_lists_and_bad_ones_are_named() {
        let p = Path::new("/etc/cni/net.d/10-x.conf");
        let n = parse_network(br#"{"cniVersion":"1.0.0","name":"x","type":"bridge"}"#, p).unwrap();
        assert_eq!(n.plugins.len(), 1);
        assert_eq!(n.name, "x");
        for bad in [
            &b"{"[..],
            br#"{"name":"x"}"#,
            br#"{"type":"bridge"}"#,
            br#"{"name":"x","plugins":[]}"#,
        ] {
            let e = parse_network(bad, p).unwrap_err();
            assert!(e.to_string().contains("10-x.conf"), "{e}");
        }
    }

    #[test]
    fn a_template_becomes_the_network_for_the_pod_cidr() {
        let t = tempfile::tempdir().unwrap();
        let template = t.path().join("template.json");
        std::fs::write(
            &template,
            r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge","ipam":{"type":"host-local","ranges":[[{"subnet":"{{.PodCIDR}}"}]]},"all":{{.PodCIDRRanges}}}]}"#,
        )
        .unwrap();
        let cni = Cni::new(CniSettings {
            conf_dir: t.path().join("net.d"),
            bin_dirs: vec![],
            cache_dir: t.path().join("cache"),
            conf_template: Some(template),
        });
        let file = cni
            .apply_pod_cidr("10.244.1.0/24, fd00:1::/64")
            .unwrap()
            .unwrap();
        assert!(file.ends_with(TEMPLATED_CONF));
        let net = cni.network().unwrap();
        assert_eq!(
            net.plugins[0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.1.0/24"
        );
        assert_eq!(
            net.plugins[0]["all"],
            json!(["10.244.1.0/24", "fd00:1::/64"])
        );
        for bad in ["", "10.244.1.0", "nonsense/24"] {
            let e = cni.apply_pod_cidr(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad}: {e}");
        }
        // The earlier file stays when a new CIDR is refused.
        assert_eq!(cni.network().unwrap().name, "k8s");
    }

    #[test]
    fn pod_ips_prefer_eth0_and_ipv4() {
        let r = json!({
            "interfaces": [{"name":"cni0"},{"name":"veth1"},{"name":"eth0","sandbox":"/x"}],
            "ips": [
                {"interface": 2, "address": "fd00::5/64"},
                {"interface": 2, "address": "10.88.0.5/16", "gateway": "10.88.0.1"},
                {"interface": 0, "address": "10.88.0.1/16"}
            ]
        });
        assert_eq!(pod_ips(&r), ["10.88.0.5", "fd00::5", "10.88.0.1"]);
        assert!(pod_ips(&json!({})).is_empty());
    }

    #[test]
    fn the_first_config_by_name_wins_and_changes_are_seen() {
        let t = tempfile::tempdir().unwrap();
        let conf = t.path().join("conf");
        std::fs::create_dir_all(&conf).unwrap();
        let cni = Cni::new(CniSettings {
            conf_dir: conf.clone(),
            bin_dirs: vec![t.path().join("bin")],
            cache_dir: t.path().join("cache"),
            conf_template: None,
        });
        assert!(cni
            .network()
            .unwrap_err()
            .to_string()
            .contains("no CNI configuration"));
        std::fs::write(
            conf.join("20-b.conflist"),
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(
            conf.join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        assert_eq!(cni.network().unwrap().name, "a");
        let e = cni.ready().unwrap_err();
        assert!(e.to_string().contains("\"bridge\""), "{e}");
        std::fs::remove_file(conf.join("10-a.conflist")).unwrap();
        assert_eq!(cni.network().unwrap().name, "b");
    }
}
