//! TLS: termination with SNI and ALPN, certificate reload, TLS to upstreams,
//! handshake timeout. Certificates are made here with rcgen.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::protocol::h2_exchange;
use crate::support::*;

pub(super) struct Pem {
    pub(super) cert: String,
    pub(super) key: String,
    pub(super) der: CertificateDer<'static>,
}

pub(super) fn self_signed(names: &[&str]) -> Pem {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let c = rcgen::generate_simple_self_signed(names).unwrap();
    Pem {
        cert: c.cert.pem(),
        key: c.signing_key.serialize_pem(),
        der: c.cert.der().clone(),
    }
}

pub(super) fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

pub(super) fn signed_by(ca: &CertifiedIssuer<'static, KeyPair>, names: &[&str]) -> Pem {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, ca)
        .unwrap();
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

/// Accepts any certificate: these tests look at which one was served.
#[derive(Debug)]
pub(super) struct AnyCert;

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

pub(super) fn client_config(alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyCert))
    .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

pub(super) type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to `addr`; `sni` None sends no SNI (IP server name).
async fn connect(addr: SocketAddr, sni: Option<&str>, alpn: &[&[u8]]) -> Tls {
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_owned()).unwrap(),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(client_config(alpn))
        .connect(name, tcp)
        .await
        .unwrap()
}

fn served(tls: &Tls) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// GET over an established TLS connection, speaking what ALPN chose.
pub(super) async fn get_over(tls: Tls, host: &str, path: &str) -> (StatusCode, String) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let req = |uri: String| {
        Request::get(uri)
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut r = req(format!("https://{host}{path}"));
        r.headers_mut().remove("host");
        send.send_request(r).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req(path.to_owned())).await.unwrap()
    };
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub(super) fn write_pair(dir: &std::path::Path, name: &str, pem: &Pem) {
    std::fs::write(dir.join(format!("{name}.pem")), &pem.cert).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &pem.key).unwrap();
}

/// steer with `listen.https`, certificates `names` (files written first).
pub(super) async fn tls_steer(certs: &[(&str, &Pem)], body: &str) -> Steer {
    let dir = tempfile::tempdir().unwrap();
    let mut tls = String::new();
    for (name, pem) in certs {
        write_pair(dir.path(), name, pem);
        tls.push_str(&format!(
            "[[tls.certificates]]\ncert = \"{name}.pem\"\nkey = \"{name}.key\"\n\n"
        ));
    }
    let s = Steer::start_in(
        dir,
        "https = \"127.0.0.1:0\"",
        "tls_handshake_timeout = \"300ms\"",
        &format!("{tls}{body}"),
    )
    .await;
    let admin = s.admin();
    eventually("ready", || async {
        get(&format!("{admin}/ready")).await.0 == StatusCode::OK
    })
    .await;
    s
}

/// A demo upstream behind steer serving one certificate for auth.example.com.
async fn auth_steer() -> (steer::demo::Deployment, Pem, Steer) {
    let blue = upstream("blue").await;
    let a = self_signed(&["auth.example.com"]);
    let body = format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"blue\"\n",
        upstream_toml("blue", blue.addr(), "h2c")
    );
    let steer = tls_steer(&[("a", &a)], &body).await;
    (blue, a, steer)
}

#[tokio::test]
async fn sni_picks_the_certificate_and_no_sni_gets_the_first() {
    let blue = upstream("blue").await;
    let a = self_signed(&["auth.example.com"]);
    let b = self_signed(&["*.tenant.example.com"]);
    let body = format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"blue\"\n",
        upstream_toml("blue", blue.addr(), "h2c")
    );
    let steer = tls_steer(&[("a", &a), ("b", &b)], &body).await;
    let addr = steer.https_addr();
    assert_eq!(
        served(&connect(addr, Some("auth.example.com"), &[b"h2"]).await),
        a.der
    );
    assert_eq!(
        served(&connect(addr, Some("x.tenant.example.com"), &[b"h2"]).await),
        b.der
    );
    assert_eq!(served(&connect(addr, None, &[b"h2"]).await), a.der);
    assert_eq!(
        served(&connect(addr, Some("unknown.example.org"), &[b"h2"]).await),
        a.der
    );
}

