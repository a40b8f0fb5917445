//! `softdirty bench`: the harvest and marking comparisons against the baselines,
//! in-process, as a table or JSON.
//!
//! (Being written: see issue 4.)

use std::process::ExitCode;

/// Options of `softdirty bench`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BenchArgs {}

/// Runs `softdirty bench` with `args`.
pub fn main(args: &BenchArgs) -> ExitCode {
    let _ = args;
    ExitCode::SUCCESS
}
