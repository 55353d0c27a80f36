//! Retrieval models: `POST /v1/embeddings` (one small deterministic vector per input) and
//! `POST /v1/rerank` (LocalAI's Jina-style body). Both cost `per_call_ms + per_input_ms × inputs`
//! (plus `per_token_ms` per token of input), so merging inputs into one call is measurable.

// Handlers return a ready error `Response` as their `Err`: it is the value sent, not propagated.
#![allow(clippy::result_large_err)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::config::ModelCfg;
use crate::image;
use crate::server::{begin, error, not_served, request, sleep};
use crate::state::SimState;

/// The simulated service time of one call over `inputs`.
fn cost_ms(model: &ModelCfg, inputs: &[&str]) -> f64 {
    let tokens: usize = inputs.iter().map(|i| i.len() / 4 + 1).sum();
    model.per_call_ms
        + model.per_input_ms * inputs.len() as f64
        + model.per_token_ms * tokens as f64
}

/// A string or a list of strings, by field name; the error names the field.
fn strings<'a>(body: &'a Value, field: &str) -> Result<Vec<&'a str>, Response> {
    match body.get(field) {
        Some(Value::String(s)) => Ok(vec![s.as_str()]),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            Ok(items.iter().filter_map(Value::as_str).collect())
        }
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("`{field}` must be a string or a list of strings"),
            "invalid_request_error",
        )),
    }
}

/// A deterministic 8-dimensional vector for a text.
fn vector(text: &str) -> Vec<f64> {
    let h = image::hash(text);
    (0..8)
        .map(|k| f64::from(((h >> (k * 8)) & 0xFF) as u8) / 255.0 - 0.5)
        .collect()
}

/// An embedding call's inputs: a string, or a list of strings and token ids (a token id is
/// embedded as its decimal text).
fn embedding_inputs(body: &Value) -> Result<Vec<String>, Response> {
    match body.get("input") {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if items.iter().all(|i| i.is_string() || i.is_number()) => {
            Ok(items
                .iter()
                .map(|i| match i {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect())
        }
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            "`input` must be a string or a list of strings and token ids",
            "invalid_request_error",
        )),
    }
}

/// `POST /v1/embeddings`.
pub async fn embeddings(State(state): State<SimState>, body: Bytes) -> Response {
    let (body, idx) = match request(&state, &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let model = &state.cfg.models[idx];
    if !model.serves("embed") {
        return not_served(&state, &model.name, "embeddings");
    }
    let owned = match embedding_inputs(&body) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let inputs: Vec<&str> = owned.iter().map(String::as_str).collect();
    // As OpenAI's API does, an empty string is refused (the whole call fails).
    if let Some(i) = inputs.iter().position(|t| t.is_empty()) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("input[{i}] is an empty string"),
            "invalid_request_error",
        );
    }
    let (slot, _) = match begin(&state, idx, false).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    state.count_inputs(inputs.len());
    sleep(state.cfg.scaled(cost_ms(model, &inputs))).await;
    drop(slot);
    let tokens: usize = inputs.iter().map(|i| i.len() / 4 + 1).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": vector(text)}))
        .collect();
    axum::Json(json!({"object": "list", "data": data, "model": model.name,
                      "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
    .into_response()
}

/// `POST /v1/rerank`: `{model, query, documents, top_n?}` → `{model, usage, results: [{index,
/// document: {text}, relevance_score}]}` ordered by score, as LocalAI answers.
pub async fn rerank(State(state): State<SimState>, body: Bytes) -> Response {
    let (body, idx) = match request(&state, &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let model = &state.cfg.models[idx];
    if !model.serves("rerank") {
        return not_served(&state, &model.name, "rerank");
    }
    let Some(query) = body.get("query").and_then(Value::as_str) else {
        return error(
            StatusCode::BAD_REQUEST,
            "`query` must be a string",
            "invalid_request_error",
        );
    };
    let documents = match strings(&body, "documents") {
        Ok(d) => d,
        Err(r) => return r,
    };
    let top_n = body
        .get("top_n")
        .and_then(Value::as_u64)
        .map_or(documents.len(), |n| n as usize);
    let (slot, _) = match begin(&state, idx, false).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    state.count_inputs(documents.len());
    sleep(state.cfg.scaled(cost_ms(model, &documents))).await;
    drop(slot);
    // Score: shared words with the query, a deterministic tie-break by hash.
    let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
    let mut results: Vec<(usize, f64)> = documents
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let shared = d
                .split_whitespace()
                .filter(|w| words.contains(&w.to_lowercase()))
                .count();
            let tie = (image::hash(d) % 1000) as f64 / 100_000.0;
            (
                i,
                (shared as f64 / (words.len().max(1) as f64)).min(1.0) * 0.98 + tie,
            )
        })
        .collect();
    results.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    results.truncate(top_n);
    let tokens: usize = documents.iter().map(|d| d.len() / 4 + 1).sum::<usize>() + query.len() / 4;
    let results: Vec<Value> = results
        .into_iter()
        .map(|(i, score)| {
            json!({"index": i, "document": {"text": documents[i]}, "relevance_score": score})
        })
        .collect();
    axum::Json(json!({"model": model.name, "results": results,
                      "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
    .into_response()
}
