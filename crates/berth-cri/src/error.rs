//! The error type of berth-cri: the layers below, plus what only Kubernetes' model raises
//! (a CNI plugin's refusal, from berth-cni); every message names the pod, container, image or plugin.

use std::path::PathBuf;

use berth_core::ErrorKind;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] berth_core::Error),
    #[error(transparent)]
    Runtime(#[from] berth_runtime::Error),
    #[error(transparent)]
    Registry(#[from] berth_registry::Error),
    #[error(transparent)]
    Network(#[from] berth_cni::Error),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Internal(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Core(e) => e.kind(),
            Error::Runtime(e) => e.kind(),
            Error::Registry(e) => e.kind(),
            Error::Network(e) => match e {
                berth_cni::Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
                berth_cni::Error::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
                berth_cni::Error::Cni { .. } | berth_cni::Error::Io { .. } => ErrorKind::Internal,
            },
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Error::ResourceExhausted(_) => ErrorKind::ResourceExhausted,
            Error::Io { .. } | Error::Internal(_) => ErrorKind::Internal,
        }
    }

    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }
}
