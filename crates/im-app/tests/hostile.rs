//! Hostile input and real-server quirks (issue 11): generated bodies for every route, a panicking
//! handler, non-ASCII images, unknown model names, refusals passed through, and im in front of the
//! simulator's llama.cpp-router and llama-cpp-python modes.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use http_body_util::BodyExt;
use im_app::config::{ImConfig, ModelEntry};
use im_app::{self as app, Built, DEMO_KEY, Simulate};
use localai_sim::{SimConfig, SimMode, SimServer};
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;

const LLM: &str = "llama-3.2-3b-instruct";
const SD: &str = "stablediffusion";

async fn simulated(f: impl FnOnce(&mut ImConfig)) -> Built {
    let mut cfg = ImConfig::default();
    cfg.retry.base_ms = 1;
    cfg.retry.cap_ms = 5;
    f(&mut cfg);
    app::build(cfg, Some(Simulate { time_scale: 0.0 }))
        .await
        .expect("build")
}

/// im in front of a simulator in `mode`, models discovered (or as `f` sets them).
async fn in_front_of(mode: SimMode, f: impl FnOnce(&mut ImConfig)) -> (SimServer, Built) {
    let sim = SimServer::start(SimConfig {
        time_scale: 0.0,
        mode,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let mut cfg = ImConfig::default();
    cfg.upstreams = vec![sim.url().into()];
    cfg.api_keys = vec![DEMO_KEY.into()];
    cfg.retry.base_ms = 1;
    cfg.retry.cap_ms = 5;
    f(&mut cfg);
    cfg.jobs.enabled = false; // no job store: these tests would share the data directory
    let built = app::build(cfg, None).await.expect("build");
    (sim, built)
}

async fn call(app: &Router, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("x-api-key", DEMO_KEY)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

fn post_json(app: &Router, path: &str, v: &Value) -> impl Future<Output = (StatusCode, Value)> {
    call(app, "POST", path, v.to_string().into_bytes())
}

fn png_b64() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(localai_sim::image::png(8, 8, 2))
}

/// A valid body per route, to mutate.
fn bases() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/txt2txt",
            json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
        ),
        (
            "/img2txt",
            json!({"model": "llava-1.6-mistral-7b", "messages": [{"role": "user", "content": [{"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": png_b64()}}]}]}),
        ),
        (
            "/txt2img",
            json!({"model": SD, "prompt": "a fox", "width": 8, "height": 8, "steps": 1}),
        ),
        (
            "/img2img",
            json!({"model": SD, "file": png_b64(), "prompt": "a fox", "width": 8, "height": 8, "steps": 1}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
        ),
        (
            "/v1/images/generations",
            json!({"model": SD, "prompt": "a fox", "size": "8x8", "step": 1}),
        ),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "[a-zé€0-9+/=:.,;-]{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One mutation of a valid body: a field replaced by anything, removed, or added; or raw bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, Value),
    Remove(usize),
    Add(String, Value),
    Raw(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (0usize..10, any_json()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        1 => (0usize..10).prop_map(Mutation::Remove),
        1 => ("[a-z_]{1,12}", any_json()).prop_map(|(k, v)| Mutation::Add(k, v)),
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Mutation::Raw),
    ]
}

fn apply(mut base: Value, m: &Mutation) -> Vec<u8> {
    let obj = base.as_object_mut().expect("object");
    let keys: Vec<String> = obj.keys().cloned().collect();
    match m {
        Mutation::Replace(i, v) => {
            obj.insert(keys[i % keys.len()].clone(), v.clone());
        }
        Mutation::Remove(i) => {
            obj.remove(&keys[i % keys.len()]);
        }
        Mutation::Add(k, v) => {
            obj.insert(k.clone(), v.clone());
        }
        Mutation::Raw(b) => return b.clone(),
    }
    base.to_string().into_bytes()
}

#[test]
fn generated_bodies_on_every_inference_route_get_an_answer_never_a_5xx() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let built = rt.block_on(simulated(|c| c.http.max_image_side = 64));
    let app = im_http_api::router(built.state.clone());
    let routes = bases();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 1_500,
        ..ProptestConfig::default()
    });
    runner
        .run(&(0usize..routes.len(), mutation()), |(r, m)| {
            let (path, base) = &routes[r];
            let body = apply(base.clone(), &m);
            let (status, v) = rt.block_on(call(&app, "POST", path, body));
            prop_assert!(
                status.is_success() || status.is_client_error(),
                "{path} {m:?} -> {status} {v}"
            );
            if status.is_client_error() {
                prop_assert!(v["error"]["type"].is_string(), "{path}: {v}");
            }
            Ok(())
        })
        .expect("no 5xx");
}

