//! Dynamic batching of embeddings against the simulator: requests that arrive together share
//! one upstream call and get their own vectors back in order; a failed merged call is retried
//! request by request.

use std::sync::Arc;
use std::time::Duration;

use im_engine::*;
use im_metrics::Metrics;
use inference_queue::{Config, Kind, ModelSpec};
use localai_client::{ClientConfig, LocalAiClient};
use localai_sim::{SimConfig, SimServer};
use serde_json::{Map, Value, json};

const EMBED: &str = "bge-small-en-v1.5";

async fn setup(settings: BatchSettings) -> (SimServer, Engine, Batcher) {
    let sim = SimServer::start(SimConfig {
        time_scale: 0.001,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let client = LocalAiClient::new(ClientConfig::new(sim.url())).expect("client");
    let cfg = Config {
        models: vec![ModelSpec::new(EMBED, &[Kind::Embed], 4)],
        ..Config::default()
    };
    let engine = Engine::start(
        cfg,
        Arc::new(LocalAiBackend::new(vec![client])),
        Metrics::new(),
    )
    .expect("engine");
    let batcher = Batcher::new(engine.clone(), settings);
    (sim, engine, batcher)
}

fn embed_job(id: &str, input: Value, extra: &[(&str, Value)]) -> Job {
    let mut body = Map::new();
    body.insert("model".into(), json!(EMBED));
    body.insert("input".into(), input);
    for (k, v) in extra {
        body.insert((*k).into(), v.clone());
    }
    Job::new(
        id,
        Payload::Json {
            path: "/v1/embeddings",
            body,
            stream: false,
            kind: Kind::Embed,
        },
        None,
    )
}

fn vectors(done: &Completion) -> Vec<Value> {
    let Output::Json(j) = &done.output else {
        panic!("an embeddings answer is JSON");
    };
    let parsed: Value = serde_json::from_slice(&j.body).expect("the body is JSON");
    assert_eq!(&parsed, j.raw.value(), "the body sent is the parsed answer");
    j.raw["data"]
        .as_array()
        .expect("data")
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["index"], i, "indices restart at 0 for each request");
            d["embedding"].clone()
        })
        .collect()
}

fn upstream_calls(sim: &SimServer) -> u64 {
    sim.state()
        .stats()
        .requests
        .get(EMBED)
        .copied()
        .unwrap_or(0)
}

/// The vector a lone, unbatched request gets for `text`.
async fn alone(engine: &Engine, text: &str) -> Value {
    let done = engine
        .submit(embed_job("alone", json!(text), &[]))
        .await
        .expect("embedding");
    vectors(&done).remove(0)
}

