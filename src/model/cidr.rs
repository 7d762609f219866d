//! Address ranges for a link's `allow_cidrs` (SPEC §13): `192.0.2.0/24`, `2001:db8:1:2::/64`, or
//! one address (`/32` or `/128` implied).

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The range's first address: the bits past the prefix are zero.
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Reads `a.b.c.d/n`, `x:y::/n` or a bare address. Bits set past the prefix are refused: they
    /// usually mean a mistyped range.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 or IPv6 address or range"))?;
        let bits = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= bits && !p.starts_with('+') => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {bits}")),
            },
        };
        let c = Cidr { net, prefix };
        if c.first_of(net) != net {
            return Err(format!(
                "{s:?} has bits set past /{prefix}; the range starts at {}/{prefix}",
                c.first_of(net)
            ));
        }
        Ok(c)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client may reach an IPv6 socket as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.net.is_ipv4() && self.first_of(ip) == self.net
    }

    /// The first address of the range of this prefix that holds `ip`.
    fn first_of(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_hold_their_addresses_and_no_others() {
        let one = Cidr::parse("127.0.0.3/32").unwrap();
        assert!(one.contains(ip("127.0.0.3")) && !one.contains(ip("127.0.0.2")));
        assert!(one.contains(ip("::ffff:127.0.0.3")));
        let v6 = Cidr::parse("2001:db8:1:2::/64").unwrap();
        assert!(v6.contains(ip("2001:db8:1:2:ffff::1")) && !v6.contains(ip("2001:db8:1:3::1")));
        assert!(!v6.contains(ip("127.0.0.3")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("203.0.113.9")));
        assert_eq!(Cidr::parse("::1").unwrap().to_string(), "::1/128");
        assert_eq!(Cidr::parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
    }

    #[test]
    fn bad_ranges_say_what_is_wrong() {
        for (s, words) in [
            ("10.0.0.1/8", "bits set past /8"),
            ("2001:db8::1/64", "range starts at 2001:db8::/64"),
            ("10.0.0.0/33", "0 to 32"),
            ("::/129", "0 to 128"),
            ("10.0.0.0/+8", "prefix"),
            ("example.com", "not an IPv4 or IPv6"),
            ("", "not an IPv4 or IPv6"),
        ] {
            let e = Cidr::parse(s).unwrap_err();
            assert!(e.contains(words), "{s}: {e}");
        }
    }
}
