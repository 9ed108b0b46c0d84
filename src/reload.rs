//! Reloading: file events (the file, a rename over it, a ConfigMap `..data`
//! symlink swap: the directory is watched), a slow poll as a fallback,
//! SIGHUP and `POST /reload` -> read -> parse -> plan -> (readiness gate) ->
//! commit. The sole writer of the live table.
//!
//! A reload is plan, then commit. The plan (the parsed file, the new
//! certificates, the built table) changes nothing live. The commit, after
//! the gate or at once, applies listeners (bound first: a bind failure
//! still changes nothing), certificates, endpoint health settings, metric
//! series and the table, together. A reload that is rejected, superseded
//! or kept out changes nothing but `last_error` and the failure counter.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::{self, Config, GateTimeout, LoadError, ReloadSettings};
use crate::proxy::Shared;
use crate::server::listeners::{BindError, ListenerSet};
use crate::table::{ProbeHook, Table};
use crate::tls::TlsStore;

/// How long a burst of file events is given to settle before one reload.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// The poll that catches what file events miss (some network and overlay
/// file systems send none).
const POLL: Duration = Duration::from_secs(5);

pub struct Reloader {
    path: PathBuf,
    shared: Arc<Shared>,
    hook: ProbeHook,
    tls: Option<Arc<TlsStore>>,
    listeners: OnceLock<Arc<ListenerSet>>,
    /// The last certificate refresh error (cleared by a good refresh).
    cert_error: Mutex<Option<String>>,
    /// Why the file (as last tried) is not what runs; cleared by a commit,
    /// and when the file returns to what runs.
    config_error: Mutex<Option<String>>,
    /// Hash of the file as last read, good or not: a rejected file is
    /// reported once, not at every poll.
    seen: Mutex<Option<String>>,
    /// Bumped by every built table; a gated reload applies only while its
    /// generation is the newest.
    generation: AtomicU64,
    pending: Mutex<Option<Pending>>,
    /// Serialises reloads: two triggers at once must not interleave builds.
    lock: tokio::sync::Mutex<Option<Config>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .finish()
    }
}

/// How often a gated reload looks at its upstreams' health.
const GATE_POLL: Duration = Duration::from_millis(50);

/// What a reload did: the version it loaded, and whether that table waits
/// at the readiness gate instead of serving already.
#[derive(Debug, Clone)]
pub struct Reloaded {
    pub version: String,
    pub pending: bool,
}

/// A reload waiting for upstreams to become healthy.
#[derive(Debug, Clone)]
pub struct Pending {
    pub version: String,
    pub waiting_for: Vec<String>,
    pub since: SystemTime,
    pub gate_timeout: Duration,
}

/// Why a reload did not apply.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Load(#[from] LoadError),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Listen(#[from] BindError),
}

/// A reload read, checked and built, that changes nothing until
/// committed.
struct Plan {
    table: Table,
    config: Config,
    /// Certificates to serve from the commit on (their paths changed).
    certs: Option<crate::tls::CertSet>,
    /// Client certificate verification from the commit on (changed).
    client_auth: Option<crate::tls::ClientAuthPlan>,
}

