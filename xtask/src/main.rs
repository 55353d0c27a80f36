//! Developer tasks: `cargo xtask <task>`. See `cargo xtask help`.

mod bench;
mod deploy;
mod fairness;
mod prediction;
mod prefix;
mod sim;
mod tidy;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

/// Developer tasks: `cargo xtask <task>` (`cargo xtask <task> --help` for each).
#[derive(Parser, Debug)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// What CI runs: fmt --check, clippy -D warnings, the docs without a broken link,
    /// deploy-check, the release build without the simulator, every test.
    Ci,
    /// The scheduling policy table (FIFO vs strict vs bounded, and the fleet table).
    Sim(SimArgs),
    /// Check deploy/ statically (YAML/JSON, compose, dashboard metrics, Dockerfile, configs, k8s).
    DeployCheck,
    /// Benchmarks: overhead (direct vs nginx vs im-http), scheduling end to end, memory,
    /// batching, replicas. Installs nginx-light and oha when missing.
    Bench(BenchArgs),
    /// The seeds' load scenarios against an im-http (without --url it starts im-http --simulate).
    Load(LoadArgs),
}

#[derive(clap::Args, Debug)]
struct SimArgs {
    /// Simulated hours per trace.
    #[arg(long, default_value_t = 8.0)]
    hours: f64,
    /// The traces' seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Also store the tables in benches/results/policy-table.md.
    #[arg(long, conflicts_with = "only")]
    write: bool,
    /// Print one table only.
    #[arg(long, value_enum)]
    only: Option<SimPart>,
}

/// A table of `cargo xtask sim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SimPart {
    Policy,
    Fleet,
    Fairness,
    Prediction,
    Prefix,
}

/// A part of `cargo xtask bench`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BenchPart {
    Overhead,
    Instructions,
    Scheduling,
    Memory,
    Batching,
    Replicas,
    Prefix,
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Shorter runs (one round).
    #[arg(long)]
    quick: bool,
    /// Run one part only.
    #[arg(long, value_enum)]
    only: Option<BenchPart>,
    /// Also store the results in benches/results/bench.md.
    #[arg(long)]
    write: bool,
}

/// A load scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Normal,
    Peak,
    Sustained,
}

#[derive(clap::Args, Debug)]
struct LoadArgs {
    /// One scenario (default: all three).
    #[arg(long, value_enum)]
    scenario: Option<Scenario>,
    /// Simulated users.
    #[arg(long, default_value_t = 20)]
    users: usize,
    /// Seconds per scenario.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// An im-http to load (default: start one with its simulator).
    #[arg(long)]
    url: Option<String>,
    /// Its API key.
    #[arg(long, default_value = bench::KEY)]
    key: String,
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Sim(a) => run_sim(&a),
        Task::Ci => run_ci(),
        Task::DeployCheck => run_deploy_check(),
        Task::Bench(a) => run_bench(&a),
        Task::Load(a) => run_load(&a),
    }
}

