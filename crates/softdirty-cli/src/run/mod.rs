//! `softdirty run`: a multithreaded live-migration pre-copy simulator (the main job).
//!
//! A simulated guest ([`crate::workload::guest_layout`]) is mapped into an
//! [`AddressSpace`](softdirty::mm::AddressSpace); `--vcpus` writer threads dirty it with the chosen access pattern, a
//! churn thread changes its VMA layout the way allocators do, and this thread migrates it:
//! a bulk copy of everything mapped, then pre-copy rounds (harvest the soft-dirty pages
//! with a get-and-clear scan, "send" them over a link of `--bandwidth`, repeat) until the
//! dirty set is small enough to stop the guest (`--downtime-ms` worth of link time) or
//! `--rounds` is reached; then the vCPUs stop and the stop-and-copy set is sent.
//!
//! ## Time
//! The link is simulated, the writers are real: each vCPU is worth `--dirty-rate` writes
//! per simulated second, so sending `n` pages lets the writers perform
//! `n * 4096 / bandwidth * dirty_rate * vcpus` writes (flat out, in real time) before
//! the next harvest. The churn thread is paced on the same clock (`--churn-rate`
//! operations per simulated second). `--duration` bounds the real time of the rounds.
//!
//! ## Modes and false positives
//! `precise` harvests with the lock-free get-and-clear scan while the writers keep
//! running. `legacy` has no way to clear `VM_SOFTDIRTY` but `clear_refs 4`, which would
//! lose writes racing it, so its harvest freezes the vCPUs and the churn thread (a
//! consistent cut), scans-and-clears, and writes `clear_refs 4`. The legacy run also
//! drives a shadow precise address space with the very same operations and harvests it at
//! the same cuts: the pages legacy reports that the shadow does not are its false
//! positives, measured page by page (and the reverse, its false negatives).
//!
//! ## Files
//! `args.rs` holds the options and their checks, `report.rs` the report's types,
//! `simulate.rs` the migration (harvest, rounds, stop-and-copy), `guest.rs` the threads
//! it runs against (vCPU writers, churn), `output.rs` the tables and the SVG chart,
//! `scaling.rs` `--scaling`; this file the entry point, [`main`]. The page-range
//! arithmetic of the harvested sets is the crate's `ranges.rs` (shared with `compare`).

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

mod args;
mod content;
mod guest;
mod output;
mod report;
mod scaling;
mod simulate;

pub use args::{parse_size, validate, HarvestSel, ModeSel, RunArgs};
pub use output::{plot, print_report};
pub use report::{Config, ModeReport, RingReport, Round, RunReport};
pub use scaling::{scaling, ScalingRow};
pub use simulate::{harvest, layout_for, simulate};

use scaling::print_scaling;
use simulate::simulate_with;

fn write_json<T: serde::Serialize>(v: &T, path: &Path) -> Result<(), String> {
    let s = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    crate::outpath::write_text(path, &(s + "\n"))
}

/// Runs `softdirty run` with `args`.
pub fn main(args: &RunArgs) -> ExitCode {
    if let Err(e) = validate(args) {
        eprintln!("error: {e}\n\nFor more information, try '--help'.");
        return ExitCode::from(2);
    }
    // Output files are opened before any work, so that a bad path fails at once.
    for (flag, p) in [("--json", &args.json), ("--plot", &args.plot)] {
        if let Some(p) = p {
            if let Err(e) = crate::outpath::check_writable(flag, p) {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let to_stdout =
        |p: &Option<std::path::PathBuf>| p.as_deref().is_some_and(crate::outpath::is_stdout);
    let tables = !args.quiet && !to_stdout(&args.json) && !to_stdout(&args.plot);
    let stdout = std::io::stdout();
    if args.scaling {
        let rows = scaling(args);
        if tables {
            let _ = print_scaling(&rows, args, &mut stdout.lock());
        }
        if let Some(p) = &args.json {
            if let Err(e) = write_json(&rows, p) {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    let show = !args.quiet && std::io::stderr().is_terminal();
    let report = match simulate_with(args, show) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if tables {
        let mut out = stdout.lock();
        let _ = print_report(&report, &mut out);
        let _ = out.flush();
    }
    if let Some(p) = &args.json {
        if let Err(e) = write_json(&report, p) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(p) = &args.plot {
        if let Err(e) = plot(&report, p) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
