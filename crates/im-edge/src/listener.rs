//! Serving a router on a socket with the limits a public listener needs.
//!
//! - **First byte and headers.** A new connection must send its first byte within
//!   `header_read_timeout` (hyper's own header timer starts only at the first byte), and every
//!   request's headers within it (HTTP/1; hyper closes a keep-alive connection that starts no
//!   next request in time the same way).
//! - **Idle connections.** A connection with no request in flight for `idle_timeout` is closed
//!   gracefully, HTTP/2 included (hyper has no idle timeout for it).
//! - **Bodies.** A request body must keep arriving (no pause over `body_idle_timeout`) and arrive
//!   whole within `body_total_timeout`; reading it fails otherwise.
//! - **Caps.** At most `max_connections` connections; at most the per-peer cap of [`Peers`] per
//!   client (counted by `X-Forwarded-For` behind a trusted proxy, replicas exempt); a connection
//!   over a cap is closed at once, a request over it (behind a proxy) answered 429.
//! - **Shutdown.** When `shutdown` resolves (the caller drains its own work inside it), open
//!   connections are asked to finish, get `close_grace`, and the rest are closed.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use futures_util::future::Either;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::peers::{PeerPermit, Peers, canonical};

/// Connection and body limits of a listener.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServeLimits {
    /// A new connection must send its first byte, and a request its whole header, within this
    /// time; an idle HTTP/1 keep-alive connection is closed after it.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2 too).
    pub idle_timeout: Duration,
    /// The longest pause between two pieces of a request body.
    pub body_idle_timeout: Duration,
    /// The longest time to receive a whole request body.
    pub body_total_timeout: Duration,
    /// Open connections at most; more are closed at once.
    pub max_connections: usize,
    /// After shutdown drained the caller's work, how long open connections (streams) may take
    /// to finish before they are closed.
    pub close_grace: Duration,
}

impl Default for ServeLimits {
    fn default() -> ServeLimits {
        ServeLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            body_idle_timeout: Duration::from_secs(30),
            body_total_timeout: Duration::from_secs(300),
            max_connections: 16384,
            close_grace: Duration::from_secs(5),
        }
    }
}

/// The header a trusted proxy names its client in. Names looked up on every request are
/// constants: a `&str` name is parsed and checked at each lookup.
const FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
/// The header a replica proves itself with ([`crate::fence::REPLICA`]).
const REPLICA_PROOF: http::HeaderName = http::HeaderName::from_static(crate::fence::REPLICA);

