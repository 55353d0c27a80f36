//! Lifecycle and discovery calls: the models installed and loaded, loads and unloads, readiness,
//! what the server says about its models (`/v1/models`, LocalAI's capabilities, llama.cpp's
//! `/props`).

use serde_json::{Value, json};

use super::exchange::Outgoing;
use super::{LocalAiClient, MAX_ERROR_BODY, ModelInfo, Props};
use crate::error::ClientError;

impl LocalAiClient {
    /// The entries of `GET /v1/models`' `data`.
    async fn listed_models(&self) -> Result<Vec<Value>, ClientError> {
        let mut v = self
            .control(Outgoing::general(self.get("/v1/models")))
            .await?;
        match v.get_mut("data").map(Value::take) {
            Some(Value::Array(data)) => Ok(data),
            _ => Err(ClientError::Protocol("no data[] in /v1/models".into())),
        }
    }

    /// Installed models (`GET /v1/models`).
    pub async fn models(&self) -> Result<Vec<String>, ClientError> {
        let data = self.listed_models().await?;
        Ok(data
            .iter()
            .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_owned))
            .collect())
    }

    /// Loaded models (`GET /system`, `loaded_models[].id`).
    pub async fn loaded_models(&self) -> Result<Vec<String>, ClientError> {
        let v = self.control(Outgoing::general(self.get("/system"))).await?;
        let list = v
            .get("loaded_models")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        Ok(list
            .iter()
            .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_owned))
            .collect())
    }

    /// Unload a model (`POST /backend/shutdown`). `Ok(false)` when it was not loaded (404).
    pub async fn unload(&self, model: &str) -> Result<bool, ClientError> {
        match self
            .control(self.post_json("/backend/shutdown", &json!({"model": model}))?)
            .await
        {
            Ok(_) => Ok(true),
            Err(ClientError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Load a model ahead of its first request (`POST /backend/load`, LocalAI v4.6+).
    pub async fn load(&self, model: &str) -> Result<(), ClientError> {
        let total = self.cfg.image_first_byte;
        let resp = self
            .send(
                self.post_json("/backend/load", &json!({"model": model}))?,
                total,
            )
            .await?;
        let _ = resp.read_capped(MAX_ERROR_BODY).await;
        Ok(())
    }

    /// Whether the upstream is up. Probes what the server offers: LocalAI's `/readyz`, else
    /// llama.cpp's `/health`, else `/v1/models` (llama-cpp-python has neither); a 404 on a probe
    /// path means "try the next one", not "unreachable". Says nothing about models.
    pub async fn ready(&self) -> Result<(), ClientError> {
        let limit = self.cfg.connect_timeout * 2;
        let mut last = None;
        for path in ["/readyz", "/health", "/v1/models"] {
            match self.send(Outgoing::general(self.get(path)), limit).await {
                Ok(resp) => {
                    let body = tokio::time::timeout(limit, resp.read_capped(MAX_ERROR_BODY)).await;
                    // llama-server's `/health` answers `{"status": "ok"}` (vLLM's is empty).
                    if path == "/health"
                        && let Ok(Ok(b)) = body
                        && serde_json::from_slice::<Value>(&b)
                            .is_ok_and(|v| v.get("status").is_some())
                    {
                        self.learned_llama_cpp();
                    }
                    return Ok(());
                }
                Err(ClientError::Status {
                    status: 404 | 405, ..
                }) => continue,
                Err(e) => last = Some(e),
            }
            if last.is_some() {
                break;
            }
        }
        Err(last.unwrap_or_else(|| {
            ClientError::Protocol(
                "no readiness probe answered (/readyz, /health, /v1/models)".into(),
            )
        }))
    }

    /// What the upstream says about its models (`GET /v1/models`): names, and where the server
    /// reports them (llama.cpp's router), load status and modalities.
    pub async fn model_infos(&self) -> Result<Vec<ModelInfo>, ClientError> {
        let data = self.listed_models().await?;
        Ok(data.iter().filter_map(ModelInfo::from_json).collect())
    }

    /// LocalAI's own description of its models (`GET /v1/models/capabilities`: each model's
    /// capabilities and modalities); `None` when the upstream has no such route.
    pub async fn model_capabilities(&self) -> Result<Option<Vec<ModelInfo>>, ClientError> {
        match self
            .control(Outgoing::general(self.get("/v1/models/capabilities")))
            .await
        {
            Ok(v) => {
                let data = v.get("data").and_then(Value::as_array).ok_or_else(|| {
                    ClientError::Protocol("no data[] in /v1/models/capabilities".into())
                })?;
                Ok(Some(data.iter().filter_map(ModelInfo::from_json).collect()))
            }
            Err(ClientError::Status {
                status: 404 | 405 | 501,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Parallel slots and modalities of `model` from llama.cpp's `GET /props?model=…`; `None`
    /// when the upstream has no such route.
    pub async fn props(&self, model: &str) -> Result<Option<Props>, ClientError> {
        let encoded: String = model
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let rb = self.get(&format!("/props?model={encoded}"));
        match self.control(Outgoing::general(rb)).await {
            Ok(v) => {
                self.learned_llama_cpp();
                Ok(Some(Props::from_json(&v)))
            }
            Err(ClientError::Status {
                status: 404 | 405 | 501,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
