//! `softdirty compare`: one seeded workload under every mode, side by side.
//!
//! (Being written: see issue 7.)

use std::process::ExitCode;

/// Options of `softdirty compare`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CompareArgs {}

/// Runs `softdirty compare` with `args`.
pub fn main(args: &CompareArgs) -> ExitCode {
    let _ = args;
    ExitCode::SUCCESS
}
