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

/// The longest free text kept (error messages), in characters.
pub const MAX_TEXT_CHARS: usize = 1000;

/// Mask the word after `Bearer`, long base64 runs (bare, quoted or inside a data URI) and cap the
/// length of free text (error messages).
pub fn sanitize_text(s: &str) -> String {
    let mut after_bearer = false;
    let masked = s
        .split(' ')
        .map(|w| {
            let bare = w.trim_matches(|c: char| "\"'`(),;:[]{}<>".contains(c));
            let out = if after_bearer && !bare.is_empty() {
                w.replace(bare, "***")
            } else if is_payload(bare) {
                w.replace(bare, &format!("<base64: {} bytes>", bare.len()))
            } else {
                w.to_owned()
            };
            after_bearer = bare.eq_ignore_ascii_case("bearer");
            out
        })
        .collect::<Vec<_>>()
        .join(" ");
    if masked.chars().count() > MAX_TEXT_CHARS {
        let cut: String = masked.chars().take(MAX_TEXT_CHARS).collect();
        format!("{cut}…")
    } else {
        masked
    }
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

    #[test]
    fn bearer_tokens_quoted_payloads_and_long_text_are_masked() {
        // Regression (issue 11, low): `Bearer …` and quoted base64 survived.
        let img = "iVBORw0KGgo".repeat(20);
        let s = sanitize_text(&format!(
            "sent Authorization: Bearer sk-secret-1 with file \"{img}\""
        ));
        assert!(
            !s.contains("sk-secret-1") && !s.contains("iVBORw0KGgo"),
            "{s}"
        );
        assert!(
            s.contains("Bearer ***") && s.contains("\"<base64: 220 bytes>\""),
            "{s}"
        );
        assert!(sanitize_text(&"word ".repeat(1000)).chars().count() <= MAX_TEXT_CHARS + 1);
    }
}
