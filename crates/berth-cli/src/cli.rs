//! The command line's grammar, Docker's: the same commands, flags and short forms, with
//! berth's global flags (`--address`, `--namespace`, `--debug`) and their environment
//! variables.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::run::{CreateArgs, RunArgs};

#[derive(Parser, Debug)]
#[command(
    name = "berth",
    version,
    about = "A docker-compatible command line for berthd",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// berthd's socket
    #[arg(
        long,
        global = true,
        env = "BERTH_ADDRESS",
        default_value = "/run/berth/berth.sock"
    )]
    pub address: PathBuf,
    /// The namespace containers and images live in
    #[arg(
        long,
        global = true,
        env = "BERTH_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    /// Print errors with their details
    #[arg(long, global = true)]
    pub debug: bool,
    /// Where berth keeps its own files (logs, networks, volumes) for each berthd
    #[arg(
        long,
        global = true,
        env = "BERTH_DATA_ROOT",
        default_value = "/var/lib/berth-cli"
    )]
    pub data_root: PathBuf,
    /// Directories of the CNI plugins
    #[arg(
        long,
        global = true,
        env = "BERTH_CNI_PATH",
        default_value = "/usr/lib/cni:/opt/cni/bin"
    )]
    pub cni_path: String,
}

#[derive(Args, Debug, Clone)]
pub struct PsArgs {
    /// Show all containers (default shows just running)
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only display container IDs
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Filter output (name=, id=, status=, label=, ancestor=)
    #[arg(short = 'f', long)]
    pub filter: Vec<String>,
    /// Format output: table, json, or a {{.Field}} template
    #[arg(long)]
    pub format: Option<String>,
    /// Don't truncate output
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Show the latest created container
    #[arg(short = 'l', long)]
    pub latest: bool,
}

#[derive(Args, Debug, Clone)]
pub struct LogsArgs {
    /// Follow log output
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Number of lines to show from the end of the logs ("all" for all)
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    /// Show logs since a timestamp (RFC 3339) or a relative time (42m)
    #[arg(long)]
    pub since: Option<String>,
    /// Show logs before a timestamp or a relative time
    #[arg(long)]
    pub until: Option<String>,
    /// Show timestamps
    #[arg(short = 't', long)]
    pub timestamps: bool,
    pub container: String,
}

