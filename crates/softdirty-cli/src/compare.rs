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

use softdirty::backend::{Command, Op};
use softdirty::linux::{PAGE_SIZE, TASK_SIZE};
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
    /// brk after each harvest), `trace:FILE`, or `all` (the five built-in ones).
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

/// One mode's results on one workload.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModeRow {
    /// The mode.
    pub mode: Mode,
    /// Pages reported soft-dirty that precise does not report, summed over harvests.
    pub false_positives: u64,
    /// Pages precise reports that the mode does not, summed over harvests.
    pub false_negatives: u64,
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

/// Records steps, resolving results on a scratch precise space.
struct Gen {
    mm: AddressSpace,
    steps: Vec<Step>,
}

impl Gen {
    fn new() -> Gen {
        Gen {
            mm: AddressSpace::new(Mode::Precise),
            steps: Vec::new(),
        }
    }

    fn op(&mut self, op: Op) -> Option<u64> {
        let r = op.apply(&self.mm).ok();
        self.steps.push(Step::Do(Command::Op(op)));
        r
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
        let _ = self.mm.write(addr, pages * P);
        self.steps.push(Step::Do(Command::Write {
            addr,
            len: pages * P,
        }));
    }

    /// The end of a pre-copy / checkpoint round: harvest, then clear.
    fn round(&mut self) {
        self.steps.push(Step::Harvest);
        let _ = self.mm.clear_refs(4);
        self.steps.push(Step::Do(Command::ClearRefs("4".into())));
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
    let _ = g.mm.brk_start(start);
    g.steps.push(Step::Do(Command::BrkStart(start)));
    let _ = g.mm.brk(brk);
    g.steps.push(Step::Do(Command::Brk(brk)));
    g.write(start, 16);
    for _ in 0..64 * scale {
        g.round();
        brk += rng.gen_range(1..=8) * P;
        let _ = g.mm.brk(brk);
        g.steps.push(Step::Do(Command::Brk(brk)));
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

/// `trace:FILE`: the trace's commands on its `main` space (other spaces and `fork` are
/// skipped). `pagemap`, `scan` without `clear` and `expect softdirty` are harvests;
/// `scan ... clear` is a get-and-clear; other expectations are ignored.
pub fn trace_pattern(path: &Path) -> Result<Generated, String> {
    use softdirty_trace::lower::{bind, lower, Action, Bindings};
    let name = path.display().to_string();
    let mut g = Gen::new();
    let mut names = Bindings::new();
    let mut main = true;
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
            Action::Expect(softdirty_trace::ast::Expect::SoftDirty { .. }) if main => {
                harvest(&mut g);
                continue;
            }
            Action::Expect(_) => continue,
            Action::Perform { cmd, bind } => (cmd, bind),
        };
        match cmd {
            Command::Space(s) => main = s == "main",
            _ if !main => {}
            Command::Fork(_) | Command::Smaps(_) => {}
            // The program break (trace v2): a structural operation every design runs.
            Command::BrkStart(a) => {
                let _ = g.mm.brk_start(a);
                g.steps.push(Step::Do(cmd));
            }
            Command::Brk(a) => {
                let _ = g.mm.brk(a);
                g.steps.push(Step::Do(cmd));
            }
            Command::Op(op) => {
                if let Some(a) = g.op(op) {
                    bind(&mut names, b, a);
                }
            }
            Command::Write { addr, len } => {
                let _ = g.mm.write(addr, len);
                g.steps.push(Step::Do(cmd));
            }
            Command::Read { addr, len } => {
                let _ = g.mm.read(addr, len);
                g.steps.push(Step::Do(cmd));
            }
            Command::ClearRefs(ref v) => {
                if g.mm.clear_refs_str(v) == Ok(())
                    && softdirty::mm::parse_kstrtoint(v.trim()) == Ok(4)
                {
                    g.steps.push(Step::Do(cmd));
                }
            }
            Command::Scan(args) if args.clear => {
                let _ =
                    g.mm.scan_and_clear(args.start, args.end.wrapping_sub(args.start));
                g.steps.push(Step::Do(cmd));
            }
            Command::Pagemap { .. } | Command::Scan(_) => harvest(&mut g),
            // Files are shared between spaces (a tracker's), and the comparison drives
            // one address space per design.
            Command::File { .. } | Command::Fwrite { .. } | Command::MmapFile(_) => {
                return Err(format!(
                    "{name}:{}: the comparison does not run files (trace v2's file, memfd, \
                     fwrite and file mappings): replay the trace instead",
                    c.line
                ))
            }
        }
    }
    Ok(g.done(
        &format!("trace:{name}"),
        "the trace's commands on its main space",
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
        _ => match name.strip_prefix("trace:") {
            Some(f) => trace_pattern(Path::new(f)),
            None => Err(format!(
                "unknown workload `{name}` (expected seed, hildenbrand, arena, jit, heap, trace:FILE or all)"
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

fn total(a: &[(u64, u64)]) -> u64 {
    a.iter().map(|(s, e)| (e - s) / P).sum()
}

/// Pages in both sorted disjoint range lists.
fn intersection(a: &[(u64, u64)], b: &[(u64, u64)]) -> u64 {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        let s = a[i].0.max(b[j].0);
        let e = a[i].1.min(b[j].1);
        if s < e {
            n += (e - s) / P;
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    n
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

/// Runs `w` under every mode of [`MODES`] in lock step.
pub fn run_workload(w: &Generated) -> WorkloadReport {
    run_workload_with(w, &mut |_| {})
}

/// [`run_workload`], calling `tick` with the number of steps done every 4096 steps.
fn run_workload_with(w: &Generated, tick: &mut dyn FnMut(usize)) -> WorkloadReport {
    struct St {
        mm: AddressSpace,
        row: ModeRow,
        t: Timings,
    }
    let mut st: Vec<St> = MODES
        .iter()
        .map(|&mode| St {
            mm: AddressSpace::new(mode),
            row: ModeRow {
                mode,
                false_positives: 0,
                false_negatives: 0,
                reported: 0,
                peak_vmas: 0,
                final_vmas: 0,
                peak_tracking_bytes: 0,
                errors: 0,
                divergences: 0,
                costs: Costs::default(),
            },
            t: Timings::default(),
        })
        .collect();
    let (mut harvests, mut writes) = (0, 0);
    for (i, step) in w.steps.iter().enumerate() {
        if i % 4096 == 0 {
            tick(i);
        }
        let mut truth: Option<Vec<(u64, u64)>> = None;
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
                Step::Do(Command::Op(op)) => {
                    let r = op.apply(&s.mm);
                    let ns = t0.elapsed().as_nanos() as u64;
                    match op {
                        Op::Mmap { .. } => s.t.mmap.push(ns),
                        Op::Mprotect { .. } => s.t.mprotect.push(ns),
                        _ => {}
                    }
                    r
                }
                Step::Do(Command::Write { addr, len }) => {
                    let r = s.mm.write(*addr, *len).map(|()| 0);
                    s.t.write.push(t0.elapsed().as_nanos() as u64);
                    r
                }
                Step::Do(Command::Read { addr, len }) => s.mm.read(*addr, *len).map(|()| 0),
                Step::Do(Command::BrkStart(a)) => s.mm.brk_start(*a).map(|()| 0),
                Step::Do(Command::Brk(a)) => s.mm.brk(*a),
                Step::Do(Command::ClearRefs(v)) => {
                    let r = s.mm.clear_refs_str(v).map(|()| 0);
                    s.t.clear.push(t0.elapsed().as_nanos() as u64);
                    r
                }
                Step::Do(Command::Scan(args)) => {
                    s.mm.scan_and_clear(args.start, args.end.wrapping_sub(args.start))
                        .map(|_| 0)
                }
                // Not generated: the comparison drives one space and only observes by
                // harvests.
                Step::Do(
                    Command::Space(_)
                    | Command::Fork(_)
                    | Command::Pagemap { .. }
                    | Command::Smaps(_)
                    | Command::File { .. }
                    | Command::Fwrite { .. }
                    | Command::MmapFile(_),
                ) => Ok(0),
                Step::Harvest => {
                    let got = softdirty_ranges(&s.mm);
                    s.t.harvest.push(t0.elapsed().as_nanos() as u64);
                    let truth = truth.get_or_insert_with(|| got.clone());
                    let both = intersection(&got, truth);
                    s.row.reported += total(&got);
                    s.row.false_positives += total(&got) - both;
                    s.row.false_negatives += total(truth) - both;
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
            s.row.peak_vmas = s.row.peak_vmas.max(s.mm.vma_total());
            s.row.peak_tracking_bytes = s.row.peak_tracking_bytes.max(s.mm.tracking_bytes());
        }
    }
    let modes = st
        .into_iter()
        .map(|mut s| {
            s.row.final_vmas = s.mm.vma_total();
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
        ["seed", "hildenbrand", "arena", "jit", "heap"]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intersection_counts_pages() {
        let a = [(0, 4 * P), (8 * P, 10 * P)];
        let b = [(2 * P, 9 * P)];
        assert_eq!(intersection(&a, &b), 3);
        assert_eq!(total(&a), 6);
    }
}
