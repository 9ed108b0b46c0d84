//! Endpoint names to addresses, within a deadline.
//!
//! A table's names resolve all at once, each within `RESOLVE_TIMEOUT`:
//! a reload (the cutover an operator waits for), steer's start and the
//! `dns_refresh` round take at most that long when the resolver does not
//! answer, instead of glibc's 10 s (5 s, twice) for each name in turn.
//! `getaddrinfo` cannot be cancelled: a lookup past its deadline runs on
//! in its blocking thread, and its name is not looked up again until it
//! ends (`LookingUp`; a caller meanwhile waits for its answer), so a
//! resolver that never answers holds one thread per name, not one per
//! round.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{EndpointAddr, UpstreamSpec};
use crate::table::Table;

/// How long one name may take: a little more than glibc's 5 s for one
/// nameserver, so that the second answers when the first is down.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(6);

/// Every configured endpoint's addresses, per upstream and endpoint as
/// in `specs`. A name that does not resolve keeps the addresses
/// `previous` had for it: a DNS outage must not empty an upstream.
pub(crate) async fn resolve_all(
    specs: &[UpstreamSpec],
    previous: Option<&Table>,
) -> Vec<Vec<Vec<SocketAddr>>> {
    let mut names: Vec<(&str, u16)> = specs
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter_map(|e| match e {
            EndpointAddr::Name { host, port } => Some((host.as_str(), *port)),
            EndpointAddr::Ip(_) => None,
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    let lookups = names.iter().map(|&(host, port)| {
        lookup(host, port, RESOLVE_TIMEOUT, |host, port| {
            (host, port).to_socket_addrs().map(Iterator::collect)
        })
    });
    let found: HashMap<_, _> = names
        .iter()
        .copied()
        .zip(futures_util::future::join_all(lookups).await)
        .collect();
    specs
        .iter()
        .map(|spec| {
            spec.endpoints
                .iter()
                .map(|e| addresses(e, spec, previous, &found))
                .collect()
        })
        .collect()
}

/// One endpoint's addresses from the lookups, or from `previous`.
fn addresses(
    configured: &EndpointAddr,
    spec: &UpstreamSpec,
    previous: Option<&Table>,
    found: &HashMap<(&str, u16), io::Result<Vec<SocketAddr>>>,
) -> Vec<SocketAddr> {
    let (host, port) = match configured {
        EndpointAddr::Ip(addr) => return vec![*addr],
        EndpointAddr::Name { host, port } => (host.as_str(), *port),
    };
    match found.get(&(host, port)) {
        Some(Ok(addrs)) => {
            let mut list = addrs.clone();
            list.sort();
            list.dedup();
            list
        }
        Some(Err(e)) => kept(configured, spec, previous, e),
        None => kept(
            configured,
            spec,
            previous,
            &io::Error::other("not looked up"),
        ),
    }
}

/// The addresses `previous` had for `configured`, after a failed lookup.
fn kept(
    configured: &EndpointAddr,
    spec: &UpstreamSpec,
    previous: Option<&Table>,
    error: &io::Error,
) -> Vec<SocketAddr> {
    let label = configured.to_string();
    let kept: Vec<SocketAddr> = previous
        .and_then(|t| t.upstream(&spec.name))
        .map(|u| {
            u.endpoints
                .iter()
                .filter(|e| e.configured_as == label)
                .map(|e| e.addr)
                .collect()
        })
        .unwrap_or_default();
    tracing::warn!(upstream = %spec.name, endpoint = %label, %error, kept = kept.len(),
        "cannot resolve endpoint name; keeping its previous addresses");
    kept
}

/// A lookup's answer, shared with every caller that asked meanwhile.
type Answer = Option<Arc<io::Result<Vec<SocketAddr>>>>;
type Name = (String, u16);

/// Names whose lookup is under way in the blocking pool, and where its
/// answer will be.
fn looking_up() -> &'static Mutex<HashMap<Name, watch::Receiver<Answer>>> {
    static NAMES: OnceLock<Mutex<HashMap<Name, watch::Receiver<Answer>>>> = OnceLock::new();
    NAMES.get_or_init(Mutex::default)
}

/// A lookup under way: its answer goes to `answer`, and the name leaves
/// `looking_up` when it is dropped (also after a panic in the lookup).
struct LookingUp {
    name: Name,
    answer: watch::Sender<Answer>,
}

impl Drop for LookingUp {
    fn drop(&mut self) {
        let mut names = looking_up().lock().unwrap_or_else(PoisonError::into_inner);
        names.remove(&self.name);
    }
}

/// `resolve(host, port)` in the blocking pool, within `within`. A name
/// already being looked up is not looked up twice: the caller waits for
/// that lookup's answer (within its own `within`).
async fn lookup<F>(
    host: &str,
    port: u16,
    within: Duration,
    resolve: F,
) -> io::Result<Vec<SocketAddr>>
where
    F: FnOnce(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + 'static,
{
    let name = (host.to_owned(), port);
    let mut answer = {
        let mut names = looking_up().lock().unwrap_or_else(PoisonError::into_inner);
        match names.get(&name) {
            Some(answer) => answer.clone(),
            None => {
                let (tx, rx) = watch::channel(None);
                names.insert(name.clone(), rx.clone());
                let place = LookingUp { name, answer: tx };
                tokio::task::spawn_blocking(move || {
                    let (host, port) = &place.name;
                    let found = resolve(host, *port);
                    place.answer.send_replace(Some(Arc::new(found)));
                });
                rx
            }
        }
    };
    let came = tokio::time::timeout(within, answer.wait_for(Option::is_some)).await;
    match came {
        Ok(Ok(found)) => match found.as_deref() {
            Some(Ok(addrs)) => Ok(addrs.clone()),
            Some(Err(e)) => Err(io::Error::new(e.kind(), e.to_string())),
            None => unreachable!("waited for Some"),
        },
        Ok(Err(_)) => Err(io::Error::other("the lookup ended without an answer")),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {within:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_looking_up(host: &str) -> bool {
        let names = looking_up().lock().unwrap();
        names.keys().any(|(h, _)| h == host)
    }

    /// A resolver that does not answer: the lookup gives up at its
    /// deadline; a caller meanwhile starts no second lookup of the name
    /// but gets the first one's answer when it comes; then the name is
    /// looked up anew.
    #[tokio::test]
    async fn a_lookup_that_hangs_is_given_up_and_not_repeated_while_it_runs() {
        let first_addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let (answer, hung) = std::sync::mpsc::channel::<()>();
        let started = std::time::Instant::now();
        let first = lookup(
            "hangs.test",
            8080,
            Duration::from_millis(200),
            move |_, _| {
                let _ = hung.recv();
                Ok(vec![first_addr])
            },
        )
        .await;
        assert_eq!(first.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));
        let mut joined = Box::pin(lookup(
            "hangs.test",
            8080,
            Duration::from_secs(5),
            |_, _| panic!("a second lookup of a name still being looked up"),
        ));
        // Polled once: it waits for the first lookup's answer.
        assert!(futures_util::poll!(&mut joined).is_pending());
        answer.send(()).unwrap();
        assert_eq!(joined.await.unwrap(), vec![first_addr]);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while is_looking_up("hangs.test") {
            assert!(
                std::time::Instant::now() < deadline,
                "the hung lookup never ended"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let addr: SocketAddr = "127.0.0.2:8080".parse().unwrap();
        let later = lookup("hangs.test", 8080, Duration::from_secs(5), move |_, _| {
            Ok(vec![addr])
        })
        .await;
        assert_eq!(later.unwrap(), vec![addr]);
    }
}
