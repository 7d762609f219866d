//! One access-log line, parsed into a typed record. nginx writes the line with `escape=json`,
//! using the `log_format` in `nginx/nginx.conf`. A line that does not parse is reported, never
//! guessed at. nginx writes a header's bytes ≥ 0x80 raw, so the follower hands over the line
//! decoded lossily. A User-Agent that is not UTF-8 therefore changes how the line is shown, but
//! never whether the line counts.

use serde::Deserialize;

use crate::model::TunnelId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    Ok,
    Aborted,
}

#[derive(Debug, Clone)]
pub struct AccessRecord {
    /// Seconds since the epoch with milliseconds, as nginx's `$msec`.
    pub msec: f64,
    pub request_id: String,
    pub tunnel_id: Option<TunnelId>,
    pub method: String,
    pub status: u16,
    /// Header and body bytes handed to the socket.
    pub bytes_sent: u64,
    pub body_bytes_sent: u64,
    /// Bytes read from the client: the request line, the headers and as much of the body as
    /// arrived (nginx's `$request_length`). Uploads are counted by it.
    pub request_length: u64,
    pub content_range: Option<String>,
    pub completion: Completion,
    pub client: String,
    pub user_agent: String,
    /// Whether a link previewer or prefetcher got the HTML preview instead of the file.
    pub preview: bool,
    /// What the check admitted the request as (`Use::header`); `None` when it did not.
    pub claim: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("access log line is not the expected JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("access log line has a bad `{field}`: {value:?}")]
    Field { field: &'static str, value: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw<'a> {
    msec: &'a str,
    request_id: &'a str,
    tunnel_id: &'a str,
    method: &'a str,
    status: u16,
    bytes_sent: u64,
    body_bytes_sent: u64,
    #[serde(rename = "range", borrow)]
    _range: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    content_range: std::borrow::Cow<'a, str>,
    completion: &'a str,
    client: &'a str,
    #[serde(borrow)]
    user_agent: std::borrow::Cow<'a, str>,
    #[serde(rename = "request_time")]
    _request_time: f64,
    /// Lines written before an upgrade added this field to nginx's config do not have it.
    #[serde(default)]
    request_length: u64,
    preview: &'a str,
    /// Lines written before an upgrade added this field to nginx's config do not have it.
    #[serde(borrow, default)]
    claim: std::borrow::Cow<'a, str>,
}

impl AccessRecord {
    pub fn parse(line: &str) -> Result<Self, ParseError> {
        let raw: Raw = serde_json::from_str(line)?;
        let bad = |field, value: &str| ParseError::Field {
            field,
            value: value.to_string(),
        };
        let msec: f64 = raw.msec.parse().map_err(|_| bad("msec", raw.msec))?;
        if raw.request_id.len() != 32 || !raw.request_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("request_id", raw.request_id));
        }
        let tunnel_id = match raw.tunnel_id {
            "" => None,
            t => Some(TunnelId::parse(t).map_err(|_| bad("tunnel_id", t))?),
        };
        let completion = match raw.completion {
            "OK" => Completion::Ok,
            "" => Completion::Aborted,
            c => return Err(bad("completion", c)),
        };
        let preview = match raw.preview {
            "0" => false,
            "1" => true,
            p => return Err(bad("preview", p)),
        };
        let content_range = Some(raw.content_range.into_owned()).filter(|s| !s.is_empty());
        let claim = Some(raw.claim.into_owned()).filter(|s| !s.is_empty());
        Ok(AccessRecord {
            msec,
            request_id: raw.request_id.to_string(),
            tunnel_id,
            method: raw.method.to_string(),
            status: raw.status,
            bytes_sent: raw.bytes_sent,
            body_bytes_sent: raw.body_bytes_sent,
            request_length: raw.request_length,
            content_range,
            completion,
            client: raw.client.to_string(),
            user_agent: raw.user_agent.into_owned(),
            preview,
            claim,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"msec":"1700000000.123","request_id":"0123456789abcdef0123456789abcdef","tunnel_id":"AAAAAAAAAAAAAAAAAAAAAAAA","method":"GET","status":206,"bytes_sent":900,"body_bytes_sent":500,"range":"bytes=0-499","content_range":"bytes 0-499/1000","completion":"OK","client":"127.0.0.2","user_agent":"curl/8 \"q\"","request_time":0.001,"request_length":180,"preview":"0","claim":"c0.0123456789ab"}"#;

    #[test]
    fn parses_a_line() {
        let r = AccessRecord::parse(GOOD).unwrap();
        assert_eq!(r.status, 206);
        assert_eq!(r.body_bytes_sent, 500);
        assert_eq!(r.request_length, 180);
        assert_eq!(r.completion, Completion::Ok);
        assert_eq!(r.content_range.as_deref(), Some("bytes 0-499/1000"));
        assert_eq!(r.user_agent, "curl/8 \"q\"");
        assert!(r.tunnel_id.is_some());
        assert_eq!(r.claim.as_deref(), Some("c0.0123456789ab"));
    }

    #[test]
    fn bad_lines_name_what_is_wrong() {
        let table: &[(&str, &str)] = &[
            (r#"{"msec":"x"#, "JSON"),
            ("not json", "JSON"),
            (&GOOD.replace("\"OK\"", "\"maybe\""), "completion"),
            (&GOOD.replace("0123456789abcdef0123456789abcdef", "xyz"), "request_id"),
            (&GOOD.replace("AAAAAAAAAAAAAAAAAAAAAAAA", "../etc"), "tunnel_id"),
            (&GOOD.replace("1700000000.123", "soon"), "msec"),
            (&GOOD.replace("\"preview\":\"0\"", "\"preview\":\"yes\""), "preview"),
            (&GOOD.replace("\"status\":206", "\"status\":\"x\""), "JSON"),
            (&GOOD.replace("\"status\":206", "\"status\":206,\"extra\":1"), "JSON"),
        ];
        for (line, what) in table {
            let e = AccessRecord::parse(line).unwrap_err().to_string();
            assert!(e.contains(what), "{line}: {e}");
        }
    }
}
