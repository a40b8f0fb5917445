//! `softdirty run`: a multithreaded live-migration pre-copy simulator (the main job).
//!
//! A simulated guest ([`crate::workload::guest_layout`]) is mapped into an
//! [`AddressSpace`]; `--vcpus` writer threads dirty it with the chosen access pattern, a
//! churn thread changes its VMA layout the way allocators do, and this thread migrates it:
//! a bulk copy of everything mapped, then pre-copy rounds (harvest the soft-dirty pages
//! with a get-and-clear scan, "send" them over a link of `--bandwidth`, repeat) until the
//! dirty set is small enough to stop the guest (`--downtime-ms` worth of link time) or
//! `--rounds` is reached; then the vCPUs stop and the stop-and-copy set is sent.
//!
//! ## Time
//! The link is simulated, the writers are real: each vCPU is worth `--dirty-rate` writes
//! per simulated second, so sending `n` pages lets the writers perform
//! `n * 4096 / bandwidth * dirty_rate * vcpus` writes (flat out, in real time) before
//! the next harvest. The churn thread is paced on the same clock (`--churn-rate`
//! operations per simulated second). `--duration` bounds the real time of the rounds.
//!
//! ## Modes and false positives
//! `precise` harvests with the lock-free get-and-clear scan while the writers keep
//! running. `legacy` has no way to clear `VM_SOFTDIRTY` but `clear_refs 4`, which would
//! lose writes racing it, so its harvest freezes the vCPUs and the churn thread (a
//! consistent cut), scans-and-clears, and writes `clear_refs 4`. The legacy run also
//! drives a shadow precise address space with the very same operations and harvests it at
//! the same cuts: the pages legacy reports that the shadow does not are its false
//! positives, measured page by page (and the reverse, its false negatives).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use rand::Rng;

use crate::workload::{self, Churn, GuestLayout, Picker, Workload, PAGE};
use softdirty::mm::AddressSpace;
use softdirty::mode::Mode;

/// Which modes `softdirty run` simulates.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeSel {
    /// precise tracking only
    Precise,
    /// legacy (Linux ≤ 6.18.36) tracking only, with measured false positives
    Legacy,
    /// both, on the same seeded workload
    Both,
}

/// Options of `softdirty run`. The defaults are the default scenario.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Sizes take K, M, G, T suffixes (binary) or p (pages). \
Tables go to stdout, the progress bar to stderr (only on a terminal). \
`--json -` prints the report as JSON on stdout instead of the tables.")]
pub struct RunArgs {
    /// Guest memory: the size of the simulated address space's mappings.
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    pub mem: u64,
    /// vCPU writer threads.
    #[arg(long, default_value_t = 2)]
    pub vcpus: usize,
    /// Access pattern: uniform, zipf, sequential, churn or trace:FILE (a trace's
    /// mappings as the layout).
    #[arg(long, default_value = "zipf", value_parser = parse_workload)]
    pub workload: Workload,
    /// Maximum pre-copy rounds after the bulk copy.
    #[arg(long, default_value_t = 20)]
    pub rounds: u32,
    /// Link bandwidth, bytes per simulated second.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub bandwidth: u64,
    /// Seed of every generator (layout, writers, churn).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Tracking mode(s) to simulate.
    #[arg(long, value_enum, default_value_t = ModeSel::Both)]
    pub mode: ModeSel,
    /// Real-time budget of each mode's rounds, in seconds: when it runs out the guest is
    /// stopped at the next harvest.
    #[arg(long, default_value_t = 12.0)]
    pub duration: f64,
    /// Writes per simulated second per vCPU (one page each).
    #[arg(long, default_value_t = 200_000)]
    pub dirty_rate: u64,
    /// Stop the guest when the dirty set can be sent in this many milliseconds.
    #[arg(long, default_value_t = 100)]
    pub downtime_ms: u64,
    /// Zipf exponent of the zipf, churn and trace workloads.
    #[arg(long, default_value_t = 1.0)]
    pub zipf_s: f64,
    /// Layout changes per simulated second (default 200; 4000 with `--workload churn`).
    #[arg(long)]
    pub churn_rate: Option<f64>,
    /// Write the whole report as JSON to FILE (`-`: stdout, instead of the tables).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw dirty pages per round for each mode as an SVG line chart.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// No progress bar and no tables (errors only).
    #[arg(long, short)]
    pub quiet: bool,
    /// Measure write throughput at 1, 2, 4, ... threads up to the core count, next to a
    /// trivially parallel loop, instead of migrating.
    #[arg(long)]
    pub scaling: bool,
    /// Seconds per thread count for `--scaling`.
    #[arg(long, default_value_t = 1.0)]
    pub scaling_secs: f64,
}

impl Default for RunArgs {
    /// The default scenario: exactly what `softdirty run` with no option parses to.
    fn default() -> RunArgs {
        use clap::{Args, FromArgMatches};
        let cmd = RunArgs::augment_args(clap::Command::new("run"));
        let m = cmd
            .try_get_matches_from(["run"])
            .expect("the defaults parse");
        RunArgs::from_arg_matches(&m).expect("the defaults parse")
    }
}

/// Parses a size: a number with an optional K, M, G, T (binary) or p (pages) suffix, and
/// an optional `/s` or `B`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let t = t.strip_suffix('i').unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        Some('t' | 'T') => (&t[..t.len() - 1], 1 << 40),
        Some('p') => (&t[..t.len() - 1], PAGE),
        _ => (t, 1),
    };
    let num = num.replace('_', "");
    let v: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 4096, 64M, 4G, 256p)"))?;
    v.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

