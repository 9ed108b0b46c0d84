//! `steer check` lints: a valid file that still does something an operator
//! of an identity edge almost certainly does not want. Each warning points
//! at the route or upstream concerned and says why in one line.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use http::{HeaderMap, Method};

use super::{Config, EndpointAddr, HostPattern, PathMatch, Protocol, RouteSpec, Target};
use crate::routing::{RequestView, RouteTable, host_matches};

/// One warning: the byte offset it points at and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub at: usize,
    pub message: String,
}

/// Paths of ZITADEL's login flow served by the API: one login must stay
/// on one deployment (auth requests, sessions and codes live in that
/// deployment's database and caches until replicated), so they must all
/// route alike per host. `/ui/v2/login` is left out on purpose: login v2 is
/// its own container (HTTP/1.1, port 3000) that ZITADEL's own Traefik
/// recipe routes apart from the API, so it legitimately has its own
/// upstream.
const LOGIN_FLOW: [&str; 8] = [
    "/oauth/v2/authorize",
    "/oauth/v2/token",
    "/oidc/v1/userinfo",
    "/.well-known/openid-configuration",
    "/ui/login/login",
    "/idps/callback",
    "/saml/v2/SSO",
    "/assets/v1/default",
];

pub fn lint(config: &Config) -> Vec<Warning> {
    let mut out = Vec::new();
    shadowed(config, &mut out);
    login_flow(config, &mut out);
    unused_upstreams(config, &mut out);
    single_point_of_failure(config, &mut out);
    split_without_checks(config, &mut out);
    grpc_to_http1(config, &mut out);
    certificates(config, &mut out);
    paths_not_normal(config, &mut out);
    out.sort_by_key(|w| w.at);
    out
}

/// A certificate that expires within 14 days (an expired one is an
/// error already), and one that is never served: no DNS name to match SNI
/// against, and not the first entry (which clients without SNI get).
fn certificates(config: &Config, out: &mut Vec<Warning>) {
    let soon = std::time::SystemTime::now() + crate::tls::EXPIRY_WARNING;
    for (i, files) in config.tls.iter().enumerate() {
        // `parse` loaded every pair already (a broken one is an error, and
        // no lint runs); this reads each once more, for its facts.
        let loaded = crate::tls::load_pair(files);
        if let Ok(at) = loaded.as_ref().map(|c| c.not_after)
            && at < soon
        {
            out.push(Warning {
                at: files.at,
                message: format!(
                    "certificate `{}` expires within 14 days ({})",
                    files.cert.display(),
                    humantime::format_rfc3339_seconds(at)
                ),
            });
        }
        let named = loaded.is_ok_and(|c| !c.names.is_empty());
        if i > 0 && !named {
            out.push(Warning {
                at: files.at,
                message: format!(
                    "certificate `{}` names no DNS name and is not the first entry: no client ever gets it",
                    files.cert.display()
                ),
            });
        }
    }
}

fn name(config: &Config, u: usize) -> &str {
    config.upstreams.get(u).map_or("?", |s| s.name.as_str())
}

/// Upstreams a route sends traffic to before fallbacks.
fn primaries(route: &RouteSpec) -> Vec<usize> {
    match &route.target {
        Target::Upstream(u) => vec![*u],
        Target::Split(parts) => parts.iter().map(|(u, _)| *u).collect(),
    }
}

fn shadowed(config: &Config, out: &mut Vec<Warning>) {
    for (j, later) in config.routes.iter().enumerate() {
        if let Some(earlier) = config.routes[..j].iter().find(|e| covers(e, later)) {
            out.push(Warning {
                at: later.at,
                message: format!(
                    "route `{}` can never match: the earlier route `{}` matches every request it would",
                    later.name, earlier.name
                ),
            });
        }
    }
}

