//! The gate: a small proxy in front of one LocalAI that makes the scheduler lease's guarantee
//! hold even for a scheduler that was paused past its lease, and that nobody without the
//! cluster's secret can turn against the real scheduler.
//!
//! Every call a scheduling replica makes carries its lease's epoch in `x-im-fence`, signed with
//! the cluster's secret (`im_edge::fence`). The gate keeps the largest epoch it has verified; a
//! call with an older one is refused (409 `stale_fence`) and never reaches LocalAI, and a call
//! already running for an older epoch is cut (its upstream connection dropped, which stops the
//! generation; its client sees the body end in an error) the moment a newer epoch arrives. So
//! LocalAI never runs the work of two schedulers at once (reads, `GET` and `HEAD`, pass with an
//! older token: they change nothing). Every refusal carries the highest epoch
//! seen (`x-im-fence-highest`): a scheduler whose epoch went backwards because Redis lost its data
//! raises its epoch above it (ARCHITECTURE.md, "Fencing").
//!
//! With a secret, a call that is not a read (`GET`, `HEAD`) needs a token the gate can verify:
//! one missing or unsigned is refused (401 `unsigned_fence`). Reads pass without one (health
//! checks, model listings, discovery), with a small body limit. Paths with dot-segments are
//! refused (400). Without a secret (not recommended; the binary warns) any numeric token counts.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use im_edge::fence::{self, FenceSecret};
use serde_json::json;
use tokio::sync::watch;

/// The largest body of a call that carries no verified token (a read).
const UNFENCED_BODY_LIMIT: usize = 64 * 1024;

/// How a gate is set up.
#[derive(Clone, Debug)]
pub struct GateSettings {
    /// The LocalAI behind the gate.
    pub upstream: String,
    /// The largest request body passed on, in bytes.
    pub body_limit: usize,
    /// The cluster's secret; without it any numeric token counts.
    pub secret: Option<FenceSecret>,
}

#[derive(Clone)]
struct Gate {
    settings: Arc<GateSettings>,
    client: reqwest::Client,
    newest: Arc<watch::Sender<u64>>,
}

/// The gate with `settings`.
pub fn gate(settings: GateSettings) -> Router {
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true)
        .no_proxy()
        .build()
        .expect("an HTTP client without TLS or proxies builds");
    Router::new().fallback(pass).with_state(Gate {
        settings: Arc::new(settings),
        client,
        newest: Arc::new(watch::channel(0).0),
    })
}

fn refuse(status: StatusCode, message: String, kind: &str, highest: u64) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message, "type": kind}});
    let mut r = (status, axum::Json(body)).into_response();
    r.headers_mut()
        .insert(fence::HIGHEST, HeaderValue::from(highest));
    r
}

/// A call that must carry a signed token and does not.
struct Unsigned;

/// The epoch a call carries, if any, or the refusal of a call that must carry one.
fn token_of(g: &Gate, req: &Request) -> Result<Option<u64>, Unsigned> {
    let header = req
        .headers()
        .get(fence::HEADER)
        .and_then(|v| v.to_str().ok());
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let Some(secret) = &g.settings.secret else {
        return Ok(header.and_then(fence::unsigned_epoch));
    };
    match header.and_then(|h| secret.verify(h)) {
        Some(epoch) => Ok(Some(epoch)),
        None if read => Ok(None),
        None => Err(Unsigned),
    }
}

async fn pass(State(g): State<Gate>, req: Request) -> Response {
    if !im_edge::proxy::is_clean_path(req.uri().path()) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "paths with dot-segments are not passed on".into(),
            "invalid_request",
            *g.newest.borrow(),
        );
    }
    let token = match token_of(&g, &req) {
        Ok(t) => t,
        Err(Unsigned) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "this gate passes only calls with a fencing token signed with the cluster's secret (set `cluster.fence_secret` / IM_FENCE_SECRET on im)".into(),
                "unsigned_fence",
                *g.newest.borrow(),
            );
        }
    };
    // A read changes nothing upstream: refusing an older scheduler's health check or model
    // listing would only make it think its upstream down (its first calls after it took over
    // from a Redis that lost its data). It passes as an unfenced read; the scheduler's next
    // write is refused and raises its epoch.
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let token = match token {
        Some(t) => {
            g.newest.send_if_modified(|n| {
                let newer = t > *n;
                if newer {
                    *n = t;
                }
                newer
            });
            let newest = *g.newest.borrow();
            match (t < newest, read) {
                (true, true) => None,
                (true, false) => return stale(t, newest),
                (false, _) => Some(t),
            }
        }
        None => None,
    };
    let limit = if token.is_some() {
        g.settings.body_limit
    } else {
        UNFENCED_BODY_LIMIT.min(g.settings.body_limit)
    };
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {limit} bytes"),
            "invalid_request",
            *g.newest.borrow(),
        );
    };
    let sent = im_edge::proxy::send(&g.client, &g.settings.upstream, &parts, bytes, &[]);
    let Some(t) = token else {
        return match sent.await {
            Ok(r) => im_edge::proxy::relay(r),
            Err(e) => unreachable_upstream(&e),
        };
    };
    tokio::select! {
        answer = sent => match answer {
            Ok(r) => im_edge::proxy::relay_with(r, |body| Body::from_stream(until_superseded(body, superseded(&g, t)))),
            Err(e) => unreachable_upstream(&e),
        },
        () = superseded(&g, t) => stale(t, *g.newest.borrow()),
    }
}

/// Resolves once an epoch newer than `t` has been seen.
fn superseded(g: &Gate, t: u64) -> impl Future<Output = ()> + Send + 'static {
    let mut newest = g.newest.subscribe();
    async move {
        let _ = newest.wait_for(|n| *n > t).await;
    }
}

/// `body` until `cut` resolves; then one error, which aborts the response.
fn until_superseded(
    body: im_edge::proxy::BodyStream,
    cut: impl Future<Output = ()> + Send + 'static,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold(
        (body, Box::pin(cut), false),
        |(mut body, mut cut, ended)| async move {
            if ended {
                return None;
            }
            tokio::select! {
                item = body.next() => item.map(|i| (i.map_err(std::io::Error::other), (body, cut, false))),
                () = &mut cut => Some((
                    Err(std::io::Error::other("cut: a scheduler with a newer fencing token took over")),
                    (body, cut, true),
                )),
            }
        },
    )
}

fn stale(t: u64, newest: u64) -> Response {
    refuse(
        StatusCode::CONFLICT,
        format!("stale fencing token {t}: a scheduler with token {newest} took over"),
        "stale_fence",
        newest,
    )
}

fn unreachable_upstream(e: &reqwest::Error) -> Response {
    let body = json!({"error": {"code": 502, "message": format!("the upstream did not answer: {e}"), "type": "upstream_unreachable"}});
    (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response()
}
