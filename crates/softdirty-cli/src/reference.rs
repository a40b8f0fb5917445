//! A deliberately simple reference model of one address space, for differential testing
//! against `softdirty::mm::AddressSpace`: `tests/model_vs_reference.rs` (proptest) and
//! `softdirty fuzz --against reference`.
//!
//! Written from the rules, not from the real model's code:
//! - the trace-format spec (`shared/spec/trace-format.md`, "Modes", "Memory operations");
//! - `docs/kernel-rules.md` (errno order, Linux 6.18 split/merge rules, VM_ACCOUNT,
//!   anon_vma, mremap);
//! - `shared/reference/kernel-semantics.md` §1.2, §2, §5 (legacy VM_SOFTDIRTY rules;
//!   §5.3's right-hand column for `sticky`);
//! - `docs/design-comparison.md`, "The modes, stated precisely", and the seed thread
//!   (`shared/reference/seed-lkml-thread.txt`, David Hildenbrand's reply) for `nomerge`.
//!
//! - for `regions`: the RFC's patch itself ("[PATCH RFC] mm: implement granular
//!   soft-dirty vma support", `shared/reference/seed-lkml-thread.txt`), read against 6.1's
//!   `mmap_region`, `vma_expand`, `vma_merge`, `__split_vma`, `copy_vma` and `dup_mmap`.
//!
//! No cleverness: a `Vec` of VMAs, each with one `RefPage` per page; every operation
//! copies slices of those vectors around. Modelled: `precise`, `legacy`, `sticky`,
//! `nomerge`, `regions`; and all of trace v2: the program break, the mmap words
//! `noreserve`, `populate` and `growsdown` (stack growth on access), every madvise advice
//! (guard regions included), the fork flags, shared anonymous memory across spaces (its
//! shmem object, sized at its first mapping's length), and files and memfds (a size per
//! file shared by every space; a private copy per written page of a private mapping; a
//! store through a shared mapping or an `fwrite` reaching every other view in
//! `precise`; truncation reaching every mapping).
//!
//! The mode-specific rules, all in one place (`RefSpace::flag_rule` and
//! `RefSpace::nomerge_after_clear`):
//! - `legacy`: a merged VMA's VM_SOFTDIRTY is the surviving VMA's own (the target of a
//!   new-range merge; the modified VMA's new flags after an mprotect merge, because of
//!   `vm_flags_reset(newflags)`); mmap then forces it set.
//! - `sticky`: a merged VMA's VM_SOFTDIRTY is the OR over every VMA (or new range) it was
//!   made from, whatever the trigger; mmap still forces it set.
//! - `nomerge`: as legacy, but VM_SOFTDIRTY is one more flag `is_mergeable_vma` compares
//!   (a new mmap range carries it set, an mremap destination carries its source's, an
//!   mprotect range the modified VMA's), so merges only ever join equal flags; and
//!   `clear_refs 4`, after clearing every flag and page bit, merges adjacent VMAs that
//!   are now compatible. The anon_vma reuse of a first fault (`anon_vma_compatible`)
//!   ignores VM_SOFTDIRTY in every mode: the proposal changes merge decisions only.
//!
//! `regions` (the RFC as its patch implements it) has no VM_SOFTDIRTY: each VMA carries
//! `RefVma::nsdr`, its list of non-soft-dirty regions `[start, end)` (byte addresses, in
//! no particular order, never coalesced: a `Vec` standing for `list_head non_sd_reg`). A
//! page reports soft-dirty iff its PTE bit is set or no region of its VMA's list contains
//! it (`is_vma_addr_sd`); smaps `sd` / `VmaInfo::vm_softdirty` is `is_vma_sd` (the list is
//! not exactly the one region `[vm_start, vm_end)`). The list rules, each at the place of
//! the reference that stands for the kernel path the patch changed:
//! - `clear_refs 4` (`clear_refs_write`): every list becomes `[(vm_start, vm_end)]`;
//! - a split (`__split_vma` → `nsdr_adjust_new_first` / `nsdr_adjust_new_after`, which
//!   both divide at the split address): regions ending at or below it go left, regions
//!   starting at or above it go right, a crossing region is cut in two (`nsdr_divide`);
//! - a new mapping (`vma_init`, `vm_area_alloc`): the empty list;
//! - a new-range merge (`RefSpace::merge_new`, [`Via`]): mmap (6.1 `mmap_region` →
//!   `vma_expand`) merging with both neighbours appends next's list to prev's
//!   (`nsdr_move`); copy_vma and in-place mremap growth (6.1 `vma_merge`) merging with
//!   both neighbours are case 1, where `__vma_adjust` frees next with its list before
//!   `nsdr_adjust_new_first(prev, next)` runs, so next's regions are lost; a merge with
//!   one neighbour keeps that neighbour's list (no list operation in `vma_expand` without
//!   `remove_next`, nor in `vma_merge` cases 2/3); a copy_vma that does not merge clones
//!   the *whole* source VMA's list verbatim, old addresses included (`nsdr_clone`);
//! - an existing-range merge (`RefSpace::modify`, 6.1 `vma_merge` cases 4–8): the
//!   surviving VMA keeps its own list, the lists of removed VMAs are freed with them
//!   (`vm_area_free` → `nsdr_clear`), and a VMA whose boundary moved inward (cases 4, 5)
//!   keeps every region, those now outside it included;
//! - fork (`dup_mmap` → `nsdr_clone`): the child's VMA gets the parent's list verbatim;
//! - DONTNEED and munmap's zap: no list operation.
//! Page-level rules are legacy's.
//!
//! Independence: it is in the library only so that the `softdirty` binary can run it; it
//! takes nothing from the model but plain value types (`Errno`, `Placement`, `VmaInfo`,
//! `Mode`, `Prot`, the scan's `ScanArgs`, `ScanResult` and `Region`) and the seam it
//! implements ([`RefBackend`] is a `softdirty::backend::Backend`: `Backend`, `OpResult`,
//! `Unobservable`), and nothing in the model calls it. `tests/model_vs_reference.rs`
//! checks that its imports stay that way. Not a public API (hidden from the docs).
//!
//! Where the real model has to choose an address itself (a hint mmap the hint of which is
//! not usable, an mremap that moves with MAYMOVE), the caller passes the model's choice
//! in; the reference only checks that it is a free, aligned range and applies it.

#![allow(dead_code, missing_docs)]

use softdirty::backend::{Backend, FileMapping, OpResult, Unobservable};
use softdirty::errno::Errno;
use softdirty::mm::{Advice, MapOpts, Placement, VmaInfo};
use softdirty::mode::Mode;
use softdirty::prot::Prot;
use softdirty::scan::{Region, ScanArgs, ScanResult};
use std::sync::atomic::{AtomicU64, Ordering};

/// Page size.
pub const P: u64 = 4096;
/// x86-64 4-level TASK_SIZE.
pub const TASK_SIZE: u64 = 0x7fff_ffff_f000;
/// `mmap_min_addr` = max(dac_mmap_min_addr, CONFIG_LSM_MMAP_MIN_ADDR): the hint floor.
pub const MMAP_MIN_ADDR: u64 = 0x10000;
/// `vm.mmap_min_addr` (dac): below it MAP_FIXED fails with EPERM for a caller without
/// CAP_SYS_RAWIO (kernel-rules §1.1 step 7, `cap_mmap_addr`).
pub const DAC_MMAP_MIN_ADDR: u64 = 0x1000;

type R<T> = Result<T, Errno>;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh anon_vma / shmem-file identity (only compared for equality).
fn new_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

fn page_align(x: u64) -> Option<u64> {
    x.checked_add(P - 1).map(|v| v & !(P - 1))
}

/// The state of one page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefPage {
    /// Page-level soft-dirty (precise: the whole truth; legacy: the PTE bit).
    pub dirty: bool,
    /// A PTE is present.
    pub present: bool,
    /// The present PTE maps the shared zero page.
    pub zero: bool,
    /// A guard marker (MADV_GUARD_INSTALL): no page, an access fails.
    pub guard: bool,
    /// A private file mapping's page holds a private copy (written), not the file's page.
    pub copy: bool,
}

/// The second half of [`RefVma::file`] for a file of the trace (its size is in the
/// space's [`Files`]); shared anonymous memory's object has its size there instead.
pub const NAMED: u64 = u64::MAX;

/// The trace's files (trace v2), shared by every space: identity → size in bytes.
pub type Files = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<u64, u64>>>;

/// `MAX_LFS_FILESIZE`, the size limit of every file (tmpfs's).
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

/// The VMA flags of trace v2 that take part in merges (besides prot, sharing, account).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extra {
    /// VM_NORESERVE
    pub noreserve: bool,
    /// VM_DONTCOPY
    pub dontcopy: bool,
    /// VM_WIPEONFORK
    pub wipeonfork: bool,
    /// VM_GROWSDOWN (MAP_GROWSDOWN): a stack, which an access just below grows
    pub growsdown: bool,
}

/// `stack_guard_gap`: 256 pages (the default of the `stack_guard_gap=` boot parameter).
pub const STACK_GUARD_GAP: u64 = 256 * P;

/// `RLIMIT_STACK` (`ulimit -s`): 8 MiB.
pub const STACK_RLIMIT: u64 = 8 << 20;

/// One VMA.
#[derive(Clone, Debug)]
pub struct RefVma {
    pub start: u64,
    pub end: u64,
    pub prot: Prot,
    pub shared: bool,
    /// VM_ACCOUNT
    pub account: bool,
    /// VM_SOFTDIRTY
    pub softdirty_flag: bool,
    pub pgoff: u64,
    /// shmem file of shared anonymous memory: its identity and its size in pages (the
    /// length of the mapping that made it; past it an access is SIGBUS)
    pub file: Option<(u64, u64)>,
    /// anon_vma identity, 0 = none
    pub anon: u64,
    /// the anon_vma chain links a parent's anon_vma (fork child)
    pub forked: bool,
    pub pages: Vec<RefPage>,
    /// `regions` only (empty elsewhere): the non-soft-dirty regions `[start, end)`.
    pub nsdr: Vec<(u64, u64)>,
    /// the v2 flags
    pub extra: Extra,
}

