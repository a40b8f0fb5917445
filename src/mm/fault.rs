//! The data plane: a simulated write or read fault through the published index
//! (`write`, `read`), the anon_vma a first write fault assigns, and the per-thread fault
//! counter.

use super::AddressSpace;
use crate::barrier;
use crate::bitmap::{ChunkHint, Mark, WordHint};
use crate::epoch::{self, Guard};
use crate::errno::{Errno, Result};
use crate::file::Files;
use crate::index::VmaIndex;
use crate::linux::{PAGE_SHIFT, PAGE_SIZE};
use crate::mode::Mode;
#[cfg(loom)]
use crate::sync::AtomicU64;
use crate::sync::Ordering;
use crate::twins;
use crate::vma::Vma;

/// The VMA a writer last used and the index it was found in (`crate::writer`): a lookup
/// skipped while that index is still the published one. Raw pointers, meaningful only
/// while the guard pinned when they were taken stays pinned: an index (and the VMAs it
/// holds) is destroyed only after every guard pinned before its retirement is dropped, so
/// while that guard holds, no other index can be allocated at `index`'s address, and the
/// test `index == published` cannot be fooled by a reused address.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VmaHint {
    index: *const VmaIndex,
    vma: *const Vma,
    /// The chunk of `vma`'s bitmap last used (reset with `vma`).
    chunk: ChunkHint,
    /// The hot word: addresses `[hot_lo, hot_hi)` of `vma` (one 64-page word of its
    /// bitmap, from its first page at `hot_lo`) and the word, whose pages were last found
    /// soft-dirty, populated and backed (`AddressSpace::store_hot`); empty when
    /// `hot_hi == hot_lo`. Reset with `vma`.
    hot_lo: u64,
    hot_hi: u64,
    word: WordHint,
}

impl VmaHint {
    /// No hint: the next access looks its VMA up.
    pub(crate) const NONE: VmaHint = VmaHint {
        index: std::ptr::null(),
        vma: std::ptr::null(),
        chunk: ChunkHint::NONE,
        hot_lo: 0,
        hot_hi: 0,
        word: WordHint::NONE,
    };

    /// The hinted VMA, if `idx` (loaded under the guard the hint was taken under) is the
    /// index it came from and the VMA contains `page`.
    fn get<'g>(&self, idx: &'g VmaIndex, page: u64) -> Option<&'g Vma> {
        // Broken twin `writer_no_revalidate`: the hint is trusted without comparing the
        // index it came from with the published one.
        if self.vma.is_null()
            || (!std::ptr::eq(idx, self.index) && !twins::WRITER_NO_REVALIDATE.on())
        {
            return None;
        }
        // SAFETY: `vma` was taken from the index at `index` (an `Arc<Vma>` it holds) under
        // the guard the caller still holds (the hint is reset whenever that guard is
        // repinned, and a hint never outlives its guard: `fault` makes a fresh one per
        // pin, `Writer` resets it at every repin). So the index, and the VMA, are not
        // destroyed yet: destruction is deferred past every guard pinned before the
        // index's retirement. With the twin, the VMA may belong to a retired index, still
        // alive for the same reason.
        let v = unsafe { &*self.vma };
        (v.start <= page && page < v.end).then_some(v)
    }

    fn set(&mut self, idx: &VmaIndex, v: &Vma) {
        self.index = idx;
        if !std::ptr::eq(self.vma, v) {
            self.vma = v;
            self.chunk = ChunkHint::NONE;
            self.hot_hi = self.hot_lo;
            self.word = WordHint::NONE;
        }
    }
}

/// Why an access faults at a page inside a VMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unreachable {
    /// the page is a guard marker (SIGSEGV)
    Guard,
    /// the page is wholly past the end of the mapped file (SIGBUS)
    PastEof,
}

/// The simulated-fault counter: one cell per writing thread (the `thread_local` crate's
/// per-object, per-thread storage), so a first write adds to its thread's own cache line
/// with a load and a store, no locked instruction. A single shared counter made two
/// writers' first writes 5× slower on the 2-core development machine; 16 stripes shared
/// by `fetch_add` still cost every faulting store one locked RMW, about 3 ns of a 256-page
/// mark's 38.6 through a writer handle (`softdirty bench`, `mark256/writer`).
pub(super) struct FaultCounter {
    #[cfg(not(loom))]
    cells: thread_local::ThreadLocal<crossbeam_utils::CachePadded<std::sync::atomic::AtomicU64>>,
    /// loom runs its threads on one OS thread, which would share one cell.
    #[cfg(loom)]
    total: AtomicU64,
}

