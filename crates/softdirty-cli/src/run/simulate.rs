//! The migration: the harvest, one mode's bulk copy, pre-copy rounds and stop-and-copy
//! against the guest's threads (`run_mode`), and [`simulate`], which runs the modes and
//! builds the report.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use super::content::{Content, Destination};
use super::guest::{churner, writer, Shared};
use super::{
    validate, Config, HarvestSel, ModeReport, ModeSel, RingReport, Round, RunArgs, RunReport,
};
use crate::ranges::{minus, pages, union, within, Ranges};
use crate::workload::{self, Churn, GuestLayout, PageRanges, Workload, PAGE};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use softdirty::mm::AddressSpace;
use softdirty::mode::Mode;
use softdirty::ring::{SpaceRingHarvest, SpaceRings};
use softdirty::Harvest;

/// Harvests the soft-dirty pages of `mm` (get-and-clear), as sorted `(start, end)`
/// address ranges: one `scan_and_clear` per span of adjacent VMAs. A page stays dirty
/// until a harvest reports it, so a range a racing mremap moves into an already harvested
/// span is reported by the next harvest.
pub fn harvest(mm: &AddressSpace) -> Vec<(u64, u64)> {
    let (taken, ranges) = begin_harvest(mm);
    for h in taken {
        h.commit();
    }
    ranges
}

/// [`harvest`] as transactions, one per span of adjacent VMAs
/// (`AddressSpace::begin_harvest`), and the address ranges they took.
fn begin_harvest(mm: &AddressSpace) -> (Vec<Harvest<'_>>, Vec<(u64, u64)>) {
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for v in mm.vmas() {
        match spans.last_mut() {
            Some(l) if l.1 == v.start => l.1 = v.end,
            _ => spans.push((v.start, v.end)),
        }
    }
    // One get-and-clear per span of adjacent VMAs: atomic per word against the vCPUs,
    // cost following the dirty pages.
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut taken = Vec::new();
    for (s, e) in spans {
        let h = mm
            .begin_harvest(s, e - s)
            .expect("a harvest of mapped, aligned ranges is valid");
        for (a, b) in h.log().address_ranges() {
            match out.last_mut() {
                Some(l) if l.1 == a => l.1 = b,
                _ => out.push((a, b)),
            }
        }
        taken.push(h);
    }
    (taken, out)
}

/// One space's harvest in progress: committed when its pages were sent, aborted when
/// the transfer failed.
enum Taken<'a> {
    Bitmap(Vec<Harvest<'a>>),
    Ring(SpaceRingHarvest<'a>),
}

impl Taken<'_> {
    fn commit(self) {
        match self {
            Taken::Bitmap(v) => v.into_iter().for_each(|h| drop(h.commit())),
            Taken::Ring(h) => h.commit(),
        }
    }

    /// Gives the pages back; returns how many were made soft-dirty again.
    fn abort(self) -> u64 {
        match self {
            Taken::Bitmap(v) => v
                .into_iter()
                .map(|h| {
                    let n = h.log().dirty_count();
                    h.abort();
                    n
                })
                .sum(),
            Taken::Ring(h) => h.abort(),
        }
    }
}

/// Harvests `mm` through `rings` if given, else through the bitmap.
fn take<'a>(mm: &'a AddressSpace, rings: Option<&'a SpaceRings>) -> (Taken<'a>, Ranges) {
    match rings {
        Some(r) => {
            let h = r.harvest();
            let ranges = h.address_ranges();
            (Taken::Ring(h), ranges)
        }
        None => {
            let (h, ranges) = begin_harvest(mm);
            (Taken::Bitmap(h), ranges)
        }
    }
}

