//! The floor of the overhead benchmark (`cargo xtask bench`): the least a buffering HTTP/1 proxy
//! on hyper and tokio does per request, with im's runtime (one worker thread) and im's way of
//! calling upstream (pooled connections, the body read whole and sent on, the answer read whole
//! and sent back). No routing, keys, validation, queue, metrics or logs: what im-http spends above
//! this is im's own work.
//!
//! `bare_proxy LISTEN UPSTREAM [WORK_US]`, e.g. `bare_proxy 127.0.0.1:9000 127.0.0.1:8080`.
//! `WORK_US`: spend that many microseconds of CPU on each request (a busy loop), to measure what
//! a given amount of work per request costs a proxy's throughput on the machine at hand.

mod bare;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

type Connection = SendRequest<Full<Bytes>>;

struct Upstream {
    addr: String,
    idle: Mutex<Vec<Connection>>,
    /// CPU time spent on each request besides passing it on.
    work: std::time::Duration,
}

impl Upstream {
    async fn connection(&self) -> Result<Connection, Box<dyn std::error::Error + Send + Sync>> {
        if let Some(c) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(c);
        }
        let stream = tokio::net::TcpStream::connect(&self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(sender)
    }

    async fn pass(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await?.to_bytes();
        let started = std::time::Instant::now();
        while started.elapsed() < self.work {
            std::hint::spin_loop();
        }
        let mut sender = self.connection().await?;
        let upstream = Request::builder()
            .method(parts.method)
            .uri(parts.uri)
            .header(hyper::header::HOST, &self.addr)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let (head, body) = sender.send_request(upstream).await?.into_parts();
        let body = body.collect().await?.to_bytes();
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sender);
        Ok(Response::from_parts(head, Full::new(body)))
    }
}

async fn handle(
    upstream: Arc<Upstream>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    Ok(upstream.pass(req).await.unwrap_or_else(|e| {
        let mut r = Response::new(Full::new(Bytes::from(e.to_string())));
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        r
    }))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(addr)) = (args.get(1), args.get(2)) else {
        return Err("usage: bare_proxy LISTEN UPSTREAM [WORK_US]".into());
    };
    let work_us: u64 = match args.get(3) {
        Some(w) => w
            .parse()
            .map_err(|_| format!("WORK_US: not a number: {w}"))?,
        None => 0,
    };
    let upstream = Arc::new(Upstream {
        addr: addr.clone(),
        idle: Mutex::new(Vec::new()),
        work: std::time::Duration::from_micros(work_us),
    });
    bare::serve(listen, move |r| handle(upstream.clone(), r))
}