impl RefVma {
    /// Does it map a file of the trace (not shared anonymous memory's object)?
    fn named(&self) -> bool {
        self.file.is_some_and(|f| f.1 == NAMED)
    }

    fn npages(&self) -> u64 {
        (self.end - self.start) / P
    }
    /// `vma_had_uncowed_parents`
    fn uncowed(&self) -> bool {
        self.forked && self.anon != 0
    }
    fn contains(&self, a: u64) -> bool {
        self.start <= a && a < self.end
    }
    fn idx(&self, a: u64) -> usize {
        ((a - self.start) / P) as usize
    }
    /// `!is_vma_addr_sd`: some region of the list contains `a`.
    fn nsdr_covers(&self, a: u64) -> bool {
        self.nsdr.iter().any(|&(s, e)| s <= a && a < e)
    }
    /// `is_vma_sd`: the list is not exactly the one region `[vm_start, vm_end)`.
    pub fn is_vma_sd(&self) -> bool {
        self.nsdr != [(self.start, self.end)]
    }
}

/// `__split_vma`'s list division at `mid`: (the lower VMA's list, the upper VMA's list).
/// `nsdr_adjust_new_first(new, vma)` (new below, `mid = vma->vm_start`) and
/// `nsdr_adjust_new_after(new, vma)` (new above, `mid = vma->vm_end`) divide the same way:
/// a region with `start < mid < end` is cut into `[start, mid)` and `[mid, end)`, one with
/// `end <= mid` goes below, every other one (`start >= mid`) above.
fn nsdr_divide(list: &[(u64, u64)], mid: u64) -> (Vec<(u64, u64)>, Vec<(u64, u64)>) {
    let (mut lo, mut hi) = (Vec::new(), Vec::new());
    for &(s, e) in list {
        if s < mid && mid < e {
            lo.push((s, mid));
            hi.push((mid, e));
        } else if e <= mid {
            lo.push((s, e));
        } else {
            hi.push((s, e));
        }
    }
    (lo, hi)
}

/// Which 6.1 path a new-range merge stands for in `regions` (the list rule differs only
/// when both neighbours merge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// `mmap_region` → `vma_expand`: with `remove_next`, `nsdr_move(prev, next)`.
    VmaExpand,
    /// `vma_merge` (copy_vma, in-place mremap growth): case 1 frees next and its list.
    VmaMerge,
}

/// The flags `is_mergeable_vma` compares, plus the file: everything except VM_SOFTDIRTY
/// (and, in `nomerge`, VM_SOFTDIRTY too: `sd` is `Some(flag)` then, `None` otherwise).
fn same_flags(
    a: &RefVma,
    prot: Prot,
    shared: bool,
    account: bool,
    file: Option<(u64, u64)>,
    sd: Option<bool>,
    extra: Extra,
) -> bool {
    a.extra == extra
        && a.prot == prot
        && a.shared == shared
        && a.account == account
        && a.file == file
        && match sd {
            Some(f) => a.softdirty_flag == f,
            None => true,
        }
}

/// `is_mergeable_anon_vma` (6.18, after 879bca0a2c4f): `tgt` is the neighbour,
/// `src_anon` the anon_vma the range brings, `src_uncowed` whether the VMA it comes from
/// (`vmg->middle`, none for new ranges) had uncowed parents.
fn anon_ok(tgt: &RefVma, src_anon: u64, src_uncowed: bool) -> bool {
    if tgt.anon == 0 && src_anon != 0 {
        return !src_uncowed;
    }
    if tgt.anon != 0 && src_anon == 0 {
        return !tgt.uncowed();
    }
    tgt.anon == src_anon
}

/// `dup_anon_vma(dst, src)`: dst takes src's anon_vma (and a clone of its chain) if dst
/// has none.
fn dup_anon(dst: &mut RefVma, src_anon: u64, src_forked: bool) {
    if dst.anon == 0 && src_anon != 0 {
        dst.anon = src_anon;
        dst.forked = src_forked;
    }
}

/// One address space.
#[derive(Clone, Debug)]
pub struct RefSpace {
    pub mode: Mode,
    pub vmas: Vec<RefVma>,
    /// simulated write faults (stores that turned a page from not-sd to sd as reported)
    pub faults: u64,
    /// mm->start_brk once `brk_start` set it (v2)
    pub brk_start: Option<u64>,
    /// mm->brk (0 before `brk_start`)
    pub brk: u64,
    /// a `brk` was called (then `brk_start` is EINVAL)
    pub brk_called: bool,
    /// the trace's files, shared with every other space of the backend
    pub files: Files,
}

impl RefSpace {
    pub fn new(mode: Mode) -> RefSpace {
        assert!(matches!(
            mode,
            Mode::Precise | Mode::Legacy | Mode::Sticky | Mode::Nomerge | Mode::Regions
        ));
        RefSpace {
            mode,
            vmas: Vec::new(),
            faults: 0,
            brk_start: None,
            brk: 0,
            brk_called: false,
            files: Files::default(),
        }
    }

    /// The pages of the file (or shmem object) `v` maps, `None` for anonymous memory.
    fn file_pages(&self, v: &RefVma) -> Option<u64> {
        let (id, n) = v.file?;
        if n != NAMED {
            return Some(n);
        }
        let size = self.files.lock().unwrap().get(&id).copied().unwrap_or(0);
        Some(size.div_ceil(P))
    }

    fn regions(&self) -> bool {
        self.mode == Mode::Regions
    }

    fn precise(&self) -> bool {
        self.mode == Mode::Precise
    }

    /// What a merge decision compares of VM_SOFTDIRTY: in `nomerge` the flag the range
    /// brings must equal the neighbour's; elsewhere it is ignored.
    fn merge_sd(&self, range_flag: bool) -> Option<bool> {
        (self.mode == Mode::Nomerge).then_some(range_flag)
    }

    /// The VM_SOFTDIRTY of a merged VMA. `own` is what the kernel's code leaves on the
    /// surviving struct (≤6.18.36: the target's own flag for a new-range merge, the
    /// modified VMA's new flags after `vm_flags_reset` for an mprotect merge); `parts`
    /// are the flags of everything the merged VMA was made from (the surviving VMA, the
    /// range, the VMAs removed). `sticky` ORs the parts (kernel-semantics §5.3, right
    /// column); every other mode keeps `own` (in `nomerge` the parts are all equal).
    fn flag_rule(&self, own: bool, parts: &[bool]) -> bool {
        match self.mode {
            Mode::Sticky => parts.iter().any(|&f| f),
            _ => own,
        }
    }

    // ------------------------------------------------------------ helpers

    fn find(&self, a: u64) -> Option<usize> {
        self.vmas.iter().position(|v| v.contains(a))
    }

    fn intersects(&self, s: u64, e: u64) -> bool {
        self.vmas.iter().any(|v| v.start < e && s < v.end)
    }

    fn check_sorted(&self) {
        for w in self.vmas.windows(2) {
            assert!(w[0].end <= w[1].start, "reference: VMAs overlap: {:x?}", w);
        }
        for v in &self.vmas {
            assert!(v.start < v.end && v.pages.len() as u64 == v.npages());
        }
    }

    /// `__split_vma` at `a` (strictly inside VMA `i`): both halves keep every flag.
    fn split(&mut self, i: usize, a: u64) {
        let v = &mut self.vmas[i];
        assert!(v.start < a && a < v.end);
        let k = v.idx(a);
        let mut r = v.clone();
        r.pages = v.pages.split_off(k);
        r.start = a;
        r.pgoff = v.pgoff + k as u64;
        v.end = a;
        (v.nsdr, r.nsdr) = nsdr_divide(&v.nsdr, a);
        self.vmas.insert(i + 1, r);
    }

    /// munmap of `[s, e)`: split the edge VMAs, drop everything inside.
    fn unmap(&mut self, s: u64, e: u64) {
        if s >= e {
            return;
        }
        if let Some(i) = self.find(s) {
            if self.vmas[i].start < s {
                self.split(i, s);
            }
        }
        if let Some(i) = self.find(e) {
            if self.vmas[i].start < e {
                self.split(i, e);
            }
        }
        self.vmas.retain(|v| !(v.start < e && s < v.end));
    }

