//! TLS with rustls (ring provider): the server side (certificates by SNI,
//! reloaded when their files change) and the client side for `protocol =
//! "https"` upstreams (see `client`). Reads PEM files; knows nothing about
//! routing or HTTP.
//!
//! Why ring: it builds with the C compiler alone in well under a minute on
//! two cores, where aws-lc-rs needs cmake and several minutes; handshake and
//! AES-GCM/ChaCha20 throughput are on par for a proxy's needs. Deployments
//! that need FIPS 140-3 would switch the provider to aws-lc-rs (`fips`).

pub mod client;
mod client_auth;

pub use client_auth::{
    ClientVerifier, X_FORWARDED_CLIENT_CERT, client_verifier, forwarded_client_cert,
};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::CertificateFiles;

/// Certificates that expire sooner than this are loaded with a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in the file")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key in the file")]
    NoKey { path: PathBuf },
    #[error("{path}: unusable private key: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{key} does not match the certificate in {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("{path}: the certificate cannot be parsed: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: the certificate expired at {at}")]
    Expired { path: PathBuf, at: String },
    #[error("TLS setup failed: {0}")]
    Setup(#[source] rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    crate::config::read::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Logs, at WARN, each served certificate that expires within
/// `EXPIRY_WARNING` (at start and whenever certificates load).
pub fn warn_expiring(set: &CertSet) {
    let soon = SystemTime::now() + EXPIRY_WARNING;
    for c in set.certs.iter().filter(|c| c.not_after < soon) {
        tracing::warn!(cert = %c.files.cert.display(), not_after = %humantime::format_rfc3339_seconds(c.not_after),
            "certificate expires within 14 days");
    }
}

/// Every certificate in a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_certs(path, &read(path)?)
}

/// The PEM certificates in `bytes`, read from `path` (named in errors).
pub(crate) fn parse_certs(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// A certificate chain and key, checked and ready to serve.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    pub files: CertificateFiles,
    /// DNS names from the subjectAltName, lower-case (`*.example.com` kept).
    pub names: Vec<String>,
    pub not_after: SystemTime,
    pub key: Arc<CertifiedKey>,
    /// Content hash of both files (to notice changes).
    pub hash: String,
}

/// Reads and checks one `[[tls.certificates]]` entry: the chain parses, the
/// key parses and matches the leaf, the leaf has DNS names and has not
/// expired. Expiring within `EXPIRY_WARNING` is logged, not refused.
pub fn load_pair(files: &CertificateFiles) -> Result<LoadedCert, TlsError> {
    // Each file is read once: the hash that tells a later change must be of
    // the bytes that are served.
    let mut all = read(&files.cert)?;
    let certs = parse_certs(&files.cert, &all)?;
    let key_bytes = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|_| TlsError::NoKey {
        path: files.key.clone(),
    })?;
    let leaf = certs
        .first()
        .cloned()
        .ok_or_else(|| TlsError::NoCertificate {
            path: files.cert.clone(),
        })?;
    let (names, not_after) = leaf_facts(&leaf, &files.cert)?;
    let certified =
        CertifiedKey::from_der(certs, key, &provider()).map_err(|source| match source {
            rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            },
            source => TlsError::Key {
                path: files.key.clone(),
                source,
            },
        })?;
    if not_after <= SystemTime::now() {
        return Err(TlsError::Expired {
            path: files.cert.clone(),
            at: humantime::format_rfc3339_seconds(not_after).to_string(),
        });
    }
    all.extend_from_slice(&key_bytes);
    Ok(LoadedCert {
        files: files.clone(),
        names,
        not_after,
        key: Arc::new(certified),
        hash: crate::config::content_hash(&all),
    })
}

fn leaf_facts(
    leaf: &CertificateDer<'_>,
    path: &Path,
) -> Result<(Vec<String>, SystemTime), TlsError> {
    let parse_err = |message: String| TlsError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| parse_err(e.to_string()))?;
    let secs = cert.validity().not_after.timestamp();
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    // A certificate without DNS names (one that names IP addresses only)
    // is served to clients that send no SNI, when it is the first entry.
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    Ok((names, not_after))
}