/// Whether every request matching `b` also matches `a` (conservative:
/// regexes only cover identical regexes).
fn covers(a: &RouteSpec, b: &RouteSpec) -> bool {
    let hosts = a.hosts.is_empty()
        || (!b.hosts.is_empty()
            && b.hosts
                .iter()
                .all(|hb| a.hosts.iter().any(|ha| host_covers(ha, hb))));
    let path = match (&a.path, &b.path) {
        (None, _) => true,
        (Some(PathMatch::Prefix(p)), Some(PathMatch::Prefix(q) | PathMatch::Exact(q))) => {
            q.starts_with(p.as_str())
        }
        (Some(PathMatch::Exact(p)), Some(PathMatch::Exact(q))) => p == q,
        (Some(PathMatch::Regex(p)), Some(PathMatch::Regex(q))) => p.as_str() == q.as_str(),
        _ => false,
    };
    let methods = a.methods.is_empty()
        || (!b.methods.is_empty() && b.methods.iter().all(|m| a.methods.contains(m)));
    let headers = a.headers.iter().all(|h| b.headers.contains(h));
    let regexes = a.header_regex.iter().all(|(n, r)| {
        b.header_regex
            .iter()
            .any(|(m, s)| m == n && s.as_str() == r.as_str())
    });
    let query = a.query.iter().all(|q| b.query.contains(q));
    let ips = a.client_ips.is_empty()
        || (!b.client_ips.is_empty()
            && b.client_ips
                .iter()
                .all(|nb| a.client_ips.iter().any(|na| na.contains(nb))));
    hosts && path && methods && headers && regexes && query && ips
}

fn host_covers(a: &HostPattern, b: &HostPattern) -> bool {
    match (a, b) {
        (HostPattern::Exact(x), HostPattern::Exact(y)) => x == y,
        (HostPattern::Wildcard(_), HostPattern::Exact(y)) => host_matches(a, y),
        (HostPattern::Wildcard(x), HostPattern::Wildcard(y)) => y.ends_with(x.as_str()),
        (HostPattern::Exact(_), HostPattern::Wildcard(_)) => false,
    }
}

/// For each host named in the file (and requests without a matching host),
/// where a plain browser request to each login-flow path would go.
fn login_flow(config: &Config, out: &mut Vec<Warning>) {
    let table = RouteTable::new(config.routes.clone());
    let mut hosts: BTreeSet<Option<String>> = BTreeSet::from([None]);
    for r in &config.routes {
        for h in &r.hosts {
            hosts.insert(Some(match h {
                HostPattern::Exact(x) => x.clone(),
                HostPattern::Wildcard(s) => format!("tenant{s}"),
            }));
        }
    }
    let headers = HeaderMap::new();
    for host in hosts {
        let mut by_upstreams: BTreeMap<Vec<String>, Vec<(&str, usize)>> = BTreeMap::new();
        for path in LOGIN_FLOW {
            let view = RequestView {
                method: &Method::GET,
                host: host.as_deref(),
                path,
                query: None,
                headers: &headers,
                client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            };
            if let Some(route) = table.select(&view) {
                let mut names: Vec<String> = primaries(&route.spec)
                    .iter()
                    .map(|u| name(config, *u).to_owned())
                    .collect();
                names.sort();
                by_upstreams
                    .entry(names)
                    .or_default()
                    .push((path, route.spec.at));
            }
        }
        if by_upstreams.len() > 1 {
            let summary: Vec<String> = by_upstreams
                .iter()
                .map(|(ups, paths)| format!("{} -> {}", paths[0].0, ups.join("+")))
                .collect();
            let at = by_upstreams
                .values()
                .skip(1)
                .flat_map(|p| p.iter().map(|(_, at)| *at))
                .min()
                .unwrap_or(0);
            out.push(Warning {
                at,
                message: format!(
                    "for host {}, ZITADEL's login-flow paths go to different upstreams ({}): a login begun on one deployment must finish on it",
                    host.as_deref().unwrap_or("(any)"),
                    summary.join(", ")
                ),
            });
        }
    }
}

