//! The floor of the memory benchmark (`cargo xtask bench`): the least an HTTP/1 server on hyper
//! and tokio holds for a request that waits for its answer. It reads each request's body whole,
//! drops it, and never answers, on im's runtime (one worker thread); `GET /held` answers how many
//! requests it holds. What a queued request costs im-http above this is im's own.
//!
//! `bare_waiting LISTEN`, e.g. `bare_waiting 127.0.0.1:9000`.

mod bare;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response};

async fn handle(
    held: Arc<AtomicU64>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    if req.method() == Method::GET && req.uri().path() == "/held" {
        let n = held.load(Ordering::Relaxed).to_string();
        return Ok(Response::new(Full::new(Bytes::from(n))));
    }
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    drop(body);
    held.fetch_add(1, Ordering::Relaxed);
    std::future::pending().await
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(listen) = std::env::args().nth(1) else {
        return Err("usage: bare_waiting LISTEN".into());
    };
    let held = Arc::new(AtomicU64::new(0));
    bare::serve(&listen, move |r| handle(held.clone(), r))
}
