//! `softdirty bench`: the marking and harvest comparisons against the baselines,
//! in-process, as a table of medians and ratios or as JSON.
//!
//! The cases are shared with the criterion benchmark `benches/harvest.rs` ([`cases`]):
//! each side of a case is a closure that runs `iters` iterations and returns the time
//! they took, excluding per-iteration setup (criterion's `iter_custom` shape). Baselines:
//!
//! - rust-vmm `vm-memory` 0.18 [`AtomicBitmap`] (`mark_dirty`, `get_and_reset`), measured
//!   in the same run;
//! - the kernel's `PAGEMAP_SCAN` + userfaultfd WP-async on real memory: **quoted** from
//!   `../shared/reference/kernel-oracle.md` §2 (CPU-time medians measured on this box's
//!   kernel), not measured by this command, and marked so in the output.
//!
//! `ratio` = baseline / ours: above 1 means softdirty is faster.
//!
//! Scenarios, all on a `precise` address space after `clear_refs 4`, with every chunk
//! already materialized (a guest that has run a while), so the sparse bitmap's "untouched
//! chunk" shortcut does not flatter us:
//!
//! | name | ours | baseline |
//! |---|---|---|
//! | `mark256/redirty` | `AddressSpace::write` of 256 clean (harvested) pages | `mark_dirty` of 256 pages |
//! | `mark256/dirty` | one hot range of 256 already-dirty pages | the same range |
//! | `mark256/core` | `PageBitmap::write` (no VMA lookup), clean pages | the same |
//! | `mark256/redirty-pinned` | `mark256/redirty`, the caller holding `epoch::pin()` across its writes | the same |
//! | `mark1/dirty` | `AddressSpace::write` of one hot dirty page | `mark_dirty` of that page |
//! | `mark1/dirty-pinned` | `mark1/dirty`, the caller holding `epoch::pin()` across its writes | the same |
//! | `mark1/core` | `PageBitmap::write` of one dirty page | the same |
//! | `harvest16g/runs64` | `scan_and_clear` of 16 GiB, 0.1% dirty in 64-page runs | `get_and_reset` |
//! | `harvest16g/scattered` | the same, 0.1% of pages uniformly scattered | `get_and_reset` |
//! | `harvest1g/full` | `scan_and_clear` of 1 GiB, 100% dirty | `get_and_reset` |
//! | `harvest64g/full/par` | parallel `scan_and_clear`, 64 GiB 100% dirty | our sequential path |
//! | `harvest16g/full/par` | parallel, 16 GiB 100% dirty | our sequential path |
//! | `kernel1g/...` | `scan_and_clear` of 1 GiB at the oracle's densities | kernel (quoted) |
//! | `getlog1g/...` | `get_dirty_log` (read-only, word-level walk) of 1 GiB | the per-page pagemap walk (`softdirty_runs`), what `get_dirty_log` used before |
//! | `mprotect/vmasN` | an `mprotect` that splits one page out of a 1,024-page VMA and the one that merges it back, in a space of N VMAs | the same pair in a space of 100 VMAs (target: ratio ≥ 0.25, the cost at N at most 4× the cost at 100) |

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use vm_memory::bitmap::{AtomicBitmap, Bitmap};

use softdirty::bitmap::PageBitmap;
use softdirty::linux::{PAGE_SHIFT, PAGE_SIZE};
use softdirty::mm::{AddressSpace, Placement, Sharing};
use softdirty::mode::Mode;
use softdirty::prot::Prot;

/// Options of `softdirty bench`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BenchArgs {
    /// Fewer, shorter samples (about 10 s in all instead of about 40 s).
    #[arg(long)]
    pub quick: bool,
    /// Print JSON (a list of `{name, ours_ns, baseline, baseline_ns, ratio}`).
    #[arg(long)]
    pub json: bool,
    /// Only the cases whose name contains this string (exit status 2 if none does).
    #[arg(long)]
    pub filter: Option<String>,
}

/// One timed side of a case: runs `iters` iterations, returns the time they took
/// (setup excluded).
pub type Timed = Box<dyn FnMut(u64) -> Duration>;

/// One comparison: our operation and the baseline's, on the same workload.
pub struct Case {
    /// Short name (`harvest16g/runs64`).
    pub name: &'static str,
    /// What is measured, for the table.
    pub what: &'static str,
    /// Our side.
    pub ours: Timed,
    /// The baseline's name.
    pub baseline: &'static str,
    /// The baseline's side, or `Err(ns)` for a figure quoted from a reference, not
    /// measured here.
    pub baseline_side: Result<Timed, f64>,
    /// The target for `baseline / ours`, if it sets one.
    pub target: Option<f64>,
}

/// One row of the output.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    /// case name
    pub name: String,
    /// our median, ns per operation
    pub ours_ns: f64,
    /// baseline name
    pub baseline: String,
    /// the baseline's median, ns per operation
    pub baseline_ns: f64,
    /// `baseline_ns / ours_ns` (above 1: softdirty is faster)
    pub ratio: f64,
}

const GIB: u64 = 1 << 30;

/// The calling thread's CPU time: immune to preemption by the other processes of a
/// shared box. Single-threaded cases are timed with it; parallel ones with wall time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `timespec`; CLOCK_THREAD_CPUTIME_ID exists on
    // every Linux the crate supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    debug_assert_eq!(rc, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A stopwatch on the thread's CPU clock (`cpu`) or the wall clock.
#[derive(Clone, Copy)]
struct Watch {
    cpu: bool,
    wall: Option<Instant>,
    cpu0: Duration,
}

impl Watch {
    fn start(cpu: bool) -> Watch {
        if cpu {
            Watch {
                cpu,
                wall: None,
                cpu0: thread_cpu(),
            }
        } else {
            Watch {
                cpu,
                wall: Some(Instant::now()),
                cpu0: Duration::ZERO,
            }
        }
    }
    fn elapsed(self) -> Duration {
        match self.wall {
            Some(t) if !self.cpu => t.elapsed(),
            _ => thread_cpu().saturating_sub(self.cpu0),
        }
    }
}
const PAGE: usize = PAGE_SIZE as usize;

