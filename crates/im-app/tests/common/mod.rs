//! What the router tests share: a JSON POST with the demo key, answered in full; im on a
//! loopback socket.

#![allow(dead_code)]

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use im_app::DEMO_KEY;
use serde_json::Value;
use tower::ServiceExt;

/// `POST path` with `body` as JSON and the demo key: the status, headers and body bytes.
pub async fn post_json(app: &Router, path: &str, body: &Value) -> (StatusCode, HeaderMap, Bytes) {
    let req = Request::post(path)
        .header("x-api-key", DEMO_KEY)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, headers, bytes)
}

/// `built` served over HTTP (with MCP mounted) on a free loopback port; its base URL.
pub async fn listen(built: &im_app::Built) -> String {
    let router = im_app::http_app(built, None);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, router).await });
    url
}

/// An MCP client of im at `url` with key `k`.
pub async fn mcp(url: &str, k: &str) -> rmcp::service::RunningService<rmcp::RoleClient, ()> {
    let mut cfg =
        rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
            format!("{url}/mcp"),
        );
    cfg.auth_header = Some(k.to_owned());
    let transport =
        rmcp::transport::StreamableHttpClientTransport::with_client(reqwest::Client::new(), cfg);
    rmcp::ServiceExt::serve((), transport)
        .await
        .expect("initialize")
}

/// A tool's answer: whether it is an error, and its text.
pub async fn tool(
    c: &rmcp::service::RunningService<rmcp::RoleClient, ()>,
    name: &'static str,
    args: Value,
) -> (bool, String) {
    let mut p = rmcp::model::CallToolRequestParams::new(name);
    p.arguments = args.as_object().cloned();
    let r = c.call_tool(p).await.expect("tools/call answered");
    let text = r
        .content
        .iter()
        .filter_map(|c| match c {
            rmcp::model::ContentBlock::Text(t) => Some(t.text.clone()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n");
    (r.is_error == Some(true), text)
}
