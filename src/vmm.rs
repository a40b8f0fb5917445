//! softdirty's bitmap as a [`vm_memory`] dirty-bitmap backend (Cargo feature `vm-memory`).
//!
//! [`SoftDirtyBitmap`] implements vm-memory 0.18's [`Bitmap`], [`WithBitmapSlice`] and
//! [`NewBitmap`], so `GuestMemoryMmap<SoftDirtyBitmap>` marks the pages the VMM writes
//! through vm-memory (`Bytes::write_obj`, `write_slice`, `store`, `VolatileSlice`
//! copies), exactly as `GuestMemoryMmap<AtomicBitmap>` does. What it adds over
//! `AtomicBitmap`:
//!
//! - **marking** is test-before-set: a page that is already dirty costs one relaxed load,
//!   no write to the bitmap's cache line (AtomicBitmap does one `SeqCst` `fetch_or` per
//!   page per write), and a range is marked one 64-page word at a time. What makes a
//!   mark cover the data stored before it (ARCHITECTURE.md, contract 0) is the
//!   asymmetric barrier of [`crate::barrier`]: each bitmap holds a light-writer
//!   registration ([`LightWriter`], shared by its clones), so its marks need only a
//!   compiler barrier, and while one such bitmap lives every harvest in the process
//!   ends with one `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` call. Its price depends
//!   on what the other CPUs run: 0.1 µs with the process alone on the 2-core development
//!   machine (a VM), and about 18 µs per harvest in `tests/litmus.rs`, whose writer spins
//!   on the other core (4.5 s for 250,000 iterations, against 0.5 s for the fenced
//!   shape's). Where `membarrier` is unavailable, or with
//!   `SOFTDIRTY_NO_MEMBARRIER=1` or [`SoftDirtyBitmap::with_fenced_marks`], each mark
//!   issues a `SeqCst` fence instead (one `lock`ed instruction on x86-64) and harvests
//!   call nothing;
//! - **harvest** ([`SoftDirtyBitmap::harvest`]) is an atomic get-and-clear that visits
//!   only the words flagged dirty in a per-chunk summary, so an idle region costs almost
//!   nothing; AtomicBitmap's `get_and_reset` swaps every word and allocates;
//! - **sparse**: memory for 4,096-page chunks is allocated on their first write;
//! - the underlying [`PageBitmap`] can be shared with a [`crate::slots::SlotRegistry`]
//!   slot ([`SoftDirtyBitmap::register_slot`]), which adds the KVM-style dirty-log
//!   protocol and several independent consumers on top; other producers get a
//!   [`Producer`] ([`SoftDirtyBitmap::producer`]), which marks but cannot clear.
//!
//! **Data ordering.** vm-memory stores the data, then calls `mark_dirty`: a harvest
//! ([`SoftDirtyBitmap::harvest`], `get_and_reset`, a slot consumer's `get_dirty_log`)
//! that takes the page reads that data after it, or the page stays dirty for the next
//! harvest, also when the page was already dirty and the mark only loaded (see
//! [`crate::producer`]). Copy a page after the harvest that reported it.
//!
//! Slices (what `GuestMemoryRegion::bitmap()` returns) are vm-memory's own
//! [`RefSlice`]: a reference plus a byte offset, no reference-count traffic on the
//! write path.
//!
//! ```
//! use softdirty::vmm::SoftDirtyBitmap;
//! use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
//!
//! let mem: GuestMemoryMmap<SoftDirtyBitmap> =
//!     GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 * 4096)]).unwrap();
//! mem.write_obj(7u64, GuestAddress(3 * 4096 + 8)).unwrap();
//! let region = mem.find_region(GuestAddress(0)).unwrap();
//! // `(**region).bitmap()` is the region's whole `SoftDirtyBitmap`.
//! let bitmap: &SoftDirtyBitmap = (**region).bitmap();
//! assert!(bitmap.is_page_dirty(3));
//! assert_eq!(bitmap.harvest_runs(), vec![(3, 1)]);
//! assert!(!bitmap.is_page_dirty(3)); // harvested: clean again
//! ```

