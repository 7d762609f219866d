//! Link ids, and the random text they and other secrets are made of.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

/// Random, URL-safe text of `bytes` random bytes.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS random source is available");
    B64.encode(buf)
}

/// A link's identifier: 144 random bits, base64url. Parsing refuses anything else, so an id can be
/// used in a path or a file name safely.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct TunnelId(Arc<str>);

impl Serialize for TunnelId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a tunnel id")]
pub struct BadTunnelId;

impl TunnelId {
    pub fn random() -> Self {
        TunnelId(random_token(18).into())
    }

    pub fn parse(s: &str) -> Result<Self, BadTunnelId> {
        let ok = (16..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok { Ok(TunnelId(s.into())) } else { Err(BadTunnelId) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TunnelId {
    type Error = BadTunnelId;
    fn try_from(s: String) -> Result<Self, BadTunnelId> {
        TunnelId::parse(&s)
    }
}

impl std::fmt::Display for TunnelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_enough_entropy_and_parse() {
        let a = TunnelId::random();
        assert_eq!(a.as_str().len(), 24); // 18 bytes = 144 bits
        assert_ne!(a, TunnelId::random());
        assert!(TunnelId::parse(a.as_str()).is_ok());
        for bad in [
            "",
            "short",
            "../../../../etc/passwd",
            "a/b/c/d/e/f/g/h/i/j",
            &"a".repeat(65),
        ] {
            assert!(TunnelId::parse(bad).is_err(), "{bad}");
        }
    }
}
