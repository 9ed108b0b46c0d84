//! A fake ZITADEL deployment, used by `steer demo` and as the upstream in the
//! integration tests.
//!
//! It owns only the imitation of what a proxy in front of ZITADEL can observe:
//! one port speaking HTTP/1.1 and h2c (prior knowledge), `/debug/healthz`,
//! `/debug/ready` (200 `"ok"` / 412), `grpc.health.v1.Health`, an OIDC
//! discovery document whose issuer is built from the request's host and
//! scheme the way ZITADEL builds it, plus a few `/demo/...` helpers (echo,
//! large and slow responses, fail/recover switches) that exercise streaming
//! and failover.
//!
//! It must not contain or depend on any proxy logic (routing, balancing,
//! health checking of upstreams, header sanitising): it plays the upstream,
//! so that the proxy can be tested against something independent of itself.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tracing::{debug, info};

/// Error type of [`DemoBody`].
pub use crate::BoxError;

/// The one response body type shared by gRPC and plain HTTP responses.
pub type DemoBody = UnsyncBoxBody<Bytes, BoxError>;

/// Size of the chunks `/demo/bytes` streams.
pub const BYTES_CHUNK: usize = 64 * 1024;
/// Largest `n` accepted by `/demo/bytes` (1 GiB).
pub const MAX_BYTES: u64 = 1 << 30;
/// `n` used by `/demo/bytes` when the query has none.
pub const DEFAULT_BYTES: u64 = 1024;
/// `ms` used by `/demo/slow` when the query has none.
pub const DEFAULT_SLOW_MS: u64 = 1000;

/// A prime period, so the pattern never lines up with chunk or buffer sizes
/// and a misplaced or duplicated chunk shows up in a byte-by-byte check.
const PATTERN_PERIOD: u64 = 251;

const TEXT_PLAIN: &str = "text/plain";
const APPLICATION_JSON: &str = "application/json";
const OCTET_STREAM: &str = "application/octet-stream";

/// Byte `i` of the `/demo/bytes` stream.
pub fn pattern_byte(i: u64) -> u8 {
    (i % PATTERN_PERIOD) as u8
}

/// A running fake deployment. Dropping it stops the listener and closes
/// every open connection, like a crashed instance; [`Deployment::stop`]
/// stops it the way ZITADEL's server stops on SIGTERM.
pub struct Deployment {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

/// How long a graceful stop waits for open requests (ZITADEL's server
/// shutdown timeout).
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

struct Shared {
    name: String,
    served_by: HeaderValue,
    ready: AtomicBool,
    requests: AtomicU64,
    ready_checks: AtomicU64,
    /// Added before every answer outside `/debug/` (a slow deployment).
    delay_ms: AtomicU64,
    /// With N > 0, every Nth request outside `/debug/` answers 500.
    errors_every: AtomicU64,
    reporter: HealthReporter,
    health: HealthServer<HealthService>,
    /// Serialises publications to the reporter, see [`Shared::sync_health`].
    health_sync: tokio::sync::Mutex<()>,
    /// Lets the sync `set_ready` spawn work even when called off the runtime.
    runtime: tokio::runtime::Handle,
}

impl Deployment {
    /// Binds `addr` (port 0 allowed) and serves in a spawned tokio task.
    pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<Deployment> {
        let served_by = HeaderValue::from_str(name)
            .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
        // ZITADEL's Go listener has the kernel's whole backlog (somaxconn);
        // tokio's default of 128 loses SYNs under a burst of connections
        // while the server is busy, and a lost SYN is resent only after 1 s.
        let listener = crate::server::bind(addr)?;
        let addr = listener.local_addr()?;
        let reporter = HealthReporter::new();
        let health = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            served_by,
            ready: AtomicBool::new(true),
            requests: AtomicU64::new(0),
            ready_checks: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            errors_every: AtomicU64::new(0),
            reporter,
            health,
            health_sync: tokio::sync::Mutex::new(()),
            runtime: tokio::runtime::Handle::current(),
        });
        Arc::clone(&shared).sync_health().await;
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared), stopping));
        info!(deployment = %name, %addr, "demo deployment listening");
        Ok(Deployment {
            shared,
            addr,
            accept,
            stop,
        })
    }

    /// Stops as ZITADEL's server does on SIGTERM (Go's `Server.Shutdown`):
    /// the listener closes (new connections are refused), HTTP/2
    /// connections get a GOAWAY, idle HTTP/1.1 connections are closed and
    /// busy ones after their answer; open requests get 5 s to finish.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.accept).await;
    }

    /// The name given to [`Deployment::start`].
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The bound address (with the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches `/debug/ready` between 200 and 412 and the gRPC health of
    /// service `""` between SERVING and NOT_SERVING.
    pub fn set_ready(&self, ready: bool) {
        self.shared.set_ready(ready);
    }

    /// Whether the deployment currently reports ready.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::SeqCst)
    }

    /// Requests served on any path not under `/debug/` (gRPC included,
    /// health probes excluded).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Delays every answer outside `/debug/` (probes stay fast): a
    /// deployment that is ready but slow.
    pub fn set_delay(&self, delay: std::time::Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Makes every `n`th request outside `/debug/` answer 500 (0: none): a
    /// deployment that fails a share of its requests.
    pub fn set_errors_every(&self, n: u64) {
        self.shared.errors_every.store(n, Ordering::Relaxed);
    }

    /// Requests served on `/debug/ready`.
    pub fn ready_checks(&self) -> u64 {
        self.shared.ready_checks.load(Ordering::SeqCst)
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        // The accept task owns the JoinSet of connections, so aborting it
        // also aborts every connection task.
        self.accept.abort();
    }
}