/// The certificates being served, indexed by name.
#[derive(Debug)]
pub struct CertSet {
    /// Name -> index into `certs`.
    exact: HashMap<String, usize>,
    /// `*.example.com` stored as `.example.com`: one label in front only.
    wildcard: HashMap<String, usize>,
    /// Each certificate's names, shared with the connections it serves.
    names: Vec<Arc<[String]>>,
    pub certs: Vec<LoadedCert>,
}

impl CertSet {
    pub fn new(certs: Vec<LoadedCert>) -> Option<CertSet> {
        certs.first()?;
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        // Earlier entries win when two certificates name the same host.
        for (i, c) in certs.iter().enumerate().rev() {
            for name in &c.names {
                match name.strip_prefix('*') {
                    Some(suffix) => wildcard.insert(suffix.to_owned(), i),
                    None => exact.insert(name.clone(), i),
                };
            }
        }
        Some(CertSet {
            exact,
            wildcard,
            names: certs.iter().map(|c| c.names.clone().into()).collect(),
            certs,
        })
    }

    /// The certificate for `sni`: by exact name, then by wildcard; the
    /// first entry for clients without SNI or with an unknown name.
    fn index(&self, sni: Option<&str>) -> usize {
        let Some(name) = sni.map(str::to_ascii_lowercase) else {
            return 0;
        };
        if let Some(i) = self.exact.get(&name) {
            return *i;
        }
        name.find('.')
            .and_then(|dot| self.wildcard.get(&name[dot..]))
            .copied()
            .unwrap_or(0)
    }

    pub fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        self.certs[self.index(sni)].key.clone()
    }

    /// The names of the certificate that `sni` selects.
    pub fn names_for(&self, sni: &str) -> Arc<[String]> {
        self.names[self.index(Some(sni))].clone()
    }
}

/// rustls' certificate resolver over a swappable `CertSet`: reloading
/// certificates swaps the set; open connections keep what they negotiated.
#[derive(Debug)]
pub struct Resolver {
    set: ArcSwap<CertSet>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.set.load().pick(hello.server_name()))
    }
}

/// A client verifier and the server config using it, ready to install.
#[derive(Debug)]
pub struct ClientAuthPlan {
    config: Arc<rustls::ServerConfig>,
    verifier: Option<ClientVerifier>,
}

/// The served certificates and the files they came from, and the client
/// certificate verifier (`[listen.client_auth]`).
#[derive(Debug)]
pub struct TlsStore {
    resolver: Arc<Resolver>,
    files: Mutex<Vec<CertificateFiles>>,
    /// What each new handshake uses: the resolver above and the current
    /// client verifier. Rebuilt only when the verifier changes.
    server: ArcSwap<rustls::ServerConfig>,
    client_auth: Mutex<Option<ClientVerifier>>,
}

impl TlsStore {
    /// Loads every entry and the client CA; fails on the first bad one.
    pub fn new(
        files: &[CertificateFiles],
        client_auth: Option<&crate::config::ClientAuth>,
    ) -> Result<TlsStore, TlsError> {
        let set = load_set(files)?;
        let resolver = Arc::new(Resolver {
            set: ArcSwap::from_pointee(set),
        });
        let verifier = client_auth.map(client_verifier).transpose()?;
        Ok(TlsStore {
            server: ArcSwap::new(server_config(&resolver, verifier.as_ref())?),
            resolver,
            files: Mutex::new(files.to_vec()),
            client_auth: Mutex::new(verifier),
        })
    }

