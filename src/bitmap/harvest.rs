//! The control plane's clean-making operations: `clear_all` (`clear_refs`), harvest
//! (get-and-clear), `set_clean` and `clean_runs`, the clear lock that serializes them,
//! the harvest side of the data-ordering fence, and `take_word`.

use super::chunk::Slot;
use super::directory::{Entry, LEAF_SLOTS};
use super::words::{for_each_bit, for_each_run, for_each_word};
use super::zap::Untouched;
use super::{PageBitmap, Run, ABSENT_CLEAN, ABSENT_DIRTY, CHUNK_PAGES, CHUNK_WORDS};
use crate::barrier::{self, clear_fence};
use crate::sync::{lock, AtomicU64, MutexGuard, Ordering};
use crate::twins;

impl PageBitmap {
    /// `clear_refs 4` on this bitmap: every page clean at the page level. Visits only
    /// chunks and words that may hold dirty pages.
    pub fn clear_all(&self) {
        let _clear = self.clear_lock();
        self.clear_all_held();
        clear_fence();
    }

    fn clear_all_held(&self) {
        // Whole untouched leaves first: one tag per leaf. A leaf-installing fault's CAS
        // either wins (then we visit its leaf) or loses and re-reads our tag.
        for j in 0..self.slots.leaves() {
            let has_leaf = loop {
                match self.slots.entry(j, Ordering::Acquire) {
                    Entry::Tag(ABSENT_CLEAN) => break false,
                    Entry::Tag(t) => {
                        if self.slots.cas_tag(j, t, ABSENT_CLEAN).is_ok() {
                            break false;
                        }
                    }
                    Entry::Leaf(_) => break true,
                }
            };
            if has_leaf {
                let k0 = j * LEAF_SLOTS;
                for k in k0..(k0 + LEAF_SLOTS).min(self.slots.len()) {
                    self.clear_slot(k);
                }
            }
        }
    }