impl fmt::Debug for Deployment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deployment")
            .field("name", &self.shared.name)
            .field("addr", &self.addr)
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn set_ready(self: &Arc<Self>, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
        // The reporter is async-only. Uncontended, its locks are free, so one
        // poll finishes the update and a gRPC check right after `set_ready`
        // already sees it; only under contention fall back to a task.
        let mut now = pin!(Arc::clone(self).sync_health());
        let mut cx = Context::from_waker(Waker::noop());
        if now.as_mut().poll(&mut cx).is_pending() {
            self.runtime.spawn(Arc::clone(self).sync_health());
        }
    }

    /// Publishes the current flag. The flag is read under `health_sync`, so
    /// whichever publication runs last publishes the latest value, whatever
    /// order racing `set_ready` calls get scheduled in.
    async fn sync_health(self: Arc<Self>) {
        let _serial = self.health_sync.lock().await;
        let status = if self.ready.load(Ordering::SeqCst) {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        while connections.try_join_next().is_some() {}
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(stream, peer, Arc::clone(&shared), graceful.watcher()));
                }
                Err(err) => {
                    debug!(deployment = %shared.name, error = %err, "demo accept failed");
                    // Errors such as EMFILE repeat immediately; do not spin on them.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = async { let _ = stopping.wait_for(|s| *s).await; } => break,
        }
    }
    drop(listener);
    info!(deployment = %shared.name, "demo deployment stopping");
    let _ = tokio::time::timeout(STOP_TIMEOUT, graceful.shutdown()).await;
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    graceful: hyper_util::server::graceful::Watcher,
) {
    if let Err(err) = stream.set_nodelay(true) {
        debug!(%peer, error = %err, "demo set_nodelay failed");
    }
    let name = shared.name.clone();
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(handle(shared, req).await) }
    });
    // auto: HTTP/1.1 and h2c prior knowledge on one port, as ZITADEL does.
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    if let Err(err) = graceful.watch(conn.into_owned()).await {
        debug!(deployment = %name, %peer, error = %err, "demo connection ended with an error");
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<DemoBody> {
    if !req.uri().path().starts_with("/debug/") {
        let n = shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let every = shared.errors_every.load(Ordering::Relaxed);
        if every > 0 && n.is_multiple_of(every) {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT_PLAIN,
                "injected error\n",
            );
        }
        let delay = shared.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
    }
    if is_grpc(req.headers()) {
        return grpc(&shared, req).await;
    }
    let mut resp = route(&shared, req).await;
    resp.headers_mut()
        .insert("x-served-by", shared.served_by.clone());
    resp
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

async fn grpc(shared: &Shared, req: Request<Incoming>) -> Response<DemoBody> {
    use tower::Service;
    let mut svc = shared.health.clone();
    // HealthServer is always ready, but the tower contract asks for it.
    let ready =
        std::future::poll_fn(|cx| Service::<Request<Incoming>>::poll_ready(&mut svc, cx)).await;
    let result = match ready {
        Ok(()) => svc.call(req).await,
        Err(err) => Err(err),
    };
    let resp = result.unwrap_or_else(|never| match never {});
    resp.map(|body| body.map_err(BoxError::from).boxed_unsync())
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<DemoBody> {
    let method = req.method().clone();
    let is_get = method == Method::GET || method == Method::HEAD;
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/debug/healthz" => text(StatusCode::OK, TEXT_PLAIN, "ok"),
        "/debug/ready" => ready_response(shared),
        "/demo/fail" if method == Method::POST => {
            shared.set_ready(false);
            let msg = format!("{} now answers 412 on /debug/ready\n", shared.name);
            text(StatusCode::OK, TEXT_PLAIN, msg)
        }
        "/demo/recover" if method == Method::POST => {
            shared.set_ready(true);
            let msg = format!("{} now answers 200 on /debug/ready\n", shared.name);
            text(StatusCode::OK, TEXT_PLAIN, msg)
        }
        "/.well-known/openid-configuration" if is_get => discovery(&shared.name, &req),
        "/demo/echo" => echo(req),
        "/demo/bytes" if is_get => bytes_response(req.uri().query()),
        "/demo/slow" => slow(&shared.name, req).await,
        _ => describe(&shared.name, &req),
    }
}

fn ready_response(shared: &Shared) -> Response<DemoBody> {
    shared.ready_checks.fetch_add(1, Ordering::SeqCst);
    if shared.ready.load(Ordering::SeqCst) {
        return text(StatusCode::OK, APPLICATION_JSON, "\"ok\"");
    }
    // ZITADEL's wording when its database ping fails.
    let msg = format!(
        "ID=API-F24h2 Message=DB CONNECTION ERROR Parent=(demo deployment {} was set not ready)",
        shared.name
    );
    text(StatusCode::PRECONDITION_FAILED, TEXT_PLAIN, msg)
}

fn discovery(name: &str, req: &Request<Incoming>) -> Response<DemoBody> {
    let authority = req.uri().authority().map(|a| a.as_str());
    let issuer = issuer_from_headers(req.headers(), authority);
    let doc = json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/oauth/v2/authorize"),
        "token_endpoint": format!("{issuer}/oauth/v2/token"),
        "introspection_endpoint": format!("{issuer}/oauth/v2/introspect"),
        "revocation_endpoint": format!("{issuer}/oauth/v2/revoke"),
        "jwks_uri": format!("{issuer}/oauth/v2/keys"),
        "userinfo_endpoint": format!("{issuer}/oidc/v1/userinfo"),
        "end_session_endpoint": format!("{issuer}/oidc/v1/end_session"),
        "x-steer-demo-deployment": name,
    });
    text(StatusCode::OK, APPLICATION_JSON, doc.to_string())
}

