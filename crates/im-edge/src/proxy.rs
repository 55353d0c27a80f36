//! Passing an HTTP request on to another server and its answer back as it comes: what a follower
//! does for the scheduler and a fencing gate for its LocalAI. Paths with dot-segments are never
//! passed on (the server behind would resolve them to a route the relay was not meant to reach).

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
pub fn end_to_end(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    headers
        .iter()
        .filter(|(n, _)| !HOP_BY_HOP.contains(&n.as_str()) && *n != "content-length")
}

/// Whether `path` is safe to pass on: no `.` or `..` segment, written plainly or
/// percent-encoded, and no encoded separator (`%2f`, `%5c`) or backslash that a server behind
/// might treat as one.
pub fn is_clean_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || path.contains('\\') {
        return false;
    }
    lower
        .split('/')
        .map(|seg| seg.replace("%2e", "."))
        .all(|seg| seg != "." && seg != "..")
}

/// Send the request `parts` with `body` to the server at `base`, with the `extra` headers added.
pub async fn send(
    client: &reqwest::Client,
    base: &str,
    parts: &axum::http::request::Parts,
    body: bytes::Bytes,
    extra: &[(&'static str, HeaderValue)],
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
    for (name, value) in extra {
        req = req.header(*name, value.clone());
    }
    req.send().await
}

/// `r` as this server's answer, its body passed on as it arrives.
pub fn relay(r: reqwest::Response) -> Response {
    relay_with(r, Body::from_stream)
}

/// [`relay`], with the body stream passed through `wrap` first.
pub fn relay_with<S>(r: reqwest::Response, wrap: impl FnOnce(BodyStream) -> S) -> Response
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
pub type BodyStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send>,
>;

#[cfg(test)]
mod tests {
    use super::is_clean_path;

    #[test]
    fn dot_segments_in_any_spelling_are_not_clean() {
        for p in [
            "/system/../backend/shutdown",
            "/system/%2e%2e/backend/shutdown",
            "/system/%2E%2e/x",
            "/a/./b",
            "/a/%2e/b",
            "/models/delete/..%2fbackend",
            "/a\\..\\b",
            "/..",
        ] {
            assert!(!is_clean_path(p), "{p}");
        }
        for p in [
            "/system",
            "/models/delete/my.model",
            "/backends/a..b",
            "/x/.hidden",
        ] {
            assert!(is_clean_path(p), "{p}");
        }
    }
}