fn parse_workload(s: &str) -> Result<Workload, String> {
    s.parse()
}

/// Checks the combination of options; the message says what is wrong.
pub fn validate(a: &RunArgs) -> Result<(), String> {
    let pages = a.mem / PAGE;
    if pages == 0 {
        return Err(format!(
            "--mem {} is less than one page: the guest needs at least 4096 bytes",
            a.mem
        ));
    }
    if a.vcpus == 0 {
        return Err("--vcpus 0: at least one vCPU is needed to write".into());
    }
    if a.vcpus > 1024 {
        return Err(format!(
            "--vcpus {} is more than the 1024 supported",
            a.vcpus
        ));
    }
    if !matches!(a.workload, Workload::Trace(_)) && a.vcpus as u64 > pages {
        return Err(format!(
            "--vcpus {} is more than the guest's {pages} pages (--mem {}): every vCPU needs a page",
            a.vcpus, a.mem
        ));
    }
    if a.bandwidth < PAGE {
        return Err(format!(
            "--bandwidth {} is less than one page per second: nothing could be sent",
            a.bandwidth
        ));
    }
    if !(a.duration > 0.0 && a.duration.is_finite()) {
        return Err(format!(
            "--duration {} must be a positive number of seconds",
            a.duration
        ));
    }
    if a.dirty_rate == 0 {
        return Err("--dirty-rate 0: the vCPUs would never write".into());
    }
    if !(a.zipf_s > 0.0 && a.zipf_s.is_finite()) {
        return Err(format!("--zipf-s {} must be positive", a.zipf_s));
    }
    if let Some(c) = a.churn_rate {
        if !(c >= 0.0 && c.is_finite()) {
            return Err(format!("--churn-rate {c} must be zero or positive"));
        }
    }
    if !(a.scaling_secs > 0.0 && a.scaling_secs.is_finite()) {
        return Err(format!(
            "--scaling-secs {} must be positive",
            a.scaling_secs
        ));
    }
    Ok(())
}

// ========================================================================== report

/// One row of a mode's table: one harvest and the sending that follows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Round {
    /// 0 is the bulk copy; the stop-and-copy row is numbered after the last round.
    pub round: u32,
    /// `bulk`, `live` or `stop`
    pub phase: String,
    /// pages the harvest reported dirty (bulk: every mapped page)
    pub dirty_pages: u64,
    /// pages sent in this round (the last live round's are sent in the stop-and-copy)
    pub pages_sent: u64,
    /// microseconds the harvest took (scan-and-clear; legacy: plus clear_refs, vCPUs
    /// frozen)
    pub harvest_us: u64,
    /// vCPU writes per real second while this round's pages were being sent
    pub writes_per_s: f64,
    /// simulated write faults (clean → soft-dirty stores) during the round
    pub faults: u64,
    /// legacy only: pages this harvest reported that precise, at the same cut, did not
    pub false_positive_pages: Option<u64>,
    /// legacy only: pages precise reported at the same cut that legacy did not
    pub false_negative_pages: Option<u64>,
    /// simulated seconds of link time this round
    pub sim_s: f64,
}

/// One mode's migration.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModeReport {
    /// `precise` or `legacy`
    pub mode: Mode,
    /// the rows
    pub rounds: Vec<Round>,
    /// the dirty set went below the threshold before `--rounds` and `--duration` ran out
    pub converged: bool,
    /// live pre-copy rounds run (after the bulk copy)
    pub live_rounds: u32,
    /// pages sent with the guest stopped
    pub stop_and_copy_pages: u64,
    /// the stop-and-copy's link time, milliseconds
    pub downtime_ms: f64,
    /// every page sent: bulk, live rounds and stop-and-copy
    pub pages_sent_total: u64,
    /// pages sent while the guest ran (bulk and live rounds)
    pub pages_sent_live: u64,
    /// distinct pages the vCPUs wrote (successfully) in the fixed mappings during the
    /// rounds (the churned arenas are not counted: their pages come and go)
    pub written_pages: u64,
    /// pages of the fixed mappings sent after the bulk copy (live rounds and
    /// stop-and-copy); never less than `written_pages`
    pub written_pages_sent: u64,
    /// vCPU writes performed
    pub writes: u64,
    /// writes that failed with EFAULT (raced an munmap or a guard page)
    pub write_efaults: u64,
    /// churn operations performed / failed
    pub churn_ops: u64,
    /// churn operations that failed (planned on a range another op changed)
    pub churn_errors: u64,
    /// simulated write faults in all
    pub faults: u64,
    /// legacy: false positives over every harvest, stop-and-copy included
    pub false_positive_pages: Option<u64>,
    /// legacy: false negatives over every harvest
    pub false_negative_pages: Option<u64>,
    /// simulated seconds of the migration
    pub sim_s: f64,
    /// real seconds of the mode's run
    pub wall_s: f64,
}

/// The configuration a report was made with.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Config {
    /// guest bytes
    pub mem: u64,
    /// vCPUs
    pub vcpus: usize,
    /// workload
    pub workload: String,
    /// maximum rounds
    pub rounds: u32,
    /// link bytes per simulated second
    pub bandwidth: u64,
    /// seed
    pub seed: u64,
    /// modes
    pub mode: ModeSel,
    /// real-time budget per mode, seconds
    pub duration: f64,
    /// writes per simulated second per vCPU
    pub dirty_rate: u64,
    /// convergence threshold, ms of link time
    pub downtime_ms: u64,
    /// the threshold in pages
    pub threshold_pages: u64,
    /// zipf exponent
    pub zipf_s: f64,
    /// churn operations per simulated second
    pub churn_rate: f64,
    /// the mappings the run starts with (churned arenas not listed)
    pub layout: Vec<workload::Mapping>,
    /// pages mapped at the start (arenas included)
    pub mapped_pages: u64,
}