#[tokio::test]
async fn a_panicking_handler_gets_a_clean_500_that_quotes_nothing() {
    // Regression (issue 11.2): a panic closed the connection with no response.
    let built = simulated(|_| {}).await;
    let app = im_http_api::router_with(built.state.clone(), |r| {
        r.route(
            "/boom",
            get(|| async {
                let secret = String::from("caller-secret-é");
                let cut = secret.len() - 1;
                let _ = &secret[..cut]; // slices inside 'é': panics, quoting the string
                "unreachable"
            }),
        )
    });
    let (status, v) = call(&app, "GET", "/boom", Vec::new()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(v["error"]["type"], "internal");
    assert!(!v.to_string().contains("caller-secret"), "{v}");
}

#[tokio::test]
async fn non_ascii_images_never_wedge_a_lane() {
    // Regression (issue 11.1, 11.2): a non-ASCII image string panicked inside the attempt (the
    // slot stayed taken) or inside the handler (the connection closed).
    let built = simulated(|_| {}).await;
    let app = im_http_api::router(built.state.clone());
    let bad = "é".repeat(40);
    let chat = json!({"model": LLM, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": bad}}]}]});
    let (status, _) = post_json(&app, "/txt2txt", &chat).await;
    assert!(status.is_success() || status.is_client_error(), "{status}");
    for path in ["/img2img", "/v1/images/generations"] {
        let body = json!({"model": SD, "file": bad, "prompt": "p", "width": 8, "height": 8, "size": "8x8"});
        let mut body = body;
        if path == "/img2img" {
            body.as_object_mut().expect("obj").remove("size");
        } else {
            body.as_object_mut().expect("obj").remove("width");
            body.as_object_mut().expect("obj").remove("height");
        }
        let (status, v) = post_json(&app, path, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {v}");
        assert_eq!(v["error"]["param"], "file");
    }
    let ok = json!({"model": LLM, "messages": [{"role": "user", "content": "still there?"}]});
    let (status, _) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        post_json(&app, "/txt2txt", &ok),
    )
    .await
    .expect("the lane is not wedged");
    assert_eq!(status, StatusCode::OK);
    let st = built.engine.status().await.expect("running");
    assert_eq!(st.in_flight, 0);
}

#[tokio::test]
async fn unknown_model_names_are_bounded_in_messages_and_metrics() {
    // Regression (issue 11.5): each unknown name was kept whole as a metrics key forever.
    let built = simulated(|_| {}).await;
    let app = im_http_api::router(built.state.clone());
    for i in 0..5 {
        let name = format!("{i}{}", "x".repeat(1 << 20));
        let body = json!({"model": name, "messages": [{"role": "user", "content": "hi"}]});
        let (status, v) = post_json(&app, "/txt2txt", &body).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(v.to_string().len() < 2_000, "message bounded");
    }
    let (_, metrics) = call(&app, "GET", "/get_error_metrics", Vec::new()).await;
    let text = metrics.to_string();
    assert!(
        text.len() < 20_000,
        "error metrics bounded: {} bytes",
        text.len()
    );
    assert!(text.contains("(unknown)"), "{text}");
}

#[tokio::test]
async fn a_zero_deadline_is_refused_by_name() {
    let built = simulated(|_| {}).await;
    let app = im_http_api::router(built.state.clone());
    let body =
        json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}], "deadline_ms": 0});
    let (status, v) = post_json(&app, "/txt2txt", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["param"], "deadline_ms");
}