#[tokio::test]
async fn alpn_negotiates_h2_and_http1_and_both_are_proxied_with_https_forwarding() {
    let (_blue, _a, steer) = auth_steer().await;
    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        let tls = connect(steer.https_addr(), Some("auth.example.com"), &[alpn]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        let (status, body) = get_over(tls, "auth.example.com", "/x").await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["headers"]["x-forwarded-proto"][0], "https");
        let fwd = v["headers"]["forwarded"][0].as_str().unwrap();
        assert!(fwd.contains("proto=https"), "{fwd}");
        assert_eq!(v["authority"], "auth.example.com");
    }
}

#[tokio::test]
async fn grpc_over_tls_to_steer_and_h2c_behind_it() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let (_blue, _a, steer) = auth_steer().await;
    let addr = steer.https_addr();
    let channel = tonic::transport::Endpoint::from_static("https://auth.example.com")
        .connect_with_connector(tower::service_fn(move |_| async move {
            Ok::<_, std::io::Error>(TokioIo::new(
                connect(addr, Some("auth.example.com"), &[b"h2"]).await,
            ))
        }))
        .await
        .unwrap();
    let resp = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        resp.get_ref().status,
        tonic_health::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_handshakes_and_a_broken_one_is_not() {
    let (_blue, old, steer) = auth_steer().await;
    let addr = steer.https_addr();
    let open = connect(addr, Some("auth.example.com"), &[b"h2"]).await;
    // A broken replacement (key of another certificate): the old one stays.
    let other = self_signed(&["auth.example.com"]);
    std::fs::write(steer.dir.path().join("a.key"), &other.key).unwrap();
    let admin = steer.admin();
    eventually("rejection reported", || async {
        let v = call(request("GET", &format!("{admin}/config")))
            .await
            .json();
        v["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("does not match"))
    })
    .await;
    assert_eq!(
        served(&connect(addr, Some("auth.example.com"), &[b"h2"]).await),
        old.der
    );
    // The matching pair, written by rename (as a Secret update does).
    let new = self_signed(&["auth.example.com"]);
    write_pair(steer.dir.path(), "next", &new);
    std::fs::rename(
        steer.dir.path().join("next.pem"),
        steer.dir.path().join("a.pem"),
    )
    .unwrap();
    std::fs::rename(
        steer.dir.path().join("next.key"),
        steer.dir.path().join("a.key"),
    )
    .unwrap();
    eventually("new certificate served", || async {
        served(&connect(addr, Some("auth.example.com"), &[b"h2"]).await) == new.der
    })
    .await;
    // The connection opened before still works, on the old certificate.
    assert_eq!(served(&open), old.der);
    let (status, _) = get_over(open, "auth.example.com", "/x").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_stalled_handshake_is_closed_after_the_timeout() {
    let (_blue, _a, steer) = auth_steer().await;
    let mut tcp = TcpStream::connect(steer.https_addr()).await.unwrap();
    // Send nothing: the server must close within tls_handshake_timeout (300ms).
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("steer kept a stalled handshake open")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[test]
fn check_reports_a_key_that_does_not_match_and_an_expired_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let a = self_signed(&["auth.example.com"]);
    let b = self_signed(&["auth.example.com"]);
    std::fs::write(dir.path().join("a.pem"), &a.cert).unwrap();
    std::fs::write(dir.path().join("b.key"), &b.key).unwrap();
    let mut params = CertificateParams::new(vec!["old.example.com".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = KeyPair::generate().unwrap();
    let expired = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("old.pem"), expired.pem()).unwrap();
    std::fs::write(dir.path().join("old.key"), key.serialize_pem()).unwrap();
    let text = with_listen_full(
        "https = \"127.0.0.1:0\"",
        "",
        "[[tls.certificates]]\ncert = \"a.pem\"\nkey = \"b.key\"\n\n[[tls.certificates]]\ncert = \"old.pem\"\nkey = \"old.key\"\n\n[upstreams.u]\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
    );
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, text).unwrap();
    let errors = match steer::config::load(&path) {
        Ok(_) => panic!("should be rejected"),
        Err(e) => e.messages(),
    };
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("does not match the certificate"),
        "{errors:?}"
    );
    assert!(errors[1].contains("expired"), "{errors:?}");
    assert!(
        errors.iter().all(|e| e.contains("routes.toml:")),
        "{errors:?}"
    );
}

/// A TLS front for a demo deployment: terminates TLS with `pem` (ALPN h2,
/// http/1.1) and pipes the bytes to `backend`.
async fn tls_front(pem: &Pem, backend: SocketAddr) -> SocketAddr {
    tls_front_with(pem, backend, None).await
}

/// As `tls_front`; with `client_ca`, only clients with a certificate it
/// signed get through the handshake.
pub(super) async fn tls_front_with(
    pem: &Pem,
    backend: SocketAddr,
    client_ca: Option<CertificateDer<'static>>,
) -> SocketAddr {
    let certs = vec![pem.der.clone()];
    use rustls::pki_types::pem::PemObject;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut back) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut back).await;
                let _ = back.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_upstream_with_a_private_ca_works_and_an_untrusted_one_is_a_502() {
    let blue = upstream("blue").await;
    let ca = ca();
    let leaf = signed_by(&ca, &["zitadel.internal"]);
    let front = tls_front(&leaf, blue.addr()).await;
    let rogue = self_signed(&["zitadel.internal"]);
    let rogue_front = tls_front(&rogue, blue.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.as_ref().pem()).unwrap();
    let body = format!(
        "[upstreams.good]\nendpoints = [\"{front}\"]\nprotocol = \"https\"\ntls_ca = \"ca.pem\"\ntls_server_name = \"zitadel.internal\"\n\n\
         [upstreams.rogue]\nendpoints = [\"{rogue_front}\"]\nprotocol = \"https\"\ntls_ca = \"ca.pem\"\ntls_server_name = \"zitadel.internal\"\nhealth = false\n\n\
         [[routes]]\nname = \"rogue\"\npath_prefix = \"/rogue\"\nupstream = \"rogue\"\n\n[[routes]]\nname = \"good\"\nupstream = \"good\"\n"
    );
    let steer = Steer::start_in(dir, "", "", &body).await;
    eventually("https upstream healthy (probes over TLS)", || async {
        states(&steer.admin(), "good").await == ["healthy"]
    })
    .await;
    let a = call(request("GET", &steer.url("/x")).header("host", "auth.example.com")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let v = a.json();
    assert_eq!(v["deployment"], "blue");
    // ALPN chose h2 to the upstream; the client's Host is :authority.
    assert_eq!(v["version"], "HTTP/2.0");
    assert_eq!(v["authority"], "auth.example.com");
    let a = call(request("GET", &steer.url("/rogue"))).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.text());
    assert!(a.text().contains("TLS handshake"), "{}", a.text());
}

