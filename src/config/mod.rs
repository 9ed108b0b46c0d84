//! The configuration: the ONLY place that reads TOML. `load`/`parse` turn a
//! `routes.toml` into validated domain types, or into every error the file
//! has, each with FILE:LINE:COL. After this module returns nothing re-checks,
//! unwraps or re-parses. It does no network I/O (names are resolved later).

mod lint;
mod parse;
pub(crate) mod read;
mod walk;

pub use lint::{Warning, lint};

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use regex::Regex;

/// A validated configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The path as given (for messages) and its content hash (the version).
    pub path: PathBuf,
    pub version: String,
    pub listen: Listen,
    pub tls: Vec<CertificateFiles>,
    pub proxy: ProxySettings,
    pub log: LogSettings,
    pub reload: ReloadSettings,
    pub admin: AdminSettings,
    pub upstreams: Vec<UpstreamSpec>,
    pub routes: Vec<RouteSpec>,
}

/// `[reload]`: the readiness gate of reloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadSettings {
    /// How long a reload that points routes at upstreams without a healthy
    /// endpoint waits for them.
    pub gate_timeout: Duration,
    /// What happens when the gate times out.
    pub on_gate_timeout: GateTimeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateTimeout {
    /// Keep the running table (the safe default).
    Keep,
    /// Apply the new table anyway.
    Apply,
}

impl Default for ReloadSettings {
    fn default() -> Self {
        ReloadSettings {
            gate_timeout: Duration::from_secs(60),
            on_gate_timeout: GateTimeout::Keep,
        }
    }
}

/// `[admin]`: who may call the admin API's state-changing endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminSettings {
    /// Host names (besides IP literals and `localhost`) that requests which
    /// change state may carry in `Host` (DNS-rebinding defence).
    pub allowed_hosts: Vec<String>,
    /// A file holding the bearer token every admin endpoint but `/healthz`
    /// and `/ready` requires; re-read at every load.
    pub token_file: Option<PathBuf>,
    /// That file's token, as read when the config was loaded.
    pub token: Option<AdminToken>,
}

/// The admin API's bearer token. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn new(token: String) -> AdminToken {
        AdminToken(token)
    }

    /// Compares in time that depends only on the length, so that the
    /// answer's timing does not tell how much of a guess was right.
    pub fn matches(&self, offered: &[u8]) -> bool {
        let mine = self.0.as_bytes();
        if mine.len() != offered.len() {
            return false;
        }
        let diff = mine
            .iter()
            .zip(offered)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Which forwarding header a trusted proxy in front sets (the other one is
/// treated as forged, like any forwarding header from an untrusted peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIpHeader {
    XForwardedFor,
    Forwarded,
}

/// `[log]`: what steer logs besides its own events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// One line per request at target `steer::access`.
    pub access: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings { access: true }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub upgrade_socket: Option<PathBuf>,
    pub client_auth: Option<ClientAuth>,
}

/// `[listen.client_auth]`: client certificates on the https listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// PEM bundle of the CAs a client certificate must chain to.
    pub ca: PathBuf,
    pub mode: ClientAuthMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// A handshake without a valid client certificate fails.
    Require,
    /// A client may send none; one it sends must be valid.
    Request,
}

#[derive(Debug, Clone)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Byte offset of the `cert` value in the file (for lints); not part
    /// of the entry's identity.
    pub at: usize,
}

/// Two entries are the same when they name the same files, wherever they
/// stand in the file.
impl PartialEq for CertificateFiles {
    fn eq(&self, other: &Self) -> bool {
        self.cert == other.cert && self.key == other.key
    }
}

impl Eq for CertificateFiles {}

