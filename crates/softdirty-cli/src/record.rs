//! `softdirty record`: runs a real program and writes its address-space history as a
//! trace v2 (the recorder is `softdirty::kernel::record`; this is its command line and its
//! output file).
//!
//! The trace is written to a temporary file beside `--out` and renamed over it only when
//! the recording is complete, with its header first: a failure leaves no file, and a
//! program killed mid-recording leaves a valid trace whose header says it was cut.

use std::ffi::OsString;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use softdirty::kernel::record::{self, Event, Expectation, Options, RecordError, Source, Summary};
use softdirty::mode::Mode;

/// `softdirty record` arguments.
#[derive(clap::Args, Debug)]
pub struct RecordArgs {
    /// Where to write the trace (default: `PROGRAM.trace` in the current directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Milliseconds between harvest points (`scan` + `clear_refs 4` in every space).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub interval: u64,
    /// Kill the program after this many seconds; the trace says it was cut.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub max_seconds: Option<u64>,
    /// The kernel's write tracking to read: `softdirty` (CONFIG_MEM_SOFT_DIRTY; the trace
    /// then holds the kernel's answers as `expect softdirty` lines and checks itself in
    /// legacy mode) or `uffd` (userfaultfd async write-protect, Linux 6.7+). Default:
    /// softdirty where the kernel has it, else uffd.
    #[arg(long, value_parser = parse_source)]
    pub source: Option<Source>,
    /// After recording, replay the trace in this mode and exit 1 unless every
    /// expectation holds (`legacy` on the soft-dirty source checks the model against the
    /// kernel's own answers).
    #[arg(long, value_parser = |s: &str| s.parse::<Mode>())]
    pub verify: Option<Mode>,
    /// The program and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub program: Vec<OsString>,
}

fn parse_source(s: &str) -> Result<Source, String> {
    match s {
        "softdirty" => Ok(Source::SoftDirty),
        "uffd" => Ok(Source::Uffd),
        _ => Err(format!("`{s}`: the source is `softdirty` or `uffd`")),
    }
}

/// The header of a recorded trace: what was recorded, how, and what could not be.
pub fn header(args: &[OsString], interval_ms: u64, sum: &Summary) -> String {
    let mut h = String::new();
    let prog: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().replace(['\n', '\r'], " "))
        .collect();
    // SAFETY: utsname is plain data; uname fills it.
    let kernel = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) == 0 {
            let s = |f: &[libc::c_char]| {
                f.iter()
                    .take_while(|&&c| c != 0)
                    .map(|&c| c as u8 as char)
                    .collect::<String>()
            };
            format!("{} {} ({})", s(&u.sysname), s(&u.release), s(&u.machine))
        } else {
            "unknown".into()
        }
    };
    let calls: Vec<String> = sum.calls.iter().map(|(k, v)| format!("{k} {v}")).collect();
    h.push_str("# softdirty record: a trace v2 of a real program's address-space history\n");
    h.push_str(&format!("# program: {}\n", prog.join(" ")));
    h.push_str(&format!("# kernel: {kernel}\n"));
    match sum.source {
        Some(Source::SoftDirty) => h.push_str(&format!(
            "# writes: the kernel's PTE soft-dirty bits (/proc/PID/pagemap), read at the entry of \
             every layout call and every {interval_ms} ms, each read followed by `clear_refs 4`; \
             {} `expect softdirty` lines hold the kernel's answers (replay in legacy mode \
             checks them)\n",
            sum.expectations
        )),
        _ => h.push_str(&format!(
            "# writes: the kernel's userfaultfd async write-protect (PAGEMAP_SCAN, PAGE_IS_WRITTEN), \
             harvested at the entry of every layout call and every {interval_ms} ms\n"
        )),
    }
    h.push_str(&format!(
        "# harvest points: {} (`scan` of each space, then `clear_refs 4`, as CRIU's pre-dump)\n",
        sum.harvest_points
    ));
    h.push_str(&format!(
        "# spaces: {}; calls: {}; pages written: {}; peak VMAs in the kernel at a harvest point: {}; wall time under the recorder: {:.3} s\n",
        sum.spaces,
        if calls.is_empty() {
            "none".into()
        } else {
            calls.join(", ")
        },
        sum.pages_written,
        sum.peak_vmas,
        sum.wall.as_secs_f64()
    ));
    if sum.unrecorded.is_empty() {
        h.push_str("# not recorded: nothing\n");
    } else {
        h.push_str("# not recorded:\n");
        for (what, n) in &sum.unrecorded {
            h.push_str(&format!("#   {n} x {what}\n"));
        }
    }
    if sum.cut {
        h.push_str(&format!(
            "# cut: {}; the trace is valid up to that point\n",
            sum.ended
        ));
    } else {
        h.push_str(&format!("# ended: {}\n", sum.ended));
    }
    h
}

