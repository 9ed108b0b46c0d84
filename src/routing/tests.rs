//! Matching and precedence rules, one test per rule.

use std::path::Path;

use http::{HeaderValue, Method};

use super::*;
use crate::config;

struct Req {
    method: Method,
    host: Option<String>,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    ip: IpAddr,
}

fn req(host: &str, path_and_query: &str) -> Req {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (path_and_query.to_owned(), None),
    };
    Req {
        method: Method::GET,
        host: (!host.is_empty()).then(|| normalize_host(host).into_owned()),
        path,
        query,
        headers: HeaderMap::new(),
        ip: "192.0.2.1".parse().unwrap(),
    }
}

impl Req {
    fn method(mut self, m: Method) -> Req {
        self.method = m;
        self
    }
    fn header(mut self, k: &'static str, v: &str) -> Req {
        self.headers.append(k, HeaderValue::from_str(v).unwrap());
        self
    }
    fn ip(mut self, ip: &str) -> Req {
        self.ip = ip.parse().unwrap();
        self
    }
    fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            host: self.host.as_deref(),
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
            client_ip: self.ip,
        }
    }
}

/// Builds a table from route snippets; every route goes to upstream `u`.
fn table(routes: &[&str]) -> RouteTable {
    let mut text = String::from(
        "[listen]\nhttp = \"127.0.0.1:1\"\n[upstreams.u]\nendpoints = [\"127.0.0.1:2\"]\n",
    );
    for (i, r) in routes.iter().enumerate() {
        text.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\nupstream = \"u\"\n{r}\n"
        ));
    }
    let c = config::parse(&text, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    RouteTable::new(c.routes)
}

fn selected(t: &RouteTable, r: &Req) -> Option<String> {
    t.select(&r.view()).map(|r| r.spec.name.clone())
}

#[test]
fn first_matching_route_in_file_order_wins() {
    let t = table(&["path_prefix = \"/a\"", "path_prefix = \"/a/b\"", ""]);
    assert_eq!(selected(&t, &req("x", "/a/b/c")).as_deref(), Some("r0"));
    assert_eq!(selected(&t, &req("x", "/z")).as_deref(), Some("r2"));
}

#[test]
fn an_earlier_catch_all_beats_a_later_specific_host() {
    let t = table(&["", "hosts = [\"auth.example.com\"]"]);
    assert_eq!(
        selected(&t, &req("auth.example.com", "/")).as_deref(),
        Some("r0")
    );
}

#[test]
fn a_later_catch_all_does_not_beat_an_earlier_specific_host() {
    let t = table(&["hosts = [\"auth.example.com\"]", ""]);
    assert_eq!(
        selected(&t, &req("auth.example.com", "/")).as_deref(),
        Some("r0")
    );
    assert_eq!(
        selected(&t, &req("other.example.com", "/")).as_deref(),
        Some("r1")
    );
}

#[test]
fn host_matching_ignores_case_and_port() {
    let t = table(&["hosts = [\"auth.example.com\"]"]);
    assert!(selected(&t, &req("AUTH.Example.com:8443", "/")).is_some());
    assert!(selected(&t, &req("auth.example.com.", "/")).is_some());
}

#[test]
fn wildcard_host_matches_one_or_more_labels() {
    let t = table(&["hosts = [\"*.example.com\"]"]);
    assert!(selected(&t, &req("a.example.com", "/")).is_some());
    assert!(selected(&t, &req("a.b.example.com", "/")).is_some());
}

#[test]
fn wildcard_host_does_not_match_apex() {
    let t = table(&["hosts = [\"*.example.com\"]"]);
    assert!(selected(&t, &req("example.com", "/")).is_none());
    assert!(selected(&t, &req("badexample.com", "/")).is_none());
}

#[test]
fn route_with_hosts_does_not_match_a_request_without_host() {
    let t = table(&["hosts = [\"a.example.com\"]"]);
    assert!(selected(&t, &req("", "/")).is_none());
}

#[test]
fn exact_path_matches_only_that_path() {
    let t = table(&["path = \"/debug/ready\""]);
    assert!(selected(&t, &req("x", "/debug/ready")).is_some());
    assert!(selected(&t, &req("x", "/debug/ready/")).is_none());
    assert!(selected(&t, &req("x", "/debug/ready?x=1")).is_some());
}

#[test]
fn path_prefix_is_a_plain_string_prefix() {
    let t = table(&["path_prefix = \"/zitadel.\""]);
    assert!(selected(&t, &req("x", "/zitadel.admin.v1.AdminService/Healthz")).is_some());
    assert!(selected(&t, &req("x", "/zitadel")).is_none());
}

#[test]
fn path_regex_matches_anywhere_unless_anchored() {
    let t = table(&["path_regex = \"^/v2(beta)?/\""]);
    assert!(selected(&t, &req("x", "/v2/users")).is_some());
    assert!(selected(&t, &req("x", "/v2beta/users")).is_some());
    assert!(selected(&t, &req("x", "/api/v2/users")).is_none());
}

