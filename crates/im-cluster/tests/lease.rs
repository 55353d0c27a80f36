//! The scheduler lease and the fenced job store, against a real `redis-server`.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use im_cluster::{Fence, Holder, Lease, LeaseSettings, RedisJobStore, RedisServer, Role};
use im_jobs::conformance::job;
use im_jobs::{JobStore, Status};

fn settings(redis: &RedisServer, replica: &str, ttl_ms: u64) -> LeaseSettings {
    LeaseSettings {
        redis_url: redis.url(),
        prefix: "imtest".into(),
        replica: replica.into(),
        url: format!("http://{replica}.invalid:8080"),
        ttl: Duration::from_millis(ttl_ms),
    }
}

fn lease(redis: &RedisServer, replica: &str, ttl_ms: u64) -> Lease {
    Lease::new(settings(redis, replica, ttl_ms)).expect("lease")
}

#[test]
fn the_first_replica_takes_the_lease_and_the_others_learn_who_holds_it() {
    let redis = RedisServer::start().expect("redis");
    let (mut a, mut b) = (lease(&redis, "a", 5_000), lease(&redis, "b", 5_000));
    let held = a.acquire().expect("acquire");
    assert_eq!((held.epoch, held.replica.as_str()), (1, "a"));
    assert_eq!(held.url, "http://a.invalid:8080");
    assert!(a.is_me(&held));
    let seen = b.acquire().expect("acquire");
    assert_eq!(seen, held, "b follows a");
    assert!(!b.is_me(&seen));
    assert!(a.renew(&held).expect("renew"));
    assert!(
        !b.renew(&Holder {
            replica: "b".into(),
            ..held.clone()
        })
        .expect("renew")
    );
}

#[test]
fn an_epoch_redis_forgot_is_raised_above_the_gates_only_by_the_holder() {
    // Redis lost its data: the next holder starts again at epoch 1 while gates have seen 7.
    let redis = RedisServer::start().expect("redis");
    let (mut a, mut b) = (lease(&redis, "a", 5_000), lease(&redis, "b", 5_000));
    let held = a.acquire().expect("acquire");
    assert_eq!(held.epoch, 1);
    let raised = a
        .raise(&held, 7)
        .expect("raise")
        .expect("a holds the lease");
    assert_eq!((raised.epoch, raised.replica.as_str()), (8, "a"));
    assert!(
        a.renew(&raised).expect("renew"),
        "the raised value is the lease"
    );
    assert!(!a.renew(&held).expect("renew"), "the old value is not");
    // A replica that does not hold the lease (a paused former holder) cannot raise it.
    assert_eq!(b.raise(&held, 100).expect("raise"), None);
    assert_eq!(b.acquire().expect("read"), raised, "the epoch did not move");
    // Raising above a lower floor still moves forward.
    let again = a.raise(&raised, 3).expect("raise").expect("held");
    assert_eq!(again.epoch, 9);
}

#[test]
fn a_fence_signs_its_token_and_asks_for_a_raise_only_when_a_gate_saw_more() {
    let secret = im_edge::fence::FenceSecret::new("a-cluster-secret-16").expect("secret");
    let fence = Fence::new(Some(secret.clone()));
    assert_eq!(fence.token(), None, "no token before it schedules");
    fence.set(4);
    let token = fence.token().expect("a token");
    assert_eq!(secret.verify(&token), Some(4));
    assert_eq!(Fence::default().token(), None);
    let plain = Fence::default();
    plain.set(3);
    assert_eq!(
        plain.token().as_deref(),
        Some("3"),
        "unsigned without a secret"
    );
}

