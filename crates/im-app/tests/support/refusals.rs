//! The refusal check both the in-process and the real-process tests run (included by path):
//! for every keyed route, WebSocket message type and MCP tool in the route table, a key that
//! lacks the entry's scope is refused, over every transport that reaches the entry.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use im_http_api::routes::{Access, ROUTES};
use im_service::Scope;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The key the check uses for an entry needing `lacking`: it has every scope but that one.
pub fn key_lacking(lacking: Scope) -> String {
    format!("no-{}", lacking.as_str())
}

/// The keys [`refused_everywhere`] needs, as `(key, scopes)`.
pub fn keys_lacking_each_scope() -> Vec<(String, Vec<Scope>)> {
    Scope::ALL
        .into_iter()
        .map(|lacking| {
            let scopes = Scope::ALL.into_iter().filter(|s| *s != lacking).collect();
            (key_lacking(lacking), scopes)
        })
        .collect()
}

/// A concrete path for a route's pattern.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { "x" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

/// Checks every entry through `url` (a replica that serves it or forwards it): HTTP with each
/// method, the job a route may stand for, each WebSocket message type, each MCP tool. Returns
/// how many refusals it saw.
pub async fn refused_everywhere(url: &str) -> usize {
    let c = reqwest::Client::new();
    let mut checked = 0;
    // HTTP: every keyed route, with each method it answers.
    for e in ROUTES {
        let Access::Key { scope, .. } = e.access else {
            continue;
        };
        let key = key_lacking(scope);
        for method in e.methods.split(' ') {
            let method = if method == "ANY" { "GET" } else { method };
            let r = c
                .request(
                    method.parse().expect("method"),
                    format!("{url}{}", concrete(e.path)),
                )
                .header("x-api-key", &key)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .expect("answered");
            assert_eq!(
                r.status(),
                403,
                "{method} {} for a key without `{}`",
                e.path,
                scope.as_str()
            );
            checked += 1;
        }
        // Jobs: a route a job may stand for is refused as a job too.
        if e.job.is_some() {
            let r = c
                .post(format!("{url}/v1/jobs"))
                .header("x-api-key", &key)
                .json(&json!({"route": e.path, "body": {}}))
                .send()
                .await
                .expect("answered");
            assert_eq!(
                r.status(),
                403,
                "a job of {} for a key without `{}`",
                e.path,
                scope.as_str()
            );
            checked += 1;
        }
    }
    // WebSocket: every message type that needs a scope.
    for (kind, scope) in im_http_api::ws::MESSAGES {
        let Some(scope) = scope else { continue };
        let mut req = format!("{}/ws/scopes", url.replace("http://", "ws://"))
            .into_client_request()
            .expect("request");
        req.headers_mut()
            .insert("x-api-key", key_lacking(scope).parse().expect("header"));
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("upgrade");
        let msg = json!({"type": kind, "id": 1, "topics": ["queue"], "model": "llama-3.2-3b-instruct", "inputs": "hi"});
        ws.send(Message::Text(msg.to_string().into()))
            .await
            .expect("send");
        let answer = loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    break serde_json::from_str::<Value>(&t).expect("JSON");
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("{kind}: no answer: {other:?}"),
            }
        };
        assert_eq!(
            answer["error"]["type"],
            "forbidden",
            "ws {kind} for a key without `{}`: {answer}",
            scope.as_str()
        );
        checked += 1;
    }
    // MCP: every tool, for a key that may reach /mcp (it has `infer`) but lacks the tool's scope.
    for (tool, scope) in im_mcp_api::TOOLS {
        let key = key_lacking(scope);
        let mut cfg = StreamableHttpClientTransportConfig::with_uri(format!("{url}/mcp"));
        cfg.auth_header = Some(key.clone());
        let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), cfg);
        match ().serve(transport).await {
            // Without `infer` the MCP endpoint itself refuses it.
            Err(e) => assert_eq!(scope, Scope::Infer, "{tool}: {e}"),
            Ok(client) => {
                let mut p = CallToolRequestParams::new(tool);
                p.arguments = json!({"model": "llama-3.2-3b-instruct", "prompt": "hi", "task": "txt2txt", "name": "default"})
                    .as_object()
                    .cloned();
                let r = client.call_tool(p).await.expect("tools/call answered");
                let text = format!("{:?}", r.content);
                assert!(
                    r.is_error == Some(true) && text.contains("forbidden"),
                    "mcp {tool} for a key without `{}`: {text}",
                    scope.as_str()
                );
            }
        }
        checked += 1;
    }
    checked
}
