//! [`AddressSpace`]: one process's memory map (the kernel's `mm_struct`), its operations
//! and their errors.
//!
//! Two planes (ARCHITECTURE.md, "Layers"):
//! - the **data plane** — [`AddressSpace::write`], [`AddressSpace::read`], pagemap and
//!   scans without `clear` — takes `&self` and no lock: it pins an epoch, loads the
//!   published [`VmaIndex`] and updates the VMA's atomic [`PageBitmap`];
//! - the **control plane** — mmap, munmap, mprotect, mremap, madvise, fork, `clear_refs`
//!   and get-and-clear scans — serializes on the control lock, edits a `Layout` and
//!   publishes a new index.
//!
//! Errors are Linux's, checked in the kernel's order (`docs/kernel-rules.md` records the
//! order with its sources). Where Linux leaves a partial effect on failure (mprotect and
//! madvise over a hole, a multi-VMA mremap failing half-way) the model does the same;
//! everywhere else a failed operation changes nothing.

use crate::accounting::Accounting;
use crate::bitmap::{CopyRule, Mark, PageBitmap};
use crate::epoch::{self, Atomic, Guard, Owned};
use crate::errno::{Errno, Result};
use crate::index::VmaIndex;
use crate::layout::{cut_pieces, move_pieces, Layout, NewRange, Piece, Src, WVma};
use crate::linux::{MAX_MAP_COUNT, MMAP_MIN_ADDR, PAGE_SHIFT, PAGE_SIZE, TASK_SIZE};
use crate::mode::Mode;
use crate::prot::Prot;
use crate::regions::NonSdRegions;
use crate::sync::{lock, Arc, AtomicU64, Mutex, Ordering};
use crate::twins;
use crate::vma::{Vma, VmaFlags, VmaMeta};

/// `vm.mmap_min_addr` (the DAC floor that `cap_mmap_addr` enforces for fixed mappings of
/// callers without `CAP_SYS_RAWIO`); hints are raised to [`MMAP_MIN_ADDR`] instead.
pub const DAC_MMAP_MIN_ADDR: u64 = 0x1000;

/// Where the model's top-down allocator starts (the kernel randomizes `mmap_base`).
pub const MMAP_BASE: u64 = 0x7f00_0000_0000;

/// Where `mmap` may put a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The address is a hint.
    Hint,
    /// `MAP_FIXED`: replace whatever is there.
    Fixed,
    /// `MAP_FIXED_NOREPLACE`: fail with EEXIST on overlap.
    NoReplace,
}

/// The VMA list entry of `/proc/PID/maps`, as the model reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct VmaInfo {
    /// start address
    pub start: u64,
    /// end address (exclusive)
    pub end: u64,
    /// protection
    pub prot: String,
    /// MAP_SHARED
    pub shared: bool,
    /// VM_SOFTDIRTY as the kernel would have it
    pub vm_softdirty: bool,
    /// has an anon_vma (was write-faulted)
    pub faulted: bool,
}

/// One process address space.
pub struct AddressSpace {
    mode: Mode,
    index: Atomic<VmaIndex>,
    control: Mutex<()>,
    faults: FaultCounter,
    /// the model's memory: shared with the tracker's other spaces and with fork children
    accounting: std::sync::Arc<Accounting>,
}

impl std::fmt::Debug for AddressSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressSpace")
            .field("mode", &self.mode)
            .field("vmas", &self.vmas())
            .finish()
    }
}

/// The simulated-fault counter, striped over cache lines so that writer threads on
/// different cores do not bounce one line on every first write (a single shared counter
/// made two writers' first writes 5× slower on the 2-core development machine).
struct FaultCounter {
    stripes: Box<[crossbeam_utils::CachePadded<AtomicU64>]>,
}

const FAULT_STRIPES: usize = 16;

impl FaultCounter {
    fn new() -> FaultCounter {
        FaultCounter {
            stripes: (0..FAULT_STRIPES)
                .map(|_| crossbeam_utils::CachePadded::new(AtomicU64::new(0)))
                .collect(),
        }
    }

    fn add(&self, n: u64) {
        thread_local! {
            static STRIPE: usize = {
                static NEXT: crate::sync::StdCounter = crate::sync::StdCounter::new(0);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % FAULT_STRIPES
            };
        }
        let i = STRIPE.try_with(|s| *s).unwrap_or(0);
        // Relaxed: a statistic; readers only need each stripe's own value eventually.
        self.stripes[i].fetch_add(n, Ordering::Relaxed);
    }

    fn sum(&self) -> u64 {
        // Relaxed: a statistic (exact once the writers are quiescent, as in traces).
        self.stripes.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }
}

/// Rounds up to a page; `None` on overflow.
fn page_align(x: u64) -> Option<u64> {
    x.checked_add(PAGE_SIZE - 1).map(|v| v & !(PAGE_SIZE - 1))
}

impl AddressSpace {
    /// An empty address space following `mode`, with accounts of its own and the default
    /// chunk limit ([`crate::accounting::DEFAULT_CHUNK_LIMIT`]).
    pub fn new(mode: Mode) -> AddressSpace {
        AddressSpace::with_accounting(mode, std::sync::Arc::default())
    }