#[tokio::test]
async fn a_host_the_sni_certificate_does_not_cover_gets_421() {
    let blue = upstream("blue").await;
    let a = self_signed(&["auth.example.com"]);
    let b = self_signed(&["*.tenant.example.com"]);
    let body = format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"blue\"\n",
        upstream_toml("blue", blue.addr(), "h2c")
    );
    let steer = tls_steer(&[("a", &a), ("b", &b)], &body).await;
    let addr = steer.https_addr();
    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        // A connection made for auth.example.com carries a request for a
        // tenant host (HTTP/2 connection reuse): 421, so the client opens
        // a new connection for it.
        let tls = connect(addr, Some("auth.example.com"), &[alpn]).await;
        let (status, body) = get_over(tls, "x.tenant.example.com", "/").await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{body}");
        let tls = connect(addr, Some("x.tenant.example.com"), &[alpn]).await;
        assert_eq!(
            get_over(tls, "x.tenant.example.com", "/").await.0,
            StatusCode::OK
        );
        let tls = connect(addr, Some("auth.example.com"), &[alpn]).await;
        assert_eq!(
            get_over(tls, "AUTH.example.com:443", "/").await.0,
            StatusCode::OK
        );
        // No SNI (a client that connects by IP): nothing to compare with.
        let tls = connect(addr, None, &[alpn]).await;
        assert_eq!(
            get_over(tls, "x.tenant.example.com", "/").await.0,
            StatusCode::OK
        );
    }
}

