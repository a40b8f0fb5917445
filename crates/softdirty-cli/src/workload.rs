//! Workloads for `softdirty run`: the simulated guest's layout, the vCPU access patterns,
//! the allocator-like churn of the VMA layout, and `trace:FILE` layouts.
//!
//! Everything here is deterministic for a seed: the layout is a pure function of the
//! memory size and vCPU count, and every generator draws from its own [`SmallRng`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use softdirty::errno::Errno;
use softdirty::linux::PAGE_SIZE;
use softdirty::mm::{AddressSpace, Placement};
use softdirty::prot::Prot;

/// The page size, in bytes.
pub const PAGE: u64 = PAGE_SIZE;

/// What the vCPU writers (and the churn thread) do.
#[derive(Clone, Debug, PartialEq)]
pub enum Workload {
    /// Every write hits a uniformly random page.
    Uniform,
    /// Writes follow a Zipf distribution over the pages (a hot set), each vCPU with its
    /// own hot set.
    Zipf,
    /// Each vCPU sweeps its own slice of memory page by page, as KVM's
    /// `dirty_log_perf_test` does.
    Sequential,
    /// Zipf writes with twenty times the VMA churn.
    Churn,
    /// The layout is a trace file's mappings; writers follow the Zipf pattern over them.
    Trace(PathBuf),
}

impl FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uniform" => Ok(Workload::Uniform),
            "zipf" => Ok(Workload::Zipf),
            "sequential" => Ok(Workload::Sequential),
            "churn" => Ok(Workload::Churn),
            _ => match s.strip_prefix("trace:") {
                Some(f) if !f.is_empty() => Ok(Workload::Trace(PathBuf::from(f))),
                _ => Err(format!(
                    "unknown workload `{s}` (expected uniform, zipf, sequential, churn or trace:FILE)"
                )),
            },
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Uniform => f.write_str("uniform"),
            Workload::Zipf => f.write_str("zipf"),
            Workload::Sequential => f.write_str("sequential"),
            Workload::Churn => f.write_str("churn"),
            Workload::Trace(p) => write!(f, "trace:{}", p.display()),
        }
    }
}

// ===================================================================== operations

use softdirty::backend::Op;

// ======================================================================= page sets

/// A set of page ranges, indexable by page number (0 .. [`PageRanges::len`]).
#[derive(Clone, Debug, Default)]
pub struct PageRanges {
    /// `(start address, pages)`, sorted by address.
    ranges: Vec<(u64, u64)>,
    /// pages before each range
    cum: Vec<u64>,
    total: u64,
}

impl PageRanges {
    /// The set of `ranges` (`(start, pages)`; sorted here).
    pub fn new(mut ranges: Vec<(u64, u64)>) -> PageRanges {
        ranges.retain(|r| r.1 > 0);
        ranges.sort_unstable();
        let mut cum = Vec::with_capacity(ranges.len());
        let mut total = 0;
        for r in &ranges {
            cum.push(total);
            total += r.1;
        }
        PageRanges { ranges, cum, total }
    }

    /// Number of pages.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// No pages at all?
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The address of page `i` (`i < len()`).
    pub fn addr(&self, i: u64) -> u64 {
        let k = self.cum.partition_point(|&c| c <= i) - 1;
        self.ranges[k].0 + (i - self.cum[k]) * PAGE
    }

    /// The indices of the pages of `[start, end)` in the set, as index ranges.
    pub fn indices(&self, start: u64, end: u64) -> Vec<std::ops::Range<u64>> {
        let k0 = self.ranges.partition_point(|r| r.0 + r.1 * PAGE <= start);
        let mut out = Vec::new();
        for (k, &(s, n)) in self.ranges.iter().enumerate().skip(k0) {
            if s >= end {
                break;
            }
            let (a, b) = (s.max(start), (s + n * PAGE).min(end));
            if a < b {
                let first = self.cum[k] + (a - s) / PAGE;
                out.push(first..first + (b - a).div_ceil(PAGE));
            }
        }
        out
    }

