use super::*;

fn map(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

static AUTH: HeaderValue = HeaderValue::from_static("auth.example.com");

fn hop(trusted: bool) -> Hop<'static> {
    Hop {
        peer: "192.0.2.7".parse().unwrap(),
        trusted,
        via: crate::config::ClientIpHeader::XForwardedFor,
        tls: false,
        host: Some(&AUTH),
        cache: None,
    }
}

#[test]
fn untrusted_client_cannot_forge_forwarding_headers() {
    let mut h = map(&[
        ("forwarded", "for=6.6.6.6;host=evil.example"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-port", "1"),
        ("x-real-ip", "6.6.6.6"),
        ("x-zitadel-forwarded", "host=evil.example"),
        ("x-zitadel-instance-host", "evil.example"),
        ("x-zitadel-public-host", "evil.example"),
    ]);
    apply_forwarding(&mut h, &hop(false));
    assert_eq!(h["x-forwarded-for"], "192.0.2.7");
    assert_eq!(h["x-forwarded-host"], "auth.example.com");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(
        h["forwarded"],
        "for=192.0.2.7;proto=http;host=auth.example.com"
    );
    for gone in [
        "x-forwarded-port",
        "x-real-ip",
        "x-zitadel-forwarded",
        "x-zitadel-instance-host",
        "x-zitadel-public-host",
    ] {
        assert!(!h.contains_key(gone), "{gone} should be removed");
    }
}

#[test]
fn a_trusted_proxy_that_sets_x_forwarded_keeps_them_and_loses_a_passed_forwarded() {
    let mut h = map(&[
        // Sent by the client; the proxy in front passed it through.
        ("forwarded", "for=6.6.6.6;proto=http;host=evil.example"),
        ("x-forwarded-for", "1.2.3.4"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "auth.example.com"),
        ("x-zitadel-instance-host", "tenant.example.com"),
    ]);
    apply_forwarding(&mut h, &hop(true));
    assert_eq!(h["x-forwarded-for"], "1.2.3.4, 192.0.2.7");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(
        h["forwarded"],
        "for=192.0.2.7;proto=https;host=auth.example.com"
    );
    assert_eq!(h["x-zitadel-instance-host"], "tenant.example.com");
}

#[test]
fn a_trusted_proxy_that_sets_forwarded_keeps_it_and_x_forwarded_come_from_it() {
    let mut h = map(&[
        ("forwarded", "for=1.2.3.4;proto=https;host=auth.example.com"),
        // Sent by the client; the proxy in front passed them through.
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-host", "evil.example"),
        ("x-real-ip", "6.6.6.6"),
    ]);
    let hop = Hop {
        via: crate::config::ClientIpHeader::Forwarded,
        ..hop(true)
    };
    apply_forwarding(&mut h, &hop);
    assert_eq!(h["x-forwarded-for"], "1.2.3.4, 192.0.2.7");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "auth.example.com");
    assert!(h.get("x-real-ip").is_none());
    assert_eq!(
        h["forwarded"],
        "for=1.2.3.4;proto=https;host=auth.example.com, for=192.0.2.7;proto=http;host=auth.example.com"
    );
}

#[test]
fn forwarded_element_follows_a_trusted_load_balancers_scheme_and_host() {
    let mut h = map(&[
        ("x-forwarded-for", "198.51.100.4"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "auth.example.com"),
    ]);
    let host = HeaderValue::from_static("steer.internal:8080");
    let hop = Hop {
        peer: "10.0.0.2".parse().unwrap(),
        trusted: true,
        via: crate::config::ClientIpHeader::XForwardedFor,
        tls: false,
        host: Some(&host),
        cache: None,
    };
    apply_forwarding(&mut h, &hop);
    assert_eq!(
        h["forwarded"],
        "for=10.0.0.2;proto=https;host=auth.example.com"
    );
    assert_eq!(h["x-forwarded-proto"], "https");
}

#[test]
fn forwarded_quotes_ipv6_and_ported_hosts() {
    let mut h = HeaderMap::new();
    let host = HeaderValue::from_static("auth.example.com:8443");
    let hop = Hop {
        peer: "2001:db8::1".parse().unwrap(),
        trusted: false,
        via: crate::config::ClientIpHeader::XForwardedFor,
        tls: true,
        host: Some(&host),
        cache: None,
    };
    apply_forwarding(&mut h, &hop);
    assert_eq!(
        h["forwarded"],
        "for=\"[2001:db8::1]\";proto=https;host=\"auth.example.com:8443\""
    );
    assert_eq!(h["x-forwarded-proto"], "https");
}

#[test]
fn hop_by_hop_headers_are_removed_including_connection_named_ones() {
    let mut h = map(&[
        ("connection", "keep-alive, x-secret"),
        ("keep-alive", "timeout=5"),
        ("x-secret", "1"),
        ("transfer-encoding", "chunked"),
        ("proxy-authorization", "Basic x"),
        ("upgrade", "websocket"),
        ("te", "gzip"),
        ("x-kept", "1"),
    ]);
    strip_hop_by_hop(&mut h, false);
    assert_eq!(h.len(), 1, "{h:?}");
    assert!(h.contains_key("x-kept"));
}

