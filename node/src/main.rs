//! The `stampede` binary: load the configuration and the files it names, start tracing, bind,
//! run until a signal. `stampede check-config` stops after the checks and prints the effective
//! configuration instead.

use stampede::config::{Config, ConfigError, Loaded, Mode};

fn main() -> std::process::ExitCode {
    let Loaded { config, mode, warnings } = match Config::load() {
        Ok(loaded) => loaded,
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("stampede: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // The users file, keys, certificate and Redis's CA are checked before any socket opens;
    // `run` loads them again (cheaply) for itself.
    if let Err(e) = stampede::Security::load(&config) {
        eprintln!("stampede: {e}");
        return std::process::ExitCode::from(2);
    }
    if let Mode::CheckConfig { effective } = mode {
        for warning in &warnings {
            eprintln!("stampede: warning: {warning}");
        }
        print!("{effective}");
        return std::process::ExitCode::SUCCESS;
    }
    stampede::logs::init(config.log_format);
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = config.worker_threads {
        runtime.worker_threads(threads);
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("stampede: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listeners = stampede::Listeners::bind(&config).await?;
        // Boxed: the whole node's future (over 16 KiB) is awaited once.
        Box::pin(stampede::run(config, listeners, shutdown_signal())).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "stampede stopped");
            eprintln!("stampede: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT. (SIGHUP reloads files: `stampede::run` answers it.)
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
