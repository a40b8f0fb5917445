#![cfg(loom)]
//! loom models of the data plane against the index/epoch side (`src/mm.rs`): the
//! production `AddressSpace`, its crossbeam-epoch publication (`crossbeam_loom`) and its
//! control lock, all through the `cfg(loom)` shim. Pinning makes these models expensive
//! (rust-anchors §2.6), so they are small (one writer, one structural operation) and run
//! at preemption bound 2 by default (`SOFTDIRTY_LOOM_EPOCH_BOUND` overrides it).

use loom::sync::Arc;
use loom::thread;
use softdirty::errno::Errno;
use softdirty::mm::{AddressSpace, Placement, Sharing};
use softdirty::mode::Mode;
use softdirty::prot::Prot;
use softdirty_loom_tests::check_epoch;

const PAGE: u64 = 4096;

/// munmap ∥ write (contract 4): the write either lands before the unmap (`Ok`, in the
/// retired bitmap, which stays alive while the writer is pinned) or fails with EFAULT;
/// afterwards the range is gone and every write to it fails. Freed memory is never
/// touched: see `reclamation.rs` for the model that would notice. Broken twin:
/// `no_defer` (caught by `reclamation.rs`; here it is undefined behaviour that loom does
/// not see, which is why that model exists).
#[test]
fn munmap_vs_write() {
    check_epoch("munmap_vs_write", 2, || {
        let mm = Arc::new(AddressSpace::new(Mode::Precise));
        let a = mm
            .mmap(0, 2 * PAGE, Prot::RW, Sharing::Private, Placement::Hint)
            .unwrap();
        let w = {
            let mm = mm.clone();
            thread::spawn(move || mm.write(a + PAGE, 1))
        };
        mm.munmap(a, 2 * PAGE).unwrap();
        let r = w.join().unwrap();
        assert!(r == Ok(()) || r == Err(Errno::EFAULT), "{r:?}");
        assert_eq!(mm.write(a + PAGE, 1), Err(Errno::EFAULT));
        assert_eq!(mm.vma_total(), 0);
    });
}

/// mprotect split ∥ write through `AddressSpace` (contract 3): a fault that finds the
/// bitmap sealed forwards itself to the heirs. Afterwards the written page is soft-dirty
/// in pagemap and nothing else is. Broken twins: `no_drain`, `no_recheck`,
/// `retry_via_index`.
#[test]
fn mprotect_split_vs_write() {
    check_epoch("mprotect_split_vs_write", 2, || {
        let mm = Arc::new(AddressSpace::new(Mode::Precise));
        let a = mm
            .mmap(0, 128 * PAGE, Prot::RW, Sharing::Private, Placement::Hint)
            .unwrap();
        mm.clear_refs(4).unwrap();
        let w = {
            let mm = mm.clone();
            thread::spawn(move || mm.write(a + 3 * PAGE, 1))
        };
        mm.mprotect(a + 64 * PAGE, 64 * PAGE, Prot::RWX).unwrap();
        assert_eq!(w.join().unwrap(), Ok(()));
        assert_eq!(mm.vma_total(), 2);
        assert_eq!(
            mm.softdirty_runs(a, 128 * PAGE),
            vec![3..4],
            "write lost in the split"
        );
    });
}

/// A space with one private RW mapping of `pages` pages whose page 0 was written and
/// then cleared (present, real page, not soft-dirty).
fn written_then_cleared(mode: Mode, pages: u64) -> (Arc<AddressSpace>, u64) {
    let mm = Arc::new(AddressSpace::new(mode));
    let a = mm
        .mmap(0, pages * PAGE, Prot::RW, Sharing::Private, Placement::Hint)
        .unwrap();
    mm.write(a, 1).unwrap();
    mm.clear_refs(4).unwrap();
    (mm, a)
}

/// `MADV_DONTNEED` ∥ write of the same page (issue "No write lost, for real", bug 1):
/// the zap rewrites `populated`, `backed` and `clean` with three RMWs, the fault in
/// another order. Whatever the interleaving, the page ends as one of the two sequential
/// orders leaves it (computed on fresh spaces first): write then zap, or zap then write.
/// In `legacy` the bug left the page present, shown as the zero page, and not
/// soft-dirty: the next harvest missed the write. Broken twin: `zap_no_seq`.
fn dontneed_model(name: &str, mode: Mode) {
    dontneed_model_from(name, mode, true);
}