/// The issuer ZITADEL would hand out for a request with these headers:
/// `{scheme}://{host}`, host and scheme taken from the leftmost `Forwarded`
/// element, then `X-Forwarded-Host` / `X-Forwarded-Proto`, then `Host`, then
/// the URI authority (HTTP/2 `:authority`); the scheme defaults to `http`.
pub fn issuer_from_headers(headers: &HeaderMap, authority: Option<&str>) -> String {
    let forwarded = leftmost_forwarded(headers);
    let host = forwarded_param(&forwarded, "host")
        .or_else(|| first_list_value(headers, "x-forwarded-host"))
        .or_else(|| header_str(headers, "host").map(str::to_owned))
        .or_else(|| authority.filter(|a| !a.is_empty()).map(str::to_owned))
        // Only a request with neither Host nor :authority gets here.
        .unwrap_or_else(|| "localhost".to_owned());
    let scheme = forwarded_param(&forwarded, "proto")
        .or_else(|| first_list_value(headers, "x-forwarded-proto"))
        .unwrap_or_else(|| "http".to_owned());
    format!("{scheme}://{host}")
}

/// The `key=value` pairs of the first element of the first `Forwarded`
/// header, keys lowercased, quotes stripped.
fn leftmost_forwarded(headers: &HeaderMap) -> Vec<(String, String)> {
    let Some(value) = header_str(headers, "forwarded") else {
        return Vec::new();
    };
    let element = split_unquoted(value, ',').into_iter().next().unwrap_or("");
    split_unquoted(element, ';')
        .into_iter()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), unquote(v.trim()).to_owned()))
        .collect()
}