/// The whole report of `softdirty run`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RunReport {
    /// the options
    pub config: Config,
    /// one entry per simulated mode, precise first
    pub modes: Vec<ModeReport>,
    /// with both modes: legacy's total pages sent minus precise's
    pub legacy_extra_pages: Option<i64>,
    /// real seconds in all
    pub wall_s: f64,
}

// ====================================================================== simulation

/// Sorted, disjoint `(start, end)` address ranges.
type Ranges = Vec<(u64, u64)>;

/// Harvests the soft-dirty pages of `mm` (get-and-clear), as sorted `(start, end)`
/// address ranges: one `scan_and_clear` per span of adjacent VMAs. A page stays dirty
/// until a harvest reports it, so a range a racing mremap moves into an already harvested
/// span is reported by the next harvest.
pub fn harvest(mm: &AddressSpace) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for v in mm.vmas() {
        match spans.last_mut() {
            Some(l) if l.1 == v.start => l.1 = v.end,
            _ => spans.push((v.start, v.end)),
        }
    }
    // One get-and-clear per span of adjacent VMAs (`AddressSpace::scan_and_clear`):
    // atomic per word against the vCPUs, cost following the dirty pages.
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in spans {
        let log = mm
            .scan_and_clear(s, e - s)
            .expect("a harvest of mapped, aligned ranges is valid");
        for (a, b) in log.address_ranges() {
            match out.last_mut() {
                Some(l) if l.1 == a => l.1 = b,
                _ => out.push((a, b)),
            }
        }
    }
    out
}

/// Pages in sorted ranges.
fn pages(r: &[(u64, u64)]) -> u64 {
    r.iter().map(|(s, e)| (e - s) / PAGE).sum()
}

/// Pages of `a` not in `b` (both sorted, disjoint ranges).
fn minus(a: &[(u64, u64)], b: &[(u64, u64)]) -> u64 {
    let mut n = 0;
    let mut j = 0;
    for &(s, e) in a {
        let mut cur = s;
        while j < b.len() && b[j].1 <= cur {
            j += 1;
        }
        let mut k = j;
        while cur < e {
            match b.get(k) {
                Some(&(bs, be)) if bs < e => {
                    if bs > cur {
                        n += (bs - cur) / PAGE;
                    }
                    cur = cur.max(be);
                    k += 1;
                }
                _ => {
                    n += (e - cur) / PAGE;
                    cur = e;
                }
            }
        }
    }
    n
}

/// Pages of `a` inside `b`.
fn within(a: &[(u64, u64)], b: &[(u64, u64)]) -> u64 {
    pages(a) - minus(a, b)
}

/// Union of sorted range lists.
fn union(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut all: Vec<(u64, u64)> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(all.len());
    for (s, e) in all {
        match out.last_mut() {
            Some(l) if s <= l.1 => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// A progress display: an indicatif bar on a terminal, nothing otherwise.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(show: bool, len: u64) -> Progress {
        if !show {
            return Progress(None);
        }
        let pb = indicatif::ProgressBar::new(len);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .expect("template"),
        );
        pb.enable_steady_tick(Duration::from_millis(120));
        Progress(Some(pb))
    }
    fn set(&self, pos: u64, msg: String) {
        if let Some(p) = &self.0 {
            p.set_position(pos);
            p.set_message(msg);
        }
    }
    fn finish(&self) {
        if let Some(p) = &self.0 {
            p.finish_and_clear();
        }
    }
}

/// What everything in one mode's run shares.
struct Shared<'a> {
    spaces: Vec<AddressSpace>,
    layout: &'a GuestLayout,
    /// per-writer write counts, for pacing and throughput
    writes: Vec<CachePadded<AtomicU64>>,
    /// per-thread gates (vCPUs, then churn): held around each batch of operations when
    /// harvests need a consistent cut
    gates: Vec<CachePadded<Mutex<()>>>,
    freeze: bool,
    /// the harvester wants the cut: threads stop taking their gate
    pause: AtomicBool,
    stop: AtomicBool,
    /// churn operations done (the migration waits for the churn to keep up)
    churn_done: AtomicU64,
    /// writes each vCPU may have performed so far (the simulated clock's allowance)
    budget: AtomicU64,
    /// distinct written pages of `layout.writable`
    written: Vec<AtomicU64>,
    /// the churn zone's writable ranges, and a version to notice changes
    chunks: Mutex<Arc<Vec<(u64, u64)>>>,
    chunks_version: AtomicU64,
}

impl Shared<'_> {
    fn total_writes(&self) -> u64 {
        // Relaxed: pacing and statistics only; nothing is published through the counters
        // (they pair with the writers' Relaxed fetch_add and order nothing else).
        self.writes.iter().map(|w| w.load(Ordering::Relaxed)).sum()
    }

    fn wait_unpaused(&self) {
        // Acquire: pairs with the harvester's Release store of `false`, after its cut.
        while self.pause.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
    }

    fn stopped(&self) -> bool {
        // Acquire: pairs with the migration thread's Release store; the threads are
        // joined afterwards, which is what orders their results.
        self.stop.load(Ordering::Acquire)
    }

    /// Runs `f` at a consistent cut: no vCPU and no churn operation in flight.
    fn at_cut<R>(&self, f: impl FnOnce() -> R) -> R {
        if !self.freeze {
            return f();
        }
        // Release: pairs with `wait_unpaused`'s Acquire load (threads see the request
        // and stop re-taking their gates, so the locks below are not starved).
        self.pause.store(true, Ordering::Release);
        let guards: Vec<_> = self
            .gates
            .iter()
            .map(|g| g.lock().unwrap_or_else(|e| e.into_inner()))
            .collect();
        let r = f();
        drop(guards);
        // Release: pairs with `wait_unpaused`'s Acquire load.
        self.pause.store(false, Ordering::Release);
        r
    }
}