    /// The ranges, as `(start, end)` addresses, sorted.
    pub fn spans(&self) -> Vec<(u64, u64)> {
        self.ranges
            .iter()
            .map(|&(s, n)| (s, s + n * PAGE))
            .collect()
    }
}

// ========================================================================= layout

/// One mapping of the guest layout, for reports.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Mapping {
    /// what it models
    pub name: String,
    /// first address
    pub start: u64,
    /// size in pages
    pub pages: u64,
    /// protection, as `/proc/PID/maps` prints it
    pub prot: String,
}

/// The range the churn thread allocates in (the malloc arenas).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Zone {
    /// first address
    pub start: u64,
    /// bytes
    pub len: u64,
}

/// An allocation the churn thread owns (one `mmap` of a large malloc, maybe grown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// first address
    pub start: u64,
    /// size in pages
    pub pages: u64,
    /// the first page is a PROT_NONE guard page
    pub guard: bool,
}

impl Allocation {
    fn end(&self) -> u64 {
        self.start + self.pages * PAGE
    }
    /// The writable pages, `(start, pages)`.
    pub fn writable(&self) -> (u64, u64) {
        if self.guard {
            (self.start + PAGE, self.pages - 1)
        } else {
            (self.start, self.pages)
        }
    }
}

/// The simulated guest: what to map before the run, and what the writers target.
#[derive(Clone, Debug, Default)]
pub struct GuestLayout {
    /// The mappings that the churn thread never touches, for reports.
    pub mappings: Vec<Mapping>,
    /// The operations that build the layout (fixed mappings, guards, initial chunks).
    pub setup: Vec<Op>,
    /// The writable pages of the fixed mappings: what the access patterns index.
    pub writable: PageRanges,
    /// Ranges to populate (write) before logging starts: the guest has been running.
    pub prefault: Vec<(u64, u64)>,
    /// The churn thread's zone (len 0: no churn).
    pub zone: Zone,
    /// The chunks mapped in the zone at the start.
    pub chunks: Vec<Allocation>,
    /// Largest chunk the churn thread allocates, in pages.
    pub max_chunk: u64,
    /// Pages the churn thread keeps mapped, on average.
    pub zone_target: u64,
}

/// Where the program text starts (a PIE's usual base).
const TEXT_BASE: u64 = 0x5555_5555_4000;
/// The guest RAM region.
const RAM_BASE: u64 = 0x7e00_0000_0000;
/// The churn zone (malloc arenas).
const ZONE_BASE: u64 = 0x7d00_0000_0000;
/// Thread stacks.
const STACK_BASE: u64 = 0x7ff0_0000_0000;

/// The largest guest [`guest_layout`] can build: its RAM region runs from 0x7e00_0000_0000
/// to the thread stacks at 0x7ff0_0000_0000 (1984 GiB), below the 128 TiB user address
/// space of x86-64 with 4-level paging that the model simulates.
pub const MAX_GUEST_MEM: u64 = STACK_BASE - RAM_BASE;

