//! Container commands beyond `run` and `create`: start, stop, restart, kill, rm, ps,
//! logs, exec, attach, inspect, top, wait, port, rename, pause/unpause, and the detached
//! `--rm` watcher.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::{
    Container, DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, ListPidsRequest,
    PauseTaskRequest, ResumeTaskRequest, StartRequest, UpdateContainerRequest, WaitRequest,
};
use serde_json::{json, Value};
use tonic::Code;

use crate::cli::{ExecArgs, LogsArgs, PsArgs};
use crate::client::{json_any, PROCESS_TYPE};
use crate::containers::{self, name_of, State, LABEL_LOG, LABEL_NAME, LABEL_PORTS};
use crate::error::{command_failure, Error, Result};
use crate::format;
use crate::logs::{self, ReadOptions};
use crate::network::{PortMapping, LABEL_IPS};
use crate::reference::familiar_name;
use crate::run::{self, Stdio};
use crate::Context;

use super::Failures;

/// Runs `f` for each named container, printing what Docker prints (the name given) and
/// every error; fails with exit code 1 if any failed.
async fn each<'a, F, Fut>(ctx: &'a Context, names: &'a [String], mut f: F) -> Result<()>
where
    F: FnMut(&'a Context, Container) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + 'a,
{
    let mut failures = Failures::default();
    for n in names {
        let r = match containers::find(&ctx.client, n).await {
            Ok(c) => f(ctx, c).await,
            Err(e) => Err(e),
        };
        if failures.check(r).is_some() {
            println!("{n}");
        }
    }
    failures.finish()
}

fn log_path(c: &Container) -> Result<PathBuf> {
    c.labels.get(LABEL_LOG).map(PathBuf::from).ok_or_else(|| {
        Error::Invalid(format!(
            "container {} was not made by berth: it has no log",
            name_of(c)
        ))
    })
}

/// Starts a container's task again (a stopped one is deleted first), logged.
async fn start_one(ctx: &Context, c: &Container) -> Result<()> {
    containers::set_restart_status(&ctx.client, c, true).await?;
    let state = State::of(containers::task(&ctx.client, &c.id).await?.as_ref());
    if state.is_running() {
        return Ok(());
    }
    let log = log_path(c)?;
    run::create_task(ctx, c, &Stdio::Logged { log }).await?;
    run::start_task(ctx, c).await
}

pub async fn start(ctx: &Context, names: &[String], attach: bool) -> Result<()> {
    if attach {
        let [name] = names else {
            return Err(Error::Invalid(
                "you cannot start and attach multiple containers at once".into(),
            ));
        };
        let c = containers::find(&ctx.client, name).await?;
        let log = log_path(&c)?;
        let from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let mut waiter = ctx.client.tasks();
        start_one(ctx, &c).await?;
        let wait = waiter.wait(ctx.client.req(WaitRequest {
            container_id: c.id.clone(),
            exec_id: String::new(),
        }));
        return follow_until_exit(log, from, wait).await;
    }
    each(ctx, names, |ctx, c| async move { start_one(ctx, &c).await }).await
}

async fn follow_until_exit(
    log: PathBuf,
    from: u64,
    wait: impl std::future::Future<
        Output = std::result::Result<
            tonic::Response<containerd_client::services::v1::WaitResponse>,
            tonic::Status,
        >,
    >,
) -> Result<()> {
    let exited = std::sync::Arc::new(logs::Exited::default());
    let e2 = exited.clone();
    let follower = tokio::task::spawn_blocking(move || {
        let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
        logs::follow(
            &log,
            from,
            &ReadOptions::default(),
            |d| e2.still_running(d),
            &mut out,
            &mut err,
        )
    });
    let status = wait.await;
    exited.set();
    let _ = follower.await;
    match status?.into_inner().exit_status {
        0 => Ok(()),
        c => Err(Error::Exit(c as i32)),
    }
}

pub async fn stop(ctx: &Context, names: &[String], time: u64, signal: Option<&str>) -> Result<()> {
    let signal = signal.map(crate::signal::parse).transpose()?;
    each(ctx, names, |ctx, mut c| async move {
        if let Some(s) = signal {
            c.labels
                .insert(containers::LABEL_STOP_SIGNAL.into(), s.to_string());
        }
        containers::stop(&ctx.client, &c, Duration::from_secs(time)).await
    })
    .await
}

pub async fn restart(ctx: &Context, names: &[String], time: u64) -> Result<()> {
    each(ctx, names, |ctx, c| async move {
        containers::stop(&ctx.client, &c, Duration::from_secs(time)).await?;
        start_one(ctx, &c).await
    })
    .await
}

pub async fn kill(ctx: &Context, names: &[String], signal: &str) -> Result<()> {
    let sig = crate::signal::parse(signal)?;
    each(ctx, names, |ctx, c| async move {
        let state = State::of(containers::task(&ctx.client, &c.id).await?.as_ref());
        if !state.is_running() {
            return Err(Error::Conflict(format!(
                "cannot kill container {}: container is not running",
                name_of(&c)
            )));
        }
        // A kill by the user is a stop, not a failure to restart from.
        containers::set_restart_status(&ctx.client, &c, false).await?;
        containers::kill(&ctx.client, &c.id, sig, false).await
    })
    .await
}

pub async fn rm(
    ctx: &Context,
    names: &[String],
    force: bool,
    anonymous_volumes: bool,
) -> Result<()> {
    each(ctx, names, |ctx, c| async move {
        containers::remove(&ctx.client, &ctx.networks(), &c, force).await?;
        if anonymous_volumes {
            let vols = ctx.volumes();
            for v in crate::volumes::used_by(&c.labels) {
                // Anonymous volumes are named by 64 hex digits.
                if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
                    let _ = vols.remove(&v);
                }
            }
        }
        Ok(())
    })
    .await
}

