//! The seam through which the service asks for a model it does not know: whoever keeps the
//! fleet's model set (im-app's `Fleet`) reads the upstreams' catalogues again, within a bound.

use futures_util::future::BoxFuture;

/// What looking for a model found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// It is known now: queue the request.
    Found,
    /// No upstream lists it.
    Unknown,
    /// No reachable upstream lists it, and some upstream was never reached: it may be there.
    NotYet,
}

/// Looks for models the scheduler does not know.
pub trait Discovery: Send + Sync {
    /// `model` is not known: look for it, waiting a bounded time.
    fn missed(&self, model: &str) -> BoxFuture<'static, Lookup>;

    /// The models whose kinds were guessed from their names (their servers said nothing of
    /// what they do).
    fn kinds_guessed(&self) -> Vec<String> {
        Vec::new()
    }
}