    /// `vma_merge_new_range` for the hole `[new.start, new.end)`, or insertion of `new`.
    /// `new.softdirty_flag` is the flag the range brings (mmap: set; copy_vma: the
    /// source's; in-place grow: the VMA's own). A merged VMA keeps the target's own flags
    /// (VM_SOFTDIRTY: see `RefSpace::flag_rule`). Returns the index of the VMA that now
    /// covers the range.
    ///
    /// `regions`: `new.nsdr` is the list a new VMA would get (mmap: empty; copy_vma: the
    /// source VMA's, cloned). A merge keeps the target's own list, except that with both
    /// neighbours `via` [`Via::VmaExpand`] appends next's list to prev's; the range's own
    /// list matters only when nothing merges.
    fn merge_new(&mut self, new: RefVma, via: Via) -> usize {
        assert!(
            !self.intersects(new.start, new.end),
            "new range must be a hole"
        );
        let i = self
            .vmas
            .iter()
            .position(|v| v.start >= new.end)
            .unwrap_or(self.vmas.len());
        let prev = (i > 0 && self.vmas[i - 1].end == new.start).then(|| i - 1);
        let next = (i < self.vmas.len() && self.vmas[i].start == new.end).then_some(i);
        let sd = self.merge_sd(new.softdirty_flag);
        // vmg->middle is NULL for a new range: src_uncowed = false (6.18, pre-FORKFIX).
        let left = prev.is_some_and(|p| {
            let pv = &self.vmas[p];
            same_flags(
                pv,
                new.prot,
                new.shared,
                new.account,
                new.file,
                sd,
                new.extra,
            ) && anon_ok(pv, new.anon, false)
                && pv.pgoff + pv.npages() == new.pgoff
        });
        let right = next.is_some_and(|n| {
            let nv = &self.vmas[n];
            same_flags(
                nv,
                new.prot,
                new.shared,
                new.account,
                new.file,
                sd,
                new.extra,
            ) && anon_ok(nv, new.anon, false)
                && nv.pgoff == new.pgoff + new.npages()
                && (!left || {
                    let pv = &self.vmas[prev.unwrap()];
                    pv.anon == 0 || nv.anon == 0 || pv.anon == nv.anon
                })
        });
        match (left, right) {
            (true, true) => {
                let p = prev.unwrap();
                let nv = self.vmas.remove(next.unwrap());
                let flag = {
                    let pv = &self.vmas[p];
                    let parts = [pv.softdirty_flag, new.softdirty_flag, nv.softdirty_flag];
                    self.flag_rule(pv.softdirty_flag, &parts)
                };
                let pv = &mut self.vmas[p];
                pv.end = nv.end;
                pv.pages.extend_from_slice(&new.pages);
                pv.pages.extend_from_slice(&nv.pages);
                pv.softdirty_flag = flag;
                if via == Via::VmaExpand {
                    // vma_expand with remove_next: nsdr_move(vma, next).
                    pv.nsdr.extend_from_slice(&nv.nsdr);
                }
                // Via::VmaMerge: case 1 (__vma_adjust frees next, nsdr_clear): next's
                // regions are gone; prev keeps its own.
                // vma_expand: dup_anon_vma(target, next); copy_vma: the source's.
                dup_anon(pv, nv.anon, nv.forked);
                dup_anon(pv, new.anon, new.forked);
                p
            }
            (true, false) => {
                let p = prev.unwrap();
                let flag = {
                    let pv = &self.vmas[p];
                    self.flag_rule(pv.softdirty_flag, &[pv.softdirty_flag, new.softdirty_flag])
                };
                let pv = &mut self.vmas[p];
                pv.end = new.end;
                pv.pages.extend_from_slice(&new.pages);
                pv.softdirty_flag = flag;
                dup_anon(pv, new.anon, new.forked);
                p
            }
            (false, true) => {
                let n = next.unwrap();
                let flag = {
                    let nv = &self.vmas[n];
                    self.flag_rule(nv.softdirty_flag, &[nv.softdirty_flag, new.softdirty_flag])
                };
                let nv = &mut self.vmas[n];
                nv.start = new.start;
                nv.pgoff = new.pgoff;
                let mut pages = new.pages.clone();
                pages.extend_from_slice(&nv.pages);
                nv.pages = pages;
                nv.softdirty_flag = flag;
                dup_anon(nv, new.anon, new.forked);
                n
            }
            (false, false) => {
                self.vmas.insert(i, new);
                i
            }
        }
    }

    /// mprotect_fixup's `vma_modify_flags` on `[s, e)` inside VMA `i`, then
    /// `vm_flags_reset(newflags)`: the resulting VMA takes (prot, account, VM_SOFTDIRTY)
    /// from the modified VMA's new flags; `sd` is that VM_SOFTDIRTY (the modified VMA's
    /// own). In `sticky` a merged VMA ORs in the flags of the neighbours it absorbed or
    /// grew from; in `nomerge` a neighbour whose flag differs from `sd` does not merge.
    ///
    /// `regions` (6.1 `vma_merge` cases 4–8, which the patch leaves alone except for the
    /// use-after-free in cases 1/6): the surviving VMA keeps its own `nsdr`, the removed
    /// VMAs' lists are dropped, and a VMA that only shrinks (cases 4, 5) keeps all its
    /// regions. Nothing below touches `nsdr` except the splits of the no-merge path.
    #[allow(clippy::too_many_arguments)] // the flags vm_flags_reset sets
    fn modify(
        &mut self,
        i: usize,
        s: u64,
        e: u64,
        prot: Prot,
        account: bool,
        sd: bool,
        extra: Extra,
    ) {
        let mid = self.vmas[i].clone();
        let left_side = s == mid.start;
        let right_side = e == mid.end;
        let pgoff = mid.pgoff + (s - mid.start) / P;
        let pglen = (e - s) / P;
        let (ks, ke) = (mid.idx(s), mid.idx(s) + pglen as usize);
        let msd = self.merge_sd(sd);
        if left_side || right_side {
            let prev = (left_side && i > 0 && self.vmas[i - 1].end == s).then(|| i - 1);
            let next = (right_side && i + 1 < self.vmas.len() && self.vmas[i + 1].start == e)
                .then(|| i + 1);
            let ml = prev.is_some_and(|p| {
                let pv = &self.vmas[p];
                same_flags(pv, prot, mid.shared, account, mid.file, msd, extra)
                    && anon_ok(pv, mid.anon, mid.uncowed())
                    && pv.pgoff + pv.npages() == pgoff
            });
            let mr = next.is_some_and(|n| {
                let nv = &self.vmas[n];
                same_flags(nv, prot, mid.shared, account, mid.file, msd, extra)
                    && anon_ok(nv, mid.anon, mid.uncowed())
                    && nv.pgoff == pgoff + pglen
                    && (!ml || {
                        let pv = &self.vmas[prev.unwrap()];
                        pv.anon == 0 || nv.anon == 0 || pv.anon == nv.anon
                    })
            });
            let reset = |v: &mut RefVma, flag: bool| {
                v.prot = prot;
                v.account = account;
                v.softdirty_flag = flag;
                v.extra = extra;
            };
            if ml && mr {
                let (p, n) = (prev.unwrap(), next.unwrap());
                let nv = self.vmas[n].clone();
                let flag =
                    self.flag_rule(sd, &[self.vmas[p].softdirty_flag, sd, nv.softdirty_flag]);
                let pv = &mut self.vmas[p];
                pv.end = nv.end;
                pv.pages.extend_from_slice(&mid.pages);
                pv.pages.extend_from_slice(&nv.pages);
                if nv.anon != 0 {
                    dup_anon(pv, nv.anon, nv.forked);
                } else {
                    dup_anon(pv, mid.anon, mid.forked);
                }
                reset(pv, flag);
                self.vmas.drain(i..=n);
                return;
            }
            if ml {
                let p = prev.unwrap();
                let flag = self.flag_rule(sd, &[self.vmas[p].softdirty_flag, sd]);
                let pv = &mut self.vmas[p];
                pv.end = e;
                pv.pages.extend_from_slice(&mid.pages[ks..ke]);
                dup_anon(pv, mid.anon, mid.forked);
                reset(pv, flag);
                if right_side {
                    self.vmas.remove(i);
                } else {
                    let m = &mut self.vmas[i];
                    m.pages.drain(..ke);
                    m.start = e;
                    m.pgoff += pglen;
                }
                return;
            }
            if mr {
                let n = next.unwrap();
                let flag = self.flag_rule(sd, &[self.vmas[n].softdirty_flag, sd]);
                let nv = &mut self.vmas[n];
                let mut pages = mid.pages[ks..ke].to_vec();
                pages.extend_from_slice(&nv.pages);
                nv.pages = pages;
                nv.start = s;
                nv.pgoff = pgoff;
                dup_anon(nv, mid.anon, mid.forked);
                reset(nv, flag);
                if left_side {
                    self.vmas.remove(i);
                } else {
                    let m = &mut self.vmas[i];
                    m.pages.truncate(ks);
                    m.end = s;
                }
                return;
            }
        }
        // No merge: split off what lies outside [s, e), change the rest.
        let mut j = i;
        if s > mid.start {
            self.split(j, s);
            j += 1;
        }
        if e < self.vmas[j].end {
            self.split(j, e);
        }
        let v = &mut self.vmas[j];
        v.prot = prot;
        v.account = account;
        v.softdirty_flag = sd;
        v.extra = extra;
    }

    /// `find_mergeable_anon_vma`: reuse an adjacent compatible neighbour's anon_vma if its
    /// chain is singular (next first, then prev), else a new one.
    fn anon_for_fault(&self, i: usize) -> u64 {
        let v = &self.vmas[i];
        // anon_vma_compatible(a, b): adjacent, same file, flags equal except access flags
        // and VM_SOFTDIRTY, pgoff linear.
        let compat = |a: &RefVma, b: &RefVma| {
            a.end == b.start
                && a.file == b.file
                && a.shared == b.shared
                && a.account == b.account
                && a.extra == b.extra
                && b.pgoff == a.pgoff + a.npages()
        };
        if let Some(n) = self.vmas.get(i + 1) {
            if compat(v, n) && n.anon != 0 && !n.forked {
                return n.anon;
            }
        }
        if i > 0 {
            let p = &self.vmas[i - 1];
            if compat(p, v) && p.anon != 0 && !p.forked {
                return p.anon;
            }
        }
        new_id()
    }

    /// What pagemap reports for the page at `a` of `v`: the page bit, or the VMA level
    /// (legacy-like modes: VM_SOFTDIRTY; `regions`: no region of the list contains `a`).
    fn reported_sd(&self, v: &RefVma, a: u64) -> bool {
        let vma_level = match self.mode {
            Mode::Precise => false,
            Mode::Regions => !v.nsdr_covers(a),
            _ => v.softdirty_flag,
        };
        vma_level || v.pages[v.idx(a)].dirty
    }

    /// A new anonymous VMA over `[start, end)` (mmap, brk): unpopulated pages, new (dirty
    /// in precise), `VM_SOFTDIRTY` set, VM_ACCOUNT where private, writable and not
    /// noreserve; a shmem file of its own where shared.
    fn fresh_vma(&self, start: u64, end: u64, prot: Prot, shared: bool, extra: Extra) -> RefVma {
        RefVma {
            start,
            end,
            prot,
            shared,
            account: !shared && prot.write && !extra.noreserve,
            softdirty_flag: true,
            pgoff: if shared { 0 } else { start / P },
            file: shared.then(|| (new_id(), (end - start) / P)),
            anon: 0,
            forked: false,
            pages: vec![
                RefPage {
                    dirty: self.precise(),
                    present: false,
                    zero: false,
                    guard: false,
                    copy: false,
                };
                ((end - start) / P) as usize
            ],
            nsdr: Vec::new(),
            extra,
        }
    }

