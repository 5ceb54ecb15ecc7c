//! berthd: serves containerd's API v1 on a unix socket. This file is the wiring: it reads
//! the configuration, opens the stores under --root, and hands them to the services.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

mod memory;
mod pause;
mod publish;

use anyhow::{bail, Context, Result};
use berth_core::content::{BlobStore, ContentStore};
use berth_core::gc::{Collector, Scheduler};
use berth_core::images::Images;
use berth_core::metadata::MetaStore;
use berth_core::namespaces::Namespaces;
use berth_core::snapshot::{Backend, Native, Overlay, Snapshots};
use berth_runtime::{ManagerConfig, ShimManager};
use berth_services::server::{
    containers_server::ContainersServer, content_server::ContentServer, diff_server::DiffServer,
    events_server::EventsServer, images_server::ImagesServer,
    introspection_server::IntrospectionServer, leases_server::LeasesServer,
    namespaces_server::NamespacesServer, snapshots_server::SnapshotsServer,
    streaming_server::StreamingServer, tasks_server::TasksServer, transfer_server::TransferServer,
    version_server::VersionServer,
};
use clap::Parser;
use serde::Deserialize;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

#[derive(Parser, Debug)]
#[command(
    name = "berthd",
    version,
    about = "berth container runtime daemon (containerd API v1)"
)]
struct Args {
    /// Directory for durable state: content, snapshots, metadata.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Directory for state that dies with the machine: sockets, bundles, fifos.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Path of the gRPC unix socket.
    #[arg(long, short = 'a', global = true)]
    address: Option<PathBuf>,
    /// TOML configuration file; flags override it.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// error, warn, info, debug or trace.
    #[arg(long)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Publish one event (a protobuf `google.protobuf.Any` on stdin) to a running daemon;
    /// shims run this as their publish binary, as they run `containerd publish`.
    Publish {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        namespace: String,
    },
    /// Holds a new PID namespace open for a pod whose containers share one: prints the
    /// pid of its init (this program, as PID 1 there) and leaves it running.
    Pause,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct Config {
    root: Option<PathBuf>,
    state: Option<PathBuf>,
    address: Option<PathBuf>,
    log_level: Option<String>,
    /// Seconds between garbage collections when nothing triggers one.
    gc_interval_secs: Option<u64>,
    /// Runtime name → shim binary, overriding the lookup of `containerd-shim-NAME-VERSION`.
    #[serde(default)]
    runtimes: HashMap<String, PathBuf>,
    #[serde(default)]
    registry: RegistrySettings,
    #[serde(default)]
    cri: CriSettings,
}

/// `[cri]`: Kubernetes' CRI, served on the same socket.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
struct CriSettings {
    enabled: bool,
    /// The CNI configuration directory; the first file by name is the network.
    cni_conf_dir: PathBuf,
    /// Where CNI plugins are looked for, in order.
    cni_bin_dirs: Vec<PathBuf>,
    /// A CNI configuration with `{{.PodCIDR}}`, written into the conf dir when the kubelet
    /// sends the node's pod CIDR.
    cni_conf_template: Option<PathBuf>,
    snapshotter: String,
    /// The shim v2 runtime containers run with.
    runtime: String,
    /// The streaming server (exec, attach, port-forward URLs): loopback by default; the
    /// node's address when the API server's kubelet proxy must reach it from elsewhere.
    stream_server_address: String,
    /// 0 picks a free port at start.
    stream_server_port: u16,
    /// HTTPS for the streaming server, with this certificate chain and key (PEM).
    stream_tls_cert_file: Option<PathBuf>,
    stream_tls_key_file: Option<PathBuf>,
    /// A streaming connection with nothing read or written for this long is closed.
    stream_idle_timeout_secs: u64,
}

impl Default for CriSettings {
    fn default() -> Self {
        CriSettings {
            enabled: true,
            cni_conf_dir: "/etc/cni/net.d".into(),
            cni_bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            cni_conf_template: None,
            snapshotter: "overlayfs".into(),
            runtime: "io.containerd.berth.v2".into(),
            stream_server_address: "127.0.0.1".into(),
            stream_server_port: 0,
            stream_tls_cert_file: None,
            stream_tls_key_file: None,
            stream_idle_timeout_secs: 4 * 3600,
        }
    }
}

/// `[registry]`: how server-side pulls reach registries.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
struct RegistrySettings {
    /// Hosts spoken to over plain HTTP (loopback hosts fall back to it by themselves).
    plain_http: Vec<String>,
    /// Layers downloaded at once per pull.
    max_concurrent_downloads: usize,
    /// Credentials per registry host: `[registry.auths."host:port"] username, password`.
    auths: HashMap<String, RegistryAuth>,
    /// containerd's hosts.toml layout: `<config_path>/<registry>/hosts.toml`.
    config_path: Option<PathBuf>,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            plain_http: Vec::new(),
            max_concurrent_downloads: 3,
            auths: HashMap::new(),
            config_path: None,
        }
    }
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct RegistryAuth {
    username: String,
    password: String,
}

