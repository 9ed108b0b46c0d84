//! Header rules of the request path: hop-by-hop removal, forwarding-header
//! hygiene (a client that is not a trusted proxy cannot forge who it is or
//! which ZITADEL instance it wants), the `X-Forwarded-*`/`Forwarded` that
//! steer adds, and a route's set/remove rules. Functions over HeaderMap,
//! and the forwarding values an HTTP/2 connection keeps (`HopCache`).

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::{ClientIpHeader, HeaderRules};

/// Header names each field of a message is looked up in. A field whose
/// length no name of the set has (`host`, `accept`, `cookie` and most
/// others) is turned away by one bit test before any name is compared.
pub(crate) struct NameSet<const N: usize> {
    names: [HeaderName; N],
    lengths: u32,
}

/// A `NameSet` of lower-case names shorter than 32 bytes (a longer one
/// does not compile).
macro_rules! name_set {
    ($($name:literal),* $(,)?) => {
        NameSet {
            names: [$(HeaderName::from_static($name)),*],
            lengths: 0 $(| {
                const { assert!($name.len() < 32, "a NameSet name is 32 bytes or longer") };
                1 << $name.len()
            })*,
        }
    };
}

impl<const N: usize> NameSet<N> {
    /// `name`'s index in the set.
    fn position(&self, name: &HeaderName) -> Option<usize> {
        let len = name.as_str().len();
        if len >= 32 || self.lengths & (1 << len) == 0 {
            return None;
        }
        self.names.iter().position(|n| n == name)
    }

    fn contains(&self, name: &HeaderName) -> bool {
        self.position(name).is_some()
    }
}

/// Forwarding headers removed from clients that are not trusted proxies.
static FORWARDING_NAMES: NameSet<9> = name_set![
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-real-ip",
    "x-zitadel-forwarded",
    "x-zitadel-instance-host",
    "x-zitadel-public-host",
];

const FWD_FORWARDED: usize = 0;
const FWD_XFF: usize = 1;
const FWD_XFH: usize = 2;
const FWD_XFP: usize = 3;
/// X-Forwarded-For, -Host, -Proto, -Port and X-Real-IP, by index.
const X_FORWARDED_FAMILY: u32 = 0b11_1110;

/// RFC 9110 §7.6.1 hop-by-hop fields, plus the legacy `proxy-connection`.
static HOP_BY_HOP: NameSet<8> = name_set![
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];
const HOP_CONNECTION: usize = 0;
const HOP_TE: usize = 5;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether the request asks for a protocol upgrade (WebSocket and the like).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

/// The `Upgrade` value to forward: the protocols the request asks for
/// (RFC 9110 §7.8) that are in `allowed` (lower-case names, a version
/// after `/` ignored), or `None` when it asks for no upgrade or only for
/// others (`h2c`, made-up ones), which are then removed and the request is
/// served as plain HTTP.
pub fn allowed_upgrade(headers: &HeaderMap, allowed: &[String]) -> Option<HeaderValue> {
    if !is_upgrade(headers) {
        return None;
    }
    let mut kept: Vec<&str> = Vec::new();
    for value in headers.get_all(header::UPGRADE) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim) {
            let name = token.split('/').next().unwrap_or("");
            if allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) {
                kept.push(token);
            }
        }
    }
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join(", ")).ok()
}

/// Whether the `Connection` header lists `token`.
pub(crate) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    list_has(headers, &header::CONNECTION, token)
}

