//! The model registry of the seeds' first dialect: public task models with versions
//! (`summarizer:v1`), each a prompt template over an upstream model. A task model turns `text`
//! and its `parameters` into a chat call on the txt2txt queue and its answer into a result; the
//! sentiment template asks for a JSON schema, so its answer is parsed, not guessed.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::auth::Caller;
use crate::call::{Call, ChatInput, ChatKind};
use crate::done::{Done, Reply};
use crate::error::{ErrorType, ServiceError};
use crate::service::Service;

/// What a task model does with its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    /// A summary of `text` (`max_length`, `min_length` in words) → `{summary_text}`.
    Summarize,
    /// The sentiment of `text` → `{label: positive|negative|neutral, score}`.
    Sentiment,
    /// A continuation of `text` (`max_length` in tokens, `num_return_sequences`, `temperature`)
    /// → `[{generated_text}]`.
    Generate,
    /// `text` as one user message → `{text}`.
    Chat,
}

impl Template {
    /// Its name, which is also the `model_type` of the answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Template::Summarize => "summarization",
            Template::Sentiment => "sentiment-analysis",
            Template::Generate => "text-generation",
            Template::Chat => "chat",
        }
    }
}

/// One version of a task model.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryEntry {
    /// Its public name (`summarizer`).
    pub name: String,
    /// Its version (`v1`); served as `name:version`.
    pub version: String,
    /// The upstream model it runs on (a txt2txt model).
    pub upstream: String,
    /// What it does.
    pub template: Template,
    /// Other names it answers to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Whether `name` alone means this version (default: the first version listed).
    #[serde(default)]
    pub default: bool,
}

impl RegistryEntry {
    /// `name:version`.
    pub fn id(&self) -> String {
        format!("{}:{}", self.name, self.version)
    }
}

/// The task models.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Registry {
    entries: Vec<RegistryEntry>,
}

/// The largest `text` a task model takes, in characters.
pub const MAX_TEXT_CHARS: usize = 100_000;

impl Registry {
    /// A registry of `entries`.
    pub fn new(entries: Vec<RegistryEntry>) -> Registry {
        Registry { entries }
    }

    /// The first document's examples on `llm`: `summarizer:v1`, `sentiment:v1`, `generator:v1`.
    pub fn examples(llm: &str) -> Registry {
        let entry = |name: &str, template, description: &str| RegistryEntry {
            name: name.into(),
            version: "v1".into(),
            upstream: llm.into(),
            template,
            aliases: Vec::new(),
            description: description.into(),
            default: true,
        };
        Registry::new(vec![
            entry(
                "summarizer",
                Template::Summarize,
                "Summarizes text (parameters: max_length, min_length in words).",
            ),
            entry(
                "sentiment",
                Template::Sentiment,
                "Labels text positive, negative or neutral with a confidence score.",
            ),
            entry(
                "generator",
                Template::Generate,
                "Continues text (parameters: max_length in tokens, num_return_sequences, temperature).",
            ),
        ])
    }

    /// Whether it has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries.
    pub fn entries(&self) -> &[RegistryEntry] {
        &self.entries
    }