    // ------------------------------------------------------------ operations

    /// `mmap`. For a hint that cannot be used as is, `choose` gives the real model's
    /// choice (checked for being free and in range here).
    #[allow(clippy::too_many_arguments)] // mmap's arguments and the model's choice
    pub fn mmap(
        &mut self,
        addr: u64,
        len: u64,
        prot: Prot,
        shared: bool,
        placement: Placement,
        opts: MapOpts,
        file: Option<(u64, u64)>,
        choose: impl FnOnce() -> Option<u64>,
    ) -> R<u64> {
        let a = self.mmap_region(addr, len, prot, shared, placement, opts, file, choose)?;
        // MAP_POPULATE: mm_populate, errors ignored; a write fault where private and
        // writable, a read fault elsewhere, nothing for PROT_NONE.
        if opts.populate && (prot.read || prot.write || prot.exec) {
            let l = page_align(len).unwrap_or(len);
            let _ = if !shared && prot.write {
                self.write(a, l)
            } else {
                self.read(a, l)
            };
        }
        Ok(a)
    }

    #[allow(clippy::too_many_arguments)]
    fn mmap_region(
        &mut self,
        addr: u64,
        len: u64,
        prot: Prot,
        shared: bool,
        placement: Placement,
        opts: MapOpts,
        file: Option<(u64, u64)>,
        choose: impl FnOnce() -> Option<u64>,
    ) -> R<u64> {
        // mmap(2): the offset must be page-aligned; then the descriptor (fget).
        if let Some((id, offset)) = file {
            if offset % P != 0 {
                return Err(Errno::EINVAL);
            }
            if !self.files.lock().unwrap().contains_key(&id) {
                return Err(Errno::EBADF);
            }
        }
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let fixed = placement != Placement::Hint;
        let mut addr = addr;
        if !fixed {
            addr &= !(P - 1);
            if addr != 0 && addr < MMAP_MIN_ADDR {
                addr = MMAP_MIN_ADDR;
            }
        }
        let len = match page_align(len) {
            Some(l) if l != 0 => l,
            _ => return Err(Errno::ENOMEM),
        };
        if len > TASK_SIZE {
            return Err(Errno::ENOMEM);
        }
        if !fixed {
            let usable = addr != 0
                && addr.checked_add(len).is_some_and(|e| e <= TASK_SIZE)
                && !self.intersects(addr, addr + len);
            if !usable {
                let Some(a) = choose() else {
                    return Err(Errno::ENOMEM);
                };
                assert!(
                    a % P == 0 && a >= MMAP_MIN_ADDR && a <= TASK_SIZE - len,
                    "model chose a bad address {a:#x} for len {len:#x}"
                );
                assert!(
                    !self.intersects(a, a + len),
                    "model chose an occupied range {a:#x}+{len:#x}"
                );
                addr = a;
            }
        }
        if addr > TASK_SIZE - len {
            return Err(Errno::ENOMEM);
        }
        if addr % P != 0 {
            return Err(Errno::EINVAL);
        }
        if fixed && addr < DAC_MMAP_MIN_ADDR {
            return Err(Errno::EPERM);
        }
        let end = addr + len;
        if placement == Placement::NoReplace && self.intersects(addr, end) {
            return Err(Errno::EEXIST);
        }
        if let Some((_, offset)) = file {
            // file_mmap_ok against MAX_LFS_FILESIZE.
            if len > MAX_FILE_SIZE || offset / P > (MAX_FILE_SIZE - len) / P {
                return Err(Errno::EOVERFLOW);
            }
        }
        // do_mmap: shared anonymous memory and files cannot grow down (checked once the
        // address is known).
        if (shared || file.is_some()) && opts.growsdown {
            return Err(Errno::EINVAL);
        }
        self.unmap(addr, end);
        let mut new = self.fresh_vma(
            addr,
            end,
            prot,
            shared,
            Extra {
                noreserve: opts.noreserve,
                growsdown: opts.growsdown,
                ..Extra::default()
            },
        );
        if let Some((id, offset)) = file {
            new.file = Some((id, NAMED));
            new.pgoff = offset / P;
        }
        let i = self.merge_new(new, Via::VmaExpand);
        // "New (or expanded) vma always get soft dirty status": on the merged VMA.
        self.vmas[i].softdirty_flag = true;
        self.check_sorted();
        Ok(addr)
    }

    pub fn munmap(&mut self, addr: u64, len: u64) -> R<()> {
        if addr % P != 0 || addr > TASK_SIZE || len > TASK_SIZE - addr {
            return Err(Errno::EINVAL);
        }
        let len = page_align(len).unwrap();
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        self.unmap(addr, addr + len);
        self.check_sorted();
        Ok(())
    }