fn page_size() -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::new(PAGE).expect("4096 != 0")
}

/// A precise address space with one RW mapping of `len` bytes, every page written once
/// (all chunks materialized) and then cleared.
fn warm_space(len: u64) -> (AddressSpace, u64) {
    let mm = AddressSpace::new(Mode::Precise);
    let a = mm
        .mmap(0, len, Prot::RW, Sharing::Private, Placement::Hint)
        .expect("mmap");
    mm.write(a, len).expect("write");
    mm.clear_refs(4).expect("clear_refs");
    (mm, a)
}

/// Sorted, disjoint page runs covering `frac` of `pages`: `run`-page runs at random
/// page offsets (not aligned to words).
fn random_runs(pages: u64, frac: f64, run: u64, seed: u64) -> Vec<(u64, u64)> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let want = ((pages as f64 * frac) as u64 / run).max(1);
    let mut set = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    while (out.len() as u64) < want {
        let slot = rng.gen_range(0..pages / run / 2);
        if set.insert(slot) {
            // Slots of 2 * run pages; a run anywhere in the slot's first half + jitter.
            let jitter = rng.gen_range(0..run);
            out.push((slot * 2 * run + jitter, run));
        }
    }
    out.sort_unstable();
    out
}

/// A mark benchmark over `ranges` of `n` pages each: ours re-dirties harvested pages
/// (`redirty`) or writes dirty ones.
fn mark_ours(n: u64, redirty: bool) -> Timed {
    mark_ours_pinned(n, redirty, false)
}

/// [`mark_ours`]; with `pinned`, the timed loop holds an epoch guard
/// (`softdirty::epoch::pin()`) across its writes, as an embedder's vCPU loop may do for
/// a batch of writes: each `AddressSpace::write` then re-pins reentrantly (a counter, no
/// locked instruction).
fn mark_ours_pinned(n: u64, redirty: bool, pinned: bool) -> Timed {
    let ranges: u64 = (1 << 20) / n.max(64); // 4 GiB worth of distinct ranges at most
    let len = ranges * n.max(64) * PAGE_SIZE;
    let (mm, a) = warm_space(len);
    if !redirty {
        mm.write(a, len).expect("write");
    }
    let stride = n.max(64) * PAGE_SIZE;
    Box::new(move |iters| {
        let mut total = Duration::ZERO;
        let mut done = 0;
        while done < iters {
            let k = (iters - done).min(ranges);
            if redirty {
                mm.clear_refs(4).expect("clear_refs");
            }
            let t = Watch::start(true);
            let guard = pinned.then(softdirty::epoch::pin);
            for i in 0..k {
                // Already dirty: the same (hot) range every time, as a vCPU re-writing
                // its working set; first writes: distinct ranges (they were cleared).
                let at = if redirty { a + i * stride } else { a };
                let _ = black_box(mm.write(black_box(at), n * PAGE_SIZE));
            }
            drop(guard);
            total += t.elapsed();
            done += k;
        }
        total
    })
}

/// [`mark_ours`] through a writer handle (`AddressSpace::writer`, one per timed batch):
/// one pin per batch, the lookup skipped while the VMA stays published.
fn mark_writer(n: u64, redirty: bool) -> Timed {
    let ranges: u64 = (1 << 20) / n.max(64);
    let len = ranges * n.max(64) * PAGE_SIZE;
    let (mm, a) = warm_space(len);
    if !redirty {
        mm.write(a, len).expect("write");
    }
    let stride = n.max(64) * PAGE_SIZE;
    Box::new(move |iters| {
        let mut total = Duration::ZERO;
        let mut done = 0;
        while done < iters {
            let k = (iters - done).min(ranges);
            if redirty {
                mm.clear_refs(4).expect("clear_refs");
            }
            let t = Watch::start(true);
            let mut w = mm.writer();
            for i in 0..k {
                let at = if redirty { a + i * stride } else { a };
                let _ = black_box(w.write(black_box(at), n * PAGE_SIZE));
            }
            drop(w);
            total += t.elapsed();
            done += k;
        }
        total
    })
}

/// One locked OR on a hot word per iteration: the floor of any mark that orders itself
/// against the data it covers with a locked instruction, on this machine.
fn lock_or() -> Timed {
    let word = std::sync::atomic::AtomicU64::new(0);
    Box::new(move |iters| {
        let w = black_box(&word);
        let t = Watch::start(true);
        for _ in 0..iters {
            // The result unused: one `lock or` (a used result is a `lock cmpxchg` loop).
            w.fetch_or(1, std::sync::atomic::Ordering::AcqRel);
        }
        t.elapsed()
    })
}

/// A bitmap vm-memory can use, with a way to make it all clean again.
trait VmmBitmap: vm_memory::bitmap::NewBitmap + Bitmap + 'static {
    fn clean_all(&self);
}

impl VmmBitmap for AtomicBitmap {
    fn clean_all(&self) {
        self.reset();
    }
}

impl VmmBitmap for softdirty::vmm::SoftDirtyBitmap {
    fn clean_all(&self) {
        self.reset();
    }
}

/// What a `vmm/*` case does per operation.
#[derive(Clone, Copy)]
enum VmmOp {
    /// `Bytes::write_obj::<u64>` at a pseudo-random address (pages already dirty after
    /// the first pass: the steady state between harvests)
    WriteObj,
    /// `Bytes::write_slice` of 4 KiB at a pseudo-random address
    WriteSlice,
    /// the region bitmap's `mark_dirty` over a fresh (clean) 1 MiB range
    MarkRange,
}

/// The guest memory of a `vmm/*` case: 256 MiB of anonymous host memory that both sides
/// map (`vmm_case`), so that they write the same physical pages. With a mapping each,
/// the two sides' medians differed by up to 25% from run to run in either direction on
/// the 2-core machine, which drowned the difference of the bitmaps. vm-memory's own
/// region owns the mapping (unmapped when the last side drops it).
struct HostMem(vm_memory::MmapRegion<()>);

