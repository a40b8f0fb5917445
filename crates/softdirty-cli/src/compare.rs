//! `softdirty compare`: one seeded workload under every mode, side by side.
//!
//! A workload is generated once, as a deterministic list of [`Step`]s with concrete
//! addresses (the generator resolves the addresses `mmap` and `mremap` choose on a scratch
//! `precise` space; placement does not depend on the mode, and the runner checks that
//! every mode's result agrees). The list is then applied in lock step to one
//! [`AddressSpace`] per implemented mode. `precise` is the truth: at every
//! [`Step::Harvest`] each mode's soft-dirty pages (pagemap bit 55 over the whole space)
//! are compared with precise's, page by page:
//!
//! - a **false positive** is a page the mode reports soft-dirty that precise does not
//!   (not written, mapped, moved or zapped since the last clear);
//! - a **false negative** is a page precise reports and the mode does not (lost
//!   dirtiness: a checkpoint or migration built on the mode would miss a change).
//!
//! Counts are summed over all harvests. Besides them the runner records the VMA count
//! (peak and final), the tracking memory ([`AddressSpace::tracking_bytes`], peak) and the
//! median cost in nanoseconds of each kind of step (mmap, mprotect, `clear_refs 4`, a
//! one-page write fault, a harvest), timed around the single call in each mode.
//!
//! `regions` (the RFC) is the region-list design; its tracking memory includes what the
//! lists would cost the kernel (a list head per VMA, 32 bytes per region).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use std::sync::Arc;

use crate::ranges::{clip, difference, page_up, pages, within};
use softdirty::backend::{Backend, Command, ModelBackend, Op};
use softdirty::linux::{PAGE_SIZE, TASK_SIZE};
use softdirty::mm::Advice;
use softdirty::mm::{AddressSpace, Placement};
use softdirty::mode::Mode;
use softdirty::prot::Prot;

const P: u64 = PAGE_SIZE;

/// The modes `softdirty compare` runs, `precise` (the truth) first.
pub const MODES: [Mode; 5] = [
    Mode::Precise,
    Mode::Legacy,
    Mode::Sticky,
    Mode::Nomerge,
    Mode::Regions,
];

/// The largest `--scale`.
pub const MAX_SCALE: u32 = 10_000;

/// Options of `softdirty compare`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CompareArgs {
    /// Workload: `seed` (new mappings next to cleared ones), `hildenbrand` (alternating
    /// soft-dirty/clean chains), `arena` (allocator arenas: mmap/munmap, guard pages,
    /// mremap growth), `jit` (mprotect rw/rx toggling), `heap` (a malloc heap grown with
    /// brk after each harvest), `cprogram` (a C program's memory: brk heap, noreserve
    /// arena, thread stack with its guard, growing main stack, a shared memfd ring
    /// written by a fork child), `trace:FILE`, or `all` (the six built-in ones).
    #[arg(long, default_value = "all")]
    pub workload: String,
    /// Seed of the workload generators.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Scale of the built-in workloads (rounds and operations are multiplied by it), 1 to
    /// 10000; a trace:FILE workload has no scale. A progress bar shows on a terminal.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_SCALE as i64))]
    pub scale: u32,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also draw false positives, false negatives, peak VMAs and peak tracking memory per
    /// workload and mode as an SVG bar chart to FILE.svg (the name must end in .svg; `-`:
    /// stdout, instead of the tables; not with --json).
    #[arg(long, value_name = "FILE.svg", value_parser = crate::outpath::parse_svg_path)]
    pub plot: Option<PathBuf>,
}

/// One step of a workload, with concrete addresses: a [`Command`] every mode performs, or
/// a harvest. (A thin wrapper over the one vocabulary because a harvest is this
/// comparison's observation, not an operation a backend performs.) The commands the
/// generators make: structural operations, writes, reads, `clear_refs 4`, and `scan ...
/// clear`, which runs as the dirty log's get-and-clear of its range
/// ([`AddressSpace::scan_and_clear`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A command, applied to every mode's space.
    Do(Command),
    /// Read pagemap over the whole space and compare with precise.
    Harvest,
}

/// A generated workload: its name and steps.
#[derive(Clone, Debug)]
pub struct Generated {
    /// The workload's name (`seed`, `trace:FILE`, ...).
    pub name: String,
    /// What it does, in one line.
    pub about: String,
    /// The steps, applied identically to every mode.
    pub steps: Vec<Step>,
}

/// Median costs in nanoseconds (`None` when the workload has no such step).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Costs {
    /// `mmap`
    pub mmap_ns: Option<u64>,
    /// `mprotect`
    pub mprotect_ns: Option<u64>,
    /// `clear_refs 4`
    pub clear_refs_ns: Option<u64>,
    /// a write step (one page in the built-in workloads)
    pub write_fault_ns: Option<u64>,
    /// a harvest: pagemap soft-dirty runs over the whole space
    pub harvest_ns: Option<u64>,
}

/// Why a page's answer differs from precise's (summed over harvests, in pages).
///
/// A page is blamed on the last structural step that set (for a false positive) or
/// dropped (for a false negative) the `VM_SOFTDIRTY` flag of its VMA in that mode
/// (merge, brk, mremap move), or, in every mode, on the last `madvise dontneed` (or
/// `guard_install`) over it, which zeroes pages that only precise then reports, or on the
/// `mremap` growth whose new tail it is (Linux flags no new page there); a false
/// negative in a shared mapping that no such step explains is a change through another
/// mapping of the page (`shared`); the rest is `other`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Causes {
    /// a merge spread or dropped the flag (mmap, mprotect, mremap in place, madvise)
    pub merge: u64,
    /// a `brk` growth (`do_brk_flags` sets the flag on the whole heap VMA)
    pub brk: u64,
    /// an `mremap` that moved the range
    pub mremap_move: u64,
    /// a store through another mapping of a shared page (another space, another VMA)
    pub shared: u64,
    /// a `madvise dontneed` or `guard_install` zeroed the page (precise reports it)
    pub dontneed: u64,
    /// the page is in the new tail of an `mremap` growth (in place or moved)
    pub mremap_grow: u64,
    /// anything else
    pub other: u64,
}

