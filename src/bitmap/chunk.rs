//! One materialized chunk of a [`PageBitmap`] and the directory slots that point to it:
//! reading a slot, the valid-bit masks of a chunk, allocating a chunk on first touch.

use super::words::word_mask;
use super::{Mark, PageBitmap, ABSENT_CLEAN, ABSENT_DIRTY, CHUNK_PAGES, CHUNK_WORDS};
use crate::sync::{AtomicU64, Ordering};

/// One materialized chunk: [`CHUNK_PAGES`] pages, three bitmaps and a summary.
#[repr(align(64))]
pub struct Chunk {
    pub(super) clean: [AtomicU64; CHUNK_WORDS],
    pub(super) populated: [AtomicU64; CHUNK_WORDS],
    pub(super) backed: [AtomicU64; CHUNK_WORDS],
    pub(super) summary: AtomicU64,
}

impl Chunk {
    fn new(clean: bool, valid: &[u64; CHUNK_WORDS]) -> Box<Chunk> {
        let mut summary = 0u64;
        let c = Box::new(Chunk {
            clean: std::array::from_fn(|w| {
                if !clean && valid[w] != 0 {
                    summary |= 1 << w;
                }
                // Bits past the end of the bitmap are kept clean so they never show up.
                AtomicU64::new(if clean { !0 } else { !valid[w] })
            }),
            populated: std::array::from_fn(|_| AtomicU64::new(0)),
            backed: std::array::from_fn(|_| AtomicU64::new(0)),
            summary: AtomicU64::new(0),
        });
        c.summary.store(summary, Ordering::Relaxed);
        c
    }

    /// Are the pages of mask `m` of word `wi` already what a fault would make them
    /// (`what` = (dirty, backed, populate), as `fault_word` takes it): soft-dirty if
    /// `dirty`, populated if `populate`, backed if `backed`? The loads of the write path's
    /// "nothing to do" answers (`PageBitmap::nothing_to_do`, a writer handle's
    /// `WordHint::unchanged`), after the caller's mark barrier. Relaxed: the barrier
    /// orders them after the caller's data, and the load that found this chunk (a slot's
    /// Acquire, or an earlier one for a cached chunk) after its initialization. A guard
    /// marker is backed without populated, so a write's answer also says that no page of
    /// `m` is a marker.
    #[inline(always)]
    pub(super) fn settled(&self, wi: usize, m: u64, what: (bool, bool, bool)) -> bool {
        let (dirty, backed, populate) = what;
        (!dirty || self.clean[wi].load(Ordering::Relaxed) & m == 0)
            && (!populate || self.populated[wi].load(Ordering::Relaxed) & m == m)
            && (!backed || self.backed[wi].load(Ordering::Relaxed) & m == m)
    }
}

/// A view of one slot.
pub(super) enum Slot<'a> {
    Absent { clean: bool },
    Chunk(&'a Chunk),
}

