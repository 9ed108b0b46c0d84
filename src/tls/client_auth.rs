//! Client certificates at the edge (`[listen.client_auth]`): the verifier
//! the https listener's handshakes use, and the `X-Forwarded-Client-Cert`
//! value a verified certificate becomes.

use std::fmt::Write as _;
use std::sync::Arc;

use http::HeaderValue;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use x509_parser::extensions::GeneralName;

use super::{TlsError, parse_certs, provider, read};
use crate::config::{ClientAuth, ClientAuthMode};

/// The header steer sets, in Envoy's format, from the certificate the
/// client proved it holds.
pub const X_FORWARDED_CLIENT_CERT: http::HeaderName =
    http::HeaderName::from_static("x-forwarded-client-cert");

/// A verifier of client certificates against `auth.ca`, as loaded.
#[derive(Debug, Clone)]
pub struct ClientVerifier {
    pub auth: ClientAuth,
    /// Content hash of the CA file (to notice changes).
    pub hash: String,
    pub verifier: Arc<dyn ClientCertVerifier>,
}

/// Reads `auth.ca` and builds the verifier: with `require`, a handshake
/// without a valid client certificate fails; with `request` a client may
/// send none. A certificate sent must chain to the CA either way.
pub fn client_verifier(auth: &ClientAuth) -> Result<ClientVerifier, TlsError> {
    verifier_from(auth, &read(&auth.ca)?)
}

/// The verifier from the CA file's `bytes`, read once: the hash that tells
/// a later change is of the same bytes the roots come from.
pub(super) fn verifier_from(auth: &ClientAuth, bytes: &[u8]) -> Result<ClientVerifier, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let parse_err = |message: String| TlsError::Parse {
        path: auth.ca.clone(),
        message,
    };
    for cert in parse_certs(&auth.ca, bytes)? {
        roots.add(cert).map_err(|e| parse_err(e.to_string()))?;
    }
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    if auth.mode == ClientAuthMode::Request {
        builder = builder.allow_unauthenticated();
    }
    let verifier = builder.build().map_err(|e| parse_err(e.to_string()))?;
    Ok(ClientVerifier {
        auth: auth.clone(),
        hash: crate::config::content_hash(bytes),
        verifier,
    })
}

/// `X-Forwarded-Client-Cert` for a verified leaf certificate, as Envoy
/// writes it: `Hash=<SHA-256 of the DER, hex>;Subject="<RFC 4514>"`, then
/// `URI=` and `DNS=` for each such subjectAltName. `None` only for a
/// certificate that cannot be parsed (rustls verified it, so never).
pub fn forwarded_client_cert(leaf: &CertificateDer<'_>) -> Option<HeaderValue> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let digest = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
    let mut out = String::from("Hash=");
    for b in digest.as_ref() {
        let _ = write!(out, "{b:02x}");
    }
    out.push_str(";Subject=\"");
    escape_quoted(&rfc4514(cert.subject()), &mut out);
    out.push('"');
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            let (key, value) = match name {
                GeneralName::URI(v) => ("URI", *v),
                GeneralName::DNSName(v) => ("DNS", *v),
                _ => continue,
            };
            let _ = write!(out, ";{key}=");
            if value.contains([',', ';', '=', '"']) {
                out.push('"');
                escape_quoted(value, &mut out);
                out.push('"');
            } else {
                escape_quoted(value, &mut out);
            }
        }
    }
    HeaderValue::from_str(&out).ok()
}

/// A distinguished name as RFC 4514 writes it: the last RDN first, `,`
/// between RDNs, `+` within one, short names where they exist.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut out = String::new();
    for (i, rdn) in name.iter_rdn().collect::<Vec<_>>().iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            match x509_parser::objects::oid2abbrev(attr.attr_type(), registry) {
                Ok(short) => out.push_str(short),
                Err(_) => out.push_str(&attr.attr_type().to_id_string()),
            }
            out.push('=');
            match attr.as_str() {
                Ok(text) => escape_rfc4514(text, &mut out),
                // RFC 4514 §2.4: a value that is no string goes as `#hex`.
                Err(_) => {
                    out.push('#');
                    for b in attr.as_slice() {
                        let _ = write!(out, "{b:02x}");
                    }
                }
            }
        }
    }
    out
}

/// RFC 4514 §2.4 escaping of one attribute value.
fn escape_rfc4514(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Inside an XFCC value: `"` as `\"` (Envoy); control characters and
/// non-ASCII as `\XX` per UTF-8 byte (as OpenSSL's RFC 2253 printing that
/// Envoy uses does), so the header stays visible ASCII whatever a
/// certificate holds.
fn escape_quoted(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            c if c.is_control() || !c.is_ascii() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\{b:02X}");
                }
            }
            c => out.push(c),
        }
    }
}
