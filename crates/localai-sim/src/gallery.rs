//! LocalAI's model gallery, enough to relay and test: `GET /models/available` lists the
//! catalogue as gallery entries, `POST /models/apply` answers a job id at once, and
//! `GET /models/jobs/{uuid}` reports every job completed. Nothing is installed.

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
        .map(|m| {
            json!({"name": m.name, "gallery": {"name": "localai"}, "installed": true,
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
    if v.get("id").or_else(|| v.get("url")).is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "`id` or `url` is required",
            "invalid_request_error",
        );
    }
    let uuid = format!("sim-job-{}", (state.random() * 1e9) as u64);
    axum::Json(json!({"uuid": uuid, "status": format!("/models/jobs/{uuid}")})).into_response()
}

/// `GET /models/jobs/{uuid}`.
pub async fn job(Path(uuid): Path<String>) -> Response {
    axum::Json(json!({"uuid": uuid, "processed": true, "message": "completed", "progress": 100}))
        .into_response()
}
