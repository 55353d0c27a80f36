//! Serving the router on a socket with the limits a public listener needs: a cap on connections,
//! a header-read timeout (it also closes idle keep-alive connections), request bodies that must
//! keep arriving and finish within a deadline, and a shutdown that cannot hang on a long-lived
//! stream.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Connection and body limits of a listener.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServeLimits {
    /// A client must send a request's whole header within this time, and an idle keep-alive
    /// connection is closed after it.
    pub header_read_timeout: Duration,
    /// The longest pause between two pieces of a request body.
    pub body_idle_timeout: Duration,
    /// The longest time to receive a whole request body.
    pub body_total_timeout: Duration,
    /// Open connections at most; more are closed at once.
    pub max_connections: usize,
    /// After shutdown drained the queue, how long open connections (streams) may take to finish
    /// before they are closed.
    pub close_grace: Duration,
}

impl Default for ServeLimits {
    fn default() -> ServeLimits {
        ServeLimits {
            header_read_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(30),
            body_total_timeout: Duration::from_secs(300),
            max_connections: 16384,
            close_grace: Duration::from_secs(5),
        }
    }
}

/// Serve `app` on `listener` until `shutdown` resolves (the caller drains its engine inside that
/// future), then give open connections [`ServeLimits::close_grace`] and close the rest.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let app = app.layer(axum::middleware::from_fn_with_state(limits, body_deadline));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (socket, _peer) = tokio::select! {
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
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                max = limits.max_connections,
                "connection limit reached; closing a new connection"
            );
            drop(socket);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let svc = hyper::service::service_fn({
            let app = app.clone();
            move |req: hyper::Request<hyper::body::Incoming>| {
                app.clone().oneshot(req.map(Body::new))
            }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(socket), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.close_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_s = limits.close_grace.as_secs_f64(),
            "connections still open after the grace period; closing them"
        );
    }
    Ok(())
}

/// Middleware: a request body must keep arriving (no pause over the idle limit) and arrive whole
/// within the total limit; otherwise reading it fails (answered 400 by the handler). A timer is
/// armed only while the body is waiting for bytes, so a body that is already there costs none.
pub async fn body_deadline(
    State(limits): State<ServeLimits>,
    req: Request,
    next: Next,
) -> Response {
    use axum::http::Method;
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    if hyper::body::Body::is_end_stream(&body) {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let body = DeadlineBody {
        inner: body,
        idle: limits.body_idle_timeout,
        deadline: tokio::time::Instant::now() + limits.body_total_timeout,
        timer: None,
        failed: false,
    };
    next.run(Request::from_parts(parts, Body::new(body))).await
}

/// A request body with an idle and a total deadline.
struct DeadlineBody {
    inner: Body,
    idle: Duration,
    deadline: tokio::time::Instant,
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
        use std::future::Future;
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
                (tokio::time::Instant::now() + idle).min(deadline),
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