/// Sends the fixed mappings' pages of `ranges`: copies their content to `dest`.
fn send(dest: &mut Destination, content: &Content, fixed: &PageRanges, ranges: &Ranges) {
    for &(s, e) in ranges {
        for r in fixed.indices(s, e) {
            dest.copy(content, r);
        }
    }
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
    let mut spaces = vec![Arc::new(AddressSpace::new(mode))];
    if !mode.is_precise() {
        spaces.push(Arc::new(AddressSpace::new(Mode::Precise))); // the shadow
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
    // Legacy's VM_SOFTDIRTY reports pages no write named: it harvests the bitmap.
    let harvest_sel = if mode.is_precise() {
        args.harvest
    } else {
        HarvestSel::Bitmap
    };
    let rings = (harvest_sel == HarvestSel::Ring)
        .then(|| SpaceRings::new(Arc::clone(&spaces[0])).expect("a precise space takes rings"));
    // The first ring harvest scans everything; make it now, before the vCPUs run (the
    // pages written so far were sent by the bulk copy).
    if let Some(r) = &rings {
        r.harvest().commit();
    }
    let sh = Shared {
        ring_writers: rings
            .iter()
            .flat_map(|r| (0..args.vcpus).map(|_| r.writer(args.ring_size())))
            .collect(),
        soft_full: AtomicU64::new(0),
        content: Content::new(layout.writable.len()),
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
    // In f64: `--dirty-rate` times `--vcpus` may not fit a u64.
    let writes_per_sim_s = args.dirty_rate as f64 * args.vcpus as f64;
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
    // What the destination holds: every page's content as of the bulk copy (all 0: no
    // vCPU has stored yet).
    let mut dest = Destination::new(layout.writable.len());
    let mut drop_rng = SmallRng::seed_from_u64(args.seed ^ 0xd0d0);
    let (mut aborted_rounds, mut given_back) = (0u32, 0u64);
    let (mut ring_harvests, mut full_harvests, mut ring_entries) = (0u32, 0u32, 0u64);

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
            // Capped at 2^40 writes per vCPU per interval (no duration lets a writer get
            // near it), so that the budget and the quotas below cannot overflow.
            let per_vcpu = ((sim * args.dirty_rate as f64).ceil() as u64).min(1 << 40);
            // Release: pairs with the writers' Acquire load of the allowance.
            let b = sh.budget.fetch_add(per_vcpu, Ordering::Release) + per_vcpu;
            let quota = per_vcpu.saturating_mul(args.vcpus as u64);
            let target = b
                .saturating_mul(args.vcpus as u64)
                .saturating_sub(quota / 8);
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
            aborted: false,
            ring_full_scan: None,
        });

        let mut pending: (Ranges, Ranges) = (Vec::new(), Vec::new());
        let mut converged = false;
        let mut live = 0u32;
        for k in 1..=args.rounds {
            let t = Instant::now();
            let ((tk, d), shadow_take) = sh.at_cut(|| {
                let main = take(&sh.spaces[0], rings.as_ref());
                if !mode.is_precise() {
                    // VM_SOFTDIRTY is only cleared by clear_refs (vCPUs are frozen).
                    let _ = sh.spaces[0].clear_refs(4);
                }
                (main, shadow.then(|| take(&sh.spaces[1], None)))
            });
            let harvest_us = t.elapsed().as_micros() as u64;
            let (stk, sd) = match shadow_take {
                Some((t, r)) => (Some(t), r),
                None => (None, Vec::new()),
            };
            let ring_full_scan = match &tk {
                Taken::Ring(h) => {
                    ring_entries += h.stats.entries;
                    if h.stats.full_scan {
                        full_harvests += 1;
                    } else {
                        ring_harvests += 1;
                    }
                    Some(h.stats.full_scan)
                }
                Taken::Bitmap(_) => None,
            };
            let n = pages(&d);
            let (fp, fneg) = if shadow {
                (Some(minus(&d, &sd)), Some(minus(&sd, &d)))
            } else {
                (None, None)
            };
            live = k;
            let small = n <= plan.threshold;
            let last = small || k == args.rounds || Instant::now() >= deadline;
            // The link fails: the round's pages are sent for nothing, and given back.
            let abort = !last
                && args.drop_round_probability > 0.0
                && drop_rng.gen_bool(args.drop_round_probability);
            if !abort {
                // An aborted round's pages are reported again: count them once.
                fp_total += fp.unwrap_or(0);
                fn_total += fneg.unwrap_or(0);
            }
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
                    aborted: false,
                    ring_full_scan,
                });
                // Sent with the stop-and-copy.
                tk.commit();
                stk.map(Taken::commit);
                pending = (d, sd);
                break;
            }
            let sim = n as f64 / bw_pages;
            let (wps, faults) = if abort {
                let r = run_for(sim);
                // After the link time, with the vCPUs still writing.
                given_back += tk.abort();
                stk.map(Taken::abort);
                aborted_rounds += 1;
                r
            } else {
                send(&mut dest, &sh.content, &layout.writable, &d);
                tk.commit();
                stk.map(Taken::commit);
                written_sent += within(&d, &fixed);
                run_for(sim)
            };
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
                aborted: abort,
                ring_full_scan,
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
    let (tk, f) = take(&sh.spaces[0], rings.as_ref());
    let ring_full_scan = match &tk {
        Taken::Ring(h) => {
            ring_entries += h.stats.entries;
            if h.stats.full_scan {
                full_harvests += 1;
            } else {
                ring_harvests += 1;
            }
            Some(h.stats.full_scan)
        }
        Taken::Bitmap(_) => None,
    };
    tk.commit();
    let sf = if shadow {
        harvest(&sh.spaces[1])
    } else {
        Vec::new()
    };
    let harvest_us = t.elapsed().as_micros() as u64;
    let stop_set = union(&final_sets.0, &f);
    // The vCPUs are stopped: after this copy the destination must equal the source.
    send(&mut dest, &sh.content, &layout.writable, &stop_set);
    let destination_stale_pages = dest.stale(&sh.content);
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
        aborted: false,
        ring_full_scan,
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
        harvest: harvest_sel,
        aborted_rounds,
        pages_given_back: given_back,
        destination_stale_pages,
        ring: rings.as_ref().map(|r| {
            let dirtied = r.pages_dirtied();
            RingReport {
                size: args.ring_size(),
                ring_harvests,
                full_harvests,
                entries: ring_entries,
                // Relaxed: the writers were joined.
                soft_full_writes: sh.soft_full.load(Ordering::Relaxed),
                vcpu_dirty_rate: dirtied
                    .iter()
                    .map(|&p| p as f64 / sim_total.max(1e-9))
                    .collect(),
                vcpu_dirtied_pages: dirtied,
            }
        }),
    })
}

/// The layout `args` asks for.
pub fn layout_for(args: &RunArgs) -> Result<GuestLayout, String> {
    match &args.workload {
        Workload::Trace(p) => workload::trace_layout(p, args.seed),
        _ => Ok(workload::guest_layout(args.mem(), args.vcpus, args.seed)),
    }
}

/// Runs the simulation `args` describes (no output): the library entry point.
pub fn simulate(args: &RunArgs) -> Result<RunReport, String> {
    simulate_with(args, false)
}

pub(super) fn simulate_with(args: &RunArgs, show_progress: bool) -> Result<RunReport, String> {
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
            // A trace's guest is its mappings.
            mem: match args.workload {
                Workload::Trace(_) => mapped_pages * softdirty::linux::PAGE_SIZE,
                _ => args.mem(),
            },
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
            harvest: args.harvest,
            ring_size: (args.harvest == HarvestSel::Ring).then(|| args.ring_size()),
            drop_round_probability: args.drop_round_probability,
        },
        modes: reports,
        legacy_extra_pages,
        wall_s: started.elapsed().as_secs_f64(),
    })
}
