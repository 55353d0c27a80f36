//! The one path of a JSON route over HTTP: the body read within its limit, handed to the service
//! ([`im_service::Service::respond`]: parsed, validated, run, answered in the route's shape), and
//! the answer written out: its bytes with im's figures as headers, or a stream as server-sent
//! events. Handlers are one line each over `json_route`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use im_service::{Answer, Caller, ErrorType, Route, ServiceError};

use crate::error::HttpError;
use crate::figures::figure_headers;
use crate::state::{AppState, Arrived};

/// The body, or the error for a body that could not be read (413 over the limit).
pub fn body(b: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ServiceError> {
    b.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(limit)
        } else {
            ServiceError::invalid("body", r.body_text())
        }
    })
}

/// A body over `limit` bytes.
pub(crate) fn too_large(limit: usize) -> ServiceError {
    ServiceError::new(
        ErrorType::PayloadTooLarge,
        format!("the body is over the limit of {limit} bytes"),
    )
}

/// Serve `route`: its body as the service's request, run as `caller`, answered.
pub(crate) async fn json_route(
    route: Route,
    st: &AppState,
    caller: &Caller,
    arrived: Arrived,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let bytes = body(b, st.service.body_limit())?;
    serve(route, st, caller, arrived, bytes).await
}

/// Serve a `POST` to a JSON route as [`crate::state::CallerLayer`] hands it over, without axum's
/// router: what its handler does (the body read within the limit, [`json_route`]'s answer), with
/// a panic answered as the router's panic layer answers it.
///
/// A plain function returning a block, not an `async fn`: an `async fn`'s future holds its
/// arguments twice; the block holds what it captures once, and the request's head not at all.
pub(crate) fn direct(
    st: AppState,
    route: Route,
    caller: Caller,
    arrived: Arrived,
    body: axum::body::Body,
) -> impl std::future::Future<Output = Response> + Send {
    use futures_util::FutureExt;
    async move {
        let answer = async {
            let bytes = read_body(body, st.service.body_limit()).await?;
            serve(route, &st, &caller, arrived, bytes).await
        };
        match std::panic::AssertUnwindSafe(answer).catch_unwind().await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => axum::response::IntoResponse::into_response(e),
            Err(panic) => crate::panic_response(panic),
        }
    }
}

/// A request body read whole within `limit`, with the errors axum's `Bytes` extractor gives
/// ([`body`]): 413 over the limit, else 400 naming the body. A body that comes in one piece (a
/// small request's, usually) is that piece: nothing gathered, nothing copied. Done as soon as
/// the body says it has ended (its declared length read), not one poll of the body later.
async fn read_body(mut body: axum::body::Body, limit: usize) -> Result<Bytes, HttpError> {
    use http_body_util::BodyExt;
    let failed = |e: axum::Error| {
        HttpError(ServiceError::invalid(
            "body",
            format!("Failed to buffer the request body: {e}"),
        ))
    };
    let mut first = Bytes::new();
    let mut more: Option<Vec<u8>> = None;
    while let Some(frame) = body.frame().await {
        // Trailers carry no data.
        let Ok(data) = frame.map_err(failed)?.into_data() else {
            continue;
        };
        let read = more.as_ref().map_or(first.len(), Vec::len);
        if data.len() > limit.saturating_sub(read) {
            return Err(HttpError(too_large(limit)));
        }
        match &mut more {
            Some(all) => all.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => {
                let mut all = Vec::with_capacity(first.len() + data.len());
                all.extend_from_slice(&first);
                all.extend_from_slice(&data);
                more = Some(all);
            }
        }
        if axum::body::HttpBody::is_end_stream(&body) {
            break;
        }
    }
    Ok(more.map_or(first, Bytes::from))
}

/// Serve `route` with its body read. Combinators, not an `async fn`: the future a waiting
/// request holds is the service's, with what writing its answer needs beside it.
fn serve<'a>(
    route: Route,
    st: &'a AppState,
    caller: &'a Caller,
    arrived: Arrived,
    bytes: Bytes,
) -> impl std::future::Future<Output = Result<Response, HttpError>> + 'a {
    use futures_util::FutureExt;
    use futures_util::future::Either;
    if arrived.progress {
        // Boxed: only a request in progress mode holds that future.
        return Either::Left(Box::pin(crate::progress::respond(
            route, st, caller, arrived, bytes,
        )));
    }
    Either::Right(
        st.service
            .respond(route, bytes, caller, arrived.at)
            .map(move |answer| Ok(write(st, route, answer?, caller, arrived))),
    )
}

/// How many headers a JSON answer's map has room for when it is made: its type, the four
/// figures and the request id (hyper writes the length itself). Six entries are 624 bytes, inside
/// glibc's per-thread cache of small blocks (1,032 bytes); room for more is not.
const RESPONSE_HEADERS: usize = 6;

/// An answer as an HTTP response.
pub(crate) fn write(
    st: &AppState,
    route: Route,
    answer: Answer,
    caller: &Caller,
    arrived: Arrived,
) -> Response {
    match answer {
        Answer::Body {
            status,
            content_type,
            body,
            figures,
        } => {
            // im's own types are static (no copy); an upstream's is checked.
            let ct = match content_type {
                std::borrow::Cow::Borrowed(t) => HeaderValue::from_static(t),
                std::borrow::Cow::Owned(t) => HeaderValue::from_maybe_shared(Bytes::from(t))
                    .unwrap_or(HeaderValue::from_static("application/octet-stream")),
            };
            let mut resp = Response::new(axum::body::Body::from(body));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            // Room for every header the answer gets, so none of them grows the map.
            *resp.headers_mut() = axum::http::HeaderMap::with_capacity(RESPONSE_HEADERS);
            resp.headers_mut().insert(header::CONTENT_TYPE, ct);
            if let Some(f) = figures {
                figure_headers(st, resp.headers_mut(), &f, arrived);
            }
            resp
        }
        Answer::Stream {
            stream,
            figures,
            model,
        } => {
            let mut headers = axum::http::HeaderMap::new();
            figure_headers(st, &mut headers, &figures, arrived);
            let mut resp = if route == Route::InferStream {
                crate::infer::token_events(stream, &figures, arrived, &caller.request_id, model)
            } else {
                crate::stream::chunk_events(stream)
            };
            resp.headers_mut().extend(headers);
            resp
        }
    }
}