fn command_of(c: &Container) -> String {
    let spec: Value = c
        .spec
        .as_ref()
        .and_then(|s| serde_json::from_slice(&s.value).ok())
        .unwrap_or(Value::Null);
    spec["process"]["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn ports_of(c: &Container) -> Vec<PortMapping> {
    c.labels
        .get(LABEL_PORTS)
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_default()
}

fn created_of(c: &Container) -> SystemTime {
    c.created_at
        .as_ref()
        .map(crate::time::from_timestamp)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

fn matches_filter(f: &str, c: &Container, state: &State) -> Result<bool> {
    let (k, v) = f.split_once('=').ok_or_else(|| {
        Error::Invalid(format!("bad format of filter {f:?} (expected name=value)"))
    })?;
    Ok(match k {
        "name" => name_of(c).contains(v),
        "id" => c.id.starts_with(v),
        "status" => state.word() == v,
        "ancestor" => familiar_name(&c.image) == familiar_name(v) || c.image == v,
        "label" => match v.split_once('=') {
            Some((lk, lv)) => c.labels.get(lk).map(String::as_str) == Some(lv),
            None => c.labels.contains_key(v),
        },
        "exited" => matches!(state, State::Exited { code, .. } if code.to_string() == v),
        other => return Err(Error::Invalid(format!("invalid filter {other:?}"))),
    })
}

pub async fn ps(ctx: &Context, a: &PsArgs) -> Result<()> {
    let client = &ctx.client;
    let mut all = containers::list(client).await?;
    let tasks = containers::tasks(client).await?;
    all.sort_by_key(|c| std::cmp::Reverse(created_of(c)));
    if a.latest {
        all.truncate(1);
    }
    let mut rows = Vec::new();
    let mut items = Vec::new();
    for c in &all {
        let state = State::of(tasks.get(&c.id));
        if !a.all && !a.latest && !state.is_running() {
            continue;
        }
        let mut keep = true;
        for f in &a.filter {
            keep &= matches_filter(f, c, &state)?;
        }
        if !keep {
            continue;
        }
        let id = if a.no_trunc {
            c.id.clone()
        } else {
            c.id[..12.min(c.id.len())].to_owned()
        };
        if a.quiet {
            println!("{id}");
            continue;
        }
        let cmd = command_of(c);
        let cmd = if a.no_trunc {
            format!("\"{cmd}\"")
        } else {
            format!("\"{}\"", truncate(&cmd, 20))
        };
        let ports: Vec<String> = ports_of(c).iter().map(PortMapping::describe).collect();
        let created = crate::time::ago(created_of(c));
        let status = state.describe(created_of(c));
        let image = familiar_name(&c.image);
        items.push(json!({"ID": id, "Image": image, "Command": cmd, "CreatedAt": crate::time::rfc3339(created_of(c)),
            "RunningFor": created, "Status": status, "State": state.word(), "Ports": ports.join(", "), "Names": name_of(c),
            "Labels": c.labels}));
        rows.push(vec![
            id,
            image,
            cmd,
            created,
            status,
            ports.join(", "),
            name_of(c),
        ]);
    }
    if a.quiet || format::print_formatted(a.format.as_deref(), &items)? {
        return Ok(());
    }
    print!(
        "{}",
        format::table(
            &[
                "CONTAINER ID",
                "IMAGE",
                "COMMAND",
                "CREATED",
                "STATUS",
                "PORTS",
                "NAMES"
            ],
            &rows
        )
    );
    Ok(())
}

pub async fn logs(ctx: &Context, a: &LogsArgs) -> Result<()> {
    let c = containers::find(&ctx.client, &a.container).await?;
    let log = log_path(&c)?;
    let now = SystemTime::now();
    let parse_time = |s: &Option<String>, flag: &str| -> Result<Option<SystemTime>> {
        s.as_deref()
            .map(|t| {
                crate::time::parse_since(t, now)
                    .ok_or_else(|| Error::Invalid(format!("invalid value for {flag}: {t:?}")))
            })
            .transpose()
    };
    let opts = ReadOptions {
        tail: match a.tail.as_str() {
            "all" | "" => None,
            n => Some(n.parse().map_err(|_| {
                Error::Invalid(format!("invalid --tail {n:?}: a number or \"all\""))
            })?),
        },
        since: parse_time(&a.since, "--since")?,
        until: parse_time(&a.until, "--until")?,
        timestamps: a.timestamps,
    };
    let follow = a.follow;
    // Followed until the container exits (or berthd goes away), as one Wait says.
    let exited = std::sync::Arc::new(logs::Exited::default());
    if follow && State::of(containers::task(&ctx.client, &c.id).await?.as_ref()).is_running() {
        let (client, id, exited) = (ctx.client.clone(), c.id.clone(), exited.clone());
        tokio::spawn(async move {
            let _ = client
                .tasks()
                .wait(client.req(WaitRequest {
                    container_id: id,
                    exec_id: String::new(),
                }))
                .await;
            exited.set();
        });
    } else {
        exited.set();
    }
    tokio::task::spawn_blocking(move || {
        let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
        let offset = logs::print(&log, &opts, &mut out, &mut err)?;
        if !follow {
            return Ok(());
        }
        let keep_going = |d| exited.still_running(d);
        logs::follow(
            &log,
            offset,
            &ReadOptions {
                tail: None,
                ..opts.clone()
            },
            keep_going,
            &mut out,
            &mut err,
        )
    })
    .await
    .map_err(|e| Error::Daemon(format!("reading the log stopped: {e}")))?
}

pub async fn exec(ctx: &Context, a: &ExecArgs) -> Result<()> {
    let client = &ctx.client;
    let c = containers::find(client, &a.container).await?;
    let task = containers::task(client, &c.id).await?;
    let state = State::of(task.as_ref());
    let pid = match state {
        State::Running { pid } => pid,
        State::Paused { .. } => {
            return Err(Error::Conflict(format!(
                "container {} is paused, unpause the container before exec",
                name_of(&c)
            )))
        }
        _ => {
            return Err(Error::Conflict(format!(
                "container {} is not running",
                name_of(&c)
            )))
        }
    };
    let spec: Value = c
        .spec
        .as_ref()
        .and_then(|s| serde_json::from_slice(&s.value).ok())
        .ok_or_else(|| Error::Invalid(format!("container {} has no spec", name_of(&c))))?;
    let mut process = spec["process"].clone();
    process["args"] = json!(a.command);
    process["terminal"] = json!(a.tty);
    if let Some(w) = &a.workdir {
        process["cwd"] = json!(w);
    }
    if !a.env.is_empty() {
        let mut env: Vec<String> = process["env"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        for e in &a.env {
            let kv = if e.contains('=') {
                e.clone()
            } else {
                format!("{e}={}", std::env::var(e).unwrap_or_default())
            };
            let key = kv.split('=').next().unwrap_or_default().to_owned();
            env.retain(|x| x.split('=').next() != Some(&key));
            env.push(kv);
        }
        process["env"] = json!(env);
    }
    if let Some(u) = &a.user {
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let id = berth_spec::users::resolve(u, &[root], &[], true)
            .map_err(|e| Error::Invalid(format!("unable to find user {u}: {}", e.0)))?;
        process["user"] =
            json!({"uid": id.uid, "gid": id.gid, "additionalGids": id.additional_gids});
    }
    if a.privileged {
        let caps = berth_spec::caps::all();
        process["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps});
    }
    let exec_id = containers::new_id()[..16].to_owned();
    let attached = !a.detach;
    let fifos = if attached {
        Some(crate::io::Fifos::new(
            &ctx.paths.fifo_dir(),
            &format!("{}-{exec_id}", c.id),
            a.interactive,
            a.tty,
        )?)
    } else {
        None
    };
    let opened = fifos.as_ref().map(|f| f.open()).transpose()?;
    let (stdin, stdout, stderr) = fifos.as_ref().map(|f| f.uris()).unwrap_or_default();
    client
        .tasks()
        .exec(client.req(ExecProcessRequest {
            container_id: c.id.clone(),
            stdin,
            stdout,
            stderr,
            terminal: a.tty,
            spec: Some(json_any(PROCESS_TYPE, &process)),
            exec_id: exec_id.clone(),
        }))
        .await?;
    let cleanup = || async {
        let _ = client
            .tasks()
            .delete_process(client.req(DeleteProcessRequest {
                container_id: c.id.clone(),
                exec_id: exec_id.clone(),
            }))
            .await;
    };
    let mut waiter = client.tasks();
    let wait = waiter.wait(client.req(WaitRequest {
        container_id: c.id.clone(),
        exec_id: exec_id.clone(),
    }));
    let copying = opened.map(|o| {
        let (client, id, eid) = (client.clone(), c.id.clone(), exec_id.clone());
        crate::io::Copying::start(o, move || {
            tokio::spawn(async move {
                let _ = client
                    .tasks()
                    .close_io(client.req(containerd_client::services::v1::CloseIoRequest {
                        container_id: id,
                        exec_id: eid,
                        stdin: true,
                    }))
                    .await;
            });
        })
    });
    let raw = (a.tty && attached).then(crate::io::RawTerminal::enter);
    if let Err(s) = client
        .tasks()
        .start(client.req(StartRequest {
            container_id: c.id.clone(),
            exec_id: exec_id.clone(),
        }))
        .await
    {
        drop(raw);
        cleanup().await;
        let msg = s.message().to_owned();
        return Err(match command_failure(&msg) {
            Some(code) => Error::Command {
                message: format!("exec failed: {msg}"),
                code,
            },
            None => s.into(),
        });
    }
    if !attached {
        return Ok(());
    }
    let resizer = a
        .tty
        .then(|| run::spawn_resizer(client.clone(), c.id.clone(), exec_id.clone()));
    let status = wait.await;
    if let Some(cp) = copying {
        cp.finish().await;
    }
    drop(raw);
    if let Some(r) = resizer {
        r.abort();
    }
    cleanup().await;
    drop(fifos);
    match status?.into_inner().exit_status {
        0 => Ok(()),
        c => Err(Error::Exit(c as i32)),
    }
}

/// `berth attach`: the container's output from now on until it exits (its stdin is not
/// kept open once `run` has returned).
pub async fn attach(ctx: &Context, name: &str) -> Result<()> {
    let c = containers::find(&ctx.client, name).await?;
    let state = State::of(containers::task(&ctx.client, &c.id).await?.as_ref());
    if !state.is_running() {
        return Err(Error::Conflict(
            "you cannot attach to a stopped container, start it first".into(),
        ));
    }
    let log = log_path(&c)?;
    let from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let mut waiter = ctx.client.tasks();
    let wait = waiter.wait(ctx.client.req(WaitRequest {
        container_id: c.id.clone(),
        exec_id: String::new(),
    }));
    follow_until_exit(log, from, wait).await
}

pub async fn container_json(ctx: &Context, c: &Container) -> Result<Value> {
    let task = containers::task(&ctx.client, &c.id).await?;
    let state = State::of(task.as_ref());
    let spec: Value = c
        .spec
        .as_ref()
        .and_then(|s| serde_json::from_slice(&s.value).ok())
        .unwrap_or(Value::Null);
    let (pid, code, finished) = match &state {
        State::Running { pid } | State::Paused { pid } => (*pid, 0, None),
        State::Exited { code, at } => (0, *code, *at),
        _ => (0, 0, None),
    };
    let oom = matches!(state, State::Exited { code: 137, .. }) && oom_killed(&spec);
    let ports: Vec<PortMapping> = ports_of(c);
    let mut port_map = serde_json::Map::new();
    for p in &ports {
        port_map.insert(
            format!("{}/{}", p.container_port, p.protocol),
            json!([{"HostIp": if p.host_ip.is_empty() { "0.0.0.0" } else { &p.host_ip }, "HostPort": p.host_port.to_string()}]),
        );
    }
    let ips: Vec<String> = c
        .labels
        .get(LABEL_IPS)
        .map(|s| s.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let network = c
        .labels
        .get(containers::LABEL_NETWORK)
        .cloned()
        .unwrap_or_default();
    let resources = &spec["linux"]["resources"];
    Ok(json!({
        "Id": c.id,
        "Created": crate::time::rfc3339(created_of(c)),
        "Path": spec["process"]["args"][0],
        "Args": spec["process"]["args"].as_array().map(|a| a[1..].to_vec()).unwrap_or_default(),
        "State": {
            "Status": state.word(),
            "Running": matches!(state, State::Running { .. }),
            "Paused": matches!(state, State::Paused { .. }),
            "OOMKilled": oom,
            "Dead": false,
            "Pid": pid,
            "ExitCode": code,
            "FinishedAt": finished.map(crate::time::rfc3339).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
        },
        "Image": c.image,
        "Name": format!("/{}", name_of(c)),
        "LogPath": c.labels.get(LABEL_LOG),
        "RestartCount": c.labels.get(containers::RESTART_COUNT).and_then(|n| n.parse::<u32>().ok()).unwrap_or(0),
        "Config": {
            "Hostname": spec["hostname"],
            "User": format!("{}:{}", spec["process"]["user"]["uid"], spec["process"]["user"]["gid"]),
            "Tty": spec["process"]["terminal"],
            "Env": spec["process"]["env"],
            "Cmd": spec["process"]["args"],
            "Image": familiar_name(&c.image),
            "WorkingDir": spec["process"]["cwd"],
            "Labels": c.labels,
        },
        "HostConfig": {
            "Memory": resources["memory"]["limit"].as_i64().unwrap_or(0),
            "NanoCpus": resources["cpu"]["quota"].as_i64().map(|q| q * 10_000).unwrap_or(0),
            "PidsLimit": resources["pids"]["limit"],
            "ReadonlyRootfs": spec["root"]["readonly"],
            "Privileged": spec["linux"]["seccomp"].is_null() && spec["linux"]["maskedPaths"].is_null(),
            "NetworkMode": network,
            "PortBindings": port_map,
            "RestartPolicy": {"Name": c.labels.get(containers::RESTART_POLICY).cloned().unwrap_or_else(|| "no".into())},
            "CapAdd": Value::Null,
        },
        "Mounts": spec["mounts"].as_array().map(|m| m.iter().filter(|x| x["type"] == "bind" && !x["destination"].as_str().unwrap_or_default().starts_with("/etc/")).map(|x| json!({
            "Type": "bind", "Source": x["source"], "Destination": x["destination"],
            "RW": !x["options"].as_array().is_some_and(|o| o.contains(&json!("ro"))),
        })).collect::<Vec<_>>()).unwrap_or_default(),
        "NetworkSettings": {
            "IPAddress": ips.first().cloned().unwrap_or_default(),
            "Ports": port_map,
            "Networks": { network.clone(): {"IPAddress": ips.first().cloned().unwrap_or_default()} },
        },
    }))
}

/// Whether the kernel's OOM killer struck in the container's cgroup, which stays until
/// its task is deleted: `oom_kill` in cgroup v1's `memory.oom_control` or v2's
/// `memory.events`.
fn oom_killed(spec: &Value) -> bool {
    let Some(path) = spec["linux"]["cgroupsPath"].as_str() else {
        return false;
    };
    let rel = path.trim_start_matches('/');
    let files = [
        Path::new("/sys/fs/cgroup/memory")
            .join(rel)
            .join("memory.oom_control"),
        Path::new("/sys/fs/cgroup").join(rel).join("memory.events"),
        Path::new("/sys/fs/cgroup/unified")
            .join(rel)
            .join("memory.events"),
    ];
    files.iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().any(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            })
        })
    })
}

