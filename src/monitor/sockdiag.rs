//! How many bytes a TCP socket's peer has acknowledged (`tcpi_bytes_acked`, what `ss -ti` shows),
//! asked of the kernel through NETLINK_SOCK_DIAG with an exact-socket lookup ([`SockDiag`]) while
//! the socket lives, and heard from the kernel when it is destroyed ([`ClosedSockets`], what
//! `ss -E` shows).
//!
//! nginx logs a request only when it ends, and its `$body_bytes_sent` counts bytes handed to the
//! kernel, not bytes delivered, so the acknowledged count is the true progress of a transfer. This
//! module needs no `unsafe`: rustix provides the netlink socket, and the messages are plain bytes.
//! It sees only sockets in ferry's own network namespace; elsewhere every lookup finds nothing.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType, netlink, recv, send, socket, sockopt};
use tokio::sync::oneshot;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const INET_DIAG_INFO: u16 = 2;
const IPPROTO_TCP: u8 = 6;
/// `tcpi_bytes_acked` in `struct tcp_info` (after the u8 block, 24 u32 and two u64 fields).
const BYTES_ACKED_OFFSET: usize = 120;

/// A few netlink sockets, each with its own reply buffer. Every check asks once, and checks run on
/// several threads at once, so a single socket behind one lock would make them wait for each other.
pub struct SockDiag {
    sockets: Vec<Mutex<Socket>>,
    /// The next query's sequence number. It also picks which busy socket to wait for, so that the
    /// sockets are taken in turn.
    seq: AtomicUsize,
}

struct Socket {
    fd: OwnedFd,
    /// One reply: a message header, `inet_diag_msg` and a few attributes (`tcp_info` is the
    /// largest, about 250 bytes).
    reply: Box<[u8; 2048]>,
}

const SOCKETS: usize = 4;

use crate::model::Conn;

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
        // Take a free socket if there is one. Otherwise wait for one, taking the sockets in turn.
        let mut socket = match self.sockets.iter().find_map(|s| s.try_lock().ok()) {
            Some(s) => s,
            None => self.sockets[seq % SOCKETS].lock().expect("sockdiag mutex"),
        };
        let Socket { fd, reply } = &mut *socket;
        let seq = seq as u32;
        send(&*fd, &request(conn, seq), SendFlags::empty())?;
        // A reply that arrived after its asker gave up (at the 1 s timeout) belongs to an earlier
        // query, so it is skipped.
        loop {
            let n = recv(&*fd, &mut reply[..], RecvFlags::empty())?.0.min(reply.len());
            if u32_at(&reply[..n], 8) == Some(seq) {
                return parse_reply(&reply[..n], conn.peer.port());
            }
        }
    }
}

/// The final state of every TCP socket the kernel destroys in ferry's network namespace, as it
/// broadcasts them to the sock_diag groups `SKNLGRP_INET_TCP_DESTROY` and
/// `SKNLGRP_INET6_TCP_DESTROY` (what `ss -E` shows): for each connection, what its peer had
/// acknowledged when the socket went away.
///
/// A request that ends between two periodic samples (a client that hangs up) would otherwise be
/// credited with whatever the last sample said; the notification carries the exact count. The
/// kernel sends it when it frees the socket, which is after nginx closed it and the last data and
/// FIN were acknowledged or given up on, so the count is final (the FIN itself counts as one
/// byte). One exception: a socket closed with `SO_LINGER` 0 (nginx's `reset_timedout_connection`)
/// is disconnected first, which forgets its peer and zeroes its counters before it is freed, so
/// no notification names that connection and a caller's wait runs out.
///
/// What it needs, from `net/core/sock_diag.c`:
/// - No privilege. The NETLINK_SOCK_DIAG family is created with `NL_CFG_F_NONROOT_RECV`, so any
///   user may join its multicast groups; this holds inside a container with every capability
///   dropped and under Docker's default seccomp profile. Only a larger receive buffer than
///   `net.core.rmem_max` needs `CAP_NET_ADMIN` (`SO_RCVBUFFORCE`); without it bursts are more
///   likely to overrun the buffer (counted by [`ClosedSockets::lost`]).
/// - The same network namespace as nginx. Each namespace has its own sock_diag socket and
///   broadcasts only its own sockets: in compose, ferry must share nginx's network namespace
///   (`network_mode: service:nginx`, or the other way round), as the exact lookups already need.
/// - The kernel's `inet_diag` and `tcp_diag` (built in, or modules the kernel loads on demand
///   when the groups are joined, also from a container). Kernels since 2015 send these
///   notifications; an older one accepts the membership and sends nothing, which
///   [`ClosedSockets::start`] finds out with a probe connection.
///
/// While anyone listens, the kernel hands every TCP socket of the namespace to a workqueue to be
/// described before it is freed, so a listener has a cost even for connections ferry never asks
/// about.
///
/// Cloning is cheap and shares the listener; its thread ends within a second of the last clone
/// being dropped.
#[derive(Clone)]
pub struct ClosedSockets {
    shared: Arc<Shared>,
}

