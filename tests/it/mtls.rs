//! Mutual TLS: client certificates at the edge (`[listen.client_auth]`,
//! `X-Forwarded-Client-Cert`) and steer's own client certificate towards
//! upstreams (`tls_client_cert`). Certificates are made here with rcgen.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, CertifiedIssuer, DistinguishedName, DnType, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

use crate::support::*;
use crate::tls::{AnyCert, Pem, Tls, ca, self_signed, signed_by, tls_front_with, write_pair};

/// A client certificate for the `payments` service: a subject with a
/// comma in it (escaped in XFCC) and a SPIFFE URI and a DNS name.
fn client_cert(ca: &CertifiedIssuer<'static, KeyPair>) -> Pem {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Example, Inc.");
    dn.push(DnType::CommonName, "payments");
    params.distinguished_name = dn;
    params.subject_alt_names = vec![
        SanType::URI("spiffe://example.org/payments".try_into().unwrap()),
        SanType::DnsName("payments.internal".try_into().unwrap()),
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

/// A TLS connection to steer presenting `cert` (none: no certificate).
async fn connect_as(addr: SocketAddr, cert: Option<&Pem>) -> std::io::Result<Tls> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyCert));
    let mut config = match cert {
        Some(c) => builder
            .with_client_auth_cert(
                vec![c.der.clone()],
                PrivateKeyDer::from_pem_slice(c.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("auth.example.com").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// GET `path` over `tls` (HTTP/1.1) with a forged `X-Forwarded-Client-Cert`.
/// TLS 1.3 finishes the client's side of the handshake before steer has
/// checked its certificate, so a refusal shows here, as an error.
async fn forged_get(tls: Tls, path: &str) -> Result<(StatusCode, serde_json::Value), String> {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "auth.example.com")
        .header(
            "x-forwarded-client-cert",
            "Hash=forged;Subject=\"CN=admin\"",
        )
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or_default()))
}

/// steer with an https listener whose client CA is `client_ca` (written as
/// `client-ca.pem`), in `mode`; routes `/payments` only for the payments
/// certificate's SPIFFE ID, everything else to the same upstream.
async fn mtls_steer(client_ca: &str, mode: &str) -> (steer::demo::Deployment, Steer) {
    let blue = upstream("blue").await;
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), "a", &self_signed(&["auth.example.com"]));
    std::fs::write(dir.path().join("client-ca.pem"), client_ca).unwrap();
    let body = format!(
        "[[tls.certificates]]\ncert = \"a.pem\"\nkey = \"a.key\"\n\n{}\
         [[routes]]\nname = \"payments\"\npath_prefix = \"/payments\"\n\
         header_regex = {{ \"x-forwarded-client-cert\" = \"URI=spiffe://example.org/payments\" }}\nupstream = \"blue\"\n\n\
         [[routes]]\nname = \"rest\"\npath_prefix = \"/rest\"\nupstream = \"blue\"\n",
        upstream_toml("blue", blue.addr(), "http1")
    );
    let listen = format!(
        "https = \"127.0.0.1:0\"\nclient_auth = {{ ca = \"client-ca.pem\", mode = \"{mode}\" }}"
    );
    let steer = Steer::start_in(dir, &listen, "", &body).await;
    let admin = steer.admin();
    eventually("ready", || async {
        get(&format!("{admin}/ready")).await.0 == StatusCode::OK
    })
    .await;
    (blue, steer)
}

