//! A schema-driven property test. For every JSON inference route in the committed OpenAPI
//! document, it generates bodies from the route's request schema and checks them against im in
//! front of the simulator:
//!
//! - a body the schema accepts is answered (2xx), never refused and never a 5xx;
//! - a body that breaks exactly one rule of the schema (a missing required field, a wrong type, a
//!   value out of range, too short or too long, not in the enum, not matching the pattern, an
//!   unknown field where none are allowed, not an object) is refused with a 4xx.
//!
//! Conventions a schema cannot state, applied as a client would: `model` names a configured
//! model serving the route's kind (from `GET /v1/models`), and a string whose
//! `contentMediaType` is an image holds a real image, and `deadline_ms` leaves the request time
//! to run (a deadline that expires is a timeout, not a refusal). `/img2txt` is left out: its rule that some
//! message carries an image is stated in prose only. Multipart routes are covered by the
//! bad-input matrix of `tests/media.rs`. The generator is seeded: a failure prints the seed,
//! the route and the body.

mod common;

use axum::Router;
use axum::http::StatusCode;
use base64::Engine as _;
use im_app::config::ImConfig;
use im_app::{self as app, Built, Simulate};
use serde_json::{Map, Value, json};

const DOC: &str = include_str!("../../im-http-api/openapi.json");
/// Bodies of each kind per route.
const CASES: usize = 24;

/// A small seeded generator (xorshift64*), so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// What a route's bodies need besides their schema.
struct Ctx {
    model: &'static str,
    image: String,
}

fn resolve<'a>(doc: &'a Value, s: &'a Value) -> &'a Value {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => s,
    }
}

