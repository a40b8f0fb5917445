//! The vm-memory write path and harvest: `GuestMemoryMmap<AtomicBitmap>` (vm-memory's
//! own backend) against `GuestMemoryMmap<SoftDirtyBitmap>`.
//!
//! ```sh
//! cargo bench --features vm-memory --bench vmm -- --warm-up-time 1 --measurement-time 2
//! ```

#![allow(missing_docs)] // criterion_group! generates an undocumented function.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use softdirty::vmm::SoftDirtyBitmap;
use vm_memory::bitmap::{AtomicBitmap, Bitmap, NewBitmap};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const SIZE: usize = 256 << 20; // 65,536 pages
const PAGES: u64 = (SIZE / 4096) as u64;

fn mem<B: NewBitmap>() -> GuestMemoryMmap<B> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), SIZE)]).unwrap()
}

/// Addresses of a pseudo-random walk over the region (same for both backends).
fn addrs(n: usize) -> Vec<u64> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (SIZE as u64 - 8192)) & !7
        })
        .collect()
}

fn write_path<B: NewBitmap + Bitmap>(c: &mut Criterion, name: &str) {
    let m = mem::<B>();
    let a = addrs(4096);
    let buf = vec![0xabu8; 4096];
    let mut g = c.benchmark_group("vmm_write");
    g.throughput(Throughput::Elements(a.len() as u64));
    // Each iteration: 4,096 write_obj of a u64 at random addresses; after the first
    // pass most pages are already dirty (the steady state between harvests).
    g.bench_function(BenchmarkId::new("write_obj_u64", name), |b| {
        b.iter(|| {
            for (i, &ad) in a.iter().enumerate() {
                m.write_obj(i as u64, GuestAddress(ad)).unwrap();
            }
        })
    });
    g.bench_function(BenchmarkId::new("write_slice_4k", name), |b| {
        b.iter(|| {
            for &ad in &a {
                m.write_slice(black_box(&buf), GuestAddress(ad)).unwrap();
            }
        })
    });
    g.finish();
}

fn writes(c: &mut Criterion) {
    write_path::<AtomicBitmap>(c, "AtomicBitmap");
    write_path::<SoftDirtyBitmap>(c, "SoftDirtyBitmap");
}

/// Harvest of a 256 MiB region with `dirty` pages dirty (scattered), re-dirtied in the
/// setup of every iteration (not timed).
fn harvest(c: &mut Criterion) {
    let ma = mem::<AtomicBitmap>();
    let ms = mem::<SoftDirtyBitmap>();
    let ra = ma.find_region(GuestAddress(0)).unwrap();
    let rs = ms.find_region(GuestAddress(0)).unwrap();
    let ba: &AtomicBitmap = (**ra).bitmap();
    let bs: &SoftDirtyBitmap = (**rs).bitmap();
    let mut g = c.benchmark_group("vmm_harvest");
    for dirty in [0u64, 64, 4096, PAGES] {
        let stride = if dirty == 0 { PAGES } else { PAGES / dirty };
        let mark = |f: &dyn Fn(usize)| {
            if dirty > 0 {
                for p in (0..PAGES).step_by(stride as usize) {
                    f((p * 4096) as usize);
                }
            }
        };
        g.bench_function(BenchmarkId::new("AtomicBitmap_get_and_reset", dirty), |b| {
            b.iter_batched(
                || mark(&|o| ba.mark_dirty(o, 1)),
                |_| black_box(ba.get_and_reset()),
                criterion::BatchSize::SmallInput,
            )
        });
        g.bench_function(BenchmarkId::new("SoftDirtyBitmap_harvest", dirty), |b| {
            b.iter_batched(
                || mark(&|o| bs.mark_dirty(o, 1)),
                |_| {
                    let mut n = 0u64;
                    bs.harvest(|_, c| n += c);
                    black_box(n)
                },
                criterion::BatchSize::SmallInput,
            )
        });
        g.bench_function(
            BenchmarkId::new("SoftDirtyBitmap_get_and_reset", dirty),
            |b| {
                b.iter_batched(
                    || mark(&|o| bs.mark_dirty(o, 1)),
                    |_| black_box(bs.get_and_reset()),
                    criterion::BatchSize::SmallInput,
                )
            },
        );
    }
    g.finish();
}

criterion_group!(benches, writes, harvest);
criterion_main!(benches);
