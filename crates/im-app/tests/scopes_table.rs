//! One policy for every way in (issue 30): each HTTP route, WebSocket message type and MCP tool
//! declares its scope in one place, `crates/im-http-api/scopes.golden` is the hand-reviewed list
//! of them, and a key without the scope is refused on every transport that reaches the entry:
//! HTTP, WebSocket, MCP and jobs (a follower's forwarding: `bins/im-http/tests/tenants.rs`).

mod common;

#[path = "support/refusals.rs"]
mod refusals;

use im_app::config::{ImConfig, KeyEntry};
use im_app::{self as app, Built, Simulate};
use im_http_api::routes::{Access, ROUTES};
use im_service::Scope;

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

async fn serve() -> (String, Built) {
    let mut cfg = ImConfig::default();
    cfg.keys = refusals::keys_lacking_each_scope()
        .into_iter()
        .map(|(key, scopes)| KeyEntry {
            key,
            scopes,
            ..KeyEntry::default()
        })
        .collect();
    let built = app::build(cfg, Some(Simulate { time_scale: 0.001 }))
        .await
        .expect("build");
    let url = common::listen(&built).await;
    (url, built)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_the_scope_is_refused_on_every_transport() {
    let (url, _built) = serve().await;
    let checked = refusals::refused_everywhere(&url).await;
    assert!(checked > 80, "{checked} checks");
}
