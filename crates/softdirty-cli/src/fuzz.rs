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
//! The other side ([`Side`]):
//! - `--against kernel`: real memory of this process ([`softdirty::kernel`]), the uffd flavour
//!   for `--mode precise`, the soft-dirty flavour for `--mode legacy`;
//! - `--against reference`: the independent reference model ([`crate::reference`], the
//!   one `tests/model_vs_reference.rs` uses), in any of the five modes. It shares no
//!   code with the model but plain value types; it follows the same written rules (Linux
//!   6.18), so it checks the model's implementation of them, not the rules themselves:
//!   that is what `--against kernel` is for.
//!
//! What a kernel side is asked, and what is left out by design ([`Profile`], chosen from
//! the side; every item is in ARCHITECTURE.md's list of deliberate divergences):
//! - uffd flavour: a same-size `mremap ... fixed` whose source runs past the end of the
//!   VMA it starts in (into another VMA or a gap) is a multi-VMA move (Linux 6.17+), which
//!   the kernel refuses with EFAULT for VMAs armed with userfaultfd, and the flavour arms
//!   every mapping: such moves are skipped on both sides, judged on the model's VMAs
//!   before each operation ([`uffd_divergence`]), and counted in the summary.
//!   `--mremap-single-page` (one-page mremap sources) stays clear of them altogether. (An
//!   earlier disagreement, an in-place mremap growth that swallows a compatible next VMA,
//!   was a model bug found by this fuzzer and is fixed.)
//! - soft-dirty flavour: no kernel call clears soft-dirty on a range (PM_SCAN_WP_MATCHING
//!   acts on uffd-registered memory only); the flavour emulates `scan ... clear` with
//!   `clear_refs 4` and stores where that is exact, and otherwise leaves soft-dirty
//!   unobservable until the next `clear_refs 4` ([`softdirty::kernel::clear`]), which would
//!   blind the rest of a case: the generator asks for the same scan without `clear`,
//!   whose regions are still compared.
//! - a kernel older than 6.17 (the kvm oracle's 6.12): operations whose shape 6.12
//!   answers differently from 6.18, which the model follows, are skipped on both sides,
//!   judged on the model's state before each operation ([`linux_6_12_divergence`]), and
//!   counted in the summary.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use softdirty::mm::{Placement, VmaInfo};
use softdirty::mode::Mode;
use softdirty::prot::Prot;
use crate::reference::RefSpace;
use softdirty::scan::{ScanArgs, ScanResult, PAGE_IS_SOFT_DIRTY};
use softdirty::backend::{Backend, ModelBackend, OpResult};
use softdirty::vma::PAGE_SIZE;

/// The window every case works in (above the spec's 0x10_0000_0000).
pub const BASE: u64 = 0x50_0000_0000;
/// Its size in pages.
pub const WINDOW_PAGES: u64 = 24;

/// What the model is compared against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Against {
    /// Real memory of this process through the kernel backend.
    Kernel,
    /// The independent reference model (`src/reference.rs`), in any mode.
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
    /// The model's mode (against the kernel: precise against uffd, legacy against real
    /// soft-dirty; against the reference: any mode).
    #[arg(long, default_value = "precise", value_parser = parse_mode)]
    pub mode: Mode,
    /// mremap only one-page sources: never generates the uffd flavour's by-design
    /// refusal of multi-VMA moves (which the kernel side skips anyway; see the module
    /// docs).
    #[arg(long)]
    pub mremap_single_page: bool,
    /// Start no new case after this many seconds (the summary says how many ran): bounds
    /// the time of a run on a slow machine, such as a kernel emulated by qemu in CI.
    #[arg(long)]
    pub max_seconds: Option<f64>,
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
    /// `scan ADDR LEN mask=softdirty return=softdirty` (what the soft-dirty flavour is
    /// asked instead of [`FuzzOp::ScanClear`])
    Scan(u64, u64),
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
            FuzzOp::Scan(a, l) => {
                write!(f, "scan {a:#x} {} mask=softdirty return=softdirty", p(*l))
            }
        }
    }
}

