//! One chat message, held as compactly as its JSON allows: the role as a tag and a text as one
//! string. A queued conversation is mostly messages, and a message parsed as a JSON object is a
//! B-tree map whose node has room for eleven entries (632 bytes, with its two keys and the role
//! as three more strings); this is 40 bytes and the text.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::truncate;

/// Who speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The person.
    User,
    /// The model.
    Assistant,
    /// A tool's answer.
    Tool,
    /// Instructions (OpenAI's newer name).
    Developer,
}

impl Role {
    /// Every role, in the order they are documented.
    pub const ALL: [Role; 5] = [
        Role::System,
        Role::User,
        Role::Assistant,
        Role::Tool,
        Role::Developer,
    ];

    /// The role as OpenAI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Developer => "developer",
        }
    }

    /// The role spelled `s`, if it is one.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// What a message says: a text, or a list of parts (text and image parts, as JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// A text.
    Text(String),
    /// Parts: `{"type":"text","text":…}`, `{"type":"image_url","image_url":{"url":…}}`, or
    /// any other form an image comes in (normalised for LocalAI before it is sent).
    Parts(Vec<Value>),
}

/// One chat message: its role and its content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub content: Content,
}

impl Message {
    /// A message of `role` saying `text`.
    pub fn text(role: Role, text: impl Into<String>) -> Message {
        Message {
            role,
            content: Content::Text(text.into()),
        }
    }

    /// The person saying `text`.
    pub fn user(text: impl Into<String>) -> Message {
        Message::text(Role::User, text)
    }
}

/// Why a JSON value is not a message, and the field at fault (`""` for the message itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotAMessage {
    /// `role`, `content`, or `""` for the message itself.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl TryFrom<Value> for Message {
    type Error = NotAMessage;

    /// Take a message out of an OpenAI-shaped JSON object, moving its strings (nothing copied).
    fn try_from(v: Value) -> Result<Message, NotAMessage> {
        let fault = |field, message: String| NotAMessage { field, message };
        let Value::Object(mut obj) = v else {
            return Err(fault(
                "",
                "must be an object with `role` and `content`".into(),
            ));
        };
        if let Some(k) = obj.keys().find(|k| *k != "role" && *k != "content") {
            return Err(fault(
                "",
                format!(
                    "unknown field `{}`, expected `role` or `content`",
                    truncate(k, 64)
                ),
            ));
        }
        let role = obj.get("role").and_then(Value::as_str).unwrap_or("");
        let Some(role) = Role::parse(role) else {
            return Err(fault(
                "role",
                format!("unknown role {:?}", truncate(role, 64)),
            ));
        };
        let content = match obj.remove("content") {
            Some(Value::String(s)) => Content::Text(s),
            Some(Value::Array(parts)) => Content::Parts(parts),
            _ => {
                return Err(fault(
                    "content",
                    "must be a string or a list of parts".into(),
                ));
            }
        };
        Ok(Message { role, content })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_message_is_40_bytes_and_its_text() {
        assert_eq!(std::mem::size_of::<Message>(), 40);
    }

    #[test]
    fn a_message_reads_and_writes_as_openai_spells_it() {
        let m = Message::user("hi");
        let v = serde_json::to_value(&m).expect("serialises");
        assert_eq!(v, json!({"role": "user", "content": "hi"}));
        assert_eq!(
            serde_json::from_value::<Message>(v.clone()).expect("reads"),
            m
        );
        assert_eq!(Message::try_from(v), Ok(m));
        let parts = json!({"role": "user", "content": [{"type": "text", "text": "what is it"}]});
        let m = Message::try_from(parts.clone()).expect("parts");
        assert_eq!(serde_json::to_value(&m).expect("serialises"), parts);
    }

    #[test]
    fn what_is_not_a_message_is_named() {
        for (v, field, says) in [
            (json!("hi"), "", "must be an object"),
            (
                json!({"role": "user", "content": "x", "name": "n"}),
                "",
                "unknown field `name`",
            ),
            (
                json!({"role": "robot", "content": "x"}),
                "role",
                "unknown role \"robot\"",
            ),
            (json!({"content": "x"}), "role", "unknown role \"\""),
            (
                json!({"role": "user"}),
                "content",
                "a string or a list of parts",
            ),
            (
                json!({"role": "user", "content": 3}),
                "content",
                "a string or a list of parts",
            ),
        ] {
            let e = Message::try_from(v.clone()).expect_err("refused");
            assert_eq!(e.field, field, "{v}");
            assert!(e.message.contains(says), "{v}: {}", e.message);
        }
    }
}
