//! The harvest API (`softdirty::dirtylog`): exactness, KVM layout, manual-protect
//! semantics, errors, and a concurrent writers-versus-harvester check.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use softdirty::bitmap::CHUNK_PAGES;
use softdirty::dirtylog::{DirtyLog, PARALLEL_MIN_PAGES};
use softdirty::errno::Errno;
use softdirty::linux::{PAGE_SIZE, TASK_SIZE};
use softdirty::mm::{AddressSpace, Placement, Sharing};
use softdirty::mode::Mode;
use softdirty::prot::Prot;

const P: u64 = PAGE_SIZE;

fn space(pages: u64) -> (AddressSpace, u64) {
    let mm = AddressSpace::new(Mode::Precise);
    let a = mm
        .mmap(0, pages * P, Prot::RW, Sharing::Private, Placement::Hint)
        .unwrap();
    mm.clear_refs(4).unwrap();
    (mm, a)
}

fn runs_of(pages: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &p in pages {
        match out.last_mut() {
            Some((f, n)) if *f + *n == p => *n += 1,
            _ => out.push((p, 1)),
        }
    }
    out
}

#[test]
fn scan_and_clear_returns_exactly_the_pages_written_since_the_last_harvest() {
    let pages = 3 * CHUNK_PAGES + 77;
    let (mm, a) = space(pages);
    let mut rng = 0x1234_5678_9abc_def0u64;
    for round in 0..20 {
        let mut want = BTreeSet::new();
        for _ in 0..(round * 7 + 1) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let p = rng % pages;
            let n = 1 + (rng >> 40) % 130;
            let n = n.min(pages - p);
            mm.write(a + p * P, n * P).unwrap();
            want.extend(p..p + n);
        }
        let log = mm.scan_and_clear(a, pages * P).unwrap();
        assert_eq!(log.runs(), runs_of(&want).as_slice(), "round {round}");
        assert_eq!(log.dirty_count(), want.len() as u64);
        assert_eq!(log.pages().collect::<BTreeSet<_>>(), want);
        // Cleared: the next harvest finds nothing, and pagemap agrees.
        assert!(mm.softdirty_runs(a, pages * P).is_empty());
        assert!(mm.scan_and_clear(a, pages * P).unwrap().is_clean());
    }
}

#[test]
fn a_fresh_mapping_is_all_dirty_and_subranges_harvest_independently() {
    let mm = AddressSpace::new(Mode::Precise);
    let a = mm
        .mmap(0, 1000 * P, Prot::RW, Sharing::Private, Placement::Hint)
        .unwrap();
    let log = mm.scan_and_clear(a + 10 * P, 20 * P).unwrap();
    assert_eq!(log.runs(), &[(0, 20)]);
    assert_eq!(log.addr(), a + 10 * P);
    assert_eq!(log.len(), 20 * P);
    let rest = mm.scan_and_clear(a, 1000 * P).unwrap();
    assert_eq!(rest.runs(), &[(0, 10), (30, 970)]);
}

#[test]
fn runs_merge_across_vma_boundaries_and_skip_holes() {
    let mm = AddressSpace::new(Mode::Precise);
    let a = mm
        .mmap(0, 64 * P, Prot::RW, Sharing::Private, Placement::Hint)
        .unwrap();
    // Split into three writable VMAs (rw, rwx, rw), then punch a hole after them.
    mm.mprotect(a + 16 * P, 16 * P, Prot::RWX).unwrap();
    mm.munmap(a + 48 * P, 8 * P).unwrap();
    assert_eq!(mm.vma_count(a, 64 * P), 4);
    mm.clear_refs(4).unwrap();
    mm.write(a + 10 * P, 30 * P).unwrap(); // crosses VMA boundaries at 16 and 32
    mm.write(a + 47 * P, P).unwrap();
    mm.write(a + 56 * P, P).unwrap();
    let log = mm.scan_and_clear(a, 64 * P).unwrap();
    assert_eq!(log.runs(), &[(10, 30), (47, 1), (56, 1)]);
}