impl ReloadError {
    pub fn messages(&self) -> Vec<String> {
        match self {
            ReloadError::Load(e) => e.messages(),
            other @ (ReloadError::Listen(_) | ReloadError::Tls(_)) => {
                vec![other.to_string()]
            }
        }
    }
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        shared: Arc<Shared>,
        hook: ProbeHook,
        loaded: Config,
        tls: Option<Arc<TlsStore>>,
    ) -> Reloader {
        Reloader {
            path,
            shared,
            hook,
            tls,
            listeners: OnceLock::new(),
            cert_error: Mutex::new(None),
            generation: AtomicU64::new(0),
            pending: Mutex::new(None),
            config_error: Mutex::new(None),
            seen: Mutex::new(Some(loaded.version.clone())),
            lock: tokio::sync::Mutex::new(Some(loaded)),
        }
    }

    /// Re-reads certificate files whose content changed (in place or by a
    /// Secret's symlink swap): served certificates, the client CA and
    /// upstream client certificates. A broken file keeps what it held
    /// before in use and is reported like a rejected config, until every
    /// file is fine again.
    pub fn refresh_certificates(&self) {
        let mut errors = Vec::new();
        if let Some(store) = &self.tls {
            match store.refresh() {
                Ok(false) => {}
                Ok(true) => {
                    self.shared.metrics.certificates(&store.current().certs);
                    tracing::info!("certificates reloaded");
                }
                Err(e) => errors.push(e.to_string()),
            }
            match store.refresh_client_auth() {
                Ok(false) => {}
                Ok(true) => tracing::info!("client CA reloaded; new handshakes verify against it"),
                Err(e) => errors.push(format!("[listen.client_auth]: {e}")),
            }
        }
        for cert in &self.shared.live.load().client_certs {
            match cert.refresh() {
                Ok(false) => {}
                Ok(true) => tracing::info!(cert = %cert.cert_path().display(),
                    "upstream client certificate reloaded; new connections present it"),
                Err(e) => errors.push(format!("upstream client certificate: {e}")),
            }
        }
        let mut cert_error = lock(&self.cert_error);
        if errors.is_empty() {
            *cert_error = None;
            return;
        }
        let text = errors.join("\n");
        if cert_error.as_deref() != Some(text.as_str()) {
            tracing::error!(error = %text, "certificate rejected; the one before is still in use");
            self.shared.metrics.reload(false);
            *cert_error = Some(text);
        }
    }

    /// Lets reloads apply `[listen]` changes.
    pub fn set_listeners(&self, listeners: Arc<ListenerSet>) {
        let _ = self.listeners.set(listeners);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What is wrong, if anything: the file as last tried and the
    /// certificates being watched.
    pub fn last_error(&self) -> Option<String> {
        match (
            lock(&self.config_error).clone(),
            lock(&self.cert_error).clone(),
        ) {
            (Some(c), Some(t)) => Some(format!("{c}\n{t}")),
            (c, t) => c.or(t),
        }
    }

    /// The content hash of the file as last read from disk.
    pub fn file_version(&self) -> Option<String> {
        lock(&self.seen).clone()
    }

    /// Re-reads the file. With `force` false (file events, polling) nothing
    /// happens when the content hash is unchanged. Returns the version.
    pub async fn reload(self: &Arc<Self>, force: bool) -> Result<Reloaded, ReloadError> {
        let mut last_good = self.lock.lock().await;
        let current = self.shared.live.load_full();
        // Off the workers and under a deadline: a FIFO, a device or a hung
        // mount cannot stall serving (`config::read`).
        let text = match config::read::config_file(&self.path).await {
            Ok(t) => t,
            Err(source) => {
                let err = LoadError::Read {
                    path: self.path.display().to_string(),
                    source,
                };
                return Err(self.reject(ReloadError::Load(err), force));
            }
        };
        let hash = config::content_hash(&text);
        let seen = lock(&self.seen).replace(hash.clone());
        let unchanged = Reloaded {
            version: current.version.clone(),
            pending: false,
        };
        if !force && hash == current.version {
            self.file_matches_running();
            return Ok(unchanged);
        }
        if !force && seen.as_deref() == Some(hash.as_str()) {
            return Ok(unchanged);
        }
        let plan = match self.plan(text, &current).await {
            Ok(plan) => plan,
            Err(e) => return Err(self.reject(e, true)),
        };
        let version = plan.table.version.clone();
        // This reload supersedes one waiting at the gate, whatever becomes
        // of it.
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        *lock(&self.pending) = None;
        let waiting = gate::waiting_for(&plan.table, &current);
        if waiting.is_empty() {
            self.commit(plan, &mut last_good)
                .map_err(|e| self.reject(e, true))?;
            return Ok(Reloaded {
                version,
                pending: false,
            });
        }
        let settings = plan.config.reload.clone();
        tracing::info!(version = %version, waiting_for = ?waiting, gate_timeout = ?settings.gate_timeout,
            "reload waits until the upstreams it newly routes to have a healthy endpoint");
        *lock(&self.pending) = Some(Pending {
            version: version.clone(),
            waiting_for: waiting.clone(),
            since: SystemTime::now(),
            gate_timeout: settings.gate_timeout,
        });
        tokio::spawn(self.clone().gate(plan, generation, settings, waiting));
        Ok(Reloaded {
            version,
            pending: true,
        })
    }

    /// The file on disk holds what runs again: whatever was wrong with an
    /// earlier version is no longer there, and a reload waiting at the
    /// gate for another version is called off.
    fn file_matches_running(&self) {
        if lock(&self.config_error).take().is_some() {
            tracing::info!(path = %self.path.display(), "the file matches the running table again; last_error cleared");
        }
        if lock(&self.pending).take().is_some() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            tracing::info!("the pending reload is called off: the file matches the running table");
        }
    }

    /// Parses `text`, reads the certificates it names (when their paths
    /// changed) and builds its table, all off the workers. Nothing live
    /// changes.
    async fn plan(
        self: &Arc<Self>,
        text: Vec<u8>,
        current: &Arc<Table>,
    ) -> Result<Plan, ReloadError> {
        let path = self.path.clone();
        let parsed = tokio::task::spawn_blocking(move || {
            config::utf8(text, &path).and_then(|t| config::parse(&t, &path))
        })
        .await
        .unwrap_or_else(|e| {
            let message = format!("the config parser failed: {e}");
            Err(LoadError::Invalid(vec![file_error(&self.path, message)]))
        })?;
        let certs = match &self.tls {
            Some(store) if !parsed.tls.is_empty() && store.files() != parsed.tls => {
                Some(crate::tls::TlsStore::load(&parsed.tls)?)
            }
            _ => None,
        };
        let client_auth = match &self.tls {
            Some(store) if store.client_auth() != parsed.listen.client_auth => {
                let verifier = parsed
                    .listen
                    .client_auth
                    .as_ref()
                    .map(crate::tls::client_verifier)
                    .transpose()?;
                Some(store.plan_client_auth(verifier)?)
            }
            _ => None,
        };
        let (table, config) = self
            .build_off_worker(parsed, current.clone())
            .await
            .map_err(|e| {
                let message = format!("building the table failed: {e}");
                LoadError::Invalid(vec![file_error(&self.path, message)])
            })?;
        Ok(Plan {
            table,
            config,
            certs,
            client_auth,
        })
    }

    /// Applies `plan` (the caller holds the reload lock): listeners first,
    /// as a bind failure must still change nothing; then certificates, the
    /// table's endpoints and metrics, and the swap.
    fn commit(&self, plan: Plan, last_good: &mut Option<Config>) -> Result<(), ReloadError> {
        let Plan {
            mut table,
            config,
            certs,
            client_auth,
        } = plan;
        let current = self.shared.live.load_full();
        if config.listen != current.listen
            && let Some(listeners) = self.listeners.get()
        {
            // New addresses are bound before old ones close; a bind failure
            // leaves every listener as it was.
            listeners.apply(&config.listen, &config.proxy, None)?;
        }
        if let Some(store) = &self.tls {
            if let Some(plan) = client_auth {
                store.install_client_auth(plan);
            }
            match certs {
                Some(set) => {
                    store.install(set, &config.tls);
                    self.shared.metrics.certificates(&store.current().certs);
                    // An error about the files served before is past.
                    *lock(&self.cert_error) = None;
                }
                // TLS removed: its files are no longer watched.
                None if config.tls.is_empty() && !store.files().is_empty() => {
                    store.install_files(&[]);
                    *lock(&self.cert_error) = None;
                }
                None => {}
            }
        }
        let version = table.version.clone();
        table.activate(Some(&current), &self.shared.metrics);
        let old = self.shared.live.swap(Arc::new(table));
        retire(old, last_good.replace(config));
        self.shared.metrics.reload(true);
        *lock(&self.config_error) = None;
        *lock(&self.pending) = None;
        tracing::info!(version = %version, path = %self.path.display(), "config reloaded");
        Ok(())
    }

    /// Waits for the pending table's newly used upstreams, then commits it;
    /// or gives up at the gate timeout, per `on_gate_timeout`. A newer
    /// reload (a higher generation) supersedes this one.
    async fn gate(
        self: Arc<Self>,
        plan: Plan,
        generation: u64,
        settings: ReloadSettings,
        waiting: Vec<String>,
    ) {
        let deadline = tokio::time::Instant::now() + settings.gate_timeout;
        let current = |r: &Self| r.generation.load(Ordering::SeqCst) == generation;
        let version = plan.table.version.clone();
        loop {
            if !current(&self) {
                tracing::info!(version = %version, "pending reload superseded by a newer one");
                return;
            }
            let left = gate::still_waiting(&plan.table, &waiting);
            if let Some(p) = lock(&self.pending).as_mut() {
                p.waiting_for.clone_from(&left);
            }
            if left.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                if settings.on_gate_timeout == GateTimeout::Apply {
                    tracing::warn!(version = %version, waiting_for = ?left, "reload gate timed out; applying anyway");
                    break;
                }
                let text = format!(
                    "reload gate timed out after {:?} waiting for a healthy endpoint in {}; kept the running table",
                    settings.gate_timeout,
                    left.join(", ")
                );
                tracing::error!(version = %version, "{text}");
                // Serialised with reloads: a newer one may have replaced us.
                let _reloads = self.lock.lock().await;
                if current(&self) {
                    self.shared.metrics.reload(false);
                    *lock(&self.config_error) = Some(text);
                    *lock(&self.pending) = None;
                }
                return;
            }
            tokio::time::sleep(GATE_POLL).await;
        }
        let mut last_good = self.lock.lock().await;
        if current(&self)
            && let Err(e) = self.commit(plan, &mut last_good)
        {
            self.reject(e, true);
            *lock(&self.pending) = None;
        }
    }

    /// The reload waiting at the readiness gate, if any (for `/config`).
    pub fn pending(&self) -> Option<Pending> {
        lock(&self.pending).clone()
    }

    fn reject(&self, err: ReloadError, count: bool) -> ReloadError {
        let text = err.messages().join("\n");
        tracing::error!(path = %self.path.display(), error = %text, "config rejected; the running table stays");
        if count {
            self.shared.metrics.reload(false);
            *lock(&self.config_error) = Some(text);
        }
        err
    }

    /// Builds the table for `config` over `previous` on a blocking thread
    /// (with the runtime's handle: the build resolves endpoint names and
    /// starts probe tasks), so that the workers keep serving meanwhile.
    async fn build_off_worker(
        self: &Arc<Self>,
        config: Config,
        previous: Arc<Table>,
    ) -> Result<(Table, Config), tokio::task::JoinError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let table = tokio::runtime::Handle::current().block_on(Table::build(
                config.clone(),
                Some(&previous),
                &this.hook,
                &this.shared.metrics,
            ));
            (table, config)
        })
        .await
    }

    /// Rebuilds the table from the last good config when a name resolves to
    /// other addresses than before (every `dns_refresh`).
    pub async fn refresh_dns(self: &Arc<Self>) {
        let current = self.shared.live.load_full();
        if !current.has_names() {
            return;
        }
        let now = current.resolved_addresses().await;
        let had: Vec<Vec<_>> = current
            .upstreams
            .iter()
            .map(|u| distinct(u.endpoints.iter().map(|e| e.addr).collect()))
            .collect();
        // Both sides as sets: two configured names may resolve to the same
        // address (the table then holds it twice), which is no change.
        let changed = now.iter().zip(&had).any(|(n, h)| &distinct(n.clone()) != h);
        if !changed {
            return;
        }
        let last_good = self.lock.lock().await;
        let Some(config) = last_good.clone() else {
            return;
        };
        let current = self.shared.live.load_full();
        let Ok((mut table, _)) = self.build_off_worker(config, current.clone()).await else {
            tracing::error!(
                "rebuilding the table after a DNS change failed; the running table stays"
            );
            return;
        };
        table.activate(Some(&current), &self.shared.metrics);
        retire(self.shared.live.swap(Arc::new(table)), None);
        tracing::info!("endpoint addresses changed after DNS refresh; table rebuilt");
    }

    /// Runs the file watcher, the poll and the DNS refresh until the process
    /// ends.
    pub async fn watch(self: Arc<Self>) {
        let (tx, mut rx) = mpsc::channel::<()>(16);
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let watcher = notify::recommended_watcher(changes(move |_| {
            let _ = tx.try_send(());
        }));
        // Keep the watcher alive for as long as this task runs.
        let _watcher = match watcher {
            Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    for cert_dir in self.tls.as_ref().map(|t| t.dirs()).unwrap_or_default() {
                        if cert_dir != dir
                            && let Err(e) = w.watch(&cert_dir, RecursiveMode::NonRecursive)
                        {
                            tracing::warn!(dir = %cert_dir.display(), error = %e, "cannot watch certificate directory; polling it");
                        }
                    }
                    Some(w)
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch config directory; polling only");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "no file watcher; polling only");
                None
            }
        };
        // A task of its own: a resolver that does not answer holds a DNS
        // round for up to `dns`'s deadline, and a reload must not wait for it.
        let dns_every = self.shared.live.load().proxy.dns_refresh;
        let refresher = self.clone();
        let dns = tokio::spawn(async move {
            let mut dns = tokio::time::interval(dns_every);
            dns.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                dns.tick().await;
                refresher.refresh_dns().await;
            }
        });
        let _dns = AbortOnDrop(dns);
        let mut poll = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                Some(()) = rx.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                    let _ = self.reload(false).await;
                    self.refresh_certificates();
                }
                _ = poll.tick() => {
                    let _ = self.reload(false).await;
                    self.refresh_certificates();
                }
            }
        }
    }
}

