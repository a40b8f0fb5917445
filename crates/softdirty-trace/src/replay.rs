//! Replays a parsed trace against a [`Backend`] and checks every expectation.
//!
//! Backends: the model ([`ModelBackend`], any mode) and, on Linux, real memory of the
//! running process ([`softdirty::kernel::KernelBackend`], `--backend kernel[=softdirty|uffd]`,
//! as the spec's "Kernel backend" section says).
//!
//! Exit statuses (the contract): 0 every expectation held; 1 an expectation failed or a
//! command failed unexpectedly (`--allow-errors` turns the latter into warnings); 2 the
//! file is malformed (reported by the parser before anything runs); 3 the chosen backend
//! cannot run here (the kernel lacks a feature or the process a permission; the message
//! says which and how to get it). Expectations a backend cannot observe (`expect faults`
//! on the kernel) are neither passed nor failed: they are counted as skipped and named in
//! the summary line; so is a command it cannot perform exactly (a `scan ... clear` whose
//! clear the kernel's soft-dirty flavour cannot emulate, [`Backend::take_scan_skip`]).

use std::collections::HashMap;
use std::io::{BufRead, Seek, SeekFrom, Write};

use super::ast::{Addr, Expect, PageSet, Spanned, Statement, Trace};
use super::lower::{bind, lower, Action};
pub use super::lower::{pagemap_pages, scan_args};
use super::parse::{ReadError, StatementReader};
pub use softdirty::backend::{
    Backend, BackendChoice, Command, KernelFlavour, ModelBackend, OpResult, Outcome, Unobservable,
};
use softdirty::errno::Errno;
use softdirty::linux::{PAGE_SIZE, TASK_SIZE};
use softdirty::mode::Mode;
use softdirty::scan::{format_categories, ScanResult};

/// Replay options.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Mode when the trace has no `mode` header.
    pub mode: Mode,
    /// Unexpected errors are warnings, not failures.
    pub allow_errors: bool,
    /// What the trace runs against (the model by default).
    pub backend: BackendChoice,
}

/// An expectation that was neither passed nor failed (the backend cannot observe it), or
/// a command the backend could not perform exactly (a `scan ... clear` whose clear the
/// soft-dirty flavour cannot emulate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// its line
    pub line: usize,
    /// what was skipped and why
    pub what: String,
}

/// What a replay found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// commands run (expectations included)
    pub commands: usize,
    /// expectations that held
    pub passed: usize,
    /// expectations that failed
    pub failed: usize,
    /// commands that failed without an `expect err`
    pub unexpected_errors: usize,
    /// the mode the trace ran in
    pub mode: Option<Mode>,
    /// expectations the backend could not observe (neither passed nor failed), and
    /// commands it could not perform exactly
    pub skipped: Vec<Skipped>,
    /// the backend, when it is not the model
    pub backend: Option<String>,
    /// the backend could not start: why (exit status 3)
    pub unavailable: Option<String>,
    /// a two-pass replay ([`replay_reader`]) could not read its file again, or found it
    /// changed since it was validated: why (the replay stopped there; exit status 2)
    pub reread_error: Option<String>,
}

impl Summary {
    /// The process exit status the contract assigns to this outcome.
    pub fn exit_status(&self, allow_errors: bool) -> i32 {
        if self.unavailable.is_some() {
            3
        } else if self.reread_error.is_some() {
            2
        } else if self.failed > 0 || (!allow_errors && self.unexpected_errors > 0) {
            1
        } else {
            0
        }
    }
}

/// What became of one command.
enum Status {
    Ok,
    Err(Errno),
    /// a failure that is not an errno (unbound name, address out of range, a command the
    /// backend cannot perform)
    Broken(String),
}

/// Replays `trace` (read from `file`, for messages) against the backend `opts` chooses.
/// Command output goes to `out`, diagnostics to `diag`.
pub fn replay(
    trace: &Trace,
    file: &str,
    opts: &Options,
    out: &mut dyn Write,
    diag: &mut dyn Write,
) -> Summary {
    let mut src = TraceSource {
        cmds: &trace.commands,
        next: 0,
    };
    replay_source(&mut src, trace.mode, file, opts, out, diag)
}

