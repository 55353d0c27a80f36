//! One policy for every way in (issue 30): each HTTP route, WebSocket message type and MCP tool
//! declares its scope in one place, `crates/im-http-api/scopes.golden` is the hand-reviewed list
//! of them, and a key without the scope is refused on every transport that reaches the entry:
//! HTTP, WebSocket, MCP and jobs (a follower's forwarding: `bins/im-http/tests/tenants.rs`).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use im_app::config::{ImConfig, KeyEntry};
use im_app::{self as app, Built, Simulate};
use im_http_api::routes::{Access, ROUTES};
use im_service::Scope;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../im-http-api/scopes.golden");

fn scope_name(s: Option<Scope>) -> &'static str {
    s.map_or("-", Scope::as_str)
}

/// The list as the code declares it.
fn declared() -> Vec<String> {
    let mut lines = Vec::new();
    for e in ROUTES {
        let access = match e.access {
            Access::Open => "open".to_owned(),
            Access::Signed => "signed".to_owned(),
            Access::Session => "session".to_owned(),
            Access::Key { scope, charge } => {
                format!(
                    "{}{}",
                    scope.as_str(),
                    if charge { "" } else { " (uncharged)" }
                )
            }
        };
        lines.push(format!("http {} {} {access}", e.methods, e.path));
    }
    for (kind, scope) in im_http_api::ws::MESSAGES {
        lines.push(format!("ws {kind} {}", scope_name(scope)));
    }
    for (tool, scope) in im_mcp_api::TOOLS {
        lines.push(format!("mcp {tool} {}", scope.as_str()));
    }
    lines
}

#[test]
fn every_route_message_and_tool_has_a_reviewed_scope() {
    let declared = declared();
    if std::env::var_os("UPDATE_SCOPES").is_some() {
        let text = format!(
            "# Every HTTP route, WebSocket message type and MCP tool with what it needs. Reviewed by\n\
             # hand: a new entry, or a changed scope, changes this file in the same commit.\n\
             # (`UPDATE_SCOPES=1 cargo test -p im-app --test scopes_table` writes it.)\n{}\n",
            declared.join("\n")
        );
        std::fs::write(GOLDEN, text).expect("write");
    }
    let golden: Vec<String> = std::fs::read_to_string(GOLDEN)
        .expect("the golden list")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    let missing: Vec<&String> = declared.iter().filter(|l| !golden.contains(l)).collect();
    let stale: Vec<&String> = golden.iter().filter(|l| !declared.contains(l)).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "scopes.golden differs from the code: not reviewed {missing:#?}, no longer declared {stale:#?}"
    );
}

#[test]
fn every_registered_tool_declares_its_scope() {
    let tools: Vec<String> = im_mcp_api::ImMcp::new(im_mcp_api::Target::Remote(
        im_mcp_api::Remote::new("http://127.0.0.1:9", None),
    ))
    .tool_names();
    let mut declared: Vec<String> = im_mcp_api::TOOLS
        .iter()
        .map(|(t, _)| (*t).to_owned())
        .collect();
    let mut registered = tools.clone();
    declared.sort();
    registered.sort();
    assert_eq!(declared, registered);
}

/// A key with every scope but `lacking`.
fn key_without(lacking: Scope) -> KeyEntry {
    KeyEntry {
        key: format!("no-{}", lacking.as_str()),
        scopes: Scope::ALL.into_iter().filter(|s| *s != lacking).collect(),
        ..KeyEntry::default()
    }
}

async fn serve() -> (String, Built) {
    let mut cfg = ImConfig::default();
    cfg.keys = Scope::ALL.into_iter().map(key_without).collect();
    let built = app::build(cfg, Some(Simulate { time_scale: 0.001 }))
        .await
        .expect("build");
    let router = im_app::http_app(&built, None);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, router).await });
    (url, built)
}

/// A concrete path for a route's pattern.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { "x" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_the_scope_is_refused_on_every_transport() {
    let (url, _built) = serve().await;
    let c = reqwest::Client::new();
    let mut checked = 0;
    // HTTP: every keyed route, with each method it answers.
    for e in ROUTES {
        let Access::Key { scope, .. } = e.access else {
            continue;
        };
        let key = format!("no-{}", scope.as_str());
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
        req.headers_mut().insert(
            "x-api-key",
            format!("no-{}", scope.as_str()).parse().expect("header"),
        );
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
        let key = format!("no-{}", scope.as_str());
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
    assert!(checked > 80, "{checked} checks");
}
