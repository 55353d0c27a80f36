//! A chat's prompt as the scheduler's prefix placement reads it: the prompt as the upstream will
//! see it (each message's role and text, in order; a completion's prompt), cut into blocks of
//! [`BLOCK_CHARS`] characters, each hashed with every block before it. Two prompts share the
//! chain's first `n` entries exactly when they share their first `n` blocks (a system prompt, the
//! earlier turns of a conversation). The chain is seeded with the model's name; a trailing block
//! shorter than a whole one is left out (the next turn changes it).

use std::hash::{Hash, Hasher};

use inference_queue::PrefixChain;
use localai_client::{Content, Message};
use serde_json::Value;

use super::Payload;

/// Characters per block (about 16 tokens).
pub const BLOCK_CHARS: usize = 64;

/// The chain of `payload`'s prompt, for a chat or a text completion; `None` for other work or a
/// prompt shorter than a block.
pub fn chain_of(payload: &Payload) -> Option<PrefixChain> {
    match payload {
        Payload::Chat { req, .. } => chain_of_messages(payload.model(), &req.messages),
        Payload::Json { path, body, .. } if path.ends_with("/completions") => {
            let mut text = String::new();
            push_content(&mut text, body.get("prompt")?);
            chain_of_text(payload.model(), &text)
        }
        _ => None,
    }
}

/// The chain of a chat's `messages` for `model` (each message's role and text, in order).
pub fn chain_of_messages(model: &str, messages: &[Message]) -> Option<PrefixChain> {
    let mut text = String::new();
    for m in messages {
        text.push_str(m.role.as_str());
        text.push('\n');
        match &m.content {
            Content::Text(t) => text.push_str(t),
            Content::Parts(parts) => push_parts(&mut text, parts),
        }
        text.push('\n');
    }
    chain_of_text(model, &text)
}

/// The chain of a completion's prompt `text` for `model`; `None` when shorter than a block.
pub fn chain_of_text(model: &str, text: &str) -> Option<PrefixChain> {
    let blocks = text.len() / BLOCK_CHARS;
    if blocks == 0 {
        return None;
    }
    let mut h = std::hash::DefaultHasher::new();
    model.hash(&mut h);
    let mut chain = Vec::with_capacity(blocks);
    for block in text.as_bytes().chunks_exact(BLOCK_CHARS) {
        block.hash(&mut h);
        chain.push(h.finish());
    }
    Some(chain.into())
}

/// A message's text: a string, or the text parts of a list (an image part counts by its URL's
/// first characters, enough to tell two images apart).
fn push_content(out: &mut String, content: &Value) {
    match content {
        Value::String(s) => out.push_str(s),
        Value::Array(parts) => push_parts(out, parts),
        _ => {}
    }
}

/// The text of a list of parts (see [`push_content`]).
fn push_parts(out: &mut String, parts: &[Value]) {
    for p in parts {
        if let Some(t) = p["text"].as_str() {
            out.push_str(t);
        } else if let Some(u) = p["image_url"]["url"].as_str().or(p["image_url"].as_str()) {
            out.extend(u.chars().take(256));
        } else if let Some(s) = p.as_str() {
            out.push_str(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use localai_client::ChatRequest;
    use serde_json::json;

    fn chat(model: &str, messages: Value) -> Payload {
        Payload::Chat {
            req: ChatRequest {
                model: model.into(),
                messages: serde_json::from_value(messages).expect("messages"),
                temperature: None,
                max_tokens: None,
                extra: Default::default(),
            },
            stream: false,
            kind: inference_queue::Kind::Txt2Txt,
        }
    }

    #[test]
    fn the_next_turn_of_a_conversation_extends_its_chain() {
        let system = "You are a careful assistant. ".repeat(10);
        let first = json!([{"role": "system", "content": system}, {"role": "user", "content": "What is a GPU? ".repeat(8)}]);
        let a = chain_of(&chat("m", first.clone())).expect("a prompt");
        let mut second = first.as_array().expect("list").clone();
        second.push(json!({"role": "assistant", "content": "A processor. ".repeat(12)}));
        second.push(json!({"role": "user", "content": "And a TPU?"}));
        let b = chain_of(&chat("m", Value::Array(second))).expect("a prompt");
        assert!(b.len() > a.len());
        assert_eq!(b[..a.len()], a[..]);
        // Another model's cache is another cache.
        let other = chain_of(&chat("n", first)).expect("a prompt");
        assert_ne!(other[0], a[0]);
    }

    #[test]
    fn a_different_system_prompt_shares_nothing() {
        let one = chain_of(&chat(
            "m",
            json!([{"role": "system", "content": "alpha ".repeat(40)}]),
        ));
        let two = chain_of(&chat(
            "m",
            json!([{"role": "system", "content": "omega ".repeat(40)}]),
        ));
        assert_ne!(one.expect("a")[0], two.expect("b")[0]);
        assert!(chain_of(&chat("m", json!([{"role": "user", "content": "hi"}]))).is_none());
    }
}
