//! The seeds' WebSocket, `/ws/{client_id}`: `auth` (or a key in the upgrade's headers),
//! `subscribe` (topics `queue`, `lanes`, `requests`: sent when they change, checked every
//! second, and every 15 s regardless), `inference` (`model`, `inputs` or `messages`, `stream`: token events then a final
//! result; with `"progress": true` also `queued` and `loading` messages while it waits), `status`,
//! `ping`/`pong`. Every message out goes through a bounded queue: a client
//! too slow to read it is closed with code 4008 rather than allowed to hold anything up, and a
//! client that goes away cancels its requests (their futures are dropped, which takes them out
//! of the queue).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use im_service::{Call, Caller, ChatInput, ChatKind, Reply, Scope, ServiceError, StreamItem};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::state::{AppState, key_of};

/// Messages a client may have waiting to be sent before it counts as too slow.
pub const OUTBOX: usize = 256;

/// What a client may subscribe to: `queue` (the `/queue-status` view), `lanes` (`/status`),
/// `requests` (request metrics), `timeline` (the last lane events: switches, loads, breakers),
/// `errors` (error counts and the last errors, sanitized: the subscriber's own tenant's unless
/// its key sees all), `tenants` (what each tenant used: its own row unless its key sees all).
pub const TOPICS: [&str; 6] = [
    "queue", "lanes", "requests", "timeline", "errors", "tenants",
];
/// Close code for a client that does not read its messages.
pub const CLOSE_TOO_SLOW: u16 = 4008;
/// Close code for a missing or wrong key.
pub const CLOSE_UNAUTHORIZED: u16 = 4001;
/// Subscribed topics are sent again this often even when nothing changed.
const REFRESH_EVERY_TICKS: u32 = 15;
/// How long a client without a key in its headers has to send `auth`.
const AUTH_WITHIN: Duration = Duration::from_secs(10);

/// Upgrade to the WebSocket protocol. The key may come in the headers (checked here) or in a
/// first `{"type": "auth", "api_key": "..."}` message.
#[utoipa::path(get, path = "/ws/{client_id}", tag = "operations",
    params(("client_id" = String, Path, description = "The client's own name, echoed in messages")),
    responses((status = 101, description = "Switching protocols: messages `auth`, `subscribe` {topics: [queue, lanes, requests]}, `inference` {id?, model, inputs | messages, stream?, progress?}, `status`, `ping`; answers `authenticated`, `subscribed`, `update` {topic, data}, `queued` {id, position, eta_ms}, `loading` {id, model, lane}, `token` {id, text}, `result` {id, content, queue_wait_ms, processing_ms}, `error` {id?, error}, `status` {data}, `pong`")))]
pub async fn ws(
    State(st): State<AppState>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let header_key = key_of(&headers).map(<[u8]>::to_vec);
    upgrade
        .max_message_size(st.service.body_limit())
        .on_upgrade(move |socket| session(st, client_id, header_key, socket))
}

/// Out: a JSON message.
enum Out {
    Json(Value),
}

/// A sender that never waits: a full outbox marks the client too slow, and it is closed. A close
/// goes ahead of the messages waiting.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<Out>,
    close: mpsc::Sender<(u16, &'static str)>,
    slow: Arc<AtomicBool>,
    metrics: im_metrics::Metrics,
}

impl Outbox {
    fn close(&self, code: u16, reason: &'static str) {
        if self.close.try_send((code, reason)).is_ok() {
            self.metrics.ws().closed(match code {
                CLOSE_TOO_SLOW => "slow",
                _ => "unauthorized",
            });
        }
    }

    fn send(&self, v: Value) {
        if self.tx.try_send(Out::Json(v)).is_err() {
            self.slow.store(true, Ordering::SeqCst);
        }
    }
}

