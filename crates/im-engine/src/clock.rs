//! Time for the core, read in one place.
//!
//! The engine reads time through [`Clock`], which counts from the engine's start on tokio's clock.
//! Tests pause that clock (`#[tokio::test(start_paused = true)]`, `tokio::time::advance`) and the
//! engine, its timers and the core's deadlines follow: no test waits for real time.

use inference_queue::Time;
use tokio::time::Instant;

/// The engine's clock: tokio time since an epoch.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn start() -> Clock {
        Clock {
            epoch: Instant::now(),
        }
    }

    /// The core's `now`.
    pub fn now(&self) -> Time {
        Time::from_duration(self.epoch.elapsed())
    }

    /// The tokio instant of a core time.
    pub fn instant(&self, t: Time) -> Instant {
        self.epoch + t.since_epoch()
    }
}