const BATCH: u64 = 64;

fn writer(sh: &Shared, v: usize, args: &RunArgs) -> u64 {
    let l = sh.layout;
    let mut picker = Picker::new(
        &args.workload,
        l.writable.len(),
        v,
        args.vcpus,
        args.zipf_s,
        args.seed,
    );
    let lock_chunks = || sh.chunks.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut chunks = lock_chunks();
    // Acquire: pairs with the churn thread's Release increment after it published a new
    // chunk list (we then read the list under its mutex anyway).
    let mut version = sh.chunks_version.load(Ordering::Acquire);
    let mut efaults = 0u64;
    let heap_share = !chunks.is_empty() || l.zone.len > 0;
    let mut done = 0u64;
    while !sh.stopped() {
        // Acquire: pairs with the migration thread's Release `fetch_add` (nothing else is
        // published with it; the allowance only paces the guest).
        if done >= sh.budget.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        sh.wait_unpaused();
        let gate = sh
            .freeze
            .then(|| sh.gates[v].lock().unwrap_or_else(|e| e.into_inner()));
        for _ in 0..BATCH {
            // One write in 16 goes to the malloc arenas, the rest follow the pattern.
            let (addr, idx) = if heap_share && !chunks.is_empty() && picker.rng().gen_ratio(1, 16) {
                let rng = picker.rng();
                let (s, n) = chunks[rng.gen_range(0..chunks.len())];
                (s + rng.gen_range(0..n) * PAGE, None)
            } else {
                let i = picker.next_page();
                (l.writable.addr(i), Some(i))
            };
            let mut ok = true;
            for (k, sp) in sh.spaces.iter().enumerate() {
                if sp.write(addr, 1).is_err() && k == 0 {
                    ok = false;
                }
            }
            if !ok {
                efaults += 1;
            } else if let Some(i) = idx {
                let w = &sh.written[(i / 64) as usize];
                let bit = 1u64 << (i % 64);
                // Relaxed: a statistic, read after the writers are joined (the join
                // orders it); load first so hot pages do not bounce the line.
                if w.load(Ordering::Relaxed) & bit == 0 {
                    w.fetch_or(bit, Ordering::Relaxed);
                }
            }
        }
        drop(gate);
        done += BATCH;
        // Relaxed: pacing counter, see `total_writes`.
        sh.writes[v].fetch_add(BATCH, Ordering::Relaxed);
        // Acquire: pairs with the churn thread's Release increment.
        let nv = sh.chunks_version.load(Ordering::Acquire);
        if nv != version {
            version = nv;
            chunks = lock_chunks();
        }
    }
    efaults
}

fn churner(sh: &Shared, mut churn: Churn, rate: f64, writes_per_sim_s: f64) -> (u64, u64) {
    let (mut done, mut errors) = (0u64, 0u64);
    let gate_i = sh.gates.len() - 1;
    while !sh.stopped() {
        let sim = sh.total_writes() as f64 / writes_per_sim_s;
        let due = (sim * rate) as u64;
        if done >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        sh.wait_unpaused();
        let gate = sh
            .freeze
            .then(|| sh.gates[gate_i].lock().unwrap_or_else(|e| e.into_inner()));
        let mut apply = |op: &softdirty::backend::Op| {
            let mut first = None;
            for sp in &sh.spaces {
                let r = op.apply(sp);
                first.get_or_insert(r);
            }
            first.expect("at least one space")
        };
        let (_, ok) = churn.step(&mut apply);
        drop(gate);
        done += 1;
        // Relaxed: pacing only, like the write counters.
        sh.churn_done.store(done, Ordering::Relaxed);
        if ok {
            *sh.chunks.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(churn.writable());
            // Release: pairs with the writers' Acquire load of the version.
            sh.chunks_version.fetch_add(1, Ordering::Release);
        } else {
            errors += 1;
        }
    }
    (done, errors)
}

/// Everything one mode's run needs to know besides the options.
struct Plan<'a> {
    layout: &'a GuestLayout,
    threshold: u64,
    churn_rate: f64,
}