    /// An empty address space following `mode` that counts its VMAs, bitmaps and chunks
    /// in `accounting` and obeys its chunk limit (shared with whoever else holds it).
    pub fn with_accounting(mode: Mode, accounting: std::sync::Arc<Accounting>) -> AddressSpace {
        AddressSpace {
            mode,
            index: Atomic::new(VmaIndex::default()),
            control: Mutex::new(()),
            faults: FaultCounter::new(),
            accounting,
        }
    }

    /// The accounts this space counts in (its memory limit and live objects).
    pub fn accounting(&self) -> &std::sync::Arc<Accounting> {
        &self.accounting
    }

    /// The soft-dirty semantics this space follows.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Simulated write faults so far: stores that turned a page from not soft-dirty to
    /// soft-dirty as pagemap bit 55 reports it.
    pub fn faults(&self) -> u64 {
        self.faults.sum()
    }

    /// The published index, valid while both `guard` and the borrow of the space are
    /// held. `guard` must be pinned in softdirty's collector ([`epoch::pin`]).
    pub(crate) fn index<'g>(&'g self, guard: &'g Guard) -> &'g VmaIndex {
        debug_assert!(epoch::is_ours(guard), "guard of another collector");
        // Acquire: pairs with the AcqRel swap in `publish`, so the VMAs and bitmaps the
        // index points to are fully built.
        let s = self.index.load(Ordering::Acquire, guard);
        // SAFETY: the pointer is never null (constructed with an index, and `publish` only
        // swaps in owned ones). An index is freed in two ways, and the lifetime `'g`
        // excludes both while the reference lives: (1) one that `publish` replaced is
        // destroyed through `defer_destroy` on softdirty's collector, after every guard
        // of that collector pinned before the swap is gone — `guard` is one (asserted
        // above; `epoch::pin` is the only way this crate pins) and it outlives `'g`;
        // (2) the current one is freed at once by `Drop for AddressSpace`, which needs
        // `&mut self`, impossible while `&'g self` is borrowed.
        unsafe { s.deref() }
    }

    /// Runs `f` with the current index under a fresh guard.
    pub fn with_index<R>(&self, f: impl FnOnce(&VmaIndex) -> R) -> R {
        // Broken twin `no_pin` (loom-tests: `reclamation_no_uaf_no_leak`): a reader that
        // does not pin, so a publication may free the index under it.
        if twins::NO_PIN {
            // SAFETY: none; deliberately wrong (dead code unless the twin is built).
            let g = unsafe { epoch::unprotected() };
            let s = self.index.load(Ordering::Acquire, g);
            // SAFETY: none; deliberately wrong (dead code unless the twin is built).
            return f(unsafe { s.deref() });
        }
        let guard = epoch::pin();
        f(self.index(&guard))
    }

    /// Is `v`'s `VM_SOFTDIRTY` part of what pagemap reports in this mode?
    pub(crate) fn flag_reported(&self, v: &Vma) -> bool {
        self.mode.uses_vma_flag() && v.meta.flags.softdirty
    }

    /// Splits `[s, e)` (within `v`) into the sub-ranges where the *VMA-level* dirtiness
    /// is constant, and calls `f(start, end, vma_dirty)` for each in address order. A page
    /// reports soft-dirty iff its VMA-level dirtiness or its page-level bit is set. In the
    /// flag modes that is one range with `VM_SOFTDIRTY`; in `precise` one range, never
    /// dirty at the VMA level.
    /// In `regions`, the VMA's region list decides (`is_vma_addr_sd`).
    pub(crate) fn vma_level_segments(
        &self,
        v: &Vma,
        s: u64,
        e: u64,
        mut f: impl FnMut(u64, u64, bool),
    ) {
        debug_assert!(v.start <= s && s <= e && e <= v.end);
        if s >= e {
            return;
        }
        if self.mode == Mode::Regions {
            v.nsdr.segments(s, e, f);
        } else {
            f(s, e, self.flag_reported(v));
        }
    }

    // ================================================================== data plane

    /// A store to every page overlapping `[addr, addr + len)`: the simulated write fault.
    /// Fails with EFAULT at the first page that is not mapped writable; the pages before
    /// it were written, as a real `memset` would have done before its fault.
    pub fn write(&self, addr: u64, len: u64) -> Result<()> {
        self.fault(addr, len, true)
    }

    /// A load from every page overlapping `[addr, addr + len)`: populates without
    /// dirtying (private memory maps the zero page). EFAULT as for [`Self::write`].
    pub fn read(&self, addr: u64, len: u64) -> Result<()> {
        self.fault(addr, len, false)
    }