/// What the other side can be asked, and what it answers differently by design.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    /// mremap sources of one page only (`--mremap-single-page`; see the module docs).
    pub mremap_single_page: bool,
    /// Scans without `clear` instead of `scan ... clear` (the soft-dirty flavour).
    pub scan_without_clear: bool,
    /// The other side is Linux older than 6.17 (checked on 6.12): skip the operations
    /// [`linux_6_12_divergence`] names.
    pub linux_6_12: bool,
    /// The other side is the kernel backend's uffd flavour: skip the multi-VMA moves
    /// [`uffd_divergence`] names.
    pub uffd: bool,
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut v = Vec::new();
        if self.mremap_single_page {
            v.push("one-page mremap sources");
        }
        if self.scan_without_clear {
            v.push("scans without clear");
        }
        if self.linux_6_12 {
            v.push("skips Linux 6.12's by-design divergences");
        }
        if self.uffd {
            v.push("skips multi-VMA mremap moves (refused on uffd-armed VMAs)");
        }
        if v.is_empty() {
            f.write_str("every operation")
        } else {
            f.write_str(&v.join(", "))
        }
    }
}

/// A random case of `n` operations for `seed`. The profile changes the mremap source
/// lengths and the kind of scan, never the rest of the sequence.
pub fn generate(seed: u64, n: usize, profile: Profile) -> Vec<FuzzOp> {
    let mremap_single_page = profile.mremap_single_page;
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
            _ if profile.scan_without_clear => FuzzOp::Scan(a, l),
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

fn outcome(r: OpResult<()>) -> Result<String, String> {
    Ok(match r? {
        Ok(()) => "ok".to_string(),
        Err(e) => e.name().to_string(),
    })
}

fn outcome_addr(r: OpResult<u64>) -> Result<String, String> {
    Ok(match r? {
        Ok(v) => format!("ok {v:#x}"),
        Err(e) => e.name().to_string(),
    })
}

fn scan_args(a: u64, l: u64, clear: bool) -> ScanArgs {
    ScanArgs {
        start: a,
        end: a + l,
        mask: PAGE_IS_SOFT_DIRTY,
        ret: PAGE_IS_SOFT_DIRTY,
        clear,
        vec_len: 1024,
        ..ScanArgs::default()
    }
}

/// Page runs of the window, relative to [`BASE`], from absolute `(start, end)` pairs.
fn window_runs(v: impl Iterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    v.map(|(s, e)| ((s - BASE) / PAGE_SIZE, (e - BASE) / PAGE_SIZE))
        .collect()
}

/// One operation on a [`Backend`] (the model, or the kernel) and what it shows after it.
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
        FuzzOp::ScanClear(a, l) | FuzzOp::Scan(a, l) => {
            let clear = matches!(op, FuzzOp::ScanClear(..));
            match b.scan(&scan_args(*a, *l, clear))? {
                Ok(ScanResult { regions, .. }) => {
                    scan = Some(window_runs(regions.iter().map(|r| (r.start, r.end))));
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

/// The other side of a comparison.
pub trait Side {
    /// Runs `op` and observes the window after it.
    fn step(&mut self, op: &FuzzOp) -> Result<Observation, String>;
}

/// A [`Backend`] (the kernel) as a side.
pub struct BackendSide(pub Box<dyn Backend>);

impl Side for BackendSide {
    fn step(&mut self, op: &FuzzOp) -> Result<Observation, String> {
        step(self.0.as_mut(), op)
    }
}

/// The reference model ([`crate::reference`]) as a side. Every operation the generator
/// makes has a fixed address (`fixed`/`noreplace` mmaps, in-place or `fixed` mremaps), so
/// the reference never needs the model's choice of an address.
pub struct ReferenceSide(pub RefSpace);

fn res<T>(r: Result<T, softdirty::errno::Errno>, f: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => f(v),
        Err(e) => e.name().to_string(),
    }
}

impl Side for ReferenceSide {
    fn step(&mut self, op: &FuzzOp) -> Result<Observation, String> {
        let r = &mut self.0;
        let ok = |()| "ok".to_string();
        let addr = |v: u64| format!("ok {v:#x}");
        // The reference checks its own invariants with assertions: a failed one is a
        // finding to report, not a crash of the fuzzer.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut scan = None;
            let out = match *op {
                FuzzOp::Mmap(a, l, p, pl) => res(r.mmap(a, l, p, false, pl, || None), addr),
                FuzzOp::Munmap(a, l) => res(r.munmap(a, l), ok),
                FuzzOp::Mprotect(a, l, p) => res(r.mprotect(a, l, p), ok),
                FuzzOp::Mremap(a, o, n, d) => res(r.mremap(a, o, n, d.is_some(), d, || None), addr),
                FuzzOp::Dontneed(a, l) => res(r.madvise_dontneed(a, l), ok),
                FuzzOp::Write(a, l) => res(r.write(a, l), ok),
                FuzzOp::Read(a, l) => res(r.read(a, l), ok),
                FuzzOp::ClearRefs => res(r.clear_refs(4), ok),
                FuzzOp::ScanClear(a, l) | FuzzOp::Scan(a, l) => {
                    let clear = matches!(op, FuzzOp::ScanClear(..));
                    scan = Some(window_runs(r.scan_softdirty(a, a + l, clear).into_iter()));
                    "ok".to_string()
                }
            };
            let len = WINDOW_PAGES * PAGE_SIZE;
            let end = BASE + len;
            Observation {
                outcome: out,
                softdirty: r.softdirty_runs(BASE, len),
                present: r.present_runs(BASE, len),
                vmas: r
                    .vmas
                    .iter()
                    .filter(|v| v.start < end && v.end > BASE)
                    .count() as u64,
                scan,
            }
        }));
        run.map_err(|e| {
            let msg = e
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| e.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            format!("the reference model failed an internal check: {msg}")
        })
    }
}

