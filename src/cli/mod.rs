//! The command line: `ferry serve` runs everything; the other commands are a client of a running
//! ferry (`FERRY_URL`, `FERRY_ADMIN_TOKEN`). Tables for people, `--json` for scripts.
//!
//! Exit codes: 0 success; 1 the server refused (bad input, unknown id, a link already closed);
//! 2 usage; 3 ferry unreachable or unauthorised; 4 `share --wait` ended with the link closed for a
//! reason other than `completed`.

mod client;
mod common;
mod edit;
mod output;
mod password;
mod size;
mod time;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

pub use client::{Client, Failure, outcome, query, segment};
pub use common::Common;
pub use edit::Edit;
pub use password::Password;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Share a file or folder from your NAS through a link that works once, then vanishes."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run ferry: the control plane, the managed nginx and the log monitor.
    Serve,
    /// Give an AI agent ferry's tools over MCP on standard input and output (the agent starts
    /// this; it talks to a running ferry like the other commands).
    Mcp,
    /// Share a file or folder (or several, as one ZIP) and print its link.
    Share(Share),
    /// Make an upload link through which someone can send files into a folder, and print it.
    Receive(Receive),
    /// List open links.
    Ls(Common),
    /// Change an open link (expiry, downloads, password, rate); its URL stays the same.
    Edit(Edit),
    /// Give an open link a new URL: the old one stops working at once.
    Rotate {
        /// The link's tunnel id (ids may begin with `-`).
        #[arg(allow_hyphen_values = true)]
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// End an open link now.
    Rm {
        /// The link's tunnel id (ids may begin with `-`).
        #[arg(allow_hyphen_values = true)]
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Closed links, newest first.
    History {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        common: Common,
    },
    /// Health of ferry and its parts.
    Status(Common),
    /// Browse the data dir (or search it with --search).
    Files {
        /// A folder relative to the data dir.
        dir: Option<String>,
        /// Find names containing this text.
        #[arg(long)]
        search: Option<String>,
        /// Start the listing at this entry (a big folder comes a page at a time).
        #[arg(long)]
        offset: Option<u64>,
        /// Entries in the page (1 to 10000; the server's default is 1000).
        #[arg(long)]
        limit: Option<u64>,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args)]
pub struct Share {
    /// What to share, relative to the data dir: one file; or a folder, or several files and
    /// folders, which the recipient gets as one ZIP.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<String>,
    /// How long the link lives: 90s, 15m, 1h, 1h30m.
    #[arg(long, value_parser = time::parse_duration)]
    pub expires: Option<Duration>,
    /// How many complete downloads the link allows.
    #[arg(long)]
    pub max_downloads: Option<u32>,
    /// A note for yourself (shown in lists, never to the recipient).
    #[arg(long)]
    pub note: Option<String>,
    /// Stay until the link closes, showing progress; exit 4 unless it completed.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub password: Password,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args)]
pub struct Receive {
    /// The folder that receives the files, relative to the data dir.
    pub folder: String,
    /// The largest file accepted: bytes, or with a K, M, G or T suffix (powers of 1024): 500M, 2G.
    #[arg(long, value_parser = size::parse_size, value_name = "SIZE")]
    pub max_bytes: u64,
    /// How many files the link accepts; it closes once they have arrived (default 1).
    #[arg(long)]
    pub max_files: Option<u32>,
    /// How long the link lives: 90s, 15m, 1h, 1h30m.
    #[arg(long, value_parser = time::parse_duration)]
    pub expires: Option<Duration>,
    /// A note for yourself (shown in lists, never to the sender).
    #[arg(long)]
    pub note: Option<String>,
    #[command(flatten)]
    pub password: Password,
    #[command(flatten)]
    pub common: Common,
}

/// Runs a client command; `serve` is handled by the caller.
pub fn run(command: Command) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let client = match Client::from_env() {
        Ok(c) => c,
        Err(f) => return f.report(false),
    };
    let json_out = match &command {
        Command::Serve | Command::Mcp => unreachable!("serve and mcp are not client commands"),
        Command::Share(s) => s.common.json,
        Command::Receive(r) => r.common.json,
        Command::Edit(e) => e.common.json,
        Command::Ls(c) | Command::Status(c) => c.json,
        Command::Rm { common, .. }
        | Command::Rotate { common, .. }
        | Command::History { common, .. }
        | Command::Files { common, .. } => common.json,
    };
    match runtime.block_on(execute(&client, command)) {
        Ok(code) => code,
        Err(f) => f.report(json_out),
    }
}

async fn execute(client: &Client, command: Command) -> Result<ExitCode, Failure> {
    match command {
        Command::Serve | Command::Mcp => unreachable!("serve and mcp are not client commands"),
        Command::Share(s) => share(client, s).await,
        Command::Receive(r) => receive(client, r).await,
        Command::Edit(e) => edit::edit(client, e).await,
        Command::Rotate { id, common } => edit::rotate(client, &id, &common).await,
        Command::Ls(c) => {
            let v = client.get("/admin/tunnels").await?;
            output::print(c.json, &v, || output::tunnels(&v["tunnels"], false));
            Ok(ExitCode::SUCCESS)
        }
        Command::Rm { id, common } => {
            client
                .delete(&format!("/admin/tunnels/{}", client::segment(&id)))
                .await?;
            output::print(common.json, &json!({"terminated": id}), || format!("terminated {id}\n"));
            Ok(ExitCode::SUCCESS)
        }
        Command::History { limit, common } => {
            let v = client.get(&format!("/admin/history?limit={limit}")).await?;
            output::print(common.json, &v, || output::tunnels(&v["tunnels"], true));
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(c) => {
            let health = client.get_any("/health").await?;
            let ok = health["status"] == "ok";
            output::print(c.json, &health, || output::health(&health));
            Ok(
                if health["status"].is_string() && (ok || health["status"] == "degraded") {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                },
            )
        }
        Command::Files {
            dir,
            search,
            offset,
            limit,
            common,
        } => {
            let mut q = format!("/api/files?path={}", client::query(dir.as_deref().unwrap_or("")));
            if let Some(s) = search {
                q.push_str(&format!("&q={}", client::query(&s)));
            }
            if let Some(n) = offset {
                q.push_str(&format!("&offset={n}"));
            }
            if let Some(n) = limit {
                q.push_str(&format!("&limit={n}"));
            }
            let v = client.get(&q).await?;
            output::print(common.json, &v, || output::files(&v));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A path as the server takes it. A trailing `/` says "folder" to a person and nothing to the
/// server; `/` alone stays, so that the server refuses it as absolute.
fn trim_folder(p: &str) -> &str {
    match p.trim_end_matches('/') {
        "" => p,
        t => t,
    }
}

/// The paths of a link request: one path as `file_path` (the server shares a folder as one ZIP),
/// several as `file_paths`.
pub fn paths_body(paths: &[String]) -> serde_json::Value {
    let trimmed: Vec<&str> = paths.iter().map(|p| trim_folder(p)).collect();
    match trimmed.as_slice() {
        [one] => json!({ "file_path": one }),
        several => json!({ "file_paths": several }),
    }
}

async fn share(client: &Client, s: Share) -> Result<ExitCode, Failure> {
    let mut body = paths_body(&s.paths);
    if let Some(d) = s.expires {
        body["expires_in_seconds"] = json!(d.as_secs());
    }
    if let Some(n) = s.max_downloads {
        body["max_downloads"] = json!(n);
    }
    if let Some(n) = &s.note {
        body["note"] = json!(n);
    }
    let password = s.password.read()?;
    if let Some(p) = &password {
        body["password"] = json!(p);
    }
    let created = client.post("/api/links", &body).await?;
    output::print(s.common.json, &created, || {
        output::created(&created) + if password.is_some() { output::ASKS_PASSWORD } else { "" }
    });
    if !s.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let id = created["tunnel_id"].as_str().unwrap_or_default().to_string();
    let path = format!("/admin/tunnels/{}/stats", client::segment(&id));
    let mut bar = output::Bar::new(!s.common.json);
    loop {
        let stats = client.get(&path).await?;
        let t = &stats["tunnel"];
        bar.draw(t);
        // The allowance is used up, so the download is done. The link stays open for its grace
        // period.
        if t["state"] == "completed" || t["close_reason"] == "completed" {
            bar.finish("completed");
            return Ok(ExitCode::SUCCESS);
        }
        if t["state"] == "closed" {
            let reason = t["close_reason"].as_str().unwrap_or("closed").to_string();
            bar.finish(&reason);
            if s.common.json {
                println!("{}", json!({"tunnel_id": id, "close_reason": reason}));
            }
            return Ok(ExitCode::from(4));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An upload link request: the folder, the limits, and what was given of the rest (the server
/// has defaults for them).
fn receive_body(r: &Receive) -> serde_json::Value {
    let mut body = json!({"folder": trim_folder(&r.folder), "max_bytes": r.max_bytes});
    if let Some(n) = r.max_files {
        body["max_files"] = json!(n);
    }
    if let Some(d) = r.expires {
        body["expires_in_seconds"] = json!(d.as_secs());
    }
    if let Some(n) = &r.note {
        body["note"] = json!(n);
    }
    body
}

async fn receive(client: &Client, r: Receive) -> Result<ExitCode, Failure> {
    let mut body = receive_body(&r);
    let password = r.password.read()?;
    if let Some(p) = &password {
        body["password"] = json!(p);
    }
    let created = client.post("/api/uploads", &body).await?;
    output::print(r.common.json, &created, || {
        output::receiving(&created) + if password.is_some() { output::ASKS_PASSWORD } else { "" }
    });
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::{Cli, Command};

    #[test]
    fn one_path_is_file_path_and_several_are_file_paths() {
        let paths = |args: &[&str]| {
            let cli = Cli::try_parse_from(["ferry", "share"].iter().chain(args)).unwrap();
            let Command::Share(s) = cli.command else {
                panic!("not share")
            };
            super::paths_body(&s.paths)
        };
        assert_eq!(paths(&["a.jpg"]), json!({"file_path": "a.jpg"}));
        assert_eq!(paths(&["photos/"]), json!({"file_path": "photos"}), "a folder");
        assert_eq!(
            paths(&["a.jpg", "b.jpg", "photos//", "--json"]),
            json!({"file_paths": ["a.jpg", "b.jpg", "photos"]})
        );
        assert_eq!(paths(&["/"]), json!({"file_path": "/"}), "not the whole data dir");
        assert!(Cli::try_parse_from(["ferry", "share"]).is_err(), "a path is required");
    }

    #[test]
    fn receive_sends_the_folder_and_limits_as_given() {
        let body = |args: &[&str]| {
            let cli = Cli::try_parse_from(["ferry", "receive"].iter().chain(args)).map_err(|e| e.kind())?;
            let Command::Receive(r) = cli.command else {
                panic!("not receive")
            };
            Ok(super::receive_body(&r))
        };
        assert_eq!(
            body(&["inbox", "--max-bytes", "2G"]),
            Ok(json!({"folder": "inbox", "max_bytes": 2_147_483_648u64}))
        );
        assert_eq!(
            body(&[
                "scans/2025/",
                "--max-bytes",
                "500MB",
                "--max-files",
                "3",
                "--expires",
                "15m",
                "--note",
                "from Sam",
                "--json"
            ]),
            Ok(json!({"folder": "scans/2025", "max_bytes": 524_288_000, "max_files": 3,
                "expires_in_seconds": 900, "note": "from Sam"}))
        );
        use clap::error::ErrorKind;
        assert_eq!(
            body(&["inbox"]),
            Err(ErrorKind::MissingRequiredArgument),
            "the limit is required"
        );
        assert_eq!(body(&["inbox", "--max-bytes", "2X"]), Err(ErrorKind::ValueValidation));
        assert_eq!(body(&["inbox", "--max-bytes", "0"]), Err(ErrorKind::ValueValidation));
        assert_eq!(
            body(&["--max-bytes", "2G"]),
            Err(ErrorKind::MissingRequiredArgument),
            "a folder is required"
        );
    }

    #[test]
    fn an_id_beginning_with_a_dash_is_an_id_not_a_flag() {
        // Ids are base64url: one in 64 begins with `-`.
        let cli = Cli::try_parse_from(["ferry", "rm", "-Xk2V8cQ1aB3dE4fG5hJ6kL7"]).unwrap();
        assert!(matches!(cli.command, Command::Rm { id, .. } if id == "-Xk2V8cQ1aB3dE4fG5hJ6kL7"));
        let cli = Cli::try_parse_from(["ferry", "rm", "--json", "-abc"]).unwrap();
        assert!(matches!(cli.command, Command::Rm { id, common } if id == "-abc" && common.json));
    }
}
