//! A VMA: one mapping of the address space, its kernel flags and its page bitmap.
//!
//! VMAs are immutable once published in a [`crate::index::VmaIndex`], with two exceptions
//! that only ever move one way and are atomic: the page state inside [`Vma::bitmap`], and
//! the `anon_vma` identity a first write fault assigns ([`Vma::anon`]).

use crate::bitmap::PageBitmap;
use crate::file::FileRef;
use crate::linux::PAGE_SHIFT;
use crate::prot::Prot;
use crate::regions::NonSdRegions;
use crate::sync::{Arc, AtomicU64, Ordering};
use crate::twins;

/// The value of an `anon_vma` cell frozen by a structural operation ([`Vma::freeze_anon`]);
/// never an identity ([`Accounting::next_id`](crate::accounting::Accounting::next_id) counts up from 1).
pub const ANON_FROZEN: u64 = u64::MAX;

/// The flags of a VMA that decide merging (everything but the range and the page state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmaFlags {
    /// `VM_READ | VM_WRITE | VM_EXEC`
    pub prot: Prot,
    /// `VM_SHARED | VM_MAYSHARE` (shared anonymous memory, a shmem file)
    pub shared: bool,
    /// `VM_ACCOUNT`: private writable memory charged to the commit limit
    pub account: bool,
    /// `VM_SOFTDIRTY`, maintained by the kernel's rules of the address space's mode in
    /// every mode (in `precise` it is only shown by smaps, never reported per page)
    pub softdirty: bool,
    /// `VM_NORESERVE` (`MAP_NORESERVE`, trace v2): no commit charge, never `VM_ACCOUNT`
    pub noreserve: bool,
    /// `VM_DONTCOPY` (`MADV_DONTFORK`): `fork` leaves the VMA out of the child
    pub dontcopy: bool,
    /// `VM_WIPEONFORK` (`MADV_WIPEONFORK`): the child gets the VMA empty
    pub wipeonfork: bool,
    /// `VM_GROWSDOWN` (`MAP_GROWSDOWN`): a stack, grown down by an access below it
    pub growsdown: bool,
}

impl VmaFlags {
    /// The flags of a new mapping with `prot`; `shared`, `account` and `softdirty` as
    /// given, every v2 flag clear.
    pub fn new(prot: Prot, shared: bool, account: bool, softdirty: bool) -> VmaFlags {
        VmaFlags {
            prot,
            shared,
            account,
            softdirty,
            noreserve: false,
            dontcopy: false,
            wipeonfork: false,
            growsdown: false,
        }
    }
}

/// The kernel's per-VMA metadata that merges compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmaMeta {
    /// flags
    pub flags: VmaFlags,
    /// `vm_pgoff` of the first page
    pub pgoff: u64,
    /// The file mapped (`None` for anonymous private memory): a regular file or memfd
    /// (trace v2), or the shmem object of a shared anonymous mapping.
    pub file: Option<FileRef>,
    /// This VMA has an `anon_vma` whose chain links a parent's (`vma_had_uncowed_parents`:
    /// a fork child's faulted VMA).
    pub forked: bool,
}

/// One VMA.
pub struct Vma {
    /// First address (page aligned).
    pub start: u64,
    /// End address (exclusive, page aligned).
    pub end: u64,
    /// Flags, pgoff, file.
    pub meta: VmaMeta,
    /// `anon_vma` identity (0: none yet). Set by the first write fault of private memory.
    /// [`ANON_FROZEN`] while a structural operation decides with it, and for good once
    /// the VMA is replaced by one ([`Vma::freeze_anon`]).
    anon: Arc<AtomicU64>,
    /// The page state: page `i` of the bitmap is the page at `start + i * PAGE_SIZE`.
    pub bitmap: Arc<PageBitmap>,
    /// `regions` mode: the RFC's list of non-soft-dirty regions (empty in other modes).
    pub nsdr: NonSdRegions,
}

impl std::fmt::Debug for Vma {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vma")
            .field("start", &format_args!("{:#x}", self.start))
            .field("end", &format_args!("{:#x}", self.end))
            .field("meta", &self.meta)
            .field("anon", &self.anon())
            .finish()
    }
}

impl Vma {
    /// A VMA over `[start, end)` with the given bitmap, whose page `i` is the VMA's page
    /// `i`. The bitmap may be longer than the VMA: room for the VMA to grow upwards in
    /// place (`Layout::build`); its pages past the VMA belong to no VMA.
    pub fn new(start: u64, end: u64, meta: VmaMeta, anon: u64, bitmap: Arc<PageBitmap>) -> Vma {
        debug_assert!(bitmap.pages() >= (end - start) >> PAGE_SHIFT);
        if let Some(a) = bitmap.accounting() {
            a.vma_added();
        }
        Vma {
            start,
            end,
            meta,
            anon: Arc::new(AtomicU64::new(anon)),
            bitmap,
            nsdr: NonSdRegions::new(),
        }
    }

    /// The `anon_vma` cell (its identity tells which VMAs a layout kept).
    pub(crate) fn anon_cell(&self) -> &Arc<AtomicU64> {
        &self.anon
    }