#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub trusted_proxies: Vec<IpNet>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub dns_refresh: Duration,
    pub shutdown_delay: Duration,
    pub drain_timeout: Duration,
    /// Largest request head (request line + headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Most header fields accepted in one request; more gets 431.
    pub max_headers: usize,
    /// A client that has not finished its TLS handshake by then is dropped.
    pub tls_handshake_timeout: Duration,
    /// A client that has not sent a whole request head by then (slowloris)
    /// is disconnected.
    pub header_read_timeout: Duration,
    /// Open client connections per listener; at the cap steer stops
    /// accepting until one closes. `None`: 10,000, or fewer when the
    /// open-files limit cannot hold them (`server::open_files`).
    pub max_connections: Option<usize>,
    /// Open client connections per client IP (TCP peer); more are closed
    /// at once. `None`: no cap.
    pub max_connections_per_ip: Option<usize>,
    /// A response that cannot send any byte to its client for this long is
    /// given up (nginx's `send_timeout`).
    pub send_timeout: Duration,
    /// HTTP/2 streams a client may have open on one connection.
    pub max_concurrent_streams: u32,
    /// `Upgrade` tokens passed to upstreams (lower-case); others are removed.
    pub upgrades: Vec<String>,
    /// An upgraded connection with no bytes either way for this long closes.
    pub tunnel_idle_timeout: Duration,
    /// An upstream response body that delivers no byte for this long is
    /// cut off (nginx's `proxy_read_timeout`, Envoy's stream idle timeout).
    pub response_idle_timeout: Duration,
    /// Keep request header fields whose names contain `_`.
    pub underscores_in_headers: bool,
    /// Match and forward request paths in RFC 3986's normal form
    /// (`routing::normalize_path`).
    pub normalize_path: bool,
    /// The forwarding header that sets the client IP behind trusted proxies.
    pub client_ip_header: ClientIpHeader,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            trusted_proxies: Vec::new(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            dns_refresh: Duration::from_secs(5),
            shutdown_delay: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            max_connections: None,
            max_connections_per_ip: None,
            send_timeout: Duration::from_secs(60),
            max_concurrent_streams: 100,
            upgrades: vec!["websocket".to_owned()],
            tunnel_idle_timeout: Duration::from_secs(3600),
            response_idle_timeout: Duration::from_secs(300),
            underscores_in_headers: false,
            normalize_path: true,
            client_ip_header: ClientIpHeader::XForwardedFor,
        }
    }
}

/// Active health checking of one upstream's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    pub path: String,
    /// Check through `grpc.health.v1.Health/Check` for this service name
    /// instead of `GET path` (h2c and https upstreams).
    pub grpc_service: Option<String>,
    /// Requests that must also answer 2xx before an endpoint is first
    /// promoted to healthy.
    pub warmup: Vec<Warmup>,
    /// Host header of the probe; `None` means the endpoint's own authority.
    pub host: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            path: "/debug/ready".to_owned(),
            grpc_service: None,
            warmup: Vec::new(),
            host: None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        }
    }
}

/// One warm-up request (`health.warmup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warmup {
    pub path: String,
    pub host: Option<String>,
    /// A substring the answer's body must contain.
    pub expect_body: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    H2c,
    Https,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
            Protocol::Https => "https",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastRequest,
}

/// One configured endpoint address: an IP literal or a name to resolve.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddr {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

impl fmt::Display for EndpointAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointAddr::Ip(addr) => write!(f, "{addr}"),
            EndpointAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    pub name: String,
    /// Byte offset of the upstream's key in the file (for lints).
    pub at: usize,
    pub endpoints: Vec<EndpointAddr>,
    pub protocol: Protocol,
    pub balance: Balance,
    /// `None` when `health = false`.
    pub health: Option<HealthSpec>,
    pub tls_ca: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    /// The certificate and key steer presents to the upstream (mutual TLS).
    pub tls_client_cert: Option<CertificateFiles>,
}

/// A host condition, lower-cased, without port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`.
    Wildcard(String),
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

/// Where a route sends its requests. Upstreams are indices into
/// `Config::upstreams`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Upstream(usize),
    /// (upstream, weight); the weights sum to more than zero.
    Split(Vec<(usize, u32)>),
}

#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    /// Byte offset of the route's `[[routes]]` table in the file (for lints).
    pub at: usize,
    /// With `split`: a reload that changes the weights moves the effective
    /// weights linearly from the old to the new over this time.
    pub ramp: Option<Duration>,
    /// With `ramp`: when a member the ramp raises fails too often, the
    /// ramp goes back to the weights it started from.
    pub rollback: Option<RollbackSpec>,
    pub hosts: Vec<HostPattern>,
    pub path: Option<PathMatch>,
    pub methods: Vec<Method>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub header_regex: Vec<(HeaderName, Regex)>,
    pub query: Vec<(String, String)>,
    pub client_ips: Vec<IpNet>,
    pub target: Target,
    pub fallback: Vec<usize>,
    pub strip_prefix: Option<String>,
    pub request_headers: HeaderRules,
    pub response_headers: HeaderRules,
    /// A token bucket per key; 429 when empty.
    pub rate_limit: Option<RateLimitSpec>,
    /// Largest request body; 413 beyond it.
    pub max_body: Option<u64>,
}

