//! A producer-only handle on a shared [`PageBitmap`]: what a vCPU, a device model or
//! vm-memory's write path needs, and nothing that makes pages clean.
//!
//! [`crate::slots::SlotRegistry::producer`] and `vmm::SoftDirtyBitmap::producer` hand
//! out a [`Producer`] instead of the `Arc<PageBitmap>` itself, so an embedder cannot
//! harvest (and so steal pages from the registry's consumers) through a handle meant for
//! marking.
//!
//! # Data ordering
//!
//! **Store your data, then mark.** A harvest that takes the page (reports it and makes
//! it clean) reads your data after it, or the page stays dirty for the next harvest.
//! This holds for every data store that is sequenced before [`Producer::mark`] on the
//! marking thread, with any memory ordering (plain or relaxed stores included), and for
//! a page that was already dirty when you marked it (the mark then only loads): the mark
//! starts with a `SeqCst` fence that pairs with the one every harvest issues after its
//! get-and-clear and before it hands out the pages (ARCHITECTURE.md, contract 0). Data
//! stored *after* the mark returns is covered by the next mark only.

use crate::bitmap::{Mark, PageBitmap};
use crate::errno::{Errno, Result};
use crate::sync::Arc;

/// Marks pages of a shared [`PageBitmap`] dirty; never clears. Lock-free.
///
/// `Clone` (shares the bitmap), `Send + Sync`. See the [module documentation](self) for
/// what a mark guarantees relative to the data it covers.
#[derive(Clone)]
pub struct Producer {
    bits: Arc<PageBitmap>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("pages", &self.bits.pages())
            .finish()
    }
}

const _: () = {
    const fn send_sync<T: Send + Sync + Clone>() {}
    send_sync::<Producer>();
};

impl Producer {
    /// A producer handle on `bits` (whoever holds `bits` itself can still harvest it).
    pub fn new(bits: Arc<PageBitmap>) -> Producer {
        Producer { bits }
    }

    /// Marks pages `[first, first + count)` dirty. Store the data first: a harvest that
    /// takes one of these pages reads the data stored before this call after it, or the
    /// page stays dirty (module documentation). A page already dirty costs one load.
    ///
    /// `EINVAL` (and nothing marked) if the range overflows or leaves the bitmap;
    /// `count == 0` marks nothing and succeeds for any `first <= pages()`.
    pub fn mark(&self, first: u64, count: u64) -> Result<()> {
        let end = first.checked_add(count).ok_or(Errno::EINVAL)?;
        if end > self.bits.pages() {
            return Err(Errno::EINVAL);
        }
        if count == 0 {
            return Ok(());
        }
        // Bitmaps handed out as producers are never sealed (only an AddressSpace's
        // structural operations seal), and `mark_dirty` is not chunk-limited.
        let m = self.bits.mark_dirty(first, count);
        debug_assert!(matches!(m, Mark::Done { .. }), "{m:?}");
        Ok(())
    }

    /// Is `page` dirty (not yet harvested since its last mark)? `false` out of range.
    pub fn is_dirty(&self, page: u64) -> bool {
        page < self.bits.pages() && self.bits.page(page).clean == 0
    }

    /// Number of pages in the bitmap.
    pub fn pages(&self) -> u64 {
        self.bits.pages()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn mark_checks_the_range_and_never_partially_applies() {
        let bits = Arc::new(PageBitmap::new(100, false));
        let p = Producer::new(Arc::clone(&bits));
        assert_eq!(p.pages(), 100);
        assert_eq!(p.mark(99, 2), Err(Errno::EINVAL));
        assert_eq!(p.mark(u64::MAX, 2), Err(Errno::EINVAL));
        assert_eq!(p.mark(1, u64::MAX), Err(Errno::EINVAL));
        assert_eq!(p.mark(101, 0), Err(Errno::EINVAL));
        assert!((0..100).all(|i| !p.is_dirty(i)));
        assert_eq!(p.mark(100, 0), Ok(()));
        p.clone().mark(98, 2).unwrap();
        assert!(p.is_dirty(98) && p.is_dirty(99) && !p.is_dirty(97) && !p.is_dirty(100));
        let mut runs = Vec::new();
        bits.harvest(0, 100, |r| runs.push((r.first, r.count)));
        assert_eq!(runs, vec![(98, 2)]);
        assert!(!p.is_dirty(98));
    }
}
