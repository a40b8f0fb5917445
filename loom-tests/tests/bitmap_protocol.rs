#![cfg(loom)]
//! loom models of the bitmap protocol (`src/bitmap/`), driving the production
//! [`PageBitmap`] through the `cfg(loom)` sync shim. No epoch pinning here: each
//! structural operation is played by its bitmap steps (copy, seal, drain) on the main
//! thread, and a sealed fault "retries through the new index" by writing the heir the
//! index would name. The index/epoch side is modelled in `address_space.rs`.
//!
//! Under loom `CHUNK_PAGES` is 128: one chunk of two 64-bit words per 128-page bitmap.
//! Every model states its property in its doc comment; `loom-tests/README.md` lists the
//! bound, the execution count, the run time and the broken twin each one rejects.

use loom::sync::Arc;
use loom::thread;
use softdirty::bitmap::{Bits, CopyRule, DrainRule, Mark, PageBitmap, Run, Target};
use softdirty_loom_tests::{check2, race};

/// Pages of `b` whose bit in `pick(window)` is set, read a word at a time (a model's
/// final checks then cost a few loads, not three per page).
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

/// One successor of a sealed bitmap.
fn target(
    src_first: u64,
    dst: &Arc<PageBitmap>,
    dst_first: u64,
    count: u64,
    rule: DrainRule,
) -> Target {
    Target {
        src_first,
        dst: dst.clone(),
        dst_first,
        count,
        rule,
    }
}

fn dirty(b: &PageBitmap) -> Vec<u64> {
    pages_where(b, |x| !x.clean)
}

fn populated(b: &PageBitmap) -> Vec<u64> {
    pages_where(b, |x| x.populated)
}

fn harvest_pages(b: &PageBitmap) -> Vec<u64> {
    let mut out = vec![];
    b.harvest(0, b.pages(), |r: Run| {
        out.extend(r.first..r.first + r.count)
    });
    out
}

/// After a harvest that raced the writes took `first`: the next harvest's pages, and the
/// pages of both, sorted (each write must be in exactly one of them). Nothing may be
/// dirty after it: a dirty page left would sit behind a clear summary bit.
fn then_the_next_harvest(first: &[u64], b: &PageBitmap) -> (Vec<u64>, Vec<u64>) {
    let second = harvest_pages(b);
    let mut all: Vec<u64> = first.iter().chain(&second).copied().collect();
    all.sort_unstable();
    assert!(
        dirty(b).is_empty(),
        "a dirty page behind a clear summary bit (harvests {first:?} then {second:?})"
    );
    (second, all)
}

/// A materialized, all-clean, unpopulated bitmap whose word-0 summary bit is stale
/// (set, although no page of word 0 is dirty): the state a partial harvest, a legacy
/// zap or `clean_runs` leaves behind. Summary bits are conservative, so models must
/// start from this state too.
fn clean_with_stale_summary(pages: u64) -> PageBitmap {
    let b = PageBitmap::new(pages, false);
    b.set_clean(0, 1, false); // materializes the chunk, sets summary bit 0
    b.set_clean(0, 1, true); // clean again; summary bit 0 stays set
    b
}

// ------------------------------------------------------------------ clear_refs

/// clear_refs ∥ write. Contract 1: a write that completed before clear_refs started is
/// cleared; of two writes by one thread to one word, the later one is never cleared while
/// the earlier one survives (a clear is one RMW per word: it never tears a bit it did not
/// own); and whatever is dirty afterwards is still found by the next harvest (the summary
/// never loses a dirty word). Broken twin: `clear_summary_last`.
#[test]
fn clear_refs_vs_write() {
    check2(
        "clear_refs_vs_write",
        3,
        ["writers-spawned", "control-spawned"],
        |swap| {
            let b = Arc::new(clean_with_stale_summary(128));
            b.write(1, 1); // completed before clear_refs starts
            let (b1, b2) = (b.clone(), b.clone());
            race(
                swap,
                move || {
                    b1.write(3, 1);
                    b1.write(5, 1);
                    b1.write(70, 1);
                },
                move || b2.clear_all(),
            );
            let d = dirty(&b);
            assert!(
                !d.contains(&1),
                "a write that completed before clear_refs survived it"
            );
            assert!(
                !(d.contains(&3) && !d.contains(&5)),
                "clear tore a later write: {d:?}"
            );
            let h = harvest_pages(&b);
            assert_eq!(
                h, d,
                "dirty pages the summary lost (a later harvest misses them)"
            );
            assert!(dirty(&b).is_empty());
        },
    );
}