impl Causes {
    fn add(&mut self, c: Cause, pages: u64) {
        match c {
            Cause::Merge => self.merge += pages,
            Cause::Brk => self.brk += pages,
            Cause::MremapMove => self.mremap_move += pages,
            Cause::Shared => self.shared += pages,
            Cause::Dontneed => self.dontneed += pages,
            Cause::MremapGrow => self.mremap_grow += pages,
            Cause::Other => self.other += pages,
        }
    }
}

/// One bucket of [`Causes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    Merge,
    Brk,
    MremapMove,
    Shared,
    Dontneed,
    MremapGrow,
    Other,
}

/// One mode's results on one workload.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModeRow {
    /// The mode.
    pub mode: Mode,
    /// Pages reported soft-dirty that precise does not report, summed over harvests.
    pub false_positives: u64,
    /// Pages precise reports that the mode does not, summed over harvests.
    pub false_negatives: u64,
    /// The false positives by cause.
    pub false_positive_causes: Causes,
    /// The false negatives by cause.
    pub false_negative_causes: Causes,
    /// Pages reported soft-dirty, summed over harvests.
    pub reported: u64,
    /// Most VMAs at any point.
    pub peak_vmas: usize,
    /// VMAs at the end.
    pub final_vmas: usize,
    /// Most bytes of tracking memory (bitmaps) at any point.
    pub peak_tracking_bytes: usize,
    /// Steps that failed in this mode.
    pub errors: u64,
    /// Steps whose result (error or address) differed from precise's.
    pub divergences: u64,
    /// Median costs.
    pub costs: Costs,
}

/// The results of one workload.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct WorkloadReport {
    /// The workload's name.
    pub workload: String,
    /// What it does.
    pub about: String,
    /// Number of steps.
    pub steps: usize,
    /// Number of harvests.
    pub harvests: usize,
    /// Number of write steps.
    pub writes: usize,
    /// One row per mode, precise first.
    pub modes: Vec<ModeRow>,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ComparisonReport {
    /// The generators' seed.
    pub seed: u64,
    /// The built-in workloads' scale.
    pub scale: u32,
    /// One entry per workload.
    pub workloads: Vec<WorkloadReport>,
}

// ==================================================================== generators

/// Records steps, resolving results on a scratch precise tracker.
struct Gen {
    b: ModelBackend,
    steps: Vec<Step>,
}

impl Gen {
    fn new() -> Gen {
        Gen {
            b: ModelBackend::new(Mode::Precise),
            steps: Vec::new(),
        }
    }

    /// Performs `cmd` on the scratch tracker and records it: the address it returned
    /// (mmap, mremap), 0 for other successes, `None` if it failed.
    fn cmd(&mut self, cmd: Command) -> Option<u64> {
        let r = match &cmd {
            // The dirty log's get-and-clear, as the runner does it.
            Command::Scan(args) if args.clear => self
                .b
                .current()
                .scan_and_clear(args.start, args.end.wrapping_sub(args.start))
                .ok()
                .map(|_| 0),
            _ => self
                .b
                .perform(&cmd)
                .ok()
                .and_then(|r| r.ok())
                .map(|o| o.addr()),
        };
        self.steps.push(Step::Do(cmd));
        r
    }

    fn op(&mut self, op: Op) -> Option<u64> {
        self.cmd(Command::Op(op))
    }

    fn mmap(&mut self, addr: u64, pages: u64, prot: Prot, placement: Placement) -> Option<u64> {
        self.op(Op::Mmap {
            addr,
            len: pages * P,
            prot,
            shared: false,
            placement,
            opts: softdirty::mm::MapOpts::default(),
        })
    }

    fn write(&mut self, addr: u64, pages: u64) {
        self.cmd(Command::Write {
            addr,
            len: pages * P,
        });
    }

    /// The end of a pre-copy / checkpoint round: harvest, then clear (every space).
    fn round(&mut self) {
        self.steps.push(Step::Harvest);
        let cur = self.b.tracker().names();
        if cur.len() == 1 {
            self.cmd(Command::ClearRefs("4".into()));
            return;
        }
        let back = self.space_name();
        for name in cur {
            self.cmd(Command::Space(name));
            self.cmd(Command::ClearRefs("4".into()));
        }
        self.cmd(Command::Space(back));
    }

    /// The current space's name.
    fn space_name(&self) -> String {
        let cur = self.b.current();
        self.b
            .tracker()
            .names()
            .into_iter()
            .find(|n| {
                self.b
                    .tracker()
                    .get(n)
                    .is_some_and(|s| Arc::ptr_eq(&s, &cur))
            })
            .unwrap_or_else(|| "main".to_string())
    }

    fn done(mut self, name: &str, about: &str) -> Generated {
        if self.steps.last() != Some(&Step::Harvest) {
            self.steps.push(Step::Harvest);
        }
        Generated {
            name: name.to_string(),
            about: about.to_string(),
            steps: self.steps,
        }
    }
}

const BASE: u64 = 0x20_0000_0000;

/// The seed thread's pattern: a heap grown by new mappings placed right after VMAs that
/// were just cleared, with a few writes per round.
pub fn seed_pattern(seed: u64, scale: u32) -> Generated {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    let mut g = Gen::new();
    let mut end = BASE + 48 * P;
    g.mmap(BASE, 48, Prot::RW, Placement::NoReplace);
    g.write(BASE, 48);
    for _ in 0..64 * scale {
        g.round();
        let pages = rng.gen_range(8..=32);
        g.mmap(end, pages, Prot::RW, Placement::NoReplace);
        let new = end;
        end += pages * P;
        for _ in 0..4 {
            g.write(new + rng.gen_range(0..pages) * P, 1);
            g.write(BASE + rng.gen_range(0..(new - BASE) / P) * P, 1);
        }
    }
    g.done(
        "seed",
        "64 rounds: harvest, clear_refs, mmap 8-32 pages right after the heap, 8 one-page writes",
    )
}