/// Whether the comma-separated list header `name` (any of its values)
/// has `token`, case-insensitively.
fn list_has(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop fields and those the `Connection` header names. Keeps
/// `te: trailers` (gRPC needs it end to end) and, for upgrades, `Upgrade`
/// with `Connection: upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names (cheap comparisons of parsed names) finds
    // which hop-by-hop fields are present; only those are removed.
    let mut present = 0u32;
    let mut has_upgrade = false;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.position(name) {
            present |= 1 << i;
        } else if name == header::UPGRADE {
            has_upgrade = true;
        }
    }
    if present == 0 && !has_upgrade {
        return;
    }
    let te_trailers = present & (1 << HOP_TE) != 0 && list_has(headers, &header::TE, "trailers");
    if present & (1 << HOP_CONNECTION) != 0
        && let header::Entry::Occupied(entry) = headers.entry(header::CONNECTION)
    {
        let (_, mut values) = entry.remove_entry_mult();
        // Usually one value: `rest` stays empty and allocates nothing.
        let first = values.next();
        let rest: Vec<HeaderValue> = values.collect();
        for value in first.iter().chain(&rest) {
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',').map(str::trim) {
                // `keep-alive` and `close` are the usual tokens: the first
                // is in HOP_BY_HOP anyway, the second names no header.
                if token.is_empty()
                    || token.eq_ignore_ascii_case("close")
                    || token.eq_ignore_ascii_case("keep-alive")
                    || (upgrade && token.eq_ignore_ascii_case("upgrade"))
                {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    headers.remove(name);
                }
            }
        }
    }
    for (i, name) in HOP_BY_HOP.names.iter().enumerate() {
        if i != HOP_CONNECTION && present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if has_upgrade {
        headers.remove(header::UPGRADE);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Request trailers get the hygiene of request headers, whoever sent
/// them (trailers carry no forwarding information anyone should trust):
/// hop-by-hop fields, forwarding fields, any `x-zitadel-*` field,
/// `content-length` (framing is never a trailer's, RFC 9110 §6.5.1), and,
/// unless `underscores` allows them, names with `_`.
pub fn clean_trailers(trailers: &mut HeaderMap, underscores: bool) {
    let dropped: Vec<HeaderName> = trailers
        .keys()
        .filter(|k| {
            HOP_BY_HOP.contains(k)
                || FORWARDING_NAMES.contains(k)
                || *k == header::UPGRADE
                || *k == header::HOST
                || *k == header::CONTENT_LENGTH
                || k.as_str().starts_with("x-zitadel-")
                || k.as_str().starts_with("x-forwarded-")
                || (!underscores && k.as_str().contains('_'))
        })
        .cloned()
        .collect();
    for name in dropped {
        trailers.remove(name);
    }
}

/// What steer knows about the hop it received a request on.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    pub peer: IpAddr,
    pub trusted: bool,
    /// The forwarding header a trusted peer sets (`client_ip_header`).
    pub via: ClientIpHeader,
    pub tls: bool,
    /// The client's Host / `:authority`, as sent (visible ASCII: checked
    /// by `proxy::request::client_host`).
    pub host: Option<&'a HeaderValue>,
    /// The connection's forwarding values, when it keeps them
    /// (`HopCache`).
    pub cache: Option<&'a HopCache>,
}

/// Forwarding-header hygiene and the headers steer adds.
///
/// From an untrusted peer every forwarding header is dropped first. Then
/// `X-Forwarded-For` gets the peer appended; `X-Forwarded-Proto` and
/// `X-Forwarded-Host` are set unless a trusted proxy already set them (it
/// saw the original request); `Forwarded` gets an element for this hop
/// appended, so its left-most element stays the original client's.
pub fn apply_forwarding(headers: &mut HeaderMap, hop: &Hop<'_>) {
    if let Some(fields) = forwarding(headers, hop) {
        fields.insert(headers);
    }
}

/// Forwarding fields outside `FORWARDING_NAMES` that a client must not
/// send. From anyone, trusted proxies included (no load balancer sets
/// them, so a trusted one passes on its client's): the host ZITADEL's gRPC
/// gateway hands its own gRPC server, and any forwarding field behind
/// grpc-gateway's `Grpc-Metadata-` prefix, which the gateway turns into
/// gRPC metadata of the bare name. From a peer outside `trusted_proxies`
/// also the rest of the X-Forwarded-* family (frameworks build URLs from
/// `-Prefix`, `-Server`), which load balancers do set.
///
/// `X-Forwarded-Client-Cert` is steer's own by then: the client's was
/// removed before routing and steer set it from a verified certificate.
fn forged_elsewhere(name: &str, trusted: bool) -> bool {
    // Every name of a request is asked: most start with neither letter.
    if !matches!(name.as_bytes().first(), Some(b'g' | b'x')) {
        return false;
    }
    if let Some(bare) = name.strip_prefix("grpc-metadata-") {
        return bare.starts_with("x-forwarded-")
            || bare == "x-zitadel-http1-host"
            || FORWARDING_NAMES.names.iter().any(|n| n.as_str() == bare);
    }
    let own = crate::tls::X_FORWARDED_CLIENT_CERT;
    name == "x-zitadel-http1-host"
        || (!trusted && name.starts_with("x-forwarded-") && name != own.as_str())
}

/// `apply_forwarding`, except that when the request carries none of the
/// fields steer sets (what an untrusted peer sent is gone by then, and a
/// trusted one set none), those fields depend on the hop alone and come
/// back unwritten: an HTTP/1.1 upstream head gets them written straight
/// in (`HopFields::write`), with no map insert (and, on a connection
/// without a `HopCache`, no value built).
pub(crate) fn forwarding(headers: &mut HeaderMap, hop: &Hop<'_>) -> Option<HopFields> {
    // Which forwarding headers the request has, by index in
    // FORWARDING_NAMES: one pass instead of a hashed lookup per name.
    let mut present = 0u32;
    let mut elsewhere = false;
    for name in headers.keys() {
        if let Some(i) = FORWARDING_NAMES.position(name) {
            present |= 1 << i;
        } else if forged_elsewhere(name.as_str(), hop.trusted) {
            elsewhere = true;
        }
    }
    if elsewhere {
        let forged: Vec<HeaderName> = headers
            .keys()
            .filter(|name| forged_elsewhere(name.as_str(), hop.trusted))
            .cloned()
            .collect();
        for name in forged {
            headers.remove(name);
        }
    }
    // Forged: everything from an untrusted peer; from a trusted proxy, the
    // family of the header it does not set (`client_ip_header`), which it
    // passes through from its own client.
    let forged = present
        & match (hop.trusted, hop.via) {
            (false, _) => u32::MAX,
            (true, ClientIpHeader::XForwardedFor) => 1 << FWD_FORWARDED,
            (true, ClientIpHeader::Forwarded) => X_FORWARDED_FAMILY,
        };
    if forged != 0 {
        for (i, name) in FORWARDING_NAMES.names.iter().enumerate() {
            if forged & (1 << i) != 0 {
                headers.remove(name);
            }
        }
        present &= !forged;
    }
    const SET_BY_STEER: u32 = 1 << FWD_FORWARDED | 1 << FWD_XFF | 1 << FWD_XFH | 1 << FWD_XFP;
    if present & SET_BY_STEER == 0 {
        let mut fields = HopFields {
            peer: hop.peer,
            tls: hop.tls,
            host: hop.host.cloned(),
            built: None,
        };
        fields.built = hop.cache.and_then(|cache| cache.values(&fields));
        return Some(fields);
    }
    build_on(headers, hop, present);
    None
}

/// The fields steer sets, for a request from a trusted proxy that set
/// some of them (`present`, by index in FORWARDING_NAMES): built on in
/// the map.
fn build_on(headers: &mut HeaderMap, hop: &Hop<'_>, present: u32) {
    let has = |i: usize| present & (1 << i) != 0;
    // Behind a proxy that sets only Forwarded, X-Forwarded-* are steer's to
    // write, from what Forwarded says.
    let from_forwarded =
        (hop.trusted && hop.via == ClientIpHeader::Forwarded && has(FWD_FORWARDED))
            .then(|| ForwardedChain::read(headers));
    let peer = IpText::new(hop.peer);
    let peer = peer.as_bytes();
    let host_text = hop.host.and_then(|v| v.to_str().ok());
    let previous = match &from_forwarded {
        Some(chain) => chain.fors.clone(),
        None => has(FWD_XFF)
            .then(|| join_values(headers, &X_FORWARDED_FOR))
            .flatten(),
    };
    let xff = match &previous {
        Some(prev) => exact_value(&[prev.as_bytes(), b", ", peer]),
        None => exact_value(&[peer]),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    let own_proto = own_proto(hop.tls);
    // A trusted proxy in front that speaks only X-Forwarded-* (most load
    // balancers) saw the original scheme and host; the Forwarded element
    // steer starts must say the same, or ZITADEL, which reads the left-most
    // Forwarded element first, would build http:// URLs behind a TLS LB.
    let first_hop = !has(FWD_FORWARDED);
    let trusted_value = |i: usize, name: &HeaderName| {
        if !has(i) {
            return None;
        }
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or("").trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let (proto, fwd_host): (Cow<'_, str>, Option<Cow<'_, str>>) = if hop.trusted && first_hop {
        (
            trusted_value(FWD_XFP, &X_FORWARDED_PROTO).map_or(Cow::Borrowed(own_proto), Cow::Owned),
            trusted_value(FWD_XFH, &X_FORWARDED_HOST)
                .map(Cow::Owned)
                .or_else(|| host_text.map(Cow::Borrowed)),
        )
    } else {
        (Cow::Borrowed(own_proto), host_text.map(Cow::Borrowed))
    };
    // X-Forwarded-Proto and -Host: what a trusted Forwarded chain says,
    // else this hop's scheme and the client's own Host value (shared).
    let chain = from_forwarded.as_ref();
    if !has(FWD_XFP) {
        let xfp = match chain.and_then(|c| c.proto.as_deref()) {
            Some(proto) => HeaderValue::from_str(proto).ok(),
            None => Some(HeaderValue::from_static(own_proto)),
        };
        if let Some(v) = xfp {
            headers.insert(X_FORWARDED_PROTO, v);
        }
    }
    if !has(FWD_XFH) {
        let xfh = match chain.and_then(|c| c.host.as_deref()) {
            Some(host) => HeaderValue::from_str(host).ok(),
            None => hop.host.cloned(),
        };
        if let Some(v) = xfh {
            headers.insert(X_FORWARDED_HOST, v);
        }
    }
    let proto = if is_token(&proto) { &proto } else { own_proto };
    let previous = has(FWD_FORWARDED)
        .then(|| join_values(headers, &header::FORWARDED))
        .flatten();
    let element = forwarded_value(
        previous.as_deref().map(str::as_bytes),
        (hop.peer, peer),
        proto,
        fwd_host.as_deref(),
        exact_value,
    );
    if let Some(v) = element {
        headers.insert(header::FORWARDED, v);
    }
}

/// The `Forwarded` value with this hop's element after `prev` (the
/// elements before it, joined), as the pieces of one value, handed to
/// `with`. A host that is no token is quoted, any `"` or `\` in it
/// dropped (RFC 7239 §4: a quoted-string).
fn forwarded_value<R>(
    prev: Option<&[u8]>,
    (peer, peer_text): (IpAddr, &[u8]),
    proto: &str,
    host: Option<&str>,
    with: impl FnOnce(&[&[u8]]) -> R,
) -> R {
    let (prev, sep): (&[u8], &[u8]) = match prev {
        Some(p) => (p, b", "),
        None => (b"", b""),
    };
    let (ip_open, ip_close): (&[u8], &[u8]) = match peer {
        IpAddr::V4(_) => (b"", b""),
        IpAddr::V6(_) => (b"\"[", b"]\""),
    };
    let (host_open, host, host_close): (&[u8], Cow<'_, [u8]>, &[u8]) = match host {
        Some(host) if is_token(host) => (b";host=", Cow::Borrowed(host.as_bytes()), b""),
        Some(host) if host.contains(['"', '\\']) => (
            b";host=\"",
            Cow::Owned(
                host.bytes()
                    .filter(|b| !matches!(b, b'"' | b'\\'))
                    .collect(),
            ),
            b"\"",
        ),
        Some(host) => (b";host=\"", Cow::Borrowed(host.as_bytes()), b"\""),
        None => (b"", Cow::Borrowed(b""), b""),
    };
    with(&[
        prev,
        sep,
        b"for=",
        ip_open,
        peer_text,
        ip_close,
        b";proto=",
        proto.as_bytes(),
        host_open,
        &host,
        host_close,
    ])
}

/// The forwarding fields of a hop whose request carried none of them
/// (`forwarding`): `X-Forwarded-For` the peer, `X-Forwarded-Proto` this
/// hop's scheme, `X-Forwarded-Host` the client's Host, and a `Forwarded`
/// element of the three. Every byte of them is checked already: an
/// address steer formats, a static scheme, and a Host that a
/// `HeaderValue` holds (no CR, LF or NUL), so an HTTP/1.1 head can take
/// them as they are.
#[derive(Debug, Clone)]
pub(crate) struct HopFields {
    peer: IpAddr,
    tls: bool,
    host: Option<HeaderValue>,
    /// `X-Forwarded-For` and `Forwarded` as values, when the connection's
    /// `HopCache` had them (a pointer: this travels with every request).
    built: Option<Arc<Kept>>,
}

impl HopFields {
    /// Into a header map, for every way but an HTTP/1.1 head: an HTTP/2
    /// or hyper upstream, a route rule that names one of them, a request
    /// handed back by a failed attempt, a resend.
    pub(crate) fn insert(mut self, headers: &mut HeaderMap) {
        let built = match self.built.take() {
            Some(kept) => Some((kept.xff.clone(), kept.forwarded.clone())),
            None => self.build(),
        };
        let Some((xff, forwarded)) = built else {
            return;
        };
        headers.insert(X_FORWARDED_FOR, xff);
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(own_proto(self.tls)),
        );
        if let Some(host) = self.host {
            headers.insert(X_FORWARDED_HOST, host);
        }
        headers.insert(header::FORWARDED, forwarded);
    }

    /// `X-Forwarded-For` and `Forwarded` as values.
    fn build(&self) -> Option<(HeaderValue, HeaderValue)> {
        let peer = IpText::new(self.peer);
        let proto = own_proto(self.tls);
        let host = self.host.as_ref().and_then(|v| v.to_str().ok());
        let forwarded =
            forwarded_value(None, (self.peer, peer.as_bytes()), proto, host, exact_value)?;
        Some((exact_value(&[peer.as_bytes()])?, forwarded))
    }

    /// As `name: value` lines of an HTTP/1.1 head, the same bytes `insert`
    /// puts in a map.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        use crate::client::field_line as line;
        let proto = own_proto(self.tls);
        let text;
        // `X-Forwarded-For` is the peer's address as text.
        let peer = match &self.built {
            Some(kept) => kept.xff.as_bytes(),
            None => {
                text = IpText::new(self.peer);
                text.as_bytes()
            }
        };
        line(out, &X_FORWARDED_FOR, &[peer]);
        line(out, &X_FORWARDED_PROTO, &[proto.as_bytes()]);
        if let Some(host) = &self.host {
            line(out, &X_FORWARDED_HOST, &[host.as_bytes()]);
        }
        match &self.built {
            Some(kept) => line(out, &header::FORWARDED, &[kept.forwarded.as_bytes()]),
            None => {
                let host = self.host.as_ref().and_then(|v| v.to_str().ok());
                forwarded_value(None, (self.peer, peer), proto, host, |value| {
                    line(out, &header::FORWARDED, value)
                });
            }
        }
    }
}

/// One connection's last `X-Forwarded-For` and `Forwarded` values. An
/// HTTP/2 connection's streams come from one peer over one scheme, and
/// nearly always name one Host: their values are the same on every
/// stream, built once and then shared (a reference count each), where
/// building them was two allocations and ~1,000 instructions a request.
/// A stream with another Host builds its own and keeps them for the next.
#[derive(Debug, Default)]
pub struct HopCache(Mutex<Option<Arc<Kept>>>);

#[derive(Debug)]
struct Kept {
    peer: IpAddr,
    tls: bool,
    host: Option<HeaderValue>,
    xff: HeaderValue,
    forwarded: HeaderValue,
}

impl HopCache {
    fn values(&self, fields: &HopFields) -> Option<Arc<Kept>> {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(k) = &*kept
            && (k.peer, k.tls, &k.host) == (fields.peer, fields.tls, &fields.host)
        {
            return Some(k.clone());
        }
        let (xff, forwarded) = fields.build()?;
        let built = Arc::new(Kept {
            peer: fields.peer,
            tls: fields.tls,
            host: fields.host.clone(),
            xff,
            forwarded,
        });
        *kept = Some(built.clone());
        Some(built)
    }
}

fn own_proto(tls: bool) -> &'static str {
    if tls { "https" } else { "http" }
}