/// Requests in flight on one connection, and when it was last active.
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` at the last request's start or end.
    last_ms: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the connection would have been idle for `idle`, if nothing is in flight.
    fn idle_deadline(&self, idle: Duration) -> Instant {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Instant::now() + idle;
        }
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }
}

/// One request in flight: counted on its connection (and, behind a proxy, against its client)
/// until its response body ends or is dropped.
struct InFlight {
    activity: Arc<Activity>,
    _client: Option<PeerPermit>,
}

impl InFlight {
    fn new(activity: Arc<Activity>, client: Option<PeerPermit>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.touch();
        InFlight {
            activity,
            _client: client,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.touch();
        self.activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted until it ends.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Logs a refusal at most once a second (an attack must not flood the logs).
struct Throttled(AtomicU64);

impl Throttled {
    fn warn(&self, epoch: Instant, what: &str, limit: usize) {
        let now = epoch.elapsed().as_secs();
        if self.0.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(limit, "{what}");
        }
    }
}

/// The answer to a request over its client's cap (behind a trusted proxy).
fn too_many(limit: usize) -> Response {
    let body = format!(
        r#"{{"error":{{"type":"rate_limited","message":"this client holds {limit} requests already; retry when one has finished"}}}}"#
    );
    Response::builder()
        .status(429)
        .header("content-type", "application/json")
        .header("retry-after", "1")
        .body(Body::from(body))
        .unwrap_or_default()
}

/// What [`serve`] serves: an axum `Router`, or any service like it.
pub trait App:
    tower::Service<Request, Response = Response, Error = std::convert::Infallible, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> App for S where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible, Future: Send>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Serve `app` on `listener` with `limits` and the per-peer policy `peers` until `shutdown`
/// resolves, then give open connections [`ServeLimits::close_grace`] and close the rest.
pub async fn serve<A: App>(
    listener: TcpListener,
    app: A,
    limits: ServeLimits,
    peers: Arc<Peers>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new());
    let mut auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    auto.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    auto.http2().timer(TokioTimer::new());
    let builders = Arc::new(Builders { http1, http2, auto });
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut conns = JoinSet::new();
    let epoch = Instant::now();
    let (over_global, over_peer) = (
        Throttled(AtomicU64::new(u64::MAX)),
        Throttled(AtomicU64::new(u64::MAX)),
    );
    tokio::pin!(shutdown);
    loop {
        while conns.try_join_next().is_some() {}
        let (socket, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            over_global.warn(
                epoch,
                "connection limit reached; closing new connections",
                limits.max_connections,
            );
            continue;
        };
        let peer = canonical(addr.ip());
        let counted = match peers.admit_connection(peer) {
            Ok(p) => p,
            Err(e) => {
                over_peer.warn(
                    epoch,
                    "a client reached its connection cap; closing its new connections",
                    e.limit,
                );
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let conn = Connection {
            app: app.clone(),
            builders: builders.clone(),
            peers: peers.clone(),
            limits,
            peer,
            stop: stop.clone(),
        };
        // A combinator, not a block: a block would hold the connection and the socket beside the
        // future they moved into, for as long as the connection lives.
        conns.spawn(futures_util::FutureExt::map(conn.run(socket), move |()| {
            drop((slot, counted));
        }));
    }
    drop(listener);
    stop.cancel();
    let drained = tokio::time::timeout(limits.close_grace, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            grace_s = limits.close_grace.as_secs_f64(),
            open = conns.len(),
            "connections still open after the grace period; closing them"
        );
        conns.abort_all();
    }
    Ok(())
}

/// How connections are served: HTTP/1 (with upgrades), or HTTP/2 when a connection opens with
/// its preface (prior knowledge, `h2c`); hyper-util's `auto` server for a connection whose first
/// bytes are only part of the preface so far (it reads on until it can tell).
struct Builders {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    auto: hyper_util::server::conn::auto::Builder<TokioExecutor>,
}

/// What every HTTP/2 connection opens with (RFC 9113, 3.4).
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection's first bytes say it speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opening {
    Http1,
    Http2,
    /// A part of the HTTP/2 preface so far (it is normally sent whole).
    Unsure,
}

/// What `socket` opens with, or `None` if it closes first. Only peeks: hyper reads the bytes
/// again. Peeks once: waiting for more would mean peeking again and again at the same bytes.
async fn opening(socket: &tokio::net::TcpStream) -> Option<Opening> {
    let mut first = [0u8; 24];
    let n = socket.peek(&mut first).await.ok()?;
    if n == 0 {
        return None;
    }
    Some(if first[..n] != HTTP2_PREFACE[..n] {
        Opening::Http1
    } else if n == HTTP2_PREFACE.len() {
        Opening::Http2
    } else {
        Opening::Unsure
    })
}

/// One accepted connection and what serving it needs.
struct Connection<A> {
    app: A,
    builders: Arc<Builders>,
    peers: Arc<Peers>,
    limits: ServeLimits,
    peer: IpAddr,
    stop: tokio_util::sync::CancellationToken,
}

impl<A: App> Connection<A> {
    /// Serve the connection: find what it speaks from its first bytes, then serve it. Two
    /// futures one after the other (`then`), so the connection's task holds the larger of the
    /// two, not both: while a request waits it holds hyper's connection and what watches it,
    /// not this `Connection` or the socket beside the connection they moved into.
    fn run(self, socket: tokio::net::TcpStream) -> impl Future<Output = ()> + Send {
        use futures_util::FutureExt;
        let (first_byte, stop) = (self.limits.header_read_timeout, self.stop.clone());
        // Its first byte within the header deadline, or it is closed: a socket that never
        // sends anything must not hold a slot.
        let opened = async move {
            let opening = tokio::select! {
                peeked = tokio::time::timeout(first_byte, opening(&socket)) => peeked.ok()??,
                () = stop.cancelled() => return None,
            };
            Some((socket, opening))
        };
        opened.then(move |opened| match opened {
            Some((socket, opening)) => Either::Left(self.serve(socket, opening)),
            None => Either::Right(std::future::ready(())),
        })
    }

    /// Serve `socket`, which opens with `opening`. The preface tells HTTP/2 apart, as
    /// hyper-util's `auto` server does, but each version is then served by its own builder: a
    /// waiting HTTP/1 request's connection task does not hold room for an HTTP/2 connection's
    /// state (about 4 KiB).
    fn serve(
        self,
        socket: tokio::net::TcpStream,
        opening: Opening,
    ) -> impl Future<Output = ()> + Send {
        let Connection {
            app,
            builders,
            peers,
            limits,
            peer,
            stop,
        } = self;
        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let body_limits = BodyLimits {
            idle: limits.body_idle_timeout,
            total: limits.body_total_timeout,
        };
        let svc = hyper::service::service_fn({
            let activity = activity.clone();
            move |req: hyper::Request<hyper::body::Incoming>| {
                let req = with_body_deadline(req, body_limits);
                let headers = req.headers();
                if let Some(proof) = headers.get(REPLICA_PROOF) {
                    peers.note_replica(peer, proof.as_bytes());
                }
                // Behind a trusted proxy each forwarded client is counted on its own.
                let counted = if peers.is_trusted_proxy(peer) {
                    let forwarded = headers.get(FORWARDED_FOR).map(|v| v.as_bytes());
                    peers.admit_request(peers.client_of(peer, forwarded))
                } else {
                    Ok(None)
                };
                let permit = match counted {
                    Ok(p) => p,
                    // Boxed: a refusal is rare, and a response inline would make room for it
                    // in the future hyper boxes for every request.
                    Err(e) => {
                        let refused: Result<_, std::convert::Infallible> = Ok(too_many(e.limit));
                        return Either::Left(Box::pin(std::future::ready(refused)));
                    }
                };
                let in_flight = InFlight::new(activity.clone(), permit);
                // Handed over now, not when first polled: the future a waiting request holds is
                // the app's, not the request beside it too.
                Either::Right(futures_util::FutureExt::map(
                    call_now(&app, req),
                    move |resp| {
                        let resp = match resp {
                            Ok(r) => r,
                            Err(never) => match never {},
                        };
                        Ok(resp.map(|inner| {
                            Body::new(Tracked {
                                inner,
                                _in_flight: in_flight,
                            })
                        }))
                    },
                ))
            }
        });
        let io = TokioIo::new(socket);
        let watch = Watch::new(stop, limits.idle_timeout, activity);
        match opening {
            // Boxed: only an HTTP/2 connection's task holds its state.
            Opening::Http2 => Either::Left(Either::Left(Driven::new(
                Box::pin(builders.http2.serve_connection(io, svc)),
                watch,
                |c| c.get_mut().as_mut().graceful_shutdown(),
            ))),
            // hyper-util's connection borrows its builder: a block that owns both (rare: the
            // preface normally comes whole).
            Opening::Unsure => Either::Left(Either::Right(async move {
                let conn = Box::pin(builders.auto.serve_connection_with_upgrades(io, svc));
                Driven::new(conn, watch, |c| c.get_mut().as_mut().graceful_shutdown()).await
            })),
            // Held in place by the task (pinned where it lies), so the task holds it once.
            Opening::Http1 => Either::Right(Driven::new(
                builders.http1.serve_connection(io, svc).with_upgrades(),
                watch,
                |c| c.graceful_shutdown(),
            )),
        }
    }
}

/// A request body's deadlines ([`ServeLimits::body_idle_timeout`] and `body_total_timeout`).
#[derive(Clone, Copy, Debug)]
struct BodyLimits {
    idle: Duration,
    total: Duration,
}

pin_project_lite::pin_project! {
    /// What decides when a connection should finish: shutdown, or no request for the idle
    /// timeout. One timer for the connection's life, moved on when it fires early.
    struct Watch {
        #[pin]
        stopped: tokio_util::sync::WaitForCancellationFutureOwned,
        #[pin]
        idle_at: tokio::time::Sleep,
        idle: Duration,
        activity: Arc<Activity>,
    }
}

impl Watch {
    fn new(
        stop: tokio_util::sync::CancellationToken,
        idle: Duration,
        activity: Arc<Activity>,
    ) -> Watch {
        Watch {
            stopped: stop.cancelled_owned(),
            idle_at: tokio::time::sleep_until(activity.idle_deadline(idle)),
            idle,
            activity,
        }
    }

    /// Ready once the connection should finish: shutdown began, or it has been idle for the
    /// idle timeout (the timer is moved on while requests come and go).
    fn poll_finish(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::task::Poll;
        let mut this = self.project();
        if this.stopped.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        while this.idle_at.as_mut().poll(cx).is_ready() {
            let at = this.activity.idle_deadline(*this.idle);
            if at <= Instant::now() {
                return Poll::Ready(());
            }
            this.idle_at.as_mut().reset(at);
        }
        Poll::Pending
    }
}

pin_project_lite::pin_project! {
    /// `conn` served until it ends; once its [`Watch`] says so, asked to finish (`graceful`
    /// starts that) and served on while it still has requests in flight.
    struct Driven<C, G> {
        #[pin]
        conn: C,
        #[pin]
        watch: Watch,
        graceful: G,
        closing: bool,
    }
}

impl<C: Future, G: Fn(std::pin::Pin<&mut C>)> Driven<C, G> {
    fn new(conn: C, watch: Watch, graceful: G) -> Self {
        Driven {
            conn,
            watch,
            graceful,
            closing: false,
        }
    }
}

impl<C: Future, G: Fn(std::pin::Pin<&mut C>)> Future for Driven<C, G> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::task::Poll;
        let mut this = self.project();
        loop {
            if this.conn.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            if *this.closing || this.watch.as_mut().poll_finish(cx).is_pending() {
                return Poll::Pending;
            }
            (this.graceful)(this.conn.as_mut());
            *this.closing = true;
        }
    }
}

/// `app`'s answer to `req`, the request handed over at once when `app` is ready (axum's router
/// and im's stack always are); else it waits for readiness, boxed (so only then does the future
/// hold the request).
fn call_now<A: App>(
    app: &A,
    req: Request,
) -> Either<A::Future, std::pin::Pin<Box<tower::util::Oneshot<A, Request>>>> {
    let mut app = app.clone();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match tower::Service::poll_ready(&mut app, &mut cx) {
        std::task::Poll::Ready(Ok(())) => Either::Left(tower::Service::call(&mut app, req)),
        std::task::Poll::Ready(Err(never)) => match never {},
        std::task::Poll::Pending => Either::Right(Box::pin(app.oneshot(req))),
    }
}

/// A request body must keep arriving (no pause over the idle limit) and arrive whole within the
/// total limit; otherwise reading it fails (answered 400 by the handler). A timer is armed only
/// while the body is waiting for bytes, so a body that is already there costs none.
fn with_body_deadline(req: hyper::Request<hyper::body::Incoming>, limits: BodyLimits) -> Request {
    use axum::http::Method;
    if req.method() == Method::GET
        || req.method() == Method::HEAD
        || hyper::body::Body::is_end_stream(req.body())
    {
        return req.map(Body::new);
    }
    req.map(|inner| {
        Body::new(DeadlineBody {
            inner: Body::new(inner),
            idle: limits.idle,
            deadline: Instant::now() + limits.total,
            timer: None,
            failed: false,
        })
    })
}

/// A request body with an idle and a total deadline.
struct DeadlineBody {
    inner: Body,
    idle: Duration,
    deadline: Instant,
    /// Armed when the body first waits, dropped when bytes arrive (so it measures idleness).
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    failed: bool,
}

impl hyper::body::Body for DeadlineBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            this.timer = None;
            return Poll::Ready(frame);
        }
        let (idle, deadline) = (this.idle, this.deadline);
        let timer = this.timer.get_or_insert_with(|| {
            Box::pin(tokio::time::sleep_until(
                (Instant::now() + idle).min(deadline),
            ))
        });
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                this.failed = true;
                Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "reading the request body timed out",
                )))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes and Docker send).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
