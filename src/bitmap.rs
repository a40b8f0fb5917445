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
//! ## Sparse layout: O(1) until touched
//!
//! The bitmap is a directory of *slots*, one per chunk of [`CHUNK_PAGES`] pages. A slot is
//! either a pointer to a materialized [`Chunk`] or a tag saying the whole chunk is
//! untouched and uniformly dirty ([`ABSENT_DIRTY`], the state of a fresh mapping in
//! precise mode) or uniformly clean ([`ABSENT_CLEAN`]). Untouched chunks are never
//! allocated, and the directory itself is allocated zeroed (= all `ABSENT_DIRTY`), which
//! the allocator serves from untouched zero pages: a 1 TiB mapping costs nothing resident
//! until it is cleared, and then 8 bytes per 16 MiB. A chunk is allocated the first time a
//! fault touches one of its pages, like the kernel allocating a page table.
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
//!   retired bitmap only. `loom-tests/` checks this protocol against the code below.

use crate::accounting::Accounting;
use crate::sync::{
    fence, lock, spin_loop, Arc, AtomicBool, AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering,
};
use crate::twins;

/// Ordering of the fault path's read-modify-writes. Broken twin `relaxed_fault`
/// (loom-tests): Relaxed, which lets a fault that follows a drain miss the seal.
const FAULT_RMW: Ordering = if twins::RELAXED_FAULT {
    Ordering::Relaxed
} else {
    Ordering::AcqRel
};

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
pub const ABSENT_DIRTY: usize = 0;
/// Slot tag: chunk untouched, every page clean, none populated.
pub const ABSENT_CLEAN: usize = 1;

/// Bytes one materialized chunk occupies.
pub const CHUNK_BYTES: usize = std::mem::size_of::<Chunk>();

/// One materialized chunk: [`CHUNK_PAGES`] pages, three bitmaps and a summary.
#[repr(align(64))]
pub struct Chunk {
    clean: [AtomicU64; CHUNK_WORDS],
    populated: [AtomicU64; CHUNK_WORDS],
    backed: [AtomicU64; CHUNK_WORDS],
    summary: AtomicU64,
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
}

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
}

/// The result of one fault attempt.
enum Attempt {
    /// applied; pages flipped clean to dirty
    Done(u64),
    /// the chunk limit was reached
    NoMem,
    /// sealed under the fault: forward it
    Sealed,
    /// a zap overlapped the fault: wait for it and redo unless it zapped other pages
    /// (pages flipped so far, the zap generation read before the first RMW)
    Rezap(u64, u64),
}

/// The mark side of the data-ordering contract (ARCHITECTURE.md, contract 0).
#[inline(always)]
fn mark_fence() {
    // Broken twin `mark_no_fence` (loom-tests, tests/data_ordering.rs): the test-before-set
    // marking of before the fix.
    if !twins::MARK_NO_FENCE {
        fence(Ordering::SeqCst);
    }
}

/// The harvest side of the data-ordering contract: issued after a get-and-clear and
/// before the pages it took are handed out (each `sink` call), and at the end of every
/// other clean-making operation.
#[inline(always)]
fn clear_fence() {
    // Broken twin `harvest_no_fence` (loom-tests, tests/data_ordering.rs).
    if !twins::HARVEST_NO_FENCE {
        fence(Ordering::SeqCst);
    }
}

/// How the drain of a sealed bitmap transforms late faults on their way to the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainRule {
    /// Apply faults as they were (split, merge, shrink).
    Plain,
    /// Also make every page populated by a late fault dirty (an mremap move in legacy
    /// mode: the kernel marks every moved present PTE soft-dirty).
    DirtyPopulated,
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
    slots: Box<[AtomicUsize]>,
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

/// A view of one slot.
enum Slot<'a> {
    Absent { clean: bool },
    Chunk(&'a Chunk),
}

#[inline]
fn word_mask(from_bit: u64, to_bit: u64) -> u64 {
    // bits [from_bit, to_bit) of a word, 0 <= from < to <= 64
    let hi = if to_bit >= 64 {
        !0u64
    } else {
        (1u64 << to_bit) - 1
    };
    hi & !((1u64 << from_bit) - 1)
}

/// Calls `f(word_index_in_bitmap, mask)` for every word that overlaps `[first, first+count)`.
#[inline]
fn for_each_word(first: u64, count: u64, mut f: impl FnMut(u64, u64)) {
    let end = first + count;
    let mut p = first;
    while p < end {
        let w = p / 64;
        let lo = p % 64;
        let hi = (end - w * 64).min(64);
        f(w, word_mask(lo, hi));
        p = w * 64 + hi;
    }
}

/// What a fault has done so far (see [`PageBitmap::fault_impl`]).
#[derive(Clone, Copy, Default)]
struct FaultState {
    /// pages whose clean bit the fault flipped
    faults: u64,
    /// any RMW issued (then the seal and the zap generation must be re-checked)
    did_rmw: bool,
    /// the zap generation read before the first RMW
    zap0: u64,
    /// summary bits owed to the current chunk (words whose clean bits it cleared)
    owed: u64,
}

impl FaultState {
    /// Called before each RMW: the first one reads the zap generation first.
    #[inline(always)]
    fn before_rmw(&mut self, zap_seq: &AtomicU64) {
        if !self.did_rmw {
            // Acquire: sequenced before the RMWs (which are AcqRel, so they cannot move
            // above it). Pairs with nothing by itself; `finish_fault` compares it with a
            // later read (see `PageBitmap::zap`).
            if !twins::ZAP_NO_SEQ {
                self.zap0 = zap_seq.load(Ordering::Acquire);
            }
            self.did_rmw = true;
        }
    }
}

