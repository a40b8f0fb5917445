//! The harvest protocols of issue 17, each against concurrent writers with one stress
//! ledger (`stress`, `check_ledger`): every page written ends up in a committed harvest
//! that returned after its last write started, or in the last harvest.
//!
//! - Transactional harvests: `AddressSpace::begin_harvest` and
//!   `vmm::SoftDirtyBitmap::begin_harvest` commit or abort; an abort gives every page
//!   back, merged with the writes made meanwhile (broken twin `restore_snapshot`, also
//!   rejected by the loom model `address_space::harvest_abort_vs_write`).
//! - Independent consumers of an address space (`softdirty::consumers`).
//! - Dirty rings (`softdirty::ring`; broken twin `ring_no_overflow`, also rejected by the
//!   loom model `ring::overflow_vs_harvest`).

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use softdirty::linux::PAGE_SIZE;
use softdirty::mm::{AddressSpace, Placement, Sharing};
use softdirty::mode::Mode;
use softdirty::prot::Prot;

const P: u64 = PAGE_SIZE;

fn space(mode: Mode, pages: u64) -> (AddressSpace, u64) {
    let mm = AddressSpace::new(mode);
    let a = mm
        .mmap(0, pages * P, Prot::RW, Sharing::Private, Placement::Hint)
        .unwrap();
    mm.clear_refs(4).unwrap();
    (mm, a)
}

#[test]
fn commit_keeps_pages_clean_and_abort_or_drop_gives_them_back() {
    for mode in [Mode::Precise, Mode::Legacy, Mode::Regions] {
        let (mm, a) = space(mode, 64);
        mm.write(a + 3 * P, 1).unwrap();
        mm.write(a + 40 * P, 2 * P).unwrap();
        let h = mm.begin_harvest(a, 64 * P).unwrap();
        assert_eq!(h.log().runs(), &[(3, 1), (40, 2)], "{mode:?}");
        assert_eq!(mm.scan_and_clear(a, 64 * P).unwrap().runs(), &[], "taken");
        h.abort();
        mm.write(a + 5 * P, 1).unwrap();
        let h = mm.begin_harvest(a, 64 * P).unwrap();
        assert_eq!(
            h.log().runs(),
            &[(3, 1), (5, 1), (40, 2)],
            "{mode:?}: given back"
        );
        drop(h);
        let h = mm.begin_harvest(a, 64 * P).unwrap();
        assert_eq!(
            h.log().runs(),
            &[(3, 1), (5, 1), (40, 2)],
            "{mode:?}: drop aborts"
        );
        let log = h.commit();
        assert_eq!(log.dirty_count(), 4);
        assert_eq!(
            mm.scan_and_clear(a, 64 * P).unwrap().runs(),
            &[],
            "{mode:?}: committed"
        );
    }
}

#[test]
fn an_abort_after_the_layout_changed_gives_back_what_is_still_mapped() {
    let (mm, a) = space(Mode::Precise, 64);
    mm.write(a, 64 * P).unwrap();
    let h = mm.begin_harvest(a, 64 * P).unwrap();
    mm.munmap(a + 16 * P, 16 * P).unwrap();
    mm.mprotect(a + 48 * P, 8 * P, Prot::R).unwrap();
    h.abort();
    let back = mm.scan_and_clear(a, 64 * P).unwrap();
    assert_eq!(back.runs(), &[(0, 16), (32, 32)]);
}

/// A page written (its last write started at time `w`) must be in a committed harvest
/// whose `begin_harvest` returned after `w`, or dirty at the end.
/// A page written (its last write started at time `w`) must be in a committed harvest
/// whose start returned after `w`, or in the last harvest (`end`).
fn check_ledger(last: &[u64], committed: &[(u64, Vec<(u64, u64)>)], end: &[(u64, u64)]) {
    let has = |runs: &[(u64, u64)], p: u64| runs.iter().any(|&(f, n)| (f..f + n).contains(&p));
    for (p, &w) in last.iter().enumerate() {
        let p = p as u64;
        if w == 0 || has(end, p) {
            continue;
        }
        let sent = committed.iter().any(|(t, runs)| *t > w && has(runs, p));
        assert!(
            sent,
            "LOST: page {p}, last write started at {w}: in no committed harvest after it, nor in the last one"
        );
    }
}

