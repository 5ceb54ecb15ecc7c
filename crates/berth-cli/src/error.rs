//! The command line's errors, as a docker user reads them: one line naming the thing
//! (`Error: no such container: web`), never a gRPC status dump, and the exit code Docker
//! gives (125 for berth's own failures, 126/127 for a command that cannot run or is not
//! found, or a container's own exit code).

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    #[error("no such image: {0}")]
    NoSuchImage(String),
    #[error("no such object: {0}")]
    NoSuchObject(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    /// What berthd answered, already in words.
    #[error("{0}")]
    Daemon(String),
    #[error("cannot connect to berthd at {address}: {reason} (is berthd running?)")]
    Connect { address: String, reason: String },
    #[error("{what}: {err}")]
    Io {
        what: String,
        #[source]
        err: std::io::Error,
    },
    /// The container's command could not be run (126) or was not found (127).
    #[error("{message}")]
    Command { message: String, code: i32 },
    /// Not an error to print: the exit code of a container or exec the command waited on.
    #[error("exit status {0}")]
    Exit(i32),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |err| Error::Io { what, err }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Exit(c) => *c,
            Error::Command { code, .. } => *code,
            _ => 125,
        }
    }
}

impl From<Status> for Error {
    fn from(s: Status) -> Self {
        let msg = s.message().trim().to_owned();
        let msg = if msg.is_empty() {
            format!("berthd answered {:?}", s.code())
        } else {
            msg
        };
        match s.code() {
            Code::Unavailable if msg.contains("transport") || msg.contains("connect") => {
                Error::Daemon(format!("berthd is unavailable: {msg}"))
            }
            Code::InvalidArgument => Error::Invalid(msg),
            Code::AlreadyExists | Code::FailedPrecondition => Error::Conflict(msg),
            _ => Error::Daemon(msg),
        }
    }
}

/// A runtime's refusal to start a command, classified as Docker does: not found → 127,
/// found but not runnable → 126.
pub fn command_failure(message: &str) -> Option<i32> {
    let m = message.to_ascii_lowercase();
    let not_found = [
        "executable file not found",
        "no such file or directory",
        "not found in $path",
        "executable not found",
    ];
    let cannot_run = [
        "permission denied",
        "exec format error",
        "is a directory",
        "correct permission",
    ];
    if !(m.contains("exec") || m.contains("executable") || m.contains("command")) {
        return None;
    }
    if not_found.iter().any(|s| m.contains(s)) {
        Some(127)
    } else if cannot_run.iter().any(|s| m.contains(s)) {
        Some(126)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_refusals_map_to_dockers_codes() {
        assert_eq!(
            command_failure(r#"exec: "nosuch": executable file not found in $PATH"#),
            Some(127)
        );
        assert_eq!(
            command_failure("exec /etc/passwd: permission denied"),
            Some(126)
        );
        assert_eq!(command_failure("cgroup: no such file or directory"), None);
        // youki's libcontainer words them so.
        assert_eq!(
            command_failure("executable 'nosuchcmd' not found in $PATH: executable for container process not found in PATH"),
            Some(127)
        );
        assert_eq!(
            command_failure("executable '/etc/passwd' at path '\"/etc/passwd\"' does not have correct permissions"),
            Some(126)
        );
        assert_eq!(Error::Exit(3).exit_code(), 3);
        assert_eq!(Error::NoSuchContainer("web".into()).exit_code(), 125);
        assert_eq!(
            Error::NoSuchContainer("web".into()).to_string(),
            "no such container: web"
        );
    }
}