#[test]
fn te_trailers_survives_for_grpc() {
    let mut h = map(&[("te", "trailers")]);
    strip_hop_by_hop(&mut h, false);
    assert_eq!(h["te"], "trailers");
}

#[test]
fn upgrade_keeps_upgrade_and_connection() {
    let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
    assert!(is_upgrade(&h));
    strip_hop_by_hop(&mut h, true);
    assert_eq!(h["upgrade"], "websocket");
    assert_eq!(h["connection"], "upgrade");
}

#[test]
fn only_allowed_upgrade_tokens_are_forwarded() {
    let allowed = vec!["websocket".to_owned()];
    let h = map(&[("connection", "Upgrade"), ("upgrade", "WebSocket")]);
    assert_eq!(allowed_upgrade(&h, &allowed).unwrap(), "WebSocket");
    let h = map(&[("connection", "Upgrade"), ("upgrade", "h2c, websocket/13")]);
    assert_eq!(allowed_upgrade(&h, &allowed).unwrap(), "websocket/13");
    for asked in ["h2c", "made-up", "HTTP/2.0"] {
        let h = map(&[
            ("connection", "upgrade, HTTP2-Settings"),
            ("upgrade", asked),
        ]);
        assert!(allowed_upgrade(&h, &allowed).is_none(), "{asked}");
    }
    // No Connection: upgrade, no upgrade.
    let h = map(&[("upgrade", "websocket")]);
    assert!(allowed_upgrade(&h, &allowed).is_none());
}

#[test]
fn trailers_lose_forwarding_zitadel_hop_by_hop_and_underscored_fields() {
    let mut t = map(&[
        ("x-forwarded-for", "1.2.3.4"),
        ("x-forwarded-anything", "x"),
        ("forwarded", "for=1.2.3.4"),
        ("x-zitadel-instance-host", "evil.example"),
        ("x-zitadel-orgid", "1"),
        ("connection", "close"),
        ("x_real_ip", "1.2.3.4"),
        ("grpc-status", "0"),
    ]);
    clean_trailers(&mut t, false);
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(t["grpc-status"], "0");
    let mut t = map(&[("x_custom", "1")]);
    clean_trailers(&mut t, true);
    assert_eq!(t["x_custom"], "1");
}

#[test]
fn rules_remove_then_set() {
    let mut h = map(&[("x-debug", "1"), ("x-env", "dev")]);
    let rules = HeaderRules {
        set: vec![(
            HeaderName::from_static("x-env"),
            HeaderValue::from_static("prod"),
        )],
        remove: vec![HeaderName::from_static("x-debug")],
    };
    apply_rules(&mut h, &rules);
    assert_eq!(h["x-env"], "prod");
    assert!(!h.contains_key("x-debug"));
}

#[test]
fn request_id_is_kept_or_generated() {
    assert_eq!(request_id(&map(&[("x-request-id", "abc")])), "abc");
    let a = request_id(&HeaderMap::new());
    let b = request_id(&HeaderMap::new());
    assert_eq!(a.len(), 32);
    assert_ne!(a, b);
    // Lower-case hex, every digit position in use.
    let ids: Vec<_> = (0..64).map(|_| request_id(&HeaderMap::new())).collect();
    for id in &ids {
        assert!(
            id.as_bytes()
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)),
            "{id:?}"
        );
    }
    for at in 0..32 {
        assert!(
            ids.iter().any(|id| id.as_bytes()[at] != b'0'),
            "digit {at} always 0"
        );
    }
}

#[test]
fn ip_text_matches_display() {
    let ips = [
        "0.0.0.0",
        "127.0.0.1",
        "10.20.30.40",
        "255.255.255.255",
        "1.100.99.9",
        "::1",
        "::",
        "2001:db8::8a2e:370:7334",
        "::ffff:255.255.255.255",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    ];
    for ip in ips {
        let ip: IpAddr = ip.parse().unwrap();
        assert_eq!(IpText::new(ip).as_str(), ip.to_string());
    }
}

#[test]
fn socket_text_matches_display() {
    for addr in [
        "127.0.0.1:8080",
        "10.0.0.1:1",
        "[::1]:443",
        "[2001:db8::1]:65535",
    ] {
        let addr: SocketAddr = addr.parse().unwrap();
        assert_eq!(IpText::socket(addr).as_str(), addr.to_string());
    }
}

#[test]
fn name_sets_find_their_names_as_parsed_and_no_others() {
    fn check<const N: usize>(set: &NameSet<N>, others: &[&str]) {
        for (i, name) in set.names.iter().enumerate() {
            let parsed = HeaderName::from_bytes(name.as_str().to_ascii_uppercase().as_bytes());
            assert_eq!(set.position(&parsed.unwrap()), Some(i), "{name}");
        }
        for other in others {
            let other = HeaderName::from_bytes(other.as_bytes()).unwrap();
            assert_eq!(set.position(&other), None, "{other}");
        }
    }
    // Same lengths as names in the sets, common names, and names too long
    // for the length test's bits.
    let others = [
        "user-agent",
        "accept-encoding",
        "upgrade",
        "host",
        "x-forwarded-prot",
        "x-a-field-name-of-thirty-two-byt",
        "x-a-field-name-of-forty-bytes-or-longer",
    ];
    check(&HOP_BY_HOP, &others);
    check(&FORWARDING_NAMES, &others);
}

