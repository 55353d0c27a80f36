//! im through a real OpenAI client library (`async-openai`), as an application would use it:
//! every OpenAI route im serves, plain and streaming where the route streams, against im in front
//! of the simulator on a real socket. LocalAI's own routes (`/v1/rerank`, `/tts`) are not in
//! OpenAI's API; `tests/media.rs` drives them.

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::audio::{
    AudioInput, CreateSpeechRequestArgs, CreateTranscriptionRequestArgs, SpeechModel,
    SpeechResponseFormat, Voice,
};
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
};
use async_openai::types::completions::CreateCompletionRequestArgs;
use async_openai::types::embeddings::CreateEmbeddingRequestArgs;
use async_openai::types::images::{
    CreateImageEditRequestArgs, CreateImageRequestArgs, Image, ImageEditInput, ImageInput,
    ImageModel, ImageResponseFormat, ImageSize,
};
use futures_util::StreamExt;
use im_app::config::ImConfig;
use im_app::{self as app, Built, DEMO_KEY, Simulate};

const LLM: &str = "llama-3.2-3b-instruct";
const EMBED: &str = "bge-small-en-v1.5";
const SD: &str = "stablediffusion";

/// im on a loopback port in front of the simulator, and an OpenAI client pointed at it.
async fn start() -> (Client<OpenAIConfig>, Built) {
    let mut cfg = ImConfig::default();
    cfg.retry.base_ms = 1;
    cfg.retry.cap_ms = 5;
    let built = app::build(cfg, Some(Simulate { time_scale: 0.001 }))
        .await
        .expect("build");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = app::http_app(&built, None);
    tokio::spawn(async move { axum::serve(listener, router).await });
    let config = OpenAIConfig::new()
        .with_api_base(format!("http://{addr}/v1"))
        .with_api_key(DEMO_KEY);
    (Client::with_config(config), built)
}

fn chat_request(stream: bool) -> async_openai::types::chat::CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model(LLM)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Say hello")
            .build()
            .expect("message")
            .into()])
        .max_tokens(8_u32)
        .stream(stream)
        .build()
        .expect("request")
}

#[tokio::test]
async fn chat_plain_and_streaming() {
    let (client, _im) = start().await;
    let done = client
        .chat()
        .create(chat_request(false))
        .await
        .expect("chat");
    assert_eq!(done.model, LLM);
    let text = done.choices[0].message.content.clone().unwrap_or_default();
    assert!(text.contains("Simulated reply"), "{text}");

    let mut stream = client
        .chat()
        .create_stream(chat_request(true))
        .await
        .expect("stream");
    let mut streamed = String::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("a chunk");
        chunks += 1;
        if let Some(t) = chunk.choices.first().and_then(|c| c.delta.content.clone()) {
            streamed.push_str(&t);
        }
    }
    assert!(chunks > 2, "several chunks: {chunks}");
    assert!(streamed.contains("Simulated reply"), "{streamed}");
}

#[tokio::test]
async fn text_completions_plain_and_streaming() {
    let (client, _im) = start().await;
    let request = |stream: bool| {
        CreateCompletionRequestArgs::default()
            .model(LLM)
            .prompt("Once upon a time")
            .max_tokens(8_u32)
            .stream(stream)
            .build()
            .expect("request")
    };
    let done = client
        .completions()
        .create(request(false))
        .await
        .expect("completion");
    assert!(!done.choices[0].text.is_empty());
    let mut stream = client
        .completions()
        .create_stream(request(true))
        .await
        .expect("stream");
    let mut streamed = String::new();
    while let Some(chunk) = stream.next().await {
        streamed.push_str(&chunk.expect("a chunk").choices[0].text);
    }
    assert!(!streamed.is_empty());
}

