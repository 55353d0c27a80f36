//! `im-fence`: the fencing gate in front of one LocalAI ([`gate()`]): it refuses and cuts the calls
//! of a scheduler whose lease was taken over, so the GPU never runs two schedulers' work. Point
//! im's `upstreams` at the gate, the gate at LocalAI, and give both the cluster's secret.
//!
//! It serves with the same listener rules as im-http (`im_edge::listener`); it knows nothing of
//! im's API.

pub mod gate;

pub use gate::{GateSettings, gate};
