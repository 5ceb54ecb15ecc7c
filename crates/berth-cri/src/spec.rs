//! The OCI runtime spec of a CRI container: the image's defaults (entrypoint, command, env,
//! working directory, user) under what the kubelet asks (command and args, env, mounts,
//! devices, resources, security context), in its pod's namespaces and cgroup parent.
//! Secure by default: containerd's default capabilities, berth's seccomp profile unless the
//! kubelet asks for another or none, masked and read-only /proc paths as the kubelet sends
//! them; `privileged` lifts all of it.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_cri::v1::{
    security_profile::ProfileType, ContainerConfig, LinuxContainerResources,
    LinuxContainerSecurityContext, MountPropagation, NamespaceOption, SecurityProfile,
};
use oci_spec::image::ImageConfiguration;
use serde_json::{json, Value};

use berth_spec::{caps, seccomp};

use crate::error::{Error, Result};
use crate::store::SandboxRecord;
use crate::users::Identity;

/// The capabilities after the security context's add and drop (add first, "ALL" in
/// either), or every capability for a privileged container.
pub fn capabilities(sc: Option<&LinuxContainerSecurityContext>) -> Vec<String> {
    match sc {
        Some(sc) if sc.privileged => caps::all(),
        Some(sc) => match &sc.capabilities {
            Some(c) => caps::with_changes(&c.add_capabilities, &c.drop_capabilities),
            None => caps::with_changes(&[], &[]),
        },
        None => caps::with_changes(&[], &[]),
    }
}

/// The process arguments by Docker's rules: a command replaces the image's entrypoint and
/// command; args alone replace only the command.
pub fn process_args(config: &ContainerConfig, image: &ImageConfiguration) -> Result<Vec<String>> {
    let ic = image.config().clone().unwrap_or_default();
    let entrypoint = ic.entrypoint().clone().unwrap_or_default();
    let cmd = ic.cmd().clone().unwrap_or_default();
    let mut argv = if !config.command.is_empty() {
        let mut v = config.command.clone();
        v.extend(config.args.iter().cloned());
        v
    } else {
        let mut v: Vec<String> = entrypoint.into_iter().filter(|e| !e.is_empty()).collect();
        if config.args.is_empty() {
            v.extend(cmd);
        } else {
            v.extend(config.args.iter().cloned());
        }
        v
    };
    argv.retain(|_| true);
    if argv.is_empty() {
        return Err(Error::InvalidArgument(
            "no command specified: the container config and its image give none".into(),
        ));
    }
    Ok(argv)
}

fn env(config: &ContainerConfig, image: &ImageConfiguration, hostname: &str) -> Vec<String> {
    let mut out: Vec<(String, String)> = vec![(
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    )];
    let mut set = |k: &str, v: &str| match out.iter_mut().find(|(x, _)| x == k) {
        Some(e) => e.1 = v.to_owned(),
        None => out.push((k.to_owned(), v.to_owned())),
    };
    set("HOSTNAME", hostname);
    for e in image
        .config()
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default()
    {
        let (k, v) = e.split_once('=').unwrap_or((&e, ""));
        set(k, v);
    }
    for kv in &config.envs {
        set(&kv.key, &kv.value);
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The user string the container asks for: the security context's name, uid and group,
/// else the image's `User`.
pub fn user_string(
    sc: Option<&LinuxContainerSecurityContext>,
    image: &ImageConfiguration,
) -> Result<String> {
    let image_user = image
        .config()
        .as_ref()
        .and_then(|c| c.user().clone())
        .unwrap_or_default();
    let Some(sc) = sc else {
        return Ok(image_user);
    };
    let user = if !sc.run_as_username.is_empty() {
        sc.run_as_username.clone()
    } else if let Some(u) = &sc.run_as_user {
        u.value.to_string()
    } else {
        String::new()
    };
    match (&sc.run_as_group, user.is_empty()) {
        (Some(g), false) => Ok(format!("{user}:{}", g.value)),
        (Some(_), true) => Err(Error::InvalidArgument(
            "run_as_group needs run_as_user or run_as_username".into(),
        )),
        (None, false) => Ok(user),
        (None, true) => Ok(image_user),
    }
}

fn seccomp(sc: Option<&LinuxContainerSecurityContext>, caps: &[String]) -> Result<Option<Value>> {
    let profile: Option<SecurityProfile> = sc.and_then(|s| s.seccomp.clone());
    if sc.is_some_and(|s| s.privileged) {
        return Ok(None);
    }
    match profile {
        // Nothing asked: berth's default, as the brief requires of every container.
        None => Ok(Some(seccomp::default_profile(caps))),
        Some(p) => match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(Some(seccomp::default_profile(caps))),
            Ok(ProfileType::Unconfined) => Ok(None),
            Ok(ProfileType::Localhost) => {
                let path = Path::new(&p.localhost_ref);
                if !path.is_absolute() {
                    return Err(Error::InvalidArgument(format!(
                        "seccomp profile {:?} must be an absolute path",
                        p.localhost_ref
                    )));
                }
                let bytes = std::fs::read(path).map_err(|e| {
                    Error::InvalidArgument(format!("seccomp profile {}: {e}", path.display()))
                })?;
                let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::InvalidArgument(format!("seccomp profile {}: {e}", path.display()))
                })?;
                Ok(Some(v))
            }
            Err(_) => Err(Error::InvalidArgument(format!(
                "unknown seccomp profile type {}",
                p.profile_type
            ))),
        },
    }
}

