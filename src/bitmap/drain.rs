//! Retiring a bitmap: `seal_and_drain` seals it and carries the faults that reached it
//! after its copy into its successors ([`Target`], transformed by a [`DrainRule`]).

use super::chunk::{Chunk, Slot};
use super::directory::{Entry, LEAF_SLOTS};
use super::words::word_mask;
use super::{Bits, PageBitmap, ABSENT_CLEAN, ABSENT_DIRTY, CHUNK_PAGES, CHUNK_WORDS};
use crate::sync::{lock, Arc, AtomicUsize, Ordering};
use crate::twins;

/// How the drain of a sealed bitmap transforms late faults on their way to the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainRule {
    /// Apply faults as they were (split, merge, shrink).
    Plain,
    /// Also make every page populated by a late fault dirty (an mremap move in legacy
    /// mode: the kernel marks every moved present PTE soft-dirty).
    DirtyPopulated,
}

/// One successor of a sealed bitmap: pages `[src_first, src_first + count)` of the
/// sealed bitmap went to `dst`'s pages from `dst_first`, transformed by `rule`.
#[derive(Clone, Debug)]
pub struct Target {
    /// first page in the sealed bitmap
    pub src_first: u64,
    /// the successor bitmap
    pub dst: Arc<PageBitmap>,
    /// first page in `dst`
    pub dst_first: u64,
    /// number of pages
    pub count: u64,
    /// how late faults are transformed on the way
    pub rule: DrainRule,
}

impl PageBitmap {
    /// Seals this bitmap (its VMA was replaced in a published index) and carries every
    /// fault that reached it after it was copied into its successors (`targets`).
    ///
    /// `AddressSpace` runs it after the index naming the successors is published; a
    /// fault that finds the bitmap sealed does not need that (it forwards itself).
    ///
    /// `targets` also becomes the bitmap's forwarding list: a fault that finds it sealed
    /// applies itself to the targets (`Self::forward`).
    ///
    /// A target is cut to what fits both bitmaps (as [`Self::copy_from`] cuts a copy).
    pub fn seal_and_drain(&self, mut targets: Vec<Target>) {
        for t in &mut targets {
            t.count = self
                .clip(t.src_first, t.count)
                .1
                .min(t.dst.clip(t.dst_first, t.count).1);
        }
        let targets = Arc::new(targets);
        let _clear = self.clear_lock();
        // Before the seal: a fault that sees `sealed` finds the list (the mutex orders
        // its read after this write, which is sequenced before the Release store).
        *lock(&self.forward) = Some(targets.clone());
        // Release: pairs with the Acquire load of `sealed` in the fault path after an RMW
        // that read from one of the drain RMWs below.
        self.sealed.store(true, Ordering::Release);
        // Broken twin `no_drain` (loom-tests): seal, but carry nothing over.
        if twins::NO_DRAIN.on() && !targets.is_empty() {
            return;
        }
        for j in 0..self.slots.leaves() {
            // A value-preserving RMW on the top entry: a fault whose leaf-installing CAS
            // is ordered after it sees `sealed` (directory.rs). Broken twin
            // `no_top_rmw` (loom-tests): a plain load instead.
            let leaf = if twins::NO_TOP_RMW.on() {
                self.slots.entry(j, Ordering::Acquire)
            } else {
                self.slots.entry_rmw(j)
            };
            let Entry::Leaf(leaf) = leaf else {
                continue; // no fault installed a leaf before the seal: nothing late
            };
            let k0 = j * LEAF_SLOTS;
            for (i, slot) in leaf.iter().enumerate().take(self.slots.len() - k0) {
                self.drain_slot(k0 + i, slot, &targets);
            }
        }
    }