/// A space with one private RW mapping of one page, written then cleared (present, real
/// page, clean) and, unless `cleared`, written again (soft-dirty at the page level only:
/// the VMA's `VM_SOFTDIRTY` went with the clear).
fn written(mode: Mode, cleared: bool) -> (Arc<AddressSpace>, u64) {
    let (mm, a) = written_then_cleared(mode, 1);
    if !cleared {
        mm.write(a, 1).unwrap();
    }
    (mm, a)
}

/// [`dontneed_model`] from a page that is cleared (`cleared`) or still soft-dirty.
fn dontneed_model_from(name: &str, mode: Mode, cleared: bool) {
    check_epoch(name, 2, move || {
        let sequential = |write_first: bool| {
            let (mm, a) = written(mode, cleared);
            if write_first {
                mm.write(a, 1).unwrap();
                mm.madvise_dontneed(a, PAGE).unwrap();
            } else {
                mm.madvise_dontneed(a, PAGE).unwrap();
                mm.write(a, 1).unwrap();
            }
            mm.pagemap_entry(a)
        };
        let (write_zap, zap_write) = (sequential(true), sequential(false));
        let (mm, a) = written(mode, cleared);
        let w = {
            let mm = mm.clone();
            thread::spawn(move || mm.write(a, 1))
        };
        mm.madvise_dontneed(a, PAGE).unwrap();
        assert_eq!(w.join().unwrap(), Ok(()));
        let e = mm.pagemap_entry(a);
        assert!(
            e == write_zap || e == zap_write,
            "pagemap {e:#x} matches no sequential order (write;zap {write_zap:#x}, \
             zap;write {zap_write:#x})"
        );
    });
}

#[test]
fn dontneed_vs_write_legacy() {
    dontneed_model("dontneed_vs_write_legacy", Mode::Legacy);
}

#[test]
fn dontneed_vs_write_precise() {
    dontneed_model("dontneed_vs_write_precise", Mode::Precise);
}

/// `MADV_DONTNEED` ∥ a write to a page that is soft-dirty at the page level, in `legacy`
/// (the zap makes it clean). Before the fault read the zap generation at the start of its
/// attempt, a test load could skip an RMW on a pre-zap bit (the dirty clean bit, or the
/// populated bit), the generation was read only before a later RMW, after the whole zap,
/// and the fault stood on a state no sequential order leaves: present and clean (a write
/// no harvest would report) or written but unpopulated. Broken twin `zap_gen_late`.
#[test]
fn dontneed_vs_write_to_dirty_page_legacy() {
    dontneed_model_from(
        "dontneed_vs_write_to_dirty_page_legacy",
        Mode::Legacy,
        false,
    );
}

/// A first write ∥ an operation that republishes the VMA over the same bitmap (a
/// whole-VMA mprotect, a legacy `clear_refs 4`), then fork (bug 2). The successor shares
/// the old VMA's bitmap; the writer that loaded the old index assigns the anon_vma on
/// the old VMA. In every sequential order the write precedes the fork, so the child has
/// the page. Broken twin: `no_anon_freeze` (nothing froze the old VMA's anon_vma cell: the
/// writer assigned it after the operation read it, and the child lacked the page).
fn first_write_vs_republish_then_fork(name: &str, mode: Mode, mprotect: bool) {
    check_epoch(name, 2, move || {
        let mm = Arc::new(AddressSpace::new(mode));
        let a = mm
            .mmap(0, 2 * PAGE, Prot::RW, Sharing::Private, Placement::Hint)
            .unwrap();
        let w = {
            let mm = mm.clone();
            thread::spawn(move || mm.write(a, 1))
        };
        if mprotect {
            mm.mprotect(a, 2 * PAGE, Prot::RWX).unwrap();
        } else {
            mm.clear_refs(4).unwrap();
        }
        assert_eq!(w.join().unwrap(), Ok(()));
        let child = mm.fork();
        assert_eq!(
            child.present_runs(a, 2 * PAGE),
            vec![0..1],
            "child lacks the page"
        );
        assert_eq!(mm.present_runs(a, 2 * PAGE), vec![0..1]);
    });
}