/// Aborts its task when dropped: the DNS refresh ends with the watch.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The file watcher's handler: passes on the events that may have changed
/// a file. An open is an `Access` event (inotify's `IN_OPEN`); steer's own
/// read of the config opens it, and passing that on would start the next
/// reload, and so on, every `DEBOUNCE`. A close after writing is an
/// `Access` event too, and is passed on.
fn changes(mut changed: impl FnMut(notify::Event) + Send + 'static) -> impl notify::EventHandler {
    use notify::event::{AccessKind, AccessMode, EventKind};
    move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res
            && !matches!(event.kind, EventKind::Access(kind)
                if kind != AccessKind::Close(AccessMode::Write))
        {
            changed(event);
        }
    }
}

/// Hands a replaced table and config to the reaper thread, which frees
/// them: freeing 10,000 routes takes milliseconds that the workers should
/// spend serving. The reaper keeps a table until the requests still running
/// on it have let go (checked every 50 ms, at most 60 s), so that its
/// destructor does not run on a worker either.
fn retire(old: Arc<Table>, config: Option<Config>) {
    static REAPER: OnceLock<Mutex<std::sync::mpsc::Sender<Retired>>> = OnceLock::new();
    let sender = REAPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Retired>();
        let spawned = std::thread::Builder::new()
            .name("steer-reaper".into())
            .spawn(move || reap(&rx));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the thread that frees old tables; they are freed where they are dropped");
        }
        Mutex::new(tx)
    });
    // Without the thread (it could not start) the send fails and the pair
    // is dropped here.
    let _ = sender
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send((old, config));
}

