//! Configuration reload on a running `im-http` under load: SIGHUP and `POST /admin/reload` change
//! keys and priorities without losing a request; an invalid file, or one that changes what only a
//! restart can, is refused and the running configuration stays.

mod common;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use common::*;

const STAY: &str = "stay-key";

fn config(admin_key: &str, priority: &str) -> String {
    format!(
        r#"
priority = [{priority}]
[[keys]]
key = "{STAY}"
[[keys]]
key = "{admin_key}"
scopes = ["infer", "metrics", "admin"]
"#
    )
}

async fn call(c: &reqwest::Client, url: &str, key: &str, path: &str) -> (u16, Value) {
    let r = c
        .post(format!("{url}{path}"))
        .header("x-api-key", key)
        .send()
        .await
        .expect("answered");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Waits until im has taken `n` requests of a load.
async fn until_accepted(s: &Server, n: u64) {
    im_testkit::eventually("the load under way", Duration::from_secs(20), || async {
        get_json(&s.url, "/queue-status", STAY).await["counters"]["accepted"]
            .as_u64()
            .is_some_and(|a| a >= n)
    })
    .await
}

/// Reloads so far, applied or refused (`im_config_reloads_total`).
async fn reloads(s: &Server, key: &str) -> u64 {
    get_text(&s.url, "/metrics", key)
        .await
        .lines()
        .filter(|l| l.starts_with("im_config_reloads_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Sends SIGHUP and waits until im has reloaded (or refused to), as its metrics say.
async fn sighup(s: &Server, key: &str) {
    let before = reloads(s, key).await;
    let sent = Command::new("kill")
        .args(["-HUP", &s.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    im_testkit::eventually("the reload", Duration::from_secs(20), || async {
        reloads(s, key).await > before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_admin_reload_change_keys_and_priorities_under_load_and_lose_nothing() {
    let scratch = im_testkit::scratch_dir("im-reload");
    let dir = scratch.path();
    let file = dir.join("im.toml");
    std::fs::write(&file, config("old-admin", r#""txt2txt""#)).expect("write");
    let path = file.to_str().expect("utf-8").to_owned();
    let s = start_scaled("0.05", &["--config", &path]);
    let c = client();

    // Load with the key that stays, through both reloads.
    let url = s.url.clone();
    let load = tokio::spawn(async move {
        let c = client();
        let runs = (0..60).map(|i| {
            let (path, body) = body_for(KINDS[i % KINDS.len()], i);
            let (c, url) = (c.clone(), url.clone());
            async move {
                c.post(format!("{url}{path}"))
                    .header("x-api-key", STAY)
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }
        });
        futures_util::future::join_all(runs).await
    });
    until_accepted(&s, 10).await;

    // SIGHUP: a new admin key and another priority order, while the load runs.
    assert!(!load.is_finished(), "the reload comes under load");
    std::fs::write(&file, config("new-admin", r#""img2txt", "txt2img""#)).expect("write");
    sighup(&s, STAY).await;
    assert_eq!(call(&c, &s.url, "old-admin", "/admin/reload").await.0, 401);
    let (status, v) = call(&c, &s.url, "new-admin", "/admin/reload").await;
    assert_eq!(status, 200, "the new key is in force: {v}");
    assert_eq!(v["changed"], json!([]), "nothing new since the SIGHUP: {v}");

    // POST /admin/reload: priorities again.
    std::fs::write(&file, config("new-admin", r#""txt2img""#)).expect("write");
    let (status, v) = call(&c, &s.url, "new-admin", "/admin/reload").await;
    assert_eq!(
        (status, v["changed"].clone()),
        (200, json!(["priority"])),
        "{v}"
    );

    // An invalid file: refused, by SIGHUP and by the route; the running configuration stays.
    std::fs::write(&file, "priority = [\"teleport\"]\n").expect("write");
    sighup(&s, STAY).await;
    let (status, v) = call(&c, &s.url, "new-admin", "/admin/reload").await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("teleport")),
        "{v}"
    );
    // A change only a restart can make: refused, naming it.
    std::fs::write(
        &file,
        "shutdown_grace_s = 3.0\n".to_owned() + &config("new-admin", r#""txt2img""#),
    )
    .expect("write");
    let (status, v) = call(&c, &s.url, "new-admin", "/admin/reload").await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("shutdown_grace_s")),
        "{v}"
    );
    // An ordinary key may not reload.
    assert_eq!(call(&c, &s.url, STAY, "/admin/reload").await.0, 403);

    let answers = load.await.expect("load");
    assert_eq!(answers.len(), 60);
    for a in &answers {
        assert_eq!(
            a.as_ref().ok(),
            Some(&200),
            "every request answered: {answers:?}"
        );
    }
}

fn fleet_config(upstream: &str, name: &str, models: &[(&str, &str, u32)]) -> String {
    let mut s = format!(
        "[[upstreams]]\nurl = \"{upstream}\"\nname = \"{name}\"\n[[keys]]\nkey = \"{STAY}\"\nscopes = [\"infer\", \"metrics\", \"admin\"]\n"
    );
    for (model, kind, slots) in models {
        s += &format!(
            "[[models]]\nname = \"{model}\"\nkinds = [\"{kind}\"]\nmax_in_flight = {slots}\n"
        );
    }
    s
}

async fn chat(c: &reqwest::Client, url: &str, i: usize) -> u16 {
    let (path, body) = body_for("txt2txt", i);
    c.post(format!("{url}{path}"))
        .header("x-api-key", STAY)
        .json(&body)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_work_to_a_new_upstream_and_changes_models_under_load_losing_nothing() {
    let a = SimProcess::start(0, 0.05).await;
    let b = SimProcess::start(0, 0.05).await;
    let scratch = im_testkit::scratch_dir("im-reload-fleet");
    let dir = scratch.path();
    let file = dir.join("im.toml");
    let before = [(LLM, "txt2txt", 2), (SD, "txt2img", 1)];
    std::fs::write(&file, fleet_config(&a.url(), "gpu-a", &before)).expect("write");
    let path = file.to_str().expect("utf-8").to_owned();
    let s = start_args(&["--config", &path]);
    let c = client();

    // A steady load of chats, before, during and after the reload.
    let url = s.url.clone();
    let load = tokio::spawn(async move {
        let c = client();
        let mut runs = Vec::new();
        for i in 0..40 {
            let (c, url) = (c.clone(), url.clone());
            runs.push(tokio::spawn(async move { chat(&c, &url, i).await }));
            // Arrivals spread over time are the load under test: before, during and after.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let mut out = Vec::new();
        for r in runs {
            out.push(r.await.expect("request task"));
        }
        out
    });
    until_accepted(&s, 5).await;
    assert!(!load.is_finished(), "the reload comes under load");

    // gpu-a is replaced by gpu-b; stablediffusion goes, an embedding model comes.
    let after = [(LLM, "txt2txt", 4), ("bge-small-en-v1.5", "embed", 8)];
    std::fs::write(&file, fleet_config(&b.url(), "gpu-b", &after)).expect("write");
    let (status, v) = call(&c, &s.url, STAY, "/admin/reload").await;
    assert_eq!(status, 200, "{v}");
    for field in ["models", "upstreams"] {
        assert!(
            v["changed"]
                .as_array()
                .is_some_and(|c| c.contains(&json!(field))),
            "{v}"
        );
    }
    let answers = load.await.expect("load");
    assert!(
        answers.iter().all(|s| *s == 200),
        "every chat answered across the reload: {answers:?}"
    );

    // gpu-a is retired and gets nothing new; gpu-b serves.
    let served_by_a = a.stats().await["requests_total"].as_u64().unwrap();
    let served_by_b = b.stats().await["requests_total"].as_u64().unwrap();
    assert!(
        served_by_a > 0 && served_by_b > 0,
        "a: {served_by_a}, b: {served_by_b}"
    );
    for i in 0..5 {
        assert_eq!(chat(&c, &s.url, 100 + i).await, 200);
    }

    assert_eq!(
        a.stats().await["requests_total"].as_u64().unwrap(),
        served_by_a,
        "the retired upstream took new work"
    );
    let status = get_json(&s.url, "/status", STAY).await;
    let health: Vec<(String, String)> = status["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_owned(),
                b["health"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        health,
        vec![
            ("gpu-a".to_owned(), "retired".to_owned()),
            ("gpu-b".to_owned(), "healthy".to_owned())
        ]
    );
    let ready = c
        .get(format!("{}/ready", s.url))
        .send()
        .await
        .expect("ready");
    assert_eq!(
        ready.status(),
        200,
        "a retired upstream does not make im unready"
    );

    // The removed model is refused by name; the new one serves.
    let r = c
        .post(format!("{}/txt2img", s.url))
        .header("x-api-key", STAY)
        .json(&json!({"model": SD, "prompt": "fox", "width": 16, "height": 16, "steps": 2}))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 404, "the removed model is unknown now");
    let r = c
        .post(format!("{}/v1/embeddings", s.url))
        .header("x-api-key", STAY)
        .json(&json!({"model": "bge-small-en-v1.5", "input": ["a", "b"]}))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 200);
    let models = get_json(&s.url, "/v1/models", STAY).await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(
        ids.contains(&"bge-small-en-v1.5") && !ids.contains(&SD),
        "{ids:?}"
    );
}
