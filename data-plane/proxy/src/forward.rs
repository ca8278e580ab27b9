//! The headers a proxy owes its upstream, and the ones it must not pass on.
//!
//! - Hop-by-hop headers (RFC 9110 §7.6.1: `Connection` and every header it
//!   names, `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`,
//!   `Proxy-*`, and `HTTP2-Settings`) describe one connection and are removed
//!   in both directions. Removing `Upgrade` also means a client's `Upgrade:
//!   h2c` is never forwarded.
//! - `X-Forwarded-For` is believed only from a peer inside `--trusted-proxies`:
//!   then the peer is appended to the chain it sent; otherwise the chain is
//!   replaced by the peer address alone, so a client cannot forge its IP.
//!   `X-Forwarded-Proto` / `X-Forwarded-Host` likewise pass through only from
//!   a trusted peer and are set by the gateway otherwise (`https` for a
//!   request that arrived on the TLS listener).
//! - `X-Request-Id` is kept when the client sent a sane one (visible ASCII, at
//!   most 200 bytes) and generated otherwise.
//!
//! The client IP that plugins see is the right-most address of the chain that
//! is not itself a trusted proxy.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION};
use ipnet::IpNet;
use rustls_pki_types::CertificateDer;
use tollgate_plugin_api::ClientCertificate;

pub use tollgate_plugin_api::request_id::X_REQUEST_ID;
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

const PROTO_HTTP: HeaderValue = HeaderValue::from_static("http");
const PROTO_HTTPS: HeaderValue = HeaderValue::from_static("https");

/// The headers that only describe one hop (RFC 9110 §7.6.1, plus
/// `Proxy-Connection` and `HTTP2-Settings`), in [`hop_by_hop_index`] order.
const HOP_BY_HOP: [HeaderName; 10] = [
    http::header::TE,
    http::header::TRAILER,
    http::header::UPGRADE,
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("http2-settings"),
    HeaderName::from_static("proxy-connection"),
    http::header::TRANSFER_ENCODING,
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
];
const CONNECTION_INDEX: usize = 3;

/// `name`'s place in [`HOP_BY_HOP`], if it is hop-by-hop. Names are
/// lower-case; the length picks the one or two candidates to compare, so
/// this costs a few instructions per header and never hashes.
#[inline]
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    let name = name.as_str();
    let index = match name.len() {
        2 if name == "te" => 0,
        7 if name == "trailer" => 1,
        7 if name == "upgrade" => 2,
        10 if name == "connection" => 3,
        10 if name == "keep-alive" => 4,
        14 if name == "http2-settings" => 5,
        16 if name == "proxy-connection" => 6,
        17 if name == "transfer-encoding" => 7,
        18 if name == "proxy-authenticate" => 8,
        19 if name == "proxy-authorization" => 9,
        _ => return None,
    };
    Some(index)
}

/// The `--trusted-proxies` list.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    networks: Box<[IpNet]>,
}

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        TrustedProxies {
            networks: networks.into_boxed_slice(),
        }
    }

    /// Parses `10.0.0.0/8,192.168.1.7` (a bare address is a /32 or /128).
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut networks = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let network = match item.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => item
                    .parse::<IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| format!("{item:?} is not a CIDR or an IP address"))?,
            };
            networks.push(network);
        }
        Ok(TrustedProxies::new(networks))
    }

    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        !self.networks.is_empty() && self.networks.iter().any(|net| net.contains(&ip))
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) compared as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Per-connection facts computed once when the connection is accepted.
#[derive(Debug, Clone)]
pub struct Peer {
    pub ip: IpAddr,
    /// `ip` as a header value, ready for `X-Forwarded-For`.
    pub ip_value: HeaderValue,
    pub trusted: bool,
    /// What the connection negotiated, when it arrived over TLS.
    pub tls: Option<crate::tls::TlsInfo>,
    /// The certificate chain the TLS client presented, unverified (routes
    /// verify it: `mtls-auth`); handed to every request of the connection.
    pub client_certificate: Option<Arc<ClientCertificate>>,
}

