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

impl Message {
    /// The one rule a message passes, whatever it was read from: no field besides `role` and
    /// `content` (`unknown`: the first other one, in the order of a JSON object's keys), a known
    /// role (`role`: its text when it is one), and a content that is text or a list of parts
    /// (`None`: missing or of another type).
    fn checked(
        unknown: Option<&str>,
        role: Option<&str>,
        content: Option<Content>,
    ) -> Result<Message, NotAMessage> {
        let fault = |field, message: String| NotAMessage { field, message };
        if let Some(k) = unknown {
            return Err(fault(
                "",
                format!(
                    "unknown field `{}`, expected `role` or `content`",
                    truncate(k, 64)
                ),
            ));
        }
        let role = role.unwrap_or("");
        let Some(role) = Role::parse(role) else {
            return Err(fault(
                "role",
                format!("unknown role {:?}", truncate(role, 64)),
            ));
        };
        let Some(content) = content else {
            return Err(fault(
                "content",
                "must be a string or a list of parts".into(),
            ));
        };
        Ok(Message { role, content })
    }
}

/// A message that is not a JSON object.
fn not_an_object() -> NotAMessage {
    NotAMessage {
        field: "",
        message: "must be an object with `role` and `content`".into(),
    }
}

impl TryFrom<Value> for Message {
    type Error = NotAMessage;

    /// Take a message out of an OpenAI-shaped JSON object, moving its strings (nothing copied).
    fn try_from(v: Value) -> Result<Message, NotAMessage> {
        let Value::Object(mut obj) = v else {
            return Err(not_an_object());
        };
        let unknown = obj.keys().find(|k| *k != "role" && *k != "content");
        let role = obj.get("role").and_then(Value::as_str);
        let (None, Some(known)) = (unknown, role.and_then(Role::parse)) else {
            return Message::checked(unknown.map(String::as_str), role, None);
        };
        let content = match obj.remove("content") {
            Some(Value::String(s)) => Some(Content::Text(s)),
            Some(Value::Array(parts)) => Some(Content::Parts(parts)),
            _ => None,
        };
        Message::checked(None, Some(known.as_str()), content)
    }
}

/// A message as a client sent it: the message, or why it is not one (the field at fault named
/// by the caller, who knows its place). Read straight from a request's JSON without building a
/// value per message (a B-tree map and four strings for `{"role":"user","content":"hi"}`), by
/// the same rule as [`Message::try_from`] a value.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageInput(pub Result<Message, NotAMessage>);

impl From<Value> for MessageInput {
    fn from(v: Value) -> MessageInput {
        MessageInput(Message::try_from(v))
    }
}

impl From<Message> for MessageInput {
    fn from(m: Message) -> MessageInput {
        MessageInput(Ok(m))
    }
}

impl<'de> Deserialize<'de> for MessageInput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MessageInput, D::Error> {
        d.deserialize_any(read::MessageVisitor)
    }
}

/// Reading a message from JSON as it streams by: what [`Message::checked`] needs, and any other
/// value drained unread.
mod read {
    use std::borrow::Cow;
    use std::fmt;

