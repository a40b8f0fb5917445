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
//! The other side is any [`Backend`], as the model is; both perform the same generated
//! [`Command`]s and are observed through the trait:
//! - `--against kernel`: real processes ([`softdirty::kernel`], a puppet per space), the
//!   uffd flavour for `--mode precise`, the soft-dirty flavour for `--mode legacy`;
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
//!   counted in the summary; so are guard advices (6.13+).
//! - uffd flavour, trace v2: `guard_install` over a file or shared VMA (Linux 6.18 loops
//!   forever on a write-protected entry there), and a `brk` growth next to a VMA below
//!   the heap's start, which the registration merges and brk(2) does not
//!   ([`uffd_brk_divergence`]); a fork child's soft-dirty until its first clear, and
//!   pages changed behind a mapping, are masked page by page (the backend says which).
//! - soft-dirty flavour: reads and `populate_read` of file mappings and shared memory
//!   ([`fault_around_divergence`]: Linux maps cached neighbours too).
//!
//! Both kernel profiles generate trace v2: files, the program break, the mmap flags
//! (`growsdown` stacks included), every madvise advice, and `fork`/`space` over four
//! spaces, each a process of its own on the kernel side.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::reference::RefBackend;
use softdirty::backend::{Backend, Command, ModelBackend, Op, Outcome};
use softdirty::errno::Errno;
use softdirty::linux::PAGE_SIZE;
use softdirty::mm::{Placement, VmaInfo};
use softdirty::mode::Mode;
use softdirty::prot::Prot;
use softdirty::scan::{ScanArgs, PAGE_IS_SOFT_DIRTY};
use softdirty_trace::ast::{Addr, AddrBase, Expect, PageSet};
use softdirty_trace::render;

/// The window every case works in (above the spec's 0x10_0000_0000).
pub const BASE: u64 = 0x50_0000_0000;
/// Its size in pages.
pub const WINDOW_PAGES: u64 = 24;

/// What the model is compared against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Against {
    /// Real processes through the kernel backend (a puppet process per space).
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
    /// Number of cases (at least 1).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub cases: u64,
    /// Operations per case (1 to 100,000: a case is generated and shrunk in memory).
    #[arg(long, default_value_t = 100, value_parser = parse_ops)]
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
    #[arg(long, value_parser = parse_seconds)]
    pub max_seconds: Option<f64>,
    /// Where the minimal failing trace goes (`-`: stdout); checked before the first case.
    #[arg(long, default_value = "fuzz-failure.trace")]
    pub out: PathBuf,
}

/// The most operations per case (`--ops`).
pub const MAX_OPS: usize = 100_000;

fn parse_ops(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|e| format!("`{s}` is not a number of operations: {e}"))?;
    if !(1..=MAX_OPS).contains(&n) {
        return Err(format!("{n} operations: 1 to {MAX_OPS} per case"));
    }
    Ok(n)
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() => Ok(x),
        _ => Err(format!("`{s}`: a positive number of seconds")),
    }
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

/// `scan ADDR LEN mask=softdirty return=softdirty [clear]`: the one scan the fuzzer
/// makes (with `clear` unless the profile says [`Profile::scan_without_clear`]).
pub fn scan(a: u64, l: u64, clear: bool) -> Command {
    Command::Scan(ScanArgs {
        start: a,
        end: a + l,
        mask: PAGE_IS_SOFT_DIRTY,
        ret: PAGE_IS_SOFT_DIRTY,
        clear,
        vec_len: 1024,
        ..ScanArgs::default()
    })
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
    /// Also trace v2's operations (the program break, mmap noreserve/populate, the madvise
    /// advices), drawn from a second generator so that the v1 sequence of a seed stays
    /// the same (against the reference model).
    pub v2: bool,
    /// Also trace v2's files: a regular file and a memfd, mapped shared and private,
    /// resized and written with `fwrite`, from a third generator (on the kernel's
    /// soft-dirty flavour, which registers nothing, reads of file mappings are skipped:
    /// Linux's fault-around may map their cached neighbours).
    pub files: bool,
    /// With `v2`: also `fork` and `space` (a few spaces, each its own process on the
    /// kernel).
    pub spaces: bool,
    /// With `v2`: also `growsdown` mappings, whose accesses below grow them.
    pub stacks: bool,
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
        if self.v2 {
            v.push("with trace v2's brk, mmap flags and madvise advices");
        }
        if self.files {
            v.push("with trace v2's files");
        }
        if self.spaces {
            v.push("fork and spaces");
        }
        if self.stacks {
            v.push("growsdown stacks");
        }
        if v.is_empty() {
            f.write_str("every operation")
        } else {
            f.write_str(&v.join(", "))
        }
    }
}

/// `mmap ADDR LEN PROT private fixed|noreplace`.
pub fn mmap(a: u64, l: u64, prot: Prot, placement: Placement) -> Command {
    Command::Op(Op::Mmap {
        addr: a,
        len: l,
        prot,
        shared: false,
        placement,
        opts: softdirty::mm::MapOpts::default(),
    })
}

