//! Waiting for events in tests, never for a bare sleep.
//!
//! A test that sleeps "long enough" for something to happen passes on an idle machine and fails
//! on a loaded one. These helpers wait for the thing itself: a condition checked every few
//! milliseconds until a generous deadline, failing with what never happened. A sleep that is the
//! behaviour under test (a slow upstream, a stall past a lease) stays a sleep, with a comment
//! that says so (`cargo xtask`'s tidy test holds every test file to this).

pub use tempfile::TempDir;

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is checked.
const POLL: Duration = Duration::from_millis(10);

/// Waits until `check` answers `Some`, and returns what it answered; panics naming `what` if it
/// has not within `within`.
pub async fn until<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "waited {within:?} for {what}, which never happened"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `check` is true; panics naming `what` if it is not within `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    until(what, within, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// [`eventually`] for a test without a runtime: the thread waits.
pub fn eventually_blocking(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "waited {within:?} for {what}, which never happened"
        );
        std::thread::sleep(POLL);
    }
}

/// A fresh directory under the system's temporary directory, named after `prefix`, removed with
/// everything in it when the returned guard is dropped: a test's job store, config files or
/// screenshots do not outlive it (a CI machine's disk is not unbounded).
pub fn scratch_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("{prefix}-"))
        .tempdir()
        .expect("a scratch directory under the system's temporary directory")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_condition_that_comes_true_is_waited_for() {
        let n = Arc::new(AtomicU32::new(0));
        let seen = until("the third check", Duration::from_secs(5), || {
            let n = n.clone();
            async move {
                let v = n.fetch_add(1, Ordering::SeqCst) + 1;
                (v >= 3).then_some(v)
            }
        })
        .await;
        assert_eq!(seen, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "waited 50ms for a thing that never comes, which never happened")]
    async fn a_condition_that_never_comes_true_fails_naming_it() {
        eventually(
            "a thing that never comes",
            Duration::from_millis(50),
            || async { false },
        )
        .await;
    }

    #[test]
    fn the_blocking_form_waits_too() {
        let start = Instant::now();
        eventually_blocking("20 ms to pass", Duration::from_secs(5), || {
            start.elapsed() >= Duration::from_millis(20)
        });
        assert!(start.elapsed() >= Duration::from_millis(20));
    }
}
