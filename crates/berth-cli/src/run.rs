//! `berth create`, `run` and `start`: the image found (pulled when missing, as Docker
//! does), the container's network, files and snapshot made under a lease, its record
//! created with the spec, then its task created with the output going to the json-file
//! logger (or to fifos while attached with `-i`/`-t`), started, and — in the foreground —
//! followed to its exit, whose code becomes ours.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{MountsRequest, PrepareSnapshotRequest};
use containerd_client::services::v1::{
    CloseIoRequest, Container, CreateContainerRequest, CreateRequest as CreateLeaseRequest,
    CreateTaskRequest, DeleteRequest as DeleteLeaseRequest, ResizePtyRequest, StartRequest,
    WaitRequest,
};
use containerd_client::types::Mount;
use serde_json::json;
use tonic::Code;

use crate::client::{json_any, Client, SNAPSHOTTER, SPEC_TYPE};
use crate::containers::{
    self, LABEL_LOG, LABEL_NAME, LABEL_NETWORK, LABEL_PORTS, LABEL_STATE_DIR, LABEL_STDIN,
    LABEL_STOP_SIGNAL, LABEL_TTY,
};
use crate::error::{command_failure, Error, Result};
use crate::image::{self, Resolved};
use crate::network::{self, Mode, Networks, PortMapping};
use crate::spec::{self, NetworkNs, Options, Seccomp};
use crate::volumes;
use crate::Context;

/// berth's own shim, berthd's default runtime.
pub const DEFAULT_RUNTIME: &str = "io.containerd.berth.v2";

#[derive(clap::Args, Debug, Clone, Default)]
pub struct CreateArgs {
    /// Keep STDIN open
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Assign a name to the container
    #[arg(long)]
    pub name: Option<String>,
    /// Set environment variables (KEY=VALUE, or KEY to take it from here)
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Read in a file of environment variables
    #[arg(long = "env-file")]
    pub env_file: Vec<PathBuf>,
    /// Publish a container's port to the host ([IP:]HOST:CONTAINER[/PROTO])
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Publish all exposed ports to free host ports
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// Bind mount a volume (HOST:CTR[:ro], NAME:CTR[:ro] or CTR)
    #[arg(short = 'v', long = "volume")]
    pub volume: Vec<String>,
    /// Attach a filesystem mount (type=bind|volume|tmpfs,source=…,target=…[,readonly])
    #[arg(long)]
    pub mount: Vec<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Overwrite the default ENTRYPOINT of the image
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Container host name
    #[arg(short = 'h', long)]
    pub hostname: Option<String>,
    /// Connect a container to a network (bridge, host, none or a network's name)
    #[arg(long, alias = "net", default_value = "bridge")]
    pub network: String,
    /// Memory limit (e.g. 32m, 1g)
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// Number of CPUs
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Tune container pids limit (-1 for unlimited)
    #[arg(long = "pids-limit", allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// Mount the container's root filesystem as read only
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Add Linux capabilities
    #[arg(long = "cap-add")]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities
    #[arg(long = "cap-drop")]
    pub cap_drop: Vec<String>,
    /// Give extended privileges to this container
    #[arg(long)]
    pub privileged: bool,
    /// Security options (seccomp=unconfined|PROFILE.json, no-new-privileges[=false])
    #[arg(long = "security-opt")]
    pub security_opt: Vec<String>,
    /// Signal to stop the container
    #[arg(long = "stop-signal")]
    pub stop_signal: Option<String>,
    /// Set metadata on a container (KEY=VALUE)
    #[arg(short = 'l', long = "label")]
    pub label: Vec<String>,
    /// Runtime to use for this container
    #[arg(long)]
    pub runtime: Option<String>,
    /// Automatically remove the container when it exits
    #[arg(long)]
    pub rm: bool,
    /// Restart policy: no, always, unless-stopped, on-failure[:N] (kept by berthd)
    #[arg(long, default_value = "no")]
    pub restart: String,
    /// Print help
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// The image, then the command and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "IMAGE [COMMAND] [ARG...]"
    )]
    pub image_and_command: Vec<String>,
}

#[derive(clap::Args, Debug, Clone)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// Run container in background and print container ID
    #[arg(short = 'd', long)]
    pub detach: bool,
    #[command(flatten)]
    pub create: CreateArgs,
}