/// The default guest for `mem` bytes and `vcpus` vCPU threads: a program (text, rodata,
/// data+bss), a brk heap, a big guest-RAM region, one 8 MiB stack with a guard page per
/// thread, and malloc arenas (the churn zone) made of adjacent large allocations. The
/// sizes scale with `mem` and sum to it (page-rounded); below 16 MiB everything is RAM.
/// The stacks shrink so that all of them take at most a quarter of the guest (many vCPUs
/// in a small guest). `mem` is at most [`MAX_GUEST_MEM`]. `seed` places the initial chunks.
pub fn guest_layout(mem: u64, vcpus: usize, seed: u64) -> GuestLayout {
    let pages = mem / PAGE;
    let small = pages < 4096;
    let part = |div: u64, cap: u64| if small { 0 } else { (pages / div).min(cap) };
    let text = part(512, 2048);
    let rodata = part(2048, 512);
    let data = part(2048, 256);
    let heap = part(64, 16384);
    let threads = vcpus as u64 + 2; // vCPUs, an I/O thread, the main thread
    let stack = part(512, 2048).min(pages / 4 / threads);
    let arenas = part(32, 32768);
    let fixed = text + rodata + data + heap + threads * stack + arenas;
    let ram = pages - fixed;
    let mut l = GuestLayout::default();
    let mut writable = Vec::new();
    let add = |l: &mut GuestLayout, name: &str, start: u64, n: u64, prot: Prot| {
        if n == 0 {
            return;
        }
        l.setup.push(Op::Mmap {
            addr: start,
            len: n * PAGE,
            prot,
            shared: false,
            placement: Placement::NoReplace,
            opts: softdirty::mm::MapOpts::default(),
        });
        l.mappings.push(Mapping {
            name: name.to_string(),
            start,
            pages: n,
            prot: prot.to_string(),
        });
    };
    let mut a = TEXT_BASE;
    add(&mut l, "text", a, text, Prot::RX);
    a += text * PAGE;
    add(&mut l, "rodata", a, rodata, Prot::R);
    a += rodata * PAGE;
    add(&mut l, "data+bss", a, data, Prot::RW);
    writable.push((a, data));
    a += data * PAGE + (16 << 20);
    add(&mut l, "heap (brk)", a, heap, Prot::RW);
    writable.push((a, heap));
    add(&mut l, "guest RAM", RAM_BASE, ram, Prot::RW);
    writable.push((RAM_BASE, ram));
    // The guest has been running: half its RAM is populated.
    l.prefault.push((RAM_BASE, ram.div_ceil(2)));
    if stack > 0 {
        for t in 0..threads {
            let s = STACK_BASE + t * (stack + 16) * PAGE;
            add(&mut l, "thread stack", s, stack, Prot::RW);
            if stack >= 2 {
                l.setup.push(Op::Mprotect {
                    addr: s,
                    len: PAGE,
                    prot: Prot::NONE,
                });
                writable.push((s + PAGE, stack - 1));
            } else {
                writable.push((s, stack));
            }
        }
    }
    if arenas > 0 {
        let max_chunk = (arenas / 16).clamp(1, 512);
        l.max_chunk = max_chunk;
        l.zone_target = arenas;
        l.zone = Zone {
            start: ZONE_BASE,
            len: arenas * 4 * PAGE,
        };
        // Initial chunks from a quarter into the zone, mostly adjacent (they merge).
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed_c4a2);
        let mut at = ZONE_BASE + arenas * PAGE;
        let mut left = arenas;
        while left > 0 {
            let n = rng.gen_range(1..=max_chunk).min(left);
            l.chunks.push(Allocation {
                start: at,
                pages: n,
                guard: false,
            });
            l.setup.push(Op::Mmap {
                addr: at,
                len: n * PAGE,
                prot: Prot::RW,
                shared: false,
                placement: Placement::NoReplace,
                opts: softdirty::mm::MapOpts::default(),
            });
            at += n * PAGE;
            if rng.gen_ratio(1, 4) {
                at += rng.gen_range(1..=max_chunk) * PAGE;
            }
            left -= n;
        }
    }
    l.writable = PageRanges::new(writable);
    l
}

