//! What steer refuses in a request before routing it, and what it
//! normalises before forwarding it. Pure functions over the request head,
//! each rule with the RFC it comes from.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Version};

use super::ProxyError;

/// The client's host as routed and forwarded: `:authority` (HTTP/2, or an
/// absolute-form target) or the one `Host` field.
///
/// - More than one `Host` field: 400 (RFC 9112 §3.2; nginx does the same).
/// - A host that is not `reg-name / IPv4 / [IPv6]` with an optional port
///   1-65535 (RFC 3986 §3.2.2, RFC 9110 §7.2): 400. Userinfo, commas,
///   stray brackets and empty or bad ports are refused.
/// - HTTP/2 with a `host` field that names another authority than
///   `:authority`: 400 (RFC 9113 §8.3.1).
/// - HTTP/1.1 absolute-form: the target's authority wins over `Host`
///   (RFC 9112 §3.2.2), so `hosts` conditions cannot be sidestepped.
///
/// The host comes back as a field value, so that `X-Forwarded-Host`, and
/// the upstream's Host when steer sets one (an authority, or no Host),
/// share its bytes instead of copying them; its text is visible ASCII
/// (`valid_authority`).
pub(crate) fn client_host<B>(req: &Request<B>) -> Result<Option<HeaderValue>, ProxyError> {
    let mut fields = req.headers().get_all(header::HOST).iter();
    let field = fields.next();
    if fields.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host field"));
    }
    let host = field
        .map(|v| {
            v.to_str()
                .map_err(|_| ProxyError::BadRequest("Host is not valid text"))
        })
        .transpose()?;
    if let Some(authority) = req.uri().authority() {
        let authority = authority.as_str();
        let invalid = ProxyError::BadRequest("the request's authority is not a valid host[:port]");
        if !valid_authority(authority) {
            return Err(invalid);
        }
        if req.version() == Version::HTTP_2
            && let Some(h) = host
            && !h.eq_ignore_ascii_case(authority)
        {
            return Err(ProxyError::BadRequest("Host does not match :authority"));
        }
        return HeaderValue::from_str(authority)
            .map(Some)
            .map_err(|_| invalid);
    }
    // `host` is the field's text: both or neither.
    match host {
        Some(h) if valid_authority(h) => Ok(field.cloned()),
        Some(_) => Err(ProxyError::BadRequest("Host is not a valid host[:port]")),
        None if req.version() == Version::HTTP_11 => {
            Err(ProxyError::BadRequest("HTTP/1.1 request without Host"))
        }
        None => Ok(None),
    }
}

/// `host[:port]` where host is a DNS-style name (letters, digits, `-`,
/// `.`, `_`, `~`), an IPv4 address, or an IPv6 address in brackets, and
/// port is 1-65535. Stricter than RFC 3986's reg-name on purpose: no
/// sub-delims (`,`, `;`, `!`…) and no percent-encoding, which no real
/// host needs and which upstreams parse differently.
pub(crate) fn valid_authority(s: &str) -> bool {
    // One pass over the bytes: this runs for every request.
    let (host_ok, rest) = match s.strip_prefix('[') {
        Some(rest) => {
            let Some((v6, after)) = rest.split_once(']') else {
                return false;
            };
            (v6.parse::<std::net::Ipv6Addr>().is_ok(), after.as_bytes())
        }
        None => {
            let name = s.bytes().take_while(|b| NAME_BYTE[usize::from(*b)]).count();
            (name > 0, &s.as_bytes()[name..])
        }
    };
    host_ok
        && match rest {
            [] => true,
            [b':', port @ ..] => valid_port(port),
            _ => false,
        }
}

/// The bytes of a host name steer accepts: letters, digits, `-`, `.`,
/// `_`, `~`.
static NAME_BYTE: [bool; 256] = super::headers::byte_class(b"-._~");

/// 1-65535 in at most five plain digits.
fn valid_port(port: &[u8]) -> bool {
    port.len() <= 5 && crate::body::length_value(port).is_some_and(|n| (1..=65_535).contains(&n))
}

/// Request framing: `Transfer-Encoding` other than exactly `chunked`
/// (`gzip, chunked`, `chunked, chunked`, unknown codings) gets 501, as
/// nginx does. hyper decodes such a body as chunked, and steer would
/// forward it without the other codings (RFC 9112 §6.1).
pub(crate) fn check_framing(headers: &HeaderMap) -> Result<(), ProxyError> {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or(",").split(','))
        .map(str::trim);
    match (codings.next(), codings.next()) {
        (None, _) => Ok(()),
        (Some(c), None) if c.eq_ignore_ascii_case("chunked") => Ok(()),
        _ => Err(ProxyError::NotImplemented(
            "Transfer-Encoding other than chunked",
        )),
    }
}

/// Joins `cookie` fields into one, `"; "` between them: HTTP/2 clients
/// split cookies into crumbs (RFC 9113 §8.2.3 asks for the join before an
/// HTTP/1.1 hop), and upstreams that read one Cookie line lose the rest.
pub(crate) fn join_cookies(headers: &mut HeaderMap) {
    let header::Entry::Occupied(entry) = headers.entry(header::COOKIE) else {
        return;
    };
    if entry.iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for (i, crumb) in entry.iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        let (_, _) = entry.remove_entry_mult();
        headers.insert(header::COOKIE, value);
    }
}

