//! The edge between core and gRPC: error kinds to status codes (one function), the
//! namespace and lease request headers, and time and label conversions.

use std::collections::HashMap;

use berth_core::metadata::{Labels, Timestamp};
use berth_core::{Error, ErrorKind, Namespace};
use tonic::{Code, Request, Status};

pub const NAMESPACE_HEADER: &str = "containerd-namespace";
pub const LEASE_HEADER: &str = "containerd-lease";

pub fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::OutOfRange => Code::OutOfRange,
        ErrorKind::Unsupported => Code::Unimplemented,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Internal => Code::Internal,
    }
}

pub fn to_status(e: Error) -> Status {
    Status::new(code_of(e.kind()), e.to_string())
}

/// Runtime errors: a shim's own status code and message pass through unchanged.
pub fn runtime_status(e: berth_runtime::Error) -> Status {
    match e.grpc_code() {
        Some(code) => Status::new(Code::from_i32(code), e.to_string()),
        None => Status::new(code_of(e.kind()), e.to_string()),
    }
}

/// Registry errors: the kind decides the code, the message names registry and digest.
pub fn registry_status(e: berth_registry::Error) -> Status {
    Status::new(code_of(e.kind()), e.to_string())
}

/// CRI errors: the kind decides the code; the message names the pod, container, image or
/// CNI plugin.
pub fn cri_status(e: berth_cri::Error) -> Status {
    match e {
        berth_cri::Error::Runtime(r) => runtime_status(r),
        e => Status::new(code_of(e.kind()), e.to_string()),
    }
}

/// The namespace a request is for, from the `containerd-namespace` header.
pub fn namespace<T>(req: &Request<T>) -> Result<Namespace, Status> {
    let v = req.metadata().get(NAMESPACE_HEADER).ok_or_else(|| {
        Status::failed_precondition("namespace is required: set the containerd-namespace header")
    })?;
    let s = v
        .to_str()
        .map_err(|_| Status::invalid_argument("containerd-namespace header is not text"))?;
    Namespace::new(s).map_err(to_status)
}

/// The lease a request works under, from the `containerd-lease` header.
pub fn lease<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get(LEASE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

pub fn timestamp(t: Timestamp) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t.0.div_euclid(1_000_000_000),
        nanos: t.0.rem_euclid(1_000_000_000) as i32,
    })
}

pub fn labels_in(l: HashMap<String, String>) -> Labels {
    l.into_iter().collect()
}

pub fn labels_out(l: Labels) -> HashMap<String, String> {
    l.into_iter().collect()
}

/// Runs blocking core work (disk, database commits) off the async reactor.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> berth_core::Result<T> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
        .map_err(to_status)
}

/// After a delete: collect now and wait when the client asked for `sync`, else schedule.
pub async fn collect_after_delete(
    gc: &berth_core::gc::Scheduler,
    sync: bool,
) -> Result<(), Status> {
    if sync {
        let gc = gc.clone();
        blocking(move || gc.collect_now()).await?;
    } else {
        gc.schedule();
    }
    Ok(())
}

pub fn any_in(a: prost_types::Any) -> berth_core::containers::AnyValue {
    berth_core::containers::AnyValue {
        type_url: a.type_url,
        value: a.value,
    }
}

pub fn any_out(a: berth_core::containers::AnyValue) -> prost_types::Any {
    prost_types::Any {
        type_url: a.type_url,
        value: a.value,
    }
}

pub fn digest(s: &str) -> Result<berth_core::Digest, Status> {
    berth_core::Digest::parse(s).map_err(to_status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_code() {
        let cases = [
            (Error::NotFound("x".into()), Code::NotFound),
            (Error::AlreadyExists("x".into()), Code::AlreadyExists),
            (
                Error::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            (Error::InvalidArgument("x".into()), Code::InvalidArgument),
            (Error::Unavailable("x".into()), Code::Unavailable),
            (Error::OutOfRange("x".into()), Code::OutOfRange),
            (Error::Unsupported("x".into()), Code::Unimplemented),
            (Error::Database("x".into()), Code::Internal),
        ];
        for (e, code) in cases {
            assert_eq!(to_status(e).code(), code);
        }
        let nf = Error::Io {
            op: "open",
            path: "/x".into(),
            source: std::io::ErrorKind::NotFound.into(),
        };
        assert_eq!(to_status(nf).code(), Code::NotFound);
    }

    #[test]
    fn shim_codes_pass_through() {
        let e = berth_runtime::Error::Shim {
            code: 2,
            message: "OCI runtime create failed: bad spec".into(),
        };
        let s = runtime_status(e);
        assert_eq!(s.code(), Code::Unknown);
        assert_eq!(s.message(), "OCI runtime create failed: bad spec");
        let e = berth_runtime::Error::Core(Error::NotFound("task \"x\"".into()));
        assert_eq!(runtime_status(e).code(), Code::NotFound);
    }

    #[test]
    fn namespace_header_is_required_and_validated() {
        let req = Request::new(());
        assert_eq!(
            namespace(&req).unwrap_err().code(),
            Code::FailedPrecondition
        );
        let mut req = Request::new(());
        req.metadata_mut()
            .insert(NAMESPACE_HEADER, "bad/name".parse().unwrap());
        assert_eq!(namespace(&req).unwrap_err().code(), Code::InvalidArgument);
        req.metadata_mut()
            .insert(NAMESPACE_HEADER, "default".parse().unwrap());
        assert_eq!(namespace(&req).unwrap().as_str(), "default");
    }
}
