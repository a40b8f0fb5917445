//! Multi-threaded stress test of the concurrent protocol (issue #3), on std threads.
//!
//! Two writer threads store to random pages and record every completed write in a
//! ledger; one thread churns the structure; one harvests with PAGEMAP_SCAN + clear
//! (get-and-clear). Region A (ledgered, checked exactly) sees mprotect splits and merges;
//! region B (churn zone, writes may fail with EFAULT) sees munmap/mmap of holes and
//! mremap moves. At the end, for every page of A: each page written at least once was
//! harvested or is still soft-dirty, no page was harvested more often than it was
//! written, and a page no one wrote was never reported and is clean (precise mode).
//!
//! `SOFTDIRTY_STRESS_WRITES` sets the number of writes (default 10^7, about 10-30 s in
//! release on 2 cores); the long manual mode is
//! `SOFTDIRTY_STRESS_WRITES=1000000000 cargo test --release --test stress -- --nocapture`.

use softdirty::errno::Errno;
use softdirty::mm::{AddressSpace, Placement};
use softdirty::mode::Mode;
use softdirty::prot::Prot;
use softdirty::scan::{ScanArgs, PAGE_IS_SOFT_DIRTY};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAGE: u64 = 4096;
const A_PAGES: u64 = 16 * 1024; // four 4096-page chunks
const B_PAGES: u64 = 1024;

/// xorshift64*: a tiny per-thread generator, so the write loop stays cheap.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One get-and-clear scan of `[start, start + pages)`; calls `f(page)` for every page
/// it reported (and cleared).
fn harvest(mm: &AddressSpace, start: u64, pages: u64, mut f: impl FnMut(u64)) {
    let args = ScanArgs {
        start,
        end: start + pages * PAGE,
        mask: PAGE_IS_SOFT_DIRTY,
        ret: PAGE_IS_SOFT_DIRTY,
        clear: true,
        vec_len: pages,
        ..Default::default()
    };
    let r = mm.scan(&args).expect("scan");
    for reg in r.regions {
        for p in (reg.start - start) / PAGE..(reg.end - start) / PAGE {
            f(p);
        }
    }
}