    pub fn mprotect(&mut self, addr: u64, len: u64, prot: Prot) -> R<()> {
        if addr % P != 0 {
            return Err(Errno::EINVAL);
        }
        if len == 0 {
            return Ok(());
        }
        let len = page_align(len).ok_or(Errno::ENOMEM)?;
        let end = addr.checked_add(len).ok_or(Errno::ENOMEM)?;
        let first = self.vmas.iter().find(|v| v.end > addr && v.start < end);
        match first {
            None => return Err(Errno::ENOMEM),
            Some(v) if v.start > addr => return Err(Errno::ENOMEM),
            _ => {}
        }
        let mut tmp = addr;
        let r = loop {
            let Some(i) = self.vmas.iter().position(|v| v.end > tmp && v.start < end) else {
                break Ok(());
            };
            // A hole before this VMA (the kernel's `vma->vm_start != tmp`).
            if self.vmas[i].start > tmp {
                break Err(Errno::ENOMEM);
            }
            let v = &self.vmas[i];
            let seg_end = v.end.min(end);
            if v.prot != prot {
                // VM_ACCOUNT gain / loss (mprotect_fixup), after the newflags==oldflags test.
                let mut account = v.account;
                if prot.write {
                    if !(v.account || v.prot.write || v.shared || v.extra.noreserve) {
                        account = true;
                    }
                } else if v.account && v.file.is_none() && v.anon == 0 {
                    // vma_is_anonymous: a file mapping keeps VM_ACCOUNT.
                    account = false;
                }
                let sd = v.softdirty_flag;
                let extra = v.extra;
                self.modify(i, tmp, seg_end, prot, account, sd, extra);
            }
            tmp = seg_end;
            if tmp >= end {
                break Ok(());
            }
        };
        self.check_sorted();
        r?;
        if tmp < end {
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }

    pub fn madvise_dontneed(&mut self, addr: u64, len: u64) -> R<()> {
        if addr % P != 0 {
            return Err(Errno::EINVAL);
        }
        let len = page_align(len).ok_or(Errno::EINVAL)?;
        let end = addr.checked_add(len).ok_or(Errno::EINVAL)?;
        if len == 0 {
            return Ok(());
        }
        let precise = self.precise();
        let mut cursor = addr;
        let mut hole = false;
        for v in self.vmas.iter_mut() {
            if v.end <= addr || v.start >= end {
                continue;
            }
            if v.start > cursor {
                hole = true;
            }
            let s = v.start.max(addr);
            let e = v.end.min(end);
            let (a, b) = (v.idx(s), v.idx(s) + ((e - s) / P) as usize);
            let (named, shared) = (v.named(), v.shared);
            for p in &mut v.pages[a..b] {
                // A guard marker stays (6.18.44).
                if p.guard {
                    continue;
                }
                // precise: the content changes where a private copy (or anonymous
                // memory) is discarded; a file's page comes back as it was.
                let dirty = precise && (!named || (!shared && p.copy) || p.dirty);
                *p = RefPage {
                    dirty,
                    present: false,
                    zero: false,
                    guard: false,
                    copy: false,
                };
            }
            cursor = e;
        }
        if hole || cursor < end {
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }

    pub fn write(&mut self, addr: u64, len: u64) -> R<()> {
        self.fault(addr, len, true)
    }

    pub fn read(&mut self, addr: u64, len: u64) -> R<()> {
        self.fault(addr, len, false)
    }

    fn fault(&mut self, addr: u64, len: u64, write: bool) -> R<()> {
        if len == 0 {
            return Ok(());
        }
        let last = addr.checked_add(len - 1).unwrap_or(u64::MAX) & !(P - 1);
        let mut page = addr & !(P - 1);
        loop {
            let Some(i) = self.find(page).or_else(|| self.grow_stack(page)) else {
                return Err(Errno::EFAULT);
            };
            let v = &self.vmas[i];
            let prot = v.prot;
            if !(prot.read || prot.write || prot.exec) || (write && !prot.write) {
                return Err(Errno::EFAULT);
            }
            // A guard marker faults before anything (handle_pte_marker: no anon_vma).
            if v.pages[v.idx(page)].guard {
                return Err(Errno::EFAULT);
            }
            if write && !v.shared && v.anon == 0 {
                let a = self.anon_for_fault(i);
                self.vmas[i].anon = a;
                self.vmas[i].forked = false;
            }
            // Past the end of the file or shmem object: SIGBUS (a private write has
            // prepared its anon_vma first, as do_cow_fault does).
            let v = &self.vmas[i];
            if self
                .file_pages(v)
                .is_some_and(|n| v.pgoff + (page - v.start) / P >= n)
            {
                return Err(Errno::EFAULT);
            }
            let v = &self.vmas[i];
            let k = v.idx(page);
            let before = self.reported_sd(v, page);
            let shared = v.shared;
            let named = v.named();
            let pg = &mut self.vmas[i].pages[k];
            if write {
                *pg = RefPage {
                    dirty: true,
                    present: true,
                    zero: false,
                    guard: false,
                    // a private mapping of a file gets a private copy
                    copy: named && !shared,
                };
                if !before {
                    self.faults += 1;
                }
            } else if !pg.present {
                // private anonymous memory maps the zero page, a file mapping the file's
                pg.present = true;
                pg.zero = !shared && !named;
            }
            if page == last {
                return Ok(());
            }
            page += P;
        }
    }

    /// An access to the unmapped `page`: if the VMA above it grows down and the limits
    /// allow (`expand_downwards`: the stack at most `RLIMIT_STACK` long, its new start not
    /// within the guard gap of the VMA below unless that one grows down too or is
    /// inaccessible), it now starts at `page` and its index is returned. The new pages
    /// are unpopulated, new (dirty in precise); VM_SOFTDIRTY and the region list stay;
    /// the VMA gets an anon_vma (`anon_vma_prepare`).
    fn grow_stack(&mut self, page: u64) -> Option<usize> {
        let i = self.vmas.iter().position(|v| v.start > page)?;
        let v = &self.vmas[i];
        if !v.extra.growsdown || v.end - page > STACK_RLIMIT || page < DAC_MMAP_MIN_ADDR {
            return None;
        }
        if let Some(prev) = i.checked_sub(1).map(|k| &self.vmas[k]) {
            let accessible = prev.prot.read || prev.prot.write || prev.prot.exec;
            if !prev.extra.growsdown && accessible && page - prev.end < STACK_GUARD_GAP {
                return None;
            }
        }
        let grow = ((v.start - page) / P) as usize;
        let fresh = RefPage {
            dirty: self.precise(),
            present: false,
            zero: false,
            guard: false,
            copy: false,
        };
        if self.vmas[i].anon == 0 {
            let a = self.anon_for_fault(i);
            self.vmas[i].anon = a;
            self.vmas[i].forked = false;
        }
        let v = &mut self.vmas[i];
        v.pages.splice(0..0, std::iter::repeat_n(fresh, grow));
        v.start = page;
        v.pgoff = v.pgoff.wrapping_sub(grow as u64);
        Some(i)
    }

    /// Precise: the pages `[first, end)` of the file `f` changed (a store through another
    /// mapping, a `write(2)`): every mapping of them here shows it, a shared one on every
    /// page, a private one where the page is not a private copy (or a guard marker);
    /// `skip(addr)` leaves out the storing mapping's own pages.
    fn file_pages_changed(
        &mut self,
        f: (u64, u64),
        first: u64,
        end: u64,
        skip: &dyn Fn(u64) -> bool,
    ) {
        if !self.precise() {
            return;
        }
        for v in &mut self.vmas {
            if v.file != Some(f) {
                continue;
            }
            let (a, b) = (v.pgoff.max(first), (v.pgoff + v.npages()).min(end));
            for pg in a..b {
                let at = v.start + (pg - v.pgoff) * P;
                if skip(at) {
                    continue;
                }
                let i = v.idx(at);
                let p = &mut v.pages[i];
                if v.shared || !(p.copy || p.guard) {
                    p.dirty = true;
                }
            }
        }
    }

    /// The size of the file `id` went from `old` to `new` bytes (`ftruncate`): a shrink
    /// removes the pages wholly past the new end from every mapping here, private copies
    /// included (soft-dirty in precise, clean elsewhere; guard markers stay); in precise
    /// the pages between the two ends (the partial one included) changed.
    fn file_changed(&mut self, id: u64, old: u64, new: u64) {
        let precise = self.precise();
        let cut = new.div_ceil(P);
        let (lo, hi) = (old.min(new) / P, old.max(new).div_ceil(P));
        for v in &mut self.vmas {
            if v.file != Some((id, NAMED)) {
                continue;
            }
            let (a, b) = (v.pgoff, v.pgoff + v.npages());
            if new < old {
                for pg in a.max(cut)..b.min(hi) {
                    let i = (pg - a) as usize;
                    if !v.pages[i].guard {
                        v.pages[i] = RefPage {
                            dirty: precise,
                            ..RefPage::default()
                        };
                    }
                }
            }
        }
        self.file_pages_changed((id, NAMED), lo, hi, &|_| false);
    }

    pub fn clear_refs(&mut self, value: i32) -> R<()> {
        match value {
            1 | 2 | 3 | 5 => Ok(()),
            4 => {
                let regions = self.regions();
                for v in &mut self.vmas {
                    v.softdirty_flag = false;
                    for p in &mut v.pages {
                        p.dirty = false;
                    }
                    if regions {
                        v.nsdr = vec![(v.start, v.end)];
                    }
                }
                if self.mode == Mode::Nomerge {
                    self.nomerge_after_clear();
                }
                Ok(())
            }
            _ => Err(Errno::EINVAL),
        }
    }

    /// `nomerge`'s second rule (Hildenbrand: "try merging VMAs in clear_refs_write() when
    /// clearing VM_SOFTDIRTY ... merge the modified VMA into the previous one or into the
    /// next one -- or ... all of them into a single VMA"): with every flag now clear, any
    /// two adjacent VMAs that the kernel's merge predicates accept are joined. Walked
    /// left to right; a VMA that absorbed its right neighbour is tried again against the
    /// next one, so a whole compatible run becomes one VMA.
    ///
    /// The predicates are those of an existing-range merge of the right VMA (`b`, the
    /// "middle") into the left one (`a`, the target): `is_mergeable_vma` (all flags,
    /// VM_SOFTDIRTY included, equal; the same file), pgoff linearity, and
    /// `is_mergeable_anon_vma` with `b` as the source VMA. (Taking `a` as the middle
    /// merging right into `b` gives the same answer: both directions reduce to "the
    /// anon_vmas are equal, or one side has none and the side that has one is not a fork
    /// child with uncowed parents".) The surviving VMA takes `b`'s anon_vma if it had
    /// none (`dup_anon_vma`).
    fn nomerge_after_clear(&mut self) {
        let mut i = 0;
        while i + 1 < self.vmas.len() {
            let (a, b) = (&self.vmas[i], &self.vmas[i + 1]);
            let join = a.end == b.start
                && same_flags(
                    a,
                    b.prot,
                    b.shared,
                    b.account,
                    b.file,
                    Some(b.softdirty_flag),
                    b.extra,
                )
                && a.pgoff + a.npages() == b.pgoff
                && anon_ok(a, b.anon, b.uncowed());
            if !join {
                i += 1;
                continue;
            }
            let b = self.vmas.remove(i + 1);
            let a = &mut self.vmas[i];
            a.end = b.end;
            a.pages.extend_from_slice(&b.pages);
            dup_anon(a, b.anon, b.forked);
        }
    }

    /// `scan START END mask=softdirty return=softdirty [clear]` (PAGEMAP_SCAN; with
    /// `clear`, PM_SCAN_WP_MATCHING as the spec defines it for the model): the maximal runs
    /// of pages in `[start, end)` that report soft-dirty, adjacent runs of neighbouring VMAs
    /// joined (no limit on regions or pages), as absolute `(start, end)` addresses; with
    /// `clear` the page-level bits of the reported pages are then cleared (VMA-level
    /// dirtiness stays: a flagged VMA in the flag modes, pages outside every region in
    /// `regions`, keep reporting). `start` and `end` are page-aligned.
    pub fn scan_softdirty(&mut self, start: u64, end: u64, clear: bool) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut hits: Vec<(usize, usize)> = Vec::new();
        for (vi, v) in self.vmas.iter().enumerate() {
            if v.start >= end || v.end <= start {
                continue;
            }
            let mut a = v.start.max(start);
            while a < v.end.min(end) {
                if self.reported_sd(v, a) {
                    hits.push((vi, ((a - v.start) / P) as usize));
                    match out.last_mut() {
                        Some(l) if l.1 == a => l.1 = a + P,
                        _ => out.push((a, a + P)),
                    }
                }
                a += P;
            }
        }
        if clear {
            for (vi, i) in hits {
                self.vmas[vi].pages[i].dirty = false;
            }
        }
        out
    }

    /// `madvise` with a v2 advice (`dontneed` as v1). Linux 6.18: the walk applies the
    /// advice VMA by VMA; a hole is ENOMEM at the end (populate: at once); a VMA the
    /// advice refuses is EINVAL at once.
    pub fn madvise(&mut self, addr: u64, len: u64, advice: Advice) -> R<()> {
        if advice == Advice::DontNeed {
            return self.madvise_dontneed(addr, len);
        }
        if addr % P != 0 {
            return Err(Errno::EINVAL);
        }
        let len = page_align(len).ok_or(Errno::EINVAL)?;
        let end = addr.checked_add(len).ok_or(Errno::EINVAL)?;
        if len == 0 {
            return Ok(());
        }
        let mut cursor = addr;
        let mut hole = false;
        while cursor < end {
            let Some(i) = self
                .vmas
                .iter()
                .position(|v| v.end > cursor && v.start < end)
            else {
                break;
            };
            if self.vmas[i].start > cursor {
                if matches!(advice, Advice::PopulateRead | Advice::PopulateWrite) {
                    return Err(Errno::ENOMEM);
                }
                hole = true;
                cursor = self.vmas[i].start;
            }
            let v = self.vmas[i].clone();
            let seg_end = v.end.min(end);
            match advice {
                Advice::DontNeed => unreachable!(),
                Advice::Free => {
                    if v.shared || v.named() {
                        return Err(Errno::EINVAL);
                    }
                }
                Advice::PopulateRead | Advice::PopulateWrite => {
                    let write = advice == Advice::PopulateWrite;
                    let ok = if write {
                        v.prot.write
                    } else {
                        v.prot.read || v.prot.write || v.prot.exec
                    };
                    if !ok {
                        return Err(Errno::EINVAL);
                    }
                    self.fault(cursor, seg_end - cursor, write)?;
                }
                Advice::GuardInstall | Advice::GuardRemove => {
                    let precise = self.precise();
                    let install = advice == Advice::GuardInstall;
                    // madvise_guard_install: anon_vma_prepare (measured on 6.18.44: a
                    // guarded private VMA keeps VM_ACCOUNT through mprotect r).
                    if install && !v.shared && v.anon == 0 {
                        let a = self.anon_for_fault(i);
                        self.vmas[i].anon = a;
                        self.vmas[i].forked = false;
                    }
                    let (a, b) = (
                        v.idx(cursor),
                        v.idx(cursor) + ((seg_end - cursor) / P) as usize,
                    );
                    for p in &mut self.vmas[i].pages[a..b] {
                        if install {
                            *p = RefPage {
                                // precise: a marker already there keeps its state.
                                dirty: precise && (!p.guard || p.dirty),
                                present: false,
                                zero: false,
                                guard: true,
                                copy: false,
                            };
                        } else if p.guard {
                            *p = RefPage {
                                dirty: precise,
                                present: false,
                                zero: false,
                                guard: false,
                                copy: false,
                            };
                        }
                    }
                }
                Advice::DontFork | Advice::DoFork | Advice::WipeOnFork | Advice::KeepOnFork => {
                    let mut x = v.extra;
                    match advice {
                        Advice::DontFork => x.dontcopy = true,
                        Advice::DoFork => x.dontcopy = false,
                        Advice::WipeOnFork => {
                            if v.shared || v.named() {
                                self.check_sorted();
                                return Err(Errno::EINVAL);
                            }
                            x.wipeonfork = true
                        }
                        _ => x.wipeonfork = false,
                    }
                    if x != v.extra {
                        self.modify(i, cursor, seg_end, v.prot, v.account, v.softdirty_flag, x);
                    }
                }
            }
            cursor = seg_end;
        }
        self.check_sorted();
        if hole || cursor < end {
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }

    /// `brk_start` (v2): page-aligned, below TASK_SIZE, once, before any `brk`.
    pub fn brk_start(&mut self, addr: u64) -> R<()> {
        if addr % P != 0 || addr >= TASK_SIZE || self.brk_start.is_some() || self.brk_called {
            return Err(Errno::EINVAL);
        }
        self.brk_start = Some(addr);
        self.brk = addr;
        Ok(())
    }

    /// `brk` (v2), as Linux 6.18's brk(2): ENOMEM wherever the break stays.
    pub fn brk(&mut self, addr: u64) -> R<u64> {
        self.brk_called = true;
        let Some(start) = self.brk_start else {
            return Err(Errno::ENOMEM);
        };
        if addr < start {
            return Err(Errno::ENOMEM);
        }
        let newbrk = page_align(addr).ok_or(Errno::ENOMEM)?;
        let oldbrk = page_align(self.brk).ok_or(Errno::ENOMEM)?;
        if addr <= self.brk {
            if newbrk != oldbrk {
                // Shrink: something must be mapped in [newbrk, oldbrk).
                if !self.intersects(newbrk, oldbrk) {
                    return Err(Errno::ENOMEM);
                }
                self.unmap(newbrk, oldbrk);
                self.check_sorted();
            }
            self.brk = addr;
            return Ok(addr);
        }
        if newbrk == oldbrk {
            self.brk = addr;
            return Ok(addr);
        }
        if newbrk > TASK_SIZE || oldbrk < DAC_MMAP_MIN_ADDR {
            return Err(Errno::ENOMEM);
        }
        // The first VMA at or above the old break must start a page above newbrk, or
        // above its guard gap if it is a stack (vm_start_gap).
        if let Some(next) = self
            .vmas
            .iter()
            .find(|v| v.end > oldbrk && v.start < newbrk + P + STACK_GUARD_GAP)
        {
            let start_gap = if next.extra.growsdown {
                next.start.saturating_sub(STACK_GUARD_GAP)
            } else {
                next.start
            };
            if newbrk + P > start_gap {
                return Err(Errno::ENOMEM);
            }
        }
        let mut new = self.fresh_vma(oldbrk, newbrk, Prot::RW, false, Extra::default());
        new.softdirty_flag = self.mode == Mode::Nomerge;
        // Only a VMA that reaches above start_brk is the heap do_brk_flags may expand.
        let i = if oldbrk > start {
            self.merge_new(new, Via::VmaExpand)
        } else {
            let at = self
                .vmas
                .iter()
                .position(|v| v.start >= newbrk)
                .unwrap_or(self.vmas.len());
            self.vmas.insert(at, new);
            at
        };
        if !self.regions() {
            self.vmas[i].softdirty_flag = true;
        }
        self.check_sorted();
        self.brk = addr;
        Ok(addr)
    }

    pub fn fork(&self) -> RefSpace {
        let precise = self.precise();
        let vmas = self
            .vmas
            .iter()
            .filter(|v| !v.extra.dontcopy)
            .map(|v| {
                let mut c = v.clone();
                if v.extra.wipeonfork {
                    // An empty VMA: no anon_vma, nothing populated; the content was
                    // wiped (soft-dirty in precise).
                    c.anon = 0;
                    c.forked = false;
                    for p in &mut c.pages {
                        *p = RefPage {
                            dirty: precise,
                            present: false,
                            zero: false,
                            guard: false,
                            copy: false,
                        };
                    }
                } else if !v.shared && v.anon != 0 {
                    // PTEs copied (soft-dirty kept); a new anon_vma whose chain links ours.
                    c.anon = new_id();
                    c.forked = true;
                    // A guard marker is copied as a fresh one (make_pte_marker): no
                    // soft-dirty bit; precise copies the state.
                    for p in c.pages.iter_mut().filter(|p| p.guard) {
                        p.dirty &= precise;
                    }
                } else {
                    // No PTEs copied: unpopulated; legacy loses the PTE bits with them,
                    // precise copies the state.
                    c.anon = 0;
                    c.forked = false;
                    for p in &mut c.pages {
                        *p = RefPage {
                            dirty: precise && p.dirty,
                            present: false,
                            zero: false,
                            // fork copies guard markers (6.18.44)
                            guard: p.guard,
                            copy: false,
                        };
                    }
                }
                c
            })
            .collect();
        RefSpace {
            mode: self.mode,
            vmas,
            faults: 0,
            brk_start: self.brk_start,
            brk: self.brk,
            brk_called: self.brk_called,
            files: self.files.clone(),
        }
    }

    /// `mremap`. `choose` gives the real model's destination for a MAYMOVE move that is
    /// not in place (checked here for being free).
    pub fn mremap(
        &mut self,
        addr: u64,
        old_len: u64,
        new_len: u64,
        maymove: bool,
        fixed: Option<u64>,
        choose: impl FnOnce() -> Option<u64>,
    ) -> R<u64> {
        let r = self.mremap_inner(addr, old_len, new_len, maymove, fixed, choose);
        self.check_sorted();
        r
    }

    fn mremap_inner(
        &mut self,
        addr: u64,
        old_len: u64,
        new_len: u64,
        maymove: bool,
        fixed: Option<u64>,
        choose: impl FnOnce() -> Option<u64>,
    ) -> R<u64> {
        // check_mremap_params (6.18 aligns both lengths first).
        if addr % P != 0 {
            return Err(Errno::EINVAL);
        }
        let old_len = page_align(old_len).expect("generator keeps old_len small");
        let new_len = page_align(new_len).unwrap_or(0);
        if new_len == 0 || new_len > TASK_SIZE {
            return Err(Errno::EINVAL);
        }
        if let Some(na) = fixed {
            if na > TASK_SIZE - new_len || na % P != 0 || !maymove {
                return Err(Errno::EINVAL);
            }
            // vrm_overlaps (the old range's end saturates: a range that wraps overlaps
            // nothing below the top, and then no VMA is found at ADDR)
            if addr < na + new_len && na < addr.saturating_add(old_len) {
                return Err(Errno::EINVAL);
            }
            if old_len == new_len {
                return self.remap_move(addr, old_len, na);
            }
        }
        // check_prep_vma
        let Some(i) = self.find(addr) else {
            return Err(Errno::EFAULT);
        };
        let shrink = new_len < old_len;
        let expand = new_len > old_len;
        if fixed.is_none() && !expand {
            if shrink {
                self.unmap(addr + new_len, addr + old_len);
            }
            return Ok(addr);
        }
        if old_len == 0 {
            // Private: EINVAL. Shared ("duplicate the mapping") is not modelled by the real
            // model either, which refuses it with EINVAL.
            return Err(Errno::EINVAL);
        }
        let chk = if shrink { new_len } else { old_len };
        let v_end = self.vmas[i].end;
        if chk > v_end - addr {
            return Err(Errno::EFAULT);
        }
        if let Some(na) = fixed {
            // mremap_to: unmap the destination, then shrink, then move.
            self.unmap(na, na + new_len);
            if self.find(addr).is_none() {
                return Err(Errno::EFAULT);
            }
            let mut old_len = old_len;
            if shrink {
                self.unmap(addr + new_len, addr + old_len);
                old_len = new_len;
            }
            self.move_range(addr, old_len, na, new_len);
            return Ok(na);
        }
        // Expand, no FIXED.
        let delta = new_len - old_len;
        if v_end - addr == old_len
            && v_end.checked_add(delta).is_some_and(|e| e <= TASK_SIZE)
            && !self.intersects(v_end, v_end + delta)
        {
            // vma_merge_extend: a new-range merge with the VMA as prev (it keeps its
            // flags); a compatible next VMA reached by the growth is swallowed too
            // (checked on 6.18.44 with a C probe).
            let precise = self.precise();
            let v = &self.vmas[i];
            let mut ext = v.clone();
            ext.start = v_end;
            ext.end = v_end + delta;
            ext.pgoff = v.pgoff + v.npages();
            ext.pages = vec![
                RefPage {
                    dirty: precise,
                    present: false,
                    zero: false,
                    guard: false,
                    copy: false,
                };
                (delta / P) as usize
            ];
            // Always merges with the VMA itself (case 2), or with it and next (case 1).
            ext.nsdr = Vec::new();
            self.merge_new(ext, Via::VmaMerge);
            return Ok(addr);
        }
        if !maymove {
            return Err(Errno::ENOMEM);
        }
        let Some(na) = choose() else {
            return Err(Errno::ENOMEM);
        };
        assert!(
            na % P == 0 && na >= MMAP_MIN_ADDR && na <= TASK_SIZE - new_len,
            "model moved to a bad address {na:#x}"
        );
        assert!(
            !self.intersects(na, na + new_len),
            "model moved onto an occupied range {na:#x}+{new_len:#x}"
        );
        self.move_range(addr, old_len, na, new_len);
        Ok(na)
    }

    /// `remap_move` (6.17+): same-size MREMAP_FIXED of every VMA piece in the range,
    /// gaps preserved, each piece moved on its own.
    fn remap_move(&mut self, addr: u64, len: u64, na: u64) -> R<u64> {
        let end = addr.saturating_add(len);
        if self.find(addr).is_none() {
            return Err(Errno::EFAULT);
        }
        let pieces: Vec<(u64, u64)> = self
            .vmas
            .iter()
            .filter(|v| v.start < end && v.end > addr)
            .map(|v| (v.start.max(addr), v.end.min(end)))
            .collect();
        for (s, e) in pieces {
            let t = na + (s - addr);
            self.unmap(t, t + (e - s));
            self.move_range(s, e - s, t, e - s);
        }
        Ok(na)
    }

    /// `move_vma`: `[addr, addr+old_len)` (inside one VMA) to the hole
    /// `[na, na+new_len)`: copy_vma (merge at the destination), move the PTEs (each moved
    /// present PTE soft-dirty), unmap the source.
    fn move_range(&mut self, addr: u64, old_len: u64, na: u64, new_len: u64) {
        let i = self.find(addr).expect("move source");
        let v = &self.vmas[i];
        assert!(addr + old_len <= v.end);
        let precise = self.precise();
        let k = v.idx(addr);
        let mut pages: Vec<RefPage> = v.pages[k..k + (old_len / P) as usize]
            .iter()
            .map(|p| RefPage {
                // precise: the destination of a move is soft-dirty; legacy:
                // move_soft_dirty_pte on every moved present PTE and swap-type entry
                // (a guard marker).
                dirty: precise || p.dirty || p.present || p.guard,
                present: p.present,
                zero: p.zero,
                guard: p.guard,
                copy: p.copy,
            })
            .collect();
        pages.extend(vec![
            RefPage {
                dirty: precise,
                present: false,
                zero: false,
                guard: false,
                copy: false,
            };
            ((new_len - old_len) / P) as usize
        ]);
        let pgoff = if v.file.is_none() && v.anon == 0 {
            na / P
        } else {
            v.pgoff + k as u64
        };
        let new = RefVma {
            start: na,
            end: na + new_len,
            pgoff,
            pages,
            ..v.clone()
        };
        // copy_vma: vma_merge at the destination, else vm_area_dup + nsdr_clone of the
        // whole source VMA's list (`new.nsdr` is `v`'s, from the struct copy above).
        self.merge_new(new, Via::VmaMerge);
        self.unmap(addr, addr + old_len);
    }

    // ------------------------------------------------------------ observation

    pub fn vma_infos(&self) -> Vec<VmaInfo> {
        self.vmas
            .iter()
            .map(|v| VmaInfo {
                start: v.start,
                end: v.end,
                prot: v.prot.to_string(),
                shared: v.shared,
                vm_softdirty: if self.regions() {
                    v.is_vma_sd()
                } else {
                    v.softdirty_flag
                },
                faulted: v.anon != 0,
                file: v.named(),
            })
            .collect()
    }

    /// (soft-dirty, present, zero page, shared) of the page at `a`, None outside VMAs.
    pub fn page_info(&self, a: u64) -> Option<(bool, bool, bool, bool)> {
        let v = &self.vmas[self.find(a)?];
        let p = &v.pages[v.idx(a)];
        Some((
            self.reported_sd(v, a),
            p.present,
            p.present && p.zero,
            v.shared || (v.named() && !p.copy),
        ))
    }

    /// Is the page at `a` a guard marker?
    pub fn guard_at(&self, a: u64) -> bool {
        self.find(a).is_some_and(|i| {
            let v = &self.vmas[i];
            v.pages[v.idx(a)].guard
        })
    }

    /// The pagemap entry (bits 55, 56, 61, 63).
    pub fn pagemap_entry(&self, a: u64) -> u64 {
        let Some((sd, present, zero, shared)) = self.page_info(a & !(P - 1)) else {
            return 0;
        };
        let mut e = 0u64;
        if sd {
            e |= 1 << 55;
        }
        if self.guard_at(a & !(P - 1)) {
            // a swap-type entry (bit 62) that is a guard marker (bit 58)
            e |= 1 << 62 | 1 << 58;
        }
        if present {
            e |= 1 << 63;
            if shared {
                e |= 1 << 61;
            }
            if !zero {
                e |= 1 << 56;
            }
        }
        e
    }

    fn runs(
        &self,
        addr: u64,
        len: u64,
        pred: impl Fn((bool, bool, bool, bool)) -> bool,
    ) -> Vec<std::ops::Range<u64>> {
        let base = addr & !(P - 1);
        let end = base + (len + (addr - base)).div_ceil(P) * P;
        let mut out: Vec<std::ops::Range<u64>> = Vec::new();
        for v in self.vmas.iter().filter(|v| v.start < end && v.end > base) {
            let mut a = v.start.max(base);
            while a < v.end.min(end) {
                let p = &v.pages[v.idx(a)];
                let info = (
                    self.reported_sd(v, a),
                    p.present,
                    p.present && p.zero,
                    v.shared,
                );
                if pred(info) {
                    let k = (a - base) / P;
                    match out.last_mut() {
                        Some(l) if l.end == k => l.end = k + 1,
                        _ => out.push(k..k + 1),
                    }
                }
                a += P;
            }
        }
        out
    }

    pub fn softdirty_runs(&self, addr: u64, len: u64) -> Vec<std::ops::Range<u64>> {
        self.runs(addr, len, |i| i.0)
    }

    pub fn present_runs(&self, addr: u64, len: u64) -> Vec<std::ops::Range<u64>> {
        self.runs(addr, len, |i| i.1)
    }

    /// `regions`: the number of regions over every VMA's list (0 in other modes).
    pub fn region_count(&self) -> usize {
        self.vmas.iter().map(|v| v.nsdr.len()).sum()
    }
}

// ------------------------------------------------------------------ as a backend

/// PAGE_IS_SOFT_DIRTY (uapi `linux/fs.h`): the one category the reference scans for.
const PAGE_IS_SOFT_DIRTY: u64 = 1 << 7;

/// What a write to /proc/PID/clear_refs is (fs/proc/task_mmu.c, `clear_refs_write`): at
/// most 12 bytes are copied (`PROC_NUMBUF - 1`), stripped of white space, and read by
/// `kstrtoint(.., 10, ..)`: an optional sign and decimal digits; EINVAL for anything
/// else, ERANGE outside `i32`.
fn clear_refs_value(value: &str) -> R<i32> {
    let b = &value.as_bytes()[..value.len().min(12)];
    let s = std::str::from_utf8(b).map_err(|_| Errno::EINVAL)?.trim();
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return Err(Errno::EINVAL);
    }
    let v: i128 = digits.parse().map_err(|_| Errno::ERANGE)?;
    i32::try_from(if neg { -v } else { v }).map_err(|_| Errno::ERANGE)
}

/// The reference as a [`Backend`]: named spaces (`space`, `fork`), each a [`RefSpace`],
/// and the current one (`main` at first). What it does not model it cannot perform
/// (`Err` with the reason): `smaps`, scans other than `mask=softdirty return=softdirty
/// [clear]` over a page-aligned range, and an mmap hint or MAYMOVE mremap that needs an
/// address chosen, unless the caller passed the real model's choice first
/// ([`RefBackend::follow`]).
#[derive(Clone, Debug)]
pub struct RefBackend {
    mode: Mode,
    spaces: Vec<(String, RefSpace)>,
    current: usize,
    /// The real model's result for the next mmap or mremap (`Some(None)`: it failed),
    /// used where the reference would have to choose an address; taken by that operation.
    choice: Option<Option<u64>>,
    /// The trace's files: name → (identity, memfd), and their sizes (every space's).
    names: std::collections::HashMap<String, (u64, bool)>,
    files: Files,
}

/// `MAX_RW_COUNT`: the most one `write(2)` transfers.
const MAX_RW_COUNT: u64 = (i32::MAX as u64) & !(P - 1);

impl RefBackend {
    /// One empty space `main` in `mode`.
    pub fn new(mode: Mode) -> RefBackend {
        let files = Files::default();
        let mut main = RefSpace::new(mode);
        main.files = files.clone();
        RefBackend {
            mode,
            spaces: vec![("main".to_string(), main)],
            current: 0,
            choice: None,
            names: Default::default(),
            files,
        }
    }