struct Settings {
    root: PathBuf,
    state: PathBuf,
    address: PathBuf,
    log_level: String,
    gc_interval: Duration,
    runtimes: HashMap<String, PathBuf>,
    registry: RegistrySettings,
    cri: CriSettings,
}

fn settings(args: Args) -> Result<Settings> {
    let cfg: Config = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("read config {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("parse config {}", p.display()))?
        }
        None => Config::default(),
    };
    Ok(Settings {
        root: args
            .root
            .or(cfg.root)
            .unwrap_or_else(|| "/var/lib/berth".into()),
        state: args
            .state
            .or(cfg.state)
            .unwrap_or_else(|| "/run/berth".into()),
        address: args
            .address
            .or(cfg.address)
            .unwrap_or_else(|| "/run/berth/berth.sock".into()),
        log_level: args
            .log_level
            .or(cfg.log_level)
            .unwrap_or_else(|| "info".into()),
        gc_interval: Duration::from_secs(cfg.gc_interval_secs.unwrap_or(300)),
        runtimes: cfg.runtimes,
        registry: cfg.registry,
        cri: cfg.cri,
    })
}

/// Holds an exclusive lock on `<root>/berthd.lock` for the life of the daemon.
fn lock_root(root: &Path) -> Result<std::fs::File> {
    let p = root.join("berthd.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .with_context(|| format!("open {}", p.display()))?;
    if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        bail!(
            "another berthd is already running with root {} (lock {} is held)",
            root.display(),
            p.display()
        );
    }
    Ok(f)
}

fn listen(address: &Path) -> Result<UnixListener> {
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    match std::fs::remove_file(address) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("remove stale socket {}", address.display()))
        }
        _ => {}
    }
    let l =
        UnixListener::bind(address).with_context(|| format!("listen on {}", address.display()))?;
    std::fs::set_permissions(address, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod {}", address.display()))?;
    Ok(l)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(Command::Pause) = args.command {
        return pause::run();
    }
    if args.command.is_none() {
        memory::without_thread_caches();
    }
    memory::tune_allocator();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking threads (layer writers and appliers) go soon after the work is done,
        // and their stacks with them.
        .thread_keep_alive(Duration::from_secs(2))
        .build()
        .context("start the async runtime")?
        .block_on(run(args))
}

