//! berth's OCI runtime: the part of runc's command line a shim drives (`create`, `start`,
//! `exec`, `kill`, `pause`, `resume`, `delete`), carried out in-process by youki's
//! `libcontainer`, so that a shim makes containers without executing a runtime binary.
//!
//! libcontainer forks with a raw `clone3` and runs ordinary Rust (allocation, logging) in the
//! child before `execve`, and changes the process's working directory while it works: both are
//! safe only in a process that has a single thread. So this runs in a short-lived process of
//! its own, one operation each, which the shim starts by executing its own binary: fresh,
//! single-threaded, and gone before the shim's next request. Because the interface is runc's,
//! the shim drives this and runc or crun the same way.

mod args;
mod ops;

pub use args::{Command, Globals, Invocation, ParseError};

use std::{ffi::OsString, io::Write, path::Path};

/// The first argument that selects this mode in a binary that is also something else (the
/// shim): `containerd-shim-berth-v2 oci-runtime --root R create ...`.
pub const MODE_ARG: &str = "oci-runtime";

/// Runs one runtime command from its arguments (those after [`MODE_ARG`]) and returns the
/// process exit code. Errors go to stderr and, as runc does with `--log-format json`, as a
/// JSON line with `"level":"error"` to the `--log` file, where the shim reads them.
pub fn main(args: &[OsString]) -> i32 {
    let invocation = match Invocation::parse(args) {
        Ok(invocation) => invocation,
        Err(e) => {
            eprintln!("berth oci-runtime: {e}");
            return 2;
        }
    };
    let log_start = invocation
        .globals
        .log
        .as_deref()
        .map(|log| {
            trace_errors_to(log);
            std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
        })
        .unwrap_or(0);
    match ops::run(&invocation) {
        Ok(()) => 0,
        Err(mut message) => {
            if let Some(log) = &invocation.globals.log {
                // libcontainer reports what the init failed at (a mount, a capability) only
                // in its own log; the first such line is the cause.
                if let Some(cause) = first_traced_error(log, log_start) {
                    if !message.contains(&cause) {
                        message = format!("{message}: {cause}");
                    }
                }
                write_error_log(log, &message);
            }
            eprintln!("berth oci-runtime: {message}");
            1
        }
    }
}

/// Sends libcontainer's error events (from this process and the container processes it
/// forks, which inherit the file) to the log as JSON lines.
fn trace_errors_to(log: &Path) {
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .json()
        .with_writer(std::sync::Mutex::new(file))
        .with_max_level(tracing::Level::ERROR)
        .without_time()
        .with_ansi(false)
        .try_init();
}

/// The first error event libcontainer logged after `from`, as `message (field=value, ...)`.
fn first_traced_error(log: &Path, from: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(log).ok()?;
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut text = String::new();
    f.read_to_string(&mut text).ok()?;
    traced_error_in(&text)
}

fn traced_error_in(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("level").and_then(|l| l.as_str()) == Some("ERROR"))
        .find_map(|v| {
            let fields = v.get("fields")?.as_object()?;
            let message = fields.get("message")?.as_str()?.to_owned();
            let extra: Vec<String> = fields
                .iter()
                .filter(|(k, _)| k.as_str() != "message")
                .map(|(k, v)| match v.as_str() {
                    Some(s) => format!("{k}={s}"),
                    None => format!("{k}={v}"),
                })
                .collect();
            Some(if extra.is_empty() {
                message
            } else {
                format!("{message} ({})", extra.join(", "))
            })
        })
}

/// Appends `message` to the log file as runc's JSON log line.
fn write_error_log(log: &Path, message: &str) {
    let line = serde_json::json!({ "level": "error", "msg": message });
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(file, "{line}");
    }
}

/// The last error a runtime wrote to its JSON log (`--log F --log-format json`), which is
/// what runc, crun and this runtime say went wrong.
pub fn last_error_in_log(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|v| v.get("level").and_then(|l| l.as_str()) == Some("error"))
        .and_then(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_error_is_the_last_error_line() {
        let log = concat!(
            "{\"level\":\"info\",\"msg\":\"starting\"}\n",
            "{\"level\":\"error\",\"msg\":\"first\"}\n",
            "not json\n",
            "{\"level\":\"error\",\"msg\":\"mount /proc: permission denied\"}\n",
            "{\"level\":\"warning\",\"msg\":\"late\"}\n",
        );
        assert_eq!(
            last_error_in_log(log).as_deref(),
            Some("mount /proc: permission denied")
        );
        assert_eq!(last_error_in_log("{\"level\":\"info\"}"), None);
    }

    #[test]
    fn the_first_traced_error_is_the_cause() {
        let log = concat!(
            "{\"level\":\"error\",\"msg\":\"earlier runtime error\"}\n",
            "{\"level\":\"ERROR\",\"fields\":{\"message\":\"failed to mount /x: ENOENT\"},\"target\":\"libcontainer\"}\n",
            "{\"level\":\"ERROR\",\"fields\":{\"message\":\"failed to prepare rootfs\",\"err\":\"mount\"}}\n",
        );
        assert_eq!(
            traced_error_in(log).as_deref(),
            Some("failed to mount /x: ENOENT")
        );
        let log =
            "{\"level\":\"ERROR\",\"fields\":{\"message\":\"bad\",\"path\":\"/p\",\"n\":3}}\n";
        assert_eq!(traced_error_in(log).as_deref(), Some("bad (n=3, path=/p)"));
        assert_eq!(traced_error_in("{\"level\":\"error\",\"msg\":\"x\"}"), None);
    }

    #[test]
    fn error_log_lines_are_read_back() {
        let dir = tempfile_dir();
        let log = dir.join("log.json");
        write_error_log(&log, "container \"a\" already exists");
        write_error_log(&log, "bad \"quote\"\nand newline");
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert_eq!(
            last_error_in_log(&text).as_deref(),
            Some("bad \"quote\"\nand newline")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-container-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
