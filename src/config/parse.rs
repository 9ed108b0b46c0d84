//! TOML tree -> domain types. Every check that can fail records an error
//! with the span of the offending key or value and carries on, so one run of
//! `steer check` reports everything wrong with a file.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use regex::Regex;
use toml::de::{DeTable, DeValue};

use super::walk::{Errors, Span, Table, as_integer, as_table, type_error};
use super::{
    AdminSettings, AdminToken, ClientIpHeader, GateTimeout, RateKey, RateLimitSpec, ReloadSettings,
    RollbackSpec, Warmup,
};
use super::{
    Balance, CertificateFiles, ClientAuth, ClientAuthMode, EndpointAddr, HeaderRules, HealthSpec,
    HostPattern, Listen, LogSettings, PathMatch, Protocol, ProxySettings, RouteSpec, Target,
    UpstreamSpec, parse_cidr, parse_duration,
};

pub(super) struct Parsed {
    pub(super) listen: Listen,
    pub(super) tls: Vec<CertificateFiles>,
    pub(super) proxy: ProxySettings,
    pub(super) log: LogSettings,
    pub(super) reload: ReloadSettings,
    pub(super) admin: AdminSettings,
    pub(super) upstreams: Vec<UpstreamSpec>,
    pub(super) routes: Vec<super::RouteSpec>,
}

const LISTEN_KEYS: &[&str] = &["http", "https", "admin", "upgrade_socket", "client_auth"];
const CLIENT_AUTH_KEYS: &[&str] = &["ca", "mode"];
const TLS_KEYS: &[&str] = &["certificates"];
const CERTIFICATE_KEYS: &[&str] = &["cert", "key"];
const PROXY_KEYS: &[&str] = &[
    "trusted_proxies",
    "connect_timeout",
    "request_timeout",
    "idle_timeout",
    "dns_refresh",
    "shutdown_delay",
    "drain_timeout",
    "max_header_bytes",
    "max_headers",
    "tls_handshake_timeout",
    "header_read_timeout",
    "max_connections",
    "max_connections_per_ip",
    "send_timeout",
    "max_concurrent_streams",
    "upgrades",
    "tunnel_idle_timeout",
    "response_idle_timeout",
    "underscores_in_headers",
    "normalize_path",
    "client_ip_header",
];
const ADMIN_KEYS: &[&str] = &["allowed_hosts", "token_file"];
const RATE_LIMIT_KEYS: &[&str] = &["requests", "per", "burst", "key"];
const RELOAD_KEYS: &[&str] = &["gate_timeout", "on_gate_timeout"];
const LOG_KEYS: &[&str] = &["access"];
const WARMUP_KEYS: &[&str] = &["path", "host", "expect_body"];
const HEADER_RULE_KEYS: &[&str] = &["set", "remove"];
const ROLLBACK_KEYS: &[&str] = &["max_error_rate", "min_requests", "window"];

/// Every table the parser reads with its keys, keyed by how
/// docs/configuration.md heads its section (the docs test checks that the
/// reference lists each key there).
#[cfg(test)]
pub(super) const SECTIONS: &[(&str, &[&str])] = &[
    ("### `[listen]`", LISTEN_KEYS),
    ("### `[listen.client_auth]`", CLIENT_AUTH_KEYS),
    ("### `[[tls.certificates]]`", CERTIFICATE_KEYS),
    ("### `[proxy]`", PROXY_KEYS),
    ("### `[health]`", HEALTH_KEYS),
    ("### `[upstreams.NAME]`", UPSTREAM_KEYS),
    ("### `[[routes]]`", ROUTE_KEYS),
    ("### `[log]`", LOG_KEYS),
    ("### `[reload]`", RELOAD_KEYS),
    ("### `[admin]`", ADMIN_KEYS),
];

/// Keys of inline tables, documented in the row of the key that holds
/// them (`rate_limit = { requests, per, burst, key }`).
#[cfg(test)]
pub(super) const INLINE: &[(&str, &str, &[&str])] = &[
    ("### `[[routes]]`", "rate_limit", RATE_LIMIT_KEYS),
    ("### `[[routes]]`", "request_headers", HEADER_RULE_KEYS),
    ("### `[health]`", "warmup", WARMUP_KEYS),
    ("### `[[routes]]`", "rollback", ROLLBACK_KEYS),
];

const TOP_KEYS: &[&str] = &[
    "reload",
    "admin",
    "listen",
    "tls",
    "proxy",
    "health",
    "upstreams",
    "routes",
    "log",
];

