//! Wiring and lifecycle: load the config, build the first table, start
//! health probes, listeners, admin and reload; shut down gracefully. Also
//! the `check`, `route` and `demo` commands. No request logic lives here.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use tokio::sync::watch;

use crate::config::{self, Config, Target};
use crate::metrics::Metrics;
use crate::proxy::Shared;
use crate::reload::Reloader;
use crate::routing::{self, RequestView, RouteTable};
use crate::table::{ProbeHook, Table};
use crate::tls::TlsStore;
use crate::upstream::{CheckResult, Endpoint};

/// A listener could not be bound (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({name}): {source}")]
pub struct BindError {
    pub name: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Process-wide state the admin API reads.
#[derive(Debug)]
pub struct AppState {
    pub shared: Arc<Shared>,
    pub reloader: Arc<Reloader>,
    first_round_done: AtomicBool,
    shutting_down: AtomicBool,
}

impl AppState {
    /// `/ready`: config loaded, first health round done, not draining.
    pub fn is_ready(&self) -> bool {
        if self.shutting_down.load(Ordering::Relaxed) {
            return false;
        }
        if !self.first_round_done.load(Ordering::Relaxed)
            && self.shared.live.load().first_round_done()
        {
            self.first_round_done.store(true, Ordering::Relaxed);
        }
        self.first_round_done.load(Ordering::Relaxed)
    }
}

/// A running steer: its bound addresses and the handles to stop it.
pub struct Running {
    pub state: Arc<AppState>,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    stop_proxy: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    proxy_tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn probe_hook(metrics: Metrics) -> ProbeHook {
    Arc::new(move |e: &Endpoint, r: &CheckResult| {
        metrics.health_check(&e.upstream, &e.addr.to_string(), r.ok);
    })
}

/// Loads `path`, binds the listeners and starts serving.
pub async fn start(path: &Path) -> anyhow::Result<Running> {
    let config = config::load(path)?;
    start_with(path, config).await
}

/// The bound listeners, before serving starts.
struct Bound {
    http: Option<tokio::net::TcpListener>,
    https: Option<tokio::net::TcpListener>,
    admin: Option<tokio::net::TcpListener>,
}

fn bind_all(listen: &config::Listen) -> Result<Bound, BindError> {
    let bind = |name: &'static str, addr: Option<SocketAddr>| {
        addr.map(|addr| {
            crate::server::bind(addr).map_err(|source| BindError { name, addr, source })
        })
        .transpose()
    };
    Ok(Bound {
        http: bind("http", listen.http)?,
        https: bind("https", listen.https)?,
        admin: bind("admin", listen.admin)?,
    })
}

async fn start_with(path: &Path, config: Config) -> anyhow::Result<Running> {
    let metrics = Metrics::new();
    let hook = probe_hook(metrics.clone());
    let loaded = config.clone();
    let tls_store = match config.tls.is_empty() {
        true => None,
        false => Some(Arc::new(TlsStore::new(&config.tls)?)),
    };
    let table = Table::build(config, None, &hook, &metrics).await;
    let listen = table.listen.clone();
    let settings = table.proxy.clone();
    let shared = Arc::new(Shared {
        live: ArcSwap::from_pointee(table),
        metrics: metrics.clone(),
        retry_budget: crate::proxy::RetryBudget::default(),
    });
    if let Some(store) = &tls_store {
        metrics.certificates(&store.current().certs);
    }
    let reloader = Arc::new(Reloader::new(
        path.to_path_buf(),
        shared.clone(),
        hook,
        loaded,
        tls_store.clone(),
    ));
    let state = Arc::new(AppState {
        shared: shared.clone(),
        reloader: reloader.clone(),
        first_round_done: AtomicBool::new(false),
        shutting_down: AtomicBool::new(false),
    });
    let bound = bind_all(&listen)?;
    let (stop_proxy, stop_rx) = watch::channel(false);
    let (stop_admin, admin_rx) = watch::channel(false);
    let local = |l: &Option<tokio::net::TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
    let (http_addr, https_addr, admin_addr) =
        (local(&bound.http), local(&bound.https), local(&bound.admin));
    let mut proxy_tasks = Vec::new();
    let serve = |listener, tls, name| {
        tokio::spawn(crate::server::serve_proxy(
            listener,
            tls,
            shared.clone(),
            settings.clone(),
            stop_rx.clone(),
            metrics.connections(name),
        ))
    };
    if let Some(listener) = bound.http {
        proxy_tasks.push(serve(listener, None, "http"));
    }
    if let (Some(listener), Some(store)) = (bound.https, tls_store.as_ref()) {
        let tls = crate::server::TlsListener {
            acceptor: tokio_rustls::TlsAcceptor::from(store.server_config()?),
            handshake_timeout: settings.tls_handshake_timeout,
        };
        proxy_tasks.push(serve(listener, Some(tls), "https"));
    }
    if let Some(listener) = bound.admin {
        let st = state.clone();
        tokio::spawn(crate::server::serve_simple(
            listener,
            admin_rx,
            move |req| crate::admin::handle(st.clone(), req),
        ));
    }
    tokio::spawn(reloader.watch());
    let shown = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(http = %shown(http_addr), https = %shown(https_addr), admin = %shown(admin_addr),
        version = %shared.live.load().version, "steer started");
    Ok(Running {
        state,
        http: http_addr,
        https: https_addr,
        admin: admin_addr,
        stop_proxy,
        stop_admin,
        proxy_tasks,
    })
}

impl Running {
    /// SIGTERM semantics: `/ready` turns 503, listeners keep serving for
    /// `shutdown_delay`, then stop accepting; open connections are asked to
    /// finish (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY) and get
    /// `drain_timeout`; then the admin listener stops.
    pub async fn shutdown(self) {
        self.state.shutting_down.store(true, Ordering::Relaxed);
        let (delay, drain) = {
            let t = self.state.shared.live.load();
            (t.proxy.shutdown_delay, t.proxy.drain_timeout)
        };
        tracing::info!(?delay, "shutting down: readiness off, still serving");
        tokio::time::sleep(delay).await;
        let deadline = tokio::time::Instant::now() + drain;
        let _ = self.stop_proxy.send(true);
        for task in self.proxy_tasks {
            let _ = task.await;
        }
        // Upgraded connections (WebSocket) left hyper's tracking when they
        // switched protocols; their in-flight guards still count.
        let in_flight = || {
            let t = self.state.shared.live.load();
            t.upstreams.iter().map(|u| u.in_flight()).sum::<usize>()
        };
        while in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let _ = self.stop_admin.send(true);
        tracing::info!("shutdown complete");
    }

