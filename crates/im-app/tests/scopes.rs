//! Key scopes: `infer`, `metrics` and `admin` keys each reach their routes and only those;
//! LocalAI's management routes are relayed to admin keys only; per-key rate limits.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use im_app::config::{ImConfig, KeyEntry};
use im_app::{self as app, Built, Simulate};
use im_service::Scope;
use serde_json::{Value, json};
use tower::ServiceExt;

const LLM: &str = "llama-3.2-3b-instruct";

fn key(k: &str, scopes: &[Scope], rate: Option<u32>) -> KeyEntry {
    KeyEntry {
        key: k.into(),
        scopes: scopes.to_vec(),
        rate_limit_per_s: rate,
        rate_limit_burst: rate,
        tenant: None,
    }
}

/// The router and what keeps it running (the simulator stops when `Built` is dropped).
async fn app_with(f: impl FnOnce(&mut ImConfig)) -> (Router, Built) {
    let mut cfg = ImConfig::default();
    f(&mut cfg);
    let built = app::build(cfg, Some(Simulate { time_scale: 0.001 }))
        .await
        .expect("build");
    (im_http_api::router(built.state.clone()), built)
}

async fn scoped_app() -> (Router, Built) {
    app_with(|c| {
        c.api_keys = vec!["plain".into()];
        c.keys = vec![
            key("admin-only", &[Scope::Admin], None),
            key("metrics-only", &[Scope::Metrics], None),
            key("limited", &Scope::ALL, Some(1)),
            key("root", &Scope::ALL, None),
        ];
    })
    .await
}

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

fn chat() -> Option<Value> {
    Some(json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}]}))
}

