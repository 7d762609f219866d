//! `ferry edit` and `ferry rotate`: change a live link without changing its URL, or give it a new
//! URL so that the old one stops working (SPEC §13).

use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Args};
use serde_json::{Value, json};

use super::client::{self, Client, Failure};
use super::common::Common;
use super::password::Password;
use super::time::parse_duration;
use super::{output, size, time};

#[derive(Args)]
#[command(
    override_usage = "ferry edit <ID> [--extend 1h | --expires-at TIME] [--max-downloads N] \
        [--password P | --password-file FILE | --no-password] [--rate 2M] [--json]"
)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args(["extend", "expires_at", "max_downloads", "password", "password_file", "no_password", "rate"])
))]
pub struct Edit {
    /// The link's tunnel id (ids may begin with `-`).
    #[arg(allow_hyphen_values = true)]
    pub id: String,
    /// Move the expiry later by this much (15m, 1h, 1d), up to the latest the link allows.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", conflicts_with = "expires_at")]
    pub extend: Option<Duration>,
    /// Set the expiry: an RFC 3339 time with its zone (2025-06-01T18:00:00Z, or with +02:00).
    /// Now or earlier ends the link.
    #[arg(long, value_parser = time::parse_time, value_name = "TIME")]
    pub expires_at: Option<String>,
    /// How many complete downloads the link allows (not fewer than are done or under way).
    #[arg(long)]
    pub max_downloads: Option<u32>,
    #[command(flatten)]
    pub password: Password,
    /// Remove the link's password.
    #[arg(long, conflicts_with_all = ["password", "password_file"])]
    pub no_password: bool,
    /// A bandwidth cap per second: bytes, or with a K, M or G suffix (powers of 1024): 500K, 2M.
    #[arg(long, value_parser = size::parse_size, value_name = "SIZE")]
    pub rate: Option<u64>,
    #[command(flatten)]
    pub common: Common,
}

/// The body of `PATCH /admin/tunnels/{id}` for what was given, with the expiry already resolved.
fn edit_body(e: &Edit, expires_at: Option<String>, password: Option<String>) -> Value {
    let mut body = json!({});
    if let Some(t) = expires_at {
        body["expires_at"] = json!(t);
    }
    if let Some(n) = e.max_downloads {
        body["max_downloads"] = json!(n);
    }
    if let Some(p) = password {
        body["password"] = json!(p);
    } else if e.no_password {
        body["password"] = Value::Null;
    }
    if let Some(r) = e.rate {
        body["rate_limit_bytes_per_second"] = json!(r);
    }
    body
}

pub async fn edit(client: &Client, e: Edit) -> Result<ExitCode, Failure> {
    let password = e.password.read()?;
    let path = format!("/admin/tunnels/{}", client::segment(&e.id));
    let expires_at = match e.extend {
        Some(by) => {
            let stats = client.get(&format!("{path}/stats")).await?;
            let now = stats["tunnel"]["expires_at"].as_str().unwrap_or_default();
            Some(time::later(now, by).map_err(|m| Failure::Unreachable(format!("ferry answered {m}")))?)
        }
        None => e.expires_at.clone(),
    };
    let tunnel = client.patch(&path, &edit_body(&e, expires_at, password)).await?;
    output::print(e.common.json, &tunnel, || output::edited(&tunnel));
    Ok(ExitCode::SUCCESS)
}

pub async fn rotate(client: &Client, id: &str, common: &Common) -> Result<ExitCode, Failure> {
    let path = format!("/admin/tunnels/{}/rotate", client::segment(id));
    let rotated = client.post(&path, &json!({})).await?;
    output::print(common.json, &rotated, || output::rotated(&rotated));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use clap::error::ErrorKind;
    use serde_json::json;

    use crate::cli::{Cli, Command};

    fn body(args: &[&str]) -> Result<serde_json::Value, ErrorKind> {
        let cli = Cli::try_parse_from(["ferry", "edit"].iter().chain(args)).map_err(|e| e.kind())?;
        let Command::Edit(e) = cli.command else {
            panic!("not edit")
        };
        let password = e.password.read().unwrap();
        let at = e.expires_at.clone();
        Ok(super::edit_body(&e, at, password))
    }

    #[test]
    fn edit_sends_only_what_was_given() {
        assert_eq!(body(&["id", "--max-downloads", "3"]), Ok(json!({"max_downloads": 3})));
        assert_eq!(
            body(&["-id", "--password", "pw", "--rate", "2M", "--json"]),
            Ok(json!({"password": "pw", "rate_limit_bytes_per_second": 2_097_152}))
        );
        assert_eq!(body(&["id", "--no-password"]), Ok(json!({"password": null})));
        assert_eq!(
            body(&["id", "--expires-at", "2025-06-01T20:00:00+02:00"]),
            Ok(json!({"expires_at": "2025-06-01T18:00:00.000Z"}))
        );
    }

    #[test]
    fn edit_refuses_nothing_to_change_and_contradictions() {
        let cases: &[(&[&str], ErrorKind)] = &[
            (&["id"], ErrorKind::MissingRequiredArgument),
            (&["id", "--json"], ErrorKind::MissingRequiredArgument),
            (&["id", "--password", "a", "--no-password"], ErrorKind::ArgumentConflict),
            (
                &["id", "--password-file", "-", "--no-password"],
                ErrorKind::ArgumentConflict,
            ),
            (
                &["id", "--password", "a", "--password-file", "-"],
                ErrorKind::ArgumentConflict,
            ),
            (
                &["id", "--extend", "1h", "--expires-at", "2025-06-01T18:00:00Z"],
                ErrorKind::ArgumentConflict,
            ),
            (&["id", "--extend", "soon"], ErrorKind::ValueValidation),
            (
                &["id", "--expires-at", "2025-06-01T18:00:00"],
                ErrorKind::ValueValidation,
            ),
            (&["id", "--rate", "0"], ErrorKind::ValueValidation),
            (&["--max-downloads", "2"], ErrorKind::MissingRequiredArgument),
        ];
        for (args, want) in cases {
            assert_eq!(body(args), Err(*want), "{args:?}");
        }
    }
}