/// What a reload that does not commit must leave alone: the certificate
/// served, blue's state, the metric series, and a port it would listen on.
#[derive(Debug, PartialEq)]
struct Live {
    cert: CertificateDer<'static>,
    blue: Vec<String>,
    series: std::collections::BTreeSet<String>,
    extra_port_open: bool,
}

async fn live(steer: &Steer, extra_port: SocketAddr) -> Live {
    let metrics = get(&format!("{}/metrics", steer.admin())).await.1;
    // Failed reloads are counted, and process figures move by themselves.
    let series = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("process_"))
        .filter(|l| !l.contains("result=\"failure\""))
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_owned()))
        .collect();
    Live {
        cert: served(&connect(steer.https_addr(), Some("auth.example.com"), &[b"h2"]).await),
        blue: states(&steer.admin(), "blue").await,
        series,
        extra_port_open: TcpStream::connect(extra_port).await.is_ok(),
    }
}

#[tokio::test]
async fn reloads_that_are_kept_out_superseded_or_rejected_change_nothing_live() {
    let blue = upstream("blue").await;
    blue.set_ready(false);
    let ok = upstream("ok").await;
    let a = self_signed(&["auth.example.com"]);
    let b = self_signed(&["auth.example.com", "other.example.com"]);
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), "a", &a);
    write_pair(dir.path(), "b", &b);
    let listen = |http: &str| {
        format!("[listen]\nhttp = \"{http}\"\nhttps = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n")
    };
    let tail = "[proxy]\nshutdown_delay = \"0s\"\n\n[health]\ninterval = \"100ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1\n\n";
    let ups = format!(
        "{}{}",
        upstream_toml("blue", blue.addr(), "http1"),
        upstream_toml("ok", ok.addr(), "http1")
    );
    let original = format!(
        "{}{tail}[[tls.certificates]]\ncert = \"a.pem\"\nkey = \"a.key\"\n\n{ups}[[routes]]\nname = \"r\"\nupstream = \"blue\"\nfallback = [\"ok\"]\n",
        listen("127.0.0.1:0")
    );
    // Everything a commit would change: a new http address, certificate b,
    // blue without checks (which would mark it healthy), and a route to
    // `green`, which never gets healthy (the gate waits for it).
    let changed = |http: &str, gate: &str, route_to: &str, note: &str| {
        format!(
            "# {note}\n{}{tail}[reload]\ngate_timeout = \"{gate}\"\n\n[[tls.certificates]]\ncert = \"b.pem\"\nkey = \"b.key\"\n\n{}{}\
             [upstreams.green]\nendpoints = [\"{}\"]\n\n[[routes]]\nname = \"r\"\nupstream = \"{route_to}\"\nfallback = [\"ok\"]\n",
            listen(http),
            ups.replace(
                &format!("[upstreams.blue]\nendpoints = [\"{}\"]\n", blue.addr()),
                &format!(
                    "[upstreams.blue]\nendpoints = [\"{}\"]\nhealth = false\n",
                    blue.addr()
                )
            ),
            "",
            closed_port()
        )
    };
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, &original).unwrap();
    let steer = Steer {
        running: Some(steer::app::start(&path).await.unwrap()),
        dir,
        path: path.clone(),
    };
    let admin = steer.admin();
    eventually("blue probed down", || async {
        states(&admin, "blue").await == ["unhealthy"]
    })
    .await;
    let extra = closed_port();
    let before = live(&steer, extra).await;
    assert!(!before.extra_port_open);
    let config = |admin: String| async move {
        call(request("GET", &format!("{admin}/config")))
            .await
            .json()
    };
    let write = |text: String| {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };

    // Kept out by the gate.
    write(changed(&extra.to_string(), "1s", "green", "kept out"));
    let (status, body) = post(&format!("{admin}/reload")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"pending\": true"), "{body}");
    eventually("the gate keeps the running table", || async {
        let c = config(admin.clone()).await;
        c["pending"].is_null()
            && c["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("gate timed out"))
    })
    .await;
    assert_eq!(live(&steer, extra).await, before, "after a reload kept out");

    // Superseded by a newer one, which is then called off by putting the
    // running content back.
    write(changed(&extra.to_string(), "60s", "green", "first"));
    assert!(
        post(&format!("{admin}/reload"))
            .await
            .1
            .contains("\"pending\": true")
    );
    write(changed(&extra.to_string(), "60s", "green", "second"));
    let (_, second) = post(&format!("{admin}/reload")).await;
    assert!(second.contains("\"pending\": true"), "{second}");
    assert_eq!(
        live(&steer, extra).await,
        before,
        "after a superseded reload"
    );
    write(original.clone());
    eventually("the pending reload is called off", || async {
        let c = config(admin.clone()).await;
        c["pending"].is_null() && c["file_matches"] == true && c["last_error"].is_null()
    })
    .await;
    assert_eq!(
        live(&steer, extra).await,
        before,
        "after the pending one was called off"
    );

    // Rejected at the commit: its new address is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    write(changed(&taken_addr, "60s", "blue", "rejected"));
    let (status, body) = post(&format!("{admin}/reload")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("cannot listen"), "{body}");
    assert_eq!(live(&steer, extra).await, before, "after a rejected reload");
}