/// `pieces` joined as a header value, in one allocation of exactly its
/// length: `Bytes` from a `Vec` with room to spare allocates a second time.
fn exact_value(pieces: &[&[u8]]) -> Option<HeaderValue> {
    let mut out = Vec::with_capacity(pieces.iter().map(|p| p.len()).sum());
    for piece in pieces {
        out.extend_from_slice(piece);
    }
    HeaderValue::from_maybe_shared(Bytes::from(out)).ok()
}

/// What a trusted proxy's `Forwarded` says: the `for=` addresses in order
/// (as an `X-Forwarded-For` list) and the left-most element's `proto` and
/// `host`.
struct ForwardedChain {
    fors: Option<String>,
    proto: Option<String>,
    host: Option<String>,
}

impl ForwardedChain {
    fn read(headers: &HeaderMap) -> ForwardedChain {
        let mut fors: Option<String> = None;
        let mut first: Option<&str> = None;
        for element in headers
            .get_all(header::FORWARDED)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
        {
            first.get_or_insert(element);
            if let Some(ip) = crate::routing::forwarded_for(element) {
                let ip = IpText::new(ip);
                match &mut fors {
                    Some(list) => {
                        list.push_str(", ");
                        list.push_str(ip.as_str());
                    }
                    None => fors = Some(ip.as_str().to_owned()),
                }
            }
        }
        let param = |key: &str| {
            first?.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                let v = v.trim().trim_matches('"');
                (k.eq_ignore_ascii_case(key) && !v.is_empty()).then(|| v.to_owned())
            })
        };
        ForwardedChain {
            proto: param("proto").filter(|p| is_token(p)),
            host: param("host"),
            fors,
        }
    }
}

