//! The command line: `ferry serve` runs everything; the other commands are a client of a running
//! ferry (`FERRY_URL`, `FERRY_ADMIN_TOKEN`). Tables for people, `--json` for scripts.
//!
//! Exit codes: 0 success; 1 the server refused (bad input, unknown id); 2 usage; 3 ferry
//! unreachable or unauthorised; 4 `share --wait` ended with the link closed for a reason other
//! than `completed`.

mod client;
mod output;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

pub use client::{Client, Failure};

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
    /// Share a file or folder (or several, as one ZIP) and print its link.
    Share(Share),
    /// List open links.
    Ls(Common),
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
pub struct Common {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct Share {
    /// What to share, relative to the data dir: one file; or a folder, or several files and
    /// folders, which the recipient gets as one ZIP.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<String>,
    /// How long the link lives: 90s, 15m, 1h, 1h30m.
    #[arg(long, value_parser = parse_duration)]
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
    pub common: Common,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (try 90s, 15m or 1h)"))?;
    if d.as_secs() == 0 || d.subsec_nanos() != 0 {
        return Err("must be a whole number of seconds, at least 1s".into());
    }
    Ok(d)
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
        Command::Serve => unreachable!("serve is not a client command"),
        Command::Share(s) => s.common.json,
        Command::Ls(c) | Command::Status(c) => c.json,
        Command::Rm { common, .. } | Command::History { common, .. } | Command::Files { common, .. } => common.json,
    };
    match runtime.block_on(execute(&client, command)) {
        Ok(code) => code,
        Err(f) => f.report(json_out),
    }
}

async fn execute(client: &Client, command: Command) -> Result<ExitCode, Failure> {
    match command {
        Command::Serve => unreachable!("serve is not a client command"),
        Command::Share(s) => share(client, s).await,
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

/// The paths of a link request: one path as `file_path` (the server shares a folder as one ZIP),
/// several as `file_paths`. A trailing `/` says "folder" to a person and nothing to the server.
fn paths_body(paths: &[String]) -> serde_json::Value {
    let trimmed: Vec<&str> = paths
        .iter()
        .map(|p| match p.trim_end_matches('/') {
            // `/` alone stays, so that the server refuses it as absolute.
            "" => p.as_str(),
            t => t,
        })
        .collect();
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
    let created = client.post("/api/links", &body).await?;
    output::print(s.common.json, &created, || output::created(&created));
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
    fn an_id_beginning_with_a_dash_is_an_id_not_a_flag() {
        // Ids are base64url: one in 64 begins with `-`.
        let cli = Cli::try_parse_from(["ferry", "rm", "-Xk2V8cQ1aB3dE4fG5hJ6kL7"]).unwrap();
        assert!(matches!(cli.command, Command::Rm { id, .. } if id == "-Xk2V8cQ1aB3dE4fG5hJ6kL7"));
        let cli = Cli::try_parse_from(["ferry", "rm", "--json", "-abc"]).unwrap();
        assert!(matches!(cli.command, Command::Rm { id, common } if id == "-abc" && common.json));
    }
}
