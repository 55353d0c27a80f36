//! The simulator's lifecycle and discovery routes: the models it lists (LocalAI's and llama.cpp
//! router's shapes), LocalAI's `/system`, `/backend/shutdown`, `/backend/load` and
//! `/v1/models/capabilities`, llama.cpp's `/props`, and the simulator's own `/sim/stats` and
//! `/sim/reset`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::config::SimMode;
use crate::server::{error, request};
use crate::state::SimState;

pub(crate) async fn models(State(state): State<SimState>) -> Response {
    state.count_catalogue_read();
    let resident = state.resident();
    let data: Vec<Value> = state
        .installed_models()
        .into_iter()
        .map(|m| match state.cfg.mode {
            SimMode::LlamaCppRouter => {
                let status = if resident.contains(&m.name) {
                    "loaded"
                } else {
                    "unloaded"
                };
                let input: Vec<&str> = if m.serves("img2txt") {
                    vec!["text", "image"]
                } else {
                    vec!["text"]
                };
                let output: Vec<&str> = if m.serves("txt2img") {
                    vec!["image"]
                } else if m.serves("embed") {
                    vec!["embedding"]
                } else {
                    vec!["text"]
                };
                json!({"id": m.name, "object": "model", "owned_by": "llamacpp", "created": 0,
                       "in_cache": true, "path": format!("/models/{}.gguf", m.name),
                       "status": {"value": status, "args": []},
                       "modalities": {"input": input, "output": output}})
            }
            _ => json!({"id": m.name, "object": "model"}),
        })
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

pub(crate) async fn system(State(state): State<SimState>) -> Response {
    let loaded: Vec<Value> = state
        .resident()
        .into_iter()
        .map(|m| json!({"id": m}))
        .collect();
    axum::Json(json!({"backends": ["llama-cpp", "diffusers"], "loaded_models": loaded}))
        .into_response()
}

pub(crate) async fn shutdown(State(state): State<SimState>, body: Bytes) -> Response {
    let idx = match request(&state, &body) {
        Ok((_, idx)) => idx,
        Err(r) => return r,
    };
    if state.unload(idx).await {
        axum::Json(json!({"message": "model unloaded"})).into_response()
    } else {
        error(StatusCode::NOT_FOUND, "model is not loaded", "not_found")
    }
}

pub(crate) async fn load(State(state): State<SimState>, body: Bytes) -> Response {
    let idx = match request(&state, &body) {
        Ok((_, idx)) => idx,
        Err(r) => return r,
    };
    state.acquire(idx, false).await;
    axum::Json(json!({"message": "model loaded"})).into_response()
}

/// LocalAI's `GET /v1/models/capabilities`: each installed model's capabilities and
/// modalities, as LocalAI derives them from the model's configuration.
pub(crate) async fn capabilities(State(state): State<SimState>) -> Response {
    state.count_catalogue_read();
    const CAPS: [(&str, &str); 8] = [
        ("txt2txt", "chat"),
        ("img2txt", "vision"),
        ("txt2img", "image"),
        ("img2img", "image"),
        ("embed", "embeddings"),
        ("rerank", "rerank"),
        ("tts", "tts"),
        ("stt", "transcript"),
    ];
    let data: Vec<Value> = state
        .installed_models()
        .into_iter()
        .map(|m| {
            let mut caps: Vec<&str> = Vec::new();
            for (kind, cap) in CAPS {
                if m.serves(kind) && !caps.contains(&cap) {
                    caps.push(cap);
                }
            }
            let mut input = vec!["text"];
            if m.serves("img2txt") || m.serves("img2img") {
                input.push("image");
            }
            if m.serves("stt") {
                input = vec!["audio"];
            }
            let output = if m.serves("txt2img") {
                vec!["image"]
            } else if m.serves("tts") {
                vec!["audio"]
            } else {
                vec!["text"]
            };
            json!({"id": m.name, "object": "model", "capabilities": caps,
                   "input_modalities": input, "output_modalities": output, "context_size": state.cfg.context_tokens})
        })
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// llama.cpp's `/props?model=…`: the model's parallel slots and modalities.
pub(crate) async fn props(
    State(state): State<SimState>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let name = q.get("model").map_or("", String::as_str);
    match state.model(name) {
        Some((_, m)) => axum::Json(json!({"total_slots": m.slots, "model_alias": m.name,
            "modalities": {"vision": m.serves("img2txt"), "audio": false}}))
        .into_response(),
        None => error(StatusCode::NOT_FOUND, "model not found", "not_found_error"),
    }
}

pub(crate) async fn stats(State(state): State<SimState>) -> Response {
    axum::Json(state.stats()).into_response()
}

pub(crate) async fn reset(State(state): State<SimState>) -> Response {
    state.reset();
    StatusCode::NO_CONTENT.into_response()
}
