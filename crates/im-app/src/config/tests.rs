//! The configuration's tests: defaults, overrides, field-level errors, the committed example.

use super::*;

mod fields {
    use super::*;

    #[test]
    fn tracing_is_off_by_default_and_its_fields_are_checked_by_name() {
        assert_eq!(ImConfig::default().tracing.otlp().expect("valid"), None);
        let on = ImConfig::default()
            .with_overrides(&["tracing.otlp_endpoint=http://jaeger:4318/v1/traces".into()])
            .expect("ok");
        let otlp = on.tracing.otlp().expect("valid").expect("on");
        assert_eq!(
            (otlp.endpoint.as_str(), otlp.service_name.as_str()),
            ("http://jaeger:4318/v1/traces", "im")
        );
        for (set, field) in [
            ("tracing.otlp_endpoint=jaeger:4318", "tracing.otlp_endpoint"),
            ("tracing.sample_ratio=1.5", "tracing.sample_ratio"),
            ("tracing.service_name=\"\"", "tracing.service_name"),
            ("tracing.export_timeout_s=0", "tracing.export_timeout_s"),
        ] {
            let e = ImConfig::default()
                .with_overrides(&[set.into()])
                .and_then(|c| c.validate().map(|()| c))
                .expect_err(set);
            assert!(e.to_string().contains(field), "{set}: {e}");
        }
    }

    #[test]
    fn defaults_validate_and_overrides_apply() {
        let c = ImConfig::default()
            .with_overrides(&["bounds.max_batch=8".into(), "policy=strict".into()])
            .expect("ok");
        assert_eq!((c.bounds.max_batch, c.policy), (8, PolicyName::Strict));
        c.validate().expect("valid");
    }

    #[test]
    fn early_refusal_is_off_unless_set_and_zero_is_a_margin() {
        let core = |text: &str| {
            ImConfig::from_toml(text)
                .expect("parses")
                .core()
                .expect("valid")
                .limits
                .early_refusal_pct
        };
        assert_eq!(core(""), None, "off by default");
        assert_eq!(core("[limits]\nearly_refusal_pct = 0\n"), Some(0));
        assert_eq!(core("[limits]\nearly_refusal_pct = 25\n"), Some(25));
    }