    /// The drain of slot `k` (`slot`, in an installed leaf) into `targets`.
    fn drain_slot(&self, k: usize, slot: &AtomicUsize, targets: &[Target]) {
        {
            // A value-preserving RMW: a fault's CAS ordered after it sees `sealed`.
            let v = slot.fetch_or(0, Ordering::AcqRel);
            if v == ABSENT_CLEAN || v == ABSENT_DIRTY {
                return; // no fault materialized it before the seal: nothing late
            }
            // SAFETY: as in `slot`.
            let c = unsafe { &*(v as *const Chunk) };
            // A value-preserving RMW on the summary before the words: pairs with the
            // summary RMW a fault issues after making a whole word dirty with a plain
            // store (`fault_word`): whichever is later reads from the other, so the fault
            // sees `sealed` or the word RMWs below see its store. Broken twin
            // `drain_no_summary_rmw` (loom-tests): not done.
            if !twins::DRAIN_NO_SUMMARY_RMW.on() {
                c.summary.fetch_or(0, Ordering::AcqRel);
            }
            let base = k as u64 * CHUNK_PAGES;
            for wi in 0..CHUNK_WORDS {
                let p0 = base + wi as u64 * 64;
                if p0 >= self.pages {
                    break;
                }
                // Value-preserving RMWs: each pairs with a fault's AcqRel RMW on the same
                // word: whichever is later in the word's modification order reads from the
                // other and synchronizes with it.
                let populated = c.populated[wi].fetch_or(0, Ordering::AcqRel);
                let backed = c.backed[wi].fetch_or(0, Ordering::AcqRel);
                let clean = c.clean[wi].fetch_or(0, Ordering::AcqRel);
                for t in targets.iter() {
                    let (src_first, dst, dst_first, count, rule) =
                        (t.src_first, &*t.dst, t.dst_first, t.count, t.rule);
                    let lo = p0.max(src_first);
                    let hi = (p0 + 64).min(src_first + count);
                    if lo >= hi {
                        continue;
                    }
                    let shift = lo - p0;
                    let n = hi - lo;
                    let m = word_mask(0, n);
                    let mut dirty = (!clean >> shift) & m;
                    let pop = (populated >> shift) & m;
                    let bak = (backed >> shift) & m;
                    // Broken twin `no_drain_rule` (loom-tests) ignores the rule.
                    if !twins::NO_DRAIN_RULE.on() && rule == DrainRule::DirtyPopulated {
                        dirty |= pop;
                    }
                    dst.apply_late(
                        dst_first + (lo - src_first),
                        n,
                        Bits {
                            clean: !dirty & m,
                            populated: pop,
                            backed: bak,
                        },
                    );
                }
            }
        }
    }

    /// ORs late faults (dirty = clean bit 0, populated, backed) into a published bitmap.
    fn apply_late(&self, p: u64, n: u64, b: Bits) {
        let mut done = 0;
        while done < n {
            let q = p + done;
            let off = q % 64;
            let take = (64 - off).min(n - done);
            let m = word_mask(0, take);
            let dirty = (!(b.clean >> done)) & m;
            let pop = (b.populated >> done) & m;
            let bak = (b.backed >> done) & m;
            if dirty | pop | bak != 0 {
                let k = (q / CHUNK_PAGES) as usize;
                let wi = ((q % CHUNK_PAGES) / 64) as usize;
                let needs = match self.slot(k) {
                    Slot::Absent { clean } => pop | bak != 0 || (clean && dirty != 0),
                    Slot::Chunk(_) => true,
                };
                if needs {
                    let c = self.materialize_ctl(k);
                    if dirty != 0 {
                        c.clean[wi].fetch_and(!(dirty << off), Ordering::AcqRel);
                        c.summary.fetch_or(1 << wi, Ordering::AcqRel);
                    }
                    if pop != 0 {
                        c.populated[wi].fetch_or(pop << off, Ordering::AcqRel);
                    }
                    if bak != 0 {
                        c.backed[wi].fetch_or(bak << off, Ordering::AcqRel);
                    }
                }
            }
            done += take;
        }
    }
}