/// Where a replay takes its statements from, in file order: a parsed [`Trace`], or a
/// [`StatementReader`] over a file that was validated before (two passes, so that a
/// replay holds the model's state and the bindings but never the file; see
/// [`replay_reader`]).
pub trait Source {
    /// The next statement; `Ok(None)` at the end. An error (the file could not be read
    /// again, or changed since it was validated) ends the replay, malformed.
    fn next_statement(&mut self) -> Result<Option<Spanned<Statement>>, ReadError>;
    /// Whether an `expect err` is among the expectations that directly follow the
    /// statement last returned (before the next command), without consuming them.
    fn expect_err_follows(&mut self) -> Result<bool, ReadError>;
}

/// A parsed trace as a [`Source`].
struct TraceSource<'a> {
    cmds: &'a [Spanned<Statement>],
    next: usize,
}

impl Source for TraceSource<'_> {
    fn next_statement(&mut self) -> Result<Option<Spanned<Statement>>, ReadError> {
        let c = self.cmds.get(self.next).cloned();
        self.next += 1;
        Ok(c)
    }

    fn expect_err_follows(&mut self) -> Result<bool, ReadError> {
        Ok(self
            .cmds
            .get(self.next..)
            .unwrap_or_default()
            .iter()
            .take_while(|n| matches!(n.node, Statement::Expect(_)))
            .any(|n| matches!(n.node, Statement::Expect(Expect::Err(_)))))
    }
}

/// A [`StatementReader`] over a seekable input as a [`Source`]: the lookahead of
/// [`Source::expect_err_follows`] reads on and rewinds, so that it holds no statements.
impl<R: BufRead + Seek> Source for StatementReader<R> {
    fn next_statement(&mut self) -> Result<Option<Spanned<Statement>>, ReadError> {
        self.next().transpose()
    }

    fn expect_err_follows(&mut self) -> Result<bool, ReadError> {
        let cp = self.checkpoint();
        let mut found = false;
        for s in &mut *self {
            match s?.node {
                Statement::Expect(Expect::Err(_)) => {
                    found = true;
                    break;
                }
                Statement::Expect(_) => {}
                _ => break,
            }
        }
        self.rewind(cp).map_err(ReadError::Io)?;
        Ok(found)
    }
}

/// Replays the trace read by `input` (a seekable file: a regular file, or the copy of a
/// pipe), in two passes: the first reads it all and checks every line, as [`parse_bytes`]
/// does, and nothing runs if a line is malformed (the error, `FILE:LINE:COL: message`,
/// is returned); the second reads it again from the start and runs it, as [`replay`]
/// runs a parsed trace, with the same output. Memory is that of the backend, the
/// bindings and one line, whatever the size of the file.
///
/// [`parse_bytes`]: crate::parse::parse_bytes
pub fn replay_reader<R: BufRead + Seek>(
    mut input: R,
    file: &str,
    opts: &Options,
    out: &mut dyn Write,
    diag: &mut dyn Write,
) -> Result<Summary, ReadError> {
    let start = input.stream_position().map_err(ReadError::Io)?;
    let header = StatementReader::new(&mut input).validate()?;
    input.seek(SeekFrom::Start(start)).map_err(ReadError::Io)?;
    Ok(replay_source(
        &mut StatementReader::new(input),
        header,
        file,
        opts,
        out,
        diag,
    ))
}

/// Replays the statements of `src` (a trace whose header is `header`, already validated)
/// against the backend `opts` chooses, as [`replay`] does.
pub fn replay_source(
    src: &mut dyn Source,
    header: Option<Mode>,
    file: &str,
    opts: &Options,
    out: &mut dyn Write,
    diag: &mut dyn Write,
) -> Summary {
    let mode = header.unwrap_or(opts.mode);
    match softdirty::backend::open(opts.backend, mode) {
        Ok(mut b) => {
            // Each kernel flavour reproduces one mode: say so when the trace is in another.
            let reproduces = match b.name().as_str() {
                "kernel=uffd" => Some(Mode::Precise),
                "kernel=softdirty" => Some(Mode::Legacy),
                _ => None,
            };
            if let Some(m) = reproduces.filter(|&m| m != mode) {
                let _ = writeln!(
                    diag,
                    "{file}: warning: the kernel backend's {} flavour reproduces `{m}` tracking, \
                     not this trace's `{mode}` mode: expectations that depend on `{mode}` may \
                     fail (replay it on the model, or on the flavour that reproduces it)",
                    b.name().trim_start_matches("kernel=")
                );
            }
            let mut s = replay_on_source(src, file, b.as_mut(), mode, opts.allow_errors, out, diag);
            if opts.backend != BackendChoice::Model {
                s.backend = Some(b.name());
            }
            s
        }
        Err(msg) => {
            let _ = writeln!(diag, "{file}: the kernel backend cannot run here: {msg}");
            Summary {
                mode: Some(mode),
                unavailable: Some(msg),
                ..Summary::default()
            }
        }
    }
}