const VMM_SIZE: u64 = 256 << 20;

impl HostMem {
    fn new() -> std::sync::Arc<HostMem> {
        let r = vm_memory::MmapRegion::<()>::new(VMM_SIZE as usize).expect("host memory");
        std::sync::Arc::new(HostMem(r))
    }
}

/// vm-memory's write path over a 256 MiB `GuestMemoryMmap<B>` on `host` (benches/vmm.rs's
/// workload): the same calls for `SoftDirtyBitmap` (ours) and `AtomicBitmap` (baseline),
/// on the same host memory.
fn vmm_case<B: VmmBitmap>(op: VmmOp, host: std::sync::Arc<HostMem>) -> Timed {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};
    const SIZE: u64 = VMM_SIZE;
    // SAFETY: `host.0` is a page-aligned, readable and writable anonymous mapping of
    // SIZE bytes that outlives the region: the closure below holds `host`. The region
    // does not own the mapping (`build_raw`), so dropping it does not unmap it.
    let region = unsafe {
        MmapRegion::<B>::build_raw(
            host.0.as_ptr(),
            SIZE as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        )
    }
    .expect("guest region");
    let region = GuestRegionMmap::new(region, GuestAddress(0)).expect("guest region");
    let m: GuestMemoryMmap<B> = GuestMemoryMmap::from_regions(vec![region]).expect("guest memory");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let addrs: Vec<u64> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (SIZE - 8192)) & !7
        })
        .collect();
    let buf = vec![0xabu8; 4096];
    // The bitmap vm-memory would call for the region, on its own (its `mark_dirty` is
    // the whole of a range mark; `reset` needs the bitmap itself, not a region slice).
    let bits = B::with_len(SIZE as usize);
    Box::new(move |iters| {
        let _host = &host;
        let mut total = Duration::ZERO;
        let mut done = 0;
        while done < iters {
            let k = (iters - done).min(match op {
                VmmOp::MarkRange => SIZE >> 20,
                _ => addrs.len() as u64,
            });
            if let VmmOp::MarkRange = op {
                bits.clean_all();
            }
            let t = Watch::start(true);
            for i in 0..k {
                match op {
                    VmmOp::WriteObj => m
                        .write_obj(i, GuestAddress(addrs[i as usize]))
                        .expect("write_obj"),
                    VmmOp::WriteSlice => m
                        .write_slice(black_box(&buf), GuestAddress(addrs[i as usize]))
                        .expect("write_slice"),
                    VmmOp::MarkRange => bits.mark_dirty(black_box((i << 20) as usize), 1 << 20),
                }
            }
            total += t.elapsed();
            done += k;
        }
        total
    })
}

fn mark_core(n: u64, redirty: bool) -> Timed {
    let ranges: u64 = (1 << 20) / n.max(64);
    let stride = n.max(64);
    let bm = PageBitmap::new(ranges * stride, false);
    bm.write(0, ranges * stride);
    if redirty {
        bm.clear_all();
    }
    Box::new(move |iters| {
        let mut total = Duration::ZERO;
        let mut done = 0;
        while done < iters {
            let k = (iters - done).min(ranges);
            if redirty {
                bm.clear_all();
            }
            let t = Watch::start(true);
            for i in 0..k {
                let at = if redirty { i * stride } else { 0 };
                black_box(bm.write(black_box(at), n));
            }
            total += t.elapsed();
            done += k;
        }
        total
    })
}

fn mark_base(n: u64, hot: bool) -> Timed {
    let ranges: u64 = (1 << 20) / n.max(64);
    let stride = (n.max(64) * PAGE_SIZE) as usize;
    let bm = AtomicBitmap::new(ranges as usize * stride, page_size());
    Box::new(move |iters| {
        let mut total = Duration::ZERO;
        let mut done = 0;
        while done < iters {
            let k = (iters - done).min(ranges);
            bm.reset();
            let t = Watch::start(true);
            for i in 0..k as usize {
                let at = if hot { 0 } else { i * stride };
                bm.mark_dirty(black_box(at), n as usize * PAGE);
            }
            total += t.elapsed();
            done += k;
        }
        total
    })
}

/// Our harvest of `len` bytes after writing `runs` (page runs) before each iteration.
fn harvest_ours(len: u64, runs: Vec<(u64, u64)>, parallel: Option<bool>) -> Timed {
    harvest_ours_light(len, runs, parallel, false)
}

/// [`harvest_ours`]; `light`: with a light writer registered (`softdirty::barrier`, as a
/// live writer handle is), so that the harvest ends with `membarrier`.
fn harvest_ours_light(
    len: u64,
    runs: Vec<(u64, u64)>,
    parallel: Option<bool>,
    light: bool,
) -> Timed {
    let (mm, a) = warm_space(len);
    let expect: u64 = runs.iter().map(|r| r.1).sum();
    let mut checked = false;
    Box::new(move |iters| {
        let mut total = Duration::ZERO;
        let registered = light.then(softdirty::barrier::LightWriter::register);
        if light && !matches!(registered, Some(Some(_))) {
            eprintln!("bench: membarrier unavailable: no light writer registered");
        }
        for _ in 0..iters {
            for &(f, n) in &runs {
                mm.write(a + (f << PAGE_SHIFT), n << PAGE_SHIFT)
                    .expect("write");
            }
            let t = Watch::start(parallel.is_none());
            let log = mm.scan_and_clear_with(a, len, parallel).expect("harvest");
            total += t.elapsed();
            if !checked {
                assert_eq!(log.dirty_count(), expect, "harvest is exact");
                checked = true;
            }
            drop(black_box(log));
        }
        total
    })
}