#[test]
fn first_write_vs_whole_mprotect_then_fork() {
    first_write_vs_republish_then_fork(
        "first_write_vs_whole_mprotect_then_fork",
        Mode::Precise,
        true,
    );
}

#[test]
fn first_write_vs_legacy_clear_refs_then_fork() {
    first_write_vs_republish_then_fork(
        "first_write_vs_legacy_clear_refs_then_fork",
        Mode::Legacy,
        false,
    );
}

/// A first write ∥ mprotect to read-only of the whole, never-written VMA: mprotect drops
/// `VM_ACCOUNT` from a VMA that has no anon_vma. Sequentially either the write comes
/// first (`Ok`, the VMA is faulted and keeps `ac`) or the mprotect does (`EFAULT`, the
/// VMA is unfaulted without `ac`). Broken twins: `no_anon_freeze` (the anon_vma read
/// without freezing the cell: the write completes after the decision, `Ok` with `ac`
/// dropped).
#[test]
fn first_write_vs_mprotect_readonly_account() {
    check_epoch("first_write_vs_mprotect_readonly_account", 2, || {
        let mm = Arc::new(AddressSpace::new(Mode::Precise));
        let a = mm
            .mmap(0, 2 * PAGE, Prot::RW, Sharing::Private, Placement::Hint)
            .unwrap();
        let w = {
            let mm = mm.clone();
            thread::spawn(move || mm.write(a, 1))
        };
        mm.mprotect(a, 2 * PAGE, Prot::R).unwrap();
        let r = w.join().unwrap();
        let flags = mm.smaps_vmflags(a).unwrap();
        let ac = flags.split(' ').any(|f| f == "ac");
        let faulted = mm.vmas()[0].faulted;
        match r {
            Ok(()) => assert!(ac && faulted, "write Ok but {flags} faulted={faulted}"),
            Err(e) => {
                assert_eq!(e, Errno::EFAULT);
                assert!(
                    !ac && !faulted,
                    "write EFAULT but {flags} faulted={faulted}"
                )
            }
        }
    });
}

/// A write of two pages in two bitmap words ∥ an mremap move of the whole VMA (legacy;
/// the moved VMA keeps `VM_SOFTDIRTY`, so presence is what tells). Sequentially the write comes first (`Ok`, both
/// pages present at the destination) or the move does (`EFAULT`, nothing present there).
/// Before forwarding, a fault that found the source sealed retried through the index,
/// hit the unmapped source and returned EFAULT after the drain had carried one of its
/// words. Broken twin: `retry_via_index`.
#[test]
fn write_vs_mremap_move() {
    check_epoch("write_vs_mremap_move", 2, || {
        let mm = Arc::new(AddressSpace::new(Mode::Legacy));
        let a = mm
            .mmap(0, 128 * PAGE, Prot::RW, Sharing::Private, Placement::Hint)
            .unwrap();
        let b = mm
            .mmap(0, 128 * PAGE, Prot::RW, Sharing::Private, Placement::Hint)
            .unwrap();
        mm.munmap(b, 128 * PAGE).unwrap();
        mm.write(a + 100 * PAGE, 1).unwrap(); // materialize the chunk: the race is on words
        let w = {
            let mm = mm.clone();
            thread::spawn(move || mm.write(a + 63 * PAGE, 2 * PAGE))
        };
        assert_eq!(mm.mremap(a, 128 * PAGE, 128 * PAGE, true, Some(b)), Ok(b));
        let r = w.join().unwrap();
        let present = mm.present_runs(b + 63 * PAGE, 2 * PAGE);
        match r {
            Ok(()) => assert_eq!(present, vec![0..2], "write Ok but not all moved"),
            Err(e) => {
                assert_eq!(e, Errno::EFAULT);
                assert_eq!(present, vec![], "write EFAULT but part of it moved")
            }
        }
    });
}