    fn fault(&self, addr: u64, len: u64, write: bool) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let last = match addr.checked_add(len - 1) {
            Some(l) => l & !(PAGE_SIZE - 1),
            None => u64::MAX & !(PAGE_SIZE - 1),
        };
        let mut page = addr & !(PAGE_SIZE - 1);
        let guard = epoch::pin();
        loop {
            let idx = self.index(&guard);
            let Some(v) = idx.lookup(page) else {
                return Err(Errno::EFAULT);
            };
            let prot = v.meta.flags.prot;
            if (write && !prot.write) || !prot.accessible() {
                return Err(Errno::EFAULT);
            }
            let stop = (v.end - PAGE_SIZE).min(last);
            let first = v.page_of(page);
            let n = ((stop - page) >> PAGE_SHIFT) + 1;
            let shared = v.meta.flags.shared;
            if write && !shared && v.anon() == 0 {
                if v.assign_anon(self.anon_for_first_fault(idx, v)).is_none() {
                    // A structural operation is deciding with this VMA's anon_vma: wait
                    // until it thaws the cell or publishes, then retry.
                    // (`idx` is the index `v` came from: a replaced VMA's cell stays
                    // frozen, and the index that replaced it may be published already.)
                    let cur: *const VmaIndex = idx;
                    while v.anon_frozen()
                        && std::ptr::eq(self.index.load(Ordering::Acquire, &guard).as_raw(), cur)
                    {
                        crate::sync::spin_loop();
                    }
                    continue;
                }
            }
            let mark = if write && self.mode == Mode::Regions {
                Self::write_by_region(v, page, stop + PAGE_SIZE)
            } else if write {
                match v.bitmap.write(first, n) {
                    Mark::Done { .. } if self.flag_reported(v) => Mark::Done { faults: 0 },
                    m => m,
                }
            } else {
                v.bitmap.read(first, n, !shared)
            };
            match mark {
                // The VMA was replaced while we wrote: retry through the new index (it
                // was published before the seal we observed).
                Mark::Sealed => continue,
                // The model's memory limit (the accounting's chunk limit): the kernel would OOM.
                Mark::NoMem => return Err(Errno::ENOMEM),
                Mark::Done { faults } => {
                    if write && faults != 0 {
                        self.faults.add(faults);
                    }
                }
            }
            if stop == last {
                return Ok(());
            }
            page = stop + PAGE_SIZE;
        }
    }

    /// Regions mode: writes `[s, e)` of `v` one region segment at a time, and counts as
    /// faults only the pages whose report changed: those a region covers (outside every
    /// region a page already reports soft-dirty). Stops at the first segment that does
    /// not complete.
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
    fn anon_for_first_fault(&self, idx: &VmaIndex, v: &Vma) -> u64 {
        let compatible = |a: &Vma, b: &Vma| {
            a.end == b.start
                && a.meta.file == b.meta.file
                && a.meta.flags.shared == b.meta.flags.shared
                && a.meta.flags.account == b.meta.flags.account
                && b.meta.pgoff == a.meta.pgoff + a.pages()
        };
        let i = idx.find_from(v.start);
        let vmas = idx.vmas();
        if let Some(n) = vmas.get(i + 1) {
            if compatible(v, n) && n.anon() != 0 && !n.meta.forked {
                return n.anon();
            }
        }
        if i > 0 {
            let p = &vmas[i - 1];
            if compatible(p, v) && p.anon() != 0 && !p.meta.forked {
                return p.anon();
            }
        }
        self.accounting.next_id()
    }

    // =============================================================== control plane

    /// Runs a structural operation: edit a layout of the current index under the control
    /// lock; publish it if `f` says so (on success, or on a failure Linux leaves partial).
    fn structural<T>(&self, f: impl FnOnce(&mut Layout) -> (Result<T>, bool)) -> Result<T> {
        let _ctl = lock(&self.control);
        let guard = epoch::pin();
        let mut layout = Layout::from_index(self.mode, self.index(&guard), &self.accounting);
        let (r, publish) = f(&mut layout);
        if publish {
            self.publish(layout, &guard);
        }
        r
    }

    /// Builds and publishes `layout`, then seals and drains the retired bitmaps.
    fn publish(&self, layout: Layout, guard: &Guard) {
        let mut built = layout.build();
        let retired = std::mem::take(&mut built.retired);
        let vmas = std::mem::take(&mut built.vmas);
        // AcqRel: Release publishes the new VMAs and bitmaps to readers' Acquire load;
        // Acquire orders our later seals after everything the old index's readers did
        // before we swapped (nothing needs it beyond the swap itself).
        let old = self
            .index
            .swap(Owned::new(VmaIndex::new(vmas)), Ordering::AcqRel, guard);
        // Broken twins: `no_defer` frees the old index at once, under pinned readers;
        // `no_reclaim` never frees it.
        if twins::NO_DEFER {
            // SAFETY: none; deliberately wrong (dead code unless the twin is built).
            drop(unsafe { old.into_owned() });
        } else if !twins::NO_RECLAIM {
            // SAFETY: `old` is no longer reachable from `self.index`; readers that loaded
            // it hold guards pinned before this swap, and destruction waits for them.
            unsafe { guard.defer_destroy(old) };
        }
        // After the swap (not required since sealed bitmaps forward their faults to the
        // successors, published or not; kept so that a fault that looks the address up
        // again finds the successors).
        for r in &retired {
            r.drain();
        }
        drop(retired);
        // After the swap: a writer waiting on a frozen cell sees the thaw or the new
        // index (and retries through it).
        built.thaw();
        guard.flush();
    }

    fn count_vmas(&self) -> usize {
        self.with_index(|i| i.len())
    }

    /// `mmap(addr, len, prot, MAP_ANONYMOUS | (shared ? MAP_SHARED : MAP_PRIVATE) | placement)`.
    /// Returns the address of the mapping.
    pub fn mmap(
        &self,
        addr: u64,
        len: u64,
        prot: Prot,
        shared: bool,
        placement: Placement,
    ) -> Result<u64> {
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let fixed = placement != Placement::Hint;
        let mut addr = addr;
        if !fixed {
            // round_hint_to_min
            addr &= !(PAGE_SIZE - 1);
            if addr != 0 && addr < MMAP_MIN_ADDR {
                addr = MMAP_MIN_ADDR;
            }
        }
        let len = match page_align(len) {
            Some(l) if l != 0 => l,
            _ => return Err(Errno::ENOMEM),
        };
        self.structural(|l| {
            if l.vmas.len() > MAX_MAP_COUNT {
                return (Err(Errno::ENOMEM), false);
            }
            // __get_unmapped_area
            if len > TASK_SIZE {
                return (Err(Errno::ENOMEM), false);
            }
            let addr = if fixed {
                addr
            } else if addr != 0
                && addr.checked_add(len).is_some_and(|e| e <= TASK_SIZE)
                && !l.intersects(addr, addr + len)
            {
                addr
            } else {
                match Self::unmapped_area(l, len) {
                    Some(a) => a,
                    None => return (Err(Errno::ENOMEM), false),
                }
            };
            if addr > TASK_SIZE - len {
                return (Err(Errno::ENOMEM), false);
            }
            if addr % PAGE_SIZE != 0 {
                return (Err(Errno::EINVAL), false);
            }
            if fixed && addr < DAC_MMAP_MIN_ADDR {
                // security_mmap_addr → cap_mmap_addr, for a caller without CAP_SYS_RAWIO
                return (Err(Errno::EPERM), false);
            }
            let end = addr + len;
            if placement == Placement::NoReplace && l.intersects(addr, end) {
                return (Err(Errno::EEXIST), false);
            }
            if let Err(e) = l.unmap(addr, end) {
                return (Err(e), false);
            }
            let precise = self.mode.is_precise();
            let meta = VmaMeta {
                flags: VmaFlags {
                    prot,
                    shared,
                    account: !shared && prot.write,
                    // Nomerge: the new range counts as soft-dirty in the merge decision.
                    softdirty: self.mode.flag_blocks_merge(),
                },
                pgoff: if shared { 0 } else { addr >> PAGE_SHIFT },
                file: shared.then(|| self.accounting.next_id()),
                forked: false,
            };
            let pieces = vec![Piece {
                start: addr,
                end,
                src: Src::Fresh { dirty: precise },
            }];
            let i = l.merge_new_range(
                addr,
                end,
                meta,
                0,
                pieces,
                NonSdRegions::new(),
                NewRange::Mmap,
            );
            // "New (or expanded) vma always get soft dirty status." (The RFC removes the
            // flag: its new pages are in no region.)
            if self.mode != Mode::Regions {
                l.vmas[i].meta.flags.softdirty = true;
            }
            (Ok(addr), true)
        })
    }

    /// Top-down search below [`MMAP_BASE`], then bottom-up above it (the kernel's
    /// fallback), for a free range of `len` bytes.
    fn unmapped_area(l: &Layout, len: u64) -> Option<u64> {
        // Top-down: gaps between VMAs below MMAP_BASE, highest first.
        let mut hi = MMAP_BASE;
        let below = l.vmas.partition_point(|v| v.start < MMAP_BASE);
        let mut i = below;
        loop {
            let gap_lo = if i == 0 {
                MMAP_MIN_ADDR
            } else {
                l.vmas[i - 1].end.max(MMAP_MIN_ADDR)
            };
            let top = hi.min(if i < l.vmas.len() {
                l.vmas[i].start
            } else {
                MMAP_BASE
            });
            if top >= gap_lo && top - gap_lo >= len {
                return Some(top - len);
            }
            if i == 0 {
                break;
            }
            i -= 1;
            hi = l.vmas[i].start;
        }
        // Bottom-up above MMAP_BASE.
        let mut lo = MMAP_BASE;
        for v in &l.vmas[below.saturating_sub(1)..] {
            if v.end <= lo {
                continue;
            }
            if v.start >= lo && v.start - lo >= len {
                return Some(lo);
            }
            lo = lo.max(v.end);
        }
        (TASK_SIZE >= lo && TASK_SIZE - lo >= len).then_some(lo)
    }

    /// `munmap(addr, len)`.
    pub fn munmap(&self, addr: u64, len: u64) -> Result<()> {
        if addr % PAGE_SIZE != 0 || addr > TASK_SIZE || len > TASK_SIZE - addr {
            return Err(Errno::EINVAL);
        }
        let len = page_align(len).ok_or(Errno::EINVAL)?;
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        self.structural(|l| match l.unmap(addr, addr + len) {
            Ok(()) => (Ok(()), true),
            Err(e) => (Err(e), false),
        })
    }

    /// `mprotect(addr, len, prot)`. Over a hole it fails with ENOMEM after changing the
    /// VMAs before the hole, as Linux does.
    pub fn mprotect(&self, addr: u64, len: u64, prot: Prot) -> Result<()> {
        if addr % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        if len == 0 {
            return Ok(());
        }
        let len = page_align(len).ok_or(Errno::ENOMEM)?;
        let end = addr.checked_add(len).ok_or(Errno::ENOMEM)?;
        if end <= addr {
            return Err(Errno::ENOMEM);
        }
        self.structural(|l| {
            let Some(mut i) = l.find(addr) else {
                return (Err(Errno::ENOMEM), false);
            };
            let mut cursor = addr;
            let mut changed = false;
            loop {
                let v = &l.vmas[i];
                if v.start > cursor {
                    return (Err(Errno::ENOMEM), changed);
                }
                let tmp = v.end.min(end);
                let old = v.meta.flags;
                let mut new = old;
                new.prot = prot;
                if prot.write {
                    if !(old.account || old.prot.write || old.shared) {
                        new.account = true;
                    }
                } else if old.account && !old.shared && v.anon == 0 {
                    new.account = false;
                }
                if new != old {
                    let meta = VmaMeta {
                        flags: new,
                        ..v.meta
                    };
                    if let Err(e) = l.modify(i, cursor, tmp, meta) {
                        return (Err(e), changed);
                    }
                    changed = true;
                }
                cursor = tmp;
                if cursor >= end {
                    return (Ok(()), changed);
                }
                match l.find(cursor).or_else(|| {
                    let j = l.find_from(cursor);
                    (j < l.vmas.len()).then_some(j)
                }) {
                    Some(j) => i = j,
                    None => return (Err(Errno::ENOMEM), changed),
                }
            }
        })
    }

    /// `madvise(addr, len, MADV_DONTNEED)`: zaps the pages (no VMA changes). Over a hole
    /// every mapped part is still zapped and the call fails with ENOMEM, as in Linux.
    pub fn madvise_dontneed(&self, addr: u64, len: u64) -> Result<()> {
        if addr % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        let len = page_align(len).ok_or(Errno::EINVAL)?;
        let end = addr.checked_add(len).ok_or(Errno::EINVAL)?;
        if len == 0 {
            return Ok(());
        }
        let _ctl = lock(&self.control);
        let guard = epoch::pin();
        let idx = self.index(&guard);
        let mut cursor = addr;
        let mut hole = false;
        let dirty = self.mode.is_precise();
        for v in idx.range(addr, end) {
            if v.start > cursor {
                hole = true;
            }
            let s = v.start.max(addr);
            let e = v.end.min(end);
            v.bitmap.zap(v.page_of(s), (e - s) >> PAGE_SHIFT, dirty);
            cursor = e;
        }
        if hole || cursor < end {
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }

    /// `mremap(addr, old_len, new_len, flags, new_addr)`. Returns the new address.
    pub fn mremap(
        &self,
        addr: u64,
        old_len: u64,
        new_len: u64,
        maymove: bool,
        fixed: Option<u64>,
    ) -> Result<u64> {
        if addr % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        let old_len = page_align(old_len).ok_or(Errno::EINVAL)?;
        let new_len = page_align(new_len).unwrap_or(0);
        if new_len == 0 || new_len > TASK_SIZE {
            return Err(Errno::EINVAL);
        }
        if let Some(na) = fixed {
            if na > TASK_SIZE - new_len || na % PAGE_SIZE != 0 || !maymove {
                return Err(Errno::EINVAL);
            }
            let old_end = addr.saturating_add(old_len);
            if addr < na + new_len && na < old_end {
                return Err(Errno::EINVAL);
            }
        }
        let precise = self.mode.is_precise();
        let move_rule = if precise {
            CopyRule::AllDirty
        } else {
            CopyRule::DirtyPopulated
        };
        self.structural(|l| {
            if let Some(na) = fixed {
                if old_len == new_len {
                    return Self::remap_move(l, addr, old_len, na, move_rule);
                }
            }
            let Some(i) = l.find(addr) else {
                return (Err(Errno::EFAULT), false);
            };
            if old_len == 0 {
                // Duplicating a shared mapping (old_len == 0) is not modelled; for private
                // mappings Linux refuses it with EINVAL too.
                return (Err(Errno::EINVAL), false);
            }
            let v_end = l.vmas[i].end;
            if fixed.is_none() && new_len <= old_len {
                if new_len < old_len {
                    // Shrink: unmap the tail, which may cross VMA boundaries in 6.18.
                    let tail_end = addr.saturating_add(old_len).min(TASK_SIZE);
                    if let Err(e) = l.unmap(addr + new_len, tail_end) {
                        return (Err(e), false);
                    }
                    return (Ok(addr), true);
                }
                return (Ok(addr), false);
            }
            if let Some(na) = fixed {
                // check_prep_vma: the (possibly shrunk) source must lie in one VMA, checked
                // before anything is unmapped.
                if old_len.min(new_len) > v_end - addr {
                    return (Err(Errno::EFAULT), false);
                }
                // mremap_to: the destination is unmapped first.
                if let Err(e) = l.unmap(na, na + new_len) {
                    return (Err(e), false);
                }
                let mut old_len = old_len;
                if new_len < old_len {
                    if let Err(e) = l.unmap(addr + new_len, addr + old_len) {
                        return (Err(e), true);
                    }
                    old_len = new_len;
                }
                let Some(i) = l.find(addr) else {
                    return (Err(Errno::EFAULT), true);
                };
                if old_len > l.vmas[i].end - addr {
                    return (Err(Errno::EFAULT), true);
                }
                return match Self::move_range(l, addr, old_len, na, new_len, move_rule) {
                    Ok(()) => (Ok(na), true),
                    Err(e) => (Err(e), true),
                };
            }
            // Grow.
            if old_len > v_end - addr {
                return (Err(Errno::EFAULT), false);
            }
            let delta = new_len - old_len;
            if v_end - addr == old_len
                && v_end.checked_add(delta).is_some_and(|e| e <= TASK_SIZE)
                && !l.intersects(v_end, v_end + delta)
            {
                // In place: vma_merge_extend, a new-range merge with the VMA as prev. The
                // extension is unpopulated and the VMA keeps its flags; a compatible next
                // VMA the extension reaches is swallowed too (checked on 6.18.44).
                let v = &l.vmas[i];
                let mut meta = v.meta;
                meta.pgoff = v.meta.pgoff + v.pages();
                let anon = v.anon;
                let fresh = vec![Piece {
                    start: v_end,
                    end: v_end + delta,
                    src: Src::Fresh { dirty: precise },
                }];
                l.merge_new_range(
                    v_end,
                    v_end + delta,
                    meta,
                    anon,
                    fresh,
                    NonSdRegions::new(),
                    NewRange::VmaMerge,
                );
                return (Ok(addr), true);
            }
            if !maymove {
                return (Err(Errno::ENOMEM), false);
            }
            let Some(na) = Self::unmapped_area(l, new_len) else {
                return (Err(Errno::ENOMEM), false);
            };
            match Self::move_range(l, addr, old_len, na, new_len, move_rule) {
                Ok(()) => (Ok(na), true),
                Err(e) => (Err(e), false),
            }
        })
    }

    /// `remap_move` (Linux 6.17+): a same-size MREMAP_FIXED move of every VMA in
    /// `[addr, addr + len)`, gaps preserved. A failure part-way leaves a partial move.
    fn remap_move(
        l: &mut Layout,
        addr: u64,
        len: u64,
        na: u64,
        rule: CopyRule,
    ) -> (Result<u64>, bool) {
        let end = addr.saturating_add(len);
        if l.find(addr).is_none() {
            return (Err(Errno::EFAULT), false);
        }
        let parts: Vec<(u64, u64)> = {
            let i = l.find_from(addr);
            l.vmas[i..]
                .iter()
                .take_while(|v| v.start < end)
                .map(|v| (v.start.max(addr), v.end.min(end)))
                .collect()
        };
        let mut moved = false;
        for (s, e) in parts {
            let target = na + (s - addr);
            if let Err(err) = l.unmap(target, target + (e - s)) {
                return (Err(err), moved);
            }
            if let Err(err) = Self::move_range(l, s, e - s, target, e - s, rule) {
                return (Err(err), moved);
            }
            moved = true;
        }
        (Ok(na), true)
    }

    /// `move_vma`: `[addr, addr + old_len)` (inside one VMA) to a free `[na, na + new_len)`:
    /// `copy_vma` (merging at the destination), then unmap the source.
    fn move_range(
        l: &mut Layout,
        addr: u64,
        old_len: u64,
        na: u64,
        new_len: u64,
        rule: CopyRule,
    ) -> Result<()> {
        if l.vmas.len() >= MAX_MAP_COUNT - 3 {
            return Err(Errno::ENOMEM);
        }
        let i = l.find(addr).ok_or(Errno::EFAULT)?;
        let v: WVma = l.vmas[i].clone();
        let mut pieces = move_pieces(cut_pieces(&v.pieces, addr, addr + old_len), na, rule);
        if new_len > old_len {
            pieces.push(Piece {
                start: na + old_len,
                end: na + new_len,
                src: Src::Fresh {
                    dirty: rule == CopyRule::AllDirty,
                },
            });
        }
        let mut meta = v.meta;
        meta.pgoff = if !v.meta.flags.shared && v.anon == 0 {
            na >> PAGE_SHIFT
        } else {
            v.meta.pgoff + ((addr - v.start) >> PAGE_SHIFT)
        };
        // copy_vma: merged at the destination (`vma_merge`), or a new VMA with the whole
        // source VMA's region list cloned verbatim, old addresses included (`nsdr_clone`).
        l.merge_new_range(
            na,
            na + new_len,
            meta,
            v.anon,
            pieces,
            v.nsdr,
            NewRange::VmaMerge,
        );
        l.unmap(addr, addr + old_len)
    }

    /// `fork()`: a new address space with a copy of this one's mappings and page state.
    /// Private VMAs that were write-faulted get their PTEs copied (and a new anon_vma
    /// whose chain links ours); others start unpopulated in the child, as in Linux.
    pub fn fork(&self) -> AddressSpace {
        let _ctl = lock(&self.control);
        let guard = epoch::pin();
        let idx = self.index(&guard);
        let mut vmas = Vec::with_capacity(idx.len());
        // Frozen while the child is built: a first write either assigned its anon_vma
        // before (the child gets the PTEs) or waits until the child exists.
        let mut frozen = Vec::new();
        for v in idx.vmas() {
            let (anon, froze) = v.freeze_anon();
            if froze {
                frozen.push(v);
            }
            let copy_ptes = !v.meta.flags.shared && anon != 0;
            let bm = PageBitmap::accounted(v.pages(), false, Some(&self.accounting));
            bm.copy_from(0, &v.bitmap, 0, v.pages(), CopyRule::Plain);
            if !copy_ptes {
                // No PTEs are copied: the child's pages start unpopulated. Legacy: their
                // soft-dirty bits go with the PTEs; precise: the state is copied.
                if self.mode.is_precise() {
                    bm.unpopulate(0, v.pages());
                } else {
                    bm.zap(0, v.pages(), false);
                }
            }
            let mut meta = v.meta;
            meta.forked = anon != 0;
            let child_anon = if anon != 0 {
                self.accounting.next_id()
            } else {
                0
            };
            // dup_mmap: the RFC clones the region list (`nsdr_clone`).
            vmas.push(Arc::new(
                Vma::new(v.start, v.end, meta, child_anon, Arc::new(bm)).with_nsdr(v.nsdr.clone()),
            ));
        }
        for v in frozen {
            v.thaw_anon();
        }
        AddressSpace {
            mode: self.mode,
            index: Atomic::new(VmaIndex::new(vmas)),
            control: Mutex::new(()),
            faults: FaultCounter::new(),
            accounting: self.accounting.clone(),
        }
    }

    /// Writes `value` to `/proc/PID/clear_refs`, parsed as the kernel parses it (at most 12
    /// bytes, whitespace stripped, `kstrtoint` base 10). `4` clears soft-dirty on the whole
    /// space; 1, 2, 3 and 5 have no effect on soft-dirty; anything else fails.
    pub fn clear_refs_str(&self, value: &str) -> Result<()> {
        let bytes = value.as_bytes();
        let b = &bytes[..bytes.len().min(12)];
        let s = std::str::from_utf8(b).map_err(|_| Errno::EINVAL)?.trim();
        let v = parse_kstrtoint(s)?;
        self.clear_refs(v)
    }

    /// `clear_refs` with an integer value.
    pub fn clear_refs(&self, value: i32) -> Result<()> {
        match value {
            1 | 2 | 3 | 5 => Ok(()),
            4 => {
                self.clear_soft_dirty();
                Ok(())
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn clear_soft_dirty(&self) {
        let _ctl = lock(&self.control);
        let guard = epoch::pin();
        let idx = self.index(&guard);
        let mut flags = false;
        for v in idx.vmas() {
            v.bitmap.clear_all();
            flags |= v.meta.flags.softdirty;
            // Regions: the list must become the one region `[vm_start, vm_end)`.
            flags |= self.mode == Mode::Regions && v.nsdr.is_vma_sd(v.start, v.end);
        }
        if flags || self.mode == Mode::Nomerge {
            let mut l = Layout::from_index(self.mode, idx, &self.accounting);
            for w in &mut l.vmas {
                w.meta.flags.softdirty = false;
                if self.mode == Mode::Regions {
                    w.nsdr = NonSdRegions::whole(w.start, w.end);
                }
            }
            if self.mode == Mode::Nomerge {
                l.merge_compatible_neighbours();
            }
            self.publish(l, &guard);
        }
    }

    // ================================================================= observation

    /// The VMAs, in address order.
    pub fn vmas(&self) -> Vec<VmaInfo> {
        self.with_index(|idx| {
            idx.vmas()
                .iter()
                .map(|v| VmaInfo {
                    start: v.start,
                    end: v.end,
                    prot: v.meta.flags.prot.to_string(),
                    shared: v.meta.flags.shared,
                    vm_softdirty: if self.mode == Mode::Regions {
                        v.nsdr.is_vma_sd(v.start, v.end)
                    } else {
                        v.meta.flags.softdirty
                    },
                    faulted: v.anon() != 0,
                })
                .collect()
        })
    }

    /// Number of VMAs intersecting `[addr, addr + len)`.
    pub fn vma_count(&self, addr: u64, len: u64) -> usize {
        let end = addr.saturating_add(len);
        self.with_index(|idx| idx.range(addr, end).len())
    }

    /// Total VMAs.
    pub fn vma_total(&self) -> usize {
        self.count_vmas()
    }

    /// The smaps `VmFlags` line of the VMA containing `addr`.
    pub fn smaps_vmflags(&self, addr: u64) -> Option<String> {
        self.with_index(|idx| {
            idx.lookup(addr).map(|v| {
                if self.mode == Mode::Regions {
                    // The RFC prints `sd` after every other flag, with no space after it,
                    // when `is_vma_sd`.
                    let mut line = v.smaps_vmflags(false);
                    if v.nsdr.is_vma_sd(v.start, v.end) {
                        line.push_str("sd");
                    }
                    line
                } else {
                    v.smaps_vmflags(true)
                }
            })
        })
    }

    /// Bytes of tracking memory held by the current VMAs' bitmaps, plus, in `regions`
    /// mode, what the RFC's region lists would cost the kernel
    /// ([`NonSdRegions::bytes`]: a list head per VMA and a 32-byte object per region).
    pub fn tracking_bytes(&self) -> usize {
        self.with_index(|idx| {
            idx.vmas()
                .iter()
                .map(|v| {
                    let lists = if self.mode == Mode::Regions {
                        v.nsdr.bytes()
                    } else {
                        0
                    };
                    v.bitmap.tracking_bytes() + lists
                })
                .sum()
        })
    }

    /// Regions mode: the total number of non-soft-dirty regions over all VMAs (0 in other
    /// modes).
    pub fn region_count(&self) -> usize {
        self.with_index(|idx| idx.vmas().iter().map(|v| v.nsdr.len()).sum())
    }

    /// Runs `f` under the control lock (get-and-clear scans).
    pub(crate) fn with_control<R>(&self, f: impl FnOnce() -> R) -> R {
        let _ctl = lock(&self.control);
        f()
    }
}

impl Drop for AddressSpace {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no other thread can reach this space, so no reader holds
        // its current index; the pointer is non-null and owned by `self.index`.
        unsafe {
            let g = epoch::unprotected();
            let cur = self.index.load(Ordering::Relaxed, g);
            if !cur.is_null() {
                drop(cur.into_owned());
            }
        }
    }
}

/// The kernel's `kstrtoint(s, 10)`: optional sign, decimal digits, fits `i32`; one
/// trailing newline is accepted. EINVAL on bad syntax, ERANGE on overflow.
pub fn parse_kstrtoint(s: &str) -> Result<i32> {
    let s = s.strip_suffix('\n').unwrap_or(s);
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Errno::EINVAL);
    }
    let mut v: i64 = 0;
    for b in digits.bytes() {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(b - b'0')))
            .ok_or(Errno::ERANGE)?;
        if v > i64::from(i32::MAX) + 1 {
            return Err(Errno::ERANGE);
        }
    }
    let v = if neg { -v } else { v };
    i32::try_from(v).map_err(|_| Errno::ERANGE)
}