/// The cgroup a container goes in: `parent/id` with cgroupfs, `parent:cri-berth:id` with
/// the systemd driver (a parent that is a `.slice`).
pub fn cgroup_path(parent: &str, id: &str) -> String {
    let base = parent.rsplit('/').next().unwrap_or(parent);
    if base.ends_with(".slice") {
        format!("{base}:cri-berth:{id}")
    } else if parent.is_empty() {
        format!("/k8s.io/{id}")
    } else {
        format!("{}/{id}", parent.trim_end_matches('/'))
    }
}

pub fn resources(r: &LinuxContainerResources) -> Value {
    let mut out = serde_json::Map::new();
    let mut cpu = serde_json::Map::new();
    if r.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if r.cpu_quota != 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    if r.cpu_period > 0 {
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(r.cpuset_mems));
    }
    if !cpu.is_empty() {
        out.insert("cpu".into(), Value::Object(cpu));
    }
    if r.memory_limit_in_bytes > 0 {
        let mut m = json!({"limit": r.memory_limit_in_bytes});
        if r.memory_swap_limit_in_bytes > 0 {
            m["swap"] = json!(r.memory_swap_limit_in_bytes);
        }
        out.insert("memory".into(), m);
    }
    if !r.hugepage_limits.is_empty() {
        out.insert(
            "hugepageLimits".into(),
            json!(r
                .hugepage_limits
                .iter()
                .map(|h| json!({"pageSize": h.page_size, "limit": h.limit}))
                .collect::<Vec<_>>()),
        );
    }
    if !r.unified.is_empty() {
        out.insert("unified".into(), json!(r.unified));
    }
    Value::Object(out)
}

/// What a spec needs besides the CRI config.
pub struct Input<'a> {
    pub id: &'a str,
    /// For a PID namespace shared with another container: that container's process.
    pub target_pid: Option<u32>,
    pub config: &'a ContainerConfig,
    pub sandbox: &'a SandboxRecord,
    pub image: &'a ImageConfiguration,
    pub image_name: &'a str,
    pub identity: &'a Identity,
    /// The score the container's `oom_score_adj` is raised to when it asks for less.
    pub oom_floor: &'a crate::context::OomFloor,
}

fn ns(kind: &str, path: Option<&Path>) -> Value {
    match path {
        Some(p) => json!({"type": kind, "path": p}),
        None => json!({"type": kind}),
    }
}

fn mode_of(opt: Option<&NamespaceOption>, f: fn(&NamespaceOption) -> i32) -> i32 {
    opt.map(f).unwrap_or(0)
}

