//! Replays a parsed trace against the model and checks every expectation.
//!
//! Exit statuses (the contract): 0 every expectation held; 1 an expectation failed or a
//! command failed unexpectedly (`--allow-errors` turns the latter into warnings); 2 the
//! file is malformed (reported by the parser before anything runs).

use std::collections::HashMap;
use std::io::Write;

use super::ast::{Addr, AddrBase, Command, Expect, MmapTarget, PageSet, Placement, Trace};
use crate::errno::Errno;
use crate::mm::{self, AddressSpace};
use crate::mode::Mode;
use crate::scan::{format_categories, ScanArgs, ScanResult};
use crate::sync::Arc;
use crate::tracker::Tracker;
use crate::vma::{PAGE_SIZE, TASK_SIZE};

/// Replay options.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Mode when the trace has no `mode` header.
    pub mode: Mode,
    /// Unexpected errors are warnings, not failures.
    pub allow_errors: bool,
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
}

impl Summary {
    /// The process exit status the contract assigns to this outcome.
    pub fn exit_status(&self, allow_errors: bool) -> i32 {
        if self.failed > 0 || (!allow_errors && self.unexpected_errors > 0) {
            1
        } else {
            0
        }
    }
}

/// The outcome of one command.
enum Outcome {
    Ok,
    Err(Errno),
    /// a failure that is not an errno (unbound name, address out of range)
    Broken(String),
}

/// Replays `trace` (read from `file`, for messages). Command output goes to `out`,
/// diagnostics to `diag`.
pub fn replay(
    trace: &Trace,
    file: &str,
    opts: &Options,
    out: &mut dyn Write,
    diag: &mut dyn Write,
) -> Summary {
    let mode = trace.mode.unwrap_or(opts.mode);
    let tracker = Tracker::new(mode);
    let mut r = Replayer {
        tracker,
        current: "main".to_string(),
        names: HashMap::new(),
        last_scan: None,
        fault_marks: HashMap::new(),
        summary: Summary {
            mode: Some(mode),
            ..Summary::default()
        },
        file,
        allow_errors: opts.allow_errors,
    };
    r.tracker.space("main");
    let cmds = &trace.commands;
    let mut last_outcome: Option<(usize, Outcome)> = None;
    for (k, c) in cmds.iter().enumerate() {
        r.summary.commands += 1;
        if let Command::Expect(e) = &c.node {
            r.expect(c.line, e, last_outcome.as_ref(), out, diag);
            continue;
        }
        let outcome = r.run(&c.node, out);
        // An error is expected if an `expect err` follows before the next command.
        let expected_err = cmds[k + 1..]
            .iter()
            .take_while(|n| matches!(n.node, Command::Expect(_)))
            .any(|n| matches!(n.node, Command::Expect(Expect::Err(_))));
        match &outcome {
            Outcome::Err(e) if !expected_err => {
                r.summary.unexpected_errors += 1;
                let kind = if opts.allow_errors {
                    "warning"
                } else {
                    "error"
                };
                let _ = writeln!(
                    diag,
                    "{}:{}: {kind}: unexpected {} from `{}`",
                    file,
                    c.line,
                    e.name(),
                    describe(&c.node)
                );
            }
            Outcome::Broken(msg) => {
                r.summary.unexpected_errors += 1;
                let _ = writeln!(diag, "{}:{}: error: {msg}", file, c.line);
            }
            _ => {}
        }
        last_outcome = Some((c.line, outcome));
    }
    let s = r.summary.clone();
    let _ = writeln!(
        diag,
        "{file}: {} commands, {} expectations passed, {} failed, {} unexpected errors (mode {mode})",
        s.commands, s.passed, s.failed, s.unexpected_errors
    );
    s
}

fn describe(c: &Command) -> &'static str {
    match c {
        Command::Space(_) => "space",
        Command::Fork(_) => "fork",
        Command::Mmap { .. } => "mmap",
        Command::Munmap { .. } => "munmap",
        Command::Mprotect { .. } => "mprotect",
        Command::Mremap { .. } => "mremap",
        Command::Madvise { .. } => "madvise",
        Command::Write { .. } => "write",
        Command::Read { .. } => "read",
        Command::ClearRefs(_) => "clear_refs",
        Command::Pagemap { .. } => "pagemap",
        Command::Scan(_) => "scan",
        Command::Smaps(_) => "smaps",
        Command::Expect(_) => "expect",
    }
}