fn run_mode(
    args: &RunArgs,
    mode: Mode,
    plan: &Plan,
    progress: &Progress,
    step0: u64,
) -> Result<ModeReport, String> {
    let started = Instant::now();
    let layout = plan.layout;
    let mut spaces = vec![AddressSpace::new(mode)];
    if !mode.is_precise() {
        spaces.push(AddressSpace::new(Mode::Precise)); // the shadow
    }
    for op in &layout.setup {
        for sp in &spaces {
            op.apply(sp).map_err(|e| {
                format!("building the guest layout: {op:?} failed with {}", e.name())
            })?;
        }
    }
    for &(s, n) in &layout.prefault {
        for sp in &spaces {
            sp.write(s, n * PAGE)
                .map_err(|e| format!("populating the guest: {}", e.name()))?;
        }
    }
    // Dirty logging starts.
    for sp in &spaces {
        sp.clear_refs(4).map_err(|e| e.name().to_string())?;
    }
    let sh = Shared {
        spaces,
        layout,
        writes: (0..args.vcpus)
            .map(|_| CachePadded::new(AtomicU64::new(0)))
            .collect(),
        gates: (0..=args.vcpus)
            .map(|_| CachePadded::new(Mutex::new(())))
            .collect(),
        freeze: !mode.is_precise(),
        pause: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        budget: AtomicU64::new(0),
        churn_done: AtomicU64::new(0),
        written: (0..layout.writable.len().div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect(),
        chunks: Mutex::new(Arc::new(
            layout.chunks.iter().map(|c| c.writable()).collect(),
        )),
        chunks_version: AtomicU64::new(0),
    };
    let writes_per_sim_s = (args.dirty_rate * args.vcpus as u64) as f64;
    let bw_pages = args.bandwidth as f64 / PAGE as f64;
    let deadline = started + Duration::from_secs_f64(args.duration);
    let mapped: u64 = sh.spaces[0]
        .vmas()
        .iter()
        .map(|v| (v.end - v.start) / PAGE)
        .sum();

    let mut rows: Vec<Round> = Vec::new();
    let mut sim_total = 0.0;
    let mut fp_total = 0u64;
    let mut fn_total = 0u64;
    let mut written_sent = 0u64;
    let fixed = layout.writable.spans();
    let shadow = sh.spaces.len() > 1;

    let (efaults, churn_stats, final_sets, converged, live_rounds) = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for v in 0..args.vcpus {
            let sh = &sh;
            handles.push(s.spawn(move || writer(sh, v, args)));
        }
        let has_churn = layout.zone.len > 0 && plan.churn_rate > 0.0;
        let churn_handle = Churn::new(layout, args.seed)
            .filter(|_| plan.churn_rate > 0.0)
            .map(|c| {
                let sh = &sh;
                let rate = plan.churn_rate;
                s.spawn(move || churner(sh, c, rate, writes_per_sim_s))
            });

        // Lets the guest run for `sim` simulated seconds (or until the deadline): the
        // vCPUs get that many more writes, and the next harvest starts when all but
        // the last eighth are done (those race the harvest, as a running guest does).
        // Returns (writes/s, faults) of the interval.
        let run_for = |sim: f64| -> (f64, u64) {
            let t = Instant::now();
            let w0 = sh.total_writes();
            let f0 = sh.spaces[0].faults();
            let per_vcpu = (sim * args.dirty_rate as f64).ceil() as u64;
            // Release: pairs with the writers' Acquire load of the allowance.
            let b = sh.budget.fetch_add(per_vcpu, Ordering::Release) + per_vcpu;
            let quota = per_vcpu * args.vcpus as u64;
            let target = (b * args.vcpus as u64).saturating_sub(quota / 8);
            // The churn keeps to the same simulated clock, however slow its operations.
            let churn_due = if has_churn {
                (target as f64 / writes_per_sim_s * plan.churn_rate) as u64
            } else {
                0
            };
            while (sh.total_writes() < target
                    // Relaxed: pacing only (see `churn_done`).
                    || sh.churn_done.load(Ordering::Relaxed) < churn_due)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_micros(200));
            }
            let dt = t.elapsed().as_secs_f64().max(1e-9);
            (
                (sh.total_writes() - w0) as f64 / dt,
                sh.spaces[0].faults() - f0,
            )
        };

        // Round 0: the bulk copy of everything mapped.
        let sim0 = mapped as f64 / bw_pages;
        progress.set(step0, format!("{mode}: bulk copy of {mapped} pages"));
        let (wps, faults) = run_for(sim0);
        sim_total += sim0;
        rows.push(Round {
            round: 0,
            phase: "bulk".into(),
            dirty_pages: mapped,
            pages_sent: mapped,
            harvest_us: 0,
            writes_per_s: wps,
            faults,
            false_positive_pages: shadow.then_some(0),
            false_negative_pages: shadow.then_some(0),
            sim_s: sim0,
        });

        let mut pending: (Ranges, Ranges) = (Vec::new(), Vec::new());
        let mut converged = false;
        let mut live = 0u32;
        for k in 1..=args.rounds {
            let t = Instant::now();
            let (d, sd) = sh.at_cut(|| {
                let d = harvest(&sh.spaces[0]);
                if !mode.is_precise() {
                    // VM_SOFTDIRTY is only cleared by clear_refs (vCPUs are frozen).
                    let _ = sh.spaces[0].clear_refs(4);
                }
                let sd = if shadow {
                    harvest(&sh.spaces[1])
                } else {
                    Vec::new()
                };
                (d, sd)
            });
            let harvest_us = t.elapsed().as_micros() as u64;
            let n = pages(&d);
            let (fp, fneg) = if shadow {
                (Some(minus(&d, &sd)), Some(minus(&sd, &d)))
            } else {
                (None, None)
            };
            fp_total += fp.unwrap_or(0);
            fn_total += fneg.unwrap_or(0);
            live = k;
            let small = n <= plan.threshold;
            let last = small || k == args.rounds || Instant::now() >= deadline;
            progress.set(
                step0 + k as u64,
                format!("{mode}: round {k}: {n} dirty pages"),
            );
            if last {
                converged = small;
                rows.push(Round {
                    round: k,
                    phase: "live".into(),
                    dirty_pages: n,
                    pages_sent: 0,
                    harvest_us,
                    writes_per_s: 0.0,
                    faults: 0,
                    false_positive_pages: fp,
                    false_negative_pages: fneg,
                    sim_s: 0.0,
                });
                pending = (d, sd);
                break;
            }
            written_sent += within(&d, &fixed);
            let sim = n as f64 / bw_pages;
            let (wps, faults) = run_for(sim);
            sim_total += sim;
            rows.push(Round {
                round: k,
                phase: "live".into(),
                dirty_pages: n,
                pages_sent: n,
                harvest_us,
                writes_per_s: wps,
                faults,
                false_positive_pages: fp,
                false_negative_pages: fneg,
                sim_s: sim,
            });
        }
        // Stop the guest.
        // Release: pairs with `stopped`'s Acquire load; the joins below order the rest.
        sh.stop.store(true, Ordering::Release);
        let efaults: u64 = handles.into_iter().map(|h| h.join().expect("writer")).sum();
        let churn_stats = churn_handle
            .map(|h| h.join().expect("churn"))
            .unwrap_or((0, 0));
        (efaults, churn_stats, pending, converged, live)
    });

    // Stop-and-copy: what the last harvest left unsent plus what was written since.
    let t = Instant::now();
    let f = harvest(&sh.spaces[0]);
    let sf = if shadow {
        harvest(&sh.spaces[1])
    } else {
        Vec::new()
    };
    let harvest_us = t.elapsed().as_micros() as u64;
    let stop_set = union(&final_sets.0, &f);
    let stop_pages = pages(&stop_set);
    written_sent += within(&stop_set, &fixed);
    // Per harvest, like the rounds (the last live round's share was counted there).
    let (fp, fneg) = if shadow {
        (Some(minus(&f, &sf)), Some(minus(&sf, &f)))
    } else {
        (None, None)
    };
    fp_total += fp.unwrap_or(0);
    fn_total += fneg.unwrap_or(0);
    let downtime = stop_pages as f64 / bw_pages;
    sim_total += downtime;
    rows.push(Round {
        round: live_rounds + 1,
        phase: "stop".into(),
        dirty_pages: pages(&f),
        pages_sent: stop_pages,
        harvest_us,
        writes_per_s: 0.0,
        faults: 0,
        false_positive_pages: fp,
        false_negative_pages: fneg,
        sim_s: downtime,
    });
    let live_sent: u64 = rows
        .iter()
        .filter(|r| r.phase != "stop")
        .map(|r| r.pages_sent)
        .sum();
    let written = sh
        .written
        .iter()
        // Relaxed: the writers were joined (the join orders their stores before this).
        .map(|w| w.load(Ordering::Relaxed).count_ones() as u64)
        .sum();
    Ok(ModeReport {
        mode,
        converged,
        live_rounds,
        stop_and_copy_pages: stop_pages,
        downtime_ms: downtime * 1e3,
        pages_sent_total: live_sent + stop_pages,
        pages_sent_live: live_sent,
        written_pages: written,
        written_pages_sent: written_sent,
        writes: sh.total_writes(),
        write_efaults: efaults,
        churn_ops: churn_stats.0,
        churn_errors: churn_stats.1,
        faults: sh.spaces[0].faults(),
        false_positive_pages: shadow.then_some(fp_total),
        false_negative_pages: shadow.then_some(fn_total),
        sim_s: sim_total,
        wall_s: started.elapsed().as_secs_f64(),
        rounds: rows,
    })
}

