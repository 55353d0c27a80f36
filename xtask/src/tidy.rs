//! Tidy checks that plain `cargo test` enforces.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// Dependencies used without their name in the source, and why.
    const USED_IMPLICITLY: &[(&str, &str, &str)] = &[
        // rmcp's `#[tool]` derive expands to `schemars::` paths in the using crate.
        ("im-mcp-api", "schemars", "the tool-schema derive"),
    ];

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .to_owned()
    }

    fn rust_sources(dir: &Path, out: &mut String) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                rust_sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }

    /// The names in a `[table]` of a Cargo.toml (`name.workspace = true` or `name = …`).
    fn deps(manifest: &str, table: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut inside = false;
        for line in manifest.lines() {
            let l = line.trim();
            if l.starts_with('[') {
                inside = l == table;
                continue;
            }
            if inside && !l.is_empty() && !l.starts_with('#') {
                let name = l.split(['=', '.']).next().unwrap_or("").trim().to_owned();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        }
        out
    }

    #[test]
    fn every_declared_dependency_is_used() {
        let root = root();
        let workspace = std::fs::read_to_string(root.join("Cargo.toml")).expect("manifest");
        let members: Vec<String> = workspace
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with('"') && l.ends_with("\","))
            .map(|l| l.trim_matches(|c| c == '"' || c == ',').to_owned())
            .collect();
        assert!(members.len() >= 10, "{members:?}");
        let mut unused = Vec::new();
        for m in &members {
            let dir = root.join(m);
            let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("member");
            let crate_name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let mut lib = String::new();
            rust_sources(&dir.join("src"), &mut lib);
            let mut all = lib.clone();
            for extra in ["tests", "benches", "examples"] {
                rust_sources(&dir.join(extra), &mut all);
            }
            for (table, text) in [("[dependencies]", &lib), ("[dev-dependencies]", &all)] {
                for d in deps(&manifest, table) {
                    let ident = d.replace('-', "_");
                    let used = [
                        format!("{ident}::"),
                        format!("use {ident}"),
                        format!("{ident} as "),
                        format!("extern crate {ident}"),
                    ]
                    .iter()
                    .any(|p| text.contains(p.as_str()));
                    let excused = USED_IMPLICITLY
                        .iter()
                        .any(|(c, dep, _)| *c == crate_name && *dep == d);
                    // A dev-dependency may be there for its features of a normal one.
                    let feature_only = table == "[dev-dependencies]"
                        && deps(&manifest, "[dependencies]").contains(&d);
                    if !used && !excused && !feature_only {
                        unused.push(format!("{m}: {table} {d}"));
                    }
                }
            }
        }
        assert!(
            unused.is_empty(),
            "declared but unused (remove them):\n{}",
            unused.join("\n")
        );
    }
}