// ------------------------------------------------------------ scan with clear

/// get-and-clear (scan with `clear`) ∥ write. Contract 2: every write is reported by
/// exactly one harvest (the racing one or the final one), none twice, and nothing is
/// reported that no one wrote. Starts from a stale summary bit, so the harvest's
/// "nothing dirty in this word" shortcut is exercised. Broken twins: `harvest_precheck`
/// (the bug this model found), `blind_harvest`.
#[test]
fn harvest_vs_write() {
    check2(
        "harvest_vs_write",
        3,
        ["writers-spawned", "control-spawned"],
        |swap| {
            let b = Arc::new(clean_with_stale_summary(128));
            let (b1, b2) = (b.clone(), b.clone());
            let ((), first) = race(
                swap,
                move || {
                    b1.write(5, 1);
                    b1.write(70, 1);
                },
                move || harvest_pages(&b2),
            );
            let (second, all) = then_the_next_harvest(&first, &b);
            assert_eq!(
                all,
                vec![5, 70],
                "lost or duplicated: first {first:?} second {second:?}"
            );
        },
    );
}

/// get-and-clear of a fully dirty word ∥ a write to it. The harvest takes an all-dirty
/// word with a load and a plain `Release` store instead of a locked RMW (`take_word`).
/// Contract 2: the racing harvest reports every page that was dirty before it started;
/// a write that flipped its bit (`faults == 1`, so it ran after the store) is reported by
/// the next harvest, one that found its page dirty (`faults == 0`) is not reported twice;
/// and nothing stays dirty behind a clear summary bit. Broken twin: `relaxed_harvest_store`
/// (the fault's RMW reads the store without synchronizing, its relaxed summary test reads
/// the stale bit the harvest just cleared, and the page is lost to every later harvest).
#[test]
fn harvest_full_word_vs_write() {
    check2(
        "harvest_full_word_vs_write",
        3,
        ["writers-spawned", "control-spawned"],
        |swap| {
            let b = Arc::new(PageBitmap::new(128, false));
            b.write(0, 64); // word 0 all dirty, summary bit 0 set
            let (b1, b2) = (b.clone(), b.clone());
            let (mark, first) = race(swap, move || b1.write(5, 1), move || harvest_pages(&b2));
            let Mark::Done { faults } = mark else {
                panic!("unsealed bitmap answered {mark:?}")
            };
            assert_eq!(first, (0..64).collect::<Vec<u64>>(), "racing harvest");
            let second = harvest_pages(&b);
            let want: Vec<u64> = if faults == 1 { vec![5] } else { vec![] };
            assert_eq!(
                second, want,
                "write lost or reported twice (faults {faults})"
            );
            assert!(
                dirty(&b).is_empty(),
                "a dirty page behind a clear summary bit"
            );
        },
    );
}

/// Two writers on one bitmap word ∥ get-and-clear. Contract 2 with contention on the
/// word: each write is reported exactly once across the racing and the final harvest.
/// Broken twins: `blind_harvest`, `harvest_precheck`.
#[test]
fn two_writers_one_word_vs_harvest() {
    check2(
        "two_writers_one_word_vs_harvest",
        3,
        ["writers-spawned", "control-spawned"],
        |swap| {
            let b = Arc::new(clean_with_stale_summary(128));
            let w1 = {
                let b = b.clone();
                thread::spawn(move || {
                    b.write(3, 1);
                })
            };
            let (b1, b2) = (b.clone(), b.clone());
            let ((), first) = race(
                swap,
                move || {
                    b1.write(9, 1);
                },
                move || harvest_pages(&b2),
            );
            w1.join().unwrap();
            let (second, all) = then_the_next_harvest(&first, &b);
            assert_eq!(all, vec![3, 9], "first {first:?} second {second:?}");
        },
    );
}

/// Two writers on one bitmap word ∥ clear_refs: neither the clear nor the other writer's
/// RMW erases a write ordered after the clear, and the summary keeps every surviving
/// write harvestable. Broken twin: `clear_summary_last`.
#[test]
fn two_writers_one_word_vs_clear_refs() {
    check2(
        "two_writers_one_word_vs_clear_refs",
        2,
        ["writers-spawned", "control-spawned"],
        |swap| {
            let b = Arc::new(clean_with_stale_summary(128));
            let w1 = {
                let b = b.clone();
                thread::spawn(move || {
                    b.write(3, 1);
                    b.write(4, 1);
                })
            };
            let (b1, b2) = (b.clone(), b.clone());
            race(
                swap,
                move || {
                    b1.write(9, 1);
                    b1.write(10, 1);
                },
                move || b2.clear_all(),
            );
            w1.join().unwrap();
            let d = dirty(&b);
            assert!(!(d.contains(&3) && !d.contains(&4)), "{d:?}");
            assert!(!(d.contains(&9) && !d.contains(&10)), "{d:?}");
            assert_eq!(harvest_pages(&b), d, "summary lost a dirty word");
        },
    );
}

