//! [`AddressSpace`]: one process's memory map (the kernel's `mm_struct`), its operations
//! and their errors.
//!
//! Two planes (ARCHITECTURE.md, "Layers"):
//! - the **data plane** — [`AddressSpace::write`], [`AddressSpace::read`], pagemap and
//!   scans without `clear` — takes `&self` and no lock: it pins an epoch, loads the
//!   published [`VmaIndex`] and updates the VMA's atomic [`PageBitmap`](crate::bitmap::PageBitmap);
//! - the **control plane** — mmap, munmap, mprotect, mremap, madvise, fork, `clear_refs`
//!   and get-and-clear scans — serializes on the control lock, edits a `Layout` and
//!   publishes a new index.
//!
//! Where each part lives:
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | [`AddressSpace`], its accounts, the index it publishes, pagemap's per-VMA view |
//! | `fault.rs` | the data plane: a simulated write or read fault, the first fault's anon_vma |
//! | `layout.rs` | the VMA layout editor (split, unmap, merge as Linux 6.18 does) |
//! | `commit.rs` | the structural commit: build the new VMAs, swap the index, seal and drain |
//! | `mmap.rs`, `mprotect.rs`, `mremap.rs`, `madvise.rs`, `fork.rs`, `clear_refs.rs`, `brk.rs`, `truncate.rs` | one system call each (`brk.rs`: the program break, `truncate.rs`: a mapped file's size change, trace v2) |
//! | `query.rs` | the VMA list, smaps flags, tracking memory |
//!
//! Errors are Linux's, checked in the kernel's order (`docs/kernel-rules.md` records the
//! order with its sources). Where Linux leaves a partial effect on failure (mprotect and
//! madvise over a hole, a multi-VMA mremap failing half-way) the model does the same;
//! everywhere else a failed operation changes nothing.

mod brk;
mod clear_refs;
mod commit;
mod fault;
mod fork;
pub(crate) mod layout;
mod madvise;
mod mmap;
mod mprotect;
mod mremap;
mod query;
mod stack;
mod truncate;

pub use brk::STACK_GUARD_GAP;
pub use clear_refs::parse_kstrtoint;
use fault::FaultCounter;
pub(crate) use fault::{FaultCell, VmaHint};
pub use madvise::Advice;
pub use stack::STACK_LIMIT;

use crate::accounting::Accounting;
use crate::epoch::{self, Atomic, Guard};
use crate::file::{FileRef, Files};
use crate::index::VmaIndex;
use crate::linux::PAGE_SIZE;
use crate::mode::Mode;
use crate::sync::{AtomicU64, Mutex, Ordering};
use crate::twins;
use crate::vma::Vma;

/// `vm.mmap_min_addr` (the DAC floor that `cap_mmap_addr` enforces for fixed mappings of
/// callers without `CAP_SYS_RAWIO`); hints are raised to [`MMAP_MIN_ADDR`](crate::linux::MMAP_MIN_ADDR) instead.
pub const DAC_MMAP_MIN_ADDR: u64 = 0x1000;

/// Where the model's top-down allocator starts (the kernel randomizes `mmap_base`).
pub const MMAP_BASE: u64 = 0x7f00_0000_0000;

/// `MAP_PRIVATE` or `MAP_SHARED`: whether stores reach other mappings of the memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharing {
    /// `MAP_PRIVATE`: copy-on-write, stores stay in this mapping.
    Private,
    /// `MAP_SHARED`: one memory object for every mapping of it.
    Shared,
}

impl Sharing {
    /// `Shared` if `shared` (a trace's or a backend's `shared` flag), else `Private`.
    pub fn from_flag(shared: bool) -> Sharing {
        if shared {
            Sharing::Shared
        } else {
            Sharing::Private
        }
    }

    /// `MAP_SHARED`?
    pub fn is_shared(self) -> bool {
        self == Sharing::Shared
    }
}

