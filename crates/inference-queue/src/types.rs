//! Small value types shared by every part of the core: time, kinds, ids.

use std::fmt;
use std::ops::{Add, AddAssign};
use std::str::FromStr;
use std::time::Duration;

/// A point in time, measured from an epoch chosen by whoever drives the core.
///
/// The core never reads a clock: every input carries a `Time`. A tokio driver uses the time elapsed
/// since it started; a discrete-event simulation uses its virtual clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(Duration);

impl Time {
    /// The epoch.
    pub const ZERO: Time = Time(Duration::ZERO);

    /// A time `d` after the epoch.
    pub const fn from_duration(d: Duration) -> Time {
        Time(d)
    }

    /// A time `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Time {
        Time(Duration::from_millis(ms))
    }

    /// A time `s` seconds after the epoch.
    pub const fn from_secs(s: u64) -> Time {
        Time(Duration::from_secs(s))
    }

    /// The time since the epoch.
    pub const fn since_epoch(self) -> Duration {
        self.0
    }

    /// `self - earlier`, or zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, rhs: Duration) -> Time {
        Time(self.0.saturating_add(rhs))
    }
}

impl AddAssign<Duration> for Time {
    fn add_assign(&mut self, rhs: Duration) {
        self.0 = self.0.saturating_add(rhs);
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}s", self.0.as_secs_f64())
    }
}

/// The kinds of work im schedules: the seeds' four and LocalAI's others (SPEC §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Chat completion (and text completion).
    Txt2Txt,
    /// Image generation from text.
    Txt2Img,
    /// Image editing.
    Img2Img,
    /// Vision chat (an image in the messages).
    Img2Txt,
    /// Embeddings.
    Embed,
    /// Reranking documents against a query.
    Rerank,
    /// Speech from text.
    Tts,
    /// Transcription of speech.
    Stt,
}

impl Kind {
    /// How many kinds there are (the size of per-kind arrays).
    pub const COUNT: usize = 8;

    /// All kinds, in the default priority order. Chat first; then the short interactive kinds a
    /// person waits on (reranking at query time, speech for a reply, a transcription); then the
    /// seeds' image kinds and vision, in the seeds' order; embeddings last (mostly bulk indexing,
    /// and batched). The seeds' four keep their relative order.
    pub const ALL: [Kind; Kind::COUNT] = [
        Kind::Txt2Txt,
        Kind::Rerank,
        Kind::Tts,
        Kind::Stt,
        Kind::Txt2Img,
        Kind::Img2Img,
        Kind::Img2Txt,
        Kind::Embed,
    ];

    /// The seeds' four kinds, in their default priority order.
    pub const SEEDS: [Kind; 4] = [Kind::Txt2Txt, Kind::Txt2Img, Kind::Img2Img, Kind::Img2Txt];

    /// The wire name (`txt2txt`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Txt2Txt => "txt2txt",
            Kind::Txt2Img => "txt2img",
            Kind::Img2Img => "img2img",
            Kind::Img2Txt => "img2txt",
            Kind::Embed => "embed",
            Kind::Rerank => "rerank",
            Kind::Tts => "tts",
            Kind::Stt => "stt",
        }
    }

    /// A dense index `0..Kind::COUNT`, for per-kind arrays.
    pub const fn index(self) -> usize {
        match self {
            Kind::Txt2Txt => 0,
            Kind::Txt2Img => 1,
            Kind::Img2Img => 2,
            Kind::Img2Txt => 3,
            Kind::Embed => 4,
            Kind::Rerank => 5,
            Kind::Tts => 6,
            Kind::Stt => 7,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`Kind`] from text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown kind {0:?}: expected one of txt2txt, txt2img, img2img, img2txt, embed, rerank, tts, stt"
)]
pub struct ParseKindError(pub String);

impl FromStr for Kind {
    type Err = ParseKindError;
    fn from_str(s: &str) -> Result<Kind, ParseKindError> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ParseKindError(s.to_owned()))
    }
}

/// The id the core gives an accepted request. Ids are never reused by one core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A lane: the scheduler's view of one upstream, by index in [`crate::Config::lanes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LaneId(pub usize);

/// A model, by index in [`crate::Config::models`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModelId(pub usize);

/// Who a request is for: the unit of fair share inside a group. Without tenants everyone is
/// tenant 0, and a group is served first come, first served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(pub u32);

/// A request's priority class inside its group: interactive work is served before batch work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Someone waits for it (the default).
    #[default]
    Interactive,
    /// It may wait (a job, a bulk run).
    Batch,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_priority_lists_every_kind_once_and_keeps_the_seeds_order() {
        let mut seen: Vec<usize> = Kind::ALL.iter().map(|k| k.index()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..Kind::COUNT).collect::<Vec<_>>());
        let seeds: Vec<Kind> = Kind::ALL
            .into_iter()
            .filter(|k| Kind::SEEDS.contains(k))
            .collect();
        assert_eq!(seeds, Kind::SEEDS);
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>(), Ok(k));
        }
    }
}
