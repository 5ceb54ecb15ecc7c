//! The OCI runtime spec of a container `berth run` makes: the image's defaults (entrypoint,
//! command, env, working directory, user) under the flags Docker users give, with berth's
//! secure defaults (containerd's capabilities, the default seccomp profile, no_new_privs,
//! masked and read-only /proc paths) unless `--privileged` or `--security-opt` lifts them.

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::image::Resolved;
use berth_spec::users::Identity;

/// What the spec needs beyond the image: the parsed flags.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub id: String,
    pub namespace: String,
    pub command: Vec<String>,
    pub entrypoint: Option<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub identity: Identity,
    pub hostname: String,
    pub tty: bool,
    pub stdin: bool,
    pub read_only: bool,
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub seccomp: Seccomp,
    pub no_new_privileges: bool,
    pub memory: Option<i64>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    /// Extra mounts (binds, volumes, tmpfs, /etc files), in the spec's form.
    pub mounts: Vec<Value>,
    /// A network namespace to join (a path), none for the host's, or a new one.
    pub network: NetworkNs,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum Seccomp {
    #[default]
    Default,
    Unconfined,
    Profile(Value),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum NetworkNs {
    /// The host's network.
    Host,
    /// A new namespace of the container's own.
    #[default]
    New,
    /// A namespace made beforehand (a bind-mounted path).
    Path(String),
}

/// The process arguments by Docker's rules: `--entrypoint` replaces the image's entrypoint
/// (an empty one clears it, and the image's command with it); a command replaces the
/// image's command.
pub fn process_args(o: &Options, image: &Resolved) -> Result<Vec<String>> {
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (entrypoint, image_cmd) = match &o.entrypoint {
        Some(e) if e.is_empty() => (Vec::new(), Vec::new()),
        Some(e) => (vec![e.clone()], Vec::new()),
        None => (
            strings(image.config_field("Entrypoint")),
            strings(image.config_field("Cmd")),
        ),
    };
    let mut argv = entrypoint;
    if o.command.is_empty() {
        argv.extend(image_cmd);
    } else {
        argv.extend(o.command.iter().cloned());
    }
    if argv.is_empty() {
        return Err(Error::Invalid(format!(
            "no command specified: image {} has no entrypoint or command; give one after the image",
            crate::reference::familiar_name(&image.name)
        )));
    }
    Ok(argv)
}

/// PATH, HOSTNAME and TERM first, then the image's, then the flags' (later wins).
pub fn environment(o: &Options, image: &Resolved) -> Vec<String> {
    let mut out: Vec<(String, String)> = vec![(
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    )];
    let mut set = |kv: &str| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match out.iter_mut().find(|(x, _)| x == k) {
            Some(e) => e.1 = v.to_owned(),
            None => out.push((k.to_owned(), v.to_owned())),
        }
    };
    set(&format!("HOSTNAME={}", o.hostname));
    if o.tty {
        set("TERM=xterm");
    }
    for e in image
        .config_field("Env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        set(e);
    }
    for e in &o.env {
        set(e);
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

pub fn capabilities(o: &Options) -> Vec<String> {
    if o.privileged {
        berth_spec::caps::all()
    } else {
        berth_spec::caps::with_changes(&o.cap_add, &o.cap_drop)
    }
}

/// The process of the spec, with the capabilities `capabilities(o)` gave.
fn process(o: &Options, image: &Resolved, caps: &[String]) -> Result<Value> {
    let cwd = match (
        &o.workdir,
        image.config_field("WorkingDir").and_then(Value::as_str),
    ) {
        (Some(w), _) if !w.is_empty() => w.clone(),
        (_, Some(w)) if !w.is_empty() => w.to_owned(),
        _ => "/".to_owned(),
    };
    if !cwd.starts_with('/') {
        return Err(Error::Invalid(format!(
            "the working directory {cwd:?} is not an absolute path"
        )));
    }
    let mut user = json!({"uid": o.identity.uid, "gid": o.identity.gid});
    if !o.identity.additional_gids.is_empty() {
        user["additionalGids"] = json!(o.identity.additional_gids);
    }
    Ok(json!({
        "terminal": o.tty,
        "user": user,
        "args": process_args(o, image)?,
        "env": environment(o, image),
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": o.no_new_privileges && !o.privileged,
    }))
}

fn resources(o: &Options) -> Value {
    let mut r = json!({});
    if !o.privileged {
        r["devices"] = berth_spec::linux::deny_devices();
    } else {
        r["devices"] = json!([{"allow": true, "access": "rwm"}]);
    }
    if let Some(m) = o.memory {
        r["memory"] = json!({"limit": m, "swap": m});
    }
    if let Some(c) = o.cpus {
        let period = 100_000u64;
        r["cpu"] = json!({"quota": (c * period as f64).round() as i64, "period": period});
    }
    if let Some(p) = o.pids_limit {
        r["pids"] = json!({"limit": p});
    }
    r
}

/// The whole spec.
pub fn container_spec(o: &Options, image: &Resolved) -> Result<Value> {
    let caps = capabilities(o);
    let mut mounts = berth_spec::linux::system_mounts(o.privileged);
    mounts.push(berth_spec::linux::shm_mount());
    // Later mounts of the same destination win, as Docker's do.
    for m in &o.mounts {
        let dest = &m["destination"];
        mounts.retain(|x| x["destination"] != *dest);
        mounts.push(m.clone());
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    match &o.network {
        NetworkNs::Host => {}
        NetworkNs::New => namespaces.push(json!({"type": "network"})),
        NetworkNs::Path(p) => namespaces.push(json!({"type": "network", "path": p})),
    }
    let mut linux = json!({
        "resources": resources(o),
        "cgroupsPath": format!("/{}/{}", o.namespace, o.id),
        "namespaces": namespaces,
    });
    if !o.privileged {
        linux["maskedPaths"] = json!(berth_spec::linux::MASKED_PATHS);
        linux["readonlyPaths"] = json!(berth_spec::linux::READONLY_PATHS);
        match &o.seccomp {
            Seccomp::Default => linux["seccomp"] = berth_spec::seccomp::default_profile(&caps),
            Seccomp::Unconfined => {}
            Seccomp::Profile(p) => linux["seccomp"] = p.clone(),
        }
    }
    Ok(json!({
        "ociVersion": "1.1.0",
        "process": process(o, image, &caps)?,
        "root": {"path": "rootfs", "readonly": o.read_only},
        "hostname": o.hostname,
        "mounts": mounts,
        "linux": linux,
    }))
}

/// `32m`, `1g`, `512k`, `1048576` (bytes) as Docker reads `--memory`.
pub fn parse_bytes(s: &str) -> Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)
        .ok_or_else(|| {
            Error::Invalid(format!("invalid size {s:?}: use a number with k, m or g"))
        })?;
    Ok((n * mult as f64) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entrypoint: Value, cmd: Value) -> Resolved {
        Resolved {
            name: "docker.io/library/busybox:latest".into(),
            target: String::new(),
            manifest: String::new(),
            config_digest: String::new(),
            config: json!({"config": {"Entrypoint": entrypoint, "Cmd": cmd, "Env": ["A=1", "PATH=/bin"]}}),
            layers: vec![],
            chain_ids: vec![],
        }
    }

    fn opts(command: &[&str]) -> Options {
        Options {
            id: "c1".into(),
            namespace: "default".into(),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            hostname: "h".into(),
            no_new_privileges: true,
            ..Default::default()
        }
    }

    #[test]
    fn args_follow_docker() {
        let img = image(json!(["/entry"]), json!(["default"]));
        assert_eq!(
            process_args(&opts(&[]), &img).unwrap(),
            ["/entry", "default"]
        );
        assert_eq!(process_args(&opts(&["x"]), &img).unwrap(), ["/entry", "x"]);
        let mut o = opts(&["-c", "y"]);
        o.entrypoint = Some("/bin/sh".into());
        assert_eq!(process_args(&o, &img).unwrap(), ["/bin/sh", "-c", "y"]);
        o.entrypoint = Some(String::new());
        o.command = vec![];
        assert!(process_args(&o, &img)
            .unwrap_err()
            .to_string()
            .contains("no command"));
    }

    #[test]
    fn env_is_path_hostname_image_then_flags() {
        let img = image(Value::Null, json!(["sh"]));
        let mut o = opts(&[]);
        o.env = vec!["A=2".into(), "B".into()];
        assert_eq!(
            environment(&o, &img),
            ["PATH=/bin", "HOSTNAME=h", "A=2", "B="]
        );
    }

    #[test]
    fn secure_by_default_and_privileged_lifts_it() {
        let img = image(Value::Null, json!(["sh"]));
        let s = container_spec(&opts(&[]), &img).unwrap();
        assert_eq!(s["process"]["noNewPrivileges"], true);
        assert!(s["linux"]["seccomp"]["syscalls"].is_array());
        assert!(s["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .contains(&json!("/proc/kcore")));
        assert_eq!(s["linux"]["resources"]["devices"][0]["allow"], false);
        let caps = s["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(!caps.contains(&json!("CAP_SYS_ADMIN")));
        let mut o = opts(&[]);
        o.privileged = true;
        let p = container_spec(&o, &img).unwrap();
        assert!(p["linux"]["seccomp"].is_null() && p["linux"]["maskedPaths"].is_null());
        assert_eq!(p["process"]["noNewPrivileges"], false);
        assert!(p["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .contains(&json!("CAP_SYS_ADMIN")));
    }

    #[test]
    fn limits_reach_the_cgroup() {
        let img = image(Value::Null, json!(["sh"]));
        let mut o = opts(&[]);
        o.memory = Some(parse_bytes("32m").unwrap());
        o.cpus = Some(0.5);
        o.pids_limit = Some(64);
        let s = container_spec(&o, &img).unwrap();
        let r = &s["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], 32 << 20);
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert_eq!(r["pids"]["limit"], 64);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("512").unwrap(), 512);
        assert!(parse_bytes("lots").is_err() && parse_bytes("-1m").is_err());
    }
}