/// `rollback = { max_error_rate = 0.05, min_requests = 20, window = "10s" }`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RollbackSpec {
    /// The failed share of a member's attempts above which the ramp is
    /// rolled back (0 < rate < 1).
    pub max_error_rate: f64,
    /// Attempts a member needs in the window before its share counts.
    pub min_requests: u32,
    /// The sliding window the share is taken over (at least 1 s).
    pub window: Duration,
}

/// `rate_limit = { requests = 20, per = "1s", burst = 40, key = "client_ip" }`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitSpec {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
    pub key: RateKey,
}

/// What a rate limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    ClientIp,
    Header(HeaderName),
}

/// One problem in a config file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", join_errors(.0))]
    Invalid(Vec<ConfigError>),
}

impl LoadError {
    /// Every message, one per line item (FILE:LINE:COL: message).
    pub fn messages(&self) -> Vec<String> {
        match self {
            LoadError::Invalid(errors) => errors.iter().map(ToString::to_string).collect(),
            other @ LoadError::Read { .. } => vec![other.to_string()],
        }
    }
}

fn join_errors(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    parse(&read_text(path)?, path)
}

/// Reads and validates the file at `path` and runs the lints: the config
/// and every warning as `FILE:LINE:COL: warning: message`.
pub fn check_file(path: &Path) -> Result<(Config, Vec<String>), LoadError> {
    let text = read_text(path)?;
    let config = parse(&text, path)?;
    let warnings = lint(&config)
        .into_iter()
        .map(|w| {
            let (line, col) = walk::line_col(&text, w.at);
            format!("{}:{line}:{col}: warning: {}", path.display(), w.message)
        })
        .collect();
    Ok((config, warnings))
}

/// The config file as text: a regular file, at most 16 MiB, read within
/// 5 s on a thread of its own (`read`).
fn read_text(path: &Path) -> Result<String, LoadError> {
    let bytes = read::config_file_blocking(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    utf8(bytes, path)
}

/// The file's bytes as text, or the error a non-UTF-8 file gets.
pub(crate) fn utf8(bytes: Vec<u8>, path: &Path) -> Result<String, LoadError> {
    String::from_utf8(bytes).map_err(|_| {
        LoadError::Invalid(vec![ConfigError {
            file: path.display().to_string(),
            line: 1,
            col: 1,
            message: "the file is not UTF-8".to_owned(),
        }])
    })
}

/// Validates `text` as if read from `path` (relative file names in it are
/// relative to `path`'s directory).
pub fn parse(text: &str, path: &Path) -> Result<Config, LoadError> {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse::document(text, &base)
        .map(|parsed| Config {
            path: path.to_path_buf(),
            version: content_hash(text.as_bytes()),
            listen: parsed.listen,
            tls: parsed.tls,
            proxy: parsed.proxy,
            log: parsed.log,
            reload: parsed.reload,
            admin: parsed.admin,
            upstreams: parsed.upstreams,
            routes: parsed.routes,
        })
        .map_err(|errors| {
            let file = path.display().to_string();
            let mut list: Vec<ConfigError> = errors
                .list
                .into_iter()
                .map(|(span, message)| {
                    let (line, col) = walk::line_col(text, span.start);
                    ConfigError {
                        file: file.clone(),
                        line,
                        col,
                        message,
                    }
                })
                .collect();
            list.sort_by_key(|e| (e.line, e.col));
            list.dedup();
            LoadError::Invalid(list)
        })
}

/// The version of a config: FNV-1a 64 over the bytes, as 16 hex digits.
/// Stable across runs and platforms, which `/config` and reload need.
pub fn content_hash(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Parses `"250ms"`, `"2s"`, `"1.5s"`, `"5m"`, `"1h"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration `{text}` needs a unit (ms, s, m, h)"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("duration `{text}` does not start with a number"))?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "duration `{text}` has unknown unit `{unit}` (use ms, s, m or h)"
            ));
        }
    };
    // Deadlines are `now + duration`: far beyond any use, that overflows.
    const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);
    match Duration::try_from_secs_f64(value * scale) {
        Ok(d) if d <= LONGEST => Ok(d),
        _ => Err(format!("duration `{text}` is longer than a year (8760h)")),
    }
}

/// Parses `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{text}` is not a CIDR (like 10.0.0.0/8) or an IP address"))
}

#[cfg(test)]
mod tests;