/// The layout `args` asks for.
pub fn layout_for(args: &RunArgs) -> Result<GuestLayout, String> {
    match &args.workload {
        Workload::Trace(p) => workload::trace_layout(p, args.seed),
        _ => Ok(workload::guest_layout(args.mem, args.vcpus, args.seed)),
    }
}

/// Runs the simulation `args` describes (no output): the library entry point.
pub fn simulate(args: &RunArgs) -> Result<RunReport, String> {
    simulate_with(args, false)
}

fn simulate_with(args: &RunArgs, show_progress: bool) -> Result<RunReport, String> {
    validate(args)?;
    let started = Instant::now();
    let layout = layout_for(args)?;
    let churn_rate = args.churn_rate.unwrap_or(match args.workload {
        Workload::Churn => 4000.0,
        _ => 200.0,
    });
    let threshold = (args.bandwidth as f64 / PAGE as f64 * args.downtime_ms as f64 / 1e3) as u64;
    let plan = Plan {
        layout: &layout,
        threshold,
        churn_rate,
    };
    let modes: Vec<Mode> = match args.mode {
        ModeSel::Precise => vec![Mode::Precise],
        ModeSel::Legacy => vec![Mode::Legacy],
        ModeSel::Both => vec![Mode::Precise, Mode::Legacy],
    };
    let per = args.rounds as u64 + 1;
    let progress = Progress::new(show_progress, per * modes.len() as u64);
    let mut reports = Vec::new();
    for (i, &m) in modes.iter().enumerate() {
        let r = run_mode(args, m, &plan, &progress, i as u64 * per);
        reports.push(r.inspect_err(|_| progress.finish())?);
    }
    progress.finish();
    let legacy_extra_pages = match reports.as_slice() {
        [p, l] => Some(l.pages_sent_total as i64 - p.pages_sent_total as i64),
        _ => None,
    };
    let mapped_pages = layout.mappings.iter().map(|m| m.pages).sum::<u64>()
        + layout.chunks.iter().map(|c| c.pages).sum::<u64>();
    Ok(RunReport {
        config: Config {
            mem: args.mem,
            vcpus: args.vcpus,
            workload: args.workload.to_string(),
            rounds: args.rounds,
            bandwidth: args.bandwidth,
            seed: args.seed,
            mode: args.mode,
            duration: args.duration,
            dirty_rate: args.dirty_rate,
            downtime_ms: args.downtime_ms,
            threshold_pages: threshold,
            zipf_s: args.zipf_s,
            churn_rate,
            layout: layout.mappings.clone(),
            mapped_pages,
        },
        modes: reports,
        legacy_extra_pages,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

// ========================================================================= output

fn human(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2}G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn bytes(b: u64) -> String {
    if b >= 1 << 30 && b % (1 << 30) == 0 {
        format!("{} GiB", b >> 30)
    } else if b >= 1 << 20 {
        format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64)
    } else {
        format!("{} KiB", b.div_ceil(1024))
    }
}

/// Writes the tables and the summary of `r`.
pub fn print_report(r: &RunReport, out: &mut dyn Write) -> std::io::Result<()> {
    let c = &r.config;
    writeln!(
        out,
        "softdirty run: {} guest ({} pages mapped), {} vCPUs, workload {}, link {}/s, \
         {} writes/s per vCPU (simulated), stop at <= {} dirty pages ({} ms), seed {}",
        bytes(c.mem),
        c.mapped_pages,
        c.vcpus,
        c.workload,
        bytes(c.bandwidth),
        human(c.dirty_rate as f64),
        c.threshold_pages,
        c.downtime_ms,
        c.seed
    )?;
    for m in &r.modes {
        writeln!(out)?;
        writeln!(
            out,
            "{}: {} after {} rounds; stop-and-copy {} pages ({:.1} ms); {} pages sent; \
             {:.1} s simulated, {:.1} s real",
            m.mode,
            if m.converged {
                "converged"
            } else {
                "did not converge"
            },
            m.live_rounds,
            m.stop_and_copy_pages,
            m.downtime_ms,
            m.pages_sent_total,
            m.sim_s,
            m.wall_s
        )?;
        let legacy = m.false_positive_pages.is_some();
        write!(
            out,
            "{:>6} {:>10} {:>10} {:>11} {:>10} {:>9}",
            "round", "dirty", "sent", "harvest_us", "writes/s", "faults"
        )?;
        if legacy {
            write!(out, " {:>10}", "false_pos")?;
        }
        writeln!(out)?;
        for row in &m.rounds {
            let label = match row.phase.as_str() {
                "bulk" => "bulk".to_string(),
                "stop" => "stop".to_string(),
                _ => row.round.to_string(),
            };
            let hv = if row.phase == "bulk" {
                "-".to_string()
            } else {
                row.harvest_us.to_string()
            };
            let wps = if row.writes_per_s > 0.0 {
                human(row.writes_per_s)
            } else {
                "-".to_string()
            };
            write!(
                out,
                "{:>6} {:>10} {:>10} {:>11} {:>10} {:>9}",
                label, row.dirty_pages, row.pages_sent, hv, wps, row.faults
            )?;
            if let Some(fp) = row.false_positive_pages {
                write!(out, " {fp:>10}")?;
            }
            writeln!(out)?;
        }
        writeln!(
            out,
            "  writes {} ({} EFAULT), churn ops {} ({} failed), faults {}, \
             pages written in fixed mappings {} (all sent: {})",
            m.writes,
            m.write_efaults,
            m.churn_ops,
            m.churn_errors,
            m.faults,
            m.written_pages,
            if m.written_pages_sent >= m.written_pages {
                "yes"
            } else {
                "NO"
            }
        )?;
    }
    writeln!(out)?;
    for m in &r.modes {
        if let (Some(fp), Some(fneg)) = (m.false_positive_pages, m.false_negative_pages) {
            writeln!(
                out,
                "legacy sent {fp} pages needlessly: pages it reported soft-dirty that precise \
                 tracking of the same operations, harvested at the same cuts, did not \
                 ({:.1}% of the {} it sent after the bulk copy); it missed {fneg}.",
                100.0 * fp as f64 / (m.pages_sent_total - m.rounds[0].pages_sent).max(1) as f64,
                m.pages_sent_total - m.rounds[0].pages_sent
            )?;
        }
    }
    if let (Some(extra), [p, l]) = (r.legacy_extra_pages, r.modes.as_slice()) {
        writeln!(
            out,
            "precise: {} pages sent, stop-and-copy {} ({:.1} ms); legacy: {} pages sent \
             ({extra:+}), stop-and-copy {} ({:.1} ms).",
            p.pages_sent_total,
            p.stop_and_copy_pages,
            p.downtime_ms,
            l.pages_sent_total,
            l.stop_and_copy_pages,
            l.downtime_ms
        )?;
    }
    Ok(())
}

/// Draws dirty pages per round, one line per mode, as SVG.
pub fn plot(r: &RunReport, path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    let max_round = r
        .modes
        .iter()
        .flat_map(|m| m.rounds.iter().map(|x| x.round))
        .max()
        .unwrap_or(1)
        .max(1);
    let max_dirty = r
        .modes
        .iter()
        .flat_map(|m| m.rounds.iter().map(|x| x.dirty_pages))
        .max()
        .unwrap_or(1)
        .max(1);
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let title = format!(
        "Dirty pages per pre-copy round ({} guest, {} vCPUs, {})",
        bytes(r.config.mem),
        r.config.vcpus,
        r.config.workload
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0u32..max_round, (1u64..max_dirty * 2).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("round (0 = bulk copy, last = stop-and-copy)")
        .y_desc("dirty pages (log)")
        .draw()
        .map_err(|e| err(&e))?;
    let colors = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];
    for (i, m) in r.modes.iter().enumerate() {
        let color = colors[i % colors.len()];
        let pts: Vec<(u32, u64)> = m
            .rounds
            .iter()
            .map(|x| (x.round, x.dirty_pages.max(1)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(m.mode.name())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

// ======================================================================== scaling

/// One line of the `--scaling` table.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ScalingRow {
    /// writer threads
    pub threads: usize,
    /// model writes per second, all threads
    pub writes_per_s: f64,
    /// writes_per_s / (threads × the 1-thread rate)
    pub efficiency: f64,
    /// the trivially parallel loop's iterations per second
    pub loop_per_s: f64,
    /// its efficiency, measured the same way
    pub loop_efficiency: f64,
}

fn timed_threads(n: usize, secs: f64, body: &(dyn Fn(usize, &AtomicBool) -> u64 + Sync)) -> f64 {
    let stop = AtomicBool::new(false);
    let barrier = std::sync::Barrier::new(n + 1);
    let total: u64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                let (stop, barrier) = (&stop, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    body(i, stop)
                })
            })
            .collect();
        barrier.wait();
        std::thread::sleep(Duration::from_secs_f64(secs));
        // Release: pairs with the threads' Acquire loads; their counts come back
        // through join.
        stop.store(true, Ordering::Release);
        hs.into_iter().map(|h| h.join().expect("thread")).sum()
    });
    total as f64 / secs
}

