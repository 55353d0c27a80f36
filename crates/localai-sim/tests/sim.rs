//! The simulator behaves like LocalAI where im can tell: loads, eviction, overcommit, stats, PNGs.

use std::time::{Duration, Instant};

use localai_sim::{SimConfig, SimServer};
use serde_json::{Value, json};

const LLM: &str = "llama-3.2-3b-instruct";
const SD: &str = "stablediffusion";

async fn start(f: impl FnOnce(&mut SimConfig)) -> SimServer {
    let mut cfg = SimConfig {
        time_scale: 0.01,
        ..SimConfig::default()
    };
    f(&mut cfg);
    SimServer::start(cfg).await.expect("sim")
}

async fn chat(url: &str, model: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}))
        .send()
        .await
        .expect("send")
}

async fn image(url: &str, size: &str) -> Value {
    reqwest::Client::new()
        .post(format!("{url}/images/generations"))
        .json(&json!({"model": SD, "prompt": "p", "size": size, "step": 2}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn the_first_request_blocks_for_the_load() {
    let s = start(|_| {}).await;
    let t = Instant::now();
    assert!(chat(&s.url(), LLM).await.status().is_success());
    // 6 s load at time scale 0.01 = 60 ms at least (a lower bound, not a timing assertion).
    assert!(t.elapsed() >= Duration::from_millis(60));
    let st = s.state().stats();
    assert_eq!((st.loads, st.requests_total), (1, 1));
    assert!((st.load_seconds - 6.0).abs() < 1e-9);
}

#[tokio::test]
async fn a_second_model_evicts_the_first_under_the_default_budget() {
    let s = start(|_| {}).await;
    chat(&s.url(), LLM).await;
    image(&s.url(), "16x16").await;
    let st = s.state().stats();
    assert_eq!((st.loads, st.evictions, st.overcommits), (2, 1, 0));
    assert_eq!(st.resident, vec![SD.to_owned()]);
    assert_eq!(st.peak_resident_models, 1);
    let sys: Value = reqwest::get(format!("{}/system", s.url()))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(sys["loaded_models"][0]["id"], SD);
}

#[tokio::test]
async fn loading_while_the_resident_model_is_busy_is_an_overcommit() {
    let s = start(|c| {
        c.lru_wait_ms = 100;
        c.models[2].per_step_ms = 50_000.0; // a 1 s image job keeps sd busy
    })
    .await;
    let url = s.url();
    let busy = tokio::spawn({
        let url = url.clone();
        async move { image(&url, "8x8").await }
    });
    im_testkit::eventually("sd loaded and busy", Duration::from_secs(20), || async {
        s.state()
            .stats()
            .peak_concurrent_requests
            .get(SD)
            .is_some_and(|n| *n >= 1)
    })
    .await;
    assert!(chat(&url, LLM).await.status().is_success());
    busy.await.expect("join");
    let st = s.state().stats();
    assert_eq!(st.overcommits, 1, "{st:?}");
    assert_eq!(st.peak_resident_models, 2);
    assert_eq!(st.peak_concurrent_models, 2);
}

#[tokio::test]
async fn stats_add_up_and_reset() {
    let s = start(|c| c.time_scale = 0.0).await;
    for _ in 0..3 {
        chat(&s.url(), LLM).await;
    }
    image(&s.url(), "8x8").await;
    assert_eq!(chat(&s.url(), "nope").await.status(), 404);
    let st = s.state().stats();
    assert_eq!(st.requests_total, 4);
    assert_eq!(st.requests.values().sum::<u64>(), st.requests_total);
    let r = reqwest::Client::new()
        .post(format!("{}/sim/reset", s.url()))
        .send()
        .await
        .expect("reset");
    assert_eq!(r.status(), 204);
    let st: Value = reqwest::get(format!("{}/sim/stats", s.url()))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(st["requests_total"], 0);
}

#[tokio::test]
async fn images_are_real_pngs_of_the_requested_size_capped() {
    use base64::Engine;
    let s = start(|c| c.time_scale = 0.0).await;
    for (size, want) in [("40x24", (40, 24)), ("1024x512", (256, 256))] {
        let v = image(&s.url(), size).await;
        let b64 = v["data"][0]["b64_json"].as_str().expect("b64_json");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        let reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .expect("png");
        assert_eq!((reader.info().width, reader.info().height), want);
    }
}

#[tokio::test]
async fn errors_use_localai_envelope() {
    let s = start(|c| c.time_scale = 0.0).await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.url()))
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("invalid JSON")
    );
}

#[test]
fn a_toml_catalogue_loads_and_bad_fields_are_named() {
    let cfg = SimConfig::from_toml(
        r#"
        time_scale = 0.5
        [[models]]
        name = "tiny"
        kinds = ["txt2txt"]
        load_ms = 10
        slots = 2
        "#,
    )
    .expect("valid");
    assert_eq!(
        (cfg.models.len(), cfg.models[0].slots, cfg.time_scale),
        (1, 2, 0.5)
    );
    let e = SimConfig::from_toml("[[models]]\nname = \"x\"\nkinds = [\"chat\"]\n")
        .expect_err("bad kind");
    assert!(e.to_string().contains("models[0].kinds"), "{e}");
}

#[test]
fn the_example_catalogue_loads() {
    let text = include_str!("../localai-sim.example.toml");
    let cfg = SimConfig::from_toml(text).expect("the committed example is valid");
    assert_eq!(cfg.models.len(), 2);
}

#[tokio::test]
async fn a_client_leaving_during_a_load_does_not_wedge_the_model() {
    let s = start(|_| {}).await;
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(5))
        .build()
        .expect("client");
    let gone = quick
        .post(format!("{}/v1/chat/completions", s.url()))
        .json(&json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await;
    assert!(
        gone.is_err(),
        "the first client gives up during the 60 ms load"
    );
    let r = tokio::time::timeout(Duration::from_secs(10), chat(&s.url(), LLM))
        .await
        .expect("not wedged");
    assert!(r.status().is_success());
    assert_eq!(
        s.state().stats().loads,
        1,
        "the abandoned load completed and is reused"
    );
}

#[tokio::test]
async fn a_call_with_an_older_fencing_token_than_one_seen_is_refused() {
    let sim = start(|_| {}).await;
    let call = |token: Option<u64>| {
        let mut r = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", sim.url()))
            .json(&json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}));
        if let Some(t) = token {
            r = r.header("x-im-fence", t.to_string());
        }
        async move { r.send().await.expect("send") }
    };
    assert_eq!(call(Some(3)).await.status(), 200);
    assert_eq!(
        call(Some(3)).await.status(),
        200,
        "the same scheduler again"
    );
    assert_eq!(
        call(None).await.status(),
        200,
        "clients without a token are not fenced"
    );
    let stale = call(Some(2)).await;
    assert_eq!(stale.status(), 409);
    let body: Value = stale.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("stale fencing token 2")),
        "{body}"
    );
    assert_eq!(
        call(Some(4)).await.status(),
        200,
        "a newer scheduler takes over"
    );
    assert_eq!(
        call(Some(3)).await.status(),
        409,
        "and the one before it is off"
    );
    let stats = sim.state().stats();
    assert_eq!((stats.highest_fence, stats.fenced), (4, 2));
    assert_eq!(stats.requests_total, 4, "refused calls never reach a model");
}
