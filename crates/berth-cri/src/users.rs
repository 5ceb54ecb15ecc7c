//! Who a CRI container runs as: the snapshot's layer directories found from its mounts,
//! resolved by berth-spec's user lookup.

use std::path::{Path, PathBuf};

use berth_core::mount::Mount;

use crate::error::{Error, Result};

pub use berth_spec::users::Identity;

/// The directories of a snapshot's layers, topmost first, from its mounts.
pub fn layer_dirs(mounts: &[Mount]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for m in mounts {
        match m.kind.as_str() {
            "bind" | "rbind" => out.push(PathBuf::from(&m.source)),
            "overlay" => {
                if let Some(u) = m.option("upperdir") {
                    out.push(u.into());
                }
                if let Some(l) = m.option("lowerdir") {
                    out.extend(l.split(':').map(PathBuf::from));
                }
            }
            _ => {}
        }
    }
    out
}

/// Resolves `user` against the image's files (see `berth_spec::users::resolve`).
pub fn resolve(
    user: &str,
    layers: &[PathBuf],
    supplemental: &[i64],
    with_image_groups: bool,
) -> Result<Identity> {
    berth_spec::users::resolve(user, layers, supplemental, with_image_groups)
        .map_err(|e| Error::InvalidArgument(e.0))
}

/// The layers of a snapshot whose files may be read: a plain directory works too.
pub fn dir_layers(dir: &Path) -> Vec<PathBuf> {
    vec![dir.to_owned()]
}
