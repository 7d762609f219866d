//! Who may use the admin listener.
//!
//! Every request's `Host` must name this listener (`localhost`, `127.0.0.1`, `[::1]`, the
//! listener's own address, or a name in `FERRY_ADMIN_HOSTS`), or the request gets 421, which
//! defeats DNS rebinding. A state-changing request whose `Origin` is not this listener gets 403.
//! This listener's origins are those with scheme `http`, one of those names and the listener's own
//! port (a page on another port of the same host is another site), and the origins that
//! `FERRY_ADMIN_HOSTS` lists whole (`https://nas.example`, for a proxy in front of the listener).
//! With `FERRY_ADMIN_TOKEN` set, every route except `/health`, the login and the UI's static files
//! needs `Authorization: Bearer <token>` (compared in constant time) or the session cookie that the
//! login sets (HttpOnly, SameSite=Strict, signed with a key derived from the token). Tokens are
//! never logged.

use std::net::SocketAddr;

use axum::http::{HeaderMap, header};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Secret;

pub const COOKIE: &str = "ferry_session";
const SESSION_SECONDS: u64 = 12 * 3600;

pub struct AdminAuth {
    token: Option<Secret>,
    hosts: Vec<String>,
    /// The listener's port: an `Origin` naming one of `hosts` must name this port too.
    port: u16,
    /// Origins `FERRY_ADMIN_HOSTS` lists whole (a proxy in front of the listener).
    origins: Vec<Origin>,
    session_enc: Option<EncodingKey>,
    session_dec: Option<DecodingKey>,
}

#[derive(Serialize, Deserialize)]
struct Session {
    sub: String,
    exp: u64,
}

/// Compares two strings in a time that does not depend on their content. The length of the
/// expected token is not secret.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The host part of a `Host` header or an origin's authority, lower-cased, without the port.
fn host_name(authority: &str) -> Option<String> {
    let a = authority.trim();
    let name = if let Some(rest) = a.strip_prefix('[') {
        format!("[{}]", rest.split(']').next()?)
    } else {
        a.rsplit_once(':')
            .map_or(a, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { a })
            .to_string()
    };
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

/// An origin (`scheme://host[:port]`), its host lower-cased and its port explicit.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    fn parse(text: &str) -> Option<Origin> {
        let (scheme, authority) = text.trim().split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        if authority.contains(['/', '?', '#', '@']) {
            return None;
        }
        let host = host_name(authority)?;
        let after_host = if authority.starts_with('[') {
            authority.split_once(']')?.1
        } else {
            authority.rsplit_once(':').map_or("", |(_, p)| p)
        };
        let port = match after_host.strip_prefix(':').unwrap_or(after_host) {
            "" => default,
            p => p.parse().ok()?,
        };
        Some(Origin { scheme, host, port })
    }
}

impl AdminAuth {
    pub fn new(token: Option<Secret>, admin_addr: SocketAddr, extra_hosts: &[String]) -> Self {
        let own = match admin_addr.ip() {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            ip => ip.to_string(),
        };
        let mut hosts = vec!["localhost".to_string(), "127.0.0.1".into(), "[::1]".into(), own];
        let mut origins = Vec::new();
        for h in extra_hosts {
            match Origin::parse(h) {
                // For an origin listed whole, its host is also a name of this listener, because
                // the proxy passes it on.
                Some(o) => {
                    hosts.push(o.host.clone());
                    origins.push(o);
                }
                None => hosts.push(h.to_ascii_lowercase()),
            }
        }
        let key = token.as_ref().map(|t| format!("ferry-session:{}", t.expose()));
        AdminAuth {
            session_enc: key.as_ref().map(|k| EncodingKey::from_secret(k.as_bytes())),
            session_dec: key.as_ref().map(|k| DecodingKey::from_secret(k.as_bytes())),
            token,
            hosts,
            port: admin_addr.port(),
            origins,
        }
    }

    pub fn required(&self) -> bool {
        self.token.is_some()
    }

    pub fn host_allowed(&self, authority: &str) -> bool {
        host_name(authority).is_some_and(|h| self.hosts.contains(&h))
    }

