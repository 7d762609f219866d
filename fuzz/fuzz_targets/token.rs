//! Token verification (`?t=` of every public request). Nothing can be forged without the key:
//! a token the verifier accepts is, byte for byte, the one ferry itself issues for the claims it
//! carries. The seeds are tokens issued with the key below, so libFuzzer mutates real ones.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ferry::config::Secret;
use ferry::links::token::Keys;
use ferry::model::TunnelId;
use libfuzzer_sys::fuzz_target;

/// The key the seeds in corpus/token/ were signed with.
pub const KEY: &str = "fuzz-key-fuzz-key-fuzz-key-fuzz-key-0123";
/// The link and the clock the seeds were issued for (`iat` 1700000000, `exp` 1700003600).
const ID: &str = "fuzzfuzzfuzzfuzzfuzzfuzz";
const NOW: u64 = 1_700_000_100;

fn keys() -> &'static Keys {
    static KEYS: std::sync::OnceLock<Keys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| Keys::new(&Secret::new(KEY)))
}

fuzz_target!(|token: &str| {
    let id = TunnelId::parse(ID).unwrap();
    let other = TunnelId::parse("otherotherotherotherother").unwrap();
    let k = keys();
    let Ok(generation) = k.verify(token, &id, NOW) else {
        return;
    };
    // Accepted: the claims must be exactly what ferry would sign for this link and clock.
    let payload = token.split('.').nth(1).expect("an accepted token has a payload");
    let claims: serde_json::Value =
        serde_json::from_slice(&B64.decode(payload).expect("base64url payload")).expect("JSON claims");
    let iat = claims["iat"].as_u64().expect("iat");
    let exp = claims["exp"].as_u64().expect("exp");
    assert!(iat <= NOW && NOW < exp, "{claims}");
    assert_eq!(claims["tid"], ID);
    assert_eq!(
        claims.get("generation").and_then(|g| g.as_u64()).unwrap_or(0),
        u64::from(generation)
    );
    assert_eq!(
        k.issue(&id, iat, exp, generation),
        token,
        "an accepted token ferry never issued"
    );
    // The same token never opens another link, nor this one at its `exp`.
    assert!(k.verify(token, &other, NOW).is_err());
    assert!(k.verify(token, &id, exp).is_err());
});
