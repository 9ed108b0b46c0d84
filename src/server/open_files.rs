//! The open-files limit: raised to the hard limit at start, and the
//! default `max_connections` fitted to it, as HAProxy fits its `maxconn`
//! to `ulimit -n`. Without the fit, idle clients could take every
//! descriptor, and the requests and probes of everyone else would find
//! none for their upstream connections (503).

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// `max_connections` when the config sets none and the limit allows it.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Descriptors steer needs besides client and upstream connections: its
/// listeners, the admin API's 64 connections, the runtime, health probes,
/// config and certificate reads, with room to spare.
const OTHER_FILES: u64 = 256;

/// Raises the soft open-files limit to the hard one, as Go's runtime does
/// and HAProxy does for its `maxconn`: a soft limit of 1024 (the default of
/// many systems, and of containerd 2's containers) exists for select(2),
/// which steer does not use. For the serving commands only: it changes
/// the whole process.
pub fn raise_to_hard() {
    let (soft, hard) = limits();
    let Some(hard) = hard.filter(|&hard| hard > soft) else {
        return;
    };
    let raised = Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    if let Err(e) = setrlimit(Resource::Nofile, raised) {
        tracing::warn!(soft, hard, error = %e, "could not raise the open-files limit to its hard limit");
    }
}

/// The soft open-files limit in force, and the hard one (`None`:
/// RLIM_INFINITY, which Linux never gives for open files).
pub(crate) fn limits() -> (u64, Option<u64>) {
    let limit = getrlimit(Resource::Nofile);
    (limit.current.unwrap_or(u64::MAX), limit.maximum)
}

/// Descriptors left for client and upstream connections under `limit`.
/// Under a small limit (a test's, a mistake's) a quarter is kept for the
/// rest, so that steer still serves.
fn for_connections(limit: u64) -> u64 {
    limit - OTHER_FILES.min(limit / 4)
}

/// Each proxy listener's connection cap: the configured one, or the
/// default lowered so that every proxy listener's clients, each with an
/// upstream connection (two descriptors), fit under the soft `limit`.
pub(crate) fn connection_cap(configured: Option<usize>, limit: u64, proxy_listeners: u64) -> usize {
    configured.unwrap_or_else(|| {
        let fit = for_connections(limit) / 2 / proxy_listeners.max(1);
        usize::try_from(fit).map_or(DEFAULT_MAX_CONNECTIONS, |fit| {
            fit.clamp(1, DEFAULT_MAX_CONNECTIONS)
        })
    })
}

/// Each proxy listener's cap (`connection_cap`), saying at start when
/// the limit is short: a lowered default cap, or a configured
/// `max_connections` the limit cannot hold (past it, requests that need a
/// new upstream connection get 503).
pub(crate) fn report(limit: u64, proxy_listeners: u64, configured: Option<usize>) -> usize {
    let cap = connection_cap(configured, limit, proxy_listeners);
    let Some(max_connections) = configured else {
        if cap < DEFAULT_MAX_CONNECTIONS {
            tracing::warn!(
                open_files = limit,
                max_connections = cap,
                "max_connections lowered from {DEFAULT_MAX_CONNECTIONS} to fit the open-files limit (a client's and an upstream connection's descriptor each): further clients wait in the listen backlog; raise the limit (LimitNOFILE, ulimit -n) or set max_connections"
            );
        }
        return cap;
    };
    let clients = proxy_listeners.saturating_mul(max_connections as u64);
    let served = for_connections(limit) / 2;
    if clients > served {
        let needed = clients.saturating_mul(2).saturating_add(OTHER_FILES);
        tracing::warn!(
            open_files = limit,
            needed,
            max_connections,
            "the open-files limit is below what max_connections needs (a client's and an upstream connection's descriptor each): past about {served} busy client connections, requests that need a new upstream connection get 503; raise the limit (LimitNOFILE, ulimit -n) or lower max_connections"
        );
    }
    cap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_fits_the_limit_and_a_configured_one_stays() {
        // Containers and systemd units: far more than the default needs.
        assert_eq!(connection_cap(None, 1 << 20, 2), DEFAULT_MAX_CONNECTIONS);
        // 1024, two proxy listeners: (1024 - 256) / 2 / 2.
        assert_eq!(connection_cap(None, 1024, 2), 192);
        assert_eq!(connection_cap(None, 1024, 1), 384);
        // A small limit keeps a quarter for the rest: (128 - 32) / 2.
        assert_eq!(connection_cap(None, 128, 1), 48);
        assert_eq!(connection_cap(None, 0, 1), 1);
        assert_eq!(connection_cap(Some(20), 128, 1), 20);
        assert_eq!(connection_cap(Some(50_000), 1024, 2), 50_000);
    }
}
