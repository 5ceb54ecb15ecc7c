//! Label rules shared by every labelled object: size limits and field-path updates.

use crate::error::{Error, Result};
use crate::metadata::Labels;

const MAX_LABEL_SIZE: usize = 4096;

pub const GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";
pub const GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";
pub const GC_ROOT: &str = "containerd.io/gc.root";
pub const GC_EXPIRE: &str = "containerd.io/gc.expire";
pub const UNCOMPRESSED: &str = "containerd.io/uncompressed";

pub fn validate(labels: &Labels) -> Result<()> {
    for (k, v) in labels {
        if k.is_empty() {
            return Err(Error::InvalidArgument("label key must not be empty".into()));
        }
        if k.len() + v.len() > MAX_LABEL_SIZE {
            return Err(Error::InvalidArgument(format!(
                "label {k:?}: key and value length ({} bytes) greater than maximum size ({MAX_LABEL_SIZE} bytes)",
                k.len() + v.len()
            )));
        }
    }
    Ok(())
}

/// Applies `new` to `current` as containerd's Update does: with no field paths all labels are
/// replaced; `labels` replaces all; `labels.KEY` sets or (when absent from `new`) removes one.
/// Returns the field paths it did not understand, for the caller to handle or reject.
pub fn apply_update<'a>(
    current: &mut Labels,
    new: &Labels,
    fieldpaths: &'a [String],
) -> Result<Vec<&'a str>> {
    validate(new)?;
    if fieldpaths.is_empty() {
        *current = new.clone();
        return Ok(Vec::new());
    }
    let mut rest = Vec::new();
    for path in fieldpaths {
        if path == "labels" {
            *current = new.clone();
        } else if let Some(key) = path.strip_prefix("labels.") {
            match new.get(key) {
                Some(v) => current.insert(key.to_owned(), v.clone()),
                None => current.remove(key),
            };
        } else {
            rest.push(path.as_str());
        }
    }
    Ok(rest)
}

/// Looks up `labels.KEY` for filters.
pub fn filter_field(labels: &Labels, path: &[String]) -> Option<String> {
    match path {
        [l, k] if l == "labels" => labels.get(k).cloned(),
        [l, rest @ ..] if l == "labels" && !rest.is_empty() => labels.get(&rest.join(".")).cloned(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_path_updates() {
        let mut cur: Labels = [("a".into(), "1".into()), ("b".into(), "2".into())].into();
        let new: Labels = [("a".into(), "9".into())].into();
        let paths = ["labels.a".to_string(), "labels.b".into(), "x".into()];
        let rest = apply_update(&mut cur, &new, &paths).unwrap();
        assert_eq!(rest, vec!["x"]);
        assert_eq!(cur, [("a".to_string(), "9".to_string())].into());
        let big: Labels = [("k".into(), "v".repeat(5000))].into();
        assert!(apply_update(&mut cur, &big, &[]).is_err());
    }
}