/// The types a schema allows (`None`: any).
fn types(s: &Value) -> Option<Vec<&str>> {
    match s.get("type") {
        Some(Value::String(t)) => Some(vec![t.as_str()]),
        Some(Value::Array(ts)) => Some(ts.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

fn branches(s: &Value) -> Option<&Vec<Value>> {
    s.get("anyOf")
        .or_else(|| s.get("oneOf"))
        .and_then(Value::as_array)
}

fn num(s: &Value, key: &str) -> Option<f64> {
    s.get(key).and_then(Value::as_f64)
}

fn any_value(g: &mut Rng, depth: usize) -> Value {
    match g.below(if depth > 1 { 4 } else { 6 }) {
        0 => Value::Null,
        1 => json!(g.chance(50)),
        2 => json!(g.below(1000) as i64 - 500),
        3 => json!(text(g, 0, 8)),
        4 => Value::Array((0..g.below(3)).map(|_| any_value(g, depth + 1)).collect()),
        _ => {
            let mut o = Map::new();
            for _ in 0..g.below(3) {
                o.insert(text(g, 1, 6), any_value(g, depth + 1));
            }
            Value::Object(o)
        }
    }
}

fn text(g: &mut Rng, min: usize, max: usize) -> String {
    const CHARS: &[char] = &[
        'a', 'b', 'x', 'Z', ' ', '7', 'é', '猫', '"', '\\', '\n', '-',
    ];
    let n = min + g.below((max.saturating_sub(min) + 1) as u64) as usize;
    (0..n).map(|_| *g.pick(CHARS)).collect()
}

/// A value the schema accepts.
fn valid(doc: &Value, s: &Value, g: &mut Rng, ctx: &Ctx, name: Option<&str>) -> Value {
    let s = resolve(doc, s);
    if name == Some("model") {
        return json!(ctx.model);
    }
    if name == Some("version") {
        // Like `model`: a version that exists (the task models' examples are all `v1`).
        return json!("v1");
    }
    if name == Some("deadline_ms") {
        // A deadline short enough to expire is a timeout, not a refusal: give the request time.
        return json!(10_000 + g.below(600_000));
    }
    if s.get("contentMediaType")
        .and_then(Value::as_str)
        .is_some_and(|m| m.starts_with("image/"))
    {
        return json!(ctx.image);
    }
    if let Some(b) = branches(s) {
        let b = b.clone();
        return valid(doc, g.pick(&b), g, ctx, None);
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        return g.pick(e).clone();
    }
    let Some(ts) = types(s) else {
        return any_value(g, 0);
    };
    let concrete: Vec<&str> = ts.iter().copied().filter(|t| *t != "null").collect();
    if concrete.is_empty() || (ts.contains(&"null") && g.chance(10)) {
        return Value::Null;
    }
    match *g.pick(&concrete) {
        "object" => {
            let mut o = Map::new();
            let required: Vec<&str> = s["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (k, ps) in props {
                    if required.contains(&k.as_str()) || g.chance(40) {
                        o.insert(k.clone(), valid(doc, ps, g, ctx, Some(k)));
                    }
                }
            }
            if s.get("additionalProperties") != Some(&json!(false)) && g.chance(30) {
                o.insert("x_extra_field".into(), any_value(g, 1));
            }
            Value::Object(o)
        }
        "array" => {
            let min = num(s, "minItems").unwrap_or(0.0) as u64;
            let max = num(s, "maxItems").map_or(min + 3, |m| (m as u64).min(min + 3));
            let n = min + g.below(max - min + 1);
            (0..n)
                .map(|_| valid(doc, &s["items"], g, ctx, None))
                .collect()
        }
        "string" => {
            if s.get("pattern").is_some() {
                let examples = s["examples"]
                    .as_array()
                    .expect("a pattern comes with examples");
                return g.pick(examples).clone();
            }
            let min = num(s, "minLength").unwrap_or(0.0) as usize;
            let max = num(s, "maxLength").map_or(min + 12, |m| (m as usize).min(min + 12));
            json!(text(g, min, max))
        }
        "integer" => {
            let min = num(s, "minimum").unwrap_or(-1000.0) as i128;
            let max = num(s, "maximum").map_or(min + 5000, |m| m as i128);
            let step = num(s, "multipleOf").unwrap_or(1.0) as i128;
            let lo = min.div_euclid(step) * step + if min.rem_euclid(step) == 0 { 0 } else { step };
            let hi = max.div_euclid(step) * step;
            let count = (hi - lo) / step + 1;
            let k = match g.below(4) {
                0 => 0,
                1 => count - 1,
                _ => g.below(count.min(5000) as u64) as i128,
            };
            json!((lo + k * step) as i64)
        }
        "number" => {
            let min = num(s, "minimum").unwrap_or(-100.0);
            let max = num(s, "maximum").unwrap_or(min + 200.0);
            json!(match g.below(4) {
                0 => min,
                1 => max,
                _ => min + (max - min) * (g.below(1000) as f64 / 1000.0),
            })
        }
        "boolean" => json!(g.chance(50)),
        other => panic!("the generator does not know type {other}"),
    }
}

/// A value of none of the schema's types.
fn wrong_type(allowed: &[&str]) -> Option<Value> {
    let candidates = [
        ("string", json!("wrong-type")),
        ("number", json!(1.5)),
        ("boolean", json!(true)),
        ("object", json!({"wrong": "type"})),
        ("array", json!(["wrong-type"])),
    ];
    candidates
        .into_iter()
        .find(|(t, _)| !allowed.contains(t))
        .map(|(_, v)| v)
}

/// The types of a schema and all its branches.
fn all_types<'a>(doc: &'a Value, s: &'a Value) -> Option<Vec<&'a str>> {
    let s = resolve(doc, s);
    match branches(s) {
        Some(bs) => {
            let mut out = Vec::new();
            for b in bs {
                out.extend(all_types(doc, b)?);
            }
            Some(out)
        }
        None => types(s),
    }
}

/// `value` (valid for `s`) broken in one rule, with a description; `None` when `s` has no rule
/// to break there.
fn break_one(doc: &Value, s: &Value, value: &Value, g: &mut Rng) -> Option<(Value, String)> {
    let s = resolve(doc, s);
    let mut options: Vec<(Value, String)> = Vec::new();
    if let Some(ts) = all_types(doc, s)
        && let Some(w) = wrong_type(&ts)
    {
        options.push((w, format!("a value of none of the types {ts:?}")));
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        let _ = e;
        options.push((json!("not-a-member"), "a value outside the enum".into()));
    }
    if s.get("pattern").is_some() {
        options.push((
            json!("?does not match?"),
            "a string outside the pattern".into(),
        ));
    }
    if branches(s).is_none() {
        let ints = types(s).is_some_and(|t| t.contains(&"integer"));
        let d = if ints { 1.0 } else { 0.5 };
        if let Some(min) = num(s, "minimum") {
            let v = min - d;
            options.push((
                if ints { json!(v as i64) } else { json!(v) },
                format!("below the minimum {min}"),
            ));
        }
        if let Some(max) = num(s, "maximum") {
            let v = max + d;
            options.push((
                if ints { json!(v as i64) } else { json!(v) },
                format!("above the maximum {max}"),
            ));
        }
        if let (Some(m), Some(min)) = (num(s, "multipleOf"), num(s, "minimum")) {
            options.push((
                json!((min + m / 2.0) as i64),
                format!("not a multiple of {m}"),
            ));
        }
        if num(s, "minLength").is_some_and(|m| m >= 1.0) {
            options.push((json!(""), "shorter than minLength".into()));
        }
        if let Some(max) = num(s, "maxLength") {
            options.push((
                json!("a".repeat(max as usize + 1)),
                "longer than maxLength".into(),
            ));
        }
        if num(s, "minItems").is_some_and(|m| m >= 1.0) {
            options.push((json!([]), "fewer items than minItems".into()));
        }
        if let Some(max) = num(s, "maxItems") {
            let item = value
                .as_array()
                .and_then(|a| a.first())
                .cloned()
                .unwrap_or(json!("x"));
            options.push((
                Value::Array(vec![item; max as usize + 1]),
                "more items than maxItems".into(),
            ));
        }
    }
    // Inside: an object's fields, an array's items.
    if let Some(o) = value.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        if let Some(required) = s["required"].as_array() {
            for r in required.iter().filter_map(Value::as_str) {
                let mut v = o.clone();
                v.remove(r);
                options.push((Value::Object(v), format!("without the required `{r}`")));
            }
        }
        if s.get("additionalProperties") == Some(&json!(false)) {
            let mut v = o.clone();
            v.insert("zz_unknown".into(), json!(1));
            options.push((Value::Object(v), "an unknown field".into()));
        }
        if let Some(props) = props {
            let present: Vec<&String> = o.keys().filter(|k| props.contains_key(*k)).collect();
            if !present.is_empty() {
                let k = (*g.pick(&present)).clone();
                if (k != "model" || g.chance(50))
                    && let Some((inner, why)) = break_one(doc, &props[&k], &o[&k], g)
                {
                    let mut v = o.clone();
                    v.insert(k.clone(), inner);
                    options.push((Value::Object(v), format!("`{k}`: {why}")));
                }
            }
        }
    }
    if let Some(a) = value.as_array()
        && !a.is_empty()
        && let Some(items) = s.get("items")
    {
        let i = g.below(a.len() as u64) as usize;
        if let Some((inner, why)) = break_one(doc, items, &a[i], g) {
            let mut v = a.clone();
            v[i] = inner;
            options.push((Value::Array(v), format!("item {i}: {why}")));
        }
    }
    if options.is_empty() {
        return None;
    }
    let i = g.below(options.len() as u64) as usize;
    Some(options.swap_remove(i))
}

async fn send(app: &Router, path: &str, body: &Value) -> (StatusCode, String) {
    let (status, _, bytes) = common::post_json(app, path, body).await;
    let text = String::from_utf8_lossy(&bytes).chars().take(300).collect();
    (status, text)
}

/// The model a route's bodies name.
fn model_for(path: &str) -> Option<&'static str> {
    Some(match path {
        "/txt2txt" | "/v1/chat/completions" => "llava-1.6-mistral-7b",
        "/v1/completions" | "/v1/infer" | "/v1/infer/stream" => "llama-3.2-3b-instruct",
        "/infer" | "/infer/batch" => "summarizer:v1",
        "/v1/embeddings" => "bge-small-en-v1.5",
        "/txt2img" | "/img2img" | "/v1/images/generations" => "stablediffusion",
        "/v1/rerank" => "jina-reranker-v1-base-en",
        "/v1/audio/speech" | "/tts" => "tts-1",
        _ => return None,
    })
}