/// The layout of a trace file: its structural commands (mmap, munmap, mprotect, mremap,
/// madvise) in the `main` space, resolved to concrete addresses by replaying them once;
/// writes, reads, scans and expectations are ignored. Writers target the writable pages
/// left mapped; the churn zone is placed where the trace has nothing, or omitted.
pub fn trace_layout(path: &std::path::Path, seed: u64) -> Result<GuestLayout, String> {
    use softdirty::backend::Command;
    use softdirty_trace::lower::{bind, lower, Action, Bindings};
    let name = path.display().to_string();
    let scratch = AddressSpace::new(softdirty::mode::Mode::Precise);
    let mut names = Bindings::new();
    let mut current_main = true;
    let mut setup = Vec::new();
    // Streamed: the file is read line by line, never held; a malformed line (an invalid
    // byte, an over-long line) fails at once, and nothing here has effects outside.
    let reader = softdirty_trace::parse::read_file(path).map_err(|e| e.in_file(&name))?;
    for c in reader {
        let c = c.map_err(|e| e.in_file(&name))?;
        // A command whose address cannot be resolved (its `$name`'s mmap failed) is
        // skipped, as its replay would be.
        let Ok(action) = lower(&c.node, &names) else {
            continue;
        };
        let (op, b) = match action {
            Action::Perform {
                cmd: Command::Space(n),
                ..
            } => {
                current_main = n == "main";
                continue;
            }
            Action::Perform {
                cmd: Command::Op(op),
                bind,
            } if current_main => (op, bind),
            _ => continue,
        };
        let got = op.apply(&scratch);
        if let Ok(a) = got {
            bind(&mut names, b, a);
        }
        let recorded = match (op, got) {
            // The model's choice is deterministic; record it as an exact address.
            (
                Op::Mmap {
                    len,
                    prot,
                    shared,
                    opts,
                    ..
                },
                Ok(a),
            ) => Op::Mmap {
                addr: a,
                len,
                prot,
                shared,
                placement: Placement::Fixed,
                opts,
            },
            // Record where it went, so every replay moves it to the same place.
            (
                Op::Mremap {
                    addr,
                    old_len,
                    new_len,
                    maymove,
                    fixed,
                },
                Ok(a),
            ) => {
                let moved = a != addr;
                Op::Mremap {
                    addr,
                    old_len,
                    new_len,
                    maymove: maymove || moved,
                    fixed: if moved { Some(a) } else { fixed },
                }
            }
            (Op::Mmap { .. } | Op::Mremap { .. }, Err(_)) => continue,
            // mprotect and madvise over a hole leave a partial effect, as in Linux.
            (Op::Mprotect { .. } | Op::DontNeed { .. } | Op::Madvise { .. }, _) => op,
            (Op::Munmap { .. }, Ok(_)) => op,
            (Op::Munmap { .. }, Err(_)) => continue,
        };
        setup.push(recorded);
    }
    let vmas = scratch.vmas();
    let mut l = GuestLayout {
        setup,
        ..GuestLayout::default()
    };
    let mut writable = Vec::new();
    for v in &vmas {
        let pages = (v.end - v.start) / PAGE;
        l.mappings.push(Mapping {
            name: if v.shared { "trace (shared)" } else { "trace" }.to_string(),
            start: v.start,
            pages,
            prot: v.prot.clone(),
        });
        if v.prot.contains('w') {
            writable.push((v.start, pages));
        }
    }
    l.writable = PageRanges::new(writable);
    if l.writable.is_empty() {
        return Err(format!(
            "{name}: the trace leaves no writable mapping to write to"
        ));
    }
    let arenas = (l.writable.len() / 32).min(32768);
    let zone_len = arenas * 4 * PAGE;
    if arenas >= 16
        && !vmas
            .iter()
            .any(|v| v.start < ZONE_BASE + zone_len && ZONE_BASE < v.end)
    {
        let g = guest_layout(arenas * 32 * PAGE, 1, seed);
        l.zone = Zone {
            start: ZONE_BASE,
            len: zone_len,
        };
        l.max_chunk = g.max_chunk;
        l.zone_target = g.zone_target;
        l.chunks = g.chunks.clone();
        l.setup
            .extend(g.setup.iter().filter(|op| matches!(op, Op::Mmap { addr, .. } if *addr >= ZONE_BASE && *addr < ZONE_BASE + zone_len)));
    }
    Ok(l)
}

// ================================================================ access patterns

/// A Zipf distribution over `1..=n` with exponent `s > 0`: Hörmann and Derflinger's
/// rejection-inversion method (as in `rand_distr`), O(1) per sample.
#[derive(Clone, Copy, Debug)]
pub struct Zipf {
    n: f64,
    s: f64,
    t: f64,
}

impl Zipf {
    /// Ranks `1..=n`, exponent `s` (> 0).
    pub fn new(n: u64, s: f64) -> Zipf {
        let n = n.max(1) as f64;
        let t = if s != 1.0 {
            (n.powf(1.0 - s) - s) / (1.0 - s)
        } else {
            1.0 + n.ln()
        };
        Zipf { n, s, t }
    }

    fn inv_cdf(&self, p: f64) -> f64 {
        let pt = p * self.t;
        if pt <= 1.0 {
            pt
        } else if self.s != 1.0 {
            (pt * (1.0 - self.s) + self.s).powf(1.0 / (1.0 - self.s))
        } else {
            (pt - 1.0).exp()
        }
    }