/// The final state that the kernel reported for one destroyed socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    /// `tcpi_bytes_acked` when the socket was destroyed.
    pub bytes_acked: u64,
    /// When ferry received the notification: always after the socket was destroyed.
    pub at: Instant,
}

/// Destroyed sockets kept at most; the oldest go first.
const CLOSED_CAPACITY: usize = 65_536;
/// How long a notification is kept: a caller waits for one for a second or so after its request
/// ended, so anything older is of no use.
const CLOSED_KEEP: Duration = Duration::from_secs(30);
/// The receive buffer asked for: notifications come in bursts when many connections close at
/// once, and each one that does not fit is lost.
const CLOSED_RCVBUF: usize = 4 << 20;
/// sock_diag's multicast groups are numbered from 1; bit `n - 1` of a bind address joins group `n`.
const SKNLGRP_INET_TCP_DESTROY: u32 = 1;
const SKNLGRP_INET6_TCP_DESTROY: u32 = 3;
const INET_DIAG_PROTOCOL: u16 = 8;

struct Shared {
    state: Mutex<Finals>,
    /// Overruns of the receive buffer: each is at least one notification the kernel dropped.
    lost: AtomicU64,
    received: AtomicU64,
    running: AtomicBool,
}

struct Finals {
    /// At most this many notifications are kept ([`CLOSED_CAPACITY`] but in tests).
    capacity: usize,
    by_conn: HashMap<Conn, Closed>,
    /// Arrival order, for eviction; an entry whose connection has a newer notification since is
    /// skipped when it comes up.
    order: VecDeque<(Conn, Instant)>,
    /// Callers waiting for a connection's notification.
    waiters: HashMap<Conn, Vec<oneshot::Sender<Closed>>>,
}

impl Finals {
    fn new(capacity: usize) -> Finals {
        Finals {
            capacity,
            by_conn: HashMap::new(),
            order: VecDeque::new(),
            waiters: HashMap::new(),
        }
    }

    fn get(&self, conn: Conn, since: Instant) -> Option<Closed> {
        self.by_conn
            .get(&conn)
            .copied()
            .filter(|c| c.at >= since && c.at.elapsed() <= CLOSED_KEEP)
    }

    fn insert(&mut self, conn: Conn, closed: Closed) {
        self.by_conn.insert(conn, closed);
        self.order.push_back((conn, closed.at));
        if let Some(waiting) = self.waiters.remove(&conn) {
            for tx in waiting {
                // A caller that gave up has dropped its receiver; nothing to tell it.
                let _ = tx.send(closed);
            }
        }
        while let Some(&(old, at)) = self.order.front() {
            if self.order.len() <= self.capacity && closed.at.duration_since(at) <= CLOSED_KEEP {
                break;
            }
            self.order.pop_front();
            if self.by_conn.get(&old).is_some_and(|c| c.at == at) {
                self.by_conn.remove(&old);
            }
        }
    }
}