#[tokio::test]
async fn image_urls_and_unknown_fields_are_refused_unless_allowed() {
    let built =
        simulated(|c| c.http.image_url_allowlist = vec!["https://img.example/".into()]).await;
    let app = im_http_api::router(built.state.clone());
    let with_url = |u: &str| json!({"model": LLM, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": u}}]}]});
    let (status, v) = post_json(
        &app,
        "/v1/chat/completions",
        &with_url("http://10.0.0.1/x.png"),
    )
    .await;
    assert_eq!(
        (status, v["error"]["param"].clone()),
        (StatusCode::BAD_REQUEST, json!("messages"))
    );
    let body =
        json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}], "backend": "x"});
    let (status, v) = post_json(&app, "/v1/chat/completions", &body).await;
    assert_eq!(
        (status, v["error"]["param"].clone()),
        (StatusCode::BAD_REQUEST, json!("backend"))
    );
}

#[tokio::test]
async fn the_callers_own_error_comes_back_with_its_status_and_code() {
    // Regression (issue 11.13): llama.cpp's "context length exceeded" 400 came back as a 502.
    let (sim, built) = in_front_of(SimMode::LlamaCppPython, |_| {}).await;
    let app = im_http_api::router(built.state.clone());
    let model = built.config.models[0].name.clone();
    let long = "word ".repeat(10_000);
    let body = json!({"model": model, "messages": [{"role": "user", "content": long}]});
    let (status, v) = post_json(&app, "/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert_eq!(v["error"]["param"], "messages");
    let counters = built.engine.status().await.expect("running").counters;
    assert_eq!(
        (counters.retried, counters.dispatched),
        (0, 1),
        "never retried"
    );
    drop(sim);
}

#[tokio::test]
async fn in_front_of_llama_cpp_router_kinds_slots_and_readiness_are_learned() {
    // Regression (issue 11.14, 11.15): /ready was false forever; discovered models got 1 slot.
    let (_sim, built) = in_front_of(SimMode::LlamaCppRouter, |_| {}).await;
    let by_name = |n: &str| {
        built
            .config
            .models
            .iter()
            .find(|m| m.name == n)
            .cloned()
            .expect(n)
    };
    assert_eq!(
        by_name(LLM).max_in_flight,
        Some(4),
        "slots from /props or the LLM default"
    );
    assert_eq!(
        by_name("llava-1.6-mistral-7b").kinds,
        vec!["img2txt", "txt2txt"]
    );
    assert_eq!(by_name(SD).kinds, vec!["txt2img", "img2img"]);
    assert_eq!(by_name(SD).max_in_flight, Some(1));
    assert_eq!(by_name("bge-small-en-v1.5").kinds, vec!["embed"]);
    let app = im_http_api::router(built.state.clone());
    let req = Request::get("/ready").body(Body::empty()).expect("req");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "readiness needs no key and passes"
    );
}

#[tokio::test]
async fn in_front_of_llama_cpp_python_ready_and_a_wrong_model_is_detected() {
    // Regression (issue 11.14, 11.16): no /readyz or /health; unknown names answered by the
    // default model with 200. A configured model no upstream lists is not offered (issue 31);
    // one removed upstream since the catalogues were read is answered by llama-cpp-python's
    // default model, which im detects.
    const GONE: &str = "llava-1.6-mistral-7b";
    let (sim, built) = in_front_of(SimMode::LlamaCppPython, |c| {
        c.discovery.refresh_s = 0.0;
        c.models = [LLM, GONE, "ghost"]
            .iter()
            .map(|n| ModelEntry {
                name: (*n).into(),
                kinds: vec!["txt2txt".into()],
                max_in_flight: Some(1),
                ..Default::default()
            })
            .collect();
    })
    .await;
    let ready = built.engine.readiness().await;
    assert!(ready.iter().all(|l| l.ready()), "{ready:?}");
    let app = im_http_api::router(built.state.clone());
    let chat = |m: &str| json!({"model": m, "messages": [{"role": "user", "content": "hi"}]});
    let (status, v) = post_json(&app, "/txt2txt", &chat("ghost")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "listed nowhere: {v}");
    assert!(sim.state().set_installed(GONE, false));
    let (status, v) = post_json(&app, "/txt2txt", &chat(GONE)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("instead of"),
        "{v}"
    );
    assert_eq!(
        post_json(&app, "/txt2txt", &chat(LLM)).await.0,
        StatusCode::OK
    );
}

