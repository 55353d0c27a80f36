//! One error type that classifies every failure: is it retried, does it say the upstream (the lane)
//! is unhealthy, and is it the caller's own error.
//!
//! ## The rule (SPEC §2.7, §2.8)
//!
//! | failure | retried | counts against the lane's breaker |
//! |---|---|---|
//! | connection refused, connect timeout | yes | yes |
//! | connection dropped mid-response | yes | yes |
//! | 502, 504 | yes | yes |
//! | 503 (capacity, load cooldown), with its `Retry-After` honoured | yes | yes |
//! | 503 "model loading" | yes | no: a slow load is not a failure |
//! | 429 | yes | no |
//! | 500 saying the model failed to load | yes | yes |
//! | 500 with a traceback or a validation message (a request the server cannot parse) | no | no |
//! | any other 500 | yes | no: it may belong to this one request |
//! | 400, 413, 422 (the caller's own error: too long a prompt, a bad field) | no; answered with its status | no |
//! | 401, 403, 404 and other 4xx (im's configuration does not match the upstream's) | no | no |
//! | a timeout after the request was sent (first byte, response, stream idle) | no: the upstream may still be running it | yes |
//! | an error inside a stream, before any chunk | yes | yes |
//! | an error inside a stream, after chunks reached the caller | no (cannot be undone) | yes |
//! | a malformed answer (not the API) | no | yes |
//! | an answer from another model than the one asked for | no | no (the upstream lacks that model) |
//! | a fencing gate's refusal (409 stale or 401 unsigned, with `x-im-fence-highest`) | yes, once the scheduler raised its epoch (a 401 means im has no secret: not retried) | no |
//!
//! A failure "counts against the breaker" when it says the upstream itself is unwell; a failure that
//! belongs to one request never takes the lane down for everyone.

use std::time::Duration;

/// How the engine should treat a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth retrying (see the table in the module docs).
    Transient,
    /// Retrying cannot help: the request's own error, or a refusal.
    Permanent,
    /// The upstream answered something that is not its API: a body that does not parse, a wrong
    /// content type, a stream cut without `[DONE]`.
    Protocol,
    /// A timeout after the request was sent: the upstream may still be running it, so sending it
    /// again would run it twice; not retried.
    TimedOut,
}

/// The longest `Retry-After` honoured; longer values (or absurd ones) are capped here.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The longest upstream error message kept (after summarising).
pub const MAX_MESSAGE_CHARS: usize = 240;

/// A failed call to the upstream. Messages never contain request bodies, images or keys.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection could not be made.
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    /// A timeout fired.
    #[error("the upstream timed out after {after:?} waiting for {phase}")]
    Timeout {
        /// The limit.
        after: Duration,
        /// `connect`, `first byte`, `response` or `stream idle`.
        phase: &'static str,
    },
    /// The connection dropped while the request or response was in transit.
    #[error("connection to the upstream dropped: {0}")]
    Dropped(String),
    /// The upstream answered with an error status.
    #[error("the upstream returned {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The upstream's message (from its error envelope when there is one), summarised to its
        /// first meaningful line, without paths or addresses, capped.
        message: String,
        /// The `Retry-After` header, parsed and capped.
        retry_after: Option<Duration>,
        /// The envelope's `code` when it is a word (`context_length_exceeded`).
        code: Option<String>,
        /// The envelope's `param`, when it names one.
        param: Option<String>,
    },
    /// An error reported inside a stream that had started (either LocalAI dialect).
    #[error("the upstream reported an error inside the stream: {0}")]
    Stream(String),
    /// The answer is not the API.
    #[error("malformed response from the upstream: {0}")]
    Protocol(String),
    /// The upstream answered with another model than the one asked for (llama-cpp-python serves
    /// unknown names with its default model): the upstream does not serve `asked`.
    #[error(
        "the upstream answered with model {answered:?} instead of {asked:?}: it does not serve {asked:?} (configure an alias if it renames models)"
    )]
    WrongModel {
        /// The model asked for.
        asked: String,
        /// The model that answered.
        answered: String,
    },
    /// A fencing gate refused the call: its token was older than the highest the gate has seen
    /// (409), or it was missing or unsigned (401: im has no `cluster.fence_secret`).
    #[error(
        "the fencing gate refused the call ({status}): it has seen epoch {highest}{}",
        if *status == 401 { "; im sends no signed token (set cluster.fence_secret)" } else { "" }
    )]
    Fenced {
        /// 409 or 401.
        status: u16,
        /// The highest epoch the gate has seen.
        highest: u64,
    },
}

