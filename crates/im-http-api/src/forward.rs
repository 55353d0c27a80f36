//! Distributed mode's frontend: a replica that does not schedule forwards every request that
//! needs the scheduler (inference, jobs, the fleet's views) to the replica that does, as it
//! arrived, and passes the answer back as it comes (streams included; a WebSocket session is
//! relayed message by message). While no scheduler
//! answers (the old one died, the lease has not lapsed yet) the request waits here, then goes to
//! the new one: a request a surviving replica accepted is never lost to a failover; it runs
//! again if the dead scheduler had started it.
//!
//! Local to every replica: health, readiness, its own metrics, the docs and the dashboard's page,
//! a reload of its own configuration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use im_cluster::Role;
use im_service::ErrorType;
use tokio::sync::watch;

use crate::error::HttpError;

/// Set on a forwarded request (to the sending replica's id): the receiver serves it or answers
/// [`NOT_SCHEDULER`], never forwards it again.
pub const FORWARDED: &str = "x-im-forwarded-by";
/// Set on a 503 from a replica that was sent work but does not schedule (its sender's view of
/// the lease was stale): the sender waits for the lease to settle and sends it again.
pub const NOT_SCHEDULER: &str = "x-im-not-scheduler";

/// What the forwarding layer needs.
#[derive(Clone, Debug)]
pub struct Forwarder {
    role: watch::Receiver<Role>,
    replica: String,
    client: reqwest::Client,
    /// How long a request waits for a scheduler before 503.
    failover_wait: Duration,
    /// How long to wait for the lease to change after a scheduler failed to answer, before
    /// trying the same one again.
    lease: Duration,
    body_limit: usize,
    /// Set when this replica shuts down: work forwarded to it is sent back (it drains what it
    /// has, then releases the lease, and the followers send that work to the next scheduler).
    draining: Arc<std::sync::atomic::AtomicBool>,
    metrics: im_metrics::Metrics,
    /// `x-im-replica`: proves this replica to the scheduler's listener (exempt from its per-peer
    /// cap), when the cluster has a secret.
    proof: Option<HeaderValue>,
    /// The service, whose keys a follower checks before it reads a body.
    service: im_service::Service,
    /// The largest body of the open inbound-webhook route.
    ingest_limit: usize,
}

/// The largest body a follower reads for an open route other than inbound webhooks (they take
/// none; a body sent anyway is not worth holding for nobody).
const OPEN_BODY_LIMIT: usize = 64 * 1024;

impl Forwarder {
    /// A forwarder for replica `replica` following `role`, checking keys with `service`'s.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        service: im_service::Service,
        ingest_limit: usize,
        role: watch::Receiver<Role>,
        replica: String,
        lease: Duration,
        failover_wait: Duration,
        body_limit: usize,
        draining: Arc<std::sync::atomic::AtomicBool>,
        metrics: im_metrics::Metrics,
        proof: Option<String>,
    ) -> Forwarder {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .no_proxy()
            .build()
            .expect("an HTTP client without TLS or proxies builds");
        Forwarder {
            role,
            replica,
            client,
            failover_wait,
            lease,
            body_limit,
            draining,
            metrics,
            proof: proof.and_then(|p| HeaderValue::from_str(&p).ok()),
            service,
            ingest_limit,
        }
    }

    /// Before a follower reads a byte of a body: the key and scope of a keyed route (401 or 403
    /// answered here, the body never read), or the small limit of an open route; the most body
    /// it may then buffer.
    fn admit(&self, parts: &axum::http::request::Parts) -> Result<usize, HttpError> {
        use crate::routes::Access;
        match crate::routes::access(parts.uri.path()) {
            Access::Signed => Ok(self.ingest_limit),
            Access::Open | Access::Session => Ok(OPEN_BODY_LIMIT),
            Access::Key { scope, .. } => {
                self.service
                    .authorize(crate::state::key_of(&parts.headers), scope, false)
                    .map_err(HttpError)?;
                Ok(self.body_limit)
            }
        }
    }

    /// Wait until the lease names a holder other than epoch `failed` (or any holder when `None`),
    /// at most `limit`; the role then.
    async fn settle(&self, failed: Option<u64>, limit: Duration) -> Role {
        let mut role = self.role.clone();
        let moved = |r: &Role| match (r.holder(), failed) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(h), Some(e)) => h.epoch != e,
        };
        let _ = tokio::time::timeout(limit, role.wait_for(moved)).await;
        role.borrow().clone()
    }
}

