//! Where the key and the caller's address come from: written once here and used by every
//! keyvault edge (this layer, the admin server, host applications).

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use http::{HeaderMap, HeaderName, header::AUTHORIZATION, request::Parts};
use ipnet::IpNet;

/// What the request presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    /// No key, or an empty one.
    Missing,
    /// Some text (perhaps not a key at all: the verifier answers `NOT_FOUND` then).
    Key(&'a str),
}

/// Reads the key: `Authorization: Bearer` first (the scheme case-insensitive), then the
/// API-key header. A value that is not UTF-8 cannot be a key; it is passed on as text that
/// will not parse, so it answers `NOT_FOUND` rather than `MISSING`.
///
/// ```
/// use http::{HeaderMap, HeaderName, HeaderValue};
/// use keyvault_axum::{Presented, presented_key};
///
/// let mut h = HeaderMap::new();
/// h.insert("x-api-key", HeaderValue::from_static("kv_b"));
/// h.insert("authorization", HeaderValue::from_static("bearer kv_a"));
/// let x_api_key = HeaderName::from_static("x-api-key");
/// assert_eq!(presented_key(&h, true, Some(&x_api_key)), Presented::Key("kv_a"));
/// assert_eq!(presented_key(&h, false, None), Presented::Missing);
/// ```
pub fn presented_key<'a>(
    headers: &'a HeaderMap,
    bearer: bool,
    api_key_header: Option<&HeaderName>,
) -> Presented<'a> {
    if bearer {
        for value in headers.get_all(AUTHORIZATION) {
            // Bytes, not `to_str`: the key's own parser rejects anything that is not a key, so
            // a second character-by-character check here would only cost time.
            let bytes = value.as_bytes().trim_ascii();
            let (scheme, rest) = match bytes.iter().position(|&b| b == b' ') {
                Some(i) => (&bytes[..i], &bytes[i + 1..]),
                None => (bytes, &b""[..]),
            };
            if scheme.eq_ignore_ascii_case(b"bearer") {
                return token(rest);
            }
        }
    }
    if let Some(name) = api_key_header
        && let Some(value) = headers.get(name)
    {
        return token(value.as_bytes());
    }
    Presented::Missing
}

fn token(bytes: &[u8]) -> Presented<'_> {
    let bytes = bytes.trim_ascii();
    if bytes.is_empty() {
        return Presented::Missing;
    }
    // Not UTF-8 cannot be a key; it is still a presented credential, so NOT_FOUND.
    Presented::Key(std::str::from_utf8(bytes).unwrap_or(""))
}

/// The credential in `Authorization: Bearer` (the scheme in any case), if one is there and
/// not empty. A value that is not UTF-8 is presented as `""`, which matches no key or token.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    match presented_key(headers, true, None) {
        Presented::Key(k) => Some(k),
        Presented::Missing => None,
    }
}

/// Which forwarding header to believe, and from whom.
#[derive(Debug, Clone)]
pub struct TrustedProxies {
    pub(crate) nets: Vec<IpNet>,
    pub(crate) header: HeaderName,
}

impl TrustedProxies {
    /// Believes `X-Forwarded-For` from peers inside `nets`.
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self {
            nets,
            header: HeaderName::from_static("x-forwarded-for"),
        }
    }

    /// Believes `header` instead of `X-Forwarded-For`.
    #[must_use]
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }
}

/// The TCP peer's address (`ConnectInfo<SocketAddr>`), IPv4 addresses seen through an IPv6
/// socket given as IPv4.
pub fn peer_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_canonical())
}

/// The caller's address: the peer's, unless the peer is a trusted proxy, in which case the
/// forwarding header is walked from the right (the entry the nearest proxy appended) past
/// every trusted hop; the first untrusted address is the client. Entries left of it were
/// written by the client itself and are never believed. An entry that is not an address
/// stops the walk at the last address known.
///
/// Serve the router with `into_make_service_with_connect_info::<SocketAddr>()`; without it
/// the peer, and so the client, is unknown.
pub fn client_ip(parts: &Parts, proxies: Option<&TrustedProxies>) -> Option<IpAddr> {
    let peer = peer_ip(parts);
    let Some(proxies) = proxies else {
        return peer;
    };
    let trusted = |ip: &IpAddr| proxies.contains(ip);
    let peer = peer?;
    if !trusted(&peer) {
        return Some(peer);
    }
    let mut client = peer;
    // Several header lines count as one list, in order.
    let values: Vec<&str> = parts
        .headers
        .get_all(&proxies.header)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Some(ip) = parse_forwarded_entry(entry) else {
            // A hop we trust wrote something unreadable: stop at the last address we know.
            break;
        };
        client = ip;
        if !trusted(&ip) {
            break;
        }
    }
    Some(client)
}

