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

pub use listener::{ClientAddr, ServeLimits, serve};
pub use peers::{PeerLimitError, Peers};