use crate::sync::Arc;
use std::num::NonZeroUsize;

use vm_memory::bitmap::{Bitmap, NewBitmap, RefSlice, WithBitmapSlice};

use crate::barrier::LightWriter;
use crate::bitmap::{Mark, PageBitmap};
use crate::errno::Result;
use crate::producer::Producer;
use crate::slots::SlotRegistry;

/// A vm-memory dirty bitmap backed by a sparse atomic [`PageBitmap`], one bit per page.
///
/// Cloning shares the bitmap (it clones the [`Arc`]): a clone marks and harvests the same
/// pages. Pages start clean. Offsets are bytes from the start of the tracked area
/// (a guest memory region); ranges past the end are ignored, as `AtomicBitmap` ignores
/// them.
#[derive(Clone)]
pub struct SoftDirtyBitmap {
    /// Harvest and reset need no lock of their own: every clean-making operation of a
    /// `PageBitmap` takes the bitmap's clear lock (shared with a slot's consumers too).
    inner: Arc<PageBitmap>,
    byte_size: usize,
    page_shift: u32,
    /// The registration that lets marks skip their fence (module docs); `None` where
    /// `membarrier` is unavailable or after [`SoftDirtyBitmap::with_fenced_marks`].
    light: Option<Arc<LightWriter>>,
}

impl std::fmt::Debug for SoftDirtyBitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftDirtyBitmap")
            .field("byte_size", &self.byte_size)
            .field("page_size", &self.page_size())
            .field("light_marks", &self.light.is_some())
            .field("bitmap", &self.inner)
            .finish()
    }
}

/// The host page size (`sysconf(_SC_PAGE_SIZE)`), what `AtomicBitmap::with_len` uses.
fn host_page_size() -> NonZeroUsize {
    // SAFETY: `sysconf` has no memory-safety preconditions; it only reads a constant.
    let ps = unsafe { libc::sysconf(libc::_SC_PAGE_SIZE) };
    usize::try_from(ps)
        .ok()
        .and_then(NonZeroUsize::new)
        .unwrap_or(NonZeroUsize::new(4096).expect("nonzero"))
}

impl SoftDirtyBitmap {
    /// A clean bitmap of `byte_size` bytes (rounded up to whole pages) with one bit per
    /// `page_size` bytes. `page_size` must be a power of two.
    ///
    /// ```
    /// use std::num::NonZeroUsize;
    /// use softdirty::vmm::SoftDirtyBitmap;
    /// let b = SoftDirtyBitmap::new(1025, NonZeroUsize::new(128).unwrap());
    /// assert_eq!(b.len(), 9);
    /// ```
    ///
    /// # Panics
    /// If `page_size` is not a power of two or the bitmap would have more than
    /// [`crate::bitmap::MAX_PAGES`] pages; [`Self::try_new`] returns an error instead.
    /// (vm-memory's `NewBitmap::with_len` cannot fail, so it calls this.)
    pub fn new(byte_size: usize, page_size: NonZeroUsize) -> SoftDirtyBitmap {
        match SoftDirtyBitmap::try_new(byte_size, page_size) {
            Ok(b) => b,
            Err(e) => panic!(
                "SoftDirtyBitmap::new({byte_size}, {page_size}): {e:?} (the page size must \
                 be a power of two, and the bitmap at most {} pages)",
                crate::bitmap::MAX_PAGES
            ),
        }
    }

    /// As [`Self::new`]: EINVAL if `page_size` is not a power of two, ENOMEM if the bitmap
    /// would have more than [`crate::bitmap::MAX_PAGES`] pages.
    pub fn try_new(byte_size: usize, page_size: NonZeroUsize) -> Result<SoftDirtyBitmap> {
        if !page_size.is_power_of_two() {
            return Err(crate::errno::Errno::EINVAL);
        }
        let pages = byte_size.div_ceil(page_size.get()) as u64;
        Ok(SoftDirtyBitmap {
            inner: Arc::new(PageBitmap::try_new(pages, false)?),
            byte_size,
            page_shift: page_size.trailing_zeros(),
            light: LightWriter::register().map(Arc::new),
        })
    }

