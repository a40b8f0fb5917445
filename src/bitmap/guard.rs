//! Guard markers (`MADV_GUARD_INSTALL` / `MADV_GUARD_REMOVE`, trace v2): a page whose
//! entry is a marker instead of a page. The state is `backed` without `populated` (a
//! combination no fault makes: a fault sets both), so it moves with the page state through
//! every copy (split, merge, mremap, fork) with no new bit per page.
//!
//! Installing zaps the page as `MADV_DONTNEED` does and leaves the marker; removing turns a
//! marker back into an unpopulated page; `MADV_DONTNEED`, truncation and fork keep markers
//! (measured on 6.18.44: `zap.rs` keeps them too). An access to a marker fails: the fault
//! path looks for markers ([`PageBitmap::first_guard`]) in bitmaps that ever had one
//! ([`PageBitmap::may_have_guards`]), so a bitmap without guards pays one plain load.
//!
//! Install and remove are control-plane operations and zaps in the fault's sense
//! ([`PageBitmap::as_zap`]: the clear lock, the zap generation and the zap ring), so a fault
//! racing them on their pages redoes itself. A store
//! racing an install of its own page linearizes before the install only if it completes
//! first; one that completes after the marker is written overwrites it (the page is then
//! populated and written: no write is lost, but the marker is). Linux excludes that race
//! with the page-table lock; the model documents it: trace commands are sequential.

use super::chunk::Slot;
use super::words::for_each_word;
use super::zap::Untouched;
use super::{PageBitmap, CHUNK_PAGES};
use crate::errno::Errno;
use crate::sync::Ordering;

impl PageBitmap {
    /// Has a guard marker ever been installed in (or copied into) this bitmap?
    #[inline]
    pub fn may_have_guards(&self) -> bool {
        // Relaxed, and not a loom atomic: a hint for the fault path, not a
        // synchronization point (see the module doc for the race it leaves).
        self.guards.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Marks the bitmap as possibly holding guard markers.
    pub(super) fn note_guards(&self) {
        self.guards
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// `MADV_GUARD_INSTALL` on `[first, first + count)` (clipped): every page becomes a
    /// guard marker, its page gone; soft-dirty at the page level where `dirty` (precise:
    /// the page's content changed), else clean (the marker has no soft-dirty bit). A page
    /// that is a marker already keeps its state where `dirty` (nothing changed: Linux
    /// 6.18 leaves the marker, and uffd-wp sees no write; `softdirty fuzz`, seed 1587).
    ///
    /// A marker is state, so every chunk of the range is materialized (as the kernel
    /// allocates a page table for every marker). ENOMEM, with nothing done, where that
    /// would pass the chunk limit of the bitmap's accounts: installing markers over a
    /// terabyte fails as the kernel's page-table allocation would, instead of taking the
    /// machine's memory.
    pub fn install_guard(&self, first: u64, count: u64, dirty: bool) -> Result<(), Errno> {
        let (first, count) = self.clip(first, count);
        if count == 0 {
            return Ok(());
        }
        if let Some(a) = &self.accounting {
            let (k0, k1) = (first / CHUNK_PAGES, (first + count - 1) / CHUNK_PAGES);
            let room = a.chunk_limit().saturating_sub(a.live_chunks()) as u64;
            // Untouched chunks of the range, counted up to the room left.
            let mut need = 0u64;
            let mut k = k0;
            while k <= k1 && need <= room {
                if !matches!(self.slot(k as usize), Slot::Chunk(_)) {
                    need += 1;
                }
                k += 1;
            }
            if need > room {
                return Err(Errno::ENOMEM);
            }
        }
        self.note_guards();
        // A zap: a fault overlapping the install redoes itself after it.
        self.as_zap(first, count, || {
            self.update_range(
                first,
                count,
                |c, wi, m, _| {
                    // A marker already there stays as it is (its content did not change):
                    // no fault makes or unmakes a marker, so this load cannot race with one.
                    let pop = c.populated[wi].fetch_and(!m, Ordering::AcqRel);
                    let was = c.backed[wi].fetch_or(m, Ordering::AcqRel) & !pop & m;
                    let new = m & !was;
                    if dirty {
                        if new != 0 {
                            c.clean[wi].fetch_and(!new, Ordering::AcqRel);
                            c.summary.fetch_or(1 << wi, Ordering::AcqRel);
                        }
                    } else {
                        c.clean[wi].fetch_or(m, Ordering::AcqRel);
                    }
                },
                // A marker is state: every chunk of the range is materialized.
                Untouched::Materialize,
            )
        });
        Ok(())
    }

    /// `MADV_GUARD_REMOVE` on `[first, first + count)` (clipped): every guard marker
    /// becomes an unpopulated page, soft-dirty where `dirty` (precise: the page reads zero
    /// now), else clean; other pages are left alone.
    pub fn remove_guard(&self, first: u64, count: u64, dirty: bool) {
        let (first, count) = self.clip(first, count);
        if count == 0 || !self.may_have_guards() {
            return;
        }
        self.as_zap(first, count, || {
            self.update_range(
                first,
                count,
                |c, wi, m, _| {
                    let pop = c.populated[wi].load(Ordering::Acquire);
                    let g = c.backed[wi].load(Ordering::Acquire) & !pop & m;
                    if g == 0 {
                        return;
                    }
                    c.backed[wi].fetch_and(!g, Ordering::AcqRel);
                    if dirty {
                        c.clean[wi].fetch_and(!g, Ordering::AcqRel);
                        c.summary.fetch_or(1 << wi, Ordering::AcqRel);
                    } else {
                        c.clean[wi].fetch_or(g, Ordering::AcqRel);
                    }
                },
                // An untouched chunk holds no marker.
                Untouched::Skip,
            )
        });
    }

    /// Makes every guard marker of the bitmap clean at the page level: a fork child's
    /// markers in the modes that follow the kernel's page tables (`copy_nonpresent_pte`
    /// installs a fresh marker, `make_pte_marker`, without the soft-dirty bit the parent's
    /// may carry after an mremap). Control plane, on a bitmap nothing else uses yet.
    pub fn clean_guards(&self) {
        if !self.may_have_guards() {
            return;
        }
        self.update_range(
            0,
            self.pages(),
            |c, wi, m, _| {
                let pop = c.populated[wi].load(Ordering::Acquire);
                let g = c.backed[wi].load(Ordering::Acquire) & !pop & m;
                if g != 0 {
                    c.clean[wi].fetch_or(g, Ordering::AcqRel);
                }
            },
            // An untouched chunk holds no marker.
            Untouched::Skip,
        );
    }

    /// The first guard marker in `[first, first + count)` (clipped), if any.
    pub fn first_guard(&self, first: u64, count: u64) -> Option<u64> {
        if !self.may_have_guards() {
            return None;
        }
        let (first, count) = self.clip(first, count);
        let end = first + count;
        let mut p = first;
        while p < end {
            let k = (p / CHUNK_PAGES) as usize;
            let base = k as u64 * CHUNK_PAGES;
            let hi = end.min(base + CHUNK_PAGES);
            if let Slot::Chunk(c) = self.slot(k) {
                let mut found = None;
                for_each_word(p - base, hi - p, |w, m| {
                    if found.is_some() {
                        return;
                    }
                    let wi = w as usize;
                    let g = c.backed[wi].load(Ordering::Acquire)
                        & !c.populated[wi].load(Ordering::Acquire)
                        & m;
                    if g != 0 {
                        found = Some(base + w * 64 + u64::from(g.trailing_zeros()));
                    }
                });
                if found.is_some() {
                    return found;
                }
            }
            p = hi;
        }
        None
    }
}