/// `mremap ADDR OLD NEW` in place, or `maymove fixed NEWADDR`.
pub fn mremap(a: u64, old: u64, new: u64, dest: Option<u64>) -> Command {
    Command::Op(Op::Mremap {
        addr: a,
        old_len: old,
        new_len: new,
        maymove: dest.is_some(),
        fixed: dest,
    })
}

/// The files of a case with files: a regular file and a memfd.
const FILES: [(&str, bool); 2] = [("fa", false), ("fm", true)];

/// Pages of each file at the start of a case.
const FILE_PAGES: u64 = 16;

/// One file operation over `[a, a + l)`: a mapping of one of [`FILES`] (shared or
/// private, at a page offset that may reach past the end), a size change of the memfd
/// (sometimes to a size within a page), or an `fwrite`.
fn file_op(rng: &mut SmallRng, a: u64, l: u64, prot: Prot) -> Command {
    let (name, _) = FILES[rng.gen_range(0..FILES.len())];
    match rng.gen_range(0..10) {
        0..=5 => Command::MmapFile(softdirty::backend::FileMapping {
            addr: a,
            len: l,
            prot,
            shared: rng.gen_bool(0.5),
            placement: if rng.gen_bool(0.7) {
                Placement::Fixed
            } else {
                Placement::NoReplace
            },
            opts: softdirty::mm::MapOpts::default(),
            name: name.to_string(),
            offset: rng.gen_range(0..FILE_PAGES + 4) * PAGE_SIZE,
        }),
        // Size changes of the memfd only: on a disk filesystem with large folios (ext4 on
        // 6.18) a truncation may unmap the whole folio that straddles the new end, pages
        // below it included (ARCHITECTURE.md, "Deliberate divergences").
        6..=7 => Command::File {
            name: "fm".to_string(),
            memfd: true,
            size: rng.gen_range(0..FILE_PAGES + 4) * PAGE_SIZE
                + if rng.gen_bool(0.2) { 100 } else { 0 },
        },
        _ => Command::Fwrite {
            name: name.to_string(),
            offset: rng.gen_range(0..(FILE_PAGES + 4) * PAGE_SIZE),
            len: rng.gen_range(1..=3 * PAGE_SIZE),
        },
    }
}

/// The spaces a case with [`Profile::spaces`] forks and switches between.
const SPACES: [&str; 4] = ["main", "c1", "c2", "c3"];

/// One operation of trace v2 over `[a, a + l)`: the program break (its start inside the
/// window, so that the heap meets the window's mappings), mmap with noreserve/populate
/// (and growsdown), a v2 madvise advice, or (with [`Profile::spaces`]) a fork or a
/// switch of space. The draws are the same whatever the profile.
fn v2_op(rng: &mut SmallRng, a: u64, l: u64, prot: Prot, profile: Profile) -> Command {
    use softdirty::mm::{Advice, MapOpts};
    let space = SPACES[rng.gen_range(0..SPACES.len())].to_string();
    let growsdown = rng.gen_bool(0.3) && profile.stacks;
    match rng.gen_range(0..12) {
        10 if profile.spaces => Command::Fork(space),
        11 if profile.spaces => Command::Space(space),
        0 => Command::BrkStart(BASE + rng.gen_range(0..WINDOW_PAGES / 2) * PAGE_SIZE),
        1..=3 => {
            // Anywhere around the window, unaligned too.
            let off = rng.gen_range(0..(WINDOW_PAGES + 4) * PAGE_SIZE);
            Command::Brk((BASE + off).saturating_sub(2 * PAGE_SIZE))
        }
        4..=5 => Command::Op(Op::Mmap {
            addr: a,
            len: l,
            prot,
            shared: rng.gen_bool(0.2),
            placement: if rng.gen_bool(0.5) {
                Placement::Fixed
            } else {
                Placement::NoReplace
            },
            opts: MapOpts {
                file: None,
                noreserve: rng.gen_bool(0.5),
                populate: rng.gen_bool(0.5),
                growsdown,
            },
        }),
        _ => {
            let advices = &Advice::ALL[1..];
            Command::Op(Op::Madvise {
                addr: a,
                len: l,
                advice: advices[rng.gen_range(0..advices.len())],
            })
        }
    }
}

