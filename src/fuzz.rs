//! `softdirty fuzz`: random traces, the model against another side, step by step.
//!
//! Each case is a random sequence of operations confined to a small window of address
//! space (so that VMAs split and merge all the time): mmap (fixed and noreplace), munmap,
//! mprotect, mremap (in place, or moved with `fixed`), madvise dontneed, write, read,
//! clear_refs 4 and `scan ... clear`. After every operation both sides are compared on
//! every observable they both define: the outcome (success or errno, and the address an
//! mremap returns), the soft-dirty and present pages of the window, its VMA count, and the
//! regions a scan returned. On a mismatch the case is shrunk to a minimal trace (ops
//! removed while the sides still disagree), written to `--out` with the other side's
//! answers as expectations, and the command exits 1. Deterministic for a seed.
//!
//! A by-design disagreement with the uffd flavour: a same-size `mremap ... fixed` whose
//! source spans more than one VMA (or runs into a hole) is a multi-VMA move in Linux
//! 6.17+, which the model implements; the kernel refuses it with EFAULT for VMAs armed
//! with userfaultfd (`vma_multi_allowed`), and the uffd flavour arms every mapping.
//! Without userfaultfd the kernel moves it as the model does (checked with a C probe on
//! 6.18.44). `--mremap-single-page` keeps mremap sources to one page, away from it.
//! (An earlier disagreement, an in-place mremap growth that reaches a compatible next VMA
//! and swallows it, was a model bug found by this fuzzer and is fixed.)
//!
//! `--against kernel` is real memory of this process ([`crate::kernel`]): the uffd flavour
//! for `--mode precise`, the soft-dirty flavour for `--mode legacy`.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::mm::Placement;
use crate::mode::Mode;
use crate::prot::Prot;
use crate::scan::{ScanArgs, ScanResult, PAGE_IS_SOFT_DIRTY};
use crate::trace::replay::{Backend, ModelBackend, Op};
use crate::vma::PAGE_SIZE;

/// The window every case works in (above the spec's 0x10_0000_0000).
pub const BASE: u64 = 0x50_0000_0000;
/// Its size in pages.
pub const WINDOW_PAGES: u64 = 24;

/// What the model is compared against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Against {
    /// Real memory of this process through the kernel backend.
    Kernel,
    /// An independent reference model (not implemented yet).
    Reference,
}

/// `softdirty fuzz` arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct FuzzArgs {
    /// Seed of the first case (case k uses seed + k).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of cases.
    #[arg(long, default_value_t = 200)]
    pub cases: u64,
    /// Operations per case.
    #[arg(long, default_value_t = 100)]
    pub ops: usize,
    /// The other side.
    #[arg(long, value_enum, default_value = "kernel")]
    pub against: Against,
    /// The model's mode (precise against uffd, legacy against real soft-dirty).
    #[arg(long, default_value = "precise", value_parser = parse_mode)]
    pub mode: Mode,
    /// mremap only one-page sources: steers clear of the uffd flavour's by-design
    /// refusal of multi-VMA moves (see the module docs).
    #[arg(long)]
    pub mremap_single_page: bool,
    /// Where the minimal failing trace goes.
    #[arg(long, default_value = "fuzz-failure.trace")]
    pub out: PathBuf,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

/// One generated operation (all addresses absolute, inside the window).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FuzzOp {
    /// `mmap ADDR LEN PROT fixed|noreplace`
    Mmap(u64, u64, Prot, Placement),
    /// `munmap ADDR LEN`
    Munmap(u64, u64),
    /// `mprotect ADDR LEN PROT`
    Mprotect(u64, u64, Prot),
    /// `mremap ADDR OLD NEW [maymove fixed NEWADDR]`
    Mremap(u64, u64, u64, Option<u64>),
    /// `madvise ADDR LEN dontneed`
    Dontneed(u64, u64),
    /// `write ADDR LEN`
    Write(u64, u64),
    /// `read ADDR LEN`
    Read(u64, u64),
    /// `clear_refs 4`
    ClearRefs,
    /// `scan ADDR LEN mask=softdirty return=softdirty clear`
    ScanClear(u64, u64),
}

fn prot_str(p: Prot) -> String {
    p.to_string()
}

