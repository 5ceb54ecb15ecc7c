//! runc's command line, the subset a shim uses, parsed the way runc reads it: global flags,
//! then a command with its own flags, then the container id (and, for kill, a signal).

use std::{ffi::OsString, fmt, path::PathBuf};

/// Where containers' state lives when `--root` is not given (runc's is `/run/runc`).
pub const DEFAULT_ROOT: &str = "/run/berth-runtime";

/// Flags before the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Globals {
    pub root: PathBuf,
    pub log: Option<PathBuf>,
    pub systemd_cgroup: bool,
}

/// One command and its operands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Create {
        id: String,
        bundle: PathBuf,
        pid_file: Option<PathBuf>,
        console_socket: Option<PathBuf>,
        no_pivot: bool,
    },
    Start {
        id: String,
    },
    Exec {
        id: String,
        process: PathBuf,
        pid_file: Option<PathBuf>,
        console_socket: Option<PathBuf>,
    },
    Kill {
        id: String,
        signal: String,
        all: bool,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    Delete {
        id: String,
        force: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub globals: Globals,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

fn err(message: impl Into<String>) -> ParseError {
    ParseError(message.into())
}

/// A cursor over the arguments that splits `--flag=value` and accepts one or two dashes.
struct Args {
    items: Vec<String>,
    pos: usize,
}

impl Args {
    fn next(&mut self) -> Option<String> {
        let item = self.items.get(self.pos).cloned();
        self.pos += 1;
        item
    }

    fn value(&mut self, flag: &str, inline: Option<String>) -> Result<String, ParseError> {
        match inline {
            Some(v) => Ok(v),
            None => self
                .next()
                .ok_or_else(|| err(format!("flag --{flag} needs a value"))),
        }
    }
}

/// Splits `--name=value` / `-name` into the name and an inline value; `None` for an operand.
fn flag(arg: &str) -> Option<(String, Option<String>)> {
    let body = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
    if body.is_empty() {
        return None;
    }
    Some(match body.split_once('=') {
        Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
        None => (body.to_owned(), None),
    })
}

fn is_bool_true(inline: Option<String>) -> Result<bool, ParseError> {
    match inline.as_deref() {
        None | Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(err(format!("not a boolean: {other}"))),
    }
}

impl Invocation {
    pub fn parse(raw: &[OsString]) -> Result<Self, ParseError> {
        let items = raw
            .iter()
            .map(|a| {
                a.to_str()
                    .map(str::to_owned)
                    .ok_or_else(|| err(format!("argument {a:?} is not UTF-8")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut args = Args { items, pos: 0 };
        let mut globals = Globals {
            root: PathBuf::from(DEFAULT_ROOT),
            log: None,
            systemd_cgroup: false,
        };
        let name = loop {
            let Some(arg) = args.next() else {
                return Err(err("no command given"));
            };
            let Some((name, inline)) = flag(&arg) else {
                break arg;
            };
            match name.as_str() {
                "root" => globals.root = args.value("root", inline)?.into(),
                "log" => globals.log = Some(args.value("log", inline)?.into()),
                "log-format" => {
                    let format = args.value("log-format", inline)?;
                    if format != "json" && format != "text" {
                        return Err(err(format!("unknown log format {format:?}")));
                    }
                }
                "systemd-cgroup" => globals.systemd_cgroup = is_bool_true(inline)?,
                "debug" => {
                    is_bool_true(inline)?;
                }
                other => return Err(err(format!("unknown global flag --{other}"))),
            }
        };
        let command = parse_command(&name, &mut args)?;
        Ok(Invocation { globals, command })
    }
}

fn parse_command(name: &str, args: &mut Args) -> Result<Command, ParseError> {
    let mut bundle = None;
    let mut pid_file = None;
    let mut console_socket = None;
    let mut process = None;
    let mut no_pivot = false;
    let mut all = false;
    let mut force = false;
    let mut operands = Vec::new();
    while let Some(arg) = args.next() {
        let Some((flag_name, inline)) = flag(&arg) else {
            operands.push(arg);
            continue;
        };
        match (name, flag_name.as_str()) {
            ("create", "bundle" | "b") => bundle = Some(args.value("bundle", inline)?),
            ("create" | "exec", "pid-file") => pid_file = Some(args.value("pid-file", inline)?),
            ("create" | "exec", "console-socket") => {
                console_socket = Some(args.value("console-socket", inline)?)
            }
            ("create", "no-pivot") => no_pivot = is_bool_true(inline)?,
            ("create", "no-new-keyring") => {
                is_bool_true(inline)?;
            }
            ("exec", "process" | "p") => process = Some(args.value("process", inline)?),
            ("exec", "detach" | "d") => {
                if !is_bool_true(inline)? {
                    return Err(err("exec runs detached only"));
                }
            }
            ("kill", "all" | "a") => all = is_bool_true(inline)?,
            ("delete", "force" | "f") => force = is_bool_true(inline)?,
            (_, other) => return Err(err(format!("{name}: unknown flag --{other}"))),
        }
    }
    let mut operands = operands.into_iter();
    let id = operands
        .next()
        .ok_or_else(|| err(format!("{name}: no container id given")))?;
    if id.is_empty() {
        return Err(err(format!("{name}: empty container id")));
    }
    let command = match name {
        "create" => Command::Create {
            id,
            bundle: bundle.map(PathBuf::from).unwrap_or_else(|| ".".into()),
            pid_file: pid_file.map(PathBuf::from),
            console_socket: console_socket.map(PathBuf::from),
            no_pivot,
        },
        "start" => Command::Start { id },
        "exec" => Command::Exec {
            id,
            process: process
                .map(PathBuf::from)
                .ok_or_else(|| err("exec: --process is required"))?,
            pid_file: pid_file.map(PathBuf::from),
            console_socket: console_socket.map(PathBuf::from),
        },
        "kill" => Command::Kill {
            id,
            signal: operands.next().unwrap_or_else(|| "SIGTERM".into()),
            all,
        },
        "pause" => Command::Pause { id },
        "resume" => Command::Resume { id },
        "delete" => Command::Delete { id, force },
        other => return Err(err(format!("unknown command {other:?}"))),
    };
    if let Some(extra) = operands.next() {
        return Err(err(format!("{name}: unexpected argument {extra:?}")));
    }
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Invocation, ParseError> {
        let raw: Vec<OsString> = args.iter().map(OsString::from).collect();
        Invocation::parse(&raw)
    }

    #[test]
    fn create_as_a_shim_calls_it() {
        let inv = parse(&[
            "--root",
            "/run/r/default",
            "--log",
            "/b/log.json",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/b",
            "--pid-file=/b/init.pid",
            "--console-socket",
            "/tmp/c.sock",
            "c1",
        ])
        .unwrap();
        assert_eq!(inv.globals.root, PathBuf::from("/run/r/default"));
        assert_eq!(inv.globals.log, Some(PathBuf::from("/b/log.json")));
        assert_eq!(
            inv.command,
            Command::Create {
                id: "c1".into(),
                bundle: "/b".into(),
                pid_file: Some("/b/init.pid".into()),
                console_socket: Some("/tmp/c.sock".into()),
                no_pivot: false,
            }
        );
    }

    #[test]
    fn kill_exec_delete() {
        assert_eq!(
            parse(&["kill", "--all", "c1", "9"]).unwrap().command,
            Command::Kill {
                id: "c1".into(),
                signal: "9".into(),
                all: true
            }
        );
        assert_eq!(
            parse(&["kill", "c1"]).unwrap().command,
            Command::Kill {
                id: "c1".into(),
                signal: "SIGTERM".into(),
                all: false
            }
        );
        assert_eq!(
            parse(&[
                "exec",
                "--process",
                "/p.json",
                "--detach",
                "--pid-file",
                "/e.pid",
                "c1"
            ])
            .unwrap()
            .command,
            Command::Exec {
                id: "c1".into(),
                process: "/p.json".into(),
                pid_file: Some("/e.pid".into()),
                console_socket: None,
            }
        );
        assert_eq!(
            parse(&["delete", "-f", "c1"]).unwrap().command,
            Command::Delete {
                id: "c1".into(),
                force: true
            }
        );
    }

    #[test]
    fn bad_command_lines_are_refused_by_name() {
        assert!(parse(&[]).unwrap_err().to_string().contains("no command"));
        assert!(parse(&["start"])
            .unwrap_err()
            .to_string()
            .contains("no container id"));
        assert!(parse(&["frobnicate", "c1"])
            .unwrap_err()
            .to_string()
            .contains("frobnicate"));
        assert!(parse(&["start", "--bundle", "/b", "c1"])
            .unwrap_err()
            .to_string()
            .contains("--bundle"));
        assert!(parse(&["exec", "c1"])
            .unwrap_err()
            .to_string()
            .contains("--process"));
        assert!(parse(&["--root"])
            .unwrap_err()
            .to_string()
            .contains("--root"));
        assert!(parse(&["start", "c1", "c2"])
            .unwrap_err()
            .to_string()
            .contains("c2"));
        assert!(parse(&["--log-format", "xml", "start", "c1"]).is_err());
    }
}