pub async fn inspect(
    ctx: &Context,
    names: &[String],
    fmt: Option<&str>,
    kind: Option<&str>,
) -> Result<()> {
    let mut out = Vec::new();
    let mut failures = Failures::default();
    for n in names {
        let mut found = None;
        if kind.is_none_or(|k| k == "container") {
            if let Ok(c) = containers::find(&ctx.client, n).await {
                found = Some(container_json(ctx, &c).await?);
            }
        }
        if found.is_none() && kind.is_none_or(|k| k == "image") {
            if let Ok(i) = crate::image::find(&ctx.client, n).await {
                found = Some(super::images::image_json(ctx, &i).await?);
            }
        }
        if found.is_none() && kind.is_none_or(|k| k == "network") {
            if let Ok(net) = ctx.networks().get(n) {
                found = Some(super::networks::network_json(ctx, &net).await?);
            }
        }
        if found.is_none() && kind.is_none_or(|k| k == "volume") {
            if let Ok(v) = ctx.volumes().get(n) {
                found = Some(serde_json::to_value(v).unwrap_or_default());
            }
        }
        let found = found.ok_or_else(|| Error::NoSuchObject(n.clone()));
        out.extend(failures.check(found));
    }
    super::images::print_inspect(&out, fmt)?;
    failures.finish()
}