    /// The proxy address as a URL base, for tests and the demo.
    pub fn http_base(&self) -> Option<String> {
        self.http.map(|a| format!("http://{a}"))
    }
}

/// `steer run`: serve until SIGTERM/SIGINT, reloading on SIGHUP.
pub async fn run(path: &Path) -> anyhow::Result<()> {
    let running = start(path).await?;
    wait_for_signals(&running).await?;
    running.shutdown().await;
    Ok(())
}

async fn wait_for_signals(running: &Running) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                let _ = running.state.reloader.reload(true).await;
            }
        }
    }
}

/// `steer check FILE`: the one-line summary, or every error.
pub fn check(path: &Path) -> Result<String, Vec<String>> {
    let config = config::load(path).map_err(|e| e.messages())?;
    let endpoints: usize = config.upstreams.iter().map(|u| u.endpoints.len()).sum();
    Ok(format!(
        "{}: ok: {} routes, {} upstreams, {} endpoints (version {})",
        path.display(),
        config.routes.len(),
        config.upstreams.len(),
        endpoints,
        config.version
    ))
}

/// The inputs of `steer route`.
#[derive(Debug, Clone)]
pub struct DryRun {
    pub method: String,
    pub url: String,
    pub headers: Vec<String>,
    pub client_ip: Option<IpAddr>,
}

