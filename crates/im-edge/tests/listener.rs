//! The listener's connection rules, on a real socket: an idle connection is closed after the
//! idle timeout, a request in flight keeps its connection past it, and shutdown closes what is
//! idle.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use im_edge::{Peers, ServeLimits, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A test's server: its address, the sender that shuts it down, and the gate of `/slow`.
struct Server {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    slow: Arc<Gate>,
}

/// `/slow` says when it has started and answers only once the test opens the gate.
#[derive(Default)]
struct Gate {
    started: tokio::sync::Notify,
    open: tokio::sync::Notify,
}

/// A server of `/fast` (at once) and `/slow` (when its gate opens) with `idle` as its idle
/// timeout.
async fn server(idle: Duration) -> Server {
    let slow = Arc::new(Gate::default());
    let gate = slow.clone();
    let app = Router::new()
        .route("/fast", get(|| async { "fast" }))
        .route(
            "/slow",
            get(move || async move {
                gate.started.notify_one();
                gate.open.notified().await;
                "slow"
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("an address");
    let limits = ServeLimits {
        idle_timeout: idle,
        close_grace: Duration::from_secs(3),
        ..ServeLimits::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        app,
        limits,
        Arc::new(Peers::default()),
        async move {
            let _ = stopped.await;
        },
    ));
    Server { addr, stop, slow }
}

/// Wait, within a deadline, until `/slow` has started.
async fn slow_started(gate: &Gate) {
    tokio::time::timeout(Duration::from_secs(5), gate.started.notified())
        .await
        .expect("the slow request reached its handler");
}

/// Send a keep-alive GET of `path` and read its whole answer (it is short and has a length).
async fn get_on(conn: &mut TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
    conn.write_all(req.as_bytes()).await.expect("writes");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).ends_with(path.trim_start_matches('/')) {
        let n = conn.read(&mut buf).await.expect("reads");
        assert!(
            n > 0,
            "closed before the answer: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether the server closes `conn` within `within`.
async fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, conn.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout_and_not_before() {
    let s = server(Duration::from_millis(600)).await;
    let mut conn = TcpStream::connect(s.addr).await.expect("connects");
    assert!(get_on(&mut conn, "/fast").await.starts_with("HTTP/1.1 200"));
    assert!(
        !closed_within(&mut conn, Duration::from_millis(200)).await,
        "closed well before the idle timeout"
    );
    // A second request moves the idle timer on: the connection still serves it.
    assert!(get_on(&mut conn, "/fast").await.starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut conn, Duration::from_secs(5)).await,
        "an idle connection stays open past its idle timeout"
    );
}

#[tokio::test]
async fn a_request_in_flight_keeps_its_connection_past_the_idle_timeout() {
    let s = server(Duration::from_millis(300)).await;
    let mut conn = TcpStream::connect(s.addr).await.expect("connects");
    conn.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("writes");
    slow_started(&s.slow).await;
    assert!(
        !closed_within(&mut conn, Duration::from_secs(1)).await,
        "a connection with a request in flight was closed as idle"
    );
    s.slow.open.notify_one();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).ends_with("slow") {
        let n = conn.read(&mut buf).await.expect("reads");
        assert!(n > 0, "closed before the answer");
        got.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("slow"), "{answer}");
    // Not asked to finish while it was busy: the connection still serves the next request.
    assert!(get_on(&mut conn, "/fast").await.starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut conn, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_lets_a_request_in_flight_finish() {
    let s = server(Duration::from_secs(60)).await;
    let mut idle = TcpStream::connect(s.addr).await.expect("connects");
    assert!(get_on(&mut idle, "/fast").await.starts_with("HTTP/1.1 200"));
    let mut busy = TcpStream::connect(s.addr).await.expect("connects");
    busy.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("writes");
    slow_started(&s.slow).await;
    let _ = s.stop.send(());
    assert!(
        closed_within(&mut idle, Duration::from_secs(2)).await,
        "an idle connection stays open after shutdown (until the grace period ends)"
    );
    s.slow.open.notify_one();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), busy.read_to_end(&mut got)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(
        read.is_ok(),
        "the busy connection was not closed after its answer"
    );
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with("slow"),
        "{got}"
    );
}
