//! One attempt of one request: the upstream call, run in its own task, reporting back to the
//! driver exactly once, whatever happens (a panic included).
//!
//! Rules:
//! - A slot is held until the upstream has really finished. A caller that goes away does not stop
//!   the attempt: a plain call runs to its end and its result is discarded; a stream is read to its
//!   end in the background (bounded by the client's idle and total limits) and discarded.
//! - A stream is handed to the caller only once its first chunk arrived: an error before that
//!   reached nobody, so it is reported as a failed attempt the engine may retry.
//! - A panic inside the attempt (an im bug, or a backend's) is caught and reported as a failure, so
//!   no panic can hold a slot or leave a request without an answer.
//! - An answer that names another model than the one asked for (a server that answers unknown
//!   names with its default model) is refused.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use inference_queue::{LaneId, RequestId};
use localai_client::{ChatChunk, ChunkStream, ClientError};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use crate::backend::Backend;
use crate::driver::Msg;
use crate::job::{Job, Output, Payload};
use crate::trace;

/// Which model names an upstream may answer with for a requested model.
#[derive(Clone, Debug, Default)]
pub struct ModelEcho {
    /// `(model, names it may answer with besides its own)`.
    pub aliases: Vec<(String, Vec<String>)>,
    /// Off: any name is accepted.
    pub disabled: bool,
}

impl ModelEcho {
    /// Whether `answered` is an acceptable name for a request for `asked`.
    pub fn accepts(&self, asked: &str, answered: &str) -> bool {
        if self.disabled || answered.is_empty() || answered == asked {
            return true;
        }
        // Servers often answer with a path or file name: accept "…/asked" and "asked.gguf".
        let base = answered.rsplit('/').next().unwrap_or(answered);
        if base == asked || base.strip_suffix(".gguf") == Some(asked) {
            return true;
        }
        self.aliases
            .iter()
            .any(|(m, names)| m == asked && names.iter().any(|n| n == answered || n == base))
    }

    /// An answer naming `answered` (its `model`, when it names one) for a request for `asked`.
    fn check(&self, asked: &str, answered: Option<&str>) -> Result<(), ClientError> {
        match answered {
            Some(answered) if !self.accepts(asked, answered) => Err(ClientError::WrongModel {
                asked: asked.to_owned(),
                answered: localai_client::summarize(answered),
            }),
            _ => Ok(()),
        }
    }
}

/// What an attempt needs.
pub(crate) struct Attempt {
    pub id: RequestId,
    pub lane: LaneId,
    pub job: Arc<Job>,
    pub backend: Arc<dyn Backend>,
    pub tx: mpsc::UnboundedSender<Msg>,
    pub echo: Arc<ModelEcho>,
    /// The attempt's `upstream` span: current while it runs.
    pub span: tracing::Span,
}

impl Attempt {
    /// Run it; the driver hears back exactly once (`Attempt`, `StreamEnded` or `Panicked`).
    pub async fn run(self) {
        let (id, lane, tx) = (self.id, self.lane, self.tx.clone());
        let started = Instant::now();
        let mut stream_started = false;
        let span = self.span.clone();
        let caught = AssertUnwindSafe(self.call(started, &mut stream_started))
            .catch_unwind()
            .instrument(span.clone())
            .await;
        if caught.is_err() {
            trace::attempt_ended(&span, Some("panic"));
            // The panic message may quote request data: it is not logged here (the process's
            // panic hook logs only the location).
            tracing::error!(request = %id, "an attempt panicked; answering it as an internal error");
            let _ = tx.send(Msg::Panicked {
                id,
                lane,
                stream_started,
                processing: started.elapsed(),
            });
        }
    }