    /// A rank in `1..=n`; rank 1 is the most frequent.
    pub fn sample(&self, rng: &mut SmallRng) -> u64 {
        loop {
            let inv_b = self.inv_cdf(rng.gen::<f64>());
            let x = (inv_b + 1.0).floor();
            let mut ratio = x.powf(-self.s);
            if x > 1.0 {
                ratio *= inv_b.powf(self.s);
            }
            if rng.gen::<f64>() < ratio && x <= self.n {
                return x as u64;
            }
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One vCPU's stream of page indices (into a [`PageRanges`] of `n` pages).
#[derive(Clone, Debug)]
pub struct Picker {
    kind: Kind,
    n: u64,
    rng: SmallRng,
}

#[derive(Clone, Debug)]
enum Kind {
    Uniform,
    Zipf { z: Zipf, mult: u64, offset: u64 },
    Sequential { lo: u64, len: u64, pos: u64 },
}

impl Picker {
    /// vCPU `v` of `vcpus` over `n` pages, following `w`, seeded from `seed`.
    pub fn new(w: &Workload, n: u64, v: usize, vcpus: usize, s: f64, seed: u64) -> Picker {
        let n = n.max(1);
        let rng =
            SmallRng::seed_from_u64(seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(v as u64 + 1)));
        let kind = match w {
            Workload::Uniform => Kind::Uniform,
            Workload::Sequential => {
                let lo = n * v as u64 / vcpus as u64;
                let hi = n * (v as u64 + 1) / vcpus as u64;
                Kind::Sequential {
                    lo,
                    len: (hi - lo).max(1),
                    pos: 0,
                }
            }
            Workload::Zipf | Workload::Churn | Workload::Trace(_) => {
                // Ranks are scattered over the pages by a multiplier coprime with n, and
                // each vCPU's hot set starts at its own slice.
                let mut mult = ((n as f64) * 0.618_033_988_7) as u64 | 1;
                while gcd(mult, n) != 1 {
                    mult += 1;
                }
                Kind::Zipf {
                    z: Zipf::new(n, s),
                    mult: mult % n.max(2),
                    offset: n * v as u64 / vcpus as u64,
                }
            }
        };
        Picker { kind, n, rng }
    }

    /// The next page index.
    pub fn next_page(&mut self) -> u64 {
        match &mut self.kind {
            Kind::Uniform => self.rng.gen_range(0..self.n),
            Kind::Zipf { z, mult, offset } => {
                let r = z.sample(&mut self.rng) - 1;
                ((r as u128 * *mult as u128 + *offset as u128) % self.n as u128) as u64
            }
            Kind::Sequential { lo, len, pos } => {
                let p = *lo + *pos;
                *pos = (*pos + 1) % *len;
                p
            }
        }
    }

    /// The picker's own generator (for the writer's other choices).
    pub fn rng(&mut self) -> &mut SmallRng {
        &mut self.rng
    }
}

// ========================================================================== churn

/// What one churn step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChurnStep {
    /// mmap of a new chunk (next to an existing one when possible)
    Alloc,
    /// munmap of a chunk or of its tail
    Free,
    /// mprotect of a guard page (on or off)
    Guard,
    /// mremap growth, in place or moved
    Remap,
}

/// The churn thread's allocator model: chunks in a zone, allocated next to each other
/// (so their VMAs merge, the legacy false-positive case), freed, guarded, grown.
#[derive(Clone, Debug)]
pub struct Churn {
    zone: Zone,
    chunks: Vec<Allocation>,
    max_chunk: u64,
    target: u64,
    rng: SmallRng,
}

impl Churn {
    /// The churn of `layout`, seeded from `seed`; `None` if the layout has no zone.
    pub fn new(layout: &GuestLayout, seed: u64) -> Option<Churn> {
        (layout.zone.len > 0).then(|| Churn {
            zone: layout.zone,
            chunks: layout.chunks.clone(),
            max_chunk: layout.max_chunk.max(1),
            target: layout.zone_target.max(1),
            rng: SmallRng::seed_from_u64(seed ^ 0xc4u64.wrapping_mul(0x1000_0000_01b3)),
        })
    }

