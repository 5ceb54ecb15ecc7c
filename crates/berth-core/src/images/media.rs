//! Media types of the image side, OCI's and Docker's schema 2, and what kind of object each
//! names. Parameters (`;foo=bar`) are ignored when classifying.

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// What a media type names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Index,
    Manifest,
    Config,
    Layer,
    Other,
}

fn base(media_type: &str) -> &str {
    media_type.split(';').next().unwrap_or("").trim()
}

pub fn kind(media_type: &str) -> Kind {
    match base(media_type) {
        OCI_INDEX | DOCKER_MANIFEST_LIST => Kind::Index,
        OCI_MANIFEST | DOCKER_MANIFEST => Kind::Manifest,
        OCI_CONFIG | DOCKER_CONFIG => Kind::Config,
        m if is_layer(m) => Kind::Layer,
        _ => Kind::Other,
    }
}

/// Layer media types the applier takes (compression is read from the bytes).
pub fn is_layer(media_type: &str) -> bool {
    matches!(
        base(media_type),
        OCI_LAYER
            | OCI_LAYER_GZIP
            | OCI_LAYER_ZSTD
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | DOCKER_LAYER
            | DOCKER_LAYER_GZIP
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    )
}

/// Layers a registry may refuse to serve and an export may leave out.
pub fn is_non_distributable(media_type: &str) -> bool {
    let b = base(media_type);
    b.contains("nondistributable") || b.contains("foreign")
}

/// The short name containerd gives an object in progress reports: `manifest`, `config`,
/// `layer`, `index`.
pub fn short_name(media_type: &str) -> &'static str {
    match kind(media_type) {
        Kind::Index => "index",
        Kind::Manifest => "manifest",
        Kind::Config => "config",
        Kind::Layer | Kind::Other => "layer",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_ignore_parameters() {
        assert_eq!(kind(OCI_INDEX), Kind::Index);
        assert_eq!(kind(DOCKER_MANIFEST_LIST), Kind::Index);
        assert_eq!(
            kind(&format!("{OCI_MANIFEST}; charset=utf-8")),
            Kind::Manifest
        );
        assert_eq!(kind(DOCKER_CONFIG), Kind::Config);
        assert_eq!(kind(DOCKER_LAYER_GZIP), Kind::Layer);
        assert_eq!(kind("text/plain"), Kind::Other);
        assert!(is_non_distributable(
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        ));
        assert!(!is_non_distributable(OCI_LAYER_GZIP));
    }
}