pub(super) fn document(text: &str, base: &Path) -> Result<Parsed, Errors> {
    let mut errors = Errors::default();
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for e in syntax {
            let span = e.span().unwrap_or(0..0);
            let hint = super::walk::quote_hint(text, span.start)
                .filter(|_| !e.message().contains("quoted"));
            let message = match hint {
                Some(hint) => format!("{} ({hint})", e.message()),
                None => e.message().to_owned(),
            };
            errors.push(span, message);
        }
        return Err(errors);
    }
    let root = Table {
        inner: doc.get_ref(),
        span: 0..0,
        name: "the file",
    };
    root.check_keys(&mut errors, TOP_KEYS);
    let listen = listen(&mut errors, &root, base);
    let tls = tls(&mut errors, &root, base);
    let tls_given = root
        .get("tls")
        .and_then(|t| {
            t.get_ref()
                .as_table()?
                .get("certificates")?
                .get_ref()
                .as_array()
                .map(|a| a.len())
        })
        .unwrap_or(0);
    if listen.https.is_some() && tls_given == 0 {
        let span = root.get("listen").map_or(0..0, |v| v.span());
        errors.push(
            span,
            "`listen.https` needs at least one [[tls.certificates]] entry",
        );
    }
    let proxy = proxy(&mut errors, &root);
    let log = log(&mut errors, &root);
    let reload = reload(&mut errors, &root);
    let admin = admin(&mut errors, &root, base);
    let health_defaults = root
        .table(&mut errors, "health", "[health]")
        .map(|t| health(&mut errors, &t, &HealthSpec::default()))
        .unwrap_or_default();
    let (upstreams, names) = upstreams(&mut errors, &root, &health_defaults, base);
    let routes = routes(&mut errors, &root, &names);
    if errors.list.is_empty() {
        Ok(Parsed {
            listen,
            tls,
            proxy,
            log,
            reload,
            admin,
            upstreams,
            routes,
        })
    } else {
        Err(errors)
    }
}

fn listen(errors: &mut Errors, root: &Table<'_, '_>, base: &Path) -> Listen {
    let mut listen = Listen {
        http: None,
        https: None,
        admin: None,
        upgrade_socket: None,
        client_auth: None,
    };
    let Some(table) = root.table(errors, "listen", "[listen]") else {
        if root.get("listen").is_none() {
            errors.push(
                0..0,
                "the file needs a [listen] table with `http` or `https`",
            );
        }
        return listen;
    };
    table.check_keys(errors, LISTEN_KEYS);
    let mut addr = |key: &str| {
        let (text, span) = table.str(errors, key)?;
        text.parse::<SocketAddr>()
            .map_err(|_| {
                errors.push(
                    span,
                    format!("`{key}` must be IP:PORT, like 0.0.0.0:8080; got `{text}`"),
                )
            })
            .ok()
    };
    listen.http = addr("http");
    listen.https = addr("https");
    listen.admin = addr("admin");
    listen.upgrade_socket = table
        .str(errors, "upgrade_socket")
        .map(|(s, _)| base.join(s));
    if table.get("http").is_none() && table.get("https").is_none() {
        errors.push(
            table.span.clone(),
            "[listen] needs at least one of `http` or `https`",
        );
    }
    if let Some(auth) = table.table(errors, "client_auth", "[listen.client_auth]") {
        listen.client_auth = client_auth(errors, &auth, base);
        if listen.https.is_none() {
            errors.push(
                auth.span.clone(),
                "[listen.client_auth] needs an `https` listener",
            );
        }
    }
    listen
}

/// `[listen.client_auth]`: the CA bundle must build a verifier now, so
/// that `steer check` and a reload reject what a handshake would.
fn client_auth(errors: &mut Errors, t: &Table<'_, '_>, base: &Path) -> Option<ClientAuth> {
    t.check_keys(errors, CLIENT_AUTH_KEYS);
    let mode = match t.str(errors, "mode") {
        None | Some(("require", _)) => ClientAuthMode::Require,
        Some(("request", _)) => ClientAuthMode::Request,
        Some((other, span)) => {
            errors.push(
                span,
                format!("`mode` must be \"require\" or \"request\"; got `{other}`"),
            );
            ClientAuthMode::Require
        }
    };
    let (file, span) = t.required_str(errors, "ca")?;
    let ca = base.join(file);
    if let Some(problem) = file_problem(&ca) {
        errors.push(span, format!("`ca` file `{}` {problem}", ca.display()));
        return None;
    }
    let auth = ClientAuth { ca, mode };
    match crate::tls::client_verifier(&auth) {
        Ok(_) => Some(auth),
        Err(e) => {
            errors.push(span, format!("`ca`: {e}"));
            None
        }
    }
}

fn tls(errors: &mut Errors, root: &Table<'_, '_>, base: &Path) -> Vec<CertificateFiles> {
    let Some(table) = root.table(errors, "tls", "[tls]") else {
        return Vec::new();
    };
    table.check_keys(errors, TLS_KEYS);
    let Some(value) = table.get("certificates") else {
        return Vec::new();
    };
    let DeValue::Array(items) = value.get_ref() else {
        type_error(
            errors,
            value.span(),
            "certificates",
            "an array of tables",
            value.get_ref(),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items.iter() {
        let Some(cert) = as_table(errors, item, "[[tls.certificates]]") else {
            continue;
        };
        cert.check_keys(errors, CERTIFICATE_KEYS);
        let mut file = |key: &str| {
            let (name, span) = cert.required_str(errors, key)?;
            let path = base.join(name);
            match file_problem(&path) {
                None => Some(path),
                Some(problem) => {
                    errors.push(span, format!("`{key}` file `{}` {problem}", path.display()));
                    None
                }
            }
        };
        if let (Some(cert_path), Some(key)) = (file("cert"), file("key")) {
            let files = CertificateFiles {
                cert: cert_path,
                key,
                at: cert.get("cert").map_or(cert.span.start, |v| v.span().start),
            };
            // The pair must parse, match and be unexpired, so that `steer
            // check` catches what would stop TLS from being served.
            match crate::tls::load_pair(&files) {
                Ok(_) => out.push(files),
                Err(e) => {
                    let span = cert.get("cert").map_or(cert.span.clone(), |v| v.span());
                    errors.push(span, e.to_string());
                }
            }
        }
    }
    out
}

/// What is wrong with a file the config names, if anything: it must exist
/// and be a regular file (or a symlink to one; see `read`).
fn file_problem(path: &Path) -> Option<&'static str> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => None,
        Ok(_) => Some("is not a regular file"),
        Err(_) => Some("does not exist"),
    }
}