/// The middleware: serve here when this replica schedules (or the route is local), else forward.
pub async fn forward(State(f): State<Arc<Forwarder>>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/ready" && *f.role.borrow() == Role::Unknown {
        // Nothing queued here could be served: no replica is known to schedule.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"ready": false,
                "cluster": "no scheduling replica is known (is Redis reachable?)"})),
        )
            .into_response();
    }
    if crate::routes::runs_here(req.uri().path()) {
        return next.run(req).await;
    }
    if req.headers().contains_key(FORWARDED) {
        // Sent here by a replica that believes this one schedules.
        if !f.schedules() || f.draining.load(std::sync::atomic::Ordering::Acquire) {
            return not_scheduler(&f.replica);
        }
        return next.run(req).await;
    }
    if req.headers().contains_key(axum::http::header::UPGRADE) && !f.schedules() {
        return websocket::relay(&f, req).await;
    }
    let deadline = Instant::now() + f.failover_wait;
    let (parts, body) = req.into_parts();
    // Whoever forwards reads no body before the key says who sends it (the scheduler checks it
    // again, and charges its limits).
    let body_limit = if f.schedules() {
        f.body_limit
    } else {
        match f.admit(&parts) {
            Ok(limit) => limit,
            Err(refused) => return refused.into_response(),
        }
    };
    let mut body = Some(body);
    let mut buffered: Option<bytes::Bytes> = None;
    let mut role = f.role.borrow().clone();
    let mut last_error = String::from("no scheduler is known yet");
    let mut attempts = 0u32;
    loop {
        let failed = match &role {
            Role::Scheduler(_) => {
                let body = match buffered.take() {
                    Some(b) => Body::from(b),
                    None => body.take().unwrap_or_default(),
                };
                return next.run(Request::from_parts(parts, body)).await;
            }
            Role::Unknown => None,
            Role::Follower(holder) => {
                if buffered.is_none() {
                    let limit = body_limit.min(f.body_limit);
                    let raw = body.take().unwrap_or_default();
                    match axum::body::to_bytes(raw, limit).await {
                        Ok(b) => buffered = Some(b),
                        Err(_) => {
                            return HttpError::new(
                                ErrorType::PayloadTooLarge,
                                format!("the request body is over {limit} bytes"),
                            )
                            .into_response();
                        }
                    }
                }
                let bytes = buffered.clone().unwrap_or_default();
                if attempts > 0 {
                    f.metrics.cluster().forwarded("resent");
                }
                attempts += 1;
                // A scheduler that stalls (paused, hung) is replaced when its lease lapses: stop
                // waiting for it then and send the request to its successor.
                let mut watch = f.role.clone();
                let moved = watch.wait_for(|r| r.holder().is_some_and(|h| h.epoch != holder.epoch));
                tokio::select! {
                    answer = send(&f, &holder.url, &parts, bytes) => match answer {
                        Ok(r) if !r.headers().contains_key(NOT_SCHEDULER) => {
                            f.metrics.cluster().forwarded("answered");
                            return im_edge::proxy::relay(r);
                        }
                        Ok(_) => last_error = format!("{} no longer schedules", holder.url),
                        Err(e) => {
                            last_error = format!("the scheduler at {} did not answer: {e}", holder.url);
                        }
                    },
                    _ = moved => {
                        last_error = format!("the scheduler at {} was replaced while it held the request", holder.url);
                    }
                }
                tracing::warn!(error = %last_error, epoch = holder.epoch, "forwarding failed; waiting for the scheduler lease");
                Some(holder.epoch)
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            f.metrics.cluster().forwarded("unavailable");
            return HttpError::new(
                ErrorType::UpstreamUnavailable,
                format!(
                    "no scheduling replica answered within {:.0}s: {last_error}",
                    f.failover_wait.as_secs_f64()
                ),
            )
            .into_response();
        }
        role = f.settle(failed, left.min(f.lease)).await;
    }
}

