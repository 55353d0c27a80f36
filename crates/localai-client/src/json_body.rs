//! An upstream's JSON answer kept as the bytes it came in, with the few fields im reads on every
//! answer (the model it names, the tokens it used, a chat's text) taken out by one borrowing
//! pass; the whole document is parsed into values only when something reads it (the seeds'
//! answers, a split batch, a test). A proxied answer is checked, measured and passed on as
//! bytes without building a value tree.

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
    #[serde(borrow, default)]
    choices: Option<Vec<Choice<'a>>>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    total_tokens: Option<u64>,
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
    /// `bytes` as a JSON answer, and (for a chat) `choices[0].message.content` when it is text;
    /// bytes that are not JSON are a protocol error.
    pub(crate) fn read(bytes: Bytes) -> Result<(JsonBody, Option<String>), ClientError> {
        match serde_json::from_slice::<Head<'_>>(&bytes) {
            Ok(head) => {
                let content = head
                    .choices
                    .as_ref()
                    .and_then(|c| c.first())
                    .and_then(|c| c.message.as_ref()?.content.as_deref())
                    .map(str::to_owned);
                let body = JsonBody {
                    model: head.model.map(|m| m.into()),
                    total_tokens: head.usage.and_then(|u| u.total_tokens),
                    parsed: OnceLock::new(),
                    bytes,
                };
                Ok((body, content))
            }
            // Valid JSON of another shape (a `usage` that is not an object, say): parsed whole.
            Err(_) => {
                let v: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| ClientError::Protocol(format!("invalid JSON: {e}")))?;
                let content = v["choices"][0]["message"]["content"]
                    .as_str()
                    .map(str::to_owned);
                let body = JsonBody {
                    model: v["model"].as_str().map(Into::into),
                    total_tokens: v["usage"]["total_tokens"].as_u64(),
                    parsed: OnceLock::from(v),
                    bytes,
                };
                Ok((body, content))
            }
        }
    }

    /// A body made from `value` (a merged or split answer, a scripted backend).
    pub fn from_value(value: Value) -> JsonBody {
        JsonBody {
            bytes: Bytes::from(value.to_string()),
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
        let (body, content) = JsonBody::read(Bytes::from(text)).expect("json");
        assert_eq!(body.model(), Some("m1"));
        assert_eq!(body.total_tokens(), Some(7));
        assert_eq!(content.as_deref(), Some("hi \"there\""));
        assert!(
            body.parsed.get().is_none(),
            "nothing parsed into values yet"
        );
        assert_eq!(body["usage"]["prompt_tokens"], 3);
        assert_eq!(body.bytes().as_ref(), text.as_bytes());
    }

    #[test]
    fn json_of_another_shape_is_parsed_whole_and_garbage_is_refused() {
        let (body, content) = JsonBody::read(Bytes::from(
            r#"{"model":"m","usage":"n/a","choices":[{"message":{"content":[1]}}]}"#,
        ))
        .expect("valid JSON");
        assert_eq!(
            (body.model(), body.total_tokens(), content),
            (Some("m"), None, None)
        );
        assert_eq!(body["usage"], "n/a");
        let (body, _) = JsonBody::read(Bytes::from("[1,2]")).expect("valid JSON");
        assert_eq!(body.model(), None);
        assert!(matches!(
            JsonBody::read(Bytes::from("{\"model\":")),
            Err(ClientError::Protocol(_))
        ));
    }
}
