//! One request out and its answer back, over either path: the pooled HTTP/1 connections of the
//! hot path ([`crate::pool`]: JSON `POST`s to a plain `http://` upstream) or the general client
//! (reqwest: control calls, uploads, relayed management routes, TLS upstreams). Both answer in
//! one [`Response`], read the same way.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::{CONTENT_TYPE, HeaderMap};

use crate::error::ClientError;
use crate::pool::PooledBody;

/// A request ready to go.
pub(super) enum Outgoing<'a> {
    /// `POST path` with a JSON body: on the pool when the upstream has one, else the general
    /// client.
    Json { path: &'a str, body: Bytes },
    /// Anything else, on the general client.
    General(Box<reqwest::RequestBuilder>),
}

impl Outgoing<'_> {
    /// `rb` on the general client.
    pub fn general(rb: reqwest::RequestBuilder) -> Self {
        Outgoing::General(Box::new(rb))
    }
}

/// An answer's head and its body.
pub(super) struct Response {
    pub status: reqwest::StatusCode,
    pub headers: HeaderMap,
    body: Body,
}

enum Body {
    Pooled(PooledBody),
    General(
        Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
        Option<u64>,
    ),
}

impl Response {
    pub fn pooled(a: crate::pool::Answer) -> Response {
        Response {
            status: a.status,
            headers: a.headers,
            body: Body::Pooled(a.body),
        }
    }

    pub fn general(r: reqwest::Response) -> Response {
        let (status, headers, len) = (r.status(), r.headers().clone(), r.content_length());
        Response {
            status,
            headers,
            body: Body::General(Box::pin(r.bytes_stream()), len),
        }
    }

    /// The body's length as the upstream declared it.
    pub fn content_length(&self) -> Option<u64> {
        match &self.body {
            Body::Pooled(b) => b.declared_len(),
            Body::General(_, len) => *len,
        }
    }

    /// The body's next piece.
    pub async fn next(&mut self) -> Option<Result<Bytes, ClientError>> {
        match &mut self.body {
            Body::Pooled(b) => b.next().await,
            Body::General(s, _) => s
                .next()
                .await
                .map(|r| r.map_err(|e| ClientError::from_reqwest(e, Duration::ZERO, "response"))),
        }
    }

    /// Its `Content-Type`, `application/octet-stream` when it sent none.
    pub fn content_type(&self) -> String {
        self.headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned()
    }

    /// Read the body up to `limit` bytes; more is a protocol error (the rest is not read). A
    /// function returning the future, not an `async fn`: an `async fn` keeps its argument twice
    /// in its state (as it came and as its local), and a response is 200 bytes.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its argument twice in its state"
    )]
    pub fn read_capped(
        mut self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<u8>, ClientError>> + Send {
        async move {
            let declared = self.content_length().unwrap_or(0);
            if declared > limit as u64 {
                return Err(ClientError::Protocol(format!(
                    "the upstream's body of {declared} bytes is over the limit of {limit}"
                )));
            }
            let mut out = Vec::with_capacity(declared as usize);
            while let Some(chunk) = self.next().await {
                let chunk = chunk?;
                if out.len() + chunk.len() > limit {
                    return Err(ClientError::Protocol(format!(
                        "the upstream's body is over the limit of {limit} bytes"
                    )));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(out)
        }
    }
}
