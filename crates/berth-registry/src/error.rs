//! The error type of berth-registry; every message names the registry, reference or digest.

use berth_core::ErrorKind;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] berth_core::Error),
    #[error("registry {registry}: unauthenticated: {reason}")]
    Unauthenticated { registry: String, reason: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// The registry could not be reached or kept failing after the retries.
    #[error("{0}")]
    Unavailable(String),
    /// What arrived is not what was asked for (a digest or size that does not match).
    #[error("{0}")]
    Mismatch(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Core(e) => e.kind(),
            Error::Unauthenticated { .. } => ErrorKind::Unauthenticated,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::Mismatch(_) => ErrorKind::FailedPrecondition,
        }
    }
}
