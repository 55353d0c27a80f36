//! An upstream's JSON answer kept as the bytes it came in, with the two fields im reads on every
//! answer (the model it names, the tokens it used) taken out by one borrowing pass that also
//! checks the rest is JSON; a chat's text is read only when something presents it (the seeds'
//! answers, WebSocket, MCP), and the whole document is parsed into values only when something
//! reads it (a split batch, a test). A proxied answer is checked, measured and passed on as bytes
//! without building a value tree.

use std::borrow::Cow;
use std::sync::OnceLock;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use crate::error::ClientError;

/// A JSON answer: its bytes, what im reads of every answer, its values on demand.
#[derive(Clone, Debug)]
pub struct JsonBody {
    bytes: Bytes,
    /// Whether it has a `choices` field (a chat or text completion).
    choices: bool,
    model: Option<Box<str>>,
    total_tokens: Option<u64>,
    parsed: OnceLock<Value>,
}

/// What the borrowing pass takes: unknown fields are skipped (and still checked to be JSON).
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<Usage>,
    /// Skipped like an unknown field: only whether it is there.
    #[serde(default)]
    choices: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    total_tokens: Option<u64>,
}

/// A chat's text: `choices[0].message.content`.
#[derive(Deserialize)]
struct Choices<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<Choice<'a>>>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    message: Option<Message<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
}

impl JsonBody {
    /// `bytes` as a JSON answer; bytes that are not JSON are a protocol error.
    pub(crate) fn read(bytes: Bytes) -> Result<JsonBody, ClientError> {
        // Checked to be UTF-8 once, as a whole, instead of string by string as it is read.
        let head = match std::str::from_utf8(&bytes) {
            Ok(text) => serde_json::from_str::<Head<'_>>(text),
            Err(_) => serde_json::from_slice::<Head<'_>>(&bytes),
        };
        match head {
            Ok(head) => Ok(JsonBody {
                choices: head.choices.is_some(),
                model: head.model.map(|m| m.into()),
                total_tokens: head.usage.and_then(|u| u.total_tokens),
                parsed: OnceLock::new(),
                bytes,
            }),
            // Valid JSON of another shape (a `usage` that is not an object, say): parsed whole.
            Err(_) => {
                let v: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| ClientError::Protocol(format!("invalid JSON: {e}")))?;
                Ok(JsonBody {
                    choices: v.get("choices").is_some(),
                    model: v["model"].as_str().map(Into::into),
                    total_tokens: v["usage"]["total_tokens"].as_u64(),
                    parsed: OnceLock::from(v),
                    bytes,
                })
            }
        }
    }

    /// A chat answer's text, `choices[0].message.content`, when it is text (an answer of tool
    /// calls has none). Read from the bytes each time it is asked for (a borrowing pass, or
    /// the values when they were parsed).
    pub fn chat_content(&self) -> Option<String> {
        if let Some(v) = self.parsed.get() {
            return v["choices"][0]["message"]["content"]
                .as_str()
                .map(str::to_owned);
        }
        match serde_json::from_slice::<Choices<'_>>(&self.bytes) {
            Ok(c) => c
                .choices?
                .first()?
                .message
                .as_ref()?
                .content
                .as_deref()
                .map(str::to_owned),
            Err(_) => self.value()["choices"][0]["message"]["content"]
                .as_str()
                .map(str::to_owned),
        }
    }

    /// A chat answer's text as it is shown to a person (the seeds' answers, WebSocket, MCP):
    /// [`Self::chat_content`], empty when the answer has none (tool calls).
    pub fn chat_text(&self) -> String {
        self.chat_content().unwrap_or_default()
    }

    /// Whether the bytes hold `needle`'s text anywhere (a quirk's marker, before anything is
    /// parsed to look for it). A prepared searcher: building one costs more than a short search.
    pub(crate) fn mentions(&self, needle: &memchr::memmem::Finder<'_>) -> bool {
        needle.find(&self.bytes).is_some()
    }

    /// A body made from `value` (a merged or split answer, a scripted backend).
    pub fn from_value(value: Value) -> JsonBody {
        JsonBody {
            bytes: Bytes::from(value.to_string()),
            choices: value.get("choices").is_some(),
            model: value["model"].as_str().map(Into::into),
            total_tokens: value["usage"]["total_tokens"].as_u64(),
            parsed: OnceLock::from(value),
        }
    }

    /// The bytes as they came.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The model the answer names (`model`), when it names one.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// Whether it has `choices` (every chat or text completion does).
    pub fn has_choices(&self) -> bool {
        self.choices
    }

    /// The tokens it says it used (`usage.total_tokens`), when it says.
    pub fn total_tokens(&self) -> Option<u64> {
        self.total_tokens
    }

    /// The whole document, parsed the first time it is read.
    pub fn value(&self) -> &Value {
        self.parsed
            .get_or_init(|| serde_json::from_slice(&self.bytes).unwrap_or(Value::Null))
    }

    /// The whole document, owned.
    pub fn into_value(self) -> Value {
        match self.parsed.into_inner() {
            Some(v) => v,
            None => serde_json::from_slice(&self.bytes).unwrap_or(Value::Null),
        }
    }
}