    /// Whether `origin` is this listener: plain HTTP to one of its names on its own port, or an
    /// origin listed whole. The host alone is not enough: any page served from another port of
    /// `localhost` would pass.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        let Some(o) = Origin::parse(origin) else {
            return false;
        };
        (o.scheme == "http" && o.port == self.port && self.hosts.contains(&o.host)) || self.origins.contains(&o)
    }

    fn bearer_ok(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else { return true };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| ct_eq(given.trim().as_bytes(), token.expose().as_bytes()))
    }

    fn session_ok(&self, headers: &HeaderMap, now_s: u64) -> bool {
        let Some(dec) = &self.session_dec else { return false };
        let Some(value) = cookie(headers, COOKIE) else {
            return false;
        };
        let mut v = Validation::new(Algorithm::HS256);
        // `exp` is compared with the caller's clock below.
        v.validate_exp = false;
        match jsonwebtoken::decode::<Session>(value, dec, &v) {
            Ok(d) => d.claims.sub == "admin" && d.claims.exp > now_s,
            Err(_) => false,
        }
    }

    /// Whether `given` is the admin token (compared in constant time); false without one.
    pub fn token_matches(&self, given: &str) -> bool {
        self.token
            .as_ref()
            .is_some_and(|t| ct_eq(given.as_bytes(), t.expose().as_bytes()))
    }

    pub fn authorized(&self, headers: &HeaderMap, now_s: u64) -> bool {
        self.token.is_none() || self.bearer_ok(headers) || self.session_ok(headers, now_s)
    }

    pub fn session_cookie(&self, now_s: u64) -> Option<String> {
        let enc = self.session_enc.as_ref()?;
        let s = Session {
            sub: "admin".into(),
            exp: now_s + SESSION_SECONDS,
        };
        let v = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &s, enc).ok()?;
        Some(format!(
            "{COOKIE}={v}; HttpOnly; SameSite=Strict; Path=/; Max-Age={SESSION_SECONDS}"
        ))
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub(super) fn now_s() -> u64 {
    crate::model::now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> AdminAuth {
        AdminAuth::new(
            Some(Secret::new("0123456789abcdef")),
            "192.168.1.5:8000".parse().unwrap(),
            &["nas.lan".into()],
        )
    }

    #[test]
    fn hosts_and_origins() {
        let a = auth();
        for ok in [
            "localhost:8000",
            "127.0.0.1",
            "[::1]:8000",
            "192.168.1.5:8000",
            "NAS.lan",
            "nas.lan:443",
        ] {
            assert!(a.host_allowed(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:8000",
            "nas.lan.evil.example",
            "localhost.evil",
            "[::2]:8000",
        ] {
            assert!(!a.host_allowed(bad), "{bad}");
        }
        for ok in [
            "http://localhost:8000",
            "http://127.0.0.1:8000/",
            "http://[::1]:8000",
            "http://192.168.1.5:8000",
            "http://NAS.lan:8000",
        ] {
            assert!(a.origin_allowed(ok), "{ok}");
        }
        for bad in [
            "null",
            "http://evil.example",
            "http://evil.example:8000",
            "file://",
            "localhost:8000",
            // The right host on another port, or another scheme, is another site.
            "http://localhost:1234",
            "http://localhost",
            "http://127.0.0.1:80",
            "https://localhost:8000",
            "https://nas.lan",
            "http://nas.lan:8000@evil.example",
            "http://localhost:8000/path",
            "http://localhost:8000x",
            "http://[::1]",
        ] {
            assert!(!a.origin_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn an_origin_listed_whole_is_a_proxy_in_front() {
        let a = AdminAuth::new(
            None,
            "127.0.0.1:8000".parse().unwrap(),
            &["https://NAS.example".into(), "http://box.lan:8080".into()],
        );
        assert!(a.host_allowed("nas.example") && a.host_allowed("box.lan:8080"));
        for ok in ["https://nas.example", "https://nas.example:443", "http://box.lan:8080"] {
            assert!(a.origin_allowed(ok), "{ok}");
        }
        // Its name on the listener's own port is the listener, as for any other name.
        assert!(a.origin_allowed("http://box.lan:8000"));
        for bad in ["http://nas.example", "https://nas.example:8443", "http://box.lan"] {
            assert!(!a.origin_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn bearer_and_session() {
        let a = auth();
        let mut h = HeaderMap::new();
        assert!(!a.authorized(&h, 100));
        h.insert(header::AUTHORIZATION, "Bearer 0123456789abcdeX".parse().unwrap());
        assert!(!a.authorized(&h, 100));
        h.insert(header::AUTHORIZATION, "Bearer 0123456789abcdef".parse().unwrap());
        assert!(a.authorized(&h, 100));
        let c = a.session_cookie(100).unwrap();
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict"));
        let value = c.split(';').next().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, format!("other=1; {value}").parse().unwrap());
        assert!(a.authorized(&h, 100));
        assert!(!a.authorized(&h, 100 + SESSION_SECONDS), "sessions expire");
        let other = AdminAuth::new(
            Some(Secret::new("another-token-123")),
            "127.0.0.1:1".parse().unwrap(),
            &[],
        );
        assert!(!other.authorized(&h, 100), "a session from another token is worthless");
    }

    #[test]
    fn constant_time_compare_is_exact() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }
}
