//! The fencing gate (binary `im-fence`): a small proxy in front of one LocalAI that makes the
//! scheduler lease's guarantee hold even for a scheduler that was paused past its lease.
//!
//! Every call a scheduling replica makes carries its lease's epoch in `x-im-fence`. The gate keeps
//! the largest epoch seen; a call with an older one is refused (409 `stale_fence`) and never
//! reaches LocalAI, and a call already running for an older epoch is cut (its upstream connection
//! dropped, which stops the generation; its client sees the body end in an error) the moment a
//! newer epoch arrives. So LocalAI never runs the work of two schedulers at once. Calls without
//! the header (health checks, other clients) pass unfenced.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::watch;

/// The header a scheduler's upstream calls carry its fencing token in.
pub const FENCE: &str = "x-im-fence";

#[derive(Clone)]
struct Gate {
    upstream: String,
    client: reqwest::Client,
    newest: Arc<watch::Sender<u64>>,
    body_limit: usize,
}

/// The gate in front of the LocalAI at `upstream`, taking bodies up to `body_limit` bytes.
pub fn gate(upstream: String, body_limit: usize) -> Router {
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true)
        .no_proxy()
        .build()
        .expect("an HTTP client without TLS or proxies builds");
    Router::new().fallback(pass).with_state(Gate {
        upstream,
        client,
        newest: Arc::new(watch::channel(0).0),
        body_limit,
    })
}

fn refuse(status: StatusCode, message: String, kind: &str) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message, "type": kind}});
    (status, axum::Json(body)).into_response()
}

async fn pass(State(g): State<Gate>, req: Request) -> Response {
    let token = req
        .headers()
        .get(FENCE)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(t) = token {
        g.newest.send_if_modified(|n| {
            let newer = t > *n;
            if newer {
                *n = t;
            }
            newer
        });
        let newest = *g.newest.borrow();
        if t < newest {
            return stale(t, newest);
        }
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, g.body_limit).await else {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {} bytes", g.body_limit),
            "invalid_request",
        );
    };
    let sent = crate::proxy::send(&g.client, &g.upstream, &parts, bytes, None);
    let Some(t) = token else {
        return match sent.await {
            Ok(r) => crate::proxy::relay(r),
            Err(e) => unreachable_upstream(&e),
        };
    };
    tokio::select! {
        answer = sent => match answer {
            Ok(r) => crate::proxy::relay_with(r, |body| Body::from_stream(until_superseded(body, superseded(&g, t)))),
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
    body: crate::proxy::BodyStream,
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
    )
}

fn unreachable_upstream(e: &reqwest::Error) -> Response {
    refuse(
        StatusCode::BAD_GATEWAY,
        format!("the upstream did not answer: {e}"),
        "upstream_unreachable",
    )
}