/// A malloc heap grown with brk (trace v2): after each harvest the heap grows by 1-8
/// pages and a few pages, old and new, are written. `do_brk_flags` sets VM_SOFTDIRTY on the
/// heap VMA at every growth, so legacy reports the whole heap each round (the mission's
/// "every brk growth re-dirties the whole heap").
pub fn heap_pattern(seed: u64, scale: u32) -> Generated {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xb7c);
    let mut g = Gen::new();
    let start = BASE;
    let mut brk = start + 16 * P;
    g.cmd(Command::BrkStart(start));
    g.cmd(Command::Brk(brk));
    g.write(start, 16);
    for _ in 0..64 * scale {
        g.round();
        brk += rng.gen_range(1..=8) * P;
        g.cmd(Command::Brk(brk));
        for _ in 0..4 {
            let pages = (brk - start) / P;
            g.write(start + rng.gen_range(0..pages) * P, 1);
        }
    }
    g.done(
        "heap",
        "64 rounds: harvest, clear_refs, brk grows the heap by 1-8 pages, 4 one-page writes",
    )
}

/// A C program's memory (trace v2), the way glibc lays it out, in two processes:
/// - a malloc heap: brk grows it by 1-8 pages most rounds and trims 1-4 pages from the
///   top in others (never below 32 pages);
/// - a malloc arena: 1024 pages reserved `PROT_NONE` with `noreserve`, whose front is made
///   read-write by `mprotect` as the arena grows (glibc's `new_heap`/`grow_heap`);
/// - a thread stack of 256 pages with a `PROT_NONE` guard page at its low end, written near
///   its top;
/// - the main stack, a `growsdown` mapping that accesses below it grow;
/// - a ring of 16 pages in a memfd, mapped shared, and a `fork`ed worker that writes ring
///   slots the parent only reads (a change `legacy` cannot see in the parent).
///
/// Each round: harvest and clear both processes, then the steps above, with 4 heap, 3
/// arena, 2 stack and 2 ring writes.
pub fn cprogram_pattern(seed: u64, scale: u32) -> Generated {
    use softdirty::backend::FileMapping;
    use softdirty::mm::MapOpts;
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xc9c);
    let mut g = Gen::new();
    let gib = 1u64 << 30;
    // The heap.
    let heap = BASE;
    let mut brk = heap + 32 * P;
    g.cmd(Command::BrkStart(heap));
    g.cmd(Command::Brk(brk));
    g.write(heap, 32);
    // The arena: a reservation made usable from its front.
    let arena = BASE + gib;
    let arena_pages = 1024;
    g.op(Op::Mmap {
        addr: arena,
        len: arena_pages * P,
        prot: Prot::NONE,
        shared: false,
        placement: Placement::NoReplace,
        opts: MapOpts {
            noreserve: true,
            ..MapOpts::default()
        },
    });
    let mut arena_rw = 16;
    g.op(Op::Mprotect {
        addr: arena,
        len: arena_rw * P,
        prot: Prot::RW,
    });
    // A thread stack with its guard page.
    let tstack = BASE + 2 * gib;
    let tpages = 256;
    g.mmap(tstack, tpages, Prot::RW, Placement::NoReplace);
    g.op(Op::Mprotect {
        addr: tstack,
        len: P,
        prot: Prot::NONE,
    });
    // The main stack: grows down from its top.
    let mstack_top = BASE + 4 * gib;
    let mut mstack = mstack_top - 16 * P;
    g.op(Op::Mmap {
        addr: mstack,
        len: 16 * P,
        prot: Prot::RW,
        shared: false,
        placement: Placement::NoReplace,
        opts: MapOpts {
            growsdown: true,
            ..MapOpts::default()
        },
    });
    g.write(mstack, 16);
    // The ring, and the worker that shares it.
    let ring = BASE + 3 * gib;
    let ring_pages = 16;
    g.cmd(Command::File {
        name: "ring".to_string(),
        memfd: true,
        size: ring_pages * P,
    });
    g.cmd(Command::MmapFile(FileMapping {
        addr: ring,
        len: ring_pages * P,
        prot: Prot::RW,
        shared: true,
        placement: Placement::NoReplace,
        opts: MapOpts::default(),
        name: "ring".to_string(),
        offset: 0,
    }));
    g.write(ring, ring_pages);
    g.cmd(Command::Fork("worker".to_string()));
    let main = "main".to_string();
    let worker = "worker".to_string();
    for _ in 0..32 * u64::from(scale) {
        g.round();
        // malloc and free at the top of the heap.
        if rng.gen_bool(0.75) {
            brk += rng.gen_range(1..=8) * P;
        } else {
            brk = (brk - rng.gen_range(1..=4) * P).max(heap + 32 * P);
        }
        g.cmd(Command::Brk(brk));
        for _ in 0..4 {
            g.write(heap + rng.gen_range(0..(brk - heap) / P) * P, 1);
        }
        // The arena grows.
        if arena_rw < arena_pages && rng.gen_bool(0.5) {
            let more = rng.gen_range(1..=4).min(arena_pages - arena_rw);
            g.op(Op::Mprotect {
                addr: arena + arena_rw * P,
                len: more * P,
                prot: Prot::RW,
            });
            arena_rw += more;
        }
        for _ in 0..3 {
            g.write(arena + rng.gen_range(0..arena_rw) * P, 1);
        }
        // The thread's stack frames near its top; the main stack grows now and then.
        for _ in 0..2 {
            g.write(tstack + (tpages - 1 - rng.gen_range(0..8)) * P, 1);
        }
        if rng.gen_bool(0.25) && mstack > mstack_top - 512 * P {
            mstack -= rng.gen_range(1..=4) * P;
            g.write(mstack, 1);
        }
        // The worker fills ring slots; the parent reads them.
        g.cmd(Command::Space(worker.clone()));
        let slot = rng.gen_range(0..ring_pages - 1);
        g.write(ring + slot * P, 2);
        g.cmd(Command::Space(main.clone()));
        g.cmd(Command::Read {
            addr: ring + slot * P,
            len: 2 * P,
        });
        // A freed run of the thread's stack is returned to the kernel now and then.
        if rng.gen_bool(0.1) {
            g.op(Op::Madvise {
                addr: tstack + P,
                len: 64 * P,
                advice: Advice::DontNeed,
            });
        }
    }
    g.done(
        "cprogram",
        "32 rounds over 2 processes: brk heap grown/trimmed, noreserve arena grown by mprotect, thread stack with guard, growing main stack, memfd ring written by a fork child",
    )
}