/// An IP address as text, formatted without `core::fmt` (whose IPv4
/// `Display` was ~2,000 instructions per call) and without allocating.
pub struct IpText {
    buf: [u8; 56],
    len: usize,
}

impl IpText {
    pub fn new(ip: IpAddr) -> IpText {
        let mut text = IpText {
            buf: [0; 56],
            len: 0,
        };
        text.push_ip(ip);
        text
    }

    /// `IP:PORT`, with IPv6 in brackets (as `SocketAddr` displays it).
    pub fn socket(addr: SocketAddr) -> IpText {
        let mut text = IpText {
            buf: [0; 56],
            len: 0,
        };
        if addr.is_ipv6() {
            text.push(b'[');
            text.push_ip(addr.ip());
            text.push(b']');
        } else {
            text.push_ip(addr.ip());
        }
        text.push(b':');
        for b in itoa::Buffer::new().format(addr.port()).bytes() {
            text.push(b);
        }
        text
    }

    fn push_ip(&mut self, ip: IpAddr) {
        let text = self;
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write as _;
                let mut cursor = std::io::Cursor::new(&mut text.buf[text.len..]);
                // 45 bytes hold the longest IPv6 text (an IPv4-mapped one).
                let _ = write!(cursor, "{v6}");
                text.len += usize::try_from(cursor.position()).unwrap_or(0);
            }
        }
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// A non-empty run of RFC 9110 §5.6.2 token characters: a protocol name
/// in `upgrades`, and a `Forwarded` value that needs no quotes.
pub(crate) fn is_token(s: &str) -> bool {
    static TOKEN: [bool; 256] = byte_class(b"!#$%&'*+-.^_`|~");
    !s.is_empty() && s.bytes().all(|b| TOKEN[usize::from(b)])
}