fn steer_check(path: &std::path::Path, strict: bool) -> std::process::Output {
    let mut args = vec!["check".to_owned(), path.display().to_string()];
    if strict {
        args.push("--strict".to_owned());
    }
    std::process::Command::new(env!("CARGO_BIN_EXE_steer"))
        .args(&args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_certificate_that_names_only_an_ip_address_is_served_to_clients_without_sni() {
    let blue = upstream("blue").await;
    let ip_only = self_signed(&["127.0.0.1"]);
    let body = format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"blue\"\n",
        upstream_toml("blue", blue.addr(), "h2c")
    );
    let steer = tls_steer(&[("ip", &ip_only)], &body).await;
    let tls = connect(steer.https_addr(), None, &[b"h2"]).await;
    assert_eq!(served(&tls), ip_only.der);
    let (status, _) = get_over(tls, &steer.https_addr().to_string(), "/x").await;
    assert_eq!(status, StatusCode::OK);
    // Accepted by check too (not strict: the one-endpoint lint applies).
    let out = steer_check(&steer.path, false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("certificate"));
}

#[test]
fn a_certificate_that_expires_soon_is_a_check_warning_at_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let mut params = CertificateParams::new(vec!["auth.example.com".to_owned()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(80);
    params.not_after = now + time::Duration::days(3);
    let key = KeyPair::generate().unwrap();
    let soon = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("soon.pem"), soon.pem()).unwrap();
    std::fs::write(dir.path().join("soon.key"), key.serialize_pem()).unwrap();
    let text = with_listen_full(
        "https = \"127.0.0.1:0\"",
        "",
        "[[tls.certificates]]\ncert = \"soon.pem\"\nkey = \"soon.key\"\n\n[upstreams.u]\nendpoints = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
    );
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, &text).unwrap();
    let line = text.lines().position(|l| l.starts_with("cert = ")).unwrap() + 1;
    let out = steer_check(&path, false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.contains("expires within 14 days"))
        .unwrap_or_else(|| panic!("no warning: {stderr}"));
    assert!(
        warning.starts_with(&format!(
            "{}:{line}:8: warning: certificate",
            path.display()
        )),
        "{warning}"
    );
    assert_eq!(steer_check(&path, true).status.code(), Some(1));
}

