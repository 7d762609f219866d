//! Raw exchanges with the public listener, for requests curl will not send (a garbage request
//! line, a path with `..` above the root, an oversized header) and for telling "closed with
//! nothing sent" apart from any reply at all.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How a connection ended after one request was written.
#[derive(Debug)]
pub struct Exchange {
    /// Every byte the server sent back.
    pub got: Vec<u8>,
    /// The server closed the connection (end of stream or reset) within the time allowed.
    pub closed: bool,
}

impl Exchange {
    /// The reply as text, for failure messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.got[..self.got.len().min(300)]).into_owned()
    }
}

/// Writes `request` to `addr` (host:port) and reads until the server closes, for at most 5 s.
/// A write that fails because the server closed first counts as a close.
pub fn exchange(addr: &str, request: &[u8]) -> Exchange {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    // The server may close while a large request is still being written: that is its answer.
    let _ = s.write_all(request);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return Exchange { got, closed: true },
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Exchange { got, closed: true },
        }
    }
    Exchange { got, closed: false }
}

/// Sends `request` `times` times, one connection each, and returns how many were answered with
/// anything at all.
pub fn flood(addr: &str, request: &[u8], times: usize) -> usize {
    (0..times).filter(|_| !exchange(addr, request).got.is_empty()).count()
}

/// nginx started by a test from a config ferry rendered (external mode, as compose runs it),
/// its stderr kept in a file; stopped when dropped.
pub struct ExternalNginx {
    child: std::process::Child,
    pub stderr: std::path::PathBuf,
}

impl ExternalNginx {
    /// Starts `nginx -c <conf>` and waits until `public` (host:port) accepts connections.
    pub fn start(conf: &std::path::Path, public: &str) -> ExternalNginx {
        let stderr = conf.with_file_name("nginx-stderr.txt");
        let child = std::process::Command::new("nginx")
            .arg("-c")
            .arg(conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("nginx is installed");
        let n = ExternalNginx { child, stderr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(public).is_err() {
            assert!(Instant::now() < deadline, "nginx did not listen: {}", n.stderr_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        n
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stderr).unwrap_or_default()).into_owned()
    }
}

impl Drop for ExternalNginx {
    fn drop(&mut self) {
        // Fast shutdown of this nginx's master; its workers follow.
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
