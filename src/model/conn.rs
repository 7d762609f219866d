//! A TCP connection, as nginx logs it and the kernel reports it.

use std::net::{IpAddr, SocketAddr};

/// One TCP connection, seen from nginx's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Conn {
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

impl Conn {
    /// Parses nginx's `$server_addr:$server_port` and `$realip_remote_addr:$realip_remote_port`
    /// (IPv6 addresses come without brackets).
    pub fn parse(local: &str, peer: &str) -> Option<Conn> {
        fn addr(s: &str) -> Option<SocketAddr> {
            let (ip, port) = s.rsplit_once(':')?;
            let ip: IpAddr = ip.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
            Some(SocketAddr::new(ip, port.parse().ok()?))
        }
        Some(Conn {
            local: addr(local)?,
            peer: addr(peer)?,
        })
    }

    /// The same connection with IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, an IPv4 client of
    /// a dual-stack listener) written as IPv4, so either spelling finds it.
    pub fn canonical(self) -> Conn {
        let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        Conn {
            local: canon(self.local),
            peer: canon(self.peer),
        }
    }
}
