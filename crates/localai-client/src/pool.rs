//! HTTP/1 connections to one upstream, kept and reused, each driven by the task that uses it.
//!
//! The hot path (every JSON `POST` an attempt makes) does not go through a general-purpose
//! client: the request head is built from parts computed once (the path, `Host`, the key's
//! `Authorization`), and the connection is polled by the call's own task while it sends and
//! while its answer is read, so no connection task is woken per request. A connection goes back
//! to the pool once its answer was read to its end; an answer dropped half-read closes it.
//!
//! Rules:
//! - A pooled connection the upstream has closed is noticed when taken (it is polled once) and
//!   dropped; a request a pooled connection could not send (closed as it was taken) is sent
//!   once more on a new connection. Nothing that left is retried here: a request the upstream
//!   may have received is the engine's to retry (its attempts are counted).
//! - At most [`MAX_IDLE`] connections wait in the pool; one idle for [`IDLE_FOR`] is closed.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::{ClientError, summarize};

/// Connections kept idle per upstream at most.
pub const MAX_IDLE: usize = 256;

/// How long a connection may wait in the pool.
pub const IDLE_FOR: Duration = Duration::from_secs(90);

type Driver = Pin<Box<http1::Connection<TokioIo<TcpStream>, Full<Bytes>>>>;

/// One HTTP/1 connection: its sender and the future that drives it.
struct Conn {
    send: http1::SendRequest<Full<Bytes>>,
    driver: Driver,
    idle_since: Instant,
}

impl Conn {
    /// Poll the connection once (it reads what the upstream sent: an end of file, a close);
    /// whether it can take a request.
    fn usable(&mut self, cx: &mut Context<'_>) -> bool {
        if self.driver.as_mut().poll(cx).is_ready() {
            return false;
        }
        self.send.is_ready()
    }
}

/// The pool of one upstream, with the request parts computed once.
pub(crate) struct Pool {
    host: String,
    port: u16,
    /// The base URL's path (without its trailing slash), prefixed to every request's path.
    prefix: String,
    host_header: HeaderValue,
    authorization: Option<HeaderValue>,
    connect_timeout: Duration,
    /// The request URIs of the hot paths, parsed once.
    hot: Vec<(&'static str, Uri)>,
    idle: Mutex<Vec<Conn>>,
}

/// The paths whose request URIs a pool parses once.
const HOT_PATHS: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/images/generations",
];

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// An answer's head, and its body as a stream of bytes.
pub(crate) struct Answer {
    pub status: http::StatusCode,
    pub headers: HeaderMap,
    pub body: PooledBody,
}

