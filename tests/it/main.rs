//! Integration tests: real sockets on port 0, real upstreams, real clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod cutover;
mod delivery;
mod examples;
mod failover;
mod forwarding;
mod fuzz;
mod grpc;
mod h2_upstream;
mod hardening;
mod health;
mod lifecycle;
mod mtls;
mod observability;
mod protocol;
mod support;
mod tls;
mod websocket;