impl Peer {
    /// The same peer with the certificate chain its TLS client presented.
    pub fn with_client_certificate(mut self, chain: Option<&[CertificateDer<'_>]>) -> Peer {
        self.client_certificate = chain
            .and_then(|chain| {
                ClientCertificate::new(chain.iter().map(|der| der.as_ref().to_vec()).collect())
            })
            .map(Arc::new);
        self
    }

    /// The same peer on a TLS connection.
    pub fn with_tls(mut self, tls: crate::tls::TlsInfo) -> Peer {
        self.tls = Some(tls);
        self
    }

    pub fn new(ip: IpAddr, trusted_proxies: &TrustedProxies) -> Peer {
        let ip = canonical(ip);
        let ip_value = HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Peer {
            ip,
            ip_value,
            trusted: trusted_proxies.contains(ip),
            tls: None,
            client_certificate: None,
        }
    }
}

/// Removes hop-by-hop headers, including any named in `Connection`.
///
/// One pass over the fields notes which hop-by-hop names are present (a
/// bit each); the map is only touched (hashed) for those, which usually
/// means none in a request and `Connection` alone in a response.
/// `Connection: keep-alive` and `Connection: close`, the usual values, name
/// nothing else to remove.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Names only (one step per distinct name, no walk over extra values);
    // `Connection`'s values are read only when it is there.
    let mut found = 0u16;
    for name in headers.keys() {
        if let Some(index) = hop_by_hop_index(name) {
            found |= 1 << index;
        }
    }
    if found == 0 {
        return;
    }
    if found & (1 << CONNECTION_INDEX) != 0 {
        let mut named: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(CONNECTION) {
            connection_tokens(value, &mut named);
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (index, name) in HOP_BY_HOP.iter().enumerate() {
        if found & (1 << index) != 0 {
            headers.remove(name);
        }
    }
}

/// The header names a `Connection` value lists, minus `close` and
/// `keep-alive` (no end-to-end header to look for; `Keep-Alive` itself is
/// hop-by-hop anyway).
fn connection_tokens(value: &HeaderValue, named: &mut Vec<HeaderName>) {
    let bytes = value.as_bytes();
    if bytes.eq_ignore_ascii_case(b"keep-alive") || bytes.eq_ignore_ascii_case(b"close") {
        return;
    }
    let Ok(text) = value.to_str() else {
        return;
    };
    for token in text.split(',').map(str::trim) {
        if token.is_empty()
            || token.eq_ignore_ascii_case("close")
            || token.eq_ignore_ascii_case("keep-alive")
        {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            named.push(name);
        }
    }
}

/// The client IP: the peer, or when the peer is a trusted proxy, the
/// right-most `X-Forwarded-For` entry that is not a trusted proxy.
pub fn client_ip(peer: &Peer, headers: &HeaderMap, trusted_proxies: &TrustedProxies) -> IpAddr {
    if !peer.trusted {
        return peer.ip;
    }
    let mut client = peer.ip;
    let values: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Ok(ip) = entry.trim().parse::<IpAddr>() else {
            // Garbage in the chain: trust nothing to the left of it.
            return client;
        };
        client = canonical(ip);
        if !trusted_proxies.contains(client) {
            return client;
        }
    }
    client
}

/// Sets `X-Forwarded-For`, `-Proto` and `-Host`. `host` is the client's Host
/// (or `:authority`).
pub fn set_forwarded(headers: &mut HeaderMap, peer: &Peer, host: Option<&HeaderValue>) {
    let existing_chain = if peer.trusted {
        let mut values = headers.get_all(X_FORWARDED_FOR).iter();
        match (values.next(), values.next()) {
            (None, _) => None,
            (Some(single), None) => Some(single.as_bytes().to_vec()),
            (Some(first), Some(second)) => {
                let mut joined = first.as_bytes().to_vec();
                for value in std::iter::once(second).chain(values) {
                    joined.extend_from_slice(b", ");
                    joined.extend_from_slice(value.as_bytes());
                }
                Some(joined)
            }
        }
    } else {
        None
    };
    let chain = match existing_chain {
        Some(mut chain) => {
            chain.extend_from_slice(b", ");
            chain.extend_from_slice(peer.ip_value.as_bytes());
            HeaderValue::from_bytes(&chain).unwrap_or_else(|_| peer.ip_value.clone())
        }
        None => peer.ip_value.clone(),
    };
    headers.insert(X_FORWARDED_FOR, chain);

    if !peer.trusted || !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(
            X_FORWARDED_PROTO,
            if peer.tls.is_some() {
                PROTO_HTTPS
            } else {
                PROTO_HTTP
            },
        );
    }
    if !peer.trusted || !headers.contains_key(X_FORWARDED_HOST) {
        match host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
            None => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted() -> TrustedProxies {
        TrustedProxies::parse("10.0.0.0/8, 192.168.1.7").expect("parses")
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-custom-hop"),
            ("keep-alive", "timeout=5"),
            ("x-custom-hop", "1"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic abc"),
            ("x-end-to-end", "kept"),
        ]);
        remove_hop_by_hop(&mut map);
        assert_eq!(map.len(), 1, "{map:?}");
        assert_eq!(map["x-end-to-end"], "kept");

        let mut map = headers(&[
            ("connection", "Close, X-Other"),
            ("connection", "Keep-Alive"),
            ("x-other", "1"),
            ("proxy-connection", "keep-alive"),
            ("trailer", "x-sum"),
            ("host", "h"),
        ]);
        remove_hop_by_hop(&mut map);
        assert_eq!(map.len(), 1, "{map:?}");
        assert_eq!(map["host"], "h");

        let mut map = headers(&[("host", "h"), ("accept", "*/*")]);
        remove_hop_by_hop(&mut map);
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn the_hop_by_hop_names_are_exactly_these() {
        use http::header;
        for name in [
            header::CONNECTION,
            header::TE,
            header::TRAILER,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
            header::PROXY_AUTHENTICATE,
            header::PROXY_AUTHORIZATION,
            HeaderName::from_static("keep-alive"),
            HeaderName::from_static("proxy-connection"),
            HeaderName::from_static("http2-settings"),
        ] {
            let index = hop_by_hop_index(&name);
            assert!(index.is_some(), "{name}");
            assert!(index.is_some_and(|i| HOP_BY_HOP[i] == name), "{name}");
        }
        for name in [
            header::HOST,
            header::CONTENT_LENGTH,
            header::ACCEPT,
            header::AUTHORIZATION,
            HeaderName::from_static("x-connection"),
            HeaderName::from_static("tf"),
        ] {
            assert!(hop_by_hop_index(&name).is_none(), "{name}");
        }
    }

    #[test]
    fn untrusted_peer_has_forwarded_headers_replaced() {
        let peer = Peer::new("203.0.113.9".parse().expect("ip"), &trusted());
        assert!(!peer.trusted);
        let mut map = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ]);
        assert_eq!(client_ip(&peer, &map, &trusted()), peer.ip);
        let host = HeaderValue::from_static("api.example.com");
        set_forwarded(&mut map, &peer, Some(&host));
        assert_eq!(map["x-forwarded-for"], "203.0.113.9");
        assert_eq!(map["x-forwarded-proto"], "http");
        assert_eq!(map["x-forwarded-host"], "api.example.com");
    }

    #[test]
    fn trusted_peer_has_its_chain_appended_to() {
        let peer = Peer::new("10.1.2.3".parse().expect("ip"), &trusted());
        assert!(peer.trusted);
        let mut map = headers(&[
            ("x-forwarded-for", "198.51.100.1, 192.168.1.7"),
            ("x-forwarded-for", "10.9.9.9"),
            ("x-forwarded-proto", "https"),
        ]);
        assert_eq!(
            client_ip(&peer, &map, &trusted()),
            "198.51.100.1".parse::<IpAddr>().expect("ip")
        );
        set_forwarded(&mut map, &peer, Some(&HeaderValue::from_static("h")));
        assert_eq!(
            map["x-forwarded-for"],
            "198.51.100.1, 192.168.1.7, 10.9.9.9, 10.1.2.3"
        );
        assert_eq!(map["x-forwarded-proto"], "https");
        assert_eq!(map["x-forwarded-host"], "h");
    }

    #[test]
    fn trusted_peer_without_chain_and_garbage_chains() {
        let peer = Peer::new("10.1.2.3".parse().expect("ip"), &trusted());
        let mut map = HeaderMap::new();
        assert_eq!(client_ip(&peer, &map, &trusted()), peer.ip);
        set_forwarded(&mut map, &peer, None);
        assert_eq!(map["x-forwarded-for"], "10.1.2.3");
        assert!(map.get("x-forwarded-host").is_none());

        let map = headers(&[("x-forwarded-for", "1.1.1.1, garbage, 10.0.0.5")]);
        assert_eq!(
            client_ip(&peer, &map, &trusted()),
            "10.0.0.5".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn mapped_ipv6_peers_match_ipv4_networks() {
        let peer = Peer::new("::ffff:10.0.0.1".parse().expect("ip"), &trusted());
        assert!(peer.trusted);
        assert_eq!(peer.ip_value, "10.0.0.1");
    }

    #[test]
    fn trusted_proxy_list_rejects_garbage() {
        assert!(TrustedProxies::parse("10.0.0.0/8,nope").is_err());
        assert!(TrustedProxies::parse("")
            .expect("empty")
            .networks
            .is_empty());
    }
}
