//! The route table: compiled matchers and first-match selection. Pure: no
//! I/O, no metrics, no bodies. Routes refer to upstreams by index into the
//! config's upstream list; what an upstream is lives in `upstream/`.
//!
//! Selection keeps file-order first-match semantics exactly while avoiding a
//! linear scan: routes are indexed by host (exact, wildcard suffix, any) and,
//! inside a host bucket, by path (exact map, prefix maps keyed by prefix
//! length, everything else). Every candidate list is sorted by route index,
//! so the winner is the smallest index that fully matches across the lists a
//! request can touch; each list is scanned only until it passes the best
//! index found so far.

mod client_ip;
mod path;
pub mod rollback;

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;

use http::{HeaderMap, Method};

pub(crate) use client_ip::forwarded_for;
pub use client_ip::{is_trusted as client_ip_trusted, resolve_client_ip};
pub use path::{MalformedPath, match_form, normalize_path, route_form};

use crate::config::{HostPattern, PathMatch, RouteSpec};

/// What matching needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// Lower-case, without port (see [`normalize_host`]); `None` if absent.
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
}

/// A condition of a route that a request did not meet. Borrows the
/// route's names: route selection discards most of these, per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch<'a> {
    Host,
    Path,
    Method,
    Header(&'a str),
    HeaderRegex(&'a str),
    Query(&'a str),
    ClientIp,
}

impl std::fmt::Display for Mismatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::Host => f.write_str("host does not match `hosts`"),
            Mismatch::Path => f.write_str("path does not match"),
            Mismatch::Method => f.write_str("method not in `methods`"),
            Mismatch::Header(name) => write!(f, "header `{name}` does not have the required value"),
            Mismatch::HeaderRegex(name) => write!(f, "header `{name}` does not match its regex"),
            Mismatch::Query(key) => write!(
                f,
                "query parameter `{key}` does not have the required value"
            ),
            Mismatch::ClientIp => f.write_str("client IP not in `client_ips`"),
        }
    }
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    pub index: usize,
    pub spec: RouteSpec,
    /// A split's weights moving from the previous table's (see `ramp`).
    pub ramp: Option<Ramp>,
}

/// Effective split weights moving linearly from `from` to `to` (fractions
/// per upstream index, each summing to 1) over `duration` from `start`.
#[derive(Debug, Clone)]
pub struct Ramp {
    pub from: Vec<(usize, f64)>,
    pub to: Vec<(usize, f64)>,
    pub start: std::time::Instant,
    pub duration: std::time::Duration,
    /// `rollback`: shared by the tables a ramp continues through.
    pub guard: Option<std::sync::Arc<rollback::Guard>>,
}

impl Ramp {
    /// 0.0 at the start, 1.0 once done.
    pub fn progress(&self, now: std::time::Instant) -> f64 {
        if self.duration.is_zero() {
            return 1.0;
        }
        (now.saturating_duration_since(self.start).as_secs_f64() / self.duration.as_secs_f64())
            .min(1.0)
    }

    /// The effective share of upstream `u` at `now` (the start's share
    /// once the ramp was rolled back).
    pub fn share(&self, u: usize, now: std::time::Instant) -> f64 {
        let of =
            |list: &[(usize, f64)]| list.iter().find(|(x, _)| *x == u).map_or(0.0, |(_, w)| *w);
        if self.rolled_back().is_some() {
            return of(&self.from);
        }
        let p = self.progress(now);
        of(&self.from) * (1.0 - p) + of(&self.to) * p
    }

    pub fn rolled_back(&self) -> Option<&rollback::RolledBack> {
        self.guard.as_ref()?.rolled_back()
    }

    /// Whether the ramp decides the shares at `now`: while it runs, and for
    /// good once it was rolled back.
    pub fn governs(&self, now: std::time::Instant) -> bool {
        self.rolled_back().is_some() || self.progress(now) < 1.0
    }