/// The fault path on one word `wi` of `chunk`, pages `m`: test-before-set of `clean`
/// (if `dirty`), then `populated` and `backed` (`what` = (dirty, backed, populate)).
#[inline(always)]
fn fault_word(
    chunk: &Chunk,
    zap_seq: &AtomicU64,
    wi: usize,
    m: u64,
    what: (bool, bool, bool),
    st: &mut FaultState,
) {
    let (dirty, backed, populate) = what;
    // Order: clean first, then populated and backed. A copy reads populated before clean
    // (see `copy_from`), so a snapshot never shows a page written (backed) but clean.
    if dirty {
        let c = chunk.clean[wi].load(Ordering::Relaxed);
        if c & m != 0 {
            st.before_rmw(zap_seq);
            // AcqRel: Acquire pairs with the drain RMW of a sealing structural operation
            // (then `sealed` is visible in `finish_fault`), with a zap's RMW (then its
            // generation bump is), and with a harvest's RMW or `take_word`'s Release
            // store (then the harvest's summary clear is visible to `settle_summary`);
            // Release lets a harvest that takes this bit see the write.
            let prev = chunk.clean[wi].fetch_and(!m, FAULT_RMW);
            let flipped = prev & m;
            st.faults += if flipped == !0 {
                64 // a whole clean word (no software popcount: x86-64 has no POPCNT)
            } else {
                u64::from(flipped.count_ones())
            };
            st.owed |= 1u64 << wi;
        }
    }
    if populate && chunk.populated[wi].load(Ordering::Relaxed) & m != m {
        st.before_rmw(zap_seq);
        // AcqRel: pairs with the drain and zap RMWs (see above).
        chunk.populated[wi].fetch_or(m, FAULT_RMW);
    }
    if backed && chunk.backed[wi].load(Ordering::Relaxed) & m != m {
        st.before_rmw(zap_seq);
        // AcqRel: pairs with the drain and zap RMWs (see above).
        chunk.backed[wi].fetch_or(m, FAULT_RMW);
    }
}

/// Sets the summary bits a fault owes `chunk`, after its word RMWs (test-before-set).
#[inline]
fn settle_summary(chunk: &Chunk, owed: u64) {
    if owed != 0 && chunk.summary.load(Ordering::Relaxed) & owed != owed {
        // AcqRel: ordered after this fault's word RMWs, so a harvest that clears these
        // summary bits and then visits the words sees our bits.
        chunk.summary.fetch_or(owed, Ordering::AcqRel);
    }
}

impl PageBitmap {
    /// A bitmap of `pages` untouched pages, all soft-dirty (`dirty`) or all clean.
    ///
    /// Costs one zeroed directory of `pages / CHUNK_PAGES` slots and nothing per page.
    /// Not accounted: its faults may materialize every chunk.
    pub fn new(pages: u64, dirty: bool) -> PageBitmap {
        PageBitmap::accounted(pages, dirty, None)
    }

    /// As [`Self::new`], counted in `accounting` (if any), whose chunk limit the faults
    /// obey.
    pub fn accounted(
        pages: u64,
        dirty: bool,
        accounting: Option<&std::sync::Arc<Accounting>>,
    ) -> PageBitmap {
        let nslots = pages.div_ceil(CHUNK_PAGES) as usize;
        let tag = if dirty { ABSENT_DIRTY } else { ABSENT_CLEAN };
        let slots: Box<[AtomicUsize]> = if tag == 0 {
            zeroed_slots(nslots)
        } else {
            (0..nslots).map(|_| AtomicUsize::new(tag)).collect()
        };
        if let Some(a) = accounting {
            a.bitmap_added();
        }
        PageBitmap {
            pages,
            slots,
            sealed: AtomicBool::new(false),
            zap_seq: AtomicU64::new(0),
            zap_ring: std::array::from_fn(|_| [AtomicU64::new(0), AtomicU64::new(0)]),
            clear: Mutex::new(()),
            forward: Mutex::new(None),
            accounting: accounting.cloned(),
        }
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
        (0..self.slots.len())
            .filter(|&k| matches!(self.slot(k), Slot::Chunk(_)))
            .count()
    }