fn parse_forwarded_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    // `1.2.3.4:5678` or `[::1]:5678`.
    entry
        .parse::<SocketAddr>()
        .ok()
        .map(|s| s.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Request};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn xkey() -> HeaderName {
        HeaderName::from_static("x-api-key")
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let h = headers(&[("authorization", &format!("{scheme} kv_abc"))]);
            assert_eq!(
                presented_key(&h, true, Some(&xkey())),
                Presented::Key("kv_abc")
            );
        }
    }

    #[test]
    fn authorization_wins_over_the_api_key_header() {
        let h = headers(&[("authorization", "Bearer kv_a"), ("x-api-key", "kv_b")]);
        assert_eq!(
            presented_key(&h, true, Some(&xkey())),
            Presented::Key("kv_a")
        );
        // Another scheme is not a key presentation: the API-key header is read.
        let h = headers(&[
            ("authorization", "Basic Zm9vOmJhcg=="),
            ("x-api-key", "kv_b"),
        ]);
        assert_eq!(
            presented_key(&h, true, Some(&xkey())),
            Presented::Key("kv_b")
        );
    }

    #[test]
    fn empty_values_are_missing() {
        for h in [
            headers(&[("authorization", "Bearer ")]),
            headers(&[("authorization", "Bearer")]),
            headers(&[("x-api-key", "")]),
            headers(&[("x-api-key", "   ")]),
            headers(&[]),
        ] {
            assert_eq!(presented_key(&h, true, Some(&xkey())), Presented::Missing);
        }
    }

    #[test]
    fn values_that_are_not_text_are_presented_but_unusable() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-api-key",
            HeaderValue::from_bytes(b"kv_\xff\xfe").unwrap(),
        );
        assert_eq!(presented_key(&h, true, Some(&xkey())), Presented::Key(""));
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_bytes(b"Bearer kv_\xff").unwrap(),
        );
        assert_eq!(presented_key(&h, true, Some(&xkey())), Presented::Key(""));
    }

    #[test]
    fn disabled_sources_are_ignored() {
        let h = headers(&[("authorization", "Bearer kv_a")]);
        assert_eq!(presented_key(&h, false, Some(&xkey())), Presented::Missing);
        let h = headers(&[("x-api-key", "kv_a")]);
        assert_eq!(presented_key(&h, true, None), Presented::Missing);
    }

    fn parts_from(peer: &str, xff: &[&str]) -> Parts {
        let mut b = Request::builder();
        for v in xff {
            b = b.header("x-forwarded-for", *v);
        }
        let (mut parts, ()) = b.body(()).unwrap().into_parts();
        parts
            .extensions
            .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        parts
    }

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies {
            nets: nets.iter().map(|n| n.parse().unwrap()).collect(),
            header: HeaderName::from_static("x-forwarded-for"),
        }
    }

    #[test]
    fn forwarding_header_is_believed_only_from_trusted_peers() {
        let p = proxies(&["10.0.0.0/8"]);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // Untrusted peer: its header is ignored.
        let parts = parts_from("203.0.113.9:1000", &["198.51.100.1"]);
        assert_eq!(client_ip(&parts, Some(&p)), ip("203.0.113.9"));
        // Trusted peer: the rightmost untrusted entry; the client's own claims on the left
        // are not believed.
        let parts = parts_from("10.0.0.1:1000", &["1.1.1.1, 198.51.100.1, 10.0.0.2"]);
        assert_eq!(client_ip(&parts, Some(&p)), ip("198.51.100.1"));
        // Several header lines form one list.
        let parts = parts_from("10.0.0.1:1000", &["1.1.1.1", "198.51.100.7:443"]);
        assert_eq!(client_ip(&parts, Some(&p)), ip("198.51.100.7"));
        // Without proxies configured the header means nothing.
        let parts = parts_from("10.0.0.1:1000", &["198.51.100.1"]);
        assert_eq!(client_ip(&parts, None), ip("10.0.0.1"));
        // Garbage from a trusted hop: the last address known.
        let parts = parts_from("10.0.0.1:1000", &["nonsense"]);
        assert_eq!(client_ip(&parts, Some(&p)), ip("10.0.0.1"));
        // An IPv4 peer seen through an IPv6 socket is the IPv4 peer.
        let parts = parts_from("[::ffff:10.1.2.3]:1000", &["198.51.100.1"]);
        assert_eq!(client_ip(&parts, Some(&p)), ip("198.51.100.1"));
    }
}
