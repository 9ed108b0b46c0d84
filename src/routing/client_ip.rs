//! Who the client is: the TCP peer, or, behind trusted proxies, the
//! right-most address in `X-Forwarded-For` (else `Forwarded`) that is not a
//! trusted proxy itself. Walking from the right means a client can prepend
//! whatever it likes without being believed.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::FORWARDED;
use ipnet::IpNet;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|net| net.contains(&ip))
}

/// IPv4-mapped IPv6 peers (`::ffff:10.0.0.1`, seen on dual-stack
/// listeners) are compared as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The client address used for `client_ips` matching and logs.
pub fn resolve_client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let xff = headers.get_all(X_FORWARDED_FOR);
    if xff.iter().next().is_some() {
        let hops = xff
            .iter()
            .rev()
            .flat_map(|v| v.to_str().unwrap_or("").rsplit(','))
            .map(|s| parse_hop(s.trim()));
        return walk(peer, hops, trusted);
    }
    let fwd = headers.get_all(FORWARDED);
    let hops = fwd
        .iter()
        .rev()
        .flat_map(|v| v.to_str().unwrap_or("").rsplit(','))
        .map(forwarded_for);
    walk(peer, hops, trusted)
}

/// Right to left: the first untrusted address wins; garbage stops the walk
/// at the last address we could read.
fn walk(peer: IpAddr, hops: impl Iterator<Item = Option<IpAddr>>, trusted: &[IpNet]) -> IpAddr {
    let mut last = peer;
    for hop in hops {
        let Some(ip) = hop else {
            return last;
        };
        let ip = canonical(ip);
        if !is_trusted(ip, trusted) {
            return ip;
        }
        last = ip;
    }
    last
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]:4711`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse().ok())
}

/// The `for=` of one `Forwarded` element (`for=192.0.2.60;proto=http`).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        k.eq_ignore_ascii_case("for").then(|| parse_hop(v.trim()))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(
            resolve_client_ip(ip("9.9.9.9"), &h, &nets(&["10.0.0.0/8"])),
            ip("9.9.9.9")
        );
    }

    #[test]
    fn trusted_peer_yields_rightmost_untrusted_forwarded_for() {
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.2")]);
        assert_eq!(
            resolve_client_ip(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"])),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn multiple_forwarded_for_headers_are_one_list() {
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "10.0.0.3"),
        ]);
        assert_eq!(
            resolve_client_ip(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"])),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn all_trusted_yields_leftmost() {
        let h = headers(&[("x-forwarded-for", "10.0.0.5, 10.0.0.4")]);
        assert_eq!(
            resolve_client_ip(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"])),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn garbage_stops_at_last_readable_hop() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4, nonsense, 10.0.0.4")]);
        assert_eq!(
            resolve_client_ip(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"])),
            ip("10.0.0.4")
        );
    }

    #[test]
    fn forwarded_header_used_without_x_forwarded_for() {
        let h = headers(&[(
            "forwarded",
            "for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.9",
        )]);
        assert_eq!(
            resolve_client_ip(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"])),
            ip("2001:db8::7")
        );
    }

    #[test]
    fn ipv4_mapped_peer_is_compared_as_ipv4() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(
            resolve_client_ip(ip("::ffff:10.0.0.1"), &h, &nets(&["10.0.0.0/8"])),
            ip("1.2.3.4")
        );
    }
}