impl Forwarder {
    fn schedules(&self) -> bool {
        matches!(&*self.role.borrow(), Role::Scheduler(_))
    }
}

fn not_scheduler(replica: &str) -> Response {
    let mut r = HttpError::new(
        ErrorType::UpstreamUnavailable,
        format!("replica {replica} does not schedule; the sender retries on the one that does"),
    )
    .into_response();
    r.headers_mut()
        .insert(NOT_SCHEDULER, HeaderValue::from_static("1"));
    r
}

async fn send(
    f: &Forwarder,
    base: &str,
    parts: &axum::http::request::Parts,
    body: bytes::Bytes,
) -> Result<reqwest::Response, reqwest::Error> {
    let replica = HeaderValue::from_str(&f.replica).unwrap_or(HeaderValue::from_static("?"));
    let mut extra = vec![(FORWARDED, replica)];
    if let Some(p) = &f.proof {
        extra.push((im_edge::fence::REPLICA, p.clone()));
    }
    im_edge::proxy::send(&f.client, base, parts, body, &extra).await
}

/// A WebSocket session through a follower: the follower checks the client's key against its own
/// keys (in the upgrade's headers, or in the `auth` message that opens the session), opens a
/// session to the scheduler with the client's credentials (the scheduler checks each message's
/// scope and charges it), then passes messages both ways until either side closes, or until a
/// reload here revokes the key. A failover ends the session; the client connects again.
mod websocket {
    use axum::extract::FromRequestParts;
    use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

    use super::*;

    pub(super) async fn relay(f: &Forwarder, req: Request) -> Response {
        let Some(holder) = f.role.borrow().holder().cloned() else {
            return HttpError::new(
                ErrorType::UpstreamUnavailable,
                "no scheduling replica is known yet; connect again shortly",
            )
            .into_response();
        };
        let (mut parts, _) = req.into_parts();
        // This replica's keys are in force here, whatever the scheduler's say.
        let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(u) => u,
            Err(e) => return e.into_response(),
        };
        let who = match crate::state::key_of(&parts.headers) {
            Some(k) => match f.service.authenticate(Some(k), false) {
                Ok(who) => Some(who),
                // As the scheduler answers it: the session opens and closes with 4001.
                Err(_) => {
                    return upgrade.on_upgrade(|client| async move {
                        let mut client = client;
                        let frame = ws::CloseFrame {
                            code: crate::ws::CLOSE_UNAUTHORIZED,
                            reason: "wrong API key".into(),
                        };
                        let _ = client.send(ws::Message::Close(Some(frame))).await;
                    });
                }
            },
            None if !f.service.auth_enabled() => Some(im_service::Principal::anonymous()),
            None => None,
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let url = format!(
            "ws{}{path}",
            holder.url.trim_end_matches('/').trim_start_matches("http")
        );
        let Ok(mut request) = url.as_str().into_client_request() else {
            return HttpError::new(
                ErrorType::Internal,
                format!("the scheduler's URL {url} is no WebSocket URL"),
            )
            .into_response();
        };
        for name in ["x-api-key", "authorization", "x-request-id", "traceparent"] {
            if let Some(v) = parts.headers.get(name) {
                request.headers_mut().insert(name, v.clone());
            }
        }
        if let Ok(me) = HeaderValue::from_str(&f.replica) {
            request.headers_mut().insert(FORWARDED, me);
        }
        if let Some(p) = &f.proof {
            request
                .headers_mut()
                .insert(im_edge::fence::REPLICA, p.clone());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((upstream, _)) => {
                let service = f.service.clone();
                upgrade.on_upgrade(move |client| pump(client, upstream, service, who))
            }
            Err(tungstenite::Error::Http(refused)) => {
                // The scheduler's own refusal (401, 429, ...), passed on as it said it.
                let (head, body) = refused.into_parts();
                let mut r = Response::new(Body::from(body.unwrap_or_default()));
                *r.status_mut() = head.status;
                *r.headers_mut() = head.headers;
                r
            }
            Err(e) => HttpError::new(
                ErrorType::UpstreamUnavailable,
                format!(
                    "the scheduling replica at {} did not take the WebSocket session: {e}",
                    holder.url
                ),
            )
            .into_response(),
        }
    }