/// `AtomicBitmap::get_and_reset` of `len` bytes after setting `runs` before each
/// iteration (the returned vector is dropped outside the timed region).
fn harvest_base(len: u64, runs: Vec<(u64, u64)>) -> Timed {
    let bm = AtomicBitmap::new(len as usize, page_size());
    let full = runs.len() == 1 && runs[0] == (0, len >> PAGE_SHIFT);
    let template = if full {
        let t = AtomicBitmap::new(len as usize, page_size());
        t.mark_dirty(0, len as usize);
        Some(t)
    } else {
        None
    };
    let mut bm = Some(bm);
    Box::new(move |iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let b = match &template {
                // Cloning copies the words: cheaper than setting 262,144 bits one by one.
                Some(t) => t.clone(),
                None => {
                    let b = bm.take().expect("bitmap");
                    for &(f, n) in &runs {
                        b.mark_dirty((f as usize) * PAGE, (n as usize) * PAGE);
                    }
                    b
                }
            };
            let t = Watch::start(true);
            let v = b.get_and_reset();
            total += t.elapsed();
            drop(black_box(v));
            if template.is_none() {
                bm = Some(b);
            }
        }
        total
    })
}

/// `get_dirty_log` of `len` bytes after writing `runs` once (read-only: the state stays),
/// or, as the baseline, the per-page pagemap walk `softdirty_runs` of the same range.
fn getlog(len: u64, runs: Vec<(u64, u64)>, pagemap: bool) -> Timed {
    let (mm, a) = warm_space(len);
    for &(f, n) in &runs {
        mm.write(a + (f << PAGE_SHIFT), n << PAGE_SHIFT)
            .expect("write");
    }
    let expect: u64 = runs.iter().map(|r| r.1).sum();
    assert_eq!(mm.get_dirty_log(a, len).expect("log").dirty_count(), expect);
    Box::new(move |iters| {
        let t = Watch::start(true);
        for _ in 0..iters {
            if pagemap {
                drop(black_box(mm.softdirty_runs(a, len)));
            } else {
                drop(black_box(mm.get_dirty_log(a, len).expect("log")));
            }
        }
        t.elapsed()
    })
}

/// A transactional harvest of 1 GiB with `runs` dirty (issue 17): `commit` writes the
/// runs, then `begin_harvest` + `commit`; otherwise `begin_harvest` + `abort`, which
/// leaves the runs dirty for the next iteration. The baseline (`plain`) is the
/// non-transactional way: write the runs and `scan_and_clear` (commit); `scan_and_clear`,
/// then give the pages back by writing them again (abort).
fn txn(runs: Vec<(u64, u64)>, commit: bool, plain: bool) -> Timed {
    let (mm, a) = warm_space(GIB);
    let write = move |mm: &AddressSpace| {
        for &(f, n) in &runs {
            mm.write(a + (f << PAGE_SHIFT), n << PAGE_SHIFT)
                .expect("write");
        }
    };
    write(&mm);
    Box::new(move |iters| {
        let t = Watch::start(true);
        for _ in 0..iters {
            match (commit, plain) {
                (true, false) => {
                    write(&mm);
                    drop(black_box(
                        mm.begin_harvest(a, GIB).expect("harvest").commit(),
                    ));
                }
                (true, true) => {
                    write(&mm);
                    drop(black_box(mm.scan_and_clear(a, GIB).expect("harvest")));
                }
                (false, false) => mm.begin_harvest(a, GIB).expect("harvest").abort(),
                (false, true) => {
                    drop(black_box(mm.scan_and_clear(a, GIB).expect("harvest")));
                    write(&mm);
                }
            }
        }
        t.elapsed()
    })
}

/// One consumer's committed harvest of 1 GiB with `runs` written each time, with `k`
/// consumers registered (the others never harvest, so every harvest adds its pages to
/// their pending sets); `k == 0`: the plain `scan_and_clear`.
fn consumers(runs: Vec<(u64, u64)>, k: usize) -> Timed {
    let (mm, a) = warm_space(GIB);
    let ids: Vec<_> = (0..k)
        .map(|i| mm.register_consumer(&format!("c{i}")).expect("register"))
        .collect();
    Box::new(move |iters| {
        let t = Watch::start(true);
        for _ in 0..iters {
            for &(f, n) in &runs {
                mm.write(a + (f << PAGE_SHIFT), n << PAGE_SHIFT)
                    .expect("write");
            }
            match ids.first() {
                Some(&c) => drop(black_box(
                    mm.consumer_harvest(c, a, GIB).expect("harvest").commit(),
                )),
                None => drop(black_box(mm.scan_and_clear(a, GIB).expect("harvest"))),
            }
        }
        t.elapsed()
    })
}

/// Marks `pages` (one-page runs) of a `len`-byte bitmap, then harvests it: through a
/// dirty ring (`ring`: one writer, a ring large enough for them) or through the bitmap.
fn ring_harvest(len: u64, pages: Vec<u64>, ring: bool) -> Timed {
    use softdirty::bitmap::PageBitmap;
    use softdirty::ring::DirtyRings;
    let n = len >> PAGE_SHIFT;
    let bits = std::sync::Arc::new(PageBitmap::new(n, false));
    let rings = DirtyRings::new(std::sync::Arc::clone(&bits));
    let w = rings.writer(pages.len() + 1);
    Box::new(move |iters| {
        let t = Watch::start(true);
        for _ in 0..iters {
            if ring {
                for &p in &pages {
                    black_box(w.mark(p, 1).expect("mark"));
                }
                black_box(rings.harvest(|f, c| {
                    black_box((f, c));
                }));
            } else {
                for &p in &pages {
                    black_box(bits.mark_dirty(p, 1));
                }
                bits.harvest(0, n, |r| {
                    black_box(r);
                });
            }
        }
        t.elapsed()
    })
}

/// Every case, in table order. Building them allocates the workloads (a few hundred
/// MiB of tracking memory at most, nothing for untouched address space).
pub fn cases(filter: Option<&str>) -> Vec<Case> {
    makers()
        .into_iter()
        .filter(|(n, _)| filter.is_none_or(|f| n.contains(f)))
        .map(|(_, m)| m())
        .collect()
}

