//! The WebSocket `/ws/{client_id}` over a real socket with a real client (tokio-tungstenite):
//! keys in the headers or a first `auth` message, ping, status, subscriptions, inference plain
//! and streamed, slow readers, and clients that leave.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use im_app::config::ImConfig;
use im_app::{self as app, Built, DEMO_KEY, Simulate};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const LLM: &str = "llama-3.2-3b-instruct";

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn serve() -> (String, Built) {
    serve_scaled(0.001).await
}

/// im over a socket, its simulator's durations scaled by `time_scale`.
async fn serve_scaled(time_scale: f64) -> (String, Built) {
    let built = app::build(ImConfig::default(), Some(Simulate { time_scale }))
        .await
        .expect("build");
    let router = im_http_api::router(built.state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("ws://{addr}"), built)
}

async fn connect(url: &str, key: Option<&str>) -> Socket {
    let mut req = format!("{url}/ws/tester")
        .into_client_request()
        .expect("request");
    if let Some(k) = key {
        req.headers_mut()
            .insert("x-api-key", k.parse().expect("header"));
    }
    tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade")
        .0
}

async fn send(ws: &mut Socket, v: Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

/// The next JSON message (or the close frame's code as `{"close": code}`).
async fn next(ws: &mut Socket) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("open")
            .expect("a frame");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
            Message::Close(f) => return json!({"close": f.map(|f| u16::from(f.code))}),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pings_asks_status_and_runs_inference_plain_and_streamed() {
    let (url, _built) = serve().await;
    let mut ws = connect(&url, Some(DEMO_KEY)).await;
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next(&mut ws).await["type"], "pong");
    send(&mut ws, json!({"type": "status"})).await;
    let st = next(&mut ws).await;
    assert_eq!(st["type"], "status");
    assert!(st["data"]["backends"].is_array(), "{st}");

    send(
        &mut ws,
        json!({"type": "inference", "id": "a", "model": LLM, "inputs": "hello"}),
    )
    .await;
    let r = next(&mut ws).await;
    assert_eq!(
        (r["type"].as_str(), r["id"].as_str()),
        (Some("result"), Some("a")),
        "{r}"
    );
    assert!(
        r["content"].as_str().is_some_and(|c| c.contains("hello")),
        "{r}"
    );
    assert!(r["queue_wait_ms"].as_f64().is_some(), "{r}");

    send(
        &mut ws,
        json!({"type": "inference", "id": "b", "model": LLM, "stream": true,
               "messages": [{"role": "user", "content": "stream me"}]}),
    )
    .await;
    let mut tokens = String::new();
    loop {
        let m = next(&mut ws).await;
        match m["type"].as_str() {
            Some("token") => tokens.push_str(m["text"].as_str().expect("text")),
            Some("result") => {
                assert_eq!(m["id"], "b");
                assert_eq!(
                    m["content"].as_str(),
                    Some(tokens.as_str()),
                    "tokens add up"
                );
                break;
            }
            other => panic!("unexpected {other:?}: {m}"),
        }
    }
    assert!(!tokens.is_empty());

    send(
        &mut ws,
        json!({"type": "inference", "id": "c", "model": "nope", "inputs": "x"}),
    )
    .await;
    let e = next(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["id"].as_str()),
        (Some("error"), Some("c")),
        "{e}"
    );
    assert_eq!(e["error"]["type"], "unknown_model");
    send(&mut ws, json!({"type": "dance"})).await;
    let e = next(&mut ws).await;
    assert_eq!(e["error"]["param"], "type", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_the_first_message_authenticates_and_a_wrong_one_closes() {
    let (url, _built) = serve().await;
    let mut ws = connect(&url, None).await;
    send(&mut ws, json!({"type": "auth", "api_key": DEMO_KEY})).await;
    assert_eq!(next(&mut ws).await["type"], "authenticated");
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next(&mut ws).await["type"], "pong");

    let mut ws = connect(&url, None).await;
    send(&mut ws, json!({"type": "auth", "api_key": "wrong"})).await;
    assert_eq!(next(&mut ws).await["close"], 4001);

    let mut ws = connect(&url, None).await;
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next(&mut ws).await["close"], 4001, "auth comes first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_updates_of_their_topics() {
    let (url, _built) = serve().await;
    let mut ws = connect(&url, Some(DEMO_KEY)).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "topics": ["queue", "lanes"]}),
    )
    .await;
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 {
        let m = next(&mut ws).await;
        assert_eq!(m["type"], "update", "{m}");
        seen.insert(m["topic"].as_str().expect("topic").to_owned());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["lanes", "queue"]);
    send(&mut ws, json!({"type": "subscribe", "topics": ["weather"]})).await;
    let e = next(&mut ws).await;
    assert_eq!(e["error"]["param"], "topics", "{e}");
}

/// A client socket whose kernel receive buffer is as small as the system allows, so that a client
/// that stops reading fills it after a few messages rather than megabytes.
async fn connect_with_small_buffer(url: &str) -> Socket {
    let addr = url.trim_start_matches("ws://").parse().expect("addr");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(addr).await.expect("connect");
    let mut req = format!("{url}/ws/slow-reader")
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("x-api-key", DEMO_KEY.parse().expect("header"));
    tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream))
        .await
        .expect("upgrade")
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_closed_not_waited_for() {
    let (url, built) = serve().await;
    let ws = connect_with_small_buffer(&url).await;
    // Ask and ask, reading nothing, until the server gives up on this client.
    let (mut tx, mut rx) = ws.split();
    let asks = tokio::spawn(async move {
        let ask = json!({"type": "status"}).to_string();
        while tx.send(Message::Text(ask.clone().into())).await.is_ok() {}
    });
    let metrics = built.engine.metrics().clone();
    let closed = im_testkit::until(
        "the slow client closed",
        Duration::from_secs(60),
        || async { Some(metrics.ws().closed_count("slow")).filter(|n| *n > 0) },
    )
    .await;
    assert_eq!(closed, 1, "the server closed the client as too slow");
    // Its connection ends: with the 4008 close frame if the frame gets through the backlog in
    // time, or by the server dropping the socket; either way, it is not held open.
    let mut ended = false;
    let mut close = None;
    while let Ok(m) = tokio::time::timeout(Duration::from_secs(30), rx.next()).await {
        match m {
            Some(Ok(Message::Close(f))) => {
                close = f.map(|f| u16::from(f.code));
                ended = true;
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                ended = true;
                break;
            }
        }
    }
    asks.abort();
    assert!(ended, "the connection ended");
    assert!(
        matches!(close, None | Some(4008)),
        "closed as too slow, not {close:?}"
    );
    // The server goes on serving others.
    let mut ws = connect(&url, Some(DEMO_KEY)).await;
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next(&mut ws).await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_requests() {
    // Real load times: the request is still loading its model when the client leaves.
    let (url, built) = serve_scaled(1.0).await;
    let mut ws = connect(&url, Some(DEMO_KEY)).await;
    send(
        &mut ws,
        json!({"type": "inference", "model": LLM, "inputs": "slow"}),
    )
    .await;
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next(&mut ws).await["type"], "pong", "the request was taken");
    drop(ws);
    // A running request keeps its slot until its attempt ends (the model's load), then leaves.
    let cancelled = im_testkit::until("the request gone", Duration::from_secs(20), || async {
        let st = built.engine.status().await.expect("running");
        (st.counters.cancelled >= 1 && st.in_flight == 0 && st.waiting == 0)
            .then_some(st.counters.cancelled)
    })
    .await;
    assert_eq!(
        cancelled, 1,
        "its request left as cancelled, not answered into the void"
    );
}
