//! The seam between the engine and an upstream: the [`Backend`] trait and its LocalAI implementation.

use async_trait::async_trait;
use localai_client::{
    ChatRequest, ChatResponse, ChunkStream, ClientError, Forwarded, ImageRequest, ImagesResponse,
    JsonResponse, LocalAiClient, RawResponse, Upload,
};

use inference_queue::LaneId;

/// What the engine needs from upstreams. One implementation serves every lane; `lane` says which
/// upstream to call. Object-safe, so frontends and embedders can hold `Arc<dyn Backend>`.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A chat completion.
    async fn chat(&self, lane: LaneId, req: &ChatRequest) -> Result<ChatResponse, ClientError>;
    /// A streaming chat completion; resolves when the response head arrived.
    async fn chat_stream(
        &self,
        lane: LaneId,
        req: &ChatRequest,
    ) -> Result<ChunkStream, ClientError>;
    /// An image generation or edit.
    async fn images(&self, lane: LaneId, req: &ImageRequest)
    -> Result<ImagesResponse, ClientError>;
    /// Unload a model; `Ok(false)` if it was not loaded.
    async fn unload(&self, lane: LaneId, model: &str) -> Result<bool, ClientError>;
    /// Load a model ahead of use.
    async fn load(&self, lane: LaneId, model: &str) -> Result<(), ClientError>;
    /// Whether the upstream answers.
    async fn ready(&self, lane: LaneId) -> Result<(), ClientError>;
    /// Installed models.
    async fn models(&self, lane: LaneId) -> Result<Vec<String>, ClientError>;
    /// An OpenAI-shaped call passed through as JSON (`POST path`).
    async fn json(
        &self,
        _lane: LaneId,
        path: &str,
        _body: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<JsonResponse, ClientError> {
        Err(ClientError::Protocol(format!(
            "this backend does not serve {path}"
        )))
    }
    /// [`Backend::json`] as an event stream.
    async fn json_stream(
        &self,
        _lane: LaneId,
        path: &str,
        _body: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<ChunkStream, ClientError> {
        Err(ClientError::Protocol(format!(
            "this backend does not serve {path}"
        )))
    }
    /// A JSON call whose answer is bytes (`POST path`, speech).
    async fn raw(
        &self,
        _lane: LaneId,
        path: &str,
        _body: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<RawResponse, ClientError> {
        Err(ClientError::Protocol(format!(
            "this backend does not serve {path}"
        )))
    }
    /// Relay a management request (LocalAI's gallery and backend routes) and its answer,
    /// whatever its status. Never queued: it loads nothing.
    async fn forward(
        &self,
        _lane: LaneId,
        _method: &str,
        path_and_query: &str,
        _content_type: Option<&str>,
        _body: bytes::Bytes,
    ) -> Result<Forwarded, ClientError> {
        Err(ClientError::Protocol(format!(
            "this backend does not serve {path_and_query}"
        )))
    }
    /// A multipart upload whose answer is bytes (`POST path`, transcription).
    async fn upload(
        &self,
        _lane: LaneId,
        path: &str,
        _upload: &Upload,
    ) -> Result<RawResponse, ClientError> {
        Err(ClientError::Protocol(format!(
            "this backend does not serve {path}"
        )))
    }
}

/// LocalAI behind each lane: one client per upstream, in lane order. A reload adds lanes and
/// repoints them ([`LocalAiBackend::set_upstream`]); a call already made keeps its client.
#[derive(Debug)]
pub struct LocalAiBackend {
    lanes: std::sync::RwLock<Vec<std::sync::Arc<LocalAiClient>>>,
}

impl LocalAiBackend {
    /// One client per lane.
    pub fn new(lanes: Vec<LocalAiClient>) -> LocalAiBackend {
        assert!(!lanes.is_empty(), "at least one upstream");
        LocalAiBackend {
            lanes: std::sync::RwLock::new(lanes.into_iter().map(std::sync::Arc::new).collect()),
        }
    }

    /// Serve `lane` with `client` from the next call on: a new lane when `lane` is the next id,
    /// else a lane whose upstream changed. Ids past the next one are refused.
    pub fn set_upstream(&self, lane: LaneId, client: LocalAiClient) -> Result<(), ClientError> {
        let mut lanes = self.lanes.write().unwrap_or_else(|p| p.into_inner());
        match lane.0.cmp(&lanes.len()) {
            std::cmp::Ordering::Less => lanes[lane.0] = std::sync::Arc::new(client),
            std::cmp::Ordering::Equal => lanes.push(std::sync::Arc::new(client)),
            std::cmp::Ordering::Greater => {
                return Err(ClientError::Connect(format!(
                    "lane {} is not the next lane ({})",
                    lane.0,
                    lanes.len()
                )));
            }
        }
        Ok(())
    }

    /// Each lane's client, by lane id.
    pub fn clients(&self) -> Vec<std::sync::Arc<LocalAiClient>> {
        self.lanes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn lane(&self, lane: LaneId) -> std::sync::Arc<LocalAiClient> {
        let lanes = self.lanes.read().unwrap_or_else(|p| p.into_inner());
        lanes[lane.0.min(lanes.len() - 1)].clone()
    }
}

#[async_trait]
impl Backend for LocalAiBackend {
    async fn chat(&self, lane: LaneId, req: &ChatRequest) -> Result<ChatResponse, ClientError> {
        self.lane(lane).chat(req).await
    }
    async fn chat_stream(
        &self,
        lane: LaneId,
        req: &ChatRequest,
    ) -> Result<ChunkStream, ClientError> {
        self.lane(lane).chat_stream(req).await
    }
    async fn images(
        &self,
        lane: LaneId,
        req: &ImageRequest,
    ) -> Result<ImagesResponse, ClientError> {
        self.lane(lane).images(req).await
    }
    async fn unload(&self, lane: LaneId, model: &str) -> Result<bool, ClientError> {
        self.lane(lane).unload(model).await
    }
    async fn load(&self, lane: LaneId, model: &str) -> Result<(), ClientError> {
        self.lane(lane).load(model).await
    }
    async fn ready(&self, lane: LaneId) -> Result<(), ClientError> {
        self.lane(lane).ready().await
    }
    async fn models(&self, lane: LaneId) -> Result<Vec<String>, ClientError> {
        self.lane(lane).models().await
    }
    async fn json(
        &self,
        lane: LaneId,
        path: &str,
        body: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<JsonResponse, ClientError> {
        self.lane(lane).call_json(path, body).await
    }
    async fn json_stream(
        &self,
        lane: LaneId,
        path: &str,
        body: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<ChunkStream, ClientError> {
        self.lane(lane).call_stream(path, body).await
    }
    async fn raw(
        &self,
        lane: LaneId,
        path: &str,
        body: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<RawResponse, ClientError> {
        self.lane(lane).call_raw(path, body).await
    }
    async fn upload(
        &self,
        lane: LaneId,
        path: &str,
        upload: &Upload,
    ) -> Result<RawResponse, ClientError> {
        self.lane(lane).upload(path, upload).await
    }
    async fn forward(
        &self,
        lane: LaneId,
        method: &str,
        path_and_query: &str,
        content_type: Option<&str>,
        body: bytes::Bytes,
    ) -> Result<Forwarded, ClientError> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| ClientError::Protocol(format!("{method:?} is not an HTTP method")))?;
        self.lane(lane)
            .forward(method, path_and_query, content_type, body)
            .await
    }
}
