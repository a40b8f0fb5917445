//! Unmapping pages: `zap` (`MADV_DONTNEED`), linearizable against faults through the zap
//! generation, `unpopulate`, and the control-plane walk over a page range both use.

use super::chunk::{Chunk, Slot};
use super::directory::{Entry, LEAF_SLOTS};
use super::words::for_each_word;
use super::{PageBitmap, ABSENT_CLEAN, ABSENT_DIRTY, CHUNK_PAGES, ZAP_RING};
use crate::sync::{fence, Ordering};
use crate::twins;

/// What a zap does to the page-level soft-dirty state of the pages it unpopulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZapRule {
    /// clean: the page table entry and its soft-dirty bit are gone (every mode but
    /// `precise`)
    Clean,
    /// soft-dirty: the content is now zero (`precise`, private anonymous memory, and
    /// every page a truncation cuts)
    Dirty,
    /// unchanged: the page comes back with the same content (`precise`, a shared file
    /// page)
    Keep,
    /// soft-dirty where a private copy is discarded (a written page of a private file
    /// mapping), unchanged elsewhere (`precise`)
    DirtyCopies,
}

/// What [`PageBitmap::update_range`] does with a chunk that is still an untouched tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Untouched {
    /// materialize it and apply the update
    Materialize,
    /// a whole one becomes the tag for this cleanliness without being materialized (only
    /// valid when the update leaves it unpopulated)
    Tag(bool),
    /// leave it as it is (only valid when the update changes nothing on untouched pages)
    Skip,
}

impl PageBitmap {
    /// `MADV_DONTNEED` / a zap: unpopulate `[first, first+count)`; the page-level state
    /// becomes dirty (`dirty`, precise mode: the content is now zero) or clean (legacy:
    /// the PTE and its soft-dirty bit are gone).
    ///
    /// Linearizable against faults, which update the same three words in another order
    /// (in Linux the page-table lock serializes the two). The zap bumps `zap_seq` to odd
    /// before its first RMW and back to even after its last; a fault reads `zap_seq`
    /// before its first RMW and again after its last, and redoes itself (after waiting
    /// for an even value) if the two differ or the first was odd. Why that suffices:
    /// every RMW of either side is `AcqRel`, so a fault RMW that comes after a zap RMW in
    /// its word's modification order synchronizes with it and its final load sees at
    /// least the odd bump, which differs from its first read (taken before its first
    /// RMW, so before the bump or odd): the fault redoes itself after the zap. A fault
    /// whose RMWs all precede the zap's on their words is overwritten on every bit it
    /// set: it linearizes before the zap. A fault with no RMW found every bit as it
    /// would leave it and linearizes at its loads. Broken twin `zap_no_seq` (loom-tests:
    /// `dontneed_vs_write`).
    pub fn zap(&self, first: u64, count: u64, dirty: bool) {
        self.zap_with(
            first,
            count,
            if dirty {
                ZapRule::Dirty
            } else {
                ZapRule::Clean
            },
        );
    }

    /// [`Self::zap`] with the page-level soft-dirty outcome `rule` (trace v2's memory:
    /// a shared file page comes back unchanged, a private file mapping's private copies
    /// are discarded).
    pub fn zap_with(&self, first: u64, count: u64, rule: ZapRule) {
        let (first, count) = self.clip(first, count);
        let untouched = match rule {
            ZapRule::Clean => Untouched::Tag(true),
            ZapRule::Dirty => Untouched::Tag(false),
            // An untouched chunk has no page to unpopulate and no copy to discard.
            ZapRule::Keep | ZapRule::DirtyCopies => Untouched::Skip,
        };
        self.as_zap(first, count, || {
            self.update_range(
                first,
                count,
                |c, wi, m, _| {
                    // Guard markers (`backed` without `populated`) stay (`guard.rs`): only
                    // the pages that were populated lose `backed`.
                    let was_populated = c.populated[wi].fetch_and(!m, Ordering::AcqRel);
                    let prev_backed =
                        c.backed[wi].fetch_and(!(m & was_populated), Ordering::AcqRel);
                    // The soft-dirty state of a marker is the marker's, untouched by a zap.
                    let m = m & !(prev_backed & !was_populated);
                    let was_backed = prev_backed & was_populated;
                    let dirty = match rule {
                        ZapRule::Clean => {
                            if m != 0 {
                                c.clean[wi].fetch_or(m, Ordering::AcqRel);
                            }
                            0
                        }
                        ZapRule::Dirty => m,
                        ZapRule::Keep => 0,
                        ZapRule::DirtyCopies => was_backed & m,
                    };
                    if dirty != 0 {
                        c.clean[wi].fetch_and(!dirty, Ordering::AcqRel);
                        c.summary.fetch_or(1 << wi, Ordering::AcqRel);
                    }
                },
                untouched,
            )
        });
    }

