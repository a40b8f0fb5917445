//! Unit tests of the bitmap core.

use super::directory::LEAF_SLOTS;
use super::*;

fn dirty_pages(b: &PageBitmap) -> Vec<u64> {
    (0..b.pages()).filter(|&p| b.page(p).clean == 0).collect()
}

#[test]
fn runs_of_bits() {
    let mut v = vec![];
    for_each_run(0b1110_0110u64 | (1 << 63), |s, n| v.push((s, n)));
    assert_eq!(v, vec![(1, 2), (5, 3), (63, 1)]);
    let mut v = vec![];
    for_each_run(!0, |s, n| v.push((s, n)));
    assert_eq!(v, vec![(0, 64)]);
}

#[test]
fn fresh_bitmap_is_dirty_or_clean_and_costs_no_chunk() {
    let b = PageBitmap::new(10_000, true);
    assert_eq!(b.materialized_chunks(), 0);
    assert_eq!(dirty_pages(&b).len(), 10_000);
    let c = PageBitmap::new(10_000, false);
    assert!(dirty_pages(&c).is_empty());
}

#[test]
fn write_faults_once_and_test_before_set() {
    let b = PageBitmap::new(300, false);
    assert_eq!(b.write(5, 3), Mark::Done { faults: 3 });
    assert_eq!(b.write(6, 1), Mark::Done { faults: 0 });
    assert_eq!(dirty_pages(&b), vec![5, 6, 7]);
    assert_eq!(
        b.page(6),
        Bits {
            clean: 0,
            populated: 1,
            backed: 1
        }
    );
    assert_eq!(b.read(100, 1, true), Mark::Done { faults: 0 });
    assert_eq!(
        b.page(100),
        Bits {
            clean: 1,
            populated: 1,
            backed: 0
        }
    );
}

#[test]
fn harvest_reports_runs_across_words_and_chunks_and_clears_them() {
    let n = CHUNK_PAGES * 3;
    let b = PageBitmap::new(n, false);
    b.write(60, 10);
    b.write(CHUNK_PAGES - 2, 4);
    b.write(n - 1, 1);
    let mut runs = vec![];
    b.harvest(0, n, |r| runs.push((r.first, r.count)));
    assert_eq!(runs, vec![(60, 10), (CHUNK_PAGES - 2, 4), (n - 1, 1)]);
    assert!(dirty_pages(&b).is_empty());
    let mut again = vec![];
    b.harvest(0, n, |r| again.push(r));
    assert!(again.is_empty());
}

#[test]
fn partial_harvest_keeps_other_pages_dirty() {
    let b = PageBitmap::new(200, true);
    let mut runs = vec![];
    b.harvest(10, 20, |r| runs.push((r.first, r.count)));
    assert_eq!(runs, vec![(10, 20)]);
    let d = dirty_pages(&b);
    assert_eq!(d.len(), 180);
    assert!(!d.contains(&10) && d.contains(&9) && d.contains(&30));
    // The summary still finds the rest.
    let mut rest = vec![];
    b.harvest(0, 200, |r| rest.push((r.first, r.count)));
    assert_eq!(rest, vec![(0, 10), (30, 170)]);
}

#[test]
fn clear_all_then_tail_bits_stay_clean() {
    let b = PageBitmap::new(70, true);
    b.write(3, 1);
    b.clear_all();
    assert!(dirty_pages(&b).is_empty());
    let mut runs = vec![];
    b.harvest(0, 70, |r| runs.push(r));
    assert!(runs.is_empty());
}

#[test]
fn zap_modes() {
    let b = PageBitmap::new(64, false);
    b.write(0, 4);
    b.clear_all();
    b.zap(1, 2, true);
    assert_eq!(dirty_pages(&b), vec![1, 2]);
    assert_eq!(b.page(1).populated, 0);
    b.write(10, 1);
    b.zap(10, 1, false);
    assert_eq!(
        b.page(10),
        Bits {
            clean: 1,
            populated: 0,
            backed: 0
        }
    );
}

