//! `im-edge`: what every im binary that listens (`im-http`, `im-mcp --http`, `im-fence`) shares,
//! so that the rules of its edge are written once.
//!
//! - [`listener`]: serving a router on a socket with the limits a public listener needs: a
//!   deadline for a new connection's first byte and for every request's headers, an idle
//!   deadline for connections with nothing in flight (HTTP/1 keep-alive and HTTP/2 alike),
//!   request bodies that must keep arriving and finish in time, a global connection cap and a
//!   per-peer cap below it ([`Peers`]: clients behind a trusted proxy are counted by their
//!   `X-Forwarded-For` address, proven replicas of the same cluster are exempt), and a shutdown
//!   that cannot hang on an open stream.
//! - [`proxy`]: passing a request on to another server and its answer back as it comes (a
//!   follower to the scheduler, a fencing gate to its LocalAI), refusing dot-segments on the way.
//! - [`fence`]: the fencing token's wire form, signed with the cluster's shared secret, and
//!   the proof a replica gives of itself.
//!
//! It knows HTTP and nothing of im's API: no routes, no keys, no JSON bodies.

pub mod fence;
pub mod listener;
mod peers;
pub mod proxy;

pub use listener::{App, ServeLimits, serve};
pub use peers::{PeerLimitError, Peers};

/// What a request's headers say about its caller, read the same way by every im listener: the
/// key (`X-API-Key`, or `Authorization: Bearer`) and a sane caller-supplied request id.
pub mod caller {
    use http::{HeaderMap, HeaderValue};

    /// The key a request's headers carry, if any: `X-API-Key`, else `Authorization: Bearer …`.
    pub fn key_of(headers: &HeaderMap) -> Option<&[u8]> {
        if let Some(k) = headers.get(API_KEY) {
            return Some(k.as_bytes());
        }
        let auth = headers
            .get(http::header::AUTHORIZATION)
            .map(HeaderValue::as_bytes)?;
        let prefix = b"Bearer ";
        (auth.len() > prefix.len() && auth[..prefix.len()].eq_ignore_ascii_case(prefix))
            .then(|| &auth[prefix.len()..])
    }

    /// The key's own header. Names are constants: a `&str` name is parsed and checked at
    /// every lookup.
    pub const API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");

    /// The request id's header, read from a caller and written on every answer; a constant, as
    /// a `&str` name outside the standard set is copied at every use.
    pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

    /// A sane caller-supplied `X-Request-Id`: 1 to 64 characters of `[A-Za-z0-9-_.:]`.
    pub fn request_id_of(headers: &HeaderMap) -> Option<String> {
        let v = headers.get(REQUEST_ID)?.as_bytes();
        let ok = !v.is_empty()
            && v.len() <= 64
            && v.iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b));
        ok.then(|| String::from_utf8_lossy(v).into_owned())
    }
}