/// The VMA of `v` containing `a`.
fn vma_at(v: &[VmaInfo], a: u64) -> Option<&VmaInfo> {
    v.iter().find(|w| w.start <= a && a < w.end)
}

/// Why Linux 6.12 would answer `op` differently from Linux 6.18 (which the model
/// follows), judged on the model's VMAs `v` before it; `None` when it would not. Written
/// from 6.12's `mm/mremap.c` and `mm/vma.c` (Debian 6.12.117); conservative (it may name
/// an operation that would in fact agree, never the other way round, as far as the
/// fuzzer has seen). Each reason is in ARCHITECTURE.md's list of deliberate divergences.
pub fn linux_6_12_divergence(v: &[VmaInfo], op: &FuzzOp) -> Option<&'static str> {
    let pages = |w: &VmaInfo| w.start..w.end;
    // An unfaulted VMA that keeps `prot` and contains `page` (after the operation).
    let unfaulted_with =
        |page: u64, prot: &str| vma_at(v, page).is_some_and(|u| !u.faulted && u.prot == prot);
    match *op {
        FuzzOp::Mremap(a, o, n, Some(d)) => {
            let Some(w) = vma_at(v, a) else {
                // 6.12 looks the source up (EFAULT) before it checks the overlap of the
                // two ranges (EINVAL); 6.18 checks the overlap first.
                return (a < d + n && d < a + o).then_some("mremap-order-efault");
            };
            if a + o.min(n) > w.end {
                // 6.12 unmaps the destination (and, for a shrink, the source's tail)
                // before vma_to_resize finds that the source crosses the VMA's end
                // (EFAULT); 6.18 fails before changing anything, or, for a same-size
                // move, moves the source VMA by VMA (6.17+).
                return Some("mremap-unmaps-before-efault");
            }
            // copy_vma merges the moved (faulted) VMA into an unfaulted neighbour at the
            // destination: 6.18 does, 6.12 refuses.
            (w.faulted
                && (d > 0 && unfaulted_with(d - PAGE_SIZE, &w.prot)
                    || unfaulted_with(d + n, &w.prot)))
            .then_some("anon-merge-faulted-into-unfaulted")
        }
        FuzzOp::Mremap(a, o, n, None) => {
            // An in-place growth (vma_merge_extend) of a faulted VMA that reaches an
            // unfaulted next VMA: 6.18 merges them, 6.12 refuses.
            let w = vma_at(v, a)?;
            (n > o && w.faulted && a + o == w.end && unfaulted_with(a + n, &w.prot))
                .then_some("anon-merge-faulted-into-unfaulted")
        }
        FuzzOp::Mprotect(a, l, prot) => {
            // A faulted VMA whose changed part starts (ends) at its start (end), next to an
            // unfaulted VMA that will have the same protection: vma_merge_existing_range
            // merges it into that neighbour in 6.18, not in 6.12.
            let e = a + l;
            let prot = prot.to_string();
            let after = |u: &VmaInfo| {
                if u.start < e && u.end > a {
                    prot.clone()
                } else {
                    u.prot.clone()
                }
            };
            let next_to_unfaulted =
                |page: u64| vma_at(v, page).is_some_and(|u| !u.faulted && after(u) == prot);
            v.iter()
                .filter(|w| w.faulted && w.start < e && w.end > a)
                .any(|w| {
                    let r = pages(w);
                    (a <= r.start && r.start > 0 && next_to_unfaulted(r.start - PAGE_SIZE))
                        || (e >= r.end && next_to_unfaulted(r.end))
                })
                .then_some("anon-merge-faulted-into-unfaulted")
        }
        _ => None,
    }
}