impl ClientError {
    /// The class of this failure.
    pub fn class(&self) -> ErrorClass {
        match self {
            ClientError::Connect(_) | ClientError::Dropped(_) | ClientError::Stream(_) => {
                ErrorClass::Transient
            }
            ClientError::Timeout { phase, .. } => {
                if *phase == "connect" {
                    ErrorClass::Transient
                } else {
                    ErrorClass::TimedOut
                }
            }
            ClientError::Protocol(_) => ErrorClass::Protocol,
            ClientError::WrongModel { .. } => ErrorClass::Permanent,
            ClientError::Fenced { status, .. } => {
                if *status == 409 {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Permanent
                }
            }
            ClientError::Status {
                status, message, ..
            } => match status {
                500 if is_unknown_model(message) || is_request_fault(message) => {
                    ErrorClass::Permanent
                }
                500 | 502 | 503 | 504 | 408 | 429 => ErrorClass::Transient,
                _ => ErrorClass::Permanent,
            },
        }
    }

    /// Whether the engine may retry it.
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// Whether the upstream says it does not do this kind of work for this model: 501 Not
    /// Implemented (llama-server's `not_supported_error`: an embeddings call to a server started
    /// without `--embeddings`, a completion to an embedding server).
    pub fn refuses_kind(&self) -> bool {
        matches!(self, ClientError::Status { status: 501, .. })
    }

    /// Whether it says the upstream itself is unwell (it counts against the lane's breaker).
    pub fn blames_upstream(&self) -> bool {
        match self {
            ClientError::Connect(_)
            | ClientError::Dropped(_)
            | ClientError::Timeout { .. }
            | ClientError::Stream(_)
            | ClientError::Protocol(_) => true,
            ClientError::WrongModel { .. } | ClientError::Fenced { .. } => false,
            ClientError::Status {
                status, message, ..
            } => match status {
                502 | 504 => true,
                503 => !self.is_loading(),
                500 => is_load_failure(message),
                _ => false,
            },
        }
    }

    /// Whether it is the caller's own error, to be answered with the upstream's status (400, 413,
    /// 422) and never retried: too long a prompt, a field the upstream refuses.
    pub fn is_caller_error(&self) -> bool {
        matches!(
            self,
            ClientError::Status {
                status: 400 | 413 | 422,
                ..
            }
        )
    }

    /// The upstream's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The upstream's status, if it answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } | ClientError::Fenced { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// Whether the upstream said the model is still loading.
    pub fn is_loading(&self) -> bool {
        matches!(self, ClientError::Status { status: 503, message, .. } if message.to_ascii_lowercase().contains("loading"))
    }

    /// A short label for metrics: `connect`, `timeout`, `dropped`, `status_503`, `stream`, `protocol`.
    pub fn label(&self) -> String {
        match self {
            ClientError::Connect(_) => "connect".into(),
            ClientError::Timeout { .. } => "timeout".into(),
            ClientError::Dropped(_) => "dropped".into(),
            ClientError::Status { status, .. } => format!("status_{status}"),
            ClientError::Stream(_) => "stream".into(),
            ClientError::Protocol(_) => "protocol".into(),
            ClientError::WrongModel { .. } => "wrong_model".into(),
            ClientError::Fenced { .. } => "fenced".into(),
        }
    }

    pub(crate) fn from_reqwest(
        e: reqwest::Error,
        after: Duration,
        phase: &'static str,
    ) -> ClientError {
        if e.is_timeout() {
            ClientError::Timeout { after, phase }
        } else if e.is_connect() {
            ClientError::Connect(summarize(&root_cause(&e)))
        } else if e.is_decode() {
            ClientError::Protocol(summarize(&root_cause(&e)))
        } else {
            // Request or body errors: reset, closed before the message completed.
            ClientError::Dropped(summarize(&root_cause(&e)))
        }
    }
}

fn is_unknown_model(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("not found") || m.contains("could not load model") && m.contains("no such")
}

/// A 500 that is the request's fault: the server could not parse or validate it (llama-cpp-python
/// answers malformed input with a 500 and a Python traceback).
fn is_request_fault(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "validation error",
        "valueerror",
        "typeerror",
        "keyerror",
        "jsondecodeerror",
        "invalid request",
        "unexpected keyword",
        "field required",
    ]
    .iter()
    .any(|p| m.contains(p))
}

/// A 500 that says the model could not be loaded: the lane (or its model) is unwell.
fn is_load_failure(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("load") && (m.contains("fail") || m.contains("could not") || m.contains("error"))
}

/// The innermost message of an error chain, without the URL (which may hold credentials).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Parse `Retry-After`: delay seconds, capped at [`MAX_RETRY_AFTER`] (HTTP dates are rare from
/// these servers and treated as absent). Never panics, whatever the header holds.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() {
        return Some(MAX_RETRY_AFTER); // an integer too large for u64
    }
    let secs = v
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)?;
    Some(Duration::from_secs_f64(
        secs.min(MAX_RETRY_AFTER.as_secs_f64()),
    ))
}

