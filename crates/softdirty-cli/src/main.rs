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
        /// is the worst of theirs (the highest number). `-` is standard input.
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
    /// Run a real program under ptrace and write its address-space history as a trace v2:
    /// every layout call with the kernel's result, and the pages it wrote, from the
    /// kernel's userfaultfd write-protect (x86-64 Linux 6.7+).
    Record(softdirty_cli::record::RecordArgs),
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
        Cmd::Record(args) => softdirty_cli::record::main(&args),
        Cmd::Demo => {
            softdirty_demo();
            ExitCode::SUCCESS
        }
    }
}

/// Replays one trace file; its exit status (0 passed, 1 failed, 2 malformed or unreadable,
/// 3 backend unavailable). `-` is standard input.
///
/// The file is read twice and never held: the first pass checks every line (nothing
/// runs if one is malformed, as the contract says), the second runs it. A regular file is
/// read again through the same descriptor, from its start; anything else (standard
/// input, a pipe, a character device such as `/dev/stdin`) cannot be read twice, so the
/// first pass copies what it reads into an anonymous temporary file, which the second
/// pass reads. Reading stops at the first malformed line (a line that is not UTF-8,
/// holds a control byte or is longer than `parse::MAX_LINE_BYTES`), so `/dev/zero` or an
/// endless line fails at once with `FILE:LINE:COL`.
fn replay_one(file: &std::path::Path, opts: &replay::Options) -> u8 {
    use std::io::BufReader;
    let name = file.display().to_string();
    let fail = |e: parse::ReadError| {
        eprintln!("{}", e.in_file(&name));
        2
    };
    let io = parse::ReadError::Io;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut err = std::io::stderr();
    let mut spooled = |input: &mut dyn std::io::Read| {
        let (header, spool) = spool_and_validate(input)?;
        let mut src = parse::StatementReader::new(BufReader::new(spool));
        Ok(replay::replay_source(
            &mut src, header, &name, opts, &mut out, &mut err,
        ))
    };
    let summary = if file.as_os_str() == "-" {
        match spooled(&mut std::io::stdin().lock()) {
            Ok(s) => s,
            Err(e) => return fail(e),
        }
    } else {
        let f = match std::fs::File::open(file) {
            Ok(f) => f,
            Err(e) => return fail(io(e)),
        };
        let regular = match f.metadata() {
            Ok(m) => m.file_type().is_file(),
            Err(e) => return fail(io(e)),
        };
        let r = if regular {
            replay::replay_reader(BufReader::new(f), &name, opts, &mut out, &mut err)
        } else {
            spooled(&mut { f })
        };
        match r {
            Ok(s) => s,
            Err(e) => return fail(e),
        }
    };
    let _ = out.flush();
    summary.exit_status(opts.allow_errors) as u8
}

/// The first pass of a replay of an input that cannot be read twice: checks every line
/// of `input` while copying it into an anonymous temporary file; returns the `mode`
/// header and the copy, at its start.
///
/// The copy is `tempfile::tempfile()`: on Linux an `O_TMPFILE` file in the temporary
/// directory (else one created and unlinked at once), so it has no name, is never left
/// behind, even when the process is killed, and lives on the temporary directory's
/// filesystem, not in this process's memory (a `memfd` would be shmem: RAM or swap).
fn spool_and_validate(
    input: impl std::io::Read,
) -> Result<(Option<softdirty::mode::Mode>, std::fs::File), parse::ReadError> {
    use std::io::{BufReader, Seek, SeekFrom};
    let io = parse::ReadError::Io;
    let spool = tempfile::tempfile().map_err(io)?;
    let mut tee = Tee {
        input,
        copy: std::io::BufWriter::new(spool),
    };
    let header = parse::StatementReader::new(BufReader::new(&mut tee)).validate()?;
    let mut spool = tee.copy.into_inner().map_err(|e| io(e.into_error()))?;
    spool.seek(SeekFrom::Start(0)).map_err(io)?;
    Ok((header, spool))
}

/// A reader that writes what it reads to `copy`.
struct Tee<R, W> {
    input: R,
    copy: W,
}

impl<R: std::io::Read, W: Write> std::io::Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.input.read(buf)?;
        self.copy.write_all(buf.get(..n).unwrap_or_default())?;
        Ok(n)
    }
}

fn softdirty_demo() {
    use softdirty::mm::{AddressSpace, Placement, Sharing};
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
        mm.mmap(a, 48 * P, Prot::RW, Sharing::Private, Placement::NoReplace)
            .expect("mmap");
        mm.write(a, 48 * P).expect("write");
        mm.clear_refs(4).expect("clear_refs");
        mm.mmap(
            a + 48 * P,
            16 * P,
            Prot::RW,
            Sharing::Private,
            Placement::NoReplace,
        )
        .expect("mmap");
        let dirty: u64 = mm
            .softdirty_runs(a, 64 * P)
            .iter()
            .map(|r| r.end - r.start)
            .sum();
        let fp = mm
            .softdirty_runs(a, 48 * P)
            .iter()
            .map(|r| r.end - r.start)
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
