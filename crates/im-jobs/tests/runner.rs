//! The job service over a real store with a scripted runner: results inline or as files,
//! refusals for load waited out, recovery after a restart, cancellation of a running job, and
//! the keep time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use im_jobs::{
    Answer, JobStore, Jobs, JobsConfig, RedbStore, Request, Runner, Secret, Status, Stored,
    Submission,
};
use serde_json::json;

/// Answers by route: `/audio` bytes, `/slow` after an hour, `/busy` 429 twice then JSON, `/bad`
/// a 400, anything else small JSON.
#[derive(Default)]
struct Script {
    runs: AtomicU32,
    busy: AtomicU32,
}

#[async_trait::async_trait]
impl Runner for Script {
    async fn run(&self, _owner: &str, request: &Request) -> Answer {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let answer = |status: u16, content_type: &str, body: Bytes| Answer {
            status,
            content_type: content_type.into(),
            body,
        };
        match request.route.as_str() {
            "/audio" => answer(200, "audio/wav", Bytes::from_static(b"RIFF....WAVE")),
            "/slow" => {
                // A job that never ends is under test.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                answer(200, "application/json", Bytes::from_static(b"{}"))
            }
            "/busy" if self.busy.fetch_add(1, Ordering::SeqCst) < 2 => answer(
                429,
                "application/json",
                Bytes::from_static(br#"{"error":{"type":"queue_full","message":"full"}}"#),
            ),
            "/bad" => answer(
                400,
                "application/json",
                Bytes::from_static(
                    br#"{"error":{"type":"invalid_request","message":"no","param":"model"}}"#,
                ),
            ),
            _ => answer(
                200,
                "application/json",
                Bytes::from(json!({"ok": request.body}).to_string()),
            ),
        }
    }
}

fn config(keep: Duration) -> JobsConfig {
    JobsConfig {
        max_running: 4,
        keep,
        inline_max_bytes: 1024,
        allow_private_callbacks: false,
        webhook_secret: Secret::parse(&Secret::generate()).expect("secret"),
        retry_schedule: JobsConfig::standard_schedule(),
        delivery_timeout: Duration::from_secs(1),
        inbound_secret: None,
        tolerance_s: 300,
        ingest_body_limit: 1 << 20,
        deliveries_per_origin: 4,
    }
}

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "im-jobs-runner-{name}-{}",
        im_jobs::signing::random_id("")
    ));
    std::fs::create_dir_all(&d).expect("dir");
    d
}

fn start_on(store: RedbStore, runner: Arc<Script>, keep: Duration) -> (Jobs, Arc<RedbStore>) {
    let store = Arc::new(store);
    let jobs = Jobs::start(
        store.clone(),
        runner,
        config(keep),
        im_metrics::Metrics::new(),
    )
    .expect("start");
    (jobs, store)
}

fn start(dir: &std::path::Path, runner: Arc<Script>, keep: Duration) -> (Jobs, Arc<RedbStore>) {
    start_on(RedbStore::open(dir).expect("store"), runner, keep)
}

fn submission(route: &str) -> Submission {
    Submission {
        owner: "key-a".into(),
        quota: None,
        request: Request {
            route: route.into(),
            body: json!({"n": 1}),
        },
        callback_url: None,
        idempotency_key: None,
    }
}

async fn settle(jobs: &Jobs, id: &str) -> im_jobs::Job {
    im_testkit::until(
        &format!("job {id} to finish"),
        Duration::from_secs(20),
        || async {
            Some(jobs.get("key-a", id).await.expect("job")).filter(|j| j.status.is_final())
        },
    )
    .await
}

async fn until_running(jobs: &Jobs, id: &str) {
    im_testkit::eventually(
        &format!("job {id} running"),
        Duration::from_secs(20),
        || async { jobs.get("key-a", id).await.expect("job").status == Status::Running },
    )
    .await
}

