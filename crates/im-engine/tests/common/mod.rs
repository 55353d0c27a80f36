//! A scripted backend for the engine's tests: each of its two servers is up, gone or loading,
//! as a test sets it, and chat answers at once on a server that is not gone.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use async_trait::async_trait;
use im_engine::Backend;
use inference_queue::LaneId;
use localai_client::{
    ChatRequest, ChatResponse, ChunkStream, ClientError, ImageRequest, ImagesResponse,
};
use serde_json::json;

/// What a lane's readiness route does.
pub const UP: u8 = 0;
/// The server is gone: connections are refused.
pub const GONE: u8 = 1;
/// The server is up but answers 503 (llama.cpp's `/health` while it loads a model).
pub const LOADING: u8 = 2;

/// The one model the servers list.
pub const MODEL: &str = "llama-3.2-3b-instruct";

/// Two servers whose state each test sets (lane 0 and lane 1).
pub struct Scripted {
    state: [AtomicU8; 2],
    chats: [AtomicU32; 2],
}

impl Scripted {
    /// Servers in these states.
    pub fn new(states: [u8; 2]) -> Scripted {
        Scripted {
            state: states.map(AtomicU8::new),
            chats: Default::default(),
        }
    }
    pub fn set(&self, lane: usize, state: u8) {
        self.state[lane].store(state, Ordering::SeqCst);
    }
    /// Chat calls `lane` received.
    pub fn chats(&self, lane: usize) -> u32 {
        self.chats[lane].load(Ordering::SeqCst)
    }
    fn gone(&self, lane: LaneId) -> bool {
        self.state[lane.0].load(Ordering::SeqCst) == GONE
    }
}

#[async_trait]
impl Backend for Scripted {
    async fn chat(&self, lane: LaneId, req: &ChatRequest) -> Result<ChatResponse, ClientError> {
        self.chats[lane.0].fetch_add(1, Ordering::SeqCst);
        if self.gone(lane) {
            return Err(ClientError::Connect("connection refused".into()));
        }
        let raw = localai_client::JsonBody::from_value(
            json!({"model": req.model, "choices": [{"message": {"content": "ok"}}]}),
        );
        Ok(ChatResponse::new(raw))
    }
    async fn chat_stream(&self, _: LaneId, _: &ChatRequest) -> Result<ChunkStream, ClientError> {
        Err(ClientError::Protocol("not in this test".into()))
    }
    async fn images(&self, _: LaneId, _: &ImageRequest) -> Result<ImagesResponse, ClientError> {
        Err(ClientError::Protocol("not in this test".into()))
    }
    async fn unload(&self, _: LaneId, _: &str) -> Result<bool, ClientError> {
        Ok(true)
    }
    async fn load(&self, _: LaneId, _: &str) -> Result<(), ClientError> {
        Ok(())
    }
    async fn ready(&self, lane: LaneId) -> Result<(), ClientError> {
        match self.state[lane.0].load(Ordering::SeqCst) {
            UP => Ok(()),
            GONE => Err(ClientError::Connect("connection refused".into())),
            _ => Err(ClientError::Status {
                status: 503,
                message: "Loading model".into(),
                retry_after: None,
                code: None,
                param: None,
            }),
        }
    }
    async fn models(&self, _: LaneId) -> Result<Vec<String>, ClientError> {
        Ok(vec![MODEL.into()])
    }
}