/// The names of every case, in table order (what `--filter` matches against).
pub fn case_names() -> Vec<&'static str> {
    makers().into_iter().map(|(n, _)| n).collect()
}

type Make = Box<dyn Fn() -> Case>;

/// Every case's name and how to build it (building allocates; naming does not).
fn makers() -> Vec<(&'static str, Make)> {
    let g16 = 16 * GIB;
    let p16 = g16 >> PAGE_SHIFT;
    let makers: Vec<(&'static str, Make)> = vec![
        (
            "mark256/redirty",
            Box::new(|| Case {
                name: "mark256/redirty",
                what: "mark 256 pages, first write since the last harvest (AddressSpace::write)",
                ours: mark_ours(256, true),
                baseline: "AtomicBitmap::mark_dirty",
                baseline_side: Ok(mark_base(256, false)),
                target: Some(30.0),
            }),
        ),
        (
            "mark256/redirty-pinned",
            Box::new(|| Case {
                name: "mark256/redirty-pinned",
                what: "mark256/redirty with the caller holding an epoch guard across its writes",
                ours: mark_ours_pinned(256, true, true),
                baseline: "AtomicBitmap::mark_dirty",
                baseline_side: Ok(mark_base(256, false)),
                target: Some(30.0),
            }),
        ),
        (
            "mark256/writer",
            Box::new(|| Case {
                name: "mark256/writer",
                what: "mark256/redirty through a writer handle (AddressSpace::writer)",
                ours: mark_writer(256, true),
                baseline: "AtomicBitmap::mark_dirty",
                baseline_side: Ok(mark_base(256, false)),
                target: Some(40.0),
            }),
        ),
        (
            "mark256/dirty",
            Box::new(|| Case {
                name: "mark256/dirty",
                what: "mark 256 already-dirty pages (AddressSpace::write)",
                ours: mark_ours(256, false),
                baseline: "AtomicBitmap::mark_dirty",
                baseline_side: Ok(mark_base(256, true)),
                target: Some(30.0),
            }),
        ),
        (
            "mark256/core",
            Box::new(|| Case {
                name: "mark256/core",
                what: "mark 256 clean pages, bitmap core only (PageBitmap::write)",
                ours: mark_core(256, true),
                baseline: "AtomicBitmap::mark_dirty",
                baseline_side: Ok(mark_base(256, false)),
                target: Some(40.0),
            }),
        ),
        (
            "mark1/dirty",
            Box::new(|| Case {
                name: "mark1/dirty",
                what: "mark one already-dirty page (AddressSpace::write: pin, VMA lookup, test)",
                ours: mark_ours(1, false),
                baseline: "AtomicBitmap::mark_dirty",
                baseline_side: Ok(mark_base(1, true)),
                target: Some(1.0),
            }),
        ),
        (
            "mark1/writer",
            Box::new(|| Case {
                name: "mark1/writer",
                what: "mark1/dirty through a writer handle (AddressSpace::writer)",
                ours: mark_writer(1, false),
                baseline: "AtomicBitmap::mark_dirty",
                baseline_side: Ok(mark_base(1, true)),
                target: Some(2.0),
            }),
        ),
        (
            "mark1/dirty-pinned",
            Box::new(|| Case {
                name: "mark1/dirty-pinned",
                what: "mark1/dirty with the caller holding an epoch guard across its writes",
                ours: mark_ours_pinned(1, false, true),
                baseline: "AtomicBitmap::mark_dirty",
                baseline_side: Ok(mark_base(1, true)),
                target: Some(1.0),
            }),
        ),
        (
            "mark1/core",
            Box::new(|| Case {
                name: "mark1/core",
                what: "mark one already-dirty page, bitmap core only (PageBitmap::write)",
                ours: mark_core(1, false),
                baseline: "AtomicBitmap::mark_dirty",
                baseline_side: Ok(mark_base(1, true)),
                target: Some(1.0),
            }),
        ),
        (
            "vmm/write_obj_u64",
            Box::new(|| {
                let host = HostMem::new();
                Case {
                name: "vmm/write_obj_u64",
                what:
                    "GuestMemoryMmap::write_obj::<u64>, random addresses of 256 MiB (pages dirty)",
                ours: vmm_case::<softdirty::vmm::SoftDirtyBitmap>(VmmOp::WriteObj, host.clone()),
                baseline: "GuestMemoryMmap<AtomicBitmap>",
                baseline_side: Ok(vmm_case::<AtomicBitmap>(VmmOp::WriteObj, host)),
                target: Some(1.0),
                }
            }),
        ),
        (
            "vmm/write_slice_4k",
            Box::new(|| {
                let host = HostMem::new();
                Case {
                    name: "vmm/write_slice_4k",
                    what: "GuestMemoryMmap::write_slice of 4 KiB, random addresses of 256 MiB",
                    ours: vmm_case::<softdirty::vmm::SoftDirtyBitmap>(
                        VmmOp::WriteSlice,
                        host.clone(),
                    ),
                    baseline: "GuestMemoryMmap<AtomicBitmap>",
                    baseline_side: Ok(vmm_case::<AtomicBitmap>(VmmOp::WriteSlice, host)),
                    target: Some(1.0),
                }
            }),
        ),
        (
            "vmm/mark_range_1m",
            Box::new(|| {
                let host = HostMem::new();
                Case {
                name: "vmm/mark_range_1m",
                what:
                    "Bitmap::mark_dirty over a clean 1 MiB range (256 pages), as vm-memory calls it",
                ours: vmm_case::<softdirty::vmm::SoftDirtyBitmap>(VmmOp::MarkRange, host.clone()),
                baseline: "GuestMemoryMmap<AtomicBitmap>",
                baseline_side: Ok(vmm_case::<AtomicBitmap>(VmmOp::MarkRange, host)),
                target: Some(1.0),
                }
            }),
        ),
        (
            "limit/lock-or",
            Box::new(|| Case {
                name: "limit/lock-or",
                what: "one locked OR on a hot word (the floor of a self-ordering mark here)",
                ours: lock_or(),
                baseline: "AtomicBitmap::mark_dirty",
                baseline_side: Ok(mark_base(1, true)),
                target: None,
            }),
        ),
        (
            "harvest16g/runs64",
            Box::new(move || {
                let runs = random_runs(p16, 0.001, 64, 1);
                Case {
                    name: "harvest16g/runs64",
                    what: "harvest 16 GiB, 0.1% dirty in 64-page runs (scan_and_clear)",
                    ours: harvest_ours(g16, runs.clone(), None),
                    baseline: "AtomicBitmap::get_and_reset",
                    baseline_side: Ok(harvest_base(g16, runs)),
                    target: Some(20.0),
                }
            }),
        ),
        (
            "harvest16g/runs64-light",
            Box::new(move || {
                let runs = random_runs(p16, 0.001, 64, 1);
                Case {
                    name: "harvest16g/runs64-light",
                    what:
                        "harvest16g/runs64 while a light writer (a writer handle) is registered: \
                           the harvest ends with membarrier",
                    ours: harvest_ours_light(g16, runs.clone(), None, true),
                    baseline: "AtomicBitmap::get_and_reset",
                    baseline_side: Ok(harvest_base(g16, runs)),
                    target: None,
                }
            }),
        ),
        (
            "harvest16g/scattered",
            Box::new(move || {
                let runs = random_runs(p16, 0.001, 1, 2);
                Case {
                    name: "harvest16g/scattered",
                    what: "harvest 16 GiB, 0.1% of pages dirty, uniformly scattered",
                    ours: harvest_ours(g16, runs.clone(), None),
                    baseline: "AtomicBitmap::get_and_reset",
                    baseline_side: Ok(harvest_base(g16, runs)),
                    target: None,
                }
            }),
        ),
        (
            "harvest1g/full",
            Box::new(|| {
                let runs = vec![(0, GIB >> PAGE_SHIFT)];
                Case {
                    name: "harvest1g/full",
                    what: "harvest 1 GiB, 100% dirty, with clear",
                    ours: harvest_ours(GIB, runs.clone(), None),
                    baseline: "AtomicBitmap::get_and_reset",
                    baseline_side: Ok(harvest_base(GIB, runs)),
                    target: Some(2.0),
                }
            }),
        ),
        (
            "harvest16g/full/par",
            Box::new(move || {
                let runs = vec![(0, p16)];
                Case {
                    name: "harvest16g/full/par",
                    what: "harvest 16 GiB, 100% dirty: rayon vs our sequential path",
                    ours: harvest_ours(g16, runs.clone(), Some(true)),
                    baseline: "softdirty sequential",
                    baseline_side: Ok(harvest_ours(g16, runs, Some(false))),
                    target: None,
                }
            }),
        ),
        (
            "harvest64g/full/par",
            Box::new(move || {
                let runs = vec![(0, 4 * p16)];
                Case {
                    name: "harvest64g/full/par",
                    what: "harvest 64 GiB, 100% dirty: rayon vs our sequential path",
                    ours: harvest_ours(4 * g16, runs.clone(), Some(true)),
                    baseline: "softdirty sequential",
                    baseline_side: Ok(harvest_ours(4 * g16, runs, Some(false))),
                    target: None,
                }
            }),
        ),
        (
            "harvest16g/runs64/par",
            Box::new(move || {
                let runs = random_runs(p16, 0.001, 64, 1);
                Case {
                    name: "harvest16g/runs64/par",
                    what: "harvest 16 GiB, 0.1% in 64-page runs: rayon vs sequential",
                    ours: harvest_ours(g16, runs.clone(), Some(true)),
                    baseline: "softdirty sequential",
                    baseline_side: Ok(harvest_ours(g16, runs, Some(false))),
                    target: None,
                }
            }),
        ),
        // kernel-oracle.md §2, 1 GiB table, "scan+WP" column: CPU-time medians of run1.
        (
            "kernel1g/1pct-clustered",
            Box::new(|| {
                let p = GIB >> PAGE_SHIFT;
                Case {
                    name: "kernel1g/1pct-clustered",
                    what: "harvest 1 GiB, 1% dirty in one block vs PAGEMAP_SCAN+WP (quoted)",
                    ours: harvest_ours(GIB, vec![(p / 3, p / 100)], None),
                    baseline: "kernel PAGEMAP_SCAN+WP (quoted, kernel-oracle.md)",
                    baseline_side: Err(0.504e6),
                    target: None,
                }
            }),
        ),
        (
            "kernel1g/1pct-strided",
            Box::new(|| {
                let p = GIB >> PAGE_SHIFT;
                Case {
                    name: "kernel1g/1pct-strided",
                    what: "harvest 1 GiB, every 100th page dirty vs PAGEMAP_SCAN+WP (quoted)",
                    ours: harvest_ours(GIB, (0..p).step_by(100).map(|i| (i, 1)).collect(), None),
                    baseline: "kernel PAGEMAP_SCAN+WP (quoted, kernel-oracle.md)",
                    baseline_side: Err(0.656e6),
                    target: None,
                }
            }),
        ),
        (
            "kernel1g/full",
            Box::new(|| Case {
                name: "kernel1g/full",
                what: "harvest 1 GiB, 100% dirty vs PAGEMAP_SCAN+WP (quoted)",
                ours: harvest_ours(GIB, vec![(0, GIB >> PAGE_SHIFT)], None),
                baseline: "kernel PAGEMAP_SCAN+WP (quoted, kernel-oracle.md)",
                baseline_side: Err(9.07e6),
                target: None,
            }),
        ),
        (
            "getlog1g/1pct-clustered",
            Box::new(|| {
                let p = GIB >> PAGE_SHIFT;
                let runs = vec![(p / 3, p / 100)];
                Case {
                    name: "getlog1g/1pct-clustered",
                    what: "get_dirty_log 1 GiB (no clear), 1% dirty in one block",
                    ours: getlog(GIB, runs.clone(), false),
                    baseline: "per-page pagemap walk (softdirty_runs)",
                    baseline_side: Ok(getlog(GIB, runs, true)),
                    target: None,
                }
            }),
        ),
        (
            "getlog1g/1pct-strided",
            Box::new(|| {
                let p = GIB >> PAGE_SHIFT;
                let runs: Vec<(u64, u64)> = (0..p).step_by(100).map(|i| (i, 1)).collect();
                Case {
                    name: "getlog1g/1pct-strided",
                    what: "get_dirty_log 1 GiB (no clear), every 100th page dirty",
                    ours: getlog(GIB, runs.clone(), false),
                    baseline: "per-page pagemap walk (softdirty_runs)",
                    baseline_side: Ok(getlog(GIB, runs, true)),
                    target: None,
                }
            }),
        ),
        (
            "getlog1g/full",
            Box::new(|| {
                let runs = vec![(0, GIB >> PAGE_SHIFT)];
                Case {
                    name: "getlog1g/full",
                    what: "get_dirty_log 1 GiB (no clear), 100% dirty",
                    ours: getlog(GIB, runs.clone(), false),
                    baseline: "per-page pagemap walk (softdirty_runs)",
                    baseline_side: Ok(getlog(GIB, runs, true)),
                    target: None,
                }
            }),
        ),
        (
            "txn1g/commit-1pct",
            Box::new(|| {
                let runs = random_runs(GIB >> PAGE_SHIFT, 0.01, 64, 17);
                Case {
                    name: "txn1g/commit-1pct",
                    what: "begin_harvest + commit of 1 GiB, 1% dirty in 64-page runs (written each time)",
                    ours: txn(runs.clone(), true, false),
                    baseline: "write + scan_and_clear (no transaction)",
                    baseline_side: Ok(txn(runs, true, true)),
                    target: None,
                }
            }),
        ),
        (
            "txn1g/abort-1pct",
            Box::new(|| {
                let runs = random_runs(GIB >> PAGE_SHIFT, 0.01, 64, 17);
                Case {
                    name: "txn1g/abort-1pct",
                    what: "begin_harvest + abort of 1 GiB, 1% dirty in 64-page runs",
                    ours: txn(runs.clone(), false, false),
                    baseline: "scan_and_clear, then the same pages written again",
                    baseline_side: Ok(txn(runs, false, true)),
                    target: None,
                }
            }),
        ),
        (
            "consumers1g/k4-1pct",
            Box::new(|| {
                let runs = random_runs(GIB >> PAGE_SHIFT, 0.01, 64, 17);
                Case {
                    name: "consumers1g/k4-1pct",
                    what: "a consumer's harvest + commit of 1 GiB, 4 consumers registered, 1% dirty in 64-page runs (written each time)",
                    ours: consumers(runs.clone(), 4),
                    baseline: "write + scan_and_clear, no consumer",
                    baseline_side: Ok(consumers(runs, 0)),
                    target: None,
                }
            }),
        ),
        (
            "ring1g/harvest-0.1pct",
            Box::new(|| {
                let pages: Vec<u64> = random_runs(GIB >> PAGE_SHIFT, 0.001, 1, 23)
                    .into_iter()
                    .map(|r| r.0)
                    .collect();
                Case {
                    name: "ring1g/harvest-0.1pct",
                    what: "mark 0.1% of 1 GiB (scattered pages), then harvest through a dirty ring",
                    ours: ring_harvest(GIB, pages.clone(), true),
                    baseline: "the same marks, then the bitmap harvest",
                    baseline_side: Ok(ring_harvest(GIB, pages, false)),
                    target: None,
                }
            }),
        ),
        (
            "ring1g/harvest-1pct",
            Box::new(|| {
                let pages: Vec<u64> = random_runs(GIB >> PAGE_SHIFT, 0.01, 1, 23)
                    .into_iter()
                    .map(|r| r.0)
                    .collect();
                Case {
                    name: "ring1g/harvest-1pct",
                    what: "mark 1% of 1 GiB (scattered pages), then harvest through a dirty ring",
                    ours: ring_harvest(GIB, pages.clone(), true),
                    baseline: "the same marks, then the bitmap harvest",
                    baseline_side: Ok(ring_harvest(GIB, pages, false)),
                    target: None,
                }
            }),
        ),
        (
            "ring1g/harvest-10pct",
            Box::new(|| {
                let pages: Vec<u64> = random_runs(GIB >> PAGE_SHIFT, 0.1, 1, 23)
                    .into_iter()
                    .map(|r| r.0)
                    .collect();
                Case {
                    name: "ring1g/harvest-10pct",
                    what: "mark 10% of 1 GiB (scattered pages), then harvest through a dirty ring",
                    ours: ring_harvest(GIB, pages.clone(), true),
                    baseline: "the same marks, then the bitmap harvest",
                    baseline_side: Ok(ring_harvest(GIB, pages, false)),
                    target: None,
                }
            }),
        ),
        (
            "ring64g/harvest-0.001pct",
            Box::new(|| {
                let pages: Vec<u64> = random_runs((64 * GIB) >> PAGE_SHIFT, 0.00001, 1, 23)
                    .into_iter()
                    .map(|r| r.0)
                    .collect();
                Case {
                    name: "ring64g/harvest-0.001pct",
                    what:
                        "mark 0.001% of 64 GiB (scattered pages), then harvest through a dirty ring",
                    ours: ring_harvest(64 * GIB, pages.clone(), true),
                    baseline: "the same marks, then the bitmap harvest",
                    baseline_side: Ok(ring_harvest(64 * GIB, pages, false)),
                    target: None,
                }
            }),
        ),
        (
            "mprotect/vmas1000",
            Box::new(|| mprotect_case("mprotect/vmas1000", 1000)),
        ),
        (
            "mprotect/vmas10000",
            Box::new(|| mprotect_case("mprotect/vmas10000", 10_000)),
        ),
        (
            "mprotect/vmas60000",
            Box::new(|| mprotect_case("mprotect/vmas60000", 60_000)),
        ),
    ];
    makers
}