/// Reading the body as a value parses it (once).
impl std::ops::Deref for JsonBody {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fields_read_on_every_answer_come_without_a_value_tree() {
        let text = r#"{"id":"c1","model":"m1","choices":[{"index":0,"message":{"role":"assistant","content":"hi \"there\""}}],"usage":{"prompt_tokens":3,"total_tokens":7}}"#;
        let body = JsonBody::read(Bytes::from(text)).expect("json");
        assert_eq!(body.model(), Some("m1"));
        assert_eq!(body.total_tokens(), Some(7));
        assert_eq!(body.chat_content().as_deref(), Some("hi \"there\""));
        assert!(
            body.parsed.get().is_none(),
            "nothing parsed into values yet"
        );
        assert_eq!(body["usage"]["prompt_tokens"], 3);
        assert_eq!(body.bytes().as_ref(), text.as_bytes());
    }

    #[test]
    fn json_of_another_shape_is_parsed_whole_and_garbage_is_refused() {
        let body = JsonBody::read(Bytes::from(
            r#"{"model":"m","usage":"n/a","choices":[{"message":{"content":[1]}}]}"#,
        ))
        .expect("valid JSON");
        assert_eq!(
            (body.model(), body.total_tokens(), body.chat_content()),
            (Some("m"), None, None)
        );
        assert_eq!(body["usage"], "n/a");
        let body = JsonBody::read(Bytes::from("[1,2]")).expect("valid JSON");
        assert_eq!(body.model(), None);
        assert!(matches!(
            JsonBody::read(Bytes::from("{\"model\":")),
            Err(ClientError::Protocol(_))
        ));
        // Garbage after the fields read is refused too.
        assert!(matches!(
            JsonBody::read(Bytes::from(r#"{"model":"m","choices":[{"message":}]}"#)),
            Err(ClientError::Protocol(_))
        ));
        // A field read that is not UTF-8 is not JSON.
        assert!(matches!(
            JsonBody::read(Bytes::from_static(b"{\"model\":\"m\xff\",\"choices\":[]}")),
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn an_answer_of_tool_calls_has_no_text_and_is_still_an_answer() {
        let text = r#"{"model":"m","choices":[{"message":{"role":"assistant","content":null,"tool_calls":[{"id":"t1","type":"function","function":{"name":"f","arguments":"{}"}}]}}]}"#;
        let body = JsonBody::read(Bytes::from(text)).expect("json");
        assert_eq!((body.model(), body.chat_content()), (Some("m"), None));
        assert!(body.has_choices());
        assert!(
            !JsonBody::read(Bytes::from("{}"))
                .expect("json")
                .has_choices()
        );
        let finder = memchr::memmem::Finder::new;
        assert!(body.mentions(&finder("tool_calls")) && !body.mentions(&finder("Internal error:")));
    }
}