/// The spec, as JSON (checked against the OCI types), and the container's cgroup path.
pub fn container_spec(i: &Input<'_>) -> Result<(Vec<u8>, String)> {
    let lc = i.config.linux.clone().unwrap_or_default();
    let sc = lc.security_context.as_ref();
    let pod = &i.sandbox.config;
    let pod_linux = pod.linux.clone().unwrap_or_default();
    let pod_sc = pod_linux.security_context.clone().unwrap_or_default();
    let pod_ns = pod_sc.namespace_options.clone();
    if sc.is_some_and(|s| s.privileged) && !pod_sc.privileged {
        return Err(Error::InvalidArgument(format!(
            "container {:?} asks to be privileged in pod {:?}, which is not",
            i.id, i.sandbox.id
        )));
    }
    let privileged = sc.is_some_and(|s| s.privileged);
    let caps = capabilities(sc);
    let args = process_args(i.config, i.image)?;
    let hostname = if pod.hostname.is_empty() {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    } else {
        pod.hostname.clone()
    };
    let cwd = match (
        &i.config.working_dir,
        i.image
            .config()
            .as_ref()
            .and_then(|c| c.working_dir().clone()),
    ) {
        (w, _) if !w.is_empty() => w.clone(),
        (_, Some(w)) if !w.is_empty() => w,
        _ => "/".to_owned(),
    };

    // Mounts: the system's, the pod's files, then the kubelet's (which win).
    let mut mounts: Vec<Value> = berth_spec::linux::system_mounts(privileged);
    match &i.sandbox.shm {
        Some(shm) => mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": shm, "options": ["rbind", "rprivate", "rw"]})),
        None => mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": "/dev/shm", "options": ["rbind", "rprivate", "rw"]})),
    }
    let readonly_rootfs = sc.is_some_and(|s| s.readonly_rootfs);
    let asked: Vec<&str> = i
        .config
        .mounts
        .iter()
        .map(|m| m.container_path.as_str())
        .collect();
    for f in ["hostname", "hosts", "resolv.conf"] {
        let dest = format!("/etc/{f}");
        if !asked.contains(&dest.as_str()) {
            mounts.push(
                json!({"destination": dest, "type": "bind", "source": i.sandbox.files.join(f),
                "options": ["rbind", "rprivate", if readonly_rootfs { "ro" } else { "rw" }]}),
            );
        }
    }
    let mut user_mounts = i.config.mounts.clone();
    user_mounts.sort_by_key(|m| m.container_path.matches('/').count());
    let mut rootfs_propagation = None;
    for m in &user_mounts {
        if m.container_path.is_empty() || !m.container_path.starts_with('/') {
            return Err(Error::InvalidArgument(format!(
                "mount into {:?} is not an absolute path",
                m.container_path
            )));
        }
        let src = Path::new(&m.host_path);
        if !src.exists() {
            std::fs::create_dir_all(src).map_err(Error::io("create mount source", src))?;
        }
        let propagation = match MountPropagation::try_from(m.propagation) {
            Ok(MountPropagation::PropagationHostToContainer) => {
                rootfs_propagation.get_or_insert("rslave");
                "rslave"
            }
            Ok(MountPropagation::PropagationBidirectional) => {
                rootfs_propagation = Some("rshared");
                "rshared"
            }
            _ => "rprivate",
        };
        mounts.retain(|x| x["destination"] != m.container_path.as_str());
        if m.container_path == "/dev" {
            mounts.retain(|x| !x["destination"].as_str().unwrap_or("").starts_with("/dev/"));
        }
        mounts.push(
            json!({"destination": m.container_path, "type": "bind", "source": m.host_path,
            "options": ["rbind", propagation, if m.readonly { "ro" } else { "rw" }]}),
        );
    }

    // Namespaces: the pod's network, IPC and UTS; a PID namespace of its own unless the
    // pod shares the host's.
    let mut namespaces = vec![ns("mount", None)];
    let net = i.sandbox.namespaces.net.as_deref();
    let ipc = i.sandbox.namespaces.ipc.as_deref();
    let uts = i.sandbox.namespaces.uts.as_deref();
    if let Some(p) = net {
        namespaces.push(ns("network", Some(p)));
    }
    if let Some(p) = ipc {
        namespaces.push(ns("ipc", Some(p)));
    }
    if let Some(p) = uts {
        namespaces.push(ns("uts", Some(p)));
    }
    let pid_mode = sc
        .and_then(|s| s.namespace_options.as_ref())
        .map(|o| o.pid)
        .unwrap_or_else(|| mode_of(pod_ns.as_ref(), |o| o.pid));
    // NamespaceMode: POD=0, CONTAINER=1, NODE=2, TARGET=3.
    match pid_mode {
        2 => {}
        0 => {
            let holder = i.sandbox.pid_holder.ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "container {:?} shares the PID namespace of pod {:?}, which has none",
                    i.id, i.sandbox.id
                ))
            })?;
            namespaces.push(ns(
                "pid",
                Some(Path::new(&format!("/proc/{holder}/ns/pid"))),
            ));
        }
        3 => {
            let pid = i.target_pid.ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "container {:?} shares the PID namespace of a container that is not running",
                    i.id
                ))
            })?;
            namespaces.push(ns("pid", Some(Path::new(&format!("/proc/{pid}/ns/pid")))));
        }
        _ => namespaces.push(ns("pid", None)),
    }

    let cgroup = cgroup_path(&pod_linux.cgroup_parent, i.id);
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": cgroup,
        "resources": {"devices": [{"allow": privileged, "access": "rwm"}]},
    });
    if let Some(r) = &lc.resources {
        let mut res = resources(r);
        res["devices"] = linux["resources"]["devices"].clone();
        linux["resources"] = res;
    }
    if !privileged {
        let (masked, ro) = sc
            .map(|s| (s.masked_paths.clone(), s.readonly_paths.clone()))
            .unwrap_or_default();
        linux["maskedPaths"] = json!(masked);
        linux["readonlyPaths"] = json!(ro);
        if let Some(profile) = seccomp(sc, &caps)? {
            linux["seccomp"] = profile;
        }
    }
    if !pod_linux.sysctls.is_empty() {
        linux["sysctl"] = json!(pod_linux.sysctls.iter().collect::<BTreeMap<_, _>>());
    }
    if let Some(p) = rootfs_propagation {
        linux["rootfsPropagation"] = json!(p);
    }
    let mut devices = Vec::new();
    let mut allow = Vec::new();
    for d in &i.config.devices {
        let node = device_node(&d.host_path, &d.container_path)?;
        allow.push(json!({"allow": true, "type": node["type"], "major": node["major"],
                          "minor": node["minor"], "access": if d.permissions.is_empty() { "rwm" } else { d.permissions.as_str() }}));
        devices.push(node);
    }
    if !devices.is_empty() {
        linux["devices"] = json!(devices);
        if let Some(list) = linux["resources"]["devices"].as_array_mut() {
            list.extend(allow);
        }
    }

    let oom = i
        .oom_floor
        .clamp(lc.resources.as_ref().map(|r| r.oom_score_adj).unwrap_or(0));
    let mut process = json!({
        "terminal": i.config.tty,
        "user": {"uid": i.identity.uid, "gid": i.identity.gid},
        "args": args,
        "env": env(i.config, i.image, &hostname),
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "noNewPrivileges": sc.is_some_and(|s| s.no_new_privs) && !privileged,
    });
    if !i.identity.additional_gids.is_empty() {
        process["user"]["additionalGids"] = json!(i.identity.additional_gids);
    }
    // Always set: left out, the container would take its shim's score.
    process["oomScoreAdj"] = json!(oom);
    let meta = pod.metadata.clone().unwrap_or_default();
    let cname = i.config.metadata.clone().unwrap_or_default().name;
    let mut annotations: BTreeMap<String, String> = i
        .config
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in [
        ("io.kubernetes.cri.container-type", "container"),
        ("io.kubernetes.cri.sandbox-id", i.sandbox.id.as_str()),
        ("io.kubernetes.cri.sandbox-name", meta.name.as_str()),
        (
            "io.kubernetes.cri.sandbox-namespace",
            meta.namespace.as_str(),
        ),
        ("io.kubernetes.cri.sandbox-uid", meta.uid.as_str()),
        ("io.kubernetes.cri.container-name", cname.as_str()),
        ("io.kubernetes.cri.image-name", i.image_name),
    ] {
        annotations.insert(k.to_owned(), v.to_owned());
    }
    let spec = json!({
        "ociVersion": "1.1.0",
        "process": process,
        "root": {"path": "rootfs", "readonly": readonly_rootfs},
        "mounts": mounts,
        "annotations": annotations,
        "linux": linux,
    });
    // Checked against the OCI types before any runtime sees it.
    serde_json::from_value::<oci_spec::runtime::Spec>(spec.clone()).map_err(|e| {
        Error::InvalidArgument(format!(
            "the spec of container {:?} is not valid: {e}",
            i.id
        ))
    })?;
    let bytes = serde_json::to_vec(&spec)
        .map_err(|e| Error::InvalidArgument(format!("encode spec of {:?}: {e}", i.id)))?;
    Ok((bytes, cgroup))
}

