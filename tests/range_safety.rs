//! Range safety of the public APIs that take a page range (issue 13): a range that
//! overflows or leaves its bitmap is refused with nothing done (marking: `Mark::OutOfRange`,
//! `Producer::mark`: `EINVAL`) or clipped to the bitmap as documented (control and query
//! methods); nothing panics, nothing is applied in part, nothing allocates beyond what
//! the pages touched need. The cases are those of the issue (a 100-page bitmap), then a
//! proptest of arbitrary ranges against a plain per-page model.

use proptest::prelude::*;
use softdirty::bitmap::{CopyRule, DrainRule, Mark, PageBitmap, Run, Target};
use softdirty::dirtylog::DirtyLog;
use softdirty::errno::Errno;
use softdirty::slots::{SlotRegistry, KVM_MEM_MAX_NR_PAGES};
use std::sync::Arc;

const BAD: [(u64, u64); 5] = [
    (100, 1),
    (98, 10),
    (5000, 1),
    (u64::MAX, 1),
    (u64::MAX - 5, 10),
];

fn dirty_pages(b: &PageBitmap) -> Vec<u64> {
    let mut v = Vec::new();
    b.dirty_runs(0, b.pages(), |r| v.extend(r.first..r.first + r.count));
    v
}

#[test]
fn marks_out_of_range_are_refused_and_change_nothing() {
    let b = PageBitmap::new(100, false);
    for (f, n) in BAD {
        assert_eq!(b.write(f, n), Mark::OutOfRange, "write({f}, {n})");
        assert_eq!(b.mark_dirty(f, n), Mark::OutOfRange, "mark_dirty({f}, {n})");
        assert_eq!(b.read(f, n, true), Mark::OutOfRange, "read({f}, {n})");
    }
    assert_eq!(dirty_pages(&b), Vec::<u64>::new());
    assert_eq!(
        b.materialized_chunks(),
        0,
        "a refused mark allocated a chunk"
    );
    // The edges that are inside still work.
    assert_eq!(b.write(99, 1), Mark::Done { faults: 1 });
    assert_eq!(b.write(100, 0), Mark::Done { faults: 0 });
    assert_eq!(dirty_pages(&b), vec![99]);
}

#[test]
fn producer_refuses_out_of_range() {
    let reg = SlotRegistry::new();
    let p = reg.register_slot(0, 0, 100).unwrap();
    for (f, n) in BAD {
        assert_eq!(p.mark(f, n), Err(Errno::EINVAL), "mark({f}, {n})");
    }
    assert!(!p.is_dirty(99) && !p.is_dirty(u64::MAX));
}

#[test]
fn control_and_query_methods_clip() {
    let b = PageBitmap::new(100, false);
    assert_eq!(b.write(95, 5), Mark::Done { faults: 5 });
    for (f, n) in BAD {
        let mut got = Vec::new();
        b.dirty_runs(f, n, |r| got.push(r));
        b.harvest(f, n, |r| got.push(r));
        b.set_clean(f, n, false);
        b.set_clean(f, n, true);
        b.zap(f, n, false);
        b.unpopulate(f, n);
        b.clean_runs([Run { first: f, count: n }]);
        let _ = b.uniform(f, n);
        let _ = b.uniform_run_end(f, n);
        let _ = b.page(f);
        let _ = b.window(f);
        let _ = b.bits_at(f, n);
        let mut copy = PageBitmap::new(100, false);
        copy.copy_from(f.min(99), &b, f, n, CopyRule::Plain);
        copy = PageBitmap::new(10, false);
        copy.copy_from(0, &b, 95, n, CopyRule::AllDirty);
        assert!(copy.pages() == 10);
    }
    // (98, 10) clipped is (98, 2): a harvest of it reports exactly pages 98 and 99.
    let b = PageBitmap::new(100, false);
    b.write(90, 10);
    let mut got = Vec::new();
    b.harvest(98, 10, |r| got.push((r.first, r.count)));
    assert_eq!(got, vec![(98, 2)]);
    assert_eq!(dirty_pages(&b), (90..98).collect::<Vec<_>>());
    // A page past the end reads as clean and absent.
    let p = b.page(5000);
    assert_eq!((p.clean, p.populated, p.backed), (1, 0, 0));
    // A drain target that leaves either bitmap is cut to what fits.
    let old = PageBitmap::new(100, false);
    old.write(97, 3);
    let heir = Arc::new(PageBitmap::new(10, false));
    old.seal_and_drain(vec![Target {
        src_first: 95,
        dst: heir.clone(),
        dst_first: 5,
        count: u64::MAX,
        rule: DrainRule::Plain,
    }]);
    assert_eq!(dirty_pages(&heir), vec![7, 8, 9]);
}

#[test]
fn dirty_log_keeps_runs_of_a_range_up_to_the_top_of_the_address_space() {
    let log = DirtyLog::new(0, u64::MAX, [(0, 1), (5, 3)]);
    assert_eq!(log.runs(), &[(0, 1), (5, 3)]);
    assert_eq!(log.len(), u64::MAX - 4095);
    let top = u64::MAX - 4095;
    let log = DirtyLog::new(top - 4096, 1 << 20, [(0, 1), (1, 1), (2, 5)]);
    assert_eq!(
        log.runs(),
        &[(0, 1)],
        "only the page below the top page fits"
    );
    assert_eq!(log.address_ranges().last(), Some((top - 4096, top)));
}

