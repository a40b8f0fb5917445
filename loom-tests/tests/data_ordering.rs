#![cfg(loom)]
//! loom models of the data-ordering contract (ARCHITECTURE.md, contract 0: "store your
//! data, then mark: a harvest that takes the page reads your data after it, or the page
//! stays dirty") and of two owners harvesting one bitmap, on the production code: a
//! [`Producer`], vm-memory's `Bitmap::mark_dirty` on a [`SoftDirtyBitmap`], a
//! [`SlotRegistry`] slot, `PageBitmap::harvest`.
//!
//! The guest data of page 0 is a loom `AtomicU64` accessed `Relaxed` (a plain store as
//! far as ordering goes). Every data-ordering model is the store-buffering shape of the
//! bug (issue "No write lost, for real", point 3): page 0 is already dirty, so the mark
//! only loads; the harvest get-and-clears, then "copies" the page (reads the data). A
//! write is lost iff the copy did not see it and page 0 is clean afterwards.
//! Broken twins: `mark_no_fence` (no fence at the start of a mark), `harvest_no_fence`
//! (no fence between the get-and-clear and handing the pages out).

use loom::sync::atomic::AtomicU64;
use loom::sync::Arc;
use loom::thread;
use softdirty::bitmap::{Bits, Mark, PageBitmap, Run};
use softdirty::producer::Producer;
use softdirty::slots::{ConsumerConfig, SlotRegistry};
use softdirty::vmm::SoftDirtyBitmap;
use softdirty_loom_tests::{check, check2, race};
use std::num::NonZeroUsize;
use std::sync::atomic::Ordering::Relaxed;
use vm_memory::bitmap::Bitmap;

const PAGE: usize = 4096;

fn pages_where(b: &PageBitmap, pick: impl Fn(Bits) -> u64) -> Vec<u64> {
    let mut out = vec![];
    for w in (0..b.pages()).step_by(64) {
        let bits = pick(b.window(w));
        for i in 0..64.min(b.pages() - w) {
            if bits >> i & 1 == 1 {
                out.push(w + i);
            }
        }
    }
    out
}

fn dirty(b: &PageBitmap) -> Vec<u64> {
    pages_where(b, |x| !x.clean)
}

fn harvest_pages(b: &PageBitmap) -> Vec<u64> {
    let mut out = vec![];
    b.harvest(0, b.pages(), |r: Run| {
        out.extend(r.first..r.first + r.count)
    });
    out
}

/// The verdict of a store-buffering execution: `copy` is what the harvest read from
/// page 0's data after taking it (`None`: it did not report page 0), `still_dirty` the
/// state of page 0 after both threads joined.
fn assert_not_lost(copy: Option<u64>, still_dirty: bool) {
    assert!(
        copy == Some(1) || still_dirty,
        "write lost: the harvest copied {copy:?} and page 0 is clean"
    );
}

/// Producer::mark ∥ PageBitmap::harvest. Page 0 is dirty; the writer stores its data and
/// marks page 0 through a [`Producer`] (the mark only loads: the page is dirty); the
/// migration thread get-and-clears with `PageBitmap::harvest` and copies page 0 if
/// reported. Broken twins: `mark_no_fence`, `harvest_no_fence`.
#[test]
fn producer_mark_vs_harvest() {
    check2(
        "producer_mark_vs_harvest",
        3,
        ["writer-spawned", "harvest-spawned"],
        |swap| {
            let bits = Arc::new(PageBitmap::new(128, false));
            let p = Producer::new(bits.clone());
            p.mark(0, 1).unwrap();
            let data = Arc::new(AtomicU64::new(0));
            let (d1, d2, b2) = (data.clone(), data.clone(), bits.clone());
            let ((), copy) = race(
                swap,
                move || {
                    d1.store(1, Relaxed);
                    p.mark(0, 1).unwrap();
                },
                move || {
                    let took = harvest_pages(&b2).contains(&0);
                    took.then(|| d2.load(Relaxed))
                },
            );
            assert_not_lost(copy, dirty(&bits).contains(&0));
        },
    );
}