/// `mprotect/vmasN`: the split-and-merge pair at N VMAs against the same at 100.
fn mprotect_case(name: &'static str, vmas: u64) -> Case {
    Case {
        name,
        what: "mprotect splitting one page out of a VMA, and back (per op)",
        ours: mprotect_split(vmas),
        baseline: "the same at 100 VMAs",
        baseline_side: Ok(mprotect_split(100)),
        target: Some(0.25),
    }
}

/// A space of about `vmas` VMAs: one mapping of `vmas + 1024` pages whose pages outside a
/// 1,024-page block in the middle alternate between read-write and read-only, each its
/// own VMA. Returns it and the block's address.
fn space_of_vmas(vmas: u64) -> (AddressSpace, u64) {
    let mm = AddressSpace::new(Mode::Precise);
    let block = 1024;
    let half = vmas / 2;
    let len = (vmas + block) * PAGE_SIZE;
    let a = mm
        .mmap(0, len, Prot::RW, Sharing::Private, Placement::Hint)
        .expect("mmap");
    for side in [0, half + block] {
        for p in (side..side + half).step_by(2) {
            mm.mprotect(a + p * PAGE_SIZE, PAGE_SIZE, Prot::R)
                .expect("mprotect");
        }
    }
    let b = a + half * PAGE_SIZE;
    mm.write(b, block * PAGE_SIZE).expect("write");
    mm.clear_refs(4).expect("clear_refs");
    (mm, b)
}

