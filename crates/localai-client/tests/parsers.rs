//! Property tests for every parser that upstream or caller input reaches (issue 11's acceptance):
//! thousands of generated inputs per run, no panic, every output within its stated bounds.

use localai_client::sse::SseParser;
use localai_client::vision::{has_image, normalize_messages, sniff_base64, to_data_uri};
use localai_client::{MAX_MESSAGE_CHARS, MAX_RETRY_AFTER, parse_retry_after, summarize};
use proptest::prelude::*;
use serde_json::json;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2_000,
        ..ProptestConfig::default()
    }
}

/// Text that often looks like what the parsers expect, and often not.
fn texty() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9.eE+-]{0,30}",
        "(data:image/png;base64,)?[A-Za-z0-9+/=é€ü \\n]{0,120}",
        "(https?://)?[a-zé.:/0-9]{0,40}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn retry_after_never_panics_and_is_capped(v in texty()) {
        if let Some(d) = parse_retry_after(&v) {
            prop_assert!(d <= MAX_RETRY_AFTER);
        }
    }

    #[test]
    fn image_sources_in_any_form_never_panic(src in texty(), text in any::<String>()) {
        let forms = [
            json!({"role": "user", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": src}}]}),
            json!({"role": "user", "content": [{"type": "image_url", "image_url": src}]}),
            json!({"role": "user", "content": [{"type": "image", "image": src}]}),
        ];
        for m in forms {
            let msgs = vec![localai_client::Message::try_from(m).expect("a message")];
            prop_assert!(has_image(&msgs));
            let out = normalize_messages(&msgs);
            prop_assert_eq!(out.len(), 1);
        }
        let _ = sniff_base64(&src);
        let uri = to_data_uri(&src);
        prop_assert!(uri.starts_with("data:") || uri.starts_with("http"));
    }

    #[test]
    fn the_sse_parser_survives_any_bytes_in_any_chunks(
        bytes in proptest::collection::vec(any::<u8>(), 0..2_000),
        cuts in proptest::collection::vec(0usize..2_000, 0..8),
    ) {
        let mut p = SseParser::default();
        let mut cuts = cuts;
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let mut at = 0;
        let mut items = 0;
        for c in cuts {
            let c = c.min(bytes.len());
            if c < at { continue; }
            p.push(&bytes[at..c]).expect("small events fit");
            at = c;
            while p.next_item().is_some() {
                items += 1;
                prop_assert!(items <= bytes.len() + 1);
            }
        }
    }

    #[test]
    fn structured_streams_parse_to_chunks_or_errors(
        deltas in proptest::collection::vec(any::<String>(), 0..10),
    ) {
        let mut text = String::new();
        for d in &deltas {
            text.push_str(&format!("data: {}\n\n", json!({"choices": [{"delta": {"content": d}}]})));
        }
        text.push_str("data: [DONE]\n\n");
        let mut p = SseParser::default();
        p.push(text.as_bytes()).expect("fits");
        let mut seen = Vec::new();
        while let Some(item) = p.next_item() {
            match item {
                Ok(Some(c)) => seen.push(c.delta),
                Ok(None) => break,
                Err(_) => { seen.push(String::new()); break; }
            }
        }
        // Every chunk before the first in-stream error comes out, in order.
        let expected: Vec<String> = deltas
            .iter()
            .take_while(|d| !d.starts_with("Internal error:"))
            .cloned()
            .collect();
        prop_assert_eq!(&seen[..expected.len()], &expected[..]);
    }

    #[test]
    fn upstream_messages_are_summarised_within_bounds(v in any::<String>()) {
        let s = summarize(&v);
        prop_assert!(s.chars().count() <= MAX_MESSAGE_CHARS + 1);
        prop_assert!(!s.contains('\n'));
    }
}