    type Upstream = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    /// The key an `auth` message carries, checked here: who it is, or `None` (refused).
    fn auth_message(service: &im_service::Service, text: &str) -> Option<im_service::Principal> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        if v["type"] != "auth" {
            return None;
        }
        service
            .authenticate(v["api_key"].as_str().map(str::as_bytes), false)
            .ok()
    }

    async fn pump(
        client: WebSocket,
        upstream: Upstream,
        service: im_service::Service,
        mut who: Option<im_service::Principal>,
    ) {
        let (to_client, mut from_client) = client.split();
        let to_client = tokio::sync::Mutex::new(to_client);
        let (mut to_upstream, mut from_upstream) = upstream.split();
        let refuse = |reason: &'static str| async {
            let frame = ws::CloseFrame {
                code: crate::ws::CLOSE_UNAUTHORIZED,
                reason: reason.into(),
            };
            let _ = to_client
                .lock()
                .await
                .send(ws::Message::Close(Some(frame)))
                .await;
        };
        let mut keys_changed = service.watch_keys();
        let checked = std::sync::Mutex::new(who.clone());
        let up = async {
            while let Some(Ok(m)) = from_client.next().await {
                if who.is_none() {
                    // The session's first message must be `auth`, with a key in force here.
                    let ws::Message::Text(t) = &m else {
                        refuse("send auth first").await;
                        break;
                    };
                    match auth_message(&service, t.as_str()) {
                        Some(k) => who = Some(k),
                        None => {
                            refuse("wrong API key").await;
                            break;
                        }
                    }
                }
                *checked.lock().unwrap_or_else(|p| p.into_inner()) = who.clone();
                let m = match m {
                    ws::Message::Text(t) => tungstenite::Message::text(t.as_str()),
                    ws::Message::Binary(b) => tungstenite::Message::binary(b),
                    ws::Message::Ping(b) => tungstenite::Message::Ping(b),
                    ws::Message::Pong(b) => tungstenite::Message::Pong(b),
                    ws::Message::Close(c) => {
                        let frame = c.map(|c| tungstenite::protocol::CloseFrame {
                            code: c.code.into(),
                            reason: c.reason.as_str().into(),
                        });
                        let _ = to_upstream.send(tungstenite::Message::Close(frame)).await;
                        break;
                    }
                };
                if to_upstream.send(m).await.is_err() {
                    break;
                }
            }
        };
        let down = async {
            while let Some(Ok(m)) = from_upstream.next().await {
                let m = match m {
                    tungstenite::Message::Text(t) => ws::Message::text(t.as_str()),
                    tungstenite::Message::Binary(b) => ws::Message::binary(b),
                    tungstenite::Message::Ping(b) => ws::Message::Ping(b),
                    tungstenite::Message::Pong(b) => ws::Message::Pong(b),
                    tungstenite::Message::Close(c) => {
                        // The scheduler's close code and reason reach the client (4001: a wrong key).
                        let frame = c.map(|c| ws::CloseFrame {
                            code: c.code.into(),
                            reason: c.reason.as_str().into(),
                        });
                        let _ = to_client.lock().await.send(ws::Message::Close(frame)).await;
                        break;
                    }
                    tungstenite::Message::Frame(_) => continue,
                };
                if to_client.lock().await.send(m).await.is_err() {
                    break;
                }
            }
        };
        // A reload here that removes the session's key ends it.
        let revoked = async {
            while keys_changed.changed().await.is_ok() {
                let current = checked.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if current.is_some_and(|who| service.check_key(&who).is_err()) {
                    refuse("API key revoked").await;
                    return;
                }
            }
            std::future::pending::<()>().await;
        };
        // Either side closing ends the session (the other side gets the close).
        tokio::select! {
            () = up => {}
            () = down => {}
            () = revoked => {}
        }
    }
}