/// Makes sure the image is here, pulling it (with progress on stderr) as Docker does.
pub async fn image_for_run(ctx: &Context, name: &str) -> Result<Resolved> {
    let client = &ctx.client;
    match image::find(client, name).await {
        Ok(i) => image::resolve(client, &i).await,
        Err(Error::NoSuchImage(_)) => {
            let r = crate::reference::Reference::parse(name)?;
            eprintln!("Unable to find image '{}' locally", r.familiar());
            let i = crate::commands::images::pull_with_progress(ctx, &r, false).await?;
            image::resolve(client, &i).await
        }
        Err(e) => Err(e),
    }
}

fn read_env_files(files: &[PathBuf]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f)
            .map_err(Error::io(format!("read env file {}", f.display())))?;
        for line in text.lines() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            out.push(l.to_owned());
        }
    }
    Ok(out)
}

/// `KEY` alone takes the value from our environment, or is dropped when unset (Docker).
fn expand_env(vars: Vec<String>) -> Vec<String> {
    vars.into_iter()
        .filter_map(|v| {
            if v.contains('=') {
                Some(v)
            } else {
                std::env::var(&v).ok().map(|val| format!("{v}={val}"))
            }
        })
        .collect()
}

fn security(args: &CreateArgs) -> Result<(Seccomp, bool)> {
    let mut seccomp = Seccomp::Default;
    let mut nnp = true;
    for o in &args.security_opt {
        let (k, v) = o.split_once(['=', ':']).unwrap_or((o, ""));
        match k {
            "seccomp" if v == "unconfined" => seccomp = Seccomp::Unconfined,
            "seccomp" if !v.is_empty() => {
                let text =
                    std::fs::read(v).map_err(Error::io(format!("read seccomp profile {v}")))?;
                let p = serde_json::from_slice(&text)
                    .map_err(|e| Error::Invalid(format!("seccomp profile {v}: {e}")))?;
                seccomp = Seccomp::Profile(p);
            }
            "no-new-privileges" => nnp = v.is_empty() || v == "true",
            _ => return Err(Error::Invalid(format!("invalid --security-opt {o:?}"))),
        }
    }
    Ok((seccomp, nnp))
}

fn ports(args: &CreateArgs, image: &Resolved) -> Result<Vec<PortMapping>> {
    let mut out = Vec::new();
    for p in &args.publish {
        let mut m = PortMapping::parse(p)?;
        if m.host_port == 0 {
            m.host_port = network::free_port(&m.protocol)?;
        }
        out.push(m);
    }
    if args.publish_all {
        if let Some(exposed) = image
            .config_field("ExposedPorts")
            .and_then(|v| v.as_object())
        {
            for k in exposed.keys() {
                let (port, proto) = k.split_once('/').unwrap_or((k, "tcp"));
                let Ok(container_port) = port.parse::<u16>() else {
                    continue;
                };
                if out
                    .iter()
                    .any(|m| m.container_port == container_port && m.protocol == proto)
                {
                    continue;
                }
                out.push(PortMapping {
                    host_ip: String::new(),
                    host_port: network::free_port(proto)?,
                    container_port,
                    protocol: proto.to_owned(),
                });
            }
        }
    }
    Ok(out)
}

/// The layer directories of a snapshot's mounts, topmost first.
fn layer_dirs(mounts: &[Mount]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for m in mounts {
        let opt = |k: &str| {
            m.options
                .iter()
                .find_map(|o| o.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .map(str::to_owned)
        };
        match m.r#type.as_str() {
            "bind" | "rbind" => out.push(PathBuf::from(&m.source)),
            "overlay" => {
                if let Some(u) = opt("upperdir") {
                    out.push(u.into());
                }
                if let Some(l) = opt("lowerdir") {
                    out.extend(l.split(':').map(PathBuf::from));
                }
            }
            _ => {}
        }
    }
    out
}