// ------------------------------------------------- structural: split, merge, mremap

/// mprotect split ∥ write (contract 3). The control side plays `Layout::build` +
/// `publish` for a split at page 64: copy each half into a new bitmap, then seal and
/// drain the old one. The writer writes pages 3 and 70 of the old VMA, retrying on the
/// heir (which the index published before the seal would name) when it finds the old
/// bitmap sealed. Afterwards page 3 is dirty and populated in the left heir, page 70
/// (page 6) in the right one, and nothing else: no write lost, none duplicated into the
/// wrong VMA, and the retired bitmap takes no new fault. Broken twins: `relaxed_fault`,
/// `no_recheck`, `no_drain`.
#[test]
fn split_vs_write() {
    split_model("split_vs_write", true);
}

/// The same split, the old bitmap untouched (its chunk not materialized): the writer's
/// chunk-installing CAS races the drain's slot RMW. Broken twins: `no_recheck`,
/// `no_drain`.
#[test]
fn split_vs_first_write_to_untouched_chunk() {
    split_model("split_vs_first_write_to_untouched_chunk", false);
}

fn split_model(name: &str, materialized: bool) {
    // Bound 2 for the untouched chunk: at 3 its control-spawned half explores 550k
    // executions (~110 s on 2 cores), too long for CI.
    let bound = if materialized { 3 } else { 2 };
    check2(
        name,
        bound,
        ["writers-spawned", "control-spawned"],
        move |swap| {
            let old = Arc::new(if materialized {
                clean_with_stale_summary(128)
            } else {
                PageBitmap::new(128, false)
            });
            let left = Arc::new(PageBitmap::new(64, false));
            let right = Arc::new(PageBitmap::new(64, false));
            let (o1, l1, r1) = (old.clone(), left.clone(), right.clone());
            let (o2, l2, r2) = (old.clone(), left.clone(), right.clone());
            race(
                swap,
                move || {
                    for p in [3u64, 70] {
                        // A sealed bitmap forwards the fault to its heirs; only the broken
                        // twin `retry_via_index` answers Sealed, and the index names the
                        // heirs.
                        if o1.write(p, 1) == Mark::Sealed {
                            let (h, q) = if p < 64 { (&l1, p) } else { (&r1, p - 64) };
                            assert_ne!(h.write(q, 1), Mark::Sealed, "heir sealed");
                        }
                    }
                },
                move || {
                    l2.copy_from(0, &o2, 0, 64, CopyRule::Plain);
                    r2.copy_from(0, &o2, 64, 64, CopyRule::Plain);
                    o2.seal_and_drain(vec![
                        target(0, &l2, 0, 64, DrainRule::Plain),
                        target(64, &r2, 0, 64, DrainRule::Plain),
                    ]);
                },
            );
            assert_eq!(dirty(&left), vec![3], "left heir");
            assert_eq!(dirty(&right), vec![6], "right heir");
            assert_eq!(populated(&left), vec![3]);
            assert_eq!(populated(&right), vec![6]);
            // A fault on the retired bitmap is forwarded to the heir (broken twin
            // `retry_via_index`: it answers `Sealed` instead).
            assert_eq!(old.write(5, 1), Mark::Done { faults: 1 }, "forwarded");
            assert_eq!(
                dirty(&left),
                vec![3, 5],
                "a retired bitmap forwards a new fault"
            );
        },
    );
}

// ------------------------------------------------ a whole word, one plain store

/// Written once, then made clean again: populated and backed, every page clean, the
/// summary bits stale (set). A later write of a whole word then changes only `clean`,
/// with the fault path's plain store (`fault_word`), and no populated or backed RMW that
/// would synchronize for it.
fn written_then_cleaned(pages: u64) -> PageBitmap {
    let b = PageBitmap::new(pages, false);
    b.write(0, pages);
    b.set_clean(0, pages, true);
    b
}