#[test]
fn slot_registration_checks_like_kvm_before_allocating() {
    let reg = SlotRegistry::new();
    assert_eq!(
        reg.register_slot(0, 0, u64::MAX).unwrap_err(),
        Errno::EINVAL
    );
    assert_eq!(
        reg.register_slot(0, 0, KVM_MEM_MAX_NR_PAGES + 1)
            .unwrap_err(),
        Errno::EINVAL
    );
    assert_eq!(reg.register_slot(0, 0x1001, 1).unwrap_err(), Errno::EINVAL);
    assert_eq!(
        reg.register_slot(0, u64::MAX - 4095, 2).unwrap_err(),
        Errno::EINVAL
    );
    assert!(reg.slot_ids().is_empty());
    assert_eq!(
        reg.register_slot(0, u64::MAX - 4095, 1).unwrap_err(),
        Errno::EINVAL
    );
    let p = reg.register_slot(0, u64::MAX - 8191, 1).unwrap();
    assert_eq!(p.pages(), 1);
}

/// Absurd sizes are refused with ENOMEM by the fallible constructors, before anything is
/// allocated; the largest accepted size costs a directory only (no page state).
#[test]
fn absurd_bitmap_sizes_are_refused_not_aborted() {
    use softdirty::bitmap::MAX_PAGES;
    for pages in [MAX_PAGES + 1, 1 << 52, u64::MAX] {
        for dirty in [false, true] {
            assert_eq!(
                PageBitmap::try_new(pages, dirty).unwrap_err(),
                Errno::ENOMEM
            );
        }
    }
    let big = PageBitmap::try_new(MAX_PAGES, false).unwrap();
    assert_eq!(big.pages(), MAX_PAGES);
    assert_eq!(big.materialized_chunks(), 0);
    assert!(matches!(
        big.write(MAX_PAGES - 1, 1),
        Mark::Done { faults: 1 }
    ));
    assert_eq!(big.materialized_chunks(), 1);
}

/// The same through vm-memory's bitmap type.
#[cfg(feature = "vm-memory")]
#[test]
fn absurd_vmm_bitmap_sizes_are_refused_not_aborted() {
    use softdirty::vmm::SoftDirtyBitmap;
    use std::num::NonZeroUsize;
    let one = NonZeroUsize::MIN;
    assert_eq!(
        SoftDirtyBitmap::try_new(usize::MAX, one).unwrap_err(),
        Errno::ENOMEM
    );
    let three = NonZeroUsize::new(3).unwrap();
    assert_eq!(
        SoftDirtyBitmap::try_new(4096, three).unwrap_err(),
        Errno::EINVAL
    );
    let page = NonZeroUsize::new(4096).unwrap();
    assert_eq!(
        SoftDirtyBitmap::try_new(1 << 40, page).unwrap().len(),
        1 << 28
    );
}

/// One operation with an arbitrary range on a bitmap, and the same on a plain model.
#[derive(Clone, Debug)]
enum Op {
    Write(u64, u64),
    Mark(u64, u64),
    Harvest(u64, u64),
    SetClean(u64, u64),
    Zap(u64, u64),
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        (0u64..320, 0u64..80),
        (
            0u64..320,
            prop_oneof![Just(u64::MAX), Just(u64::MAX - 3), 0u64..1000]
        ),
        (
            prop_oneof![Just(u64::MAX), Just(u64::MAX - 7), 250u64..5000],
            0u64..20
        ),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        range().prop_map(|(f, n)| Op::Write(f, n)),
        range().prop_map(|(f, n)| Op::Mark(f, n)),
        range().prop_map(|(f, n)| Op::Harvest(f, n)),
        range().prop_map(|(f, n)| Op::SetClean(f, n)),
        range().prop_map(|(f, n)| Op::Zap(f, n)),
    ]
}

proptest! {
    /// 300 pages (5 chunks' worth under loom, part of one chunk here): marks out of range
    /// are refused whole, control operations clipped; the dirty set always equals the
    /// model's, and a harvest reports exactly the model's dirty pages in the clipped range.
    #[test]
    fn arbitrary_ranges_match_a_per_page_model(ops in prop::collection::vec(op(), 1..40)) {
        const PAGES: u64 = 300;
        let b = PageBitmap::new(PAGES, false);
        let mut dirty = vec![false; PAGES as usize];
        let inside = |f: u64, n: u64| f.checked_add(n).is_some_and(|e| e <= PAGES);
        let clip = |f: u64, n: u64| (f.min(PAGES), f.saturating_add(n).min(PAGES));
        for o in ops {
            match o {
                Op::Write(f, n) | Op::Mark(f, n) => {
                    let m = if matches!(o, Op::Write(..)) { b.write(f, n) } else { b.mark_dirty(f, n) };
                    if inside(f, n) {
                        prop_assert!(matches!(m, Mark::Done { .. }), "{o:?}: {m:?}");
                        for p in f..f + n { dirty[p as usize] = true; }
                    } else {
                        prop_assert_eq!(m, Mark::OutOfRange, "{:?}", o);
                    }
                }
                Op::Harvest(f, n) => {
                    let mut got = Vec::new();
                    b.harvest(f, n, |r| got.extend(r.first..r.first + r.count));
                    let (s, e) = clip(f, n);
                    let want: Vec<u64> = (s..e).filter(|&p| dirty[p as usize]).collect();
                    prop_assert_eq!(got, want, "{:?}", o);
                    for p in s..e { dirty[p as usize] = false; }
                }
                Op::SetClean(f, n) => {
                    b.set_clean(f, n, true);
                    let (s, e) = clip(f, n);
                    for p in s..e { dirty[p as usize] = false; }
                }
                Op::Zap(f, n) => {
                    // A legacy zap forgets the soft-dirty bit with the PTE.
                    b.zap(f, n, false);
                    let (s, e) = clip(f, n);
                    for p in s..e { dirty[p as usize] = false; }
                }
            }
            let want: Vec<u64> = (0..PAGES).filter(|&p| dirty[p as usize]).collect();
            prop_assert_eq!(dirty_pages(&b), want, "after {:?}", o);
        }
    }
}