fn forwarded_param(pairs: &[(String, String)], key: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(k, v)| k == key && !v.is_empty())
        .map(|(_, v)| v.clone())
}

/// Splits on `sep` outside double quotes (a quoted IPv6 or host may hold
/// characters that would otherwise split it).
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(s)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// First item of a comma-separated list header (first header line wins).
fn first_list_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let value = header_str(headers, name)?;
    let first = value.split(',').next().unwrap_or("").trim();
    (!first.is_empty()).then(|| first.to_owned())
}

fn echo(req: Request<Incoming>) -> Response<DemoBody> {
    // Frames pass through one by one (trailers included), never buffered.
    let body = req.into_body().map_err(BoxError::from).boxed_unsync();
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(OCTET_STREAM));
    resp
}

fn bytes_response(query: Option<&str>) -> Response<DemoBody> {
    let n = match query_param(query, "n").map(str::parse::<u64>) {
        None => DEFAULT_BYTES,
        Some(Ok(n)) if n <= MAX_BYTES => n,
        Some(_) => {
            let msg = format!("n must be an integer from 0 to {MAX_BYTES}\n");
            return text(StatusCode::BAD_REQUEST, TEXT_PLAIN, msg);
        }
    };
    let mut resp = Response::new(PatternBody::new(n).boxed_unsync());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(OCTET_STREAM));
    resp
}

async fn slow(name: &str, req: Request<Incoming>) -> Response<DemoBody> {
    let ms = match query_param(req.uri().query(), "ms").map(str::parse::<u64>) {
        None => DEFAULT_SLOW_MS,
        Some(Ok(ms)) => ms,
        Some(Err(_)) => {
            let msg = "ms must be a non-negative integer\n";
            return text(StatusCode::BAD_REQUEST, TEXT_PLAIN, msg);
        }
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    describe(name, &req)
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then_some(v)
    })
}

/// Tells the caller what reached the upstream, so tests can check what the
/// proxy forwarded.
fn describe(name: &str, req: &Request<Incoming>) -> Response<DemoBody> {
    let host = req
        .headers()
        .get(HOST)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let version = format!("{:?}", req.version());
    let doc = json!({
        "deployment": name,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "version": version,
        "host": host,
        "authority": req.uri().authority().map(|a| a.as_str()),
        "headers": headers_json(req.headers()),
    });
    text(StatusCode::OK, APPLICATION_JSON, doc.to_string())
}

