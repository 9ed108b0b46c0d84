//! TLS to upstreams (`protocol = "https"`, ZITADEL's "enabled" TLS mode):
//! roots from `tls_ca` or the system store, the server name from
//! `tls_server_name` or the endpoint's host, ALPN h2 with http/1.1 as the
//! fallback. Health probes use the same settings.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use super::{TlsError, provider, read_certs};

/// TLS settings for one upstream endpoint.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// ALPN h2, http/1.1.
    pub config: Arc<ClientConfig>,
    /// ALPN http/1.1 only: for upgrades (WebSocket) that must not land on h2.
    pub config_h1: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// The system's root certificates, read once.
fn native_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut store = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "problem reading the system's root certificates");
            }
            let (added, ignored) = store.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "system root certificates loaded");
            Arc::new(store)
        })
        .clone()
}

/// Client configs trusting `ca` (a PEM bundle) or the system roots.
pub fn client_configs(
    ca: Option<&Path>,
) -> Result<(Arc<ClientConfig>, Arc<ClientConfig>), TlsError> {
    let roots = match ca {
        Some(path) => {
            let mut store = rustls::RootCertStore::empty();
            for cert in read_certs(path)? {
                store.add(cert).map_err(|e| TlsError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
            }
            Arc::new(store)
        }
        None => native_roots(),
    };
    let build = |alpn: Vec<Vec<u8>>| -> Result<Arc<ClientConfig>, TlsError> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Setup)?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = alpn;
        Ok(Arc::new(config))
    };
    Ok((
        build(vec![b"h2".to_vec(), b"http/1.1".to_vec()])?,
        build(vec![b"http/1.1".to_vec()])?,
    ))
}

/// The name to verify: `tls_server_name` if set, else the endpoint's host
/// (a DNS name, or an IP address checked against the certificate's IP SANs).
pub fn server_name(explicit: Option<&str>, host: &str) -> Result<ServerName<'static>, String> {
    let name = explicit.unwrap_or(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(name.to_owned())
        .map_err(|e| format!("`{name}` is not a valid TLS server name: {e}"))
}