/// steer with an HTTPS listener (a certificate for auth.example.com) and
/// `[proxy]` settings `proxy`, routing everything to the upstream
/// `upstream` that `upstreams` (TOML) defines.
async fn https_steer(proxy: &str, upstreams: &str, upstream: &str) -> Steer {
    let a = self_signed(&["auth.example.com"]);
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), "a", &a);
    let body = format!(
        "[[tls.certificates]]\ncert = \"a.pem\"\nkey = \"a.key\"\n\n{upstreams}[[routes]]\nname = \"r\"\nupstream = \"{upstream}\"\n"
    );
    Steer::start_in(dir, "https = \"127.0.0.1:0\"", proxy, &body).await
}

async fn https_to_blue(proxy: &str) -> (steer::demo::Deployment, Steer) {
    let blue = upstream("blue").await;
    let steer = https_steer(proxy, &upstream_toml("blue", blue.addr(), "http1"), "blue").await;
    (blue, steer)
}

#[tokio::test]
async fn tls_keep_alive_outlives_header_read_timeout() {
    // Between requests an HTTP/1.1 connection over TLS waits under
    // idle_timeout, parked (src/server/park.rs), as a plain one does; not
    // under hyper's header timer.
    let (blue, steer) =
        https_to_blue("header_read_timeout = \"200ms\"\nidle_timeout = \"10s\"").await;
    let admin = steer.admin();
    eventually("ready", || async {
        get(&format!("{admin}/ready")).await.0 == StatusCode::OK
    })
    .await;
    let mut tls = connect(steer.https_addr(), Some("auth.example.com"), &[b"http/1.1"]).await;
    let get = b"GET / HTTP/1.1\r\nHost: auth.example.com\r\n\r\n";
    for _ in 0..3 {
        tls.write_all(get).await.unwrap();
        assert_eq!(read_responses(&mut tls, 1).await, [200]);
        // Idle for longer than header_read_timeout: the behaviour under test.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    // Two requests in one write, then one after the other.
    tls.write_all(&[&get[..], &get[..]].concat()).await.unwrap();
    assert_eq!(read_responses(&mut tls, 2).await, [200, 200]);
    assert_eq!(blue.requests(), 5);
}

#[tokio::test]
async fn a_tls_client_that_sends_nothing_after_its_handshake_is_closed_at_header_read_timeout() {
    // ALPN chose http/1.1, so no byte was read before steer's HTTP/1.1
    // path starts: the wait for the first request is still bounded by the
    // connection's head deadline, not idle_timeout.
    let (_blue, steer) =
        https_to_blue("header_read_timeout = \"300ms\"\nidle_timeout = \"30s\"").await;
    let started = std::time::Instant::now();
    let mut tls = connect(steer.https_addr(), Some("auth.example.com"), &[b"http/1.1"]).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out))
        .await
        .expect("a silent TLS client must be cut off at header_read_timeout");
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn a_tls_client_that_says_close_notify_while_waiting_cancels_its_upstream_request() {
    // A polite TLS client sends close_notify before its FIN: those bytes
    // are not a next request (src/server/park.rs, `poll_peer`).
    let (addr, dropped) = holding_upstream(b"").await;
    let upstreams =
        upstream_toml("held", addr, "http1").replace("protocol", "health = false\nprotocol");
    let steer = https_steer("", &upstreams, "held").await;
    let mut tls = connect(steer.https_addr(), Some("auth.example.com"), &[b"http/1.1"]).await;
    tls.write_all(b"GET /slow HTTP/1.1\r\nHost: auth.example.com\r\n\r\n")
        .await
        .unwrap();
    let admin = steer.admin();
    in_flight_becomes(&admin, 1, "the request reached the upstream").await;
    tls.shutdown().await.unwrap();
    upstream_dropped(dropped).await;
}

/// A ClientHello whose SNI is `name` and that offers nothing else (no
/// handshake can come of it).
fn client_hello_with_sni(name: &[u8]) -> Vec<u8> {
    let len16 = |n: usize| u16::try_from(n).unwrap().to_be_bytes();
    let mut sni = vec![0, 0];
    sni.extend(len16(name.len() + 5));
    sni.extend(len16(name.len() + 3));
    sni.push(0);
    sni.extend(len16(name.len()));
    sni.extend_from_slice(name);
    let mut hello = vec![0x03, 0x03];
    hello.extend([7u8; 32]);
    hello.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
    hello.extend(len16(sni.len()));
    hello.extend(sni);
    let mut handshake = vec![1, 0];
    handshake.extend(len16(hello.len()));
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(len16(handshake.len()));
    record.extend(handshake);
    record
}