async fn app() -> (Router, Built) {
    let mut cfg = ImConfig::default();
    cfg.retry.base_ms = 1;
    cfg.retry.cap_ms = 5;
    let built = app::build(cfg, Some(Simulate { time_scale: 0.0001 }))
        .await
        .expect("build");
    (im_http_api::router(built.state.clone()), built)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_valid_bodies_are_answered_and_schema_invalid_ones_refused() {
    let doc: Value = serde_json::from_str(DOC).expect("openapi.json");
    let (app, _running) = app().await;
    let image =
        base64::engine::general_purpose::STANDARD.encode(localai_sim::image::png(16, 16, 5));
    let seed = std::env::var("IM_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1d5e_ed00_u64);
    let mut g = Rng(seed);
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let Some(schema) = item["post"]["requestBody"]["content"]["application/json"].get("schema")
        else {
            continue;
        };
        let Some(model) = model_for(path) else {
            // `/img2txt` (an image in some message: prose only), the admin routes (the
            // fuzzer's key has no `admin` scope; `tests/scopes.rs` covers them), and the job
            // routes (their `body` is another route's body, checked when the job runs; a
            // callback URL must resolve; ingest needs a signature: `bins/im-http/tests/jobs.rs`).
            assert!(
                [
                    "/img2txt",
                    "/models/apply",
                    "/models/load",
                    "/models/unload",
                    "/v1/jobs",
                    "/webhooks/ingest",
                ]
                .contains(&path.as_str()),
                "a JSON route the fuzzer does not know: {path}"
            );
            continue;
        };
        routes.push(path.clone());
        let ctx = Ctx {
            model,
            image: image.clone(),
        };
        for case in 0..CASES {
            let body = valid(&doc, schema, &mut g, &ctx, None);
            let (status, answer) = send(&app, path, &body).await;
            assert!(
                status.is_success(),
                "seed {seed:#x}, {path} case {case}: a schema-valid body was answered {status}: {answer}\nbody: {body}"
            );
            let Some((broken, why)) = break_one(&doc, schema, &body, &mut g) else {
                continue;
            };
            let (status, answer) = send(&app, path, &broken).await;
            // A batch answers a broken item in its place: the others are not failed with it.
            let item_failed = path == "/infer/batch"
                && status.is_success()
                && answer
                    .split("\"failed\":")
                    .nth(1)
                    .and_then(|rest| rest.split([',', '}']).next())
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n >= 1);
            assert!(
                status.is_client_error() || item_failed,
                "seed {seed:#x}, {path} case {case}: a body with {why} was answered {status} (a 4xx expected): {answer}\nbody: {broken}"
            );
        }
        // Not an object at all.
        let (status, _) = send(&app, path, &json!([1, 2])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: a JSON array body");
    }
    assert!(routes.len() >= 9, "the document's JSON routes: {routes:?}");
}
