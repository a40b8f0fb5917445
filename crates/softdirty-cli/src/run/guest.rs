//! The simulated guest's threads: the state they share with the migration thread
//! (`Shared`: pacing, the gates of the consistent cut, statistics), the vCPU writers and
//! the churn thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use rand::Rng;

use super::content::Content;
use super::RunArgs;
use crate::workload::{Churn, GuestLayout, Picker, PAGE};
use softdirty::mm::AddressSpace;
use softdirty::ring::{RingMark, SpaceRingWriter};

/// What everything in one mode's run shares.
pub(super) struct Shared<'a> {
    /// the mode's space, then (legacy) the precise shadow
    pub(super) spaces: Vec<Arc<AddressSpace>>,
    /// `--harvest ring`: vCPU `v` writes the first space through `ring_writers[v]`
    pub(super) ring_writers: Vec<SpaceRingWriter>,
    /// writes that found their ring at its soft limit
    pub(super) soft_full: AtomicU64,
    /// the fixed mappings' writable pages' content (a version per page)
    pub(super) content: Content,
    pub(super) layout: &'a GuestLayout,
    /// per-writer write counts, for pacing and throughput
    pub(super) writes: Vec<CachePadded<AtomicU64>>,
    /// per-thread gates (vCPUs, then churn): held around each batch of operations when
    /// harvests need a consistent cut
    pub(super) gates: Vec<CachePadded<Mutex<()>>>,
    pub(super) freeze: bool,
    /// the harvester wants the cut: threads stop taking their gate
    pub(super) pause: AtomicBool,
    pub(super) stop: AtomicBool,
    /// churn operations done (the migration waits for the churn to keep up)
    pub(super) churn_done: AtomicU64,
    /// writes each vCPU may have performed so far (the simulated clock's allowance)
    pub(super) budget: AtomicU64,
    /// distinct written pages of `layout.writable`
    pub(super) written: Vec<AtomicU64>,
    /// the churn zone's writable ranges, and a version to notice changes
    pub(super) chunks: Mutex<Arc<Vec<(u64, u64)>>>,
    pub(super) chunks_version: AtomicU64,
}

impl Shared<'_> {
    pub(super) fn total_writes(&self) -> u64 {
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
    pub(super) fn at_cut<R>(&self, f: impl FnOnce() -> R) -> R {
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

pub(super) const BATCH: u64 = 64;

pub(super) fn writer(sh: &Shared, v: usize, args: &RunArgs) -> u64 {
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
    let mut soft_full = 0u64;
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
            if let Some(i) = idx {
                // The data, before the mark (the data-ordering contract).
                sh.content.store(i);
            }
            let mut ok = true;
            for (k, sp) in sh.spaces.iter().enumerate() {
                let r = match sh.ring_writers.get(v) {
                    Some(w) if k == 0 => w.write(addr, 1).map(|m| {
                        // KVM's vCPU would exit to let the harvester run; here the
                        // rounds' pacing decides, and the run counts the signals.
                        soft_full += u64::from(m == RingMark::SoftFull);
                    }),
                    _ => sp.write(addr, 1),
                };
                if r.is_err() && k == 0 {
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
    // Relaxed: a statistic, read after the writers are joined.
    sh.soft_full.fetch_add(soft_full, Ordering::Relaxed);
    efaults
}

pub(super) fn churner(
    sh: &Shared,
    mut churn: Churn,
    rate: f64,
    writes_per_sim_s: f64,
) -> (u64, u64) {
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
