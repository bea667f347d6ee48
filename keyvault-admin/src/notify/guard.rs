//! The outbound address rule (CONTRACT §7): a channel's URL may not name a loopback, private,
//! link-local or unique-local address, and a host name is resolved when delivering, each
//! address checked, and the connection made to an address that was checked — never to one the
//! name resolves to a moment later (DNS rebinding). `KEYVAULT_ALLOW_PRIVATE_WEBHOOKS=true`
//! lifts the rule, for receivers on the same machine or network.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use async_trait::async_trait;

/// Why an address may not be delivered to, or None when it may.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() {
                Some("the unspecified address")
            } else if first & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if first & 0xfe00 == 0xfc00 {
                Some("a unique-local address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else if first == 0x0064 && v6.segments()[1] == 0xff9b {
                // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits.
                let [.., a, b] = v6.segments();
                forbidden_v4(Ipv4Addr::from((u32::from(a) << 16) | u32::from(b)))
            } else {
                None
            }
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if ip.is_unspecified() || a == 0 {
        Some("the unspecified address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared (carrier-grade NAT) address")
    } else if ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        Some("a broadcast, multicast or reserved address")
    } else {
        None
    }
}

/// Resolves host names for deliveries. The system's resolver by default; tests replace it,
/// so that a name can resolve to any address without a DNS server.
#[async_trait]
pub trait Resolver: Send + Sync + fmt::Debug {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The operating system's resolver (`getaddrinfo`, through Tokio).
#[derive(Debug, Default)]
pub struct SystemResolver;

#[async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// A resolver that answers from a fixed table: for tests and for pinned hosts.
#[derive(Debug, Default, Clone)]
pub struct StaticResolver(pub Vec<(String, IpAddr)>);

#[async_trait]
impl Resolver for StaticResolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        let found: Vec<SocketAddr> = self
            .0
            .iter()
            .filter(|(h, _)| h.eq_ignore_ascii_case(host))
            .map(|(_, ip)| SocketAddr::new(*ip, port))
            .collect();
        if found.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host} does not resolve"),
            ));
        }
        Ok(found)
    }
}

/// The rule applied to a resolver: what the HTTP client connects to.
#[derive(Debug, Clone)]
pub(crate) struct Guarded {
    pub(crate) resolver: Arc<dyn Resolver>,
    pub(crate) allow_private: bool,
}

/// A delivery not made because of where its host resolves.
#[derive(Debug)]
pub(crate) struct Refused(pub(crate) String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

impl Guarded {
    /// The addresses `host` may be reached at; `Refused` when it resolves only to forbidden
    /// ones.
    pub(crate) async fn addresses(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let all = self.resolver.resolve(host, port).await?;
        if self.allow_private {
            return Ok(all);
        }
        let mut why = None;
        let allowed: Vec<SocketAddr> = all
            .into_iter()
            .filter(|a| match forbidden(a.ip()) {
                None => true,
                Some(w) => {
                    why = Some(w);
                    false
                }
            })
            .collect();
        if allowed.is_empty() {
            let why = why.unwrap_or("no address");
            return Err(Box::new(Refused(format!("{host} resolves to {why}"))));
        }
        Ok(allowed)
    }
}

impl reqwest::dns::Resolve for Guarded {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        Box::pin(async move {
            // reqwest puts the URL's port on the addresses it gets back.
            let addrs = this.addresses(name.as_str(), 0).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Checks a channel's URL when it is made: `http` or `https`, a host, and (unless lifted)
/// no host that is a forbidden address or names one (`localhost`). The reason, if refused.
pub(crate) fn check_url(url: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be an http or https URL".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry a user name or password".into());
    }
    let Some(host) = parsed.host() else {
        return Err("must name a host".into());
    };
    if allow_private {
        return Ok(parsed);
    }
    let ip = match host {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if d == "localhost" || d.ends_with(".localhost") {
                Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
            } else {
                None
            }
        }
    };
    if let Some(why) = ip.and_then(forbidden) {
        return Err(format!(
            "names {why}; deliveries to such addresses are not made unless \
             KEYVAULT_ALLOW_PRIVATE_WEBHOOKS=true"
        ));
    }
    Ok(parsed)
}

/// A URL as listings and logs show it: scheme and host (and port), never the path, which
/// may be a credential (a Slack URL is one).
pub(crate) fn shown(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{}://{h}:{p}", u.scheme()),
            (Some(h), None) => format!("{}://{h}", u.scheme()),
            _ => format!("{}:", u.scheme()),
        },
        Err(_) => "(not a URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_private_link_local_and_unique_local_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(forbidden(ip).is_some(), "{ip}");
        }
        for ip in [
            "93.184.215.14",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(forbidden(ip), None, "{ip}");
        }
    }

    #[test]
    fn urls_are_checked_with_the_reason_named() {
        assert!(check_url("https://hooks.example.com/x", false).is_ok());
        for (url, why) in [
            ("ftp://example.com/", "http or https"),
            ("not a url", "not a URL"),
            ("http://127.0.0.1:9000/hook", "loopback"),
            ("http://[::1]/hook", "loopback"),
            ("http://localhost:8080/", "loopback"),
            ("http://10.0.0.8/", "private"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://[fd00::1]/", "unique-local"),
            ("https://user:pw@example.com/", "password"),
        ] {
            let e = check_url(url, false).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
        assert!(check_url("http://127.0.0.1:9000/hook", true).is_ok());
    }

    #[test]
    fn urls_are_shown_without_their_path() {
        assert_eq!(
            shown("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com"
        );
        assert_eq!(shown("http://127.0.0.1:9000/x?y"), "http://127.0.0.1:9000");
    }

    #[tokio::test]
    async fn names_that_resolve_to_forbidden_addresses_are_refused() {
        let resolver = Arc::new(StaticResolver(vec![
            ("inside.test".into(), "10.0.0.5".parse().unwrap()),
            ("mixed.test".into(), "192.168.0.9".parse().unwrap()),
            ("mixed.test".into(), "93.184.215.14".parse().unwrap()),
            ("v6.test".into(), "fd00::5".parse().unwrap()),
        ]));
        let g = Guarded {
            resolver: resolver.clone(),
            allow_private: false,
        };
        let e = g.addresses("inside.test", 443).await.unwrap_err();
        assert!(e.to_string().contains("private"), "{e}");
        assert!(g.addresses("v6.test", 443).await.is_err());
        let mixed = g.addresses("mixed.test", 443).await.unwrap();
        assert_eq!(mixed, ["93.184.215.14:443".parse().unwrap()]);
        let lifted = Guarded {
            resolver,
            allow_private: true,
        };
        assert_eq!(lifted.addresses("inside.test", 80).await.unwrap().len(), 1);
    }
}