    /// The entry `model` names (`name:version`, `name` with `version`, `name` or an alias for the
    /// default version), or a 404 listing what exists.
    pub fn resolve(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<&RegistryEntry, ServiceError> {
        let (name, version) = match (model.split_once(':'), version) {
            (Some((_, v)), Some(other)) if v != other => {
                return Err(ServiceError::invalid(
                    "version",
                    format!(
                        "`model` names version {:?}; leave `version` out or make them agree",
                        im_engine::truncate(v, 32)
                    ),
                ));
            }
            (Some((n, v)), _) => (n, Some(v)),
            (None, v) => (model, v),
        };
        let named: Vec<&RegistryEntry> = self
            .entries
            .iter()
            .filter(|e| e.name == name || e.aliases.iter().any(|a| a == name))
            .collect();
        let found = match version {
            Some(v) => named.iter().find(|e| e.version == v).copied(),
            None => named.iter().find(|e| e.default).or(named.first()).copied(),
        };
        found.ok_or_else(|| {
            let known: Vec<String> = self.entries.iter().map(RegistryEntry::id).collect();
            ServiceError::new(
                ErrorType::UnknownModel,
                format!(
                    "`model`: no task model {:?}{}; the models: {}",
                    im_engine::truncate(name, 64),
                    version.map_or(String::new(), |v| format!(
                        " version {:?}",
                        im_engine::truncate(v, 32)
                    )),
                    known.join(", ")
                ),
            )
        })
    }

    /// `GET /models`: per name its versions, default version, kind, type and description.
    pub fn list(&self) -> Value {
        let mut names: Vec<&str> = self.entries.iter().map(|e| e.name.as_str()).collect();
        names.dedup();
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(*n));
        let models: Vec<Value> = names
            .iter()
            .map(|n| {
                let versions: Vec<&RegistryEntry> =
                    self.entries.iter().filter(|e| e.name == *n).collect();
                let default = versions
                    .iter()
                    .find(|e| e.default)
                    .or(versions.first())
                    .expect("a listed name has a version");
                json!({
                    "name": n,
                    "versions": versions.iter().map(|e| &e.version).collect::<Vec<_>>(),
                    "default_version": default.version,
                    "kind": "txt2txt",
                    "model_type": default.template.as_str(),
                    "description": default.description,
                    "aliases": default.aliases,
                    "upstream": default.upstream,
                })
            })
            .collect();
        json!({ "models": models })
    }
}

/// What a task model answered, with the figures of the calls it took.
#[derive(Debug)]
pub struct TaskAnswer {
    /// The result (the template's shape).
    pub result: Value,
    /// Waiting in the queue (the longest of its calls).
    pub queue_wait: Duration,
    /// At the upstream (the longest of its calls).
    pub processing: Duration,
}

fn number(
    params: &Map<String, Value>,
    key: &str,
    lo: f64,
    hi: f64,
) -> Result<Option<f64>, ServiceError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
            _ => Err(ServiceError::invalid(
                format!("parameters.{key}"),
                format!("must be a number from {lo} to {hi}"),
            )),
        },
    }
}

fn content(done: &Done) -> Result<String, ServiceError> {
    match &done.reply {
        Reply::Chat { raw, .. } => Ok(raw.chat_text()),
        _ => Err(ServiceError::new(
            ErrorType::Internal,
            "expected a chat answer from the upstream",
        )),
    }
}