/// A random case of `n` operations for `seed`. The profile changes the mremap source
/// lengths and the kind of scan, never the rest of the sequence.
pub fn generate(seed: u64, n: usize, profile: Profile) -> Vec<Command> {
    let mremap_single_page = profile.mremap_single_page;
    let mut rng = SmallRng::seed_from_u64(seed);
    let prots = [Prot::NONE, Prot::R, Prot::RW, Prot::RW, Prot::RW, Prot::RX];
    let mut v = Vec::with_capacity(n);
    // v2 operations come from their own generator: a v1 case is the same with or without.
    let mut rng2 = SmallRng::seed_from_u64(seed ^ 0x7632_7632_7632_7632);
    // Files too, from a third one.
    let mut rng3 = SmallRng::seed_from_u64(seed ^ 0x6669_6c65_6669_6c65);
    if profile.files {
        for (name, memfd) in FILES {
            v.push(Command::File {
                name: name.to_string(),
                memfd,
                size: FILE_PAGES * PAGE_SIZE,
            });
        }
    }
    // Start with something mapped, most of the time.
    if rng.gen_bool(0.8) {
        v.push(mmap(BASE, 8 * PAGE_SIZE, Prot::RW, Placement::NoReplace));
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
                mmap(a, l, prot, pl)
            }
            15..=21 => Command::Op(Op::Munmap { addr: a, len: l }),
            22..=36 => Command::Op(Op::Mprotect {
                addr: a,
                len: l,
                prot,
            }),
            37..=44 => {
                let newl = rng.gen_range(1..=8) * PAGE_SIZE;
                let l = if mremap_single_page { PAGE_SIZE } else { l };
                if rng.gen_bool(0.5) {
                    mremap(a, l, newl, None)
                } else {
                    let dpages = WINDOW_PAGES.saturating_sub(newl / PAGE_SIZE);
                    let d = BASE + rng.gen_range(0..=dpages) * PAGE_SIZE;
                    mremap(a, l, newl, Some(d))
                }
            }
            45..=50 => Command::Op(Op::DontNeed { addr: a, len: l }),
            51..=72 => Command::Write { addr: a, len: l },
            73..=80 => Command::Read { addr: a, len: l },
            81..=88 => Command::ClearRefs("4".into()),
            _ => scan(a, l, !profile.scan_without_clear),
        };
        let op = if profile.v2 && rng2.gen_bool(0.2) {
            v2_op(&mut rng2, a, l, prot, profile)
        } else {
            op
        };
        let op = if profile.files && rng3.gen_bool(0.25) {
            file_op(&mut rng3, a, l, prot)
        } else {
            op
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
    /// soft-dirty pages of the window (relative runs); `None` where the side cannot
    /// observe them at all
    pub softdirty: Option<Vec<(u64, u64)>>,
    /// pages of the window (relative runs) whose soft-dirty state the side cannot
    /// observe (the uffd flavour, where a file page changed behind a mapping); the rest
    /// of `softdirty` is compared
    pub unobservable: Vec<(u64, u64)>,
    /// present pages of the window
    pub present: Vec<(u64, u64)>,
    /// VMAs intersecting the window
    pub vmas: u64,
    /// the regions of a scan (relative page runs), if the op was one
    pub scan: Option<Vec<(u64, u64)>>,
}

impl Observation {
    /// Do two sides agree, on everything both observed?
    pub fn agrees(&self, o: &Observation) -> bool {
        let both = |a: &Option<Vec<(u64, u64)>>, b: &Option<Vec<(u64, u64)>>| match (a, b) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        // Soft-dirty: equal on every page of the window that neither side masks.
        let bits = |v: &[(u64, u64)]| {
            v.iter()
                .fold(0u64, |m, &(s, e)| (s..e.min(64)).fold(m, |m, p| m | 1 << p))
        };
        let sd = match (&self.softdirty, &o.softdirty) {
            (Some(a), Some(b)) => {
                let masked = bits(&self.unobservable) | bits(&o.unobservable);
                (bits(a) ^ bits(b)) & !masked == 0
            }
            _ => true,
        };
        self.outcome == o.outcome
            && self.present == o.present
            && self.vmas == o.vmas
            && sd
            && both(&self.scan, &o.scan)
    }

    /// Pages of the window whose soft-dirty state this side did not observe.
    pub fn unobserved_pages(&self) -> u64 {
        if self.softdirty.is_none() {
            return WINDOW_PAGES;
        }
        self.unobservable.iter().map(|&(s, e)| e - s).sum()
    }
}

/// Page runs of the window, relative to [`BASE`], from absolute `(start, end)` pairs.
fn window_runs(v: impl Iterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    v.map(|(s, e)| ((s - BASE) / PAGE_SIZE, (e - BASE) / PAGE_SIZE))
        .collect()
}

/// Performs `cmd` on a [`Backend`] (the model, the kernel, the reference) and observes
/// the window after it.
pub fn step(b: &mut dyn Backend, cmd: &Command) -> Result<Observation, String> {
    let mut scan = None;
    // A scan whose regions this side cannot compare (`scan_unobservable`) is left out.
    let scan_seen = match cmd {
        Command::Scan(args) => b.scan_unobservable(args).is_none(),
        _ => true,
    };
    let out = match b.perform(cmd)? {
        Ok(Outcome::Addr(a)) => format!("ok {a:#x}"),
        Ok(Outcome::Scan(r)) => {
            if scan_seen {
                scan = Some(window_runs(r.regions.iter().map(|r| (r.start, r.end))));
            }
            "ok".to_string()
        }
        Ok(_) => "ok".to_string(),
        Err(e) => e.name().to_string(),
    };
    let len = WINDOW_PAGES * PAGE_SIZE;
    let un = |e| format!("{e:?}");
    let (softdirty, unobservable) = match b.softdirty_runs_masked(BASE, len) {
        Ok((v, mask)) => (Some(pairs(v)), pairs(mask)),
        Err(softdirty::backend::Unobservable::Skip(_)) => (None, Vec::new()),
        Err(e) => return Err(un(e)),
    };
    Ok(Observation {
        outcome: out,
        softdirty,
        unobservable,
        present: pairs(b.present_runs(BASE, len).map_err(un)?),
        vmas: b.vma_count(BASE, len).map_err(un)?,
        scan,
    })
}