/// One recorded event as its trace line (rendered by the trace language).
pub fn line(ev: &Event) -> String {
    use softdirty_trace::ast::{Addr, AddrBase, Expect, PageSet};
    use softdirty_trace::render;
    let num = |a: u64| Addr {
        base: AddrBase::Number(a),
        offset: 0,
    };
    match ev {
        Event::Command(c) => render::command(c),
        Event::Comment(text) => format!("# {text}"),
        Event::Expect(x) => render::expect(&match x {
            Expectation::Err(e) => Expect::Err(*e),
            Expectation::Brk(a) => Expect::Brk(num(*a)),
            Expectation::SoftDirty { addr, len, runs } => Expect::SoftDirty {
                addr: num(*addr),
                len: *len,
                pages: match runs.as_slice() {
                    [] => PageSet::None,
                    [(0, n)] if *n * 4096 == *len => PageSet::All,
                    r => PageSet::List(r.to_vec()),
                },
            },
        }),
    }
}

fn default_out(program: &[OsString]) -> PathBuf {
    let base = program
        .first()
        .map(|p| {
            Path::new(p)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| "program".into())
        })
        .unwrap_or_else(|| "program".into());
    PathBuf::from(format!("{base}.trace"))
}

/// Runs `softdirty record`: 0 recorded (whatever the program's own status), 1 the
/// recording failed, 2 bad use (no such program, unwritable output), 3 the kernel or the
/// permissions do not allow recording.
pub fn main(args: &RecordArgs) -> ExitCode {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| default_out(&args.program));
    if crate::outpath::is_stdout(&out) {
        eprintln!(
            "softdirty record: --out must name a file (the program's own output goes to stdout)"
        );
        return ExitCode::from(2);
    }
    if let Err(e) = crate::outpath::check_creatable("--out", &out) {
        eprintln!("softdirty record: {e}");
        return ExitCode::from(2);
    }
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let body = match tempfile::tempfile_in(&dir) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("softdirty record: --out {}: {e}", out.display());
            return ExitCode::from(2);
        }
    };
    let opts = Options {
        program: args.program.clone(),
        interval: Duration::from_millis(args.interval),
        max_time: args.max_seconds.map(Duration::from_secs),
        source: args.source,
    };
    let mut w = BufWriter::new(body);
    let mut sink = |ev: Event| writeln!(w, "{}", line(&ev));
    let sum = match record::record(&opts, &mut sink) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("softdirty record: {e}");
            return ExitCode::from(match e {
                RecordError::Program(_) => 2,
                RecordError::Unavailable(_) => 3,
                RecordError::Io(_) => 1,
            });
        }
    };
    let finish = || -> std::io::Result<()> {
        let mut body = w.into_inner().map_err(|e| e.into_error())?;
        body.seek(SeekFrom::Start(0))?;
        let mut file = tempfile::NamedTempFile::new_in(&dir)?;
        // a temporary file is 0600; the trace gets what a new file gets (0666 & !umask)
        // SAFETY: umask only sets and returns this process's file mode mask.
        let mask = unsafe {
            let m = libc::umask(0o022);
            libc::umask(m);
            m
        };
        {
            use std::os::unix::fs::PermissionsExt;
            file.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o666 & !mask))?;
        }
        file.write_all(header(&args.program, args.interval, &sum).as_bytes())?;
        std::io::copy(&mut body, &mut file)?;
        file.flush()?;
        file.persist(&out).map_err(|e| e.error)?;
        Ok(())
    };
    if let Err(e) = finish() {
        eprintln!("softdirty record: writing {}: {e}", out.display());
        return ExitCode::from(1);
    }
    if let Some(mode) = args.verify {
        let opts = softdirty_trace::replay::Options {
            mode,
            allow_errors: false,
            backend: softdirty_trace::replay::BackendChoice::Model,
        };
        let name = out.display().to_string();
        let summary = std::fs::File::open(&out)
            .map_err(softdirty_trace::parse::ReadError::Io)
            .and_then(|f| {
                softdirty_trace::replay::replay_reader(
                    std::io::BufReader::new(f),
                    &name,
                    &opts,
                    &mut std::io::sink(),
                    &mut std::io::stderr(),
                )
            });
        match summary {
            Ok(s) if s.exit_status(false) == 0 => {
                eprintln!(
                    "softdirty record: --verify {}: the trace replays with status 0",
                    mode.name()
                );
            }
            Ok(s) => {
                eprintln!(
                    "softdirty record: --verify {}: the trace does not replay (status {})",
                    mode.name(),
                    s.exit_status(false)
                );
                return ExitCode::from(1);
            }
            Err(e) => {
                eprintln!("softdirty record: --verify: {}", e.in_file(&name));
                return ExitCode::from(1);
            }
        }
    }
    eprintln!(
        "softdirty record: {} ({}): {} spaces, {} pages written, {} harvest points, {:.3} s; {} kinds of event not recorded",
        out.display(),
        sum.ended,
        sum.spaces,
        sum.pages_written,
        sum.harvest_points,
        sum.wall.as_secs_f64(),
        sum.unrecorded.len()
    );
    ExitCode::SUCCESS
}