/// A whole-word write (the plain store) ∥ split (contract 3): the 64 pages of word 0 end
/// dirty in the left heir, whether the write reached the old bitmap before its drain,
/// after it (forwarded), or in between. Broken twin: `drain_no_summary_rmw` (the drain
/// reads the words without its summary RMW first; the write's store lands after the
/// drain read the word, its summary RMW synchronizes with nothing, it misses the seal).
#[test]
fn whole_word_write_vs_split() {
    check2(
        "whole_word_write_vs_split",
        3,
        ["writers-spawned", "control-spawned"],
        |swap| {
            let old = Arc::new(written_then_cleaned(128));
            let left = Arc::new(PageBitmap::new(64, false));
            let right = Arc::new(PageBitmap::new(64, false));
            let (o1, l1) = (old.clone(), left.clone());
            let (o2, l2, r2) = (old.clone(), left.clone(), right.clone());
            race(
                swap,
                move || {
                    if o1.write(0, 64) == Mark::Sealed {
                        assert_ne!(l1.write(0, 64), Mark::Sealed, "heir sealed");
                    }
                },
                move || {
                    l2.copy_from(0, &o2, 0, 64, CopyRule::Plain);
                    r2.copy_from(0, &o2, 64, 64, CopyRule::Plain);
                    o2.seal_and_drain(vec![
                        target(0, &l2, 0, 64, DrainRule::Plain),
                        target(64, &r2, 0, 64, DrainRule::Plain),
                    ]);
                },
            );
            assert_eq!(
                dirty(&left),
                (0..64).collect::<Vec<u64>>(),
                "whole-word write lost in the left heir"
            );
            assert_eq!(dirty(&right), Vec::<u64>::new(), "right heir");
        },
    );
}

/// A whole-word write (the plain store) ∥ get-and-clear (contract 2): its 64 pages are
/// reported by exactly one of the racing and the next harvest, and nothing stays dirty
/// behind a clear summary bit. Starts from stale summary bits, as `harvest_vs_write`.
/// Broken twin: `plain_store_summary_test` (the write's summary RMW waits on a test that
/// reads the stale bit the harvest just cleared; the word stays dirty behind a clear bit).
#[test]
fn whole_word_write_vs_harvest() {
    check2(
        "whole_word_write_vs_harvest",
        3,
        ["writers-spawned", "control-spawned"],
        |swap| {
            let b = Arc::new(written_then_cleaned(128));
            let (b1, b2) = (b.clone(), b.clone());
            let (mark, first) = race(swap, move || b1.write(0, 64), move || harvest_pages(&b2));
            assert!(
                matches!(mark, Mark::Done { .. }),
                "unsealed bitmap answered {mark:?}"
            );
            let (second, all) = then_the_next_harvest(&first, &b);
            assert_eq!(
                all,
                (0..64).collect::<Vec<u64>>(),
                "whole-word write lost or reported twice: first {first:?} second {second:?}"
            );
        },
    );
}

/// A whole-word write (the plain store) ∥ a legacy zap of the same word (contract 2b):
/// the word ends as one sequential order leaves it: write;zap (clean, unpopulated,
/// unbacked) or zap;write (dirty, populated, backed). Broken twin:
/// `rewrite_no_summary_rmw` (the zap rewrites the word without its summary RMW first;
/// the write's store lands after the zap's, its summary RMW synchronizes with nothing, it
/// misses the zap generation and stands dirty but unpopulated).
#[test]
fn whole_word_write_vs_zap() {
    check2(
        "whole_word_write_vs_zap",
        3,
        ["writers-spawned", "control-spawned"],
        |swap| {
            let b = Arc::new(written_then_cleaned(128));
            let (b1, b2) = (b.clone(), b.clone());
            race(
                swap,
                move || {
                    b1.write(0, 64);
                },
                move || b2.zap(0, 64, false),
            );
            let w = b.window(0);
            let write_then_zap = (w.clean, w.populated, w.backed) == (!0, 0, 0);
            let zap_then_write = (w.clean, w.populated, w.backed) == (0, !0, !0);
            assert!(
                write_then_zap || zap_then_write,
                "word 0 matches no sequential order: {w:?}"
            );
        },
    );
}