/// Hildenbrand's worst case for `nomerge`: after a clear, every other page of a cleared
/// 512-page mapping is replaced by a fresh one-page mapping (MAP_FIXED), so soft-dirty and
/// clean VMAs alternate; legacy merges them back into one VMA that reports every page.
pub fn hildenbrand_pattern(seed: u64, scale: u32) -> Generated {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xda71d);
    let mut g = Gen::new();
    let pages = 512u64;
    g.mmap(BASE, pages, Prot::RW, Placement::NoReplace);
    g.write(BASE, pages);
    for r in 0..8 * u64::from(scale) {
        g.round();
        for i in 0..pages / 2 {
            let p = 2 * i + (r & 1);
            g.mmap(BASE + p * P, 1, Prot::RW, Placement::Fixed);
        }
        for _ in 0..16 {
            g.write(BASE + rng.gen_range(0..pages) * P, 1);
        }
    }
    g.done(
        "hildenbrand",
        "8 rounds: clear_refs, MAP_FIXED one fresh page over every other page of a 512-page VMA, 16 writes",
    )
}

/// An allocator: arenas placed top-down (so adjacent to each other), a guard page at
/// each end (mprotect PROT_NONE), munmap of freed arenas, mremap growth, writes.
pub fn arena_pattern(seed: u64, scale: u32) -> Generated {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xa7e7a);
    let mut g = Gen::new();
    let mut arenas: Vec<(u64, u64)> = Vec::new();
    // An arena is `pages` pages: the body, then one PROT_NONE guard page.
    let new_arena = |g: &mut Gen, rng: &mut SmallRng, arenas: &mut Vec<(u64, u64)>| {
        let pages = rng.gen_range(16..=128);
        if let Some(a) = g.mmap(0, pages, Prot::RW, Placement::Hint) {
            g.op(Op::Mprotect {
                addr: a + (pages - 1) * P,
                len: P,
                prot: Prot::NONE,
            });
            arenas.push((a, pages));
        }
    };
    for _ in 0..8 {
        new_arena(&mut g, &mut rng, &mut arenas);
    }
    for step in 0..3000 * u64::from(scale) {
        if step % 150 == 149 {
            g.round();
        }
        let x = rng.gen_range(0..100);
        if x < 6 || arenas.len() < 2 {
            new_arena(&mut g, &mut rng, &mut arenas);
        } else if x < 10 {
            let i = rng.gen_range(0..arenas.len());
            let (a, n) = arenas.swap_remove(i);
            g.op(Op::Munmap {
                addr: a,
                len: n * P,
            });
        } else if x < 13 && arenas.iter().map(|a| a.1).sum::<u64>() < 16384 {
            // Grow x2: drop the guard, mremap the body (in place or moved), new guard.
            let i = rng.gen_range(0..arenas.len());
            let (a, n) = arenas[i];
            let grown = 2 * n;
            g.op(Op::Munmap {
                addr: a + (n - 1) * P,
                len: P,
            });
            match g.op(Op::Mremap {
                addr: a,
                old_len: (n - 1) * P,
                new_len: (grown - 1) * P,
                maymove: true,
                fixed: None,
            }) {
                Some(na) => {
                    // The page after may belong to a neighbour: then the body's last
                    // page serves as the guard's place (left RW, never written).
                    let guarded = g
                        .mmap(na + (grown - 1) * P, 1, Prot::NONE, Placement::NoReplace)
                        .is_some();
                    arenas[i] = (na, if guarded { grown } else { grown - 1 });
                }
                None => {
                    arenas.swap_remove(i);
                }
            }
        } else if x < 16 {
            // Poison a freed run inside an arena (PROT_NONE + DONTNEED), then reuse it.
            let i = rng.gen_range(0..arenas.len());
            let (a, n) = arenas[i];
            let s = rng.gen_range(0..n - 1);
            let len = rng.gen_range(1..=(n - 1 - s).min(8));
            g.op(Op::Mprotect {
                addr: a + s * P,
                len: len * P,
                prot: Prot::NONE,
            });
            g.op(Op::DontNeed {
                addr: a + s * P,
                len: len * P,
            });
            g.op(Op::Mprotect {
                addr: a + s * P,
                len: len * P,
                prot: Prot::RW,
            });
        } else {
            let i = rng.gen_range(0..arenas.len());
            let (a, n) = arenas[i];
            g.write(a + rng.gen_range(0..n - 1) * P, 1);
        }
    }
    g.done(
        "arena",
        "3000 steps: top-down arenas of 16-128 pages with a PROT_NONE guard page, munmap, mremap x2 growth, poison+DONTNEED, writes; harvest+clear every 150",
    )
}

