//! Link tokens: HS256 JWTs whose algorithm is pinned and whose `exp` equals the link's
//! `expires_at`. The token is a bearer secret: it is never logged, stored or echoed, and it can be
//! re-derived from the link (same claims, same key) when the owner asks for the URL again.

use std::collections::HashMap;
use std::sync::Mutex;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::model::TunnelId;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    tid: String,
    iat: u64,
    exp: u64,
    /// The link's token generation, bumped by each rotation. Left out while 0, so that the
    /// tokens of links never rotated stay what they always were.
    #[serde(default, skip_serializing_if = "is_zero")]
    generation: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed, forged or expired")]
    Invalid,
    #[error("token has expired")]
    Expired,
    #[error("token belongs to another link")]
    OtherLink,
    #[error("token was issued in the future")]
    FromTheFuture,
}

/// How many verified tokens are remembered.
const VERIFIED_KEPT: usize = 1024;

pub struct Keys {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
    /// Tokens whose signature was verified, with their claims: a download (many range requests
    /// with one token) pays the signature check once. Claims are still checked every time.
    verified: Mutex<HashMap<Box<str>, Claims>>,
}

impl Keys {
    pub fn new(secret: &Secret) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = 0;
        // `exp` is checked later against the caller's clock, with no leeway. Here it is only
        // required to be present.
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "iat"]);
        Keys {
            enc: EncodingKey::from_secret(secret.expose().as_bytes()),
            dec: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// A token for link `id` of `generation`, issued at `iat` and valid until `exp` (Unix
    /// seconds).
    pub fn issue(&self, id: &TunnelId, iat: u64, exp: u64, generation: u32) -> String {
        let claims = Claims {
            tid: id.as_str().to_string(),
            iat,
            exp,
            generation,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.enc)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// Verifies a token for the link `id` at `now` (Unix seconds), and returns its generation,
    /// which the caller compares with the link's.
    pub fn verify(&self, token: &str, id: &TunnelId, now: u64) -> Result<u32, TokenError> {
        if token.len() > 1024 {
            return Err(TokenError::Invalid);
        }
        if let Some(c) = self.verified.lock().expect("tokens mutex").get(token) {
            return c.check(id, now);
        }
        let c = jsonwebtoken::decode::<Claims>(token, &self.dec, &self.validation)
            .map_err(|_| TokenError::Invalid)?
            .claims;
        let checked = c.check(id, now);
        let mut verified = self.verified.lock().expect("tokens mutex");
        if verified.len() >= VERIFIED_KEPT {
            verified.clear();
        }
        verified.insert(token.into(), c);
        checked
    }
}

impl Claims {
    /// Checks the claims against the link and the time. This runs on every use of a token.
    fn check(&self, id: &TunnelId, now: u64) -> Result<u32, TokenError> {
        // jsonwebtoken accepts `exp == now`, but the link is refused from `expires_at` on.
        if self.tid != id.as_str() {
            return Err(TokenError::OtherLink);
        }
        if self.exp <= now {
            return Err(TokenError::Expired);
        }
        if self.iat > now {
            return Err(TokenError::FromTheFuture);
        }
        Ok(self.generation)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    use super::*;

    fn keys() -> Keys {
        Keys::new(&Secret::new("k".repeat(40)))
    }

    fn forge(header: &str, claims: &str, sig: &str) -> String {
        format!("{}.{}.{}", B64.encode(header), B64.encode(claims), sig)
    }

    #[test]
    fn tampered_tokens_are_refused() {
        let k = keys();
        let id = TunnelId::random();
        let other = TunnelId::random();
        let now = 1_700_000_000;
        let good = k.issue(&id, now - 10, now + 100, 0);
        assert_eq!(k.verify(&good, &id, now), Ok(0));

        let parts: Vec<&str> = good.split('.').collect();
        let claims = format!(
            r#"{{"tid":"{}","iat":{},"exp":{}}}"#,
            id.as_str(),
            now - 10,
            now + 100_000
        );
        let other_key = Keys::new(&Secret::new("x".repeat(40)));
        let table: Vec<(&str, String)> = vec![
            (
                "changed claims",
                format!("{}.{}.{}", parts[0], B64.encode(&claims), parts[2]),
            ),
            ("changed signature", {
                // Replace the last character with one that changes the signature's bits, not only
                // its padding.
                let (sig, last) = parts[2].split_at(parts[2].len() - 1);
                format!("{}.{}.{sig}{}", parts[0], parts[1], if last == "A" { "Q" } else { "A" })
            }),
            ("alg none", forge(r#"{"alg":"none","typ":"JWT"}"#, &claims, "")),
            ("alg HS512", forge(r#"{"alg":"HS512","typ":"JWT"}"#, &claims, parts[2])),
            ("other key", other_key.issue(&id, now - 10, now + 100, 0)),
            ("other link", k.issue(&other, now - 10, now + 100, 0)),
            ("past exp", k.issue(&id, now - 10, now - 1, 0)),
            ("exp now", k.issue(&id, now - 10, now, 0)),
            ("iat in future", k.issue(&id, now + 60, now + 100, 0)),
            ("missing exp", {
                let c = format!(r#"{{"tid":"{}","iat":{}}}"#, id.as_str(), now);
                let h = Header::new(Algorithm::HS256);
                let raw: serde_json::Value = serde_json::from_str(&c).unwrap();
                jsonwebtoken::encode(&h, &raw, &EncodingKey::from_secret("k".repeat(40).as_bytes())).unwrap()
            }),
            ("empty", String::new()),
            ("garbage", "a.b.c".into()),
            ("huge", "a".repeat(5000)),
        ];
        for (what, token) in table {
            assert!(k.verify(&token, &id, now).is_err(), "{what} was accepted");
        }
    }

    #[test]
    fn a_remembered_token_is_still_checked_on_every_use() {
        let k = keys();
        let id = TunnelId::random();
        let now = 1_700_000_000;
        let token = k.issue(&id, now, now + 100, 0);
        assert_eq!(k.verify(&token, &id, now), Ok(0));
        assert_eq!(k.verify(&token, &id, now + 99), Ok(0));
        assert_eq!(k.verify(&token, &id, now + 100), Err(TokenError::Expired));
        assert_eq!(k.verify(&token, &TunnelId::random(), now), Err(TokenError::OtherLink));
        assert_eq!(k.verify(&token, &id, now - 1), Err(TokenError::FromTheFuture));
        // Another key judges the same string on its own, because nothing is shared between keys.
        assert_eq!(
            Keys::new(&Secret::new("x".repeat(40))).verify(&token, &id, now),
            Err(TokenError::Invalid)
        );
        // Past the bound, the memory of verified tokens starts over, and verifying still works.
        for i in 0..VERIFIED_KEPT as u64 + 5 {
            let t = k.issue(&id, now, now + 200 + i, 0);
            assert_eq!(k.verify(&t, &id, now), Ok(0));
        }
        assert!(k.verified.lock().unwrap().len() <= VERIFIED_KEPT);
        assert_eq!(k.verify(&token, &id, now), Ok(0));
    }

    #[test]
    fn a_rotated_token_carries_its_generation_and_an_unrotated_one_is_unchanged() {
        let k = keys();
        let id = TunnelId::random();
        let now = 1_700_000_000;
        let first = k.issue(&id, now, now + 100, 0);
        let claims = B64.decode(first.split('.').nth(1).unwrap()).unwrap();
        assert!(!String::from_utf8(claims).unwrap().contains("generation"));
        let second = k.issue(&id, now, now + 100, 1);
        assert_ne!(first, second);
        assert_eq!(k.verify(&second, &id, now), Ok(1));
        assert_eq!(k.verify(&first, &id, now), Ok(0));
    }
}
