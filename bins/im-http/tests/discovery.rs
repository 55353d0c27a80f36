//! The fleet as it is (issue 31), with real processes: `im-http` in front of `localai-sim`
//! processes whose catalogues differ, one of them down when im starts, models installed and
//! removed while im runs.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

async fn call(url: &str, path: &str, body: &Value) -> (u16, Value) {
    post(&client(), url, path, body).await
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
}

fn image(model: &str) -> Value {
    json!({"model": model, "prompt": "fox", "width": 16, "height": 16, "steps": 2})
}

/// `GET url` with the key, as JSON (null when it is not).
async fn get_json(url: &str) -> Value {
    client()
        .get(url)
        .header("x-api-key", KEY)
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .unwrap_or(Value::Null)
}

/// The lanes `/placement` says may host `model` for `kind`.
async fn hosts(url: &str, kind: &str, model: &str) -> Vec<String> {
    let v = get_json(&format!("{url}/placement?kind={kind}&model={model}")).await;
    v["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["can_host"] == true)
        .filter_map(|b| b["backend"].as_str().map(str::to_owned))
        .collect()
}

async fn models(url: &str) -> Vec<String> {
    let v = get_json(&format!("{url}/v1/models")).await;
    v["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_with_a_box_down_starts_serves_each_model_where_it_is_and_takes_the_box_in() {
    // Box 0 carries both kinds of model but is down when im starts; box 1 carries only the
    // image model, box 2 only the LLM. No `[[models]]`: everything is discovered.
    let down_port = SimProcess::free_port();
    let images = SimProcess::start_with(0, 0.001, Some(&[SD])).await;
    let llms = SimProcess::start_with(0, 0.001, Some(&[LLM])).await;
    let upstreams = [
        format!("http://127.0.0.1:{down_port}"),
        images.url(),
        llms.url(),
    ];
    let im = start_in_front_of(
        &upstreams,
        &[
            "--api-keys",
            KEY,
            "--set",
            "discovery.refresh_s=0.3;breaker.health_check_s=0.2;breaker.cooldown_s=0.2;retry.base_ms=10;retry.cap_ms=50",
        ],
    );
    let listed = models(&im.url).await;
    assert!(
        listed.contains(&LLM.to_owned()) && listed.contains(&SD.to_owned()),
        "{listed:?}"
    );
    for _ in 0..6 {
        assert_eq!(
            call(&im.url, "/v1/chat/completions", &chat(LLM)).await.0,
            200
        );
        assert_eq!(call(&im.url, "/txt2img", &image(SD)).await.0, 200);
    }
    assert_eq!(hosts(&im.url, "txt2img", SD).await, ["lane1"]);
    assert_eq!(hosts(&im.url, "txt2txt", LLM).await, ["lane2"]);
    // `/status` says what each backend serves.
    let status = get_json(&format!("{}/status", im.url)).await;
    let serves = |name: &str| -> Vec<String> {
        status["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["name"] == name)
            .and_then(|b| b["models"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|m| m.as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(serves("lane1"), [SD]);
    assert_eq!(serves("lane2"), [LLM]);

    // Box 0 comes up with both models: it joins within a reading.
    let both = SimProcess::start_with(down_port, 0.001, Some(&[LLM, SD])).await;
    im_testkit::eventually("box 0 taken in", Duration::from_secs(20), || async {
        hosts(&im.url, "txt2img", SD).await == ["default", "lane1"]
            && hosts(&im.url, "txt2txt", LLM).await == ["default", "lane2"]
    })
    .await;
    for _ in 0..6 {
        assert_eq!(
            call(&im.url, "/v1/chat/completions", &chat(LLM)).await.0,
            200
        );
        assert_eq!(call(&im.url, "/txt2img", &image(SD)).await.0, 200);
    }
    let (i, l, b) = (images.stats().await, llms.stats().await, both.stats().await);
    for (name, s) in [("images", &i), ("llms", &l), ("both", &b)] {
        assert_eq!(
            s["unknown_model"], 0,
            "{name} was asked for a model it lacks: {s}"
        );
    }
    assert!(i["requests"].get(LLM).is_none(), "{i}");
    assert!(l["requests"].get(SD).is_none(), "{l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_installed_is_served_at_once_and_one_removed_leaves_after_its_work() {
    let sim = SimProcess::start_with(0, 0.02, Some(&[LLM])).await;
    let im = start_in_front_of(
        &[sim.url()],
        &["--api-keys", KEY, "--set", "discovery.refresh_s=1"],
    );
    assert!(
        !models(&im.url).await.contains(&SD.to_owned()),
        "not installed yet"
    );
    // Installed from the gallery while im runs: served on its first request after that.
    let applied = client()
        .post(format!("{}/models/apply", sim.url()))
        .json(&json!({"id": format!("localai@{SD}")}))
        .send()
        .await
        .expect("apply");
    assert!(applied.status().is_success());
    let (status, v) = call(&im.url, "/txt2img", &image(SD)).await;
    assert_eq!(status, 200, "{v}");

    // Removed while a request for it runs: that one completes, later ones get 404 within a
    // reading.
    let slow = json!({"model": SD, "prompt": "fox", "width": 16, "height": 16, "steps": 40});
    let running = tokio::spawn({
        let url = im.url.clone();
        async move { call(&url, "/txt2img", &slow).await.0 }
    });
    im_testkit::eventually(
        "the slow image running",
        Duration::from_secs(10),
        || async { sim.stats().await["requests"][SD].as_u64() >= Some(2) },
    )
    .await;
    let removed = client()
        .post(format!("{}/models/delete/{SD}", sim.url()))
        .send()
        .await
        .expect("delete");
    assert!(removed.status().is_success());
    let at = Instant::now();
    im_testkit::eventually(
        "the removed model refused",
        Duration::from_secs(10),
        || async { call(&im.url, "/txt2img", &image(SD)).await.0 == 404 },
    )
    .await;
    assert!(
        at.elapsed() < Duration::from_secs(3),
        "refused within a reading (refresh_s = 1): {:?}",
        at.elapsed()
    );
    assert_eq!(
        running.await.expect("joined"),
        200,
        "accepted work completes"
    );
    assert!(!models(&im.url).await.contains(&SD.to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_random_model_names_cause_a_handful_of_readings() {
    let sim = SimProcess::start_with(0, 0.0, Some(&[LLM])).await;
    // No periodic readings: every reading here is one a miss caused.
    let im = start_in_front_of(
        &[sim.url()],
        &["--api-keys", KEY, "--set", "discovery.refresh_s=0"],
    );
    let before = sim.stats().await["catalogue_reads"].as_u64().unwrap_or(0);
    let started = Instant::now();
    // Each miss waits for the next reading (at most one a second), shared by every miss
    // waiting then: 250 clients asking 4 names each take some four seconds.
    let mut set = tokio::task::JoinSet::new();
    for worker in 0..250 {
        let url = im.url.clone();
        set.spawn(async move {
            for i in 0..4 {
                let name = format!("random-{worker}-{i}-{}", 7919 * i + worker);
                let (status, _) = call(&url, "/v1/chat/completions", &chat(&name)).await;
                assert_eq!(status, 404, "{name}");
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("worker");
    }
    let took = started.elapsed();
    let reads = sim.stats().await["catalogue_reads"].as_u64().unwrap_or(0) - before;
    // At most one miss-driven reading a second (each reads `/v1/models/capabilities` once).
    let bound = 2 + took.as_secs();
    assert!(
        reads <= bound,
        "{reads} readings for 1,000 unknown names in {took:?} (bound {bound})"
    );
    assert_eq!(
        call(&im.url, "/v1/chat/completions", &chat(LLM)).await.0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_name_is_a_lane_per_address_and_follows_the_addresses() {
    // `localai.test` resolves (through a hosts file the test writes) to two, then three, then
    // two boxes on loopback addresses, one port for all: an LLM box, an image box, then one
    // with both, which then replaces the LLM box.
    let scratch = im_testkit::scratch_dir("im-dns");
    let hosts_file = scratch.path().join("hosts");
    let write_hosts = |ips: &[&str]| {
        let lines: String = ips
            .iter()
            .map(|ip| format!("{ip} localai.test\n"))
            .collect();
        std::fs::write(&hosts_file, lines).expect("hosts file");
    };
    let port = std::net::TcpListener::bind("127.0.0.2:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let llms = SimProcess::start_at("127.0.0.2", port, 0.01, Some(&[LLM])).await;
    let images = SimProcess::start_at("127.0.0.3", port, 0.001, Some(&[SD])).await;
    write_hosts(&["127.0.0.2", "127.0.0.3"]);
    let im = start_in_front_of(
        &[format!("dns+http://localai.test:{port}")],
        &[
            "--api-keys",
            KEY,
            "--set",
            &format!(
                "discovery.refresh_s=0.3;discovery.hosts_file={};breaker.health_check_s=0.2",
                hosts_file.display()
            ),
        ],
    );
    assert_eq!(hosts(&im.url, "txt2txt", LLM).await, ["default#0"]);
    assert_eq!(hosts(&im.url, "txt2img", SD).await, ["default#1"]);
    assert_eq!(
        call(&im.url, "/v1/chat/completions", &chat(LLM)).await.0,
        200
    );
    assert_eq!(call(&im.url, "/txt2img", &image(SD)).await.0, 200);

    // A third address joins within a reading.
    let both = SimProcess::start_at("127.0.0.4", port, 0.01, Some(&[LLM, SD])).await;
    write_hosts(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    im_testkit::eventually(
        "the third box is a lane",
        Duration::from_secs(20),
        || async { hosts(&im.url, "txt2txt", LLM).await == ["default#0", "default#2"] },
    )
    .await;

    // The LLM box leaves while chats run and queue: none is lost, the lane is retired.
    let url = im.url.clone();
    let chats: Vec<_> = (0..12)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { call(&url, "/v1/chat/completions", &chat(LLM)).await.0 })
        })
        .collect();
    write_hosts(&["127.0.0.3", "127.0.0.4"]);
    for c in chats {
        assert_eq!(c.await.expect("chat"), 200);
    }
    im_testkit::eventually("the LLM box retired", Duration::from_secs(20), || async {
        hosts(&im.url, "txt2txt", LLM).await == ["default#2"]
    })
    .await;
    for _ in 0..4 {
        assert_eq!(
            call(&im.url, "/v1/chat/completions", &chat(LLM)).await.0,
            200
        );
    }
    // A new address takes the freed slot: the lane table does not grow.
    let again = SimProcess::start_at("127.0.0.5", port, 0.01, Some(&[LLM])).await;
    write_hosts(&["127.0.0.3", "127.0.0.4", "127.0.0.5"]);
    im_testkit::eventually(
        "the new box takes slot 0",
        Duration::from_secs(20),
        || async { hosts(&im.url, "txt2txt", LLM).await == ["default#0", "default#2"] },
    )
    .await;
    let status = get_json(&format!("{}/status", im.url)).await;
    let lanes = status["backends"].as_array().map_or(0, Vec::len);
    assert_eq!(lanes, 3, "{status}");
    for s in [&llms, &images, &both, &again] {
        let stats = s.stats().await;
        assert_eq!(
            stats["unknown_model"], 0,
            "asked for a model it lacks: {stats}"
        );
    }
}