/// Measures write throughput at 1, 2, 4, ... threads (up to the core count) on a
/// precise address space of `--mem`, next to a trivially parallel loop.
pub fn scaling(args: &RunArgs) -> Vec<ScalingRow> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut counts = vec![];
    let mut t = 1;
    while t < cores {
        counts.push(t);
        t *= 2;
    }
    counts.push(cores);
    let layout = workload::guest_layout(args.mem, cores, args.seed);
    let mm = AddressSpace::new(Mode::Precise);
    for op in &layout.setup {
        let _ = op.apply(&mm);
    }
    let _ = mm.clear_refs(4);
    let mut rows: Vec<ScalingRow> = Vec::new();
    for &n in &counts {
        let model = |i: usize, stop: &AtomicBool| -> u64 {
            let mut p = Picker::new(
                &args.workload,
                layout.writable.len(),
                i,
                n,
                args.zipf_s,
                args.seed,
            );
            let mut k = 0u64;
            // Acquire: pairs with the Release store in `timed_threads`.
            while !stop.load(Ordering::Acquire) {
                for _ in 0..BATCH {
                    let _ = mm.write(layout.writable.addr(p.next_page()), 1);
                }
                k += BATCH;
            }
            k
        };
        let w = timed_threads(n, args.scaling_secs, &model);
        let trivial = |i: usize, stop: &AtomicBool| -> u64 {
            let mut a = vec![0u64; 4096];
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ i as u64;
            let mut k = 0u64;
            // Acquire: pairs with the Release store in `timed_threads`.
            while !stop.load(Ordering::Acquire) {
                for _ in 0..BATCH {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    a[(x % 4096) as usize] += 1;
                }
                k += BATCH;
            }
            std::hint::black_box(&a);
            k
        };
        let l = timed_threads(n, args.scaling_secs, &trivial);
        let (w1, l1) = rows
            .first()
            .map_or((w, l), |r| (r.writes_per_s, r.loop_per_s));
        rows.push(ScalingRow {
            threads: n,
            writes_per_s: w,
            efficiency: w / (n as f64 * w1),
            loop_per_s: l,
            loop_efficiency: l / (n as f64 * l1),
        });
    }
    rows
}