    use serde::Deserialize;
    use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};

    use super::{Content, Message, MessageInput, not_an_object};

    /// A message, or the fault of a value that is not an object.
    pub(super) struct MessageVisitor;

    /// Visitor methods for a value of any other type than the one wanted: `$out`, the value
    /// drained (what a JSON value of that type gives).
    macro_rules! other_types {
        ($out:expr) => {
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok($out)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok($out)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok($out)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok($out)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok($out)
            }
        };
    }

    fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }

    impl<'de> Visitor<'de> for MessageVisitor {
        type Value = MessageInput;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a chat message")
        }

        other_types!(MessageInput(Err(not_an_object())));

        fn visit_str<E: de::Error>(self, _: &str) -> Result<MessageInput, E> {
            Ok(MessageInput(Err(not_an_object())))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<MessageInput, A::Error> {
            drain_seq(seq)?;
            Ok(MessageInput(Err(not_an_object())))
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MessageInput, A::Error> {
            // As a JSON object read into a value: a repeated key's last value counts, and the
            // unknown key named is the first in the order of its keys.
            let (mut unknown, mut role, mut content) = (None::<String>, None, None);
            while let Some(key) = map.next_key::<Key>()? {
                match key {
                    Key::Role => role = map.next_value::<Text<'de>>()?.0,
                    Key::Content => content = map.next_value::<ContentValue>()?.0,
                    Key::Other(k) => {
                        map.next_value::<IgnoredAny>()?;
                        if unknown.as_ref().is_none_or(|u| k < *u) {
                            unknown = Some(k);
                        }
                    }
                }
            }
            Ok(MessageInput(Message::checked(
                unknown.as_deref(),
                role.as_deref(),
                content,
            )))
        }
    }

    /// A message's key: only an unknown one is copied.
    enum Key {
        Role,
        Content,
        Other(String),
    }

    impl<'de> Deserialize<'de> for Key {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Key;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a key")
                }
                fn visit_str<E: de::Error>(self, k: &str) -> Result<Key, E> {
                    Ok(match k {
                        "role" => Key::Role,
                        "content" => Key::Content,
                        _ => Key::Other(k.to_owned()),
                    })
                }
            }
            d.deserialize_str(V)
        }
    }

    /// A value's text when it is a string, borrowed from the request when it can be.
    struct Text<'de>(Option<Cow<'de, str>>);

    impl<'de> Deserialize<'de> for Text<'de> {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Text<'de>, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Text<'de>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("any value")
                }
                other_types!(Text(None));
                fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Text<'de>, E> {
                    Ok(Text(Some(Cow::Borrowed(s))))
                }
                fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<'de>, E> {
                    Ok(Text(Some(Cow::Owned(s.to_owned()))))
                }
                fn visit_string<E: de::Error>(self, s: String) -> Result<Text<'de>, E> {
                    Ok(Text(Some(Cow::Owned(s))))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Text<'de>, A::Error> {
                    drain_seq(seq)?;
                    Ok(Text(None))
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Text<'de>, A::Error> {
                    drain_map(map)?;
                    Ok(Text(None))
                }
            }
            d.deserialize_any(V)
        }
    }

    /// A content: a text, a list of parts (as JSON values), or `None` for any other value.
    struct ContentValue(Option<Content>);

    impl<'de> Deserialize<'de> for ContentValue {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<ContentValue, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = ContentValue;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("any value")
                }
                other_types!(ContentValue(None));
                fn visit_str<E: de::Error>(self, s: &str) -> Result<ContentValue, E> {
                    Ok(ContentValue(Some(Content::Text(s.to_owned()))))
                }
                fn visit_string<E: de::Error>(self, s: String) -> Result<ContentValue, E> {
                    Ok(ContentValue(Some(Content::Text(s))))
                }
                fn visit_seq<A: SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<ContentValue, A::Error> {
                    let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                    while let Some(p) = seq.next_element::<serde_json::Value>()? {
                        parts.push(p);
                    }
                    Ok(ContentValue(Some(Content::Parts(parts))))
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ContentValue, A::Error> {
                    drain_map(map)?;
                    Ok(ContentValue(None))
                }
            }
            d.deserialize_any(V)
        }
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

    /// A message read from a request's JSON as it streams by is what the same JSON read into a
    /// value and then taken as a message gives: the same message, or the same fault.
    #[test]
    fn a_message_read_from_json_is_the_message_its_value_gives() {
        let texts = [
            r#"{"role":"user","content":"hi"}"#,
            r#"{"content":"first the content","role":"system"}"#,
            r#"{"role":"assistant","content":"an \"escaped\" text\n"}"#,
            r#"{"role":"us\u0065r","content":"an escaped role"}"#,
            r#"{"role":"user","content":[{"type":"text","text":"what is it"},{"type":"image_url","image_url":{"url":"data:,x"}}]}"#,
            r#"{"role":"user","content":[]}"#,
            r#"{"role":"user","role":"robot","content":"the last role counts"}"#,
            r#"{"role":"user","content":3,"content":"the last content counts"}"#,
            r#"{"role":"user","content":"x","name":"n","extra":1}"#,
            r#"{"zeta":{"deep":[1,{"a":2}]},"alpha":[3],"role":"user","content":"x"}"#,
            r#"{"role":"robot","content":"x"}"#,
            r#"{"role":{"nested":"user"},"content":"x"}"#,
            r#"{"role":["user"],"content":"x"}"#,
            r#"{"role":null,"content":"x"}"#,
            r#"{"content":"x"}"#,
            r#"{"role":"user"}"#,
            r#"{"role":"user","content":null}"#,
            r#"{"role":"user","content":true}"#,
            r#"{"role":"user","content":{"text":"x"}}"#,
            r#"{"role":"user","content":-1.5}"#,
            r#"{}"#,
            r#""hi""#,
            r#"[{"role":"user","content":"x"}]"#,
            r#"42"#,
            r#"null"#,
            r#"false"#,
        ];
        for text in texts {
            let streamed: MessageInput = serde_json::from_str(text).expect(text);
            let value: Value = serde_json::from_str(text).expect(text);
            assert_eq!(streamed, MessageInput::from(value), "{text}");
        }
        // And in a list, each in its place, the reader going on after a fault.
        let list: Vec<MessageInput> =
            serde_json::from_str(&format!("[{}]", texts.join(","))).expect("a list of anything");
        assert_eq!(list.len(), texts.len());
        assert_eq!(list[0], MessageInput(Ok(Message::user("hi"))));
    }
}
