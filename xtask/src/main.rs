//! Developer tasks: `cargo xtask <task>`. See `cargo xtask help`.

mod deploy;
mod sim;

use anyhow::{Context, Result, bail};

const HELP: &str = "cargo xtask <task>

tasks:
  ci                                      what CI runs: fmt --check, clippy -D warnings, every test
  sim [--hours H] [--seed N] [--write]   the scheduling policy table (FIFO vs strict vs bounded)
                                          --write also stores it in benches/results/policy-table.md
  deploy-check                            check deploy/ statically (YAML/JSON, compose, dashboard metrics, Dockerfile, configs)
  help                                    this text
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("sim") => run_sim(&args[1..]),
        Some("ci") => run_ci(),
        Some("deploy-check") => run_deploy_check(),
        Some("help") | None => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => bail!("unknown task {other:?}\n\n{HELP}"),
    }
}

fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T> {
    match args.iter().position(|a| a == name) {
        Some(i) => {
            let v = args
                .get(i + 1)
                .with_context(|| format!("{name} needs a value"))?;
            v.parse()
                .map_err(|_| anyhow::anyhow!("{name}: cannot parse {v:?}"))
        }
        None => Ok(default),
    }
}

fn run_sim(args: &[String]) -> Result<()> {
    let hours: f64 = flag(args, "--hours", 8.0)?;
    let seed: u64 = flag(args, "--seed", 42)?;
    let started = std::time::Instant::now();
    let (table, failures) = sim::table(hours, seed);
    let elapsed = started.elapsed();
    print!("{table}");
    println!("(simulated in {:.2} s of wall time)", elapsed.as_secs_f64());
    if args.iter().any(|a| a == "--write") {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let path = root.join("benches/results/policy-table.md");
        let doc = format!(
            "# Scheduling policy table\n\nCommand: `cargo xtask sim --hours {hours} --seed {seed} --write`  \n\
             Machine: 2-core x86_64 build box, 24 GiB (a deterministic simulation: the figures do not depend on the machine).\n\n{table}"
        );
        std::fs::write(&path, doc).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if !failures.is_empty() {
        bail!("targets missed: {}", failures.join("; "));
    }
    Ok(())
}

/// `cargo xtask ci`: what CI runs. Formatting, lints as errors, then every test.
fn run_ci() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["test", "--workspace"])?;
    Ok(())
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!("+ cargo {}", args.join(" "));
    let status = std::process::Command::new(cargo)
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn run_deploy_check() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for line in deploy::check(&root)? {
        println!("deploy-check: ok: {line}");
    }
    Ok(())
}
