//! The bitmap core: the per-page state of one VMA, in sparse atomic bitmaps.
//!
//! Each [`crate::vma::Vma`] carries one [`PageBitmap`]. For every page it holds three bits:
//!
//! | bitmap | 1 means | set by | cleared by |
//! |---|---|---|---|
//! | `clean` | the page is **not** soft-dirty (the design card's "non-soft-dirty bitmap") | `clear_refs`, a harvest, a legacy zap | a write fault |
//! | `populated` | a page is mapped (pagemap bit 63) | a read or write fault | a zap (`MADV_DONTNEED`) |
//! | `backed` | the present page is a real page, not the shared zero page | a write fault, a read of shared memory | a zap |
//!
//! `backed` without `populated` is a **guard marker** (`MADV_GUARD_INSTALL`, trace v2;
//! `guard.rs`): no page, and an access fails.
//!
//! ## Sparse layout: O(1) until touched
//!
//! The bitmap is a directory of *slots*, one per chunk of [`CHUNK_PAGES`] pages. A slot is
//! either a pointer to a materialized [`Chunk`] or a tag saying the whole chunk is
//! untouched and uniformly dirty ([`ABSENT_DIRTY`], the state of a fresh mapping in
//! precise mode) or uniformly clean ([`ABSENT_CLEAN`]). Untouched chunks are never
//! allocated. The directory has two levels (`directory.rs`): a top entry per 512 slots
//! (8 GiB of pages) holds a tag while the whole stretch is untouched, and a leaf of slots
//! once one of them changes, so a mapping costs 8 bytes per 8 GiB until touched (a
//! 126 TiB one: 126 KiB, in an anonymous mapping of its own that stays unbacked while
//! clean), and a fork copies one top entry per untouched stretch. A chunk is allocated
//! the first time a fault touches one of its pages, like the kernel allocating a page
//! table; a leaf, like a page-table page one level up.
//!
//! Each chunk also keeps a `summary` word: bit `w` set means `clean[w]` may have a dirty
//! (zero) bit. Harvests and `clear_refs` visit only flagged words, so their cost follows
//! the dirty pages, not the mapped size.
//!
//! ## Concurrency (see ARCHITECTURE.md, "The concurrency argument")
//!
//! - The **data plane** (faults: [`PageBitmap::write`], [`PageBitmap::read`]) only moves
//!   bits one way: clean 1→0, populated 0→1, backed 0→1. It takes no lock: a relaxed
//!   load to test, then one `AcqRel` read-modify-write per word that needs a change.
//! - The **control plane** (clear, harvest, zap, copy, drain) takes the bitmap's own
//!   clear lock (and, in an address space, runs under its control lock), so control
//!   operations never race each other, only faults. A zap (`MADV_DONTNEED`) bumps a
//!   generation that faults re-check, and they redo themselves after a zap of their
//!   pages ([`PageBitmap::zap`]).
//! - Marking orders the caller's data stores before it with a `SeqCst` fence, and a
//!   harvest orders its get-and-clear before the caller's data loads with another
//!   (ARCHITECTURE.md, contract 0).
//! - A structural operation that gives a VMA a new bitmap **copies**, publishes the new
//!   index, **seals** the old bitmap and **drains** it: every word of the old bitmap gets a
//!   value-preserving RMW and whatever faults added since the copy is applied to the new
//!   bitmap. A fault that did any RMW re-checks `sealed` afterwards; if it is set, the fault
//!   forwards itself to the successors (`PageBitmap::forward`). Either the fault's RMW precedes the drain's RMW on that
//!   word (then the drain carries it over) or it follows it (then it reads from the drain,
//!   synchronizes with it and sees `sealed`): no fault is lost and none is applied to a
//!   retired bitmap only. `loom-tests/` checks this protocol against the code of this module.
//!
//! ## Files
//!
//! - `mod.rs`: the [`PageBitmap`] struct, its geometry constants, constructors and
//!   accessors, the value types of its interface ([`Bits`], [`Mark`], [`Run`]), `Drop`.
//! - `chunk.rs`: [`Chunk`], reading a slot and materializing a chunk.
//! - `directory.rs`: the two-level directory of slots (tags, leaves, the top level).
//! - `words.rs`: bit and word helpers (masks, per-word, per-bit and per-run iteration).
//! - `fault.rs`: the data plane's write path: faults, marking, the zap re-check and
//!   forwarding from a sealed bitmap.
//! - `query.rs`: lock-free reads (one page, a window, uniform stretches, dirty runs).
//! - `harvest.rs`: clean-making operations: `clear_all`, harvest (get-and-clear),
//!   `set_clean`, `clean_runs`, the clear lock and the clear fence.
//! - `zap.rs`: `zap` (`MADV_DONTNEED`), `unpopulate` and the control-plane range walk.
//! - `guard.rs`: guard markers (`MADV_GUARD_INSTALL`/`_REMOVE`) and the fault's look for them.
//! - `copy.rs`: building a new bitmap from an old one (`copy_from`, [`CopyRule`]).
//! - `drain.rs`: sealing a retired bitmap and draining late faults into its successors
//!   ([`Target`], [`DrainRule`]).
//! - `tests.rs`: unit tests.

