//! Image references in every form users type: `busybox`, `library/busybox:1.36`,
//! `host:port/repo@sha256:…`, normalised the way docker and containerd normalise them.

use std::fmt;

use crate::digest::Digest;

use crate::error::{Error, Result};

pub const DOCKER_HUB: &str = "docker.io";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host, with port if any: `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path: `library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

fn bad(s: &str, why: &str) -> Error {
    Error::InvalidArgument(format!("invalid image reference {s:?}: {why}"))
}

fn valid_component(c: &str) -> bool {
    // lowercase alphanumerics, joined by one '.', one or two '_', or any number of '-'
    if c.is_empty()
        || !c
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return false;
    }
    let b = c.as_bytes();
    if !(b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit()) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'a'..=b'z' | b'0'..=b'9' => i += 1,
            b'.' => {
                if !b[i + 1].is_ascii_alphanumeric() {
                    return false;
                }
                i += 1;
            }
            b'_' => {
                let n = if b[i + 1] == b'_' { 2 } else { 1 };
                if !b[i + n].is_ascii_alphanumeric() {
                    return false;
                }
                i += n;
            }
            b'-' => {
                while b[i] == b'-' {
                    i += 1;
                }
                if !b[i].is_ascii_alphanumeric() {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn looks_like_host(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost" || first.starts_with('[')
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference> {
        if s.is_empty() || s.len() > 255 + 128 + 72 {
            return Err(bad(s, "empty or too long"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(Digest::parse(d).map_err(|e| bad(s, &e.to_string()))?),
            ),
            None => (s, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(bad(s, "invalid tag"));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if looks_like_host(first) => (first.to_owned(), path.to_owned()),
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DOCKER_HUB.to_owned()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if repository.len() > 255 || !repository.split('/').all(valid_component) {
            return Err(bad(s, "repository must be lowercase path components"));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What to ask the registry's manifest endpoint for: the digest if pinned, else the tag.
    pub fn object(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// The short form Docker shows: `busybox:latest` for `docker.io/library/busybox:latest`,
    /// `user/app:1` for Docker Hub users; other registries keep their host.
    pub fn familiar(&self) -> String {
        let full = self.to_string();
        if self.registry != DOCKER_HUB {
            return full;
        }
        let rest = &full[DOCKER_HUB.len() + 1..];
        rest.strip_prefix("library/")
            .filter(|r| !r.contains('/'))
            .unwrap_or(rest)
            .to_owned()
    }

    /// The host that serves the registry API for this reference.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:ed3a3e8b1c5ff11b04c4dd1b3fd1b1f3f25f0f09c1f7e8d62c15d18f3b2a9a0c";

    #[test]
    fn normalises_as_docker_does() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("library/busybox:1.36", "docker.io/library/busybox:1.36"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            ("index.docker.io/foo/bar:x", "docker.io/foo/bar:x"),
            ("127.0.0.1:5000/busybox", "127.0.0.1:5000/busybox:latest"),
            ("localhost/a/b/c:v1.0", "localhost/a/b/c:v1.0"),
            ("ghcr.io/org/img:tag", "ghcr.io/org/img:tag"),
        ];
        for (input, want) in cases {
            assert_eq!(
                Reference::parse(input).unwrap().to_string(),
                want,
                "{input}"
            );
        }
    }

    #[test]
    fn familiar_names_are_dockers() {
        for (input, want) in [
            ("busybox", "busybox:latest"),
            ("docker.io/user/app:1", "user/app:1"),
            ("127.0.0.1:5000/a/b:c", "127.0.0.1:5000/a/b:c"),
            ("library/a/b", "library/a/b:latest"),
        ] {
            assert_eq!(Reference::parse(input).unwrap().familiar(), want, "{input}");
        }
    }

    #[test]
    fn digests_pin_and_keep_the_tag() {
        let r = Reference::parse(&format!("127.0.0.1:5000/repo@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.object(), D);
        let r = Reference::parse(&format!("repo:v1@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("docker.io/library/repo:v1@{D}"));
        assert_eq!(r.object(), D);
        assert_eq!(r.api_host(), "registry-1.docker.io");
    }

    #[test]
    fn malformed_references_are_refused_with_the_reference_named() {
        for bad in [
            "",
            "UPPER/case",
            "a//b",
            "repo:",
            "repo:-x",
            "repo@sha256:zz",
            "a/-b",
            "a/b_",
            "a__b__",
            ":tag",
        ] {
            let e = Reference::parse(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    /// A bounded stand-in for fuzzing: strings from the characters references are made of
    /// (and a few they are not). Parsing answers, never panics, and what it accepts prints
    /// back to something it accepts again.
    #[test]
    fn random_references_never_panic() {
        let alphabet = b"abz09._-/:@AZ \x00sha256:";
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20000 {
            let len = (next() % 40) as usize;
            let s: String = (0..len)
                .map(|_| alphabet[(next() as usize) % alphabet.len()] as char)
                .collect();
            if let Ok(r) = Reference::parse(&s) {
                let again = Reference::parse(&r.to_string()).unwrap();
                assert_eq!(again, r, "{s:?}");
                let _ = (r.familiar(), r.object());
            }
        }
    }
}
