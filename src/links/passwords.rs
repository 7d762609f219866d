//! Link passwords (SPEC §13), kept as argon2 hashes. Checking one costs tens of milliseconds of
//! CPU on purpose, so only a few checks run at once (past a queue, requests are refused), and a
//! success is remembered per link, client address and credential: a download manager's many
//! requests cost one check.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sha2::Digest as _;

use super::rules::Refusal;
use crate::model::Link;

/// Password checks that run at once. Each keeps one core busy for its duration.
const HASHING_AT_ONCE: usize = 2;
/// Requests that may wait for a check; past this, requests are refused.
const WAITING_MAX: usize = 64;
/// Credentials remembered; the memory starts over past this.
const KNOWN_KEPT: usize = 4096;
/// How long a wrong credential is answered from memory, without hashing it or counting it again.
const WRONG_KEPT: Duration = Duration::from_secs(60);
/// Wrong passwords after which a link refuses everyone until its owner edits it.
pub const LOCK_AFTER: u32 = 20;
/// The longest password accepted.
pub const MAX_PASSWORD: usize = 1024;

/// What a public request shows of its client, besides its token.
#[derive(Debug, Clone, Copy, Default)]
pub struct Visitor<'a> {
    /// The client's own address, as nginx saw it (after the trusted proxies).
    pub ip: Option<IpAddr>,
    /// The `Authorization` header, or "".
    pub authorization: &'a str,
}

pub struct Passwords {
    hashing: tokio::sync::Semaphore,
    waiting: AtomicUsize,
    /// Keys the remembered credentials, so that the memory holds no password-derived value an
    /// attacker could test guesses against offline.
    key: [u8; 32],
    known: Mutex<HashMap<[u8; 32], Remembered>>,
}

impl Default for Passwords {
    fn default() -> Self {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the OS random source works");
        Passwords {
            hashing: tokio::sync::Semaphore::new(HASHING_AT_ONCE),
            waiting: AtomicUsize::new(0),
            key,
            known: Mutex::default(),
        }
    }
}

/// The argon2id hash of `password` (a PHC string with its own random salt).
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("the OS random source works");
    let salt = SaltString::encode_b64(&salt).expect("16 bytes make a valid salt");
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with its default parameters hashes any password")
        .to_string()
}

/// The password in a `Basic` credential; the user name is ignored.
pub(super) fn basic_password(authorization: &str) -> Option<String> {
    use base64::Engine as _;
    let (scheme, value) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(value.trim()).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    raw.split_once(':').map(|(_, pw)| pw.to_string())
}

/// What a password check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Right,
    /// Wrong, found by hashing it now: this counts against the link.
    Wrong,
    /// Wrong, as this client was already told moments ago (a download manager's parallel
    /// requests, a retry): no hash, and no second count.
    WrongAgain,
}

/// What is remembered of a credential.
#[derive(Clone, Copy)]
enum Remembered {
    Right,
    Wrong(Instant),
}