impl fmt::Display for FuzzOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = |n: u64| format!("{}p", n / PAGE_SIZE);
        match self {
            FuzzOp::Mmap(a, l, pr, pl) => {
                let how = if *pl == Placement::Fixed {
                    "fixed"
                } else {
                    "noreplace"
                };
                write!(f, "mmap {a:#x} {} {} {how}", p(*l), prot_str(*pr))
            }
            FuzzOp::Munmap(a, l) => write!(f, "munmap {a:#x} {}", p(*l)),
            FuzzOp::Mprotect(a, l, pr) => write!(f, "mprotect {a:#x} {} {}", p(*l), prot_str(*pr)),
            FuzzOp::Mremap(a, o, n, None) => write!(f, "mremap {a:#x} {} {}", p(*o), p(*n)),
            FuzzOp::Mremap(a, o, n, Some(d)) => {
                write!(f, "mremap {a:#x} {} {} maymove fixed {d:#x}", p(*o), p(*n))
            }
            FuzzOp::Dontneed(a, l) => write!(f, "madvise {a:#x} {} dontneed", p(*l)),
            FuzzOp::Write(a, l) => write!(f, "write {a:#x} {}", p(*l)),
            FuzzOp::Read(a, l) => write!(f, "read {a:#x} {}", p(*l)),
            FuzzOp::ClearRefs => write!(f, "clear_refs 4"),
            FuzzOp::ScanClear(a, l) => {
                write!(
                    f,
                    "scan {a:#x} {} mask=softdirty return=softdirty clear",
                    p(*l)
                )
            }
        }
    }
}

/// A random case of `n` operations for `seed`.
pub fn generate(seed: u64, n: usize, mremap_single_page: bool) -> Vec<FuzzOp> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let prots = [Prot::NONE, Prot::R, Prot::RW, Prot::RW, Prot::RW, Prot::RX];
    let mut v = Vec::with_capacity(n);
    // Start with something mapped, most of the time.
    if rng.gen_bool(0.8) {
        v.push(FuzzOp::Mmap(
            BASE,
            8 * PAGE_SIZE,
            Prot::RW,
            Placement::NoReplace,
        ));
    }
    while v.len() < n {
        let a = BASE + rng.gen_range(0..WINDOW_PAGES) * PAGE_SIZE;
        let room = WINDOW_PAGES - (a - BASE) / PAGE_SIZE;
        let l = rng.gen_range(1..=room.min(8)) * PAGE_SIZE;
        let prot = prots[rng.gen_range(0..prots.len())];
        let op = match rng.gen_range(0..100) {
            0..=14 => {
                let pl = if rng.gen_bool(0.5) {
                    Placement::Fixed
                } else {
                    Placement::NoReplace
                };
                FuzzOp::Mmap(a, l, prot, pl)
            }
            15..=21 => FuzzOp::Munmap(a, l),
            22..=36 => FuzzOp::Mprotect(a, l, prot),
            37..=44 => {
                let newl = rng.gen_range(1..=8) * PAGE_SIZE;
                let l = if mremap_single_page { PAGE_SIZE } else { l };
                if rng.gen_bool(0.5) {
                    FuzzOp::Mremap(a, l, newl, None)
                } else {
                    let dpages = WINDOW_PAGES.saturating_sub(newl / PAGE_SIZE);
                    let d = BASE + rng.gen_range(0..=dpages) * PAGE_SIZE;
                    FuzzOp::Mremap(a, l, newl, Some(d))
                }
            }
            45..=50 => FuzzOp::Dontneed(a, l),
            51..=72 => FuzzOp::Write(a, l),
            73..=80 => FuzzOp::Read(a, l),
            81..=88 => FuzzOp::ClearRefs,
            _ => FuzzOp::ScanClear(a, l),
        };
        v.push(op);
    }
    v
}

/// What one side showed after one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// the operation's outcome: `ok`, `ok 0x...` (mremap), or the errno name
    pub outcome: String,
    /// soft-dirty pages of the window (relative runs)
    pub softdirty: Vec<(u64, u64)>,
    /// present pages of the window
    pub present: Vec<(u64, u64)>,
    /// VMAs intersecting the window
    pub vmas: u64,
    /// the regions of a scan (relative page runs), if the op was one
    pub scan: Option<Vec<(u64, u64)>>,
}

fn outcome(r: Op<()>) -> Result<String, String> {
    Ok(match r? {
        Ok(()) => "ok".to_string(),
        Err(e) => e.name().to_string(),
    })
}

fn outcome_addr(r: Op<u64>) -> Result<String, String> {
    Ok(match r? {
        Ok(v) => format!("ok {v:#x}"),
        Err(e) => e.name().to_string(),
    })
}

