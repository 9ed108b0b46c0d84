//! The live table: everything a request needs that must change together on
//! a reload (routes, upstreams with their endpoints, proxy settings), built
//! whole from a validated `Config` off the request path. Building reuses the
//! `Arc<Endpoint>` of every endpoint that stays, so health state, in-flight
//! counts and pooled connections carry over; new endpoints get a probe task.
//!
//! Building changes nothing live: endpoints shared with the running table
//! get their new health settings, and new endpoints their metric series,
//! only in `activate`, when the table is committed. Until then the probes
//! of new endpoints run, but record nothing in `/metrics`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::SystemTime;

use crate::config::Target;
use crate::config::{
    AdminSettings, CertificateFiles, Config, EndpointAddr, Listen, LogSettings, Protocol,
    ProxySettings, UpstreamSpec,
};
use crate::health::probe;
use crate::metrics::Metrics;
use crate::proxy::ratelimit::RateLimiter;
use crate::routing::{Ramp, RouteTable, fractions};
use crate::tls::client::{ClientCert, UpstreamTls};
use crate::upstream::{Endpoint, Upstream};

pub use crate::health::probe::ProbeHook;

#[derive(Debug)]
pub struct Table {
    pub version: String,
    pub path: PathBuf,
    pub loaded_at: SystemTime,
    pub listen: Listen,
    pub tls: Vec<CertificateFiles>,
    pub proxy: ProxySettings,
    pub log: LogSettings,
    /// Who may call the admin API (`[admin]`), as of this table's file.
    pub admin: AdminSettings,
    pub routes: RouteTable,
    pub upstreams: Vec<Arc<Upstream>>,
    /// As configured, for re-resolving names every `dns_refresh`.
    pub upstream_specs: Vec<UpstreamSpec>,
    /// Each route's rate limiter (by route index); a reload keeps the
    /// buckets of a route whose name and limit stay.
    pub limiters: Vec<Option<Arc<RateLimiter>>>,
    /// Pre-resolved metric handles, indexed like `routes` and `upstreams`.
    pub metrics: crate::metrics::TableMetrics,
    /// The client certificates upstreams present (`tls_client_cert`), one
    /// per pair of files; re-read in place when the files change.
    pub client_certs: Vec<Arc<ClientCert>>,
}

/// (upstream, how the endpoint is configured + protocol + TLS settings,
/// address): an endpoint is reused only when all of these stay.
type EndpointKey = (String, String, SocketAddr);

fn key(
    upstream: &str,
    configured: &str,
    addr: SocketAddr,
    protocol: Protocol,
    tls_id: &str,
) -> EndpointKey {
    (
        upstream.to_owned(),
        format!("{configured}|{}|{tls_id}", protocol.as_str()),
        addr,
    )
}

/// Builds the TLS settings of an https upstream's endpoints (once per
/// upstream for the root store; the server name is per endpoint).
struct TlsFactory<'a> {
    spec: &'a UpstreamSpec,
    configs: Option<(Arc<rustls::ClientConfig>, Arc<rustls::ClientConfig>)>,
    id: String,
}