/// vm-memory's `Bitmap::mark_dirty` on a [`SoftDirtyBitmap`] ∥
/// `SoftDirtyBitmap::get_and_reset`: the VMM's write path (store, then mark) against a
/// migration round. Same shape and property as [`producer_mark_vs_harvest`]. Broken
/// twins: `mark_no_fence`, `harvest_no_fence`.
#[test]
fn vmm_mark_dirty_vs_get_and_reset() {
    check2(
        "vmm_mark_dirty_vs_get_and_reset",
        3,
        ["writer-spawned", "harvest-spawned"],
        |swap| {
            let bm = SoftDirtyBitmap::new(128 * PAGE, NonZeroUsize::new(PAGE).unwrap());
            bm.mark_dirty(0, 8);
            let data = Arc::new(AtomicU64::new(0));
            let (d1, d2, w, h) = (data.clone(), data.clone(), bm.clone(), bm.clone());
            let ((), copy) = race(
                swap,
                move || {
                    d1.store(1, Relaxed);
                    w.mark_dirty(0, 8); // one 8-byte store at guest offset 0
                },
                move || {
                    let took = h.get_and_reset()[0] & 1 == 1;
                    took.then(|| d2.load(Relaxed))
                },
            );
            assert_not_lost(copy, bm.is_page_dirty(0));
        },
    );
}

/// A slot's producer ∥ the slot consumer's `get_dirty_log` (a get-and-clear for a
/// consumer without manual protect). The registry's `DashMap` is invisible to loom; it
/// is only written before the race (slot and consumer registration) and only read
/// during it (`get_dirty_log` looks the slot up; the producer was taken before), so no
/// modelled thread ever waits on it. Broken twins: `mark_no_fence`, `harvest_no_fence`.
#[test]
fn slot_producer_vs_get_dirty_log() {
    check2(
        "slot_producer_vs_get_dirty_log",
        3,
        ["writer-spawned", "harvest-spawned"],
        |swap| {
            let reg = Arc::new(SlotRegistry::new());
            let c = reg.register_consumer(ConsumerConfig::default());
            let p = reg.register_slot(0, 0, 128).unwrap();
            p.mark(0, 1).unwrap();
            let data = Arc::new(AtomicU64::new(0));
            let (d1, d2, r2, p1) = (data.clone(), data.clone(), reg.clone(), p.clone());
            let ((), copy) = race(
                swap,
                move || {
                    d1.store(1, Relaxed);
                    p1.mark(0, 1).unwrap();
                },
                move || {
                    let log = r2.get_dirty_log(c, 0).unwrap();
                    let took = log.runs().first().is_some_and(|&(f, _)| f == 0);
                    took.then(|| d2.load(Relaxed))
                },
            );
            assert_not_lost(copy, p.is_dirty(0));
        },
    );
}

/// Two owners harvest one bitmap concurrently (a `SoftDirtyBitmap` and a slot sharing
/// it, played by two threads calling `PageBitmap::harvest`), then a write, then a final
/// harvest. Word 0 starts fully dirty. Property: each of the 64 pages is reported by
/// exactly one of the two racing harvests; the later write flips its page
/// (`faults == 1`) and the final harvest reports it; nothing stays dirty.
///
/// Not rejected by `no_clear_lock`: without the clear lock, two whole-range harvests are
/// still serialized per word by the summary `fetch_and` (an RMW: one of them takes the
/// word's flag, the other skips the word), and only a fault that flips a bit the winner
/// already cleaned can set the flag again, which the loser then reports once. See
/// [`two_owners_harvest_vs_put_back`] for the race the lock is needed for.
#[test]
fn two_owners_harvest_vs_write() {
    check2(
        "two_owners_harvest_vs_write",
        3,
        ["writer-spawned", "harvest-spawned"],
        |swap| {
            let bits = Arc::new(PageBitmap::new(128, false));
            bits.mark_dirty(0, 64);
            let (b1, b2) = (bits.clone(), bits.clone());
            let (h1, h2) = race(swap, move || harvest_pages(&b1), move || harvest_pages(&b2));
            let mut all: Vec<u64> = h1.iter().chain(&h2).copied().collect();
            all.sort_unstable();
            assert_eq!(
                all,
                (0..64).collect::<Vec<u64>>(),
                "pages lost or reported twice: {h1:?} / {h2:?}"
            );
            let m = bits.mark_dirty(5, 1);
            assert_eq!(m, Mark::Done { faults: 1 }, "page 5 was left dirty");
            assert_eq!(harvest_pages(&bits), vec![5], "final harvest");
            assert!(dirty(&bits).is_empty(), "dirty behind a clear summary bit");
        },
    );
}