/// Replays `trace` against `backend` (`mode` is only reported). The summary line names
/// every skipped expectation.
pub fn replay_on(
    trace: &Trace,
    file: &str,
    backend: &mut dyn Backend,
    mode: Mode,
    allow_errors: bool,
    out: &mut dyn Write,
    diag: &mut dyn Write,
) -> Summary {
    let mut src = TraceSource {
        cmds: &trace.commands,
        next: 0,
    };
    replay_on_source(&mut src, file, backend, mode, allow_errors, out, diag)
}

/// [`replay_on`] for the statements of `src`.
pub fn replay_on_source(
    src: &mut dyn Source,
    file: &str,
    backend: &mut dyn Backend,
    mode: Mode,
    allow_errors: bool,
    out: &mut dyn Write,
    diag: &mut dyn Write,
) -> Summary {
    let is_model = backend.name().starts_with("model");
    let mut r = Replayer {
        backend,
        current: "main".to_string(),
        names: HashMap::new(),
        last_scan: None,
        scan_skip: None,
        fault_marks: HashMap::new(),
        summary: Summary {
            mode: Some(mode),
            ..Summary::default()
        },
        file,
    };
    let mut last_outcome: Option<(usize, Status)> = None;
    loop {
        let c = match src.next_statement() {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                r.reread_failed(&e, diag);
                break;
            }
        };
        r.summary.commands += 1;
        if let Statement::Expect(e) = &c.node {
            r.expect(c.line, e, last_outcome.as_ref(), diag);
            continue;
        }
        let outcome = r.run(&c.node, out);
        if let Some(why) = r.scan_skip.take() {
            r.skip(c.line, format!("scan ... clear: {why}"), diag);
        }
        match &outcome {
            // An error is expected if an `expect err` follows before the next command
            // (looked up only when it matters: a source may have to read ahead for it).
            Status::Err(e) => {
                let expected_err = match src.expect_err_follows() {
                    Ok(x) => x,
                    Err(e) => {
                        r.reread_failed(&e, diag);
                        break;
                    }
                };
                if !expected_err {
                    r.summary.unexpected_errors += 1;
                    let kind = if allow_errors { "warning" } else { "error" };
                    let _ = writeln!(
                        diag,
                        "{}:{}: {kind}: unexpected {} from `{}`",
                        file,
                        c.line,
                        e.name(),
                        describe(&c.node)
                    );
                }
            }
            Status::Broken(msg) => {
                r.summary.unexpected_errors += 1;
                let _ = writeln!(diag, "{}:{}: error: {msg}", file, c.line);
            }
            Status::Ok => {}
        }
        last_outcome = Some((c.line, outcome));
    }
    let s = r.summary.clone();
    if is_model {
        let _ = writeln!(
            diag,
            "{file}: {} commands, {} expectations passed, {} failed, {} unexpected errors (mode {mode})",
            s.commands, s.passed, s.failed, s.unexpected_errors
        );
    } else {
        let mut skipped = String::new();
        if !s.skipped.is_empty() {
            let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
            for sk in &s.skipped {
                match groups.iter_mut().find(|g| g.0 == sk.what) {
                    Some(g) => g.1.push(sk.line),
                    None => groups.push((sk.what.clone(), vec![sk.line])),
                }
            }
            let parts: Vec<String> = groups
                .iter()
                .map(|(w, l)| {
                    // The reason was printed on the first skipped line.
                    let name = w.split(": ").next().unwrap_or(w);
                    let lines: Vec<String> = l.iter().map(|x| x.to_string()).collect();
                    let s = if l.len() > 1 { "s" } else { "" };
                    format!("{name} (line{s} {})", lines.join(", "))
                })
                .collect();
            skipped = format!(": {}", parts.join("; "));
        }
        let _ = writeln!(
            diag,
            "{file}: {} commands, {} expectations passed, {} failed, {} skipped{skipped}, {} unexpected errors (backend {}, trace mode {mode})",
            s.commands,
            s.passed,
            s.failed,
            s.skipped.len(),
            s.unexpected_errors,
            r.backend.name()
        );
    }
    s
}