#[test]
fn a_lapsed_lease_goes_to_another_replica_with_a_larger_epoch_and_fences_the_old_holder() {
    let redis = RedisServer::start().expect("redis");
    let (mut a, mut b) = (lease(&redis, "a", 300), lease(&redis, "b", 300));
    let old = a.acquire().expect("acquire");
    let (old_fence, new_fence) = (Fence::default(), Fence::default());
    old_fence.set(old.epoch);
    let old_store = RedisJobStore::new(&redis.url(), "imtest", old_fence).expect("store");
    old_store
        .put(&job("j1", "k", None))
        .expect("the holder writes");

    // a stalls past its lease (the stall is under test); b takes it.
    std::thread::sleep(Duration::from_millis(450));
    let new = b.acquire().expect("acquire");
    assert_eq!((new.epoch, new.replica.as_str()), (old.epoch + 1, "b"));
    assert!(!a.renew(&old).expect("renew"), "a's lease is gone");

    // a wakes up and writes: refused, and nothing of it lands.
    let mut late = job("j1", "k", None);
    late.status = Status::Succeeded;
    let refused = old_store.put(&late).expect_err("a stale token is fenced");
    assert!(refused.to_string().contains("FENCED"), "{refused}");
    assert!(old_store.put_result("j1.bin", b"late").is_err());
    assert!(old_store.insert_idempotent(&job("j2", "k", None)).is_err());
    assert!(old_store.remove(&job("j1", "k", None)).is_err());
    new_fence.set(new.epoch);
    let new_store = RedisJobStore::new(&redis.url(), "imtest", new_fence).expect("store");
    let kept = new_store.get("j1").expect("get").expect("j1");
    assert_eq!(kept.status, Status::Queued, "the stale write left no trace");
    assert!(new_store.get("j2").expect("get").is_none());
    assert!(new_store.result("j1.bin").expect("get").is_none());
    new_store.put(&late).expect("the new holder writes");
}

#[test]
fn a_scheduler_that_cannot_renew_gives_up_before_its_lease_could_be_taken() {
    let redis = RedisServer::start().expect("redis");
    let ttl = Duration::from_millis(600);
    let (role_tx, mut role_rx) = tokio::sync::watch::channel(Role::Unknown);
    let (lost_tx, lost_rx) = std::sync::mpsc::channel::<(String, Instant)>();
    let promoted = Arc::new(std::sync::Mutex::new(None));
    let seen = promoted.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let a = lease(&redis, "a", 600);
    let thread = std::thread::spawn(move || {
        a.run(
            role_tx,
            Fence::default(),
            move |h: &Holder| *seen.lock().expect("lock") = Some(h.epoch),
            move |why: &str| {
                lost_tx
                    .send((why.to_owned(), Instant::now()))
                    .expect("send")
            },
            stop,
        );
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("rt");
    rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(5),
            role_rx.wait_for(|r| matches!(r, Role::Scheduler(_))),
        )
        .await
        .expect("a takes the lease")
        .expect("role");
    });
    assert_eq!(
        *promoted.lock().expect("lock"),
        Some(1),
        "promoted before the role said so"
    );

    // Redis goes away: a must give up within the lease, before anyone could take it over.
    let gone = Instant::now();
    drop(redis);
    let (why, at) = lost_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("a gives up");
    assert!(why.contains("could not be renewed"), "{why}");
    assert!(
        at - gone < ttl,
        "gave up after {:?}, the lease lives {ttl:?}",
        at - gone
    );
    thread
        .join()
        .expect("the lease thread returns after giving up");
}

#[test]
fn the_redis_store_does_what_every_store_must() {
    let redis = RedisServer::start().expect("redis");
    let mut l = lease(&redis, "a", 5_000);
    let fence = Fence::default();
    fence.set(l.acquire().expect("acquire").epoch);
    let store = RedisJobStore::new(&redis.url(), "imtest", fence).expect("store");
    im_jobs::conformance::check(&store);
}

#[test]
fn the_lease_thread_raises_the_epoch_a_gate_refused_while_it_holds_the_lease() {
    let redis = RedisServer::start().expect("redis");
    let (role_tx, role_rx) = tokio::sync::watch::channel(Role::Unknown);
    let fence = Fence::default();
    let stop = Arc::new(AtomicBool::new(false));
    let a = lease(&redis, "a", 3_000);
    let thread = std::thread::spawn({
        let (fence, stop) = (fence.clone(), stop.clone());
        move || {
            a.run(
                role_tx,
                fence,
                |_: &Holder| {},
                |why: &str| panic!("lost: {why}"),
                stop,
            )
        }
    });
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        im_testkit::eventually_blocking(what, Duration::from_secs(10), ok)
    };
    wait("a takes the lease", &|| fence.get() == 1);
    fence.saw_highest(0);
    fence.saw_highest(40);
    wait("the epoch goes above what the gate saw", &|| {
        fence.get() > 40
    });
    let epoch = fence.get();
    assert_eq!(
        role_rx.borrow().holder().map(|h| h.epoch),
        Some(epoch),
        "the role says the new epoch"
    );
    let mut probe = lease(&redis, "probe", 3_000);
    assert_eq!(
        probe.acquire().expect("read").epoch,
        epoch,
        "Redis holds it"
    );
    stop.store(true, std::sync::atomic::Ordering::Release);
    thread.join().expect("lease thread");
}
