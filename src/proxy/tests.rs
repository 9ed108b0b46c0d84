use super::*;

#[test]
fn strip_prefix_only_at_a_segment_boundary() {
    assert_eq!(rewrite_path("/api/v2/users", Some("/api")), "/v2/users");
    assert_eq!(rewrite_path("/api", Some("/api")), "/");
    assert_eq!(rewrite_path("/apix", Some("/api")), "/apix");
    assert_eq!(rewrite_path("/other", Some("/api")), "/other");
    assert_eq!(rewrite_path("/api/x", None), "/api/x");
}

#[test]
fn upstream_uri_keeps_query_and_uses_client_authority_for_h2() {
    let uri: Uri = "/api/v2/users?limit=5".parse().unwrap();
    assert_eq!(
        upstream_uri(&uri, Some("/api"), None).unwrap(),
        "/v2/users?limit=5"
    );
    assert_eq!(
        upstream_uri(&uri, None, Some("auth.example.com"))
            .unwrap()
            .to_string(),
        "http://auth.example.com/api/v2/users?limit=5"
    );
}

#[test]
fn weighted_pick_follows_weights() {
    let parts = [(0usize, 90u32), (1, 10)];
    let n = 20_000;
    let zeros = (0..n)
        .filter(|_| weighted(&parts, |_, w| u64::from(w), |_| true) == Some(0))
        .count();
    let share = zeros as f64 / n as f64;
    assert!((0.87..0.93).contains(&share), "share {share}");
}

#[test]
fn weighted_pick_skips_filtered_and_zero_weights() {
    let parts = [(0usize, 0u32), (1, 5), (2, 5)];
    for _ in 0..100 {
        assert_eq!(weighted(&parts, |_, w| u64::from(w), |u| u != 1), Some(2));
    }
    assert_eq!(weighted(&parts, |_, w| u64::from(w), |u| u == 0), None);
}

#[test]
fn every_error_maps_to_its_status_and_names_the_request_id() {
    let id = HeaderValue::from_static("req-123");
    let cases = [
        (ProxyError::NoRoute, 404),
        (ProxyError::NoHealthyUpstream(vec!["blue".into()]), 503),
        (ProxyError::Timeout(std::time::Duration::from_secs(1)), 504),
        (ProxyError::BadRequest("x"), 400),
        (ProxyError::HeadersTooLarge("x"), 431),
    ];
    for (err, status) in cases {
        let expects = Expects {
            grpc: false,
            http1: true,
        };
        let resp = error_response(&err, &id, expects);
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(resp.headers()["x-request-id"], "req-123");
    }
}

/// A request sent again carries the forwarding fields its first attempt
/// wrote into the head rather than the map.
#[test]
fn a_resend_carries_the_forwarding_fields_the_head_left_out_of_the_map() {
    let host = HeaderValue::from_static("auth.example.com");
    let hop = Hop {
        peer: "192.0.2.7".parse().unwrap(),
        trusted: false,
        via: crate::config::ClientIpHeader::XForwardedFor,
        tls: true,
        host: Some(&host),
        cache: None,
    };
    let mut first = Request::new(ReqBody::empty());
    let fields = headers::forwarding(first.headers_mut(), &hop);
    assert!(fields.is_some() && first.headers().is_empty());
    let kept = resend::Resend::new(&first, fields, None);
    let again = kept.again(true).expect("an unprocessed GET goes again");
    let h = again.headers();
    assert_eq!(h["x-forwarded-for"], "192.0.2.7");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "auth.example.com");
    assert_eq!(
        h["forwarded"],
        "for=192.0.2.7;proto=https;host=auth.example.com"
    );
}

/// An h2c upstream gets a request's own authority as `:authority`, with
/// no Host beside it; an upgrade (asked for, or an `Upgrade` a route rule
/// set) keeps HTTP/1.1 form for hyper; another upstream gets the Host.
#[test]
fn an_h2c_upstream_gets_the_requests_own_authority_and_no_host() {
    let (mut parts, ()) = Request::get("https://auth.example.com/api/x?y=1")
        .header(header::HOST, "auth.example.com")
        .body(())
        .unwrap()
        .into_parts();
    let own = own_authority(&parts).expect("its own authority");
    assert_eq!(own, "auth.example.com");
    let aim = Aim {
        host: Some(HeaderValue::from_static("auth.example.com")),
        authority: Some(own),
        path_and_query: "/x?y=1".parse().unwrap(),
    };
    let mut req = Request::new(ReqBody::empty());
    req.headers_mut()
        .insert(header::HOST, HeaderValue::from_static("auth.example.com"));
    aim.apply(&mut req, true);
    assert_eq!(req.version(), Version::HTTP_2);
    assert_eq!(req.uri(), "http://auth.example.com/x?y=1");
    assert!(req.headers().get(header::HOST).is_none());
    aim.apply(&mut req, false);
    assert_eq!(req.version(), Version::HTTP_11);
    assert_eq!(req.uri(), "/x?y=1");
    assert_eq!(req.headers()[header::HOST], "auth.example.com");
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    assert!(own_authority(&parts).is_none());
}
