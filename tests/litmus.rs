//! A hardware litmus test of the data-ordering contract of marking: the store-buffering
//! shape between a writer and a migration thread.
//!
//! Each iteration `i` starts with the page soft-dirty (pre-marked) and its data word old
//! (`i - 1`); both threads leave a spin barrier together and then:
//!
//! ```text
//! writer:   data.store(i, Relaxed); mark_dirty(page)
//! migrator: dirty = get_and_clear(page); seen = data.load(Relaxed)
//!           (the load in the harvest's sink, as a migration copies a reported page)
//! ```
//!
//! The contract a dirty log must keep: the migrator either copies the new data, or the
//! page is dirty after the iteration (so the next round copies it). A **lost write** is
//! the migrator's harvest reporting the page, its copy reading the old data, **and** the
//! page clean afterwards: the writer's mark found the page still dirty (the pre-mark, not
//! yet harvested) and did nothing, while its data store was not yet visible to the
//! migrator. With a test-before-set mark (an already-dirty page costs one relaxed load)
//! this is the store-buffering outcome, which x86-64 allows (a store may wait in the store
//! buffer while a later load completes); a mark that always does a read-modify-write on
//! the bit (vm-memory's `AtomicBitmap`, one `SeqCst` `fetch_or`) forbids it.
//!
//! Shapes: softdirty's core (`PageBitmap::mark_dirty` / `PageBitmap::harvest`), the core
//! marked by a light writer (`PageBitmap::mark_dirty_light`: no fence in the mark, a
//! `membarrier` in the harvest, `softdirty::barrier`; the marks of a writer handle), softdirty
//! through vm-memory (`Bitmap::mark_dirty` / `SoftDirtyBitmap::harvest` on
//! `softdirty::vmm::SoftDirtyBitmap`, feature `vm-memory`; light too, the bitmap holding
//! the registration, where `membarrier` is available) and, as the control, vm-memory's
//! own `AtomicBitmap` (`mark_dirty` / `get_and_reset`). The test prints the lost count of
//! each shape and requires 0 for every shape.
//!
//! `SOFTDIRTY_LITMUS_ITERS` sets the iterations per shape (default 2,000,000, a few
//! seconds in release on 2 cores; the light shapes run an eighth of them);
//! `SOFTDIRTY_LITMUS_ONLY=TEXT` runs only the shapes whose name contains TEXT. As a measurement:
//! `cargo test --release --features vm-memory --test litmus -- --nocapture`.

use softdirty::bitmap::PageBitmap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};
use std::time::Instant;
use vm_memory::bitmap::{AtomicBitmap, Bitmap};

const PAGE: usize = 4096;
/// The page under test (in a 64-page bitmap; any word works).
const P: usize = 5;

/// One bitmap under test: the three operations of the shape.
trait Shape: Sync {
    /// The writer's mark of page `P`.
    fn mark(&self);
    /// The migrator's get-and-clear, then its copy of the data (`copy`), as early as the
    /// interface allows (in the harvest's sink where it has one): (was page `P` reported,
    /// the data copied).
    fn take(&self, copy: &dyn Fn() -> u64) -> (bool, u64);
    /// Is page `P` dirty (quiescent)?
    fn dirty(&self) -> bool;
    /// The writer thread's mark, made on that thread (a writer handle lives there).
    fn writer_mark(&self) -> Box<dyn FnMut() + '_> {
        Box::new(move || self.mark())
    }
    /// Iterations per `SOFTDIRTY_LITMUS_ITERS` iterations of the core shape (the light
    /// writer's harvests call `membarrier`, some µs each).
    fn share(&self) -> u64 {
        1
    }
}

struct Core(PageBitmap);
impl Core {
    /// The harvest, and the copy in its sink.
    fn take_from(b: &PageBitmap, copy: &dyn Fn() -> u64) -> (bool, u64) {
        let mut got = None;
        b.harvest(0, 64, |r| {
            if r.first <= P as u64 && (P as u64) < r.first + r.count {
                got = Some(copy());
            }
        });
        got.map_or_else(|| (false, copy()), |d| (true, d))
    }
}
impl Shape for Core {
    fn mark(&self) {
        self.0.mark_dirty(P as u64, 1);
    }
    fn take(&self, copy: &dyn Fn() -> u64) -> (bool, u64) {
        Core::take_from(&self.0, copy)
    }
    fn dirty(&self) -> bool {
        self.0.page(P as u64).clean == 0
    }
}

