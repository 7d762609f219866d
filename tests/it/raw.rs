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