    /// The writable page ranges of the current chunks.
    pub fn writable(&self) -> Vec<(u64, u64)> {
        self.chunks
            .iter()
            .map(|c| c.writable())
            .filter(|w| w.1 > 0)
            .collect()
    }

    fn free_at(&self, start: u64, pages: u64, ignore: Option<usize>) -> bool {
        let end = start + pages * PAGE;
        start >= self.zone.start
            && end <= self.zone.start + self.zone.len
            && !self
                .chunks
                .iter()
                .enumerate()
                .any(|(i, c)| Some(i) != ignore && c.start < end && start < c.end())
    }

    /// A free range of `pages` in the zone, scanning from a random chunk boundary.
    fn find_gap(&mut self, pages: u64) -> Option<u64> {
        let mut cands: Vec<u64> = self.chunks.iter().map(|c| c.end()).collect();
        cands.push(self.zone.start);
        let k = self.rng.gen_range(0..cands.len());
        cands.rotate_left(k);
        cands.into_iter().find(|&a| self.free_at(a, pages, None))
    }

    fn insert(&mut self, c: Allocation) {
        let i = self.chunks.partition_point(|x| x.start < c.start);
        self.chunks.insert(i, c);
    }

    /// Plans and performs one step through `apply` (which runs an [`Op`] on every address
    /// space of the run and returns the first one's result). Returns the action and
    /// whether it succeeded; on failure the bookkeeping is unchanged.
    pub fn step(&mut self, apply: &mut dyn FnMut(&Op) -> Result<u64, Errno>) -> (ChurnStep, bool) {
        let mapped: u64 = self.chunks.iter().map(|c| c.pages).sum();
        let r = self.rng.gen_range(0..100);
        let action = if self.chunks.is_empty() || mapped < self.target * 3 / 4 {
            ChurnStep::Alloc
        } else if mapped > self.target * 5 / 4 {
            ChurnStep::Free
        } else if r < 35 {
            ChurnStep::Alloc
        } else if r < 65 {
            ChurnStep::Free
        } else if r < 85 {
            ChurnStep::Guard
        } else {
            ChurnStep::Remap
        };
        let ok = match action {
            ChurnStep::Alloc => self.alloc(apply),
            ChurnStep::Free => self.free(apply),
            ChurnStep::Guard => self.guard(apply),
            ChurnStep::Remap => self.remap(apply),
        };
        (action, ok)
    }

    fn alloc(&mut self, apply: &mut dyn FnMut(&Op) -> Result<u64, Errno>) -> bool {
        let pages = self.rng.gen_range(1..=self.max_chunk);
        // Next to an existing chunk (after it, else before it), as a top-down or
        // bottom-up allocator places consecutive mappings; else any gap.
        let mut at = None;
        if !self.chunks.is_empty() {
            let c = self.chunks[self.rng.gen_range(0..self.chunks.len())];
            if self.free_at(c.end(), pages, None) {
                at = Some(c.end());
            } else if c.start >= pages * PAGE && self.free_at(c.start - pages * PAGE, pages, None) {
                at = Some(c.start - pages * PAGE);
            }
        }
        let Some(addr) = at.or_else(|| self.find_gap(pages)) else {
            return false;
        };
        let op = Op::Mmap {
            addr,
            len: pages * PAGE,
            prot: Prot::RW,
            shared: false,
            placement: Placement::NoReplace,
            opts: softdirty::mm::MapOpts::default(),
        };
        if apply(&op).is_err() {
            return false;
        }
        self.insert(Allocation {
            start: addr,
            pages,
            guard: false,
        });
        true
    }