mod chunk;
mod copy;
mod directory;
mod drain;
mod fault;
mod guard;
mod harvest;
mod query;
mod words;
mod zap;

#[cfg(all(test, not(loom)))]
mod tests;

pub use chunk::Chunk;
pub use copy::CopyRule;
pub use drain::{DrainRule, Target};
pub(crate) use fault::{ChunkHint, WordHint};
pub use words::{for_each_bit, for_each_run};
pub use zap::ZapRule;

use crate::accounting::Accounting;
use crate::sync::{Arc, AtomicBool, AtomicU64, Mutex, Ordering};
use directory::Directory;

/// Pages per chunk (one directory slot).
#[cfg(not(all(loom, feature = "loom")))]
pub const CHUNK_PAGES: u64 = 4096;
/// Pages per chunk (one directory slot): tiny under loom so models stay small.
#[cfg(all(loom, feature = "loom"))]
pub const CHUNK_PAGES: u64 = 128;

/// 64-bit words per chunk and per bitmap.
pub const CHUNK_WORDS: usize = (CHUNK_PAGES / 64) as usize;
const _: () = assert!(CHUNK_WORDS >= 1 && CHUNK_WORDS <= 64, "summary is one u64");

/// Zaps whose ranges a bitmap remembers (`PageBitmap::zap_ring`).
const ZAP_RING: usize = 8;

/// Slot tag: chunk untouched, every page soft-dirty, none populated.
pub const ABSENT_DIRTY: usize = 1;
/// Slot tag: chunk untouched, every page clean, none populated. Zero, so that a clean
/// directory (a fork child's, a cleared mapping's copy) is allocated zeroed and costs no
/// resident memory until written.
pub const ABSENT_CLEAN: usize = 0;

/// Bytes one materialized chunk occupies.
pub const CHUNK_BYTES: usize = std::mem::size_of::<Chunk>();

/// The three bits of one page, or 64 pages' worth of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bits {
    /// 1 = not soft-dirty at the page level
    pub clean: u64,
    /// 1 = populated (present)
    pub populated: u64,
    /// 1 = backed by a real page (not the zero page)
    pub backed: u64,
}

/// What a fault-path update found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// Applied. `faults` pages turned from clean to dirty at the page level.
    Done {
        /// pages whose clean bit this call flipped
        faults: u64,
    },
    /// The bitmap was sealed by a structural operation after (some of) this call's
    /// updates and carries no forwarding list: retry through a freshly loaded index.
    /// Only the broken twin `retry_via_index` produces it: a sealed bitmap always
    /// forwards the fault to its successors ([`PageBitmap::seal_and_drain`]).
    Sealed,
    /// A chunk was needed and the chunk limit of the bitmap's accounts
    /// ([`Accounting::chunk_limit`]) is reached; the pages before the first one in that
    /// chunk were done.
    NoMem,
    /// `[first, first + count)` overflows or leaves the bitmap (`first + count >
    /// pages()`): nothing was done.
    OutOfRange,
}

