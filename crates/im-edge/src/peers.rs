//! Who is on the other end of a connection, and how many connections (or requests) each peer
//! holds: no single client may hold the server.
//!
//! A peer is counted by its address. A peer in `trusted_proxies` (a proxy in front of im, the
//! compose nginx, an ingress) carries many clients: its connections are not counted, and each of
//! its requests is counted against the client `X-Forwarded-For` names instead (the right-most
//! address that is not itself a trusted proxy). A replica of the same cluster that proves itself
//! (`x-im-replica`, signed with the cluster's secret) is exempt for a while.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::fence::FenceSecret;

/// How long a replica's proof exempts its address.
const REPLICA_EXEMPTION: Duration = Duration::from_secs(600);

/// A peer holds as many connections (or, behind a trusted proxy, requests) as it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerLimitError {
    /// The cap.
    pub limit: usize,
}

/// The per-peer policy of one listener, and its counts. Shared by every connection.
pub struct Peers {
    limit: usize,
    trusted_proxies: Vec<IpNet>,
    replica_secret: Option<FenceSecret>,
    counts: Mutex<HashMap<IpAddr, usize>>,
    exempt: RwLock<HashMap<IpAddr, Instant>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("limit", &self.limit)
            .field("trusted_proxies", &self.trusted_proxies)
            .finish_non_exhaustive()
    }
}

impl Default for Peers {
    fn default() -> Peers {
        Peers::new(0, Vec::new(), None)
    }
}

impl Peers {
    /// At most `limit` connections per peer (0: no per-peer cap); peers in `trusted_proxies`
    /// counted by their clients; replicas proving themselves with `replica_secret` exempt.
    pub fn new(
        limit: usize,
        trusted_proxies: Vec<IpNet>,
        replica_secret: Option<FenceSecret>,
    ) -> Peers {
        Peers {
            limit,
            trusted_proxies,
            replica_secret,
            counts: Mutex::default(),
            exempt: RwLock::default(),
        }
    }

    /// Parse `http.trusted_proxies`: CIDRs (`10.0.0.0/8`) or single addresses.
    pub fn parse_proxies(list: &[String]) -> Result<Vec<IpNet>, String> {
        list.iter()
            .map(|s| {
                let s = s.trim();
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{s:?} is not an address or a CIDR"))
            })
            .collect()
    }

    /// Whether `ip` is a trusted proxy.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    fn is_exempt(&self, ip: IpAddr) -> bool {
        self.exempt
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            .is_some_and(|until| *until > Instant::now())
    }

    /// Count a new connection from `peer`: `None` when it is not counted (a trusted proxy, whose
    /// requests are counted instead, or an exempt replica).
    pub(crate) fn admit_connection(
        self: &Arc<Self>,
        peer: IpAddr,
    ) -> Result<Option<PeerPermit>, PeerLimitError> {
        if self.limit == 0 || self.is_trusted_proxy(peer) || self.is_exempt(peer) {
            return Ok(None);
        }
        self.take(peer).map(Some)
    }

    /// Count a request from `client` (behind a trusted proxy).
    pub(crate) fn admit_request(
        self: &Arc<Self>,
        client: IpAddr,
    ) -> Result<Option<PeerPermit>, PeerLimitError> {
        if self.limit == 0 || self.is_exempt(client) {
            return Ok(None);
        }
        self.take(client).map(Some)
    }

    fn take(self: &Arc<Self>, ip: IpAddr) -> Result<PeerPermit, PeerLimitError> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.limit {
            if *n == 0 {
                counts.remove(&ip);
            }
            return Err(PeerLimitError { limit: self.limit });
        }
        *n += 1;
        Ok(PeerPermit {
            peers: self.clone(),
            ip,
        })
    }

    fn release(&self, ip: IpAddr) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&ip);
            }
        }
    }

    /// Connections (or requests) `ip` holds now.
    pub fn held_by(&self, ip: IpAddr) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }

    /// The client a request from `peer` stands for: `peer` itself, or behind a trusted proxy the
    /// right-most `X-Forwarded-For` address that is not a trusted proxy (the left-most ones are
    /// the client's own claims).
    pub fn client_of(&self, peer: IpAddr, forwarded_for: Option<&[u8]>) -> IpAddr {
        if !self.is_trusted_proxy(peer) {
            return peer;
        }
        let Some(xff) = forwarded_for.and_then(|v| std::str::from_utf8(v).ok()) else {
            return peer;
        };
        let mut client = peer;
        for hop in xff.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = canonical(ip);
                    if !self.is_trusted_proxy(client) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        client
    }

    /// A request from `peer` carried a replica's proof: when it verifies, `peer` is exempt from
    /// the per-peer cap for a while.
    pub fn note_replica(&self, peer: IpAddr, proof: &[u8]) {
        let Some(secret) = &self.replica_secret else {
            return;
        };
        if std::str::from_utf8(proof).is_ok_and(|p| secret.verify_replica(p)) {
            self.exempt
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(peer, Instant::now() + REPLICA_EXEMPTION);
        }
    }
}

