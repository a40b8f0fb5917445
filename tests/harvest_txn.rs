//! Transactional harvests (issue 17): `AddressSpace::begin_harvest` and
//! `vmm::SoftDirtyBitmap::begin_harvest` commit or abort; an abort gives every page back,
//! merged with the writes made meanwhile. A stress ledger runs writers against a harvester
//! that commits or aborts at random: every page written ends up in a committed harvest
//! that began after its last write started, or dirty at the end. The broken twin
//! `restore_snapshot` (an abort that restores the range as the harvest found it) fails the
//! loom model `address_space::harvest_abort_vs_write`.

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
fn check_ledger(last: &[u64], committed: &[(u64, Vec<(u64, u64)>)], end: &[(u64, u64)]) {
    let has = |runs: &[(u64, u64)], p: u64| runs.iter().any(|&(f, n)| (f..f + n).contains(&p));
    for (p, &w) in last.iter().enumerate() {
        let p = p as u64;
        if w == 0 || has(end, p) {
            continue;
        }
        let sent = committed.iter().any(|(t, runs)| *t > w && has(runs, p));
        assert!(sent, "LOST: page {p}, last write started at {w}: in no committed harvest after it, nor in the last one");
    }
}

/// Writers ∥ a harvester that commits or aborts at random, on an `AddressSpace`:
/// 2 × `SOFTDIRTY_TXN_WRITES` (default 5,000,000) writes.
#[test]
fn stress_ledger_address_space() {
    const PAGES: u64 = 512;
    let writes: u64 = std::env::var("SOFTDIRTY_TXN_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000);
    let (mm, a) = space(Mode::Precise, PAGES);
    let mm = Arc::new(mm);
    let clock = AtomicU64::new(1);
    let done = AtomicU64::new(0);
    let last = Mutex::new(vec![0u64; PAGES as usize]);
    let committed = Mutex::new(Vec::new());
    let (mut aborts, mut commits) = (0u64, 0u64);
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (mm, clock, last, done) = (&mm, &clock, &last, &done);
            s.spawn(move || {
                let mut mine = vec![0u64; PAGES as usize];
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                for _ in 0..writes {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let p = x % PAGES;
                    let w = clock.fetch_add(1, SeqCst);
                    mm.write(a + p * P, 1).unwrap();
                    mine[p as usize] = w;
                }
                let mut l = last.lock().unwrap();
                for (o, m) in l.iter_mut().zip(mine) {
                    *o = (*o).max(m);
                }
                done.fetch_add(1, SeqCst);
            });
        }
        s.spawn(|| {
            let mut x = 7u64;
            let mut out = Vec::new();
            while done.load(SeqCst) < 2 {
                let h = mm.begin_harvest(a, PAGES * P).unwrap();
                let t = clock.fetch_add(1, SeqCst);
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x % 2 == 0 {
                    out.push((t, h.commit().runs().to_vec()));
                    commits += 1;
                } else {
                    h.abort();
                    aborts += 1;
                }
            }
            *committed.lock().unwrap() = out;
        });
    });
    let end = mm.scan_and_clear(a, PAGES * P).unwrap();
    check_ledger(
        &last.into_inner().unwrap(),
        &committed.into_inner().unwrap(),
        end.runs(),
    );
    assert!(
        commits > 0 && aborts > 0,
        "{commits} commits, {aborts} aborts"
    );
    eprintln!(
        "stress_ledger_address_space: {} writes, {commits} commits, {aborts} aborts",
        2 * writes
    );
}

