//! Structured output, as llama.cpp's grammar-constrained sampling gives it: a chat request with
//! `response_format` `json_schema` (or `json_object`) is answered with a JSON document that fits
//! the schema, chosen from the prompt so that it reads like an answer (a sentiment label follows
//! the words of the text).

use serde_json::{Map, Value, json};

/// The JSON text to answer with, if the request asks for structured output.
pub fn answer(body: &Value, prompt: &str) -> Option<String> {
    let format = body.get("response_format")?;
    let doc = match format.get("type").and_then(Value::as_str)? {
        "json_schema" => {
            let schema = format
                .pointer("/json_schema/schema")
                .or_else(|| format.get("schema"))?;
            instance(schema, prompt)
        }
        "json_object" => json!({"reply": prompt.chars().take(60).collect::<String>()}),
        _ => return None,
    };
    Some(doc.to_string())
}

/// A value that fits `schema` (objects, arrays, enums, strings, numbers, integers, booleans).
fn instance(schema: &Value, prompt: &str) -> Value {
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.is_empty()
    {
        return pick(options, prompt);
    }
    match schema
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("object")
    {
        "object" => {
            let mut out = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, s) in props {
                    out.insert(k.clone(), instance(s, prompt));
                }
            }
            Value::Object(out)
        }
        "array" => json!([instance(schema.get("items").unwrap_or(&json!({})), prompt)]),
        "number" => {
            let lo = schema.get("minimum").and_then(Value::as_f64).unwrap_or(0.0);
            let hi = schema.get("maximum").and_then(Value::as_f64).unwrap_or(1.0);
            json!(lo + (hi - lo) * 0.87)
        }
        "integer" => json!(schema.get("minimum").and_then(Value::as_i64).unwrap_or(1)),
        "boolean" => json!(true),
        _ => json!(prompt.chars().take(40).collect::<String>()),
    }
}

/// The option the prompt's words point to: a sentiment by its words, else the first.
fn pick(options: &[Value], prompt: &str) -> Value {
    let p = prompt.to_lowercase();
    let positive = [
        "love",
        "great",
        "good",
        "excellent",
        "happy",
        "wonderful",
        "amazing",
    ];
    let negative = ["hate", "bad", "terrible", "awful", "sad", "worst", "poor"];
    let has = |words: &[&str]| words.iter().any(|w| p.contains(w));
    let wanted = if has(&negative) {
        "negative"
    } else if has(&positive) {
        "positive"
    } else {
        "neutral"
    };
    options
        .iter()
        .find(|o| o.as_str() == Some(wanted))
        .unwrap_or(&options[0])
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentiment() -> Value {
        json!({"type": "json_schema", "json_schema": {"name": "sentiment", "schema": {
            "type": "object", "required": ["label", "score"],
            "properties": {"label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
                           "score": {"type": "number", "minimum": 0, "maximum": 1}}}}})
    }

    #[test]
    fn a_schema_is_answered_with_a_fitting_document() {
        let body = json!({"response_format": sentiment()});
        let doc: Value =
            serde_json::from_str(&answer(&body, "I love this product").expect("structured"))
                .expect("JSON");
        assert_eq!(doc["label"], "positive");
        let score = doc["score"].as_f64().expect("number");
        assert!((0.0..=1.0).contains(&score));
        let doc: Value =
            serde_json::from_str(&answer(&body, "This was terrible").expect("structured"))
                .expect("JSON");
        assert_eq!(doc["label"], "negative");
    }

    #[test]
    fn plain_requests_are_not_structured() {
        assert_eq!(answer(&json!({}), "hi"), None);
        assert_eq!(
            answer(&json!({"response_format": {"type": "text"}}), "hi"),
            None
        );
    }
}
