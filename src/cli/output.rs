//! How the CLI shows things to people: aligned tables, sizes, a progress bar on stderr.

use std::io::{IsTerminal, Write};

use serde_json::Value;

use super::size::binary_size;
use crate::model::format::human_size;

/// Prints `value` as JSON, or the table `text` makes.
pub fn print(json: bool, value: &Value, text: impl FnOnce() -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    } else {
        print!("{}", text());
    }
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s: String = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

pub fn tunnels(list: &Value, closed: bool) -> String {
    let items = list.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return if closed {
            "no closed links\n".into()
        } else {
            "no open links\n".into()
        };
    }
    let rows = items
        .iter()
        .map(|t| {
            let progress = format!("{:.0}%", t["progress"].as_f64().unwrap_or(0.0) * 100.0);
            let bytes = human_size(t["bytes_served"].as_u64().unwrap_or(0));
            let when = if closed {
                s(&t["closed_at"])
            } else {
                s(&t["expires_at"])
            };
            let status = if closed { s(&t["close_reason"]) } else { s(&t["state"]) };
            vec![s(&t["tunnel_id"]), s(&t["file_path"]), status, progress, bytes, when]
        })
        .collect();
    let when = if closed { "CLOSED" } else { "EXPIRES" };
    let status = if closed { "REASON" } else { "STATE" };
    table(&["ID", "FILE", status, "PROGRESS", "SERVED", when], rows)
}

/// A new link: its URL alone on the first line (scripts read it), then when it expires and its
/// id; for a ZIP also the archive's size, and each entry left out of it with the reason.
pub fn created(c: &Value) -> String {
    let zip = if c["kind"] == "zip" {
        format!("zip archive {} · ", human_size(c["file_size"].as_u64().unwrap_or(0)))
    } else {
        String::new()
    };
    let mut out = format!(
        "{}\n{zip}expires {} · tunnel {}\n",
        c["download_url"].as_str().unwrap_or(""),
        c["expires_at"].as_str().unwrap_or(""),
        c["tunnel_id"].as_str().unwrap_or("")
    );
    let skipped = c["skipped"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !skipped.is_empty() {
        out.push_str(&format!("left out of the archive ({}):\n", skipped.len()));
    }
    for e in skipped {
        out.push_str(&format!("  {}: {}\n", s(&e["path"]), s(&e["reason"])));
    }
    out
}

/// A new upload link: its URL alone on the first line (scripts read it), then how many files of
/// what size it takes, where they go, when it expires and its id.
pub fn receiving(c: &Value) -> String {
    let files = match c["max_files"].as_u64().unwrap_or(1) {
        1 => "1 file".to_string(),
        n => format!("up to {n} files"),
    };
    let folder = match c["folder"].as_str().unwrap_or("") {
        "" => "the data dir".to_string(),
        f => format!("{f}/"),
    };
    format!(
        "{}\nreceives {files} of at most {} each into {folder} · expires {} · tunnel {}\n",
        c["upload_url"].as_str().unwrap_or(""),
        binary_size(c["max_bytes"].as_u64().unwrap_or(0)),
        c["expires_at"].as_str().unwrap_or(""),
        c["tunnel_id"].as_str().unwrap_or("")
    )
}

/// Said after a new link that asks for a password, with how recipients give it.
pub const ASKS_PASSWORD: &str = "recipients are asked for the password (curl -u :PASSWORD)\n";

/// A link as an edit left it: what an owner can change, one fact a line.
pub fn edited(t: &Value) -> String {
    let downloads = if t["kind"] == "upload" {
        String::new()
    } else {
        format!(
            "downloads  {} of {} complete\n",
            t["downloads_completed"].as_u64().unwrap_or(0),
            t["max_downloads"].as_u64().unwrap_or(0)
        )
    };
    let password = match (t["password"] == true, t["locked"] == true) {
        (_, true) => "locked after too many wrong passwords",
        (true, false) => "required",
        (false, false) => "none",
    };
    let rate = match t["rate_limit_bytes_per_second"].as_u64() {
        Some(r) => format!("{}/s", binary_size(r)),
        None => "no cap".into(),
    };
    format!(
        "edited {}\nexpires    {} (at the latest {})\n{downloads}password   {password}\nrate       {rate}\n",
        s(&t["tunnel_id"]),
        s(&t["expires_at"]),
        s(&t["max_expires_at"]),
    )
}

/// A link's new URL alone on the first line (scripts read it), then what became of the old one.
pub fn rotated(r: &Value) -> String {
    format!(
        "{}\nthe old URL no longer works · expires {} · tunnel {}\n",
        s(&r["download_url"]),
        s(&r["expires_at"]),
        s(&r["tunnel_id"])
    )
}

/// A page of a folder or a search's results, and what is left out of it.
pub fn files(list: &Value) -> String {
    let entries = &list["entries"];
    let rows = entries
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let size = if e["is_dir"] == true {
                "dir".into()
            } else {
                human_size(e["size"].as_u64().unwrap_or(0))
            };
            vec![s(&e["path"]), size, s(&e["modified"])]
        })
        .collect();
    let mut out = table(&["PATH", "SIZE", "MODIFIED"], rows);
    if let (Some(next), Some(total)) = (list["next_offset"].as_u64(), list["total"].as_u64()) {
        out.push_str(&format!("{} more of {total}: --offset {next}\n", total - next));
    }
    if list["truncated"] == true {
        out.push_str("the search stopped before it had looked everywhere: narrow it, or search a folder\n");
    }
    out
}

