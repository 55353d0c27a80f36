//! Fair share between tenants inside a group (issue 32), through the whole stack: a key that
//! floods a model does not make another key of that model wait behind all of its work.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use im_app::config::{ImConfig, KeyEntry, ModelEntry};
use im_app::{self as app, Simulate};
use serde_json::{Value, json};

const LLM: &str = "llama-3.2-3b-instruct";

fn key(k: &str) -> KeyEntry {
    KeyEntry {
        key: k.into(),
        scopes: vec![im_service::Scope::Infer, im_service::Scope::Metrics],
        ..KeyEntry::default()
    }
}

async fn chat(c: &reqwest::Client, url: &str, k: &str, extra: Option<(&str, &str)>) -> Duration {
    let started = Instant::now();
    let mut req = c
        .post(format!("{url}/v1/chat/completions"))
        .header("x-api-key", k)
        .json(&json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}));
    if let Some((h, v)) = extra {
        req = req.header(h, v);
    }
    let r = req.send().await.expect("answered");
    assert_eq!(r.status(), 200, "{:?}", r.json::<Value>().await);
    started.elapsed()
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// im over the simulator with the chat model running one request at a time, keys `flood` and
/// `light` (each its own tenant); its URL.
async fn serve() -> (String, im_app::Built) {
    let mut cfg = ImConfig::default();
    cfg.keys = vec![key("flood"), key("light")];
    cfg.models = vec![ModelEntry {
        name: LLM.into(),
        kinds: vec!["txt2txt".into()],
        max_in_flight: Some(1),
        ..Default::default()
    }];
    cfg.jobs.enabled = false;
    let built = app::build(cfg, Some(Simulate { time_scale: 0.5 }))
        .await
        .expect("build");
    let url = common::listen(&built).await;
    (url, built)
}

/// What `light` (a key) sees, one request at a time, while the key `flood` keeps 16 requests
/// in flight (its `priority` header on each, if any): the median latency, and the median number
/// of flood requests answered while one light request was in im (first come, first served: the
/// whole queue, about 16; fair share: the one running).
async fn light_under_flood(
    url: &str,
    light_key: &str,
    priority: Option<(&str, &str)>,
) -> (Duration, usize) {
    let c = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut flooders = Vec::new();
    for _ in 0..16 {
        let (c, url, stop) = (c.clone(), url.to_owned(), stop.clone());
        let answered = answered.clone();
        let priority = priority.map(|(h, v)| (h.to_owned(), v.to_owned()));
        flooders.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let p = priority.as_ref().map(|(h, v)| (h.as_str(), v.as_str()));
                chat(&c, &url, "flood", p).await;
                answered.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Let the flood fill the queue first.
    im_testkit::eventually("the flood queued", Duration::from_secs(20), || async {
        let v: Value = match c
            .get(format!("{url}/queue-status"))
            .header("x-api-key", "flood")
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        v["groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g["depth"].as_u64() >= Some(8)))
    })
    .await;
    let (mut light, mut ahead) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let before = answered.load(Ordering::SeqCst);
        light.push(chat(&c, url, light_key, None).await);
        ahead.push(answered.load(Ordering::SeqCst) - before);
    }
    stop.store(true, Ordering::SeqCst);
    for f in flooders {
        f.await.expect("flooder");
    }
    eprintln!("ahead of each light request: {ahead:?}");
    ahead.sort_unstable();
    (median(light), ahead[ahead.len() / 2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_key_is_not_queued_behind_a_flooding_one() {
    let (url, _built) = serve().await;
    let c = reqwest::Client::new();
    chat(&c, &url, "light", None).await; // the model loaded
    let alone = median(vec![
        chat(&c, &url, "light", None).await,
        chat(&c, &url, "light", None).await,
        chat(&c, &url, "light", None).await,
    ]);
    let (flooded, ahead) = light_under_flood(&url, "light", None).await;
    // Service is not preemptive: the light request waits for the flooder's running one, then
    // runs. Latency is printed
    // (the target: the median within two service times and 20 ms); what is asserted is
    // the order, which a loaded machine does not change.
    eprintln!("light key: alone {alone:?}, under a flood of 16 {flooded:?}; {ahead} ahead");
    assert!(
        ahead <= 2,
        "{ahead} flood requests answered while a light one waited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_requests_go_before_a_batch_flood_of_the_same_key() {
    let (url, _built) = serve().await;
    let c = reqwest::Client::new();
    chat(&c, &url, "flood", None).await; // the model loaded
    let alone = median(vec![
        chat(&c, &url, "flood", None).await,
        chat(&c, &url, "flood", None).await,
        chat(&c, &url, "flood", None).await,
    ]);
    // One tenant: only the class can put its interactive requests first.
    let (flooded, ahead) = light_under_flood(&url, "flood", Some(("x-im-priority", "batch"))).await;
    eprintln!("interactive: alone {alone:?}, under a batch flood {flooded:?}; {ahead} ahead");
    assert!(
        ahead <= 1,
        "{ahead} batch requests answered while an interactive one waited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_other_than_interactive_or_batch_is_refused() {
    let (url, _built) = serve().await;
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .header("x-api-key", "light")
        .header("x-im-priority", "urgent")
        .json(&json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("JSON");
    assert_eq!(v["error"]["param"], "X-Im-Priority", "{v}");
}