/// A caller's place in [`Finals::waiters`]. Dropping it, however the wait ended (with an answer, at
/// the time limit, or because the caller's future was dropped), removes what the caller left behind.
struct Waiter<'a> {
    shared: &'a Shared,
    conn: Conn,
    rx: Option<oneshot::Receiver<Closed>>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        // Dropping the receiver first closes its sender, so the sweep below finds it.
        self.rx.take();
        let mut state = self.shared.lock();
        if let Some(waiting) = state.waiters.get_mut(&self.conn) {
            waiting.retain(|tx| !tx.is_closed());
            if waiting.is_empty() {
                state.waiters.remove(&self.conn);
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Finals> {
        self.state.lock().expect("closed sockets mutex")
    }
}

impl ClosedSockets {
    /// Joins the destroy groups, starts the thread that reads them, and proves they work with a
    /// loopback connection whose notification must arrive within a second (so `/health` can say
    /// whether aborted requests are credited from the kernel). It takes about a millisecond.
    pub async fn start() -> io::Result<ClosedSockets> {
        ClosedSockets::start_keeping(CLOSED_CAPACITY).await
    }

    async fn start_keeping(capacity: usize) -> io::Result<ClosedSockets> {
        let fd = socket(AddressFamily::NETLINK, SocketType::DGRAM, Some(netlink::SOCK_DIAG))?;
        let groups = (1 << (SKNLGRP_INET_TCP_DESTROY - 1)) | (1 << (SKNLGRP_INET6_TCP_DESTROY - 1));
        rustix::net::bind(&fd, &netlink::SocketAddrNetlink::new(0, groups))?;
        // A buffer larger than `net.core.rmem_max` needs CAP_NET_ADMIN. Without it, the smaller
        // buffer still works.
        if sockopt::set_socket_recv_buffer_size_force(&fd, CLOSED_RCVBUF).is_err() {
            sockopt::set_socket_recv_buffer_size(&fd, CLOSED_RCVBUF)?;
        }
        // The thread looks up every second whether anyone still holds the listener.
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(Duration::from_secs(1)))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(Finals::new(capacity)),
            lost: AtomicU64::new(0),
            received: AtomicU64::new(0),
            running: AtomicBool::new(true),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("ferry-sockclose".into())
            .spawn(move || listen(fd, weak))?;
        let closed = ClosedSockets { shared };
        closed.probe().await?;
        Ok(closed)
    }

    /// Opens and closes one loopback connection, and waits for the notification about its server
    /// side, which must arrive.
    async fn probe(&self) -> io::Result<()> {
        let since = Instant::now();
        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
        let (server, peer) = listener.accept().await?;
        let conn = Conn {
            local: server.local_addr()?,
            peer,
        };
        drop((server, client, listener));
        match self.final_acked(conn, since, Duration::from_secs(1)).await {
            Some(_) => Ok(()),
            None => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel sent no sock_diag destroy notification for a loopback connection",
            )),
        }
    }

    /// The notification of `conn`'s socket received at or after `since`, if it has come.
    pub fn get(&self, conn: Conn, since: Instant) -> Option<Closed> {
        self.shared.lock().get(conn.canonical(), since)
    }

    /// Like [`ClosedSockets::get`], but also forgets the notification.
    pub fn take(&self, conn: Conn, since: Instant) -> Option<Closed> {
        let conn = conn.canonical();
        let mut state = self.shared.lock();
        let closed = state.get(conn, since)?;
        state.by_conn.remove(&conn);
        Some(closed)
    }

    /// What `conn`'s peer had acknowledged when its socket was destroyed, waiting at most `wait`
    /// for the notification; only one received at or after `since` counts.
    ///
    /// A (local, peer) pair can be used again by a later socket, so `since` should be a moment at
    /// which the caller knows its socket was open, such as the check of a request that came on it.
    /// An earlier socket with the same pair was destroyed before this one was opened, and its
    /// notification, which the kernel sends within microseconds, normally came before the new
    /// connection's first request was even read.
    pub async fn final_acked(&self, conn: Conn, since: Instant, wait: Duration) -> Option<u64> {
        let conn = conn.canonical();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut waiter = {
                let mut state = self.shared.lock();
                if let Some(closed) = state.get(conn, since) {
                    return Some(closed.bytes_acked);
                }
                let (tx, rx) = oneshot::channel();
                state.waiters.entry(conn).or_default().push(tx);
                Waiter {
                    shared: &self.shared,
                    conn,
                    rx: Some(rx),
                }
            };
            let rx = waiter.rx.as_mut().expect("receiver is set");
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(closed)) if closed.at >= since => return Some(closed.bytes_acked),
                // This happens only when `since` lies in the future, so wait for a later one.
                Ok(Ok(_)) => continue,
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// Whether the reading thread still runs (it stops only on an unexpected error).
    pub fn is_running(&self) -> bool {
        self.shared.running.load(Ordering::Relaxed)
    }

    /// Notifications received since the start.
    pub fn received(&self) -> u64 {
        self.shared.received.load(Ordering::Relaxed)
    }

    /// Times the receive buffer overflowed and the kernel dropped notifications (each time, at
    /// least one). A caller waiting for a notification that was lost waits out its time.
    pub fn lost(&self) -> u64 {
        self.shared.lost.load(Ordering::Relaxed)
    }

    /// Notifications held now.
    pub fn len(&self) -> usize {
        self.shared.lock().by_conn.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Notifications read in one go before the map is locked once for all of them.
const CLOSED_BATCH: usize = 64;

fn listen(fd: OwnedFd, shared: Weak<Shared>) {
    let mut buf = vec![0u8; 64 << 10];
    let mut batch = Vec::with_capacity(CLOSED_BATCH);
    loop {
        // The first read waits (up to the socket's timeout); the rest take what is already there.
        let mut flags = RecvFlags::empty();
        let mut lost = 0;
        while batch.len() < CLOSED_BATCH {
            match recv(&fd, &mut buf[..], flags) {
                Ok((n, _)) => parse_destroyed(&buf[..n.min(buf.len())], &mut batch),
                Err(Errno::INTR) => continue,
                Err(Errno::NOBUFS) => lost += 1,
                Err(Errno::AGAIN) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reading sock_diag destroy notifications failed; stopped");
                    if let Some(shared) = shared.upgrade() {
                        shared.running.store(false, Ordering::Relaxed);
                    }
                    return;
                }
            }
            flags = RecvFlags::DONTWAIT;
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.lost.fetch_add(lost, Ordering::Relaxed);
        if batch.is_empty() {
            continue;
        }
        shared.received.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let at = Instant::now();
        let mut state = shared.lock();
        for (conn, bytes_acked) in batch.drain(..) {
            state.insert(conn, Closed { bytes_acked, at });
        }
    }
}

/// The destroyed TCP sockets one read brought: each message's connection and final acked count.
/// Messages that are not destroy notifications of TCP sockets, or are cut short, are skipped.
fn parse_destroyed(mut b: &[u8], out: &mut Vec<(Conn, u64)>) {
    while let Some(len) = u32_at(b, 0).map(|l| l as usize) {
        let Some(msg) = b.get(..len).filter(|_| len >= 16) else {
            return;
        };
        if u16_at(msg, 4) == Some(SOCK_DIAG_BY_FAMILY)
            && protocol(msg).is_none_or(|p| p == IPPROTO_TCP)
            && let (Some(conn), Some(acked)) = (destroyed_conn(msg), tcp_info_bytes_acked(msg))
        {
            out.push((conn, acked));
        }
        b = b.get((len + 3) & !3..).unwrap_or_default();
    }
}

/// The socket's connection from its own side (source = local, destination = peer), with
/// IPv4-mapped IPv6 addresses written as IPv4, as [`Conn::canonical`] does.
fn destroyed_conn(msg: &[u8]) -> Option<Conn> {
    let d = msg.get(16..16 + 72)?;
    let port = |at: usize| Some(u16::from_be_bytes(d.get(at..at + 2)?.try_into().ok()?));
    let ip = |at: usize| -> Option<IpAddr> {
        match d[0] {
            2 => Some(IpAddr::from(<[u8; 4]>::try_from(d.get(at..at + 4)?).ok()?)),
            10 => Some(IpAddr::from(<[u8; 16]>::try_from(d.get(at..at + 16)?).ok()?)),
            _ => None,
        }
    };
    let conn = Conn {
        local: SocketAddr::new(ip(8)?, port(4)?),
        peer: SocketAddr::new(ip(24)?, port(6)?),
    };
    // A listening socket has no peer and carried no request.
    (conn.peer.port() != 0).then(|| conn.canonical())
}

/// The `INET_DIAG_PROTOCOL` attribute, if the message has one.
fn protocol(msg: &[u8]) -> Option<u8> {
    let mut at = 16 + 72;
    while at + 4 <= msg.len() {
        let alen = u16_at(msg, at)? as usize;
        if alen < 4 {
            return None;
        }
        if u16_at(msg, at + 2)? == INET_DIAG_PROTOCOL {
            return msg.get(at + 4).copied();
        }
        at += (alen + 3) & !3;
    }
    None
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

    /// A loopback connection whose server side sends `n` bytes that the client reads to the end;
    /// both sides are closed when this returns. Returns the connection as the server sees it.
    fn transfer(ip: IpAddr, n: usize) -> Conn {
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, peer) = listener.accept().unwrap();
        let conn = Conn {
            local: server.local_addr().unwrap(),
            peer,
        };
        let sender = std::thread::spawn(move || server.write_all(&vec![7u8; n]).unwrap());
        let mut got = Vec::with_capacity(n);
        client.read_to_end(&mut got).unwrap();
        sender.join().unwrap();
        assert_eq!(got.len(), n);
        conn
    }

    #[tokio::test]
    async fn a_closed_socket_reports_what_its_peer_acknowledged() {
        let closed = ClosedSockets::start()
            .await
            .expect("destroy notifications are available");
        for ip in [
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ] {
            let since = Instant::now();
            let conn = transfer(ip, 300_000);
            let acked = closed.final_acked(conn, since, Duration::from_secs(2)).await;
            // The server's FIN, once acknowledged, counts as one more byte.
            let acked = acked.unwrap_or_else(|| panic!("no notification for {conn:?}"));
            assert!((300_000..=300_001).contains(&acked), "{ip}: acked {acked}");
            assert_eq!(closed.get(conn, since).map(|c| c.bytes_acked), Some(acked));
            // A notification that came before the moment asked about belongs to an earlier socket.
            assert_eq!(closed.get(conn, Instant::now()), None);
            assert_eq!(closed.take(conn, since).map(|c| c.bytes_acked), Some(acked));
            assert_eq!(closed.get(conn, since), None);
        }
        assert!(closed.is_running());
    }

    #[tokio::test]
    async fn an_open_connection_has_no_final_count() {
        let closed = ClosedSockets::start().await.unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let conn = Conn {
            local: server.local_addr().unwrap(),
            peer,
        };
        let since = Instant::now();
        let waited = Instant::now();
        assert_eq!(closed.final_acked(conn, since, Duration::from_millis(200)).await, None);
        assert!(waited.elapsed() >= Duration::from_millis(200));
        // The caller that gave up left nothing behind.
        assert!(closed.shared.lock().waiters.is_empty());
    }

    #[tokio::test]
    async fn a_waiting_caller_is_answered_when_the_socket_closes() {
        let closed = ClosedSockets::start().await.unwrap();
        let listener = std::net::TcpListener::bind("[::1]:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, peer) = listener.accept().unwrap();
        let conn = Conn {
            local: server.local_addr().unwrap(),
            peer,
        };
        let since = Instant::now();
        let waiting = tokio::spawn({
            let closed = closed.clone();
            async move { closed.final_acked(conn, since, Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        server.write_all(&[1u8; 1000]).unwrap();
        client.read_exact(&mut [0u8; 1000]).unwrap();
        drop((server, client));
        let acked = waiting.await.unwrap().expect("answered once the socket closed");
        assert!((1000..=1001).contains(&acked), "acked {acked}");
    }

    #[tokio::test]
    async fn the_kept_notifications_stay_bounded() {
        let closed = ClosedSockets::start_keeping(1000).await.unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let since = Instant::now();
        let mut last = None;
        for _ in 0..5000 {
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            let (mut server, peer) = listener.accept().unwrap();
            last = Some(Conn { local: addr, peer });
            server.write_all(b"hello").unwrap();
            drop(server);
            client.read_to_end(&mut Vec::new()).unwrap();
        }
        let last = last.unwrap();
        closed.final_acked(last, since, Duration::from_secs(5)).await;
        // Both ends of each connection are destroyed.
        assert!(
            closed.received() >= 10_000 || closed.lost() > 0,
            "received {}",
            closed.received()
        );
        assert!(closed.len() <= 1000, "kept {}", closed.len());
        assert!(closed.shared.lock().order.len() <= 1000);
    }

    #[test]
    fn old_notifications_are_dropped() {
        let mut finals = Finals::new(CLOSED_CAPACITY);
        let start = Instant::now();
        for i in 0..100u16 {
            let conn = Conn {
                local: "127.0.0.1:80".parse().unwrap(),
                peer: SocketAddr::new([127, 0, 0, 1].into(), 1000 + i),
            };
            let at = start + Duration::from_secs(u64::from(i));
            finals.insert(conn, Closed { bytes_acked: 1, at });
        }
        // Notifications 69..=99 are within 30 s of the last one.
        assert_eq!(finals.by_conn.len(), 31);
        assert_eq!(finals.order.len(), 31);
    }

    #[test]
    fn the_same_pair_again_replaces_the_earlier_socket() {
        let mut finals = Finals::new(2);
        let conn = Conn::parse("127.0.0.1:80", "127.0.0.1:5000").unwrap();
        let other = Conn::parse("127.0.0.1:80", "127.0.0.1:5001").unwrap();
        let t = Instant::now();
        finals.insert(conn, Closed { bytes_acked: 1, at: t });
        finals.insert(
            conn,
            Closed {
                bytes_acked: 2,
                at: t + Duration::from_millis(1),
            },
        );
        // The first notification's place in the order is stale, and evicting it must not remove
        // the second one.
        finals.insert(
            other,
            Closed {
                bytes_acked: 3,
                at: t + Duration::from_millis(2),
            },
        );
        assert_eq!(finals.get(conn, t).map(|c| c.bytes_acked), Some(2));
        assert_eq!(finals.get(other, t).map(|c| c.bytes_acked), Some(3));
        assert!(finals.get(conn, t + Duration::from_millis(2)).is_none());
    }

    #[test]
    fn ipv4_mapped_addresses_find_the_ipv4_connection() {
        let mapped = Conn::parse("::ffff:10.0.0.1:443", "::ffff:10.0.0.2:5000").unwrap();
        assert_eq!(
            mapped.canonical(),
            Conn::parse("10.0.0.1:443", "10.0.0.2:5000").unwrap()
        );
    }

    #[test]
    fn cut_or_foreign_messages_are_skipped() {
        let mut out = Vec::new();
        parse_destroyed(&[], &mut out);
        parse_destroyed(&[0, 0, 0, 0, 20, 0], &mut out);
        parse_destroyed(&[200, 0, 0, 0, 20, 0, 0, 0], &mut out);
        let mut msg = vec![0u8; 16 + 72];
        msg[..4].copy_from_slice(&(88u32).to_ne_bytes());
        msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg[16] = 2;
        parse_destroyed(&msg, &mut out);
        assert!(out.is_empty());
    }
}