/// Removes header fields whose names contain `_`: many frameworks map `-`
/// and `_` to the same variable, so `X_Forwarded_For` would get around
/// forwarding-header hygiene (nginx drops them by default too).
pub(crate) fn drop_underscored(headers: &mut HeaderMap) {
    if !headers.keys().any(|k| k.as_str().contains('_')) {
        return;
    }
    let names: Vec<_> = headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// Whether a TLS certificate whose names are `names` covers `host`
/// (`host` without port): an exact name, or a wildcard `*.suffix` for
/// exactly one label in front (RFC 6125 §6.4.3).
pub(crate) fn covered(names: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.');
    names.iter().any(|n| match n.strip_prefix('*') {
        Some(suffix) => host.len().checked_sub(suffix.len()).is_some_and(|cut| {
            cut > 0
                && host.is_char_boundary(cut)
                && host[cut..].eq_ignore_ascii_case(suffix)
                && !host[..cut].contains('.')
        }),
        None => n.eq_ignore_ascii_case(host),
    })
}

/// The asterisk-form target (`*`) is for `OPTIONS` only (RFC 9112 §3.2.4,
/// RFC 9113 §8.3.1): any other method with it gets 400, not a route.
pub(crate) fn check_target(method: &http::Method, path: &str) -> Result<(), ProxyError> {
    if path == "*" && method != http::Method::OPTIONS {
        return Err(ProxyError::BadRequest(
            "the asterisk-form target `*` is for OPTIONS only",
        ));
    }
    Ok(())
}

/// Puts the target's path in RFC 3986's normal form
/// (`routing::normalize_path`) before routing: the upstream gets that
/// path, `strip_prefix` works on it, and routes with their rate limits and
/// body limits match it with `%2F` read as `/` (`routing::match_form`).
/// A `%` without two hex digits after it: 400.
pub(crate) fn normalize_path(uri: &mut http::Uri) -> Result<(), ProxyError> {
    let malformed = |_| ProxyError::BadRequest("the path has a malformed percent-encoding");
    let Some(path) = crate::routing::normalize_path(uri.path()).map_err(malformed)? else {
        return Ok(());
    };
    let target = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = std::mem::take(uri).into_parts();
    let rebuilt = http::uri::PathAndQuery::try_from(target)
        .ok()
        .and_then(|pq| {
            parts.path_and_query = Some(pq);
            http::Uri::from_parts(parts).ok()
        });
    *uri = rebuilt.ok_or(ProxyError::BadRequest("the path cannot be normalised"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut r = Request::builder().version(version).uri(uri);
        for h in hosts {
            r = r.header("host", *h);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn valid_hosts_pass() {
        for ok in [
            "auth.example.com",
            "auth.example.com:443",
            "10.0.0.1:8080",
            "example.com:65535",
            "[::1]:8443",
            "[2001:db8::1]",
            "internal_name",
            "example.com.",
        ] {
            assert!(valid_authority(ok), "{ok}");
        }
    }

    #[test]
    fn userinfo_commas_bad_ports_and_stray_brackets_are_refused() {
        for bad in [
            "a.example:80@admin.example.com",
            "admin@example.com",
            "a.example.com,b.example.com",
            "example.com:0",
            "example.com:65536",
            "example.com:123456",
            "example.com:+80",
            "[::1]:",
            "example.com:",
            "example.com:8o",
            "example.com:80:80",
            "[::1",
            "::1]",
            "[::1]x",
            "[not-v6]:80",
            "exa mple.com",
            "",
            ":80",
            "%65xample.com",
        ] {
            assert!(!valid_authority(bad), "{bad}");
        }
    }

    #[test]
    fn duplicate_host_is_a_bad_request() {
        let r = req(Version::HTTP_11, "/", &["a.example", "b.example"]);
        assert!(matches!(client_host(&r), Err(ProxyError::BadRequest(_))));
    }

    #[test]
    fn http2_host_must_match_authority() {
        let r = req(Version::HTTP_2, "https://a.example/", &["b.example"]);
        assert!(client_host(&r).is_err());
        let r = req(Version::HTTP_2, "https://a.example/", &["A.example"]);
        assert_eq!(client_host(&r).unwrap().unwrap(), "a.example");
    }

    #[test]
    fn absolute_form_authority_wins_over_host() {
        let r = req(Version::HTTP_11, "http://a.example/x", &["b.example"]);
        assert_eq!(client_host(&r).unwrap().unwrap(), "a.example");
    }

    #[test]
    fn only_plain_chunked_framing_passes() {
        let mut h = HeaderMap::new();
        assert!(check_framing(&h).is_ok());
        h.insert("transfer-encoding", HeaderValue::from_static("Chunked"));
        assert!(check_framing(&h).is_ok());
        for bad in ["gzip, chunked", "chunked, chunked", "gzip", "identity"] {
            h.insert("transfer-encoding", HeaderValue::from_static(bad));
            assert!(check_framing(&h).is_err(), "{bad}");
        }
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.append("transfer-encoding", HeaderValue::from_static("chunked"));
        assert!(check_framing(&h).is_err());
    }

    #[test]
    fn cookie_crumbs_become_one_field() {
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1"));
        h.append("cookie", HeaderValue::from_static("b=2"));
        h.append("cookie", HeaderValue::from_static("c=3"));
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2; c=3");
    }

    #[test]
    fn underscored_names_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("x_forwarded_for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        drop_underscored(&mut h);
        assert!(h.get("x_forwarded_for").is_none());
        assert_eq!(h["x-kept"], "1");
    }

    #[test]
    fn wildcards_cover_one_label() {
        let names = vec![
            "auth.example.com".to_owned(),
            "*.zitadel.example".to_owned(),
        ];
        assert!(covered(&names, "auth.example.com"));
        assert!(covered(&names, "AUTH.example.com."));
        assert!(covered(&names, "eu.zitadel.example"));
        assert!(!covered(&names, "zitadel.example"));
        assert!(!covered(&names, "a.eu.zitadel.example"));
        assert!(!covered(&names, "other.example.com"));
    }
}
