//! Parameters safe to show: base64 payloads replaced by their size, secrets masked.

use serde_json::Value;

const SECRET_KEYS: &[&str] = &[
    "api_key",
    "apikey",
    "authorization",
    "key",
    "token",
    "password",
    "secret",
    "x-api-key",
];

/// Whether `s` looks like a base64 payload (or a data URI carrying one) rather than text.
fn is_payload(s: &str) -> bool {
    if let Some(rest) = s.strip_prefix("data:") {
        return rest.contains(";base64,");
    }
    s.len() >= 64
        && !s.contains(' ')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\n' | b'\r'))
}

/// A copy of `v` with payloads as `<base64: N bytes>` and secret-looking fields as `***`.
pub fn sanitize(v: &Value) -> Value {
    match v {
        Value::String(s) if is_payload(s) => Value::String(format!("<base64: {} bytes>", s.len())),
        Value::String(s) if s.len() > 500 => Value::String(format!(
            "{}… ({} chars)",
            &s[..s.floor_char_boundary(200)],
            s.len()
        )),
        Value::Array(a) => Value::Array(a.iter().map(sanitize).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let secret = SECRET_KEYS.contains(&k.to_ascii_lowercase().as_str());
                    (
                        k.clone(),
                        if secret {
                            Value::String("***".into())
                        } else {
                            sanitize(v)
                        },
                    )
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Mask anything after `Bearer ` and long base64 runs inside free text (error messages).
pub fn sanitize_text(s: &str) -> String {
    s.split(' ')
        .map(|w| {
            if is_payload(w) {
                format!("<base64: {} bytes>", w.len())
            } else {
                w.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payloads_and_secrets_never_survive() {
        let img = "iVBORw0KGgo".repeat(20);
        let v = json!({"model": "sd", "file": img, "api_key": "k-123",
                       "messages": [{"content": [{"image_url": {"url": format!("data:image/png;base64,{img}")}}]}]});
        let s = sanitize(&v).to_string();
        assert!(!s.contains("iVBORw0KGgo") && !s.contains("k-123"), "{s}");
        assert!(
            s.contains("<base64: 220 bytes>") && s.contains("\"model\":\"sd\""),
            "{s}"
        );
        assert_eq!(
            sanitize_text(&format!("bad file {img}")),
            "bad file <base64: 220 bytes>"
        );
    }
}