fn duration(errors: &mut Errors, table: &Table<'_, '_>, key: &str, default: Duration) -> Duration {
    let Some((text, span)) = table.str(errors, key) else {
        return default;
    };
    match parse_duration(text) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            errors.push(span, format!("`{key}` must be more than zero"));
            default
        }
        Err(message) => {
            errors.push(span, format!("`{key}`: {message}"));
            default
        }
    }
}

fn positive(errors: &mut Errors, table: &Table<'_, '_>, key: &str, default: u32, max: u32) -> u32 {
    let Some((n, span)) = table.integer(errors, key) else {
        return default;
    };
    match u32::try_from(n) {
        Ok(n) if (1..=max).contains(&n) => n,
        _ => {
            errors.push(span, format!("`{key}` must be between 1 and {max}"));
            default
        }
    }
}

fn proxy(errors: &mut Errors, root: &Table<'_, '_>) -> ProxySettings {
    let defaults = ProxySettings::default();
    let Some(table) = root.table(errors, "proxy", "[proxy]") else {
        return defaults;
    };
    table.check_keys(errors, PROXY_KEYS);
    let trusted_proxies = table
        .str_list(errors, "trusted_proxies")
        .into_iter()
        .filter_map(|(text, span)| parse_cidr(text).map_err(|m| errors.push(span, m)).ok())
        .collect();
    ProxySettings {
        trusted_proxies,
        connect_timeout: duration(errors, &table, "connect_timeout", defaults.connect_timeout),
        request_timeout: duration(errors, &table, "request_timeout", defaults.request_timeout),
        idle_timeout: duration(errors, &table, "idle_timeout", defaults.idle_timeout),
        dns_refresh: duration(errors, &table, "dns_refresh", defaults.dns_refresh),
        shutdown_delay: zero_ok_duration(errors, &table, "shutdown_delay", defaults.shutdown_delay),
        drain_timeout: zero_ok_duration(errors, &table, "drain_timeout", defaults.drain_timeout),
        max_header_bytes: positive(errors, &table, "max_header_bytes", 32 * 1024, 1 << 20) as usize,
        max_headers: positive(errors, &table, "max_headers", 100, 1000) as usize,
        tls_handshake_timeout: duration(
            errors,
            &table,
            "tls_handshake_timeout",
            defaults.tls_handshake_timeout,
        ),
        header_read_timeout: duration(
            errors,
            &table,
            "header_read_timeout",
            defaults.header_read_timeout,
        ),
        max_connections: table
            .get("max_connections")
            .map(|_| positive(errors, &table, "max_connections", 0, 10_000_000) as usize),
        max_connections_per_ip: table
            .get("max_connections_per_ip")
            .map(|_| positive(errors, &table, "max_connections_per_ip", 0, 10_000_000) as usize),
        send_timeout: duration(errors, &table, "send_timeout", defaults.send_timeout),
        max_concurrent_streams: positive(
            errors,
            &table,
            "max_concurrent_streams",
            defaults.max_concurrent_streams,
            10_000,
        ),
        upgrades: upgrade_tokens(errors, &table).unwrap_or(defaults.upgrades),
        tunnel_idle_timeout: duration(
            errors,
            &table,
            "tunnel_idle_timeout",
            defaults.tunnel_idle_timeout,
        ),
        response_idle_timeout: duration(
            errors,
            &table,
            "response_idle_timeout",
            defaults.response_idle_timeout,
        ),
        underscores_in_headers: table
            .bool(errors, "underscores_in_headers")
            .unwrap_or(defaults.underscores_in_headers),
        normalize_path: table
            .bool(errors, "normalize_path")
            .unwrap_or(defaults.normalize_path),
        client_ip_header: match table.str(errors, "client_ip_header") {
            None => defaults.client_ip_header,
            Some((text, span)) => match text.to_ascii_lowercase().as_str() {
                "x-forwarded-for" => ClientIpHeader::XForwardedFor,
                "forwarded" => ClientIpHeader::Forwarded,
                _ => {
                    errors.push(
                        span,
                        format!(
                            "`client_ip_header` must be \"x-forwarded-for\" or \"forwarded\"; got `{text}`"
                        ),
                    );
                    defaults.client_ip_header
                }
            },
        },
    }
}

/// `upgrades`: protocol tokens (RFC 9110 §7.8), kept lower-case. `None`
/// when the key is absent.
fn upgrade_tokens(errors: &mut Errors, table: &Table<'_, '_>) -> Option<Vec<String>> {
    table.get("upgrades")?;
    let mut out = Vec::new();
    for (text, span) in table.str_list(errors, "upgrades") {
        let token = text.split('/').next().unwrap_or("");
        if !crate::proxy::headers::is_token(token) {
            errors.push(
                span,
                format!(
                    "`upgrades` entries must be protocol names like \"websocket\"; got `{text}`"
                ),
            );
            continue;
        }
        out.push(token.to_ascii_lowercase());
    }
    Some(out)
}

