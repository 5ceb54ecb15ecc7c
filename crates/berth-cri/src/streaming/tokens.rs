//! Single-use tokens for streaming requests: the CRI call (Exec, Attach, PortForward)
//! stores its request and answers with a URL carrying the token; the first HTTP request
//! that names the token takes the request out, whether it is still fresh or not.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::error::{Error, Result};

/// How long a URL stays usable.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Requests waiting for their connection at most.
pub const MAX_IN_FLIGHT: usize = 1000;
/// Characters in a token: six random bytes, URL-safe base64.
const TOKEN_LEN: usize = 8;

pub struct Tokens<T> {
    ttl: Duration,
    entries: Mutex<HashMap<String, (T, Instant)>>,
}

impl<T> Tokens<T> {
    pub fn new(ttl: Duration) -> Self {
        Tokens {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Stores `value` and returns its token.
    pub fn insert(&self, value: T) -> Result<String> {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, (_, expires)| *expires > now);
        if map.len() >= MAX_IN_FLIGHT {
            return Err(Error::ResourceExhausted(format!(
                "maximum number of in-flight streaming requests ({MAX_IN_FLIGHT}) exceeded"
            )));
        }
        for _ in 0..10 {
            let token = random_token()?;
            if !map.contains_key(&token) {
                map.insert(token.clone(), (value, now + self.ttl));
                return Ok(token);
            }
        }
        Err(Error::Internal(
            "failed to generate a unique streaming token".into(),
        ))
    }

    /// Takes the value out: a token works once, and only before it expires.
    pub fn take(&self, token: &str) -> Option<T> {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (value, expires) = map.remove(token)?;
        (Instant::now() <= expires).then_some(value)
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn random_token() -> Result<String> {
    let mut raw = [0u8; 6];
    rustix::rand::getrandom(&mut raw, rustix::rand::GetRandomFlags::empty())
        .map_err(|e| Error::Internal(format!("random token: {e}")))?;
    let mut t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    t.truncate(TOKEN_LEN);
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_works_once() {
        let t = Tokens::new(TOKEN_TTL);
        let a = t.insert(1).unwrap();
        let b = t.insert(2).unwrap();
        assert_eq!(a.len(), TOKEN_LEN);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a, b);
        assert_eq!(t.take(&a), Some(1));
        assert_eq!(t.take(&a), None);
        assert_eq!(t.take("nosuchto"), None);
        assert_eq!(t.take(&b), Some(2));
        assert!(t.is_empty());
    }

    #[test]
    fn an_expired_token_is_gone_and_expired_ones_make_room() {
        // Long enough that filling the table never outlasts it on a loaded machine.
        let t = Tokens::new(Duration::from_millis(500));
        let a = t.insert("x").unwrap();
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(t.take(&a), None);
        for _ in 0..MAX_IN_FLIGHT {
            t.insert("y").unwrap();
        }
        let e = t.insert("z").unwrap_err();
        assert!(e.to_string().contains("in-flight"), "{e}");
        std::thread::sleep(Duration::from_millis(600));
        t.insert("z").unwrap();
        assert_eq!(t.len(), 1);
    }
}