async fn run(mut args: Args) -> Result<()> {
    if let Some(Command::Publish { topic, namespace }) = args.command.take() {
        let address = args
            .address
            .unwrap_or_else(|| "/run/berth/berth.sock".into());
        return publish::run(&address, &topic, &namespace).await;
    }
    let mut s = settings(args)?;
    // `Targets` takes the same `level,target=level` directives as an env filter without
    // compiling regular expressions (their code and tables stayed resident for good).
    let filter: tracing_subscriber::filter::Targets =
        s.log_level.parse().context("bad --log-level")?;
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .with(filter)
            .init();
    }
    for d in [&mut s.root, &mut s.state] {
        std::fs::create_dir_all(&*d).with_context(|| format!("create {}", d.display()))?;
        std::fs::set_permissions(&*d, std::fs::Permissions::from_mode(0o711))?;
        // One spelling of each directory from here on: paths berth builds, records and
        // compares (bundles, mount points) never go through a symlink or a relative path.
        *d = d
            .canonicalize()
            .with_context(|| format!("resolve {}", d.display()))?;
    }
    let _lock = lock_root(&s.root)?;
    reconcile_scratch(&s.state.join("tmpmounts"));

    let meta_dir = s.root.join("io.containerd.metadata.v1.redb");
    std::fs::create_dir_all(&meta_dir)?;
    let meta = Arc::new(MetaStore::open(&meta_dir.join("meta.redb")).context("open metadata")?);
    let gc_lock = Arc::new(RwLock::new(()));
    let blobs = BlobStore::open(&s.root.join("io.containerd.content.v1.content"))
        .context("open content store")?;
    let content = Arc::new(ContentStore::new(blobs, meta.clone(), gc_lock.clone()));
    let mut backends: Vec<Arc<dyn Backend>> = Vec::new();
    match Overlay::open(&s.root.join("io.containerd.snapshotter.v1.overlayfs")) {
        Ok(o) => backends.push(Arc::new(o)),
        Err(e) => tracing::warn!("overlayfs snapshotter unavailable: {e}"),
    }
    backends.push(Arc::new(
        Native::open(&s.root.join("io.containerd.snapshotter.v1.native"))
            .context("open native snapshotter")?,
    ));
    let snapshots = Arc::new(Snapshots::new(meta.clone(), backends, gc_lock.clone()));
    let snapshotter_names: Vec<&'static str> = snapshots.names().collect();
    // Pulls, imports and exports of a berthd that died held their content under leases of
    // its own: nobody finishes them now, so what they stored is garbage.
    let dropped = berth_core::leases::release_daemon_leases(&meta).context("release leases")?;
    for (ns, r) in &dropped {
        match content.abort(ns, r) {
            Ok(()) => {
                tracing::info!(ns = %ns, ingest = %r, "removed the ingest of an interrupted pull")
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::warn!(ns = %ns, ingest = %r, "remove interrupted ingest: {e}"),
        }
    }
    let gc = Scheduler::spawn(
        Collector {
            meta: meta.clone(),
            content: content.clone(),
            snapshots: snapshots.clone(),
            gc_lock: gc_lock.clone(),
        },
        s.gc_interval,
    );
    gc.schedule(); // reconcile what a crash may have left: stale dirs, unreferenced blobs
    tokio::spawn(memory::trim_memory());
    let uuid = meta
        .stable_value("server-uuid", || uuid::Uuid::new_v4().to_string())
        .context("server uuid")?;

    use berth_services::*;
    let events = berth_core::events::EventBus::default();
    let ttrpc_address = PathBuf::from(format!("{}.ttrpc", s.address.display()));
    let mut ttrpc = serve_ttrpc(&ttrpc_address, events.clone()).await?;
    let runtime = ShimManager::new(
        ManagerConfig {
            state: s.state.clone(),
            daemon_address: s.address.clone(),
            ttrpc_address: ttrpc_address.clone(),
            publish_binary: std::env::current_exe().context("locate berthd binary")?,
            runtimes: s.runtimes.clone(),
            debug: matches!(s.log_level.as_str(), "debug" | "trace"),
        },
        Arc::new(berth_runtime::shim::ProcessLauncher),
        events.clone(),
    );
    runtime.recover().await;
    runtime.warm_cgroups();
    let containers = Arc::new(berth_core::containers::Containers::new(meta.clone()));
    // Containers labelled for it are kept running, as containerd's restart monitor does.
    Arc::new(berth_runtime::restart::RestartMonitor {
        containers: containers.clone(),
        snapshots: snapshots.clone(),
        namespaces: Arc::new(Namespaces::new(meta.clone(), snapshotter_names.clone())),
        runtime: runtime.clone(),
        default_runtime: tasks::DEFAULT_RUNTIME.to_owned(),
    })
    .spawn(&events);
    let images = Arc::new(Images::new(meta.clone()));
    let registry = berth_registry::RegistryClient::new(berth_registry::RegistryConfig {
        credentials: s
            .registry
            .auths
            .iter()
            .map(|(host, a)| {
                let c = berth_registry::auth::Credentials {
                    username: a.username.clone(),
                    secret: a.password.clone(),
                };
                (host.clone(), c)
            })
            .collect(),
        plain_http: s.registry.plain_http.iter().cloned().collect(),
        hosts_dir: s.registry.config_path.clone(),
        ..Default::default()
    })
    .context("registry client")?;
    let registry = Arc::new(registry);
    let stores = berth_core::images::ImageStores {
        meta: meta.clone(),
        content: content.clone(),
        images: images.clone(),
        snapshots: snapshots.clone(),
        scratch: s.state.join("tmpmounts"),
    };
    let puller = Arc::new(berth_registry::pull::Puller::new(
        registry.clone(),
        stores.clone(),
    ));
    let pusher = Arc::new(berth_registry::push::Pusher::new(registry, stores.clone()));
    let streams = streaming::StreamRegistry::default();
    let cri = if s.cri.enabled {
        let snapshotter = if snapshotter_names.contains(&s.cri.snapshotter.as_str()) {
            s.cri.snapshotter.clone()
        } else {
            tracing::warn!(wanted = %s.cri.snapshotter, "CRI snapshotter unavailable; using native");
            "native".to_owned()
        };
        let cri_root = s.root.join("io.containerd.grpc.v1.cri");
        let ctx = berth_cri::CriContext {
            cfg: berth_cri::CriConfig {
                root: cri_root.clone(),
                state: s.state.join("io.containerd.grpc.v1.cri"),
                snapshotter_root: s
                    .root
                    .join(format!("io.containerd.snapshotter.v1.{snapshotter}")),
                snapshotter,
                runtime: s.cri.runtime.clone(),
                max_concurrent_downloads: s.registry.max_concurrent_downloads,
                pause_command: vec![
                    std::env::current_exe()
                        .context("locate berthd binary")?
                        .display()
                        .to_string(),
                    "pause".into(),
                ],
            },
            store: berth_cri::store::CriStore::open(containers.clone(), &s.cri.runtime)
                .context("open CRI records")?,
            images: stores.clone(),
            puller: puller.clone(),
            runtime: runtime.clone(),
            bus: events.clone(),
            gc: gc.clone(),
            cni: berth_cri::cni::Cni::new(berth_cri::cni::CniSettings {
                conf_dir: s.cri.cni_conf_dir.clone(),
                bin_dirs: s.cri.cni_bin_dirs.clone(),
                cache_dir: cri_root.join("cni"),
                conf_template: s.cri.cni_conf_template.clone(),
            }),
            events: tokio::sync::broadcast::channel(256).0,
            logs: Default::default(),
            oom_killed: Default::default(),
            oom_floor: berth_cri::context::OomFloor::probe(),
        };
        let streaming = berth_cri::streaming::StreamingConfig {
            address: s.cri.stream_server_address.clone(),
            port: s.cri.stream_server_port,
            tls_cert: s.cri.stream_tls_cert_file.clone(),
            tls_key: s.cri.stream_tls_key_file.clone(),
            idle_timeout: std::time::Duration::from_secs(s.cri.stream_idle_timeout_secs.max(1)),
        };
        Some(
            berth_cri::Cri::start(Arc::new(ctx), &streaming)
                .await
                .context("CRI streaming server")?,
        )
    } else {
        None
    };

    let incoming = UnixListenerStream::new(listen(&s.address)?);
    tracing::info!(address = %s.address.display(), root = %s.root.display(), "berthd serving");
    // The standard gRPC health service: containerd's Go client (dockerd) decides with it
    // that the daemon is back after a restart. Everything berthd serves is up once it
    // listens.
    let (_health, health_service) = tonic_health::server::health_reporter();
    let cri_services = cri.map(|c| {
        use k8s_cri::v1::{
            image_service_server::ImageServiceServer, runtime_service_server::RuntimeServiceServer,
        };
        (
            RuntimeServiceServer::new(cri::CriRuntimeService { cri: c.clone() })
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(16 << 20),
            ImageServiceServer::new(cri::CriImageService { cri: c })
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(16 << 20),
        )
    });
    let (cri_runtime, cri_images) = match cri_services {
        Some((r, i)) => (Some(r), Some(i)),
        None => (None, None),
    };
    tonic::transport::Server::builder()
        .add_optional_service(cri_runtime)
        .add_optional_service(cri_images)
        .add_service(health_service)
        .add_service(VersionServer::new(version::VersionService))
        .add_service(NamespacesServer::new(namespaces::NamespacesService {
            events: events.clone(),
            store: Arc::new(Namespaces::new(meta.clone(), snapshotter_names.clone())),
            gc: gc.clone(),
        }))
        .add_service(IntrospectionServer::new(
            introspection::IntrospectionService::new(uuid, &snapshotter_names),
        ))
        .add_service(
            ContentServer::new(content::ContentService {
                events: events.clone(),
                store: content.clone(),
                gc: gc.clone(),
            })
            .max_decoding_message_size(64 << 20),
        )
        .add_service(ContainersServer::new(containers::ContainersService {
            events: events.clone(),
            store: containers.clone(),
            gc: gc.clone(),
        }))
        .add_service(TasksServer::new(tasks::TasksService {
            containers: containers.clone(),
            runtime: runtime.clone(),
        }))
        .add_service(StreamingServer::new(streaming::StreamingService {
            streams: streams.clone(),
        }))
        .add_service(TransferServer::new(transfer::TransferService {
            puller,
            pusher,
            streams,
            events: events.clone(),
            gc: gc.clone(),
            max_concurrent_downloads: s.registry.max_concurrent_downloads,
        }))
        .add_service(ImagesServer::new(images::ImagesService {
            events: events.clone(),
            store: images.clone(),
            gc: gc.clone(),
        }))
        .add_service(LeasesServer::new(leases::LeasesService {
            meta: meta.clone(),
            gc: gc.clone(),
        }))
        .add_service(SnapshotsServer::new(snapshots::SnapshotsService {
            events: events.clone(),
            store: snapshots.clone(),
            gc: gc.clone(),
        }))
        .add_service(DiffServer::new(diff::DiffService {
            content: content.clone(),
            scratch: s.state.join("tmpmounts"),
        }))
        .add_service(EventsServer::new(events::EventsService {
            bus: events.clone(),
        }))
        .serve_with_incoming_shutdown(incoming, shutdown())
        .await
        .context("serve")?;
    let _ = std::fs::remove_file(&s.address);
    let _ = ttrpc.shutdown().await;
    let _ = std::fs::remove_file(&ttrpc_address);
    tracing::info!("berthd stopped; running containers stay with their shims");
    Ok(())
}

