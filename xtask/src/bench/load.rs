//! The seeds' load scenarios (`cargo xtask load`): virtual users with think time.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use inference_queue::{Kind, sim};
use serde_json::json;

use super::scheduling::request_for;
use super::*;

/// The seeds' load scenarios: think time between requests per virtual user.
pub fn scenario(name: &str) -> Result<(f64, f64)> {
    Ok(match name {
        "normal" => (1.0, 5.0),
        "peak" => (0.1, 1.0),
        "sustained" => (5.0, 10.0),
        other => bail!("unknown scenario {other:?}: normal, peak or sustained"),
    })
}

/// `cargo xtask load`: virtual users send random kinds with the scenario's think time.
pub async fn load(
    out: &mut String,
    url: &str,
    key: &str,
    name: &str,
    users: usize,
    secs: u64,
) -> Result<()> {
    let (lo, hi) = scenario(name)?;
    let c = client();
    let img = Arc::new(png_b64(16));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut hs = Vec::new();
    for u in 0..users {
        let (c, url, key, img) = (c.clone(), url.to_owned(), key.to_owned(), img.clone());
        hs.push(tokio::spawn(async move {
            let mut rng = inference_queue::Rng::new(u as u64 + 1);
            let mut res = Vec::new();
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_secs_f64(rng.range_f64(lo, hi))).await;
                let kind = Kind::SEEDS[(rng.next_u64() % 4) as usize];
                let item = sim::TraceItem {
                    at: inference_queue::Time::ZERO,
                    kind,
                    model: 0,
                    service: Duration::from_secs(2),
                    failures: 0,
                    tenant: 0,
                    class: Default::default(),
                    deadline: None,
                    prompt: None,
                };
                let (path, mut body) = request_for(&item, &img);
                if body.get("max_tokens").is_some() {
                    body["max_tokens"] = json!(32);
                }
                if body.get("step").is_some() {
                    body["step"] = json!(4);
                }
                let t = Instant::now();
                let ok = answered_ok(
                    c.post(format!("{url}{path}"))
                        .header("x-api-key", &key)
                        .json(&body)
                        .send()
                        .await,
                )
                .await;
                res.push((ok, t.elapsed().as_secs_f64() * 1000.0));
            }
            res
        }));
    }
    let mut lat = Vec::new();
    let mut failures = 0;
    for h in hs {
        for (ok, ms) in h.await? {
            if ok {
                lat.push(ms);
            } else {
                failures += 1;
            }
        }
    }
    let total = lat.len() + failures;
    let _ = writeln!(
        out,
        "| {name} | {users} | {secs} | {total} | {:.2} | {:.0} | {:.0} | {:.0} | {failures} |",
        total as f64 / secs as f64,
        q(&lat, 0.5),
        q(&lat, 0.95),
        q(&lat, 0.99)
    );
    Ok(())
}

/// Start `im-http --simulate` (release) for the load scenarios; returns the process and its URL.
pub fn start_simulated_im(scale: f64) -> Result<(Proc, String)> {
    let p = free_port();
    let child = std::process::Command::new(crate::bench::release_bin("im-http"))
        .args([
            "--simulate",
            "--listen",
            &format!("127.0.0.1:{p}"),
            "--sim-time-scale",
            &scale.to_string(),
            "--api-keys",
            KEY,
        ])
        .env("RUST_LOG", "error")
        .env_remove("IM_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting im-http --simulate")?;
    let proc = Proc(child);
    crate::bench::wait_ready(p, "/health", None)?;
    Ok((proc, format!("http://127.0.0.1:{p}")))
}
