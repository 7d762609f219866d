//! The client side of the admin API, with the CLI's exit codes for each kind of failure.

use std::process::ExitCode;

use serde_json::Value;

pub struct Client {
    base: String,
    token: Option<String>,
    /// A header every request carries (`ferry mcp` marks its requests as made through MCP).
    header: Option<(&'static str, &'static str)>,
    http: reqwest::Client,
}

/// Why a command failed, and how it exits.
#[derive(Debug)]
pub enum Failure {
    /// The server refused (4xx other than auth): exit 1.
    Refused { status: u16, message: String },
    /// Not reachable, or not authorised: exit 3.
    Unreachable(String),
    /// Arguments that parsed but cannot be used (an unreadable password file): exit 2.
    Usage(String),
}

impl Failure {
    pub fn report(self, json: bool) -> ExitCode {
        let code = match &self {
            Failure::Refused { .. } => 1,
            Failure::Unreachable(_) => 3,
            Failure::Usage(_) => 2,
        };
        let message = self.message();
        if json {
            println!("{}", serde_json::json!({"error": message}));
        } else {
            eprintln!("ferry: {message}");
        }
        ExitCode::from(code)
    }
}

impl Failure {
    /// What went wrong, in one line: the API's own message when ferry refused.
    pub fn message(&self) -> String {
        match self {
            Failure::Refused { status, message } => format!("ferry refused ({status}): {message}"),
            Failure::Unreachable(m) | Failure::Usage(m) => m.clone(),
        }
    }
}

/// What an answer of the admin API means: its JSON body on success (`null` for 204), else the
/// failure its status says. With `any_status`, a JSON object is the answer whatever the status.
pub fn outcome(status: u16, body: Value, any_status: bool) -> Result<Value, Failure> {
    let message = body["error"].as_str().unwrap_or("no details").to_string();
    match status {
        200..=299 => Ok(body),
        401 | 403 | 421 => Err(Failure::Unreachable(format!(
            "not authorised ({status}): {message}; set FERRY_ADMIN_TOKEN"
        ))),
        _ if any_status && body.is_object() => Ok(body),
        400..=499 => Err(Failure::Refused { status, message }),
        _ => Err(Failure::Unreachable(format!("ferry answered {status}: {message}"))),
    }
}

/// Percent-encodes one path segment.
pub fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, crate::model::format::URL_SEGMENT).to_string()
}

/// Percent-encodes a query value.
pub fn query(s: &str) -> String {
    segment(s)
}

impl Client {
    pub fn from_env() -> Result<Client, Failure> {
        let base = std::env::var("FERRY_URL").unwrap_or_else(|_| "http://127.0.0.1:8000".into());
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::Unreachable(format!(
                "FERRY_URL: expected an http:// or https:// URL, got {base:?}"
            )));
        }
        let token = std::env::var("FERRY_ADMIN_TOKEN").ok().filter(|t| !t.is_empty());
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| Failure::Unreachable(e.to_string()))?;
        Ok(Client {
            base,
            token,
            header: None,
            http,
        })
    }

    /// The same client, sending `name: value` with every request.
    pub fn with_header(self, name: &'static str, value: &'static str) -> Client {
        Client {
            header: Some((name, value)),
            ..self
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder, any_status: bool) -> Result<Value, Failure> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let req = match self.header {
            Some((name, value)) => req.header(name, value),
            None => req,
        };
        let r = req.send().await.map_err(|e| {
            Failure::Unreachable(format!(
                "cannot reach ferry at {} ({}); is it running? (FERRY_URL)",
                self.base,
                e.without_url()
            ))
        })?;
        let status = r.status().as_u16();
        let body: Value = if status == 204 {
            Value::Null
        } else {
            r.json().await.unwrap_or(Value::Null)
        };
        outcome(status, body, any_status)
    }

    /// Any request, with an optional JSON body.
    pub async fn request(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value, Failure> {
        let req = self.http.request(method, format!("{}{path}", self.base));
        let req = match body {
            Some(b) => req.json(b),
            None => req,
        };
        self.send(req, false).await
    }

    pub async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.send(self.http.get(format!("{}{path}", self.base)), false).await
    }

    /// A GET whose JSON body matters whatever the status (e.g. `/health` answers 503 with one).
    pub async fn get_any(&self, path: &str) -> Result<Value, Failure> {
        self.send(self.http.get(format!("{}{path}", self.base)), true).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body), false)
            .await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.send(self.http.patch(format!("{}{path}", self.base)).json(body), false)
            .await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, Failure> {
        self.send(self.http.delete(format!("{}{path}", self.base)), false).await
    }
}