/// Writes per writer in the stress ledgers (`SOFTDIRTY_TXN_WRITES`, default 5,000,000).
fn writes() -> u64 {
    std::env::var("SOFTDIRTY_TXN_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000)
}

/// One harvester's committed rounds: the time its harvest had returned by, the runs.
type Rounds = Vec<(u64, Vec<(u64, u64)>)>;

/// A harvester of the stress: one round; `Some(runs)` if it committed them.
type Harvester<'a> = Box<dyn FnMut() -> Option<Vec<(u64, u64)>> + Send + 'a>;

/// The stress ledger: two writers call `mark(page)` `writes` times each on random pages
/// of `pages` while each harvester runs rounds on its own thread until they are done.
/// Returns the start time of every page's last write and, per harvester, its committed
/// rounds with the time each round's harvest had returned by.
fn stress(
    pages: u64,
    writes: u64,
    mark: &(dyn Fn(u64) + Sync),
    harvesters: Vec<Harvester<'_>>,
) -> (Vec<u64>, Vec<Rounds>) {
    let (clock, done) = (AtomicU64::new(1), AtomicU64::new(0));
    let last = Mutex::new(vec![0u64; pages as usize]);
    let mut out = Vec::new();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (clock, last, done) = (&clock, &last, &done);
            s.spawn(move || {
                let mut mine = vec![0u64; pages as usize];
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                for _ in 0..writes {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let p = x % pages;
                    let w = clock.fetch_add(1, SeqCst);
                    mark(p);
                    mine[p as usize] = w;
                }
                let mut l = last.lock().unwrap();
                for (o, m) in l.iter_mut().zip(mine) {
                    *o = (*o).max(m);
                }
                done.fetch_add(1, SeqCst);
            });
        }
        let hs: Vec<_> = harvesters
            .into_iter()
            .map(|mut h| {
                let (clock, done) = (&clock, &done);
                s.spawn(move || {
                    let mut v = Vec::new();
                    while done.load(SeqCst) < 2 {
                        let r = h();
                        let t = clock.fetch_add(1, SeqCst);
                        if let Some(runs) = r {
                            v.push((t, runs));
                        }
                    }
                    v
                })
            })
            .collect();
        out = hs.into_iter().map(|h| h.join().unwrap()).collect();
    });
    (last.into_inner().unwrap(), out)
}

/// Commit or abort, at random (a xorshift per harvester).
fn coin(x: &mut u64) -> bool {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x % 2 == 0
}

/// Writers ∥ a harvester that commits or aborts at random, on an `AddressSpace`.
#[test]
fn stress_ledger_address_space() {
    const PAGES: u64 = 512;
    let (mm, a) = space(Mode::Precise, PAGES);
    let mut x = 7u64;
    let (last, committed) = stress(
        PAGES,
        writes(),
        &|p| mm.write(a + p * P, 1).unwrap(),
        vec![Box::new(|| {
            let h = mm.begin_harvest(a, PAGES * P).unwrap();
            coin(&mut x).then(|| h.commit().runs().to_vec())
        })],
    );
    let end = mm.scan_and_clear(a, PAGES * P).unwrap();
    check_ledger(&last, &committed[0], end.runs());
    assert!(!committed[0].is_empty());
}

/// Whole-word writes (64 pages at once: the fault path's plain store, ARCHITECTURE.md
/// claim 2a) ∥ a harvester that commits or aborts at random, on an `AddressSpace`. The
/// ledger counts in words: a word is reported when a run covers all of its pages (every
/// write here covers whole words, so nothing dirties part of one).
#[test]
fn stress_ledger_whole_words() {
    const WORDS: u64 = 64;
    let (mm, a) = space(Mode::Precise, WORDS * 64);
    let words_of = |runs: &[(u64, u64)]| -> Vec<(u64, u64)> {
        runs.iter()
            .filter_map(|&(f, n)| {
                let (lo, hi) = (f.div_ceil(64), (f + n) / 64);
                assert!(
                    f % 64 == 0 && n % 64 == 0,
                    "part of a word reported: ({f}, {n})"
                );
                (lo < hi).then_some((lo, hi - lo))
            })
            .collect()
    };
    let mut x = 11u64;
    let (last, committed) = stress(
        WORDS,
        writes() / 2,
        &|w| mm.write(a + w * 64 * P, 64 * P).unwrap(),
        vec![Box::new(|| {
            let h = mm.begin_harvest(a, WORDS * 64 * P).unwrap();
            coin(&mut x).then(|| words_of(h.commit().runs()))
        })],
    );
    let end = mm.scan_and_clear(a, WORDS * 64 * P).unwrap();
    check_ledger(&last, &committed[0], &words_of(end.runs()));
    assert!(!committed[0].is_empty());
}

