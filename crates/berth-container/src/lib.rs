//! berth's OCI runtime: the part of runc's command line a shim drives (`create`, `start`,
//! `exec`, `kill`, `pause`, `resume`, `delete`), carried out in-process by youki's
//! `libcontainer`, so that a shim makes containers without executing a runtime binary.
//!
//! libcontainer forks with a raw `clone3` and runs ordinary Rust (allocation, logging) in the
//! child before `execve`, and changes the process's working directory while it works: both are
//! safe only in a process that has a single thread. So this runs in a short-lived process of
//! its own, one operation each: the `berth-container` binary beside the shim, fresh,
//! single-threaded, and gone before the shim's next request. It is a binary of its own rather
//! than a mode of the shim's so that the resident shim maps none of this code. Because the
//! interface is runc's, the shim drives this and runc or crun the same way.

mod args;
mod ops;

pub use args::{Command, Globals, Invocation, ParseError};

use std::{ffi::OsString, io::Write, path::Path};

/// The name of the binary that runs this (`berth-container --root R create ...`).
const BINARY_NAME: &str = "berth-container";

/// Runs one runtime command from its arguments (those after the program name) and returns the
/// process exit code. Errors go to stderr and, as runc does with `--log-format json`, as a
/// JSON line with `"level":"error"` to the `--log` file, where the shim reads them.
pub fn main(args: &[OsString]) -> i32 {
    let invocation = match Invocation::parse(args) {
        Ok(invocation) => invocation,
        Err(e) => {
            eprintln!("{BINARY_NAME}: {e}");
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
            eprintln!("{BINARY_NAME}: {message}");
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["level"], "error");
        assert_eq!(lines[1]["msg"], "bad \"quote\"\nand newline");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-container-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