fn admin(errors: &mut Errors, root: &Table<'_, '_>, base: &Path) -> AdminSettings {
    let Some(table) = root.table(errors, "admin", "[admin]") else {
        return AdminSettings::default();
    };
    table.check_keys(errors, ADMIN_KEYS);
    let allowed_hosts = table
        .str_list(errors, "allowed_hosts")
        .into_iter()
        .filter_map(|(host, span)| {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            let ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !ok {
                errors.push(
                    span,
                    format!(
                        "`allowed_hosts` entries must be host names without a port; got `{host}`"
                    ),
                );
            }
            ok.then_some(host)
        })
        .collect();
    let (token_file, token) = match table.str(errors, "token_file") {
        None => (None, None),
        Some((name, span)) => {
            let path = base.join(name);
            match super::read::token(&path) {
                Ok(token) => (Some(path), Some(AdminToken::new(token))),
                Err(e) => {
                    errors.push(span, format!("`token_file` `{}`: {e}", path.display()));
                    (None, None)
                }
            }
        }
    };
    AdminSettings {
        allowed_hosts,
        token_file,
        token,
    }
}

/// `"1MiB"`, `"512KiB"`, `"10MB"`, `"2048"` (bytes), or an integer.
fn size(errors: &mut Errors, t: &Table<'_, '_>, key: &str) -> Option<u64> {
    let value = t.get(key)?;
    let parsed = match value.get_ref() {
        DeValue::Integer(_) => {
            as_integer(errors, value, key).and_then(|(n, _)| u64::try_from(n).ok())
        }
        DeValue::String(s) => parse_size(s),
        other => {
            type_error(errors, value.span(), key, "a size like \"1MiB\"", other);
            return None;
        }
    };
    match parsed {
        Some(n) if n > 0 => Some(n),
        _ => {
            errors.push(
                value.span(),
                format!("`{key}` must be a positive size like \"10MiB\", \"512KiB\" or bytes"),
            );
            None
        }
    }
}

fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

fn rate_limit(errors: &mut Errors, t: &Table<'_, '_>) -> Option<RateLimitSpec> {
    let table = t.table(errors, "rate_limit", "`rate_limit`")?;
    table.check_keys(errors, RATE_LIMIT_KEYS);
    let requests = positive(errors, &table, "requests", 0, u32::MAX);
    if table.get("requests").is_none() {
        errors.push(table.span.clone(), "`rate_limit` needs `requests`");
    }
    let per = duration(errors, &table, "per", Duration::from_secs(1));
    let burst = table.get("burst").map_or(requests, |_| {
        positive(errors, &table, "burst", requests, u32::MAX)
    });
    let key = match table.str(errors, "key") {
        None | Some(("client_ip", _)) => RateKey::ClientIp,
        Some((name, span)) => match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => RateKey::Header(h),
            Err(_) => {
                errors.push(
                    span,
                    format!("`key` must be \"client_ip\" or a header name; got `{name}`"),
                );
                RateKey::ClientIp
            }
        },
    };
    Some(RateLimitSpec {
        requests,
        per,
        burst,
        key,
    })
}

fn reload(errors: &mut Errors, root: &Table<'_, '_>) -> ReloadSettings {
    let defaults = ReloadSettings::default();
    let Some(table) = root.table(errors, "reload", "[reload]") else {
        return defaults;
    };
    table.check_keys(errors, RELOAD_KEYS);
    let on_gate_timeout = match table.str(errors, "on_gate_timeout") {
        None | Some(("keep", _)) => GateTimeout::Keep,
        Some(("apply", _)) => GateTimeout::Apply,
        Some((other, span)) => {
            errors.push(
                span,
                format!("`on_gate_timeout` must be \"keep\" or \"apply\"; got `{other}`"),
            );
            GateTimeout::Keep
        }
    };
    ReloadSettings {
        gate_timeout: zero_ok_duration(errors, &table, "gate_timeout", defaults.gate_timeout),
        on_gate_timeout,
    }
}

fn log(errors: &mut Errors, root: &Table<'_, '_>) -> LogSettings {
    let Some(table) = root.table(errors, "log", "[log]") else {
        return LogSettings::default();
    };
    table.check_keys(errors, LOG_KEYS);
    let access = match table.get("access").map(|v| (v, v.get_ref())) {
        None => true,
        Some((_, DeValue::Boolean(b))) => *b,
        Some((v, other)) => {
            type_error(errors, v.span(), "access", "a boolean", other);
            true
        }
    };
    LogSettings { access }
}

/// Durations where `"0s"` is a meaningful choice (no delay, no drain).
fn zero_ok_duration(
    errors: &mut Errors,
    table: &Table<'_, '_>,
    key: &str,
    default: Duration,
) -> Duration {
    let Some((text, span)) = table.str(errors, key) else {
        return default;
    };
    parse_duration(text).unwrap_or_else(|message| {
        errors.push(span, format!("`{key}`: {message}"));
        default
    })
}

const HEALTH_KEYS: &[&str] = &[
    "path",
    "grpc_service",
    "warmup",
    "host",
    "interval",
    "timeout",
    "healthy_threshold",
    "unhealthy_threshold",
];

