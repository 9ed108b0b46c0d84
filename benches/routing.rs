//! Route selection cost at 10, 1,000 and 10,000 routes. The request path
//! runs `RouteTable::select` once per request, so its cost must stay flat as
//! tables grow (target: < 1 µs at 10,000 routes). Routes are spread over
//! distinct hosts with path prefixes, the shape of a multi-tenant identity
//! edge; the measured request matches a route near the end of the file, the
//! worst case for a linear scan.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use steer::routing::{RequestView, RouteTable};

fn table(n: usize) -> RouteTable {
    let mut text = String::from(
        "[listen]\nhttp = \"127.0.0.1:1\"\n[upstreams.u]\nendpoints = [\"127.0.0.1:2\"]\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\nhosts = [\"t{}.auth.example.com\"]\npath_prefix = \"/{}\"\nupstream = \"u\"\n",
            i / 4,
            ["oauth/v2/", "oidc/v1/", "ui/login", "zitadel."][i % 4]
        ));
    }
    text.push_str("[[routes]]\nname = \"default\"\nupstream = \"u\"\n");
    match steer::config::parse(&text, Path::new("bench.toml")) {
        Ok(c) => RouteTable::new(c.routes),
        Err(e) => panic!("bench config invalid: {e}"),
    }
}

fn select(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_select");
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let ip: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
    for n in [10usize, 1_000, 10_000] {
        let t = table(n);
        let host = format!("t{}.auth.example.com", (n - 1) / 4);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let view = RequestView {
                    method: &Method::POST,
                    host: Some(&host),
                    path: "/ui/login/loginname",
                    query: Some("authRequestID=123"),
                    headers: &headers,
                    client_ip: ip,
                };
                black_box(t.select(black_box(&view)).map(|r| r.index))
            })
        });
    }
    group.finish();
}

/// What a 10,000-route reload costs before the swap: parsing and
/// validating the file and compiling the route index (the target
/// is the whole reload under 100 ms).
fn reload_10k(c: &mut Criterion) {
    let mut text = String::from(
        "[listen]\nhttp = \"127.0.0.1:1\"\n[upstreams.u]\nendpoints = [\"127.0.0.1:2\"]\n",
    );
    for i in 0..10_000 {
        text.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\nhosts = [\"t{}.auth.example.com\"]\npath_prefix = \"/{}\"\nupstream = \"u\"\n",
            i / 4,
            ["oauth/v2/", "oidc/v1/", "ui/login", "zitadel."][i % 4]
        ));
    }
    let mut group = c.benchmark_group("reload");
    group.sample_size(10);
    group.bench_function("parse_and_compile_10000_routes", |b| {
        b.iter(
            || match steer::config::parse(black_box(&text), Path::new("bench.toml")) {
                Ok(c) => black_box(RouteTable::new(c.routes).routes().len()),
                Err(e) => panic!("{e}"),
            },
        )
    });
    group.finish();
}

criterion_group!(benches, select, reload_10k);
criterion_main!(benches);