#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    /// Detached mode: run command in the background
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep STDIN open
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set environment variables
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Username or UID
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Give extended privileges to the command
    #[arg(long)]
    pub privileged: bool,
    pub container: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create and run a new container from an image
    Run(RunArgs),
    /// Create a new container
    #[command(disable_help_flag = true)]
    Create(CreateArgs),
    /// Start one or more stopped containers
    Start {
        /// Attach STDOUT/STDERR (follow the output until the container exits)
        #[arg(short = 'a', long)]
        attach: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop one or more running containers
    Stop {
        /// Seconds to wait before killing the container
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        /// Signal to send to the container
        #[arg(short = 's', long)]
        signal: Option<String>,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Restart one or more containers
    Restart {
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Kill one or more running containers
    Kill {
        /// Signal to send to the container
        #[arg(short = 's', long, default_value = "KILL")]
        signal: String,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove one or more containers
    Rm {
        /// Force the removal of a running container (uses SIGKILL)
        #[arg(short = 'f', long)]
        force: bool,
        /// Remove anonymous volumes associated with the container
        #[arg(short = 'v', long)]
        volumes: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// List containers
    Ps(PsArgs),
    /// Fetch the logs of a container
    Logs(LogsArgs),
    /// Execute a command in a running container
    Exec(ExecArgs),
    /// Attach local standard input, output, and error streams to a running container
    Attach { container: String },
    /// Return low-level information on containers, images, networks or volumes
    Inspect {
        /// Format output: json, or a {{.Field}} template
        #[arg(short = 'f', long)]
        format: Option<String>,
        /// Only inspect this type of object (container, image, network, volume)
        #[arg(long = "type")]
        kind: Option<String>,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Display the running processes of a container
    Top { container: String },
    /// Display a live stream of container resource usage statistics
    Stats {
        /// Disable streaming stats and only pull the first result
        #[arg(long = "no-stream")]
        no_stream: bool,
        /// Show all containers (default shows just running)
        #[arg(short = 'a', long)]
        all: bool,
        containers: Vec<String>,
    },
    /// Block until one or more containers stop, then print their exit codes
    Wait {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// List port mappings of a container
    Port { container: String },
    /// Rename a container
    Rename { container: String, new_name: String },
    /// Pause all processes within one or more containers
    Pause {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Unpause all processes within one or more containers
    Unpause {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Copy files between a container and the local filesystem (CONTAINER:PATH or PATH)
    Cp { source: String, destination: String },
    /// Download an image from a registry
    Pull(ImageArgs),
    /// Upload an image to a registry
    Push(ImageArgs),
    /// List images
    Images(ImagesArgs),
    /// Remove one or more images
    Rmi(RmiArgs),
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE
    Tag { source: String, target: String },
    /// Save one or more images to a tar archive (streamed to STDOUT by default)
    Save(SaveArgs),
    /// Load an image from a tar archive or STDIN
    Load(LoadArgs),
    /// Log in to a registry
    Login {
        #[arg(short = 'u', long)]
        username: Option<String>,
        #[arg(short = 'p', long)]
        password: Option<String>,
        /// Take the password from stdin
        #[arg(long = "password-stdin")]
        password_stdin: bool,
        server: Option<String>,
    },
    /// Log out from a registry
    Logout { server: Option<String> },
    /// Manage images
    #[command(subcommand)]
    Image(ImageCommand),
    /// Manage networks
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Manage volumes
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Manage berth
    #[command(subcommand)]
    System(SystemCommand),
    /// Display system-wide information
    Info,
    /// Show the berth and berthd version information
    Version,
    /// Get real time events from berthd
    Events {
        /// Filter by topic prefix (e.g. /tasks)
        #[arg(short = 'f', long)]
        filter: Vec<String>,
    },
    /// Print a shell completion script (bash, zsh or fish)
    Completion { shell: clap_complete::Shell },
    /// The json-file logger a shim starts (internal)
    #[command(name = "__logger", hide = true)]
    Logger { path: PathBuf },
    /// Removes a detached `--rm` container when it exits (internal)
    #[command(name = "__autoremove", hide = true)]
    Autoremove { id: String },
}

/// `network ls` and `volume ls`.
#[derive(Args, Debug, Clone)]
pub struct LsArgs {
    /// Only display names or ids
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Format output: table, json, or a {{.Field}} template
    #[arg(long)]
    pub format: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct ImageArgs {
    /// Suppress verbose output
    #[arg(short = 'q', long)]
    pub quiet: bool,
    pub image: String,
}

#[derive(Args, Debug, Clone)]
pub struct RmiArgs {
    /// Force removal of the image
    #[arg(short = 'f', long)]
    pub force: bool,
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct SaveArgs {
    /// Write to a file, instead of STDOUT
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Read from tar archive file, instead of STDIN
    #[arg(short = 'i', long)]
    pub input: Option<PathBuf>,
    /// Suppress the loaded images' names
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ImagesArgs {
    /// Only show image IDs
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Show digests
    #[arg(long)]
    pub digests: bool,
    /// Format output: table, json, or a {{.Field}} template
    #[arg(long)]
    pub format: Option<String>,
    /// Don't truncate output
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Show only images of this repository[:tag]
    pub reference: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// List images
    #[command(alias = "list")]
    Ls(ImagesArgs),
    /// Download an image from a registry
    Pull(ImageArgs),
    /// Upload an image to a registry
    Push(ImageArgs),
    /// Remove one or more images
    #[command(alias = "remove")]
    Rm(RmiArgs),
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE
    Tag { source: String, target: String },
    /// Display detailed information on one or more images
    Inspect {
        #[arg(short = 'f', long)]
        format: Option<String>,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove unused images (dangling ones; all unused with -a)
    Prune {
        /// Remove all images not used by a container
        #[arg(short = 'a', long)]
        all: bool,
        /// Do not prompt for confirmation
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Save one or more images to a tar archive
    Save(SaveArgs),
    /// Load an image from a tar archive or STDIN
    Load(LoadArgs),
}

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a network
    Create {
        /// Subnet in CIDR format (e.g. 10.89.5.0/24)
        #[arg(long)]
        subnet: Option<String>,
        /// Driver (only bridge)
        #[arg(short = 'd', long, default_value = "bridge")]
        driver: String,
        #[arg(long)]
        label: Vec<String>,
        name: String,
    },
    /// List networks
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more networks
    Inspect {
        #[arg(short = 'f', long)]
        format: Option<String>,
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove one or more networks
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove all unused networks
    Prune {
        #[arg(short = 'f', long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume
    Create {
        #[arg(long)]
        label: Vec<String>,
        name: Option<String>,
    },
    /// List volumes
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more volumes
    Inspect {
        #[arg(short = 'f', long)]
        format: Option<String>,
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove one or more volumes
    #[command(alias = "remove")]
    Rm {
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove all unused volumes
    Prune {
        #[arg(short = 'f', long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SystemCommand {
    /// Remove stopped containers, unused networks, dangling images (all unused with -a)
    Prune {
        #[arg(short = 'a', long)]
        all: bool,
        #[arg(short = 'f', long)]
        force: bool,
        /// Prune anonymous volumes too
        #[arg(long)]
        volumes: bool,
    },
    /// Display system-wide information
    Info,
}

pub fn print_completions(shell: clap_complete::Shell) {
    write_completions(shell, &mut std::io::stdout());
}

pub fn write_completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "berth", out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_name_the_commands_and_their_flags() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            write_completions(shell, &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.contains("run") && text.contains("publish") && text.contains("network"),
                "{shell}"
            );
        }
    }

    #[test]
    fn flags_after_the_image_belong_to_the_command() {
        let c = Cli::try_parse_from([
            "berth", "run", "--rm", "-it", "-h", "box", "busybox", "sh", "-c", "ls -l",
        ])
        .unwrap();
        let Command::Run(r) = c.command else {
            panic!("not run")
        };
        assert!(r.create.rm && r.create.interactive && r.create.tty && !r.detach);
        assert_eq!(r.create.hostname.as_deref(), Some("box"));
        assert_eq!(r.create.image_and_command, ["busybox", "sh", "-c", "ls -l"]);
        let c = Cli::try_parse_from(["berth", "exec", "-it", "web", "ls", "-la"]).unwrap();
        let Command::Exec(e) = c.command else {
            panic!("not exec")
        };
        assert_eq!(e.command, ["ls", "-la"]);
        let c = Cli::try_parse_from(["berth", "run", "-d", "-p", "8080:80", "-e", "A=1", "img"])
            .unwrap();
        let Command::Run(r) = c.command else {
            panic!("not run")
        };
        assert!(r.detach && r.create.publish == ["8080:80"] && r.create.env == ["A=1"]);
    }
}