#[test]
fn methods_must_include_the_request_method() {
    let t = table(&["methods = [\"post\", \"PUT\"]"]);
    assert!(selected(&t, &req("x", "/").method(Method::POST)).is_some());
    assert!(selected(&t, &req("x", "/").method(Method::PUT)).is_some());
    assert!(selected(&t, &req("x", "/")).is_none());
}

#[test]
fn header_match_is_exact_value_and_case_insensitive_name() {
    let t = table(&["headers = { \"X-Canary\" = \"1\" }"]);
    assert!(selected(&t, &req("x", "/").header("x-canary", "1")).is_some());
    assert!(selected(&t, &req("x", "/").header("x-canary", "10")).is_none());
    assert!(selected(&t, &req("x", "/")).is_none());
}

#[test]
fn header_match_accepts_any_of_repeated_values() {
    let t = table(&["headers = { \"x-canary\" = \"1\" }"]);
    let r = req("x", "/")
        .header("x-canary", "0")
        .header("x-canary", "1");
    assert!(selected(&t, &r).is_some());
}

#[test]
fn header_regex_matches_grpc_content_types() {
    let t = table(&["header_regex = { \"content-type\" = \"^application/grpc\" }"]);
    assert!(
        selected(
            &t,
            &req("x", "/").header("content-type", "application/grpc+proto")
        )
        .is_some()
    );
    assert!(
        selected(
            &t,
            &req("x", "/").header("content-type", "application/json")
        )
        .is_none()
    );
}

#[test]
fn query_match_is_exact_decoded_value() {
    let t = table(&["query = { \"tenant\" = \"acme corp\" }"]);
    assert!(selected(&t, &req("x", "/?a=1&tenant=acme+corp")).is_some());
    assert!(selected(&t, &req("x", "/?tenant=acme%20corp")).is_some());
    assert!(selected(&t, &req("x", "/?tenant=acme")).is_none());
    assert!(selected(&t, &req("x", "/")).is_none());
}

#[test]
fn client_ips_match_v4_and_v6_cidrs() {
    let t = table(&["client_ips = [\"10.0.0.0/8\", \"2001:db8::/32\"]"]);
    assert!(selected(&t, &req("x", "/").ip("10.1.2.3")).is_some());
    assert!(selected(&t, &req("x", "/").ip("2001:db8::1")).is_some());
    assert!(selected(&t, &req("x", "/").ip("11.0.0.1")).is_none());
}

#[test]
fn every_condition_must_match() {
    let t = table(&["hosts = [\"a.io\"]\npath_prefix = \"/x\"\nmethods = [\"POST\"]"]);
    assert!(selected(&t, &req("a.io", "/x").method(Method::POST)).is_some());
    assert!(selected(&t, &req("a.io", "/x")).is_none());
    assert!(selected(&t, &req("b.io", "/x").method(Method::POST)).is_none());
    assert!(selected(&t, &req("a.io", "/y").method(Method::POST)).is_none());
}

#[test]
fn index_keeps_first_match_across_prefix_lengths_and_regex() {
    // A long prefix listed before a short one, a regex in between, and an
    // exact path last: file order decides, not specificity.
    let t = table(&[
        "path_prefix = \"/oauth/v2/token\"\nmethods = [\"PUT\"]",
        "path_regex = \"^/oauth\"\nmethods = [\"DELETE\"]",
        "path_prefix = \"/oauth\"",
        "path = \"/oauth/v2/token\"",
    ]);
    assert_eq!(
        selected(&t, &req("x", "/oauth/v2/token").method(Method::PUT)).as_deref(),
        Some("r0")
    );
    assert_eq!(
        selected(&t, &req("x", "/oauth/v2/token").method(Method::DELETE)).as_deref(),
        Some("r1")
    );
    assert_eq!(
        selected(&t, &req("x", "/oauth/v2/token")).as_deref(),
        Some("r2")
    );
}

#[test]
fn many_hosts_select_the_right_route() {
    let routes: Vec<String> = (0..2000)
        .map(|i| {
            format!(
                "hosts = [\"h{i}.example.com\"]\npath_prefix = \"/p{}\"",
                i % 7
            )
        })
        .collect();
    let refs: Vec<&str> = routes.iter().map(String::as_str).collect();
    let t = table(&refs);
    assert_eq!(
        selected(&t, &req("h1234.example.com", "/p2/x")).as_deref(),
        Some("r1234")
    );
    assert_eq!(selected(&t, &req("h1234.example.com", "/p3/x")), None);
}

#[test]
fn check_names_the_first_unmet_condition() {
    let t = table(&["hosts = [\"a.io\"]\nmethods = [\"POST\"]"]);
    let r = req("a.io", "/");
    assert_eq!(t.routes()[0].check(&r.view()), Err(Mismatch::Method));
}

#[test]
fn normalize_host_handles_ipv6_literals() {
    assert_eq!(normalize_host("[2001:DB8::1]:8080"), "[2001:db8::1]");
    assert_eq!(normalize_host("[::1]"), "[::1]");
    assert_eq!(normalize_host("Example.com:80"), "example.com");
}
