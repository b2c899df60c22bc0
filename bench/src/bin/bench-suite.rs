//! `bench-suite`: the reproducible benchmark (`bench/run.sh` runs it). See `bench-suite --help`.

use clap::Parser;
use stampede_bench::suite::{self, SuiteArgs};

fn main() -> std::process::ExitCode {
    suite::main_with(SuiteArgs::parse())
}
