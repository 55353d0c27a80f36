//! The response cache: a repeated deterministic request is answered from memory (no queue, no
//! upstream call); sampled and streamed requests and unlisted models always reach the upstream.

mod common;

use im_app::config::ImConfig;
use im_app::{self as app, Simulate};
use serde_json::{Value, json};

const LLM: &str = "llama-3.2-3b-instruct";
const EMBED: &str = "bge-small-en-v1.5";

fn chat(temperature: f64, text: &str) -> Value {
    json!({"model": LLM, "temperature": temperature,
           "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn repeated_deterministic_requests_are_answered_from_the_cache() {
    let mut cfg = ImConfig::default();
    cfg.cache.models = vec![LLM.to_owned(), EMBED.to_owned()];
    let built = app::build(cfg, Some(Simulate { time_scale: 0.001 }))
        .await
        .expect("build");
    let app = im_http_api::router(built.state.clone());
    let sim = built.sim.as_ref().expect("simulated").state().clone();
    let upstream_calls = || sim.stats().requests_total;

    let (s, h, first) = common::post_json(&app, "/v1/chat/completions", &chat(0.0, "hi")).await;
    assert_eq!(s, 200);
    assert_eq!(h["x-attempts"], "1");
    let calls = upstream_calls();
    let (s, h, again) = common::post_json(&app, "/v1/chat/completions", &chat(0.0, "hi")).await;
    assert_eq!(s, 200);
    assert_eq!(h["x-attempts"], "0", "answered without an attempt");
    assert_eq!(upstream_calls(), calls, "the upstream was not asked again");
    let (a, b): (Value, Value) = (
        serde_json::from_slice(&first).unwrap(),
        serde_json::from_slice(&again).unwrap(),
    );
    assert_eq!(
        a["choices"][0]["message"]["content"],
        b["choices"][0]["message"]["content"]
    );

    // Another prompt, a sampled request, a stream: all reach the upstream.
    for body in [
        chat(0.0, "another"),
        chat(0.7, "hi"),
        chat(0.7, "hi"),
        json!({"model": LLM, "temperature": 0.0, "stream": true,
               "messages": [{"role": "user", "content": "hi"}]}),
    ] {
        let before = upstream_calls();
        let (s, _, _) = common::post_json(&app, "/v1/chat/completions", &body).await;
        assert_eq!(s, 200);
        assert_eq!(upstream_calls(), before + 1, "{body}");
    }

    // Embeddings are deterministic: the second is a hit.
    let embed = json!({"model": EMBED, "input": ["a", "b"]});
    let (s, _, _) = common::post_json(&app, "/v1/embeddings", &embed).await;
    assert_eq!(s, 200);
    let before = upstream_calls();
    let (s, h, _) = common::post_json(&app, "/v1/embeddings", &embed).await;
    assert_eq!((s.as_u16(), h["x-attempts"].to_str().unwrap()), (200, "0"));
    assert_eq!(upstream_calls(), before);

    let metrics = built.engine.metrics().render();
    assert!(
        metrics.contains(&format!(
            "im_cache_total{{model=\"{LLM}\",result=\"hit\"}} 1"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_cache_is_off_by_default_and_checks_its_models() {
    let built = app::build(ImConfig::default(), Some(Simulate { time_scale: 0.001 }))
        .await
        .expect("build");
    let app = im_http_api::router(built.state.clone());
    let sim = built.sim.as_ref().expect("simulated").state().clone();
    for _ in 0..2 {
        let (s, h, _) = common::post_json(&app, "/v1/chat/completions", &chat(0.0, "hi")).await;
        assert_eq!((s.as_u16(), h["x-attempts"].to_str().unwrap()), (200, "1"));
    }
    assert_eq!(sim.stats().requests_total, 2);

    let mut cfg = ImConfig::default();
    cfg.models =
        ImConfig::from_toml("[[models]]\nname = \"a\"\nkinds = [\"txt2txt\"]\nmax_in_flight = 1\n")
            .expect("toml")
            .models;
    cfg.cache.models = vec!["b".into()];
    let e = cfg.validate().expect_err("an unknown model");
    assert!(e.to_string().contains("cache.models[0]"), "{e}");
}