    #[test]
    fn upstreams_are_urls_or_tables_with_a_name_and_a_key() {
        let text = "upstreams = [\"http://a:8080\", { url = \"http://b:8080\", name = \"gpu1\", api_key = \"s3cret\" }]\n";
        let c = ImConfig::from_toml(text).expect("both forms");
        assert_eq!(c.upstreams[0].url(), "http://a:8080");
        assert_eq!(
            (
                c.upstreams[1].url(),
                c.upstreams[1].name(1),
                c.upstreams[1].api_key()
            ),
            ("http://b:8080", "gpu1".to_owned(), Some("s3cret"))
        );
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "the key stays out of logs"
        );
        let text = "[[upstreams]]\nurl = \"http://a:8080\"\nname = \"x\"\n[[upstreams]]\nurl = \"http://b:8080\"\nname = \"x\"\n";
        let e = ImConfig::from_toml(text)
            .and_then(|c| c.validate().map(|()| c))
            .expect_err("a name twice");
        assert!(e.to_string().contains("upstreams[1].name"), "{e}");
    }

    #[test]
    fn routing_is_read_and_checked() {
        let mut c = ImConfig::default();
        c.upstreams = vec!["http://a:8080".into(), "http://b:8080".into()];
        c.models = vec![ModelEntry {
            name: "m".into(),
            kinds: vec!["txt2txt".into()],
            max_in_flight: Some(1),
            aliases: Vec::new(),
            ..Default::default()
        }];
        let core = c.core().expect("valid");
        assert_eq!(core.lanes, vec!["default".into(), "lane1".into()]);
        assert_eq!(
            core.routing,
            inference_queue::Routing::Affinity { replica_depth: 12 }
        );
        c.routing.strategy = Strategy::StickyHash;
        assert_eq!(
            c.core().expect("valid").routing,
            inference_queue::Routing::StickyHash
        );
        let e = ImConfig::from_toml("[routing]\nstrategy = \"random\"")
            .expect_err("unknown strategy")
            .to_string();
        assert!(e.contains("strategy") && e.contains("least_loaded"), "{e}");
        c.routing.strategy = Strategy::Affinity;
        c.routing.replica_depth = 0;
        let e = c.core().expect_err("zero depth").to_string();
        assert!(e.contains("routing.replica_depth"), "{e}");
    }

    #[test]
    fn a_fleet_with_budgets_sizes_and_labels() {
        let text = r#"
            [[upstreams]]
            url = "http://a:8080"
            name = "big"
            memory_gib = 80
            labels = ["gpu-80g"]
            [[upstreams]]
            url = "http://b:8080"
            name = "small"
            memory_gib = 24
            [[models]]
            name = "llama-70b"
            kinds = ["txt2txt"]
            max_in_flight = 4
            size_gib = 40
            load_time_s = 30
            labels = ["gpu-80g"]
            [[models]]
            name = "sdxl"
            kinds = ["txt2img"]
            max_in_flight = 1
            size_gib = 8
            upstreams = ["small"]
        "#;
        let c = ImConfig::from_toml(text).expect("parses");
        let core = c.core().expect("valid");
        assert_eq!(core.lanes[0].memory_mb, Some(80 * 1024));
        assert_eq!(core.lanes[1].memory_mb, Some(24 * 1024));
        let llama = &core.models[0];
        assert_eq!(llama.size_mb, Some(40 * 1024));
        assert_eq!(llama.load_time, Some(Duration::from_secs(30)));
        assert_eq!(llama.only_lanes, Some(vec![0]), "by its label");
        assert_eq!(core.models[1].only_lanes, Some(vec![1]), "by name");

        let too_big = text.replace("size_gib = 8", "size_gib = 30");
        let e = ImConfig::from_toml(&too_big)
            .expect("parses")
            .core()
            .expect_err("30 GiB fits no upstream sdxl may use");
        assert!(e.to_string().contains("models[1].size_gib"), "{e}");
        let unknown = text.replace("upstreams = [\"small\"]", "upstreams = [\"tiny\"]");
        let e = ImConfig::from_toml(&unknown)
            .expect("parses")
            .core()
            .expect_err("no such upstream");
        assert!(e.to_string().contains("models[1].upstreams"), "{e}");
        let negative = text.replace("memory_gib = 24", "memory_gib = -1");
        let e = ImConfig::from_toml(&negative)
            .expect("parses")
            .core()
            .expect_err("negative budget");
        assert!(e.to_string().contains("upstreams[1].memory_gib"), "{e}");
    }

    #[test]
    fn bad_fields_are_named() {
        let e = ImConfig::from_toml("listen = 5").expect_err("type");
        assert!(e.to_string().contains("listen"), "{e}");
        let e = ImConfig::from_toml("nope = 1").expect_err("unknown");
        assert!(e.to_string().contains("nope"), "{e}");
        let mut c = ImConfig::default();
        c.priority = vec!["txt2txt".into(), "chat".into()];
        assert!(
            c.validate()
                .expect_err("kind")
                .to_string()
                .contains("priority[1]")
        );
        let mut c = ImConfig::default();
        c.bounds.max_dwell_s = -1.0;
        assert!(
            c.validate()
                .expect_err("neg")
                .to_string()
                .contains("bounds.max_dwell_s")
        );
    }

    #[test]
    fn absurd_durations_are_refused_by_their_toml_keys_never_panics() {
        // Regression (issue 11, low): 1e20 panicked, 1e19 overflowed the clock later.
        for v in ["1e20", "1e19", "1e300", "-1", "nan", "inf"] {
            let text = format!("[deadlines_s]\ntxt2txt = {v}\n");
            if let Ok(c) = ImConfig::from_toml(&text) {
                let e = c.validate().expect_err(v).to_string();
                assert!(e.contains("deadlines_s.txt2txt"), "{v}: {e}");
            }
        }
        let c = ImConfig::from_toml("[retry]\nbase_ms = 18446744073709551615\n").expect("parses");
        assert!(
            c.validate()
                .expect_err("huge")
                .to_string()
                .contains("retry.base_ms")
        );
        let c = ImConfig::from_toml("[breaker]\ncooldown_s = 0.0\n").expect("parses");
        assert!(
            c.validate()
                .expect_err("zero")
                .to_string()
                .contains("breaker.cooldown_s"),
            "core errors name the TOML key"
        );
    }

    #[test]
    fn no_keys_on_a_public_address_is_refused_unless_allowed() {
        let mut c = ImConfig::default();
        c.listen = "0.0.0.0:8000".into();
        assert!(
            c.validate()
                .expect_err("open")
                .to_string()
                .contains("api_keys")
        );
        c.allow_unauthenticated = true;
        c.validate().expect("explicitly allowed");
        c.allow_unauthenticated = false;
        c.api_keys = vec!["k".into()];
        c.validate().expect("keyed");
    }

    #[test]
    fn kinds_are_guessed_from_names() {
        assert_eq!(guess_kinds("stablediffusion"), vec!["txt2img", "img2img"]);
        // A name is no evidence of vision: a text model would answer an image wrongly.
        assert_eq!(guess_kinds("llava-1.6-mistral-7b"), vec!["txt2txt"]);
        assert_eq!(guess_kinds("gemma-3-270m"), vec!["txt2txt"]);
        assert_eq!(guess_kinds("qwen3-8b"), vec!["txt2txt"]);
        assert_eq!(guess_kinds("bge-reranker-v2-m3"), vec!["rerank"]);
        assert_eq!(guess_kinds("whisper-1"), vec!["stt"]);
        assert_eq!(guess_kinds("voice-en-us-amy-low-piper"), vec!["tts"]);
        assert_eq!(guess_kinds("text-embedding-ada-002"), vec!["embed"]);
        assert_eq!(guess_kinds("nomic-embed-text"), vec!["embed"]);
    }
}