/// The vm-memory bitmap's transaction: commit, abort, and the same ledger with vCPU-style
/// marks (`Bitmap::mark_dirty`) against a harvester that commits or aborts at random.
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

    let writes: u64 = std::env::var("SOFTDIRTY_TXN_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000);
    let (clock, done) = (AtomicU64::new(1), AtomicU64::new(0));
    let last = Mutex::new(vec![0u64; PAGES as usize]);
    let committed = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (b, clock, last, done) = (&b, &clock, &last, &done);
            s.spawn(move || {
                let mut mine = vec![0u64; PAGES as usize];
                let mut x = 0x2545_f491_4f6c_dd1du64 ^ t;
                for _ in 0..writes {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let p = x % PAGES;
                    let w = clock.fetch_add(1, SeqCst);
                    b.mark_dirty(p as usize * 4096 + 8, 8);
                    mine[p as usize] = w;
                }
                let mut l = last.lock().unwrap();
                for (o, m) in l.iter_mut().zip(mine) {
                    *o = (*o).max(m);
                }
                done.fetch_add(1, SeqCst);
            });
        }
        s.spawn(|| {
            let mut x = 11u64;
            let mut out = Vec::new();
            while done.load(SeqCst) < 2 {
                let h = b.begin_harvest();
                let t = clock.fetch_add(1, SeqCst);
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x % 2 == 0 {
                    out.push((t, h.commit()));
                } else {
                    h.abort();
                }
            }
            *committed.lock().unwrap() = out;
        });
    });
    let end = b.harvest_runs();
    check_ledger(
        &last.into_inner().unwrap(),
        &committed.into_inner().unwrap(),
        &end,
    );
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

    /// Writers ∥ two consumers harvesting and committing or aborting at random: each
    /// consumer's ledger holds.
    #[test]
    fn stress_ledger_two_consumers() {
        const PAGES: u64 = 256;
        let writes: u64 = std::env::var("SOFTDIRTY_TXN_WRITES")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(2_000_000, |w: u64| w / 2);
        let (mm, a) = space(Mode::Precise, PAGES);
        let ids = [
            mm.register_consumer("a").unwrap(),
            mm.register_consumer("b").unwrap(),
        ];
        let (clock, done) = (AtomicU64::new(1), AtomicU64::new(0));
        let last = Mutex::new(vec![0u64; PAGES as usize]);
        let committed = [Mutex::new(Vec::new()), Mutex::new(Vec::new())];
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let (mm, clock, last, done) = (&mm, &clock, &last, &done);
                s.spawn(move || {
                    let mut mine = vec![0u64; PAGES as usize];
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 5);
                    for _ in 0..writes {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let p = x % PAGES;
                        let w = clock.fetch_add(1, SeqCst);
                        mm.write(a + p * P, 1).unwrap();
                        mine[p as usize] = w;
                    }
                    let mut l = last.lock().unwrap();
                    for (o, m) in l.iter_mut().zip(mine) {
                        *o = (*o).max(m);
                    }
                    done.fetch_add(1, SeqCst);
                });
            }
            for (k, &c) in ids.iter().enumerate() {
                let (mm, clock, done, out) = (&mm, &clock, &done, &committed[k]);
                s.spawn(move || {
                    let mut x = 3 + k as u64;
                    let mut v = Vec::new();
                    while done.load(SeqCst) < 2 {
                        let h = mm.consumer_harvest(c, a, PAGES * P).unwrap();
                        let t = clock.fetch_add(1, SeqCst);
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        if x % 3 != 0 {
                            v.push((t, h.commit().runs().to_vec()));
                        } else {
                            h.abort();
                        }
                    }
                    *out.lock().unwrap() = v;
                });
            }
        });
        let last = last.into_inner().unwrap();
        for (k, &c) in ids.iter().enumerate() {
            let end = mm.consumer_harvest(c, a, PAGES * P).unwrap().commit();
            let mine = std::mem::take(&mut *committed[k].lock().unwrap());
            check_ledger(&last, &mine, end.runs());
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
        let writes: u64 = std::env::var("SOFTDIRTY_TXN_WRITES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5_000_000);
        let bits = Arc::new(PageBitmap::new(PAGES, false));
        let rings = DirtyRings::new(Arc::clone(&bits));
        let (clock, done) = (AtomicU64::new(1), AtomicU64::new(0));
        let last = Mutex::new(vec![0u64; PAGES as usize]);
        let mut harvests = Vec::new();
        let (mut full, mut entries) = (0u64, 0u64);
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let w = rings.writer(64);
                let (clock, last, done) = (&clock, &last, &done);
                s.spawn(move || {
                    let mut mine = vec![0u64; PAGES as usize];
                    let mut x = 0x5851_f42d_4c95_7f2du64 ^ t;
                    for _ in 0..writes {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let p = x % PAGES;
                        let wt = clock.fetch_add(1, SeqCst);
                        w.mark(p, 1).unwrap();
                        mine[p as usize] = wt;
                    }
                    let mut l = last.lock().unwrap();
                    for (o, m) in l.iter_mut().zip(mine) {
                        *o = (*o).max(m);
                    }
                    done.fetch_add(1, SeqCst);
                });
            }
            while done.load(SeqCst) < 2 {
                let mut runs = Vec::new();
                let h = rings.harvest(|f, n| runs.push((f, n)));
                let t = clock.fetch_add(1, SeqCst);
                full += u64::from(h.full_scan);
                entries += h.entries;
                harvests.push((t, runs));
            }
        });
        let mut end = Vec::new();
        rings.harvest(|f, n| end.push((f, n)));
        check_ledger(&last.into_inner().unwrap(), &harvests, &end);
        eprintln!(
            "stress_ledger_rings: {} writes, {} harvests ({full} full scans, {entries} entries)",
            2 * writes,
            harvests.len()
        );
    }
}
