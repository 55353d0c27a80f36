//! Parsing a JSON body into its typed request, naming the field at fault.

use serde::Deserialize;

use crate::error::ServiceError;

/// Parse a JSON body into `T`, naming the field at fault (`param`). `T` may borrow from the
/// body (an image payload is then copied once, later, into exactly its size). A body that parses
/// is read once, without tracking paths; only a faulty one (or one that is not UTF-8) is read
/// again to name its field.
pub fn parse<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, ServiceError> {
    if body.is_empty() {
        return Err(ServiceError::invalid(
            "body",
            "the request body is empty; send a JSON object",
        ));
    }
    // The body checked to be UTF-8 once, as a whole, instead of string by string as it is read.
    if let Ok(text) = std::str::from_utf8(body) {
        let fast = &mut serde_json::Deserializer::from_str(text);
        if let Ok(parsed) = T::deserialize(&mut *fast)
            && fast.end().is_ok()
        {
            return Ok(parsed);
        }
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let parsed = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        if inner.is_syntax() || inner.is_eof() {
            return ServiceError::invalid("body", format!("malformed JSON: {msg}"));
        }
        // serde names missing and unknown fields in the message, not in the path.
        let field = if path == "." || path == "?" {
            msg.split('`')
                .nth(1)
                .map(str::to_owned)
                .unwrap_or_else(|| "body".to_owned())
        } else {
            path
        };
        ServiceError::invalid(field, msg)
    })?;
    // One JSON value and nothing after it: a second document is not silently dropped.
    de.end()
        .map_err(|e| ServiceError::invalid("body", format!("malformed JSON: {e}")))?;
    Ok(parsed)
}

/// Refuse any field of `rest` (what a body held besides its typed fields) not in `allowed`, by
/// name: nothing unknown is passed to a server that may act on it.
pub(crate) fn refuse_unknown(
    rest: &serde_json::Map<String, serde_json::Value>,
    allowed: &[&str],
) -> Result<(), ServiceError> {
    match rest.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(ServiceError::invalid(
            unknown.as_str(),
            format!("unsupported field `{}`", im_engine::truncate(unknown, 64)),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Body {
        model: String,
    }

    #[test]
    fn a_body_is_one_json_value_and_what_follows_it_is_refused() {
        let one = super::parse::<Body>(br#"{"model":"m"}"#).expect("one value");
        assert_eq!(one.model, "m");
        assert!(super::parse::<Body>(b"{\"model\":\"m\"} \n").is_ok());
        for body in [
            &br#"{"model":"m"} trailing"#[..],
            br#"{"model":"m"}{"model":"n"}"#,
        ] {
            let e = super::parse::<Body>(body).expect_err("refused");
            assert_eq!(e.param.as_deref(), Some("body"), "{e:?}");
            assert!(e.message.contains("trailing characters"), "{e:?}");
        }
    }

    #[test]
    fn a_field_that_is_not_utf8_is_malformed_json() {
        for body in [&b"{\"model\":\"m\xff\"}"[..], b"{\"model\":\"\xc3\x28\"}"] {
            let e = super::parse::<Body>(body).expect_err("refused");
            assert_eq!(e.param.as_deref(), Some("body"), "{e:?}");
            assert!(e.message.starts_with("malformed JSON"), "{e:?}");
        }
    }
}
