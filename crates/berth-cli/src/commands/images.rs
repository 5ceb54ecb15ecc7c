//! Image commands: pull and push with Docker's per-layer progress, images, rmi, tag,
//! image inspect and prune, save and load (OCI and Docker archives through the Transfer
//! service), login and logout.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::PathBuf;

use containerd_client::services::v1::{
    CreateImageRequest, DeleteImageRequest, Image, TransferOptions, TransferRequest,
    UpdateImageRequest,
};
use containerd_client::types::transfer::{
    Data, ImageExportStream, ImageImportStream, ImageReference, ImageStore, UnpackConfiguration,
    WindowUpdate,
};
use prost::Message as _;
use serde_json::{json, Value};
use tonic::Code;

use crate::cli::ImagesArgs;
use crate::client::{any_of, SNAPSHOTTER};
use crate::error::{Error, Result};
use crate::format;
use crate::image::{self, short_digest};
use crate::progress::Display;
use crate::reference::{familiar_name, Reference};
use crate::transfer;
use crate::Context;

/// `berth pull`: per-layer progress (unless quiet), then Docker's summary lines; returns
/// the image record pulled.
pub async fn pull_with_progress(ctx: &Context, r: &Reference, quiet: bool) -> Result<Image> {
    let mut display = Display::new(false);
    if !quiet {
        let what = r
            .tag
            .clone()
            .or_else(|| r.digest.clone())
            .unwrap_or_default();
        display.say(&format!("{what}: Pulling from {}", r.path));
    }
    let before = image::find(&ctx.client, &r.to_string()).await.ok();
    let result = transfer::pull(&ctx.client, r, |p| {
        if !quiet {
            display.event(&p)
        }
    })
    .await;
    if let Err(e) = result {
        display.abandon();
        return Err(e);
    }
    if !quiet {
        display.finish();
    }
    let after = image::find(&ctx.client, &r.to_string()).await?;
    if !quiet {
        let digest = after
            .target
            .as_ref()
            .map(|t| t.digest.clone())
            .unwrap_or_default();
        eprintln!("Digest: {digest}");
        let same = before.and_then(|b| b.target).map(|t| t.digest) == Some(digest);
        if same && !display.transferred {
            eprintln!("Status: Image is up to date for {}", r.familiar());
        } else {
            eprintln!("Status: Downloaded newer image for {}", r.familiar());
        }
    }
    Ok(after)
}

pub async fn pull(ctx: &Context, name: &str, quiet: bool) -> Result<()> {
    let r = Reference::parse(name)?;
    if !quiet && !name.contains(':') && !name.contains('@') {
        eprintln!("Using default tag: latest");
    }
    pull_with_progress(ctx, &r, quiet).await?;
    println!("{r}");
    Ok(())
}

pub async fn push(ctx: &Context, name: &str, quiet: bool) -> Result<()> {
    let r = Reference::parse(name)?;
    let img = image::find(&ctx.client, name).await?;
    let mut display = Display::new(true);
    if !quiet {
        display.say(&format!(
            "The push refers to repository [{}]",
            r.repository()
        ));
    }
    let result = transfer::push(&ctx.client, &img.name, &r, |p| {
        if !quiet {
            display.event(&p)
        }
    })
    .await;
    if let Err(e) = result {
        display.abandon();
        return Err(e);
    }
    if !quiet {
        display.finish();
        let d = img
            .target
            .as_ref()
            .map(|t| (t.digest.clone(), t.size))
            .unwrap_or_default();
        eprintln!(
            "{}: digest: {} size: {}",
            r.tag.as_deref().unwrap_or("latest"),
            d.0,
            d.1
        );
    }
    Ok(())
}