/// A JIT: a code cache toggled between RW (patching) and RX (running), and grown by new
/// chunks placed next to it.
pub fn jit_pattern(seed: u64, scale: u32) -> Generated {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x717);
    let mut g = Gen::new();
    let mut chunks: Vec<(u64, u64)> = Vec::new();
    let grow = |g: &mut Gen, chunks: &mut Vec<(u64, u64)>, pages: u64| {
        if let Some(a) = g.mmap(0, pages, Prot::RW, Placement::Hint) {
            g.write(a, pages);
            g.op(Op::Mprotect {
                addr: a,
                len: pages * P,
                prot: Prot::RX,
            });
            chunks.push((a, pages));
        }
    };
    grow(&mut g, &mut chunks, 256);
    for step in 0..2000 * u64::from(scale) {
        if step % 100 == 99 {
            g.round();
        }
        if rng.gen_range(0..100) < 3 {
            grow(&mut g, &mut chunks, 64);
            continue;
        }
        let (a, n) = chunks[rng.gen_range(0..chunks.len())];
        let s = rng.gen_range(0..n);
        let len = rng.gen_range(1..=(n - s).min(8));
        g.op(Op::Mprotect {
            addr: a + s * P,
            len: len * P,
            prot: Prot::RW,
        });
        for k in 0..len {
            if rng.gen_bool(0.5) {
                g.write(a + (s + k) * P, 1);
            }
        }
        g.op(Op::Mprotect {
            addr: a + s * P,
            len: len * P,
            prot: Prot::RX,
        });
    }
    g.done(
        "jit",
        "2000 patches: mprotect 1-8 pages RW, write half of them, mprotect RX; new 64-page chunks; harvest+clear every 100",
    )
}

/// `trace:FILE`: the trace's commands, in every space (a fork child is harvested with
/// its parent). `pagemap`, `scan` without `clear` and `expect softdirty` are harvests;
/// `scan ... clear` is a get-and-clear; other expectations are ignored.
pub fn trace_pattern(path: &Path) -> Result<Generated, String> {
    use softdirty_trace::lower::{bind, lower, Action, Bindings};
    let name = path.display().to_string();
    let mut g = Gen::new();
    let mut names = Bindings::new();
    // Streamed: the file is read line by line, never held (the generated steps are kept);
    // a malformed line (an invalid byte, an over-long line) fails at once.
    let reader = softdirty_trace::parse::read_file(path).map_err(|e| e.in_file(&name))?;
    for c in reader {
        let c = c.map_err(|e| e.in_file(&name))?;
        let action = lower(&c.node, &names).map_err(|e| format!("{name}:{}: {e}", c.line))?;
        let harvest = |g: &mut Gen| {
            if g.steps.last() != Some(&Step::Harvest) {
                g.steps.push(Step::Harvest);
            }
        };
        let (cmd, b) = match action {
            Action::Expect(softdirty_trace::ast::Expect::SoftDirty { .. }) => {
                harvest(&mut g);
                continue;
            }
            Action::Expect(_) => continue,
            Action::Perform { cmd, bind } => (cmd, bind),
        };
        match cmd {
            Command::Smaps(_) => {}
            Command::Pagemap { .. } => harvest(&mut g),
            Command::Scan(args) if !args.clear => harvest(&mut g),
            cmd => {
                if let Some(a) = g.cmd(cmd) {
                    bind(&mut names, b, a);
                }
            }
        }
    }
    Ok(g.done(
        &format!("trace:{name}"),
        "the trace's commands, in every space",
    ))
}

/// The generator for `name` (`seed`, `hildenbrand`, `arena`, `jit`, `trace:FILE`).
pub fn generate(name: &str, seed: u64, scale: u32) -> Result<Generated, String> {
    let scale = scale.max(1);
    match name {
        "seed" => Ok(seed_pattern(seed, scale)),
        "hildenbrand" => Ok(hildenbrand_pattern(seed, scale)),
        "arena" => Ok(arena_pattern(seed, scale)),
        "jit" => Ok(jit_pattern(seed, scale)),
        "heap" => Ok(heap_pattern(seed, scale)),
        "cprogram" => Ok(cprogram_pattern(seed, scale)),
        _ => match name.strip_prefix("trace:") {
            Some(f) => trace_pattern(Path::new(f)),
            None => Err(format!(
                "unknown workload `{name}` (expected seed, hildenbrand, arena, jit, heap, cprogram, trace:FILE or all)"
            )),
        },
    }
}

// ======================================================================== runner

/// Soft-dirty address ranges of the whole space, sorted and disjoint.
fn softdirty_ranges(mm: &AddressSpace) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = Vec::new();
    mm.for_each_run(0, TASK_SIZE, |s, e, i| {
        if i.is_some_and(|i| i.softdirty) {
            match v.last_mut() {
                Some(l) if l.1 == s => l.1 = e,
                _ => v.push((s, e)),
            }
        }
    });
    v
}

/// Sorted, disjoint ranges of the VMAs of `v` with (`flag`) or without `VM_SOFTDIRTY`.
fn flagged(v: &[softdirty::mm::VmaInfo], flag: bool) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for w in v.iter().filter(|w| w.vm_softdirty == flag) {
        match out.last_mut() {
            Some(l) if l.1 == w.start => l.1 = w.end,
            _ => out.push((w.start, w.end)),
        }
    }
    out
}

/// Blames on `step`'s cause the pages whose `VM_SOFTDIRTY` it set or dropped (the VMA
/// lists before and after it), outside the range it made (whose pages are new, dirty in
/// every mode).
fn blame_step(
    step: &Command,
    result: Option<u64>,
    before: &[softdirty::mm::VmaInfo],
    after: &[softdirty::mm::VmaInfo],
    blame: &mut Vec<(u64, u64, Cause)>,
) {
    let (cause, own) = match *step {
        Command::Brk(_) => (Cause::Brk, None),
        Command::Op(Op::Mremap { addr, .. }) if result.is_some_and(|r| r != addr) => {
            (Cause::MremapMove, None)
        }
        Command::Op(Op::Mmap { addr, len, .. }) => (Cause::Merge, Some((addr, addr + len))),
        Command::MmapFile(ref m) => (Cause::Merge, Some((m.addr, m.addr + m.len))),
        _ => (Cause::Merge, None),
    };
    let set = difference(&flagged(after, true), &flagged(before, true));
    let dropped = {
        let was = flagged(before, true);
        let now = flagged(after, false);
        let mut v = Vec::new();
        for &(s, e) in &now {
            v.extend(clip(&was, s, e));
        }
        v
    };
    for (s, e) in set.into_iter().chain(dropped) {
        let parts = match own {
            Some((os, oe)) => difference(&[(s, e)], &[(os, oe)]),
            None => vec![(s, e)],
        };
        blame.extend(parts.into_iter().map(|(a, b)| (a, b, cause)));
    }
}