/// The ttrpc socket shims forward their events to (TTRPC_ADDRESS), 0660 like the gRPC one.
async fn serve_ttrpc(
    address: &Path,
    events: berth_core::events::EventBus,
) -> Result<ttrpc::asynchronous::Server> {
    match std::fs::remove_file(address) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("remove stale socket {}", address.display()))
        }
        _ => {}
    }
    let mut server = ttrpc::asynchronous::Server::new()
        .bind(&format!("unix://{}", address.display()))
        .with_context(|| format!("listen on {}", address.display()))?
        .register_service(berth_services::shim_events::ttrpc_services(events));
    std::fs::set_permissions(address, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod {}", address.display()))?;
    server
        .start()
        .await
        .with_context(|| format!("serve ttrpc on {}", address.display()))?;
    Ok(server)
}

/// Temporary mount points (and scratch files of older versions) that a berthd which died
/// mid-apply or mid-diff left: unmount and remove.
fn reconcile_scratch(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_file()) {
            match std::fs::remove_file(&p) {
                Ok(()) => tracing::info!("removed stale scratch file {}", p.display()),
                Err(err) => tracing::warn!("stale scratch file {}: {err}", p.display()),
            }
            continue;
        }
        while berth_core::mount::unmount(&p).is_ok() {}
        if let Err(err) = std::fs::remove_dir(&p) {
            tracing::warn!("stale mount point {}: {err}", p.display());
        } else {
            tracing::info!("removed stale mount point {}", p.display());
        }
    }
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