/// The vm-memory bitmap's transaction: commit, abort, and the ledger with vCPU-style
/// marks (`Bitmap::mark_dirty`).
#[cfg(feature = "vm-memory")]
#[test]
fn vmm_bitmap_transactions_and_their_ledger() {
    use softdirty::vmm::SoftDirtyBitmap;
    use std::num::NonZeroUsize;
    use vm_memory::bitmap::Bitmap;
    const PAGES: u64 = 512;
    let b = SoftDirtyBitmap::new(PAGES as usize * 4096, NonZeroUsize::new(4096).unwrap());
    b.mark_dirty(3 * 4096, 1);
    let h = b.begin_harvest();
    assert_eq!(h.runs(), &[(3, 1)]);
    h.abort();
    assert_eq!(b.begin_harvest().commit(), vec![(3, 1)]);
    assert!(b.harvest_runs().is_empty(), "committed");
    let mut x = 11u64;
    let (last, committed) = stress(
        PAGES,
        writes(),
        &|p| b.mark_dirty(p as usize * 4096 + 8, 8),
        vec![Box::new(|| {
            let h = b.begin_harvest();
            coin(&mut x).then(|| h.commit())
        })],
    );
    check_ledger(&last, &committed[0], &b.harvest_runs());
}

mod consumers {
    use super::*;
    use softdirty::errno::Errno;

    fn pages(
        mm: &AddressSpace,
        c: softdirty::consumers::ConsumerId,
        a: u64,
        n: u64,
    ) -> Vec<(u64, u64)> {
        mm.consumer_harvest(c, a, n * P)
            .unwrap()
            .commit()
            .runs()
            .to_vec()
    }

    /// Each consumer sees every write since its own last harvest, whatever the others
    /// and anonymous harvests take.
    #[test]
    fn each_consumer_sees_every_write_once() {
        let (mm, a) = space(Mode::Precise, 64);
        let (m, s) = (
            mm.register_consumer("migration").unwrap(),
            mm.register_consumer("snapshot").unwrap(),
        );
        assert_eq!(mm.register_consumer("snapshot"), Err(Errno::EEXIST));
        mm.write(a + P, 1).unwrap();
        assert_eq!(pages(&mm, m, a, 64), [(1, 1)]);
        assert_eq!(pages(&mm, m, a, 64), []);
        mm.write(a + 2 * P, 1).unwrap();
        assert_eq!(pages(&mm, s, a, 64), [(1, 2)]);
        mm.write(a + 9 * P, 1).unwrap();
        assert_eq!(mm.scan_and_clear(a, 64 * P).unwrap().runs(), [(9, 1)]);
        assert_eq!(pages(&mm, m, a, 64), [(2, 1), (9, 1)]);
        assert_eq!(pages(&mm, s, a, 64), [(9, 1)]);
        // a consumer's abort gives the pages back to it alone
        mm.write(a + 4 * P, 1).unwrap();
        mm.consumer_harvest(m, a, 64 * P).unwrap().abort();
        assert_eq!(pages(&mm, m, a, 64), [(4, 1)]);
        assert_eq!(pages(&mm, s, a, 64), [(4, 1)]);
        assert!(mm.consumer_tracking_bytes() == 0, "everyone kept up");
        // pending pages unmapped since are not reported
        mm.write(a + 5 * P, 1).unwrap();
        assert_eq!(pages(&mm, m, a, 64), [(5, 1)]);
        assert!(mm.consumer_tracking_bytes() > 0);
        mm.munmap(a + 5 * P, P).unwrap();
        assert_eq!(pages(&mm, s, a, 64), []);
        mm.unregister_consumer(s).unwrap();
        assert_eq!(mm.unregister_consumer(s), Err(Errno::ENOENT));
        assert!(mm.consumer_harvest(s, a, P).is_err());
    }

