//! How many bytes a TCP socket's peer has acknowledged (`tcpi_bytes_acked`, what `ss -ti` shows),
//! asked of the kernel through NETLINK_SOCK_DIAG with an exact-socket lookup.
//!
//! nginx logs a request only when it ends, and its `$body_bytes_sent` counts bytes handed to the
//! kernel, not bytes delivered; the acknowledged count is the truth while a transfer runs. This
//! module needs no `unsafe`: rustix provides the netlink socket, and the messages are plain bytes.
//! It sees only sockets in ferry's own network namespace; elsewhere every lookup finds nothing.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType, netlink, recv, send, socket};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const INET_DIAG_INFO: u16 = 2;
const IPPROTO_TCP: u8 = 6;
/// `tcpi_bytes_acked` in `struct tcp_info` (after the u8 block, 24 u32 and two u64 fields).
const BYTES_ACKED_OFFSET: usize = 120;

/// A few netlink sockets, each with its reply buffer: every check asks once, and checks run on
/// several threads at once (one socket behind one lock made them wait for each other).
pub struct SockDiag {
    sockets: Vec<Mutex<Socket>>,
    /// Each query's sequence number; also which busy socket to wait for, in turn.
    seq: AtomicUsize,
}

struct Socket {
    fd: OwnedFd,
    /// One reply: a message header, `inet_diag_msg` and a few attributes (`tcp_info` is the
    /// largest, about 250 bytes).
    reply: Box<[u8; 2048]>,
}

const SOCKETS: usize = 4;

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
}

impl SockDiag {
    pub fn open() -> io::Result<Self> {
        let sockets = (0..SOCKETS)
            .map(|_| {
                let fd = socket(AddressFamily::NETLINK, SocketType::DGRAM, Some(netlink::SOCK_DIAG))?;
                rustix::net::sockopt::set_socket_timeout(
                    &fd,
                    rustix::net::sockopt::Timeout::Recv,
                    Some(Duration::from_secs(1)),
                )?;
                Ok(Mutex::new(Socket {
                    fd,
                    reply: Box::new([0; 2048]),
                }))
            })
            .collect::<io::Result<_>>()?;
        Ok(SockDiag {
            sockets,
            seq: AtomicUsize::new(0),
        })
    }

    /// The bytes the peer has acknowledged on this connection, or `None` if it no longer exists.
    pub fn bytes_acked(&self, conn: Conn) -> io::Result<Option<u64>> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        // A free socket if there is one; else wait for one, taking them in turn.
        let mut socket = match self.sockets.iter().find_map(|s| s.try_lock().ok()) {
            Some(s) => s,
            None => self.sockets[seq % SOCKETS].lock().expect("sockdiag mutex"),
        };
        let Socket { fd, reply } = &mut *socket;
        let seq = seq as u32;
        send(&*fd, &request(conn, seq), SendFlags::empty())?;
        // A reply that came after its asker gave up (the 1 s timeout) is not this one's.
        loop {
            let n = recv(&*fd, &mut reply[..], RecvFlags::empty())?.0.min(reply.len());
            if u32_at(&reply[..n], 8) == Some(seq) {
                return parse_reply(&reply[..n], conn.peer.port());
            }
        }
    }
}

fn octets(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
    }
    out
}

fn request(conn: Conn, seq: u32) -> Vec<u8> {
    let family: u8 = if conn.local.is_ipv4() { 2 } else { 10 };
    let mut m = Vec::with_capacity(72);
    m.extend_from_slice(&72u32.to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    m.extend_from_slice(&[family, IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    m.extend_from_slice(&conn.local.port().to_be_bytes());
    m.extend_from_slice(&conn.peer.port().to_be_bytes());
    m.extend_from_slice(&octets(conn.local.ip()));
    m.extend_from_slice(&octets(conn.peer.ip()));
    m.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // INET_DIAG_NOCOOKIE
    m.extend_from_slice(&u32::MAX.to_ne_bytes());
    m
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn parse_reply(b: &[u8], peer_port: u16) -> io::Result<Option<u64>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag reply");
    let len = u32_at(b, 0).ok_or_else(bad)? as usize;
    let kind = u16_at(b, 4).ok_or_else(bad)?;
    let msg = b.get(..len).ok_or_else(bad)?;
    match kind {
        NLMSG_ERROR => {
            let errno = -(u32_at(msg, 16).ok_or_else(bad)? as i32);
            if errno == 2 {
                Ok(None) // ENOENT: the connection is gone
            } else {
                Err(io::Error::from_raw_os_error(errno))
            }
        }
        SOCK_DIAG_BY_FAMILY => {
            // The kernel falls back to the listening socket when the connection is gone: only
            // the connection with this peer counts.
            let dport = u16::from_be_bytes(msg.get(22..24).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
            if dport != peer_port {
                return Ok(None);
            }
            tcp_info_bytes_acked(msg).map(Some).ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

/// The attribute of a SOCK_DIAG_BY_FAMILY message (`nlmsghdr`, `inet_diag_msg`, then attributes)
/// that carries `struct tcp_info`, and its `tcpi_bytes_acked`; `None` if it is missing or cut short.
fn tcp_info_bytes_acked(msg: &[u8]) -> Option<u64> {
    // nlmsghdr (16) + inet_diag_msg (72), then attributes.
    let mut at = 16 + 72;
    while at + 4 <= msg.len() {
        let alen = u16_at(msg, at)? as usize;
        let atype = u16_at(msg, at + 2)?;
        if alen < 4 {
            return None;
        }
        if atype == INET_DIAG_INFO {
            let info = msg.get(at + 4..at + alen)?;
            let acked = info.get(BYTES_ACKED_OFFSET..BYTES_ACKED_OFFSET + 8)?;
            return Some(u64::from_ne_bytes(acked.try_into().ok()?));
        }
        at += (alen + 3) & !3;
    }
    None
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn parses_nginx_addresses() {
        let c = Conn::parse("127.0.0.1:8080", "127.0.0.9:51234").unwrap();
        assert_eq!(c.peer.port(), 51234);
        let c6 = Conn::parse("::1:8080", "[2001:db8::1]:443").unwrap();
        assert_eq!(c6.local, "[::1]:8080".parse().unwrap());
        assert!(Conn::parse("nope", "127.0.0.1:1").is_none());
        assert!(Conn::parse("127.0.0.1:99999", "127.0.0.1:1").is_none());
    }

    #[test]
    fn malformed_replies_are_errors_not_guesses() {
        assert!(parse_reply(&[], 1).is_err());
        assert!(parse_reply(&[1, 0, 0, 0, 20, 0], 1).is_err());
    }

    #[test]
    fn counts_what_a_real_peer_acknowledged() {
        let diag = SockDiag::open().expect("sock_diag is available");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, peer) = listener.accept().unwrap();
        let conn = Conn {
            local: server.local_addr().unwrap(),
            peer,
        };
        let before = diag.bytes_acked(conn).unwrap().unwrap();
        server.write_all(&[7u8; 100_000]).unwrap();
        let mut got = vec![0u8; 100_000];
        client.read_exact(&mut got).unwrap();
        // The ACKs may trail the read by a moment.
        let mut after = 0;
        for _ in 0..100 {
            after = diag.bytes_acked(conn).unwrap().unwrap();
            if after >= before + 100_000 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(after >= before + 100_000, "acked {before} -> {after}");
        drop((server, client));
        let gone = Conn {
            local: conn.local,
            peer: "127.0.0.1:1".parse().unwrap(),
        };
        assert_eq!(diag.bytes_acked(gone).unwrap(), None);
    }
}
