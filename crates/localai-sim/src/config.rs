//! The simulator's configuration: a model catalogue (TOML or built in), memory, time scale, faults.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One simulated model.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelCfg {
    /// The model name clients send.
    pub name: String,
    /// Kinds served: `txt2txt`, `txt2img`, `img2img`, `img2txt`, `embed`, `rerank`, `tts`, `stt`.
    pub kinds: Vec<String>,
    /// Load time in milliseconds (before time scaling).
    #[serde(default = "default_load_ms")]
    pub load_ms: u64,
    /// Memory it takes when resident, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// Service time per generated token (chat) in milliseconds.
    #[serde(default = "default_per_token_ms")]
    pub per_token_ms: f64,
    /// Service time per diffusion step (images) in milliseconds.
    #[serde(default = "default_per_step_ms")]
    pub per_step_ms: f64,
    /// Requests it runs at once; more block until a slot frees.
    #[serde(default = "default_slots")]
    pub slots: u32,
    /// Fixed service time of one call (embeddings, rerank, speech, transcription), in ms.
    #[serde(default)]
    pub per_call_ms: f64,
    /// Service time per input of an embedding call or per document of a rerank call, in ms.
    #[serde(default)]
    pub per_input_ms: f64,
    /// Service time per second of transcribed audio, in ms.
    #[serde(default)]
    pub per_audio_second_ms: f64,
    /// Service time per character of synthesized speech, in ms.
    #[serde(default)]
    pub per_char_ms: f64,
    /// Prefill time per prompt token the server has not cached (chat), in ms; prefills run one
    /// at a time on the server (compute-bound).
    #[serde(default)]
    pub prefill_per_token_ms: f64,
}

fn default_load_ms() -> u64 {
    5_000
}
fn default_memory_mb() -> u64 {
    8_000
}
fn default_per_token_ms() -> f64 {
    20.0
}
fn default_per_step_ms() -> f64 {
    250.0
}
fn default_slots() -> u32 {
    1
}

impl ModelCfg {
    /// A model with no costs at all, for struct-update syntax (`..ModelCfg::cheap()`).
    pub fn cheap() -> ModelCfg {
        ModelCfg {
            name: String::new(),
            kinds: Vec::new(),
            load_ms: 0,
            memory_mb: 0,
            per_token_ms: 0.0,
            per_step_ms: 0.0,
            slots: 1,
            per_call_ms: 0.0,
            per_input_ms: 0.0,
            per_audio_second_ms: 0.0,
            per_char_ms: 0.0,
            prefill_per_token_ms: 0.0,
        }
    }

    /// Whether it serves `kind`.
    pub fn serves(&self, kind: &str) -> bool {
        self.kinds.iter().any(|k| k == kind)
    }
}

/// Fault injection rates (0.0..=1.0 each), drawn per request from the seeded generator.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// HTTP 500 with LocalAI's error envelope.
    pub error_500: f64,
    /// HTTP 503 with `Retry-After`.
    pub error_503: f64,
    /// The connection drops mid-response.
    pub drop_connection: f64,
    /// The response is delayed by `slow_ms`.
    pub slow: f64,
    /// Extra delay of a slow response, in milliseconds (before time scaling).
    pub slow_ms: u64,
    /// A streaming chat sends an error inside the stream after a few chunks.
    pub stream_error: f64,
    /// A streaming chat stops after its first chunk for `stall_ms`, then goes on (holding its
    /// slot meanwhile, as a stuck backend does).
    pub stream_stall: f64,
    /// Length of a stream stall, in milliseconds (before time scaling).
    pub stall_ms: u64,
    /// `Retry-After` seconds on injected 503s.
    pub retry_after_secs: u64,
}

/// How an error inside an SSE stream looks.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StreamErrorDialect {
    /// LocalAI v4.1+: `data: {"error":{...}}`.
    #[default]
    V4,
    /// LocalAI v3.5-v4.0: a content chunk `"Internal error: ..."`.
    V3,
}