    fn free(&mut self, apply: &mut dyn FnMut(&Op) -> Result<u64, Errno>) -> bool {
        if self.chunks.is_empty() {
            return false;
        }
        let i = self.rng.gen_range(0..self.chunks.len());
        let c = self.chunks[i];
        if c.pages >= 4 && self.rng.gen_ratio(1, 4) {
            // free() of part of it: the tail half goes.
            let keep = c.pages / 2;
            let op = Op::Munmap {
                addr: c.start + keep * PAGE,
                len: (c.pages - keep) * PAGE,
            };
            if apply(&op).is_err() {
                return false;
            }
            self.chunks[i].pages = keep;
            return true;
        }
        let op = Op::Munmap {
            addr: c.start,
            len: c.pages * PAGE,
        };
        if apply(&op).is_err() {
            return false;
        }
        self.chunks.remove(i);
        true
    }

    fn guard(&mut self, apply: &mut dyn FnMut(&Op) -> Result<u64, Errno>) -> bool {
        let cands: Vec<usize> = (0..self.chunks.len())
            .filter(|&i| self.chunks[i].pages >= 2)
            .collect();
        if cands.is_empty() {
            return false;
        }
        let i = cands[self.rng.gen_range(0..cands.len())];
        let c = self.chunks[i];
        let op = Op::Mprotect {
            addr: c.start,
            len: PAGE,
            prot: if c.guard { Prot::RW } else { Prot::NONE },
        };
        if apply(&op).is_err() {
            return false;
        }
        self.chunks[i].guard = !c.guard;
        true
    }

    fn remap(&mut self, apply: &mut dyn FnMut(&Op) -> Result<u64, Errno>) -> bool {
        let cands: Vec<usize> = (0..self.chunks.len())
            .filter(|&i| !self.chunks[i].guard)
            .collect();
        if cands.is_empty() {
            return false;
        }
        let i = cands[self.rng.gen_range(0..cands.len())];
        let c = self.chunks[i];
        let grow = self.rng.gen_range(c.pages.div_ceil(4)..=c.pages).max(1);
        let new_pages = (c.pages + grow).min(self.max_chunk * 2).max(c.pages + 1);
        let (fixed, dest) = if self.free_at(c.end(), new_pages - c.pages, Some(i)) {
            (None, c.start)
        } else {
            match self.find_gap(new_pages) {
                Some(g) => (Some(g), g),
                None => return false,
            }
        };
        let op = Op::Mremap {
            addr: c.start,
            old_len: c.pages * PAGE,
            new_len: new_pages * PAGE,
            maymove: true,
            fixed,
        };
        match apply(&op) {
            Ok(got) if got == dest => {
                self.chunks.remove(i);
                self.insert(Allocation {
                    start: dest,
                    pages: new_pages,
                    guard: false,
                });
                true
            }
            Ok(got) => {
                // Moved somewhere else (cannot happen with the checks above): keep the
                // bookkeeping true and give the range back.
                self.chunks.remove(i);
                let _ = apply(&Op::Munmap {
                    addr: got,
                    len: new_pages * PAGE,
                });
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_ranks_follow_the_power_law() {
        let z = Zipf::new(1000, 1.0);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut c = [0u32; 3];
        for _ in 0..200_000 {
            let r = z.sample(&mut rng);
            assert!((1..=1000).contains(&r));
            if r <= 3 {
                c[r as usize - 1] += 1;
            }
        }
        let r12 = c[0] as f64 / c[1] as f64;
        let r13 = c[0] as f64 / c[2] as f64;
        assert!((1.8..2.2).contains(&r12), "{r12}");
        assert!((2.7..3.3).contains(&r13), "{r13}");
    }

    #[test]
    fn default_layout_sums_to_mem() {
        for (mem, v) in [
            (4u64 << 30, 2usize),
            (64 << 20, 4),
            (8 * PAGE, 2),
            (PAGE, 1),
            (4 << 30, 512),
            (16 << 20, 1024),
            (MAX_GUEST_MEM, 2),
        ] {
            let l = guest_layout(mem, v, 1);
            let total: u64 = l.mappings.iter().map(|m| m.pages).sum::<u64>()
                + l.chunks.iter().map(|c| c.pages).sum::<u64>();
            assert_eq!(total, mem / PAGE, "mem {mem}");
            let mm = AddressSpace::new(softdirty::mode::Mode::Legacy);
            for op in &l.setup {
                op.apply(&mm).unwrap();
            }
        }
    }
}
