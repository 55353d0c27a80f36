//! The configurations deploy/ ships load through im's own loader and validate.

use anyhow::Result;

use super::Deploy;
use super::load_config;

pub(super) fn check(d: &Deploy) -> Result<String> {
    // Configs load through im's own loader.
    load_config(
        "deploy/im.example.toml",
        &std::fs::read_to_string(d.dir.join("im.example.toml"))?,
        false,
    )?;
    load_config(
        "deploy/im.compose.toml",
        &std::fs::read_to_string(d.dir.join("im.compose.toml"))?,
        true,
    )?;
    Ok("im.example.toml and im.compose.toml load through im's config loader".into())
}