/// Why the kernel backend's uffd flavour would answer `op` differently from the model
/// (which follows Linux 6.18 on memory without userfaultfd), judged on the model's VMAs `v`
/// before it; `None` when it would not. One shape, exact (6.18's `remap_move`, after
/// d50dabff4d1f "mm/mremap: catch invalid multi VMA moves earlier"): a move-only mremap
/// (`fixed`, old length = new length) whose source starts in a VMA and ends past that
/// VMA's end (in another VMA or a gap) moves VMA by VMA on plain memory, and fails with
/// EFAULT, before moving anything, when the VMA is armed with userfaultfd
/// (`vma_multi_allowed`), as the flavour arms every mapping. A source starting in a gap is
/// EFAULT on both.
pub fn uffd_divergence(v: &[VmaInfo], op: &FuzzOp) -> Option<&'static str> {
    match *op {
        FuzzOp::Mremap(a, o, n, Some(_)) if o == n => {
            let w = vma_at(v, a)?;
            (a.saturating_add(o) > w.end).then_some("uffd-multi-vma-move")
        }
        _ => None,
    }
}

/// Why `profile` skips `op` on both sides, judged on the model's VMAs `v` before it.
pub fn skip_reason(profile: Profile, v: &[VmaInfo], op: &FuzzOp) -> Option<&'static str> {
    let r = if profile.uffd {
        uffd_divergence(v, op)
    } else {
        None
    };
    r.or_else(|| {
        profile
            .linux_6_12
            .then(|| linux_6_12_divergence(v, op))
            .flatten()
    })
}

/// A disagreement: the step, and what each side showed.
#[derive(Clone, Debug)]
pub struct Mismatch {
    /// index of the operation after which the sides differ
    pub step: usize,
    /// the operations that ran, up to and including that one (the skipped ones left out)
    pub ran: Vec<FuzzOp>,
    /// the model's observation
    pub model: Observation,
    /// the other side's
    pub other: Observation,
}

/// Makes a fresh other side.
pub type MakeOther<'a> = &'a dyn Fn() -> Result<Box<dyn Side>, String>;

/// A case's result.
#[derive(Clone, Debug)]
pub struct CaseResult {
    /// the first mismatch, if any
    pub mismatch: Option<Mismatch>,
    /// operations skipped by the profile (not run on either side)
    pub skipped: u64,
}

/// Runs `ops` on a fresh model and a fresh other side; the first mismatch, if any.
pub fn run_case(
    ops: &[FuzzOp],
    mode: Mode,
    profile: Profile,
    other: MakeOther<'_>,
) -> Result<CaseResult, String> {
    let mut model = ModelBackend::new(mode);
    let mut k = other()?;
    let mut ran = Vec::with_capacity(ops.len());
    let mut skipped = 0;
    for (i, op) in ops.iter().enumerate() {
        if (profile.linux_6_12 || profile.uffd)
            && skip_reason(profile, &model.current().vmas(), op).is_some()
        {
            skipped += 1;
            continue;
        }
        ran.push(op.clone());
        let m = step(&mut model, op)?;
        let o = k.step(op).map_err(|e| format!("step {i} `{op}`: {e}"))?;
        if m != o {
            return Ok(CaseResult {
                mismatch: Some(Mismatch {
                    step: i,
                    ran,
                    model: m,
                    other: o,
                }),
                skipped,
            });
        }
    }
    Ok(CaseResult {
        mismatch: None,
        skipped,
    })
}

