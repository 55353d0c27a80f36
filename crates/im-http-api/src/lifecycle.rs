//! The seeds' third dialect's model management: `POST /models/load` and `POST /models/unload`,
//! for `admin` keys, through the scheduler (see `im_service`'s model management).

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::error::HttpError;
use crate::respond::body;
use crate::state::AppState;

/// `POST /models/load`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadRequest {
    /// An upstream model (see `GET /v1/models`).
    #[schema(min_length = 1)]
    pub model: String,
    /// The backend to load it on (default: where its work would go, see `GET /placement`).
    pub backend: Option<String>,
}

/// `POST /models/unload`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnloadRequest {
    /// An upstream model.
    #[schema(min_length = 1)]
    pub model: String,
    /// The backend to unload it from (default: every backend holding it).
    pub backend: Option<String>,
    /// Unload even with work in flight or waiting: no new work for it there, unloaded once its
    /// running requests finish.
    #[serde(default)]
    pub force: bool,
}

/// Load a model at the backend's next switch point (at once if it is idle). Needs an `admin` key.
#[utoipa::path(post, path = "/models/load", tag = "operations", request_body = LoadRequest,
    responses((status = 200, description = "`{model, backend, status: loaded|scheduled}`", body = Object),
              (status = 400, description = "Invalid request or an unknown backend", body = crate::ErrorBody),
              (status = 401, description = "No or a wrong API key", body = crate::ErrorBody),
              (status = 403, description = "The key lacks the `admin` scope", body = crate::ErrorBody),
              (status = 404, description = "Unknown model", body = crate::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn load(
    State(st): State<AppState>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let r: LoadRequest = im_service::api::parse(&body(b, st.service.body_limit())?)?;
    let v = st
        .service
        .load_model(&r.model, r.backend.as_deref())
        .await?;
    Ok(axum::Json(v).into_response())
}

/// Unload a model: refused with 409 while it has work unless `force`, which stops new work for
/// it and unloads it once its running requests finish. Needs an `admin` key.
#[utoipa::path(post, path = "/models/unload", tag = "operations", request_body = UnloadRequest,
    responses((status = 200, description = "`{model, backends: [{backend, status: not_loaded|load_cancelled|unloading|after_barrier}]}` for every backend (or the one named)", body = Object),
              (status = 400, description = "Invalid request or an unknown backend", body = crate::ErrorBody),
              (status = 401, description = "No or a wrong API key", body = crate::ErrorBody),
              (status = 403, description = "The key lacks the `admin` scope", body = crate::ErrorBody),
              (status = 404, description = "Unknown model", body = crate::ErrorBody),
              (status = 409, description = "The model has work; send `force: true`", body = crate::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn unload(
    State(st): State<AppState>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let r: UnloadRequest = im_service::api::parse(&body(b, st.service.body_limit())?)?;
    let v = st
        .service
        .unload_model(&r.model, r.backend.as_deref(), r.force)
        .await?;
    Ok(axum::Json(v).into_response())
}
