use super::*;

fn pair(dir: &Path, name: &str, sans: &[&str]) -> CertificateFiles {
    let c =
        rcgen::generate_simple_self_signed(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let files = CertificateFiles {
        at: 0,
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&files.cert, c.cert.pem()).unwrap();
    std::fs::write(&files.key, c.signing_key.serialize_pem()).unwrap();
    files
}

fn set(dir: &Path) -> CertSet {
    let certs = vec![
        load_pair(&pair(dir, "a", &["auth.example.com"])).unwrap(),
        load_pair(&pair(dir, "w", &["*.example.com"])).unwrap(),
    ];
    CertSet::new(certs).unwrap()
}

fn same(a: &Arc<CertifiedKey>, b: &LoadedCert) -> bool {
    Arc::ptr_eq(a, &b.key)
}

#[test]
fn exact_name_beats_wildcard() {
    let dir = tempfile::tempdir().unwrap();
    let s = set(dir.path());
    assert!(same(&s.pick(Some("auth.example.com")), &s.certs[0]));
    assert!(same(&s.pick(Some("AUTH.example.com")), &s.certs[0]));
}

#[test]
fn wildcard_certificate_covers_one_label_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = set(dir.path());
    assert!(same(&s.pick(Some("login.example.com")), &s.certs[1]));
    // a.b.example.com is not covered by *.example.com: the default answers.
    assert!(same(&s.pick(Some("a.b.example.com")), &s.certs[0]));
}

#[test]
fn no_sni_gets_the_first_entry() {
    let dir = tempfile::tempdir().unwrap();
    let s = set(dir.path());
    assert!(same(&s.pick(None), &s.certs[0]));
}

#[test]
fn names_come_from_the_subject_alt_names() {
    let dir = tempfile::tempdir().unwrap();
    let c = load_pair(&pair(
        dir.path(),
        "m",
        &["a.example.com", "*.b.example.com"],
    ))
    .unwrap();
    assert_eq!(c.names, vec!["a.example.com", "*.b.example.com"]);
    assert!(c.not_after > SystemTime::now());
}

#[test]
fn a_missing_key_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = pair(dir.path(), "a", &["a.example.com"]);
    files.key = dir.path().join("a.pem");
    let err = load_pair(&files).unwrap_err();
    assert!(err.to_string().contains("no PEM private key"), "{err}");
}

#[test]
fn refresh_notices_changed_files_and_keeps_old_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let files = pair(dir.path(), "a", &["a.example.com"]);
    let store = TlsStore::new(std::slice::from_ref(&files), None).unwrap();
    assert!(!store.refresh().unwrap());
    let before = store.current().certs[0].hash.clone();
    std::fs::write(&files.key, "garbage").unwrap();
    assert!(store.refresh().is_err());
    assert_eq!(store.current().certs[0].hash, before);
    pair(dir.path(), "a", &["a.example.com"]);
    assert!(store.refresh().unwrap());
    assert_ne!(store.current().certs[0].hash, before);
}

#[test]
fn xfcc_stays_one_visible_ascii_line_whatever_the_certificate_says() {
    let mut params = rcgen::CertificateParams::new(vec!["a;b.example".to_owned()]).unwrap();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, " Zoë \"root\"\nadmin, ops+dev ");
    params.distinguished_name = dn;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let value = super::forwarded_client_cert(cert.der()).unwrap();
    let text = value.to_str().unwrap();
    assert!(text.starts_with("Hash="), "{text}");
    // RFC 4514 escapes (leading/trailing space, `"`, `,`, `+`), then XFCC's
    // `\"`, and non-ASCII and control bytes as `\XX`.
    assert!(
        text.contains(r#";Subject="CN=\ Zo\C3\AB \\"root\\"\0Aadmin\, ops\+dev\ ""#),
        "{text}"
    );
    // A value with `;` is quoted.
    assert!(text.ends_with(r#";DNS="a;b.example""#), "{text}");
}