fn health(errors: &mut Errors, table: &Table<'_, '_>, defaults: &HealthSpec) -> HealthSpec {
    table.check_keys(errors, HEALTH_KEYS);
    let path = match table.str(errors, "path") {
        Some((p, _)) if p.starts_with('/') && p.parse::<http::uri::PathAndQuery>().is_ok() => {
            p.to_owned()
        }
        Some((p, span)) => {
            errors.push(
                span,
                format!("health `path` must be a path starting with `/`; got `{p}`"),
            );
            defaults.path.clone()
        }
        None => defaults.path.clone(),
    };
    let host = match table.str(errors, "host") {
        Some((h, span)) if HeaderValue::from_str(h).is_err() || h.is_empty() => {
            errors.push(
                span,
                format!("health `host` `{h}` is not a valid Host value"),
            );
            None
        }
        Some((h, _)) => Some(h.to_owned()),
        None => defaults.host.clone(),
    };
    let grpc_service = match table.str(errors, "grpc_service") {
        Some((name, _)) => Some(name.to_owned()),
        None => defaults.grpc_service.clone(),
    };
    let warmup = match table.get("warmup") {
        Some(v) => warmups(errors, v),
        None => defaults.warmup.clone(),
    };
    HealthSpec {
        path,
        grpc_service,
        warmup,
        host,
        interval: duration(errors, table, "interval", defaults.interval),
        timeout: duration(errors, table, "timeout", defaults.timeout),
        healthy_threshold: positive(
            errors,
            table,
            "healthy_threshold",
            defaults.healthy_threshold,
            100,
        ),
        unhealthy_threshold: positive(
            errors,
            table,
            "unhealthy_threshold",
            defaults.unhealthy_threshold,
            100,
        ),
    }
}

fn warmups(errors: &mut Errors, value: &super::walk::Value<'_>) -> Vec<Warmup> {
    let DeValue::Array(items) = value.get_ref() else {
        type_error(
            errors,
            value.span(),
            "warmup",
            "an array of tables",
            value.get_ref(),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items.iter() {
        let Some(t) = as_table(errors, item, "a `warmup` entry") else {
            continue;
        };
        t.check_keys(errors, WARMUP_KEYS);
        let Some((path, span)) = t.required_str(errors, "path") else {
            continue;
        };
        if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
            errors.push(
                span,
                format!("warm-up `path` must be a path starting with `/`; got `{path}`"),
            );
            continue;
        }
        out.push(Warmup {
            path: path.to_owned(),
            host: t.str(errors, "host").map(|(h, _)| h.to_owned()),
            expect_body: t.str(errors, "expect_body").map(|(b, _)| b.to_owned()),
        });
    }
    out
}

type Names = HashMap<String, usize>;

fn upstreams(
    errors: &mut Errors,
    root: &Table<'_, '_>,
    health_defaults: &HealthSpec,
    base: &Path,
) -> (Vec<UpstreamSpec>, Names) {
    let mut names = Names::new();
    let mut out = Vec::new();
    let Some(table) = root.table(errors, "upstreams", "[upstreams]") else {
        if root.get("upstreams").is_none() {
            errors.push(0..0, "the file needs at least one [upstreams.NAME] table");
        }
        return (out, names);
    };
    if table.inner.is_empty() {
        errors.push(
            table.span.clone(),
            "the file needs at least one [upstreams.NAME] table",
        );
    }
    for (key, value) in table.inner.iter() {
        let name = key.get_ref().as_ref();
        if !valid_name(name) {
            errors.push(
                key.span(),
                format!("upstream name `{name}` may hold only letters, digits, `-`, `_` and `.`"),
            );
        }
        let label = format!("[upstreams.{name}]");
        let Some(t) = as_table(errors, value, &label) else {
            continue;
        };
        names.insert(name.to_owned(), out.len());
        let mut spec = upstream(errors, &t, name, health_defaults, base);
        spec.at = key.span().start;
        out.push(spec);
    }
    (out, names)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

const UPSTREAM_KEYS: &[&str] = &[
    "endpoints",
    "protocol",
    "balance",
    "health",
    "tls_ca",
    "tls_server_name",
    "tls_client_cert",
    "tls_client_key",
];

fn upstream(
    errors: &mut Errors,
    t: &Table<'_, '_>,
    name: &str,
    health_defaults: &HealthSpec,
    base: &Path,
) -> UpstreamSpec {
    t.check_keys(errors, UPSTREAM_KEYS);
    let endpoints: Vec<EndpointAddr> = t
        .str_list(errors, "endpoints")
        .into_iter()
        .filter_map(|(text, span)| endpoint(text).map_err(|m| errors.push(span, m)).ok())
        .collect();
    if t.get("endpoints").is_none() {
        errors.push(t.span.clone(), format!("{} needs `endpoints`", t.name));
    } else if endpoints.is_empty() && t.str_list(&mut Errors::default(), "endpoints").is_empty() {
        let span = t.get("endpoints").map_or(0..0, |v| v.span());
        errors.push(
            span,
            "`endpoints` must list at least one IP:PORT or HOST:PORT",
        );
    }
    let protocol = match t.str(errors, "protocol") {
        None | Some(("http1", _)) => Protocol::Http1,
        Some(("h2c", _)) => Protocol::H2c,
        Some(("https", _)) => Protocol::Https,
        Some((other, span)) => {
            errors.push(
                span,
                format!("`protocol` must be \"http1\", \"h2c\" or \"https\"; got `{other}`"),
            );
            Protocol::Http1
        }
    };
    let balance = match t.str(errors, "balance") {
        None | Some(("round_robin", _)) => Balance::RoundRobin,
        Some(("least_request", _)) => Balance::LeastRequest,
        Some((other, span)) => {
            errors.push(
                span,
                format!("`balance` must be \"round_robin\" or \"least_request\"; got `{other}`"),
            );
            Balance::RoundRobin
        }
    };
    let health = match t.get("health").map(|v| (v, v.get_ref())) {
        None | Some((_, DeValue::Boolean(true))) => Some(health_defaults.clone()),
        Some((_, DeValue::Boolean(false))) => None,
        Some((v, _)) => as_table(errors, v, "health").map(|h| health(errors, &h, health_defaults)),
    };
    let tls_ca = t.str(errors, "tls_ca").and_then(|(file, span)| {
        let path = base.join(file);
        if let Some(problem) = file_problem(&path) {
            errors.push(
                span,
                format!("`tls_ca` file `{}` {problem}", path.display()),
            );
            return None;
        }
        match crate::tls::client::client_configs(Some(&path), None) {
            Ok(_) => Some(path),
            Err(e) => {
                errors.push(span, format!("`tls_ca`: {e}"));
                None
            }
        }
    });
    let tls_server_name = t.str(errors, "tls_server_name").and_then(|(name, span)| {
        crate::tls::client::server_name(Some(name), "")
            .map(|_| name.to_owned())
            .map_err(|e| errors.push(span, e))
            .ok()
    });
    let tls_client_cert = client_cert(errors, t, base);
    if protocol != Protocol::Https {
        for key in [
            "tls_ca",
            "tls_server_name",
            "tls_client_cert",
            "tls_client_key",
        ] {
            if let Some(v) = t.get(key) {
                errors.push(
                    v.span(),
                    format!("`{key}` applies only to protocol = \"https\""),
                );
            }
        }
    }
    if let (Some(h), Protocol::Http1) = (&health, protocol)
        && h.grpc_service.is_some()
    {
        let span = t.get("health").map_or(t.span.clone(), |v| v.span());
        errors.push(
            span,
            "gRPC health checks (`grpc_service`) need protocol \"h2c\" or \"https\"",
        );
    }
    UpstreamSpec {
        name: name.to_owned(),
        at: 0,
        endpoints,
        protocol,
        balance,
        health,
        tls_ca,
        tls_server_name,
        tls_client_cert,
    }
}

/// `tls_client_cert` and `tls_client_key`: both or neither, a pair that
/// loads (parses, matches, has not expired).
fn client_cert(errors: &mut Errors, t: &Table<'_, '_>, base: &Path) -> Option<CertificateFiles> {
    let cert = t.str(errors, "tls_client_cert");
    let key = t.str(errors, "tls_client_key");
    let ((cert, span), (key, _)) = match (cert, key) {
        (None, None) => return None,
        (Some(c), Some(k)) => (c, k),
        (Some((_, span)), None) | (None, Some((_, span))) => {
            errors.push(span, "`tls_client_cert` and `tls_client_key` go together");
            return None;
        }
    };
    let files = CertificateFiles {
        cert: base.join(cert),
        key: base.join(key),
        at: span.start,
    };
    for path in [&files.cert, &files.key] {
        if let Some(problem) = file_problem(path) {
            errors.push(span.clone(), format!("`{}` {problem}", path.display()));
            return None;
        }
    }
    match crate::tls::load_pair(&files) {
        Ok(_) => Some(files),
        Err(e) => {
            errors.push(span, format!("`tls_client_cert`: {e}"));
            None
        }
    }
}

/// `IP:PORT`, `[v6]:PORT` or `HOST:PORT`.
pub(crate) fn endpoint(text: &str) -> Result<EndpointAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(EndpointAddr::Ip(addr));
    }
    let bad = || format!("endpoint `{text}` must be IP:PORT or HOST:PORT");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !host_ok || port == 0 {
        return Err(bad());
    }
    Ok(EndpointAddr::Name {
        host: host.to_ascii_lowercase(),
        port,
    })
}