/// Addresses sorted, each once.
fn distinct(mut addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    addrs.sort();
    addrs.dedup();
    addrs
}

/// A replaced table and (for a file reload) the config it came from.
type Retired = (Arc<Table>, Option<Config>);

fn reap(rx: &std::sync::mpsc::Receiver<Retired>) {
    let mut held: Vec<(Arc<Table>, std::time::Instant)> = Vec::new();
    loop {
        let next = if held.is_empty() {
            rx.recv().ok()
        } else {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(item) => Some(item),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
        };
        if let Some((table, config)) = next {
            drop(config);
            held.push((table, std::time::Instant::now()));
        } else if held.is_empty() {
            return; // every sender is gone
        }
        held.retain(|(table, since)| {
            Arc::strong_count(table) > 1 && since.elapsed() < Duration::from_secs(60)
        });
    }
}

/// A mutex whose data a panic cannot leave half written (plain values):
/// poisoned or not, it is usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An error about the file as a whole (reported at 1:1).
fn file_error(path: &Path, message: String) -> config::ConfigError {
    config::ConfigError {
        file: path.display().to_string(),
        line: 1,
        col: 1,
        message,
    }
}

/// The readiness gate's rules: a reloaded table waits while an upstream that
/// its routes newly send traffic to (a target or a weighted split member
/// that no route used before, or whose endpoints changed) has no healthy
/// endpoint. Upstreams that were already in use and are down in both
/// tables do not hold a reload back.
mod gate {
    use std::collections::HashSet;
    use std::sync::Arc;

