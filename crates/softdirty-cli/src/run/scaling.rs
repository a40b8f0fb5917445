//! `--scaling`: write throughput at 1, 2, 4, ... threads next to a trivially parallel
//! loop ([`scaling`]), and its table.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::guest::BATCH;
use super::output::{bytes, human};
use super::RunArgs;
use crate::workload::{self, Picker};
use softdirty::mm::AddressSpace;
use softdirty::mode::Mode;

/// One line of the `--scaling` table.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ScalingRow {
    /// writer threads
    pub threads: usize,
    /// model writes per second, all threads
    pub writes_per_s: f64,
    /// writes_per_s / (threads × the 1-thread rate)
    pub efficiency: f64,
    /// the same writes through writer handles (`AddressSpace::writer`, one per thread),
    /// per second, all threads
    pub handle_writes_per_s: f64,
    /// handle_writes_per_s / (threads × its 1-thread rate)
    pub handle_efficiency: f64,
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
    let layout = workload::guest_layout(args.mem(), cores, args.seed);
    let mm = AddressSpace::new(Mode::Precise);
    for op in &layout.setup {
        let _ = op.apply(&mm);
    }
    let _ = mm.clear_refs(4);
    let mut rows: Vec<ScalingRow> = Vec::new();
    for &n in &counts {
        let model = |handle: bool| {
            let (mm, layout) = (&mm, &layout);
            move |i: usize, stop: &AtomicBool| -> u64 {
                let mut p = Picker::new(
                    &args.workload,
                    layout.writable.len(),
                    i,
                    n,
                    args.zipf_s,
                    args.seed,
                );
                let mut h = handle.then(|| mm.writer());
                let mut k = 0u64;
                // Acquire: pairs with the Release store in `timed_threads`.
                while !stop.load(Ordering::Acquire) {
                    for _ in 0..BATCH {
                        let a = layout.writable.addr(p.next_page());
                        let _ = match h.as_mut() {
                            Some(h) => h.write(a, 1),
                            None => mm.write(a, 1),
                        };
                    }
                    k += BATCH;
                }
                k
            }
        };
        let w = timed_threads(n, args.scaling_secs.unwrap_or(1.0), &model(false));
        let hw = timed_threads(n, args.scaling_secs.unwrap_or(1.0), &model(true));
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
        let l = timed_threads(n, args.scaling_secs.unwrap_or(1.0), &trivial);
        let (w1, hw1, l1) = rows.first().map_or((w, hw, l), |r| {
            (r.writes_per_s, r.handle_writes_per_s, r.loop_per_s)
        });
        rows.push(ScalingRow {
            threads: n,
            writes_per_s: w,
            efficiency: w / (n as f64 * w1),
            handle_writes_per_s: hw,
            handle_efficiency: hw / (n as f64 * hw1),
            loop_per_s: l,
            loop_efficiency: l / (n as f64 * l1),
        });
    }
    rows
}

pub(super) fn print_scaling(
    rows: &[ScalingRow],
    args: &RunArgs,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    writeln!(
        out,
        "write scaling: precise, {} guest, workload {}, {} s per point, {} cores",
        bytes(args.mem()),
        args.workload,
        args.scaling_secs.unwrap_or(1.0),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )?;
    writeln!(
        out,
        "{:>7} {:>12} {:>10} {:>14} {:>10} {:>14} {:>10} {:>7} {:>7}",
        "threads",
        "writes/s",
        "efficiency",
        "handle writes/s",
        "efficiency",
        "trivial loop/s",
        "trivial",
        "ratio",
        "handle"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:>7} {:>12} {:>9.0}% {:>14} {:>9.0}% {:>14} {:>9.0}% {:>7.2} {:>7.2}",
            r.threads,
            human(r.writes_per_s),
            r.efficiency * 100.0,
            human(r.handle_writes_per_s),
            r.handle_efficiency * 100.0,
            human(r.loop_per_s),
            r.loop_efficiency * 100.0,
            r.efficiency / r.loop_efficiency,
            r.handle_efficiency / r.loop_efficiency
        )?;
    }
    Ok(())
}