async fn session(st: AppState, client_id: String, header_key: Option<Vec<u8>>, socket: WebSocket) {
    let (mut sink, mut stream) = futures_util::StreamExt::split(socket);
    let (tx, mut rx) = mpsc::channel::<Out>(OUTBOX);
    let (close, mut closing) = mpsc::channel::<(u16, &'static str)>(1);
    let out = Outbox {
        tx,
        close,
        slow: Default::default(),
        metrics: st.service.engine().metrics().clone(),
    };
    // The writer: the only task that touches the sink; a close goes first.
    let mut writer = tokio::spawn(async move {
        use futures_util::SinkExt;
        loop {
            let msg = tokio::select! {
                biased;
                Some((code, reason)) = closing.recv() => {
                    let frame = CloseFrame { code, reason: reason.into() };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    return;
                }
                m = rx.recv() => match m {
                    Some(Out::Json(v)) => Message::Text(v.to_string().into()),
                    None => return,
                },
            };
            if sink.send(msg).await.is_err() {
                return;
            }
        }
    });
    let service = st.service.clone();
    let mut who = match &header_key {
        Some(k) => match service.authenticate(Some(k), false) {
            Ok(who) => Some(who),
            Err(_) => {
                out.close(CLOSE_UNAUTHORIZED, "wrong API key");
                let _ = tokio::time::timeout(Duration::from_secs(5), &mut writer).await;
                writer.abort();
                return;
            }
        },
        None if !service.auth_enabled() => Some(im_service::Principal::anonymous()),
        None => None,
    };
    let deadline = tokio::time::Instant::now() + AUTH_WITHIN;
    let mut topics: BTreeSet<String> = BTreeSet::new();
    let mut last: std::collections::HashMap<String, Value> = Default::default();
    let mut work: JoinSet<()> = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks = 0u32;
    let mut keys_changed = service.watch_keys();
    loop {
        if out.slow.load(Ordering::SeqCst) {
            // Too slow to read: close, and drop its work (cancelling its queued requests).
            work.abort_all();
            out.close(CLOSE_TOO_SLOW, "too slow to read its messages");
            break;
        }
        tokio::select! {
            msg = futures_util::StreamExt::next(&mut stream) => {
                let Some(Ok(msg)) = msg else { break };
                let text = match msg {
                    Message::Text(t) => t.to_string(),
                    Message::Close(_) => break,
                    _ => continue,
                };
                let v: Value = match serde_json::from_str(&text) {
                    Ok(v) => v,
                    Err(e) => {
                        out.send(error_message(None, &ServiceError::invalid("message", format!("not JSON: {e}"))));
                        continue;
                    }
                };
                let kind = v["type"].as_str().unwrap_or_default().to_owned();
                let Some(session_of) = who.clone() else {
                    if kind != "auth" {
                        out.close(CLOSE_UNAUTHORIZED, "send auth first");
                        break;
                    }
                    match service.authenticate(v["api_key"].as_str().map(str::as_bytes), false) {
                        Ok(k) => {
                            who = Some(k);
                            out.send(json!({"type": "authenticated", "client_id": client_id}));
                        }
                        Err(_) => {
                            out.close(CLOSE_UNAUTHORIZED, "wrong API key");
                            break;
                        }
                    }
                    continue;
                };
                let Some(needs) = message_scope(&kind) else {
                    out.send(error_message(None, &ServiceError::invalid(
                        "type",
                        format!("{:?} is not a message type; the types: {}", im_service::truncate(&kind, 32),
                            MESSAGES.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ")),
                    )));
                    continue;
                };
                // Each message is a unit of work: checked (and, for work, charged) as an HTTP
                // request of its kind would be.
                let checked = match needs {
                    Some(scope) => service.check(&session_of, scope, true),
                    None => service.check_key(&session_of),
                };
                if let Err(e) = checked {
                    if e.status() == 401 {
                        work.abort_all();
                        out.close(CLOSE_UNAUTHORIZED, "API key revoked");
                        break;
                    }
                    out.send(error_message(v.get("id"), &e));
                    continue;
                }
                match kind.as_str() {
                    "ping" => out.send(json!({"type": "pong", "client_id": client_id})),
                    "auth" => out.send(json!({"type": "authenticated", "client_id": client_id})),
                    "status" => out.send(json!({"type": "status", "data": service.backend_status().await})),
                    "subscribe" => {
                        let wanted: Vec<String> = v["topics"].as_array().into_iter().flatten()
                            .filter_map(|t| t.as_str().map(str::to_owned)).collect();
                        if let Some(bad) = wanted.iter().find(|t| !TOPICS.contains(&t.as_str())) {
                            out.send(error_message(None, &ServiceError::invalid("topics", format!("{:?} is not a topic; the topics: {}", im_service::truncate(bad, 32), TOPICS.join(", ")))));
                            continue;
                        }
                        topics.extend(wanted);
                        last.clear();
                        out.send(json!({"type": "subscribed", "topics": topics}));
                        publish(&service, &session_of, &topics, &mut last, &out).await;
                    }
                    _ => {
                        let caller = Caller::new(&session_of, service.new_request_id());
                        let (service, out) = (service.clone(), out.clone());
                        work.spawn(async move { inference(&service, &caller, &v, &out).await });
                    }
                }
            }
            Ok(()) = keys_changed.changed() => {
                // A reload: a session whose key was removed (or moved) closes now.
                if let Some(session_of) = &who
                    && service.check_key(session_of).is_err()
                {
                    work.abort_all();
                    out.close(CLOSE_UNAUTHORIZED, "API key revoked");
                    break;
                }
            }
            _ = tick.tick() => {
                let Some(session_of) = &who else {
                    if tokio::time::Instant::now() >= deadline {
                        out.close(CLOSE_UNAUTHORIZED, "no auth in time");
                        break;
                    }
                    continue;
                };
                ticks += 1;
                if ticks.is_multiple_of(REFRESH_EVERY_TICKS) {
                    last.clear();
                }
                publish(&service, session_of, &topics, &mut last, &out).await;
            }
            Some(_) = work.join_next(), if !work.is_empty() => {}
        }
    }
    // Gone: its requests are cancelled with their futures. A client that reads nothing more
    // gets five seconds to take its close frame, then its socket is dropped.
    work.abort_all();
    drop(out);
    // Keep reading (and dropping) what it still sends while the close goes out: a socket closed
    // with unread data is reset, and the reset would take the close frame with it.
    let drain = async {
        while let Some(Ok(m)) = futures_util::StreamExt::next(&mut stream).await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = tokio::join!(&mut writer, drain);
    })
    .await;
    writer.abort();
}

/// The message types a client sends, each with the scope it needs (`None`: a key in force is
/// enough). The same scopes as the HTTP routes of the same views and work.
pub const MESSAGES: [(&str, Option<Scope>); 5] = [
    ("auth", None),
    ("ping", None),
    ("status", Some(Scope::Metrics)),
    ("subscribe", Some(Scope::Metrics)),
    ("inference", Some(Scope::Infer)),
];

/// The scope message type `kind` needs (`None` inside: none but a key in force); `None`: no such
/// type.
fn message_scope(kind: &str) -> Option<Option<Scope>> {
    MESSAGES.iter().find(|(t, _)| *t == kind).map(|(_, s)| *s)
}

/// Send each subscribed topic that changed since it was last sent, as `who` may see it.
async fn publish(
    service: &im_service::Service,
    who: &im_service::Principal,
    topics: &BTreeSet<String>,
    last: &mut std::collections::HashMap<String, Value>,
    out: &Outbox,
) {
    for t in topics {
        let data = match t.as_str() {
            "queue" => service.queue_status().await,
            "lanes" => service.backend_status().await,
            "timeline" => service.timeline(),
            "errors" => service.error_metrics(who),
            "tenants" => service.tenant_metrics(who),
            _ => service.request_metrics(),
        };
        if last.get(t) != Some(&data) {
            out.send(json!({"type": "update", "topic": t, "data": data}));
            last.insert(t.clone(), data);
        }
    }
}

fn error_message(id: Option<&Value>, e: &ServiceError) -> Value {
    json!({"type": "error", "id": id, "error": e.body()["error"]})
}

/// Run `call`; a stream whose message asked (`"progress": true`, or its tenant's `progress`)
/// is told how its wait goes meanwhile: `queued` `{id, position, eta_ms}` and `loading`
/// `{id, model, lane}` messages.
async fn run_telling_progress(
    service: &im_service::Service,
    call: Call,
    caller: &Caller,
    v: &Value,
    id: &Value,
    out: &Outbox,
) -> Result<im_service::Done, ServiceError> {
    let wanted = v["progress"].as_bool().unwrap_or_else(|| {
        service
            .tenants()
            .spec(&caller.tenant)
            .is_some_and(|s| s.progress)
    });
    if !wanted {
        return service.run(call, caller).await;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut caller = caller.clone();
    caller.progress = Some(tx);
    let run = service.run(call, &caller);
    tokio::pin!(run);
    loop {
        tokio::select! {
            biased;
            done = &mut run => return done,
            Some(p) = rx.recv() => out.send(match p {
                im_service::Progress::Queued { position, eta } => json!({"type": "queued", "id": id,
                    "position": position, "eta_ms": eta.map(|e| e.as_millis() as u64)}),
                im_service::Progress::Loading { model, lane } => json!({"type": "loading", "id": id,
                    "model": model, "lane": lane}),
            }),
        }
    }
}

/// Run one `inference` message: a chat on the queue; tokens then the result, or an error.
async fn inference(service: &im_service::Service, caller: &Caller, v: &Value, out: &Outbox) {
    let id = v.get("id").cloned().unwrap_or(json!(caller.request_id));
    let messages = match (&v["messages"], &v["inputs"]) {
        (Value::Array(m), _) => m.clone(),
        (_, Value::String(s)) => vec![json!({"role": "user", "content": s})],
        _ => {
            let e = ServiceError::invalid("inputs", "give `inputs` (a string) or `messages`");
            out.send(error_message(Some(&id), &e));
            return;
        }
    };
    let stream = v["stream"].as_bool().unwrap_or(false);
    let input = ChatInput {
        model: v["model"].as_str().unwrap_or_default().to_owned(),
        messages: messages.into_iter().map(Into::into).collect(),
        temperature: v["temperature"].as_f64(),
        max_tokens: v["max_tokens"]
            .as_u64()
            .map(|n| n.min(u64::from(u32::MAX)) as u32),
        stream,
        ..ChatInput::default()
    };
    let call = match Call::chat(input, ChatKind::Detect, service.limits()) {
        Ok(c) => c,
        Err(e) => {
            out.send(error_message(Some(&id), &e));
            return;
        }
    };
    let done = match run_telling_progress(service, call, caller, v, &id, out).await {
        Ok(d) => d,
        Err(e) => {
            out.send(error_message(Some(&id), &e));
            return;
        }
    };
    let f = &done.figures;
    let figures = |content: String| {
        json!({"type": "result", "id": id, "content": content, "model": f.model,
               "queue_wait_ms": f.queue_wait.as_secs_f64() * 1000.0,
               "processing_ms": f.processing.as_secs_f64() * 1000.0})
    };
    match done.reply {
        Reply::Chat { raw, .. } => out.send(figures(raw.chat_text())),
        Reply::Stream(mut stream) => {
            let mut text = String::new();
            while let Some(item) = stream.next().await {
                match item {
                    StreamItem::Chunk { delta, .. } if !delta.is_empty() => {
                        out.send(json!({"type": "token", "id": id, "text": delta}));
                        text.push_str(&delta);
                    }
                    StreamItem::Chunk { .. } => {}
                    // The service's one mapping of a stream's failure (sanitised).
                    StreamItem::Failed(e) => {
                        out.send(error_message(Some(&id), &e));
                        return;
                    }
                    StreamItem::End => break,
                }
            }
            out.send(figures(text));
        }
        _ => out.send(error_message(
            Some(&id),
            &ServiceError::new(im_service::ErrorType::Internal, "expected a chat answer"),
        )),
    }
}
