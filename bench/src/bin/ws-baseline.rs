//! `ws-baseline`: the raw WebSocket broadcast server the benchmark measures as the ceiling.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;

/// A minimal WebSocket broadcast server: `/ws/<group>` joins a group, `?pub` joins as a
/// publisher; every message is framed once and written to every other member in batches.
#[derive(Parser, Debug)]
#[command(name = "ws-baseline", version)]
struct Args {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        eprintln!("ws-baseline: only loopback addresses are allowed, not {}", args.listen);
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ws-baseline: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(stampede_bench::baseline::run(args.listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ws-baseline: {e}");
            ExitCode::FAILURE
        }
    }
}