fn print_scaling(rows: &[ScalingRow], args: &RunArgs, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "write scaling: precise, {} guest, workload {}, {} s per point, {} cores",
        bytes(args.mem),
        args.workload,
        args.scaling_secs,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )?;
    writeln!(
        out,
        "{:>7} {:>12} {:>10} {:>14} {:>10} {:>7}",
        "threads", "writes/s", "efficiency", "trivial loop/s", "trivial", "ratio"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:>7} {:>12} {:>9.0}% {:>14} {:>9.0}% {:>7.2}",
            r.threads,
            human(r.writes_per_s),
            r.efficiency * 100.0,
            human(r.loop_per_s),
            r.loop_efficiency * 100.0,
            r.efficiency / r.loop_efficiency
        )?;
    }
    Ok(())
}

// =========================================================================== main

fn write_json<T: serde::Serialize>(v: &T, path: &Path) -> Result<(), String> {
    let s = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    if path.as_os_str() == "-" {
        println!("{s}");
        Ok(())
    } else {
        std::fs::write(path, s + "\n").map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Runs `softdirty run` with `args`.
pub fn main(args: &RunArgs) -> ExitCode {
    if let Err(e) = validate(args) {
        eprintln!("error: {e}\n\nFor more information, try '--help'.");
        return ExitCode::from(2);
    }
    let json_stdout = args.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    let tables = !args.quiet && !json_stdout;
    let stdout = std::io::stdout();
    if args.scaling {
        let rows = scaling(args);
        if tables {
            let _ = print_scaling(&rows, args, &mut stdout.lock());
        }
        if let Some(p) = &args.json {
            if let Err(e) = write_json(&rows, p) {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    let show = !args.quiet && std::io::stderr().is_terminal();
    let report = match simulate_with(args, show) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if tables {
        let mut out = stdout.lock();
        let _ = print_report(&report, &mut out);
        let _ = out.flush();
    }
    if let Some(p) = &args.json {
        if let Err(e) = write_json(&report, p) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(p) = &args.plot {
        if let Err(e) = plot(&report, p) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