/// Holds a place in the queue of checks waiting to hash, and gives it back when dropped, also
/// when the request is abandoned while it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Passwords {
    /// Whether `password` is the one `phc` was made from, for a client at `address` of `link`.
    pub(super) async fn matches(
        &self,
        link: &Link,
        address: &str,
        phc: &str,
        password: String,
    ) -> Result<Verdict, Refusal> {
        let mut h = sha2::Sha256::new();
        for part in [
            &self.key[..],
            link.id.as_str().as_bytes(),
            address.as_bytes(),
            phc.as_bytes(),
        ] {
            h.update(part);
            h.update([0]);
        }
        h.update(password.as_bytes());
        let seen: [u8; 32] = h.finalize().into();
        if let Some(v) = self.recall(&seen) {
            return Ok(v);
        }
        let waiting = Waiting(&self.waiting);
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= WAITING_MAX {
            return Err(Refusal::Busy);
        }
        let permit = self.hashing.acquire().await;
        drop(waiting);
        let _permit = permit.map_err(|_| Refusal::Busy)?;
        // Another request of the same client may have checked the same password meanwhile.
        if let Some(v) = self.recall(&seen) {
            return Ok(v);
        }
        let phc = phc.to_string();
        let right = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&phc).is_ok_and(|parsed| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        let mut known = self.known.lock().expect("passwords mutex");
        if known.len() >= KNOWN_KEPT {
            known.clear();
        }
        match right {
            true => known.insert(seen, Remembered::Right),
            false => known.insert(seen, Remembered::Wrong(Instant::now())),
        };
        Ok(if right { Verdict::Right } else { Verdict::Wrong })
    }

    /// What was found for this credential before, if it still holds.
    fn recall(&self, seen: &[u8; 32]) -> Option<Verdict> {
        match self.known.lock().expect("passwords mutex").get(seen) {
            Some(Remembered::Right) => Some(Verdict::Right),
            Some(Remembered::Wrong(at)) if at.elapsed() < WRONG_KEPT => Some(Verdict::WrongAgain),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_give_their_password_whatever_the_user() {
        use base64::Engine as _;
        let b = |s: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s));
        assert_eq!(basic_password(&b(":secret")).as_deref(), Some("secret"));
        assert_eq!(basic_password(&b("anyone:sec:ret")).as_deref(), Some("sec:ret"));
        assert_eq!(basic_password(&b("no-colon")), None);
        assert_eq!(basic_password("Bearer abc"), None);
        assert_eq!(basic_password("Basic !!!"), None);
        assert_eq!(basic_password(""), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checks_past_the_queue_are_refused_and_a_success_is_remembered() {
        let passwords = std::sync::Arc::new(Passwords::default());
        let link = std::sync::Arc::new(crate::model::link::test_link(10, 1));
        let phc: std::sync::Arc<str> = hash_password("right").into();
        let tries: Vec<_> = (0..HASHING_AT_ONCE + WAITING_MAX + 30)
            .map(|i| {
                let (p, l, h) = (passwords.clone(), link.clone(), phc.clone());
                tokio::spawn(async move { p.matches(&l, &format!("10.0.0.{i}"), &h, format!("wrong{i}")).await })
            })
            .collect();
        let mut busy = 0;
        for t in tries {
            match t.await.unwrap() {
                Err(Refusal::Busy) => busy += 1,
                Ok(Verdict::Wrong) => {}
                other => panic!("{other:?}"),
            }
        }
        assert!(busy >= 30, "only {busy} of the checks past the queue were refused");
        assert_eq!(
            passwords.waiting.load(Ordering::SeqCst),
            0,
            "every place in the queue is given back"
        );
        let right = passwords.matches(&link, "10.0.0.1", &phc, "right".into()).await;
        assert_eq!(right, Ok(Verdict::Right));
        // Remembered: the same credential from the same address costs no hash, so it is answered
        // even while every hashing place is taken, and a wrong one is not counted twice.
        let held = passwords.hashing.acquire_many(HASHING_AT_ONCE as u32).await.unwrap();
        let again = passwords.matches(&link, "10.0.0.1", &phc, "right".into()).await;
        assert_eq!(again, Ok(Verdict::Right));
        let wrong = passwords.matches(&link, "10.0.0.0", &phc, "wrong0".into());
        assert_eq!(wrong.await, Ok(Verdict::WrongAgain));
        // A check abandoned while it waits for a hashing place gives its place in the queue back.
        let abandoned = passwords.matches(&link, "10.0.0.1", &phc, "new".into());
        let waited = tokio::time::timeout(Duration::from_millis(50), abandoned).await;
        assert!(waited.is_err());
        assert_eq!(passwords.waiting.load(Ordering::SeqCst), 0);
        drop(held);
    }

    #[test]
    fn a_hash_verifies_its_password_only() {
        let phc = hash_password("correct horse");
        assert!(phc.starts_with("$argon2id$") && !phc.contains("correct"));
        let parsed = PasswordHash::new(&phc).unwrap();
        let a = argon2::Argon2::default();
        assert!(a.verify_password(b"correct horse", &parsed).is_ok());
        assert!(a.verify_password(b"correct horse ", &parsed).is_err());
        assert_ne!(phc, hash_password("correct horse"), "each hash has its own salt");
    }
}