/// Two owners harvest concurrently with a writer (three threads): the writer marks page
/// 70 (a clean word) and page 5 (in word 0, fully dirty at the start). Every page is
/// reported at most once per write, and a write is reported by one of the harvests or
/// still dirty; nothing dirty hides behind a clear summary bit. Not rejected by
/// `no_clear_lock`, for the reason given at [`two_owners_harvest_vs_write`].
#[test]
fn two_owners_harvest_vs_concurrent_write() {
    check("two_owners_harvest_vs_concurrent_write", 2, || {
        let bits = Arc::new(PageBitmap::new(128, false));
        bits.mark_dirty(0, 64);
        let (b1, b2, bw) = (bits.clone(), bits.clone(), bits.clone());
        let w = thread::spawn(move || {
            let a = bw.mark_dirty(70, 1);
            let b = bw.mark_dirty(5, 1);
            (a, b)
        });
        let h = thread::spawn(move || harvest_pages(&b1));
        let h2 = harvest_pages(&b2);
        let (m70, m5) = w.join().unwrap();
        let h1 = h.join().unwrap();
        let last = harvest_pages(&bits);
        let count = |p: u64| {
            h1.iter()
                .chain(&h2)
                .chain(&last)
                .filter(|&&x| x == p)
                .count()
        };
        assert_eq!(m70, Mark::Done { faults: 1 });
        assert_eq!(count(70), 1, "page 70: {h1:?} / {h2:?} / {last:?}");
        let Mark::Done { faults } = m5 else {
            panic!("{m5:?}")
        };
        // Pre-dirty plus, if the write flipped it clean -> dirty, once more.
        assert_eq!(
            count(5),
            1 + faults as usize,
            "page 5: {h1:?} / {h2:?} / {last:?}"
        );
        for p in (0..64).filter(|&p| p != 5) {
            assert_eq!(count(p), 1, "page {p}: {h1:?} / {h2:?} / {last:?}");
        }
        assert!(dirty(&bits).is_empty(), "dirty behind a clear summary bit");
    });
}

/// Two owners harvest one bitmap concurrently while a third party puts page 5 back
/// (`PageBitmap::set_clean(5, 1, false)`: a rollback that re-dirties a page without a
/// fault, which sets the word's summary flag unconditionally); then a write and a final
/// harvest. Word 0 starts fully dirty. Property: every page of word 0 but 5 is reported
/// exactly once by the two racing harvests (page 5 once or twice: before and after the
/// put-back); the later write flips page 7 and the final harvest reports it; nothing
/// stays dirty. Broken twin `no_clear_lock`: the first harvest takes the flag and loads
/// the all-dirty word, the put-back sets the flag again, the second harvest takes it and
/// the word, and the first one's plain store (`take_word`) then reports all 64 pages a
/// second time.
#[test]
fn two_owners_harvest_vs_put_back() {
    check("two_owners_harvest_vs_put_back", 2, || {
        let bits = Arc::new(PageBitmap::new(128, false));
        bits.mark_dirty(0, 64);
        let (b1, b2, b3) = (bits.clone(), bits.clone(), bits.clone());
        let h = thread::spawn(move || harvest_pages(&b1));
        let z = thread::spawn(move || b3.set_clean(5, 1, false));
        let h2 = harvest_pages(&b2);
        let h1 = h.join().unwrap();
        z.join().unwrap();
        let count = |p: u64| h1.iter().chain(&h2).filter(|&&x| x == p).count();
        for p in (0..64).filter(|&p| p != 5) {
            assert_eq!(count(p), 1, "page {p} reported twice: {h1:?} / {h2:?}");
        }
        let m = bits.mark_dirty(7, 1);
        assert_eq!(m, Mark::Done { faults: 1 }, "page 7 was left dirty");
        let last = harvest_pages(&bits);
        assert!((1..=2).contains(&(count(5) + last.iter().filter(|&&x| x == 5).count())));
        assert!(last.contains(&7), "final harvest {last:?}");
        assert!(dirty(&bits).is_empty(), "dirty behind a clear summary bit");
    });
}
