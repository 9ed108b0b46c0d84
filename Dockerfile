# syntax=docker/dockerfile:1
#
# steer container image.
#
#   docker build -t steer:dev .
#   docker run --rm --stop-timeout 45 -p 8080:8080 -p 9901:9901 steer:dev
#
# The image serves /etc/steer/routes.toml (from deploy/docker/routes.toml):
# mount your own file or directory over it. Cache mounts need BuildKit, the
# default builder since Docker 23.

# ---- build -----------------------------------------------------------------
# A concrete toolchain tag, so a rebuild gets the same compiler (Cargo.toml's
# rust-version is the floor; edition 2024 needs >= 1.85). Bookworm matches the
# runtime's glibc.
FROM rust:1.95.0-bookworm AS builder
WORKDIR /src
# Cargo reads every target the manifest declares (the `it` test, the
# benches) even for `cargo build`, so tests/ and benches/ come along;
# routes.toml is compiled in as the demo's table (include_str! in src/app.rs);
# vendor/ holds steer's copies of h2 and rustls (vendor/*/STEER.md).
COPY Cargo.toml Cargo.lock routes.toml ./
COPY vendor ./vendor
COPY src ./src
COPY benches ./benches
COPY tests ./tests
# The binary is copied out inside the same RUN: the target directory is a
# cache mount and does not end up in the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/steer /out/steer

# ---- runtime ---------------------------------------------------------------
# For production, pin this by digest (debian:bookworm-slim@sha256:...).
FROM debian:bookworm-slim

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="steer" \
      org.opencontainers.image.description="A reverse proxy that steers traffic to identity-server deployments (ZITADEL)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/example/steer" \
      org.opencontainers.image.documentation="https://github.com/example/steer#readme" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

# ca-certificates: the system roots for TLS to upstreams (protocol = "https"
# without tls_ca).
# curl: the HEALTHCHECK below (steer has no probe subcommand of its own).
# Versions are not pinned on purpose (DL3008): Debian removes superseded
# versions from the archive when a security update lands, so an exact pin
# breaks the build instead of making it reproducible; pin the base image by
# digest for that.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 steer \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin steer

COPY --from=builder /out/steer /usr/local/bin/steer
# Owned by root and read-only for the steer user; steer only reads it.
COPY deploy/docker/routes.toml /etc/steer/routes.toml

WORKDIR /etc/steer
ENV STEER_CONFIG=/etc/steer/routes.toml \
    RUST_LOG=info

# Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001

# 8080 HTTP/1.1 + h2c, 8443 HTTPS (listen.https, when configured), 9901 admin.
EXPOSE 8080 8443 9901

# SIGTERM: /ready turns 503, listeners keep serving for shutdown_delay, then
# in-flight requests get drain_timeout. Give the container at least
# shutdown_delay + drain_timeout + a margin before SIGKILL (45 s with the
# defaults): `docker run --stop-timeout 45`, compose `stop_grace_period`.
STOPSIGNAL SIGTERM

# Liveness of the process through the admin listener (listen.admin must be
# set and reachable on 127.0.0.1, as in the default config).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9901/healthz"]

ENTRYPOINT ["steer"]
CMD ["run"]