impl Layout {
    /// Hildenbrand's "merge after clear_refs" (nomerge mode): merge every pair of adjacent
    /// VMAs that are now compatible.
    pub(crate) fn merge_compatible_neighbours(&mut self) {
        let mut i = 0;
        while i + 1 < self.vmas.len() {
            let (a, b) = (&self.vmas[i], &self.vmas[i + 1]);
            let ok = a.end == b.start
                && a.meta.flags == b.meta.flags
                && a.meta.file == b.meta.file
                && a.meta.pgoff + a.pages() == b.meta.pgoff
                && (a.anon == 0 || b.anon == 0 || a.anon == b.anon)
                && !(a.anon == 0 && b.anon != 0 && b.meta.forked)
                && !(b.anon == 0 && a.anon != 0 && a.meta.forked);
            if ok {
                let b = self.vmas.remove(i + 1);
                let a = &mut self.vmas[i];
                a.end = b.end;
                a.pieces.extend(b.pieces);
                if a.anon == 0 {
                    a.anon = b.anon;
                    a.meta.forked = b.meta.forked;
                }
            } else {
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn address_space_is_send_and_sync() {
        assert_send_sync::<AddressSpace>();
        assert_send_sync::<crate::tracker::Tracker>();
    }

    #[test]
    fn kstrtoint_like_the_kernel() {
        assert_eq!(parse_kstrtoint("4"), Ok(4));
        assert_eq!(parse_kstrtoint("+4"), Ok(4));
        assert_eq!(parse_kstrtoint("-1"), Ok(-1));
        assert_eq!(parse_kstrtoint("4\n"), Ok(4));
        assert_eq!(parse_kstrtoint("0x4"), Err(Errno::EINVAL));
        assert_eq!(parse_kstrtoint("abc"), Err(Errno::EINVAL));
        assert_eq!(parse_kstrtoint(""), Err(Errno::EINVAL));
        assert_eq!(parse_kstrtoint("99999999999"), Err(Errno::ERANGE));
    }
}