/// Which server the simulator imitates (SPEC §11).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SimMode {
    /// LocalAI: `/readyz`, `/system`, `/backend/*`, unknown model 404.
    #[default]
    LocalAi,
    /// llama.cpp's `llama-server` in router mode: `/v1/models` with `status` and modalities,
    /// `/props?model=` with `total_slots`, `/health`, no `/readyz`, unknown model 404, too long a
    /// prompt 400 `exceeds the available context size`.
    LlamaCppRouter,
    /// llama-cpp-python's server: no `/readyz` or `/health`; an unknown model name is answered by
    /// the default (first) model with 200; malformed JSON or wrong types are a 500 carrying a
    /// Python traceback; too long a prompt 400 `context_length_exceeded`.
    LlamaCppPython,
}

/// The whole simulator configuration.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// The catalogue.
    pub models: Vec<ModelCfg>,
    /// Memory for resident models, in MiB. `None`: room for exactly one model (the largest).
    pub memory_budget_mb: Option<u64>,
    /// Multiplies every simulated duration (0.001: a 10 s load takes 10 ms; 0: no latency at all).
    pub time_scale: f64,
    /// How long a load waits for a busy resident model to go idle before loading anyway (and
    /// counting an overcommit), in milliseconds before scaling.
    pub lru_wait_ms: u64,
    /// Seed for faults and outputs.
    pub seed: u64,
    /// Fault injection.
    pub faults: Faults,
    /// Stream error dialect.
    pub stream_error_dialect: StreamErrorDialect,
    /// Generated PNGs are capped to this many pixels a side (documented cap).
    pub max_image_side: u32,
    /// Request body limit in bytes (LocalAI's default is 15 MB).
    pub body_limit: usize,
    /// The server imitated.
    pub mode: SimMode,
    /// Context size in tokens (a token is 4 characters of prompt); longer prompts are refused
    /// with 400 in the dialect of the mode.
    pub context_tokens: usize,
    /// The catalogue's models installed at start (`None`: all). The rest are in the gallery:
    /// `POST /models/apply` installs one, `POST /models/delete/{name}` removes one, as on
    /// LocalAI; only installed models are listed and served.
    pub installed: Option<Vec<String>>,
    /// Tokens of prompt each chat model keeps cached (0: none; every prompt is prefilled in
    /// full). With a cache, chat answers carry `usage.prompt_tokens_details.cached_tokens`.
    pub prompt_cache_tokens: usize,
    /// Whether a chat reuses the cached beginning of its prompt when it does not say
    /// (`cache_prompt`, llama.cpp's request field): `true` as llama-server since late 2024,
    /// `false` as before.
    pub cache_prompt_by_default: bool,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            models: default_catalogue(),
            memory_budget_mb: None,
            time_scale: 1.0,
            lru_wait_ms: 2_000,
            seed: 7,
            faults: Faults {
                retry_after_secs: 1,
                slow_ms: 2_000,
                ..Faults::default()
            },
            stream_error_dialect: StreamErrorDialect::V4,
            max_image_side: 256,
            body_limit: 15 * 1024 * 1024,
            mode: SimMode::LocalAi,
            context_tokens: 8192,
            prompt_cache_tokens: 0,
            cache_prompt_by_default: true,
            installed: None,
        }
    }
}

