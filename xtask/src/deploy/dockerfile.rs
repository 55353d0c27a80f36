//! The Dockerfile: builds (as released, without the simulator) and copies binaries that exist;
//! runs non-root; checks /health.

use anyhow::{Result, ensure};

use super::Deploy;
use super::workspace_bins;

pub(super) fn check(d: &Deploy) -> Result<String> {
    // Dockerfile: builds and copies binaries that exist; non-root; health check.
    let docker = std::fs::read_to_string(d.dir.join("Dockerfile"))?;
    let bins = workspace_bins(&d.root)?;
    let mut built = 0;
    let build_cmd: String = docker
        .split("cargo build")
        .skip(1)
        .map(|rest| rest.split("&&").next().unwrap_or_default().to_owned())
        .collect::<Vec<_>>()
        .join(" ");
    for w in build_cmd.split_whitespace().collect::<Vec<_>>().windows(2) {
        if w[0] == "-p" {
            ensure!(
                bins.contains(&format!("pkg:{}", w[1])),
                "Dockerfile builds package {}, which has no binary",
                w[1]
            );
            built += 1;
        }
    }
    for word in docker.split_whitespace() {
        if let Some(bin) = word.strip_prefix("target/release/") {
            ensure!(
                bins.contains(bin),
                "Dockerfile copies target/release/{bin}, which no package builds"
            );
        }
        if let Some(src) = word.strip_prefix("deploy/") {
            ensure!(
                d.dir.join(src).exists(),
                "Dockerfile copies deploy/{src}, which does not exist"
            );
        }
    }
    ensure!(built >= 2, "Dockerfile should build im-http and im-mcp");
    ensure!(
        build_cmd.contains("--no-default-features"),
        "Dockerfile must build the binaries as released: --no-default-features (no simulator inside)"
    );
    ensure!(
        docker.contains("USER ") && !docker.contains("USER root"),
        "Dockerfile must run as a non-root user"
    );
    let jobs_dir = docker
        .split_whitespace()
        .find_map(|w| w.strip_prefix("IM_JOBS_DIR="))
        .ok_or_else(|| anyhow::anyhow!("Dockerfile must set IM_JOBS_DIR (jobs are kept there)"))?;
    ensure!(
        docker.contains(&format!("VOLUME {jobs_dir}"))
            && docker.contains(&format!("chown 10001:10001 {jobs_dir}")),
        "Dockerfile: the jobs directory {jobs_dir} must be a VOLUME owned by the image's user"
    );
    ensure!(
        docker.contains("HEALTHCHECK") && docker.contains("/health"),
        "Dockerfile needs a HEALTHCHECK on /health"
    );
    ensure!(
        d.root.join(".dockerignore").exists(),
        ".dockerignore missing"
    );
    // jemalloc (im-http's allocator) is built from C with make, which Rust's slim images lack;
    // its build setting lives in .cargo/config.toml, which the build context must carry.
    let lock = std::fs::read_to_string(d.root.join("Cargo.lock"))?;
    if lock.contains("name = \"tikv-jemalloc-sys\"") {
        let builder = docker.split("\nFROM ").nth(1).unwrap_or_default();
        // The packages named by the builder's `apt-get install` commands.
        let installs_make = builder.split("apt-get install").skip(1).any(|rest| {
            let command = rest.split("&&").next().unwrap_or_default();
            command.split_whitespace().any(|w| w == "make")
        });
        ensure!(
            installs_make,
            "Dockerfile: the builder stage must install make (tikv-jemalloc-sys builds jemalloc with it)"
        );
        let ignored = std::fs::read_to_string(d.root.join(".dockerignore"))?;
        ensure!(
            !ignored
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == ".cargo"),
            ".dockerignore must not leave out .cargo (jemalloc's build setting is there)"
        );
    }
    Ok("Dockerfile builds and copies existing binaries as released (no simulator), runs non-root, keeps jobs in a volume, checks /health, installs make for jemalloc".into())
}
