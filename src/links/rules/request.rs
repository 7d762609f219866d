//! A public request as the rules see it: its method and range, what the check was told, and the
//! answers it can get.

use crate::model::Conn;
use crate::model::coverage::ByteRange;
use crate::model::{ClientKey, Use};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Other,
}

impl Method {
    pub fn parse(s: &str) -> Self {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            _ => Method::Other,
        }
    }
}

/// A public request as the check sees it, before any bytes are sent.
#[derive(Debug, Clone)]
pub struct Admission {
    pub request_id: Arc<str>,
    pub method: Method,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The `If-Range` header, if any. One that does not match makes nginx send the whole file.
    pub if_range: Option<String>,
    pub client: ClientKey,
    /// The connection and what its peer had acknowledged before this request.
    pub conn: Option<(Conn, u64)>,
    /// Whether this is the connection's first request (nginx's `$connection_requests` is 1).
    /// Nothing was sent on the connection before, so its acknowledged count is 0 without asking
    /// the kernel.
    pub first_on_connection: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("bad token")]
    BadToken,
    #[error("unknown link")]
    Unknown,
    #[error("link is closed")]
    Closed,
    #[error("link has expired")]
    Expired,
    #[error("method not allowed")]
    Method,
    #[error("no downloads left for this client")]
    UsedUp,
    #[error("the request would re-send more than the link's re-send budget")]
    Refetch,
    #[error("only the completing client's range requests are served during the grace period")]
    Grace,
    #[error("the shared file changed")]
    FileChanged,
    #[error("malformed request")]
    Malformed,
    #[error("store unavailable")]
    Unavailable,
    #[error("client is banned")]
    Banned,
    #[error("the access log cannot be written")]
    LogUnwritable,
    #[error("the token is from before the link was rotated")]
    Rotated,
    #[error("the client's address is not one the link allows")]
    NotAllowed,
    #[error("the link is locked after too many wrong passwords")]
    Locked,
    #[error("the link needs a password")]
    PasswordNeeded,
    #[error("wrong password")]
    WrongPassword,
    #[error("too many passwords are being checked at once")]
    Busy,
    #[error("the link's token, password or addresses changed while the request waited")]
    TermsChanged,
}

impl Refusal {
    /// A stable name for metrics and the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::BadToken => "bad_token",
            Refusal::Unknown => "unknown_link",
            Refusal::Closed => "closed",
            Refusal::Expired => "expired",
            Refusal::Method => "method",
            Refusal::UsedUp => "used_up",
            Refusal::Refetch => "refetch_budget",
            Refusal::Grace => "grace",
            Refusal::FileChanged => "file_changed",
            Refusal::Malformed => "malformed",
            Refusal::Unavailable => "store_unavailable",
            Refusal::Banned => "banned",
            Refusal::LogUnwritable => "log_unwritable",
            Refusal::Rotated => "rotated",
            Refusal::NotAllowed => "address_not_allowed",
            Refusal::Locked => "locked",
            Refusal::PasswordNeeded => "password_needed",
            Refusal::WrongPassword => "wrong_password",
            Refusal::Busy => "busy",
            Refusal::TermsChanged => "terms_changed",
        }
    }

    /// Whether this refusal suggests guessing, so that it counts towards a ban. A correctly signed
    /// token of a link that expired or closed is bad luck, not forgery.
    pub fn counts_against_client(&self) -> bool {
        matches!(
            self,
            Refusal::BadToken | Refusal::Unknown | Refusal::Malformed | Refusal::WrongPassword
        )
    }

    /// Whether the client is asked for a password (401 and a Basic challenge) instead of being
    /// refused outright.
    pub fn asks_for_password(&self) -> bool {
        matches!(self, Refusal::PasswordNeeded | Refusal::WrongPassword)
    }
}

/// What an allowed request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// Whether the request took a new claim, which means that a download starts.
    pub new_claim: bool,
    pub what: Use,
}

/// nginx's strong ETag for a file: `"<mtime in hex>-<size in hex>"`.
pub fn etag(mtime_ns: i128, size: u64) -> String {
    format!("\"{:x}-{:x}\"", mtime_ns.div_euclid(1_000_000_000), size)
}

/// The bytes nginx may send for a GET with these `Range` and `If-Range` headers, for a file of
/// `size` bytes. For anything this cannot read exactly as one satisfiable range, nginx answers
/// either with the whole file or with no body at all, so the answer is then the whole file. That
/// way a request is never assumed to ask for less than it may get.
pub fn asked(range: Option<&str>, if_range: Option<&str>, etag: &str, size: u64) -> ByteRange {
    let whole = ByteRange { start: 0, end: size };
    let Some(range) = range else { return whole };
    if if_range.is_some_and(|v| v != etag) {
        return whole;
    }
    let Some(spec) = range
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case("bytes="))
        .map(|_| range[6..].trim())
    else {
        return whole;
    };
    if spec.contains(',') {
        return whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    let parsed = if a.is_empty() {
        // A suffix: the last `b` bytes.
        digits(b)
            .then(|| b.parse::<u64>().ok())
            .flatten()
            .filter(|n| *n > 0)
            .and_then(|n| ByteRange::new(size.saturating_sub(n), size))
    } else if digits(a) && (b.is_empty() || digits(b)) {
        let start = a.parse::<u64>().ok();
        let last = if b.is_empty() {
            Some(size.saturating_sub(1))
        } else {
            b.parse::<u64>().ok()
        };
        match (start, last) {
            (Some(s), Some(l)) if s <= l && s < size => ByteRange::new(s, l.min(size - 1) + 1),
            _ => None,
        }
    } else {
        None
    };
    parsed.unwrap_or(whole)
}

/// Where a `Range: bytes=…` request starts in a file of `size` bytes (0 for anything else: nginx
/// answers those with the whole file).
pub fn range_start(range: Option<&str>, size: u64) -> u64 {
    asked(range, None, "", size).start
}