/// Docker's inspect object for an image.
pub async fn image_json(ctx: &Context, img: &Image) -> Result<Value> {
    let r = image::resolve(&ctx.client, img).await?;
    let all = image::list(&ctx.client).await?;
    let tags: Vec<String> = all
        .iter()
        .filter(|i| i.target.as_ref().map(|t| &t.digest) == Some(&r.target))
        .map(|i| familiar_name(&i.name))
        .collect();
    let repo_digests: Vec<String> = all
        .iter()
        .filter(|i| i.target.as_ref().map(|t| &t.digest) == Some(&r.target))
        .filter_map(|i| Reference::parse(&i.name).ok())
        .map(|x| format!("{}@{}", x.familiar_repository(), r.target))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    Ok(json!({
        "Id": r.config_digest,
        "RepoTags": tags,
        "RepoDigests": repo_digests,
        "Created": r.created().unwrap_or_default(),
        "Config": r.config.get("config").cloned().unwrap_or(Value::Null),
        "Architecture": r.config.get("architecture").cloned().unwrap_or(Value::Null),
        "Os": r.config.get("os").cloned().unwrap_or(Value::Null),
        "Size": r.size(),
        "RootFS": {"Type": "layers", "Layers": r.config["rootfs"]["diff_ids"].clone()},
        "Metadata": {"LastTagTime": img.updated_at.as_ref().map(|t| crate::time::rfc3339(crate::time::from_timestamp(t)))},
    }))
}

pub async fn inspect_images(ctx: &Context, names: &[String], fmt: Option<&str>) -> Result<()> {
    let mut out = Vec::new();
    let mut failures = super::Failures::default();
    for n in names {
        if let Some(i) = failures.check(image::find(&ctx.client, n).await) {
            out.push(image_json(ctx, &i).await?);
        }
    }
    print_inspect(&out, fmt)?;
    failures.finish()
}

pub fn print_inspect(items: &[Value], fmt: Option<&str>) -> Result<()> {
    match fmt {
        Some(f) if f != "json" => {
            for v in items {
                println!("{}", format::template(f, v)?);
            }
        }
        _ => println!(
            "{}",
            serde_json::to_string_pretty(&Value::Array(items.to_vec())).unwrap_or_default()
        ),
    }
    Ok(())
}