fn forbidden(r: &(StatusCode, Value), scope: &str) {
    assert_eq!(r.0, StatusCode::FORBIDDEN, "{}", r.1);
    assert_eq!(r.1["error"]["type"], "forbidden", "{}", r.1);
    assert!(
        r.1["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(scope)),
        "the message names the scope: {}",
        r.1
    );
}

#[tokio::test]
async fn each_scope_reaches_its_routes_and_only_those() {
    let (app, _running) = scoped_app().await;
    // An ordinary key (api_keys): inference and metrics, never management.
    assert_eq!(
        call(&app, "POST", "/v1/chat/completions", Some("plain"), chat())
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, "GET", "/metrics", Some("plain"), None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, "GET", "/queue-status", Some("plain"), None)
            .await
            .0,
        StatusCode::OK
    );
    forbidden(
        &call(&app, "GET", "/models/available", Some("plain"), None).await,
        "admin",
    );
    forbidden(
        &call(
            &app,
            "POST",
            "/models/apply",
            Some("plain"),
            Some(json!({"id": "localai@x"})),
        )
        .await,
        "admin",
    );

    // A metrics key: metrics and status only.
    assert_eq!(
        call(&app, "GET", "/metrics", Some("metrics-only"), None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        call(
            &app,
            "GET",
            "/get_request_metrics",
            Some("metrics-only"),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    forbidden(
        &call(
            &app,
            "POST",
            "/v1/chat/completions",
            Some("metrics-only"),
            chat(),
        )
        .await,
        "infer",
    );
    forbidden(
        &call(&app, "GET", "/v1/models", Some("metrics-only"), None).await,
        "infer",
    );

    // An admin key: the management routes, relayed to LocalAI as they are.
    let (s, v) = call(&app, "GET", "/models/available", Some("admin-only"), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        v.as_array()
            .is_some_and(|a| a.iter().any(|m| m["name"] == LLM)),
        "the upstream's gallery: {v}"
    );
    let (s, v) = call(
        &app,
        "POST",
        "/models/apply",
        Some("admin-only"),
        Some(json!({"id": "localai@phi-2"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let uuid = v["uuid"].as_str().expect("a job id").to_owned();
    let (s, v) = call(
        &app,
        "GET",
        &format!("/models/jobs/{uuid}"),
        Some("admin-only"),
        None,
    )
    .await;
    assert_eq!(
        (s, v["processed"].clone()),
        (StatusCode::OK, json!(true)),
        "{v}"
    );
    // The upstream's own refusal comes back as it was.
    let (s, v) = call(
        &app,
        "POST",
        "/models/apply",
        Some("admin-only"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    forbidden(
        &call(
            &app,
            "POST",
            "/v1/chat/completions",
            Some("admin-only"),
            chat(),
        )
        .await,
        "infer",
    );
    forbidden(
        &call(&app, "GET", "/metrics", Some("admin-only"), None).await,
        "metrics",
    );

    // Loading and unloading belong to the scheduler: never relayed, whatever the key.
    for path in ["/backend/shutdown", "/backend/load"] {
        let (s, v) = call(
            &app,
            "POST",
            path,
            Some("root"),
            Some(json!({"model": LLM})),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {v}");
    }
    // The upstream is chosen by index, checked.
    let req = Request::get("/models/available")
        .header("x-api-key", "admin-only")
        .header("x-im-lane", "3")
        .body(Body::empty())
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // No key at all is still 401, not 403.
    assert_eq!(
        call(&app, "GET", "/models/available", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_key_with_its_own_rate_limit_is_held_to_it_and_only_it() {
    let (app, _running) = scoped_app().await;
    let mut limited = Vec::new();
    for _ in 0..4 {
        limited.push(
            call(&app, "GET", "/v1/models", Some("limited"), None)
                .await
                .0,
        );
    }
    assert!(
        limited.contains(&StatusCode::TOO_MANY_REQUESTS),
        "1 request/s with a burst of 1: {limited:?}"
    );
    for _ in 0..8 {
        assert_eq!(
            call(&app, "GET", "/v1/models", Some("plain"), None).await.0,
            StatusCode::OK,
            "the default limit (off) holds for the other keys"
        );
    }
}

#[tokio::test]
async fn without_keys_management_stays_closed() {
    // Authentication off (no keys, a loopback address): inference is open, management is not.
    let sim = localai_sim::SimServer::start(localai_sim::SimConfig {
        time_scale: 0.001,
        ..localai_sim::SimConfig::default()
    })
    .await
    .expect("sim");
    let mut cfg = ImConfig::default();
    cfg.upstreams = vec![sim.url().into()];
    assert!(!cfg.has_keys());
    cfg.jobs.enabled = false; // no job store: these tests would share the data directory
    let built = app::build(cfg, None).await.expect("build");
    let app = im_http_api::router(built.state.clone());
    assert_eq!(
        call(&app, "POST", "/v1/chat/completions", None, chat())
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, "GET", "/metrics", None, None).await.0,
        StatusCode::OK
    );
    forbidden(
        &call(&app, "GET", "/models/available", None, None).await,
        "admin",
    );
}

#[test]
fn key_entries_are_checked() {
    let base = || {
        let mut c = ImConfig::default();
        c.api_keys = vec!["plain".into()];
        c
    };
    let mut c = base();
    c.keys = vec![key("x", &[], None)];
    let e = c.validate().expect_err("no scope");
    assert!(e.to_string().contains("keys[0].scopes"), "{e}");
    let mut c = base();
    c.keys = vec![key("plain", &[Scope::Admin], None)];
    let e = c.validate().expect_err("a duplicate");
    assert!(e.to_string().contains("twice"), "{e}");
    let mut c = base();
    c.keys = vec![key(" ", &[Scope::Admin], None)];
    assert!(c.validate().is_err(), "an empty key");
    let text = "api_keys = [\"a\"]\n[[keys]]\nkey = \"b\"\nscopes = [\"root\"]\n";
    assert!(ImConfig::from_toml(text).is_err(), "an unknown scope");
    let text = "[[keys]]\nkey = \"b\"\n";
    let c = ImConfig::from_toml(text).expect("scopes default");
    assert_eq!(c.keys[0].scopes, Scope::ORDINARY.to_vec());
}

async fn resident(app: &Router) -> Vec<String> {
    let (_, v) = call(app, "GET", "/queue-status", Some("root"), None).await;
    v["lanes"][0]["resident"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|m| m["model"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `model` is resident (or not, `want`).
async fn resident_becomes(app: &Router, model: &str, want: bool) {
    let what = format!("{model} resident: {want}");
    im_testkit::eventually(&what, std::time::Duration::from_secs(20), || async {
        resident(app).await.iter().any(|m| m == model) == want
    })
    .await
}

#[tokio::test]
async fn operators_load_and_unload_models_through_the_scheduler() {
    const SD: &str = "stablediffusion";
    let (app, _built) = scoped_app().await;
    let load = Some(json!({"model": SD}));
    let (s, _) = call(&app, "POST", "/models/load", Some("plain"), load.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "an admin route");
    let (s, v) = call(&app, "POST", "/models/load", Some("root"), load).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["backend"], "default");
    resident_becomes(&app, SD, true).await; // the lane warmed it up
    let (s, v) = call(
        &app,
        "POST",
        "/models/unload",
        Some("root"),
        Some(json!({"model": SD})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["backends"][0]["status"], "unloading", "{v}");
    resident_becomes(&app, SD, false).await;
    let (s, v) = call(
        &app,
        "POST",
        "/models/load",
        Some("root"),
        Some(json!({"model": SD, "backend": "gpu9"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["param"], "backend");
    let (s, v) = call(
        &app,
        "POST",
        "/models/load",
        Some("root"),
        Some(json!({"model": "nope"})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
}