/// [`step`], with a panic of the backend (the reference checks its own invariants with
/// assertions) turned into an error: a finding to report, not a crash of the fuzzer.
fn step_guarded(b: &mut dyn Backend, cmd: &Command) -> Result<Observation, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step(b, cmd))).unwrap_or_else(|e| {
        let msg = e
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| e.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        Err(format!("{} failed an internal check: {msg}", b.name()))
    })
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
pub fn linux_6_12_divergence(v: &[VmaInfo], op: &Command) -> Option<&'static str> {
    let pages = |w: &VmaInfo| w.start..w.end;
    // An unfaulted VMA that keeps `prot` and contains `page` (after the operation).
    let unfaulted_with =
        |page: u64, prot: &str| vma_at(v, page).is_some_and(|u| !u.faulted && u.prot == prot);
    let Command::Op(op) = op else {
        return None;
    };
    match *op {
        // Guard regions arrived in 6.13 (6.12 answers EINVAL).
        Op::Madvise {
            advice: softdirty::mm::Advice::GuardInstall | softdirty::mm::Advice::GuardRemove,
            ..
        } => Some("guard-regions-6.13"),
        Op::Mremap {
            addr: a,
            old_len: o,
            new_len: n,
            fixed: Some(d),
            ..
        } => {
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
        Op::Mremap {
            addr: a,
            old_len: o,
            new_len: n,
            fixed: None,
            ..
        } => {
            // An in-place growth (vma_merge_extend) of a faulted VMA that reaches an
            // unfaulted next VMA: 6.18 merges them, 6.12 refuses.
            let w = vma_at(v, a)?;
            (n > o && w.faulted && a + o == w.end && unfaulted_with(a + n, &w.prot))
                .then_some("anon-merge-faulted-into-unfaulted")
        }
        Op::Mprotect {
            addr: a,
            len: l,
            prot,
        } => {
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
///
/// And one refusal of the backend's: `guard_install` over a file or shared VMA, which
/// livelocks Linux 6.18 where it meets a write-protected entry (the backend refuses it
/// there, [`softdirty::kernel::KernelBackend`]; the model cannot tell which entries are
/// protected, so every such install is skipped).
pub fn uffd_divergence(v: &[VmaInfo], op: &Command) -> Option<&'static str> {
    match *op {
        Command::Op(Op::Madvise {
            addr: a,
            len: l,
            advice: softdirty::mm::Advice::GuardInstall,
        }) => v
            .iter()
            .any(|w| w.start < a.saturating_add(l) && a < w.end && (w.shared || w.file))
            .then_some("uffd-guard-install-livelock"),
        Command::Op(Op::Mremap {
            addr: a,
            old_len: o,
            new_len: n,
            fixed: Some(_),
            ..
        }) if o == n => {
            let w = vma_at(v, a)?;
            (a.saturating_add(o) > w.end).then_some("uffd-multi-vma-move")
        }
        _ => None,
    }
}

/// A read (or `populate_read`) of a file mapping or of shared memory (shmem) on a kernel
/// side without userfaultfd registration (the soft-dirty flavour): Linux may map cached
/// neighbours of the faulted page too (fault-around), which the model does not (trace v2,
/// "mmap, extended"; shared anonymous memory seen on 6.12, seed 1870).
pub fn fault_around_divergence(v: &[VmaInfo], op: &Command) -> Option<&'static str> {
    let (addr, len) = match *op {
        Command::Read { addr, len } => (addr, len),
        // Read faults too (checked on 6.12: seed 2 of the legacy fuzz with spaces).
        Command::Op(Op::Madvise {
            addr,
            len,
            advice: softdirty::mm::Advice::PopulateRead,
        }) => (addr, len),
        _ => return None,
    };
    let end = addr.saturating_add(len);
    v.iter()
        .any(|w| (w.file || w.shared) && w.start < end && addr < w.end)
        .then_some("file-fault-around")
}

/// The uffd flavour registers the VMA a `brk` growth makes, and the registration merges
/// it with a registered VMA that ends at the old break, which brk(2) itself merges with
/// only when that VMA starts at or above the start of the heap (`vma_prev_limit(&vmi,
/// mm->start_brk)`): such a growth is skipped, judged on the model's VMAs `v` and its
/// heap `brk` = (start, break) before it.
pub fn uffd_brk_divergence(
    v: &[VmaInfo],
    brk: Option<(u64, u64)>,
    op: &Command,
) -> Option<&'static str> {
    let (Command::Brk(new), Some((start, cur))) = (op, brk) else {
        return None;
    };
    let old_end = cur.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    (*new > cur && v.iter().any(|w| w.end == old_end && w.start < start))
        .then_some("uffd-registration-merges-brk")
}