mod jobs_dir {
    use super::*;
    use std::ffi::OsString;
    use std::path::PathBuf;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn jobs_live_in_the_platform_data_directory_never_the_working_one() {
        assert_eq!(
            platform_data_dir(env(&[("XDG_DATA_HOME", "/data"), ("HOME", "/home/u")])),
            Some(PathBuf::from("/data"))
        );
        assert_eq!(
            platform_data_dir(env(&[("HOME", "/home/u")])),
            Some(PathBuf::from("/home/u/.local/share"))
        );
        // The XDG rule: a relative XDG_DATA_HOME is ignored, and so is a relative HOME.
        assert_eq!(
            platform_data_dir(env(&[("XDG_DATA_HOME", "data"), ("HOME", "/home/u")])),
            Some(PathBuf::from("/home/u/.local/share"))
        );
        assert_eq!(platform_data_dir(env(&[("HOME", ".")])), None);
        let dir = ImConfig::default().jobs.data_dir(false);
        assert!(
            dir.as_deref()
                .is_none_or(|d| d.is_absolute() && d.ends_with("im")),
            "{dir:?}"
        );
        let given = ImConfig::default()
            .with_overrides(&["jobs.dir=/srv/im".into()])
            .expect("ok");
        assert_eq!(given.jobs.data_dir(false), Some(PathBuf::from("/srv/im")));
    }
}

mod example {
    use super::*;

    #[test]
    fn the_committed_example_loads_and_matches_the_defaults() {
        let text = include_str!("../../../../deploy/im.example.toml");
        let cfg = ImConfig::from_toml(text).expect("deploy/im.example.toml parses");
        cfg.validate().expect("and validates");
        let mut expected = ImConfig::default();
        expected.models = cfg.models.clone();
        expected.deadlines_s = cfg.deadlines_s.clone();
        assert_eq!(cfg, expected, "the example documents the defaults");
        assert_eq!(cfg.core().expect("core").models.len(), 7);
    }

    /// The example's text under each table header (`[http]`, `[[models]]`, also commented out as
    /// `# [[registry]]`), the part before the first header under `""`.
    fn blocks(text: &str) -> BTreeMap<String, String> {
        let mut blocks = BTreeMap::<String, String>::new();
        let mut current = String::new();
        for line in text.lines() {
            let bare = line.trim_start_matches('#').trim();
            let header = bare
                .strip_prefix('[')
                .and_then(|h| h.split_once(']'))
                .map(|(name, rest)| (name.trim_matches(['[', ']']), rest.trim_start_matches(']')));
            match header {
                Some((name, rest))
                    if !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_alphanumeric() || c == '_' || c == '.')
                        && (rest.is_empty() || rest.trim_start().starts_with('#')) =>
                {
                    current = name.to_owned();
                }
                _ => {
                    let block = blocks.entry(current.clone()).or_default();
                    block.push_str(line);
                    block.push('\n');
                }
            }
        }
        blocks
    }

    /// Whether `block` sets or shows `key` (`key = `, as a line or in an inline table).
    fn mentions(block: &str, key: &str) -> bool {
        block.match_indices(key).any(|(at, _)| {
            let before = block[..at].chars().next_back();
            let after = block[at + key.len()..].trim_start();
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_') && after.starts_with('=')
        })
    }

    #[test]
    fn the_committed_example_shows_every_key() {
        let mut keys = super::super::key_trace::Keys::default();
        super::super::key_trace::trace::<ImConfig>("", &mut keys);
        // The untagged upstream entry is a URL or this table.
        super::super::key_trace::trace::<UpstreamTable>("upstreams[]", &mut keys);
        assert!(
            keys.opaque.iter().all(|p| p == "upstreams[]"),
            "a type that decides its shape from the input needs its table traced: {:?}",
            keys.opaque
        );
        assert!(
            keys.paths.len() > 100,
            "the tracer sees the sections: {keys:?}"
        );

        let blocks = blocks(include_str!("../../../../deploy/im.example.toml"));
        let missing: Vec<&String> = keys
            .paths
            .iter()
            .filter(|path| {
                if blocks.contains_key(path.trim_end_matches("[]")) {
                    return false; // a section, shown by its header
                }
                let (section, key) = match path.split_once('.') {
                    Some((first, _)) if blocks.contains_key(first.trim_end_matches("[]")) => (
                        first.trim_end_matches("[]"),
                        path.rsplit('.').next().unwrap_or(path),
                    ),
                    _ => ("", path.rsplit('.').next().unwrap_or(path)),
                };
                !mentions(&blocks[section], key.trim_end_matches("[]"))
            })
            .collect();
        assert!(
            missing.is_empty(),
            "deploy/im.example.toml lacks {missing:?}"
        );
    }

    #[test]
    fn a_key_left_out_of_the_example_is_noticed() {
        let text = include_str!("../../../../deploy/im.example.toml");
        let example = blocks(text);
        assert!(mentions(&example["http"], "max_tokens"));
        let without = text.replace("max_tokens = 32768", "");
        assert!(!mentions(&blocks(&without)["http"], "max_tokens"));
        assert!(mentions(&example[""], "memory_gib"), "inline tables count");
        assert!(!mentions(&example["http"], "tokens"), "whole keys only");
    }
}