    /// This bitmap, its marks fenced: each mark issues a `SeqCst` fence, and this value
    /// no longer makes harvests call `membarrier` (module docs). For a process whose
    /// harvests must not pay that call; clones made before keep their registration.
    pub fn with_fenced_marks(mut self) -> SoftDirtyBitmap {
        self.light = None;
        self
    }

    /// Whether marks through this value skip their fence (a light-writer registration,
    /// module docs).
    pub fn light_marks(&self) -> bool {
        self.light.is_some()
    }

    /// Marks pages `[first, end)`, light or fenced.
    #[inline(always)]
    fn mark(&self, first: u64, count: u64) -> Mark {
        match &self.light {
            Some(l) => self.inner.mark_dirty_light(l, first, count),
            None => self.inner.mark_dirty(first, count),
        }
    }

    /// Wraps an existing bitmap (for example a [`crate::slots::SlotRegistry`] slot's, so
    /// that the slot's consumers see what vm-memory marks). The tracked area is
    /// `bitmap.pages() * page_size` bytes; `page_size` must be a power of two.
    ///
    /// Both owners may harvest and reset the shared bitmap: every clean-making operation
    /// takes the [`PageBitmap`]'s own clear lock, so they never race on a word and each
    /// write is reported by exactly one harvest or stays dirty. A page one owner harvests
    /// is not reported to the other, though.
    pub fn from_page_bitmap(bitmap: Arc<PageBitmap>, page_size: NonZeroUsize) -> SoftDirtyBitmap {
        assert!(
            page_size.is_power_of_two(),
            "page size must be a power of two"
        );
        let byte_size = (bitmap.pages() as usize).saturating_mul(page_size.get());
        SoftDirtyBitmap {
            inner: bitmap,
            byte_size,
            page_shift: page_size.trailing_zeros(),
            light: LightWriter::register().map(Arc::new),
        }
    }

    /// A producer handle on the underlying bitmap: it marks what this bitmap marks and
    /// cannot clear (so it cannot take pages from this bitmap's harvests). Store the
    /// data, then mark ([`Producer::mark`]).
    pub fn producer(&self) -> Producer {
        Producer::new(Arc::clone(&self.inner))
    }

    /// Registers slot `slot` of `registry` at `guest_phys_addr` over this bitmap
    /// ([`SlotRegistry::register_slot_with`]): what vm-memory marks, the slot's
    /// consumers harvest. The bitmap's pages must be 4 KiB (the slot's page size).
    /// Harvesting through this wrapper too is safe (the bitmap's clear lock serializes
    /// the two), but a page it takes is not reported to the slot's consumers.
    pub fn register_slot(
        &self,
        registry: &SlotRegistry,
        slot: u32,
        guest_phys_addr: u64,
    ) -> Result<()> {
        registry.register_slot_with(slot, guest_phys_addr, Arc::clone(&self.inner))
    }

    /// Number of pages tracked.
    pub fn len(&self) -> usize {
        self.inner.pages() as usize
    }

    /// Is the tracked area empty?
    pub fn is_empty(&self) -> bool {
        self.inner.pages() == 0
    }

    /// Size of the tracked area in bytes, as given at construction.
    pub fn byte_size(&self) -> usize {
        self.byte_size
    }

    /// Bytes per bit.
    pub fn page_size(&self) -> usize {
        1usize << self.page_shift
    }

    /// The page range `[first, end)` that byte range `[offset, offset + len)` touches,
    /// clipped to the bitmap; `None` if empty.
    #[inline]
    fn pages_of(&self, offset: usize, len: usize) -> Option<(u64, u64)> {
        if len == 0 {
            return None;
        }
        let first = (offset >> self.page_shift) as u64;
        // As AtomicBitmap: saturate instead of overflowing for ranges near usize::MAX.
        let last = (offset.saturating_add(len - 1) >> self.page_shift) as u64;
        let end = last.saturating_add(1).min(self.inner.pages());
        (first < end).then_some((first, end))
    }