impl<'a> TlsFactory<'a> {
    /// `certs` holds the client certificates of the table being built; one
    /// the previous table has for the same files is shared, not re-read.
    fn new(
        spec: &'a UpstreamSpec,
        previous: Option<&Table>,
        certs: &mut Vec<Arc<ClientCert>>,
    ) -> TlsFactory<'a> {
        // The CA file's content is part of the identity: a changed bundle
        // under the same path gives new endpoints (and new connections).
        // A client certificate's content is not: it is swapped under the
        // same endpoints (`tls::client::refresh_client_certs`).
        let ca_hash = spec
            .tls_ca
            .as_ref()
            .and_then(|p| crate::config::read::read(p).ok())
            .map(|b| crate::config::content_hash(&b));
        let client = spec.tls_client_cert.as_ref().map(|f| (&f.cert, &f.key));
        let id = format!(
            "{:?}|{:?}|{:?}|{:?}",
            spec.tls_ca, ca_hash, spec.tls_server_name, client
        );
        if spec.protocol != Protocol::Https {
            return TlsFactory {
                spec,
                configs: None,
                id: String::new(),
            };
        }
        let fail = |e: crate::tls::TlsError| tracing::error!(upstream = %spec.name, error = %e, "cannot set up TLS to this upstream; its requests will fail");
        let cert = match spec
            .tls_client_cert
            .as_ref()
            .map(|files| client_cert(files, previous, certs))
        {
            Some(Err(e)) => {
                fail(e);
                return TlsFactory {
                    spec,
                    configs: None,
                    id,
                };
            }
            loaded => loaded.and_then(Result::ok),
        };
        let configs = crate::tls::client::client_configs(spec.tls_ca.as_deref(), cert)
            .map_err(fail)
            .ok();
        TlsFactory { spec, configs, id }
    }

    fn for_endpoint(&self, configured: &EndpointAddr) -> Option<UpstreamTls> {
        let (config, config_h1) = self.configs.clone()?;
        let host = match configured {
            EndpointAddr::Ip(addr) => addr.ip().to_string(),
            EndpointAddr::Name { host, .. } => host.clone(),
        };
        match crate::tls::client::server_name(self.spec.tls_server_name.as_deref(), &host) {
            Ok(server_name) => Some(UpstreamTls {
                config,
                config_h1,
                server_name,
            }),
            Err(e) => {
                tracing::error!(upstream = %self.spec.name, error = %e, "cannot set up TLS to this endpoint; its requests will fail");
                None
            }
        }
    }
}

/// The client certificate for `files`: already in `certs`, else the
/// previous table's, else read now; listed in `certs` either way.
fn client_cert(
    files: &CertificateFiles,
    previous: Option<&Table>,
    certs: &mut Vec<Arc<ClientCert>>,
) -> Result<Arc<ClientCert>, crate::tls::TlsError> {
    if let Some(c) = certs.iter().find(|c| c.is_from(files)) {
        return Ok(c.clone());
    }
    let kept = previous.and_then(|t| t.client_certs.iter().find(|c| c.is_from(files)));
    let cert = match kept {
        Some(c) => c.clone(),
        None => ClientCert::load(files)?,
    };
    certs.push(cert.clone());
    Ok(cert)
}

