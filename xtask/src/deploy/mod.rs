//! `cargo xtask deploy-check`: the deployment files, checked statically (no Docker engine here),
//! one room per thing checked: the files parse ([`check`]), compose ([`compose`]), the Grafana
//! dashboard ([`dashboard`]), the Dockerfile ([`dockerfile`]), the configurations through im's own
//! loader ([`configs`]) and the Kubernetes manifests ([`k8s`]).

mod compose;
mod configs;
mod dashboard;
mod dockerfile;
mod k8s;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use serde_json::Value;

/// What every check reads.
struct Deploy {
    root: PathBuf,
    dir: PathBuf,
    /// Every file under `deploy/`, sorted.
    files: Vec<PathBuf>,
}

fn list(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            list(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

pub(super) fn yaml_docs(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)?;
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc)
            .with_context(|| format!("{} does not parse as YAML", path.display()))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// Load a config through im's loader and validate it. `keys_from_env`: the deployment sets
/// `IM_API_KEYS` (compose's env file, a k8s Secret), which the binaries apply over the file.
pub(super) fn load_config(label: &str, text: &str, keys_from_env: bool) -> Result<()> {
    let mut cfg = im_app::config::ImConfig::from_toml(text)
        .with_context(|| format!("{label}: im's loader refuses it"))?;
    if keys_from_env && !cfg.has_keys() {
        cfg.api_keys = vec!["key-from-IM_API_KEYS".into()];
    }
    cfg.validate()
        .with_context(|| format!("{label}: invalid"))?;
    Ok(())
}

/// The bin targets of the workspace, from `cargo metadata`.
pub(super) fn workspace_bins(root: &Path) -> Result<BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(root)
        .output()
        .context("cargo metadata")?;
    ensure!(out.status.success(), "cargo metadata failed");
    let meta: Value = serde_json::from_slice(&out.stdout)?;
    let mut bins = BTreeSet::new();
    for p in meta["packages"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
            {
                bins.insert(t["name"].as_str().unwrap_or_default().to_owned());
                bins.insert(format!("pkg:{}", p["name"].as_str().unwrap_or_default()));
            }
        }
    }
    Ok(bins)
}

pub(super) fn host_port(s: &str) -> Option<(String, u16)> {
    let s = s
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let hp = s.split('/').next()?;
    let (h, p) = hp.rsplit_once(':')?;
    Some((h.to_owned(), p.parse().ok()?))
}

pub(super) fn service_ports(svc: &Value) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for key in ["ports", "expose"] {
        for p in svc[key].as_array().into_iter().flatten() {
            let s = p
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| p.to_string());
            if let Some(last) = s.rsplit(':').next().and_then(|x| x.split('/').next())
                && let Ok(n) = last.trim_matches('"').parse()
            {
                ports.insert(n);
            }
        }
    }
    ports
}

/// Every check; returns what was checked, one line each.
pub fn check(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("deploy");
    let mut files = Vec::new();
    list(&dir, &mut files)?;
    files.sort();
    let d = Deploy {
        root: root.to_owned(),
        dir,
        files,
    };
    let mut done = vec![parse(&d)?];
    done.push(compose::check(&d)?);
    done.push(dashboard::check(&d)?);
    done.push(dockerfile::check(&d)?);
    done.push(configs::check(&d)?);
    done.push(k8s::check(&d)?);
    if done.is_empty() {
        bail!("nothing checked");
    }
    Ok(done)
}

/// Every YAML and JSON file parses.
fn parse(d: &Deploy) -> Result<String> {
    for p in &d.files {
        match p.extension().and_then(|e| e.to_str()) {
            Some("yml" | "yaml") => {
                yaml_docs(p)?;
            }
            Some("json") => {
                serde_json::from_str::<Value>(&std::fs::read_to_string(p)?)
                    .with_context(|| format!("{} does not parse as JSON", p.display()))?;
            }
            _ => {}
        }
    }
    Ok(format!(
        "{} YAML/JSON files parse",
        d.files
            .iter()
            .filter(|p| matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yml" | "yaml" | "json")
            ))
            .count()
    ))
}