    /// `ftruncate` of the file `id` to `size` bytes, in every space.
    fn set_size(&mut self, id: u64, size: u64) -> R<()> {
        if size > MAX_FILE_SIZE {
            return Err(Errno::EINVAL);
        }
        let old = self.files.lock().unwrap().insert(id, size).unwrap_or(0);
        if old != size {
            for (_, sp) in &mut self.spaces {
                sp.file_changed(id, old, size);
            }
        }
        Ok(())
    }

    /// The current space.
    pub fn current(&self) -> &RefSpace {
        &self.spaces[self.current].1
    }

    fn cur(&mut self) -> &mut RefSpace {
        &mut self.spaces[self.current].1
    }

    /// The space called `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<&RefSpace> {
        self.spaces.iter().find(|s| s.0 == name).map(|s| &s.1)
    }

    /// Precise: a store to `[addr, addr + len)` of the current space changed the shmem
    /// pages it reached (up to the first page a store faults on); every other mapping of
    /// those pages, in any space, shows the new content: soft-dirty there, populated or
    /// not.
    fn shared_store(&mut self, addr: u64, len: u64) {
        if self.mode != Mode::Precise || len == 0 {
            return;
        }
        let mut hit: Vec<((u64, u64), u64)> = Vec::new(); // (file, page of the file)
        let mut own: Vec<u64> = Vec::new(); // addresses of the storing mapping
        let last = addr.checked_add(len - 1).unwrap_or(u64::MAX) & !(P - 1);
        let mut a = addr & !(P - 1);
        let cur = self.current();
        loop {
            let Some(v) = cur.vmas.iter().find(|v| v.start <= a && a < v.end) else {
                break;
            };
            // The store faults on a page it cannot write, or a guard marker.
            if !v.prot.write || v.pages[v.idx(a)].guard {
                break;
            }
            if let Some(f) = v.file {
                let pg = v.pgoff + (a - v.start) / P;
                if pg >= cur.file_pages(v).unwrap_or(0) {
                    // The store faults there (SIGBUS), in a private mapping too.
                    break;
                }
                if v.shared {
                    hit.push((f, pg));
                    own.push(a);
                }
            }
            if a == last {
                break;
            }
            a += P;
        }
        let current = self.current;
        for (si, (_, sp)) in self.spaces.iter_mut().enumerate() {
            let skip = |at: u64| si == current && own.contains(&at);
            for &(hf, hp) in &hit {
                sp.file_pages_changed(hf, hp, hp + 1, &skip);
            }
        }
    }