    /// Writers ∥ two consumers harvesting, each committing or aborting at random: each
    /// consumer's ledger holds.
    #[test]
    fn stress_ledger_two_consumers() {
        const PAGES: u64 = 256;
        let (mm, a) = space(Mode::Precise, PAGES);
        let ids = [
            mm.register_consumer("a").unwrap(),
            mm.register_consumer("b").unwrap(),
        ];
        let harvester = |c, mut x: u64| -> Harvester<'_> {
            let mm = &mm;
            Box::new(move || {
                let h = mm.consumer_harvest(c, a, PAGES * P).unwrap();
                coin(&mut x).then(|| h.commit().runs().to_vec())
            })
        };
        let (last, committed) = stress(
            PAGES,
            writes() / 2,
            &|p| mm.write(a + p * P, 1).unwrap(),
            vec![harvester(ids[0], 3), harvester(ids[1], 4)],
        );
        for (k, &c) in ids.iter().enumerate() {
            let end = mm.consumer_harvest(c, a, PAGES * P).unwrap().commit();
            check_ledger(&last, &committed[k], end.runs());
        }
    }
}

/// Dirty rings (`softdirty::ring`): writers with small rings (so that they overflow) ∥ a
/// harvester; the same ledger.
mod ring {
    use super::*;
    use softdirty::bitmap::PageBitmap;
    use softdirty::ring::{DirtyRings, RingMark};

    #[test]
    fn soft_full_overflow_and_rates() {
        let bits = Arc::new(PageBitmap::new(1024, false));
        let rings = DirtyRings::new(Arc::clone(&bits));
        let w = rings.writer(8);
        for p in 0..6 {
            assert_eq!(w.mark(p * 2, 1), Ok(RingMark::Ok));
        }
        assert_eq!(w.mark(100, 1), Ok(RingMark::SoftFull), "7 of 8 entries");
        assert_eq!(
            w.mark(100, 1),
            Ok(RingMark::SoftFull),
            "already dirty: no entry"
        );
        let mut got = Vec::new();
        let h = rings.harvest(|f, n| got.push((f, n)));
        assert_eq!((h.entries, h.full_scan), (7, false));
        assert_eq!(got.len(), 7);
        for p in 0..20 {
            w.mark(200 + p * 2, 1).unwrap(); // 20 entries into 8 slots: overflow
        }
        got.clear();
        let h = rings.harvest(|f, n| got.push((f, n)));
        assert!(h.full_scan, "{h:?}");
        assert_eq!(got.iter().map(|r| r.1).sum::<u64>(), 20, "every page, once");
        assert_eq!(rings.pages_dirtied(), vec![27]);
        assert_eq!(w.mark(1024, 1), Err(softdirty::errno::Errno::EINVAL));
    }