/// `steer route`: which route matches and why, and where it would go.
/// Returns the report and whether a route matched.
pub fn explain_route(config: &Config, run: &DryRun) -> Result<(String, bool), String> {
    let method = Method::from_bytes(run.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("`{}` is not an HTTP method", run.method))?;
    let uri: Uri = run
        .url
        .parse()
        .map_err(|e| format!("`{}` is not a URL: {e}", run.url))?;
    let mut headers = HeaderMap::new();
    for h in &run.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("header `{h}` must look like `Name: value`"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("bad header name in `{h}`"))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("bad header value in `{h}`"))?;
        headers.append(name, value);
    }
    let raw_host = uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
        headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let host = raw_host.as_deref().map(routing::normalize_host);
    let peer = run.client_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let client_ip = routing::resolve_client_ip(peer, &headers, &config.proxy.trusted_proxies);
    let path = if uri.path().is_empty() {
        "/"
    } else {
        uri.path()
    };
    let view = RequestView {
        method: &method,
        host: host.as_deref(),
        path,
        query: uri.query(),
        headers: &headers,
        client_ip,
    };
    let table = RouteTable::new(config.routes.clone());
    let mut out = format!(
        "request: {method} host={} path={path} client_ip={client_ip}\n",
        host.as_deref().unwrap_or("(none)")
    );
    let Some(route) = table.select(&view) else {
        for r in table.routes() {
            if let Err(why) = r.check(&view) {
                out.push_str(&format!("  route {:?}: no ({why})\n", r.spec.name));
            }
        }
        out.push_str("no route matches: steer would answer 404\n");
        return Ok((out, false));
    };
    for r in table.routes().iter().take(route.index) {
        if let Err(why) = r.check(&view) {
            out.push_str(&format!("  route {:?}: no ({why})\n", r.spec.name));
        }
    }
    out.push_str(&format!(
        "matched route {:?} (#{} in file order)\n",
        route.spec.name,
        route.index + 1
    ));
    out.push_str(&format!(
        "  because: {}\n",
        describe_conditions(&route.spec)
    ));
    let name = |u: &usize| config.upstreams.get(*u).map_or("?", |s| s.name.as_str());
    match &route.spec.target {
        Target::Upstream(u) => {
            out.push_str(&format!("upstream: {}\n", describe_upstream(config, *u)))
        }
        Target::Split(parts) => {
            let total: u64 = parts.iter().map(|(_, w)| u64::from(*w)).sum();
            out.push_str("split (weighted, per request):\n");
            for (u, w) in parts {
                let pct = u64::from(*w) * 100 / total.max(1);
                out.push_str(&format!(
                    "  {w} ({pct}%) -> {}\n",
                    describe_upstream(config, *u)
                ));
            }
        }
    }
    let fallbacks: Vec<&str> = route.spec.fallback.iter().map(name).collect();
    out.push_str(&format!(
        "fallbacks: {}\n",
        if fallbacks.is_empty() {
            "(none)".to_owned()
        } else {
            fallbacks.join(" -> ")
        }
    ));
    if let Some(p) = &route.spec.strip_prefix {
        out.push_str(&format!("rewrite: strip_prefix {p:?}\n"));
    }
    Ok((out, true))
}

fn describe_upstream(config: &Config, index: usize) -> String {
    config.upstreams.get(index).map_or_else(
        || "?".to_owned(),
        |u| {
            let eps: Vec<String> = u.endpoints.iter().map(ToString::to_string).collect();
            format!(
                "{} ({}, endpoints {})",
                u.name,
                u.protocol.as_str(),
                eps.join(", ")
            )
        },
    )
}