#[test]
fn to_bitvec_is_kvm_layout() {
    let (mm, a) = space(200);
    for p in [0u64, 1, 63, 64, 65, 130, 199] {
        mm.write(a + p * P, 1).unwrap();
    }
    let log = mm.get_dirty_log(a, 200 * P).unwrap();
    let bv = log.to_bitvec();
    assert_eq!(bv.len(), 200);
    let raw = bv.as_raw_slice();
    assert_eq!(raw[0], 1 | 2 | (1 << 63));
    assert_eq!(raw[1], 1 | 2);
    assert_eq!(raw[2], 1 << 2);
    assert_eq!(raw[3], 1 << (199 - 192));
    for i in 0..200u64 {
        assert_eq!(bv[i as usize], log.contains(i), "bit {i}");
    }
    assert_eq!(bv.count_ones() as u64, log.dirty_count());
    // Runs, iteration and the constructor agree.
    let again = DirtyLog::new(a, 200 * P, log.iter());
    assert_eq!(again, log);
    assert_eq!((&log).into_iter().count(), log.runs().len());
    let addrs: Vec<_> = log.address_ranges().collect();
    assert_eq!(addrs[0], (a, a + 2 * P));
}

#[test]
fn get_dirty_log_does_not_clear_and_matches_pagemap() {
    let (mm, a) = space(300);
    mm.write(a + 5 * P, 3 * P).unwrap();
    let g = mm.get_dirty_log(a, 300 * P).unwrap();
    assert_eq!(g.runs(), &[(5, 3)]);
    assert_eq!(mm.get_dirty_log(a, 300 * P).unwrap(), g);
    let pm: Vec<(u64, u64)> = mm
        .softdirty_runs(a, 300 * P)
        .iter()
        .map(|r| (r.start, r.end - r.start))
        .collect();
    assert_eq!(g.runs(), pm.as_slice());
}

/// Manual-protect semantics, as KVM_CLEAR_DIRTY_LOG: clear exactly the logged pages;
/// a page written between get and clear that the log names is cleared too (the caller
/// copies after clearing); a page the log does not name stays dirty.
#[test]
fn clear_dirty_log_clears_only_the_logged_pages() {
    let (mm, a) = space(300);
    mm.write(a + 5 * P, 3 * P).unwrap();
    mm.write(a + 100 * P, P).unwrap();
    let g = mm.get_dirty_log(a, 300 * P).unwrap();
    assert_eq!(g.runs(), &[(5, 3), (100, 1)]);
    // Between get and clear: a re-write of a logged page and a write of a new one.
    mm.write(a + 6 * P, 1).unwrap();
    mm.write(a + 200 * P, 1).unwrap();
    assert_eq!(mm.clear_dirty_log(a, 300 * P, &g), Ok(4));
    // Page 6 is cleared although it was written after the get (documented: KVM does the
    // same); page 200, not in the log, stays dirty.
    assert_eq!(mm.get_dirty_log(a, 300 * P).unwrap().runs(), &[(200, 1)]);
    // A write after the clear is reported again.
    mm.write(a + 6 * P, 1).unwrap();
    assert_eq!(
        mm.scan_and_clear(a, 300 * P).unwrap().runs(),
        &[(6, 1), (200, 1)]
    );
    // A partial log clears only what it holds.
    mm.write(a, 10 * P).unwrap();
    let part = DirtyLog::new(a, 300 * P, [(2, 3)]);
    assert_eq!(mm.clear_dirty_log(a, 300 * P, &part), Ok(3));
    assert_eq!(
        mm.get_dirty_log(a, 300 * P).unwrap().runs(),
        &[(0, 2), (5, 5)]
    );
    // An empty log clears nothing.
    let empty = DirtyLog::new(a, 300 * P, []);
    assert_eq!(mm.clear_dirty_log(a, 300 * P, &empty), Ok(0));
}

#[test]
fn clear_dirty_log_skips_unmapped_pages() {
    let (mm, a) = space(64);
    let g = DirtyLog::new(a, 64 * P, [(0, 64)]);
    mm.munmap(a + 32 * P, 32 * P).unwrap();
    mm.write(a, 32 * P).unwrap();
    assert_eq!(mm.clear_dirty_log(a, 64 * P, &g), Ok(32));
    assert!(mm.get_dirty_log(a, 64 * P).unwrap().is_clean());
}