/// Shrinks a failing case: removes chunks, then single operations, while it still fails.
pub fn shrink(
    ops: &[FuzzOp],
    mode: Mode,
    profile: Profile,
    other: MakeOther<'_>,
) -> Result<(Vec<FuzzOp>, Mismatch), String> {
    let fails = |v: &[FuzzOp]| -> Result<Option<Mismatch>, String> {
        Ok(run_case(v, mode, profile, other)?.mismatch)
    };
    let mut cur: Vec<FuzzOp> = ops.to_vec();
    let mut mm = fails(&cur)?.ok_or("the case no longer fails")?;
    cur = mm.ran.clone();
    let mut chunk = cur.len().div_ceil(2).max(1);
    loop {
        let mut progress = false;
        let mut i = 0;
        while i < cur.len() {
            let mut cand = cur.clone();
            let end = (i + chunk).min(cand.len());
            cand.drain(i..end);
            if let Some(m) = fails(&cand)? {
                cur = m.ran.clone();
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

/// The running kernel's (major, minor) version, from uname(2).
fn kernel_version() -> Option<(u32, u32)> {
    // SAFETY: uname fills the zeroed `utsname` we own; the fields are NUL-terminated.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let rel: String = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8 as char)
        .collect();
    let mut it = rel.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The profile of the kernel side for the model's mode `mode` (precise: the uffd flavour;
/// legacy: the soft-dirty flavour) on Linux `version`.
pub fn kernel_profile(
    mode: Mode,
    version: Option<(u32, u32)>,
    mremap_single_page: bool,
) -> Profile {
    Profile {
        mremap_single_page,
        scan_without_clear: mode == Mode::Legacy,
        linux_6_12: version.is_some_and(|v| v < (6, 17)),
        uffd: mode == Mode::Precise,
    }
}

/// `softdirty fuzz`.
pub fn main(args: &FuzzArgs) -> ExitCode {
    let mut profile = Profile {
        mremap_single_page: args.mremap_single_page,
        ..Profile::default()
    };
    let (name, other): (String, Box<dyn Fn() -> Result<Box<dyn Side>, String>>) = match (
        args.against,
        args.mode,
    ) {
        (Against::Reference, m) => (
            "the reference model".to_string(),
            Box::new(move || Ok(Box::new(ReferenceSide(RefSpace::new(m))) as Box<dyn Side>)),
        ),
        (Against::Kernel, m @ (Mode::Precise | Mode::Legacy)) => {
            let flavour = if m == Mode::Precise {
                softdirty::backend::KernelFlavour::Uffd
            } else {
                softdirty::backend::KernelFlavour::SoftDirty
            };
            let version = kernel_version();
            profile = kernel_profile(m, version, args.mremap_single_page);
            let v = version.map_or("?".to_string(), |(a, b)| format!("{a}.{b}"));
            (
                format!("the kernel ({}, Linux {v})", flavour.name()),
                Box::new(move || {
                    kernel(flavour).map(|b| Box::new(BackendSide(b)) as Box<dyn Side>)
                }),
            )
        }
        (Against::Kernel, m) => {
            eprintln!("fuzz: no kernel implements mode {m}; use --mode precise (uffd) or legacy (soft-dirty)");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = other() {
        eprintln!("fuzz: {name} cannot run here: {e}");
        return ExitCode::from(3);
    }
    let t0 = std::time::Instant::now();
    let mut skipped = 0u64;
    let mut ran = 0u64;
    for k in 0..args.cases {
        if args
            .max_seconds
            .is_some_and(|m| t0.elapsed().as_secs_f64() >= m)
        {
            break;
        }
        ran += 1;
        let seed = args.seed.wrapping_add(k);
        let ops = generate(seed, args.ops, profile);
        match run_case(&ops, args.mode, profile, &*other) {
            Ok(CaseResult {
                mismatch: None,
                skipped: s,
            }) => skipped += s,
            Ok(CaseResult {
                mismatch: Some(_), ..
            }) => {
                let (min, m) = match shrink(&ops, args.mode, profile, &*other) {
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
    let total = ran * args.ops as u64;
    let cut = if ran < args.cases {
        format!(" (of {}: --max-seconds reached)", args.cases)
    } else {
        String::new()
    };
    eprintln!(
        "fuzz: {ran}{cut} cases of {} operations from seed {}: the model ({}) and {name} agree \
         ({}; {skipped} of {total} operations skipped; {:.1} s)",
        args.ops,
        args.seed,
        args.mode,
        profile,
        t0.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

fn kernel(f: softdirty::backend::KernelFlavour) -> Result<Box<dyn Backend>, String> {
    softdirty::backend::open(softdirty::backend::BackendChoice::Kernel(Some(f)), softdirty::mode::Mode::Legacy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_parses() {
        let a = generate(7, 50, Profile::default());
        assert_eq!(a, generate(7, 50, Profile::default()));
        let text: String = a.iter().map(|o| format!("{o}\n")).collect();
        softdirty_trace::parse::parse_bytes(text.as_bytes()).unwrap();
    }

    #[test]
    fn profiles_change_only_what_they_say() {
        let all: Vec<FuzzOp> = (0..20)
            .flat_map(|s| generate(s, 100, Profile::default()))
            .collect();
        let p = Profile {
            mremap_single_page: true,
            scan_without_clear: true,
            linux_6_12: true,
            uffd: true,
        };
        let some: Vec<FuzzOp> = (0..20).flat_map(|s| generate(s, 100, p)).collect();
        assert_eq!(all.len(), some.len());
        let (mut scans, mut mremaps) = (0, 0);
        for (a, b) in all.iter().zip(&some) {
            match (a, b) {
                (FuzzOp::ScanClear(x, y), FuzzOp::Scan(u, v)) => {
                    assert_eq!((x, y), (u, v));
                    scans += 1;
                }
                (FuzzOp::Mremap(x, _, n, d), FuzzOp::Mremap(u, o, m, e)) => {
                    assert_eq!((x, n, d, *o), (u, m, e, PAGE_SIZE));
                    mremaps += 1;
                }
                _ => assert_eq!(a, b),
            }
        }
        assert!(
            scans > 50 && mremaps > 50,
            "{scans} scans, {mremaps} mremaps"
        );
        let text: String = some.iter().map(|o| format!("{o}\n")).collect();
        softdirty_trace::parse::parse_bytes(text.as_bytes()).unwrap();
    }

    fn reference(mode: Mode) -> impl Fn() -> Result<Box<dyn Side>, String> {
        move || Ok(Box::new(ReferenceSide(RefSpace::new(mode))) as Box<dyn Side>)
    }

    #[test]
    fn the_model_agrees_with_the_reference() {
        for mode in Mode::ALL {
            for seed in 0..200 {
                let ops = generate(seed, 100, Profile::default());
                let r = run_case(&ops, mode, Profile::default(), &reference(mode)).unwrap();
                assert!(r.mismatch.is_none(), "{mode} seed {seed}: {:?}", r.mismatch);
                assert_eq!(r.skipped, 0);
            }
        }
    }

    /// The reference, except that it claims one VMA more after every successful mprotect.
    struct Lying(ReferenceSide);

    impl Side for Lying {
        fn step(&mut self, op: &FuzzOp) -> Result<Observation, String> {
            let mut o = self.0.step(op)?;
            if matches!(op, FuzzOp::Mprotect(..)) && o.outcome == "ok" {
                o.vmas += 1;
            }
            Ok(o)
        }
    }

    #[test]
    fn a_disagreement_is_found_shrunk_and_rendered() {
        let lying =
            || Ok(Box::new(Lying(ReferenceSide(RefSpace::new(Mode::Legacy)))) as Box<dyn Side>);
        let ops = generate(3, 100, Profile::default());
        let first = run_case(&ops, Mode::Legacy, Profile::default(), &lying).unwrap();
        let m = first.mismatch.expect("the lie is seen");
        assert!(matches!(ops[m.step], FuzzOp::Mprotect(..)));
        let (min, m) = shrink(&ops, Mode::Legacy, Profile::default(), &lying).unwrap();
        // An mprotect succeeds only on mapped memory: an mmap and the mprotect.
        assert_eq!(min.len(), 2, "{min:?}");
        assert!(matches!(min[0], FuzzOp::Mmap(..)) && matches!(min[1], FuzzOp::Mprotect(..)));
        assert_eq!(m.other.vmas, m.model.vmas + 1);
        let text = render(&min, Mode::Legacy, &m, "the liar");
        assert!(text.contains(&format!("expect vmas {BASE:#x} 24p {}", m.other.vmas)));
        softdirty_trace::parse::parse_bytes(text.as_bytes()).unwrap();
    }

    fn vma(start: u64, end: u64, prot: Prot, faulted: bool) -> VmaInfo {
        VmaInfo {
            start: BASE + start * PAGE_SIZE,
            end: BASE + end * PAGE_SIZE,
            prot: prot.to_string(),
            shared: false,
            vm_softdirty: true,
            faulted,
        }
    }

    #[test]
    fn linux_6_12_shapes() {
        let p = |n: u64| BASE + n * PAGE_SIZE;
        let l = |n: u64| n * PAGE_SIZE;
        let div = linux_6_12_divergence;
        // No VMA at the source: overlapping ranges are EINVAL in 6.18, EFAULT in 6.12.
        let v = [vma(0, 8, Prot::RW, true)];
        let m = |a, o, n, d| FuzzOp::Mremap(p(a), l(o), l(n), Some(p(d)));
        assert_eq!(div(&v, &m(9, 8, 7, 15)), Some("mremap-order-efault"));
        assert_eq!(div(&v, &m(9, 2, 2, 15)), None);
        // A source crossing its VMA's end.
        let v = [vma(0, 1, Prot::RW, true), vma(1, 8, Prot::RX, false)];
        assert_eq!(
            div(&v, &m(0, 2, 3, 15)),
            Some("mremap-unmaps-before-efault")
        );
        assert_eq!(
            div(&v, &m(0, 2, 2, 15)),
            Some("mremap-unmaps-before-efault")
        );
        assert_eq!(
            div(&v, &m(0, 2, 1, 15)),
            None,
            "a shrink moves only [a, a+new)"
        );
        assert_eq!(div(&v, &m(1, 7, 7, 15)), None);
        // A faulted source moved next to an unfaulted VMA of the same protection.
        let v = [vma(0, 2, Prot::RW, true), vma(20, 24, Prot::RW, false)];
        assert_eq!(
            div(&v, &m(0, 2, 2, 18)),
            Some("anon-merge-faulted-into-unfaulted")
        );
        assert_eq!(div(&v, &m(0, 2, 2, 17)), None, "not adjacent");
        let v = [vma(0, 2, Prot::RW, true), vma(20, 24, Prot::R, false)];
        assert_eq!(div(&v, &m(0, 2, 2, 18)), None, "another protection");
        let v = [vma(0, 2, Prot::RW, false), vma(20, 24, Prot::RW, true)];
        assert_eq!(div(&v, &m(0, 2, 2, 18)), None, "an unfaulted source");
        // An in-place growth of a faulted VMA up to an unfaulted next VMA.
        let v = [vma(0, 4, Prot::RW, true), vma(6, 8, Prot::RW, false)];
        let g = |o, n| FuzzOp::Mremap(p(0), l(o), l(n), None);
        assert_eq!(div(&v, &g(4, 6)), Some("anon-merge-faulted-into-unfaulted"));
        assert_eq!(div(&v, &g(4, 5)), None);
        let v = [vma(0, 4, Prot::RW, true), vma(6, 8, Prot::RW, true)];
        assert_eq!(div(&v, &g(4, 6)), None);
        // mprotect merging a faulted VMA into an unfaulted neighbour (the fuzzer's seed 7).
        let v = [
            vma(8, 10, Prot::RW, true),
            vma(10, 15, Prot::NONE, false),
            vma(15, 16, Prot::NONE, true),
        ];
        let mp = |a, n, prot| FuzzOp::Mprotect(p(a), l(n), prot);
        assert_eq!(
            div(&v, &mp(11, 5, Prot::RW)),
            Some("anon-merge-faulted-into-unfaulted")
        );
        assert_eq!(
            div(&v, &mp(15, 1, Prot::NONE)),
            Some("anon-merge-faulted-into-unfaulted")
        );
        assert_eq!(
            div(&v, &mp(15, 1, Prot::RW)),
            None,
            "the neighbour keeps PROT_NONE"
        );
        assert_eq!(
            div(&v, &mp(8, 2, Prot::NONE)),
            Some("anon-merge-faulted-into-unfaulted")
        );
        assert_eq!(
            div(&v, &mp(8, 1, Prot::NONE)),
            None,
            "the changed part ends inside"
        );
        assert_eq!(
            div(&v, &mp(10, 5, Prot::RW)),
            None,
            "an unfaulted VMA merging is fine"
        );
        // Everything else.
        assert_eq!(div(&v, &FuzzOp::Write(p(8), l(8))), None);
        assert_eq!(div(&v, &FuzzOp::Munmap(p(8), l(8))), None);
    }

    #[test]
    fn uffd_shapes() {
        let p = |n: u64| BASE + n * PAGE_SIZE;
        let l = |n: u64| n * PAGE_SIZE;
        let m = |a, o, n, d| FuzzOp::Mremap(p(a), l(o), l(n), Some(p(d)));
        let div = uffd_divergence;
        // The fuzzer's seed 2: a 2-page move from a 1-page VMA into the next one.
        let v = [vma(0, 8, Prot::RW, true), vma(8, 9, Prot::R, false)];
        assert_eq!(div(&v, &m(7, 2, 2, 15)), Some("uffd-multi-vma-move"));
        // A VMA then a gap: refused as well on uffd-armed memory.
        let v = [vma(0, 8, Prot::RW, true)];
        assert_eq!(div(&v, &m(7, 2, 2, 15)), Some("uffd-multi-vma-move"));
        // Inside one VMA, a resize, an in-place mremap, a source starting in a gap.
        assert_eq!(div(&v, &m(6, 2, 2, 15)), None);
        assert_eq!(div(&v, &m(7, 2, 3, 15)), None);
        assert_eq!(div(&v, &FuzzOp::Mremap(p(7), l(2), l(2), None)), None);
        assert_eq!(div(&v, &m(8, 2, 2, 15)), None);
        assert_eq!(div(&v, &FuzzOp::Write(p(0), l(8))), None);
    }

    #[test]
    fn the_default_kernel_profile_skips_multi_vma_moves_against_uffd() {
        // `softdirty fuzz` with no flags: precise against the uffd flavour of Linux 6.18.
        let prof = kernel_profile(Mode::Precise, Some((6, 18)), false);
        assert!(prof.uffd && !prof.linux_6_12 && !prof.scan_without_clear);
        assert!(!kernel_profile(Mode::Legacy, Some((6, 12)), false).uffd);
        // The shape of the first failure of a default run (seed 2).
        let ops = [
            FuzzOp::Mmap(BASE + 0x16000, PAGE_SIZE, Prot::RW, Placement::NoReplace),
            FuzzOp::Mremap(
                BASE + 0x16000,
                2 * PAGE_SIZE,
                2 * PAGE_SIZE,
                Some(BASE + 0x9000),
            ),
        ];
        let r = run_case(&ops, Mode::Precise, prof, &reference(Mode::Precise)).unwrap();
        assert!(r.mismatch.is_none());
        assert_eq!(r.skipped, 1);
        let r = run_case(
            &ops,
            Mode::Precise,
            Profile::default(),
            &reference(Mode::Precise),
        );
        assert_eq!(r.unwrap().skipped, 0, "only the uffd profile skips it");
        // Over generated cases the skips are few, and none with one-page sources.
        let (mut skipped, mut total) = (0, 0);
        for seed in 0..50 {
            let ops = generate(seed, 100, prof);
            let r = run_case(&ops, Mode::Precise, prof, &reference(Mode::Precise)).unwrap();
            assert!(r.mismatch.is_none(), "seed {seed}: {:?}", r.mismatch);
            skipped += r.skipped;
            total += ops.len() as u64;
            let single = Profile {
                mremap_single_page: true,
                ..prof
            };
            let ops = generate(seed, 100, single);
            let r = run_case(&ops, Mode::Precise, single, &reference(Mode::Precise)).unwrap();
            assert_eq!(r.skipped, 0, "seed {seed}");
        }
        assert!(skipped > 0 && skipped * 20 < total, "{skipped} of {total}");
    }
}