    /// Bytes of tracking memory this bitmap holds (directory plus chunks).
    pub fn tracking_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<usize>() + self.materialized_chunks() * CHUNK_BYTES
    }

    #[inline]
    fn slot(&self, k: usize) -> Slot<'_> {
        // Acquire: pairs with the AcqRel CAS that installed a chunk, so its initial
        // contents are visible.
        let v = self.slots[k].load(Ordering::Acquire);
        match v {
            ABSENT_DIRTY => Slot::Absent { clean: false },
            ABSENT_CLEAN => Slot::Absent { clean: true },
            p => {
                // SAFETY: a non-tag slot value is a pointer obtained from `Box::into_raw`
                // of a `Chunk` (see `materialize`); chunks are freed only in `Drop`, which
                // needs `&mut self`, so the chunk outlives this `&self` borrow.
                Slot::Chunk(unsafe { &*(p as *const Chunk) })
            }
        }
    }

    /// Valid-bit masks of slot `k`'s words (bits past `pages` are 0).
    fn valid_masks(&self, k: usize) -> [u64; CHUNK_WORDS] {
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
    fn materialize(&self, k: usize, limited: bool) -> Result<&Chunk, Mark> {
        loop {
            let v = self.slots[k].load(Ordering::Acquire);
            if v != ABSENT_DIRTY && v != ABSENT_CLEAN {
                // SAFETY: as in `slot`: a live chunk pointer owned by this bitmap.
                return Ok(unsafe { &*(v as *const Chunk) });
            }
            if limited && self.accounting.as_ref().is_some_and(|a| !a.chunk_allowed()) {
                return Err(Mark::NoMem);
            }
            let chunk = Box::into_raw(Chunk::new(v == ABSENT_CLEAN, &self.valid_masks(k)));
            // AcqRel: Release publishes the chunk's initial contents to `slot` readers;
            // Acquire pairs with the drain's RMW on this slot (see `seal_and_drain`), so
            // that a CAS ordered after the drain sees `sealed`.
            match self.slots[k].compare_exchange(
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
                Err(_) => {
                    // SAFETY: the CAS failed, so the chunk was never shared.
                    drop(unsafe { Box::from_raw(chunk) });
                }
            }
        }
    }

    /// Same as [`Self::materialize`] for the control plane (no concurrent seal possible).
    fn materialize_ctl(&self, k: usize) -> &Chunk {
        match self.materialize(k, false) {
            Ok(c) => c,
            Err(_) => match self.slot(k) {
                Slot::Chunk(c) => c,
                Slot::Absent { .. } => unreachable!("materialize installed a chunk"),
            },
        }
    }

    // ----------------------------------------------------------------- data plane

    /// A write fault on pages `[first, first + count)`: populate, back with a real page,
    /// and make soft-dirty at the page level. Test-before-set: a page already in that
    /// state costs one relaxed load per word and no read-modify-write.
    pub fn write(&self, first: u64, count: u64) -> Mark {
        self.fault(first, count, true, true, true)
    }

    /// Marks `[first, first + count)` soft-dirty without touching population: the write
    /// path of a VMM's dirty bitmap (`crate::vmm`), where only the dirty bit matters. One
    /// relaxed load per word when the pages are already dirty; an untouched all-dirty
    /// chunk is not even materialized.
    pub fn mark_dirty(&self, first: u64, count: u64) -> Mark {
        self.fault_impl(first, count, true, false, false, false)
    }

    /// A read fault on `[first, first + count)`: populate without dirtying. `zero_page`:
    /// map the shared zero page (private anonymous memory) rather than a real page.
    pub fn read(&self, first: u64, count: u64, zero_page: bool) -> Mark {
        self.fault(first, count, false, !zero_page, true)
    }

    fn fault(&self, first: u64, count: u64, dirty: bool, backed: bool, populate: bool) -> Mark {
        self.fault_impl(first, count, dirty, backed, populate, true)
    }

    /// A fault: the data-ordering fence of a mark, then [`Self::fault_loop`].
    #[inline]
    fn fault_impl(
        &self,
        first: u64,
        count: u64,
        dirty: bool,
        backed: bool,
        populate: bool,
        limited: bool,
    ) -> Mark {
        if dirty {
            // Data ordering (ARCHITECTURE.md, contract 0): the caller's stores to the
            // pages come before this call; the fence orders them before the test loads
            // below, and pairs with the fence a harvest issues after its get-and-clear and
            // before it hands out the pages (`clear_fence`). Either the harvest's fence
            // comes first in the SeqCst order, and the test load sees the page clean (so
            // the RMW re-dirties it), or ours does, and the harvest's copy sees the data.
            mark_fence();
        }
        self.fault_loop(first, count, dirty, backed, populate, limited)
    }

    /// Applies a fault until it linearizes: redone after an overlapping zap, forwarded
    /// to the successors of a bitmap sealed under it.
    fn fault_loop(
        &self,
        first: u64,
        count: u64,
        dirty: bool,
        backed: bool,
        populate: bool,
        limited: bool,
    ) -> Mark {
        debug_assert!(first + count <= self.pages);
        // Faults flipped by an attempt a zap then undid are counted once.
        let mut counted = 0;
        loop {
            match self.fault_once(first, count, dirty, backed, populate, limited) {
                Attempt::Done(f) => {
                    return Mark::Done {
                        faults: f.max(counted),
                    }
                }
                Attempt::NoMem => return Mark::NoMem,
                Attempt::Rezap(f, zap0) => {
                    counted = counted.max(f);
                    self.wait_zap();
                    if self.only_other_pages_zapped(zap0, first, first + count) {
                        return Mark::Done { faults: counted };
                    }
                }
                Attempt::Sealed => {
                    return match self.forward(first, count, dirty, backed, populate, limited) {
                        Mark::Done { faults } => Mark::Done {
                            faults: faults.max(counted),
                        },
                        m => m,
                    }
                }
            }
        }
    }

    /// One attempt of a fault.
    #[inline]
    fn fault_once(
        &self,
        first: u64,
        count: u64,
        dirty: bool,
        backed: bool,
        populate: bool,
        limited: bool,
    ) -> Attempt {
        // Fast path: a range inside one word of a materialized chunk (a hot page written
        // again, a small store). The same atomic steps as the general path, without its
        // chunk and word loop: one slot load, then `fault_word`; a fault that changes
        // nothing returns after the word loads (no RMW, no summary, no re-checks).
        let off = first % 64;
        if count != 0 && off + count <= 64 {
            let k = (first / CHUNK_PAGES) as usize;
            if let Slot::Chunk(c) = self.slot(k) {
                let wi = ((first % CHUNK_PAGES) / 64) as usize;
                let mut st = FaultState::default();
                fault_word(
                    c,
                    &self.zap_seq,
                    wi,
                    word_mask(off, off + count),
                    (dirty, backed, populate),
                    &mut st,
                );
                if !st.did_rmw {
                    return Attempt::Done(0);
                }
                settle_summary(c, st.owed);
                return self.finish_fault(false, false, st);
            }
        }
        self.fault_words(first, count, dirty, backed, populate, limited)
    }

    /// The general fault path: chunk by chunk, word by word (full-word masks inside the
    /// range), test-before-set per word, then one summary update per chunk.
    fn fault_words(
        &self,
        first: u64,
        count: u64,
        dirty: bool,
        backed: bool,
        populate: bool,
        limited: bool,
    ) -> Attempt {
        let mut st = FaultState::default();
        let mut sealed = false;
        let mut nomem = false;
        let end = first + count;
        let mut p = first;
        while p < end {
            let k = (p / CHUNK_PAGES) as usize;
            let base = k as u64 * CHUNK_PAGES;
            let hi = end.min(base + CHUNK_PAGES);
            // Marking only (no population): an untouched all-dirty chunk already says
            // what we would write.
            if !populate && self.slots[k].load(Ordering::Acquire) == ABSENT_DIRTY {
                p = hi;
                continue;
            }
            let chunk = match self.materialize(k, limited) {
                Ok(c) => c,
                Err(Mark::NoMem) => {
                    nomem = true;
                    break;
                }
                Err(_) => {
                    sealed = true;
                    break;
                }
            };
            st.owed = 0;
            let w0 = ((p - base) / 64) as usize;
            let w1 = ((hi - 1 - base) / 64) as usize;
            for wi in w0..=w1 {
                let wbase = base + wi as u64 * 64;
                // Full words inside the range: the whole mask, no per-page work.
                let m = if wi != w0 && wi != w1 {
                    !0
                } else {
                    word_mask(p.max(wbase) - wbase, hi.min(wbase + 64) - wbase)
                };
                fault_word(
                    chunk,
                    &self.zap_seq,
                    wi,
                    m,
                    (dirty, backed, populate),
                    &mut st,
                );
            }
            settle_summary(chunk, st.owed);
            p = hi;
        }
        self.finish_fault(sealed, nomem, st)
    }

    /// The end of a fault attempt: the seal and zap re-checks after any RMW.
    #[inline]
    fn finish_fault(&self, sealed: bool, nomem: bool, st: FaultState) -> Attempt {
        // Acquire: if any RMW of the fault read from a drain, the seal store (sequenced
        // before the drain) is visible here.
        // (Broken twin `no_recheck`: trusts the RMWs without the re-check.)
        if sealed || (!twins::NO_RECHECK && st.did_rmw && self.sealed.load(Ordering::Acquire)) {
            return Attempt::Sealed;
        }
        // Acquire: if any RMW of the fault read from a zap's RMW, the zap's first
        // generation bump (sequenced before it) is visible here (see `zap`).
        if !twins::ZAP_NO_SEQ && st.did_rmw {
            let now = self.zap_seq.load(Ordering::Acquire);
            if st.zap0 & 1 == 1 || now != st.zap0 {
                return Attempt::Rezap(st.faults, st.zap0);
            }
        }
        if nomem {
            return Attempt::NoMem;
        }
        Attempt::Done(st.faults)
    }

    /// Waits until no zap is rewriting this bitmap's words.
    fn wait_zap(&self) {
        // Acquire: pairs with the Release bump that ends the zap, so the redone fault's
        // RMWs come after every zap RMW in their words' modification orders.
        while self.zap_seq.load(Ordering::Acquire) & 1 == 1 {
            spin_loop();
        }
    }

    /// After [`Self::wait_zap`]: were all the zaps that ran since the fault read `zap0`
    /// (the one in progress then, and those after it) on pages disjoint from
    /// `[first, end)`? Then they changed none of the fault's bits (every zap RMW is
    /// masked to its pages) and the fault stands. Read like a seqlock: the ranges between
    /// two reads of the generation, which must agree; more zaps than the ring holds, or a
    /// new one meanwhile, mean a redo.
    fn only_other_pages_zapped(&self, zap0: u64, first: u64, end: u64) -> bool {
        // Acquire: pairs with the zaps' Release bumps, so the ranges they stored after
        // their odd bumps are visible.
        let g = self.zap_seq.load(Ordering::Acquire);
        if g & 1 == 1 {
            return false;
        }
        // Zaps `n0..n1` ran: the one in progress at `zap0` (odd) or the next one, up to
        // the last completed one.
        let (n0, n1) = (zap0 / 2, g / 2);
        if n1 <= n0 || n1 - n0 > ZAP_RING as u64 {
            return n1 <= n0;
        }
        let disjoint = (n0..n1).all(|n| {
            let slot = &self.zap_ring[(n % ZAP_RING as u64) as usize];
            let (lo, hi) = (
                slot[0].load(Ordering::Relaxed),
                slot[1].load(Ordering::Relaxed),
            );
            hi <= first || end <= lo
        });
        // Acquire fence: orders the range loads before the re-read; a zap that stored a
        // range we read after its odd bump makes the re-read differ (see `zap`).
        fence(Ordering::Acquire);
        disjoint && self.zap_seq.load(Ordering::Relaxed) == g
    }

    /// A fault that found this bitmap sealed: apply it to the successors the sealing
    /// operation named, in their coordinates (recursively, if one of them was sealed in
    /// turn). The fault linearizes before the structural operation: every page of it
    /// lands where the operation carried that page (pages the operation dropped, an
    /// unmapped part, are written into the retired bitmap only, as a write that
    /// completed just before the unmap). Retrying through the index instead would let
    /// a write that the drain partly carried over fail with EFAULT at the moved source.
    fn forward(
        &self,
        first: u64,
        count: u64,
        dirty: bool,
        backed: bool,
        populate: bool,
        limited: bool,
    ) -> Mark {
        // Broken twin `retry_via_index` (loom-tests): the code before forwarding.
        if twins::RETRY_VIA_INDEX {
            return Mark::Sealed;
        }
        // The mutex orders this read after the store in `seal_and_drain`, which precedes
        // the seal we observed.
        #[allow(unreachable_code)]
        let Some(targets) = lock(&self.forward).clone() else {
            return Mark::Sealed;
        };
        let end = first + count;
        let mut faults = 0;
        for t in targets.iter() {
            let lo = first.max(t.src_first);
            let hi = end.min(t.src_first + t.count);
            if lo >= hi {
                continue;
            }
            // A legacy mremap move marks every moved present page soft-dirty: a read
            // fault that lands before the move is such a page.
            let dirty_t = dirty || (populate && t.rule == DrainRule::DirtyPopulated);
            let d = t.dst_first + (lo - t.src_first);
            match t
                .dst
                .fault_loop(d, hi - lo, dirty_t, backed, populate, limited)
            {
                Mark::Done { faults: f } => faults += f,
                m => return m,
            }
        }
        Mark::Done { faults }
    }

    /// The bits of page `p`.
    pub fn page(&self, p: u64) -> Bits {
        let b = self.window(p - p % 64);
        let s = p % 64;
        Bits {
            clean: (b.clean >> s) & 1,
            populated: (b.populated >> s) & 1,
            backed: (b.backed >> s) & 1,
        }
    }

    /// The 64 pages starting at `p` (a multiple of 64); bits past the end read as
    /// clean, unpopulated.
    pub fn window(&self, p: u64) -> Bits {
        debug_assert_eq!(p % 64, 0);
        if p >= self.pages {
            return Bits {
                clean: !0,
                populated: 0,
                backed: 0,
            };
        }
        let k = (p / CHUNK_PAGES) as usize;
        let wi = ((p % CHUNK_PAGES) / 64) as usize;
        match self.slot(k) {
            Slot::Absent { clean } => Bits {
                clean: if clean { !0 } else { 0 },
                populated: 0,
                backed: 0,
            },
            Slot::Chunk(c) => {
                // Acquire loads: populated and backed before clean, mirroring the fault
                // path's order (clean first), so a page seen backed is seen dirty.
                // Broken twin `copy_clean_first` (loom-tests): clean first.
                let clean_first =
                    twins::COPY_CLEAN_FIRST.then(|| c.clean[wi].load(Ordering::Acquire));
                let populated = c.populated[wi].load(Ordering::Acquire);
                let backed = c.backed[wi].load(Ordering::Acquire);
                let clean = clean_first.unwrap_or_else(|| c.clean[wi].load(Ordering::Acquire));
                Bits {
                    clean,
                    populated,
                    backed,
                }
            }
        }
    }

    /// If every page of `[first, first+count)` lies in untouched chunks with the same
    /// tag, that tag's cleanliness.
    pub fn uniform(&self, first: u64, count: u64) -> Option<bool> {
        if count == 0 {
            return None;
        }
        let k0 = (first / CHUNK_PAGES) as usize;
        let k1 = ((first + count - 1) / CHUNK_PAGES) as usize;
        let mut tag = None;
        for k in k0..=k1 {
            match self.slot(k) {
                Slot::Chunk(_) => return None,
                Slot::Absent { clean } => match tag {
                    None => tag = Some(clean),
                    Some(t) if t != clean => return None,
                    _ => {}
                },
            }
        }
        tag
    }

    /// The end of the stretch of untouched slots with the same tag that contains `p`
    /// (at most `limit`), if `p` is in an untouched slot.
    pub fn uniform_run_end(&self, p: u64, limit: u64) -> Option<(bool, u64)> {
        let mut k = (p / CHUNK_PAGES) as usize;
        let tag = match self.slot(k) {
            Slot::Chunk(_) => return None,
            Slot::Absent { clean } => clean,
        };
        let mut end = (k as u64 + 1) * CHUNK_PAGES;
        while end < limit {
            k += 1;
            match self.slot(k) {
                Slot::Absent { clean } if clean == tag => end += CHUNK_PAGES,
                _ => break,
            }
        }
        Some((tag, end.min(limit)))
    }

    /// Calls `sink` with each maximal run of the pages of `[first, first+count)` that are
    /// soft-dirty at the page level (`clean` bit 0), in order, changing nothing: the
    /// read-only walk behind `AddressSpace::get_dirty_log`. Lock-free, data plane: it
    /// runs concurrently with faults and harvests and reads each word once.
    ///
    /// Cost follows the words, not the pages: one slot load per chunk (an untouched chunk
    /// is one run or nothing), one load per word of a materialized chunk, and
    /// `trailing_zeros` per run boundary. Summary bits are not used to skip words: a
    /// harvest clears a word's summary bit before it clears the word, so a reader that
    /// trusted a clear summary bit could miss a page that is dirty during its whole call.
    pub fn dirty_runs(&self, first: u64, count: u64, mut sink: impl FnMut(Run)) {
        debug_assert!(first + count <= self.pages);
        let end = first + count;
        // The run being built, `[start, stop)`; emitted when a later run does not touch it.
        let mut open: Option<(u64, u64)> = None;
        let mut add = |s: u64, e: u64| match &mut open {
            Some((_, stop)) if *stop == s => *stop = e,
            _ => {
                if let Some((a, b)) = open.replace((s, e)) {
                    sink(Run {
                        first: a,
                        count: b - a,
                    });
                }
            }
        };
        let mut p = first;
        while p < end {
            let k = (p / CHUNK_PAGES) as usize;
            let base = k as u64 * CHUNK_PAGES;
            let hi = end.min(base + CHUNK_PAGES);
            match self.slot(k) {
                Slot::Absent { clean: true } => {}
                Slot::Absent { clean: false } => add(p, hi),
                Slot::Chunk(c) => {
                    let w0 = ((p - base) / 64) as usize;
                    let w1 = ((hi - 1 - base) / 64) as usize;
                    for wi in w0..=w1 {
                        // Acquire: as `window`, pairs with the Release half of the fault
                        // RMW that dirtied the word (a page reported dirty was written).
                        let clean = c.clean[wi].load(Ordering::Acquire);
                        if clean == !0 {
                            continue; // the common case of a sparse log: a few instructions
                        }
                        let wbase = base + wi as u64 * 64;
                        let m = if wi != w0 && wi != w1 {
                            !0
                        } else {
                            word_mask(p.max(wbase) - wbase, hi.min(wbase + 64) - wbase)
                        };
                        let dirty = !clean & m;
                        if dirty == !0 {
                            add(wbase, wbase + 64);
                        } else {
                            for_each_run(dirty, |s, n| add(wbase + s, wbase + s + n));
                        }
                    }
                }
            }
            p = hi;
        }
        if let Some((a, b)) = open {
            sink(Run {
                first: a,
                count: b - a,
            });
        }
    }

    // -------------------------------------------------------------- control plane

    /// `clear_refs 4` on this bitmap: every page clean at the page level. Visits only
    /// chunks and words that may hold dirty pages.
    pub fn clear_all(&self) {
        let _clear = self.clear_lock();
        self.clear_all_held();
        clear_fence();
    }

    fn clear_all_held(&self) {
        for k in 0..self.slots.len() {
            loop {
                match self.slots[k].load(Ordering::Acquire) {
                    ABSENT_CLEAN => break,
                    ABSENT_DIRTY => {
                        // AcqRel: a racing fault's CAS either wins (then we loop and clear
                        // its chunk) or loses and re-reads our tag.
                        if self.slots[k]
                            .compare_exchange(
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
                            let sum = if twins::CLEAR_SUMMARY_LAST {
                                c.summary.load(Ordering::Acquire)
                            } else {
                                c.summary.swap(0, Ordering::AcqRel)
                            };
                            for_each_bit(sum, |wi| {
                                c.clean[wi].fetch_or(valid[wi] | !valid[wi], Ordering::AcqRel);
                            });
                            if twins::CLEAR_SUMMARY_LAST {
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
        let _clear = self.clear_lock();
        self.harvest_held(first, count, sink);
    }

    /// The clear lock, for a caller that harvests several disjoint chunk-aligned pieces
    /// of this bitmap in parallel through [`Self::harvest_held`].
    ///
    /// Every clean-making operation takes the lock here and nowhere else. Broken twin
    /// `no_clear_lock` (loom-tests: `data_ordering::two_owners_harvest_vs_put_back`): skip
    /// it, as two owners of a shared bitmap serializing their harvests under two
    /// different locks did before the lock moved into the bitmap.
    pub(crate) fn clear_lock(&self) -> Option<MutexGuard<'_, ()>> {
        if twins::NO_CLEAR_LOCK {
            return None;
        }
        Some(lock(&self.clear))
    }

    /// [`Self::harvest`] for a caller that holds [`Self::clear_lock`]; concurrent calls
    /// must cover disjoint chunks.
    pub(crate) fn harvest_held(&self, first: u64, count: u64, mut sink: impl FnMut(Run)) {
        let mut pending: Option<Run> = None;
        let mut emit = |r: Run, pending: &mut Option<Run>| match pending {
            Some(p) if p.first + p.count == r.first => p.count += r.count,
            _ => {
                if let Some(p) = pending.take() {
                    // Data ordering: the get-and-clear of these pages is done; the fence
                    // orders it before the caller reads their data (see `mark_fence`).
                    clear_fence();
                    sink(p);
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
            match self.slots[k].load(Ordering::Acquire) {
                ABSENT_CLEAN => {}
                ABSENT_DIRTY if whole => {
                    if self.slots[k]
                        .compare_exchange(
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
                        if twins::HARVEST_PRECHECK && c.clean[wi].load(Ordering::Relaxed) == !0 {
                            return;
                        }
                        // Always a get-and-clear for a word whose summary bit we took
                        // (see the `harvest_precheck` note below): `take_word`.
                        // (Broken twin `blind_harvest`: load, then store.)
                        let prev = if twins::BLIND_HARVEST {
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
                        let skip = (twins::HARVEST_PRECHECK || sum & (1 << wi) == 0)
                            && !c.clean[wi].load(Ordering::Relaxed) & m == 0;
                        if skip {
                            return; // nothing dirty: no RMW
                        }
                        // AcqRel: the get-and-clear is one RMW, so a racing fault's RMW on
                        // this word is either before it (reported now) or after it (stays
                        // dirty for the next harvest). A whole word whose summary bit we
                        // took goes through `take_word` (plain store when all dirty).
                        // (Broken twin `blind_harvest`: load, then store.)
                        let prev = if twins::BLIND_HARVEST {
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
            clear_fence();
            sink(p);
        }
    }

    /// Makes `runs` clean (each must have been reported dirty by this bitmap and not be
    /// concurrently harvested): KVM's `clear_dirty_log` with a log it got earlier. Only
    /// the bits named are touched.
    pub fn clean_runs(&self, runs: impl IntoIterator<Item = Run>) {
        let _clear = self.clear_lock();
        for r in runs {
            self.set_clean_held(r.first, r.count, true);
        }
        clear_fence();
    }

    /// Sets the page-level state of `[first, first+count)` to clean (`clean`) or dirty,
    /// leaving population alone.
    pub fn set_clean(&self, first: u64, count: u64, clean: bool) {
        let _clear = self.clear_lock();
        self.set_clean_held(first, count, clean);
        if clean {
            clear_fence();
        }
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
            Some(clean),
        );
    }

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
        let _clear = self.clear_lock();
        // AcqRel RMW: sequenced before every zap RMW below (see above).
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
        self.update_range(
            first,
            count,
            |c, wi, m, _| {
                c.populated[wi].fetch_and(!m, Ordering::AcqRel);
                c.backed[wi].fetch_and(!m, Ordering::AcqRel);
                if dirty {
                    c.clean[wi].fetch_and(!m, Ordering::AcqRel);
                    c.summary.fetch_or(1 << wi, Ordering::AcqRel);
                } else {
                    c.clean[wi].fetch_or(m, Ordering::AcqRel);
                }
            },
            Some(!dirty),
        );
        // Release: pairs with `wait_zap`'s Acquire load; a fault that reads this value
        // before its first RMW sees every zap RMW.
        self.zap_seq.fetch_add(1, Ordering::Release);
    }

    /// Unpopulates `[first, first+count)` keeping the soft-dirty state (a fork child's
    /// pages whose PTEs were not copied, in precise mode).
    pub fn unpopulate(&self, first: u64, count: u64) {
        // Chunk by chunk: untouched chunks are unpopulated already, so a huge mapping
        // costs one slot load per chunk, not one step per word.
        let end = first + count;
        let mut k = (first / CHUNK_PAGES) as usize;
        while (k as u64) * CHUNK_PAGES < end {
            let base = k as u64 * CHUNK_PAGES;
            if let Slot::Chunk(c) = self.slot(k) {
                let lo = first.max(base);
                let hi = end.min(base + CHUNK_PAGES);
                for_each_word(lo - base, hi - lo, |w, m| {
                    let wi = w as usize;
                    c.populated[wi].fetch_and(!m, Ordering::AcqRel);
                    c.backed[wi].fetch_and(!m, Ordering::AcqRel);
                });
            }
            k += 1;
        }
    }

    /// Applies `f(chunk, word, mask, whole_word)` to every word of the range on the control
    /// plane. `uniform_result`: if set, a whole untouched chunk ends in the tag for this
    /// cleanliness without being materialized (only valid when `f` leaves it unpopulated).
    fn update_range(
        &self,
        first: u64,
        count: u64,
        f: impl Fn(&Chunk, usize, u64, bool),
        uniform_result: Option<bool>,
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
            if let Some(clean) = uniform_result {
                let want = if clean { ABSENT_CLEAN } else { ABSENT_DIRTY };
                let cur = self.slots[kk].load(Ordering::Acquire);
                if cur == want {
                    continue;
                }
                if whole && (cur == ABSENT_CLEAN || cur == ABSENT_DIRTY) {
                    if self.slots[kk]
                        .compare_exchange(cur, want, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        continue;
                    }
                }
            }
            let c = self.materialize_ctl(kk);
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

    /// Builds this (unpublished) bitmap's pages `[dst_first, dst_first+count)` from
    /// `src`'s pages `[src_first, ...)`. With `dirty_all`, every copied page is dirty;
    /// with `dirty_populated`, every copied populated page is dirty (legacy mremap).
    pub fn copy_from(
        &self,
        dst_first: u64,
        src: &PageBitmap,
        src_first: u64,
        count: u64,
        xform: CopyRule,
    ) {
        let mut done = 0u64;
        while done < count {
            let d = dst_first + done;
            let s = src_first + done;
            // Fast path: a whole destination chunk from uniform source chunks.
            if d % CHUNK_PAGES == 0 && count - done >= CHUNK_PAGES.min(self.pages - d) {
                let n = CHUNK_PAGES.min(self.pages - d);
                let k = (d / CHUNK_PAGES) as usize;
                // Only over a tag: a chunk pointer is never overwritten (it would leak,
                // and a reader holding it would see it vanish). Pieces are copied in
                // address order and this chunk starts here, so nothing materialized it
                // yet; if that ever changes, the word-by-word path below is taken.
                let untouched = matches!(
                    self.slots[k].load(Ordering::Relaxed),
                    ABSENT_CLEAN | ABSENT_DIRTY
                );
                debug_assert!(untouched, "copy_from over a materialized chunk");
                if let Some(clean) = src.uniform(s, n).filter(|_| untouched) {
                    let clean = clean && xform != CopyRule::AllDirty;
                    self.slots[k].store(
                        if clean { ABSENT_CLEAN } else { ABSENT_DIRTY },
                        Ordering::Relaxed,
                    );
                    done += n;
                    continue;
                }
            }
            // 64 pages at a time, aligned to the destination's words.
            let n = (64 - d % 64).min(count - done);
            let b = src.bits_at(s, n);
            let m = word_mask(0, n);
            let mut clean = b.clean & m;
            match xform {
                CopyRule::Plain => {}
                CopyRule::AllDirty => clean = 0,
                CopyRule::DirtyPopulated => clean &= !b.populated,
            }
            self.build_bits(
                d,
                n,
                Bits {
                    clean,
                    populated: b.populated & m,
                    backed: b.backed & m,
                },
            );
            done += n;
        }
    }

    /// `n` (≤ 64) pages starting at any page `p`, in the low bits.
    pub fn bits_at(&self, p: u64, n: u64) -> Bits {
        let off = p % 64;
        let a = self.window(p - off);
        let mut out = Bits {
            clean: a.clean >> off,
            populated: a.populated >> off,
            backed: a.backed >> off,
        };
        if off != 0 && off + n > 64 {
            let b = self.window(p - off + 64);
            out.clean |= b.clean << (64 - off);
            out.populated |= b.populated << (64 - off);
            out.backed |= b.backed << (64 - off);
        }
        out
    }

    /// Writes `n` (≤ 64, not crossing a word) pages at `p` into a bitmap being built.
    fn build_bits(&self, p: u64, n: u64, b: Bits) {
        let k = (p / CHUNK_PAGES) as usize;
        let wi = ((p % CHUNK_PAGES) / 64) as usize;
        let off = p % 64;
        let m = word_mask(off, off + n);
        let slot_clean = match self.slot(k) {
            Slot::Absent { clean } => Some(clean),
            Slot::Chunk(_) => None,
        };
        // Skip the allocation when the bits equal the untouched slot's state.
        if let Some(clean) = slot_clean {
            let want_clean = if clean { m } else { 0 };
            if (b.clean << off) & m == want_clean && b.populated == 0 && b.backed == 0 {
                return;
            }
        }
        let c = self.materialize_ctl(k);
        let cl = c.clean[wi].load(Ordering::Relaxed);
        let ncl = (cl & !m) | ((b.clean << off) & m);
        c.clean[wi].store(ncl, Ordering::Relaxed);
        if ncl != !0 {
            c.summary.fetch_or(1 << wi, Ordering::Relaxed);
        }
        let pp = c.populated[wi].load(Ordering::Relaxed);
        c.populated[wi].store((pp & !m) | ((b.populated << off) & m), Ordering::Relaxed);
        let bb = c.backed[wi].load(Ordering::Relaxed);
        c.backed[wi].store((bb & !m) | ((b.backed << off) & m), Ordering::Relaxed);
    }

    /// Seals this bitmap (its VMA was replaced in a published index) and carries every
    /// fault that reached it after it was copied into its successors (`targets`).
    ///
    /// `AddressSpace` runs it after the index naming the successors is published; a
    /// fault that finds the bitmap sealed does not need that (it forwards itself).
    ///
    /// `targets` also becomes the bitmap's forwarding list: a fault that finds it sealed
    /// applies itself to the targets (`Self::forward`).
    pub fn seal_and_drain(&self, targets: Vec<Target>) {
        let targets = Arc::new(targets);
        let _clear = self.clear_lock();
        // Before the seal: a fault that sees `sealed` finds the list (the mutex orders
        // its read after this write, which is sequenced before the Release store).
        *lock(&self.forward) = Some(targets.clone());
        // Release: pairs with the Acquire load of `sealed` in the fault path after an RMW
        // that read from one of the drain RMWs below.
        self.sealed.store(true, Ordering::Release);
        // Broken twin `no_drain` (loom-tests): seal, but carry nothing over.
        if twins::NO_DRAIN && !targets.is_empty() {
            return;
        }
        for k in 0..self.slots.len() {
            // A value-preserving RMW: a fault's CAS ordered after it sees `sealed`.
            let v = self.slots[k].fetch_or(0, Ordering::AcqRel);
            if v == ABSENT_CLEAN || v == ABSENT_DIRTY {
                continue; // no fault materialized it before the seal: nothing late
            }
            // SAFETY: as in `slot`.
            let c = unsafe { &*(v as *const Chunk) };
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
                    if !twins::NO_DRAIN_RULE && rule == DrainRule::DirtyPopulated {
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

/// How [`PageBitmap::copy_from`] transforms the copied state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyRule {
    /// As is.
    Plain,
    /// Every page soft-dirty (precise mremap destination).
    AllDirty,
    /// Every populated page soft-dirty (legacy mremap: moved PTEs are marked).
    DirtyPopulated,
}

impl Drop for PageBitmap {
    fn drop(&mut self) {
        let mut freed = 0;
        for s in self.slots.iter() {
            let v = s.load(Ordering::Relaxed);
            if v != ABSENT_CLEAN && v != ABSENT_DIRTY {
                // SAFETY: `&mut self`: no other reference to the bitmap exists; the value
                // came from `Box::into_raw` in `materialize` and is freed only here.
                drop(unsafe { Box::from_raw(v as *mut Chunk) });
                freed += 1;
            }
        }
        if let Some(a) = &self.accounting {
            a.chunks_freed(freed);
            a.bitmap_freed();
        }
    }
}

/// A zeroed directory, allocated with `alloc_zeroed` so that large untouched directories
/// stay unbacked by the OS until written.
fn zeroed_slots(n: usize) -> Box<[AtomicUsize]> {
    #[cfg(not(all(loom, feature = "loom")))]
    {
        if n == 0 {
            return Box::new([]);
        }
        let v: Vec<usize> = vec![0usize; n]; // `vec![0; n]` uses alloc_zeroed
        let b: Box<[usize]> = v.into_boxed_slice();
        let raw = Box::into_raw(b) as *mut [AtomicUsize];
        // SAFETY: `AtomicUsize` has the same size, alignment and bit validity as `usize`
        // (documented in std), so a boxed `[usize]` is a valid boxed `[AtomicUsize]`.
        unsafe { Box::from_raw(raw) }
    }
    #[cfg(all(loom, feature = "loom"))]
    {
        (0..n).map(|_| AtomicUsize::new(0)).collect()
    }
}

/// Ordering of the plain store with which a harvest takes a fully dirty word
/// ([`take_word`]). Broken twin `relaxed_harvest_store` (loom-tests): Relaxed, which lets
/// a fault whose RMW reads the store keep a stale summary bit the harvest just cleared.
const HARVEST_STORE: Ordering = if twins::RELAXED_HARVEST_STORE {
    Ordering::Relaxed
} else {
    Ordering::Release
};

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
/// the `swap` did). The store is Release (`HARVEST_STORE`): a fault whose `fetch_and`
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
        w.store(!0, HARVEST_STORE);
        0
    } else {
        // AcqRel: one get-and-clear RMW; a racing fault's RMW is before it (reported
        // now) or after it (reads from it, synchronizes, sees the cleared summary).
        w.swap(!0, Ordering::AcqRel)
    }
}

/// Calls `f(bit)` for every set bit of `x`, lowest first.
#[inline]
pub fn for_each_bit(mut x: u64, mut f: impl FnMut(usize)) {
    while x != 0 {
        let b = x.trailing_zeros() as usize;
        f(b);
        x &= x - 1;
    }
}

/// Calls `f(start, len)` for every maximal run of set bits of `x`, lowest first.
#[inline]
pub fn for_each_run(mut x: u64, mut f: impl FnMut(u64, u64)) {
    while x != 0 {
        let s = x.trailing_zeros() as u64;
        let y = x >> s;
        let n = (!y).trailing_zeros() as u64; // y != 0, and !y has a zero at bit 0
        f(s, n);
        if s + n >= 64 {
            break;
        }
        x &= !word_mask(s, s + n);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn dirty_pages(b: &PageBitmap) -> Vec<u64> {
        (0..b.pages()).filter(|&p| b.page(p).clean == 0).collect()
    }

    #[test]
    fn runs_of_bits() {
        let mut v = vec![];
        for_each_run(0b1110_0110u64 | (1 << 63), |s, n| v.push((s, n)));
        assert_eq!(v, vec![(1, 2), (5, 3), (63, 1)]);
        let mut v = vec![];
        for_each_run(!0, |s, n| v.push((s, n)));
        assert_eq!(v, vec![(0, 64)]);
    }

    #[test]
    fn fresh_bitmap_is_dirty_or_clean_and_costs_no_chunk() {
        let b = PageBitmap::new(10_000, true);
        assert_eq!(b.materialized_chunks(), 0);
        assert_eq!(dirty_pages(&b).len(), 10_000);
        let c = PageBitmap::new(10_000, false);
        assert!(dirty_pages(&c).is_empty());
    }

    #[test]
    fn write_faults_once_and_test_before_set() {
        let b = PageBitmap::new(300, false);
        assert_eq!(b.write(5, 3), Mark::Done { faults: 3 });
        assert_eq!(b.write(6, 1), Mark::Done { faults: 0 });
        assert_eq!(dirty_pages(&b), vec![5, 6, 7]);
        assert_eq!(
            b.page(6),
            Bits {
                clean: 0,
                populated: 1,
                backed: 1
            }
        );
        assert_eq!(b.read(100, 1, true), Mark::Done { faults: 0 });
        assert_eq!(
            b.page(100),
            Bits {
                clean: 1,
                populated: 1,
                backed: 0
            }
        );
    }

    #[test]
    fn harvest_reports_runs_across_words_and_chunks_and_clears_them() {
        let n = CHUNK_PAGES * 3;
        let b = PageBitmap::new(n, false);
        b.write(60, 10);
        b.write(CHUNK_PAGES - 2, 4);
        b.write(n - 1, 1);
        let mut runs = vec![];
        b.harvest(0, n, |r| runs.push((r.first, r.count)));
        assert_eq!(runs, vec![(60, 10), (CHUNK_PAGES - 2, 4), (n - 1, 1)]);
        assert!(dirty_pages(&b).is_empty());
        let mut again = vec![];
        b.harvest(0, n, |r| again.push(r));
        assert!(again.is_empty());
    }

    #[test]
    fn partial_harvest_keeps_other_pages_dirty() {
        let b = PageBitmap::new(200, true);
        let mut runs = vec![];
        b.harvest(10, 20, |r| runs.push((r.first, r.count)));
        assert_eq!(runs, vec![(10, 20)]);
        let d = dirty_pages(&b);
        assert_eq!(d.len(), 180);
        assert!(!d.contains(&10) && d.contains(&9) && d.contains(&30));
        // The summary still finds the rest.
        let mut rest = vec![];
        b.harvest(0, 200, |r| rest.push((r.first, r.count)));
        assert_eq!(rest, vec![(0, 10), (30, 170)]);
    }

    #[test]
    fn clear_all_then_tail_bits_stay_clean() {
        let b = PageBitmap::new(70, true);
        b.write(3, 1);
        b.clear_all();
        assert!(dirty_pages(&b).is_empty());
        let mut runs = vec![];
        b.harvest(0, 70, |r| runs.push(r));
        assert!(runs.is_empty());
    }

    #[test]
    fn zap_modes() {
        let b = PageBitmap::new(64, false);
        b.write(0, 4);
        b.clear_all();
        b.zap(1, 2, true);
        assert_eq!(dirty_pages(&b), vec![1, 2]);
        assert_eq!(b.page(1).populated, 0);
        b.write(10, 1);
        b.zap(10, 1, false);
        assert_eq!(
            b.page(10),
            Bits {
                clean: 1,
                populated: 0,
                backed: 0
            }
        );
    }

    #[test]
    fn copy_with_unaligned_offsets_and_rules() {
        let src = PageBitmap::new(1000, false);
        src.write(100, 5);
        src.read(200, 3, true);
        let dst = PageBitmap::new(500, false);
        dst.copy_from(7, &src, 95, 400, CopyRule::Plain);
        for p in 0..500u64 {
            let s = if (7..407).contains(&p) {
                src.page(p - 7 + 95)
            } else {
                Bits {
                    clean: 1,
                    populated: 0,
                    backed: 0,
                }
            };
            assert_eq!(dst.page(p), s, "page {p}");
        }
        let mv = PageBitmap::new(400, false);
        mv.copy_from(0, &src, 95, 400, CopyRule::DirtyPopulated);
        let d = dirty_pages(&mv);
        assert_eq!(d, vec![5, 6, 7, 8, 9, 105, 106, 107]);
    }

    #[test]
    fn huge_sparse_bitmap_is_cheap() {
        let pages = 1u64 << 28; // 1 TiB
        let b = PageBitmap::new(pages, true);
        b.clear_all();
        b.write(12345, 1);
        b.write(pages - 1, 1);
        assert_eq!(b.materialized_chunks(), 2);
        let mut runs = vec![];
        b.harvest(0, pages, |r| runs.push((r.first, r.count)));
        assert_eq!(runs, vec![(12345, 1), (pages - 1, 1)]);
        assert!(b.tracking_bytes() < 1 << 20);
    }

    #[test]
    fn sealed_bitmap_forwards_faults_and_drains_late_faults() {
        let old = PageBitmap::new(128, false);
        old.write(1, 1);
        let new = Arc::new(PageBitmap::new(128, false));
        new.copy_from(0, &old, 0, 128, CopyRule::Plain);
        // A "late" fault between copy and seal.
        old.write(70, 1);
        old.seal_and_drain(vec![Target {
            src_first: 0,
            dst: new.clone(),
            dst_first: 0,
            count: 128,
            rule: DrainRule::Plain,
        }]);
        assert_eq!(dirty_pages(&new), vec![1, 70]);
        // A fault after the seal is forwarded to the successor.
        assert_eq!(old.write(90, 1), Mark::Done { faults: 1 });
        assert_eq!(dirty_pages(&new), vec![1, 70, 90]);
        // A fault that changes nothing needs no re-check.
        assert_eq!(old.write(1, 1), Mark::Done { faults: 0 });
    }

    #[test]
    fn a_fault_after_a_zap_redoes_nothing_and_a_zap_after_a_write_wins() {
        let b = PageBitmap::new(64, false);
        b.write(3, 1);
        b.zap(3, 1, false);
        assert_eq!(
            b.page(3),
            Bits {
                clean: 1,
                populated: 0,
                backed: 0
            }
        );
        assert_eq!(b.write(3, 1), Mark::Done { faults: 1 });
        assert_eq!(
            b.page(3),
            Bits {
                clean: 0,
                populated: 1,
                backed: 1
            }
        );
    }
}