#[test]
fn keys_with_spaces_around_them_still_match() {
    // Regression (issue 11, low): `IM_API_KEYS="k1, k2"` kept the space.
    let keys = im_service::Keys::new(&["k1".into(), " k2".into(), "  ".into()]);
    assert_eq!(keys.check(b"k2"), Some(im_service::KeyId::of(b"k2")));
    assert_eq!(keys.check(b" k2"), None);
    assert_eq!(keys.check(b""), None);
}

#[tokio::test]
async fn queued_payload_bytes_are_budgeted() {
    // Regression (issue 11.11): limits counted requests, not bytes; ~30 queued image edits got the
    // pod OOM-killed.
    // One image edit of ~7 KiB fits a 12 KiB budget; a second while the first still runs does
    // not (the body limit lets each in).
    let mut cfg = ImConfig::default();
    cfg.limits.max_queued_bytes = 12 * 1024;
    cfg.http.body_limit_bytes = 12 * 1024;
    cfg.models = vec![ModelEntry {
        name: SD.into(),
        kinds: vec!["img2img".into()],
        max_in_flight: Some(1),
        aliases: vec![],
        ..Default::default()
    }];
    let built = app::build(cfg, Some(Simulate { time_scale: 0.05 }))
        .await
        .expect("build");
    let app = im_http_api::router(built.state.clone());
    let big = format!("{}{}", png_b64(), "A".repeat(7 * 1024));
    let body = json!({"model": SD, "file": big, "prompt": "p", "width": 8, "height": 8});
    let first = tokio::spawn({
        let (app, body) = (app.clone(), body.clone());
        async move { post_json(&app, "/img2img", &body).await }
    });
    im_testkit::eventually(
        "the first edit in the engine",
        std::time::Duration::from_secs(20),
        || async {
            built
                .engine
                .status()
                .await
                .is_some_and(|s| s.in_flight + s.waiting == 1)
        },
    )
    .await;
    let (status, v) = post_json(&app, "/img2img", &body).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["type"], "queue_full");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("byte budget"),
        "{v}"
    );
    assert_eq!(first.await.expect("task").0, StatusCode::OK);
}

#[tokio::test]
async fn upstream_tracebacks_reach_no_caller() {
    // Regression (issue 11.8): a Python traceback with file paths and an internal address came
    // back in a 503.
    let tb = "Traceback (most recent call last):\n  File \"/srv/app/server.py\", line 9, in run\nRuntimeError: backend at 10.2.3.4:9000 is overloaded (see /srv/app/logs/x.log)";
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || async move {
            let mut r = (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"error": {"code": 503, "message": tb}})),
            )
                .into_response();
            r.headers_mut()
                .insert("retry-after", "0".parse().expect("header"));
            r
        }),
    );
    let url = serve(app).await;
    let mut cfg = ImConfig::default();
    cfg.upstreams = vec![url.into()];
    cfg.api_keys = vec![DEMO_KEY.into()];
    cfg.retry.max_retries = 1;
    cfg.retry.base_ms = 1;
    cfg.retry.cap_ms = 2;
    cfg.models = vec![ModelEntry {
        name: LLM.into(),
        kinds: vec!["txt2txt".into()],
        max_in_flight: Some(1),
        aliases: vec![],
        ..Default::default()
    }];
    cfg.jobs.enabled = false; // no job store: these tests would share the data directory
    let built = app::build(cfg, None).await.expect("build");
    let router = im_http_api::router(built.state.clone());
    let body = json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}]});
    let (status, v) = post_json(&router, "/txt2txt", &body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    let (_, metrics) = call(&router, "GET", "/get_error_metrics", Vec::new()).await;
    for text in [v.to_string(), metrics.to_string()] {
        assert!(
            text.contains("RuntimeError: backend at <address>"),
            "{text}"
        );
        assert!(
            !text.contains("10.2.3.4") && !text.contains("/srv/app") && !text.contains("Traceback"),
            "{text}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// Every numeric setting, with any value TOML can hold, is accepted or refused by name; none
    /// panics, now or when the accepted configuration is turned into durations.
    #[test]
    fn config_values_never_panic(
        field in prop::sample::select(vec![
            "shutdown_grace_s", "bounds.max_dwell_s", "bounds.starvation_after_s", "bounds.max_batch",
            "limits.max_queued_total", "limits.max_queued_bytes", "deadlines_s.txt2txt",
            "deadlines_s.img2img", "retry.max_retries", "retry.base_ms", "retry.cap_ms",
            "retry.jitter", "breaker.failure_threshold", "breaker.cooldown_s",
            "http.body_limit_bytes", "http.max_image_side", "http.rate_limit_per_s",
            "http.header_read_timeout_s", "http.body_idle_timeout_s", "http.body_total_timeout_s",
            "http.max_connections", "discovery.llm_slots",
        ]),
        value in prop_oneof![
            any::<f64>().prop_map(|f| format!("{f:e}")),
            any::<i64>().prop_map(|i| i.to_string()),
            Just("1e20".to_owned()), Just("1e19".to_owned()), Just("-0.0".to_owned()),
            Just("nan".to_owned()), Just("inf".to_owned()), Just("0".to_owned()),
        ],
    ) {
        let (table, key) = field.split_once('.').map_or(("", field), |(t, k)| (t, k));
        let text = if table.is_empty() {
            format!("{key} = {value}\n")
        } else {
            format!("[{table}]\n{key} = {value}\n")
        };
        if let Ok(cfg) = ImConfig::from_toml(&text) {
            match cfg.validate() {
                Ok(()) => {
                    let _ = cfg.serve_limits();
                    let _ = cfg.shutdown_grace();
                }
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(msg.contains(table) || msg.contains(key), "{text}: {msg}");
                }
            }
        }
    }
}

/// A `llama-server` with one model, as its `/v1/models` lists it: `meta.size` is the weights in
/// bytes.
async fn llama_server_listing(models: &'static [(&'static str, u64)]) -> String {
    let app = axum::Router::new().route(
        "/v1/models",
        get(move || async move {
            let data: Vec<Value> = models
                .iter()
                .map(|(id, size)| {
                    json!({"id": id, "object": "model", "owned_by": "llamacpp",
                           "meta": {"vocab_type": 2, "n_ctx_train": 131072, "n_params": 3_212_749_888u64, "size": size}})
                })
                .collect();
            axum::Json(json!({"object": "list", "data": data}))
        }),
    );
    serve(app).await
}