impl Table {
    /// Builds a table, resolving endpoint names. `previous` donates the
    /// endpoints (and drain flags) that stay.
    pub async fn build(
        config: Config,
        previous: Option<&Table>,
        hook: &ProbeHook,
        metrics: &Metrics,
    ) -> Table {
        let mut keep: HashMap<EndpointKey, Arc<Endpoint>> = HashMap::new();
        let mut drains: HashMap<&str, Arc<AtomicBool>> = HashMap::new();
        if let Some(prev) = previous {
            for u in &prev.upstreams {
                drains.insert(&u.name, u.draining.clone());
                for e in &u.endpoints {
                    keep.insert(
                        key(&u.name, &e.configured_as, e.addr, e.protocol, &e.tls_id),
                        e.clone(),
                    );
                }
            }
        }
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        let mut client_certs = Vec::new();
        let resolved = crate::dns::resolve_all(&config.upstreams, previous).await;
        for (spec, resolved) in config.upstreams.iter().zip(resolved) {
            let tls = TlsFactory::new(spec, previous, &mut client_certs);
            let mut endpoints: Vec<Arc<Endpoint>> = Vec::new();
            for (configured, addrs) in spec.endpoints.iter().zip(resolved) {
                for addr in addrs {
                    let label = configured.to_string();
                    let ep =
                        match keep.remove(&key(&spec.name, &label, addr, spec.protocol, &tls.id)) {
                            Some(ep) => ep,
                            None => {
                                // Not live yet: its settings can be set now,
                                // and its probes may start.
                                let ep = Endpoint::new(&spec.name, addr, label, spec.protocol)
                                    .with_tls(tls.for_endpoint(configured), tls.id.clone());
                                let ep = Arc::new(ep);
                                ep.set_health_spec(spec.health.clone());
                                if spec.health.is_none() {
                                    ep.assume_healthy();
                                }
                                probe::spawn(&ep, hook.clone());
                                ep
                            }
                        };
                    if !endpoints.iter().any(|e| Arc::ptr_eq(e, &ep)) {
                        endpoints.push(ep);
                    }
                }
            }
            let draining = drains.get(spec.name.as_str()).cloned().unwrap_or_default();
            upstreams.push(Arc::new(Upstream::new(
                spec.name.clone(),
                spec.protocol,
                spec.balance,
                spec.health.clone(),
                endpoints,
                draining,
            )));
        }
        let table_metrics = metrics.for_table(&config.routes, &upstreams);
        let limiters = config
            .routes
            .iter()
            .map(|r| {
                let spec = r.rate_limit.clone()?;
                let kept = previous.and_then(|p| {
                    let i = p
                        .routes
                        .routes()
                        .iter()
                        .position(|x| x.spec.name == r.name)?;
                    p.limiters.get(i)?.clone().filter(|l| l.spec == spec)
                });
                Some(kept.unwrap_or_else(|| Arc::new(RateLimiter::new(spec))))
            })
            .collect();
        Table {
            version: config.version,
            path: config.path,
            loaded_at: SystemTime::now(),
            listen: config.listen,
            tls: config.tls,
            proxy: config.proxy,
            log: config.log,
            admin: config.admin,
            routes: with_ramps(RouteTable::new(config.routes), previous, &upstreams),
            upstreams,
            upstream_specs: config.upstreams,
            metrics: table_metrics,
            limiters,
            client_certs,
        }
    }

    /// What becomes true when this table is swapped in over `previous`
    /// (the commit of a reload; `None` at startup): every endpoint takes
    /// its upstream's health settings (an endpoint shared with the running
    /// table only now), gets its metric series and records its probes from
    /// now on; the version metric; the series of endpoints that are gone;
    /// the start of the split ramps (time spent waiting at the reload gate
    /// does not count).
    pub fn activate(&mut self, previous: Option<&Table>, metrics: &Metrics) {
        for u in &self.upstreams {
            for e in &u.endpoints {
                e.set_health_spec(u.health.clone());
                if u.health.is_none() {
                    e.assume_healthy();
                }
                e.commit(|| metrics.endpoint_gauges(&u.name, &e.addr.to_string()));
            }
        }
        metrics.config_version(&self.version);
        for u in previous.map_or(&[][..], |p| &p.upstreams[..]) {
            for e in &u.endpoints {
                let still = self
                    .upstreams
                    .iter()
                    .any(|n| n.name == u.name && n.endpoints.iter().any(|x| x.addr == e.addr));
                if !still {
                    metrics.forget_endpoint(&u.name, &e.addr.to_string());
                }
            }
        }
        self.routes.restart_ramps(std::time::Instant::now());
    }

    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.name == name)
    }

    /// Whether any endpoint is configured by name (needs re-resolving).
    pub fn has_names(&self) -> bool {
        self.upstream_specs.iter().any(|u| {
            u.endpoints
                .iter()
                .any(|e| matches!(e, EndpointAddr::Name { .. }))
        })
    }

    /// The addresses names resolve to now, to compare with what the table has.
    pub async fn resolved_addresses(&self) -> Vec<Vec<SocketAddr>> {
        let resolved = crate::dns::resolve_all(&self.upstream_specs, Some(self)).await;
        resolved.into_iter().map(|u| u.concat()).collect()
    }

    /// Whether every endpoint with active checks has been probed at least once.
    pub fn first_round_done(&self) -> bool {
        self.upstreams
            .iter()
            .flat_map(|u| u.endpoints.iter())
            .all(|e| e.health_spec().is_none() || e.last_check().is_some())
    }
}

