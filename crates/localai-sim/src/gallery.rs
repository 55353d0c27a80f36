//! LocalAI's model gallery, enough to relay and test a fleet that changes: `GET /models/available`
//! lists the catalogue as gallery entries (installed or not), `POST /models/apply` installs one
//! (it is listed and served from then on) and answers a job id, `POST /models/delete/{name}`
//! removes one, and `GET /models/jobs/{uuid}` reports every job completed.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::server::error;
use crate::state::SimState;

/// `GET /models/available`.
pub async fn available(State(state): State<SimState>) -> Response {
    let entries: Vec<Value> = state
        .cfg
        .models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            json!({"name": m.name, "gallery": {"name": "localai"}, "installed": state.installed(i),
                   "description": format!("simulated model serving {}", m.kinds.join(", "))})
        })
        .collect();
    axum::Json(entries).into_response()
}

/// `POST /models/apply`: `{"id": "gallery@name"}` or `{"url": …}` → a job.
pub async fn apply(State(state): State<SimState>, body: Bytes) -> Response {
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("invalid JSON body: {e}"),
                "invalid_request_error",
            );
        }
    };
    let Some(id) = v.get("id").or_else(|| v.get("url")).and_then(Value::as_str) else {
        return error(
            StatusCode::BAD_REQUEST,
            "`id` or `url` is required",
            "invalid_request_error",
        );
    };
    // `gallery@name`, a bare name, or a URL whose last segment names the model.
    let name = id.rsplit(['@', '/']).next().unwrap_or(id);
    let name = name.strip_suffix(".yaml").unwrap_or(name);
    // As on LocalAI, the job is accepted whatever it names; one naming no gallery model fails.
    let failed = if state.set_installed(name, true) {
        ""
    } else {
        "-failed"
    };
    let uuid = format!("sim-job-{}{failed}", (state.random() * 1e9) as u64);
    axum::Json(json!({"uuid": uuid, "status": format!("/models/jobs/{uuid}")})).into_response()
}

/// `POST /models/delete/{name}`: the model is removed (and unloaded).
pub async fn delete(State(state): State<SimState>, Path(name): Path<String>) -> Response {
    if state.set_installed(&name, false) {
        axum::Json(json!({"message": "model deleted"})).into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            &format!("model {name:?} not found"),
            "not_found",
        )
    }
}

/// `GET /models/jobs/{uuid}`.
pub async fn job(Path(uuid): Path<String>) -> Response {
    if uuid.ends_with("-failed") {
        return axum::Json(
            json!({"uuid": uuid, "processed": true, "error": "no such model in the gallery",
                                 "message": "error: no such model in the gallery", "progress": 0}),
        )
        .into_response();
    }
    axum::Json(json!({"uuid": uuid, "processed": true, "message": "completed", "progress": 100}))
        .into_response()
}