pub async fn images(ctx: &Context, a: &ImagesArgs) -> Result<()> {
    let mut all = image::list(&ctx.client).await?;
    all.sort_by(|x, y| {
        y.created_at
            .as_ref()
            .map(|t| t.seconds)
            .cmp(&x.created_at.as_ref().map(|t| t.seconds))
    });
    let wanted = a
        .reference
        .as_deref()
        .map(|r| Reference::parse(r).map(|x| (x, r.contains(':'))));
    let wanted = wanted.transpose()?;
    let mut rows = Vec::new();
    let mut items = Vec::new();
    let mut ids_seen = HashSet::new();
    for i in &all {
        let r = match image::resolve(&ctx.client, i).await {
            Ok(r) => r,
            // An image whose content is incomplete is listed, not hidden.
            Err(_) => continue,
        };
        let (repo, tag) = match Reference::parse(&i.name) {
            Ok(x) => {
                if let Some((w, with_tag)) = &wanted {
                    if x.repository() != w.repository() || (*with_tag && x.tag != w.tag) {
                        continue;
                    }
                }
                (
                    x.familiar_repository(),
                    x.tag.clone().unwrap_or_else(|| "<none>".into()),
                )
            }
            Err(_) => (i.name.clone(), "<none>".into()),
        };
        let id = if a.no_trunc {
            r.config_digest.clone()
        } else {
            r.short_id()
        };
        let created = r
            .created()
            .and_then(crate::time::parse_rfc3339)
            .map(crate::time::ago)
            .unwrap_or_else(|| "N/A".into());
        let digest = i
            .target
            .as_ref()
            .map(|t| t.digest.clone())
            .unwrap_or_default();
        if a.quiet {
            if ids_seen.insert(id.clone()) {
                println!("{id}");
            }
            continue;
        }
        items.push(
            json!({"Repository": repo, "Tag": tag, "ID": id, "Digest": digest,
                          "CreatedSince": created, "Size": format::size(r.size())}),
        );
        let mut row = vec![repo, tag];
        if a.digests {
            row.push(digest);
        }
        row.extend([id, created, format::size(r.size())]);
        rows.push(row);
    }
    if a.quiet || format::print_formatted(a.format.as_deref(), &items)? {
        return Ok(());
    }
    let headers: Vec<&str> = if a.digests {
        vec!["REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE"]
    } else {
        vec!["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]
    };
    print!("{}", format::table(&headers, &rows));
    Ok(())
}

/// `berth rmi`: by name untags (the last name deletes); by id removes every name of it
/// (with `-f` when there are several). An image a container uses is refused without `-f`.
pub async fn rmi(ctx: &Context, names: &[String], force: bool) -> Result<()> {
    let mut failures = super::Failures::default();
    for n in names {
        failures.check(rmi_one(ctx, n, force).await);
    }
    failures.finish()
}

async fn rmi_one(ctx: &Context, name: &str, force: bool) -> Result<()> {
    let client = &ctx.client;
    let img = image::find(client, name).await?;
    let target = img
        .target
        .as_ref()
        .map(|t| t.digest.clone())
        .unwrap_or_default();
    let all = image::list(client).await?;
    let same: Vec<&Image> = all
        .iter()
        .filter(|i| i.target.as_ref().map(|t| &t.digest) == Some(&target))
        .collect();
    let by_name = Reference::parse(name).ok().map(|r| r.to_string()) == Some(img.name.clone())
        || name == img.name;
    let victims: Vec<&Image> = if by_name { vec![&img] } else { same.clone() };
    if !by_name && victims.len() > 1 && !force {
        return Err(Error::Conflict(format!(
            "conflict: unable to delete {name} (must be forced) - image is referenced in multiple repositories"
        )));
    }
    // Deleting the last name of an image in use is refused unless forced.
    if victims.len() == same.len() && !force {
        let users: Vec<String> = crate::containers::list(client)
            .await?
            .into_iter()
            .filter(|c| victims.iter().any(|v| v.name == c.image))
            .map(|c| crate::containers::name_of(&c))
            .collect();
        if let Some(u) = users.first() {
            return Err(Error::Conflict(format!(
                "conflict: unable to remove repository reference {name:?} (must force) - container {u} is using its referenced image {}",
                short_digest(&target)
            )));
        }
    }
    for v in &victims {
        client
            .images()
            .delete(client.req(DeleteImageRequest {
                name: v.name.clone(),
                sync: false,
                target: None,
            }))
            .await?;
        println!("Untagged: {}", familiar_name(&v.name));
    }
    if victims.len() == same.len() {
        if let Ok(r) = image::resolve(client, &img).await {
            println!("Deleted: {}", r.config_digest);
        } else {
            println!("Deleted: {target}");
        }
    }
    Ok(())
}

pub async fn tag(ctx: &Context, source: &str, target: &str) -> Result<()> {
    let client = &ctx.client;
    let img = image::find(client, source).await?;
    let t = Reference::parse(target)?.to_string();
    let record = Image {
        name: t.clone(),
        labels: img.labels.clone(),
        target: img.target.clone(),
        created_at: None,
        updated_at: None,
    };
    match client
        .images()
        .create(client.req(CreateImageRequest {
            image: Some(record.clone()),
            source_date_epoch: None,
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::AlreadyExists => {
            client
                .images()
                .update(client.req(UpdateImageRequest {
                    image: Some(record),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["target".into()],
                    }),
                    source_date_epoch: None,
                }))
                .await?;
            Ok(())
        }
        Err(s) => Err(s.into()),
    }
}

pub async fn prune(ctx: &Context, all: bool) -> Result<()> {
    let client = &ctx.client;
    let used: HashSet<String> = crate::containers::list(client)
        .await?
        .into_iter()
        .map(|c| c.image)
        .collect();
    let mut reclaimed = 0i64;
    let mut deleted = Vec::new();
    for i in image::list(client).await? {
        let dangling = Reference::parse(&i.name).is_err();
        if used.contains(&i.name) || !(all || dangling) {
            continue;
        }
        if let Ok(r) = image::resolve(client, &i).await {
            reclaimed += r.size();
        }
        client
            .images()
            .delete(client.req(DeleteImageRequest {
                name: i.name.clone(),
                sync: false,
                target: None,
            }))
            .await?;
        deleted.push(i.name);
    }
    if !deleted.is_empty() {
        println!("Deleted Images:");
        for d in &deleted {
            println!("untagged: {}", familiar_name(d));
        }
        println!();
    }
    println!("Total reclaimed space: {}", format::size(reclaimed));
    Ok(())
}

/// `berth save`: the images (by their stored names) into one archive, OCI layout with
/// Docker's manifest.json, streamed from berthd.
pub async fn save(ctx: &Context, names: &[String], output: Option<&PathBuf>) -> Result<()> {
    use std::io::IsTerminal as _;
    let client = &ctx.client;
    let mut stored = Vec::new();
    for n in names {
        stored.push(image::find(client, n).await?.name);
    }
    if output.is_none() && std::io::stdout().is_terminal() {
        return Err(Error::Invalid(
            "cowardly refusing to save to a terminal: use the -o flag or redirect".into(),
        ));
    }
    let mut out: Box<dyn Write + Send> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(Error::io(format!("create {}", p.display())))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let mut s = transfer::open_stream(client, "export").await?;
    let src = ImageStore {
        name: stored[0].clone(),
        extra_references: stored[1..]
            .iter()
            .map(|n| ImageReference {
                name: n.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let dst = ImageExportStream {
        stream: s.id.clone(),
        platforms: vec![transfer::host_platform()],
        ..Default::default()
    };
    let req = TransferRequest {
        source: Some(any_of(&src)),
        destination: Some(any_of(&dst)),
        options: Some(TransferOptions::default()),
    };
    let tx = s.tx.clone();
    let receiver = async move {
        tx.send(any_of(&WindowUpdate { update: 1 << 20 }))
            .await
            .ok();
        while let Ok(Some(m)) = s.rx.message().await {
            let Ok(d) = Data::decode(m.value.as_slice()) else {
                break;
            };
            out.write_all(&d.data)
                .map_err(Error::io("write the archive"))?;
            let _ = tx
                .send(any_of(&WindowUpdate {
                    update: d.data.len() as i32,
                }))
                .await;
        }
        out.flush().map_err(Error::io("write the archive"))?;
        Ok::<_, Error>(())
    };
    let mut t = client.transfer();
    let call = t.transfer(client.req(req));
    let (r, w) = tokio::join!(call, receiver);
    if r.is_err() {
        if let Some(p) = output {
            let _ = std::fs::remove_file(p);
        }
    }
    r?;
    w
}

/// `berth load`: an OCI or Docker archive streamed into berthd and unpacked.
pub async fn load(ctx: &Context, input: Option<&PathBuf>, quiet: bool) -> Result<()> {
    let client = &ctx.client;
    let mut src: Box<dyn Read + Send> = match input {
        Some(p) => {
            Box::new(std::fs::File::open(p).map_err(Error::io(format!("open {}", p.display())))?)
        }
        None => {
            use std::io::IsTerminal as _;
            if std::io::stdin().is_terminal() {
                return Err(Error::Invalid(
                    "requested load from stdin, but stdin is empty: use -i FILE or redirect".into(),
                ));
            }
            Box::new(std::io::stdin())
        }
    };
    let before: HashMap<String, String> = image::list(client)
        .await?
        .into_iter()
        .map(|i| (i.name, i.target.map(|t| t.digest).unwrap_or_default()))
        .collect();
    let mut s = transfer::open_stream(client, "import").await?;
    let (tx, mut rx) = (s.tx.clone(), s.rx);
    s.tx = tokio::sync::mpsc::channel(1).0;
    // The archive is read on a thread of its own, a chunk ahead of berthd's credit.
    let (chunks_tx, mut chunks) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    std::thread::spawn(move || loop {
        let mut buf = vec![0u8; 64 << 10];
        let r = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                buf.truncate(n);
                Ok(buf)
            }
            Err(e) => Err(e),
        };
        let failed = r.is_err();
        if chunks_tx.blocking_send(r).is_err() || failed {
            break;
        }
    });
    let sender = tokio::spawn(async move {
        let mut credit: i64 = 0;
        let mut pending: Option<Vec<u8>> = None;
        'outer: loop {
            let chunk = match pending.take() {
                Some(c) => c,
                None => match chunks.recv().await {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => return Err(Error::io("read the archive")(e)),
                    None => break,
                },
            };
            while credit <= 0 {
                match rx.message().await {
                    Ok(Some(m)) => {
                        if let Ok(w) = WindowUpdate::decode(m.value.as_slice()) {
                            credit += i64::from(w.update);
                        }
                    }
                    _ => break 'outer,
                }
            }
            let n = chunk.len().min(credit as usize);
            credit -= n as i64;
            if n < chunk.len() {
                pending = Some(chunk[n..].to_vec());
            }
            if tx
                .send(any_of(&Data {
                    data: chunk[..n].to_vec(),
                }))
                .await
                .is_err()
            {
                break;
            }
        }
        drop(tx);
        // The response half stays open until the transfer is over.
        Ok::<_, Error>(rx)
    });
    let dst = ImageStore {
        unpacks: vec![UnpackConfiguration {
            platform: Some(transfer::host_platform()),
            snapshotter: SNAPSHOTTER.into(),
        }],
        ..Default::default()
    };
    let source = ImageImportStream {
        stream: s.id.clone(),
        media_type: String::new(),
        force_compress: false,
    };
    let req = TransferRequest {
        source: Some(any_of(&source)),
        destination: Some(any_of(&dst)),
        options: Some(TransferOptions::default()),
    };
    let r = client.transfer().transfer(client.req(req)).await;
    let sent = sender
        .await
        .map_err(|e| Error::Daemon(format!("sending the archive stopped: {e}")))?;
    r?;
    sent?;
    for i in image::list(client).await? {
        let d = i.target.map(|t| t.digest).unwrap_or_default();
        if before.get(&i.name) != Some(&d) && !quiet {
            println!("Loaded image: {}", familiar_name(&i.name));
        }
    }
    Ok(())
}

pub async fn login(
    ctx: &Context,
    server: Option<&str>,
    user: Option<String>,
    password: Option<String>,
    password_stdin: bool,
) -> Result<()> {
    let host = server
        .map(|s| {
            s.trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned()
        })
        .unwrap_or_else(|| crate::reference::DEFAULT_DOMAIN.to_owned());
    let user = match user {
        Some(u) => u,
        None => prompt("Username: ")?,
    };
    let password = match (password, password_stdin) {
        (Some(p), _) => {
            eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
            p
        }
        (None, true) => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(Error::io("read the password"))?;
            s.trim_end_matches(['\n', '\r']).to_owned()
        }
        (None, false) => prompt_hidden("Password: ")?,
    };
    if user.is_empty() || password.is_empty() {
        return Err(Error::Invalid(
            "a user name and a password are needed".into(),
        ));
    }
    crate::registry_auth::check(&host, &user, &password).await?;
    crate::credentials::store(&host, &user, &password)?;
    let _ = ctx;
    println!("Login Succeeded");
    Ok(())
}

pub fn logout(server: Option<&str>) -> Result<()> {
    let host = server
        .map(|s| {
            s.trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned()
        })
        .unwrap_or_else(|| crate::reference::DEFAULT_DOMAIN.to_owned());
    if crate::credentials::erase(&host)? {
        println!("Removing login credentials for {host}");
    } else {
        println!("Not logged in to {host}");
    }
    Ok(())
}

fn prompt(text: &str) -> Result<String> {
    eprint!("{text}");
    let mut s = String::new();
    std::io::stdin()
        .read_line(&mut s)
        .map_err(Error::io("read from the terminal"))?;
    Ok(s.trim().to_owned())
}

fn prompt_hidden(text: &str) -> Result<String> {
    use std::os::fd::AsFd;
    let stdin = std::io::stdin();
    let saved = rustix::termios::tcgetattr(stdin.as_fd()).ok();
    if let Some(s) = &saved {
        let mut quiet = s.clone();
        quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
        let _ = rustix::termios::tcsetattr(
            stdin.as_fd(),
            rustix::termios::OptionalActions::Now,
            &quiet,
        );
    }
    let r = prompt(text);
    if let Some(s) = &saved {
        let _ = rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Now, s);
        eprintln!();
    }
    r
}