#[test]
fn errors() {
    let (mm, a) = space(16);
    for r in [
        mm.scan_and_clear(a + 1, P).map(|_| ()),
        mm.get_dirty_log(a + 100, P).map(|_| ()),
    ] {
        assert_eq!(r, Err(Errno::EINVAL));
    }
    assert_eq!(mm.scan_and_clear(TASK_SIZE, P).unwrap_err(), Errno::EFAULT);
    assert_eq!(
        mm.scan_and_clear(TASK_SIZE - P, 2 * P).unwrap_err(),
        Errno::EFAULT
    );
    assert_eq!(
        mm.get_dirty_log(a, u64::MAX - a + 1).unwrap_err(),
        Errno::EFAULT
    );
    assert_eq!(mm.get_dirty_log(a, u64::MAX).unwrap_err(), Errno::EFAULT);
    // The last page below TASK_SIZE is a valid (empty) range.
    assert!(mm.scan_and_clear(TASK_SIZE - P, P).unwrap().is_clean());
    // Zero length: an empty log, no error.
    let z = mm.scan_and_clear(a, 0).unwrap();
    assert!(z.is_empty() && z.is_clean());
    // A log of another range: EINVAL, nothing cleared.
    mm.write(a, P).unwrap();
    let g = mm.get_dirty_log(a, 16 * P).unwrap();
    assert_eq!(mm.clear_dirty_log(a, 8 * P, &g), Err(Errno::EINVAL));
    assert_eq!(mm.clear_dirty_log(a + P, 16 * P, &g), Err(Errno::EINVAL));
    assert_eq!(mm.clear_dirty_log(a + 1, 16 * P, &g), Err(Errno::EINVAL));
    assert_eq!(
        mm.clear_dirty_log(TASK_SIZE, 16 * P, &g),
        Err(Errno::EFAULT)
    );
    assert_eq!(mm.get_dirty_log(a, 16 * P).unwrap().runs(), &[(0, 1)]);
    // An unaligned length is rounded up to a page, for the log and its check.
    let g2 = mm.get_dirty_log(a, 16 * P - 5).unwrap();
    assert_eq!(g2.len(), 16 * P);
    assert_eq!(mm.clear_dirty_log(a, 16 * P - 5, &g2), Ok(1));
}

#[test]
fn legacy_mode_reports_vm_softdirty_pages_until_clear_refs() {
    let mm = AddressSpace::new(Mode::Legacy);
    let a = mm
        .mmap(0, 32 * P, Prot::RW, Sharing::Private, Placement::Hint)
        .unwrap();
    // A new VMA carries VM_SOFTDIRTY: every page is reported, every time.
    assert_eq!(mm.scan_and_clear(a, 32 * P).unwrap().runs(), &[(0, 32)]);
    assert_eq!(mm.scan_and_clear(a, 32 * P).unwrap().runs(), &[(0, 32)]);
    mm.clear_refs(4).unwrap();
    assert!(mm.scan_and_clear(a, 32 * P).unwrap().is_clean());
    mm.write(a + 3 * P, 1).unwrap();
    let log = mm.scan_and_clear(a, 32 * P).unwrap();
    assert_eq!(log.runs(), &[(3, 1)]);
    assert!(mm.softdirty_runs(a, 32 * P).is_empty());
}

#[test]
fn parallel_harvest_equals_sequential() {
    // Larger than the parallel piece (64 chunks) so the split really happens.
    let pages = CHUNK_PAGES * 64 * 3 + 1000;
    let mk = || {
        let (mm, a) = space(pages);
        for i in 0..2000u64 {
            let p = (i * 7919 * 13) % pages;
            let n = (1 + i % 200).min(pages - p);
            mm.write(a + p * P, n * P).unwrap();
        }
        (mm, a)
    };
    let (m1, a1) = mk();
    let (m2, a2) = mk();
    let seq = m1.scan_and_clear_with(a1, pages * P, Some(false)).unwrap();
    let par = m2.scan_and_clear_with(a2, pages * P, Some(true)).unwrap();
    assert_eq!(seq.runs(), par.runs());
    assert!(!seq.is_clean());
    assert!(m2.get_dirty_log(a2, pages * P).unwrap().is_clean());
    // Unaligned sub-range, parallel.
    let (m3, a3) = mk();
    let (m4, a4) = mk();
    let s = m3
        .scan_and_clear_with(a3 + 12345 * P, (pages - 20000) * P, Some(false))
        .unwrap();
    let p = m4
        .scan_and_clear_with(a4 + 12345 * P, (pages - 20000) * P, Some(true))
        .unwrap();
    assert_eq!(s.runs(), p.runs());
    assert_eq!(
        m3.get_dirty_log(a3, pages * P).unwrap(),
        m4.get_dirty_log(a4, pages * P).unwrap()
    );
    assert!(PARALLEL_MIN_PAGES >= CHUNK_PAGES);
}

