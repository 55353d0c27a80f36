//! The fencing gate in front of a simulated LocalAI: older tokens are refused before they reach
//! it, and a call of an older token still running is cut when a newer token arrives.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use localai_sim::{SimConfig, SimServer};
use serde_json::{Value, json};

const LLM: &str = "llama-3.2-3b-instruct";

async fn gate_in_front_of(sim: &SimServer) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let app = im_fence::gate(im_fence::GateSettings {
        upstream: sim.url().to_owned(),
        body_limit: 1 << 20,
        secret: None,
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn chat(gate: &str, token: Option<u64>, stream: bool) -> reqwest::RequestBuilder {
    let r = reqwest::Client::new()
        .post(format!("{gate}/v1/chat/completions"))
        .json(
            &json!({"model": LLM, "stream": stream, "max_tokens": if stream { 256 } else { 4 },
                      "messages": [{"role": "user", "content": "count"}]}),
        );
    match token {
        Some(t) => r.header("x-im-fence", t.to_string()),
        None => r,
    }
}

/// The status of a short chat through the gate with `token`.
async fn status(gate: &str, token: Option<u64>) -> u16 {
    chat(gate, token, false)
        .send()
        .await
        .expect("send")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_refuses_older_tokens_and_cuts_their_running_calls() {
    let mut cfg = SimConfig::default();
    for m in &mut cfg.models {
        m.load_ms = 10;
        m.per_token_ms = 10.0;
    }
    let sim = SimServer::start(cfg).await.expect("sim");
    let gate = gate_in_front_of(&sim).await;

    assert_eq!(status(&gate, Some(5)).await, 200);
    assert_eq!(status(&gate, None).await, 200, "unfenced callers pass");
    let stale = chat(&gate, Some(4), false).send().await.expect("send");
    assert_eq!(stale.status(), 409);
    let body: Value = stale.json().await.expect("json");
    assert_eq!(body["error"]["type"], "stale_fence", "{body}");
    assert_eq!(
        sim.state().stats().requests_total,
        2,
        "the stale call never reached LocalAI"
    );
    // A read with an older token passes: it changes nothing, and refusing a new scheduler's
    // health check before its epoch is raised would only mark its upstream down.
    for path in ["/readyz", "/v1/models"] {
        let read = reqwest::Client::new()
            .get(format!("{gate}{path}"))
            .header("x-im-fence", "4")
            .send()
            .await
            .expect("send");
        let st = read.status();
        assert_eq!(st, 200, "{path}: {}", read.text().await.unwrap_or_default());
    }
    assert_eq!(status(&gate, Some(4)).await, 409, "writes stay refused");

    // A stream of token 5 runs (256 tokens, 10 ms each); token 6 arrives: the stream is cut.
    let started = Instant::now();
    let mut stream = chat(&gate, Some(5), true)
        .send()
        .await
        .expect("send")
        .bytes_stream();
    let first = stream.next().await.expect("a first chunk").expect("ok");
    assert!(!first.is_empty());
    // The newer scheduler's first call arrives while the stream runs.
    let newer = tokio::spawn(chat(&gate, Some(6), false).send());
    let mut rest = Vec::new();
    let mut cut = false;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("ends")
    {
        match chunk {
            Ok(c) => rest.extend_from_slice(&c),
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&rest);
    assert!(
        cut,
        "the old scheduler's stream ends in an error, not as if complete: {text}"
    );
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "cut at once, well before its 256 tokens"
    );
    assert_eq!(newer.await.expect("task").expect("send").status(), 200);
    assert_eq!(status(&gate, Some(5)).await, 409);
}