    /// Marks the pages of `[offset, offset + len)` dirty (what [`Bitmap::mark_dirty`]
    /// does). Lock-free; a page already dirty costs one relaxed load (and a fence where
    /// marks are fenced, module docs). Store the data first: a harvest that takes the
    /// page reads it after it, or the page stays dirty.
    #[inline]
    pub fn set_addr_range(&self, offset: usize, len: usize) {
        if let Some((first, end)) = self.pages_of(offset, len) {
            // This bitmap is never sealed (only an AddressSpace's structural operations
            // seal bitmaps), so `write` always applies.
            let m = match &self.light {
                // One page (a `write_obj`): the one-bit test, without the range's masks.
                Some(l) if end - first == 1 => self.inner.mark_page_dirty_light(l, first),
                _ => self.mark(first, end - first),
            };
            debug_assert!(matches!(m, Mark::Done { .. }));
        }
    }

    /// Makes the pages of `[offset, offset + len)` clean.
    pub fn reset_addr_range(&self, offset: usize, len: usize) {
        if let Some((first, end)) = self.pages_of(offset, len) {
            self.inner.set_clean(first, end - first, true);
        }
    }

    /// Marks page `index` dirty; out of range is ignored.
    pub fn set_bit(&self, index: usize) {
        if (index as u64) < self.inner.pages() {
            self.mark(index as u64, 1);
        }
    }

    /// Makes page `index` clean; out of range is ignored.
    pub fn reset_bit(&self, index: usize) {
        if (index as u64) < self.inner.pages() {
            self.inner.set_clean(index as u64, 1, true);
        }
    }

    /// Is page `index` dirty? Out of range is `false`.
    #[inline]
    pub fn is_page_dirty(&self, index: usize) -> bool {
        (index as u64) < self.inner.pages() && self.inner.page(index as u64).clean == 0
    }

    /// Is the page holding byte `offset` dirty? Out of range is `false`.
    #[inline]
    pub fn is_addr_set(&self, offset: usize) -> bool {
        self.is_page_dirty(offset >> self.page_shift)
    }

    /// Get-and-clear: calls `sink(first_page, count)` for each maximal run of dirty pages,
    /// in order, making them clean. Atomic per 64-page word against concurrent marking: a
    /// write is reported by exactly one harvest, or stays dirty for the next one.
    pub fn harvest(&self, mut sink: impl FnMut(u64, u64)) {
        self.inner
            .harvest(0, self.inner.pages(), |r| sink(r.first, r.count));
    }

    /// [`Self::harvest`] collected into `(first_page, count)` runs.
    pub fn harvest_runs(&self) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        self.harvest(|f, n| v.push((f, n)));
        v
    }

    /// A transactional harvest: takes the dirty pages now ([`Self::harvest_runs`]); they
    /// stay clean only if the returned [`BitmapHarvest`] is committed (the round was
    /// sent). Aborted or dropped, it makes them dirty again, merged with what vCPUs
    /// marked meanwhile: a failed or retried migration round loses no page.
    pub fn begin_harvest(&self) -> BitmapHarvest<'_> {
        BitmapHarvest {
            bitmap: self,
            runs: Some(self.harvest_runs()),
        }
    }

    /// Get-and-clear in `AtomicBitmap::get_and_reset`'s format: one `u64` per 64 pages,
    /// bit `i % 64` of word `i / 64` set for dirty page `i`.
    pub fn get_and_reset(&self) -> Vec<u64> {
        let mut v = vec![0u64; self.len().div_ceil(64)];
        self.harvest(|f, n| {
            // Word by word: a run of whole words costs one store per word.
            let (mut p, end) = (f, f + n);
            while p < end {
                let lo = p % 64;
                let hi = (end - (p - lo)).min(64);
                let hi_mask = if hi == 64 { !0u64 } else { (1u64 << hi) - 1 };
                v[(p / 64) as usize] |= hi_mask & !((1u64 << lo) - 1);
                p += hi - lo;
            }
        });
        v
    }

    /// Makes every page clean, dropping what was dirty (not a harvest).
    pub fn reset(&self) {
        self.inner.clear_all();
    }
}

