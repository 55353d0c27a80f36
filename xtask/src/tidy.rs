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
            // A test may include a file of another crate's tests by path (one shared check).
            let included: Vec<String> = all
                .lines()
                .filter_map(|l| l.trim().strip_prefix("#[path = \""))
                .filter_map(|l| l.strip_suffix("\"]"))
                .map(str::to_owned)
                .collect();
            for path in included {
                if let Ok(text) = std::fs::read_to_string(dir.join("tests").join(&path)) {
                    all.push_str(&text);
                }
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

    /// The workspace's members, from its manifest.
    fn members(root: &Path) -> Vec<String> {
        let workspace = std::fs::read_to_string(root.join("Cargo.toml")).expect("manifest");
        workspace
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with('"') && l.ends_with("\","))
            .map(|l| l.trim_matches(|c| c == '"' || c == ',').to_owned())
            .collect()
    }

    /// Every file name under `dir`.
    fn file_names(dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                out.push(format!("{name}/"));
                file_names(&p, out);
            } else {
                out.push(name);
            }
        }
    }

    #[test]
    fn the_readme_and_the_codemap_match_the_tree() {
        let root = root();
        let members = members(&root);
        let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
        let arch = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE");
        let table: Vec<&str> = readme
            .lines()
            .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
            .filter(|p| p.starts_with("crates/") || p.starts_with("bins/") || *p == "xtask")
            .collect();
        let headings: Vec<&str> = arch
            .lines()
            .filter_map(|l| l.strip_prefix("### "))
            .collect();
        let mut wrong = Vec::new();
        for m in &members {
            if !table.contains(&m.as_str()) {
                wrong.push(format!("README's crate table lacks `{m}`"));
            }
            if !headings.iter().any(|h| h.contains(&format!("`{m}`"))) {
                wrong.push(format!(
                    "ARCHITECTURE.md's codemap has no heading for `{m}`"
                ));
            }
        }
        for t in &table {
            if !members.iter().any(|m| m == t) {
                wrong.push(format!(
                    "README's crate table names `{t}`, which is no member"
                ));
            }
        }
        // Each crate's section names only files and folders that exist in it.
        let sections: Vec<&str> = arch.split("\n### ").skip(1).collect();
        for section in sections {
            // A section ends where the next chapter (`## `) begins.
            let section = section.split("\n## ").next().unwrap_or(section);
            let heading = section.lines().next().unwrap_or("");
            let Some(m) = members.iter().find(|m| heading == format!("`{m}`")) else {
                continue;
            };
            let mut names = Vec::new();
            file_names(&root.join(m), &mut names);
            for token in section.split('`').skip(1).step_by(2) {
                let is_path = (token.ends_with(".rs") || token.ends_with('/'))
                    && !token.contains(' ')
                    && !token.starts_with("crates/")
                    && !token.starts_with("bins/");
                let name = token.rsplit('/').find(|s| !s.is_empty()).unwrap_or(token);
                let name = if token.ends_with('/') {
                    format!("{name}/")
                } else {
                    name.to_owned()
                };
                if is_path && !names.contains(&name) {
                    wrong.push(format!(
                        "ARCHITECTURE.md's `{m}` names `{token}`, which is not in it"
                    ));
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn the_crates_depend_on_each_other_as_the_layers_say() {
        let root = root();
        // (crate, what it must not depend on, why)
        let rules: &[(&str, &[&str], &str)] = &[
            (
                "crates/im-http-api",
                &[
                    "im-engine",
                    "localai-client",
                    "localai-sim",
                    "im-mcp-api",
                    "inference-queue",
                ],
                "a frontend runs everything through the service",
            ),
            (
                "crates/im-mcp-api",
                &[
                    "im-engine",
                    "localai-client",
                    "localai-sim",
                    "im-http-api",
                    "inference-queue",
                ],
                "a frontend runs everything through the service",
            ),
            (
                "crates/im-service",
                &[
                    "axum",
                    "hyper",
                    "http",
                    "reqwest",
                    "im-http-api",
                    "im-mcp-api",
                    "im-edge",
                ],
                "the service knows no transport",
            ),
            (
                "bins/im-fence",
                &["im-http-api", "im-service", "im-engine", "im-app"],
                "the gate is im-edge and a proxy, nothing of im's API",
            ),
            (
                "crates/inference-queue",
                &["tokio", "reqwest", "im-engine"],
                "the core does no IO",
            ),
        ];
        let mut wrong = Vec::new();
        for member in ["crates", "bins"].iter().flat_map(|d| {
            std::fs::read_dir(root.join(d))
                .into_iter()
                .flatten()
                .flatten()
        }) {
            let manifest =
                std::fs::read_to_string(member.path().join("Cargo.toml")).unwrap_or_default();
            if deps(&manifest, "[dependencies]")
                .iter()
                .any(|d| d == "im-testkit")
            {
                wrong.push(format!(
                    "{} depends on im-testkit: it is for tests only",
                    member.path().display()
                ));
            }
        }
        for (krate, forbidden, why) in rules {
            let manifest =
                std::fs::read_to_string(root.join(krate).join("Cargo.toml")).expect("manifest");
            for d in deps(&manifest, "[dependencies]") {
                if forbidden.contains(&d.as_str()) {
                    wrong.push(format!("{krate} depends on {d}: {why}"));
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    /// The functions of `dir`'s Rust files longer than `max` lines (a function's first line to
    /// the closing brace at its indentation).
    fn long_functions(dir: &Path, max: usize) -> Vec<String> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return out;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let mut i = 0;
            while i < lines.len() {
                let l = lines[i];
                let trimmed = l.trim_start();
                let is_fn = [
                    "fn ",
                    "pub fn ",
                    "pub(super) fn ",
                    "pub(crate) fn ",
                    "async fn ",
                    "pub(crate) async fn ",
                ]
                .iter()
                .any(|p| trimmed.starts_with(p));
                // A body, not a declaration: its signature ends with `{` (maybe lines later).
                let body_opens = (i..lines.len())
                    .take_while(|j| *j == i || !lines[*j].trim_end().ends_with(';'))
                    .find(|j| lines[*j].trim_end().ends_with('{'));
                if let (true, Some(open)) = (is_fn, body_opens) {
                    let indent = &l[..l.len() - trimmed.len()];
                    let close = format!("{indent}}}");
                    let end = (open + 1..lines.len())
                        .find(|j| lines[*j].starts_with(&close) && lines[*j].trim() == "}")
                        .unwrap_or(i);
                    if end - i + 1 > max {
                        out.push(format!(
                            "{}: {} ({} lines)",
                            p.display(),
                            trimmed,
                            end - i + 1
                        ));
                    }
                    i = end;
                }
                i += 1;
            }
        }
        out
    }

    #[test]
    fn no_function_of_the_driver_is_over_80_lines() {
        let long = long_functions(&root().join("crates/im-engine/src/driver"), 80);
        assert!(
            long.is_empty(),
            "split these by input:\n{}",
            long.join("\n")
        );
    }

    /// Every `.rs` file under a `tests/` folder of the workspace's members.
    fn test_files(root: &Path) -> Vec<PathBuf> {
        fn walk(dir: &Path, inside_tests: bool, out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let p = e.path();
                let name = e.file_name();
                if p.is_dir() && name != "target" && name != ".git" {
                    walk(&p, inside_tests || name == "tests", out);
                } else if inside_tests && p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        for top in ["crates", "bins", "tests", "xtask"] {
            walk(&root.join(top), top == "tests", &mut out);
        }
        out
    }

    #[test]
    fn tests_wait_for_events_and_sleep_only_where_time_is_under_test() {
        // A sleep that orders events passes on an idle machine and fails on a loaded one: tests
        // wait with `im_testkit` (a condition polled until a deadline). A sleep that is itself
        // the behaviour under test (a slow upstream, a stall past a lease, arrivals spread over
        // time) or virtual time on a paused clock says so within the two lines above it.
        let mut bare = Vec::new();
        let files = test_files(&root());
        assert!(files.len() > 20, "the walk finds the test files: {files:?}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                if !line.contains("sleep(") || line.trim_start().starts_with("//") {
                    continue;
                }
                let said = lines[i.saturating_sub(2)..=i]
                    .iter()
                    .any(|l| l.contains("under test") || l.contains("virtual time"));
                if !said {
                    bare.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
                }
            }
        }
        assert!(
            bare.is_empty(),
            "wait for the event (im_testkit::eventually/until), or say why the sleep is under \
             test:\n{}",
            bare.join("\n")
        );
    }
}