/// /etc/hostname, /etc/hosts and /etc/resolv.conf for the container, in its own directory.
fn etc_files(
    dir: &std::path::Path,
    hostname: &str,
    mode: &Mode,
    ips: &[String],
) -> Result<Vec<serde_json::Value>> {
    let write = |name: &str, text: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(Error::io(format!("write {}", p.display())))?;
        Ok(p)
    };
    let (hosts, resolv) = if *mode == Mode::Host {
        (
            std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
            std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        )
    } else {
        let mut hosts =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        for ip in ips {
            hosts.push_str(&format!("{ip}\t{hostname}\n"));
        }
        // The host's resolvers, but not those on its loopback, unreachable from the container.
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let mut resolv = String::new();
        let mut servers = 0;
        for l in host.lines() {
            let t = l.trim();
            if let Some(s) = t.strip_prefix("nameserver") {
                let s = s.trim();
                if s.starts_with("127.") || s == "::1" {
                    continue;
                }
                servers += 1;
            }
            resolv.push_str(l);
            resolv.push('\n');
        }
        if servers == 0 {
            resolv.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
        }
        (hosts, resolv)
    };
    let mut mounts = Vec::new();
    for (name, text) in [
        ("hostname", format!("{hostname}\n")),
        ("hosts", hosts),
        ("resolv.conf", resolv),
    ] {
        let p = write(name, &text)?;
        mounts.push(
            json!({"destination": format!("/etc/{name}"), "type": "bind",
            "source": p.display().to_string(), "options": ["rbind", "rprivate", "rw"]}),
        );
    }
    Ok(mounts)
}