/// A transactional harvest of a [`SoftDirtyBitmap`] ([`SoftDirtyBitmap::begin_harvest`]).
#[must_use = "dropping a BitmapHarvest aborts it: its pages are dirty again"]
#[derive(Debug)]
pub struct BitmapHarvest<'a> {
    bitmap: &'a SoftDirtyBitmap,
    runs: Option<Vec<(u64, u64)>>,
}

impl BitmapHarvest<'_> {
    /// The pages taken, as `(first_page, count)` runs.
    pub fn runs(&self) -> &[(u64, u64)] {
        self.runs.as_deref().unwrap_or(&[])
    }

    /// The pages were sent: they stay clean until marked again. Returns the runs.
    pub fn commit(mut self) -> Vec<(u64, u64)> {
        self.runs.take().unwrap_or_default()
    }

    /// The pages were not sent: they are dirty again (as dropping does).
    pub fn abort(self) {}
}

impl Drop for BitmapHarvest<'_> {
    fn drop(&mut self) {
        // A dirtying RMW per word (`set_clean(.., false)`), under the bitmap's clear
        // lock: it can only add dirty bits, so a racing mark or harvest loses nothing.
        for (f, n) in self.runs.take().unwrap_or_default() {
            self.bitmap.inner.set_clean(f, n, false);
        }
    }
}

impl Default for SoftDirtyBitmap {
    /// An empty bitmap (0 bytes, 4 KiB pages), as `AtomicBitmap::default`.
    fn default() -> Self {
        SoftDirtyBitmap::new(0, NonZeroUsize::new(4096).expect("nonzero"))
    }
}

impl<'a> WithBitmapSlice<'a> for SoftDirtyBitmap {
    type S = RefSlice<'a, SoftDirtyBitmap>;
}

impl Bitmap for SoftDirtyBitmap {
    #[inline]
    fn mark_dirty(&self, offset: usize, len: usize) {
        self.set_addr_range(offset, len)
    }

    #[inline]
    fn dirty_at(&self, offset: usize) -> bool {
        self.is_addr_set(offset)
    }

    fn slice_at(&self, offset: usize) -> <Self as WithBitmapSlice<'_>>::S {
        RefSlice::new(self, offset)
    }
}

impl NewBitmap for SoftDirtyBitmap {
    /// A clean bitmap of `len` bytes with the host page size, as `AtomicBitmap::with_len`.
    fn with_len(len: usize) -> Self {
        SoftDirtyBitmap::new(len, host_page_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_light_where_membarrier_is() {
        fn shared<T: Send + Sync>(_: &T) {}
        let b = SoftDirtyBitmap::new(64 * 4096, host_page_size());
        shared(&b);
        assert_eq!(b.light_marks(), crate::barrier::light_available());
        let c = b.clone();
        assert_eq!(
            c.light_marks(),
            b.light_marks(),
            "clones share the registration"
        );
        let f = c.with_fenced_marks();
        assert!(!f.light_marks());
        // Light or fenced, a mark is seen by the harvest that follows it.
        f.set_addr_range(3 * 4096, 1);
        b.set_addr_range(5 * 4096 + 7, 4096);
        assert_eq!(b.harvest_runs(), vec![(3, 1), (5, 2)]);
    }

    #[test]
    fn out_of_range_and_empty() {
        let b = SoftDirtyBitmap::new(1024, NonZeroUsize::MIN);
        b.set_addr_range(768, 512);
        assert!(b.is_addr_set(768) && b.is_addr_set(1023));
        assert!(!b.is_addr_set(1024));
        b.set_addr_range(usize::MAX - 3, 100);
        b.set_addr_range(5, 0);
        assert!(!b.is_addr_set(5));
        let d = SoftDirtyBitmap::default();
        d.mark_dirty(0, 4096);
        assert!(d.is_empty() && !d.dirty_at(0));
    }
}
