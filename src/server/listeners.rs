//! The set of listening sockets (http, https, admin) and what serves them.
//! A reload that changes an address binds the new socket before the old
//! one stops accepting; a bind failure changes nothing. The sockets can be
//! duplicated for a binary upgrade (`handover`).

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::handover::{Received, Socket};
use super::{TlsListener, bind, serve_admin, serve_proxy};
use crate::config::{Listen, ProxySettings};
use crate::metrics::Metrics;
use crate::proxy::{ProxyBody, Shared};
use crate::tls::TlsStore;

pub type AdminFuture = Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>;
pub type AdminHandler = Arc<dyn Fn(Request<Incoming>) -> AdminFuture + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http,
    Https,
    Admin,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Http, Kind::Https, Kind::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Https => "https",
            Kind::Admin => "admin",
        }
    }

    fn configured(self, listen: &Listen) -> Option<SocketAddr> {
        match self {
            Kind::Http => listen.http,
            Kind::Https => listen.https,
            Kind::Admin => listen.admin,
        }
    }
}

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({name}): {source}")]
pub struct BindError {
    pub name: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

struct Slot {
    configured: SocketAddr,
    local: SocketAddr,
    /// A duplicate of the listening socket, for a handover.
    fd: OwnedFd,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

pub struct ListenerSet {
    shared: Arc<Shared>,
    tls: Option<Arc<TlsStore>>,
    metrics: Metrics,
    admin: OnceLock<AdminHandler>,
    slots: Mutex<[Option<Slot>; 3]>,
}

impl std::fmt::Debug for ListenerSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListenerSet")
    }
}

/// `settings` with each proxy listener's connection cap resolved: the
/// configured one, or the default fitted to the open-files limit and the
/// proxy listeners `listen` has.
fn with_connection_cap(settings: &ProxySettings, listen: &Listen) -> ProxySettings {
    let proxy_listeners = [Kind::Http, Kind::Https]
        .iter()
        .filter(|kind| kind.configured(listen).is_some())
        .count() as u64;
    let (limit, _) = super::open_files::limits();
    let cap = super::open_files::connection_cap(settings.max_connections, limit, proxy_listeners);
    ProxySettings {
        max_connections: Some(cap),
        ..settings.clone()
    }
}

fn index(kind: Kind) -> usize {
    match kind {
        Kind::Http => 0,
        Kind::Https => 1,
        Kind::Admin => 2,
    }
}

impl ListenerSet {
    pub fn new(shared: Arc<Shared>, tls: Option<Arc<TlsStore>>, metrics: Metrics) -> ListenerSet {
        ListenerSet {
            shared,
            tls,
            metrics,
            admin: OnceLock::new(),
            slots: Mutex::new([None, None, None]),
        }
    }

    pub fn set_admin_handler(&self, handler: AdminHandler) {
        let _ = self.admin.set(handler);
    }

    pub fn local(&self, kind: Kind) -> Option<SocketAddr> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)[index(kind)]
            .as_ref()
            .map(|s| s.local)
    }

    /// Makes the listeners match `listen`: binds (or takes over from
    /// `handed`) every changed address first, and only if all succeed
    /// starts serving them and stops the old ones.
    pub fn apply(
        &self,
        listen: &Listen,
        settings: &ProxySettings,
        mut handed: Option<&mut Received>,
    ) -> Result<(), BindError> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let mut fresh: Vec<(Kind, SocketAddr, TcpListener)> = Vec::new();
        for kind in Kind::ALL {
            let Some(addr) = kind.configured(listen) else {
                continue;
            };
            if slots[index(kind)]
                .as_ref()
                .is_some_and(|s| s.configured == addr)
            {
                continue;
            }
            let taken = handed
                .as_deref_mut()
                .and_then(|h| h.take(kind.name(), addr));
            let listener = match taken {
                Some(std) => TcpListener::from_std(std),
                None => bind(addr),
            }
            .map_err(|source| BindError {
                name: kind.name(),
                addr,
                source,
            })?;
            fresh.push((kind, addr, listener));
        }
        if listen.https.is_some() && self.tls.is_none() {
            return Err(BindError {
                name: "https",
                addr: listen.https.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                source: std::io::Error::other(
                    "serving https needs certificates at start; restart steer",
                ),
            });
        }
        for kind in Kind::ALL {
            let slot = &mut slots[index(kind)];
            if kind.configured(listen).is_none()
                && let Some(old) = slot.take()
            {
                let _ = old.stop.send(true);
            }
        }
        let settings = &with_connection_cap(settings, listen);
        for (kind, addr, listener) in fresh {
            let slot = self
                .serve(kind, addr, listener, settings)
                .map_err(|source| BindError {
                    name: kind.name(),
                    addr,
                    source,
                })?;
            tracing::info!(listener = kind.name(), addr = %slot.local, "listening");
            if let Some(old) = slots[index(kind)].replace(slot) {
                tracing::info!(listener = kind.name(), addr = %old.local, "old listener stops accepting");
                let _ = old.stop.send(true);
            }
        }
        Ok(())
    }

    fn serve(
        &self,
        kind: Kind,
        configured: SocketAddr,
        listener: TcpListener,
        settings: &ProxySettings,
    ) -> std::io::Result<Slot> {
        let local = listener.local_addr()?;
        let fd = listener.as_fd().try_clone_to_owned()?;
        let (stop, stop_rx) = watch::channel(false);
        let settings = settings.clone();
        let task = match kind {
            Kind::Http | Kind::Https => {
                let tls = match (kind, &self.tls) {
                    (Kind::Https, Some(store)) => Some(TlsListener {
                        handshake_timeout: settings.tls_handshake_timeout,
                        store: store.clone(),
                    }),
                    _ => None,
                };
                tokio::spawn(serve_proxy(
                    listener,
                    tls,
                    self.shared.clone(),
                    settings,
                    stop_rx,
                    self.metrics.connections(kind.name()),
                    kind.name(),
                ))
            }
            Kind::Admin => {
                let handler = self
                    .admin
                    .get()
                    .cloned()
                    .ok_or_else(|| std::io::Error::other("admin handler not set"))?;
                tokio::spawn(serve_admin(
                    listener,
                    stop_rx,
                    move |req| handler(req),
                    settings,
                    self.metrics.send_timeouts(kind.name()),
                ))
            }
        };
        Ok(Slot {
            configured,
            local,
            fd,
            stop,
            task,
        })
    }

    /// Duplicates of the listening sockets, for a new steer.
    pub fn sockets(&self) -> std::io::Result<Vec<Socket>> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        Kind::ALL
            .iter()
            .filter_map(|k| slots[index(*k)].as_ref().map(|s| (*k, s)))
            .map(|(kind, s)| {
                Ok(Socket {
                    kind: kind.name().to_owned(),
                    configured: s.configured,
                    fd: s.fd.try_clone()?,
                })
            })
            .collect()
    }

    /// Stops accepting on `kinds` and waits until their open connections
    /// are done (up to the table's `drain_timeout`, see `serve_proxy`).
    pub async fn stop(&self, kinds: &[Kind]) {
        let taken: Vec<Slot> = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            kinds
                .iter()
                .filter_map(|k| slots[index(*k)].take())
                .collect()
        };
        for slot in &taken {
            let _ = slot.stop.send(true);
        }
        for slot in taken {
            let _ = slot.task.await;
        }
    }
}
