//! Passing an HTTP request on to another server and its answer back as it comes: what a follower
//! does for the scheduler (`forward`) and the fencing gate for its LocalAI (`fence`).

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// The headers that travel end to end (not the hop's own, nor a length the new hop sets).
pub(crate) fn end_to_end(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    headers
        .iter()
        .filter(|(n, _)| !HOP_BY_HOP.contains(&n.as_str()) && *n != "content-length")
}

/// Send the request `parts` with `body` to the server at `base`, with `extra` header added.
pub(crate) async fn send(
    client: &reqwest::Client,
    base: &str,
    parts: &axum::http::request::Parts,
    body: bytes::Bytes,
    extra: Option<(&'static str, HeaderValue)>,
) -> Result<reqwest::Response, reqwest::Error> {
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", axum::http::uri::PathAndQuery::as_str);
    let mut req = client
        .request(
            parts.method.clone(),
            format!("{}{path}", base.trim_end_matches('/')),
        )
        .body(body);
    for (name, value) in end_to_end(&parts.headers) {
        req = req.header(name, value);
    }
    if let Some((name, value)) = extra {
        req = req.header(name, value);
    }
    req.send().await
}

/// `r` as this server's answer, its body passed on as it arrives.
pub(crate) fn relay(r: reqwest::Response) -> Response {
    relay_with(r, Body::from_stream)
}

/// [`relay`], with the body stream passed through `wrap` first.
pub(crate) fn relay_with<S>(r: reqwest::Response, wrap: impl FnOnce(BodyStream) -> S) -> Response
where
    S: Into<Body>,
{
    let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = Response::builder().status(status);
    if let Some(h) = out.headers_mut() {
        for (name, value) in end_to_end(r.headers()) {
            h.append(name, value.clone());
        }
    }
    out.body(wrap(Box::pin(r.bytes_stream())).into())
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// An answer's body, chunk by chunk.
pub(crate) type BodyStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send>,
>;