#[test]
fn writers_churn_and_harvest_lose_nothing() {
    let total: u64 = std::env::var("SOFTDIRTY_STRESS_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let writers = 2u64;
    let mm = Arc::new(AddressSpace::new(Mode::Precise));
    let a = mm
        .mmap(0, A_PAGES * PAGE, Prot::RW, false, Placement::Hint)
        .unwrap();
    let b = mm
        .mmap(0, B_PAGES * PAGE, Prot::RW, false, Placement::Hint)
        .unwrap();
    // A second home for B's mremap moves: reserve, then free it.
    let b2 = mm
        .mmap(0, B_PAGES * PAGE, Prot::RW, false, Placement::Hint)
        .unwrap();
    mm.munmap(b2, B_PAGES * PAGE).unwrap();
    mm.clear_refs(4).unwrap();
    assert!(mm.softdirty_runs(a, A_PAGES * PAGE).is_empty());

    let writes: Arc<Vec<AtomicU64>> = Arc::new((0..A_PAGES).map(|_| AtomicU64::new(0)).collect());
    let reports: Arc<Vec<AtomicU64>> = Arc::new((0..A_PAGES).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let b_home = Arc::new(AtomicU64::new(b));
    let t0 = Instant::now();

    let mut hs = vec![];
    for w in 0..writers {
        let (mm, writes, b_home) = (mm.clone(), writes.clone(), b_home.clone());
        hs.push(std::thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w + 1));
            let (mut efault, mut n) = (0u64, 0u64);
            while n < total / writers {
                let r = rng.next();
                n += 1;
                if r % 16 == 0 {
                    // churn zone: may be unmapped or moved under us
                    let p = (r >> 8) % B_PAGES;
                    match mm.write(b_home.load(Relaxed) + p * PAGE, 1) {
                        Ok(()) => {}
                        Err(Errno::EFAULT) => efault += 1,
                        Err(e) => panic!("write to churn zone: {e:?}"),
                    }
                } else {
                    let p = (r >> 8) % A_PAGES;
                    mm.write(a + p * PAGE, 1)
                        .expect("region A is always writable");
                    writes[p as usize].fetch_add(1, Release);
                }
            }
            efault
        }));
    }
    let churner = {
        let (mm, done, b_home) = (mm.clone(), done.clone(), b_home.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(0xdead_beef);
            let mut ops = 0u64;
            while !done.load(Acquire) {
                let r = rng.next();
                // A: split and merge with mprotect (RW <-> RWX keeps every page writable).
                let s = (r >> 4) % (A_PAGES - 64);
                let len = 1 + (r >> 24) % 64;
                let prot = if r & 1 == 0 { Prot::RWX } else { Prot::RW };
                mm.mprotect(a + s * PAGE, len * PAGE, prot).unwrap();
                // B: a hole unmapped and mapped again, or the whole zone moved.
                let home = b_home.load(Relaxed);
                if r & 6 == 0 {
                    let to = if home == b { b2 } else { b };
                    let got = mm.mremap(home, B_PAGES * PAGE, B_PAGES * PAGE, true, Some(to));
                    assert_eq!(got, Ok(to));
                    b_home.store(to, Relaxed);
                } else {
                    let hs = (r >> 40) % (B_PAGES - 16);
                    mm.munmap(home + hs * PAGE, 16 * PAGE).unwrap();
                    mm.mmap(
                        home + hs * PAGE,
                        16 * PAGE,
                        Prot::RW,
                        false,
                        Placement::Fixed,
                    )
                    .unwrap();
                }
                ops += 1;
            }
            ops
        })
    };
    let harvester = {
        let (mm, done, reports, b_home) =
            (mm.clone(), done.clone(), reports.clone(), b_home.clone());
        std::thread::spawn(move || {
            let mut scans = 0u64;
            while !done.load(Acquire) {
                harvest(&mm, a, A_PAGES, |p| {
                    reports[p as usize].fetch_add(1, Relaxed);
                });
                harvest(&mm, b_home.load(Relaxed), B_PAGES, |_| {});
                scans += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            scans
        })
    };
    let efaults: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
    done.store(true, Release);
    let churn_ops = churner.join().unwrap();
    let scans = harvester.join().unwrap();
    let wall = t0.elapsed();

    // Precise check of region A.
    let dirty_now: std::collections::HashSet<u64> = mm
        .softdirty_runs(a, A_PAGES * PAGE)
        .into_iter()
        .flat_map(|(s, e)| s..e)
        .collect();
    let (mut written_pages, mut ledger) = (0u64, 0u64);
    for p in 0..A_PAGES {
        let w = writes[p as usize].load(Acquire);
        let r = reports[p as usize].load(Relaxed);
        let d = dirty_now.contains(&p);
        ledger += w;
        if w > 0 {
            written_pages += 1;
            assert!(
                r >= 1 || d,
                "page {p}: {w} writes, never harvested and not dirty"
            );
        } else {
            assert!(
                r == 0 && !d,
                "page {p}: never written but reported {r}x / dirty {d}"
            );
        }
        assert!(
            r <= w,
            "page {p}: harvested {r} times but written only {w} times"
        );
    }
    // And a final harvest takes exactly what is dirty.
    let mut last = vec![];
    harvest(&mm, a, A_PAGES, |p| last.push(p));
    assert_eq!(last.len(), dirty_now.len());
    assert!(mm.softdirty_runs(a, A_PAGES * PAGE).is_empty());
    eprintln!(
        "stress: {total} writes ({ledger} ledgered on {written_pages} pages, {efaults} EFAULT in \
         the churn zone), {churn_ops} churn rounds, {scans} harvest scans, {:.2} s, {:.1} ns/write",
        wall.as_secs_f64(),
        wall.as_nanos() as f64 / total as f64
    );
}
