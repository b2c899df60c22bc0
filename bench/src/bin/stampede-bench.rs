//! `stampede-bench`: the load generator. See `stampede-bench --help`.

use std::process::ExitCode;

use clap::Parser;
use stampede_bench::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("stampede-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = match runtime.block_on(cli::run(&cli)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("stampede-bench: {e}");
            return ExitCode::from(2);
        }
    };
    // Connections still held by detached tasks are dropped with the runtime, without waiting.
    runtime.shutdown_background();
    let json = serde_json::to_string_pretty(&report).expect("a report serialises");
    match cli.json.as_deref() {
        Some(path) if path.as_os_str() == "-" => println!("{json}"),
        Some(path) => {
            if let Err(e) = std::fs::write(path, format!("{json}\n")) {
                eprintln!("stampede-bench: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            print!("{}", report.table());
        }
        None => print!("{}", report.table()),
    }
    ExitCode::SUCCESS
}