/// The mmap flags of trace v2 besides the placement and the sharing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MapOpts {
    /// `MAP_NORESERVE`: `VM_NORESERVE`, and no `VM_ACCOUNT`
    pub noreserve: bool,
    /// `MAP_POPULATE`: every page faulted in at mmap time (a write fault where the
    /// mapping is private and writable, else a read fault; none for `PROT_NONE`)
    pub populate: bool,
    /// `MAP_GROWSDOWN`: a stack VMA (`VM_GROWSDOWN`); EINVAL with `MAP_SHARED` or a file
    pub growsdown: bool,
    /// A file mapping instead of anonymous memory: the file (one of
    /// [`AddressSpace::files`]) and the byte offset in it (a multiple of the page size,
    /// else EINVAL)
    pub file: Option<(FileRef, u64)>,
}

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
    /// maps a regular file or a memfd (trace v2)
    pub file: bool,
}

/// One process address space.
pub struct AddressSpace {
    mode: Mode,
    index: Atomic<VmaIndex>,
    control: Mutex<()>,
    /// the program break (`brk.rs`); taken before `control` where both are
    brk: Mutex<brk::Brk>,
    faults: FaultCounter,
    /// the model's memory: shared with the tracker's other spaces and with fork children
    accounting: std::sync::Arc<Accounting>,
    /// the files this space can map: shared with the tracker's other spaces and with
    /// fork children (`crate::file`)
    files: std::sync::Arc<Files>,
    /// the registered consumers and their pending pages (`crate::consumers`); taken
    /// before `control`, by harvests only
    pub(crate) consumers: Mutex<crate::consumers::Consumers>,
    /// changes that dirtied or moved pages other than by a write at their address
    /// ([`AddressSpace::indirect_changes`])
    indirect: AtomicU64,
}

impl std::fmt::Debug for AddressSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressSpace")
            .field("mode", &self.mode)
            .field("vmas", &self.vmas())
            .finish()
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
        AddressSpace::with_shared(mode, accounting, std::sync::Arc::default())
    }

    /// An empty address space following `mode` that counts in `accounting` and maps the
    /// files of `files` (both shared with the other spaces of a tracker).
    pub fn with_shared(
        mode: Mode,
        accounting: std::sync::Arc<Accounting>,
        files: std::sync::Arc<Files>,
    ) -> AddressSpace {
        AddressSpace {
            mode,
            index: Atomic::new(VmaIndex::default()),
            control: Mutex::new(()),
            brk: Mutex::new(brk::Brk::default()),
            faults: FaultCounter::new(),
            accounting,
            files,
            consumers: Mutex::default(),
            indirect: AtomicU64::new(0),
        }
    }

    /// The files this space can map (shared with the tracker's other spaces).
    pub fn files(&self) -> &std::sync::Arc<Files> {
        &self.files
    }

    /// The accounts this space counts in (its memory limit and live objects).
    pub fn accounting(&self) -> &std::sync::Arc<Accounting> {
        &self.accounting
    }

    /// The soft-dirty semantics this space follows.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// How many changes so far may have made a page of this space soft-dirty, or moved a
    /// soft-dirty page, other than a write ([`Self::write`]) at that page's address: every
    /// published structural change (mmap, munmap, mprotect, mremap, brk, stack growth),
    /// every madvise, every store that reached this space's views of shared memory
    /// from elsewhere or an `fwrite`, every truncation. A
    /// harvest that collects only what writers named ([`crate::ring::SpaceRings`]) must
    /// scan everything when this changed since it last looked.
    ///
    /// `Acquire`: pairs with the `Release` increment each change makes after its last
    /// page-state RMW, so a harvest that reads the new count sees those pages.
    pub fn indirect_changes(&self) -> u64 {
        self.indirect.load(Ordering::Acquire)
    }

    /// Counts one indirect change ([`Self::indirect_changes`]), after its page-state RMWs.
    pub(crate) fn note_indirect(&self) {
        if !twins::RING_IGNORES_MOVES.on() {
            // Release: pairs with `indirect_changes`' Acquire load (see there).
            self.indirect.fetch_add(1, Ordering::Release);
        }
    }

    /// Simulated write faults so far: stores that turned a page from not soft-dirty to
    /// soft-dirty as pagemap bit 55 reports it.
    pub fn faults(&self) -> u64 {
        self.faults.sum()
    }

    /// The published index, valid while both `guard` and the borrow of the space are
    /// held. `guard` must be pinned in softdirty's collector ([`epoch::pin`]).
    #[inline]
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
        if twins::NO_PIN.on() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn address_space_is_send_and_sync() {
        assert_send_sync::<AddressSpace>();
        assert_send_sync::<crate::tracker::Tracker>();
    }
}