/// A run of pages `[first, first + count)` within one bitmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// first page index
    pub first: u64,
    /// number of pages
    pub count: u64,
}

/// The per-page soft-dirty, presence and zero-page state of one VMA.
pub struct PageBitmap {
    pages: u64,
    slots: Directory,
    sealed: AtomicBool,
    /// Zap generation: odd while a zap (`MADV_DONTNEED`) is rewriting words, bumped
    /// twice per zap. A fault that did any RMW re-reads it and redoes itself if a zap
    /// overlapped it (see [`PageBitmap::zap`]): the kernel's page-table lock, as a
    /// sequence count.
    zap_seq: AtomicU64,
    /// The page ranges `[first, end)` of the latest [`ZAP_RING`] zaps (zap `n`, whose
    /// odd generation is `2n + 1`, in slot `n % ZAP_RING`), each stored after its odd
    /// bump: a fault that overlapped only zaps of other pages need not redo itself (a
    /// redo would re-dirty a page a harvest took in between: a second report of one
    /// write).
    zap_ring: [[AtomicU64; 2]; ZAP_RING],
    /// Serializes every operation that makes pages clean (harvest, `clear_all`,
    /// `set_clean(.., true)`, zap) and the drain, whoever calls them: `take_word`'s plain
    /// store is sound only if no other clean-making operation runs on the word. Marking
    /// never takes it.
    clear: Mutex<()>,
    /// Where a sealed bitmap's pages went (set before `sealed`, read after seeing it): a
    /// fault that finds the bitmap sealed applies itself there ([`PageBitmap::forward`]).
    forward: Mutex<Option<Arc<Vec<Target>>>>,
    /// The accounts this bitmap, its chunks and its VMAs count in, and whose chunk limit
    /// its faults obey; `None` for a bitmap made outside an address space.
    accounting: Option<std::sync::Arc<Accounting>>,
    /// Set once a guard marker was installed in this bitmap or copied into it
    /// (`guard.rs`); never cleared. Faults look for guard markers only where it is set.
    guards: std::sync::atomic::AtomicBool,
}

// `PageBitmap` is `Send + Sync` by its fields: chunk pointers are stored as `usize` in
// atomics (no raw pointer field), and every chunk is reached only through `&self`
// (shared, atomic words) and freed only in `Drop` (`&mut self`). Asserted here so that a
// change of representation that loses it (a raw pointer, a `Cell`) fails to compile and
// has to argue it again.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<PageBitmap>();
};

impl std::fmt::Debug for PageBitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageBitmap")
            .field("pages", &self.pages)
            .field("chunks", &self.materialized_chunks())
            .field("sealed", &self.sealed.load(Ordering::Relaxed))
            .finish()
    }
}

/// The most pages a bitmap may have: the user address space of x86-64 with 5-level
/// paging (2^56 bytes, 128 PiB, in 4 KiB pages). The directory of a bitmap this long is
/// 64 MiB (virtual, and unbacked while clean); a longer one is refused with ENOMEM.
pub const MAX_PAGES: u64 = 1 << 44;

impl PageBitmap {
    /// A bitmap of `pages` untouched pages, all soft-dirty (`dirty`) or all clean.
    ///
    /// Costs one zeroed directory of `pages / CHUNK_PAGES` slots and nothing per page.
    /// Not accounted: its faults may materialize every chunk.
    ///
    /// # Panics
    /// If `pages` is more than [`MAX_PAGES`]; [`Self::try_new`] returns ENOMEM instead.
    pub fn new(pages: u64, dirty: bool) -> PageBitmap {
        PageBitmap::accounted(pages, dirty, None)
    }

    /// As [`Self::new`], or ENOMEM if `pages` is more than [`MAX_PAGES`].
    pub fn try_new(pages: u64, dirty: bool) -> Result<PageBitmap, crate::errno::Errno> {
        PageBitmap::try_accounted(pages, dirty, None)
    }

