//! OpenTelemetry traces, end to end: `im-http` exports over OTLP/HTTP to a receiver in this
//! test, in front of a simulator that fails some calls with 503 (so some requests are retried).
//! Each request's spans form one tree under the client's `traceparent`; each attempt is one
//! `upstream` span, and its context is what the simulator received.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use common::{KEY, LLM, client, start_in_front_of};
use localai_sim::{SimConfig, SimServer};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::json;

/// One exported span, flattened.
#[derive(Clone, Debug)]
struct Exported {
    name: String,
    trace: String,
    id: String,
    parent: String,
    kind: i32,
    attrs: HashMap<String, String>,
    service: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

/// An OTLP/HTTP traces receiver on a free port: what it received, and its URL.
async fn receiver() -> (Arc<Mutex<Vec<Exported>>>, String) {
    let got: Arc<Mutex<Vec<Exported>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
                let mut out = sink.lock().unwrap();
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.name")
                        .map(|a| text(&a.value))
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            out.push(Exported {
                                name: s.name,
                                trace: hex(&s.trace_id),
                                id: hex(&s.span_id),
                                parent: hex(&s.parent_span_id),
                                kind: s.kind,
                                attrs: s
                                    .attributes
                                    .iter()
                                    .map(|a| (a.key.clone(), text(&a.value)))
                                    .collect(),
                                service: service.clone(),
                            });
                        }
                    }
                }
                // An empty ExportTraceServiceResponse.
                (
                    [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/v1/traces", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (got, url)
}

const SPAN_KIND_SERVER: i32 = 2;
const SPAN_KIND_CLIENT: i32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_one_span_tree_under_the_callers_trace_with_a_span_per_attempt() {
    let (spans, otlp) = receiver().await;
    let mut cfg = SimConfig {
        time_scale: 0.001,
        ..SimConfig::default()
    };
    cfg.faults.error_503 = 0.35;
    cfg.faults.retry_after_secs = 0;
    let sim = SimServer::start(cfg).await.expect("simulator");
    let otlp_set = format!("tracing.otlp_endpoint={otlp}");
    let im = start_in_front_of(
        &[sim.url()],
        &[
            "--api-keys",
            KEY,
            "--set",
            &otlp_set,
            "--set",
            "tracing.service_name=im-under-test",
            "--set",
            "retry.base_ms=5",
            "--set",
            "retry.max_retries=6",
            "--set",
            "breaker.failure_threshold=1000",
        ],
    );
    let c = client();

    // Callers with their own traces, one after another (so the simulator's seeded faults fall
    // the same way on every run), and one caller without.
    let mut asked = Vec::new();
    for i in 0..16u32 {
        let trace = format!("{:032x}", 0xabc0_0000_u64 + u64::from(i));
        let parent = format!("{:016x}", 0x1000 + u64::from(i));
        let r = c
            .post(format!("{}/v1/chat/completions", im.url))
            .header("x-api-key", KEY)
            .header("traceparent", format!("00-{trace}-{parent}-01"))
            .json(
                &json!({"model": LLM, "messages": [{"role": "user", "content": format!("q{i}")}]}),
            )
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), 200, "request {i}");
        let attempts: usize = r.headers()["x-attempts"].to_str().unwrap().parse().unwrap();
        asked.push((trace, parent, attempts));
    }
    let untraced = c
        .post(format!("{}/txt2txt", im.url))
        .header("x-api-key", KEY)
        .json(&json!({"model": LLM, "messages": [{"role": "user", "content": "no trace"}]}))
        .send()
        .await
        .expect("answered");
    assert_eq!(untraced.status(), 200);
    assert!(
        asked.iter().any(|(_, _, a)| *a >= 2),
        "no request was retried: the fault rate is too low to test retries ({asked:?})"
    );

    // The batch exporter sends every 100 ms; an attempt's span may end just after its request's.
    let want = asked.len() + 1;
    let traced: usize = asked.iter().map(|(_, _, a)| 4 + a).sum();
    im_testkit::eventually(
        "every request's and attempt's span exported",
        Duration::from_secs(20),
        || {
            let spans = spans.lock().unwrap();
            let roots = spans.iter().filter(|s| s.name.starts_with("POST ")).count();
            let in_asked = spans
                .iter()
                .filter(|s| asked.iter().any(|(t, _, _)| *t == s.trace))
                .count();
            std::future::ready(roots >= want && in_asked >= traced)
        },
    )
    .await;
    drop(im);
    let spans = spans.lock().unwrap().clone();
    let received: HashSet<String> = sim.state().traceparents().into_iter().collect();

    for (trace, parent, attempts) in &asked {
        let tree: Vec<&Exported> = spans.iter().filter(|s| &s.trace == trace).collect();
        let named =
            |n: &str| -> Vec<&Exported> { tree.iter().copied().filter(|s| s.name == n).collect() };
        let request = named("POST /v1/chat/completions");
        assert_eq!(
            request.len(),
            1,
            "one request span in trace {trace}: {tree:#?}"
        );
        let request = request[0];
        assert_eq!(
            &request.parent, parent,
            "the request continues the caller's span"
        );
        assert_eq!(request.kind, SPAN_KIND_SERVER);
        assert_eq!(request.service, "im-under-test");
        assert_eq!(request.attrs["http.route"], "/v1/chat/completions");
        assert_eq!(request.attrs["http.response.status_code"], "200");
        for name in ["admission", "queue_wait", "dispatch"] {
            let s = named(name);
            assert_eq!(s.len(), 1, "one {name} span in trace {trace}: {tree:#?}");
            assert_eq!(s[0].parent, request.id, "{name} is a child of the request");
        }
        let queued = named("queue_wait")[0];
        assert_eq!(queued.attrs["kind"], "txt2txt");
        assert_eq!(queued.attrs["model"], LLM);
        let dispatch = named("dispatch")[0];
        assert_eq!(dispatch.attrs["outcome"], "success");
        assert_eq!(dispatch.attrs["attempts"], attempts.to_string());
        let mut upstream = named("upstream");
        upstream.sort_by_key(|s| s.attrs["attempt"].parse::<u32>().unwrap());
        assert_eq!(
            upstream.len(),
            *attempts,
            "one upstream span per attempt in trace {trace}: {tree:#?}"
        );
        for (n, s) in upstream.iter().enumerate() {
            assert_eq!(
                s.parent, dispatch.id,
                "attempts are children of the dispatch"
            );
            assert_eq!(s.kind, SPAN_KIND_CLIENT);
            assert_eq!(s.attrs["attempt"], (n + 1).to_string());
            let last = n + 1 == *attempts;
            assert_eq!(s.attrs["outcome"], if last { "ok" } else { "error" });
            // What the simulator received is this attempt's own context.
            let sent = format!("00-{trace}-{}-01", s.id);
            assert!(
                received.contains(&sent),
                "the simulator never saw {sent} (it saw {received:?})"
            );
        }
        assert_eq!(
            tree.len(),
            4 + attempts,
            "nothing else in the trace: {tree:#?}"
        );
    }

    // A caller without a trace gets a root span of im's own, with the same tree beneath.
    let root = spans
        .iter()
        .find(|s| s.name == "POST /txt2txt")
        .expect("the untraced request's span");
    assert!(
        root.parent.is_empty() || root.parent == "0000000000000000",
        "{root:?}"
    );
    let beneath: HashSet<&str> = spans
        .iter()
        .filter(|s| s.trace == root.trace && s.parent == root.id)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        beneath,
        HashSet::from(["admission", "queue_wait", "dispatch"]),
        "{spans:#?}"
    );
}