impl FaultCounter {
    pub(super) fn new() -> FaultCounter {
        FaultCounter {
            #[cfg(not(loom))]
            cells: thread_local::ThreadLocal::new(),
            #[cfg(loom)]
            total: AtomicU64::new(0),
        }
    }

    /// The calling thread's cell (a writer handle keeps it for its life: `crate::writer`).
    pub(super) fn cell(&self) -> FaultCell<'_> {
        #[cfg(not(loom))]
        return FaultCell(
            self.cells.get_or(Default::default),
            std::marker::PhantomData,
        );
        #[cfg(loom)]
        return FaultCell(&self.total, std::marker::PhantomData);
    }

    pub(super) fn sum(&self) -> u64 {
        // Relaxed: a statistic, exact once the writers are quiescent (joined, or the
        // calling thread itself, as in traces).
        #[cfg(not(loom))]
        return self.cells.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        #[cfg(loom)]
        return self.total.load(Ordering::Relaxed);
    }
}

/// One thread's cell of a [`FaultCounter`] (`FaultCounter::cell`): not `Send`, so only
/// the thread it was taken on adds to it.
pub(crate) struct FaultCell<'a>(
    #[cfg(not(loom))] &'a crossbeam_utils::CachePadded<std::sync::atomic::AtomicU64>,
    #[cfg(loom)] &'a AtomicU64,
    std::marker::PhantomData<*const ()>,
);

impl FaultCell<'_> {
    /// Counts `n` simulated faults.
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        if n == 0 {
            return;
        }
        // Relaxed load and store, not an RMW: only this cell's thread writes it (the cell
        // is not `Send`). A thread that inherits the cell of an exited one (`thread_local`
        // recycles thread ids) reads that thread's last store: the crate hands ids out
        // under a mutex, which orders the old thread's exit before the new one's claim.
        #[cfg(not(loom))]
        self.0
            .store(self.0.load(Ordering::Relaxed) + n, Ordering::Relaxed);
        // loom: its threads share one OS thread, so one cell; Relaxed: a statistic.
        #[cfg(loom)]
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

