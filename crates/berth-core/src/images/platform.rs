//! Platforms (`os/arch[/variant]`) and choosing an index's manifests for one.

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: String,
}

impl Default for Platform {
    /// linux on this machine's architecture, in OCI's names.
    fn default() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: String::new(),
        }
    }
}

impl Platform {
    /// `linux/arm64`, `linux/arm/v7`.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        let p = match parts.as_slice() {
            [os, arch] => (os, arch, ""),
            [os, arch, variant] => (os, arch, *variant),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "invalid platform {s:?}: want os/arch[/variant]"
                )))
            }
        };
        if p.0.is_empty() || p.1.is_empty() {
            return Err(Error::InvalidArgument(format!("invalid platform {s:?}")));
        }
        Ok(Platform {
            os: p.0.to_string(),
            architecture: p.1.to_string(),
            variant: p.2.to_owned(),
        })
    }

    /// Whether an index entry for (os, arch, variant) runs here. arm64's only variant is
    /// v8, so an empty variant on either side matches it.
    pub fn matches(&self, os: &str, arch: &str, variant: &str) -> bool {
        let norm = |a: &str, v: &str| -> String {
            if a == "arm64" && (v.is_empty() || v == "v8") {
                String::new()
            } else {
                v.to_owned()
            }
        };
        self.os == os
            && self.architecture == arch
            && (self.variant.is_empty() || norm(arch, &self.variant) == norm(arch, variant))
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let p = Platform::parse("linux/arm64").unwrap();
        assert!(p.matches("linux", "arm64", "v8"));
        assert!(p.matches("linux", "arm64", ""));
        assert!(!p.matches("linux", "amd64", ""));
        let v7 = Platform::parse("linux/arm/v7").unwrap();
        assert!(v7.matches("linux", "arm", "v7"));
        assert!(!v7.matches("linux", "arm", "v6"));
        assert!(Platform::parse("linux").is_err());
        assert_eq!(Platform::default().os, "linux");
    }
}
