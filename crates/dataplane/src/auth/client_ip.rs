//! The client address for IP rules and authorization: the connection's
//! peer, or an `X-Forwarded-For` entry when (and only when) the hops that
//! appended it are trusted proxies.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use portcullis_model::auth::ClientAddress;

/// Starting at the connection's peer: while the current address is a
/// trusted proxy and hops remain, step to the entry it appended (right to
/// left through all `X-Forwarded-For` headers). A client talking to us
/// directly is never a trusted proxy, so whatever it writes into the header
/// is ignored. An entry that is not an address ends the walk at the proxy
/// that wrote it.
pub fn client_address(config: &ClientAddress, remote: IpAddr, headers: &HeaderMap) -> IpAddr {
    let mut client = remote;
    if config.trusted_hops == 0 || !config.trusted_proxies.contains(client) {
        return client;
    }
    let entries = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|v| v.to_str().unwrap_or("").rsplit(','))
        .take(config.trusted_hops as usize);
    for entry in entries {
        if !config.trusted_proxies.contains(client) {
            break;
        }
        match parse_entry(entry.trim()) {
            Some(ip) => client = ip,
            None => break,
        }
    }
    client
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_model::auth::CidrSet;

    fn config(proxies: &[&str], hops: u32) -> ClientAddress {
        ClientAddress {
            trusted_proxies: CidrSet::parse(proxies).unwrap(),
            trusted_hops: hops,
        }
    }

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let c = config(&["10.0.0.0/8"], 2);
        assert_eq!(
            client_address(&c, ip("203.0.113.9"), &headers(&["10.1.1.1"])),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn trusted_hops_walk_right_to_left() {
        let c = config(&["10.0.0.0/8"], 2);
        // client -> proxy 10.0.0.2 -> proxy 10.0.0.1 -> gateway
        let h = headers(&["6.6.6.6, 198.51.100.7, 10.0.0.2"]);
        assert_eq!(client_address(&c, ip("10.0.0.1"), &h), ip("198.51.100.7"));
        // Only one hop trusted: the entry appended by our peer.
        let c1 = config(&["10.0.0.0/8"], 1);
        assert_eq!(client_address(&c1, ip("10.0.0.1"), &h), ip("10.0.0.2"));
    }

    #[test]
    fn walk_stops_at_the_first_untrusted_address() {
        let c = config(&["10.0.0.0/8"], 5);
        let h = headers(&["1.1.1.1", "198.51.100.7, 10.0.0.2"]);
        assert_eq!(client_address(&c, ip("10.0.0.1"), &h), ip("198.51.100.7"));
    }

    #[test]
    fn garbage_entries_end_the_walk_and_ports_are_accepted() {
        let c = config(&["10.0.0.0/8"], 3);
        let h = headers(&["nonsense, 10.0.0.3:4000"]);
        assert_eq!(client_address(&c, ip("10.0.0.1"), &h), ip("10.0.0.3"));
        let h = headers(&["[2001:db8::5]:443"]);
        assert_eq!(client_address(&c, ip("10.0.0.1"), &h), ip("2001:db8::5"));
    }

    #[test]
    fn no_hops_means_the_connection() {
        let c = config(&["0.0.0.0/0"], 0);
        assert_eq!(
            client_address(&c, ip("127.0.0.1"), &headers(&["9.9.9.9"])),
            ip("127.0.0.1")
        );
    }
}
