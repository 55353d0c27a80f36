//! Parsing a JSON body into its typed request, naming the field at fault.

use serde::Deserialize;

use crate::error::ServiceError;

/// Parse a JSON body into `T`, naming the field at fault (`param`). `T` may borrow from the
/// body (an image payload is then copied once, later, into exactly its size). A body that parses
/// is read once, without tracking paths; only a faulty one is read again to name its field.
pub fn parse<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, ServiceError> {
    if body.is_empty() {
        return Err(ServiceError::invalid(
            "body",
            "the request body is empty; send a JSON object",
        ));
    }
    if let Ok(parsed) = T::deserialize(&mut serde_json::Deserializer::from_slice(body)) {
        return Ok(parsed);
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
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
    })
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
