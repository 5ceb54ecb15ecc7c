//! Namespace names and container ids, validated once with containerd's identifier rules.

use std::fmt;

use crate::error::{Error, Result};

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(String);

const MAX_LEN: usize = 76;

/// containerd's identifier rule: `^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`, at most 76.
fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LEN
        && s.split(['.', '_', '-'])
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()))
}

impl Namespace {
    /// Accepts `^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`, at most 76 characters.
    pub fn new(name: &str) -> Result<Self> {
        if is_identifier(name) {
            Ok(Namespace(name.to_owned()))
        } else {
            Err(Error::InvalidArgument(format!(
                "namespace {name:?}: invalid name, must match [A-Za-z0-9]+([._-][A-Za-z0-9]+)* and be at most {MAX_LEN} characters"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Messages name namespaces as `"default"`, the way containerd's do.
impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A container's id (and so its task's), valid as a path component and a runc id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(String);

impl ContainerId {
    pub fn new(id: &str) -> Result<Self> {
        if is_identifier(id) {
            Ok(ContainerId(id.to_owned()))
        } else {
            Err(Error::InvalidArgument(format!(
                "container id {id:?} is not a valid identifier (alphanumerics joined by '.', '_' or '-', at most {MAX_LEN})"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_names() {
        for ok in ["default", "k8s.io", "a-b_c.d", "X1"] {
            Namespace::new(ok).unwrap();
        }
        for bad in ["", "-a", "a-", "a..b", "a/b", "ä", &"a".repeat(77)] {
            assert!(Namespace::new(bad).is_err(), "{bad:?} accepted");
            let e = ContainerId::new(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        assert_eq!(ContainerId::new("web-1").unwrap().as_str(), "web-1");
    }
}