fn run_sim(args: &SimArgs) -> Result<()> {
    let (hours, seed) = (args.hours, args.seed);
    let started = std::time::Instant::now();
    let wanted = |part: SimPart| args.only.is_none_or(|o| o == part);
    let mut failures = Vec::new();
    let mut part = |part: SimPart, t: fn(f64, u64) -> (String, Vec<String>)| {
        if !wanted(part) {
            return String::new();
        }
        let (table, missed) = t(hours, seed);
        failures.extend(missed);
        table
    };
    let policy = part(SimPart::Policy, sim::table);
    let fleet = part(SimPart::Fleet, sim::fleet_table);
    let fairness = part(SimPart::Fairness, fairness::table);
    let priority = part(SimPart::Fairness, fairness::priority_table);
    let prediction = part(SimPart::Prediction, prediction::table);
    let refusal = part(SimPart::Prediction, prediction::refusal_table);
    let prefix = part(SimPart::Prefix, prefix::table);
    let table = format!("{policy}\n{fleet}{fairness}{priority}{prediction}{refusal}{prefix}");
    let elapsed = started.elapsed();
    print!("{table}");
    println!("(simulated in {:.2} s of wall time)", elapsed.as_secs_f64());
    if args.write {
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

/// `cargo xtask ci`: what CI runs. Formatting, lints as errors, the static deploy checks, then
/// every test.
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
    // The crates' documentation is their API for embedders: no broken or private links.
    cargo_with(
        &["doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    run_deploy_check()?;
    released_without_the_simulator()?;
    cargo(&["test", "--workspace"])?;
    Ok(())
}

/// The workspace's root.
fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where [`released_without_the_simulator`] builds, under the root.
const RELEASED_TARGET: &str = "target/released";

/// The binaries as released (`--no-default-features`): they build without the simulator
/// (`cargo tree` shows none), and `im-http --simulate` is refused with exit 2 and how to get it.
fn released_without_the_simulator() -> Result<()> {
    // In a target directory of their own: built into `target/debug`, they would replace the
    // binaries the tests run (cargo does not copy a fresh binary back over the other build's).
    cargo(&[
        "build",
        "-p",
        "im-http",
        "-p",
        "im-mcp",
        "--no-default-features",
        "--target-dir",
        &root().join(RELEASED_TARGET).to_string_lossy(),
    ])?;
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let tree = std::process::Command::new(&cargo_bin)
        .args([
            "tree",
            "-p",
            "im-http",
            "-e",
            "normal",
            "--no-default-features",
        ])
        .output()
        .context("cargo tree")?;
    let tree = String::from_utf8_lossy(&tree.stdout);
    if tree.contains("localai-sim") {
        bail!("im-http built as released depends on localai-sim:\n{tree}");
    }
    let bin = root().join(RELEASED_TARGET).join("debug/im-http");
    let out = std::process::Command::new(&bin)
        .arg("--simulate")
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let said = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(2) || !said.contains("simulate") {
        bail!(
            "im-http without the simulator answered --simulate with {:?}: {said}",
            out.status
        );
    }
    eprintln!("released binaries: no simulator inside; --simulate refused with exit 2");
    // Nearly 2 GB that nothing after this check reads: the tests run the default build.
    std::fs::remove_dir_all(root().join(RELEASED_TARGET))
        .with_context(|| format!("removing {RELEASED_TARGET}"))?;
    Ok(())
}

fn cargo(args: &[&str]) -> Result<()> {
    cargo_with(args, &[])
}

fn cargo_with(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!("+ cargo {}", args.join(" "));
    let status = std::process::Command::new(cargo)
        .args(args)
        .envs(env.iter().copied())
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

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024 / 1024);
    format!("{cores} cores ({cpu}), {mem} GiB RAM, Linux")
}

fn today() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn run_bench(args: &BenchArgs) -> Result<()> {
    let quick = args.quick;
    bench::ensure_tools()?;
    let mut out = String::new();
    let cmd = format!("cargo xtask bench{}", if quick { " --quick" } else { "" });
    out.push_str(&format!(
        "# im benchmarks\n\nCommand: `{cmd}`  \nMachine: {}  \nDate: {}\n\n",
        machine(),
        today()
    ));
    let part = |p: BenchPart| args.only.is_none_or(|o| o == p);
    let (secs, rounds) = if quick { (3, 1) } else { (5, 3) };
    if part(BenchPart::Overhead) {
        bench::overhead::overhead(&mut out, secs, rounds)?;
        bench::overhead::own_core(&mut out, secs, rounds)?;
        bench::overhead::allocations(&mut out, if quick { 10_000 } else { 50_000 })?;
    }
    if part(BenchPart::Instructions) {
        bench::instructions::instructions(&mut out, if quick { 1_000 } else { 3_000 })?;
    }
    print!("{out}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut more = String::new();
    let (hours, scale) = if quick { (0.25, 0.02) } else { (0.5, 0.02) };
    if part(BenchPart::Scheduling) {
        rt.block_on(bench::scheduling::scheduling(
            &mut more, hours, scale, 0.9, 42,
        ))?;
    }
    if part(BenchPart::Memory) {
        rt.block_on(bench::memory::memory(&mut more))?;
    }
    if part(BenchPart::Batching) {
        rt.block_on(bench::batching::batching(
            &mut more,
            if quick { 3 } else { 10 },
        ))?;
    }
    if part(BenchPart::Replicas) {
        rt.block_on(bench::replicas::replicas(
            &mut more,
            if quick { 5 } else { 15 },
        ))?;
    }
    if part(BenchPart::Prefix) {
        // Its own file: it compares placements, not im against the alternatives.
        let mut p = String::new();
        rt.block_on(bench::prefix::prefix(
            &mut p,
            if quick { 6 } else { 12 },
            if quick { 4 } else { 6 },
        ))?;
        print!("{p}");
        if args.write {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../benches/results/prefix.md");
            std::fs::write(&path, format!("# Prefix-aware placement\n\nCommand: `cargo xtask bench --only prefix --write`\n\n{p}"))
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    print!("{more}");
    out.push_str(&more);
    if args.write && args.only != Some(BenchPart::Prefix) {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/results/bench.md");
        std::fs::write(&path, &out).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn run_load(args: &LoadArgs) -> Result<()> {
    let scenarios: Vec<&str> = match args.scenario {
        Some(Scenario::Normal) => vec!["normal"],
        Some(Scenario::Peak) => vec!["peak"],
        Some(Scenario::Sustained) => vec!["sustained"],
        None => vec!["normal", "peak", "sustained"],
    };
    let (users, secs, key) = (args.users, args.secs, args.key.clone());
    let url = args.url.clone().unwrap_or_default();
    let _own = if url.is_empty() {
        let ok = std::process::Command::new("cargo")
            .args(["build", "--release", "-p", "im-http"])
            .status()?
            .success();
        if !ok {
            bail!("release build failed");
        }
        Some(bench::load::start_simulated_im(0.1)?)
    } else {
        None
    };
    let url = _own.as_ref().map_or(url, |(_, u)| u.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut out = String::from(
        "| scenario | users | seconds | requests | req/s | p50 ms | p95 ms | p99 ms | failures |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for s in &scenarios {
        rt.block_on(bench::load::load(&mut out, &url, &key, s, users, secs))?;
    }
    print!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use clap::error::ErrorKind;

    use super::Cli;

    #[test]
    fn every_task_has_help_and_unknown_flags_are_refused() {
        for task in ["ci", "sim", "deploy-check", "bench", "load"] {
            let e = Cli::try_parse_from(["xtask", task, "--help"]).expect_err("help");
            assert_eq!(e.kind(), ErrorKind::DisplayHelp, "{task} --help");
            let e = Cli::try_parse_from(["xtask", task, "--frobnicate"]).expect_err("refused");
            assert_eq!(e.kind(), ErrorKind::UnknownArgument, "{task} --frobnicate");
        }
        assert!(Cli::try_parse_from(["xtask", "bench", "--only", "memory", "--quick"]).is_ok());
        let e = Cli::try_parse_from(["xtask", "bench", "--only", "nothing"]).expect_err("refused");
        assert_eq!(e.kind(), ErrorKind::InvalidValue);
        assert!(Cli::try_parse_from(["xtask", "frobnicate"]).is_err());
    }
}