fn describe_conditions(spec: &config::RouteSpec) -> String {
    let mut parts = Vec::new();
    if !spec.hosts.is_empty() {
        let hosts: Vec<String> = spec
            .hosts
            .iter()
            .map(|h| match h {
                config::HostPattern::Exact(h) => h.clone(),
                config::HostPattern::Wildcard(s) => format!("*{s}"),
            })
            .collect();
        parts.push(format!("host in [{}]", hosts.join(", ")));
    }
    match &spec.path {
        Some(config::PathMatch::Exact(p)) => parts.push(format!("path = {p:?}")),
        Some(config::PathMatch::Prefix(p)) => parts.push(format!("path starts with {p:?}")),
        Some(config::PathMatch::Regex(r)) => parts.push(format!("path matches /{}/", r.as_str())),
        None => {}
    }
    if !spec.methods.is_empty() {
        let m: Vec<&str> = spec.methods.iter().map(Method::as_str).collect();
        parts.push(format!("method in [{}]", m.join(", ")));
    }
    for (k, v) in &spec.headers {
        parts.push(format!(
            "header {k} = {:?}",
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    for (k, r) in &spec.header_regex {
        parts.push(format!("header {k} matches /{}/", r.as_str()));
    }
    for (k, v) in &spec.query {
        parts.push(format!("query {k} = {v:?}"));
    }
    if !spec.client_ips.is_empty() {
        let n: Vec<String> = spec.client_ips.iter().map(ToString::to_string).collect();
        parts.push(format!("client IP in [{}]", n.join(", ")));
    }
    if parts.is_empty() {
        "it has no conditions (matches every request)".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The demo route table, for `steer demo` run outside a checkout.
pub const DEMO_ROUTES: &str = include_str!("../routes.toml");

/// `steer demo`: blue on 127.0.0.1:9001, green on :9002, steer in front.
pub async fn demo() -> anyhow::Result<()> {
    let blue = crate::demo::Deployment::start("blue", SocketAddr::from(([127, 0, 0, 1], 9001)))
        .await
        .map_err(|source| BindError {
            name: "demo blue",
            addr: SocketAddr::from(([127, 0, 0, 1], 9001)),
            source,
        })?;
    let green = crate::demo::Deployment::start("green", SocketAddr::from(([127, 0, 0, 1], 9002)))
        .await
        .map_err(|source| BindError {
            name: "demo green",
            addr: SocketAddr::from(([127, 0, 0, 1], 9002)),
            source,
        })?;
    let path = PathBuf::from("routes.toml");
    if !path.is_file() {
        std::fs::write(&path, DEMO_ROUTES).context("writing the demo routes.toml")?;
        tracing::info!("no ./routes.toml here: wrote the built-in demo table to it");
    }
    let running = start(&path).await?;
    let base = running.http_base().unwrap_or_default();
    let admin = running
        .admin
        .map(|a| format!("http://{a}"))
        .unwrap_or_default();
    eprintln!("{}", demo_instructions(&base, &admin, &blue, &green));
    wait_for_signals(&running).await?;
    running.shutdown().await;
    Ok(())
}

fn demo_instructions(
    base: &str,
    admin: &str,
    blue: &crate::demo::Deployment,
    green: &crate::demo::Deployment,
) -> String {
    format!(
        r#"
steer demo: blue on http://{b}, green on http://{g}, steer on {base}, admin on {admin}

Try:
  curl -s {base}/ui/login                         # split: ~90% blue, ~10% green ("deployment")
  curl -s -H 'x-canary: 1' {base}/ui/login        # header steering: always green
  curl -s {base}/.well-known/openid-configuration # issuer built from the Host steer kept
  curl -s --http2-prior-knowledge {base}/v2/users # h2c from the client too
  curl -s {admin}/upstreams                       # endpoint health as steer sees it

Failover: make blue not ready (its /debug/ready answers 412), watch traffic move to green:
  curl -s -X POST http://{b}/demo/fail
  for i in $(seq 5); do curl -s {base}/ui/login | grep -o '"deployment": *"[a-z]*"'; done
  curl -s -X POST http://{b}/demo/recover

Hot reload: edit routes.toml (e.g. the split weights) and save; `curl -s {admin}/config` shows the new version.
Stop with Ctrl-C.
"#,
        b = blue.addr(),
        g = green.addr(),
    )
}