    /// The server config for a new handshake (TLS 1.2 and 1.3, ALPN h2
    /// and http/1.1): always the store's current certificates.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.load_full()
    }

    /// The client certificate settings in force.
    pub fn client_auth(&self) -> Option<crate::config::ClientAuth> {
        lock(&self.client_auth).as_ref().map(|v| v.auth.clone())
    }

    /// The server config that verifies client certificates with `verifier`
    /// (none: no client certificates asked for), not in use yet.
    pub fn plan_client_auth(
        &self,
        verifier: Option<ClientVerifier>,
    ) -> Result<ClientAuthPlan, TlsError> {
        Ok(ClientAuthPlan {
            config: server_config(&self.resolver, verifier.as_ref())?,
            verifier,
        })
    }

    /// Uses `plan` from the next handshake on.
    pub fn install_client_auth(&self, plan: ClientAuthPlan) {
        self.server.store(plan.config);
        *lock(&self.client_auth) = plan.verifier;
    }

    pub fn current(&self) -> arc_swap::Guard<Arc<CertSet>> {
        self.resolver.set.load()
    }

    /// Reads and checks `files` without serving them yet.
    pub fn load(files: &[CertificateFiles]) -> Result<CertSet, TlsError> {
        load_set(files)
    }

    /// Serves `set` (read from `files`) from now on (a reload changed the
    /// paths).
    pub fn install(&self, set: CertSet, files: &[CertificateFiles]) {
        self.resolver.set.store(Arc::new(set));
        *lock(&self.files) = files.to_vec();
    }

    /// Watches `files` from now on (none: a reload removed TLS).
    pub fn install_files(&self, files: &[CertificateFiles]) {
        *self.files.lock().unwrap_or_else(PoisonError::into_inner) = files.to_vec();
    }

    /// The certificate files being served.
    pub fn files(&self) -> Vec<CertificateFiles> {
        self.files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the client CA when its content changed. `Ok(true)` when
    /// new handshakes verify against the new bundle; an error keeps the old.
    pub fn refresh_client_auth(&self) -> Result<bool, TlsError> {
        let Some(current) = lock(&self.client_auth).clone() else {
            return Ok(false);
        };
        let bytes = read(&current.auth.ca)?;
        if crate::config::content_hash(&bytes) == current.hash {
            return Ok(false);
        }
        let verifier = client_auth::verifier_from(&current.auth, &bytes)?;
        let plan = self.plan_client_auth(Some(verifier))?;
        self.install_client_auth(plan);
        Ok(true)
    }

    /// Re-reads the files when their content changed. `Ok(true)` when new
    /// certificates are served; an error keeps the old ones.
    pub fn refresh(&self) -> Result<bool, TlsError> {
        let files = lock(&self.files).clone();
        let unchanged = {
            let current = self.current();
            files.len() == current.certs.len()
                && files
                    .iter()
                    .zip(&current.certs)
                    .all(|(f, c)| file_hash(f).as_deref() == Some(c.hash.as_str()))
        };
        if unchanged || files.is_empty() {
            return Ok(false);
        }
        let set = load_set(&files)?;
        self.resolver.set.store(Arc::new(set));
        Ok(true)
    }

    /// The directories holding certificate files and the client CA (to
    /// watch).
    pub fn dirs(&self) -> Vec<PathBuf> {
        let ca = self.client_auth().map(|a| a.ca);
        let files = lock(&self.files);
        let mut dirs: Vec<PathBuf> = files
            .iter()
            .flat_map(|f| [&f.cert, &f.key])
            .chain(ca.as_ref())
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A server config over `resolver`, asking for client certificates when
/// `verifier` is set.
fn server_config(
    resolver: &Arc<Resolver>,
    verifier: Option<&ClientVerifier>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Setup)?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v.verifier.clone()),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn load_set(files: &[CertificateFiles]) -> Result<CertSet, TlsError> {
    let certs = files.iter().map(load_pair).collect::<Result<Vec<_>, _>>()?;
    let set = CertSet::new(certs).ok_or(TlsError::NoCertificate {
        path: PathBuf::new(),
    })?;
    warn_expiring(&set);
    Ok(set)
}

fn file_hash(files: &CertificateFiles) -> Option<String> {
    let mut all = crate::config::read::read(&files.cert).ok()?;
    all.extend_from_slice(&crate::config::read::read(&files.key).ok()?);
    Some(crate::config::content_hash(&all))
}

#[cfg(test)]
mod tests;