/// An address as one peer: IPv4-mapped IPv6 addresses as the IPv4 address they stand for.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One connection (or request) counted against a peer; released when dropped.
pub(crate) struct PeerPermit {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Drop for PeerPermit {
    fn drop(&mut self) {
        self.peers.release(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_peer_holds_at_most_its_cap_and_gets_it_back() {
        let peers = Arc::new(Peers::new(2, Vec::new(), None));
        let a = peers.admit_connection(ip("10.0.0.1")).expect("1");
        let _b = peers.admit_connection(ip("10.0.0.1")).expect("2");
        assert_eq!(
            peers.admit_connection(ip("10.0.0.1")).err(),
            Some(PeerLimitError { limit: 2 })
        );
        assert!(
            peers.admit_connection(ip("10.0.0.2")).is_ok(),
            "another peer"
        );
        drop(a);
        assert!(peers.admit_connection(ip("10.0.0.1")).is_ok());
        assert_eq!(peers.held_by(ip("10.0.0.9")), 0);
    }

    #[test]
    fn behind_a_trusted_proxy_the_forwarded_client_is_counted() {
        let proxies =
            Peers::parse_proxies(&["10.0.0.0/8".into(), "192.168.1.7".into()]).expect("proxies");
        let peers = Arc::new(Peers::new(1, proxies, None));
        let proxy = ip("10.1.2.3");
        assert!(peers.admit_connection(proxy).expect("proxy").is_none());
        assert_eq!(
            peers.client_of(proxy, Some(b"6.6.6.6, 1.2.3.4, 192.168.1.7")),
            ip("1.2.3.4"),
            "the right-most address that is not a proxy"
        );
        assert_eq!(peers.client_of(proxy, None), proxy);
        assert_eq!(
            peers.client_of(ip("8.8.8.8"), Some(b"1.2.3.4")),
            ip("8.8.8.8"),
            "untrusted"
        );
        let _held = peers.admit_request(ip("1.2.3.4")).expect("first");
        assert!(peers.admit_request(ip("1.2.3.4")).is_err());
        assert!(peers.admit_request(ip("1.2.3.5")).is_ok());
        assert!(Peers::parse_proxies(&["nope".into()]).is_err());
    }

    #[test]
    fn a_proven_replica_is_exempt() {
        let secret = FenceSecret::new("s").expect("secret");
        let peers = Arc::new(Peers::new(1, Vec::new(), Some(secret.clone())));
        let replica = ip("10.0.0.5");
        let _one = peers.admit_connection(replica).expect("first");
        assert!(peers.admit_connection(replica).is_err());
        peers.note_replica(replica, b"bogus.proof");
        assert!(
            peers.admit_connection(replica).is_err(),
            "a bad proof is no proof"
        );
        peers.note_replica(replica, secret.prove("r1").as_bytes());
        assert!(peers.admit_connection(replica).expect("exempt").is_none());
    }
}