/// The lines `HopFields::write` puts in an HTTP/1.1 head are, field for
/// field and byte for byte, what `apply_forwarding` puts in a map: an
/// HTTP/1.1 upstream and any other see the same forwarding fields. The
/// same through a connection's `HopCache`, as it first builds and then
/// reuses the values, one cache across hops that differ in peer, scheme
/// or Host: a value kept for one is never given to another.
#[test]
fn hop_fields_written_into_a_head_are_those_put_in_a_map() {
    let cache = HopCache::default();
    let forged = [
        ("x-forwarded-for", "6.6.6.6"),
        ("forwarded", "for=6.6.6.6"),
        ("x-real-ip", "6.6.6.6"),
    ];
    let hosts = [
        Some("auth.example.com"),
        Some("auth.example.com:8443"),
        Some("[2001:db8::1]:443"),
        Some("we\"ird\\host"),
        None,
    ];
    let peers = ["192.0.2.7", "2001:db8::7", "::ffff:192.0.2.8"];
    let mut cases = 0;
    for ((peer, host), (tls, trusted)) in peers
        .iter()
        .flat_map(|p| hosts.iter().map(move |h| (p, h)))
        .flat_map(|ph| [(false, false), (true, false), (false, true)].map(|t| (ph, t)))
    {
        let host = host.map(HeaderValue::from_static);
        let hop = Hop {
            peer: peer.parse().unwrap(),
            tls,
            host: host.as_ref(),
            ..hop(trusted)
        };
        // What an untrusted client sends is dropped either way; a trusted
        // one that sets none leaves steer's fields to the hop alone.
        let sent = if trusted { &[][..] } else { &forged[..] };
        let mut expected = map(sent);
        apply_forwarding(&mut expected, &hop);
        let cached = Hop {
            cache: Some(&cache),
            ..hop
        };
        for hop in [hop, cached, cached] {
            let mut h = map(sent);
            let fields = forwarding(&mut h, &hop).expect("the hop's own fields");
            assert_eq!(fields.built.is_some(), hop.cache.is_some());
            assert_written_as_in(fields, h, &expected);
        }
        cases += 1;
    }
    assert_eq!(cases, 45);
}

/// `fields` written into a head and inserted into `h` (the request's map
/// after `forwarding`) give the fields of `expected`.
fn assert_written_as_in(fields: HopFields, mut h: HeaderMap, expected: &HeaderMap) {
    let mut head = Vec::new();
    fields.write(&mut head);
    let text = String::from_utf8(head).unwrap();
    let written: Vec<(&str, &str)> = text
        .strip_suffix("\r\n")
        .unwrap()
        .split("\r\n")
        .map(|line| line.split_once(": ").unwrap())
        .collect();
    for (name, value) in &written {
        assert!(!h.contains_key(*name), "{name} both in the map and written");
        assert_eq!(expected.get_all(*name).iter().collect::<Vec<_>>(), [value]);
    }
    for name in ["x-forwarded-for", "x-forwarded-proto", "forwarded"] {
        assert!(
            written.iter().any(|(n, _)| *n == name),
            "{name} missing: {text}"
        );
    }
    fields.insert(&mut h);
    assert_eq!(&h, expected, "{text}");
}

/// A connection's kept values are for one peer, scheme and Host: a hop
/// that differs in any of them alone gets its own.
#[test]
fn kept_forwarding_values_are_for_one_peer_scheme_and_host() {
    let cache = HopCache::default();
    let other_host = HeaderValue::from_static("other.example.com");
    let hops = [
        hop(false),
        Hop {
            peer: "192.0.2.99".parse().unwrap(),
            ..hop(false)
        },
        Hop {
            tls: true,
            ..hop(false)
        },
        Hop {
            host: Some(&other_host),
            ..hop(false)
        },
    ];
    for hop in hops.iter().chain(&hops) {
        let mut expected = HeaderMap::new();
        apply_forwarding(&mut expected, hop);
        let cached = Hop {
            cache: Some(&cache),
            ..*hop
        };
        let mut h = HeaderMap::new();
        let fields = forwarding(&mut h, &cached).expect("the hop's own fields");
        assert_written_as_in(fields, h, &expected);
    }
}

#[test]
fn a_trusted_proxys_own_fields_are_built_on_in_the_map() {
    let mut h = map(&[("x-forwarded-for", "203.0.113.9")]);
    assert!(forwarding(&mut h, &hop(true)).is_none());
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 192.0.2.7");
    assert_eq!(
        h["forwarded"],
        "for=192.0.2.7;proto=http;host=auth.example.com"
    );
}