impl AddressSpace {
    /// The calling thread's cell of this space's fault counter (`FaultCounter`).
    pub(crate) fn fault_cell(&self) -> FaultCell<'_> {
        self.faults.cell()
    }

    /// A store to every page overlapping `[addr, addr + len)`: the simulated write fault.
    /// Fails with EFAULT at the first page that is not mapped writable; the pages before
    /// it were written, as a real `memset` would have done before its fault.
    pub fn write(&self, addr: u64, len: u64) -> Result<()> {
        self.fault(addr, len, true, &mut 0)
    }

    /// [`Self::write`], also returning how many pages it turned soft-dirty (its simulated
    /// write faults; with an error, those before the faulting page).
    pub fn write_counting(&self, addr: u64, len: u64) -> (u64, Result<()>) {
        let mut dirtied = 0;
        let r = self.fault(addr, len, true, &mut dirtied);
        (dirtied, r)
    }

    /// A load from every page overlapping `[addr, addr + len)`: populates without
    /// dirtying (private memory maps the zero page). EFAULT as for [`Self::write`].
    pub fn read(&self, addr: u64, len: u64) -> Result<()> {
        self.fault(addr, len, false, &mut 0)
    }

    fn fault(&self, addr: u64, len: u64, write: bool, dirtied: &mut u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let guard = epoch::pin();
        let mut hint = VmaHint::NONE;
        let mut n = 0;
        let r = self.fault_in(&guard, &mut hint, addr, len, write, false, &mut n);
        if n != 0 {
            self.faults.cell().add(n);
            *dirtied += n;
        }
        r
    }

    /// A writer handle's hot store (`crate::writer`), answered from the hint alone: true
    /// when the hinted VMA is still published, contains `[addr, addr + len)` (inside one
    /// 64-page word of its bitmap), takes a plain store (writable, anonymous or shared
    /// memory without guard markers, an anon_vma already assigned, not `regions` mode),
    /// and its pages are already soft-dirty, populated and backed: the store changes
    /// nothing. These are the loads [`Self::fault_in`] makes on that path, in its order
    /// (index, hint, VMA, mark barrier, `PageBitmap::nothing_to_do`), without its loop;
    /// false sends the store through `fault_in`.
    #[inline(always)]
    pub(crate) fn store_unchanged(
        &self,
        guard: &Guard,
        hint: &mut VmaHint,
        addr: u64,
        len: u64,
        light: bool,
    ) -> bool {
        // More than one word's worth of bytes cannot lie inside one word: to the fault
        // path at once (a 256-page store skips the checks below, about 50 instructions).
        if len.wrapping_sub(1) >= 64 * PAGE_SIZE {
            return false;
        }
        let Some(last_byte) = addr.checked_add(len - 1) else {
            return false;
        };
        let page = addr & !(PAGE_SIZE - 1);
        let last = last_byte & !(PAGE_SIZE - 1);
        let idx = self.index(guard);
        let Some(v) = hint.get(idx, page) else {
            return false;
        };
        let f = &v.meta.flags;
        if last >= v.end
            || !f.prot.write
            || !f.prot.accessible()
            || v.meta.file.is_some()
            || self.mode == Mode::Regions
            || v.bitmap.may_have_guards()
            || (!f.shared && v.anon() == 0)
        {
            return false;
        }
        let first = v.page_of(page);
        let n = ((last - page) >> PAGE_SHIFT) + 1;
        match v
            .bitmap
            .unchanged_by_write(&mut hint.chunk, first, n, light)
        {
            Some(word) => {
                // The word's pages, for the next stores (`store_hot`).
                let lo = v.start + ((first & !63) << PAGE_SHIFT);
                hint.hot_lo = lo;
                hint.hot_hi = (lo + (64 << PAGE_SHIFT)).min(v.end);
                hint.word = word;
                true
            }
            None => false,
        }
    }

    /// A writer handle's hottest store (`crate::writer`): `[addr, addr + len)` inside the
    /// hint's hot word, the index still the hint's, and the word's pages still soft-dirty,
    /// populated and backed after the mark barrier. The VMA's other conditions
    /// (`store_unchanged`: writable, no file, not `regions`, an anon_vma for private
    /// memory) held when the word was set and hold for as long as it is published: a VMA
    /// is immutable but for its bitmap and its anon_vma cell, and a cell seen assigned
    /// stays so (it goes from 0 to an identity once; only a 0 cell is ever frozen,
    /// `Vma::freeze_anon`). A guard marker fails the `populated` test. False sends the
    /// store on to `store_unchanged` and then `fault_in`.
    #[inline(always)]
    pub(crate) fn store_hot(
        &self,
        guard: &Guard,
        hint: &VmaHint,
        addr: u64,
        len: u64,
        light: bool,
    ) -> bool {
        // In the word (`hot_lo <= addr`, `addr + len <= hot_hi`, `len > 0`), no overflow.
        if addr.wrapping_sub(hint.hot_lo) >= hint.hot_hi.wrapping_sub(hint.hot_lo)
            || len.wrapping_sub(1) >= hint.hot_hi - addr
        {
            return false;
        }
        // Broken twin `hot_word_no_revalidate`: the index not compared.
        if !std::ptr::eq(self.index(guard), hint.index) && !twins::HOT_WORD_NO_REVALIDATE.on() {
            return false;
        }
        barrier::mark_fence(light);
        // Pages `off..=last` of the word (both < 64: the range is inside it).
        let off = (addr - hint.hot_lo) >> PAGE_SHIFT;
        let last = (addr + (len - 1) - hint.hot_lo) >> PAGE_SHIFT;
        hint.word.unchanged((!0u64 >> (63 - last)) & (!0u64 << off))
    }

    /// The fault path under the caller's `guard`, starting from the VMA `hint` names if it
    /// is still the published one (`crate::writer`); `hint` is left naming the last VMA
    /// used, valid for as long as `guard` stays pinned. `light`: the caller holds a light
    /// writer's registration (`crate::barrier`), and its marks need no fence. `dirtied`
    /// gains the pages a write turned soft-dirty, which the caller adds to the fault
    /// counter once (`FaultCell::add`).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(crate) fn fault_in(
        &self,
        guard: &Guard,
        hint: &mut VmaHint,
        addr: u64,
        len: u64,
        write: bool,
        light: bool,
        dirtied: &mut u64,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let last = match addr.checked_add(len - 1) {
            Some(l) => l & !(PAGE_SIZE - 1),
            None => u64::MAX & !(PAGE_SIZE - 1),
        };
        let mut page = addr & !(PAGE_SIZE - 1);
        loop {
            let idx = self.index(guard);
            let v = match hint.get(idx, page) {
                Some(v) => v,
                None => {
                    let Some(v) = idx.lookup(page) else {
                        // Below a stack: the kernel's expand_stack, then the access again.
                        if self.expand_stack(page)? {
                            continue;
                        }
                        return Err(Errno::EFAULT);
                    };
                    hint.set(idx, v);
                    v
                }
            };
            let prot = v.meta.flags.prot;
            if (write && !prot.write) || !prot.accessible() {
                return Err(Errno::EFAULT);
            }
            let mut stop = (v.end - PAGE_SIZE).min(last);
            // Where an access can fault inside a VMA (past the end of a file, on a guard
            // marker): one test on the common path, the rest out of line.
            let shared = v.meta.flags.shared;
            let mut past_eof = false;
            if v.meta.file.is_some() || v.bitmap.may_have_guards() {
                match self.clip_to_reachable(v, page, stop) {
                    Ok(s) => stop = s,
                    // do_cow_fault prepares the anon_vma before it finds the page past
                    // the end of the file (measured on 6.12: the VMA is faulted after
                    // a failed write); any other access fails at once.
                    Err(Unreachable::PastEof) if write && !shared => past_eof = true,
                    Err(_) => return Err(Errno::EFAULT),
                }
            }
            let first = v.page_of(page);
            let n = ((stop - page) >> PAGE_SHIFT) + 1;
            if write && !shared && v.anon() == 0 && !self.first_fault_anon(guard, idx, v) {
                continue;
            }
            if past_eof {
                return Err(Errno::EFAULT);
            }
            let mark = if write && self.mode == Mode::Regions {
                Self::write_by_region(v, page, stop + PAGE_SIZE)
            } else if write {
                let m = if light {
                    v.bitmap.write_light(first, n)
                } else {
                    v.bitmap.write(first, n)
                };
                match m {
                    Mark::Done { .. } if self.flag_reported(v) => Mark::Done { faults: 0 },
                    m => m,
                }
            } else {
                v.bitmap.read(first, n, !shared)
            };
            match mark {
                // The VMA was replaced while we wrote: retry through the new index (it
                // was published before the seal we observed).
                Mark::Sealed => {
                    *hint = VmaHint::NONE;
                    continue;
                }
                // The model's memory limit (the accounting's chunk limit): the kernel would OOM.
                Mark::NoMem => return Err(Errno::ENOMEM),
                // Not reachable: the range is cut to the VMA, whose bitmap covers it.
                Mark::OutOfRange => return Err(Errno::EFAULT),
                Mark::Done { faults } => {
                    if write {
                        *dirtied += faults;
                    }
                }
            }
            if stop == last {
                return Ok(());
            }
            page = stop + PAGE_SIZE;
        }
    }

    /// A first write fault to private memory: assigns `v`'s anon_vma (from `idx`, the
    /// index `v` came from). False when a structural operation is deciding with the cell
    /// (it froze it): this waits until the operation thaws the cell or publishes, and the
    /// caller starts again from the index. Out of line, as every rare case of
    /// [`Self::fault_in`]: inlined, they gave it a 472-byte frame, and a 256-page mark
    /// through a writer handle spent 6 ns of 31.5 in it (a microbenchmark of 4,096 marks,
    /// against the VMA's bitmap called directly).
    #[cold]
    #[inline(never)]
    fn first_fault_anon(&self, guard: &Guard, idx: &VmaIndex, v: &Vma) -> bool {
        if v.assign_anon(self.anon_for_first_fault(idx, v)).is_some() {
            return true;
        }
        // (`idx` is the index `v` came from: a replaced VMA's cell stays frozen, and the
        // index that replaced it may be published already.)
        let cur: *const VmaIndex = idx;
        while v.anon_frozen()
            && std::ptr::eq(self.index.load(Ordering::Acquire, guard).as_raw(), cur)
        {
            crate::sync::spin_loop();
        }
        false
    }

    /// The last page of `[page, stop]` (pages of `v`) that an access reaches before it
    /// faults: before the first page wholly past the end of a sized file (SIGBUS), and
    /// before the first guard marker (SIGSEGV); why, if `page` is one.
    #[cold]
    #[inline(never)]
    fn clip_to_reachable(
        &self,
        v: &Vma,
        page: u64,
        mut stop: u64,
    ) -> std::result::Result<u64, Unreachable> {
        let first = v.page_of(page);
        // A marker is found before the file is asked (handle_pte_marker).
        if v.bitmap.first_guard(first, 1) == Some(first) {
            return Err(Unreachable::Guard);
        }
        if let Some(f) = v.meta.file {
            let size = self.files().size(f).unwrap_or(0);
            // Pages of the VMA, from its start, that the file covers.
            let covered = Files::pages_of(size).saturating_sub(v.meta.pgoff);
            if first >= covered {
                return Err(Unreachable::PastEof);
            }
            stop =
                stop.min(v.start + ((covered - 1) << PAGE_SHIFT).min(v.end - PAGE_SIZE - v.start));
        }
        if let Some(g) = v
            .bitmap
            .first_guard(first, ((stop - page) >> PAGE_SHIFT) + 1)
        {
            // Not `first`: checked above.
            stop = page + ((g - first - 1) << PAGE_SHIFT);
        }
        Ok(stop)
    }

    /// Regions mode: writes `[s, e)` of `v` one region segment at a time, and counts as
    /// faults only the pages whose report changed: those a region covers (outside every
    /// region a page already reports soft-dirty). Stops at the first segment that does
    /// not complete.
    #[inline(never)]
    fn write_by_region(v: &Vma, s: u64, e: u64) -> Mark {
        if e - s == PAGE_SIZE {
            // One page: one list walk, no segment list.
            return match v.bitmap.write(v.page_of(s), 1) {
                Mark::Done { .. } if !v.nsdr.covers(s) => Mark::Done { faults: 0 },
                m => m,
            };
        }
        let mut total = 0;
        let mut stop = None;
        v.nsdr.segments(s, e, |a, b, vma_dirty| {
            if stop.is_some() {
                return;
            }
            match v.bitmap.write(v.page_of(a), (b - a) >> PAGE_SHIFT) {
                Mark::Done { faults } => total += if vma_dirty { 0 } else { faults },
                m => stop = Some(m),
            }
        });
        stop.unwrap_or(Mark::Done { faults: total })
    }

    /// `__anon_vma_prepare` → `find_mergeable_anon_vma`: reuse an adjacent, compatible
    /// neighbour's anon_vma if its chain is singular, else a new one.
    pub(super) fn anon_for_first_fault(&self, idx: &VmaIndex, v: &Vma) -> u64 {
        let compatible = |a: &Vma, b: &Vma| {
            a.end == b.start
                && a.meta.file == b.meta.file
                && a.meta.flags.shared == b.meta.flags.shared
                && a.meta.flags.account == b.meta.flags.account
                && a.meta.flags.noreserve == b.meta.flags.noreserve
                && a.meta.flags.dontcopy == b.meta.flags.dontcopy
                && a.meta.flags.wipeonfork == b.meta.flags.wipeonfork
                && a.meta.flags.growsdown == b.meta.flags.growsdown
                && b.meta.pgoff == a.meta.pgoff + a.pages()
        };
        if let Some(n) = idx.next(v.end) {
            if compatible(v, n) && n.anon() != 0 && !n.meta.forked {
                return n.anon();
            }
        }
        if let Some(p) = idx.prev(v.start) {
            if compatible(p, v) && p.anon() != 0 && !p.meta.forked {
                return p.anon();
            }
        }
        self.accounting.next_id()
    }
}