#[cfg(feature = "vm-memory")]
struct Vmm(softdirty::vmm::SoftDirtyBitmap);
#[cfg(feature = "vm-memory")]
impl Shape for Vmm {
    fn mark(&self) {
        Bitmap::mark_dirty(&self.0, P * PAGE + 8, 8);
    }
    fn take(&self, copy: &dyn Fn() -> u64) -> (bool, u64) {
        let mut got = None;
        self.0.harvest(|first, n| {
            if first <= P as u64 && (P as u64) < first + n {
                got = Some(copy());
            }
        });
        got.map_or_else(|| (false, copy()), |d| (true, d))
    }
    fn dirty(&self) -> bool {
        self.0.is_page_dirty(P)
    }
    fn share(&self) -> u64 {
        // its marks are light where `membarrier` is available (`softdirty::vmm`), so each
        // harvest calls it, as `CoreLight`'s do
        if self.0.light_marks() {
            8
        } else {
            1
        }
    }
}

/// The core marked by a light writer (`PageBitmap::mark_dirty_light`, `softdirty::barrier`):
/// no fence in the mark; the harvest calls `membarrier` before its sink sees a run. Broken
/// twin `no_heavy_barrier`: the harvest does not call it. Where `membarrier` is missing the
/// writer falls back to the fenced mark.
struct CoreLight(PageBitmap);
impl Shape for CoreLight {
    fn mark(&self) {
        self.0.mark_dirty(P as u64, 1);
    }
    fn writer_mark(&self) -> Box<dyn FnMut() + '_> {
        match softdirty::barrier::LightWriter::register() {
            Some(light) => Box::new(move || {
                self.0.mark_dirty_light(&light, P as u64, 1);
            }),
            None => {
                eprintln!("litmus: membarrier unavailable: the light shape marks with a fence");
                Box::new(move || self.mark())
            }
        }
    }
    fn take(&self, copy: &dyn Fn() -> u64) -> (bool, u64) {
        Core::take_from(&self.0, copy)
    }
    fn dirty(&self) -> bool {
        self.0.page(P as u64).clean == 0
    }
    fn share(&self) -> u64 {
        8
    }
}

struct Atomic(AtomicBitmap);
impl Shape for Atomic {
    fn mark(&self) {
        Bitmap::mark_dirty(&self.0, P * PAGE + 8, 8);
    }
    fn take(&self, copy: &dyn Fn() -> u64) -> (bool, u64) {
        let hit = self.0.get_and_reset()[P / 64] & (1 << (P % 64)) != 0;
        (hit, copy())
    }
    fn dirty(&self) -> bool {
        self.0.is_bit_set(P)
    }
}

