//! steer: a reverse proxy that steers traffic to identity-server
//! deployments (ZITADEL is the reference upstream).
//!
//! # One request
//!
//! 1. [`server`] accepts, reads the first bytes under the head deadline
//!    and serves the connection: HTTP/1.1 (plain or TLS) on steer's own
//!    path for requests without a body or with one read whole with the
//!    head (`server::h1`), in rounds of
//!    hyper's HTTP/1.1 connection for the rest (`server::park`), HTTP/2 (h2c or TLS)
//!    with the `h2` crate (`server::h2`), every socket under the send
//!    deadline (`server::io`).
//! 2. [`proxy::handle`] loads the live [`table::Table`] once (an `ArcSwap`
//!    snapshot), checks the head (`proxy::request`: Host, framing, 421,
//!    the path's normal form), resolves the client IP, and asks
//!    [`routing`] for the first matching route (404 when none).
//! 3. The route's upstream (a split pick, then the split's other members,
//!    then fallbacks) gives an endpoint through [`upstream`] balancing over
//!    healthy endpoints (503 when none).
//! 4. [`proxy`] rewrites headers and sends through the endpoint's pool in
//!    [`client`]; a failure the upstream did not process goes elsewhere
//!    (`proxy::resend`, with the body kept by `client::Replay`); the
//!    in-flight guard and the HTTP/1.1 connection go back when the
//!    response body ends.
//! 5. Every error becomes a response in [`proxy::error_response`] (a gRPC
//!    status for gRPC clients).
//!
//! # One reload
//!
//! File event / poll / SIGHUP / `POST /reload` -> [`reload`]: read
//! (`config::read`, off the workers) -> [`config::parse`] -> plan
//! ([`table::Table::build`], reusing endpoints that stay, changing nothing
//! live) -> readiness gate -> commit (listeners, certificates,
//! [`table::Table::activate`], one atomic swap). Requests running keep
//! their snapshot.
//!
//! # Module map
//!
//! - [`config`]: the only reader of TOML; validated domain types, errors
//!   with FILE:LINE:COL; `config::read` reads the files it names (regular
//!   files only, 16 MiB, a deadline).
//! - [`routing`]: compiled route table and matchers, client-IP resolution,
//!   the path's normal form (RFC 3986). Pure.
//! - [`upstream`]: upstreams, endpoints (health state, in-flight), balancing.
//! - [`health`]: the threshold state machine and the probe tasks.
//! - [`client`]: per-endpoint connection pools (HTTP/1.1, HTTP/2), upstream
//!   error classes, replayable request bodies; `client::h1` is steer's own
//!   upstream HTTP/1.1 connection (httparse), `client::h2conn` its HTTP/2
//!   one (the `h2` crate); hyper's client only for upgrades.
//! - [`table`]: the live table built from a config.
//! - `dns`: endpoint names to addresses, all at once, each within a
//!   deadline (`getaddrinfo` in the blocking pool, one lookup per name).
//! - [`body`]: the request body as it arrives (hyper's or h2's, or none).
//! - `h2send`: sending a body on an HTTP/2 stream within the peer's
//!   window (responses to clients, request bodies to upstreams).
//! - [`proxy`]: the request path, head checks, header rules, error mapping,
//!   resends, tunnels, per-route rate limits (429) and the retry budget.
//! - [`server`]: listeners and connection serving (`h1`: steer's own
//!   HTTP/1.1 server path for requests without a body or with one read
//!   whole with the head (httparse); `park`:
//!   HTTP/1.1 connections, plain and TLS, between that path and hyper
//!   rounds, holding no buffer while idle; `h2`: HTTP/2
//!   streams; `io`: send deadline and protocol detection;
//!   `admin_listener`: the admin listener's bounds; `open_files`: the
//!   open-files limit and the connection cap fitted to it). Invariants:
//!   `src/server/LIFECYCLE.md`.
//! - [`reload`]: file watch, poll, DNS refresh, plan and commit; sole
//!   writer of the table.
//! - [`admin`]: the admin API and its access rules.
//! - [`metrics`]: Prometheus handles.
//! - [`accesslog`]: the buffered JSON writer of the access log.
//! - [`tls`]: rustls server certificates (SNI, reload) and upstream TLS.
//! - [`app`]: wiring, lifecycle, and the `check`/`route`/`demo` commands.
//! - [`demo`]: the ZITADEL-like deployments behind `steer demo`,
//!   `steer demo-upstream` and the tests.
//! - `boxed`: futures boxed where they are built (no copy into the box).
//! - `fuzzing`: the bodies of the cargo-fuzz targets in `fuzz/`.

/// The error type of steer's HTTP bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub mod accesslog;
pub mod admin;
pub mod app;
pub mod body;
pub(crate) mod boxed;
pub mod client;
pub mod config;
pub mod demo;
pub(crate) mod dns;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod h2send;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod server;
pub mod table;
pub mod tls;
pub mod upstream;
