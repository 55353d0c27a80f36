//! Speech and transcription: `POST /v1/audio/speech` (and LocalAI's `/tts`) answers a WAV whose
//! length follows the text; `POST /v1/audio/transcriptions` takes a multipart upload and costs
//! time per second of audio.

// Handlers return a ready error `Response` as their `Err`: it is the value sent, not propagated.
#![allow(clippy::result_large_err)]

use axum::body::Bytes;
use axum::extract::{Multipart, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::server::{begin, error, not_served, request, sleep};
use crate::state::SimState;

/// Samples per second of the generated speech (8-bit mono PCM).
const SAMPLE_RATE: u32 = 8_000;
/// Simulated speech lasts this long per character of text.
const MS_PER_CHAR: u32 = 60;
/// Generated speech is capped at this many seconds.
const MAX_SECONDS: u32 = 60;

/// A WAV file (8-bit mono PCM at 8 kHz) of `ms` milliseconds of a tone that depends on `seed`.
pub fn wav(ms: u32, seed: u64) -> Vec<u8> {
    let samples = (u64::from(SAMPLE_RATE) * u64::from(ms) / 1000) as u32;
    let mut out = Vec::with_capacity(44 + samples as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + samples).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
    out.extend_from_slice(&SAMPLE_RATE.to_le_bytes()); // byte rate: 1 byte per sample
    out.extend_from_slice(&1u16.to_le_bytes()); // block align
    out.extend_from_slice(&8u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&samples.to_le_bytes());
    let period = 8 + (seed % 24) as u32;
    out.extend((0..samples).map(|i| {
        if (i / period).is_multiple_of(2) {
            160u8
        } else {
            96u8
        }
    }));
    out
}

/// The duration of a WAV file in seconds, from its header; `None` when it is not one.
pub fn wav_seconds(bytes: &[u8]) -> Option<f64> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return None;
    }
    let (mut at, mut byte_rate) = (12usize, None);
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().ok()?) as usize;
        let body = at + 8;
        if id == b"fmt " && body + 12 <= bytes.len() {
            byte_rate = Some(u32::from_le_bytes(
                bytes[body + 8..body + 12].try_into().ok()?,
            ));
        }
        if id == b"data" {
            let rate = f64::from(byte_rate.filter(|r| *r > 0)?);
            let size = size.min(bytes.len() - body);
            return Some(size as f64 / rate);
        }
        at = body.checked_add(size)?.checked_add(size % 2)?;
    }
    None
}

/// `POST /v1/audio/speech`, LocalAI's `POST /tts`: `{model, input}` → `audio/wav`, costing
/// `per_call_ms + per_char_ms × chars`.
pub async fn speech(State(state): State<SimState>, body: Bytes) -> Response {
    let (body, idx) = match request(&state, &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let model = &state.cfg.models[idx];
    if !model.serves("tts") {
        return not_served(&state, &model.name, "tts");
    }
    let Some(text) = body.get("input").and_then(Value::as_str) else {
        return error(
            StatusCode::BAD_REQUEST,
            "`input` must be a string",
            "invalid_request_error",
        );
    };
    let (slot, _) = match begin(&state, idx, false).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let chars = text.chars().count();
    sleep(
        state
            .cfg
            .scaled(model.per_call_ms + model.per_char_ms * chars as f64),
    )
    .await;
    drop(slot);
    let ms = (chars as u32)
        .saturating_mul(MS_PER_CHAR)
        .clamp(100, MAX_SECONDS * 1000);
    let audio = wav(ms, crate::image::hash(text));
    let mut r = audio.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/wav"));
    r
}

/// `POST /v1/audio/transcriptions`: a multipart form with `file` and `model` (and optional
/// `language`, `prompt`, `response_format`, `temperature`) → `{"segments", "text"}`, costing
/// `per_call_ms + per_audio_second_ms × seconds` (a file that is not a WAV counts 16 KiB per
/// second).
pub async fn transcriptions(State(state): State<SimState>, mut form: Multipart) -> Response {
    let (mut file, mut model_name, mut format) = (None::<Bytes>, None::<String>, None::<String>);
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or("").to_owned();
                let data = match field.bytes().await {
                    Ok(d) => d,
                    Err(e) => return bad_form(&e.to_string()),
                };
                match name.as_str() {
                    "file" => file = Some(data),
                    "model" => model_name = Some(String::from_utf8_lossy(&data).into_owned()),
                    "response_format" => format = Some(String::from_utf8_lossy(&data).into_owned()),
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(e) => return bad_form(&e.to_string()),
        }
    }
    let Some(file) = file else {
        return bad_form("the `file` field is required");
    };
    let as_json = json!({"model": model_name});
    let (idx, model) = match crate::server::model_of(&state, &as_json) {
        Ok(m) => m,
        Err(r) => return r,
    };
    if !model.serves("stt") {
        return not_served(&state, &model.name, "stt");
    }
    let seconds = wav_seconds(&file).unwrap_or(file.len() as f64 / 16_384.0);
    let (slot, _) = match begin(&state, idx, false).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    sleep(
        state
            .cfg
            .scaled(model.per_call_ms + model.per_audio_second_ms * seconds),
    )
    .await;
    drop(slot);
    let text = format!(
        "Simulated transcription of {seconds:.1} s of audio by {}.",
        model.name
    );
    match format.as_deref() {
        Some("text") => text.into_response(),
        // LocalAI's shape: the text and its segments, no `usage`.
        _ => axum::Json(
            json!({"segments": [{"id": 0, "start": 0.0, "end": seconds, "text": text}],
                               "text": text}),
        )
        .into_response(),
    }
}

fn bad_form(message: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        &format!("invalid multipart form: {message}"),
        "invalid_request_error",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_wav_reads_back_its_duration() {
        let w = wav(1_500, 3);
        assert_eq!(wav_seconds(&w), Some(1.5));
        assert_eq!(wav_seconds(b"not a wav file at all"), None);
        assert_eq!(
            wav_seconds(&w[..20]),
            None,
            "a header cut short is not a WAV"
        );
    }
}