/// Adds the pages of `diff` to `causes`: each run to the latest blame that covers it,
/// the rest to `shared` (pages of `shared_ranges`) or `other`.
fn attribute(
    diff: &[(u64, u64)],
    blame: &[(u64, u64, Cause)],
    shared_ranges: &[(u64, u64)],
    causes: &mut Causes,
) {
    let mut rest = diff.to_vec();
    for &(s, e, c) in blame.iter().rev() {
        if rest.is_empty() {
            break;
        }
        causes.add(c, pages(&clip(&rest, s, e)));
        rest = difference(&rest, &[(s, e)]);
    }
    let mut shared = 0;
    for &(s, e) in shared_ranges {
        shared += pages(&clip(&rest, s, e));
    }
    causes.add(Cause::Shared, shared);
    causes.add(Cause::Other, pages(&rest) - shared);
}

#[derive(Default)]
struct Timings {
    mmap: Vec<u64>,
    mprotect: Vec<u64>,
    clear: Vec<u64>,
    write: Vec<u64>,
    harvest: Vec<u64>,
}

fn median(v: &mut [u64]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[v.len() / 2])
}

/// A space's name and its soft-dirty ranges.
type SpaceRanges = (String, Vec<(u64, u64)>);

/// Runs `w` under every mode of [`MODES`] in lock step.
pub fn run_workload(w: &Generated) -> WorkloadReport {
    run_workload_with(w, &mut |_| {})
}

/// Does `cmd` change the VMA layout (so that it may set or drop `VM_SOFTDIRTY`)?
fn structural(cmd: &Command) -> bool {
    matches!(cmd, Command::Op(_) | Command::Brk(_) | Command::MmapFile(_))
}

/// [`run_workload`], calling `tick` with the number of steps done every 4096 steps.
fn run_workload_with(w: &Generated, tick: &mut dyn FnMut(usize)) -> WorkloadReport {
    struct St {
        b: ModelBackend,
        row: ModeRow,
        t: Timings,
        /// Per space: the ranges blamed on a cause since that space's last clear.
        blame: std::collections::HashMap<String, Vec<(u64, u64, Cause)>>,
        /// The current space's name.
        cur: String,
    }
    let mut st: Vec<St> = MODES
        .iter()
        .map(|&mode| St {
            b: ModelBackend::new(mode),
            row: ModeRow {
                mode,
                false_positives: 0,
                false_negatives: 0,
                false_positive_causes: Causes::default(),
                false_negative_causes: Causes::default(),
                reported: 0,
                peak_vmas: 0,
                final_vmas: 0,
                peak_tracking_bytes: 0,
                errors: 0,
                divergences: 0,
                costs: Costs::default(),
            },
            t: Timings::default(),
            blame: Default::default(),
            cur: "main".to_string(),
        })
        .collect();
    let (mut harvests, mut writes) = (0, 0);
    for (i, step) in w.steps.iter().enumerate() {
        if i % 4096 == 0 {
            tick(i);
        }
        // Precise's soft-dirty ranges, per space, at a harvest.
        let mut truth: Option<Vec<SpaceRanges>> = None;
        let mut truth_result: Option<Result<u64, softdirty::errno::Errno>> = None;
        if matches!(step, Step::Harvest) {
            harvests += 1;
        }
        if matches!(step, Step::Do(Command::Write { .. })) {
            writes += 1;
        }
        for s in &mut st {
            let t0 = Instant::now();
            let result: Result<u64, softdirty::errno::Errno> = match step {
                Step::Do(Command::Scan(args)) if args.clear => {
                    s.b.current()
                        .scan_and_clear(args.start, args.end.wrapping_sub(args.start))
                        .map(|_| 0)
                }
                Step::Do(cmd) => {
                    // The modes with a VM_SOFTDIRTY flag (regions has none; precise is the truth).
                    let blames = matches!(s.row.mode, Mode::Legacy | Mode::Sticky | Mode::Nomerge)
                        && structural(cmd);
                    let before = blames.then(|| s.b.current().vmas());
                    let t0 = Instant::now();
                    let r = match s.b.perform(cmd) {
                        Ok(r) => r.map(|o| o.addr()),
                        // A command the model refuses as a whole (not generated).
                        Err(_) => Err(softdirty::errno::Errno::EINVAL),
                    };
                    let ns = t0.elapsed().as_nanos() as u64;
                    match cmd {
                        Command::Op(Op::Mmap { .. }) => s.t.mmap.push(ns),
                        Command::Op(Op::Mprotect { .. }) => s.t.mprotect.push(ns),
                        Command::Write { .. } => s.t.write.push(ns),
                        Command::ClearRefs(_) => s.t.clear.push(ns),
                        _ => {}
                    }
                    match cmd {
                        Command::Space(name) => s.cur = name.clone(),
                        Command::ClearRefs(v)
                            if r.is_ok() && softdirty::mm::parse_kstrtoint(v.trim()) == Ok(4) =>
                        {
                            s.blame.remove(&s.cur);
                        }
                        Command::Fork(child) if r.is_ok() => {
                            let b = s.blame.get(&s.cur).cloned().unwrap_or_default();
                            s.blame.insert(child.clone(), b);
                        }
                        _ => {}
                    }
                    if let Some(before) = before {
                        let after = s.b.current().vmas();
                        let blame = s.blame.entry(s.cur.clone()).or_default();
                        blame_step(cmd, r.as_ref().ok().copied(), &before, &after, blame);
                    }
                    if let (
                        Command::Op(Op::Mremap {
                            old_len, new_len, ..
                        }),
                        Ok(to),
                    ) = (cmd, &r)
                    {
                        let (old, new) = (page_up(*old_len), page_up(*new_len));
                        if new > old {
                            let blame = s.blame.entry(s.cur.clone()).or_default();
                            blame.push((to + old, to + new, Cause::MremapGrow));
                        }
                    }
                    if let Command::Op(
                        Op::DontNeed { addr, len }
                        | Op::Madvise {
                            addr,
                            len,
                            advice: Advice::DontNeed | Advice::GuardInstall,
                        },
                    ) = *cmd
                    {
                        if r.is_ok() {
                            let end = page_up(addr.saturating_add(len));
                            let blame = s.blame.entry(s.cur.clone()).or_default();
                            blame.push((addr, end, Cause::Dontneed));
                        }
                    }
                    r
                }
                Step::Harvest => {
                    let names = s.b.tracker().names();
                    let mut got_all = Vec::new();
                    for n in &names {
                        let sp = s.b.tracker().space(n);
                        got_all.push((n.clone(), softdirty_ranges(&sp)));
                    }
                    s.t.harvest.push(t0.elapsed().as_nanos() as u64);
                    let truth = truth.get_or_insert_with(|| got_all.clone());
                    for (n, got) in &got_all {
                        let want = truth
                            .iter()
                            .find(|(m, _)| m == n)
                            .map_or(&[][..], |(_, v)| &v[..]);
                        let both = within(got, want);
                        s.row.reported += pages(got);
                        s.row.false_positives += pages(got) - both;
                        s.row.false_negatives += pages(want) - both;
                        let blame = s.blame.get(n).map_or(&[][..], |v| &v[..]);
                        let sp = s.b.tracker().space(n);
                        let shared: Vec<(u64, u64)> = sp
                            .vmas()
                            .iter()
                            .filter(|v| v.shared)
                            .map(|v| (v.start, v.end))
                            .collect();
                        attribute(
                            &difference(got, want),
                            blame,
                            &[],
                            &mut s.row.false_positive_causes,
                        );
                        attribute(
                            &difference(want, got),
                            blame,
                            &shared,
                            &mut s.row.false_negative_causes,
                        );
                    }
                    Ok(0)
                }
            };
            if result.is_err() {
                s.row.errors += 1;
            }
            match &truth_result {
                None => truth_result = Some(result),
                Some(t) if *t != result => s.row.divergences += 1,
                Some(_) => {}
            }
            let (vmas, bytes) = s.b.tracker().names().iter().fold((0, 0), |(v, b), n| {
                let sp = s.b.tracker().space(n);
                (v + sp.vma_total(), b + sp.tracking_bytes())
            });
            s.row.peak_vmas = s.row.peak_vmas.max(vmas);
            s.row.peak_tracking_bytes = s.row.peak_tracking_bytes.max(bytes);
        }
    }
    let modes = st
        .into_iter()
        .map(|mut s| {
            s.row.final_vmas =
                s.b.tracker()
                    .names()
                    .iter()
                    .map(|n| s.b.tracker().space(n).vma_total())
                    .sum();
            s.row.costs = Costs {
                mmap_ns: median(&mut s.t.mmap),
                mprotect_ns: median(&mut s.t.mprotect),
                clear_refs_ns: median(&mut s.t.clear),
                write_fault_ns: median(&mut s.t.write),
                harvest_ns: median(&mut s.t.harvest),
            };
            s.row
        })
        .collect();
    WorkloadReport {
        workload: w.name.clone(),
        about: w.about.clone(),
        steps: w.steps.len(),
        harvests,
        writes,
        modes,
    }
}

