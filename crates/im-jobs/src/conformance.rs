//! What every [`JobStore`] must do, as one check a store's own tests run on an empty store: the
//! embedded store's tests and the Redis store's (`im-cluster`) both call [`check`], so the two
//! cannot drift apart. Panics on the first difference.

use serde_json::json;

use crate::job::{Job, Request, Status, Stored};
use crate::store::JobStore;

/// A queued `/txt2txt` job of `owner`, with idempotency key `idem`: what store tests store.
pub fn job(id: &str, owner: &str, idem: Option<&str>) -> Job {
    Job {
        id: id.into(),
        owner: owner.into(),
        idempotency_key: idem.map(str::to_owned),
        request: Request {
            route: "/txt2txt".into(),
            body: json!({"model": "m"}),
        },
        status: Status::Queued,
        attempts: 0,
        created_ms: 1,
        started_ms: None,
        finished_ms: None,
        result: None,
        error: None,
        webhook: None,
    }
}

/// Run every check on `store`, which must be empty.
pub fn check(store: &dyn JobStore) {
    idempotency_keys_name_the_first_job_per_owner(store);
    jobs_and_their_results_are_kept_until_removed(store);
    a_webhook_id_is_seen_once_until_forgotten(store);
    a_disabled_endpoint_stays_disabled(store);
    pages_usage_and_the_sweep_read_indexes(store);
}

fn pages_usage_and_the_sweep_read_indexes(store: &dyn JobStore) {
    let made = |id: &str, owner: &str, at: i64| {
        let mut j = job(id, owner, None);
        j.created_ms = at;
        j
    };
    for (i, owner) in ["a", "b", "a", "a", "b", "a"].iter().enumerate() {
        store
            .insert_idempotent(&made(&format!("j{i}"), owner, 100 + i as i64))
            .expect("insert");
    }
    let ids = |jobs: Vec<Job>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
    let first = store.page(Some("a"), None, 2).expect("page");
    let cursor = first.last().expect("a page").cursor();
    assert_eq!(ids(first), ["j5", "j3"], "newest first, the owner's only");
    assert_eq!(
        ids(store.page(Some("a"), Some(&cursor), 10).expect("page")),
        ["j2", "j0"],
        "after the cursor"
    );
    assert_eq!(
        ids(store.page(None, None, 3).expect("page")),
        ["j5", "j4", "j3"]
    );
    let (n, bytes) = store.usage("a").expect("usage");
    assert_eq!(n, 4);
    assert!(bytes > 4 * 100, "the records' bytes: {bytes}");
    // Finishing one moves it into the sweep's index; removing gives its bytes back.
    let mut done = made("j3", "a", 103);
    done.status = Status::Succeeded;
    done.finished_ms = Some(500);
    store.put(&done).expect("put");
    assert!(store.finished_before(500, 10).expect("swept").is_empty());
    assert_eq!(ids(store.finished_before(501, 10).expect("swept")), ["j3"]);
    store.remove(&done).expect("remove");
    assert_eq!(store.usage("a").expect("usage").0, 3);
    assert!(
        store
            .finished_before(i64::MAX, 10)
            .expect("swept")
            .is_empty()
    );
    for i in 0..6 {
        store
            .remove(&made(&format!("j{i}"), "x", 0))
            .expect("remove");
    }
    assert_eq!(store.usage("a").expect("usage"), (0, 0));
    assert!(store.page(None, None, 10).expect("page").is_empty());
}

fn idempotency_keys_name_the_first_job_per_owner(store: &dyn JobStore) {
    let first = store
        .insert_idempotent(&job("a", "k1", Some("x")))
        .expect("insert");
    assert_eq!(first.id, "a");
    let again = store
        .insert_idempotent(&job("b", "k1", Some("x")))
        .expect("insert");
    assert_eq!(again.id, "a", "the same owner and key: the first job");
    assert!(store.get("b").expect("get").is_none(), "no second job");
    let other = store
        .insert_idempotent(&job("c", "k2", Some("x")))
        .expect("insert");
    assert_eq!(other.id, "c", "another owner's key is another key");
    store.remove(&first).expect("remove");
    store.remove(&other).expect("remove");
    let after = store
        .insert_idempotent(&job("d", "k1", Some("x")))
        .expect("insert");
    assert_eq!(after.id, "d", "a removed job frees its key");
    store.remove(&after).expect("remove");
}

fn jobs_and_their_results_are_kept_until_removed(store: &dyn JobStore) {
    store.put(&job("q", "k1", None)).expect("put");
    let mut done = job("s", "k1", None);
    done.status = Status::Succeeded;
    done.result = Some(Stored::File {
        name: "s.bin".into(),
        content_type: "audio/wav".into(),
        bytes: 4,
    });
    store.put_result("s.bin", b"RIFF").expect("result");
    store.put(&done).expect("put");
    let mut all: Vec<(String, Status)> = store
        .all()
        .expect("all")
        .into_iter()
        .map(|j| (j.id, j.status))
        .collect();
    all.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        all,
        [
            ("q".into(), Status::Queued),
            ("s".into(), Status::Succeeded)
        ]
    );
    assert_eq!(store.get("s").expect("get"), Some(done.clone()));
    assert_eq!(
        store.result("s.bin").expect("get").as_deref(),
        Some(&b"RIFF"[..])
    );
    store.remove(&done).expect("remove");
    assert!(store.get("s").expect("get").is_none());
    assert!(
        store.result("s.bin").expect("get").is_none(),
        "a result goes with its job"
    );
    assert!(store.result("never.bin").expect("get").is_none());
    store.remove(&job("q", "k1", None)).expect("remove");
    assert!(store.all().expect("all").is_empty());
}

fn a_webhook_id_is_seen_once_until_forgotten(store: &dyn JobStore) {
    assert!(!store.sighted("msg_1").expect("db"));
    assert!(
        !store.sighted("msg_1").expect("db"),
        "looking does not record it"
    );
    assert!(store.first_sighting("msg_1", 100).expect("db"));
    assert!(store.sighted("msg_1").expect("db"));
    assert!(!store.first_sighting("msg_1", 150).expect("db"));
    store.forget_sightings(200).expect("db");
    assert!(store.first_sighting("msg_1", 300).expect("db"));
}

fn a_disabled_endpoint_stays_disabled(store: &dyn JobStore) {
    assert!(!store.endpoint_disabled("http://x.invalid/").expect("db"));
    store.disable_endpoint("http://x.invalid/").expect("db");
    assert!(store.endpoint_disabled("http://x.invalid/").expect("db"));
    assert!(!store.endpoint_disabled("http://y.invalid/").expect("db"));
}
