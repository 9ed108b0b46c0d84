//! steer: a reverse proxy that steers traffic to identity-server
//! deployments (ZITADEL is the reference upstream).
//!
//! # One request
//!
//! 1. [`server`] accepts and serves the connection: plain HTTP/1.1 in
//!    rounds of hyper's HTTP/1.1 connection that hand the socket back when
//!    idle (`server::park`, so idle connections hold no buffers); TLS and
//!    h2c prior knowledge with hyper-util's auto builder.
//! 2. [`proxy::handle`] loads the live [`table::Table`] once (an `ArcSwap`
//!    snapshot), resolves the client IP, and asks [`routing`] for the first
//!    matching route (404 when none).
//! 3. The route's upstream (a split pick, then the split's other members,
//!    then fallbacks) gives an endpoint through [`upstream`] balancing over
//!    healthy endpoints (503 when none).
//! 4. [`proxy`] rewrites headers and sends through the endpoint's pool in
//!    [`client`]; the in-flight guard and the HTTP/1.1 connection go back
//!    when the response body ends.
//! 5. Every error becomes a response in [`proxy::error_response`].
//!
//! # One reload
//!
//! File event / poll / SIGHUP / `POST /reload` -> [`reload`] ->
//! [`config::load`] -> [`table::Table::build`] (reusing endpoints that stay)
//! -> one atomic swap. Requests running keep their snapshot.
//!
//! # Module map
//!
//! - [`config`]: the only reader of TOML; validated domain types, errors
//!   with FILE:LINE:COL.
//! - [`routing`]: compiled route table and matchers, client-IP resolution.
//!   Pure.
//! - [`upstream`]: upstreams, endpoints (health state, in-flight), balancing.
//! - [`health`]: the threshold state machine and the probe tasks.
//! - [`client`]: per-endpoint connection pools (HTTP/1.1, h2c).
//! - [`table`]: the live table built from a config.
//! - [`proxy`]: the request path, header rules, error mapping, per-route
//!   rate limits (429) and the retry budget.
//! - [`server`]: listeners and connection serving (`park`: plain HTTP/1.1
//!   connections that give their buffers back while idle).
//! - [`reload`]: file watch, poll, DNS refresh; sole writer of the table.
//! - [`admin`]: the admin API.
//! - [`metrics`]: Prometheus handles.
//! - [`accesslog`]: the buffered JSON writer of the access log.
//! - [`tls`]: rustls server certificates (SNI, reload) and upstream TLS.
//! - [`app`]: wiring, lifecycle, and the `check`/`route`/`demo` commands.
//! - [`demo`]: the ZITADEL-like deployments behind `steer demo` and tests.
//! - `fuzzing`: the bodies of the cargo-fuzz targets in `fuzz/`.

/// The error type of steer's HTTP bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub mod accesslog;
pub mod admin;
pub mod app;
pub mod body;
pub mod client;
pub mod config;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod server;
pub mod table;
pub mod tls;
pub mod upstream;
