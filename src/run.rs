//! `softdirty run`: a multithreaded live-migration pre-copy simulator (the main job).
//!
//! (Being written: see issue 8.)

use std::process::ExitCode;

/// Options of `softdirty run`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunArgs {}

/// Runs `softdirty run` with `args`.
pub fn main(args: &RunArgs) -> ExitCode {
    let _ = args;
    ExitCode::SUCCESS
}
