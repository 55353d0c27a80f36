//! Where im may send a webhook: `http`/`https` URLs whose host resolves only to public
//! addresses, unless private destinations are allowed (`[jobs] allow_private_callbacks`). A
//! callback URL is a request im makes on a client's behalf; without this guard any key holder
//! could make im call its own metadata service or admin ports (server-side request forgery).
//! The address checked is the address connected to: the delivery pins it, so a DNS answer that
//! changes between the check and the connection (rebinding) changes nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;

/// Why a callback URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// Not a URL, or not http(s), or without a host.
    #[error("`callback_url` must be an http or https URL with a host: {0}")]
    BadUrl(String),
    /// Its host does not resolve.
    #[error("`callback_url`'s host does not resolve: {0}")]
    Unresolved(String),
    /// Its host resolves to a private, loopback or otherwise non-public address.
    #[error(
        "`callback_url` resolves to {0}, a private or loopback address; im calls only public addresses unless `jobs.allow_private_callbacks` is set"
    )]
    Private(IpAddr),
}

/// Whether `ip` is a public unicast address. An IPv6 address that carries an IPv4 one (mapped,
/// compatible, NAT64, 6to4, Teredo) is judged by the IPv4 address it reaches.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

/// The IPv4 address an IPv6 address stands for or tunnels to, in the forms a network may route:
/// IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, deprecated), NAT64
/// (`64:ff9b::/96` and the local-use `64:ff9b:1::/48`), 6to4 (`2002:AABB:CCDD::/48`) and Teredo
/// (`2001:0::/32`, the client address inverted in the last 32 bits).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let last = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    match s {
        // IPv4-compatible, but not :: and ::1 (judged as IPv6).
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 => Some(last(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] | [0x64, 0xff9b, 1, _, _, _, hi, lo] => {
            Some(last(hi, lo))
        }
        [0x2002, hi, lo, ..] => Some(last(hi, lo)),
        [0x2001, 0, _, _, _, _, hi, lo] => Some(last(!hi, !lo)),
        _ => None,
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (carrier NAT)
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link local
        || first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
}

/// A checked destination: the URL and the address to connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The URL.
    pub url: Url,
    /// Its host as written.
    pub host: String,
    /// The address its host resolved to and passed the check.
    pub addr: SocketAddr,
}

/// Parse `url` and check that it is http(s) without credentials.
pub fn parse(url: &str) -> Result<Url, GuardError> {
    let bad = |why: &str| GuardError::BadUrl(format!("{why} ({:?})", truncate(url, 80)));
    let u = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(bad("not http or https"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad("credentials in the URL"));
    }
    Ok(u)
}

/// Resolve `url`'s host and check every address it has; the first address to connect to.
pub async fn resolve(url: &str, allow_private: bool) -> Result<Destination, GuardError> {
    let u = parse(url)?;
    let host = u.host_str().unwrap_or_default().to_owned();
    let port = u.port_or_known_default().unwrap_or(80);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| GuardError::Unresolved(format!("{host}: {e}")))?
            .collect(),
    };
    let Some(first) = addrs.first().copied() else {
        return Err(GuardError::Unresolved(host));
    };
    if !allow_private && let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(GuardError::Private(bad.ip()));
    }
    Ok(Destination {
        url: u,
        host: bare.to_owned(),
        addr: first,
    })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_and_special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(ip.parse().expect("ip")), "{ip} is not public");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(ip.parse().expect("ip")), "{ip} is public");
        }
    }

    #[tokio::test]
    async fn ipv6_forms_of_private_ipv4_addresses_are_refused() {
        // Regression (issue 27.4): IPv4-compatible, NAT64 and 6to4 forms of 127.0.0.1 passed.
        for url in [
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[64:ff9b:1::7f00:1]/",
            "http://[2002:7f00:1::1]/",
            "http://[2002:a9fe:a9fe::1]/latest/meta-data",
            "http://[::ffff:169.254.169.254]/",
            // Teredo: the client address is the last 32 bits, inverted (127.0.0.1 here).
            "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
        ] {
            assert!(
                matches!(resolve(url, false).await, Err(GuardError::Private(_))),
                "{url} is refused"
            );
        }
        for url in ["http://[64:ff9b::808:808]/", "http://[2002:808:808::1]/"] {
            assert!(resolve(url, false).await.is_ok(), "{url} is public");
        }
    }

    #[tokio::test]
    async fn loopback_and_metadata_urls_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:9/hook",
            "http://localhost:9/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:9/",
        ] {
            assert!(
                matches!(resolve(url, false).await, Err(GuardError::Private(_))),
                "{url}"
            );
        }
        let allowed = resolve("http://127.0.0.1:9/hook", true)
            .await
            .expect("allowed");
        assert_eq!(allowed.addr, "127.0.0.1:9".parse().expect("addr"));
    }

    #[test]
    fn only_http_urls_with_a_host_and_no_credentials_parse() {
        for url in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "not a url",
            "http://user:pw@example.com/",
        ] {
            assert!(matches!(parse(url), Err(GuardError::BadUrl(_))), "{url}");
        }
        assert!(parse("https://example.com/hooks/im").is_ok());
    }
}
