//! Around a binary's `main`: signals, a panic hook that never logs request data, logging, the
//! runtime and exit codes.

pub use im_edge::listener::shutdown_signal;

/// Reload the configuration on every SIGHUP, logging what changed or why nothing did.
pub async fn reload_on_sighup(reloader: crate::reload::Reloader) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: reload with POST /admin/reload");
            return;
        };
        while hups.recv().await.is_some() {
            match reloader.reload().await {
                Ok(changed) => tracing::info!(?changed, "SIGHUP: configuration reloaded"),
                Err(e) => tracing::warn!(error = %e, "SIGHUP: configuration reload refused"),
            }
        }
    }
    #[cfg(not(unix))]
    drop(reloader);
}

/// A panic hook that logs where a panic happened but not its message: messages of panics in
/// request handling can quote request data (a slice of the caller's string), which must not reach
/// the logs. Panics are caught and answered as `internal` errors by the HTTP layer and the engine.
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map_or_else(
            || "unknown".to_owned(),
            |l| format!("{}:{}", l.file(), l.line()),
        );
        tracing::error!(location = %at, "panic (message withheld: it may quote request data)");
        eprintln!("panic at {at} (message withheld: it may quote request data)");
    }));
}

/// The body of a binary's `main`: a runtime of `workers` worker threads
/// ([`crate::cli::CommonArgs::worker_threads`]; one is the current-thread scheduler), `run`, and
/// the exit code (0; 1 when the runtime cannot start; 2 when `run` fails, after printing the
/// error chain as `name: …`).
pub fn main_with<E: std::fmt::Display>(
    name: &str,
    workers: u16,
    run: impl std::future::Future<Output = Result<(), E>>,
) -> std::process::ExitCode {
    quiet_panics();
    let rt = match runtime(workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(run) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// The runtime of `workers` worker threads: tokio's current-thread scheduler for one (every task
/// on the thread that runs `main`; a fifth less CPU per proxied request than a multi-thread
/// runtime of one worker, which hands tasks between that thread and its worker), else a
/// multi-thread runtime.
fn runtime(workers: u16) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(usize::from(workers));
        b
    };
    builder.enable_all().build()
}

/// Logs to stderr (stdout belongs to MCP's stdio transport), human or JSON, `RUST_LOG` or
/// `default_filter` as the filter; and the request-path spans to the OTLP endpoint of
/// `[tracing]`, when one is set. Keep the result until exit: dropping it flushes the traces.
pub fn telemetry(
    cfg: &crate::config::ImConfig,
    default_filter: &str,
) -> anyhow::Result<im_telemetry::Telemetry> {
    let settings = im_telemetry::Settings {
        log_format: match cfg.log_format {
            crate::config::LogFormat::Json => im_telemetry::LogFormat::Json,
            crate::config::LogFormat::Text => im_telemetry::LogFormat::Text,
        },
        default_filter: default_filter.to_owned(),
        otlp: cfg.tracing.otlp()?,
        traced_target: im_engine::TRACE_TARGET,
    };
    let telemetry = im_telemetry::init(&settings)?;
    if let Some(o) = &settings.otlp {
        tracing::info!(endpoint = %o.endpoint, sample_ratio = o.sample_ratio, "exporting traces over OTLP/HTTP");
    }
    Ok(telemetry)
}

#[cfg(test)]
mod tests {
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn one_worker_is_the_current_thread_scheduler_and_more_a_multi_thread_runtime() {
        for (workers, flavor) in [
            (0, RuntimeFlavor::CurrentThread),
            (1, RuntimeFlavor::CurrentThread),
            (2, RuntimeFlavor::MultiThread),
        ] {
            let rt = super::runtime(workers).expect("a runtime");
            let ran = rt.block_on(async {
                // A spawned task runs and the timer under test fires (both drivers are on).
                let task = tokio::spawn(async {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    tokio::runtime::Handle::current().runtime_flavor()
                });
                task.await.expect("the task ran")
            });
            assert_eq!(ran, flavor, "{workers} workers");
        }
    }
}