fn headers_json(headers: &HeaderMap) -> Value {
    let mut map = serde_json::Map::new();
    for name in headers.keys() {
        let values = headers
            .get_all(name)
            .iter()
            .map(|v| Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        map.insert(name.as_str().to_owned(), Value::Array(values));
    }
    Value::Object(map)
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<DemoBody> {
    let body = Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// One period-aligned slab of the pattern, so every chunk is a zero-copy
/// slice of it whatever offset the stream is at.
fn pattern_table() -> Bytes {
    static TABLE: OnceLock<Bytes> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            let len = BYTES_CHUNK as u64 + PATTERN_PERIOD;
            Bytes::from((0..len).map(pattern_byte).collect::<Vec<u8>>())
        })
        .clone()
}

/// Streams `len` bytes of the pattern in [`BYTES_CHUNK`] chunks without ever
/// holding more than one table in memory.
#[derive(Debug)]
pub struct PatternBody {
    sent: u64,
    len: u64,
}

impl PatternBody {
    /// A body of `len` pattern bytes.
    pub fn new(len: u64) -> Self {
        PatternBody { sent: 0, len }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let remaining = this.len.saturating_sub(this.sent);
        if remaining == 0 {
            return Poll::Ready(None);
        }
        let take = remaining.min(BYTES_CHUNK as u64);
        let offset = (this.sent % PATTERN_PERIOD) as usize;
        let chunk = pattern_table().slice(offset..offset + take as usize);
        this.sent += take;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len.saturating_sub(self.sent))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use http::HeaderName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_and_host() {
        let h = headers(&[
            (
                "forwarded",
                "for=1.2.3.4;proto=https;host=\"id.example.com\", host=evil",
            ),
            ("x-forwarded-host", "other.example"),
            ("x-forwarded-proto", "http"),
            ("host", "internal:8080"),
        ]);
        assert_eq!(issuer_from_headers(&h, None), "https://id.example.com");
    }

    #[test]
    fn forwarded_without_host_falls_back_per_field() {
        let h = headers(&[
            ("forwarded", "for=\"[2001:db8::1]:4711\";proto=https"),
            ("x-forwarded-host", "a.example, b.example"),
        ]);
        assert_eq!(issuer_from_headers(&h, None), "https://a.example");
    }

    #[test]
    fn x_forwarded_host_and_proto() {
        let h = headers(&[
            ("x-forwarded-host", "login.example.com:8443"),
            ("x-forwarded-proto", "https"),
            ("host", "10.0.0.1:8080"),
        ]);
        assert_eq!(
            issuer_from_headers(&h, None),
            "https://login.example.com:8443"
        );
    }

    #[test]
    fn host_then_authority_fallback() {
        let h = headers(&[("host", "zitadel.local:8080")]);
        assert_eq!(
            issuer_from_headers(&h, Some("x")),
            "http://zitadel.local:8080"
        );
        let empty = HeaderMap::new();
        assert_eq!(
            issuer_from_headers(&empty, Some("h2.example")),
            "http://h2.example"
        );
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param(Some("a=1&n=42"), "n"), Some("42"));
        assert_eq!(query_param(Some("n"), "n"), Some(""));
        assert_eq!(query_param(None, "n"), None);
    }

    #[tokio::test]
    async fn pattern_body_streams_the_pattern() {
        let len = 3 * BYTES_CHUNK as u64 + 17;
        let mut body = PatternBody::new(len);
        let mut i = 0u64;
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() <= BYTES_CHUNK);
            for b in data.iter() {
                assert_eq!(*b, pattern_byte(i));
                i += 1;
            }
        }
        assert_eq!(i, len);
    }

    async fn http1(addr: SocketAddr, method: &str, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn readiness_and_counters() {
        let d = Deployment::start("d1", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let ok = http1(d.addr(), "GET", "/debug/ready").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.ends_with("\"ok\""), "{ok}");
        assert!(ok.to_ascii_lowercase().contains("x-served-by: d1"), "{ok}");
        let fail = http1(d.addr(), "POST", "/demo/fail").await;
        assert!(fail.starts_with("HTTP/1.1 200"), "{fail}");
        assert!(!d.is_ready());
        let not_ready = http1(d.addr(), "GET", "/debug/ready").await;
        assert!(not_ready.starts_with("HTTP/1.1 412"), "{not_ready}");
        assert!(not_ready.contains("ID=API-F24h2"), "{not_ready}");
        let _ = http1(d.addr(), "GET", "/debug/healthz").await;
        let any = http1(d.addr(), "GET", "/management/v1/x?y=1").await;
        assert!(any.contains("\"deployment\":\"d1\""), "{any}");
        assert_eq!(d.ready_checks(), 2);
        assert_eq!(d.requests(), 2);
    }

    #[tokio::test]
    async fn grpc_health_follows_readiness_over_h2c() {
        use hyper_util::client::legacy::Client;
        let d = Deployment::start("g", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http::<Full<Bytes>>();
        let uri = format!("http://{}/grpc.health.v1.Health/Check", d.addr());
        for (ready, status) in [(true, 1u8), (false, 2u8)] {
            d.set_ready(ready);
            let req = Request::post(uri.as_str())
                .header(CONTENT_TYPE, "application/grpc")
                .header("te", "trailers")
                // One uncompressed frame holding an empty HealthCheckRequest.
                .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
                .unwrap();
            let resp = client.request(req).await.unwrap();
            let collected = resp.into_body().collect().await.unwrap();
            let grpc_status = collected
                .trailers()
                .unwrap()
                .get("grpc-status")
                .unwrap()
                .clone();
            assert_eq!(grpc_status, "0");
            assert_eq!(&collected.to_bytes()[..], &[0, 0, 0, 0, 2, 0x08, status]);
        }
        assert_eq!(d.requests(), 2);
    }
}