impl PageBitmap {
    #[inline]
    pub(super) fn slot(&self, k: usize) -> Slot<'_> {
        // Acquire: pairs with the AcqRel CAS that installed a chunk, so its initial
        // contents are visible.
        let v = self.slots.load(k, Ordering::Acquire);
        match v {
            ABSENT_DIRTY => Slot::Absent { clean: false },
            ABSENT_CLEAN => Slot::Absent { clean: true },
            p => Slot::Chunk(self.chunk_at(p)),
        }
    }

    /// The chunk that slot value `v`, not a tag, points to: for a caller that loaded the
    /// slot itself (`Acquire`, as [`Self::slot`] does).
    #[inline(always)]
    pub(super) fn chunk_at(&self, v: usize) -> &Chunk {
        debug_assert!(
            v != ABSENT_DIRTY && v != ABSENT_CLEAN,
            "a tag is not a chunk"
        );
        // SAFETY: a non-tag slot value is a pointer obtained from `Box::into_raw` of a
        // `Chunk` (see `materialize`); a slot never goes back from a chunk to a tag, and
        // chunks are freed only in `Drop`, which needs `&mut self`, so the chunk outlives
        // this `&self` borrow.
        unsafe { &*(v as *const Chunk) }
    }

    /// Valid-bit masks of slot `k`'s words (bits past `pages` are 0).
    pub(super) fn valid_masks(&self, k: usize) -> [u64; CHUNK_WORDS] {
        let base = k as u64 * CHUNK_PAGES;
        std::array::from_fn(|w| {
            let lo = base + w as u64 * 64;
            if lo >= self.pages {
                0
            } else {
                word_mask(0, (self.pages - lo).min(64))
            }
        })
    }

    /// The chunk of slot `k`, allocating it (from the slot's tag) if absent.
    /// `Err(Sealed)` if the bitmap was sealed after this call installed a chunk;
    /// `Err(NoMem)` if `limited` and the chunk limit is reached.
    #[inline]
    pub(super) fn materialize(&self, k: usize, limited: bool) -> Result<&Chunk, Mark> {
        // Acquire: as in `slot`.
        let v = self.slots.load(k, Ordering::Acquire);
        if v != ABSENT_DIRTY && v != ABSENT_CLEAN {
            return Ok(self.chunk_at(v));
        }
        // Out of line: the allocation's frame cost every mark of a materialized chunk
        // about 25 instructions (callgrind).
        self.materialize_absent(k, v, limited)
    }

    /// [`Self::materialize`] of slot `k`, last seen holding `v`, a tag.
    #[cold]
    #[inline(never)]
    fn materialize_absent(&self, k: usize, mut v: usize, limited: bool) -> Result<&Chunk, Mark> {
        loop {
            if v != ABSENT_DIRTY && v != ABSENT_CLEAN {
                return Ok(self.chunk_at(v));
            }
            if limited && self.accounting.as_ref().is_some_and(|a| !a.chunk_allowed()) {
                return Err(Mark::NoMem);
            }
            let chunk = Box::into_raw(Chunk::new(v == ABSENT_CLEAN, &self.valid_masks(k)));
            // AcqRel: Release publishes the chunk's initial contents to `slot` readers;
            // Acquire pairs with the drain's RMW on this slot (see `seal_and_drain`), so
            // that a CAS ordered after the drain sees `sealed`.
            match self.slots.compare_exchange(
                k,
                v,
                chunk as usize,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if let Some(a) = &self.accounting {
                        a.chunks_added(1);
                    }
                    // A seal that the drain's slot RMW ordered before our CAS: forward
                    // now (the fault's final re-check would also catch it once it has
                    // done a word RMW).
                    if self.sealed.load(Ordering::Acquire) {
                        return Err(Mark::Sealed);
                    }
                    // SAFETY: just installed; owned by the slot from now on.
                    return Ok(unsafe { &*chunk });
                }
                Err(now) => {
                    // SAFETY: the CAS failed, so the chunk was never shared.
                    drop(unsafe { Box::from_raw(chunk) });
                    // The failed CAS's Acquire load, as the loop's first load was.
                    v = now;
                }
            }
        }
    }

    /// [`Self::materialize`] as a call, for the control plane: inlined there, the write
    /// path's version changed how the harvest loop that calls `materialize_ctl` was
    /// compiled, and a dense 1 GiB harvest took 6.3 µs instead of 5.7.
    #[inline(never)]
    fn materialize_outlined(&self, k: usize) -> Result<&Chunk, Mark> {
        self.materialize(k, false)
    }

    /// Same as [`Self::materialize`] for the control plane (no concurrent seal possible).
    pub(super) fn materialize_ctl(&self, k: usize) -> &Chunk {
        match self.materialize_outlined(k) {
            Ok(c) => c,
            Err(_) => match self.slot(k) {
                Slot::Chunk(c) => c,
                Slot::Absent { .. } => unreachable!("materialize installed a chunk"),
            },
        }
    }
}
