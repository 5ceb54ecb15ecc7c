//! `berth info`, `version`, `events` and `system prune`.

use std::time::Duration;

use containerd_client::services::v1::{ListNamespacesRequest, PluginsRequest, SubscribeRequest};
use tokio_stream::StreamExt;

use crate::containers::{self, State};
use crate::error::{Error, Result};
use crate::Context;

pub async fn version(ctx: &Context) -> Result<()> {
    println!("Client:");
    println!(" Version:     {}", env!("CARGO_PKG_VERSION"));
    println!(" OS/Arch:     linux/{}", crate::image::host_platform().1);
    let v = ctx
        .client
        .version()
        .version(ctx.client.req(()))
        .await?
        .into_inner();
    println!();
    println!("Server: berthd");
    println!(" Version:     {}", v.version);
    println!(" Revision:    {}", v.revision);
    println!(" Address:     {}", ctx.client.address().display());
    Ok(())
}

pub async fn info(ctx: &Context) -> Result<()> {
    let client = &ctx.client;
    let all = containers::list(client).await?;
    let tasks = containers::tasks(client).await?;
    let (mut running, mut paused, mut stopped) = (0, 0, 0);
    for c in &all {
        match State::of(tasks.get(&c.id)) {
            State::Running { .. } => running += 1,
            State::Paused { .. } => paused += 1,
            _ => stopped += 1,
        }
    }
    let images = crate::image::list(client).await?.len();
    let v = client.version().version(client.req(())).await?.into_inner();
    let namespaces = client
        .namespaces()
        .list(client.req(ListNamespacesRequest {
            filter: String::new(),
        }))
        .await?
        .into_inner()
        .namespaces;
    let plugins = client
        .introspection()
        .plugins(client.req(PluginsRequest { filters: vec![] }))
        .await?
        .into_inner()
        .plugins;
    let of_type = |t: &str| -> Vec<String> {
        plugins
            .iter()
            .filter(|p| p.r#type == t)
            .map(|p| p.id.clone())
            .collect()
    };
    println!("Client:");
    println!(" Version:    {}", env!("CARGO_PKG_VERSION"));
    println!(" Data root:  {}", ctx.paths.root.display());
    println!();
    println!("Server:");
    println!(" Containers: {}", all.len());
    println!("  Running: {running}");
    println!("  Paused: {paused}");
    println!("  Stopped: {stopped}");
    println!(" Images: {images}");
    println!(" Server Version: {}", v.version);
    println!(
        " Namespace: {} (of {})",
        client.namespace(),
        namespaces
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        " Storage Driver: {}",
        of_type("io.containerd.snapshotter.v1").join(", ")
    );
    println!(
        " Runtimes: {}",
        of_type("io.containerd.runtime.v2").join(", ")
    );
    println!(
        " Networks: bridge host none {}",
        ctx.networks()
            .list()?
            .iter()
            .filter(|n| n.name != "bridge")
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        " Kernel Version: {}",
        rustix::system::uname().release().to_string_lossy()
    );
    println!(" Architecture: {}", std::env::consts::ARCH);
    println!(" Address: {}", client.address().display());
    Ok(())
}

/// Live events: one line each, `TIME TOPIC NAMESPACE`, until interrupted.
pub async fn events(ctx: &Context, filters: &[String]) -> Result<()> {
    let mut stream = ctx
        .client
        .events()
        .subscribe(
            ctx.client.req(SubscribeRequest {
                filters: filters
                    .iter()
                    .map(|f| {
                        if f.contains("==") || f.contains('~') {
                            f.clone()
                        } else {
                            format!("topic~=\"{f}\"")
                        }
                    })
                    .collect(),
            }),
        )
        .await?
        .into_inner();
    loop {
        tokio::select! {
            m = stream.next() => match m {
                Some(Ok(e)) => {
                    let when = e.timestamp.as_ref().map(|t| crate::time::rfc3339(crate::time::from_timestamp(t))).unwrap_or_default();
                    let kind = e.event.as_ref().map(|a| a.type_url.rsplit('/').next().unwrap_or_default().to_owned()).unwrap_or_default();
                    println!("{when} {} {} {kind}", e.topic, e.namespace);
                }
                Some(Err(s)) => return Err(s.into()),
                None => return Err(Error::Daemon("berthd closed the event stream".into())),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

pub async fn prune(ctx: &Context, all: bool, volumes: bool) -> Result<()> {
    let client = &ctx.client;
    let tasks = containers::tasks(client).await?;
    let mut removed = Vec::new();
    for c in containers::list(client).await? {
        if !State::of(tasks.get(&c.id)).is_running() {
            containers::remove(client, &ctx.networks(), &c, false).await?;
            removed.push(c.id);
        }
    }
    if !removed.is_empty() {
        println!("Deleted Containers:\n{}\n", removed.join("\n"));
    }
    super::networks::network(ctx, &crate::cli::NetworkCommand::Prune { force: true }).await?;
    if volumes {
        super::networks::volume(ctx, &crate::cli::VolumeCommand::Prune { force: true }).await?;
    }
    super::images::prune(ctx, all).await?;
    // Give berthd's collector a moment to start on what was let go.
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