fn step(b: &mut dyn Backend, op: &FuzzOp) -> Result<Observation, String> {
    let mut scan = None;
    let out = match op {
        FuzzOp::Mmap(a, l, p, pl) => outcome_addr(b.mmap(*a, *l, *p, false, *pl))?,
        FuzzOp::Munmap(a, l) => outcome(b.munmap(*a, *l))?,
        FuzzOp::Mprotect(a, l, p) => outcome(b.mprotect(*a, *l, *p))?,
        FuzzOp::Mremap(a, o, n, d) => outcome_addr(b.mremap(*a, *o, *n, d.is_some(), *d))?,
        FuzzOp::Dontneed(a, l) => outcome(b.madvise_dontneed(*a, *l))?,
        FuzzOp::Write(a, l) => outcome(b.write(*a, *l))?,
        FuzzOp::Read(a, l) => outcome(b.read(*a, *l))?,
        FuzzOp::ClearRefs => outcome(b.clear_refs("4"))?,
        FuzzOp::ScanClear(a, l) => {
            let args = ScanArgs {
                start: *a,
                end: a + l,
                mask: PAGE_IS_SOFT_DIRTY,
                ret: PAGE_IS_SOFT_DIRTY,
                clear: true,
                vec_len: 1024,
                ..ScanArgs::default()
            };
            match b.scan(&args)? {
                Ok(ScanResult { regions, .. }) => {
                    scan = Some(
                        regions
                            .iter()
                            .map(|r| ((r.start - BASE) / PAGE_SIZE, (r.end - BASE) / PAGE_SIZE))
                            .collect(),
                    );
                    "ok".to_string()
                }
                Err(e) => e.name().to_string(),
            }
        }
    };
    let len = WINDOW_PAGES * PAGE_SIZE;
    let un = |e| format!("{e:?}");
    Ok(Observation {
        outcome: out,
        softdirty: b.softdirty_runs(BASE, len).map_err(un)?,
        present: b.present_runs(BASE, len).map_err(un)?,
        vmas: b.vma_count(BASE, len).map_err(un)?,
        scan,
    })
}

/// A disagreement: the step, and what each side showed.
#[derive(Clone, Debug)]
pub struct Mismatch {
    /// index of the operation after which the sides differ
    pub step: usize,
    /// the model's observation
    pub model: Observation,
    /// the other side's
    pub other: Observation,
}

type MakeOther<'a> = &'a dyn Fn() -> Result<Box<dyn Backend>, String>;

/// Runs `ops` on a fresh model and a fresh other side; the first mismatch, if any.
pub fn run_case(
    ops: &[FuzzOp],
    mode: Mode,
    other: MakeOther<'_>,
) -> Result<Option<Mismatch>, String> {
    let mut model = ModelBackend::new(mode);
    let mut k = other()?;
    for (i, op) in ops.iter().enumerate() {
        let m = step(&mut model, op)?;
        let o = step(k.as_mut(), op).map_err(|e| format!("step {i} `{op}`: {e}"))?;
        if m != o {
            return Ok(Some(Mismatch {
                step: i,
                model: m,
                other: o,
            }));
        }
    }
    Ok(None)
}

/// Shrinks a failing case: removes chunks, then single operations, while it still fails.
pub fn shrink(
    ops: &[FuzzOp],
    mode: Mode,
    other: MakeOther<'_>,
) -> Result<(Vec<FuzzOp>, Mismatch), String> {
    let fails = |v: &[FuzzOp]| -> Result<Option<Mismatch>, String> { run_case(v, mode, other) };
    let mut cur: Vec<FuzzOp> = ops.to_vec();
    let mut mm = fails(&cur)?.ok_or("the case no longer fails")?;
    cur.truncate(mm.step + 1);
    let mut chunk = cur.len().div_ceil(2).max(1);
    loop {
        let mut progress = false;
        let mut i = 0;
        while i < cur.len() {
            let mut cand = cur.clone();
            let end = (i + chunk).min(cand.len());
            cand.drain(i..end);
            if let Some(m) = fails(&cand)? {
                cand.truncate(m.step + 1);
                cur = cand;
                mm = m;
                progress = true;
            } else {
                i += chunk;
            }
        }
        if chunk == 1 && !progress {
            break;
        }
        if !progress {
            chunk = (chunk / 2).max(1);
        }
    }
    Ok((cur, mm))
}