fn sha256_hex(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The `X-Forwarded-Client-Cert` lines the upstream saw.
fn xfcc(seen: &serde_json::Value) -> Vec<String> {
    seen["headers"]["x-forwarded-client-cert"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_verified_client_certificate_reaches_the_upstream_in_xfcc_and_a_forged_one_does_not() {
    let client_ca = ca();
    let payments = client_cert(&client_ca);
    let (_blue, steer) = mtls_steer(&client_ca.as_ref().pem(), "require").await;
    let https = steer.https_addr();

    let tls = connect_as(https, Some(&payments)).await.unwrap();
    let (status, seen) = forged_get(tls, "/payments/charge").await.unwrap();
    assert_eq!(status, StatusCode::OK, "{seen}");
    let expected = format!(
        "Hash={};Subject=\"CN=payments,O=Example\\, Inc.\";URI=spiffe://example.org/payments;DNS=payments.internal",
        sha256_hex(&payments.der)
    );
    assert_eq!(xfcc(&seen), [expected]);

    // Under `require`, no certificate, or one from another CA: no request.
    let stranger = client_cert(&ca());
    for cert in [None, Some(&stranger)] {
        let refused = match connect_as(https, cert).await {
            Err(_) => true,
            Ok(tls) => forged_get(tls, "/rest").await.is_err(),
        };
        assert!(refused, "served without a valid client certificate");
    }

    // On the plain listener a forged copy is removed, and a route that
    // asks for the payments identity does not match it.
    let a = call(request("GET", &steer.url("/rest/x")).header(
        "x-forwarded-client-cert",
        "URI=spiffe://example.org/payments",
    ))
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(xfcc(&a.json()).is_empty(), "{}", a.text());
    let a = call(request("GET", &steer.url("/payments/charge")).header(
        "x-forwarded-client-cert",
        "URI=spiffe://example.org/payments",
    ))
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn request_mode_serves_clients_without_a_certificate_and_the_ca_file_reloads() {
    let first_ca = ca();
    let payments = client_cert(&first_ca);
    let (_blue, steer) = mtls_steer(&first_ca.as_ref().pem(), "request").await;
    let https = steer.https_addr();

    let tls = connect_as(https, None).await.unwrap();
    let (status, seen) = forged_get(tls, "/rest/x").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(xfcc(&seen).is_empty(), "{seen}");
    let tls = connect_as(https, None).await.unwrap();
    let (status, _) = forged_get(tls, "/payments/charge").await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);

    let tls = connect_as(https, Some(&payments)).await.unwrap();
    let (status, seen) = forged_get(tls, "/payments/charge").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(xfcc(&seen).len(), 1);

    // A new CA in the same file: new handshakes verify against it.
    let second_ca = ca();
    let renewed = client_cert(&second_ca);
    let ca_file = steer.dir.path().join("client-ca.pem");
    std::fs::write(&ca_file, second_ca.as_ref().pem()).unwrap();
    eventually("a certificate from the new CA is accepted", || async {
        match connect_as(https, Some(&renewed)).await {
            Ok(tls) => forged_get(tls, "/payments/x")
                .await
                .is_ok_and(|(s, _)| s == 200),
            Err(_) => false,
        }
    })
    .await;
    let refused = match connect_as(https, Some(&payments)).await {
        Err(_) => true,
        Ok(tls) => forged_get(tls, "/rest").await.is_err(),
    };
    assert!(refused, "a certificate from the replaced CA still passes");
}

#[tokio::test]
async fn steer_presents_its_client_certificate_to_an_upstream_that_requires_one_and_reloads_it() {
    let blue = upstream("blue").await;
    let server_ca = ca();
    let leaf = signed_by(&server_ca, &["zitadel.internal"]);
    let client_ca = ca();
    let front = tls_front_with(&leaf, blue.addr(), Some(client_ca.as_ref().der().clone())).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), server_ca.as_ref().pem()).unwrap();
    // First a certificate the upstream does not trust.
    write_pair(dir.path(), "steer-client", &client_cert(&ca()));
    let upstream = |extra: &str| {
        format!(
            "[upstreams.zitadel]\nendpoints = [\"{front}\"]\nprotocol = \"https\"\ntls_ca = \"ca.pem\"\n\
             tls_server_name = \"zitadel.internal\"\n{extra}\n\n\
             [[routes]]\nname = \"r\"\nupstream = \"zitadel\"\n"
        )
    };
    let body =
        upstream("tls_client_cert = \"steer-client.pem\"\ntls_client_key = \"steer-client.key\"");
    let steer = Steer::start_in(dir, "", "", &body).await;
    // Probes go over the same TLS settings: refused as well.
    eventually("the probes are refused", || async {
        states(&steer.admin(), "zitadel").await == ["unhealthy"]
    })
    .await;
    let a = call(request("GET", &steer.url("/x"))).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());

    // The right certificate under the same paths: taken for new handshakes
    // without a reload of the config.
    write_pair(steer.dir.path(), "steer-client", &client_cert(&client_ca));
    eventually(
        "the upstream accepts steer's new client certificate",
        || async { call(request("GET", &steer.url("/x"))).await.status == StatusCode::OK },
    )
    .await;
}
