//! The JSON routes: their paths (and LocalAI's aliases), and the kinds jobs name them by. Which
//! a durable job may stand for is the HTTP route table's to say (`im_http_api::routes`).

/// A route whose body is one JSON document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `POST /txt2txt`: the seeds' chat.
    Txt2Txt,
    /// `POST /img2txt`: the seeds' vision chat.
    Img2Txt,
    /// `POST /txt2img`: the seeds' image generation.
    Txt2Img,
    /// `POST /img2img`: the seeds' image edit.
    Img2Img,
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/images/generations`.
    ImageGenerations,
    /// `POST /v1/rerank`.
    Rerank,
    /// `POST /v1/audio/speech` (and LocalAI's `/tts`).
    Speech,
    /// `POST /v1/infer`: the seeds' completion dialect.
    Infer,
    /// `POST /v1/infer/stream`: the same, streamed as events.
    InferStream,
    /// `POST /infer`: a task model over one text.
    Task,
}

impl Route {
    /// Every route.
    pub const ALL: [Route; 13] = [
        Route::Txt2Txt,
        Route::Img2Txt,
        Route::Txt2Img,
        Route::Img2Img,
        Route::ChatCompletions,
        Route::Completions,
        Route::Embeddings,
        Route::ImageGenerations,
        Route::Rerank,
        Route::Speech,
        Route::Infer,
        Route::InferStream,
        Route::Task,
    ];

    /// Its path.
    pub const fn path(self) -> &'static str {
        match self {
            Route::Txt2Txt => "/txt2txt",
            Route::Img2Txt => "/img2txt",
            Route::Txt2Img => "/txt2img",
            Route::Img2Img => "/img2img",
            Route::ChatCompletions => "/v1/chat/completions",
            Route::Completions => "/v1/completions",
            Route::Embeddings => "/v1/embeddings",
            Route::ImageGenerations => "/v1/images/generations",
            Route::Rerank => "/v1/rerank",
            Route::Speech => "/v1/audio/speech",
            Route::Infer => "/v1/infer",
            Route::InferStream => "/v1/infer/stream",
            Route::Task => "/infer",
        }
    }

    /// The other paths LocalAI serves it at (without `/v1`; `/tts` for speech).
    pub const fn aliases(self) -> &'static [&'static str] {
        match self {
            Route::ChatCompletions => &["/chat/completions"],
            Route::Completions => &["/completions"],
            Route::Embeddings => &["/embeddings"],
            Route::ImageGenerations => &["/images/generations"],
            Route::Rerank => &["/rerank"],
            Route::Speech => &["/audio/speech", "/tts"],
            _ => &[],
        }
    }

    /// The kind a job names it by (`kind` in `POST /v1/jobs`), for the routes that have one.
    pub const fn job_kind(self) -> Option<&'static str> {
        match self {
            Route::Txt2Txt => Some("txt2txt"),
            Route::Txt2Img => Some("txt2img"),
            Route::Img2Img => Some("img2img"),
            Route::Img2Txt => Some("img2txt"),
            Route::Embeddings => Some("embed"),
            Route::Rerank => Some("rerank"),
            Route::Speech => Some("tts"),
            _ => None,
        }
    }

    /// The route at `path` (its own path only, not an alias).
    pub fn at(path: &str) -> Option<Route> {
        Route::ALL.into_iter().find(|r| r.path() == path)
    }

    /// The job route named by `kind`.
    pub fn for_job_kind(kind: &str) -> Option<Route> {
        Route::ALL.into_iter().find(|r| r.job_kind() == Some(kind))
    }
}
