//! Who the client is: the TCP peer, or, behind trusted proxies, the
//! right-most address in the forwarding header they set (`X-Forwarded-For`
//! or `Forwarded`, `[proxy] client_ip_header`) that is not a trusted proxy
//! itself. Walking from the right means a client can prepend whatever it
//! likes without being believed; reading only the header the proxies set
//! means a client cannot use the other one, which they pass through.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::FORWARDED;
use ipnet::IpNet;

use crate::config::ClientIpHeader;

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
pub fn resolve_client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    via: ClientIpHeader,
) -> IpAddr {
    let peer = canonical(peer);
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let (name, hop): (&str, fn(&str) -> Option<IpAddr>) = match via {
        ClientIpHeader::XForwardedFor => (X_FORWARDED_FOR, |s| parse_hop(s.trim())),
        ClientIpHeader::Forwarded => (FORWARDED.as_str(), forwarded_for),
    };
    let hops = headers
        .get_all(name)
        .iter()
        .rev()
        .flat_map(|v| v.to_str().unwrap_or("").rsplit(','))
        .map(hop);
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
pub(crate) fn forwarded_for(element: &str) -> Option<IpAddr> {
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

    const XFF: ClientIpHeader = ClientIpHeader::XForwardedFor;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(
            resolve_client_ip(ip("9.9.9.9"), &h, &nets(&["10.0.0.0/8"]), XFF),
            ip("9.9.9.9")
        );
    }

    #[test]
    fn trusted_peer_yields_rightmost_untrusted_forwarded_for() {
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.2")]);
        assert_eq!(
            resolve_client_ip(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"]), XFF),
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
            resolve_client_ip(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"]), XFF),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn all_trusted_yields_leftmost() {
        let h = headers(&[("x-forwarded-for", "10.0.0.5, 10.0.0.4")]);
        assert_eq!(
            resolve_client_ip(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"]), XFF),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn garbage_stops_at_last_readable_hop() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4, nonsense, 10.0.0.4")]);
        assert_eq!(
            resolve_client_ip(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"]), XFF),
            ip("10.0.0.4")
        );
    }

    #[test]
    fn forwarded_is_read_only_when_it_is_the_client_ip_header() {
        let h = headers(&[(
            "forwarded",
            "for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.9",
        )]);
        let trusted = nets(&["10.0.0.0/8"]);
        let fwd = ClientIpHeader::Forwarded;
        assert_eq!(
            resolve_client_ip(ip("10.0.0.1"), &h, &trusted, fwd),
            ip("2001:db8::7")
        );
        assert_eq!(
            resolve_client_ip(ip("10.0.0.1"), &h, &trusted, XFF),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn a_forged_x_forwarded_for_is_ignored_behind_a_proxy_that_sets_forwarded() {
        // The proxy in front sets Forwarded and passes the client's own
        // X-Forwarded-For through untouched.
        let h = headers(&[
            ("x-forwarded-for", "192.168.7.7"),
            ("forwarded", "for=203.0.113.9"),
        ]);
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            resolve_client_ip(ip("10.0.0.1"), &h, &trusted, ClientIpHeader::Forwarded),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn ipv4_mapped_peer_is_compared_as_ipv4() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(
            resolve_client_ip(ip("::ffff:10.0.0.1"), &h, &nets(&["10.0.0.0/8"]), XFF),
            ip("1.2.3.4")
        );
    }
}