/// Writer threads and a harvester looping `scan_and_clear`: every page written is
/// harvested at least once after its write began, or is still dirty at the end; nothing
/// is harvested that no one wrote.
#[test]
fn concurrent_writers_and_harvester_lose_nothing_and_invent_nothing() {
    const PAGES: u64 = 2 * CHUNK_PAGES + 300;
    const WRITERS: u64 = 3;
    const WRITES: u64 = 20_000;
    let mm = Arc::new(AddressSpace::new(Mode::Precise));
    let a = mm
        .mmap(0, PAGES * P, Prot::RW, Sharing::Private, Placement::Hint)
        .unwrap();
    mm.clear_refs(4).unwrap();
    // seq[p]: number of writes to page p that began; harvested[p]: the value of seq[p]
    // observed just before each harvest that reported p (a write that began before the
    // harvest started must be covered by this harvest or a later one, or stay dirty).
    let started: Arc<Vec<AtomicU64>> = Arc::new((0..PAGES).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    // The writers start once the harvester has run one harvest, so that at least two
    // harvests run, the later ones racing the writers (on a loaded machine the writers
    // could otherwise finish before the harvester's first one).
    let primed = Arc::new(AtomicBool::new(false));
    let reports: Arc<Mutex<Vec<(u64, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let harvester = {
        let (mm, stop, started, reports, primed) = (
            mm.clone(),
            stop.clone(),
            started.clone(),
            reports.clone(),
            primed.clone(),
        );
        std::thread::spawn(move || {
            let mut harvests = 0u64;
            // `covered[p]`: writes of p that began before a harvest that reported p ended.
            let mut covered = vec![0u64; PAGES as usize];
            let mut reported = vec![false; PAGES as usize];
            loop {
                let done = stop.load(Ordering::Acquire);
                let log = mm.scan_and_clear(a, PAGES * P).unwrap();
                harvests += 1;
                primed.store(true, Ordering::Release);
                for p in log.pages() {
                    reported[p as usize] = true;
                    // SeqCst: a write whose bit this harvest took began (its counter
                    // increment precedes its fault) before this load.
                    covered[p as usize] = started[p as usize].load(Ordering::SeqCst);
                }
                if done {
                    break;
                }
            }
            let mut r = reports.lock().unwrap();
            for p in 0..PAGES as usize {
                if reported[p] {
                    r.push((p as u64, covered[p]));
                }
            }
            harvests
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (mm, started, primed) = (mm.clone(), started.clone(), primed.clone());
            std::thread::spawn(move || {
                while !primed.load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (w + 1);
                for _ in 0..WRITES {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Writers only touch the first 2/3 of the range: the rest must never
                    // be reported.
                    let p = x % (PAGES * 2 / 3);
                    let n = if x >> 60 == 0 { 1 + (x >> 20) % 70 } else { 1 };
                    let n = n.min(PAGES * 2 / 3 - p);
                    for q in p..p + n {
                        // SeqCst: the increment precedes the fault in the write's thread.
                        started[q as usize].fetch_add(1, Ordering::SeqCst);
                    }
                    mm.write(a + p * P, n * P).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Release);
    let harvests = harvester.join().unwrap();
    assert!(harvests >= 2);
    // After the final harvest (which started after every write completed), nothing is
    // dirty, every written page was reported, and its last report covers every write.
    assert!(mm.get_dirty_log(a, PAGES * P).unwrap().is_clean());
    let reports = reports.lock().unwrap();
    let reported: BTreeSet<u64> = reports.iter().map(|r| r.0).collect();
    for p in 0..PAGES {
        let writes = started[p as usize].load(Ordering::SeqCst);
        if writes > 0 {
            assert!(
                reported.contains(&p),
                "page {p} written {writes}× never harvested"
            );
        } else {
            assert!(
                !reported.contains(&p),
                "page {p} harvested but never written"
            );
        }
    }
    for &(p, cov) in reports.iter() {
        assert_eq!(cov, started[p as usize].load(Ordering::SeqCst), "page {p}");
    }
}

/// The mid-run version of the same property, harvest by harvest: a write that started
/// after harvest `k` ended and completed before harvest `m` started must be reported by
/// `m` (or a later harvest), or be dirty at the end; a reported page was written.
#[test]
fn every_completed_write_is_in_a_later_harvest_or_still_dirty() {
    const PAGES: u64 = CHUNK_PAGES + 500;
    let mm = Arc::new(AddressSpace::new(Mode::Precise));
    let a = mm
        .mmap(0, PAGES * P, Prot::RW, Sharing::Private, Placement::Hint)
        .unwrap();
    mm.clear_refs(4).unwrap();
    let counters =
        || -> Arc<Vec<AtomicU64>> { Arc::new((0..PAGES).map(|_| AtomicU64::new(0)).collect()) };
    // started[p] is incremented before a write's fault, done[p] after it returns.
    let (started, done) = (counters(), counters());
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let (mm, started, done, stop) =
                (mm.clone(), started.clone(), done.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut x = 0x2545_f491_4f6c_dd1du64 ^ (w + 7);
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // The last 100 pages are never written.
                    let p = x % (PAGES - 100);
                    // SeqCst (both counters): one total order with the harvester's
                    // snapshots, so "started after / completed before" is meaningful.
                    started[p as usize].fetch_add(1, Ordering::SeqCst);
                    mm.write(a + p * P, 1).unwrap();
                    done[p as usize].fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    // bound[p]: writes started by the end of the last harvest that reported p.
    let mut bound = vec![0u64; PAGES as usize];
    // need[p]: a write started after bound and completed before some later harvest began.
    let mut need = vec![false; PAGES as usize];
    let mut reports = 0u64;
    // Let the writers get going first: on a loaded machine the 300 harvests below could
    // otherwise all run before a writer thread is scheduled.
    while done.iter().map(|d| d.load(Ordering::SeqCst)).sum::<u64>() < 1000 {
        std::thread::yield_now();
    }
    for _ in 0..300 {
        // Give the writers time between harvests, so that each harvest has work.
        std::thread::sleep(std::time::Duration::from_micros(50));
        let pre: Vec<u64> = done.iter().map(|d| d.load(Ordering::SeqCst)).collect();
        let log = mm.scan_and_clear(a, PAGES * P).unwrap();
        let post: Vec<u64> = started.iter().map(|d| d.load(Ordering::SeqCst)).collect();
        for p in 0..PAGES as usize {
            if pre[p] > bound[p] {
                need[p] = true;
            }
        }
        for p in log.pages() {
            let p = p as usize;
            assert!(post[p] > 0, "page {p} harvested but never written");
            // This harvest began after the needed write completed: it covers it.
            need[p] = false;
            bound[p] = post[p];
            reports += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    assert!(reports > 0);
    let fin: BTreeSet<u64> = mm.get_dirty_log(a, PAGES * P).unwrap().pages().collect();
    for p in 0..PAGES as usize {
        if need[p] {
            assert!(
                fin.contains(&(p as u64)),
                "page {p}: a completed write was lost"
            );
        }
    }
    assert!(fin.iter().all(|&p| p < PAGES - 100));
}

/// `get_dirty_log` (word-level walk) reports exactly what pagemap bit 55 reports
/// (`softdirty_runs`, the per-page walk), in every mode, over random layouts: several
/// VMAs (legacy ones carrying `VM_SOFTDIRTY`), mprotect splits, partial harvests,
/// DONTNEED, untouched chunks of both tags, and random, unaligned query ranges.
#[test]
fn get_dirty_log_equals_pagemap_bit_55() {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    for (seed, mode) in (0..100u64).zip(Mode::ALL.iter().cycle()) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mm = AddressSpace::new(*mode);
        let span = 3 * CHUNK_PAGES + 77;
        let a = mm
            .mmap(0, span * P, Prot::RW, Sharing::Private, Placement::Hint)
            .unwrap();
        if rng.gen_bool(0.5) {
            mm.clear_refs(4).unwrap();
        }
        for _ in 0..rng.gen_range(0..40) {
            let f = rng.gen_range(0..span);
            let cap = if rng.gen_bool(0.2) { 5000 } else { 130 };
            let n = rng.gen_range(1..=(span - f).min(cap));
            match rng.gen_range(0..10) {
                0 => {
                    let _ = mm.mprotect(a + f * P, n * P, Prot::R);
                }
                1 => {
                    let _ = mm.mprotect(a + f * P, n * P, Prot::RW);
                }
                2 => {
                    mm.scan_and_clear(a + f * P, n * P).unwrap();
                }
                3 => {
                    let _ = mm.madvise_dontneed(a + f * P, n * P);
                }
                4 if rng.gen_bool(0.3) => mm.clear_refs(4).unwrap(),
                // A fresh mapping over part of a cleared one: new-range merges, and in
                // `regions` a VMA whose list covers only part of it.
                5 => {
                    let _ = mm.mmap(
                        a + f * P,
                        n * P,
                        Prot::RW,
                        Sharing::Private,
                        Placement::Fixed,
                    );
                }
                _ => {
                    let _ = mm.write(a + f * P, n * P);
                }
            }
        }
        for _ in 0..20 {
            let f = rng.gen_range(0..span + 10);
            let n = rng.gen_range(0..span + 20 - f);
            let at = a - 5 * P + f * P;
            let g = mm.get_dirty_log(at, n * P).unwrap();
            let pm: Vec<(u64, u64)> = mm
                .softdirty_runs(at, n * P)
                .iter()
                .map(|r| (r.start, r.end - r.start))
                .collect();
            assert_eq!(
                g.runs(),
                pm.as_slice(),
                "seed {seed} {mode:?} at page {f} n {n}"
            );
        }
    }
}