    /// The same VMA with the non-soft-dirty region list `nsdr` (`regions` mode).
    pub fn with_nsdr(mut self, nsdr: NonSdRegions) -> Vma {
        self.nsdr = nsdr;
        self
    }

    /// Pages covered.
    pub fn pages(&self) -> u64 {
        (self.end - self.start) >> PAGE_SHIFT
    }

    /// The page index of `addr` within this VMA's bitmap.
    pub fn page_of(&self, addr: u64) -> u64 {
        (addr - self.start) >> PAGE_SHIFT
    }

    /// Does the VMA contain `addr`?
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// The `anon_vma` identity, 0 if the VMA was never write-faulted.
    #[inline]
    pub fn anon(&self) -> u64 {
        // Acquire: pairs with the CAS in `assign_anon`.
        match self.anon.load(Ordering::Acquire) {
            ANON_FROZEN => 0,
            a => a,
        }
    }

    /// Gives the VMA an `anon_vma` if it has none (the first write fault); returns the one
    /// it has afterwards, or `None` while a structural operation is deciding with the
    /// VMA's `anon_vma` ([`Vma::freeze_anon`]): the caller waits until the cell thaws or
    /// a new index is published, and retries through the index.
    pub fn assign_anon(&self, id: u64) -> Option<u64> {
        // AcqRel: several faulting threads race; one wins and all agree on its id. Pairs
        // with `freeze_anon`'s CAS: whichever comes first in the cell's modification
        // order is seen by the other.
        match self
            .anon
            .compare_exchange(0, id, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Some(id),
            Err(ANON_FROZEN) => None,
            Err(cur) => Some(cur),
        }
    }

    /// Reads the `anon_vma` for a structural operation's decisions (merges, `VM_ACCOUNT`,
    /// fork's PTE copy) and, if there is none, freezes the cell so that no first write
    /// assigns one until the operation is done: without it, a first write between the
    /// read and the publication would complete on a VMA whose successor was decided
    /// "never faulted" (VM_ACCOUNT dropped, an unfaulted merge, a fork child without the
    /// page) — a state no sequential order gives, as in Linux, where `mmap_lock` keeps
    /// faults out. Returns the identity (0: none, and the cell is now frozen: the caller
    /// must [`Vma::thaw_anon`] it if the VMA survives unchanged; a replaced VMA's cell
    /// stays frozen, so that a writer holding it waits for the new index and retries).
    /// Only the control plane calls it, under the space's control lock.
    pub fn freeze_anon(&self) -> (u64, bool) {
        // Broken twin `no_anon_freeze` (loom-tests): the code before the fix, a plain
        // read.
        if twins::NO_ANON_FREEZE.on() {
            return (self.anon(), false);
        }
        // AcqRel: pairs with `assign_anon`'s CAS (see there).
        match self
            .anon
            .compare_exchange(0, ANON_FROZEN, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => (0, true),
            Err(ANON_FROZEN) => (0, false), // frozen by this operation already
            Err(cur) => (cur, false),
        }
    }

    /// Ends a freeze: first writes may assign an `anon_vma` again.
    pub fn thaw_anon(&self) {
        // Release: the operation's publication (sequenced before) is visible to a
        // writer whose Acquire CAS reads 0 from here.
        let _ = self
            .anon
            .compare_exchange(ANON_FROZEN, 0, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Is the cell frozen by a structural operation (or by a retirement)?
    pub fn anon_frozen(&self) -> bool {
        self.anon.load(Ordering::Acquire) == ANON_FROZEN
    }

    /// A private mapping of a file (`vma->vm_file` without `VM_SHARED`): a page it
    /// populated without a write shows the file's page, a written one is a private copy.
    pub fn private_file(&self) -> bool {
        self.meta.file.is_some() && !self.meta.flags.shared
    }

    /// `vma_had_uncowed_parents()`.
    pub fn had_uncowed_parents(&self) -> bool {
        self.meta.forked && self.anon() != 0
    }

    /// The `VmFlags` line of `/proc/PID/smaps`, exactly as the kernel prints it.
    pub fn smaps_vmflags(&self, show_sd: bool) -> String {
        let f = &self.meta.flags;
        let mut s = String::from("VmFlags: ");
        let mut put = |on: bool, m: &str| {
            if on {
                s.push_str(m);
                s.push(' ');
            }
        };
        put(f.prot.read, "rd");
        put(f.prot.write, "wr");
        put(f.prot.exec, "ex");
        put(f.shared, "sh");
        put(true, "mr");
        put(true, "mw");
        put(true, "me");
        put(f.shared, "ms");
        put(f.growsdown, "gd");
        put(f.dontcopy, "dc");
        put(f.account, "ac");
        put(f.noreserve, "nr");
        put(f.wipeonfork, "wf");
        put(show_sd && f.softdirty, "sd");
        s
    }
}

impl Drop for Vma {
    fn drop(&mut self) {
        if let Some(a) = self.bitmap.accounting() {
            a.vma_freed();
        }
    }
}