/// Why `profile` skips `op` on both sides, judged on the model's VMAs `v` and heap `brk`
/// before it.
pub fn skip_reason(
    profile: Profile,
    v: &[VmaInfo],
    brk: Option<(u64, u64)>,
    op: &Command,
) -> Option<&'static str> {
    let r = if profile.uffd {
        uffd_divergence(v, op).or_else(|| uffd_brk_divergence(v, brk, op))
    } else if profile.files && profile.scan_without_clear {
        // The soft-dirty flavour (the one profile that scans without clear).
        fault_around_divergence(v, op)
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
    pub ran: Vec<Command>,
    /// the model's observation
    pub model: Observation,
    /// the other side's
    pub other: Observation,
}

/// Makes a fresh other side.
pub type MakeOther<'a> = &'a dyn Fn() -> Result<Box<dyn Backend>, String>;

/// A case's result.
#[derive(Clone, Debug)]
pub struct CaseResult {
    /// the first mismatch, if any
    pub mismatch: Option<Mismatch>,
    /// operations skipped by the profile (not run on either side)
    pub skipped: u64,
    /// page observations (a page of the window after an operation) whose soft-dirty
    /// state one side could not make (the rest of the observation is compared)
    pub unobserved: u64,
}

/// Runs `ops` on a fresh model and a fresh other side; the first mismatch, if any.
pub fn run_case(
    ops: &[Command],
    mode: Mode,
    profile: Profile,
    other: MakeOther<'_>,
) -> Result<CaseResult, String> {
    let mut model = ModelBackend::new(mode);
    let mut k = other()?;
    let mut ran = Vec::with_capacity(ops.len());
    let mut skipped = 0;
    let mut unobserved = 0;
    for (i, op) in ops.iter().enumerate() {
        if (profile.linux_6_12 || profile.uffd || profile.files)
            && skip_reason(
                profile,
                &model.current().vmas(),
                model.current().brk_bounds(),
                op,
            )
            .is_some()
        {
            skipped += 1;
            continue;
        }
        ran.push(op.clone());
        let m = step(&mut model, op)?;
        let o = step_guarded(k.as_mut(), op)
            .map_err(|e| format!("step {i} `{}`: {e}", render::command(op)))?;
        unobserved += m.unobserved_pages().max(o.unobserved_pages());
        if !m.agrees(&o) {
            return Ok(CaseResult {
                mismatch: Some(Mismatch {
                    step: i,
                    ran,
                    model: m,
                    other: o,
                }),
                skipped,
                unobserved,
            });
        }
    }
    Ok(CaseResult {
        mismatch: None,
        skipped,
        unobserved,
    })
}