/// A hand-made upstream on loopback; its URL.
async fn serve(app: Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

#[tokio::test]
async fn model_sizes_are_learned_where_llama_server_reports_them() {
    const GIB: u64 = 1 << 30;
    static LISTED: [(&str, u64); 3] = [
        (LLM, 3 * GIB + GIB / 4),
        ("qwen2.5-72b", 47 * GIB),
        ("declared", 2 * GIB),
    ];
    let url = llama_server_listing(&LISTED).await;
    let budgeted = |cfg: &mut ImConfig| {
        cfg.upstreams = vec![im_app::config::UpstreamEntry::Table(
            im_app::config::UpstreamTable {
                url: url.clone(),
                memory_gib: Some(24.0),
                ..Default::default()
            },
        )];
        cfg.api_keys = vec![DEMO_KEY.into()];
        cfg.jobs.enabled = false; // no job store: these tests would share the data directory
    };
    let size = |built: &Built, name: &str| {
        built
            .config
            .models
            .iter()
            .find(|m| m.name == name)
            .expect(name)
            .size_gib
    };
    // Discovered: every size as listed, except one no budget can hold (it counts as filling one).
    let mut cfg = ImConfig::default();
    budgeted(&mut cfg);
    let built = app::build(cfg, None).await.expect("build");
    assert_eq!(size(&built, LLM), Some(3.25));
    assert_eq!(
        size(&built, "qwen2.5-72b"),
        None,
        "larger than every budget"
    );
    // Configured: a declared size wins; one left out is learned.
    let mut cfg = ImConfig::default();
    budgeted(&mut cfg);
    cfg.models = ["declared", LLM]
        .map(|name| ModelEntry {
            name: name.into(),
            kinds: vec!["txt2txt".into()],
            size_gib: (name == "declared").then_some(6.0),
            ..Default::default()
        })
        .to_vec();
    let built = app::build(cfg, None).await.expect("build");
    assert_eq!(size(&built, "declared"), Some(6.0));
    assert_eq!(size(&built, LLM), Some(3.25));
    let core = built.state.service.engine().config();
    let spec = core
        .models
        .iter()
        .find(|m| m.name == LLM)
        .expect("in the core");
    assert_eq!(
        spec.size_mb,
        Some(3 * 1024 + 256),
        "the core counts it against the budget"
    );
}

#[tokio::test]
async fn a_name_that_suggests_vision_grants_none_without_the_servers_word() {
    // Regression (issue 31): `gemma-3-270m` (text only) was listed as img2txt from its name, and
    // an image sent to it was answered 200 by a model that never saw it (llama-cpp-python drops
    // it). llama-cpp-python lists names only: vision needs evidence, so none is granted.
    const VLM: &str = "llava-1.6-mistral-7b";
    let (_sim, built) = in_front_of(SimMode::LlamaCppPython, |_| {}).await;
    let kinds = |b: &Built| {
        b.config
            .models
            .iter()
            .find(|m| m.name == VLM)
            .map(|m| m.kinds.clone())
    };
    assert_eq!(kinds(&built), Some(vec!["txt2txt".to_owned()]));
    let app = im_http_api::router(built.state.clone());
    let image = json!({"model": VLM, "messages": [{"role": "user", "content": [{"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", png_b64())}}]}]});
    let (status, v) = post_json(&app, "/img2txt", &image).await;
    assert!(status.is_client_error(), "{status}: {v}");
    // The kinds it has are marked as guessed, in /v1/models and /status.
    let guessed = |app: Router| async move {
        let (_, listed) = call(&app, "GET", "/v1/models", Vec::new()).await;
        let (_, status) = call(&app, "GET", "/status", Vec::new()).await;
        let listed = listed["data"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["id"] == VLM)
            .map(|m| m["kinds_guessed"].clone());
        let in_status = status["backends"][0]["kinds_guessed"]
            .as_array()
            .is_some_and(|a| a.iter().any(|m| m == VLM));
        (listed, in_status)
    };
    assert_eq!(guessed(app).await, (Some(json!(true)), true));
    // LocalAI says what each model can do (`/v1/models/capabilities`): there the same name is
    // granted vision, on the server's word.
    let (_sim, built) = in_front_of(SimMode::LocalAi, |_| {}).await;
    assert_eq!(
        kinds(&built),
        Some(vec!["img2txt".to_owned(), "txt2txt".to_owned()])
    );
    let app = im_http_api::router(built.state.clone());
    assert_eq!(guessed(app).await, (Some(json!(false)), false));
}

