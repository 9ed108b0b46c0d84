//! Wiring and lifecycle: load the config, build the first table, start
//! health probes, listeners, admin and reload; shut down gracefully. Also
//! the `check`, `route` and `demo` commands. No request logic lives here.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use crate::config::{self, Config, Target};
use crate::metrics::Metrics;
use crate::proxy::Shared;
use crate::reload::Reloader;
use crate::routing::{self, RequestView, RouteTable};
use crate::server::listeners::{Kind, ListenerSet};
use crate::server::{handover, open_files};
use crate::table::{ProbeHook, Table};
use crate::tls::TlsStore;
use crate::upstream::{CheckResult, Endpoint};

pub use crate::server::listeners::BindError;

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
    pub listeners: Arc<ListenerSet>,
    /// Set when `listen.upgrade_socket` is configured.
    handover: Option<Arc<handover::Server>>,
}

fn probe_hook(metrics: Metrics) -> ProbeHook {
    Arc::new(move |e: &Endpoint, r: &CheckResult| {
        // A reload that is not committed yet leaves no series behind.
        if e.is_committed() {
            metrics.health_check(&e.upstream, &e.addr.to_string(), r);
        }
    })
}

/// Loads `path`, binds the listeners and starts serving.
pub async fn start(path: &Path) -> anyhow::Result<Running> {
    start_with(path, false).await
}

/// As `start`; with `upgrade`, first takes the listening sockets over from a
/// running steer on `listen.upgrade_socket` (binding itself if none runs).
pub async fn start_with(path: &Path, upgrade: bool) -> anyhow::Result<Running> {
    let (files_limit, _) = open_files::limits();
    let config = config::load(path)?;
    let metrics = Metrics::new();
    let hook = probe_hook(metrics.clone());
    let loaded = config.clone();
    let tls_store = match config.tls.is_empty() {
        true => None,
        false => Some(Arc::new(TlsStore::new(
            &config.tls,
            config.listen.client_auth.as_ref(),
        )?)),
    };
    let upgrade_socket = config.listen.upgrade_socket.clone();
    let mut table = Table::build(config, None, &hook, &metrics).await;
    table.activate(None, &metrics);
    let listen = table.listen.clone();
    let shared = Arc::new(Shared {
        live: ArcSwap::from_pointee(table),
        metrics: metrics.clone(),
        retry_budget: crate::proxy::RetryBudget::default(),
    });
    if let Some(store) = &tls_store {
        metrics.certificates(&store.current().certs);
    }
    let listeners = Arc::new(ListenerSet::new(
        shared.clone(),
        tls_store.clone(),
        metrics.clone(),
    ));
    let reloader = Arc::new(Reloader::new(
        path.to_path_buf(),
        shared.clone(),
        hook,
        loaded,
        tls_store,
    ));
    reloader.set_listeners(listeners.clone());
    let state = Arc::new(AppState {
        shared: shared.clone(),
        reloader: reloader.clone(),
        first_round_done: AtomicBool::new(false),
        shutting_down: AtomicBool::new(false),
    });
    let st = state.clone();
    listeners.set_admin_handler(Arc::new(move |req| {
        Box::pin(crate::admin::handle(st.clone(), req))
    }));
    let mut received = match (&upgrade_socket, upgrade) {
        (Some(path), true) => {
            // Take the sockets only once our own health checks have run:
            // until then every endpoint is unknown and requests would 503.
            wait_first_round(&shared).await;
            take_over(path).await?
        }
        (None, true) => {
            tracing::warn!(
                "--upgrade without listen.upgrade_socket: binding the listeners directly"
            );
            None
        }
        _ => None,
    };
    let settings = shared.live.load().proxy.clone();
    listeners.apply(&listen, &settings, received.as_mut())?;
    let handover = match &upgrade_socket {
        Some(p) => Some(Arc::new(
            handover::Server::bind(p).context("binding listen.upgrade_socket")?,
        )),
        None => None,
    };
    if let Some(r) = received {
        r.ready()
            .context("confirming the handover to the old steer")?;
        tracing::info!(
            "took the listening sockets over from the previous steer; it drains and exits"
        );
    }
    tokio::spawn(reloader.watch());
    let (http, https, admin) = (
        listeners.local(Kind::Http),
        listeners.local(Kind::Https),
        listeners.local(Kind::Admin),
    );
    let shown = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    let proxy_listeners = u64::from(http.is_some()) + u64::from(https.is_some());
    let max_connections =
        open_files::report(files_limit, proxy_listeners, settings.max_connections);
    tracing::info!(http = %shown(http), https = %shown(https), admin = %shown(admin),
        version = %shared.live.load().version, open_files = files_limit, max_connections,
        "steer started");
    // Spawned only now: on a multi-thread runtime the report could
    // otherwise come before "steer started", which scripts wait for.
    tokio::spawn({
        let shared = shared.clone();
        async move {
            wait_first_round(&shared).await;
            report_unavailable(&shared.live.load());
        }
    });
    Ok(Running {
        state,
        http,
        https,
        admin,
        listeners,
        handover,
    })
}