impl Pool {
    /// A pool for `base_url` when it is plain `http://` (others go through the general client).
    pub fn new(
        base_url: &str,
        api_key: Option<&str>,
        connect_timeout: Duration,
    ) -> Option<Arc<Pool>> {
        let uri: Uri = base_url.parse().ok()?;
        if uri.scheme_str() != Some("http") || uri.query().is_some() {
            return None;
        }
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(80);
        let authority = uri.authority()?.as_str();
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        let authorization = match api_key {
            Some(k) => Some(HeaderValue::from_str(&format!("Bearer {k}")).ok()?),
            None => None,
        };
        let prefix = uri.path().trim_end_matches('/').to_owned();
        let hot = HOT_PATHS
            .iter()
            .map(|p| Some((*p, format!("{prefix}{p}").parse().ok()?)))
            .collect::<Option<Vec<_>>>()?;
        Some(Arc::new(Pool {
            host: host.to_owned(),
            port,
            prefix,
            hot,
            host_header: HeaderValue::from_str(authority).ok()?,
            authorization,
            connect_timeout,
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// `POST path` with a JSON `body` and the `extra` headers (the header hook's), answered once
    /// its head arrived (the caller bounds the wait).
    pub async fn post_json(
        self: &Arc<Pool>,
        path: &str,
        body: Bytes,
        extra: Option<&HeaderMap>,
    ) -> Result<Answer, ClientError> {
        let uri: Uri = match self.hot.iter().find(|(p, _)| *p == path) {
            Some((_, u)) => u.clone(),
            None => format!("{}{path}", self.prefix)
                .parse()
                .map_err(|e| ClientError::Connect(format!("invalid upstream path: {e}")))?,
        };
        let request = || {
            let mut req = Request::new(Full::new(body.clone()));
            *req.method_mut() = Method::POST;
            *req.uri_mut() = uri.clone();
            let h = req.headers_mut();
            h.insert(HOST, self.host_header.clone());
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Some(a) = &self.authorization {
                h.insert(AUTHORIZATION, a.clone());
            }
            if let Some(extra) = extra {
                for (k, v) in extra {
                    h.insert(k, v.clone());
                }
            }
            req
        };
        let mut retried = false;
        loop {
            let (mut conn, reused) = match self.checkout().await {
                Some(c) => (c, true),
                None => (self.connect().await?, false),
            };
            let sending = conn.send.try_send_request(request());
            let mut sending = std::pin::pin!(sending);
            let mut driver_ended = false;
            let result = poll_fn(|cx| {
                if !driver_ended && conn.driver.as_mut().poll(cx).is_ready() {
                    driver_ended = true;
                }
                sending.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    return Ok(Answer {
                        status: parts.status,
                        headers: parts.headers,
                        body: PooledBody {
                            body,
                            conn: (!driver_ended).then_some(conn),
                            pool: self.clone(),
                        },
                    });
                }
                Err(mut e) => {
                    let unsent = e.take_message().is_some();
                    let e = e.into_error();
                    // A keep-alive the upstream had closed before the request left: once, anew.
                    // A request that left may have been served: its failure is the engine's.
                    if reused && (unsent || e.is_canceled()) && !retried {
                        retried = true;
                        continue;
                    }
                    return Err(from_hyper(&e));
                }
            }
        }
    }

    /// A pooled connection that can take a request, if one waits.
    async fn checkout(&self) -> Option<Conn> {
        loop {
            let mut conn = self.lock().pop()?;
            if conn.idle_since.elapsed() > IDLE_FOR {
                continue;
            }
            if poll_fn(|cx| Poll::Ready(conn.usable(cx))).await {
                return Some(conn);
            }
        }
    }

    async fn connect(&self) -> Result<Conn, ClientError> {
        let connecting = TcpStream::connect((self.host.as_str(), self.port));
        let stream = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Err(_) => {
                return Err(ClientError::Timeout {
                    after: self.connect_timeout,
                    phase: "connect",
                });
            }
            Ok(Err(e)) => return Err(ClientError::Connect(summarize(&e.to_string()))),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let (send, driver) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Connect(summarize(&e.to_string())))?;
        Ok(Conn {
            send,
            driver: Box::pin(driver),
            idle_since: Instant::now(),
        })
    }

    /// Put back a connection whose answer was read to its end.
    fn put(&self, mut conn: Conn, cx: &mut Context<'_>) {
        if !conn.usable(cx) {
            return;
        }
        conn.idle_since = Instant::now();
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An answer's body, read by the caller's task, which also drives the connection; the
/// connection goes back to its pool at the body's end.
pub(crate) struct PooledBody {
    body: Incoming,
    conn: Option<Conn>,
    pool: Arc<Pool>,
}

impl PooledBody {
    /// The length the upstream declared.
    pub fn declared_len(&self) -> Option<u64> {
        self.body.size_hint().exact()
    }
}

impl Stream for PooledBody {
    type Item = Result<Bytes, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(c) = &mut this.conn
            && c.driver.as_mut().poll(cx).is_ready()
        {
            // The connection is done (closed after this answer): the body has what it will get.
            this.conn = None;
        }
        loop {
            return match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Poll::Ready(Some(Ok(data))),
                    Err(_trailers) => continue,
                },
                Poll::Ready(Some(Err(e))) => {
                    this.conn = None;
                    Poll::Ready(Some(Err(from_hyper(&e))))
                }
                Poll::Ready(None) => {
                    if let Some(conn) = this.conn.take() {
                        this.pool.put(conn, cx);
                    }
                    Poll::Ready(None)
                }
            };
        }
    }
}

/// A hyper error as the client's: a malformed answer is a protocol error, anything else a
/// dropped connection.
fn from_hyper(e: &hyper::Error) -> ClientError {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = s.to_string();
        source = s.source();
    }
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        ClientError::Protocol(summarize(&text))
    } else {
        ClientError::Dropped(summarize(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server answering each request on a connection with `body`, counting connections;
    /// `close_after` requests per connection, then it closes.
    async fn server(
        body: &'static str,
        close_after: usize,
    ) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    for _ in 0..close_after {
                        let mut got = Vec::new();
                        // Read one request: its head, then the length it declares.
                        loop {
                            let n = s.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            got.extend_from_slice(&buf[..n]);
                            let text = String::from_utf8_lossy(&got).to_string();
                            if let Some(end) = text.find("\r\n\r\n") {
                                let len: usize = text
                                    .lines()
                                    .find_map(|l| l.strip_prefix("content-length: "))
                                    .and_then(|v| v.trim().parse().ok())
                                    .unwrap_or(0);
                                if got.len() >= end + 4 + len {
                                    break;
                                }
                            }
                        }
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, conns)
    }

    fn pool_at(port: u16) -> Arc<Pool> {
        Pool::new(
            &format!("http://127.0.0.1:{port}"),
            None,
            Duration::from_secs(1),
        )
        .unwrap()
    }

    async fn read_all(mut b: PooledBody) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = b.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn answers_read_to_their_end_reuse_one_connection() {
        let (port, conns) = server("{\"ok\":true}", usize::MAX).await;
        let pool = pool_at(port);
        for _ in 0..5 {
            let a = pool
                .post_json("/v1/x", Bytes::from_static(b"{}"), None)
                .await
                .unwrap();
            assert_eq!(a.status, 200);
            assert_eq!(read_all(a.body).await, b"{\"ok\":true}");
        }
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced_without_an_error() {
        // One answer per connection, then the server closes it: every call finds the pooled
        // connection dead (or dying) and succeeds on a new one.
        let (port, conns) = server("{}", 1).await;
        let pool = pool_at(port);
        for _ in 0..4 {
            let a = pool
                .post_json("/v1/x", Bytes::from_static(b"{}"), None)
                .await
                .unwrap();
            assert_eq!(read_all(a.body).await, b"{}");
            // Let the close arrive (under test: the server closes right after answering).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_body_dropped_half_read_does_not_go_back_to_the_pool() {
        let (port, conns) = server("{\"long\":\"answer\"}", usize::MAX).await;
        let pool = pool_at(port);
        let a = pool
            .post_json("/v1/x", Bytes::from_static(b"{}"), None)
            .await
            .unwrap();
        drop(a);
        assert!(pool.lock().is_empty());
        let a = pool
            .post_json("/v1/x", Bytes::from_static(b"{}"), None)
            .await
            .unwrap();
        assert_eq!(read_all(a.body).await, b"{\"long\":\"answer\"}");
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(pool.lock().len(), 1);
    }

    #[tokio::test]
    async fn requests_carry_host_key_and_the_hooks_headers() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        let pool = Pool::new(
            &format!("http://127.0.0.1:{port}/base/"),
            Some("k1"),
            Duration::from_secs(1),
        )
        .unwrap();
        let mut extra = HeaderMap::new();
        extra.insert("traceparent", HeaderValue::from_static("00-abc-def-01"));
        let a = pool
            .post_json(
                "/v1/chat/completions",
                Bytes::from_static(b"{\"a\":1}"),
                Some(&extra),
            )
            .await
            .unwrap();
        assert_eq!(read_all(a.body).await, b"");
        let head = seen.await.unwrap();
        assert!(
            head.starts_with("POST /base/v1/chat/completions HTTP/1.1\r\n"),
            "{head}"
        );
        for h in [
            format!("host: 127.0.0.1:{port}"),
            "authorization: Bearer k1".into(),
            "traceparent: 00-abc-def-01".into(),
            "content-type: application/json".into(),
            "content-length: 7".into(),
        ] {
            assert!(head.contains(&h), "{h} missing in {head}");
        }
        assert!(head.ends_with("{\"a\":1}"));
    }

    #[test]
    fn only_plain_http_upstreams_are_pooled() {
        let t = Duration::from_secs(1);
        assert!(Pool::new("http://gpu0:8080", None, t).is_some());
        assert!(Pool::new("https://gpu0:8080", None, t).is_none());
        assert!(Pool::new("not a url", None, t).is_none());
    }
}