#[tokio::test]
async fn embeddings_of_one_and_of_many() {
    let (client, _im) = start().await;
    let one = client
        .embeddings()
        .create(
            CreateEmbeddingRequestArgs::default()
                .model(EMBED)
                .input("a sentence")
                .build()
                .expect("request"),
        )
        .await
        .expect("embeddings");
    assert_eq!(one.data.len(), 1);
    assert!(!one.data[0].embedding.is_empty());
    // Many at once, concurrently: merged upstream, each answered with its own vectors.
    let calls = (0..6).map(|i| {
        let client = client.clone();
        async move {
            client
                .embeddings()
                .create(
                    CreateEmbeddingRequestArgs::default()
                        .model(EMBED)
                        .input(vec![format!("first {i}"), format!("second {i}")])
                        .build()
                        .expect("request"),
                )
                .await
        }
    });
    for r in futures_util::future::join_all(calls).await {
        let r = r.expect("embeddings");
        assert_eq!(r.data.len(), 2);
        assert_eq!((r.data[0].index, r.data[1].index), (0, 1));
    }
}

fn is_b64_image(image: &Image) -> bool {
    matches!(image, Image::B64Json { b64_json, .. } if !b64_json.is_empty())
}

#[tokio::test]
async fn images_generated_and_edited() {
    let (client, _im) = start().await;
    let generated = client
        .images()
        .generate(
            CreateImageRequestArgs::default()
                .model(ImageModel::Other(SD.into()))
                .prompt("a red fox")
                .size(ImageSize::S256x256)
                .response_format(ImageResponseFormat::B64Json)
                .build()
                .expect("request"),
        )
        .await
        .expect("generation");
    assert!(is_b64_image(&generated.data[0]));

    let png = localai_sim::image::png(32, 32, 4);
    let edited = client
        .images()
        .edit(
            CreateImageEditRequestArgs::default()
                .image(ImageEditInput::Image(ImageInput::from_vec_u8(
                    "fox.png".into(),
                    png,
                )))
                .prompt("make it blue")
                .model(ImageModel::Other(SD.into()))
                .size(ImageSize::S256x256)
                .response_format(ImageResponseFormat::B64Json)
                .build()
                .expect("request"),
        )
        .await
        .expect("edit");
    assert!(is_b64_image(&edited.data[0]));
}

#[tokio::test]
async fn speech_and_transcription() {
    let (client, _im) = start().await;
    let speech = client
        .audio()
        .speech()
        .create(
            CreateSpeechRequestArgs::default()
                .model(SpeechModel::Other("tts-1".into()))
                .input("Hello from im, through the OpenAI client.")
                .voice(Voice::Alloy)
                .response_format(SpeechResponseFormat::Wav)
                .build()
                .expect("request"),
        )
        .await
        .expect("speech");
    let secs = localai_sim::audio::wav_seconds(&speech.bytes).expect("a WAV");
    assert!(secs > 1.0, "{secs} s of speech");

    // The audio just made, transcribed. LocalAI answers `{"text", "segments"}` without OpenAI's
    // `usage`, which async-openai's typed response requires: the raw call takes the answer as it
    // is, as a client of LocalAI must.
    let raw = client
        .audio()
        .transcription()
        .create_raw(
            CreateTranscriptionRequestArgs::default()
                .file(AudioInput::from_vec_u8(
                    "hello.wav".into(),
                    speech.bytes.to_vec(),
                ))
                .model("whisper-1")
                .build()
                .expect("request"),
        )
        .await
        .expect("transcription");
    let answer: serde_json::Value = serde_json::from_slice(&raw).expect("JSON");
    let text = answer["text"].as_str().unwrap_or_default();
    assert!(text.starts_with("Simulated transcription"), "{answer}");
}

#[tokio::test]
async fn models_are_listed_and_errors_arrive_as_openai_errors() {
    let (client, _im) = start().await;
    let models = client.models().list().await.expect("models");
    assert!(models.data.iter().any(|m| m.id == LLM));
    let bad = CreateChatCompletionRequestArgs::default()
        .model("no-such-model")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("hi")
            .build()
            .expect("message")
            .into()])
        .build()
        .expect("request");
    let err = client.chat().create(bad).await.expect_err("unknown model");
    match err {
        async_openai::error::OpenAIError::ApiError(e) => {
            let m = &e.api_error.message;
            assert!(m.contains("no-such-model"), "{m}");
        }
        other => panic!("an API error with im's message, got {other:?}"),
    }
}