    /// `clear_all` of one slot of an installed leaf.
    fn clear_slot(&self, k: usize) {
        {
            loop {
                match self.slots.load(k, Ordering::Acquire) {
                    ABSENT_CLEAN => break,
                    ABSENT_DIRTY => {
                        // AcqRel: a racing fault's CAS either wins (then we loop and clear
                        // its chunk) or loses and re-reads our tag.
                        if self
                            .slots
                            .compare_exchange(
                                k,
                                ABSENT_DIRTY,
                                ABSENT_CLEAN,
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            )
                            .is_ok()
                        {
                            break;
                        }
                    }
                    _ => {
                        if let Slot::Chunk(c) = self.slot(k) {
                            let valid = self.valid_masks(k);
                            // Summary first, then words: a fault that dirties a word after
                            // we cleared it sets the summary bit again.
                            // (Broken twin `clear_summary_last`: words first, then the
                            // summary, which can erase a racing fault's flag.)
                            let sum = if twins::CLEAR_SUMMARY_LAST.on() {
                                c.summary.load(Ordering::Acquire)
                            } else {
                                c.summary.swap(0, Ordering::AcqRel)
                            };
                            for_each_bit(sum, |wi| {
                                c.clean[wi].fetch_or(valid[wi] | !valid[wi], Ordering::AcqRel);
                            });
                            if twins::CLEAR_SUMMARY_LAST.on() {
                                c.summary.swap(0, Ordering::AcqRel);
                            }
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Get-and-clear: makes the dirty pages of `[first, first+count)` clean and calls
    /// `sink` with each maximal run of them, in order. Atomic per word against faults:
    /// a page is reported by exactly one harvest, or stays dirty.
    ///
    /// A control-plane operation: the caller must serialize it with every other
    /// operation that makes pages clean on the same words (harvest, `clear_all`,
    /// `set_clean`, `clean_runs`, `zap`), as the address space's control lock does; a
    /// fully dirty word is taken with a plain store (`take_word`). Harvests of disjoint
    /// chunks may run in parallel.
    pub fn harvest(&self, first: u64, count: u64, sink: impl FnMut(Run)) {
        let (first, count) = self.clip(first, count);
        let _clear = self.clear_lock();
        self.harvest_held_fenced(first, count, true, sink);
    }

    /// [`Self::harvest`] without the data-ordering fence: the caller calls
    /// `barrier::clear_fence` once after this and every other get-and-clear of its
    /// operation, before anyone reads the data of a page `sink` was given (an address
    /// space's harvest, which returns its log: one fence, and one `membarrier` while
    /// light writers exist, per call rather than per VMA).
    pub(crate) fn harvest_unfenced(&self, first: u64, count: u64, sink: impl FnMut(Run)) {
        let (first, count) = self.clip(first, count);
        let _clear = self.clear_lock();
        self.harvest_held_fenced(first, count, false, sink);
    }

    /// The clear lock, for a caller that harvests several disjoint chunk-aligned pieces
    /// of this bitmap in parallel through [`Self::harvest_held_unfenced`].
    ///
    /// Every clean-making operation takes the lock here and nowhere else. Broken twin
    /// `no_clear_lock` (loom-tests: `data_ordering::two_owners_harvest_vs_put_back`): skip
    /// it, as two owners of a shared bitmap serializing their harvests under two
    /// different locks did before the lock moved into the bitmap.
    pub(crate) fn clear_lock(&self) -> Option<MutexGuard<'_, ()>> {
        if twins::NO_CLEAR_LOCK.on() {
            return None;
        }
        Some(lock(&self.clear))
    }

    /// [`Self::harvest_unfenced`] for a caller that holds [`Self::clear_lock`];
    /// concurrent calls must cover disjoint chunks.
    pub(crate) fn harvest_held_unfenced(&self, first: u64, count: u64, sink: impl FnMut(Run)) {
        self.harvest_held_fenced(first, count, false, sink)
    }

    /// Get-and-clear of several runs (in any order) under one clear lock, with one
    /// data-ordering fence after every get-and-clear and before `sink` sees any run
    /// taken: the harvest of a dirty ring (`crate::ring`), whose entries name scattered
    /// pages. Runs are clipped to the bitmap.
    pub fn harvest_runs(&self, runs: &[(u64, u64)], mut sink: impl FnMut(Run)) {
        let _clear = self.clear_lock();
        let mut taken = Vec::new();
        for &(f, c) in runs {
            let (f, c) = self.clip(f, c);
            self.harvest_held_fenced(f, c, false, |r| taken.push(r));
        }
        // Data ordering: one fence for all of them (see `mark_fence`).
        clear_fence();
        for r in taken {
            sink(r);
        }
    }

    /// [`Self::harvest`] under the clear lock; with `fence` false the caller issues the data-ordering
    /// fence itself before it reads any page `sink` was given.
    fn harvest_held_fenced(&self, first: u64, count: u64, fence: bool, mut sink: impl FnMut(Run)) {
        // With light writers registered (`crate::barrier`), the runs taken are held back
        // until one `membarrier` covers them all (at most `HELD_RUNS` at a time), rather
        // than one call per run.
        let mut held: Vec<Run> = Vec::new();
        let mut holding = false;
        let mut pending: Option<Run> = None;
        let mut hand_out = |p: Run, held: &mut Vec<Run>, holding: &mut bool| {
            if !fence {
                return sink(p);
            }
            // Data ordering: the get-and-clear of these pages is done; the fence orders it
            // before the caller reads their data (see `barrier::mark_fence`).
            if !*holding && !barrier::heavy_needed() {
                return sink(p);
            }
            *holding = true;
            held.push(p);
            if held.len() >= barrier::HELD_RUNS {
                barrier::heavy();
                held.drain(..).for_each(&mut sink);
            }
        };
        let mut emit = |r: Run, pending: &mut Option<Run>| match pending {
            Some(p) if p.first + p.count == r.first => p.count += r.count,
            _ => {
                if let Some(p) = pending.take() {
                    hand_out(p, &mut held, &mut holding);
                }
                *pending = Some(r);
            }
        };
        let end = first + count;
        let mut k = (first / CHUNK_PAGES) as usize;
        while (k as u64) * CHUNK_PAGES < end {
            let base = k as u64 * CHUNK_PAGES;
            let lo = first.max(base);
            let hi = end.min(base + CHUNK_PAGES).min(self.pages);
            if lo >= hi {
                k += 1;
                continue;
            }
            let whole = lo == base && (hi == base + CHUNK_PAGES || hi == self.pages);
            match self.slots.load(k, Ordering::Acquire) {
                ABSENT_CLEAN => {}
                ABSENT_DIRTY if whole => {
                    if self
                        .slots
                        .compare_exchange(
                            k,
                            ABSENT_DIRTY,
                            ABSENT_CLEAN,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_err()
                    {
                        continue; // a fault materialized it: harvest the chunk instead
                    }
                    emit(
                        Run {
                            first: lo,
                            count: hi - lo,
                        },
                        &mut pending,
                    );
                }
                _ if whole && hi == base + CHUNK_PAGES => {
                    // A whole chunk (not the tail): every word is full and valid, so take
                    // the whole summary and get-and-clear exactly the flagged words.
                    let c = self.materialize_ctl(k);
                    let all = if CHUNK_WORDS == 64 {
                        !0u64
                    } else {
                        (1u64 << CHUNK_WORDS) - 1
                    };
                    // Acquire load first: a chunk with no flagged word costs no RMW. A
                    // fault whose summary RMW we miss leaves its bit for the next harvest.
                    let sum = if c.summary.load(Ordering::Acquire) & all == 0 {
                        0
                    } else {
                        // AcqRel: pairs with the fault path's summary RMW, which is ordered
                        // after its word RMWs.
                        c.summary.fetch_and(!all, Ordering::AcqRel) & all
                    };
                    for_each_bit(sum, |wi| {
                        // Broken twin `harvest_precheck`: skip a flagged word that a relaxed
                        // load shows clean (see the note in the general path below).
                        if twins::HARVEST_PRECHECK.on() && c.clean[wi].load(Ordering::Relaxed) == !0
                        {
                            return;
                        }
                        // Always a get-and-clear for a word whose summary bit we took
                        // (see the `harvest_precheck` note below): `take_word`.
                        // (Broken twin `blind_harvest`: load, then store.)
                        let prev = if twins::BLIND_HARVEST.on() {
                            let v = c.clean[wi].load(Ordering::Acquire);
                            c.clean[wi].store(!0, Ordering::Release);
                            v
                        } else {
                            take_word(&c.clean[wi])
                        };
                        let wbase = base + wi as u64 * 64;
                        if prev == 0 {
                            // All 64 dirty (a dense harvest): one run, no bit scan.
                            emit(
                                Run {
                                    first: wbase,
                                    count: 64,
                                },
                                &mut pending,
                            );
                            return;
                        }
                        for_each_run(!prev, |s, n| {
                            emit(
                                Run {
                                    first: wbase + s,
                                    count: n,
                                },
                                &mut pending,
                            )
                        });
                    });
                }
                _ => {
                    let c = self.materialize_ctl(k);
                    let valid = self.valid_masks(k);
                    // Words fully inside the range: take their summary bits first.
                    let mut full = 0u64;
                    let mut partial = Vec::<(usize, u64)>::new();
                    for_each_word(lo - base, hi - lo, |w, m| {
                        let wi = w as usize;
                        if m & valid[wi] == valid[wi] {
                            full |= 1 << wi;
                        } else {
                            partial.push((wi, m));
                        }
                    });
                    // AcqRel: pairs with the fault path's summary RMW (Release), which is
                    // ordered after its word RMW.
                    let sum = c.summary.fetch_and(!full, Ordering::AcqRel) & full;
                    let mut words = sum;
                    for (wi, _) in &partial {
                        words |= 1 << wi;
                    }
                    for_each_bit(words, |wi| {
                        let m = if sum & (1 << wi) != 0 {
                            valid[wi]
                        } else {
                            partial
                                .iter()
                                .find(|(w, _)| *w == wi)
                                .map(|x| x.1)
                                .unwrap_or(0)
                                & valid[wi]
                        };
                        // Shortcut (no RMW when nothing is dirty) only for words whose
                        // summary bit we did NOT take. FIX (found by loom-tests'
                        // `harvest_vs_write`): for a word whose summary bit the fetch_and
                        // above took, the relaxed load may miss a fault's RMW while that
                        // fault's relaxed summary load misses our fetch_and (store
                        // buffering: neither synchronizes), so the fault keeps the stale
                        // summary bit we just cleared, we skip the word, and the page stays
                        // dirty with no summary bit: no later harvest or clear_refs ever
                        // sees it. The RMW below always reads the latest value: either it
                        // takes the fault's bit, or the fault's RMW reads from it,
                        // synchronizes, and sees the cleared summary bit. Broken twin
                        // `harvest_precheck` restores the old shortcut.
                        let skip = (twins::HARVEST_PRECHECK.on() || sum & (1 << wi) == 0)
                            && !c.clean[wi].load(Ordering::Relaxed) & m == 0;
                        if skip {
                            return; // nothing dirty: no RMW
                        }
                        // AcqRel: the get-and-clear is one RMW, so a racing fault's RMW on
                        // this word is either before it (reported now) or after it (stays
                        // dirty for the next harvest). A whole word whose summary bit we
                        // took goes through `take_word` (plain store when all dirty).
                        // (Broken twin `blind_harvest`: load, then store.)
                        let prev = if twins::BLIND_HARVEST.on() {
                            let v = c.clean[wi].load(Ordering::Acquire);
                            c.clean[wi].store(v | m, Ordering::Release);
                            v
                        } else if m == !0 && sum & (1 << wi) != 0 {
                            take_word(&c.clean[wi])
                        } else {
                            c.clean[wi].fetch_or(m, Ordering::AcqRel)
                        };
                        let taken = !prev & m;
                        let wbase = base + wi as u64 * 64;
                        for_each_run(taken, |s, n| {
                            emit(
                                Run {
                                    first: wbase + s,
                                    count: n,
                                },
                                &mut pending,
                            )
                        });
                    });
                }
            }
            k += 1;
        }
        if let Some(p) = pending {
            hand_out(p, &mut held, &mut holding);
        }
        if !held.is_empty() {
            // After the last get-and-clear (whose fence `heavy_needed` issued).
            barrier::heavy();
            held.into_iter().for_each(sink);
        }
    }

    /// Makes `runs` clean (each must have been reported dirty by this bitmap and not be
    /// concurrently harvested): KVM's `clear_dirty_log` with a log it got earlier. Only
    /// the bits named are touched.
    pub fn clean_runs(&self, runs: impl IntoIterator<Item = Run>) {
        let _clear = self.clear_lock();
        for r in runs {
            let (first, count) = self.clip(r.first, r.count);
            self.set_clean_held(first, count, true);
        }
        clear_fence();
    }

    /// Sets the page-level state of `[first, first+count)` to clean (`clean`) or dirty,
    /// leaving population alone. The range is clipped to the bitmap ([`Self::clip`]).
    pub fn set_clean(&self, first: u64, count: u64, clean: bool) {
        let (first, count) = self.clip(first, count);
        let _clear = self.clear_lock();
        self.set_clean_held(first, count, clean);
        if clean {
            clear_fence();
        }
    }

    /// Makes the pages of `[first, first+count)` (clipped) that hold no private copy
    /// (`backed` clear) soft-dirty, on the control plane: whole untouched chunks become the
    /// dirty tag without being materialized, so dirtying a terabyte of a file's pages costs
    /// what their directory costs (a file's size change, `mm/truncate.rs`). The data-plane
    /// twin, for a store's propagation, is [`Self::mark_dirty_unbacked`].
    pub fn set_dirty_unbacked(&self, first: u64, count: u64) {
        let (first, count) = self.clip(first, count);
        let _clear = self.clear_lock();
        self.update_range(
            first,
            count,
            |c, wi, m, _whole| {
                let m = m & !c.backed[wi].load(Ordering::Acquire);
                if m != 0 {
                    c.clean[wi].fetch_and(!m, Ordering::AcqRel);
                    c.summary.fetch_or(1 << wi, Ordering::AcqRel);
                }
            },
            Untouched::Tag(false),
        );
    }

    /// Broken twin `grow_store` only (`Layout::build`'s in-place growth): `set_clean`
    /// with a load and a plain store per word instead of an RMW, which overwrites the bit
    /// of a fault racing on another page of the same word.
    pub(crate) fn twin_store_clean(&self, first: u64, count: u64, clean: bool) {
        let (first, count) = self.clip(first, count);
        let _clear = self.clear_lock();
        self.update_range(
            first,
            count,
            |c, wi, m, _whole| {
                let old = c.clean[wi].load(Ordering::Acquire);
                let new = if clean { old | m } else { old & !m };
                c.clean[wi].store(new, Ordering::Release);
                if !clean {
                    c.summary.fetch_or(1 << wi, Ordering::AcqRel);
                }
            },
            Untouched::Tag(clean),
        );
    }

    fn set_clean_held(&self, first: u64, count: u64, clean: bool) {
        self.update_range(
            first,
            count,
            |c, wi, m, _whole| {
                if clean {
                    c.clean[wi].fetch_or(m, Ordering::AcqRel);
                } else {
                    c.clean[wi].fetch_and(!m, Ordering::AcqRel);
                    c.summary.fetch_or(1 << wi, Ordering::AcqRel);
                }
            },
            Untouched::Tag(clean),
        );
    }
}

/// Ordering of the plain store with which a harvest takes a fully dirty word
/// ([`take_word`]). Broken twin `relaxed_harvest_store` (loom-tests): Relaxed, which lets
/// a fault whose RMW reads the store keep a stale summary bit the harvest just cleared.
#[inline(always)]
fn harvest_store() -> Ordering {
    if twins::RELAXED_HARVEST_STORE.on() {
        Ordering::Relaxed
    } else {
        Ordering::Release
    }
}

/// Get-and-clear of a whole `clean` word whose summary bit the calling harvest took:
/// makes every page of the word clean and returns the previous value (0 bits = pages
/// this harvest reports).
///
/// A fully dirty word (the common case of a dense harvest) is taken with a load and a
/// plain store instead of a locked `swap`. Sound because of two facts:
///
/// - Only control-plane operations (harvest, `clear_all`, `set_clean`, a legacy `zap`)
///   ever set a `clean` bit, and each of them holds the bitmap's clear lock
///   ([`PageBitmap::clear_lock`], whoever owns the bitmap; a parallel harvest splits at
///   chunk boundaries under one hold of it): each one happens-before the next,
///   so the load below reads the latest control-plane value of the word or a fault's
///   later RMW, never an older value.
/// - Faults only clear bits (`fetch_and`). Once the word holds 0, every fault RMW until
///   our store leaves it 0. So a load that reads 0 proves the word stays 0 up to the
///   store: no fault's bit can be overwritten (each such page was dirty already and is
///   reported by this harvest). A fault ordered after the store re-dirties its page.
///
/// Orderings: the load is Acquire, pairing with the Release half of the fault RMWs that
/// dirtied the word (the reporting harvest synchronizes with the writes it reports, as
/// the `swap` did). The store is Release (`harvest_store`): a fault whose `fetch_and`
/// reads from it synchronizes with it and so sees this harvest's summary `fetch_and`
/// (sequenced before the store), which makes the fault's summary test fail and the
/// fault set the summary bit again. Without Release the fault's relaxed summary test
/// may read the stale set bit and skip the RMW: the page stays dirty behind a clear
/// summary bit, lost to every later harvest (the `harvest_precheck` failure, by another
/// route). A word with any clean bit falls back to the `swap`.
#[inline]
fn take_word(w: &AtomicU64) -> u64 {
    let v = w.load(Ordering::Acquire);
    if v == 0 {
        w.store(!0, harvest_store());
        0
    } else {
        // AcqRel: one get-and-clear RMW; a racing fault's RMW is before it (reported
        // now) or after it (reads from it, synchronizes, sees the cleared summary).
        w.swap(!0, Ordering::AcqRel)
    }
}