/// Undoes what `create` made when a later step fails.
struct Undo<'a> {
    networks: Option<(&'a Networks, Container)>,
    dir: Option<PathBuf>,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some((n, c)) = &self.networks {
            if let Err(e) = n.release(c) {
                eprintln!("warning: {e}");
            }
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Creates the container; returns its record.
pub async fn create(ctx: &Context, args: &CreateArgs) -> Result<Container> {
    let client = &ctx.client;
    let (image_name, command) = args
        .image_and_command
        .split_first()
        .ok_or_else(|| Error::Invalid("an image is needed".into()))?;
    let image = image_for_run(ctx, image_name).await?;
    let all = containers::list(client).await?;
    let taken: Vec<String> = all.iter().map(containers::name_of).collect();
    let name = match &args.name {
        Some(n) => {
            let n = n.strip_prefix('/').unwrap_or(n);
            if !containers::valid_name(n) {
                return Err(Error::Invalid(format!(
                    "invalid container name {n:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                )));
            }
            if let Some(c) = all.iter().find(|c| containers::name_of(c) == n) {
                return Err(Error::Conflict(format!(
                    "the container name \"/{n}\" is already in use by container \"{}\": remove (or rename) that container to be able to reuse that name",
                    c.id
                )));
            }
            n.to_owned()
        }
        None => containers::generate_name(&taken),
    };
    let restart = containers::parse_restart(&args.restart)?;
    if restart.is_some() && args.rm {
        return Err(Error::Invalid(
            "conflicting options: --restart and --rm".into(),
        ));
    }
    let id = containers::new_id();
    let mode = Mode::parse(&args.network);
    let publish = ports(args, &image)?;
    if !publish.is_empty() && !matches!(mode, Mode::Named(_)) {
        return Err(Error::Invalid(format!(
            "published ports need a bridge network, not --network {}",
            mode.name()
        )));
    }
    let mut wanted = Vec::new();
    for v in &args.volume {
        wanted.push(volumes::parse_volume_flag(v)?);
    }
    for m in &args.mount {
        wanted.push(volumes::parse_mount_flag(m)?);
    }
    let (seccomp, no_new_privileges) = security(args)?;
    let memory = args.memory.as_deref().map(spec::parse_bytes).transpose()?;
    if let Some(c) = args.cpus {
        if !(c > 0.0 && c.is_finite()) {
            return Err(Error::Invalid(format!(
                "invalid --cpus {c}: a positive number is needed"
            )));
        }
    }
    let stop_signal = match &args.stop_signal {
        Some(s) => Some(s.clone()),
        None => image
            .config_field("StopSignal")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
    };
    if let Some(s) = &stop_signal {
        crate::signal::parse(s)?;
    }
    let mut env = read_env_files(&args.env_file)?;
    env.extend(args.env.iter().cloned());
    let env = expand_env(env);
    let mut labels: HashMap<String, String> = HashMap::new();
    for l in &args.label {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        labels.insert(k.to_owned(), v.to_owned());
    }

    // The container's own files, then its network, then the snapshot and record.
    let dir = ctx.paths.container_dir(client.namespace(), &id);
    std::fs::create_dir_all(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
    let networks = ctx.networks();
    // Until the record exists, whatever ends this (an error, a dropped future) undoes the
    // network and the files.
    let mut undo = Undo {
        networks: None,
        dir: Some(dir.clone()),
        armed: true,
    };
    let result = async {
        let attached = {
            let (n, id, mode, publish) =
                (networks.clone(), id.clone(), mode.clone(), publish.clone());
            tokio::task::spawn_blocking(move || n.attach(&id, &mode, &publish))
                .await
                .map_err(|e| Error::Daemon(format!("network setup stopped: {e}")))??
        };
        let mut probe = Container {
            id: id.clone(),
            ..Default::default()
        };
        probe
            .labels
            .insert(LABEL_NETWORK.into(), mode.name().to_owned());
        if let Some(p) = &attached.netns {
            probe
                .labels
                .insert(network::LABEL_NETNS.into(), p.display().to_string());
        }
        undo.networks = Some((&networks, probe));

        let hostname = match (&args.hostname, &mode) {
            (Some(h), _) => h.clone(),
            (None, Mode::Host) => rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned(),
            (None, _) => id[..12].to_owned(),
        };
        let mut mounts = etc_files(&dir, &hostname, &mode, &attached.ips)?;
        let (user_mounts, used_volumes) = volumes::resolve(&ctx.volumes(), &wanted)?;
        mounts.extend(user_mounts);

        // A lease keeps the new snapshot from collection until the record holds it.
        let lease_id = format!("berth-create-{id}");
        let mut lease_labels = HashMap::new();
        lease_labels.insert(
            "containerd.io/gc.expire".to_owned(),
            crate::time::rfc3339(std::time::SystemTime::now() + Duration::from_secs(3600)),
        );
        client
            .leases()
            .create(client.req(CreateLeaseRequest {
                id: lease_id.clone(),
                labels: lease_labels,
            }))
            .await?;
        let leased = client.with_lease(&lease_id)?;
        let made = async {
            let parent = image.top_chain().unwrap_or_default().to_owned();
            let prepared = leased
                .snapshots()
                .prepare(leased.req(PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: id.clone(),
                    parent: parent.clone(),
                    labels: HashMap::new(),
                }))
                .await
                .map_err(|s| {
                    if s.code() == Code::NotFound {
                        Error::NoSuchObject(format!(
                            "snapshot {parent} of image {} (pull it again to unpack it)",
                            crate::reference::familiar_name(&image.name)
                        ))
                    } else {
                        s.into()
                    }
                })?
                .into_inner()
                .mounts;
            let user = args
                .user
                .clone()
                .or_else(|| {
                    image
                        .config_field("User")
                        .and_then(|v| v.as_str())
                        .map(str::to_owned)
                })
                .filter(|u| !u.is_empty())
                // Root by uid, so that root's groups in the image come along, as Docker's do.
                .unwrap_or_else(|| "0".to_owned());
            let layers = layer_dirs(&prepared);
            let identity = berth_spec::users::resolve(&user, &layers, &[], true)
                .map_err(|e| Error::Invalid(format!("unable to find user {user}: {}", e.0)))?;
            let opts = Options {
                id: id.clone(),
                namespace: client.namespace().to_owned(),
                command: command.to_vec(),
                entrypoint: args.entrypoint.clone(),
                env,
                workdir: args.workdir.clone(),
                identity,
                hostname,
                tty: args.tty,
                stdin: args.interactive,
                read_only: args.read_only,
                privileged: args.privileged,
                cap_add: args.cap_add.clone(),
                cap_drop: args.cap_drop.clone(),
                seccomp,
                no_new_privileges,
                memory,
                cpus: args.cpus,
                pids_limit: args.pids_limit.filter(|p| *p > 0),
                mounts,
                network: match &attached.netns {
                    Some(p) => NetworkNs::Path(p.display().to_string()),
                    None => NetworkNs::Host,
                },
            };
            let spec = spec::container_spec(&opts, &image)?;
            labels.insert(LABEL_NAME.into(), name.clone());
            labels.insert(LABEL_STATE_DIR.into(), dir.display().to_string());
            labels.insert(
                LABEL_LOG.into(),
                dir.join(format!("{id}-json.log")).display().to_string(),
            );
            labels.insert(LABEL_NETWORK.into(), mode.name().to_owned());
            if let Some(p) = &attached.netns {
                labels.insert(network::LABEL_NETNS.into(), p.display().to_string());
            }
            if !attached.ips.is_empty() {
                labels.insert(network::LABEL_IPS.into(), attached.ips.join(","));
            }
            if !publish.is_empty() {
                labels.insert(
                    LABEL_PORTS.into(),
                    serde_json::to_string(&publish).unwrap_or_default(),
                );
            }
            if !used_volumes.is_empty() {
                labels.insert(
                    volumes::LABEL_VOLUMES.into(),
                    serde_json::to_string(&used_volumes).unwrap_or_default(),
                );
            }
            if let Some(s) = &stop_signal {
                labels.insert(LABEL_STOP_SIGNAL.into(), s.clone());
            }
            if args.tty {
                labels.insert(LABEL_TTY.into(), "true".into());
            }
            if args.interactive {
                labels.insert(LABEL_STDIN.into(), "true".into());
            }
            if let Some(policy) = &restart {
                let log = dir.join(format!("{id}-json.log"));
                labels.insert(containers::RESTART_POLICY.into(), policy.clone());
                labels.insert(containers::RESTART_STATUS.into(), "running".into());
                labels.insert(
                    containers::RESTART_LOG_URI.into(),
                    crate::logs::logger_uri(&log)?,
                );
            }
            let record = Container {
                id: id.clone(),
                labels,
                image: image.name.clone(),
                runtime: Some(Runtime {
                    name: args
                        .runtime
                        .clone()
                        .unwrap_or_else(|| DEFAULT_RUNTIME.to_owned()),
                    options: None,
                }),
                spec: Some(json_any(SPEC_TYPE, &spec)),
                snapshotter: SNAPSHOTTER.into(),
                snapshot_key: id.clone(),
                ..Default::default()
            };
            let created = leased
                .containers()
                .create(leased.req(CreateContainerRequest {
                    container: Some(record),
                }))
                .await?
                .into_inner()
                .container
                .ok_or_else(|| Error::Daemon("berthd returned no container".into()))?;
            Ok::<_, Error>(created)
        }
        .await;
        // The record (or nothing) holds the snapshot now; a failed create leaves it to GC.
        let _ = client
            .leases()
            .delete(client.req(DeleteLeaseRequest {
                id: lease_id,
                sync: false,
            }))
            .await;
        made
    }
    .await;
    if result.is_ok() {
        undo.armed = false;
    }
    result
}

/// How a task's stdio is wired.
pub enum Stdio {
    /// Output to the json-file log; no stdin.
    Logged { log: PathBuf },
    /// Fifos held by this process.
    Attached(crate::io::Fifos),
}

/// Creates the container's task (after deleting a stopped one) with `stdio`.
pub async fn create_task(ctx: &Context, c: &Container, stdio: &Stdio) -> Result<u32> {
    let client = &ctx.client;
    containers::delete_task(client, &c.id).await?;
    let rootfs = client
        .snapshots()
        .mounts(client.req(MountsRequest {
            snapshotter: c.snapshotter.clone(),
            key: c.snapshot_key.clone(),
        }))
        .await?
        .into_inner()
        .mounts;
    let tty = c.labels.get(LABEL_TTY).is_some_and(|v| v == "true");
    let (stdin, stdout, stderr) = match stdio {
        Stdio::Logged { log } => {
            let uri = crate::logs::logger_uri(log)?;
            (String::new(), uri.clone(), uri)
        }
        Stdio::Attached(f) => f.uris(),
    };
    let r = client
        .tasks()
        .create(client.req(CreateTaskRequest {
            container_id: c.id.clone(),
            rootfs,
            stdin,
            stdout,
            stderr,
            terminal: tty,
            ..Default::default()
        }))
        .await;
    match r {
        Ok(r) => Ok(r.into_inner().pid),
        Err(s) => Err(start_error(s, c)),
    }
}

fn start_error(s: tonic::Status, c: &Container) -> Error {
    let msg = s.message().to_owned();
    match command_failure(&msg) {
        Some(code) => Error::Command {
            message: format!(
                "failed to start container {}: {msg}",
                containers::name_of(c)
            ),
            code,
        },
        None => Error::from(s),
    }
}

pub async fn start_task(ctx: &Context, c: &Container) -> Result<()> {
    let client = &ctx.client;
    match client
        .tasks()
        .start(client.req(StartRequest {
            container_id: c.id.clone(),
            exec_id: String::new(),
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) => {
            let e = start_error(s, c);
            let _ = containers::delete_task(client, &c.id).await;
            Err(e)
        }
    }
}

/// `berth run`.
pub async fn run(ctx: &Context, args: &RunArgs) -> Result<()> {
    let a = &args.create;
    let c = create(ctx, a).await?;
    let result = run_created(ctx, args, &c).await;
    if a.rm && !args.detach {
        if let Err(e) = containers::remove(&ctx.client, &ctx.networks(), &c, true).await {
            eprintln!("Error: removing container {}: {e}", containers::name_of(&c));
        }
    }
    result
}

async fn run_created(ctx: &Context, args: &RunArgs, c: &Container) -> Result<()> {
    let client = &ctx.client;
    let a = &args.create;
    let log = PathBuf::from(c.labels.get(LABEL_LOG).cloned().unwrap_or_default());
    if args.detach {
        create_task(ctx, c, &Stdio::Logged { log }).await?;
        start_task(ctx, c).await?;
        if a.rm {
            crate::commands::containers::spawn_autoremove(ctx, &c.id)?;
        }
        println!("{}", c.id);
        return Ok(());
    }
    let attached = a.interactive || a.tty;
    let stdio = if attached {
        Stdio::Attached(crate::io::Fifos::new(
            &ctx.paths.fifo_dir(),
            &c.id,
            a.interactive,
            a.tty,
        )?)
    } else {
        Stdio::Logged { log: log.clone() }
    };
    let opened = match &stdio {
        Stdio::Attached(f) => Some(f.open()?),
        Stdio::Logged { .. } => None,
    };
    create_task(ctx, c, &stdio).await?;
    // The wait is open before the start, so the exit cannot be missed.
    let mut waiter = client.tasks();
    let wait = waiter.wait(client.req(WaitRequest {
        container_id: c.id.clone(),
        exec_id: String::new(),
    }));
    let exited = Arc::new(crate::logs::Exited::default());
    let (raw, copying) = match opened {
        Some(o) => {
            let raw = a.tty.then(crate::io::RawTerminal::enter);
            let closer = {
                let (client, id) = (client.clone(), c.id.clone());
                move || {
                    tokio::spawn(async move {
                        let _ = client
                            .tasks()
                            .close_io(client.req(CloseIoRequest {
                                container_id: id,
                                exec_id: String::new(),
                                stdin: true,
                            }))
                            .await;
                    });
                }
            };
            (raw, Some(crate::io::Copying::start(o, closer)))
        }
        None => (None, None),
    };
    let follower = if copying.is_none() {
        let (log, exited) = (log.clone(), exited.clone());
        Some(tokio::task::spawn_blocking(move || {
            let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
            crate::logs::follow(
                &log,
                0,
                &Default::default(),
                |d| exited.still_running(d),
                &mut out,
                &mut err,
            )
        }))
    } else {
        None
    };
    start_task(ctx, c).await?;
    let resizer = a
        .tty
        .then(|| spawn_resizer(client.clone(), c.id.clone(), String::new()));
    let proxy = (!a.tty).then(|| spawn_signal_proxy(client.clone(), c.id.clone()));
    let status = wait.await.map(|r| r.into_inner().exit_status);
    exited.set();
    if let Some(cp) = copying {
        cp.finish().await;
    }
    if let Some(f) = follower {
        let _ = f.await;
    }
    drop(raw);
    if let Some(r) = resizer {
        r.abort();
    }
    if let Some(p) = proxy {
        p.abort();
    }
    let code = status?;
    if code == 0 {
        Ok(())
    } else {
        Err(Error::Exit(code as i32))
    }
}

/// Passes our terminal's size to the process now and whenever it changes.
pub fn spawn_resizer(client: Client, id: String, exec_id: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut winch =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok();
        loop {
            if let Some((w, h)) = crate::io::terminal_size() {
                let _ = client
                    .tasks()
                    .resize_pty(client.req(ResizePtyRequest {
                        container_id: id.clone(),
                        exec_id: exec_id.clone(),
                        width: w,
                        height: h,
                    }))
                    .await;
            }
            match winch.as_mut() {
                Some(s) => {
                    if s.recv().await.is_none() {
                        return;
                    }
                }
                None => return,
            }
        }
    })
}

/// Without a terminal, SIGINT and SIGTERM we receive go to the container, as Docker's
/// `--sig-proxy` does.
fn spawn_signal_proxy(client: Client, id: String) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        loop {
            let sig = tokio::select! {
                _ = int.recv() => libc::SIGINT,
                _ = term.recv() => libc::SIGTERM,
            };
            let _ = containers::kill(&client, &id, sig as u32, false).await;
        }
    })
}