/// The built-in catalogue: an LLM, a vision LLM, a diffusion model, an embedding model, a reranker,
/// a transcription model and a speech model, with LocalAI-like costs.
pub fn default_catalogue() -> Vec<ModelCfg> {
    vec![
        ModelCfg {
            name: "llama-3.2-3b-instruct".into(),
            kinds: vec!["txt2txt".into()],
            load_ms: 6_000,
            memory_mb: 4_000,
            per_token_ms: 15.0,
            per_step_ms: 0.0,
            slots: 4,
            ..ModelCfg::cheap()
        },
        ModelCfg {
            name: "llava-1.6-mistral-7b".into(),
            kinds: vec!["img2txt".into(), "txt2txt".into()],
            load_ms: 8_000,
            memory_mb: 8_000,
            per_token_ms: 25.0,
            per_step_ms: 0.0,
            slots: 2,
            ..ModelCfg::cheap()
        },
        ModelCfg {
            name: "stablediffusion".into(),
            kinds: vec!["txt2img".into(), "img2img".into()],
            load_ms: 12_000,
            memory_mb: 7_000,
            per_token_ms: 0.0,
            per_step_ms: 300.0,
            slots: 1,
            ..ModelCfg::cheap()
        },
        ModelCfg {
            name: "bge-small-en-v1.5".into(),
            kinds: vec!["embed".into()],
            load_ms: 2_000,
            memory_mb: 500,
            per_token_ms: 0.05,
            slots: 4,
            per_call_ms: 40.0,
            per_input_ms: 1.0,
            ..ModelCfg::cheap()
        },
        ModelCfg {
            name: "jina-reranker-v1-base-en".into(),
            kinds: vec!["rerank".into()],
            load_ms: 2_000,
            memory_mb: 600,
            slots: 2,
            per_call_ms: 30.0,
            per_input_ms: 4.0,
            ..ModelCfg::cheap()
        },
        ModelCfg {
            name: "whisper-1".into(),
            kinds: vec!["stt".into()],
            load_ms: 3_000,
            memory_mb: 1_500,
            slots: 1,
            per_call_ms: 100.0,
            per_audio_second_ms: 80.0,
            ..ModelCfg::cheap()
        },
        ModelCfg {
            name: "tts-1".into(),
            kinds: vec!["tts".into()],
            load_ms: 2_000,
            memory_mb: 800,
            slots: 1,
            per_call_ms: 50.0,
            per_char_ms: 3.0,
            ..ModelCfg::cheap()
        },
    ]
}

/// A configuration error.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML did not parse.
    #[error("simulator config: {0}")]
    Toml(#[from] toml::de::Error),
    /// A field is invalid.
    #[error("simulator config: `{0}`: {1}")]
    Invalid(String, String),
}

impl SimConfig {
    /// Parse a TOML catalogue (`[[models]]` tables and the other fields).
    pub fn from_toml(text: &str) -> Result<SimConfig, ConfigError> {
        let cfg: SimConfig = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check the fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |f: &str, m: &str| Err(ConfigError::Invalid(f.into(), m.into()));
        if self.models.is_empty() {
            return bad("models", "at least one model");
        }
        if let Some(unknown) = self
            .installed
            .iter()
            .flatten()
            .find(|n| self.model(n).is_none())
        {
            return bad("installed", &format!("{unknown:?} is not in the catalogue"));
        }
        for (i, m) in self.models.iter().enumerate() {
            if m.slots == 0 {
                return bad(&format!("models[{i}].slots"), "at least 1");
            }
            for k in &m.kinds {
                const KINDS: [&str; 8] = [
                    "txt2txt", "txt2img", "img2img", "img2txt", "embed", "rerank", "tts", "stt",
                ];
                if !KINDS.contains(&k.as_str()) {
                    return bad(&format!("models[{i}].kinds"), "unknown kind");
                }
            }
        }
        if !(self.time_scale >= 0.0 && self.time_scale.is_finite()) {
            return bad("time_scale", "a finite number >= 0");
        }
        if self.max_image_side == 0 {
            return bad("max_image_side", "at least 1");
        }
        Ok(())
    }

    /// The memory budget in MiB.
    pub fn budget_mb(&self) -> u64 {
        self.memory_budget_mb
            .unwrap_or_else(|| self.models.iter().map(|m| m.memory_mb).max().unwrap_or(0))
    }

    /// A simulated duration, scaled.
    pub fn scaled(&self, ms: f64) -> Duration {
        Duration::from_secs_f64((ms * self.time_scale / 1000.0).max(0.0))
    }

    /// A model by name.
    pub fn model(&self, name: &str) -> Option<(usize, &ModelCfg)> {
        self.models.iter().enumerate().find(|(_, m)| m.name == name)
    }
}