impl Service {
    /// Run task model `entry` on `text` with `parameters`, as `caller`, on the txt2txt queue.
    pub async fn run_task(
        &self,
        entry: &RegistryEntry,
        text: &str,
        parameters: &Map<String, Value>,
        caller: &Caller,
    ) -> Result<TaskAnswer, ServiceError> {
        if text.is_empty() {
            return Err(ServiceError::invalid("text", "must not be empty"));
        }
        if text.chars().count() > MAX_TEXT_CHARS {
            return Err(ServiceError::invalid(
                "text",
                format!("at most {MAX_TEXT_CHARS} characters"),
            ));
        }
        let temperature = number(parameters, "temperature", 0.0, 2.0)?;
        let chat = |system: Option<String>, max_tokens: Option<u32>, extra: Map<String, Value>| {
            let mut messages = Vec::new();
            if let Some(s) = system {
                messages.push(json!({"role": "system", "content": s}));
            }
            messages.push(json!({"role": "user", "content": text}));
            Call::chat(
                ChatInput {
                    model: entry.upstream.clone(),
                    messages: messages.into_iter().map(Into::into).collect(),
                    temperature,
                    max_tokens,
                    max_completion_tokens: None,
                    n: None,
                    extra,
                    ..ChatInput::default()
                },
                ChatKind::Text,
                self.limits(),
            )
        };
        match entry.template {
            Template::Summarize => {
                let max = number(parameters, "max_length", 1.0, 2000.0)?.unwrap_or(60.0) as u32;
                let min = number(parameters, "min_length", 0.0, 2000.0)?.unwrap_or(0.0) as u32;
                if min > max {
                    return Err(ServiceError::invalid(
                        "parameters.min_length",
                        "must not be above max_length",
                    ));
                }
                let system = format!(
                    "Summarize the user's text in {min} to {max} words. Answer with the summary only."
                );
                let done = self
                    .run(chat(Some(system), Some(max * 2 + 16), Map::new())?, caller)
                    .await?;
                Ok(TaskAnswer {
                    result: json!({"summary_text": content(&done)?.trim()}),
                    queue_wait: done.figures.queue_wait,
                    processing: done.figures.processing,
                })
            }
            Template::Sentiment => {
                let schema = json!({"type": "object", "required": ["label", "score"],
                    "properties": {
                        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
                        "score": {"type": "number", "minimum": 0, "maximum": 1}}});
                let mut extra = Map::new();
                extra.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": {"name": "sentiment", "strict": true, "schema": schema}}),
                );
                let system = "Classify the sentiment of the user's text. Answer in JSON: a label (positive, negative or neutral) and a confidence score from 0 to 1.".to_owned();
                let done = self
                    .run(chat(Some(system), Some(64), extra)?, caller)
                    .await?;
                let answer = content(&done)?;
                let parsed: Value = serde_json::from_str(answer.trim()).map_err(|_| {
                    ServiceError::new(
                        ErrorType::UpstreamError,
                        "the upstream's sentiment answer is not the JSON it was asked for",
                    )
                })?;
                let label = parsed["label"]
                    .as_str()
                    .filter(|l| ["positive", "negative", "neutral"].contains(l));
                let score = parsed["score"].as_f64().filter(|s| (0.0..=1.0).contains(s));
                let (Some(label), Some(score)) = (label, score) else {
                    return Err(ServiceError::new(
                        ErrorType::UpstreamError,
                        "the upstream's sentiment answer lacks a valid label or score",
                    ));
                };
                Ok(TaskAnswer {
                    result: json!({"label": label, "score": score}),
                    queue_wait: done.figures.queue_wait,
                    processing: done.figures.processing,
                })
            }
            Template::Generate => {
                let max = number(parameters, "max_length", 1.0, 4096.0)?.unwrap_or(64.0) as u32;
                let n =
                    number(parameters, "num_return_sequences", 1.0, 4.0)?.unwrap_or(1.0) as usize;
                // One call per sequence, each queued like any request (llama.cpp's server has no `n`).
                let calls = (0..n)
                    .map(|_| chat(None, Some(max), Map::new()))
                    .collect::<Result<Vec<_>, _>>()?;
                let runs = calls.into_iter().map(|c| self.run(c, caller));
                let mut texts = Vec::new();
                let (mut wait, mut processing) = (Duration::ZERO, Duration::ZERO);
                for done in futures_util::future::join_all(runs).await {
                    let done = done?;
                    wait = wait.max(done.figures.queue_wait);
                    processing = processing.max(done.figures.processing);
                    texts.push(json!({"generated_text": content(&done)?}));
                }
                Ok(TaskAnswer {
                    result: Value::Array(texts),
                    queue_wait: wait,
                    processing,
                })
            }
            Template::Chat => {
                let done = self.run(chat(None, None, Map::new())?, caller).await?;
                Ok(TaskAnswer {
                    result: json!({"text": content(&done)?}),
                    queue_wait: done.figures.queue_wait,
                    processing: done.figures.processing,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_versions_and_aliases_resolve() {
        let mut r = Registry::examples("llm");
        r.entries.push(RegistryEntry {
            version: "v2".into(),
            default: false,
            aliases: vec!["summary".into()],
            ..r.entries[0].clone()
        });
        assert_eq!(
            r.resolve("summarizer", None).expect("default").version,
            "v1"
        );
        assert_eq!(r.resolve("summarizer:v2", None).expect("v2").version, "v2");
        assert_eq!(
            r.resolve("summarizer", Some("v2")).expect("v2").version,
            "v2"
        );
        assert_eq!(
            r.resolve("summary", Some("v2")).expect("alias").version,
            "v2"
        );
        let e = r.resolve("summarizer:v9", None).expect_err("no v9");
        assert_eq!(e.kind, ErrorType::UnknownModel);
        assert!(e.message.contains("summarizer:v1"), "{}", e.message);
        let models = r.list();
        assert_eq!(models["models"][0]["versions"], json!(["v1", "v2"]));
        assert_eq!(models["models"][0]["default_version"], "v1");
        assert_eq!(models["models"].as_array().map(Vec::len), Some(3));
    }
}
