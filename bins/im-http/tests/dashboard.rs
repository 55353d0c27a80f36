//! The dashboard in a real headless browser (Debian's Chromium): under load it shows the lanes
//! and groups of a running `im-http --simulate` without console errors; without a key, or with
//! a wrong one, it shows nothing but the key form. `UPDATE_SCREENSHOT=1` writes the screenshot
//! the README shows (`benches/results/dashboard.png`).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

fn chromium() -> String {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return name.to_owned();
        }
    }
    panic!("no Chromium: install Debian's `chromium` (.ci/run does when it is missing)");
}

/// Load `url` in headless Chromium for a few seconds; the DOM then, and the console messages.
fn browse(url: &str, screenshot: Option<&PathBuf>) -> (String, Vec<String>) {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1400,820",
        "--virtual-time-budget=4000",
        "--enable-logging=stderr",
        "--v=0",
    ]);
    match screenshot {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let console = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_owned)
        .collect();
    (String::from_utf8_lossy(&out.stdout).into_owned(), console)
}

/// The page's DOM once it contains `awaited`, with no console message on any load. The page
/// renders what its WebSocket brings, and on a loaded machine that may come after the browser's
/// snapshot, so it is loaded again (a fresh page each time) until it does, for up to two minutes.
async fn browse_until(url: &str, awaited: &str) -> String {
    let what = format!("the page to show {awaited}");
    im_testkit::until(&what, Duration::from_secs(120), || async {
        let url = url.to_owned();
        let (seen, console) = tokio::task::spawn_blocking(move || browse(&url, None))
            .await
            .expect("browser");
        assert!(console.is_empty(), "console messages: {console:?}");
        seen.contains(awaited).then_some(seen)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_lanes_and_groups_under_load_without_console_errors() {
    let s = start_scaled("0.2", &[]);
    let url = s.url.clone();
    // Load that keeps both a model loading and groups waiting while the page is open.
    let load = tokio::spawn(async move {
        let c = client();
        let runs = (0..40).map(|i| {
            let (path, body) = body_for(KINDS[i % KINDS.len()], i);
            let (c, url) = (c.clone(), url.clone());
            async move { post(&c, &url, &path, &body).await.0 }
        });
        futures_util::future::join_all(runs).await
    });
    im_testkit::eventually("the load under way", Duration::from_secs(20), || async {
        get_json(&s.url, "/queue-status", KEY).await["counters"]["accepted"]
            .as_u64()
            .is_some_and(|n| n >= 10)
    })
    .await;

    let page = format!("{}/dashboard#key={KEY}", s.url);
    let dom = browse_until(&page, ">default<").await;
    assert!(dom.contains(">live<"), "connected and authenticated");
    assert!(dom.contains(">default<"), "the lane is shown");
    assert!(
        dom.contains(LLM) || dom.contains(SD) || dom.contains(VLM),
        "groups and models are shown"
    );
    assert!(dom.contains("healthy"), "lane health");

    let scratch = im_testkit::scratch_dir("im-dashboard");
    let shot = match std::env::var("UPDATE_SCREENSHOT") {
        Ok(_) => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../benches/results/dashboard.png")
        }
        Err(_) => scratch.path().join("dashboard.png"),
    };
    let target = shot.clone();
    let (_, console) = tokio::task::spawn_blocking(move || browse(&page, Some(&target)))
        .await
        .expect("browser");
    assert!(console.is_empty(), "console messages: {console:?}");
    let png = std::fs::read(&shot).expect("a screenshot");
    let dimension = |at: usize| {
        png.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    assert_eq!(
        (dimension(16), dimension(20)),
        (Some(1400), Some(820)),
        "the window's size"
    );
    let answers = load.await.expect("load");
    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_valid_key_the_dashboard_shows_only_the_key_form() {
    let s = start(&[]);
    for (url, refused) in [
        (format!("{}/dashboard", s.url), false),
        (format!("{}/dashboard#key=wrong-key", s.url), true),
    ] {
        // A refused key shows the form once the WebSocket's refusal arrives.
        let dom = browse_until(&url, r#"<div id="login">"#).await;
        assert!(
            dom.contains(r#"<div id="app" hidden="">"#),
            "nothing shown: {dom}"
        );
        assert!(dom.contains(r#"<div id="login">"#), "the key form: {dom}");
        assert_eq!(
            dom.contains(r#"<p id="login-error" class="bad">That key was refused.</p>"#),
            refused,
            "{dom}"
        );
        assert!(!dom.contains(">default<"), "no lane data");
    }
}