const ROUTE_KEYS: &[&str] = &[
    "name",
    "hosts",
    "path",
    "path_prefix",
    "path_regex",
    "methods",
    "headers",
    "header_regex",
    "query",
    "client_ips",
    "upstream",
    "split",
    "fallback",
    "strip_prefix",
    "request_headers",
    "response_headers",
    "ramp",
    "rollback",
    "rate_limit",
    "max_body",
];

fn routes(errors: &mut Errors, root: &Table<'_, '_>, names: &Names) -> Vec<RouteSpec> {
    let items = match root.get("routes").map(|v| (v, v.get_ref())) {
        Some((_, DeValue::Array(items))) if !items.is_empty() => items,
        Some((v, DeValue::Array(_))) => {
            errors.push(v.span(), "the file needs at least one [[routes]] entry");
            return Vec::new();
        }
        Some((v, other)) => {
            type_error(
                errors,
                v.span(),
                "routes",
                "an array of tables ([[routes]])",
                other,
            );
            return Vec::new();
        }
        None => {
            errors.push(0..0, "the file needs at least one [[routes]] entry");
            return Vec::new();
        }
    };
    let mut seen: HashMap<String, Span> = HashMap::new();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let label = format!("[[routes]] #{}", i + 1);
        let Some(t) = as_table(errors, item, &label) else {
            continue;
        };
        if let Some((name, span)) = t.str(&mut Errors::default(), "name")
            && seen.insert(name.to_owned(), span.clone()).is_some()
        {
            errors.push(span, format!("duplicate route name `{name}`"));
        }
        if let Some(route) = route(errors, &t, names) {
            out.push(route);
        }
    }
    out
}