#[tokio::test]
async fn small_json_is_kept_inline_and_binary_answers_as_files() {
    let d = dir("results");
    let (jobs, _) = start(&d, Arc::default(), Duration::from_secs(3600));
    let (json_job, new) = jobs.submit(submission("/json")).await.expect("submit");
    assert!(new);
    let (audio, _) = jobs.submit(submission("/audio")).await.expect("submit");
    let j = settle(&jobs, &json_job.id).await;
    assert_eq!(
        j.result,
        Some(Stored::Inline {
            value: json!({"ok": {"n": 1}})
        })
    );
    let a = settle(&jobs, &audio.id).await;
    let Some(Stored::File {
        name,
        content_type,
        bytes,
    }) = a.result
    else {
        panic!("a file: {a:?}");
    };
    assert_eq!((content_type.as_str(), bytes), ("audio/wav", 12));
    assert_eq!(
        jobs.result(&name).await.expect("store").expect("kept"),
        b"RIFF....WAVE"
    );
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test]
async fn a_refusal_for_load_is_waited_out_and_a_4xx_fails_the_job() {
    let d = dir("load");
    let (jobs, _) = start(&d, Arc::default(), Duration::from_secs(3600));
    let (busy, _) = jobs.submit(submission("/busy")).await.expect("submit");
    let (bad, _) = jobs.submit(submission("/bad")).await.expect("submit");
    assert_eq!(settle(&jobs, &busy.id).await.status, Status::Succeeded);
    let b = settle(&jobs, &bad.id).await;
    assert_eq!(b.status, Status::Failed);
    let e = b.error.expect("error");
    assert_eq!(
        (e["param"].as_str(), e["status"].as_u64()),
        (Some("model"), Some(400))
    );
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test]
async fn after_a_restart_running_jobs_run_again_and_finished_ones_do_not() {
    let d = dir("restart");
    // What a process that died mid-job leaves: one job finished, one marked running.
    let (slow_id, done_id) = {
        let (jobs, store) = start(&d, Arc::default(), Duration::from_secs(3600));
        let (done, _) = jobs.submit(submission("/json")).await.expect("submit");
        settle(&jobs, &done.id).await;
        let (slow, _) = jobs.submit(submission("/slow")).await.expect("submit");
        until_running(&jobs, &slow.id).await;
        let mut left = store.get(&slow.id).expect("db").expect("job");
        assert_eq!(left.status, Status::Running);
        // Copy the store's state into a fresh directory, as the next process would find it.
        left.request.route = "/json".into(); // this time it finishes
        let next = RedbStore::open(&d.join("next")).expect("store");
        next.put(&left).expect("db");
        next.put(&store.get(&done.id).expect("db").expect("job"))
            .expect("db");
        (slow.id, done.id)
    };
    let script = Arc::new(Script::default());
    let (jobs, _) = start(&d.join("next"), script.clone(), Duration::from_secs(3600));
    let s = settle(&jobs, &slow_id).await;
    assert_eq!((s.status, s.attempts), (Status::Succeeded, 2), "run again");
    let finished = jobs.get("key-a", &done_id).await.expect("job");
    assert_eq!(finished.attempts, 1, "a finished job is not run again");
    assert_eq!(
        script.runs.load(Ordering::SeqCst),
        1,
        "only the interrupted one ran"
    );
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test]
async fn a_cancelled_running_job_stays_cancelled_and_finished_jobs_expire() {
    let d = dir("cancel");
    let (jobs, store) = start(&d, Arc::default(), Duration::from_millis(300));
    let (slow, _) = jobs.submit(submission("/slow")).await.expect("submit");
    until_running(&jobs, &slow.id).await;
    let c = jobs.cancel("key-a", &slow.id).await.expect("cancel");
    assert_eq!(c.status, Status::Cancelled);
    assert!(matches!(
        jobs.cancel("key-a", &slow.id).await,
        Err(im_jobs::JobError::Final { .. })
    ));
    assert!(
        matches!(
            jobs.get("key-b", &slow.id).await,
            Err(im_jobs::JobError::NotFound(_))
        ),
        "another key does not see it"
    );
    assert_eq!(jobs.counts(), (0, 0), "nothing queued or running");
    // Kept for 300 ms, then gone.
    im_testkit::eventually("the job expired", Duration::from_secs(20), || async {
        store.get(&slow.id).expect("db").is_none()
    })
    .await;
    let _ = std::fs::remove_dir_all(d);
}
