//! The `softdirty` command-line tool.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use softdirty::mode::Mode;
use softdirty_trace::{parse, replay};

#[derive(Parser)]
#[command(
    name = "softdirty",
    version,
    about = "Precise, concurrent soft-dirty page tracking: a model of a Linux address space"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Replay trace files (../shared/spec/trace-format.md) and check their expectations.
    Replay {
        /// The trace files, replayed one after the other in this process; the exit status
        /// is the worst of theirs (the highest number).
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// Mode when the trace has no `mode` header.
        #[arg(long, default_value = "precise", value_parser = parse_mode)]
        mode: Mode,
        /// Report unexpected command errors as warnings (exit 0 if no expectation fails).
        #[arg(long)]
        allow_errors: bool,
        /// What to replay against: `model`, or real memory of this process with
        /// `kernel` (detects the flavour), `kernel=softdirty` or `kernel=uffd` (Linux;
        /// exit status 3 when the kernel or the permissions do not allow it).
        #[arg(long, default_value = "model", value_parser = parse_backend)]
        backend: replay::BackendChoice,
    },
    /// Live-migration pre-copy simulator: vCPU writers, VMA churn and a migration thread
    /// harvesting rounds, in precise and legacy mode (the default command: `softdirty`
    /// alone runs it with these defaults).
    Run(softdirty_cli::run::RunArgs),
    /// One seeded workload under every mode, side by side: false positives and negatives,
    /// VMA counts, tracking memory and operation costs.
    Compare(softdirty_cli::compare::CompareArgs),
    /// Marking and harvest benchmarks against vm-memory's AtomicBitmap (medians, ratios).
    Bench(softdirty_cli::bench::BenchArgs),
    /// Random traces dense in VMA splits and merges, run on the model and on the kernel
    /// (or the independent reference model) step by step; on a disagreement, shrink to a
    /// minimal trace, write it, exit 1.
    Fuzz(softdirty_cli::fuzz::FuzzArgs),
    /// The seed thread's scenario in every implemented mode (legacy, sticky, nomerge,
    /// precise, regions): pages reported soft-dirty that were never written since the last
    /// clear.
    Demo,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

fn parse_backend(s: &str) -> Result<replay::BackendChoice, String> {
    s.parse()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // No subcommand: the main job with its built-in defaults, exactly as `softdirty run`.
    let cmd = match cli.cmd {
        Some(c) => c,
        None => match Cli::parse_from(["softdirty", "run"]).cmd {
            Some(c) => c,
            None => return ExitCode::from(2),
        },
    };
    match cmd {
        Cmd::Replay {
            files,
            mode,
            allow_errors,
            backend,
        } => {
            let opts = replay::Options {
                mode,
                allow_errors,
                backend,
            };
            let mut worst = 0u8;
            let mut statuses = Vec::with_capacity(files.len());
            for file in &files {
                let status = replay_one(file, &opts);
                worst = worst.max(status);
                statuses.push(status);
            }
            if files.len() > 1 {
                let count = |s: u8| statuses.iter().filter(|&&x| x == s).count();
                println!(
                    "{} files: {} passed, {} failed, {} malformed, {} backend unavailable (exit {worst})",
                    files.len(),
                    count(0),
                    count(1),
                    count(2),
                    count(3)
                );
            }
            ExitCode::from(worst)
        }
        Cmd::Run(args) => softdirty_cli::run::main(&args),
        Cmd::Bench(args) => softdirty_cli::bench::main(&args),
        Cmd::Compare(args) => softdirty_cli::compare::main(&args),
        Cmd::Fuzz(args) => softdirty_cli::fuzz::main(&args),
        Cmd::Demo => {
            softdirty_demo();
            ExitCode::SUCCESS
        }
    }
}

/// Replays one trace file; its exit status (0 passed, 1 failed, 2 malformed or unreadable,
/// 3 backend unavailable).
fn replay_one(file: &std::path::Path, opts: &replay::Options) -> u8 {
    let name = file.display().to_string();
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{name}: {e}");
            return 2;
        }
    };
    let trace = match parse::parse_bytes(&bytes) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{name}:{e}");
            return 2;
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut err = std::io::stderr();
    let summary = replay::replay(&trace, &name, opts, &mut out, &mut err);
    let _ = out.flush();
    summary.exit_status(opts.allow_errors) as u8
}

fn softdirty_demo() {
    use softdirty::mm::{AddressSpace, Placement};
    use softdirty::prot::Prot;
    const P: u64 = 4096;
    println!("The seed thread's scenario: 48 written pages, clear_refs, then a new 16-page mapping right after them.");
    println!(
        "{:<8} {:>6} {:>22} {:>14}",
        "mode", "VMAs", "soft-dirty after mmap", "false positives"
    );
    for mode in [
        Mode::Legacy,
        Mode::Sticky,
        Mode::Nomerge,
        Mode::Precise,
        Mode::Regions,
    ] {
        let mm = AddressSpace::new(mode);
        let a = 0x20_0000_0000;
        mm.mmap(a, 48 * P, Prot::RW, false, Placement::NoReplace)
            .expect("mmap");
        mm.write(a, 48 * P).expect("write");
        mm.clear_refs(4).expect("clear_refs");
        mm.mmap(a + 48 * P, 16 * P, Prot::RW, false, Placement::NoReplace)
            .expect("mmap");
        let dirty: u64 = mm
            .softdirty_runs(a, 64 * P)
            .iter()
            .map(|(s, e)| e - s)
            .sum();
        let fp = mm
            .softdirty_runs(a, 48 * P)
            .iter()
            .map(|(s, e)| e - s)
            .sum::<u64>();
        println!(
            "{:<8} {:>6} {:>22} {:>14}",
            mode.name(),
            mm.vma_count(a, 64 * P),
            dirty,
            fp
        );
    }
}