pub async fn top(ctx: &Context, name: &str) -> Result<()> {
    let client = &ctx.client;
    let c = containers::find(client, name).await?;
    if !State::of(containers::task(client, &c.id).await?.as_ref()).is_running() {
        return Err(Error::Conflict(format!(
            "container {} is not running",
            name_of(&c)
        )));
    }
    let pids = client
        .tasks()
        .list_pids(client.req(ListPidsRequest {
            container_id: c.id.clone(),
        }))
        .await?
        .into_inner()
        .processes;
    let tick = rustix::param::clock_ticks_per_second().max(1);
    let mut rows = Vec::new();
    for p in pids {
        let dir = PathBuf::from(format!("/proc/{}", p.pid));
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or("?")
            .to_owned();
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ppid = f.get(1).copied().unwrap_or("?").to_owned();
        let cpu: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        let secs = cpu / tick;
        let time = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
        let cmd = std::fs::read(dir.join("cmdline"))
            .map(|b| {
                b.split(|x| *x == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        rows.push(vec![uid, p.pid.to_string(), ppid, time, cmd]);
    }
    print!(
        "{}",
        format::table(&["UID", "PID", "PPID", "TIME", "CMD"], &rows)
    );
    Ok(())
}

pub async fn wait(ctx: &Context, names: &[String]) -> Result<()> {
    let mut failures = Failures::default();
    for n in names {
        let r = async {
            let c = containers::find(&ctx.client, n).await?;
            let s = ctx
                .client
                .tasks()
                .wait(ctx.client.req(WaitRequest {
                    container_id: c.id.clone(),
                    exec_id: String::new(),
                }))
                .await;
            match s {
                Ok(r) => Ok(r.into_inner().exit_status),
                Err(s) if s.code() == Code::NotFound => Err(Error::Conflict(format!(
                    "container {n} has not been started"
                ))),
                Err(s) => Err(s.into()),
            }
        }
        .await;
        if let Some(code) = failures.check(r) {
            println!("{code}");
        }
    }
    failures.finish()
}

pub async fn port(ctx: &Context, name: &str) -> Result<()> {
    let c = containers::find(&ctx.client, name).await?;
    for p in ports_of(&c) {
        let ip = if p.host_ip.is_empty() {
            "0.0.0.0"
        } else {
            &p.host_ip
        };
        println!(
            "{}/{} -> {ip}:{}",
            p.container_port, p.protocol, p.host_port
        );
    }
    Ok(())
}

pub async fn rename(ctx: &Context, name: &str, new_name: &str) -> Result<()> {
    let client = &ctx.client;
    if !containers::valid_name(new_name) {
        return Err(Error::Invalid(format!(
            "invalid container name {new_name:?}"
        )));
    }
    let mut c = containers::find(client, name).await?;
    if let Ok(other) = containers::find(client, new_name).await {
        if other.id != c.id && name_of(&other) == new_name {
            return Err(Error::Conflict(format!(
                "the container name \"/{new_name}\" is already in use by container \"{}\"",
                other.id
            )));
        }
    }
    c.labels.insert(LABEL_NAME.into(), new_name.to_owned());
    client
        .containers()
        .update(client.req(UpdateContainerRequest {
            container: Some(c),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![format!("labels.{LABEL_NAME}")],
            }),
        }))
        .await?;
    Ok(())
}

pub async fn pause(ctx: &Context, names: &[String], pause: bool) -> Result<()> {
    each(ctx, names, |ctx, c| async move {
        let state = State::of(containers::task(&ctx.client, &c.id).await?.as_ref());
        match (pause, &state) {
            (true, State::Running { .. }) => {
                ctx.client
                    .tasks()
                    .pause(ctx.client.req(PauseTaskRequest {
                        container_id: c.id.clone(),
                    }))
                    .await?;
            }
            (false, State::Paused { .. }) => {
                ctx.client
                    .tasks()
                    .resume(ctx.client.req(ResumeTaskRequest {
                        container_id: c.id.clone(),
                    }))
                    .await?;
            }
            (true, State::Paused { .. }) => {
                return Err(Error::Conflict(format!(
                    "container {} is already paused",
                    name_of(&c)
                )))
            }
            (false, _) => {
                return Err(Error::Conflict(format!(
                    "container {} is not paused",
                    name_of(&c)
                )))
            }
            (true, _) => {
                return Err(Error::Conflict(format!(
                    "container {} is not running",
                    name_of(&c)
                )))
            }
        }
        Ok(())
    })
    .await
}

/// Starts the watcher that removes a detached `--rm` container when it exits.
pub fn spawn_autoremove(ctx: &Context, id: &str) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe().map_err(Error::io("find the berth binary"))?;
    let g = &ctx.global;
    std::process::Command::new(exe)
        .arg("--address")
        .arg(&g.address)
        .arg("--namespace")
        .arg(&g.namespace)
        .arg("--data-root")
        .arg(&g.data_root)
        .arg("--cni-path")
        .arg(&g.cni_path)
        .arg("__autoremove")
        .arg(id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(Error::io("start the --rm watcher"))?;
    Ok(())
}

/// The watcher: waits for the task to exit (again after berthd comes back), then removes
/// the container; gives up when the container is gone.
pub async fn autoremove(ctx: &Context, id: &str) -> Result<()> {
    loop {
        let c = match ctx
            .client
            .containers()
            .get(ctx.client.req(GetContainerRequest { id: id.to_owned() }))
            .await
        {
            Ok(r) => match r.into_inner().container {
                Some(c) => c,
                None => return Ok(()),
            },
            Err(s) if s.code() == Code::NotFound => return Ok(()),
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let r = ctx
            .client
            .tasks()
            .wait(ctx.client.req(WaitRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            }))
            .await;
        match r {
            Ok(_) => return containers::remove(&ctx.client, &ctx.networks(), &c, true).await,
            Err(s) if s.code() == Code::NotFound => {
                return containers::remove(&ctx.client, &ctx.networks(), &c, true).await
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

async fn sample(ctx: &Context, c: &Container) -> Option<(crate::stats::Sample, (u64, u64))> {
    let pid = match State::of(containers::task(&ctx.client, &c.id).await.ok()?.as_ref()) {
        State::Running { pid } | State::Paused { pid } => pid,
        _ => return None,
    };
    let m = ctx
        .client
        .tasks()
        .metrics(
            ctx.client
                .req(containerd_client::services::v1::MetricsRequest {
                    filters: vec![format!("id=={}", c.id)],
                }),
        )
        .await
        .ok()?
        .into_inner()
        .metrics;
    let s = m
        .iter()
        .find(|x| x.id == c.id)
        .and_then(|x| x.data.as_ref())
        .and_then(crate::stats::decode)?;
    Some((s, crate::stats::network(pid)))
}

/// `berth stats`: one line per container, refreshed every second (or once).
pub async fn stats(ctx: &Context, names: &[String], all: bool, no_stream: bool) -> Result<()> {
    let client = &ctx.client;
    let mut list = Vec::new();
    if names.is_empty() {
        let tasks = containers::tasks(client).await?;
        for c in containers::list(client).await? {
            if all || State::of(tasks.get(&c.id)).is_running() {
                list.push(c);
            }
        }
    } else {
        for n in names {
            list.push(containers::find(client, n).await?);
        }
    }
    let host_mem = crate::stats::host_memory();
    let mut prev: std::collections::HashMap<String, (crate::stats::Sample, std::time::Instant)> =
        Default::default();
    for c in &list {
        if let Some((s, _)) = sample(ctx, c).await {
            prev.insert(c.id.clone(), (s, std::time::Instant::now()));
        }
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    loop {
        tokio::time::sleep(Duration::from_millis(if no_stream { 500 } else { 1000 })).await;
        let mut rows = Vec::new();
        for c in &list {
            let id = c.id[..12].to_owned();
            let Some((s, (rx, tx))) = sample(ctx, c).await else {
                rows.push(vec![
                    id,
                    name_of(c),
                    "--".into(),
                    "-- / --".into(),
                    "--".into(),
                    "--".into(),
                    "--".into(),
                ]);
                continue;
            };
            let now = std::time::Instant::now();
            let cpu = match prev.get(&c.id) {
                Some((p, t)) => {
                    let wall = now.duration_since(*t).as_nanos() as f64;
                    if wall > 0.0 {
                        (s.cpu_ns.saturating_sub(p.cpu_ns)) as f64 / wall * 100.0
                    } else {
                        0.0
                    }
                }
                None => 0.0,
            };
            prev.insert(c.id.clone(), (s, now));
            let limit = if s.memory_limit == 0 {
                host_mem
            } else {
                s.memory_limit.min(host_mem.max(1))
            };
            let mem_pct = if limit > 0 {
                s.memory as f64 / limit as f64 * 100.0
            } else {
                0.0
            };
            rows.push(vec![
                id,
                name_of(c),
                format!("{:.2}%", cpu.min(cpus * 100.0)),
                format!("{} / {}", binary_size(s.memory), binary_size(limit)),
                format!("{mem_pct:.2}%"),
                format!("{} / {}", format::size(rx as i64), format::size(tx as i64)),
                s.pids.to_string(),
            ]);
        }
        let table = format::table(
            &[
                "CONTAINER ID",
                "NAME",
                "CPU %",
                "MEM USAGE / LIMIT",
                "MEM %",
                "NET I/O",
                "PIDS",
            ],
            &rows,
        );
        if no_stream {
            print!("{table}");
            return Ok(());
        }
        // Redraw in place, as Docker's live view does.
        print!("\x1b[2J\x1b[H{table}");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }
}

fn binary_size(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.2}{}", units[i])
}

/// `berth cp`: between the host and a running container's root, every path in the
/// container resolved inside its root (symlinks cannot lead out).
pub async fn cp(ctx: &Context, source: &str, destination: &str) -> Result<()> {
    let split = |s: &str| -> Option<(String, String)> {
        let (c, p) = s.split_once(':')?;
        (!c.is_empty() && !c.contains('/')).then(|| (c.to_owned(), p.to_owned()))
    };
    let (from, to) = (split(source), split(destination));
    let (name, inside, host, into_container) = match (from, to) {
        (Some((c, p)), None) => (c, p, PathBuf::from(destination), false),
        (None, Some((c, p))) => (c, p, PathBuf::from(source), true),
        _ => {
            return Err(Error::Invalid(
                "copying needs exactly one CONTAINER:PATH and one local path".into(),
            ))
        }
    };
    let c = containers::find(&ctx.client, &name).await?;
    let pid = match State::of(containers::task(&ctx.client, &c.id).await?.as_ref()) {
        State::Running { pid } | State::Paused { pid } => pid,
        _ => {
            return Err(Error::Conflict(format!(
                "container {} is not running: berth cp copies with running containers",
                name_of(&c)
            )))
        }
    };
    tokio::task::spawn_blocking(move || crate::copy::copy(pid, &inside, &host, into_container))
        .await
        .map_err(|e| Error::Daemon(format!("copy stopped: {e}")))?
}