pub fn health(h: &Value) -> String {
    let mut out = format!("ferry: {}\n", s(&h["status"]));
    if let Some(c) = h["components"].as_object() {
        for (name, v) in c {
            // Why a part is not ok (a Redis that may lose a redemption in a crash, a data dir
            // whose disk is gone).
            let why = match (v["status"].as_str(), v["durability"].as_str().or(v["detail"].as_str())) {
                (Some(st), Some(d)) if st != "ok" => format!(" ({d})"),
                _ => String::new(),
            };
            out.push_str(&format!("  {name:<9} {}{why}\n", s(&v["status"])));
        }
    }
    out
}

/// A one-line progress bar on stderr, drawn only for a terminal or when asked.
pub struct Bar {
    on: bool,
    tty: bool,
}

impl Bar {
    pub fn new(on: bool) -> Bar {
        Bar {
            on,
            tty: std::io::stderr().is_terminal(),
        }
    }

    pub fn draw(&mut self, t: &Value) {
        if !self.on {
            return;
        }
        let p = t["progress"].as_f64().unwrap_or(0.0).clamp(0.0, 1.0);
        let filled = (p * 30.0).round() as usize;
        let line = format!(
            "[{}{}] {:>3.0}%  {}",
            "#".repeat(filled),
            " ".repeat(30 - filled),
            p * 100.0,
            human_size(t["bytes_served"].as_u64().unwrap_or(0))
        );
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    pub fn finish(&mut self, reason: &str) {
        if self.on {
            eprintln!("{}link {reason}", if self.tty { "\n" } else { "" });
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn an_upload_link_prints_its_url_then_its_limits() {
        let one = json!({"upload_url": "http://x/s/id/up/?t=T", "tunnel_id": "id", "folder": "inbox",
            "expires_at": "E", "expires_in_seconds": 3600, "max_files": 1, "max_bytes": 2_147_483_648u64});
        assert_eq!(
            super::receiving(&one),
            "http://x/s/id/up/?t=T\nreceives 1 file of at most 2 GiB each into inbox/ · expires E · tunnel id\n"
        );
        let three = json!({"upload_url": "http://x/s/id/up/?t=T", "tunnel_id": "id", "folder": "",
            "expires_at": "E", "max_files": 3, "max_bytes": 1_572_864});
        let out = super::receiving(&three);
        assert_eq!(
            out.lines().nth(1),
            Some("receives up to 3 files of at most 1.5 MiB each into the data dir · expires E · tunnel id")
        );
    }

    #[test]
    fn an_edited_link_shows_what_can_be_changed() {
        let t = json!({"tunnel_id": "id", "kind": "file", "expires_at": "E", "max_expires_at": "M",
            "downloads_completed": 1, "max_downloads": 3, "password": true, "locked": false,
            "rate_limit_bytes_per_second": 2_097_152});
        assert_eq!(
            super::edited(&t),
            "edited id\nexpires    E (at the latest M)\ndownloads  1 of 3 complete\npassword   required\nrate       2 MiB/s\n"
        );
        let upload = json!({"tunnel_id": "id", "kind": "upload", "expires_at": "E", "max_expires_at": "M",
            "password": false, "locked": false, "rate_limit_bytes_per_second": null});
        let out = super::edited(&upload);
        assert!(!out.contains("downloads"), "{out}");
        assert!(out.contains("password   none\nrate       no cap\n"), "{out}");
    }

    #[test]
    fn a_rotated_link_prints_its_new_url_first() {
        let r = json!({"tunnel_id": "id", "download_url": "http://x/s/id/a?t=N", "token": "N", "expires_at": "E"});
        assert_eq!(
            super::rotated(&r),
            "http://x/s/id/a?t=N\nthe old URL no longer works · expires E · tunnel id\n"
        );
    }

    #[test]
    fn a_zip_link_says_so_and_lists_what_it_left_out() {
        let file = json!({"download_url": "http://x/s/id/a.jpg?t=T", "kind": "file", "file_size": 10,
            "expires_at": "E", "tunnel_id": "id", "skipped": []});
        assert_eq!(
            super::created(&file),
            "http://x/s/id/a.jpg?t=T\nexpires E · tunnel id\n"
        );
        let zip = json!({"download_url": "http://x/s/id/photos.zip?t=T", "kind": "zip", "file_size": 2_500_000,
            "expires_at": "E", "tunnel_id": "id",
            "skipped": [{"path": "photos/pipe", "reason": "not a regular file"}, {"path": "photos/.x", "reason": "hidden"}]});
        let out = super::created(&zip);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "http://x/s/id/photos.zip?t=T", "the URL comes first, alone");
        assert!(lines[1].starts_with("zip archive 2.5 MB · expires E"), "{out}");
        assert_eq!(
            &lines[2..],
            [
                "left out of the archive (2):",
                "  photos/pipe: not a regular file",
                "  photos/.x: hidden"
            ]
        );
    }
}
