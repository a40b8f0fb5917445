//! Marking and harvest benchmarks, softdirty side by side with rust-vmm vm-memory's
//! `AtomicBitmap` (and our own sequential path for the parallel harvest), in one run.
//!
//! The workloads are `softdirty_cli::bench::cases()`, the same ones `softdirty bench` runs;
//! see that module for what each case measures. Kernel rows (`kernel1g/*`) compare with
//! figures quoted from `kernel-oracle.md`, so only our side is benchmarked here.
//!
//! ```text
//! CARGO_TARGET_DIR=... cargo bench --bench harvest -- --warm-up-time 1 --measurement-time 3
//! cargo bench --bench harvest -- mark256        # one group
//! ```

// `criterion_group!` generates an undocumented function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};

fn harvest(c: &mut Criterion) {
    for case in softdirty_cli::bench::cases(None) {
        let mut g = c.benchmark_group(case.name);
        g.sample_size(20);
        let mut ours = case.ours;
        g.bench_function("softdirty", |b| b.iter_custom(|n| ours(n)));
        match case.baseline_side {
            Ok(mut base) => {
                g.bench_function(case.baseline, |b| b.iter_custom(|n| base(n)));
            }
            Err(ns) => eprintln!("{}: {} = {:.0} ns (quoted)", case.name, case.baseline, ns),
        }
        g.finish();
    }
}

criterion_group!(benches, harvest);
criterion_main!(benches);
