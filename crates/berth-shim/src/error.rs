//! The shim's errors, each naming what it is about, and their ttrpc status codes.

use std::path::Path;

use ttrpc::Code;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{runtime} {action}: {message}")]
    Runtime {
        runtime: String,
        action: String,
        message: String,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.display().to_string(),
            source,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Runtime { .. } | Error::Io { .. } | Error::Other(_) => Code::UNKNOWN,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_reach_the_status() {
        let e: ttrpc::Error = Error::AlreadyExists("exec \"e1\" already exists".into()).into();
        match e {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::ALREADY_EXISTS);
                assert_eq!(s.message(), "exec \"e1\" already exists");
            }
            other => panic!("{other:?}"),
        }
        let e = Error::Runtime {
            runtime: "runc".into(),
            action: "create".into(),
            message: "no such file".into(),
        };
        assert_eq!(e.code(), Code::UNKNOWN);
        assert_eq!(e.to_string(), "runc create: no such file");
    }
}
