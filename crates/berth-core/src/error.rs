//! The one error type of berth-core. Each variant is a kind that the API edge maps to a
//! status code; the message always names the object it is about.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    Unsupported(String),
    /// Work that did not finish in the time it was given.
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("metadata database: {0}")]
    Database(String),
}

/// The small set of kinds every error falls into; the API edge maps each to one code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
    OutOfRange,
    Unsupported,
    /// Credentials were missing or refused (a registry's 401).
    Unauthenticated,
    DeadlineExceeded,
    /// A bounded resource is full (too many requests waiting).
    ResourceExhausted,
    Internal,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::OutOfRange(_) => ErrorKind::OutOfRange,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::DeadlineExceeded(_) => ErrorKind::DeadlineExceeded,
            Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            Error::Io { .. } | Error::Database(_) => ErrorKind::Internal,
        }
    }

    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    pub fn is_already_exists(&self) -> bool {
        self.kind() == ErrorKind::AlreadyExists
    }
}

macro_rules! db_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Database(e.to_string())
            }
        }
    )*};
}
db_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
