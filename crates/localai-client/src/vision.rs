//! Image parts for vision chat: whatever form the caller sent becomes what LocalAI accepts.
//!
//! LocalAI only reads `{"type":"image_url","image_url":{"url":"data:image/png;base64,…"}}` and
//! silently drops raw base64 or bare strings, answering as if no image had been sent. So every
//! image part is rewritten to that form: raw base64 gets a `data:` prefix with its sniffed MIME
//! type; `image_url` given as a bare string and `{"type":"image"}` / `{"type":"input_image"}`
//! parts become `image_url` parts.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::{Content, Message};

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

/// The first bytes of base64 text, decoded (whitespace skipped); `None` when they are not base64.
/// Works on bytes, so any input (non-ASCII included) is safe.
pub fn decode_head(b64: &str) -> Option<Vec<u8>> {
    let mut head: Vec<u8> = b64
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .take(64)
        .collect();
    head.truncate(head.len() - head.len() % 4);
    B64.decode(&head)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&head))
        .ok()
}

/// The MIME type of base64 text, decoding only its first bytes.
pub fn sniff_base64(b64: &str) -> Option<&'static str> {
    sniff_mime(&decode_head(b64)?)
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

/// Whether an image part is not yet in LocalAI's one form (an `image_url` part whose `url` is a
/// data URI or a URL). Text parts and parts of other types never are.
fn part_needs_normalizing(p: &Value) -> bool {
    match p.get("type").and_then(Value::as_str) {
        Some("image" | "input_image") => true,
        Some("image_url") => !p
            .get("image_url")
            .and_then(|u| u.get("url"))
            .and_then(Value::as_str)
            .is_some_and(|u| {
                u.starts_with("data:") || u.starts_with("http://") || u.starts_with("https://")
            }),
        _ => false,
    }
}

/// A message's parts (none for a text).
fn parts(m: &Message) -> &[Value] {
    match &m.content {
        Content::Parts(parts) => parts,
        Content::Text(_) => &[],
    }
}

/// Whether any image in `messages` is not yet in LocalAI's one form: a scan, nothing copied.
pub fn needs_normalizing(messages: &[Message]) -> bool {
    messages
        .iter()
        .any(|m| parts(m).iter().any(part_needs_normalizing))
}

/// Every image part of `messages` in LocalAI's form, in place: only the parts that need it are
/// rewritten; text, and images already in that form (with their `detail`), are not touched.
pub fn normalize_in_place(messages: &mut [Message]) {
    for m in messages.iter_mut() {
        if let Content::Parts(parts) = &mut m.content {
            for p in parts.iter_mut().filter(|p| part_needs_normalizing(p)) {
                *p = normalize_part(p);
            }
        }
    }
}

/// A copy of `messages` with every image part in LocalAI's form.
pub fn normalize_messages(messages: &[Message]) -> Vec<Message> {
    let mut out = messages.to_vec();
    normalize_in_place(&mut out);
    out
}

/// Whether a message list carries an image in any of the forms above (without copying it).
pub fn has_image(messages: &[Message]) -> bool {
    image_sources(messages).next().is_some()
}

/// Every image source (URL, data URI or base64 text) in a message list, in any of the forms above.
pub fn image_sources(messages: &[Message]) -> impl Iterator<Item = &str> {
    messages
        .iter()
        .flat_map(|m| parts(m).iter().filter_map(part_source))
}

fn part_source(part: &Value) -> Option<&str> {
    let ty = part.get("type").and_then(Value::as_str).unwrap_or("");
    let keys: &[&str] = match ty {
        "image_url" => &["image_url"],
        "image" | "input_image" => &["image_url", "image", "url", "data"],
        _ => return None,
    };
    keys.iter().find_map(|k| match part.get(*k) {
        Some(Value::String(s)) => Some(s.as_str()),
        Some(obj) => obj.get("url").and_then(Value::as_str),
        None => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";

    fn url_of(m: &Message) -> String {
        serde_json::to_value(m)
            .expect("serialises")
            .pointer("/content/1/image_url/url")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    }

    fn message(v: Value) -> Message {
        Message::try_from(v).expect("a message")
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
            let msgs = vec![message(
                json!({"role": "user", "content": [{"type": "text", "text": "what?"}, f]}),
            )];
            let out = normalize_messages(&msgs);
            assert_eq!(url_of(&out[0]), format!("data:image/png;base64,{PNG_B64}"));
            assert!(has_image(&msgs));
        }
    }

    #[test]
    fn text_and_images_already_in_localai_form_are_left_as_they_are() {
        let plain = vec![Message::user("hi")];
        assert!(!needs_normalizing(&plain));
        assert_eq!(normalize_messages(&plain), plain);
        assert!(!has_image(&plain));
        let ready = vec![message(json!({"role": "user", "content": [
            {"type": "text", "text": "and this?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
        ]}))];
        assert!(!needs_normalizing(&ready));
        assert_eq!(normalize_messages(&ready), ready);
        assert_eq!(
            image_sources(&ready).collect::<Vec<_>>(),
            ["https://example.com/a.png"]
        );
    }

    #[test]
    fn non_ascii_image_text_never_panics() {
        for s in [
            "é".repeat(40),
            format!("iVBO{}", "ü".repeat(31)),
            "€€€€".into(),
            "a\u{1F600}bc".into(),
        ] {
            let msgs = vec![message(
                json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": s}}]}),
            )];
            assert!(has_image(&msgs));
            let _ = normalize_messages(&msgs);
            assert_eq!(sniff_base64(&s), None);
        }
    }

    #[test]
    fn jpeg_is_sniffed() {
        let jpeg = B64.encode([0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F']);
        assert!(to_data_uri(&jpeg).starts_with("data:image/jpeg;base64,"));
    }
}
