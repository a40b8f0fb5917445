//! The model's memory: what the VMAs, bitmaps and chunks of a set of address spaces hold,
//! how many chunks their faults may materialize, and the identities (`anon_vma`, shmem
//! file) they hand out.
//!
//! An [`Accounting`] belongs to whoever configures it: an [`AddressSpace`] has one of its
//! own unless it is given one ([`AddressSpace::with_accounting`]); a [`Tracker`] shares
//! one among its spaces; a fork child shares its parent's, as processes share a
//! machine's RAM. Nothing here is process-wide: two trackers in one process never see
//! each other's limits or counts. Bitmaps made outside an address space
//! ([`PageBitmap::new`], the slot registry, the vm-memory backend) are not accounted.
//!
//! The counters carry no synchronization (they are statistics and a soft limit, read and
//! updated with `Relaxed`), so they are plain std atomics even under loom, and an
//! `Accounting` lives in a std `Arc` that a loom model may keep across executions.
//!
//! [`AddressSpace`]: crate::mm::AddressSpace
//! [`AddressSpace::with_accounting`]: crate::mm::AddressSpace::with_accounting
//! [`Tracker`]: crate::tracker::Tracker
//! [`PageBitmap::new`]: crate::bitmap::PageBitmap::new

use std::sync::atomic::Ordering::Relaxed;

use crate::sync::StdCounter;

/// The default chunk limit: 2^17 chunks cover 2 TiB of touched pages in about 200 MiB.
/// A fault that needs one more fails (`ENOMEM` from `AddressSpace::write`/`read`)
/// instead of letting a trace that writes 64 TiB allocate gigabytes; the kernel would
/// OOM-kill instead.
pub const DEFAULT_CHUNK_LIMIT: usize = 1 << 17;

/// Live VMAs, bitmaps and chunks of the address spaces that share it, and the most
/// chunks their faults may materialize.
#[derive(Debug)]
pub struct Accounting {
    chunk_limit: StdCounter,
    chunks: StdCounter,
    bitmaps: StdCounter,
    vmas: StdCounter,
    /// the last `anon_vma` / shmem file identity handed out
    ids: StdCounter,
}

impl Default for Accounting {
    fn default() -> Accounting {
        Accounting::with_chunk_limit(DEFAULT_CHUNK_LIMIT)
    }
}

impl Accounting {
    /// Empty accounts whose faults may materialize at most `chunks` chunks.
    pub fn with_chunk_limit(chunks: usize) -> Accounting {
        Accounting {
            chunk_limit: StdCounter::new(chunks),
            chunks: StdCounter::new(0),
            bitmaps: StdCounter::new(0),
            vmas: StdCounter::new(0),
            ids: StdCounter::new(0),
        }
    }

    /// The most chunks faults may materialize.
    pub fn chunk_limit(&self) -> usize {
        self.chunk_limit.load(Relaxed)
    }

    /// Changes the chunk limit (chunks already materialized stay).
    pub fn set_chunk_limit(&self, chunks: usize) {
        self.chunk_limit.store(chunks, Relaxed);
    }

    /// Materialized chunks alive.
    pub fn live_chunks(&self) -> usize {
        self.chunks.load(Relaxed)
    }

    /// Bitmaps alive.
    pub fn live_bitmaps(&self) -> usize {
        self.bitmaps.load(Relaxed)
    }

    /// VMAs alive (published, retired but not yet reclaimed, or in a layout being built).
    pub fn live_vmas(&self) -> usize {
        self.vmas.load(Relaxed)
    }

    /// A fresh `anon_vma` / shmem file identity, unique among the spaces that share these
    /// accounts (the only ones whose VMAs can be compared), counting up from 1.
    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Relaxed) as u64 + 1
    }

    /// May a fault materialize one more chunk? A soft limit: racing faults may overshoot
    /// it by one chunk each.
    pub(crate) fn chunk_allowed(&self) -> bool {
        self.live_chunks() < self.chunk_limit()
    }

    pub(crate) fn chunks_added(&self, n: usize) {
        self.chunks.fetch_add(n, Relaxed);
    }

    pub(crate) fn chunks_freed(&self, n: usize) {
        self.chunks.fetch_sub(n, Relaxed);
    }

    pub(crate) fn bitmap_added(&self) {
        self.bitmaps.fetch_add(1, Relaxed);
    }

    pub(crate) fn bitmap_freed(&self) {
        self.bitmaps.fetch_sub(1, Relaxed);
    }

    pub(crate) fn vma_added(&self) {
        self.vmas.fetch_add(1, Relaxed);
    }

    pub(crate) fn vma_freed(&self) {
        self.vmas.fetch_sub(1, Relaxed);
    }
}
