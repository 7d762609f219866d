//! Who a client is, as far as a link's ledger cares.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A client: an IPv4 address or an IPv6 /64, with its User-Agent. The strings of a link record
/// are shared (`Arc<str>`), because a record is copied on every update, and copying it must not
/// allocate once per string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClientKey {
    pub address: Arc<str>,
    pub user_agent: Arc<str>,
}

impl ClientKey {
    pub fn new(addr: &str, user_agent: &str) -> Option<Self> {
        let address: Arc<str> = if addr.parse::<std::net::Ipv4Addr>().is_ok() {
            // std accepts only the normal dotted form (no leading zeros, no spaces), so the
            // address is kept as it is.
            addr.into()
        } else {
            Self::normal_address(addr)?.into()
        };
        let user_agent: Arc<str> = match user_agent.char_indices().nth(512) {
            Some((end, _)) => user_agent[..end].into(),
            None => user_agent.into(),
        };
        Some(ClientKey { address, user_agent })
    }

    fn normal_address(addr: &str) -> Option<String> {
        Some(match addr.parse::<IpAddr>().ok()? {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => {
                    // The /64 is written in its one normal form (RFC 5952), so that a client has
                    // only one key.
                    let s = v6.segments();
                    let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                    format!("{net}/64")
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_group_ipv6_by_64() {
        let a = ClientKey::new("2001:db8:1:2:aaaa::1", "ua").unwrap();
        let b = ClientKey::new("2001:db8:1:2:bbbb::9", "ua").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.address.as_ref(), "2001:db8:1:2::/64");
        // The `check_request` fuzz target found this: zero groups were written out
        // (`2001:db8:a1ba:0::`).
        let z = ClientKey::new("2001:db8:a1ba::b:2:3:4", "ua").unwrap();
        assert_eq!(z.address.as_ref(), "2001:db8:a1ba::/64");
        assert_eq!(&*ClientKey::new("::1", "ua").unwrap().address, "::/64");
        assert_eq!(&*ClientKey::new("::ffff:10.0.0.1", "ua").unwrap().address, "10.0.0.1");
        assert!(ClientKey::new("nope", "ua").is_none());
        assert!(ClientKey::new("010.0.0.1", "ua").is_none());
        assert_eq!(&*ClientKey::new("10.0.0.1", "ua").unwrap().address, "10.0.0.1");
        // User-Agents are kept to 512 characters, cut between characters.
        let long = ClientKey::new("10.0.0.1", &"é".repeat(600)).unwrap();
        assert_eq!(long.user_agent.chars().count(), 512);
        assert_eq!(
            &*ClientKey::new("10.0.0.1", &"é".repeat(512)).unwrap().user_agent,
            "é".repeat(512)
        );
    }
}
