//! berth-cli: the `berth` command line, a client of berthd's gRPC API (containerd API v1,
//! Transfer and events) that a Docker user runs without reading a manual. Commands are
//! grouped by what they act on (`commands::{containers, images, networks, volumes,
//! system}`); the pieces they share — the connection, image resolution, the OCI spec, the
//! json-file logs, the attached stdio, networks and volumes — are modules of their own.

pub mod cli;
pub mod client;
pub mod commands;
pub mod containers;
pub mod copy;
pub mod credentials;
pub mod error;
pub mod format;
pub mod image;
pub mod io;
pub mod logs;
pub mod network;
pub mod progress;
pub mod reference;
pub mod registry_auth;
pub mod run;
pub mod signal;
pub mod spec;
pub mod stats;
pub mod time;
pub mod transfer;
pub mod volumes;

use std::path::PathBuf;

use clap::Parser as _;

use crate::client::Client;
use crate::containers::Paths;
use crate::error::{Error, Result};

/// What every command works with.
pub struct Context {
    pub client: Client,
    pub paths: Paths,
    pub cni_path: Vec<PathBuf>,
    pub global: cli::Global,
}

impl Context {
    pub fn networks(&self) -> network::Networks {
        network::Networks::new(&self.paths, self.cni_path.clone())
    }

    pub fn volumes(&self) -> volumes::Volumes {
        volumes::Volumes::new(&self.paths)
    }
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    // A bug is reported in one line, as any other error, never as a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("Error: internal error in berth: {info}");
    }));
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 125 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    // The logger runs for a container's whole life: no runtime, no connection.
    if let cli::Command::Logger { path } = &cli.command {
        return match logs::run_logger(path) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("berth logger: {e}");
                1
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: start the runtime: {e}");
            return 125;
        }
    };
    let debug = cli.global.debug;
    let r = rt.block_on(dispatch(cli));
    // Blocking reads of our stdin may still be pending; they must not hold the exit.
    rt.shutdown_background();
    match r {
        Ok(()) => 0,
        Err(Error::Exit(c)) => c,
        Err(e) => {
            if debug {
                eprintln!("Error: {e:?}");
            } else {
                eprintln!("Error: {e}");
            }
            e.exit_code()
        }
    }
}

async fn connect(g: &cli::Global) -> Result<Context> {
    let client = Client::connect(&g.address, &g.namespace).await?;
    Ok(Context {
        paths: Paths::new(&g.data_root, &g.address),
        cni_path: std::env::split_paths(&g.cni_path).collect(),
        client,
        global: g.clone(),
    })
}

async fn dispatch(cli: cli::Cli) -> Result<()> {
    use cli::Command as C;
    if let C::Completion { shell } = &cli.command {
        cli::print_completions(*shell);
        return Ok(());
    }
    let ctx = connect(&cli.global).await?;
    commands::run(&ctx, cli.command).await
}