/// A write ∥ an mprotect that merges its VMA into the neighbour (copy, publish, seal,
/// drain of two bitmaps into one): the write lands in the merged VMA. Broken twins:
/// `no_drain`, `no_recheck`.
#[test]
fn write_vs_mprotect_merge() {
    check_epoch("write_vs_mprotect_merge", 2, || {
        let mm = Arc::new(AddressSpace::new(Mode::Precise));
        let a = mm
            .mmap(0, 128 * PAGE, Prot::RW, Sharing::Private, Placement::Hint)
            .unwrap();
        mm.mprotect(a + 64 * PAGE, 64 * PAGE, Prot::RWX).unwrap();
        mm.write(a, 1).unwrap();
        mm.write(a + 64 * PAGE, 1).unwrap();
        mm.clear_refs(4).unwrap();
        let w = {
            let mm = mm.clone();
            thread::spawn(move || mm.write(a + 70 * PAGE, 1))
        };
        mm.mprotect(a + 64 * PAGE, 64 * PAGE, Prot::RW).unwrap();
        assert_eq!(w.join().unwrap(), Ok(()));
        assert_eq!(mm.vma_total(), 1);
        assert_eq!(mm.softdirty_runs(a, 128 * PAGE), vec![70..71], "write lost");
    });
}

/// A write to a VMA ∥ an mmap merged onto its end that grows it in place (the new VMA
/// shares the old one's bitmap, which has room; no seal, no drain; the new pages' state is
/// set in the word the write also changes). The write lands in the grown VMA. Broken twin:
/// `grow_store` (the new pages set with a load and a store, not an RMW).
#[test]
fn write_vs_mmap_grow_in_place() {
    check_epoch("write_vs_mmap_grow_in_place", 2, || {
        let mm = Arc::new(AddressSpace::new(Mode::Precise));
        let a = mm
            .mmap(0, PAGE, Prot::RW, Sharing::Private, Placement::Hint)
            .unwrap();
        // The first growth copies into a bitmap with room for 4 pages.
        mm.mmap(a + PAGE, PAGE, Prot::RW, Sharing::Private, Placement::Fixed)
            .unwrap();
        mm.clear_refs(4).unwrap();
        let w = {
            let mm = mm.clone();
            thread::spawn(move || mm.write(a, 1))
        };
        mm.mmap(
            a + 2 * PAGE,
            PAGE,
            Prot::RW,
            Sharing::Private,
            Placement::Fixed,
        )
        .unwrap();
        assert_eq!(w.join().unwrap(), Ok(()));
        assert_eq!(mm.vma_total(), 1);
        assert_eq!(
            mm.softdirty_runs(a, 3 * PAGE),
            vec![0..1, 2..3],
            "write lost in the growth"
        );
    });
}

/// A transactional harvest aborted ∥ a write (issue 17): page 0 is dirty when the harvest
/// begins; the harvest takes what is dirty and aborts while another thread writes page 1
/// (the same bitmap word). The next harvest must report both pages: the abort made page 0
/// dirty again, and lost nothing of page 1, whether the write landed before the harvest
/// (taken, then given back), during it, or after the abort. Broken twin:
/// `restore_snapshot` ("write lost: the next harvest reports [(0, 1)]").
#[test]
fn harvest_abort_vs_write() {
    check_epoch("harvest_abort_vs_write", 2, || {
        let mm = Arc::new(AddressSpace::new(Mode::Precise));
        let a = mm
            .mmap(0, 2 * PAGE, Prot::RW, Sharing::Private, Placement::Hint)
            .unwrap();
        mm.clear_refs(4).unwrap();
        mm.write(a, 1).unwrap();
        let w = {
            let mm = mm.clone();
            thread::spawn(move || mm.write(a + PAGE, 1))
        };
        let h = mm.begin_harvest(a, 2 * PAGE).unwrap();
        h.abort();
        assert_eq!(w.join().unwrap(), Ok(()));
        let next = mm.scan_and_clear(a, 2 * PAGE).unwrap();
        assert_eq!(
            next.runs(),
            &[(0, 2)],
            "write lost: the next harvest reports {:?}",
            next.runs()
        );
    });
}

/// A writer handle (issue 16) whose cached VMA is replaced under it: the handle's first
/// store (which caches the VMA) ∥ an `mmap MAP_FIXED` over the same page; after the
/// join, the page is harvested clean and stored to again through the handle. That store
/// must land in the new mapping: the next harvest reports it. The handle may reuse its
/// cached VMA only while the index it came from is still the published one. Broken twin:
/// `writer_no_revalidate` (the cache trusted without that test: the store lands in the
/// replaced mapping's bitmap and is lost).
#[test]
fn writer_hint_vs_remap() {
    writer_vs_remap(
        "writer_hint_vs_remap",
        0,
        "write lost: the handle stored into the replaced mapping",
    );
}

