//! The error type of berth-runtime: core errors, plus a shim's own answer (its status code
//! and message kept as the shim gave them, so a runtime's refusal reaches the client intact).

use berth_core::ErrorKind;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] berth_core::Error),
    /// A status the shim answered with; `code` is the gRPC/ttrpc code number.
    #[error("{message}")]
    Shim { code: i32, message: String },
    /// The shim could not be reached (dead, socket gone, connection reset).
    #[error("shim of task {id:?} is unavailable: {reason}")]
    ShimUnavailable { id: String, reason: String },
    /// Starting or cleaning up a shim binary failed.
    #[error("shim {binary} {action}: {reason}")]
    ShimBinary {
        binary: String,
        action: &'static str,
        reason: String,
    },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Core(e) => e.kind(),
            Error::Shim { code, .. } => match *code {
                3 | 11 => ErrorKind::InvalidArgument,
                5 => ErrorKind::NotFound,
                6 => ErrorKind::AlreadyExists,
                9 => ErrorKind::FailedPrecondition,
                12 => ErrorKind::Unsupported,
                14 => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            Error::ShimUnavailable { .. } => ErrorKind::Unavailable,
            Error::ShimBinary { .. } => ErrorKind::Internal,
        }
    }

    /// The gRPC code to answer with: a shim's own code is passed through unchanged.
    pub fn grpc_code(&self) -> Option<i32> {
        match self {
            Error::Shim { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn not_found(what: String) -> Self {
        Error::Core(berth_core::Error::NotFound(what))
    }

    pub fn precondition(msg: String) -> Self {
        Error::Core(berth_core::Error::FailedPrecondition(msg))
    }

    pub(crate) fn from_ttrpc(id: &str, e: ttrpc::Error) -> Self {
        match e {
            ttrpc::Error::RpcStatus(s) => Error::Shim {
                code: s.code.value(),
                message: s.message,
            },
            other => Error::ShimUnavailable {
                id: id.to_owned(),
                reason: other.to_string(),
            },
        }
    }
}
