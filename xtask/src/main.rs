//! Developer tasks: `cargo xtask <task>`. See `cargo xtask help`.

mod bench;
mod deploy;
mod sim;
mod tidy;

use anyhow::{Context, Result, bail};

const HELP: &str = "cargo xtask <task>

tasks:
  ci                                      what CI runs: fmt --check, clippy -D warnings, every test
  sim [--hours H] [--seed N] [--write]   the scheduling policy table (FIFO vs strict vs bounded)
                                          --write also stores it in benches/results/policy-table.md
  deploy-check                            check deploy/ statically (YAML/JSON, compose, dashboard metrics, Dockerfile, configs)
  bench [--quick] [--only overhead|scheduling|memory|batching|replicas] [--write]
                                         overhead (direct vs nginx vs im-http), scheduling end to end, memory;
                                          installs nginx-light and oha if missing; --write stores benches/results/bench.md
  load [--scenario normal|peak|sustained] [--users N] [--secs S] [--url URL --key KEY]
                                          the seeds' load scenarios (no Python needed); without --url it starts
                                          im-http --simulate
  help                                    this text
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("sim") => run_sim(&args[1..]),
        Some("ci") => run_ci(),
        Some("deploy-check") => run_deploy_check(),
        Some("bench") => run_bench(&args[1..]),
        Some("load") => run_load(&args[1..]),
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
    let (table, mut failures) = sim::table(hours, seed);
    let (fleet, fleet_failures) = sim::fleet_table(hours, seed);
    failures.extend(fleet_failures);
    let table = format!("{table}\n{fleet}");
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
    run_deploy_check()?;
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

fn run_bench(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    bench::ensure_tools()?;
    let mut out = String::new();
    let cmd = format!("cargo xtask bench{}", if quick { " --quick" } else { "" });
    out.push_str(&format!(
        "# im benchmarks\n\nCommand: `{cmd}`  \nMachine: {}  \nDate: {}\n\n",
        machine(),
        today()
    ));
    let only: String = flag(args, "--only", String::new())?;
    let part = |p: &str| only.is_empty() || only == p;
    let (secs, rounds) = if quick { (3, 1) } else { (5, 3) };
    if part("overhead") {
        bench::overhead::overhead(&mut out, secs, rounds)?;
    }
    print!("{out}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut more = String::new();
    let (hours, scale) = if quick { (0.25, 0.02) } else { (0.5, 0.02) };
    if part("scheduling") {
        rt.block_on(bench::scheduling::scheduling(
            &mut more, hours, scale, 0.9, 42,
        ))?;
    }
    if part("memory") {
        rt.block_on(bench::memory::memory(&mut more))?;
    }
    if part("batching") {
        rt.block_on(bench::batching::batching(
            &mut more,
            if quick { 3 } else { 10 },
        ))?;
    }
    if part("replicas") {
        rt.block_on(bench::replicas::replicas(
            &mut more,
            if quick { 5 } else { 15 },
        ))?;
    }
    print!("{more}");
    out.push_str(&more);
    if args.iter().any(|a| a == "--write") {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/results/bench.md");
        std::fs::write(&path, &out).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn run_load(args: &[String]) -> Result<()> {
    let scenarios: Vec<String> = match args.iter().position(|a| a == "--scenario") {
        Some(i) => vec![args.get(i + 1).context("--scenario needs a value")?.clone()],
        None => vec!["normal".into(), "peak".into(), "sustained".into()],
    };
    let users: usize = flag(args, "--users", 20)?;
    let secs: u64 = flag(args, "--secs", 30)?;
    let url: String = flag(args, "--url", String::new())?;
    let key: String = flag(args, "--key", bench::KEY.to_owned())?;
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