/// Shrinks a failing case: removes chunks, then single operations, while it still fails.
pub fn shrink(
    ops: &[Command],
    mode: Mode,
    profile: Profile,
    other: MakeOther<'_>,
) -> Result<(Vec<Command>, Mismatch), String> {
    let fails = |v: &[Command]| -> Result<Option<Mismatch>, String> {
        Ok(run_case(v, mode, profile, other)?.mismatch)
    };
    let mut cur: Vec<Command> = ops.to_vec();
    let mut mm = fails(&cur)?.ok_or("the case no longer fails")?;
    cur = mm.ran.clone();
    let mut chunk = cur.len().div_ceil(2).max(1);
    loop {
        let mut progress = false;
        let mut i = 0;
        while i < cur.len() {
            let end = (i + chunk).min(cur.len());
            // Files stay (a later command may name one); everything else may go.
            let cand: Vec<Command> = cur
                .iter()
                .enumerate()
                .filter(|(j, c)| !(i..end).contains(j) || matches!(c, Command::File { .. }))
                .map(|(_, c)| c.clone())
                .collect();
            if cand.len() == cur.len() {
                i += chunk;
                continue;
            }
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
    render::pages(&PageSet::List(v.to_vec()))
}

/// The minimal trace as text (through the one trace renderer, [`render`](mod@render)), ending with
/// the other side's answers as expectations and the model's as comments.
pub fn render(ops: &[Command], mode: Mode, m: &Mismatch, other_name: &str) -> String {
    let mut s = format!(
        "# softdirty fuzz: minimal trace where the model ({mode}) and {other_name} disagree\n\
         # after the last command. The expectations are {other_name}'s answers.\n{}\n",
        render::mode(mode)
    );
    for op in ops {
        s.push_str(&render::command(op));
        s.push('\n');
    }
    let (o, md) = (&m.other, &m.model);
    let window = Addr {
        base: AddrBase::Number(BASE),
        offset: 0,
    };
    let len = WINDOW_PAGES * PAGE_SIZE;
    s.push_str(&format!("# model: {}\n", md.outcome));
    let (first, note) = match o.outcome.as_str() {
        "ok" => (Expect::Ok, String::new()),
        x if x.starts_with("ok ") => (Expect::Ok, format!(" # returned {}", &x[3..])),
        e => match Errno::from_name(e) {
            Some(errno) => (Expect::Err(errno), String::new()),
            None => (Expect::Ok, format!(" # {other_name}: {e}")),
        },
    };
    s.push_str(&render::expect(&first));
    s.push_str(&note);
    s.push('\n');
    let mut line = |comment: String, e: Expect| {
        s.push_str(&comment);
        s.push_str(&render::expect(&e));
        s.push('\n');
    };
    if let (Some(md_sd), Some(o_sd)) = (&md.softdirty, &o.softdirty) {
        line(
            format!("# model: softdirty {}\n", fmt_runs(md_sd)),
            Expect::SoftDirty {
                addr: window.clone(),
                len,
                pages: PageSet::List(o_sd.clone()),
            },
        );
    }
    line(
        format!("# model: present {}\n", fmt_runs(&md.present)),
        Expect::Present {
            addr: window.clone(),
            len,
            pages: PageSet::List(o.present.clone()),
        },
    );
    line(
        format!("# model: vmas {}\n", md.vmas),
        Expect::Vmas {
            addr: window,
            len,
            count: o.vmas,
        },
    );
    if let (Some(a), Some(b)) = (&md.scan, &o.scan) {
        line(
            format!(
                "# scan regions (window pages): model {}, {other_name} {}\n",
                fmt_runs(a),
                fmt_runs(b)
            ),
            Expect::Regions(b.len() as u64),
        );
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
        v2: true,
        files: true,
        spaces: true,
        stacks: true,
    }
}

/// `softdirty fuzz`.
pub fn main(args: &FuzzArgs) -> ExitCode {
    let mut profile = Profile {
        mremap_single_page: args.mremap_single_page,
        ..Profile::default()
    };
    type Maker = Box<dyn Fn() -> Result<Box<dyn Backend>, String>>;
    let (name, other): (String, Maker) = match (args.against, args.mode) {
        (Against::Reference, m) => {
            profile.v2 = true;
            profile.spaces = true;
            profile.stacks = true;
            profile.files = true;
            (
                "the reference model".to_string(),
                Box::new(move || Ok(Box::new(RefBackend::new(m)) as Box<dyn Backend>)),
            )
        }
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
                Box::new(move || kernel(flavour)),
            )
        }
        (Against::Kernel, m) => {
            eprintln!("fuzz: no kernel implements mode {m}; use --mode precise (uffd) or legacy (soft-dirty)");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = crate::outpath::check_creatable("--out", &args.out) {
        eprintln!("fuzz: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = other() {
        eprintln!("fuzz: {name} cannot run here: {e}");
        return ExitCode::from(3);
    }
    let t0 = std::time::Instant::now();
    let mut skipped = 0u64;
    let mut unobserved = 0u64;
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
                unobserved: u,
            }) => {
                skipped += s;
                unobserved += u;
            }
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
                if let Err(e) = crate::outpath::write_text(&args.out, &text) {
                    eprintln!("fuzz: writing {e}");
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
    let unobs = if unobserved > 0 {
        format!(
            "; soft-dirty unobservable on that side for {unobserved} of {} page observations",
            total * WINDOW_PAGES
        )
    } else {
        String::new()
    };
    eprintln!(
        "fuzz: {ran}{cut} cases of {} operations from seed {}: the model ({}) and {name} agree \
         ({}; {skipped} of {total} operations skipped{unobs}; {:.1} s)",
        args.ops,
        args.seed,
        args.mode,
        profile,
        t0.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

fn kernel(f: softdirty::backend::KernelFlavour) -> Result<Box<dyn Backend>, String> {
    softdirty::backend::open(
        softdirty::backend::BackendChoice::Kernel(Some(f)),
        softdirty::mode::Mode::Legacy,
    )
}

/// Page ranges as the `(start, end)` pairs of a trace's page list.
fn pairs(v: Vec<std::ops::Range<u64>>) -> Vec<(u64, u64)> {
    v.into_iter().map(|r| (r.start, r.end)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use softdirty::backend::{OpResult, Unobservable};

    #[test]
    fn generation_is_deterministic_and_parses() {
        let a = generate(7, 50, Profile::default());
        assert_eq!(a, generate(7, 50, Profile::default()));
        // The one renderer's text reads back as the same commands.
        let text: String = a.iter().map(|o| render::command(o) + "\n").collect();
        let t = softdirty_trace::parse::parse_bytes(text.as_bytes()).unwrap();
        let names = softdirty_trace::lower::Bindings::new();
        let back: Vec<Command> = t
            .commands
            .iter()
            .map(|c| match softdirty_trace::lower::lower(&c.node, &names) {
                Ok(softdirty_trace::lower::Action::Perform { cmd, bind: None }) => cmd,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(back, a);
    }

    /// With v2 operations on, a case is the v1 case with some operations replaced by v2
    /// ones: the same length, every other operation unchanged (the kernel fuzz's seeds
    /// keep their cases).
    #[test]
    fn v2_replaces_operations_and_keeps_the_rest() {
        let v2 = Profile {
            v2: true,
            ..Profile::default()
        };
        let mut replaced = 0;
        for s in 0..20 {
            let a = generate(s, 100, Profile::default());
            let b = generate(s, 100, v2);
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                if x != y {
                    replaced += 1;
                    assert!(
                        matches!(
                            y,
                            Command::Brk(_)
                                | Command::BrkStart(_)
                                | Command::Op(Op::Madvise { .. } | Op::Mmap { .. })
                        ),
                        "{y:?}"
                    );
                }
            }
        }
        assert!(replaced > 200, "{replaced} of 2000 replaced");
    }

    #[test]
    fn profiles_change_only_what_they_say() {
        let all: Vec<Command> = (0..20)
            .flat_map(|s| generate(s, 100, Profile::default()))
            .collect();
        let p = Profile {
            mremap_single_page: true,
            scan_without_clear: true,
            linux_6_12: true,
            uffd: true,
            v2: false,
            files: false,
            spaces: false,
            stacks: false,
        };
        let some: Vec<Command> = (0..20).flat_map(|s| generate(s, 100, p)).collect();
        assert_eq!(all.len(), some.len());
        let (mut scans, mut mremaps) = (0, 0);
        for (a, b) in all.iter().zip(&some) {
            match (a, b) {
                (Command::Scan(x), Command::Scan(y)) if x.clear && !y.clear => {
                    assert_eq!(ScanArgs { clear: false, ..*x }, *y);
                    scans += 1;
                }
                (
                    Command::Op(Op::Mremap {
                        addr: x,
                        new_len: n,
                        maymove: mm,
                        fixed: d,
                        ..
                    }),
                    Command::Op(Op::Mremap {
                        addr: u,
                        old_len: o,
                        new_len: m,
                        maymove: mv,
                        fixed: e,
                    }),
                ) => {
                    assert_eq!((x, n, mm, d, *o), (u, m, mv, e, PAGE_SIZE));
                    mremaps += 1;
                }
                _ => assert_eq!(a, b),
            }
        }
        assert!(
            scans > 50 && mremaps > 50,
            "{scans} scans, {mremaps} mremaps"
        );
        let text: String = some.iter().map(|o| render::command(o) + "\n").collect();
        softdirty_trace::parse::parse_bytes(text.as_bytes()).unwrap();
    }

    fn reference(mode: Mode) -> impl Fn() -> Result<Box<dyn Backend>, String> {
        move || Ok(Box::new(RefBackend::new(mode)) as Box<dyn Backend>)
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

    /// The reference, except that it claims one VMA more right after every successful
    /// mprotect: a lying [`Backend`].
    struct Lying {
        inner: RefBackend,
        lie: bool,
    }

    impl Backend for Lying {
        fn name(&self) -> String {
            "the liar".into()
        }
        fn space(&mut self, name: &str) -> Result<(), String> {
            self.inner.space(name)
        }
        fn fork(&mut self, child: &str) -> OpResult<()> {
            self.inner.fork(child)
        }
        fn mmap(&mut self, a: u64, l: u64, p: Prot, sh: bool, pl: Placement) -> OpResult<u64> {
            self.inner.mmap(a, l, p, sh, pl)
        }
        fn munmap(&mut self, a: u64, l: u64) -> OpResult<()> {
            self.inner.munmap(a, l)
        }
        fn mprotect(&mut self, a: u64, l: u64, p: Prot) -> OpResult<()> {
            let r = self.inner.mprotect(a, l, p);
            self.lie = matches!(r, Ok(Ok(())));
            r
        }
        fn mremap(&mut self, a: u64, o: u64, n: u64, m: bool, f: Option<u64>) -> OpResult<u64> {
            self.inner.mremap(a, o, n, m, f)
        }
        fn madvise_dontneed(&mut self, a: u64, l: u64) -> OpResult<()> {
            self.inner.madvise_dontneed(a, l)
        }
        fn write(&mut self, a: u64, l: u64) -> OpResult<()> {
            self.inner.write(a, l)
        }
        fn read(&mut self, a: u64, l: u64) -> OpResult<()> {
            self.inner.read(a, l)
        }
        fn clear_refs(&mut self, v: &str) -> OpResult<()> {
            self.inner.clear_refs(v)
        }
        fn pagemap(&mut self, s: u64, n: u64, f: &mut dyn FnMut(u64, u64)) -> Result<(), String> {
            self.inner.pagemap(s, n, f)
        }
        fn scan(&mut self, args: &ScanArgs) -> OpResult<softdirty::scan::ScanResult> {
            self.inner.scan(args)
        }
        fn smaps_vmflags(&mut self, a: u64) -> Result<Option<String>, String> {
            self.inner.smaps_vmflags(a)
        }
        fn softdirty_runs(
            &mut self,
            a: u64,
            l: u64,
        ) -> Result<Vec<std::ops::Range<u64>>, Unobservable> {
            self.inner.softdirty_runs(a, l)
        }
        fn present_runs(
            &mut self,
            a: u64,
            l: u64,
        ) -> Result<Vec<std::ops::Range<u64>>, Unobservable> {
            self.inner.present_runs(a, l)
        }
        fn vma_count(&mut self, a: u64, l: u64) -> Result<u64, Unobservable> {
            let n = self.inner.vma_count(a, l)?;
            Ok(n + u64::from(std::mem::take(&mut self.lie)))
        }
        fn faults(&mut self) -> Result<u64, Unobservable> {
            self.inner.faults()
        }
    }

    fn is_mprotect(c: &Command) -> bool {
        matches!(c, Command::Op(Op::Mprotect { .. }))
    }

    #[test]
    fn a_disagreement_is_found_shrunk_and_rendered() {
        let lying = || {
            Ok(Box::new(Lying {
                inner: RefBackend::new(Mode::Legacy),
                lie: false,
            }) as Box<dyn Backend>)
        };
        let ops = generate(3, 100, Profile::default());
        let first = run_case(&ops, Mode::Legacy, Profile::default(), &lying).unwrap();
        let m = first.mismatch.expect("the lie is seen");
        assert!(is_mprotect(&ops[m.step]));
        let (min, m) = shrink(&ops, Mode::Legacy, Profile::default(), &lying).unwrap();
        // An mprotect succeeds only on mapped memory: an mmap and the mprotect.
        assert_eq!(min.len(), 2, "{min:?}");
        assert!(matches!(min[0], Command::Op(Op::Mmap { .. })) && is_mprotect(&min[1]));
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
            file: false,
        }
    }

    #[test]
    fn linux_6_12_shapes() {
        let p = |n: u64| BASE + n * PAGE_SIZE;
        let l = |n: u64| n * PAGE_SIZE;
        let div = linux_6_12_divergence;
        // No VMA at the source: overlapping ranges are EINVAL in 6.18, EFAULT in 6.12.
        let v = [vma(0, 8, Prot::RW, true)];
        let m = |a, o, n, d| mremap(p(a), l(o), l(n), Some(p(d)));
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
        let g = |o, n| mremap(p(0), l(o), l(n), None);
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
        let mp = |a, n, prot| {
            Command::Op(Op::Mprotect {
                addr: p(a),
                len: l(n),
                prot,
            })
        };
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
        let write = |a, n| Command::Write {
            addr: p(a),
            len: l(n),
        };
        assert_eq!(div(&v, &write(8, 8)), None);
        let munmap = Command::Op(Op::Munmap {
            addr: p(8),
            len: l(8),
        });
        assert_eq!(div(&v, &munmap), None);
    }

    #[test]
    fn uffd_shapes() {
        let p = |n: u64| BASE + n * PAGE_SIZE;
        let l = |n: u64| n * PAGE_SIZE;
        let m = |a, o, n, d| mremap(p(a), l(o), l(n), Some(p(d)));
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
        assert_eq!(div(&v, &mremap(p(7), l(2), l(2), None)), None);
        assert_eq!(div(&v, &m(8, 2, 2, 15)), None);
        let write = Command::Write {
            addr: p(0),
            len: l(8),
        };
        assert_eq!(div(&v, &write), None);
    }

    #[test]
    fn the_default_kernel_profile_skips_multi_vma_moves_against_uffd() {
        // `softdirty fuzz` with no flags: precise against the uffd flavour of Linux 6.18.
        let prof = kernel_profile(Mode::Precise, Some((6, 18)), false);
        // Against the reference here (it models everything the kernel profile generates).
        assert!(prof.uffd && !prof.linux_6_12 && !prof.scan_without_clear);
        assert!(!kernel_profile(Mode::Legacy, Some((6, 12)), false).uffd);
        // The shape of the first failure of a default run (seed 2).
        let ops = [
            mmap(BASE + 0x16000, PAGE_SIZE, Prot::RW, Placement::NoReplace),
            mremap(
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
            // One-page sources cannot run past their VMA: no multi-VMA move at all (the
            // other uffd skips, guard installs and brk growths, remain).
            let ops = generate(seed, 100, single);
            assert!(
                ops.iter().all(|o| !matches!(o, Command::Op(Op::Mremap { old_len, .. }) if *old_len > PAGE_SIZE)),
                "seed {seed}"
            );
            let r = run_case(&ops, Mode::Precise, single, &reference(Mode::Precise)).unwrap();
            assert!(r.mismatch.is_none(), "seed {seed}");
        }
        assert!(skipped > 0 && skipped * 20 < total, "{skipped} of {total}");
    }
}