/// rustls logged a ClientHello's invalid SNI at WARN with the name in the
/// line: a client sending 16 KB names wrote as much to steer's log as it
/// sent, as fast as it could. steer logs rustls's errors only.
#[tokio::test]
async fn a_client_hello_s_bad_sni_does_not_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let pem = self_signed(&["localhost"]);
    std::fs::write(dir.path().join("cert.pem"), &pem.cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &pem.key).unwrap();
    // A route to a closed port: a request's 502 is logged (WARN), a line
    // to wait for after the ClientHello's.
    let body = format!(
        "[[tls.certificates]]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"\n\n{1}\
         [[routes]]\nname = \"r\"\nupstream = \"gone\"\n",
        dir.path().display(),
        upstream_toml("gone", closed_port(), "http1")
            .replace("protocol", "health = false\nprotocol"),
    );
    let path = dir.path().join("routes.toml");
    std::fs::write(
        &path,
        with_listen_full("https = \"127.0.0.1:0\"", "", &body),
    )
    .unwrap();
    let steer = spawn_steer_at(Some(dir), path, &[]).await;
    let started = steer.start.last().unwrap();
    let https: serde_json::Value = serde_json::from_str(started).unwrap();
    let https = https["https"].as_str().unwrap().to_owned();
    let name = vec![b'a'; 4000];
    let mut s = TcpStream::connect(&https).await.unwrap();
    s.write_all(&client_hello_with_sni(&name)).await.unwrap();
    // steer answers with an alert and closes.
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
    let (status, _) = get(&format!("{}/x", steer.http)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = steer.logs.recv_timeout(left).expect("the 502's log line");
        assert!(
            !line.contains("aaaaaaaa"),
            "the SNI in the log: {}",
            &line[..200.min(line.len())]
        );
        if line.contains("request failed") {
            break;
        }
    }
}

/// steer over TLS in front of the demo upstream `blue`, with
/// idle_timeout 8 s (an idle tick every 2 s, no close before the end) and
/// its buffer releases logged.
async fn releasing_steer(blue: &steer::demo::Deployment) -> Proc {
    let a = self_signed(&["auth.example.com"]);
    let body = format!(
        "[[tls.certificates]]\ncert = \"a.pem\"\nkey = \"a.key\"\n\n{}",
        one_route("blue", blue.addr(), "http1")
    );
    spawn_steer_logging_in(
        "https = \"127.0.0.1:0\"",
        |dir| write_pair(dir, "a", &a),
        "idle_timeout = \"8s\"",
        &body,
        "steer=info,steer::server::park=trace,steer::server::h2=trace",
    )
    .await
}

/// 100,000 bytes to upload, not all alike.
fn upload() -> Bytes {
    (0..100_000u32).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn an_https1_connection_that_gave_back_its_tls_buffers_serves_on() {
    // An idle HTTP/1.1 connection over TLS frees rustls's buffers
    // (src/server/park.rs, `wait_for_request`; vendor/rustls/STEER.md);
    // the next requests, an upload and a download larger than them, must
    // find them again.
    let blue = upstream("blue").await;
    let p = releasing_steer(&blue).await;
    let tls = connect(p.https(), Some("auth.example.com"), &[b"http/1.1"]).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut exchange = async |path: &str, body: Bytes| {
        let method = if body.is_empty() { "GET" } else { "POST" };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "auth.example.com")
            .body(http_body_util::Full::new(body))
            .unwrap();
        let answer = async {
            let resp = send.send_request(req).await.unwrap();
            let status = resp.status();
            (status, resp.into_body().collect().await.unwrap().to_bytes())
        };
        tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .unwrap_or_else(|_| panic!("no whole answer to {path} within 10 s"))
    };
    assert_eq!(exchange("/first", Bytes::new()).await.0, StatusCode::OK);
    p.log_line("TLS buffers released", |l| {
        l.contains("TLS buffers released")
    });
    let (status, echoed) = exchange("/demo/echo", upload()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        echoed == upload(),
        "the echo differs: {} bytes",
        echoed.len()
    );
    let (status, got) = exchange("/demo/bytes?n=300000", Bytes::new()).await;
    assert_eq!((status, got.len()), (StatusCode::OK, 300_000));
}

