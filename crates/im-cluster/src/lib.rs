//! `im-cluster`: im as several replicas on Redis.
//!
//! One replica at a time schedules the whole fleet: it holds the [`lease`](lease::Lease) and
//! writes with its fencing token ([`Fence`]); the others are frontends that forward queued work
//! to it (the forwarding itself is HTTP, in `im-http-api`) and take the lease over when it
//! lapses. Jobs live in Redis ([`RedisJobStore`]) so that a new scheduler runs what the old one
//! left. ARCHITECTURE.md ("Distributed mode") explains the choice of one scheduler over one per
//! upstream, and what happens on each failure.

pub mod jobs;
pub mod lease;
pub mod redis_server;

pub use jobs::RedisJobStore;
pub use lease::{Fence, Holder, Lease, LeaseError, LeaseSettings, Role};
pub use redis_server::RedisServer;
