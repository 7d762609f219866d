//! A link's password as the command line takes it: on the command line itself, or from a file or
//! standard input, so that it need not sit in the shell's history or show in `ps`.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Args;

use super::client::Failure;

#[derive(Args)]
pub struct Password {
    /// Recipients must give this password (HTTP Basic; `curl -u :PASSWORD`). It shows in the
    /// shell's history and in `ps`: --password-file keeps it out of both.
    #[arg(long, value_name = "PASSWORD", conflicts_with = "password_file")]
    pub password: Option<String>,
    /// Read the password from the first line of this file; `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

/// The most bytes read from a password file: the server takes at most 1024.
const MAX_READ: u64 = 4096;

impl Password {
    /// The password given, if one was. An unreadable file or an empty first line is a usage error.
    pub fn read(&self) -> Result<Option<String>, Failure> {
        match (&self.password, &self.password_file) {
            (Some(p), _) => Ok(Some(p.clone())),
            (None, Some(path)) => from_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }
}

fn from_file(path: &Path) -> Result<String, Failure> {
    let shown = path.display();
    let mut text = String::new();
    let read = if path == Path::new("-") {
        std::io::stdin().take(MAX_READ).read_to_string(&mut text)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_READ).read_to_string(&mut text))
    };
    read.map_err(|e| Failure::Usage(format!("--password-file {shown}: {e}")))?;
    first_line(&text).ok_or_else(|| Failure::Usage(format!("--password-file {shown}: the first line is empty")))
}

/// The first line without its line ending; `None` when it is empty.
fn first_line(text: &str) -> Option<String> {
    let line = text.split('\n').next().unwrap_or_default();
    let line = line.strip_suffix('\r').unwrap_or(line);
    (!line.is_empty()).then(|| line.to_string())
}

#[cfg(test)]
mod tests {
    use super::first_line;

    #[test]
    fn the_password_is_the_first_line_as_typed() {
        assert_eq!(first_line("open sesame\n").as_deref(), Some("open sesame"));
        assert_eq!(first_line("open sesame\r\nsecond\n").as_deref(), Some("open sesame"));
        assert_eq!(first_line("  spaced  ").as_deref(), Some("  spaced  "));
        assert_eq!(first_line("no newline").as_deref(), Some("no newline"));
        assert_eq!(first_line(""), None);
        assert_eq!(first_line("\nlater"), None);
        assert_eq!(first_line("\r\n"), None);
    }
}