/// Waits until every checked endpoint has been probed once (bounded by the
/// longest probe timeout plus a second).
async fn wait_first_round(shared: &Shared) {
    let table = shared.live.load_full();
    let longest = table
        .upstreams
        .iter()
        .filter_map(|u| u.health.as_ref().map(|h| h.timeout))
        .max()
        .unwrap_or_default();
    let deadline = tokio::time::Instant::now() + longest + std::time::Duration::from_secs(1);
    while !table.first_round_done() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// After the first health round: one WARN line for each upstream without
/// a healthy endpoint, naming it and why, so that a steer that answers 503
/// (a container started without its upstream) says so at start.
fn report_unavailable(table: &Table) {
    for (u, spec) in table.upstreams.iter().zip(&table.upstream_specs) {
        if u.endpoints
            .iter()
            .any(|e| e.state() == crate::health::State::Healthy)
        {
            continue;
        }
        let state = if u.endpoints.is_empty() {
            let names: Vec<String> = spec.endpoints.iter().map(ToString::to_string).collect();
            format!("no address: {} did not resolve", names.join(", "))
        } else {
            u.endpoints
                .iter()
                .map(|e| {
                    let why = e
                        .last_check()
                        .and_then(|c| c.error)
                        .unwrap_or_else(|| "not checked yet".to_owned());
                    format!("{} {} ({why})", e.addr, e.state().as_str())
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        tracing::warn!(upstream = %u.name, %state,
            "upstream has no healthy endpoint: its requests go to split members or fallbacks, or get 503, until one is");
    }
}

async fn take_over(path: &Path) -> anyhow::Result<Option<handover::Received>> {
    let path = path.to_path_buf();
    let received = tokio::task::spawn_blocking(move || handover::receive(&path))
        .await
        .context("handover task")?
        .context("receiving the listening sockets from the running steer")?;
    if received.is_none() {
        tracing::info!("--upgrade: no steer on the upgrade socket; binding the listeners directly");
    }
    Ok(received)
}

impl Running {
    /// SIGTERM semantics: `/ready` turns 503, listeners keep serving for
    /// `shutdown_delay` (skipped after a handover: the new steer already
    /// accepts on the same sockets), then stop accepting; open connections
    /// are asked to finish (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY)
    /// and get `drain_timeout`; then the admin listener stops.
    pub async fn shutdown(self) {
        self.shutdown_after(true).await;
    }

    async fn shutdown_after(self, delay_first: bool) {
        self.state.shutting_down.store(true, Ordering::Relaxed);
        let (delay, drain) = {
            let t = self.state.shared.live.load();
            (t.proxy.shutdown_delay, t.proxy.drain_timeout)
        };
        if delay_first {
            tracing::info!(?delay, "shutting down: readiness off, still serving");
            tokio::time::sleep(delay).await;
        }
        let deadline = tokio::time::Instant::now() + drain;
        self.listeners.stop(&[Kind::Http, Kind::Https]).await;
        // Upgraded connections (WebSocket) left hyper's tracking when they
        // switched protocols; their in-flight guards still count.
        let in_flight = || {
            let t = self.state.shared.live.load();
            t.upstreams.iter().map(|u| u.in_flight()).sum::<usize>()
        };
        while (in_flight() > 0 || crate::proxy::open_tunnels() > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.listeners.stop(&[Kind::Admin]).await;
        tracing::info!("shutdown complete");
    }

    /// The proxy address as a URL base, for tests and the demo.
    pub fn http_base(&self) -> Option<String> {
        self.http.map(|a| format!("http://{a}"))
    }

    /// Waits for SIGTERM/SIGINT (reloading on SIGHUP) or for a completed
    /// handover to a new steer; then shuts down.
    pub async fn serve_until_stopped(self) -> anyhow::Result<()> {
        let (handed_tx, mut handed_rx) = tokio::sync::oneshot::channel::<()>();
        if let Some(server) = self.handover.clone() {
            let listeners = self.listeners.clone();
            tokio::spawn(async move {
                server.serve_one(|| listeners.sockets()).await;
                let _ = handed_tx.send(());
            });
        }
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        let handed = loop {
            tokio::select! {
                _ = term.recv() => break false,
                _ = int.recv() => break false,
                Ok(()) = &mut handed_rx => break true,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading");
                    let _ = self.state.reloader.reload(true).await;
                }
            }
        };
        if handed {
            // The admin socket went over too: from now on the new steer
            // alone answers /ready, /metrics and /reload on it.
            self.listeners.stop(&[Kind::Admin]).await;
            tracing::info!("handed the listening sockets to a new steer; draining");
        }
        self.shutdown_after(!handed).await;
        Ok(())
    }
}

/// `steer run`: serve until SIGTERM/SIGINT (or a handover), reloading on
/// SIGHUP.
pub async fn run(path: &Path, upgrade: bool) -> anyhow::Result<()> {
    start_with(path, upgrade).await?.serve_until_stopped().await
}

/// `steer check FILE`: the one-line summary and the lint warnings, or
/// every error.
pub fn check(path: &Path) -> Result<(String, Vec<String>), Vec<String>> {
    let (config, warnings) = config::check_file(path).map_err(|e| e.messages())?;
    let endpoints: usize = config.upstreams.iter().map(|u| u.endpoints.len()).sum();
    let summary = format!(
        "{}: ok: {} routes, {} upstreams, {} endpoints, {} warnings (version {})",
        path.display(),
        config.routes.len(),
        config.upstreams.len(),
        endpoints,
        warnings.len(),
        config.version
    );
    Ok((summary, warnings))
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
    // As the proxy does, before routing.
    if !config.proxy.underscores_in_headers {
        crate::proxy::drop_underscored(&mut headers);
    }
    let raw_host = uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
        headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let host = raw_host.as_deref().map(routing::normalize_host);
    let peer = run.client_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let client_ip = routing::resolve_client_ip(
        peer,
        &headers,
        &config.proxy.trusted_proxies,
        config.proxy.client_ip_header,
    );
    let path = if uri.path().is_empty() {
        "/"
    } else {
        uri.path()
    };
    // As the proxy does, before routing.
    crate::proxy::check_target(&method, path)
        .map_err(|e| format!("{e} (the proxy answers 400)"))?;
    let matched = match config.proxy.normalize_path {
        true => routing::route_form(path).map_err(|_| {
            format!("`{path}` has a malformed percent-encoding (the proxy answers 400)")
        })?,
        false => None,
    };
    let path = matched.as_deref().unwrap_or(path);
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
    // A copy of the built-in table in a scratch folder of its own: the
    // demo never writes where it was started (a checkout's routes.toml is
    // the compiled-in demo table), and the banner names the copy to edit.
    let scratch = std::env::temp_dir().join(format!("steer-demo-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).context("creating the demo's scratch folder")?;
    let path = scratch.join("routes.toml");
    std::fs::write(&path, DEMO_ROUTES).context("writing the demo's copy of routes.toml")?;
    let running = start(&path).await?;
    let base = running.http_base().unwrap_or_default();
    let admin = running
        .admin
        .map(|a| format!("http://{a}"))
        .unwrap_or_default();
    eprintln!("{}", demo_instructions(&base, &admin, &blue, &green, &path));
    let served = running.serve_until_stopped().await;
    let _ = std::fs::remove_dir_all(&scratch);
    served
}

/// `steer demo-upstream NAME ADDR`: one demo deployment on ADDR, its bound
/// address printed on stdout; SIGTERM/SIGINT stop it the way ZITADEL's
/// server stops ([`crate::demo::Deployment::stop`]).
pub async fn demo_upstream(name: &str, addr: SocketAddr) -> anyhow::Result<()> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        anyhow::bail!("the name `{name}` may hold only letters, digits, `-`, `_` and `.`");
    }
    let deployment = crate::demo::Deployment::start(name, addr)
        .await
        .map_err(|source| BindError {
            name: "demo-upstream",
            addr,
            source,
        })?;
    println!("{}", deployment.addr());
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    deployment.stop().await;
    Ok(())
}

fn demo_instructions(
    base: &str,
    admin: &str,
    blue: &crate::demo::Deployment,
    green: &crate::demo::Deployment,
    table: &Path,
) -> String {
    let table = table.display();
    format!(
        r#"
steer demo: blue on http://{b}, green on http://{g}, steer on {base}, admin on {admin}
Route table: {table} (a copy to edit; it is removed when the demo stops)

Try:
  curl -s {base}/ui/login                         # split: ~90% blue, ~10% green ("deployment")
  curl -s -H 'x-canary: 1' {base}/ui/login        # header steering: always green
  curl -s {base}/.well-known/openid-configuration # issuer built from the Host steer kept
  curl -s --http2-prior-knowledge {base}/v2/users # h2c from the client too
  curl -s {admin}/upstreams                       # endpoint health as steer sees it

Failover: make blue not ready (its /debug/ready answers 412); once steer's probe has seen it, every request goes to green:
  curl -s -X POST http://{b}/demo/fail
  until curl -s {admin}/upstreams | grep -q '"state": "unhealthy"'; do sleep 0.2; done
  for i in $(seq 5); do curl -s {base}/ui/login | grep -o '"deployment": *"[a-z]*"'; done
  curl -s -X POST http://{b}/demo/recover

Hot reload: move the split to green in the copy, reload, and see the new version:
  sed -i 's/blue = 90, green = 10/blue = 0, green = 100/' {table}
  curl -s -X POST {admin}/reload
Stop with Ctrl-C.
"#,
        b = blue.addr(),
        g = green.addr(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_demo_banner_names_its_copy_and_waits_for_the_probe() {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let blue = crate::demo::Deployment::start("blue", any)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let green = crate::demo::Deployment::start("green", any)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let copy = std::env::temp_dir().join("steer-demo-1/routes.toml");
        let text = demo_instructions(
            "http://127.0.0.1:8080",
            "http://127.0.0.1:9901",
            &blue,
            &green,
            &copy,
        );
        assert!(text.contains(&format!("Route table: {}", copy.display())));
        assert!(text.contains(&format!("green = 100/' {}", copy.display())));
        // The wait for the probe comes between the failure and the loop.
        let fail = text.find("/demo/fail").unwrap_or(0);
        let wait = text.find("until curl").unwrap_or(0);
        let look = text.find("for i in").unwrap_or(0);
        assert!(fail < wait && wait < look, "{text}");
        assert!(!text.contains(" routes.toml "), "{text}");
    }
}