/// An upstream's error text as it may reach a caller or a log: the first meaningful line (for a
/// Python traceback, its final exception line), with paths and network addresses masked, capped at
/// [`MAX_MESSAGE_CHARS`] characters.
pub fn summarize(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let traceback = lines.iter().any(|l| l.starts_with("Traceback"));
    let line = if traceback {
        lines
            .iter()
            .rev()
            .find(|l| !l.starts_with(' ') && !l.starts_with('\t') && !l.starts_with("Traceback"))
            .copied()
            .unwrap_or("the upstream failed with a traceback")
    } else {
        lines.first().copied().unwrap_or("")
    };
    truncate(&mask_locations(line.trim()), MAX_MESSAGE_CHARS)
}

/// At most `max` characters of a caller- or upstream-supplied string (and `…` when cut), for
/// messages and metrics.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

/// Replace URLs, IPv4 addresses (with ports) and absolute file paths with placeholders.
fn mask_locations(s: &str) -> String {
    s.split(' ')
        .map(|word| {
            let bare = word.trim_matches(|c: char| "\"'(),;[]<>".contains(c));
            if bare.contains("://") {
                word.replace(bare, "<url>")
            } else if looks_like_ipv4(bare) {
                word.replace(bare, "<address>")
            } else if bare.starts_with('/') && bare.len() > 1 && bare[1..].contains('/') {
                word.replace(bare, "<path>")
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn looks_like_ipv4(s: &str) -> bool {
    let host = s.split(':').next().unwrap_or("");
    let parts: Vec<&str> = host.split('.').collect();
    parts.len() == 4
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, message: &str) -> ClientError {
        ClientError::Status {
            status,
            message: message.into(),
            retry_after: None,
            code: None,
            param: None,
        }
    }

    #[test]
    fn huge_retry_after_values_are_capped_not_panics() {
        for v in [
            "99999999999999999999",
            "1e300",
            "18446744073709551616",
            "9999999999",
        ] {
            assert_eq!(parse_retry_after(v), Some(MAX_RETRY_AFTER), "{v}");
        }
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("NaN"), None);
        assert_eq!(parse_retry_after("inf"), None);
    }

    #[test]
    fn the_rule_table() {
        // (error, retried, blames the upstream, caller's own)
        let rows: Vec<(ClientError, ErrorClass, bool, bool)> = vec![
            (
                ClientError::Connect("refused".into()),
                ErrorClass::Transient,
                true,
                false,
            ),
            (
                ClientError::Dropped("reset".into()),
                ErrorClass::Transient,
                true,
                false,
            ),
            (
                status(502, "bad gateway"),
                ErrorClass::Transient,
                true,
                false,
            ),
            (
                status(503, "capacity full"),
                ErrorClass::Transient,
                true,
                false,
            ),
            (
                status(503, "model is loading"),
                ErrorClass::Transient,
                false,
                false,
            ),
            (
                status(429, "slow down"),
                ErrorClass::Transient,
                false,
                false,
            ),
            (
                status(500, "failed to load model"),
                ErrorClass::Transient,
                true,
                false,
            ),
            (
                status(500, "KeyError: 'messages'"),
                ErrorClass::Permanent,
                false,
                false,
            ),
            (
                status(500, "something odd"),
                ErrorClass::Transient,
                false,
                false,
            ),
            (
                status(400, "exceeds the available context size"),
                ErrorClass::Permanent,
                false,
                true,
            ),
            (
                status(404, "model not found"),
                ErrorClass::Permanent,
                false,
                false,
            ),
            (
                ClientError::Timeout {
                    after: Duration::from_secs(1),
                    phase: "first byte",
                },
                ErrorClass::TimedOut,
                true,
                false,
            ),
            (
                ClientError::Timeout {
                    after: Duration::from_secs(1),
                    phase: "connect",
                },
                ErrorClass::Transient,
                true,
                false,
            ),
            (
                ClientError::Stream("boom".into()),
                ErrorClass::Transient,
                true,
                false,
            ),
            (
                ClientError::Protocol("junk".into()),
                ErrorClass::Protocol,
                true,
                false,
            ),
        ];
        for (e, class, blames, caller) in rows {
            assert_eq!(
                (e.class(), e.blames_upstream(), e.is_caller_error()),
                (class, blames, caller),
                "{e:?}"
            );
        }
    }

    #[test]
    fn tracebacks_become_their_last_line_without_paths_or_addresses() {
        let tb = "Traceback (most recent call last):\n  File \"/usr/lib/python3/site.py\", line 3, in x\n    y()\nConnectionError: cannot reach http://10.1.2.3:8080/v1 from /srv/app/main.py at 10.1.2.3:8080";
        let s = summarize(tb);
        assert!(s.starts_with("ConnectionError: cannot reach <url>"), "{s}");
        assert!(!s.contains("10.1.2.3") && !s.contains("/srv/app"), "{s}");
        let long = "x".repeat(10_000);
        assert!(summarize(&long).chars().count() <= MAX_MESSAGE_CHARS + 1);
        assert_eq!(summarize("first\nsecond"), "first");
    }
}