/// Starts the ramps of split routes with `ramp` whose weights differ from
/// what the previous table sent (its effective weights, mid-ramp or not).
fn with_ramps(
    mut routes: RouteTable,
    previous: Option<&Table>,
    upstreams: &[Arc<Upstream>],
) -> RouteTable {
    let Some(prev) = previous else { return routes };
    let now = std::time::Instant::now();
    let index_of = |name: &str| upstreams.iter().position(|u| u.name == name);
    let mut starts = Vec::new();
    for route in routes.routes() {
        let (Some(duration), Target::Split(parts)) = (route.spec.ramp, &route.spec.target) else {
            continue;
        };
        let Some(old) = prev
            .routes
            .routes()
            .iter()
            .find(|r| r.spec.name == route.spec.name)
        else {
            continue;
        };
        let to = fractions(parts);
        if let Some(r) = old.ramp.as_ref().filter(|r| r.governs(now))
            && by_name(&r.to, &prev.upstreams) == by_name(&to, upstreams)
        {
            // Same destination (a DNS refresh, an unrelated edit): the
            // ramp in progress goes on where it is, and one that was rolled
            // back stays rolled back (its guard goes along).
            let from = r
                .from
                .iter()
                .filter_map(|(u, w)| Some((index_of(&prev.upstreams[*u].name)?, *w)))
                .collect();
            starts.push((
                route.index,
                Ramp {
                    from,
                    to,
                    start: r.start,
                    duration: r.duration,
                    guard: r.guard.clone(),
                },
                true,
            ));
            continue;
        }
        let old_shares: Vec<(String, f64)> = match (&old.ramp, &old.spec.target) {
            (Some(r), _) if r.governs(now) => r
                .upstreams()
                .map(|u| (u, r.share(u, now)))
                .map(|(u, w)| (prev.upstreams[u].name.clone(), w))
                .collect(),
            (_, Target::Split(p)) => fractions(p)
                .into_iter()
                .map(|(u, w)| (prev.upstreams[u].name.clone(), w))
                .collect(),
            (_, Target::Upstream(u)) => vec![(prev.upstreams[*u].name.clone(), 1.0)],
        };
        let from: Vec<(usize, f64)> = old_shares
            .iter()
            .filter_map(|(n, w)| Some((index_of(n)?, *w)))
            .collect();
        let same = to.iter().all(|(u, w)| {
            (from.iter().find(|(x, _)| x == u).map_or(0.0, |(_, f)| *f) - w).abs() < 1e-9
        });
        if !same {
            let guard = route.spec.rollback.map(|spec| {
                let share = |list: &[(usize, f64)], u: usize| {
                    list.iter().find(|(x, _)| *x == u).map_or(0.0, |(_, w)| *w)
                };
                let raising = to
                    .iter()
                    .filter(|(u, w)| *w > share(&from, *u))
                    .filter_map(|(u, _)| Some(upstreams.get(*u)?.name.clone()))
                    .collect();
                Arc::new(crate::routing::rollback::Guard::new(spec, raising))
            });
            starts.push((
                route.index,
                Ramp {
                    from,
                    to,
                    start: now,
                    duration,
                    guard,
                },
                false,
            ));
        }
    }
    for (index, ramp, continued) in starts {
        if !continued {
            tracing::info!(route = %routes.routes()[index].spec.name, ?ramp.duration, "split weights ramping to the new values");
        }
        routes.set_ramp(index, ramp, continued);
    }
    routes
}

/// Shares keyed by upstream name (indices differ between tables), sorted.
fn by_name(shares: &[(usize, f64)], upstreams: &[Arc<Upstream>]) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = shares
        .iter()
        .filter_map(|(u, w)| Some((upstreams.get(*u)?.name.clone(), (w * 1e9) as u64)))
        .collect();
    v.sort();
    v
}