struct Replayer<'a> {
    tracker: Tracker,
    current: String,
    names: HashMap<String, u64>,
    last_scan: Option<ScanResult>,
    fault_marks: HashMap<String, u64>,
    summary: Summary,
    file: &'a str,
    allow_errors: bool,
}

impl Replayer<'_> {
    fn space(&self) -> Arc<AddressSpace> {
        self.tracker.space(&self.current)
    }

    fn addr(&self, a: &Addr) -> Result<u64, String> {
        let base = match &a.base {
            AddrBase::Number(n) => *n,
            AddrBase::Name(n) => *self
                .names
                .get(n)
                .ok_or_else(|| format!("${n} is not bound (its mmap or mremap failed)"))?,
        };
        let v = i128::from(base) + a.offset;
        u64::try_from(v).map_err(|_| format!("address {v:#x} is out of range"))
    }

    fn run(&mut self, c: &Command, out: &mut dyn Write) -> Outcome {
        match self.run_inner(c, out) {
            Ok(Ok(())) => Outcome::Ok,
            Ok(Err(e)) => Outcome::Err(e),
            Err(msg) => Outcome::Broken(msg),
        }
    }

    fn run_inner(&mut self, c: &Command, out: &mut dyn Write) -> Result<Result<(), Errno>, String> {
        let sp = self.space();
        Ok(match c {
            Command::Space(n) => {
                self.tracker.space(n);
                self.current = n.clone();
                Ok(())
            }
            Command::Fork(child) => self.tracker.fork(&self.current, child).map(|_| ()),
            Command::Mmap {
                target,
                len,
                prot,
                shared,
                placement,
            } => {
                let (addr, bind) = match target {
                    MmapTarget::At(a) => (self.addr(a)?, None),
                    MmapTarget::Bind(n) => (0, Some(n.clone())),
                };
                let placement = match placement {
                    Placement::Hint => mm::Placement::Hint,
                    Placement::Fixed => mm::Placement::Fixed,
                    Placement::NoReplace => mm::Placement::NoReplace,
                };
                sp.mmap(addr, *len, *prot, *shared, placement).map(|a| {
                    if let Some(n) = bind {
                        self.names.insert(n, a);
                    }
                })
            }
            Command::Munmap { addr, len } => sp.munmap(self.addr(addr)?, *len),
            Command::Mprotect { addr, len, prot } => sp.mprotect(self.addr(addr)?, *len, *prot),
            Command::Mremap {
                addr,
                old_len,
                new_len,
                maymove,
                fixed,
                bind,
            } => {
                let fixed = match fixed {
                    Some(a) => Some(self.addr(a)?),
                    None => None,
                };
                sp.mremap(self.addr(addr)?, *old_len, *new_len, *maymove, fixed)
                    .map(|a| {
                        if let Some(n) = bind {
                            self.names.insert(n.clone(), a);
                        }
                    })
            }
            Command::Madvise { addr, len, .. } => sp.madvise_dontneed(self.addr(addr)?, *len),
            Command::Write { addr, len } => sp.write(self.addr(addr)?, *len),
            Command::Read { addr, len } => sp.read(self.addr(addr)?, *len),
            Command::ClearRefs(v) => sp.clear_refs_str(v),
            Command::Pagemap { addr, len } => {
                let a = self.addr(addr)?;
                let start = a & !(PAGE_SIZE - 1);
                let end = a.saturating_add(*len).min(TASK_SIZE).div_ceil(PAGE_SIZE) * PAGE_SIZE;
                let mut p = start;
                let mut res = Ok(());
                while p < end {
                    let _ = writeln!(out, "{:#x} {:#018x}", p, sp.pagemap_entry(p));
                    p += PAGE_SIZE;
                }
                if a.checked_add(*len).is_none_or(|e| e > TASK_SIZE) && *len > 0 && end <= start {
                    res = Ok(());
                }
                res
            }
            Command::Scan(s) => {
                let start = self.addr(&s.start)?;
                let args = ScanArgs {
                    start,
                    end: start.wrapping_add(s.len),
                    mask: s.mask,
                    anyof: s.anyof,
                    inverted: s.inverted,
                    ret: s.ret,
                    clear: s.clear,
                    max_pages: s.max_pages,
                    vec_len: s.vec_len,
                };
                let args = if start.checked_add(s.len).is_none() {
                    ScanArgs { end: 0, ..args }
                } else {
                    args
                };
                match sp.scan(&args) {
                    Ok(res) => {
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
                        self.last_scan = Some(res);
                        Ok(())
                    }
                    Err(e) => {
                        self.last_scan = None;
                        Err(e)
                    }
                }
            }
            Command::Smaps(a) => {
                let a = self.addr(a)?;
                match sp.smaps_vmflags(a) {
                    Some(l) => {
                        let _ = writeln!(out, "{l}");
                        Ok(())
                    }
                    None => Err(Errno::EINVAL),
                }
            }
            Command::Expect(_) => Ok(()),
        })
    }

    fn expect(
        &mut self,
        line: usize,
        e: &Expect,
        last: Option<&(usize, Outcome)>,
        out: &mut dyn Write,
        diag: &mut dyn Write,
    ) {
        let _ = out;
        let res: Result<(), String> = self.check(e, last);
        match res {
            Ok(()) => self.summary.passed += 1,
            Err(msg) => {
                self.summary.failed += 1;
                let _ = writeln!(diag, "{}:{}: expectation failed: {msg}", self.file, line);
            }
        }
        let _ = self.allow_errors;
    }

    fn check(&mut self, e: &Expect, last: Option<&(usize, Outcome)>) -> Result<(), String> {
        let sp = self.space();
        match e {
            Expect::Err(want) => match last {
                Some((_, Outcome::Err(got))) if got == want => Ok(()),
                Some((_, Outcome::Err(got))) => {
                    Err(format!("expected {}, got {}", want.name(), got.name()))
                }
                Some((_, Outcome::Ok)) => Err(format!(
                    "expected {}, but the command succeeded",
                    want.name()
                )),
                Some((_, Outcome::Broken(m))) => Err(format!(
                    "expected {}, but the command could not run: {m}",
                    want.name()
                )),
                None => Err("`expect err` with no previous command".into()),
            },
            Expect::Ok => match last {
                Some((_, Outcome::Ok)) => Ok(()),
                Some((_, Outcome::Err(got))) => {
                    Err(format!("expected success, got {}", got.name()))
                }
                Some((_, Outcome::Broken(m))) => Err(format!("expected success: {m}")),
                None => Err("`expect ok` with no previous command".into()),
            },
            Expect::SoftDirty { addr, len, pages } | Expect::Present { addr, len, pages } => {
                let a = self.addr(addr)?;
                let n = npages(a, *len);
                let got = if matches!(e, Expect::SoftDirty { .. }) {
                    sp.softdirty_runs(a, *len)
                } else {
                    sp.present_runs(a, *len)
                };
                let want = normalize(pages, n);
                let what = if matches!(e, Expect::SoftDirty { .. }) {
                    "soft-dirty"
                } else {
                    "present"
                };
                match want {
                    Some(w) if w == got => Ok(()),
                    Some(w) => Err(format!(
                        "{what} pages: expected {}, got {}",
                        fmt_pages(&w, n),
                        fmt_pages(&got, n)
                    )),
                    None => Err(format!(
                        "{what} pages: the expected list names pages outside the {n}-page range"
                    )),
                }
            }
            Expect::Vmas { addr, len, count } => {
                let a = self.addr(addr)?;
                let got = sp.vma_count(a, *len) as u64;
                if got == *count {
                    Ok(())
                } else {
                    Err(format!("expected {count} VMAs, found {got}"))
                }
            }
            Expect::Regions(n) => match &self.last_scan {
                Some(s) if s.regions.len() as u64 == *n => Ok(()),
                Some(s) => Err(format!(
                    "expected {n} regions, the last scan returned {}",
                    s.regions.len()
                )),
                None => Err("no successful scan before `expect regions`".into()),
            },
            Expect::WalkEnd(a) => {
                let a = self.addr(a)?;
                match &self.last_scan {
                    Some(s) if s.walk_end == a => Ok(()),
                    Some(s) => Err(format!(
                        "expected walk_end {a:#x}, the last scan stopped at {:#x}",
                        s.walk_end
                    )),
                    None => Err("no successful scan before `expect walk_end`".into()),
                }
            }
            Expect::Faults(n) => {
                let now = sp.faults();
                let mark = self
                    .fault_marks
                    .insert(self.current.clone(), now)
                    .unwrap_or(0);
                let got = now - mark;
                if got == *n {
                    Ok(())
                } else {
                    Err(format!("expected {n} write faults, counted {got}"))
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
