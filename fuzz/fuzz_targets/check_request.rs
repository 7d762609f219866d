//! The check's reading of nginx's request headers (`x-ferry-*`): request id, client address and
//! User-Agent, method, `Range`, and the connection's two ends. Input: a raw request head, and the
//! same bytes as header lines `name: value`.
//! Whatever nginx passes, the check either refuses it as malformed or builds a request whose parts
//! are in their normal form: a 32-character id, a client that is one IPv4 address or one IPv6 /64,
//! a bounded User-Agent, a non-empty range, and a connection that prints back to itself.
#![no_main]

use std::net::{IpAddr, Ipv6Addr};

use ferry::http::check::{CheckRequest, admission, parse};
use ferry::links::rules::{self, Method, Refusal};
use ferry::model::ClientKey;
use ferry::model::Conn;
use ferry_fuzz::POLICY;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The raw head as the socket reads it: parsed or refused, never a panic.
    let mut raw = [httparse::EMPTY_HEADER; 64];
    if let Ok(Some((req, used))) = parse(data, &mut raw) {
        assert!(used <= data.len());
        let _ = admission(&req);
    }
    // And the headers as lines, so that every value reaches the check.
    let mut headers = Vec::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let Ok(name) = std::str::from_utf8(&line[..colon]) else {
            continue;
        };
        headers.push(httparse::Header {
            name,
            value: line[colon + 1..].trim_ascii_start(),
        });
    }
    let h = CheckRequest::from_headers(&headers);
    let a = match admission(&h) {
        Ok(a) => a,
        Err(r) => {
            assert_eq!(r, Refusal::Malformed);
            return;
        }
    };
    assert_eq!(a.request_id.len(), 32);
    let address: &str = &a.client.address;
    match address.strip_suffix("/64") {
        Some(prefix) => {
            let ip: Ipv6Addr = prefix.parse().unwrap_or_else(|_| panic!("{address:?} is no /64"));
            assert_eq!(ip.segments()[4..], [0, 0, 0, 0], "{address:?}");
            assert!(ip.to_ipv4_mapped().is_none(), "{address:?} is an IPv4 address");
            assert_eq!(&format!("{ip}/64"), address, "{address:?} is not in normal form");
        }
        None => {
            let ip: IpAddr = address.parse().unwrap_or_else(|_| panic!("{address:?} is no address"));
            assert!(ip.is_ipv4(), "{address:?} should be an IPv4 address");
            assert_eq!(&ip.to_string(), address);
        }
    }
    // The client key is stable: the same client read again is the same client.
    let again = ClientKey::new(address.strip_suffix("/64").unwrap_or(address), &a.client.user_agent)
        .expect("a client address reads again");
    assert_eq!(again, a.client);
    assert!(a.client.user_agent.chars().count() <= 512);
    let method = h.header("x-ferry-method");
    assert_eq!(a.method == Method::Get, method == "GET");
    assert_eq!(a.method == Method::Head, method == "HEAD");
    assert!(a.range.as_deref() != Some(""));
    if let Some((c, baseline)) = a.conn {
        assert_eq!(baseline, 0);
        assert_eq!(Conn::parse(&c.local.to_string(), &c.peer.to_string()), Some(c));
    }
    // And the state machine takes it as it comes.
    let mut link = ferry_fuzz::link(1000, 1);
    let before = link.clone();
    if rules::admit(&mut link, &a, 1_000, &POLICY).is_ok() {
        let f = link.inflight.last().expect("an admitted request is in flight");
        assert!(f.range_start < 1000);
    }
    ferry_fuzz::check_books(&before, &link);
});
