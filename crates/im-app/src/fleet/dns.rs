//! Upstreams given by a DNS name (`dns+http://localai.models.svc:8080`, a Kubernetes headless
//! Service): one lane per address the name resolves to, resolved again at every catalogue
//! reading.
//!
//! Each such upstream `name` has numbered slots, lanes `name#0`, `name#1`, ...: an address keeps
//! its slot while it resolves; one that vanishes frees its slot (the lane is retired, what runs
//! there finishes); a new address takes the lowest free slot (the lane comes back on a new
//! server, which forgets what the old one had loaded). So pods churning through new addresses
//! reuse lanes, and the scheduler's lane table stays as large as the most addresses seen at once.
//!
//! A name is looked up in `discovery.hosts_file` first (hosts(5) format, read at every
//! resolution: for addresses a tool writes to a file, and for tests), then by the system
//! resolver. A failed lookup keeps the addresses known before (a DNS hiccup retires nothing);
//! a name never resolved is one lane on the name itself, which the HTTP client resolves per call.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::config::{ImConfig, UpstreamEntry, UpstreamTable};

/// The scheme prefix of an upstream given by a DNS name.
pub const DNS_PREFIX: &str = "dns+";

/// An upstream URL given by a DNS name, taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsUrl {
    /// `http` or `https`.
    scheme: String,
    host: String,
    port: u16,
    /// The path after the port (`/v1` or empty).
    path: String,
}

impl DnsUrl {
    /// `dns+http://host:port[/path]`; `None` when `url` is not one (a plain URL).
    pub fn parse(url: &str) -> Option<Result<DnsUrl, String>> {
        let rest = url.strip_prefix(DNS_PREFIX)?;
        Some(Self::parse_rest(rest))
    }

    fn parse_rest(rest: &str) -> Result<DnsUrl, String> {
        let (scheme, rest) = rest
            .split_once("://")
            .filter(|(s, _)| *s == "http" || *s == "https")
            .ok_or("must be dns+http://name:port or dns+https://name:port")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or("must name a port (dns+http://name:port): each address is a server on it")?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{port:?} is not a port number"))?;
        if host.is_empty() || host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
            return Err("must name a DNS name, not an address".into());
        }
        Ok(DnsUrl {
            scheme: scheme.to_owned(),
            host: host.to_owned(),
            port,
            path: path.trim_end_matches('/').to_owned(),
        })
    }

    /// The URL of the server at `ip`.
    fn at(&self, ip: IpAddr) -> String {
        let addr = SocketAddr::new(ip, self.port);
        format!("{}://{addr}{}", self.scheme, self.path)
    }

    /// The URL on the name itself (resolved by the HTTP client per call).
    fn on_name(&self) -> String {
        format!("{}://{}:{}{}", self.scheme, self.host, self.port, self.path)
    }
}

/// Whether lane `lane` is upstream `upstream` or one of its addresses (`upstream#n`): what a
/// model's `upstreams` list matches.
pub fn lane_of_upstream(lane: &str, upstream: &str) -> bool {
    lane == upstream
        || lane
            .strip_prefix(upstream)
            .and_then(|r| r.strip_prefix('#'))
            .is_some_and(|n| n.parse::<usize>().is_ok())
}

/// The slots of every upstream given by a DNS name, by upstream name.
#[derive(Debug, Default)]
pub struct DnsLanes {
    slots: BTreeMap<String, Vec<Option<IpAddr>>>,
}

impl DnsLanes {
    /// `declared` with each upstream given by a DNS name replaced by one upstream per address
    /// it resolves to now (names `name#slot`); the others as they are.
    pub async fn expand(&mut self, declared: &ImConfig) -> ImConfig {
        let hosts = declared.discovery.hosts_file.as_deref();
        let mut upstreams = Vec::with_capacity(declared.upstreams.len());
        for (i, u) in declared.upstreams.iter().enumerate() {
            let Some(Ok(dns)) = DnsUrl::parse(u.url()) else {
                upstreams.push(u.clone());
                continue;
            };
            let name = u.name(i);
            let found = resolve(&dns.host, dns.port, hosts).await;
            if let Err(e) = &found {
                tracing::warn!(upstream = %name, host = %dns.host, error = %e,
                    "resolving an upstream's name failed: its addresses stay as they were");
            }
            let slots = self.place(&name, found.ok());
            let entry = |slot: usize, url: String| {
                let mut t = match u {
                    UpstreamEntry::Table(t) => t.clone(),
                    UpstreamEntry::Url(_) => UpstreamTable::default(),
                };
                t.url = url;
                t.name = Some(format!("{name}#{slot}"));
                UpstreamEntry::Table(t)
            };
            if slots.iter().all(Option::is_none) {
                upstreams.push(entry(0, dns.on_name()));
            }
            for (slot, ip) in slots.iter().enumerate() {
                if let Some(ip) = ip {
                    upstreams.push(entry(slot, dns.at(*ip)));
                }
            }
        }
        ImConfig {
            upstreams,
            ..declared.clone()
        }
    }