/// merge ∥ write (contract 3): two 64-page VMAs become one 128-page VMA (an mprotect or
/// mmap merge): copy both, then seal and drain both. The writer writes page 3 of the left
/// and page 5 of the right VMA; afterwards exactly pages 3 and 69 of the merged bitmap
/// are dirty and populated. Broken twins: `relaxed_fault`, `no_recheck`, `no_drain`.
#[test]
fn merge_vs_write() {
    check2(
        "merge_vs_write",
        3,
        ["writers-spawned", "control-spawned"],
        |swap| {
            let a = Arc::new(clean_with_stale_summary(64));
            let b = Arc::new(clean_with_stale_summary(64));
            let m = Arc::new(PageBitmap::new(128, false));
            let (a1, b1, m1) = (a.clone(), b.clone(), m.clone());
            let (a2, b2, m2) = (a.clone(), b.clone(), m.clone());
            race(
                swap,
                move || {
                    if a1.write(3, 1) == Mark::Sealed {
                        assert_ne!(m1.write(3, 1), Mark::Sealed);
                    }
                    if b1.write(5, 1) == Mark::Sealed {
                        assert_ne!(m1.write(69, 1), Mark::Sealed);
                    }
                },
                move || {
                    m2.copy_from(0, &a2, 0, 64, CopyRule::Plain);
                    m2.copy_from(64, &b2, 0, 64, CopyRule::Plain);
                    a2.seal_and_drain(vec![target(0, &m2, 0, 64, DrainRule::Plain)]);
                    b2.seal_and_drain(vec![target(0, &m2, 64, 64, DrainRule::Plain)]);
                },
            );
            assert_eq!(dirty(&m), vec![3, 69]);
            assert_eq!(populated(&m), vec![3, 69]);
        },
    );
}

/// mremap move ∥ faults, legacy rule (contract 3): the move copies with
/// `CopyRule::DirtyPopulated` and drains with `DrainRule::DirtyPopulated` (the kernel
/// marks every moved present PTE soft-dirty). The writer read-faults page 3 and
/// write-faults page 70 of the source. Afterwards both are populated in the destination,
/// page 70 is dirty, and page 3 is dirty if its read fault landed in the source (so it
/// was moved); if it retried on the destination it may be clean. Broken twins:
/// `no_recheck`, `no_drain_rule`.
#[test]
fn mremap_vs_faults() {
    check2(
        "mremap_vs_faults",
        3,
        ["writers-spawned", "control-spawned"],
        |swap| {
            let src = Arc::new(clean_with_stale_summary(128));
            let dst = Arc::new(PageBitmap::new(128, false));
            let (s1, d1, s2, d2) = (src.clone(), dst.clone(), src.clone(), dst.clone());
            let (read_landed_in_src, ()) = race(
                swap,
                move || {
                    let in_src = match s1.read(3, 1, true) {
                        Mark::Done { .. } => true,
                        Mark::Sealed => {
                            assert_ne!(d1.read(3, 1, true), Mark::Sealed);
                            false
                        }
                        Mark::NoMem | Mark::OutOfRange => {
                            unreachable!("the chunk limit is far away, the range inside")
                        }
                    };
                    if s1.write(70, 1) == Mark::Sealed {
                        assert_ne!(d1.write(70, 1), Mark::Sealed);
                    }
                    in_src
                },
                move || {
                    d2.copy_from(0, &s2, 0, 128, CopyRule::DirtyPopulated);
                    s2.seal_and_drain(vec![target(0, &d2, 0, 128, DrainRule::DirtyPopulated)]);
                },
            );
            assert_eq!(populated(&dst), vec![3, 70]);
            let d = dirty(&dst);
            assert!(d.contains(&70));
            if read_landed_in_src {
                assert_eq!(d, vec![3, 70], "a moved present page must be soft-dirty");
            }
        },
    );
}

// ------------------------------------------------------------------------ fork

/// fork ∥ write (contract 3): fork copies the parent's bitmap without sealing it. The
/// parent keeps every write (nothing lost), and the child's copy is a per-page snapshot
/// that never shows a page written (populated or backed) but not soft-dirty: the copy
/// reads populated/backed before clean, the fault writes clean first. The child holds no
/// page no one wrote. Broken twin: `copy_clean_first`.
#[test]
fn fork_vs_write() {
    check2(
        "fork_vs_write",
        3,
        ["writers-spawned", "control-spawned"],
        |swap| {
            let parent = Arc::new(clean_with_stale_summary(128));
            let (p1, p2) = (parent.clone(), parent.clone());
            let ((), child) = race(
                swap,
                move || {
                    p1.write(3, 1);
                    p1.write(70, 1);
                },
                move || {
                    let child = PageBitmap::new(128, false);
                    child.copy_from(0, &p2, 0, 128, CopyRule::Plain);
                    child
                },
            );
            assert_eq!(dirty(&parent), vec![3, 70], "parent lost a write");
            for w in [0, 64] {
                let x = child.window(w);
                assert_eq!(
                    (x.populated | x.backed) & x.clean,
                    0,
                    "child: a page written (populated or backed) but clean: {x:?}"
                );
            }
            for p in dirty(&child) {
                assert!(p == 3 || p == 70, "child page {p} dirty but never written");
            }
        },
    );
}