#[test]
fn copy_with_unaligned_offsets_and_rules() {
    let src = PageBitmap::new(1000, false);
    src.write(100, 5);
    src.read(200, 3, true);
    let dst = PageBitmap::new(500, false);
    dst.copy_from(7, &src, 95, 400, CopyRule::Plain);
    for p in 0..500u64 {
        let s = if (7..407).contains(&p) {
            src.page(p - 7 + 95)
        } else {
            Bits {
                clean: 1,
                populated: 0,
                backed: 0,
            }
        };
        assert_eq!(dst.page(p), s, "page {p}");
    }
    let mv = PageBitmap::new(400, false);
    mv.copy_from(0, &src, 95, 400, CopyRule::DirtyPopulated);
    let d = dirty_pages(&mv);
    assert_eq!(d, vec![5, 6, 7, 8, 9, 105, 106, 107]);
}

#[test]
fn huge_sparse_bitmap_is_cheap() {
    let pages = 1u64 << 28; // 1 TiB
    let b = PageBitmap::new(pages, true);
    b.clear_all();
    b.write(12345, 1);
    b.write(pages - 1, 1);
    assert_eq!(b.materialized_chunks(), 2);
    let mut runs = vec![];
    b.harvest(0, pages, |r| runs.push((r.first, r.count)));
    assert_eq!(runs, vec![(12345, 1), (pages - 1, 1)]);
    assert!(b.tracking_bytes() < 1 << 20);
}

#[test]
fn sealed_bitmap_forwards_faults_and_drains_late_faults() {
    let old = PageBitmap::new(128, false);
    old.write(1, 1);
    let new = Arc::new(PageBitmap::new(128, false));
    new.copy_from(0, &old, 0, 128, CopyRule::Plain);
    // A "late" fault between copy and seal.
    old.write(70, 1);
    old.seal_and_drain(vec![Target {
        src_first: 0,
        dst: new.clone(),
        dst_first: 0,
        count: 128,
        rule: DrainRule::Plain,
    }]);
    assert_eq!(dirty_pages(&new), vec![1, 70]);
    // A fault after the seal is forwarded to the successor.
    assert_eq!(old.write(90, 1), Mark::Done { faults: 1 });
    assert_eq!(dirty_pages(&new), vec![1, 70, 90]);
    // A fault that changes nothing needs no re-check.
    assert_eq!(old.write(1, 1), Mark::Done { faults: 0 });
}

#[test]
fn a_fault_after_a_zap_redoes_nothing_and_a_zap_after_a_write_wins() {
    let b = PageBitmap::new(64, false);
    b.write(3, 1);
    b.zap(3, 1, false);
    assert_eq!(
        b.page(3),
        Bits {
            clean: 1,
            populated: 0,
            backed: 0
        }
    );
    assert_eq!(b.write(3, 1), Mark::Done { faults: 1 });
    assert_eq!(
        b.page(3),
        Bits {
            clean: 0,
            populated: 1,
            backed: 1
        }
    );
}

#[test]
fn a_small_bitmap_leaf_covers_only_its_slots() {
    // A one-page VMA split off an untouched dirty mapping: its directory gets a leaf to
    // hold the dirty tag of its one slot. That leaf is one slot (8 bytes), not 512
    // (4 KiB): 60,000 such VMAs cost 0.96 MB of tracking, not 246 MB.
    let src = PageBitmap::new(8192, true);
    for pages in [1u64, 3, CHUNK_PAGES + 1] {
        let dst = PageBitmap::new(pages, false);
        dst.copy_from(0, &src, 1, pages, CopyRule::Plain);
        assert_eq!(dst.uniform(0, pages), Some(false));
        let slots = pages.div_ceil(CHUNK_PAGES) as usize;
        assert_eq!(dst.materialized_chunks(), 0);
        assert_eq!(dst.tracking_bytes(), 8 + slots * 8, "{pages} pages");
    }
}