fn route(errors: &mut Errors, t: &Table<'_, '_>, names: &Names) -> Option<RouteSpec> {
    t.check_keys(errors, ROUTE_KEYS);
    let name = t.required_str(errors, "name").map(|(n, _)| n.to_owned());
    if let Some(n) = &name
        && !valid_name(n)
        && let Some((_, span)) = t.str(&mut Errors::default(), "name")
    {
        errors.push(
            span,
            format!("route name `{n}` may hold only letters, digits, `-`, `_` and `.`"),
        );
    }
    let target = target(errors, t, names);
    let fallback = t
        .str_list(errors, "fallback")
        .into_iter()
        .filter_map(|(n, span)| lookup(errors, names, n, span))
        .collect();
    let ramp = t.get("ramp").map(|v| {
        if t.get("split").is_none() {
            errors.push(v.span(), "`ramp` applies only to a route with `split`");
        }
        duration(errors, t, "ramp", Duration::ZERO)
    });
    let rollback = rollback(errors, t, ramp.is_some());
    let spec = RouteSpec {
        name: name.unwrap_or_default(),
        at: t.span.start,
        ramp,
        rollback,
        hosts: hosts(errors, t),
        path: path(errors, t),
        methods: methods(errors, t),
        headers: headers_exact(errors, t),
        header_regex: header_regex(errors, t),
        query: t
            .str_map(errors, "query")
            .into_iter()
            .map(|(k, _, v, _)| (k.to_owned(), v.to_owned()))
            .collect(),
        client_ips: t
            .str_list(errors, "client_ips")
            .into_iter()
            .filter_map(|(text, span)| parse_cidr(text).map_err(|m| errors.push(span, m)).ok())
            .collect(),
        target: Target::Upstream(0),
        fallback,
        strip_prefix: strip_prefix(errors, t),
        request_headers: header_rules(errors, t, "request_headers"),
        response_headers: header_rules(errors, t, "response_headers"),
        rate_limit: rate_limit(errors, t),
        max_body: size(errors, t, "max_body"),
    };
    // Every other key is checked (and its errors reported) before a bad
    // target drops the route.
    Some(RouteSpec {
        target: target?,
        ..spec
    })
}

/// `rollback = { max_error_rate, min_requests, window }`, only beside a
/// `ramp`.
fn rollback(errors: &mut Errors, t: &Table<'_, '_>, has_ramp: bool) -> Option<RollbackSpec> {
    let table = t.table(errors, "rollback", "`rollback`")?;
    if !has_ramp {
        errors.push(
            table.span.clone(),
            "`rollback` applies only to a route with `ramp`",
        );
    }
    table.check_keys(errors, ROLLBACK_KEYS);
    let rate = |v: &DeValue<'_>| match v {
        DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
        _ => None,
    };
    let max_error_rate = match table.get("max_error_rate").map(|v| (v, rate(v.get_ref()))) {
        Some((_, Some(r))) if r > 0.0 && r < 1.0 => r,
        Some((v, _)) => {
            errors.push(
                v.span(),
                "`max_error_rate` must be a number between 0 and 1 (exclusive), like 0.05",
            );
            0.05
        }
        None => {
            errors.push(table.span.clone(), "`rollback` needs `max_error_rate`");
            0.05
        }
    };
    let min_requests = positive(errors, &table, "min_requests", 20, u32::MAX);
    let window = duration(errors, &table, "window", Duration::from_secs(10));
    if window < Duration::from_secs(1)
        && let Some(v) = table.get("window")
    {
        errors.push(v.span(), "`window` must be at least 1s");
    }
    Some(RollbackSpec {
        max_error_rate,
        min_requests,
        window,
    })
}

fn lookup(errors: &mut Errors, names: &Names, name: &str, span: Span) -> Option<usize> {
    let found = names.get(name).copied();
    if found.is_none() {
        let message = match super::walk::did_you_mean(name, names.keys().map(String::as_str)) {
            Some(close) => format!("unknown upstream `{name}`; did you mean `{close}`?"),
            None => format!("unknown upstream `{name}`"),
        };
        errors.push(span, message);
    }
    found
}

fn target(errors: &mut Errors, t: &Table<'_, '_>, names: &Names) -> Option<Target> {
    match (t.get("upstream"), t.get("split")) {
        (Some(_), Some(split)) => {
            errors.push(
                split.span(),
                "a route names exactly one of `upstream` or `split`, not both",
            );
            None
        }
        (None, None) => {
            errors.push(
                t.span.clone(),
                format!("{} needs `upstream` or `split`", t.name),
            );
            None
        }
        (Some(_), None) => {
            let (name, span) = t.str(errors, "upstream")?;
            lookup(errors, names, name, span).map(Target::Upstream)
        }
        (None, Some(value)) => split(errors, value, names),
    }
}

