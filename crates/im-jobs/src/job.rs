//! What a job is: the request it stands for, who owns it, where it is in its life, its result
//! or error, and its webhook's delivery log.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a job is in its life. `queued` and `running` are live; the rest are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Accepted, not started (or started before a restart and queued again).
    Queued,
    /// Its request is in im's queue or on a GPU.
    Running,
    /// Answered; the result is kept.
    Succeeded,
    /// Failed with an error from im's error table.
    Failed,
    /// Cancelled by its owner.
    Cancelled,
}

impl Status {
    /// Whether the job is done for good.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }

    /// Its name, as served.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// What a job runs: the route of im's API it stands for and the body, as a client would send it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// A queued route, e.g. `/v1/chat/completions` or `/txt2img`.
    pub route: String,
    /// The JSON body.
    pub body: Value,
}

/// The result of a succeeded job: JSON kept in the store, or a large or binary answer kept as a
/// file beside it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "stored", rename_all = "lowercase")]
pub enum Stored {
    /// Inline JSON.
    Inline {
        /// The answer.
        value: Value,
    },
    /// A file in the results directory.
    File {
        /// Its name there.
        name: String,
        /// Its content type.
        content_type: String,
        /// Its size in bytes.
        bytes: u64,
    },
}

/// One attempt to deliver a job's webhook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// When (Unix milliseconds).
    pub at_ms: i64,
    /// The receiver's status code, if it answered.
    pub status: Option<u16>,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// The state of a job's callback.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    /// Where to POST the job's final state.
    pub url: String,
    /// The message id (`webhook-id`), the same on every retry so receivers can drop repeats.
    pub message_id: String,
    /// Delivered (a 2xx answer).
    pub delivered: bool,
    /// Given up: the schedule ran out, or the receiver answered 410 Gone.
    pub abandoned: bool,
    /// When the next attempt is due (Unix milliseconds), while neither delivered nor abandoned.
    pub next_at_ms: Option<i64>,
    /// Every attempt.
    pub deliveries: Vec<Delivery>,
}

/// A job, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// `job_...`.
    pub id: String,
    /// Who may see it: a fingerprint of the submitting key (never the key).
    pub owner: String,
    /// The client's idempotency key, if it gave one.
    pub idempotency_key: Option<String>,
    /// What it runs.
    pub request: Request,
    /// Where it is.
    pub status: Status,
    /// Times it was started (more than one after a restart interrupted it: at-least-once).
    pub attempts: u32,
    /// When it was accepted, started, finished (Unix milliseconds).
    pub created_ms: i64,
    /// When it last started.
    pub started_ms: Option<i64>,
    /// When it reached its final state.
    pub finished_ms: Option<i64>,
    /// Its answer, once succeeded.
    pub result: Option<Stored>,
    /// Its error (`{type, message, param?}` and the status code), once failed.
    pub error: Option<Value>,
    /// Its callback, if it has one.
    pub webhook: Option<Webhook>,
}

impl Job {
    /// Its place in creation order, `<created ms, 20 digits>.<id>`: what listings page by (an
    /// id has no `.`).
    pub fn cursor(&self) -> String {
        format!("{:020}.{}", self.created_ms.max(0), self.id)
    }

    /// The bytes it takes in a store whose record of it is `record` bytes long: the record and
    /// its result file.
    pub fn footprint(&self, record: usize) -> u64 {
        let file = match &self.result {
            Some(Stored::File { bytes, .. }) => *bytes,
            _ => 0,
        };
        record as u64 + file
    }

    /// Whether its webhook still has an attempt to make.
    pub fn webhook_pending(&self) -> bool {
        self.webhook
            .as_ref()
            .is_some_and(|w| !w.delivered && !w.abandoned && w.next_at_ms.is_some())
    }
}