#[test]
fn a_copy_of_a_huge_untouched_bitmap_costs_a_top_entry_per_leaf() {
    // 126 TiB, 8 pages written far apart, cleared: a fork-like whole copy installs a leaf
    // only where the source has one, and copies untouched leaves as top entries.
    let pages = 126u64 << 28;
    let src = PageBitmap::new(pages, true);
    let written: Vec<u64> = (0..8).map(|i| i * 1_000_003).collect();
    for &p in &written {
        assert_eq!(src.write(p, 1), Mark::Done { faults: 0 });
    }
    src.clear_all();
    src.write(written[3], 1);
    let dst = PageBitmap::new(pages, false);
    dst.copy_from(0, &src, 0, pages, CopyRule::Plain);
    assert_eq!(dst.materialized_chunks(), src.materialized_chunks());
    let top = pages.div_ceil(CHUNK_PAGES).div_ceil(LEAF_SLOTS as u64) as usize * 8;
    let leaves = dst.tracking_bytes() - top - dst.materialized_chunks() * CHUNK_BYTES;
    assert!(
        leaves <= 8 * LEAF_SLOTS * 8,
        "{leaves} bytes of leaves for 8 touched chunks"
    );
    let mut runs = vec![];
    dst.dirty_runs(0, pages, |r| runs.push((r.first, r.count)));
    assert_eq!(runs, vec![(written[3], 1)]);
    // A precise-mode fresh mapping (all dirty) copies as dirty tags, with no leaf.
    let fresh = PageBitmap::new(pages, true);
    let copy = PageBitmap::new(pages, false);
    copy.copy_from(0, &fresh, 0, pages, CopyRule::Plain);
    assert_eq!(copy.tracking_bytes(), top);
    assert_eq!(copy.uniform(0, pages), Some(false));
}

/// A write of whole words (the plain store of `fault_word`) and a partly clean word:
/// the counts, the bits, and the summary that lets the next harvest find them.
#[test]
fn whole_word_writes_count_flip_and_are_harvested() {
    let b = PageBitmap::new(256, false);
    b.write(0, 256);
    b.set_clean(0, 256, true);
    b.write(130, 2); // word 2 partly dirty
    assert_eq!(b.write(0, 64), Mark::Done { faults: 64 });
    assert_eq!(b.write(128, 128), Mark::Done { faults: 126 });
    assert_eq!(b.write(0, 64), Mark::Done { faults: 0 }, "already dirty");
    assert_eq!(b.window(0).clean, 0);
    assert_eq!(b.window(64).clean, !0, "word 1 untouched");
    let mut got = vec![];
    b.harvest(0, 256, |r| got.push((r.first, r.count)));
    assert_eq!(got, vec![(0, 64), (128, 128)]);
}

/// The one-page light mark (`mark_page_dirty_light`, vm-memory's `write_obj`) is
/// `mark_dirty_light` of one page: a clean page flips and is harvested, a dirty one
/// costs no fault, an untouched clean chunk is materialized, a page past the end is
/// refused.
#[test]
fn one_page_light_mark_is_the_range_mark() {
    let Some(light) = crate::barrier::LightWriter::register() else {
        eprintln!("membarrier unavailable: no light writer, nothing to check");
        return;
    };
    let b = PageBitmap::new(2 * CHUNK_PAGES, false); // clean, no chunk materialized
    assert_eq!(b.mark_page_dirty_light(&light, 5), Mark::Done { faults: 1 });
    assert_eq!(b.mark_page_dirty_light(&light, 5), Mark::Done { faults: 0 });
    assert_eq!(
        b.mark_page_dirty_light(&light, CHUNK_PAGES + 70),
        Mark::Done { faults: 1 }
    );
    assert_eq!(
        b.mark_page_dirty_light(&light, 2 * CHUNK_PAGES),
        Mark::OutOfRange
    );
    let mut got = vec![];
    b.harvest(0, b.pages(), |r| got.push((r.first, r.count)));
    assert_eq!(got, vec![(5, 1), (CHUNK_PAGES + 70, 1)]);
    // A clean page next to a dirty one in the same word: its own bit decides.
    assert_eq!(b.mark_page_dirty_light(&light, 6), Mark::Done { faults: 1 });
    assert_eq!(b.mark_page_dirty_light(&light, 5), Mark::Done { faults: 1 });
    assert_eq!(b.mark_page_dirty_light(&light, 4), Mark::Done { faults: 1 });
    assert_eq!(b.mark_page_dirty_light(&light, 8), Mark::Done { faults: 1 });
    assert_eq!(b.mark_page_dirty_light(&light, 9), Mark::Done { faults: 1 });
    let mut got = vec![];
    b.harvest(0, b.pages(), |r| got.push((r.first, r.count)));
    assert_eq!(got, vec![(4, 3), (8, 2)]);
}