    /// Whether attempts count towards a rollback at `now`: while the ramp
    /// runs and for one window after it ends.
    pub fn watching(&self, now: std::time::Instant) -> Option<&rollback::Guard> {
        let guard = self.guard.as_deref()?;
        let until = self.start + self.duration + guard.spec.window;
        (guard.rolled_back().is_none() && now < until).then_some(guard)
    }

    /// Every upstream in either end of the ramp.
    pub fn upstreams(&self) -> impl Iterator<Item = usize> + '_ {
        let mut all: Vec<usize> = self.from.iter().chain(&self.to).map(|(u, _)| *u).collect();
        all.sort_unstable();
        all.dedup();
        all.into_iter()
    }
}

/// A split's weights as fractions summing to 1.
pub fn fractions(parts: &[(usize, u32)]) -> Vec<(usize, f64)> {
    let total: f64 = parts.iter().map(|(_, w)| f64::from(*w)).sum();
    parts
        .iter()
        .map(|(u, w)| {
            (
                *u,
                if total > 0.0 {
                    f64::from(*w) / total
                } else {
                    0.0
                },
            )
        })
        .collect()
}

impl Route {
    /// `Ok` when every condition matches, else the first that does not.
    pub fn check(&self, req: &RequestView<'_>) -> Result<(), Mismatch<'_>> {
        let s = &self.spec;
        if !s.hosts.is_empty()
            && !req
                .host
                .is_some_and(|h| s.hosts.iter().any(|p| host_matches(p, h)))
        {
            return Err(Mismatch::Host);
        }
        if let Some(p) = &s.path
            && !path_matches(p, req.path)
        {
            return Err(Mismatch::Path);
        }
        if !s.methods.is_empty() && !s.methods.contains(req.method) {
            return Err(Mismatch::Method);
        }
        for (name, value) in &s.headers {
            if !req.headers.get_all(name).iter().any(|v| v == value) {
                return Err(Mismatch::Header(name.as_str()));
            }
        }
        for (name, re) in &s.header_regex {
            let hit = req
                .headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| re.is_match(v)));
            if !hit {
                return Err(Mismatch::HeaderRegex(name.as_str()));
            }
        }
        for (key, value) in &s.query {
            if !req.query.is_some_and(|q| query_has(q, key, value)) {
                return Err(Mismatch::Query(key));
            }
        }
        if !s.client_ips.is_empty() && !s.client_ips.iter().any(|net| net.contains(&req.client_ip))
        {
            return Err(Mismatch::ClientIp);
        }
        Ok(())
    }
}

pub fn host_matches(pattern: &HostPattern, host: &str) -> bool {
    match pattern {
        HostPattern::Exact(h) => h == host,
        HostPattern::Wildcard(suffix) => {
            host.len() > suffix.len() && host.ends_with(suffix.as_str())
        }
    }
}

pub fn path_matches(pattern: &PathMatch, path: &str) -> bool {
    match pattern {
        PathMatch::Exact(p) => p == path,
        PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        PathMatch::Regex(re) => re.is_match(path),
    }
}

/// Lower-cases a Host / `:authority` value and drops its port and a
/// trailing dot. Borrows when nothing changes (the common case).
pub fn normalize_host(raw: &str) -> Cow<'_, str> {
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: keep the brackets, drop the port after `]`.
        match rest.find(']') {
            Some(end) => &raw[..end + 2],
            None => raw,
        }
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Whether the query string has `key=value` (form-decoded on both sides).
pub fn query_has(query: &str, key: &str, value: &str) -> bool {
    query.split('&').any(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        form_decode(k) == key && form_decode(v) == value
    })
}

