//! Image parts for vision chat: whatever form the caller sent becomes what LocalAI accepts.
//!
//! LocalAI only reads `{"type":"image_url","image_url":{"url":"data:image/png;base64,…"}}` and
//! silently drops raw base64 or bare strings, answering as if no image had been sent. So every
//! image part is rewritten to that form: raw base64 gets a `data:` prefix with its sniffed MIME
//! type; `image_url` given as a bare string, `{"type":"image"}` / `{"type":"input_image"}` parts
//! and an Ollama-style `images: [...]` list on a message all become `image_url` parts.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

/// The MIME type of image bytes, from their magic number.
pub fn sniff_mime(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// The MIME type of base64 text, decoding only its first bytes.
pub fn sniff_base64(b64: &str) -> Option<&'static str> {
    let head: String = b64
        .trim()
        .chars()
        .filter(|c| !c.is_whitespace())
        .take(64)
        .collect();
    let head = &head[..head.len() - head.len() % 4];
    sniff_mime(&B64.decode(head).ok()?)
}

/// A URL LocalAI accepts for `src`: data URIs and http(s) URLs as they are, raw base64 as a data URI.
pub fn to_data_uri(src: &str) -> String {
    let s = src.trim();
    if s.starts_with("data:") || s.starts_with("http://") || s.starts_with("https://") {
        return s.to_owned();
    }
    let mime = sniff_base64(s).unwrap_or("image/png");
    let clean: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    format!("data:{mime};base64,{clean}")
}

fn image_part(url: String) -> Value {
    json!({"type": "image_url", "image_url": {"url": url}})
}

fn normalize_part(part: &Value) -> Value {
    let ty = part.get("type").and_then(Value::as_str).unwrap_or("");
    let src = match ty {
        "image_url" => match part.get("image_url") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(obj) => obj.get("url").and_then(Value::as_str).map(str::to_owned),
            None => None,
        },
        "image" | "input_image" => {
            ["image_url", "image", "url", "data"]
                .iter()
                .find_map(|k| match part.get(*k) {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(obj) => obj.get("url").and_then(Value::as_str).map(str::to_owned),
                    None => None,
                })
        }
        _ => None,
    };
    match src {
        Some(s) => image_part(to_data_uri(&s)),
        None => part.clone(),
    }
}

/// Every message with its image parts in LocalAI's form.
pub fn normalize_messages(messages: &[Value]) -> Vec<Value> {
    messages
        .iter()
        .map(|m| {
            let mut m = m.clone();
            let images: Vec<String> = m
                .get("images")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(to_data_uri)
                        .collect()
                })
                .unwrap_or_default();
            if let Some(obj) = m.as_object_mut() {
                obj.remove("images");
                let mut parts: Vec<Value> = match obj.remove("content") {
                    Some(Value::Array(parts)) => parts.iter().map(normalize_part).collect(),
                    Some(Value::String(s)) if images.is_empty() => {
                        obj.insert("content".into(), Value::String(s));
                        return m;
                    }
                    Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
                    Some(other) => {
                        obj.insert("content".into(), other);
                        return m;
                    }
                    None => Vec::new(),
                };
                parts.extend(images.into_iter().map(image_part));
                obj.insert("content".into(), Value::Array(parts));
            }
            m
        })
        .collect()
}

/// Whether a message list carries an image in any of the forms above.
pub fn has_image(messages: &[Value]) -> bool {
    normalize_messages(messages).iter().any(|m| {
        m.get("content")
            .and_then(Value::as_array)
            .is_some_and(|parts| {
                parts
                    .iter()
                    .any(|p| p.get("type").and_then(Value::as_str) == Some("image_url"))
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";

    fn url_of(m: &Value) -> String {
        m.pointer("/content/1/image_url/url")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    }

    #[test]
    fn every_image_form_becomes_a_data_uri_part() {
        let forms = [
            json!({"type": "image_url", "image_url": {"url": PNG_B64}}),
            json!({"type": "image_url", "image_url": PNG_B64}),
            json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG_B64}")}}),
            json!({"type": "image", "image": PNG_B64}),
            json!({"type": "input_image", "image_url": PNG_B64}),
        ];
        for f in forms {
            let msgs =
                vec![json!({"role": "user", "content": [{"type": "text", "text": "what?"}, f]})];
            let out = normalize_messages(&msgs);
            assert_eq!(url_of(&out[0]), format!("data:image/png;base64,{PNG_B64}"));
            assert!(has_image(&msgs));
        }
    }

    #[test]
    fn ollama_images_list_and_plain_text() {
        let msgs = vec![json!({"role": "user", "content": "describe", "images": [PNG_B64]})];
        let out = normalize_messages(&msgs);
        assert_eq!(out[0]["content"][0]["text"], "describe");
        assert_eq!(url_of(&out[0]), format!("data:image/png;base64,{PNG_B64}"));
        let plain = vec![json!({"role": "user", "content": "hi"})];
        assert_eq!(normalize_messages(&plain), plain);
        assert!(!has_image(&plain));
    }

    #[test]
    fn jpeg_is_sniffed() {
        let jpeg = B64.encode([0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F']);
        assert!(to_data_uri(&jpeg).starts_with("data:image/jpeg;base64,"));
    }
}