/// Generates and runs every workload `args` names.
pub fn report(args: &CompareArgs) -> Result<ComparisonReport, String> {
    report_with(args, false)
}

/// The workload names `args` asks for.
fn workload_names(args: &CompareArgs) -> Vec<String> {
    if args.workload == "all" {
        ["seed", "hildenbrand", "arena", "jit", "heap", "cprogram"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        args.workload.split(',').map(|s| s.to_string()).collect()
    }
}

/// [`report`], with a progress bar on stderr when `show_progress`.
fn report_with(args: &CompareArgs, show_progress: bool) -> Result<ComparisonReport, String> {
    let names = workload_names(args);
    let pb = show_progress.then(|| {
        let pb = indicatif::ProgressBar::new(names.len() as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] workload {pos}/{len}: {msg}",
            )
            .expect("template"),
        );
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
        pb
    });
    let result = report_names(args, &names, pb.as_ref());
    if let Some(pb) = &pb {
        pb.finish_and_clear();
    }
    result
}

fn report_names(
    args: &CompareArgs,
    names: &[String],
    pb: Option<&indicatif::ProgressBar>,
) -> Result<ComparisonReport, String> {
    let mut workloads = Vec::new();
    for n in names {
        if let Some(pb) = pb {
            pb.set_message(format!("{n}: generating"));
        }
        let g = generate(n, args.seed, args.scale)?;
        let steps = g.steps.len();
        workloads.push(run_workload_with(&g, &mut |i| {
            if let Some(pb) = pb {
                pb.set_message(format!("{n}: step {i}/{steps}"));
            }
        }));
        if let Some(pb) = pb {
            pb.inc(1);
        }
    }
    Ok(ComparisonReport {
        seed: args.seed,
        scale: args.scale.max(1),
        workloads,
    })
}

fn ns(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |x| x.to_string())
}