fn fmt_runs(v: &[(u64, u64)]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.iter()
        .map(|&(a, b)| {
            if b == a + 1 {
                a.to_string()
            } else {
                format!("{a}..{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The minimal trace as text, ending with the other side's answers as expectations and
/// the model's as comments.
pub fn render(ops: &[FuzzOp], mode: Mode, m: &Mismatch, other_name: &str) -> String {
    let mut s = format!(
        "# softdirty fuzz: minimal trace where the model ({mode}) and {other_name} disagree\n\
         # after the last command. The expectations are {other_name}'s answers.\nmode {mode}\n"
    );
    for op in ops {
        s.push_str(&format!("{op}\n"));
    }
    let (o, md) = (&m.other, &m.model);
    let w = format!("{BASE:#x} {}p", WINDOW_PAGES);
    s.push_str(&format!("# model: {}\n", md.outcome));
    match o.outcome.as_str() {
        "ok" => s.push_str("expect ok\n"),
        x if x.starts_with("ok ") => s.push_str(&format!("expect ok # returned {}\n", &x[3..])),
        e => s.push_str(&format!("expect err {e}\n")),
    }
    s.push_str(&format!("# model: softdirty {}\n", fmt_runs(&md.softdirty)));
    s.push_str(&format!(
        "expect softdirty {w} {}\n",
        fmt_runs(&o.softdirty)
    ));
    s.push_str(&format!("# model: present {}\n", fmt_runs(&md.present)));
    s.push_str(&format!("expect present {w} {}\n", fmt_runs(&o.present)));
    s.push_str(&format!("# model: vmas {}\n", md.vmas));
    s.push_str(&format!("expect vmas {w} {}\n", o.vmas));
    if let (Some(a), Some(b)) = (&md.scan, &o.scan) {
        s.push_str(&format!(
            "# scan regions (window pages): model {}, {other_name} {}\nexpect regions {}\n",
            fmt_runs(a),
            fmt_runs(b),
            b.len()
        ));
    }
    s
}

/// `softdirty fuzz`.
pub fn main(args: &FuzzArgs) -> ExitCode {
    let flavour = match (args.against, args.mode) {
        (Against::Reference, _) => {
            eprintln!("fuzz: --against reference is not implemented yet (no reference model in this crate); use --against kernel");
            return ExitCode::from(2);
        }
        (Against::Kernel, Mode::Precise) => crate::trace::replay::KernelFlavour::Uffd,
        (Against::Kernel, Mode::Legacy) => crate::trace::replay::KernelFlavour::SoftDirty,
        (Against::Kernel, m) => {
            eprintln!("fuzz: no kernel implements mode {m}; use --mode precise (uffd) or legacy (soft-dirty)");
            return ExitCode::from(2);
        }
    };
    let other = move || -> Result<Box<dyn Backend>, String> { kernel(flavour) };
    if let Err(e) = other() {
        eprintln!("fuzz: the kernel backend cannot run here: {e}");
        return ExitCode::from(3);
    }
    let name = format!("the kernel ({})", flavour.name());
    for k in 0..args.cases {
        let seed = args.seed.wrapping_add(k);
        let ops = generate(seed, args.ops, args.mremap_single_page);
        match run_case(&ops, args.mode, &other) {
            Ok(None) => {}
            Ok(Some(_)) => {
                let (min, m) = match shrink(&ops, args.mode, &other) {
                    Ok(x) => x,
                    Err(e) => {
                        eprintln!("fuzz: seed {seed}: shrinking failed: {e}");
                        return ExitCode::from(1);
                    }
                };
                let text = render(&min, args.mode, &m, &name);
                if let Err(e) = std::fs::write(&args.out, &text) {
                    eprintln!("fuzz: writing {}: {e}", args.out.display());
                }
                eprintln!(
                    "fuzz: seed {seed}: the model and {name} disagree; minimal trace ({} ops) in {}:\n{text}",
                    min.len(),
                    args.out.display()
                );
                return ExitCode::from(1);
            }
            Err(e) => {
                eprintln!("fuzz: seed {seed}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    eprintln!(
        "fuzz: {} cases of {} operations from seed {}: the model ({}) and {name} agree",
        args.cases, args.ops, args.seed, args.mode
    );
    ExitCode::SUCCESS
}

#[cfg(all(target_os = "linux", not(all(loom, feature = "loom"))))]
fn kernel(f: crate::trace::replay::KernelFlavour) -> Result<Box<dyn Backend>, String> {
    crate::kernel::KernelBackend::new(Some(f))
        .map(|b| Box::new(b) as Box<dyn Backend>)
        .map_err(|e| e.to_string())
}

#[cfg(not(all(target_os = "linux", not(all(loom, feature = "loom")))))]
fn kernel(f: crate::trace::replay::KernelFlavour) -> Result<Box<dyn Backend>, String> {
    let _ = f;
    Err("the kernel backend exists only on Linux".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_parses() {
        let a = generate(7, 50, false);
        assert_eq!(a, generate(7, 50, false));
        let text: String = a.iter().map(|o| format!("{o}\n")).collect();
        crate::trace::parse::parse_bytes(text.as_bytes()).unwrap();
    }
}