    /// As [`Self::new`], counted in `accounting` (if any), whose chunk limit the faults
    /// obey.
    ///
    /// # Panics
    /// If `pages` is more than [`MAX_PAGES`]; [`Self::try_accounted`] returns ENOMEM
    /// instead.
    pub fn accounted(
        pages: u64,
        dirty: bool,
        accounting: Option<&std::sync::Arc<Accounting>>,
    ) -> PageBitmap {
        match PageBitmap::try_accounted(pages, dirty, accounting) {
            Ok(b) => b,
            Err(_) => panic!(
                "PageBitmap: {pages} pages is more than MAX_PAGES ({MAX_PAGES}); \
                 use try_new or try_accounted to get ENOMEM instead"
            ),
        }
    }

    /// As [`Self::accounted`], or ENOMEM if `pages` is more than [`MAX_PAGES`].
    pub fn try_accounted(
        pages: u64,
        dirty: bool,
        accounting: Option<&std::sync::Arc<Accounting>>,
    ) -> Result<PageBitmap, crate::errno::Errno> {
        if pages > MAX_PAGES {
            return Err(crate::errno::Errno::ENOMEM);
        }
        let nslots = pages.div_ceil(CHUNK_PAGES) as usize;
        let tag = if dirty { ABSENT_DIRTY } else { ABSENT_CLEAN };
        let slots = Directory::new(nslots, tag);
        if let Some(a) = accounting {
            a.bitmap_added();
        }
        Ok(PageBitmap {
            pages,
            slots,
            sealed: AtomicBool::new(false),
            zap_seq: AtomicU64::new(0),
            zap_ring: std::array::from_fn(|_| [AtomicU64::new(0), AtomicU64::new(0)]),
            clear: Mutex::new(()),
            forward: Mutex::new(None),
            accounting: accounting.cloned(),
            guards: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// `[first, first + count)` clipped to the bitmap: `(first', count')` with
    /// `first' = min(first, pages)` and the end saturating at `pages`. The control-plane
    /// and query methods that take a range clip it with this (documented on each);
    /// marking methods refuse a range that leaves the bitmap ([`Mark::OutOfRange`]).
    #[inline]
    pub fn clip(&self, first: u64, count: u64) -> (u64, u64) {
        let f = first.min(self.pages);
        let e = first.saturating_add(count).min(self.pages);
        (f, e.saturating_sub(f))
    }

    /// Does `[first, first + count)` lie within the bitmap (without overflow)?
    #[inline]
    pub(super) fn in_range(&self, first: u64, count: u64) -> bool {
        first.checked_add(count).is_some_and(|e| e <= self.pages)
    }

    /// The accounts this bitmap counts in, if any.
    pub fn accounting(&self) -> Option<&std::sync::Arc<Accounting>> {
        self.accounting.as_ref()
    }

    /// Number of pages covered.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Has a structural operation sealed this bitmap (it belongs to a retired VMA)?
    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    /// Number of chunks allocated so far.
    pub fn materialized_chunks(&self) -> usize {
        let mut n = 0;
        self.slots.for_each_chunk_ptr(|_| n += 1);
        n
    }

    /// Bytes of tracking memory this bitmap holds (directory plus chunks).
    pub fn tracking_bytes(&self) -> usize {
        self.slots.bytes() + self.materialized_chunks() * CHUNK_BYTES
    }
}

impl Drop for PageBitmap {
    fn drop(&mut self) {
        let mut freed = 0;
        self.slots.for_each_chunk_ptr(|v| {
            // SAFETY: `&mut self`: no other reference to the bitmap exists; the value
            // came from `Box::into_raw` in `materialize` and is freed only here (the
            // directory's own `Drop`, after this one, frees the leaves).
            drop(unsafe { Box::from_raw(v as *mut Chunk) });
            freed += 1;
        });
        if let Some(a) = &self.accounting {
            a.chunks_freed(freed);
            a.bitmap_freed();
        }
    }
}