fn describe(c: &Statement) -> &'static str {
    match c {
        Statement::Space(_) => "space",
        Statement::Fork(_) => "fork",
        Statement::Mmap { .. } => "mmap",
        Statement::Munmap { .. } => "munmap",
        Statement::Mprotect { .. } => "mprotect",
        Statement::Mremap { .. } => "mremap",
        Statement::Madvise { .. } => "madvise",
        Statement::Write { .. } => "write",
        Statement::Read { .. } => "read",
        Statement::ClearRefs(_) => "clear_refs",
        Statement::Pagemap { .. } => "pagemap",
        Statement::Scan(_) => "scan",
        Statement::Smaps(_) => "smaps",
        Statement::BrkStart(_) => "brk_start",
        Statement::Brk(_) => "brk",
        Statement::File { memfd: false, .. } => "file",
        Statement::File { memfd: true, .. } => "memfd",
        Statement::Fwrite { .. } => "fwrite",
        Statement::Expect(_) => "expect",
    }
}

fn expect_name(e: &Expect) -> &'static str {
    match e {
        Expect::Err(_) => "expect err",
        Expect::Ok => "expect ok",
        Expect::SoftDirty { .. } => "expect softdirty",
        Expect::Present { .. } => "expect present",
        Expect::Vmas { .. } => "expect vmas",
        Expect::Regions(_) => "expect regions",
        Expect::WalkEnd(_) => "expect walk_end",
        Expect::Faults(_) => "expect faults",
        Expect::Brk(_) => "expect brk",
    }
}

struct Replayer<'a> {
    backend: &'a mut dyn Backend,
    current: String,
    names: HashMap<String, u64>,
    /// the last successful scan, and why it cannot be compared (if it cannot)
    last_scan: Option<(ScanResult, Option<String>)>,
    /// why the command just run (a scan) was not performed exactly, if it was not
    scan_skip: Option<String>,
    fault_marks: HashMap<String, u64>,
    summary: Summary,
    file: &'a str,
}