/// A table of the bytes that are ASCII letters, digits or in `extra`.
pub(crate) const fn byte_class(extra: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
}

fn join_values(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for v in headers.get_all(name) {
        let v = v.to_str().ok()?;
        match &mut out {
            Some(s) => {
                s.push_str(", ");
                s.push_str(v);
            }
            None => out = Some(v.to_owned()),
        }
    }
    out
}

/// Whether `rules` set or remove a forwarding field.
pub(crate) fn names_forwarding(rules: &HeaderRules) -> bool {
    let mut names = rules.remove.iter().chain(rules.set.iter().map(|(n, _)| n));
    names.any(|n| FORWARDING_NAMES.contains(n))
}

/// A route's `request_headers` / `response_headers`: removes first, then sets.
pub fn apply_rules(headers: &mut HeaderMap, rules: &HeaderRules) {
    for name in &rules.remove {
        headers.remove(name);
    }
    for (name, value) in &rules.set {
        headers.insert(name.clone(), value.clone());
    }
}

/// The request id: the client's if it sent a usable one, else a new one.
/// Marked never-indexed for HPACK: a value that differs on every request
/// would only churn an HTTP/2 connection's header table (each insert
/// evicting entries that repeat), on both sides of steer.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    let mut id = match headers.get(X_REQUEST_ID) {
        Some(v) if !v.is_empty() && v.len() <= 200 => v.clone(),
        _ => new_request_id(),
    };
    id.set_sensitive(true);
    id
}