/// A writer handle's hot word (issue 16, `AddressSpace::store_hot`) after its mapping is
/// replaced: the handle stores twice (the second store caches the word: the page is
/// dirty, populated and backed), then stores again ∥ an `mmap MAP_FIXED` over the page;
/// after the join the new mapping is harvested clean and the handle stores once more.
/// That store must land in the new mapping. The hot word may answer a store only while
/// nothing was retired since the handle's pin and the index is the word's. Broken twin:
/// `hot_word_no_revalidate` (the word trusted without either test: the store is
/// answered from the replaced mapping's bitmap, and lost).
#[test]
fn writer_hot_word_vs_remap() {
    writer_vs_remap(
        "writer_hot_word_vs_remap",
        2,
        "write lost: the handle's hot word answered a store to the replaced mapping",
    );
}

/// The two models above: `warm` stores through the handle (a clean page), then one ∥ an
/// `mmap MAP_FIXED` over the page; after the join the new mapping is harvested clean and
/// the handle stores once more, which the next harvest must report.
fn writer_vs_remap(name: &'static str, warm: usize, lost: &'static str) {
    check_epoch(name, 2, move || {
        let mm = Arc::new(AddressSpace::new(Mode::Precise));
        let a = mm
            .mmap(0, PAGE, Prot::RW, Sharing::Private, Placement::Hint)
            .unwrap();
        mm.clear_refs(4).unwrap();
        let mut w = mm.writer();
        for _ in 0..warm {
            assert_eq!(w.write(a, 1), Ok(()));
        }
        let t = {
            let mm = mm.clone();
            thread::spawn(move || {
                mm.mmap(a, PAGE, Prot::RW, Sharing::Private, Placement::Fixed)
                    .unwrap()
            })
        };
        let racing = w.write(a, 1);
        assert_eq!(t.join().unwrap(), a);
        let _ = mm.scan_and_clear(a, PAGE).unwrap();
        assert_eq!(w.write(a, 1), Ok(()));
        drop(w);
        let log = mm.scan_and_clear(a, PAGE).unwrap();
        assert_eq!(log.runs(), &[(0, 1)], "{lost} (racing store {racing:?})");
    });
}

/// Contract 0 on a writer handle's hot path (`AddressSpace::store_hot`): page 0 is dirty;
/// the writer thread's handle stores to it once (caching the hot word), then stores the
/// data and stores through the handle again (a mark that only loads) ∥ a harvest
/// (`scan_and_clear`) that then copies the page if it took it. Either the copy sees the
/// data or the page is dirty afterwards. In a loom build the handle fences (no light
/// writers: `softdirty::barrier`), so this checks the hot path's place of the barrier.
/// Broken twin: `mark_no_fence` (also rejected by `data_ordering`'s models).
#[test]
fn writer_hot_store_vs_harvest() {
    check_epoch("writer_hot_store_vs_harvest", 2, || {
        let mm = Arc::new(AddressSpace::new(Mode::Precise));
        let a = mm
            .mmap(0, PAGE, Prot::RW, Sharing::Private, Placement::Hint)
            .unwrap();
        mm.write(a, 1).unwrap();
        let data = Arc::new(loom::sync::atomic::AtomicU64::new(0));
        let t = {
            let (mm, data) = (mm.clone(), data.clone());
            thread::spawn(move || {
                let mut w = mm.writer();
                assert_eq!(w.write(a, 1), Ok(()));
                data.store(1, std::sync::atomic::Ordering::Relaxed);
                assert_eq!(w.write(a, 1), Ok(()));
            })
        };
        let log = mm.scan_and_clear(a, PAGE).unwrap();
        let copy = log
            .contains(0)
            .then(|| data.load(std::sync::atomic::Ordering::Relaxed));
        t.join().unwrap();
        let still_dirty = mm.get_dirty_log(a, PAGE).unwrap().contains(0);
        assert!(
            copy == Some(1) || still_dirty,
            "write lost: the harvest copied {copy:?} and page 0 is clean"
        );
    });
}
