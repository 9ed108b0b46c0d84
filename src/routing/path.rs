//! The path as routes match it and the upstream gets it: RFC 3986
//! §6.2.2's normal form, so that `/oauth/v2/%74oken` and
//! `/oauth/v2/x/../token` meet the route (and its `rate_limit` or
//! `max_body`) that `/oauth/v2/token` meets, as they would meet the same
//! handler in an upstream that decodes or cleans its paths. nginx
//! (`location`), Envoy (`normalize_path`) and HAProxy (`normalize-uri`)
//! match on the normal form too.

/// The form routes match `path` in, from the path as received:
/// `match_form` of its normal form (`normalize_path`); `None` when that is
/// `path` itself. For what reads a path outside a request (`steer route`,
/// the config lints); the proxy keeps the normal form too, for upstream.
pub fn route_form(path: &str) -> Result<Option<String>, MalformedPath> {
    let normal = normalize_path(path)?;
    let base = normal.as_deref().unwrap_or(path);
    Ok(match_form(base).or(normal))
}

/// The form routes match a normal path in (`normalize_path`'s output):
/// with `%2F` read as `/`, and the dot segments that makes removed. Go's
/// servers decode `%2F` before they route (`url.URL.Path`: gorilla/mux,
/// grpc-go's `ServeHTTP`, which serves ZITADEL's gRPC), so
/// `/zitadel.session.v2.SessionService%2FCreateSession` reaches the method
/// `…/CreateSession` names, and must meet its route and limits. The
/// upstream still gets `%2F`: an upstream that tells the two apart keeps
/// doing so. `None` when `path` has no `%2F`.
pub fn match_form(path: &str) -> Option<String> {
    // A byte scan: `str::contains` with a pattern sets up a substring
    // search that costs more than most paths are long.
    let encoded = path.as_bytes().windows(3).any(|w| w == b"%2F");
    encoded.then(|| remove_dot_segments(&path.replace("%2F", "/")))
}

/// A `%` not followed by two hex digits (RFC 3986 §2.1): no upstream
/// reads such a path as its client meant it.
#[derive(Debug, PartialEq, Eq)]
pub struct MalformedPath;

/// The normal form of an origin-form `path` (no query): percent-encoded
/// unreserved characters decoded (§6.2.2.2), other percent-encodings in
/// upper case (§6.2.2.1), and `.` and `..` segments removed (§5.2.4).
/// `None` when `path` is already normal, or is not a path starting with
/// `/` (`*`, an authority). Encoded delimiters such as `%2F` stay encoded:
/// decoding them would change the path's segments.
pub fn normalize_path(path: &str) -> Result<Option<String>, MalformedPath> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') || !needs_normalizing(bytes) {
        return Ok(None);
    }
    let decoded = decode_unreserved(bytes)?;
    let normal = remove_dot_segments(&decoded);
    Ok((normal != path).then_some(normal))
}

/// Whether `path` (starting with `/`) has a percent-encoding or a dot
/// segment: one pass, and most paths have neither.
fn needs_normalizing(path: &[u8]) -> bool {
    path.iter().enumerate().any(|(i, &b)| {
        b == b'%' || (b == b'.' && path[i - 1] == b'/' && ends_dot_segment(&path[i + 1..]))
    })
}

/// Whether what follows a `/.` makes it a `.` or `..` segment.
fn ends_dot_segment(rest: &[u8]) -> bool {
    matches!(rest, [] | [b'/', ..] | [b'.'] | [b'.', b'/', ..])
}

fn decode_unreserved(path: &[u8]) -> Result<String, MalformedPath> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let hex = path.get(i + 1..i + 3).ok_or(MalformedPath)?;
        let value = std::str::from_utf8(hex)
            .ok()
            .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or(MalformedPath)?;
        if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
            out.push(value);
        } else {
            out.push(b'%');
            out.extend(hex.iter().map(u8::to_ascii_uppercase));
        }
        i += 3;
    }
    // Only ASCII went in or out of escapes: other bytes are as they came.
    String::from_utf8(out).map_err(|_| MalformedPath)
}

/// RFC 3986 §5.2.4 for a path starting with `/`: a `..` above the root
/// stays at the root, and a path that ends in a dot segment ends in `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut ends_in_dot = false;
    for segment in path[1..].split('/') {
        ends_in_dot = matches!(segment, "." | "..");
        match segment {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    if ends_in_dot {
        out.push("");
    }
    let mut normal = String::with_capacity(path.len());
    for segment in out {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() {
        normal.push('/');
    }
    normal
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(path: &str) -> String {
        normalize_path(path)
            .unwrap()
            .unwrap_or_else(|| path.to_owned())
    }

    #[test]
    fn unreserved_characters_are_decoded_and_delimiters_kept() {
        assert_eq!(normal("/oauth/v2/%74oken"), "/oauth/v2/token");
        assert_eq!(normal("/%7Euser/%2d%5F"), "/~user/-_");
        assert_eq!(normal("/a%2fb"), "/a%2Fb");
        assert_eq!(normal("/a%2Fb%20c"), "/a%2Fb%20c");
        assert_eq!(normal("/%25"), "/%25");
        assert_eq!(normal("/é/%41"), "/é/A");
    }

    #[test]
    fn dot_segments_are_removed_as_rfc_3986_does() {
        // RFC 3986 §5.2.4's example, and §5.4's abnormal ones.
        assert_eq!(normal("/a/b/c/./../../g"), "/a/g");
        assert_eq!(normal("/.."), "/");
        assert_eq!(normal("/../../g"), "/g");
        assert_eq!(normal("/a/b/.."), "/a/");
        assert_eq!(normal("/a/."), "/a/");
        assert_eq!(normal("/a//../b"), "/a/b");
        assert_eq!(normal("/oauth/v2/x/%2E%2E/token"), "/oauth/v2/token");
        assert_eq!(normal("/oauth/v2/./token"), "/oauth/v2/token");
    }

    #[test]
    fn paths_already_normal_are_left_alone() {
        for path in [
            "/",
            "/zitadel.admin.v1.AdminService/Healthz",
            "/ui/console/main.js",
            "/a/.b/..c/...",
            "/a..",
            "//x//",
            "*",
        ] {
            assert_eq!(normalize_path(path), Ok(None), "{path}");
        }
    }

    #[test]
    fn routes_read_an_encoded_slash_as_a_slash() {
        assert_eq!(
            match_form("/oauth%2Fv2%2Ftoken").as_deref(),
            Some("/oauth/v2/token")
        );
        assert_eq!(match_form("/a%2F..%2Fb").as_deref(), Some("/b"));
        assert_eq!(
            match_form(&normal("/a%2f%2E%2E%2fb")).as_deref(),
            Some("/b")
        );
        assert_eq!(match_form("/a/b%20c"), None);
    }

    #[test]
    fn a_percent_without_two_hex_digits_is_malformed() {
        for path in ["/a%", "/a%4", "/a%zz", "/%G0"] {
            assert_eq!(normalize_path(path), Err(MalformedPath), "{path}");
        }
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        let parts = ["a", ".", "..", "%2e", "%2F", "%41", "", "%7e"];
        for x in parts {
            for y in parts {
                for z in parts {
                    let once = normal(&format!("/{x}/{y}/{z}"));
                    assert_eq!(normalize_path(&once), Ok(None), "{x}/{y}/{z} -> {once}");
                }
            }
        }
    }
}
