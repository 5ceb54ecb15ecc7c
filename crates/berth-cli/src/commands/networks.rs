//! `berth network` and `berth volume`: bridge networks as CNI conflists and named volumes,
//! each refused removal while a container uses it.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::cli::{NetworkCommand, VolumeCommand};
use crate::error::{Error, Result};
use crate::format;
use crate::network::{NetworkInfo, Networks};
use crate::Context;

fn labels(list: &[String]) -> BTreeMap<String, String> {
    list.iter()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

pub async fn network_json(ctx: &Context, n: &NetworkInfo) -> Result<Value> {
    let all = crate::containers::list(&ctx.client).await?;
    let mut members = serde_json::Map::new();
    for c in Networks::users(&n.name, &all) {
        members.insert(
            c.id.clone(),
            json!({"Name": crate::containers::name_of(c),
                   "IPv4Address": c.labels.get(crate::network::LABEL_IPS).cloned().unwrap_or_default()}),
        );
    }
    Ok(json!({
        "Name": n.name, "Id": n.id, "Created": n.created, "Driver": n.driver,
        "IPAM": {"Driver": "host-local", "Config": [{"Subnet": n.subnet, "Gateway": n.gateway}]},
        "Options": {"com.docker.network.bridge.name": n.bridge},
        "Containers": members, "Labels": n.labels,
    }))
}

pub async fn network(ctx: &Context, cmd: &NetworkCommand) -> Result<()> {
    let nets = ctx.networks();
    match cmd {
        NetworkCommand::Create {
            subnet,
            driver,
            label,
            name,
        } => {
            if driver != "bridge" {
                return Err(Error::Invalid(format!(
                    "network driver {driver:?} is not supported: bridge is"
                )));
            }
            let n = nets.create(name, subnet.as_deref(), labels(label))?;
            println!("{}", n.id);
        }
        NetworkCommand::Ls(crate::cli::LsArgs { quiet, format: fmt }) => {
            let list = nets.list()?;
            if *quiet {
                for n in &list {
                    println!("{}", &n.id[..12]);
                }
                return Ok(());
            }
            let items: Vec<Value> = list
                .iter()
                .map(|n| json!({"ID": &n.id[..12], "Name": n.name, "Driver": n.driver, "Subnet": n.subnet}))
                .collect();
            if format::print_formatted(fmt.as_deref(), &items)? {
                return Ok(());
            }
            let mut rows: Vec<Vec<String>> = vec![
                vec!["host".into(), "host".into(), "host".into(), "".into()],
                vec!["none".into(), "none".into(), "null".into(), "".into()],
            ];
            rows.extend(list.iter().map(|n| {
                vec![
                    n.id[..12].to_owned(),
                    n.name.clone(),
                    n.driver.clone(),
                    n.subnet.clone(),
                ]
            }));
            print!(
                "{}",
                format::table(&["NETWORK ID", "NAME", "DRIVER", "SUBNET"], &rows)
            );
        }
        NetworkCommand::Inspect {
            format: fmt,
            networks,
        } => {
            let mut out = Vec::new();
            for n in networks {
                out.push(network_json(ctx, &nets.get(n)?).await?);
            }
            super::images::print_inspect(&out, fmt.as_deref())?;
        }
        NetworkCommand::Rm { networks } => {
            let all = crate::containers::list(&ctx.client).await?;
            let mut failures = super::Failures::default();
            for n in networks {
                let r = nets.get(n).and_then(|info| {
                    let users = Networks::users(&info.name, &all);
                    if let Some(c) = users.first() {
                        return Err(Error::Conflict(format!(
                            "error while removing network {n}: network has active endpoints (container {})",
                            crate::containers::name_of(c)
                        )));
                    }
                    nets.remove(&info.name)
                });
                if failures.check(r).is_some() {
                    println!("{n}");
                }
            }
            failures.finish()?;
        }
        NetworkCommand::Prune { .. } => {
            let all = crate::containers::list(&ctx.client).await?;
            let mut removed = Vec::new();
            for n in nets.list()? {
                if Networks::users(&n.name, &all).is_empty()
                    && n.name != crate::network::DEFAULT_NETWORK
                {
                    nets.remove(&n.name)?;
                    removed.push(n.name);
                }
            }
            if !removed.is_empty() {
                println!("Deleted Networks:\n{}", removed.join("\n"));
            }
        }
    }
    Ok(())
}

pub async fn volume(ctx: &Context, cmd: &VolumeCommand) -> Result<()> {
    let vols = ctx.volumes();
    let in_use = || async {
        let all = crate::containers::list(&ctx.client).await?;
        Ok::<_, Error>(
            all.iter()
                .flat_map(|c| {
                    crate::volumes::used_by(&c.labels)
                        .into_iter()
                        .map(move |v| (v, crate::containers::name_of(c)))
                })
                .collect::<Vec<_>>(),
        )
    };
    match cmd {
        VolumeCommand::Create { label, name } => {
            let name = name.clone().unwrap_or_else(crate::containers::new_id);
            let v = vols.create(&name, labels(label))?;
            println!("{}", v.name);
        }
        VolumeCommand::Ls(crate::cli::LsArgs { quiet, format: fmt }) => {
            let list = vols.list()?;
            if *quiet {
                for v in &list {
                    println!("{}", v.name);
                }
                return Ok(());
            }
            let items: Vec<Value> = list
                .iter()
                .map(|v| serde_json::to_value(v).unwrap_or_default())
                .collect();
            if format::print_formatted(fmt.as_deref(), &items)? {
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|v| vec![v.driver.clone(), v.name.clone()])
                .collect();
            print!("{}", format::table(&["DRIVER", "VOLUME NAME"], &rows));
        }
        VolumeCommand::Inspect {
            format: fmt,
            volumes,
        } => {
            let mut out = Vec::new();
            for v in volumes {
                out.push(serde_json::to_value(vols.get(v)?).unwrap_or_default());
            }
            super::images::print_inspect(&out, fmt.as_deref())?;
        }
        VolumeCommand::Rm { force, volumes } => {
            let used = in_use().await?;
            let mut failures = super::Failures::default();
            for v in volumes {
                let r = match used.iter().find(|(n, _)| n == v) {
                    Some((_, c)) if !force => Err(Error::Conflict(format!(
                        "remove {v}: volume is in use by container {c}"
                    ))),
                    _ => vols.remove(v),
                };
                if failures.check(r).is_some() {
                    println!("{v}");
                }
            }
            failures.finish()?;
        }
        VolumeCommand::Prune { .. } => {
            let used = in_use().await?;
            let mut removed = Vec::new();
            for v in vols.list()? {
                // As Docker 23+: only anonymous volumes are pruned.
                let anonymous = v.name.len() == 64 && v.name.bytes().all(|b| b.is_ascii_hexdigit());
                if anonymous && !used.iter().any(|(n, _)| *n == v.name) {
                    vols.remove(&v.name)?;
                    removed.push(v.name);
                }
            }
            if !removed.is_empty() {
                println!("Deleted Volumes:\n{}", removed.join("\n"));
            }
        }
    }
    Ok(())
}