impl Replayer<'_> {
    /// The second pass of a two-pass replay could not read the file again, or found a
    /// malformed line (the file changed since it was validated).
    fn reread_failed(&mut self, e: &ReadError, diag: &mut dyn Write) {
        let msg = match e {
            ReadError::Io(_) => e.in_file(self.file),
            ReadError::Parse(_) => format!(
                "{} (the file changed after it was validated; the replay stops here)",
                e.in_file(self.file)
            ),
        };
        let _ = writeln!(diag, "{msg}");
        self.summary.reread_error = Some(msg);
    }

    fn addr(&self, a: &Addr) -> Result<u64, String> {
        a.resolve(&self.names)
    }

    fn run(&mut self, c: &Statement, out: &mut dyn Write) -> Status {
        match self.run_inner(c, out) {
            Ok(Ok(())) => Status::Ok,
            Ok(Err(e)) => Status::Err(e),
            Err(msg) => Status::Broken(msg),
        }
    }

    fn run_inner(&mut self, c: &Statement, out: &mut dyn Write) -> OpResult<()> {
        let (cmd, b) = match lower(c, &self.names)? {
            Action::Perform { cmd, bind } => (cmd, bind),
            Action::Expect(_) => return Ok(Ok(())),
        };
        // A pagemap streams its lines (`perform` would collect one entry per page of a
        // range that may span terabytes).
        if let Command::Pagemap { start, pages } = cmd {
            self.backend.pagemap(start, pages, &mut |p, e| {
                let _ = writeln!(out, "{p:#x} {e:#018x}");
            })?;
            return Ok(Ok(()));
        }
        let res = self.backend.perform(&cmd)?;
        if let Command::Space(n) = &cmd {
            self.current = n.clone();
        }
        Ok(match res {
            Ok(Outcome::Done) => Ok(()),
            Ok(Outcome::Addr(a)) => {
                bind(&mut self.names, b, a);
                Ok(())
            }
            Ok(Outcome::Pagemap(entries)) => {
                for (p, e) in entries {
                    let _ = writeln!(out, "{p:#x} {e:#018x}");
                }
                Ok(())
            }
            Ok(Outcome::Scan(res)) => {
                let _ = writeln!(out, "walk_end {:#x}", res.walk_end);
                for r in &res.regions {
                    let _ = writeln!(
                        out,
                        "{:#x}-{:#x} {}",
                        r.start,
                        r.end,
                        format_categories(r.categories)
                    );
                }
                let Command::Scan(args) = &cmd else {
                    unreachable!("a scan result answers a scan")
                };
                self.scan_skip = self.backend.take_scan_skip();
                let why = self.backend.scan_unobservable(args);
                self.last_scan = Some((res, why));
                Ok(())
            }
            Ok(Outcome::Smaps(Some(l))) => {
                let _ = writeln!(out, "{l}");
                Ok(())
            }
            Ok(Outcome::Smaps(None)) => Err(Errno::EINVAL),
            Err(e) => {
                if matches!(cmd, Command::Scan(_)) {
                    self.last_scan = None;
                }
                Err(e)
            }
        })
    }

    /// Records a skipped command or expectation; the reason is printed once, on the first
    /// line skipped for it (later ones point back to that line).
    fn skip(&mut self, line: usize, what: String, diag: &mut dyn Write) {
        match self.summary.skipped.iter().find(|k| k.what == what) {
            Some(first) => {
                let name = what.split(": ").next().unwrap_or(&what);
                let _ = writeln!(
                    diag,
                    "{}:{line}: skipped: {name} (as on line {})",
                    self.file, first.line
                );
            }
            None => {
                let _ = writeln!(diag, "{}:{line}: skipped: {what}", self.file);
            }
        }
        self.summary.skipped.push(Skipped { line, what });
    }

    fn expect(
        &mut self,
        line: usize,
        e: &Expect,
        last: Option<&(usize, Status)>,
        diag: &mut dyn Write,
    ) {
        match self.check(e, last) {
            Ok(()) => self.summary.passed += 1,
            Err(Unobservable::Skip(why)) => {
                self.skip(line, format!("{}: {why}", expect_name(e)), diag);
            }
            Err(Unobservable::Broken(msg)) => {
                self.summary.failed += 1;
                let _ = writeln!(diag, "{}:{}: expectation failed: {msg}", self.file, line);
            }
        }
    }

    fn check(&mut self, e: &Expect, last: Option<&(usize, Status)>) -> Result<(), Unobservable> {
        let fail = Unobservable::Broken;
        match e {
            Expect::Err(want) => match last {
                Some((_, Status::Err(got))) if got == want => Ok(()),
                Some((_, Status::Err(got))) => Err(fail(format!(
                    "expected {}, got {}",
                    want.name(),
                    got.name()
                ))),
                Some((_, Status::Ok)) => Err(fail(format!(
                    "expected {}, but the command succeeded",
                    want.name()
                ))),
                Some((_, Status::Broken(m))) => Err(fail(format!(
                    "expected {}, but the command could not run: {m}",
                    want.name()
                ))),
                None => Err(fail("`expect err` with no previous command".into())),
            },
            Expect::Ok => match last {
                Some((_, Status::Ok)) => Ok(()),
                Some((_, Status::Err(got))) => {
                    Err(fail(format!("expected success, got {}", got.name())))
                }
                Some((_, Status::Broken(m))) => Err(fail(format!("expected success: {m}"))),
                None => Err(fail("`expect ok` with no previous command".into())),
            },
            Expect::SoftDirty { addr, len, pages } | Expect::Present { addr, len, pages } => {
                let a = self.addr(addr).map_err(fail)?;
                let n = npages(a, *len);
                let sd = matches!(e, Expect::SoftDirty { .. });
                let got: Vec<(u64, u64)> = if sd {
                    self.backend.softdirty_runs(a, *len)?
                } else {
                    self.backend.present_runs(a, *len)?
                }
                .into_iter()
                .map(|r| (r.start, r.end))
                .collect();
                let want = normalize(pages, n);
                let what = if sd { "soft-dirty" } else { "present" };
                match want {
                    Some(w) if w == got => Ok(()),
                    Some(w) => Err(fail(format!(
                        "{what} pages: expected {}, got {}",
                        fmt_pages(&w, n),
                        fmt_pages(&got, n)
                    ))),
                    None => Err(fail(format!(
                        "{what} pages: the expected list names pages outside the {n}-page range"
                    ))),
                }
            }
            Expect::Vmas { addr, len, count } => {
                let a = self.addr(addr).map_err(fail)?;
                let got = self.backend.vma_count(a, *len)?;
                if got == *count {
                    Ok(())
                } else {
                    Err(fail(format!("expected {count} VMAs, found {got}")))
                }
            }
            Expect::Regions(n) => match &self.last_scan {
                Some((_, Some(why))) => Err(Unobservable::Skip(why.clone())),
                Some((s, None)) if s.regions.len() as u64 == *n => Ok(()),
                Some((s, None)) => Err(fail(format!(
                    "expected {n} regions, the last scan returned {}",
                    s.regions.len()
                ))),
                None => Err(fail("no successful scan before `expect regions`".into())),
            },
            Expect::WalkEnd(a) => {
                let a = self.addr(a).map_err(fail)?;
                match &self.last_scan {
                    Some((_, Some(why))) => Err(Unobservable::Skip(why.clone())),
                    Some((s, None)) if s.walk_end == a => Ok(()),
                    Some((s, None)) => Err(fail(format!(
                        "expected walk_end {a:#x}, the last scan stopped at {:#x}",
                        s.walk_end
                    ))),
                    None => Err(fail("no successful scan before `expect walk_end`".into())),
                }
            }
            Expect::Faults(n) => {
                let now = self.backend.faults()?;
                let mark = self
                    .fault_marks
                    .insert(self.current.clone(), now)
                    .unwrap_or(0);
                let got = now - mark;
                if got == *n {
                    Ok(())
                } else {
                    Err(fail(format!("expected {n} write faults, counted {got}")))
                }
            }
            Expect::Brk(a) => {
                let want = self.addr(a).map_err(fail)?;
                let got = self.backend.current_brk()?;
                if got == want {
                    Ok(())
                } else {
                    Err(fail(format!(
                        "expected the break at {want:#x}, it is at {got:#x}"
                    )))
                }
            }
        }
    }
}