    #[test]
    fn stress_ledger_rings() {
        const PAGES: u64 = 4096;
        let bits = Arc::new(PageBitmap::new(PAGES, false));
        let rings = DirtyRings::new(Arc::clone(&bits));
        // A ring is single-producer: each writer thread takes its own ring at its
        // first mark (a thread-local index).
        let writers = [rings.writer(64), rings.writer(64)];
        let next = AtomicU64::new(0);
        thread_local! { static MINE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) }; }
        let (last, committed) = stress(
            PAGES,
            writes(),
            &|p| {
                let i = MINE.with(|m| {
                    m.get().unwrap_or_else(|| {
                        let i = next.fetch_add(1, SeqCst) as usize;
                        m.set(Some(i));
                        i
                    })
                });
                writers[i].mark(p, 1).unwrap();
            },
            vec![Box::new(|| {
                let mut runs = Vec::new();
                rings.harvest(|f, n| runs.push((f, n)));
                Some(runs)
            })],
        );
        let mut end = Vec::new();
        rings.harvest(|f, n| end.push((f, n)));
        check_ledger(&last, &committed[0], &end);
    }
    /// An address-space harvest's ranges as page runs of the region at `a`.
    fn page_runs(ranges: &[(u64, u64)], a: u64) -> Vec<(u64, u64)> {
        ranges
            .iter()
            .map(|&(s, e)| ((s - a) / P, (e - s) / P))
            .collect()
    }

    #[test]
    fn space_rings_entries_moves_aborts() {
        use softdirty::ring::SpaceRings;
        let legacy = Arc::new(AddressSpace::new(Mode::Legacy));
        assert_eq!(
            SpaceRings::new(legacy).err(),
            Some(softdirty::errno::Errno::EINVAL)
        );
        let (mm, a) = space(Mode::Precise, 64);
        let mm = Arc::new(mm);
        mm.write(a, 1).unwrap(); // before the rings: the first harvest scans everything
        let rings = SpaceRings::new(Arc::clone(&mm)).unwrap();
        let w = rings.writer(4);
        let h = rings.harvest();
        assert!(h.stats.full_scan);
        assert_eq!(page_runs(&h.address_ranges(), a), [(0, 1)]);
        h.commit();
        assert_eq!(w.write(a + 3 * P, 2 * P), Ok(RingMark::Ok));
        assert_eq!(w.write(a + 3 * P, 1), Ok(RingMark::Ok), "dirty: no entry");
        let h = rings.harvest();
        assert_eq!((h.stats.entries, h.stats.full_scan), (1, false));
        assert_eq!(page_runs(&h.address_ranges(), a), [(3, 2)]);
        assert_eq!(h.abort(), 2);
        w.write(a + 9 * P, 1).unwrap();
        let h = rings.harvest();
        assert!(!h.stats.full_scan, "an abort hands its runs over");
        assert_eq!(page_runs(&h.address_ranges(), a), [(3, 2), (9, 1)]);
        drop(h);
        let h = rings.harvest();
        assert_eq!(
            page_runs(&h.address_ranges(), a),
            [(3, 2), (9, 1)],
            "drop aborts"
        );
        h.commit();
        // An mremap move: the entry names the old address, and no writer named the moved
        // pages; the next harvest scans everything.
        w.write(a + 10 * P, 1).unwrap();
        let b = mm
            .mmap(0, 64 * P, Prot::RW, Sharing::Private, Placement::Hint)
            .unwrap();
        mm.munmap(b, 64 * P).unwrap();
        assert_eq!(mm.mremap(a, 64 * P, 64 * P, true, Some(b)), Ok(b));
        let h = rings.harvest();
        assert!(h.stats.full_scan);
        // precise: every page of the moved range changed at its new address
        assert_eq!(page_runs(&h.address_ranges(), b), [(0, 64)]);
        h.commit();
        // Overflow: 6 entries into 4 slots.
        for p in 0..6 {
            w.write(b + 20 * P + 2 * p * P, 1).unwrap();
        }
        let h = rings.harvest();
        assert!(h.stats.full_scan);
        assert_eq!(h.address_ranges().len(), 6);
        h.commit();
        assert_eq!(rings.pages_dirtied(), vec![10]);
    }

    /// Writers with small rings on an address space ∥ a harvester that commits or aborts
    /// at random; the same ledger.
    #[test]
    fn stress_ledger_space_rings() {
        use softdirty::ring::SpaceRings;
        const PAGES: u64 = 4096;
        let (mm, a) = space(Mode::Precise, PAGES);
        let rings = SpaceRings::new(Arc::new(mm)).unwrap();
        let writers = [rings.writer(64), rings.writer(64)];
        let next = AtomicU64::new(0);
        thread_local! { static MINE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) }; }
        let mut x = 11u64;
        let (last, committed) = stress(
            PAGES,
            writes(),
            &|p| {
                let i = MINE.with(|m| {
                    m.get().unwrap_or_else(|| {
                        let i = next.fetch_add(1, SeqCst) as usize;
                        m.set(Some(i));
                        i
                    })
                });
                writers[i].write(a + p * P, 1).unwrap();
            },
            vec![Box::new(|| {
                let h = rings.harvest();
                let runs = page_runs(&h.address_ranges(), a);
                coin(&mut x).then(|| {
                    h.commit();
                    runs
                })
            })],
        );
        let h = rings.harvest();
        let end = page_runs(&h.address_ranges(), a);
        h.commit();
        check_ledger(&last, &committed[0], &end);
    }
}