#[tokio::test]
async fn a_kind_the_upstream_refuses_is_refused_by_im_until_the_catalogue_is_read_again() {
    // Issue 31: llama-server answers an embeddings call to a chat model with 501
    // `not_supported_error`. The first such request gets the upstream's answer; the next is im's
    // own 422 `unsupported_kind`, without a call upstream; chats go on.
    const LLM: &str = "llama-3.2-3b-instruct";
    let (sim, built) = in_front_of(SimMode::LlamaCppRouter, |c| {
        c.models = vec![ModelEntry {
            name: LLM.into(),
            kinds: vec!["txt2txt".into(), "embed".into()],
            max_in_flight: Some(2),
            ..Default::default()
        }];
    })
    .await;
    let app = im_http_api::router(built.state.clone());
    let embed = json!({"model": LLM, "input": "hello"});
    let (status, v) = post_json(&app, "/v1/embeddings", &embed).await;
    assert_eq!(
        status.as_u16(),
        502,
        "the upstream's refusal, passed on: {v}"
    );
    assert!(v.to_string().contains("does not support"), "{v}");
    assert_eq!(sim.state().stats().kind_not_served, 1);
    let (status, v) = post_json(&app, "/v1/embeddings", &embed).await;
    assert_eq!(status.as_u16(), 422, "{v}");
    assert_eq!(v["error"]["type"], "unsupported_kind", "{v}");
    assert_eq!(
        sim.state().stats().kind_not_served,
        1,
        "im refused it without a call upstream"
    );
    let chat =
        json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    assert_eq!(post_json(&app, "/v1/chat/completions", &chat).await.0, 200);
    // A reading of the catalogues tries the kind again (and the server refuses it again).
    built.fleet.refresh().await;
    im_testkit::eventually(
        "the kind restored",
        std::time::Duration::from_secs(10),
        || {
            let app = app.clone();
            let embed = embed.clone();
            async move { post_json(&app, "/v1/embeddings", &embed).await.0.as_u16() == 502 }
        },
    )
    .await;
}