    /// Runs `rewrite` (which rewrites the page state of `[first, first + count)`, already
    /// clipped) as a zap: under the clear lock, between the two bumps of the zap
    /// generation, with the range in the zap ring, so that a fault overlapping it redoes
    /// itself after it and one on other pages need not ([`Self::zap`]). Guard install and
    /// remove (`guard.rs`) are zaps in this sense.
    pub(super) fn as_zap(&self, first: u64, count: u64, rewrite: impl FnOnce()) {
        let _clear = self.clear_lock();
        // AcqRel RMW: sequenced before every RMW of `rewrite` (see `zap`).
        self.zap_seq.fetch_add(1, Ordering::AcqRel);
        // The range, written as a seqlock writer does (odd bump, Release fence, data):
        // `only_other_pages_zapped` reads it between two reads of the generation, and
        // its Acquire fence pairs with this one if it read our range, so its re-read
        // sees the odd bump and it does not trust the range.
        let n = self.zap_seq.load(Ordering::Relaxed) / 2;
        fence(Ordering::Release);
        let slot = &self.zap_ring[(n % ZAP_RING as u64) as usize];
        slot[0].store(first, Ordering::Relaxed);
        slot[1].store(first + count, Ordering::Relaxed);
        rewrite();
        // Release: pairs with `wait_zap`'s Acquire load; a fault that reads this value
        // before its first RMW sees every zap RMW.
        self.zap_seq.fetch_add(1, Ordering::Release);
    }

    /// Unpopulates `[first, first+count)` keeping the soft-dirty state (a fork child's
    /// pages whose PTEs were not copied, in precise mode).
    pub fn unpopulate(&self, first: u64, count: u64) {
        let (first, count) = self.clip(first, count);
        // Chunk by chunk: untouched chunks are unpopulated already, so a huge mapping
        // costs one slot load per chunk, not one step per word, and an untouched leaf of
        // the directory one top-entry load.
        let end = first + count;
        let mut k = (first / CHUNK_PAGES) as usize;
        while (k as u64) * CHUNK_PAGES < end {
            if k % LEAF_SLOTS == 0 {
                if let Entry::Tag(_) = self.slots.entry(k / LEAF_SLOTS, Ordering::Acquire) {
                    k += LEAF_SLOTS;
                    continue;
                }
            }
            let base = k as u64 * CHUNK_PAGES;
            if let Slot::Chunk(c) = self.slot(k) {
                let lo = first.max(base);
                let hi = end.min(base + CHUNK_PAGES);
                for_each_word(lo - base, hi - lo, |w, m| {
                    let wi = w as usize;
                    // Guard markers stay, as fork copies them (`guard.rs`).
                    let was_populated = c.populated[wi].fetch_and(!m, Ordering::AcqRel);
                    c.backed[wi].fetch_and(!(m & was_populated), Ordering::AcqRel);
                });
            }
            k += 1;
        }
    }

    /// Applies `f(chunk, word, mask, whole_word)` to every word of the range on the control
    /// plane; `untouched` says what becomes of a chunk that is still a tag.
    pub(super) fn update_range(
        &self,
        first: u64,
        count: u64,
        f: impl Fn(&Chunk, usize, u64, bool),
        untouched: Untouched,
    ) {
        let end = first + count;
        let mut k = (first / CHUNK_PAGES) as usize;
        while (k as u64) * CHUNK_PAGES < end {
            let base = k as u64 * CHUNK_PAGES;
            let lo = first.max(base);
            let hi = end.min(base + CHUNK_PAGES).min(self.pages);
            k += 1;
            if lo >= hi {
                continue;
            }
            let whole = lo == base && (hi == base + CHUNK_PAGES || hi == self.pages);
            let kk = k - 1;
            if untouched == Untouched::Skip {
                let cur = self.slots.load(kk, Ordering::Acquire);
                if cur == ABSENT_CLEAN || cur == ABSENT_DIRTY {
                    continue;
                }
            }
            if let Untouched::Tag(clean) = untouched {
                let want = if clean { ABSENT_CLEAN } else { ABSENT_DIRTY };
                let cur = self.slots.load(kk, Ordering::Acquire);
                if cur == want {
                    continue;
                }
                if whole && (cur == ABSENT_CLEAN || cur == ABSENT_DIRTY) {
                    if self
                        .slots
                        .compare_exchange(kk, cur, want, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        continue;
                    }
                }
            }
            let c = self.materialize_ctl(kk);
            // A value-preserving RMW on the summary before `f` rewrites any word: pairs
            // with the summary RMW a fault issues after making a whole word dirty with a
            // plain store (`fault_word`), as the drain's does: whichever is later reads
            // from the other, so the fault sees what was sequenced before (a zap's odd
            // generation) or `f`'s RMWs see its store. Broken twin
            // `rewrite_no_summary_rmw` (loom-tests): not done.
            if !twins::REWRITE_NO_SUMMARY_RMW.on() {
                c.summary.fetch_or(0, Ordering::AcqRel);
            }
            let valid = self.valid_masks(kk);
            for_each_word(lo - base, hi - lo, |w, m| {
                let wi = w as usize;
                let m = m & valid[wi];
                if m != 0 {
                    f(c, wi, m, m == valid[wi]);
                }
            });
        }
    }
}