    /// Passes the real model's result of the next mmap or mremap (its address, `None` if
    /// it failed): where the reference has to choose an address it takes this one,
    /// after checking that it is a free, aligned range.
    pub fn follow(&mut self, model: Option<u64>) {
        self.choice = Some(model);
    }

    /// Runs `f` on the current space with a chooser made of [`Self::follow`]'s value;
    /// `Err` if `f` needed an address and no one gave one.
    fn choosing<T>(
        &mut self,
        f: impl FnOnce(&mut RefSpace, &mut dyn FnMut() -> Option<u64>) -> T,
    ) -> Result<T, String> {
        let given = self.choice.take();
        let mut needed = false;
        let r = f(&mut self.spaces[self.current].1, &mut || {
            needed = true;
            given.flatten()
        });
        if needed && given.is_none() {
            return Err(
                "the reference cannot choose an address (it follows the model's choice)".into(),
            );
        }
        Ok(r)
    }
}

impl Backend for RefBackend {
    fn name(&self) -> String {
        format!("reference ({})", self.mode)
    }
    fn space(&mut self, name: &str) -> Result<(), String> {
        self.current = match self.spaces.iter().position(|s| s.0 == name) {
            Some(i) => i,
            None => {
                let mut sp = RefSpace::new(self.mode);
                sp.files = self.files.clone();
                self.spaces.push((name.to_string(), sp));
                self.spaces.len() - 1
            }
        };
        Ok(())
    }
    fn fork(&mut self, child: &str) -> OpResult<()> {
        if self.get(child).is_some() {
            return Ok(Err(Errno::EEXIST));
        }
        let c = self.current().fork();
        self.spaces.push((child.to_string(), c));
        Ok(Ok(()))
    }
    fn mmap(
        &mut self,
        addr: u64,
        len: u64,
        prot: Prot,
        shared: bool,
        placement: Placement,
    ) -> OpResult<u64> {
        self.mmap_with(addr, len, prot, shared, placement, MapOpts::default())
    }
    fn mmap_with(
        &mut self,
        addr: u64,
        len: u64,
        prot: Prot,
        shared: bool,
        placement: Placement,
        opts: MapOpts,
    ) -> OpResult<u64> {
        self.choosing(|r, choose| r.mmap(addr, len, prot, shared, placement, opts, None, choose))
    }
    fn madvise(&mut self, addr: u64, len: u64, advice: Advice) -> OpResult<()> {
        let r = self.cur().madvise(addr, len, advice);
        if advice == Advice::PopulateWrite {
            self.shared_store(addr, len);
        }
        Ok(r)
    }
    fn brk_start(&mut self, addr: u64) -> OpResult<()> {
        Ok(self.cur().brk_start(addr))
    }
    fn brk(&mut self, addr: u64) -> OpResult<u64> {
        Ok(self.cur().brk(addr))
    }
    fn current_brk(&mut self) -> Result<u64, Unobservable> {
        Ok(self.current().brk)
    }
    fn munmap(&mut self, addr: u64, len: u64) -> OpResult<()> {
        Ok(self.cur().munmap(addr, len))
    }
    fn mprotect(&mut self, addr: u64, len: u64, prot: Prot) -> OpResult<()> {
        Ok(self.cur().mprotect(addr, len, prot))
    }
    fn mremap(
        &mut self,
        addr: u64,
        old_len: u64,
        new_len: u64,
        maymove: bool,
        fixed: Option<u64>,
    ) -> OpResult<u64> {
        self.choosing(|r, choose| r.mremap(addr, old_len, new_len, maymove, fixed, choose))
    }
    fn madvise_dontneed(&mut self, addr: u64, len: u64) -> OpResult<()> {
        Ok(self.cur().madvise_dontneed(addr, len))
    }
    fn file(&mut self, name: &str, memfd: bool, size: u64) -> OpResult<()> {
        let id = match self.names.get(name) {
            Some(&(id, m)) if m == memfd => id,
            Some(_) => return Ok(Err(Errno::EINVAL)),
            None => {
                let id = new_id();
                self.names.insert(name.to_string(), (id, memfd));
                self.files.lock().unwrap().insert(id, 0);
                id
            }
        };
        Ok(self.set_size(id, size))
    }
    fn fwrite(&mut self, name: &str, offset: u64, len: u64) -> OpResult<()> {
        let Some(&(id, _)) = self.names.get(name) else {
            return Ok(Err(Errno::EBADF));
        };
        // rw_verify_area, then one write(2)'s worth, then the size limit.
        if offset > MAX_FILE_SIZE || offset.checked_add(len).is_none_or(|e| e > MAX_FILE_SIZE) {
            return Ok(Err(Errno::EINVAL));
        }
        let len = len.min(MAX_RW_COUNT);
        if len == 0 {
            return Ok(Ok(()));
        }
        if offset >= MAX_FILE_SIZE {
            return Ok(Err(Errno::EFBIG));
        }
        let end = offset + len.min(MAX_FILE_SIZE - offset);
        let size = self.files.lock().unwrap().get(&id).copied().unwrap_or(0);
        if end > size {
            if let Err(e) = self.set_size(id, end) {
                return Ok(Err(e));
            }
        }
        let (first, last) = (offset / P, end.div_ceil(P));
        for (_, sp) in &mut self.spaces {
            sp.file_pages_changed((id, NAMED), first, last, &|_| false);
        }
        Ok(Ok(()))
    }
    fn mmap_file(&mut self, m: &FileMapping) -> OpResult<u64> {
        let id = self.names.get(&m.name).map_or(u64::MAX, |f| f.0);
        let (addr, len, prot, shared, placement, opts, offset) = (
            m.addr,
            m.len,
            m.prot,
            m.shared,
            m.placement,
            m.opts,
            m.offset,
        );
        self.choosing(|r, choose| {
            r.mmap(
                addr,
                len,
                prot,
                shared,
                placement,
                opts,
                Some((id, offset)),
                choose,
            )
        })
    }
    fn write(&mut self, addr: u64, len: u64) -> OpResult<()> {
        let r = self.cur().write(addr, len);
        self.shared_store(addr, len);
        Ok(r)
    }
    fn read(&mut self, addr: u64, len: u64) -> OpResult<()> {
        Ok(self.cur().read(addr, len))
    }
    fn clear_refs(&mut self, value: &str) -> OpResult<()> {
        Ok(clear_refs_value(value).and_then(|v| self.cur().clear_refs(v)))
    }
    fn pagemap(
        &mut self,
        start: u64,
        pages: u64,
        f: &mut dyn FnMut(u64, u64),
    ) -> Result<(), String> {
        for i in 0..pages {
            let p = start + i * P;
            f(p, self.current().pagemap_entry(p));
        }
        Ok(())
    }
    fn scan(&mut self, args: &ScanArgs) -> OpResult<ScanResult> {
        let modelled = args.mask == PAGE_IS_SOFT_DIRTY
            && args.ret == PAGE_IS_SOFT_DIRTY
            && args.anyof == 0
            && args.inverted == 0
            && args.max_pages == 0
            && args.start % P == 0
            && args.end % P == 0
            && args.start <= args.end
            && args.end <= TASK_SIZE;
        if !modelled {
            return Err(format!(
                "the reference models only `scan START LEN mask=softdirty return=softdirty \
                 [clear]` over a page-aligned range in user space, not {args:?}"
            ));
        }
        let runs = self.cur().scan_softdirty(args.start, args.end, args.clear);
        if runs.len() as u64 > args.vec_len {
            return Err(format!(
                "the reference does not model a scan that fills its vector ({} regions, \
                 vec_len {})",
                runs.len(),
                args.vec_len
            ));
        }
        Ok(Ok(ScanResult {
            regions: runs
                .into_iter()
                .map(|(start, end)| Region {
                    start,
                    end,
                    categories: PAGE_IS_SOFT_DIRTY,
                })
                .collect(),
            walk_end: args.end,
        }))
    }
    fn smaps_vmflags(&mut self, _addr: u64) -> Result<Option<String>, String> {
        Err("the reference does not model smaps".into())
    }
    fn softdirty_runs(
        &mut self,
        addr: u64,
        len: u64,
    ) -> Result<Vec<std::ops::Range<u64>>, Unobservable> {
        Ok(self.current().softdirty_runs(addr, len))
    }
    fn present_runs(
        &mut self,
        addr: u64,
        len: u64,
    ) -> Result<Vec<std::ops::Range<u64>>, Unobservable> {
        Ok(self.current().present_runs(addr, len))
    }
    fn vma_count(&mut self, addr: u64, len: u64) -> Result<u64, Unobservable> {
        let end = addr.saturating_add(len);
        Ok(self
            .current()
            .vmas
            .iter()
            .filter(|v| v.start < end && v.end > addr)
            .count() as u64)
    }
    fn faults(&mut self) -> Result<u64, Unobservable> {
        Ok(self.current().faults)
    }
}
