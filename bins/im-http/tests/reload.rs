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

async fn sighup(s: &Server) {
    let sent = Command::new("kill")
        .args(["-HUP", &s.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    // The reload runs on im's side; give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_admin_reload_change_keys_and_priorities_under_load_and_lose_nothing() {
    let dir = temp_dir("im-reload");
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
    tokio::time::sleep(Duration::from_millis(300)).await;

    // SIGHUP: a new admin key and another priority order, while the load runs.
    assert!(!load.is_finished(), "the reload comes under load");
    std::fs::write(&file, config("new-admin", r#""img2txt", "txt2img""#)).expect("write");
    sighup(&s).await;
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
    sighup(&s).await;
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
    let _ = std::fs::remove_dir_all(dir);
}
