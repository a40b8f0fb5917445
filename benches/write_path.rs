//! Cost of the write path (issue #3): ns per simulated store through
//! `AddressSpace::write` (epoch pin, index lookup, bitmap test-before-set), for a page
//! that is already soft-dirty (no RMW) and for a first write after `clear_refs` (the
//! clean→dirty RMW, plus the summary flag), single-threaded and with 2 threads storing
//! to disjoint halves of one mapping. The 2-thread figure is wall time divided by the
//! stores of one thread (each thread does `n`), so it equals the 1-thread figure when
//! the threads do not slow each other down.
//!
//! ```text
//! cargo bench --bench write_path -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! `SOFTDIRTY_BENCH_THREADS=1,2,4,8,16` picks other thread counts (default `1,2`), for
//! machines with more cores.

// `criterion_group!` generates an undocumented function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use softdirty::mm::{AddressSpace, Placement, Sharing};
use softdirty::mode::Mode;
use softdirty::prot::Prot;
use std::hint::black_box;
use std::time::{Duration, Instant};

const PAGE: u64 = 4096;
/// Pages per thread: 64 Ki pages (16 chunks, 1 Ki bitmap words).
const PAGES: u64 = 64 * 1024;

fn space(threads: u64) -> (AddressSpace, u64) {
    let mm = AddressSpace::new(Mode::Precise);
    let a = mm
        .mmap(
            0,
            threads * PAGES * PAGE,
            Prot::RW,
            Sharing::Private,
            Placement::Hint,
        )
        .unwrap();
    (mm, a)
}

/// `n` stores by each of `threads` threads, thread `t` on pages `[t*PAGES, (t+1)*PAGES)`,
/// in batches of at most `PAGES`; with `first`, `clear_refs` (untimed) before each batch
/// so every store is a first write.
fn run(mm: &AddressSpace, a: u64, threads: u64, n: u64, first: bool) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = n;
    while left > 0 {
        let batch = left.min(PAGES);
        left -= batch;
        if first {
            mm.clear_refs(4).unwrap();
        }
        let t0 = Instant::now();
        if threads == 1 {
            for i in 0..batch {
                black_box(mm.write(a + i * PAGE, 1)).unwrap();
            }
        } else {
            std::thread::scope(|s| {
                for t in 0..threads {
                    s.spawn(move || {
                        let base = a + t * PAGES * PAGE;
                        for i in 0..batch {
                            black_box(mm.write(base + i * PAGE, 1)).unwrap();
                        }
                    });
                }
            });
        }
        total += t0.elapsed();
    }
    total
}

/// The thread counts to measure: `SOFTDIRTY_BENCH_THREADS` (comma list), default 1 and 2.
fn thread_counts() -> Vec<u64> {
    std::env::var("SOFTDIRTY_BENCH_THREADS")
        .ok()
        .map(|v| {
            v.split(',')
                .map(|t| t.trim().parse().expect("SOFTDIRTY_BENCH_THREADS: numbers"))
                .filter(|&t| t > 0)
                .collect()
        })
        .unwrap_or_else(|| vec![1, 2])
}

fn write_path(c: &mut Criterion) {
    for threads in thread_counts() {
        let mut g = c.benchmark_group(format!("write_path/{threads}t"));
        g.sample_size(20);
        let (mm, a) = space(threads);
        // Materialize every chunk and make every page dirty once.
        run(&mm, a, threads, PAGES, false);
        g.bench_function("already_dirty", |b| {
            b.iter_custom(|n| run(&mm, a, threads, n, false))
        });
        g.bench_function("first_write", |b| {
            b.iter_custom(|n| run(&mm, a, threads, n, true))
        });
        g.finish();
    }
}

criterion_group!(benches, write_path);
criterion_main!(benches);