fn split(errors: &mut Errors, value: &super::walk::Value<'_>, names: &Names) -> Option<Target> {
    let table = as_table(errors, value, "split")?;
    let mut parts = Vec::new();
    let mut total: u64 = 0;
    let mut ok = true;
    for (key, weight) in table.inner.iter() {
        let upstream = lookup(errors, names, key.get_ref(), key.span());
        let weight = as_integer(errors, weight, key.get_ref()).and_then(|(w, span)| {
            u32::try_from(w)
                .ok()
                .filter(|w| *w <= 1_000_000)
                .or_else(|| {
                    errors.push(span, "a split weight must be between 0 and 1000000");
                    None
                })
        });
        match (upstream, weight) {
            (Some(u), Some(w)) => {
                total += u64::from(w);
                parts.push((u, w));
            }
            _ => ok = false,
        }
    }
    if ok && total == 0 {
        errors.push(
            value.span(),
            "the split's weights add up to zero; at least one must be positive",
        );
        return None;
    }
    ok.then_some(Target::Split(parts))
}

fn hosts(errors: &mut Errors, t: &Table<'_, '_>) -> Vec<HostPattern> {
    t.str_list(errors, "hosts")
        .into_iter()
        .filter_map(|(text, span)| {
            let lower = text.trim_end_matches('.').to_ascii_lowercase();
            let (pattern, rest) = match lower.strip_prefix("*.") {
                Some(rest) => (HostPattern::Wildcard(format!(".{rest}")), rest.to_owned()),
                None => (HostPattern::Exact(lower.clone()), lower.clone()),
            };
            let valid = !rest.is_empty()
                && rest
                    .split('.')
                    .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
            if valid {
                Some(pattern)
            } else {
                errors.push(
                    span,
                    format!("host `{text}` must be a name like `auth.example.com` or `*.example.com` (no port)"),
                );
                None
            }
        })
        .collect()
}

fn path(errors: &mut Errors, t: &Table<'_, '_>) -> Option<PathMatch> {
    let given: Vec<&str> = ["path", "path_prefix", "path_regex"]
        .into_iter()
        .filter(|k| t.get(k).is_some())
        .collect();
    if given.len() > 1 {
        let span = t.get(given[1]).map_or(0..0, |v| v.span());
        errors.push(
            span,
            "a route takes at most one of `path`, `path_prefix`, `path_regex`",
        );
        return None;
    }
    let key = *given.first()?;
    let (text, span) = t.str(errors, key)?;
    if key == "path_regex" {
        return Regex::new(text)
            .map(PathMatch::Regex)
            .map_err(|e| errors.push(span, format!("`path_regex` is not a valid regex: {e}")))
            .ok();
    }
    if !text.starts_with('/') {
        errors.push(span, format!("`{key}` must start with `/`; got `{text}`"));
        return None;
    }
    Some(if key == "path" {
        PathMatch::Exact(text.to_owned())
    } else {
        PathMatch::Prefix(text.to_owned())
    })
}

fn methods(errors: &mut Errors, t: &Table<'_, '_>) -> Vec<Method> {
    t.str_list(errors, "methods")
        .into_iter()
        .filter_map(|(text, span)| {
            Method::from_bytes(text.to_ascii_uppercase().as_bytes())
                .map_err(|_| errors.push(span, format!("`{text}` is not an HTTP method")))
                .ok()
        })
        .collect()
}

fn header_name(errors: &mut Errors, text: &str, span: Span) -> Option<HeaderName> {
    HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| errors.push(span, format!("`{text}` is not a valid header name")))
        .ok()
}

fn header_value(errors: &mut Errors, text: &str, span: Span) -> Option<HeaderValue> {
    HeaderValue::from_str(text)
        .map_err(|_| errors.push(span, format!("`{text}` is not a valid header value")))
        .ok()
}

fn headers_exact(errors: &mut Errors, t: &Table<'_, '_>) -> Vec<(HeaderName, HeaderValue)> {
    t.str_map(errors, "headers")
        .into_iter()
        .filter_map(|(k, ks, v, vs)| {
            Some((header_name(errors, k, ks)?, header_value(errors, v, vs)?))
        })
        .collect()
}

fn header_regex(errors: &mut Errors, t: &Table<'_, '_>) -> Vec<(HeaderName, Regex)> {
    t.str_map(errors, "header_regex")
        .into_iter()
        .filter_map(|(k, ks, v, vs)| {
            let name = header_name(errors, k, ks)?;
            let re = Regex::new(v)
                .map_err(|e| errors.push(vs, format!("`{k}` is not a valid regex: {e}")))
                .ok()?;
            Some((name, re))
        })
        .collect()
}

fn strip_prefix(errors: &mut Errors, t: &Table<'_, '_>) -> Option<String> {
    let (text, span) = t.str(errors, "strip_prefix")?;
    if !text.starts_with('/') || text.len() < 2 {
        errors.push(
            span,
            format!("`strip_prefix` must start with `/` and name a prefix; got `{text}`"),
        );
        return None;
    }
    Some(text.trim_end_matches('/').to_owned())
}

fn header_rules(errors: &mut Errors, t: &Table<'_, '_>, key: &str) -> HeaderRules {
    let label = format!("`{key}`");
    let Some(table) = t.table(errors, key, &label) else {
        return HeaderRules::default();
    };
    table.check_keys(errors, HEADER_RULE_KEYS);
    let set = table
        .str_map(errors, "set")
        .into_iter()
        .filter_map(|(k, ks, v, vs)| {
            Some((header_name(errors, k, ks)?, header_value(errors, v, vs)?))
        })
        .collect();
    let remove = table
        .str_list(errors, "remove")
        .into_iter()
        .filter_map(|(k, span)| header_name(errors, k, span))
        .collect();
    HeaderRules { set, remove }
}