/// With `normalize_path` (the default) routes match the path's normal
/// form, so a `path`, `path_prefix` or `strip_prefix` written otherwise
/// (percent-encodings steer decodes or upper-cases, `%2F`, dot segments)
/// never matches: most likely a config written for raw matching.
fn paths_not_normal(config: &Config, out: &mut Vec<Warning>) {
    if !config.proxy.normalize_path {
        return;
    }
    for r in &config.routes {
        let path = match &r.path {
            Some(PathMatch::Exact(p) | PathMatch::Prefix(p)) => Some(("path", p)),
            _ => None,
        };
        let strip = r.strip_prefix.as_ref().map(|p| ("strip_prefix", p));
        for (key, p) in path.into_iter().chain(strip) {
            let message = match crate::routing::route_form(p) {
                Ok(None) => continue,
                Ok(Some(normal)) => format!(
                    "route `{}`: {key} `{p}` is not in normal form, and requests are matched in normal form (normalize_path): it never matches; write `{normal}`, or set normalize_path = false",
                    r.name
                ),
                Err(_) => format!(
                    "route `{}`: {key} `{p}` has a malformed percent-encoding (`%` and two hex digits), and a request path with one gets 400 (normalize_path): it never matches",
                    r.name
                ),
            };
            out.push(Warning { at: r.at, message });
        }
    }
}

fn unused_upstreams(config: &Config, out: &mut Vec<Warning>) {
    for (i, u) in config.upstreams.iter().enumerate() {
        let used = config
            .routes
            .iter()
            .any(|r| primaries(r).contains(&i) || r.fallback.contains(&i));
        if !used {
            out.push(Warning {
                at: u.at,
                message: format!("upstream `{}` is not used by any route", u.name),
            });
        }
    }
}

fn single_point_of_failure(config: &Config, out: &mut Vec<Warning>) {
    for r in &config.routes {
        if let (Target::Upstream(u), true) = (&r.target, r.fallback.is_empty())
            && let Some(spec) = config.upstreams.get(*u)
            && matches!(spec.endpoints.as_slice(), [EndpointAddr::Ip(_)])
        {
            out.push(Warning {
                at: r.at,
                message: format!(
                    "route `{}` has no fallback and its upstream `{}` has a single endpoint: one instance down means an outage",
                    r.name, spec.name
                ),
            });
        }
    }
}

fn split_without_checks(config: &Config, out: &mut Vec<Warning>) {
    for r in &config.routes {
        let Target::Split(parts) = &r.target else {
            continue;
        };
        for (u, _) in parts {
            if config.upstreams.get(*u).is_some_and(|s| s.health.is_none()) {
                out.push(Warning {
                    at: r.at,
                    message: format!(
                        "route `{}` splits traffic to `{}`, which has health checks off: a split cannot steer around a deployment it does not check",
                        r.name,
                        name(config, *u)
                    ),
                });
            }
        }
    }
}

fn looks_grpc(r: &RouteSpec) -> bool {
    let path = matches!(&r.path, Some(PathMatch::Prefix(p) | PathMatch::Exact(p)) if p.starts_with("/zitadel.") || p.starts_with("/grpc."));
    let header = r
        .header_regex
        .iter()
        .any(|(n, re)| n == http::header::CONTENT_TYPE && re.as_str().contains("grpc"))
        || r.headers.iter().any(|(n, v)| {
            n == http::header::CONTENT_TYPE && v.as_bytes().starts_with(b"application/grpc")
        });
    path || header
}

fn grpc_to_http1(config: &Config, out: &mut Vec<Warning>) {
    for r in config.routes.iter().filter(|r| looks_grpc(r)) {
        for u in primaries(r).iter().chain(&r.fallback) {
            if config
                .upstreams
                .get(*u)
                .is_some_and(|s| s.protocol == Protocol::Http1)
            {
                out.push(Warning {
                    at: r.at,
                    message: format!(
                        "route `{}` looks like native gRPC but upstream `{}` speaks http1: gRPC needs HTTP/2 (protocol = \"h2c\" or \"https\")",
                        r.name,
                        name(config, *u)
                    ),
                });
            }
        }
    }
}