fn form_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: Option<&u8>) -> Option<u8> {
    (*b? as char)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Path -> route indices, ascending.
type PathMap = HashMap<Box<str>, Vec<usize>>;

/// Route indices touched by requests with the same host, by path.
#[derive(Debug, Default)]
struct Bucket {
    exact: PathMap,
    /// (prefix length, prefix -> routes), one entry per distinct length.
    prefixes: Vec<(usize, PathMap)>,
    /// Routes with no path condition or a regex: checked for every request.
    rest: Vec<usize>,
}

impl Bucket {
    fn add(&mut self, index: usize, path: Option<&PathMatch>) {
        match path {
            Some(PathMatch::Exact(p)) => {
                self.exact.entry(p.as_str().into()).or_default().push(index)
            }
            Some(PathMatch::Prefix(p)) => {
                let slot = match self.prefixes.iter().position(|(len, _)| *len == p.len()) {
                    Some(i) => i,
                    None => {
                        self.prefixes.push((p.len(), HashMap::new()));
                        self.prefixes.len() - 1
                    }
                };
                self.prefixes[slot]
                    .1
                    .entry(p.as_str().into())
                    .or_default()
                    .push(index);
            }
            Some(PathMatch::Regex(_)) | None => self.rest.push(index),
        }
    }

    /// Lowers `best` to the smallest matching route index in this bucket.
    fn best_match(&self, routes: &[Route], req: &RequestView<'_>, best: &mut usize) {
        let mut scan = |list: &[usize]| {
            for &i in list {
                if i >= *best {
                    return;
                }
                if routes[i].check(req).is_ok() {
                    *best = i;
                    return;
                }
            }
        };
        if let Some(list) = self.exact.get(req.path) {
            scan(list);
        }
        for (len, map) in &self.prefixes {
            if let Some(list) = req.path.get(..*len).and_then(|p| map.get(p)) {
                scan(list);
            }
        }
        scan(&self.rest);
    }
}

/// The compiled route table.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    exact_hosts: HashMap<Box<str>, Bucket>,
    wildcard_hosts: HashMap<Box<str>, Bucket>,
    any_host: Bucket,
    /// Routes whose ramp starts when the table goes live.
    fresh_ramps: Vec<usize>,
}

impl RouteTable {
    pub fn new(specs: Vec<RouteSpec>) -> RouteTable {
        let mut table = RouteTable::default();
        for (index, spec) in specs.into_iter().enumerate() {
            let path = spec.path.as_ref();
            if spec.hosts.is_empty() {
                table.any_host.add(index, path);
            }
            for host in &spec.hosts {
                let bucket = match host {
                    HostPattern::Exact(h) => {
                        table.exact_hosts.entry(h.as_str().into()).or_default()
                    }
                    HostPattern::Wildcard(s) => {
                        table.wildcard_hosts.entry(s.as_str().into()).or_default()
                    }
                };
                bucket.add(index, path);
            }
            table.routes.push(Route {
                index,
                spec,
                ramp: None,
            });
        }
        table
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Sets a ramp on route `index` (when a table is built); a
    /// `continued` ramp keeps its start, a new one starts when the table is
    /// swapped in (`restart_ramps`).
    pub fn set_ramp(&mut self, index: usize, ramp: Ramp, continued: bool) {
        if let Some(r) = self.routes.get_mut(index) {
            r.ramp = Some(ramp);
            if !continued {
                self.fresh_ramps.push(index);
            }
        }
    }

    /// Starts the new ramps now (the table goes live).
    pub fn restart_ramps(&mut self, now: std::time::Instant) {
        for i in std::mem::take(&mut self.fresh_ramps) {
            if let Some(ramp) = self.routes.get_mut(i).and_then(|r| r.ramp.as_mut()) {
                ramp.start = now;
            }
        }
    }

    /// The first route in file order whose every condition matches.
    pub fn select(&self, req: &RequestView<'_>) -> Option<&Route> {
        let mut best = usize::MAX;
        if let Some(host) = req.host {
            if let Some(bucket) = self.exact_hosts.get(host) {
                bucket.best_match(&self.routes, req, &mut best);
            }
            if !self.wildcard_hosts.is_empty() {
                // `a.b.example.com` -> `.b.example.com`, `.example.com`, `.com`
                for (i, _) in host.match_indices('.') {
                    if let Some(bucket) = self.wildcard_hosts.get(&host[i..]) {
                        bucket.best_match(&self.routes, req, &mut best);
                    }
                }
            }
        }
        self.any_host.best_match(&self.routes, req, &mut best);
        self.routes.get(best)
    }
}

#[cfg(test)]
mod tests;