#[tokio::test]
async fn concurrent_requests_share_one_call_and_get_their_own_vectors_in_order() {
    // Exactly the inputs sent, and a flush beyond the test's patience: the batch closes when
    // full, however slowly the machine starts the tasks.
    let settings = BatchSettings {
        max_inputs: 24,
        flush: Duration::from_secs(600),
    };
    let (sim, engine, batcher) = setup(settings).await;
    // Sizes 1, 3 and 2 in turn: the split must follow each request's own count.
    let inputs: Vec<Vec<String>> = (0..12)
        .map(|i| {
            (0..[1, 3, 2][i % 3])
                .map(|k| format!("text {i}.{k}"))
                .collect()
        })
        .collect();
    let runs: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(i, texts)| {
            let b = batcher.clone();
            let job = embed_job(&format!("r{i}"), json!(texts), &[]);
            tokio::spawn(async move { b.submit(job).await })
        })
        .collect();
    let mut answers = Vec::new();
    for r in runs {
        answers.push(r.await.expect("task").expect("embedding"));
    }
    assert_eq!(
        upstream_calls(&sim),
        1,
        "24 inputs from 12 requests in one call"
    );
    assert_eq!(sim.state().stats().inputs_total, 24);
    for (i, (done, texts)) in answers.iter().zip(&inputs).enumerate() {
        assert_eq!(
            done.meta.request_id,
            format!("r{i}"),
            "each keeps its own id"
        );
        let got = vectors(done);
        assert_eq!(
            got.len(),
            texts.len(),
            "request {i} gets one vector per input"
        );
        for (v, t) in got.iter().zip(texts) {
            assert_eq!(
                *v,
                alone(&engine, t).await,
                "request {i}: the vector of {t:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_full_batch_goes_at_once_and_different_parameters_never_merge() {
    // A flush far beyond the test's patience: only a full batch can answer in time.
    let settings = BatchSettings {
        max_inputs: 4,
        flush: Duration::from_secs(600),
    };
    let (sim, _engine, batcher) = setup(settings).await;
    let runs: Vec<_> = (0..4)
        .map(|i| {
            let b = batcher.clone();
            let job = embed_job(&format!("r{i}"), json!(format!("t{i}")), &[]);
            tokio::spawn(async move { b.submit(job).await })
        })
        .collect();
    for r in runs {
        let done = tokio::time::timeout(Duration::from_secs(20), r)
            .await
            .expect("a full batch does not wait for the flush")
            .expect("task")
            .expect("embedding");
        assert_eq!(vectors(&done).len(), 1);
    }
    assert_eq!(upstream_calls(&sim), 1);

    // Same model, other parameters: two batches, each closed when full.
    let runs: Vec<_> = (0..4)
        .map(|i| {
            let b = batcher.clone();
            let dims = if i % 2 == 0 { 8 } else { 4 };
            let job = embed_job(
                &format!("d{i}"),
                json!(["a", "b"]),
                &[("dimensions", json!(dims))],
            );
            tokio::spawn(async move { b.submit(job).await })
        })
        .collect();
    for r in runs {
        tokio::time::timeout(Duration::from_secs(20), r)
            .await
            .expect("full")
            .expect("task")
            .expect("embedding");
    }
    assert_eq!(upstream_calls(&sim), 3, "one call per parameter set");
}

#[tokio::test]
async fn one_bad_input_fails_only_its_own_request() {
    let settings = BatchSettings {
        max_inputs: 8,
        flush: Duration::from_secs(600),
    };
    let (sim, _engine, batcher) = setup(settings).await;
    let runs: Vec<_> = (0..8)
        .map(|i| {
            let b = batcher.clone();
            // The simulator, like OpenAI's API, refuses an empty string: the merged call fails.
            let text = if i == 5 {
                String::new()
            } else {
                format!("ok {i}")
            };
            let job = embed_job(&format!("r{i}"), json!(text), &[]);
            tokio::spawn(async move { b.submit(job).await })
        })
        .collect();
    for (i, r) in runs.into_iter().enumerate() {
        let result = r.await.expect("task");
        if i == 5 {
            match result {
                Err(EngineError::Refused { status: 400, .. }) => {}
                other => panic!("the bad input is refused as the caller's error: {other:?}"),
            }
        } else {
            let done = result
                .unwrap_or_else(|e| panic!("request {i} is not failed by another's input: {e}"));
            assert_eq!(vectors(&done).len(), 1);
        }
    }
    // The simulator counts the calls it ran: the refused ones (the merged call and the bad
    // input alone) are not among them, the seven good requests run alone are.
    assert_eq!(upstream_calls(&sim), 7);
}

#[tokio::test]
async fn batching_off_sends_each_request_alone() {
    let settings = BatchSettings {
        max_inputs: 1,
        flush: Duration::from_millis(50),
    };
    let (sim, _engine, batcher) = setup(settings).await;
    let runs: Vec<_> = (0..6)
        .map(|i| {
            let b = batcher.clone();
            let job = embed_job(&format!("r{i}"), json!("x"), &[]);
            tokio::spawn(async move { b.submit(job).await })
        })
        .collect();
    for r in runs {
        r.await.expect("task").expect("embedding");
    }
    assert_eq!(upstream_calls(&sim), 6);
}