    /// Give upstream `name`'s addresses `found` (`None`: unknown, keep the old ones) their
    /// slots; the slots after.
    fn place(&mut self, name: &str, found: Option<Vec<IpAddr>>) -> &[Option<IpAddr>] {
        let slots = self.slots.entry(name.to_owned()).or_default();
        if let Some(found) = found {
            for s in slots.iter_mut() {
                if s.is_some_and(|ip| !found.contains(&ip)) {
                    *s = None;
                }
            }
            for ip in found {
                if slots.contains(&Some(ip)) {
                    continue;
                }
                match slots.iter().position(Option::is_none) {
                    Some(free) => slots[free] = Some(ip),
                    None => slots.push(Some(ip)),
                }
            }
        }
        slots
    }
}

/// The addresses of `host`, sorted: from `hosts_file` when it names the host, else from the
/// system resolver.
async fn resolve(host: &str, port: u16, hosts_file: Option<&str>) -> Result<Vec<IpAddr>, String> {
    if let Some(path) = hosts_file {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("reading {path}: {e}"))?;
        let listed = from_hosts(&text, host);
        if !listed.is_empty() {
            return Ok(listed);
        }
    }
    let mut found: Vec<IpAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| e.to_string())?
        .map(|a| a.ip())
        .collect();
    found.sort();
    found.dedup();
    Ok(found)
}

/// The addresses hosts(5) text gives `host`, sorted.
fn from_hosts(text: &str, host: &str) -> Vec<IpAddr> {
    let mut found: Vec<IpAddr> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let ip: IpAddr = words.next()?.parse().ok()?;
            words.any(|n| n.eq_ignore_ascii_case(host)).then_some(ip)
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_dns_url_names_a_host_and_a_port() {
        let u = DnsUrl::parse("dns+http://localai.models.svc:8080/v1")
            .expect("a dns url")
            .expect("valid");
        assert_eq!(u.at(ip("10.0.0.7")), "http://10.0.0.7:8080/v1");
        assert_eq!(u.on_name(), "http://localai.models.svc:8080/v1");
        assert_eq!(DnsUrl::parse("http://localai:8080"), None);
        for bad in [
            "dns+http://localai",
            "dns+ftp://localai:21",
            "dns+http://10.0.0.1:8080",
            "dns+http://localai:port",
        ] {
            assert!(
                DnsUrl::parse(bad).is_some_and(|r| r.is_err()),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn a_hosts_file_lists_every_address_of_a_name() {
        let text = "# test\n127.0.0.3 localai.test other\n127.0.0.2 localai.test\n\
                    127.0.0.9 elsewhere # localai.test\n::1 LOCALAI.TEST\n";
        assert_eq!(
            from_hosts(text, "localai.test"),
            [ip("127.0.0.2"), ip("127.0.0.3"), ip("::1")]
        );
        assert!(from_hosts(text, "nobody").is_empty());
    }

    #[test]
    fn an_address_keeps_its_slot_and_a_new_one_takes_the_lowest_free() {
        let mut d = DnsLanes::default();
        let (a, b, c) = (ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3"));
        assert_eq!(d.place("l", Some(vec![a, b])), [Some(a), Some(b)]);
        assert_eq!(d.place("l", Some(vec![b])), [None, Some(b)]);
        assert_eq!(
            d.place("l", None),
            [None, Some(b)],
            "a failed lookup changes nothing"
        );
        assert_eq!(d.place("l", Some(vec![b, c])), [Some(c), Some(b)]);
    }

    #[test]
    fn pods_churning_through_new_addresses_do_not_grow_the_lanes() {
        let mut d = DnsLanes::default();
        let mut most = 0;
        for cycle in 0..500u32 {
            // Two to three pods at a time, each replaced by one with a new address.
            let pods: Vec<IpAddr> = (0..2 + cycle % 2)
                .map(|p| IpAddr::from([10, (cycle >> 8) as u8, cycle as u8, p as u8]))
                .collect();
            let slots = d.place("l", Some(pods.clone()));
            assert_eq!(
                slots.iter().flatten().count(),
                pods.len(),
                "each address has one slot"
            );
            most = most.max(slots.len());
        }
        assert_eq!(most, 3, "as many slots as addresses at once");
    }

    #[test]
    fn a_lane_of_a_dns_upstream_is_one_of_its_addresses() {
        assert!(lane_of_upstream("gpu", "gpu"));
        assert!(lane_of_upstream("gpu#3", "gpu"));
        assert!(!lane_of_upstream("gpu2", "gpu"));
        assert!(!lane_of_upstream("gpu#x", "gpu"));
    }
}