    async fn call(&self, started: Instant, stream_started: &mut bool) {
        let (id, lane) = (self.id, self.lane);
        let result = match &self.job.payload {
            Payload::Chat {
                req, stream: false, ..
            } => match self.backend.chat(lane, req).await {
                Ok(c) => self
                    .echo
                    .check(&req.model, c.raw.model())
                    .map(|()| Output::Chat(c)),
                Err(e) => Err(e),
            },
            Payload::Images(req) => self.backend.images(lane, req).await.map(Output::Images),
            // Bytes carry no model name to check: the upstream's answer is passed on as it is.
            Payload::Speech { body } => self
                .backend
                .raw(lane, "/v1/audio/speech", body)
                .await
                .map(Output::Raw),
            Payload::Transcription(upload) => self
                .backend
                .upload(lane, "/v1/audio/transcriptions", upload)
                .await
                .map(Output::Raw),
            Payload::Json {
                path,
                body,
                stream: false,
                ..
            } => match self.backend.json(lane, path, body).await {
                Ok(j) => self
                    .echo
                    .check(self.job.model(), j.raw.model())
                    .map(|()| Output::Json(j)),
                Err(e) => Err(e),
            },
            Payload::Json {
                path,
                body,
                stream: true,
                ..
            } => match self.backend.json_stream(lane, path, body).await {
                Err(e) => Err(e),
                Ok(stream) => {
                    Box::pin(self.pump(stream, self.job.model(), started, stream_started)).await;
                    return;
                }
            },
            Payload::Chat {
                req, stream: true, ..
            } => match self.backend.chat_stream(lane, req).await {
                Err(e) => Err(e),
                Ok(stream) => {
                    Box::pin(self.pump(stream, &req.model, started, stream_started)).await;
                    return;
                }
            },
        };
        self.ended(result.as_ref().err());
        let _ = self.tx.send(Msg::Attempt {
            id,
            lane,
            result,
            processing: started.elapsed(),
        });
    }

    fn ended(&self, error: Option<&ClientError>) {
        trace::attempt_ended(&self.span, error.map(ClientError::label).as_deref());
    }

    /// Relay a stream to the caller; report its end. Boxed where it is awaited: its state is
    /// about a kilobyte, which every plain call's attempt would otherwise carry (1,696 bytes
    /// against 632) and copy each time the future moves into its task.
    async fn pump(
        &self,
        mut stream: ChunkStream,
        model: &str,
        started: Instant,
        stream_started: &mut bool,
    ) {
        let (id, lane) = (self.id, self.lane);
        // Nothing reaches the caller before the first chunk: an error here can be retried.
        let first: Result<ChatChunk, ClientError> = match stream.next().await {
            Some(Ok(chunk)) => self
                .echo
                .check(
                    model,
                    chunk.raw.get("model").and_then(serde_json::Value::as_str),
                )
                .map(|()| chunk),
            Some(Err(e)) => Err(e),
            None => Err(ClientError::Protocol(
                "the stream ended before its first chunk".into(),
            )),
        };
        let first = match first {
            Ok(c) => c,
            Err(e) => {
                self.ended(Some(&e));
                let _ = self.tx.send(Msg::Attempt {
                    id,
                    lane,
                    result: Err(e),
                    processing: started.elapsed(),
                });
                return;
            }
        };
        let (ctx, crx) = mpsc::channel(64);
        *stream_started = true;
        let _ = self.tx.send(Msg::StreamStarted {
            id,
            lane,
            rx: crx,
            processing: started.elapsed(),
        });
        let mut error = None;
        let mut caller_left = ctx.send(Ok(first)).await.is_err();
        while !caller_left {
            tokio::select! {
                biased;
                () = ctx.closed() => caller_left = true,
                item = stream.next() => match item {
                    None => break,
                    Some(item) => {
                        let failed = item.as_ref().err().cloned();
                        if ctx.send(item).await.is_err() {
                            caller_left = true;
                        }
                        if failed.is_some() {
                            error = failed;
                            break;
                        }
                    }
                },
            }
        }
        if caller_left && error.is_none() {
            // The upstream is still generating: hold the slot until it has finished (the
            // client's idle and total limits bound this), discarding what it sends.
            while let Some(item) = stream.next().await {
                if item.is_err() {
                    break;
                }
            }
        }
        self.ended(error.as_ref());
        let _ = self.tx.send(Msg::StreamEnded {
            id,
            lane,
            error,
            aborted: caller_left,
        });
    }
}