/// One structural operation at `vmas` VMAs: an `mprotect` that splits a page out of the
/// middle of a VMA (two new VMAs), then the one that merges it back; per operation.
fn mprotect_split(vmas: u64) -> Timed {
    let (mm, b) = space_of_vmas(vmas);
    let before = mm.vma_total();
    Box::new(move |iters| {
        let t = Watch::start(true);
        for i in 0..iters.div_ceil(2) {
            let at = b + (1 + i % 1000) * PAGE_SIZE;
            mm.mprotect(black_box(at), PAGE_SIZE, Prot::R)
                .expect("split");
            mm.mprotect(black_box(at), PAGE_SIZE, Prot::RW)
                .expect("merge");
        }
        let d = t.elapsed();
        debug_assert_eq!(mm.vma_total(), before);
        d
    })
}

/// Runs `f` for about `budget` per sample: returns the per-iteration time of one
/// sample, in ns.
fn sample(f: &mut Timed, iters: u64) -> f64 {
    f(iters).as_nanos() as f64 / iters as f64
}

/// Iterations that make one sample last about `target`.
fn calibrate(f: &mut Timed, target: Duration) -> u64 {
    let mut iters = 1u64;
    loop {
        let t = f(iters);
        if t >= target / 8 || iters >= 1 << 30 {
            let per = t.as_nanos().max(1) as f64 / iters as f64;
            return ((target.as_nanos() as f64 / per) as u64).max(1);
        }
        iters *= 4;
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Measures one case: samples of ours and the baseline alternate, so that load from
/// other processes hits both alike. Medians of per-operation times.
pub fn measure(case: &mut Case, quick: bool) -> Row {
    let (samples, target) = if quick {
        (7, Duration::from_millis(20))
    } else {
        (21, Duration::from_millis(60))
    };
    let ni = calibrate(&mut case.ours, target);
    let mut ours = Vec::with_capacity(samples);
    let mut base = Vec::with_capacity(samples);
    match &mut case.baseline_side {
        Ok(b) => {
            let nb = calibrate(b, target);
            for _ in 0..samples {
                ours.push(sample(&mut case.ours, ni));
                base.push(sample(b, nb));
            }
        }
        Err(ns) => {
            for _ in 0..samples {
                ours.push(sample(&mut case.ours, ni));
            }
            base.push(*ns);
        }
    }
    let o = median(&mut ours);
    let b = median(&mut base);
    Row {
        name: case.name.to_string(),
        ours_ns: o,
        baseline: case.baseline.to_string(),
        baseline_ns: b,
        ratio: b / o,
    }
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

/// Runs `softdirty bench` with `args`.
pub fn main(args: &BenchArgs) -> ExitCode {
    if let Some(f) = &args.filter {
        let names = case_names();
        if !names.iter().any(|n| n.contains(f.as_str())) {
            eprintln!(
                "softdirty bench: no benchmark matches --filter `{f}`; the benchmarks are: {}",
                names.join(", ")
            );
            return ExitCode::from(2);
        }
    }
    let mut rows = Vec::new();
    let mut lines = Vec::new();
    for mut case in cases(args.filter.as_deref()) {
        if !args.json {
            eprintln!("measuring {} ...", case.name);
        }
        let row = measure(&mut case, args.quick);
        let verdict = match case.target {
            Some(t) if row.ratio >= t => format!("≥{t}×: met"),
            Some(t) => format!("≥{t}×: MISSED"),
            None => String::new(),
        };
        lines.push(format!(
            "| {} | {} | {} | {} | {} | {:.1}× | {} |",
            row.name,
            case.what,
            fmt_ns(row.ours_ns),
            row.baseline,
            fmt_ns(row.baseline_ns),
            row.ratio,
            verdict
        ));
        rows.push(row);
    }
    if args.json {
        match serde_json::to_string_pretty(&rows) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        println!("| case | what | ours (median) | baseline | baseline (median) | ratio | target |");
        println!("|---|---|---|---|---|---|---|");
        for l in lines {
            println!("{l}");
        }
        println!();
        println!("ratio = baseline / ours (above 1: softdirty is faster). Kernel rows quote");
        println!(
            "kernel-oracle.md §2 (CPU-time medians, 1 GiB, scan+WP); they are not measured here."
        );
    }
    ExitCode::SUCCESS
}