/// The report as text tables, one per workload.
pub fn format_table(r: &ComparisonReport) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    for w in &r.workloads {
        let _ = writeln!(
            o,
            "workload {} (seed {}): {} steps, {} writes, {} harvests — {}",
            w.workload, r.seed, w.steps, w.writes, w.harvests, w.about
        );
        let _ = writeln!(
            o,
            "{:<8} {:>8} {:>8} {:>9} {:>9} {:>10} {:>11} {:>9} {:>11} {:>10} {:>9} {:>10} {:>6}",
            "mode",
            "false+",
            "false-",
            "peak VMAs",
            "final VMAs",
            "reported",
            "peak bytes",
            "mmap ns",
            "mprotect ns",
            "clear ns",
            "write ns",
            "harvest ns",
            "errors"
        );
        for m in &w.modes {
            let _ = writeln!(
                o,
                "{:<8} {:>8} {:>8} {:>9} {:>10} {:>10} {:>11} {:>9} {:>11} {:>10} {:>9} {:>10} {:>6}",
                m.mode.name(),
                m.false_positives,
                m.false_negatives,
                m.peak_vmas,
                m.final_vmas,
                m.reported,
                m.peak_tracking_bytes,
                ns(m.costs.mmap_ns),
                ns(m.costs.mprotect_ns),
                ns(m.costs.clear_refs_ns),
                ns(m.costs.write_fault_ns),
                ns(m.costs.harvest_ns),
                m.errors
            );
        }
        let causes = |c: &Causes| {
            format!(
                "merge {} brk {} mremap-move {} shared {} dontneed {} mremap-grow {} other {}",
                c.merge, c.brk, c.mremap_move, c.shared, c.dontneed, c.mremap_grow, c.other
            )
        };
        for m in w
            .modes
            .iter()
            .filter(|m| m.false_positives + m.false_negatives > 0)
        {
            let _ = writeln!(
                o,
                "  {:<8} false+ by cause: {}; false- by cause: {}",
                m.mode.name(),
                causes(&m.false_positive_causes),
                causes(&m.false_negative_causes)
            );
        }
        let _ = writeln!(o);
    }
    o
}

/// Draws false positives, false negatives, peak VMAs and peak tracking memory per workload
/// and mode as grouped bars, one panel per metric, to `path` (`-`: stdout).
pub fn plot(r: &ComparisonReport, path: &Path) -> Result<(), String> {
    let svg = plot_svg(r).map_err(|e| format!("{}: {e}", path.display()))?;
    crate::outpath::write_text(path, &svg)
}

/// One colour per mode of [`MODES`], in its order.
const MODE_COLORS: [(u8, u8, u8); 5] = [
    (31, 119, 180),  // precise: blue
    (214, 39, 40),   // legacy: red
    (255, 127, 14),  // sticky: orange
    (44, 160, 44),   // nomerge: green
    (148, 103, 189), // regions: purple
];

/// The chart of [`plot`] as an SVG document: grouped bars, one group per workload (named
/// under it), one bar per mode (distinct colours), integer counts on the y axis.
pub fn plot_svg(r: &ComparisonReport) -> Result<String, String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 760)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let panels = root.split_evenly((2, 2));
        type Metric = fn(&ModeRow) -> u64;
        let metrics: [(&str, &str, Metric); 4] = [
            ("false positives", "pages", |m| m.false_positives),
            ("false negatives", "pages", |m| m.false_negatives),
            ("peak VMAs", "VMAs", |m| m.peak_vmas as u64),
            ("peak tracking memory", "bytes", |m| {
                m.peak_tracking_bytes as u64
            }),
        ];
        let nw = r.workloads.len().max(1);
        let nm = MODES.len();
        let width = (nm + 1) as f64;
        let names: Vec<String> = r
            .workloads
            .iter()
            .map(|w| {
                let n = w.workload.rsplit('/').next().unwrap_or(&w.workload);
                n.to_string()
            })
            .collect();
        for (panel, (title, unit, f)) in panels.iter().zip(metrics.iter()) {
            let max = r
                .workloads
                .iter()
                .flat_map(|w| w.modes.iter().map(f))
                .max()
                .unwrap_or(1)
                .max(1);
            let top = max + max / 10 + 1;
            let mut chart = ChartBuilder::on(panel)
                .caption(*title, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(80)
                .build_cartesian_2d(0f64..(nw as f64 * width), 0u64..top)
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                // The workload names are drawn under their groups below.
                .x_labels(0)
                .x_desc("workload")
                .y_desc(*unit)
                .y_label_formatter(&|y| y.to_string())
                .draw()
                .map_err(|e| err(&e))?;
            for (k, mode) in MODES.iter().enumerate() {
                let (cr, cg, cb) = MODE_COLORS[k % MODE_COLORS.len()];
                let color = RGBColor(cr, cg, cb);
                let bars: Vec<Rectangle<(f64, u64)>> = r
                    .workloads
                    .iter()
                    .enumerate()
                    .filter_map(|(g, w)| {
                        let m = w.modes.iter().find(|m| m.mode == *mode)?;
                        let x0 = g as f64 * width + 0.5 + k as f64;
                        Some(Rectangle::new([(x0, 0), (x0 + 0.9, f(m))], color.filled()))
                    })
                    .collect();
                chart
                    .draw_series(bars)
                    .map_err(|e| err(&e))?
                    .label(mode.name())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                    });
            }
            // Each workload's name, centred under its group of bars.
            let style = TextStyle::from(("sans-serif", 14).into_font()).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Top,
                ),
            );
            for (g, name) in names.iter().enumerate() {
                let (px, py) = chart.backend_coord(&(g as f64 * width + width / 2.0, 0));
                root.draw(&Text::new(name.clone(), (px, py + 4), style.clone()))
                    .map_err(|e| err(&e))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// Runs `softdirty compare` with `args`.
pub fn main(args: &CompareArgs) -> ExitCode {
    let plot_stdout = args.plot.as_deref().is_some_and(crate::outpath::is_stdout);
    if plot_stdout && args.json {
        eprintln!("softdirty compare: --json and --plot - would both write to stdout: name a file for --plot");
        return ExitCode::from(2);
    }
    let names = workload_names(args);
    if args.scale > 1 && names.iter().all(|n| n.starts_with("trace:")) {
        eprintln!(
            "softdirty compare: --scale {} has no effect on trace:FILE workloads (it scales the built-in ones)",
            args.scale
        );
        return ExitCode::from(2);
    }
    if let Some(p) = &args.plot {
        if let Err(e) = crate::outpath::check_writable("--plot", p) {
            eprintln!("softdirty compare: {e}");
            return ExitCode::from(2);
        }
    }
    let show = std::io::stderr().is_terminal();
    let r = match report_with(args, show) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("softdirty compare: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&r) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("softdirty compare: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else if !plot_stdout {
        print!("{}", format_table(&r));
    }
    if let Some(p) = &args.plot {
        if let Err(e) = plot(&r, p) {
            eprintln!("softdirty compare: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