    use crate::config::Target;
    use crate::table::Table;

    fn targets(t: &Table) -> HashSet<&str> {
        let mut out = HashSet::new();
        for r in t.routes.routes() {
            match &r.spec.target {
                Target::Upstream(u) => {
                    out.extend(t.upstreams.get(*u).map(|x| x.name.as_str()));
                }
                Target::Split(parts) => {
                    for (u, w) in parts {
                        if *w > 0 {
                            out.extend(t.upstreams.get(*u).map(|x| x.name.as_str()));
                        }
                    }
                }
            }
        }
        out
    }

    /// Has a healthy endpoint, or no active checks in the new table (its
    /// endpoints are healthy by assumption from the commit on, whatever
    /// probes said before). A drain is an operator's choice, not a
    /// readiness problem, so it does not hold a reload back.
    fn usable(t: &Table, name: &str) -> bool {
        t.upstream(name).is_some_and(|u| {
            u.health.is_none()
                || u.endpoints
                    .iter()
                    .any(|e| e.state() == crate::health::State::Healthy)
        })
    }

    pub fn waiting_for(new: &Table, old: &Table) -> Vec<String> {
        let before = targets(old);
        let mut out: Vec<String> = targets(new)
            .into_iter()
            .filter(|name| !usable(new, name))
            .filter(|name| {
                let same_endpoints = match (new.upstream(name), old.upstream(name)) {
                    (Some(n), Some(o)) => {
                        n.endpoints.len() == o.endpoints.len()
                            && n.endpoints
                                .iter()
                                .all(|e| o.endpoints.iter().any(|x| Arc::ptr_eq(e, x)))
                    }
                    _ => false,
                };
                !before.contains(name) || !same_endpoints
            })
            .map(str::to_owned)
            .collect();
        out.sort();
        out
    }

    pub fn still_waiting(t: &Table, waiting: &[String]) -> Vec<String> {
        waiting.iter().filter(|n| !usable(t, n)).cloned().collect()
    }
}

#[cfg(test)]
mod tests;