/// A device node for the spec, from the host's node.
fn device_node(host: &str, container: &str) -> Result<Value> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let md = std::fs::metadata(host)
        .map_err(|e| Error::InvalidArgument(format!("device {host:?}: {e}")))?;
    let ft = md.file_type();
    let kind = if ft.is_char_device() {
        "c"
    } else if ft.is_block_device() {
        "b"
    } else {
        return Err(Error::InvalidArgument(format!(
            "device {host:?} is not a device node"
        )));
    };
    let rdev = md.rdev();
    Ok(json!({
        "path": if container.is_empty() { host } else { container },
        "type": kind,
        "major": rustix::fs::major(rdev),
        "minor": rustix::fs::minor(rdev),
        "fileMode": md.mode() & 0o7777,
        "uid": md.uid(),
        "gid": md.gid(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::Capability;

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageConfiguration {
        serde_json::from_value(json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": entrypoint, "Cmd": cmd, "Env": ["A=1", "PATH=/bin"], "User": "app"},
            "rootfs": {"type": "layers", "diff_ids": []},
        }))
        .unwrap()
    }

    fn cfg(command: &[&str], args: &[&str]) -> ContainerConfig {
        ContainerConfig {
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn args_follow_docker() {
        let img = image(&["/entry"], &["default"]);
        assert_eq!(
            process_args(&cfg(&[], &[]), &img).unwrap(),
            ["/entry", "default"]
        );
        assert_eq!(
            process_args(&cfg(&[], &["x"]), &img).unwrap(),
            ["/entry", "x"]
        );
        assert_eq!(
            process_args(&cfg(&["/bin/sh"], &["-c", "y"]), &img).unwrap(),
            ["/bin/sh", "-c", "y"]
        );
        let empty = image(&[], &[]);
        let e = process_args(&cfg(&[], &[]), &empty).unwrap_err();
        assert!(e.to_string().contains("no command"), "{e}");
    }

    #[test]
    fn env_has_path_hostname_then_image_then_config() {
        let mut c = cfg(&[], &[]);
        c.envs = vec![k8s_cri::v1::KeyValue {
            key: "A".into(),
            value: "2".into(),
        }];
        let e = env(&c, &image(&[], &["x"]), "h");
        assert_eq!(e, ["PATH=/bin", "HOSTNAME=h", "A=2"]);
    }

    #[test]
    fn capabilities_add_then_drop() {
        let sc = LinuxContainerSecurityContext {
            capabilities: Some(Capability {
                add_capabilities: vec!["net_admin".into()],
                drop_capabilities: vec!["CAP_NET_RAW".into(), "kill".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let caps = capabilities(Some(&sc));
        assert!(caps.contains(&"CAP_NET_ADMIN".to_owned()));
        assert!(
            !caps.contains(&"CAP_NET_RAW".to_owned()) && !caps.contains(&"CAP_KILL".to_owned())
        );
        assert_eq!(capabilities(None).len(), 14);
        let all = LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        };
        assert!(capabilities(Some(&all)).contains(&"CAP_SYS_ADMIN".to_owned()));
    }

    #[test]
    fn users_come_from_the_context_then_the_image() {
        let img = image(&[], &["x"]);
        assert_eq!(user_string(None, &img).unwrap(), "app");
        let sc = LinuxContainerSecurityContext {
            run_as_user: Some(k8s_cri::v1::Int64Value { value: 1000 }),
            run_as_group: Some(k8s_cri::v1::Int64Value { value: 3 }),
            ..Default::default()
        };
        assert_eq!(user_string(Some(&sc), &img).unwrap(), "1000:3");
        let bad = LinuxContainerSecurityContext {
            run_as_group: Some(k8s_cri::v1::Int64Value { value: 3 }),
            ..Default::default()
        };
        assert!(user_string(Some(&bad), &img).is_err());
    }

    #[test]
    fn cgroup_paths_follow_the_driver() {
        assert_eq!(
            cgroup_path("/kubepods/besteffort/pod1", "c"),
            "/kubepods/besteffort/pod1/c"
        );
        assert_eq!(
            cgroup_path("kubepods-pod1.slice", "c"),
            "kubepods-pod1.slice:cri-berth:c"
        );
        assert_eq!(cgroup_path("", "c"), "/k8s.io/c");
    }

    #[test]
    fn a_missing_localhost_seccomp_profile_is_named() {
        let sc = LinuxContainerSecurityContext {
            seccomp: Some(SecurityProfile {
                profile_type: ProfileType::Localhost as i32,
                localhost_ref: "/nonexistent/profile.json".into(),
            }),
            ..Default::default()
        };
        let e = seccomp(Some(&sc), &[]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/profile.json"), "{e}");
        assert!(
            seccomp(None, &[]).unwrap().is_some(),
            "the default is confined"
        );
    }
}