/// A request id as log text. Not `HeaderValue`'s `Debug`: for the
/// sensitive value `request_id` makes, that prints `Sensitive`.
pub(crate) fn id_text(id: &HeaderValue) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(id.as_bytes())
}

fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [b'0'; 32];
    // A byte at a time: shifting a u128 by 4 for each digit cost twice the
    // instructions.
    for (pair, byte) in id.chunks_exact_mut(2).zip(fastrand::u128(..).to_be_bytes()) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The HTTP/1.1 handshake headers steer adds when it opens a WebSocket
/// upstream for an HTTP/2 client (RFC 8441 §5: that client sends no key):
/// `Connection: upgrade`, a nonce of 16 random bytes in base64 (RFC 6455
/// §4.1), and version 13 unless the client named one.
pub(crate) fn websocket_handshake(headers: &mut HeaderMap) {
    use base64::Engine as _;
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    let nonce = fastrand::u128(..).to_le_bytes();
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    if let Ok(key) = HeaderValue::from_str(&key) {
        headers.insert(header::SEC_WEBSOCKET_KEY, key);
    }
    headers
        .entry(header::SEC_WEBSOCKET_VERSION)
        .or_insert(HeaderValue::from_static("13"));
}

/// The client's 200 for an extended CONNECT, from the upstream's 101:
/// the HTTP/1.1 upgrade headers and the key's answer mean nothing on an
/// HTTP/2 stream (RFC 8441 §5); the subprotocol and extensions stay.
pub(crate) fn websocket_accepted<B>(resp: &mut http::Response<B>) {
    *resp.status_mut() = http::StatusCode::OK;
    let headers = resp.headers_mut();
    for name in [
        header::UPGRADE,
        header::CONNECTION,
        header::SEC_WEBSOCKET_ACCEPT,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests;
