//! TLS to upstreams (`protocol = "https"`, ZITADEL's "enabled" TLS mode):
//! roots from `tls_ca` or the system store, the server name from
//! `tls_server_name` or the endpoint's host, ALPN h2 with http/1.1 as the
//! fallback, and the client certificate of `tls_client_cert` (mutual TLS),
//! re-read when its files change. Health probes use the same settings.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use rustls::ClientConfig;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;

use super::{LoadedCert, TlsError, load_pair, provider, read_certs};
use crate::config::CertificateFiles;

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

/// The certificate steer presents to an upstream that asks for one. The
/// live table lists those its upstreams use (`Table::client_certs`), and
/// one stays shared across reloads that keep its paths, so `refresh`
/// swaps new content in under every connection config that uses it.
#[derive(Debug)]
pub struct ClientCert {
    current: ArcSwap<LoadedCert>,
}

impl ClientCert {
    pub fn load(files: &CertificateFiles) -> Result<Arc<ClientCert>, TlsError> {
        Ok(Arc::new(ClientCert {
            current: ArcSwap::from_pointee(load_pair(files)?),
        }))
    }

    /// Whether this is the certificate `files` name.
    pub fn is_from(&self, files: &CertificateFiles) -> bool {
        let loaded = self.current.load();
        loaded.files.cert == files.cert && loaded.files.key == files.key
    }

    pub fn cert_path(&self) -> std::path::PathBuf {
        self.current.load().files.cert.clone()
    }

    /// Re-reads the files when their content changed; `Ok(true)` when the
    /// next handshake presents the new pair. An error keeps the old one.
    pub fn refresh(&self) -> Result<bool, TlsError> {
        let loaded = self.current.load_full();
        if super::file_hash(&loaded.files).as_deref() == Some(loaded.hash.as_str()) {
            return Ok(false);
        }
        self.current.store(Arc::new(load_pair(&loaded.files)?));
        Ok(true)
    }
}

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Client configs trusting `ca` (a PEM bundle) or the system roots, and
/// presenting `cert` when the upstream asks for a client certificate.
pub fn client_configs(
    ca: Option<&Path>,
    cert: Option<Arc<ClientCert>>,
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
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Setup)?
            .with_root_certificates(roots.clone());
        let mut config = match &cert {
            Some(c) => config.with_client_cert_resolver(c.clone()),
            None => config.with_no_client_auth(),
        };
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