/// Pages overlapping `[a, a + len)`, clamped to user space.
fn npages(a: u64, len: u64) -> u64 {
    let start = a & !(PAGE_SIZE - 1);
    let end = a.saturating_add(len).min(TASK_SIZE).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    end.saturating_sub(start) / PAGE_SIZE
}

/// The expected set as sorted, merged half-open runs; `None` if it names pages ≥ `n`.
fn normalize(p: &PageSet, n: u64) -> Option<Vec<(u64, u64)>> {
    let mut v: Vec<(u64, u64)> = match p {
        PageSet::None => vec![],
        PageSet::All => {
            if n == 0 {
                vec![]
            } else {
                vec![(0, n)]
            }
        }
        PageSet::List(l) => l.iter().copied().filter(|(a, b)| a < b).collect(),
    };
    if v.iter().any(|&(_, b)| b > n) {
        return None;
    }
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(l) if a <= l.1 => l.1 = l.1.max(b),
            _ => out.push((a, b)),
        }
    }
    Some(out)
}

fn fmt_pages(v: &[(u64, u64)], n: u64) -> String {
    if v.is_empty() {
        return "none".into();
    }
    if v == [(0, n)] {
        return format!("all ({n} pages)");
    }
    let parts: Vec<String> = v
        .iter()
        .map(|&(a, b)| {
            if b == a + 1 {
                a.to_string()
            } else {
                format!("{a}..{b}")
            }
        })
        .collect();
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use softdirty::mm;
    use softdirty::prot::Prot;
    use softdirty::scan::ScanArgs;

    /// Two passes over a seekable input give what one parsed trace gives: the same
    /// output, diagnostics and summary, including where the lookahead for `expect err`
    /// crosses comments, blank lines and other expectations.
    #[test]
    fn replay_reader_matches_replay() {
        let texts = [
            include_str!("../../../../shared/traces/errno-basics.trace"),
            include_str!("../../../../shared/traces/quickstart.trace"),
            "mode legacy\nmmap 0x10_0000_0000 4p rw noreplace\nmmap 0x10_0000_0000 1p rw noreplace\n\
             # a comment\n\nexpect ok\nexpect err EEXIST\nmunmap 3 1p\nexpect ok\n\
             mprotect 0x10_0000_0000 1p rw\nmunmap 3 1p\nwrite 0x20_0000_0000\n\
             pagemap 0x10_0000_0000 2p\nexpect err EINVAL",
        ];
        for text in texts {
            let t = crate::parse::parse(text).unwrap();
            for allow_errors in [false, true] {
                let opts = Options {
                    allow_errors,
                    ..Options::default()
                };
                let (mut o1, mut d1, mut o2, mut d2) = (vec![], vec![], vec![], vec![]);
                let s1 = replay(&t, "t", &opts, &mut o1, &mut d1);
                let input = std::io::BufReader::with_capacity(5, std::io::Cursor::new(text));
                let s2 = replay_reader(input, "t", &opts, &mut o2, &mut d2).unwrap();
                assert_eq!(s1, s2);
                assert_eq!(String::from_utf8_lossy(&o1), String::from_utf8_lossy(&o2));
                assert_eq!(String::from_utf8_lossy(&d1), String::from_utf8_lossy(&d2));
            }
        }
        // Nothing runs when a line is malformed: the error of the first pass.
        let mut out = vec![];
        let bad = std::io::Cursor::new("pagemap 0 1p\nwrite 1\n\u{0}\n");
        let e = replay_reader(bad, "t", &Options::default(), &mut out, &mut vec![]).unwrap_err();
        assert_eq!(e.in_file("t"), "t:3:1: expected text, found the control byte 0x00 (only tab and a line's final carriage return are allowed)");
        assert!(out.is_empty());
    }

    /// A file found malformed by the second pass (it changed after the first) stops the
    /// replay there, with `FILE:LINE:COL` and exit status 2.
    #[test]
    fn a_file_that_changed_between_the_passes_is_malformed() {
        struct Changed(usize);
        impl Source for Changed {
            fn next_statement(&mut self) -> Result<Option<Spanned<Statement>>, ReadError> {
                self.0 += 1;
                match self.0 {
                    1 => Ok(Some(Spanned {
                        line: 1,
                        col: 1,
                        node: Statement::Fork("kid".into()),
                    })),
                    _ => Err(ReadError::Parse(crate::parse::ParseError {
                        line: 2,
                        col: 3,
                        message: "bad".into(),
                    })),
                }
            }
            fn expect_err_follows(&mut self) -> Result<bool, ReadError> {
                Ok(false)
            }
        }
        let (mut out, mut diag) = (vec![], vec![]);
        let s = replay_source(
            &mut Changed(0),
            None,
            "t",
            &Options::default(),
            &mut out,
            &mut diag,
        );
        assert_eq!(s.exit_status(false), 2);
        assert_eq!(s.commands, 1);
        let diag = String::from_utf8_lossy(&diag);
        assert!(
            diag.starts_with("t:2:3: bad (the file changed after it was validated"),
            "{diag}"
        );
    }

    /// The model, except that `scan ... clear` does not clear and says so, as the kernel's
    /// soft-dirty flavour does where it cannot emulate the clear; soft-dirty is then
    /// unobservable until the next `clear_refs 4`.
    struct NoClear {
        model: ModelBackend,
        skip: Option<String>,
        tainted: bool,
    }

    impl Backend for NoClear {
        fn name(&self) -> String {
            "no-clear".into()
        }
        fn space(&mut self, name: &str) -> Result<(), String> {
            self.model.space(name)
        }
        fn fork(&mut self, child: &str) -> OpResult<()> {
            self.model.fork(child)
        }
        fn mmap(&mut self, a: u64, l: u64, p: Prot, sh: bool, pl: mm::Placement) -> OpResult<u64> {
            self.model.mmap(a, l, p, sh, pl)
        }
        fn munmap(&mut self, a: u64, l: u64) -> OpResult<()> {
            self.model.munmap(a, l)
        }
        fn mprotect(&mut self, a: u64, l: u64, p: Prot) -> OpResult<()> {
            self.model.mprotect(a, l, p)
        }
        fn mremap(&mut self, a: u64, o: u64, n: u64, m: bool, f: Option<u64>) -> OpResult<u64> {
            self.model.mremap(a, o, n, m, f)
        }
        fn madvise_dontneed(&mut self, a: u64, l: u64) -> OpResult<()> {
            self.model.madvise_dontneed(a, l)
        }
        fn write(&mut self, a: u64, l: u64) -> OpResult<()> {
            self.model.write(a, l)
        }
        fn read(&mut self, a: u64, l: u64) -> OpResult<()> {
            self.model.read(a, l)
        }
        fn clear_refs(&mut self, v: &str) -> OpResult<()> {
            self.tainted = false;
            self.model.clear_refs(v)
        }
        fn pagemap(&mut self, s: u64, n: u64, f: &mut dyn FnMut(u64, u64)) -> Result<(), String> {
            self.model.pagemap(s, n, f)
        }
        fn scan(&mut self, args: &ScanArgs) -> OpResult<ScanResult> {
            if args.clear {
                self.skip = Some("cannot clear".into());
                self.tainted = true;
            }
            self.model.scan(&ScanArgs {
                clear: false,
                ..*args
            })
        }
        fn scan_unobservable(&self, _: &ScanArgs) -> Option<String> {
            self.tainted.then(|| "tainted".to_string())
        }
        fn take_scan_skip(&mut self) -> Option<String> {
            self.skip.take()
        }
        fn smaps_vmflags(&mut self, a: u64) -> Result<Option<String>, String> {
            self.model.smaps_vmflags(a)
        }
        fn softdirty_runs(
            &mut self,
            a: u64,
            l: u64,
        ) -> Result<Vec<std::ops::Range<u64>>, Unobservable> {
            if self.tainted {
                return Err(Unobservable::Skip("tainted".into()));
            }
            self.model.softdirty_runs(a, l)
        }
        fn present_runs(
            &mut self,
            a: u64,
            l: u64,
        ) -> Result<Vec<std::ops::Range<u64>>, Unobservable> {
            self.model.present_runs(a, l)
        }
        fn vma_count(&mut self, a: u64, l: u64) -> Result<u64, Unobservable> {
            self.model.vma_count(a, l)
        }
        fn faults(&mut self) -> Result<u64, Unobservable> {
            self.model.faults()
        }
    }

    #[test]
    fn a_scan_the_backend_cannot_perform_is_skipped_with_what_depends_on_it() {
        let text = "mode legacy\nmmap 0x20_0000_0000 4p rw noreplace\nclear_refs 4\n\
                    write 0x20_0000_0000 2p\n\
                    scan 0x20_0000_0000 4p mask=softdirty return=softdirty clear\n\
                    expect regions 1\nexpect softdirty 0x20_0000_0000 4p none\n\
                    expect present 0x20_0000_0000 4p 0 1\n\
                    clear_refs 4\nexpect softdirty 0x20_0000_0000 4p none\n";
        let t = crate::parse::parse_bytes(text.as_bytes()).unwrap();
        let mut b = NoClear {
            model: ModelBackend::new(Mode::Legacy),
            skip: None,
            tainted: false,
        };
        let (mut out, mut diag) = (Vec::new(), Vec::new());
        let s = replay_on(&t, "t", &mut b, Mode::Legacy, false, &mut out, &mut diag);
        let diag = String::from_utf8(diag).unwrap();
        assert_eq!(
            (s.passed, s.failed, s.unexpected_errors),
            (2, 0, 0),
            "{diag}"
        );
        let lines: Vec<usize> = s.skipped.iter().map(|k| k.line).collect();
        assert_eq!(lines, vec![5, 6, 7], "{diag}");
        assert!(
            diag.contains("t:5: skipped: scan ... clear: cannot clear"),
            "{diag}"
        );
        assert!(
            diag.contains("t:7: skipped: expect softdirty: tainted"),
            "{diag}"
        );
        assert!(diag.contains("3 skipped"), "{diag}");
        assert_eq!(s.exit_status(false), 0);
    }
}