/// Spins until `f` holds; yields now and then, in case the other thread was descheduled.
#[inline]
fn spin(f: impl Fn() -> bool) {
    let mut n = 0u32;
    while !f() {
        n += 1;
        if n % 4096 == 0 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// A delay of about `n` cycles (finer than `spin_loop`'s pause, which is ~100 cycles on
/// some x86 parts): the store-buffering window is a few tens of cycles wide.
#[inline]
fn pause(n: u32) {
    let mut x = 0u32;
    for _ in 0..n {
        x = std::hint::black_box(x + 1);
    }
}

/// Runs `iters` iterations of the shape; returns (lost, reported-with-old-data-but-dirty,
/// seconds).
fn run(b: &dyn Shape, iters: u64) -> (u64, u64, f64) {
    // data: the page's content; go: the iteration both threads may start (the migrator
    // sets it); wdone: the last iteration the writer finished.
    let data = AtomicU64::new(0);
    let go = AtomicU64::new(0);
    let wdone = AtomicU64::new(0);
    let wdelay = AtomicU32::new(0);
    b.mark(); // iteration 1 starts dirty with old data (0)
    let t0 = Instant::now();
    let (mut lost, mut caught) = (0u64, 0u64);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut mark = b.writer_mark();
            let mut rng = 0x2545_f491u32;
            for i in 1..=iters {
                spin(|| go.load(Acquire) == i);
                rng ^= rng << 13;
                rng ^= rng >> 17;
                rng ^= rng << 5;
                pause(wdelay.load(Relaxed) + rng % 32);
                data.store(i, Relaxed);
                mark();
                wdone.store(i, Release);
            }
        });
        // The migrator starts `delay` (plus jitter) spin steps after releasing the writer,
        // and the writer `wdelay` steps after seeing the release, adapted so that the two
        // sides keep meeting: the migrator later (or the writer earlier) when the harvest
        // ran before the writer's store, the other way when the store was already visible.
        let (mut delay, mut rng) = (0u32, 0x9e37_79b9u32);
        for i in 1..=iters {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            let wait = delay + rng % 32;
            go.store(i, Release);
            pause(wait);
            let (reported, seen) = b.take(&|| data.load(Relaxed));
            spin(|| wdone.load(Acquire) == i);
            let w = wdelay.load(Relaxed);
            if seen == i {
                if delay > 0 {
                    delay -= 1;
                } else {
                    wdelay.store((w + 1).min(1 << 16), Relaxed);
                }
            } else if reported {
                if b.dirty() {
                    caught += 1; // the writer's mark made it dirty again: fine
                    if w > 0 {
                        wdelay.store(w - 1, Relaxed);
                    } else {
                        delay = (delay + 1).min(1 << 16);
                    }
                } else {
                    lost += 1;
                }
            }
            // The next iteration starts dirty, with this iteration's data as the old.
            b.mark();
        }
    });
    (lost, caught, t0.elapsed().as_secs_f64())
}

#[test]
fn store_buffering_marks_lose_no_write() {
    let iters: u64 = std::env::var("SOFTDIRTY_LITMUS_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let page = NonZeroUsize::new(PAGE).unwrap();
    // Made when run, not all at once: a vm-memory bitmap holds a light-writer registration
    // while it lives, which would make every other shape's harvests call `membarrier` too.
    type Make = Box<dyn Fn() -> Box<dyn Shape>>;
    let mut shapes: Vec<(&str, Make)> = vec![
        (
            "softdirty core (PageBitmap::mark_dirty / harvest)",
            Box::new(|| Box::new(Core(PageBitmap::new(64, false)))),
        ),
        (
            "softdirty core, light writer (PageBitmap::mark_dirty_light / harvest)",
            Box::new(|| Box::new(CoreLight(PageBitmap::new(64, false)))),
        ),
        #[cfg(feature = "vm-memory")]
        (
            "softdirty vm-memory, light writer (Bitmap::mark_dirty / SoftDirtyBitmap::harvest)",
            Box::new(move || Box::new(Vmm(softdirty::vmm::SoftDirtyBitmap::new(64 * PAGE, page)))),
        ),
        (
            "vm-memory AtomicBitmap (mark_dirty / get_and_reset), control",
            Box::new(move || Box::new(Atomic(AtomicBitmap::new(64 * PAGE, page)))),
        ),
    ];
    // `SOFTDIRTY_LITMUS_ONLY=TEXT`: only the shapes whose name contains TEXT (the twin
    // runs of scripts/stress-twins.sh, which care about one shape).
    let only = std::env::var("SOFTDIRTY_LITMUS_ONLY").unwrap_or_default();
    shapes.retain(|(name, _)| name.contains(only.as_str()));
    assert!(
        !shapes.is_empty(),
        "no litmus shape's name contains {only:?}"
    );
    let mut bad = vec![];
    for (name, make) in shapes.drain(..) {
        let b = make();
        let iters = iters / b.share();
        let (lost, caught, secs) = run(&*b, iters);
        eprintln!(
            "litmus {name}: {lost} lost writes in {iters} iterations \
             ({caught} old copies caught by a dirty page, {secs:.2} s)"
        );
        if lost != 0 {
            bad.push(format!("{name}: {lost} lost writes"));
        }
    }
    #[cfg(not(feature = "vm-memory"))]
    eprintln!("litmus: the vm-memory shape needs --features vm-memory");
    assert!(
        bad.is_empty(),
        "store buffering lost writes (data store not ordered before the mark's \
         test): {}",
        bad.join("; ")
    );
}
