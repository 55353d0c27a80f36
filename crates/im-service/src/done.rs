//! What a run gives back to a frontend, in the service's own types: the figures of the request
//! and its answer. Frontends never see the engine's or the upstream client's types; a stream
//! comes as a [`ChunkStream`], whose failures are mapped to the client's error once, here.

use std::time::Duration;

use bytes::Bytes;
use im_engine::{Completion, Output};
use inference_queue::Kind;
use serde_json::Value;

use crate::error::{ErrorType, ServiceError};

/// Where a request's time went, and who answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Figures {
    /// The caller's request id.
    pub request_id: String,
    /// Its kind.
    pub kind: Kind,
    /// Its model.
    pub model: String,
    /// From admission to the dispatch of the answering attempt.
    pub queue_wait: Duration,
    /// Upstream time of the answering attempt (for a stream: until its response head).
    pub processing: Duration,
    /// Attempts made.
    pub attempts: u32,
    /// The lane that answered.
    pub lane: usize,
}

/// An answer.
#[derive(Debug)]
pub enum Reply {
    /// A chat completion: its text, the completion as the upstream sent it, and its bytes.
    Chat {
        /// The completion (parsed when read; its text by `chat_content`).
        raw: localai_client::JsonBody,
        /// The completion's bytes, to pass on unchanged.
        body: Bytes,
    },
    /// Generated images, base64 PNG.
    Images {
        /// `created`, as the upstream said.
        created: u64,
        /// The images.
        images: Vec<String>,
    },
    /// An OpenAI-shaped answer passed through as JSON.
    Json {
        /// The answer (parsed when read).
        raw: localai_client::JsonBody,
        /// Its bytes, to pass on unchanged.
        body: Bytes,
    },
    /// An answer passed through as bytes (audio, a transcript).
    Raw {
        /// Its content type.
        content_type: String,
        /// Its bytes.
        body: Bytes,
    },
    /// A stream of chunks, live.
    Stream(ChunkStream),
}

/// A finished (or, for a stream, started) request.
#[derive(Debug)]
pub struct Done {
    /// Its figures.
    pub figures: Figures,
    /// Its answer.
    pub reply: Reply,
}

impl From<Completion> for Done {
    fn from(c: Completion) -> Done {
        let m = c.meta;
        let reply = match c.output {
            Output::Chat(r) => Reply::Chat {
                raw: r.raw,
                body: r.body,
            },
            Output::Images(i) => Reply::Images {
                created: i.created,
                images: i.images,
            },
            Output::Json(j) => Reply::Json {
                raw: j.raw,
                body: j.body,
            },
            Output::Raw(r) => Reply::Raw {
                content_type: r.content_type,
                body: r.body,
            },
            Output::Stream(rx) => Reply::Stream(ChunkStream {
                rx,
                finished: false,
                ended: false,
            }),
        };
        Done {
            figures: Figures {
                request_id: m.request_id,
                kind: m.kind,
                model: m.model,
                queue_wait: m.queue_wait,
                processing: m.processing,
                attempts: m.attempts,
                lane: m.lane,
            },
            reply,
        }
    }
}

/// One event of a stream.
#[derive(Debug)]
pub enum StreamItem {
    /// A chunk as the upstream sent it (`chat.completion.chunk` or a text completion's chunk).
    Chunk {
        /// The chunk.
        raw: Value,
        /// A chat chunk's `choices[0].delta.content`, or empty.
        delta: String,
        /// Its `finish_reason`, when set.
        finish_reason: Option<String>,
    },
    /// The stream failed after it had started: the error to show the client (sanitised). The
    /// last item.
    Failed(ServiceError),
    /// The stream ended well. The last item.
    End,
}

/// A live stream of chunks, ending with [`StreamItem::End`] or one [`StreamItem::Failed`]: the one
/// place a stream's failure becomes what the client is told (SSE error events, WebSocket error
/// messages alike).
#[derive(Debug)]
pub struct ChunkStream {
    rx: im_engine::ChunkReceiver,
    finished: bool,
    ended: bool,
}

impl ChunkStream {
    /// The next item; `None` after the last.
    pub async fn next(&mut self) -> Option<StreamItem> {
        if self.ended {
            return None;
        }
        match self.rx.recv().await {
            Some(Ok(chunk)) => {
                self.finished |= chunk.finish_reason.is_some();
                Some(StreamItem::Chunk {
                    raw: chunk.raw,
                    delta: chunk.delta,
                    finish_reason: chunk.finish_reason,
                })
            }
            Some(Err(e)) => {
                self.ended = true;
                Some(StreamItem::Failed(ServiceError::new(
                    ErrorType::UpstreamError,
                    im_metrics::sanitize_text(&e.to_string()),
                )))
            }
            None => {
                self.ended = true;
                Some(if self.finished {
                    StreamItem::End
                } else {
                    StreamItem::Failed(ServiceError::new(
                        ErrorType::UpstreamError,
                        "the upstream stream ended before completion",
                    ))
                })
            }
        }
    }
}