#[tokio::test]
async fn an_h2_connection_that_gave_back_its_tls_buffers_serves_on() {
    // As above, over HTTP/2: rustls's buffers go with h2's
    // (src/server/h2.rs, `Event::Tick`).
    let blue = upstream("blue").await;
    let p = releasing_steer(&blue).await;
    let tls = connect(p.https(), Some("auth.example.com"), &[b"h2"]).await;
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let authority = "auth.example.com";
    let (status, _) = h2_exchange(&send, authority, "/first", Bytes::new()).await;
    assert_eq!(status, StatusCode::OK);
    let line = p.log_line("buffers released", |l| l.contains("codec buffers released"));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["tls"].as_bool(), Some(true), "{line}");
    let (status, echoed) = h2_exchange(&send, authority, "/demo/echo", upload()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        echoed == upload(),
        "the echo differs: {} bytes",
        echoed.len()
    );
    let (status, got) = h2_exchange(&send, authority, "/demo/bytes?n=300000", Bytes::new()).await;
    assert_eq!((status, got.len()), (StatusCode::OK, 300_000));
}

/// Moves what `from` has to send into `to`, and has `to` process it.
fn pump<A, B, DA, DB>(from: &mut A, to: &mut B)
where
    A: std::ops::DerefMut<Target = rustls::ConnectionCommon<DA>>,
    B: std::ops::DerefMut<Target = rustls::ConnectionCommon<DB>>,
{
    let mut wire = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut wire).unwrap();
    }
    let mut rest = &wire[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).unwrap();
        to.process_new_packets().unwrap();
    }
}

/// A socket with nothing to read yet.
struct NothingYet;

impl std::io::Read for NothingYet {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
}

#[test]
fn rustls_gives_its_buffers_back_and_takes_them_again_only_for_bytes() {
    // What steer's idle TLS connections call (vendor/rustls/STEER.md): a
    // read that finds the socket empty or closed must not take the record
    // buffer again, and bytes that come after a release are read whole.
    use rustls::pki_types::pem::PemObject;
    let pem = self_signed(&["localhost"]);
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pem.der.clone()], key)
        .unwrap();
    let mut server = rustls::ServerConnection::new(Arc::new(config)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = rustls::ClientConnection::new(client_config(&[]), name).unwrap();
    for _ in 0..10 {
        pump(&mut client, &mut server);
        pump(&mut server, &mut client);
    }
    assert!(!server.is_handshaking() && !client.is_handshaking());

    assert!(server.release_buffers(), "the handshake's record buffer");
    assert!(!server.release_buffers(), "nothing left to give back");
    let empty = server.read_tls(&mut NothingYet).unwrap_err();
    assert_eq!(empty.kind(), std::io::ErrorKind::WouldBlock);
    assert!(
        !server.release_buffers(),
        "a read that found nothing took the buffer"
    );

    let said = b"after the release".repeat(500);
    std::io::Write::write_all(&mut client.writer(), &said).unwrap();
    pump(&mut client, &mut server);
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while got.len() < said.len() {
        let n = std::io::Read::read(&mut server.reader(), &mut chunk).unwrap();
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(
        got == said,
        "{} bytes of {} read back",
        got.len(),
        said.len()
    );
    assert!(
        server.release_buffers(),
        "bytes came: the buffer was taken again"
    );

    let closed = server.read_tls(&mut &b""[..]).unwrap();
    assert_eq!(closed, 0);
    assert!(
        !server.release_buffers(),
        "a read that found the socket closed took the buffer"
    );
}
