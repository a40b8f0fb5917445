//! The VMA layout editor: split, unmap and merge exactly as Linux 6.18 does for anonymous
//! memory, on a private working copy, then publish.
//!
//! A structural operation runs under the address space's control lock:
//! 1. [`Layout::from_index`] opens an empty window onto the published index, and
//!    [`Layout::load`] copies the VMAs of the ranges the operation touches (and their
//!    abutting neighbours) into working descriptors ([`WVma`]). Each descriptor says where
//!    its page state comes from: a list of [`Piece`]s, each either a slice of a
//!    *published* VMA's bitmap ([`Src::Old`]) or fresh pages ([`Src::Fresh`]).
//! 2. The operation edits the layout with the kernel's primitives: [`Layout::split`],
//!    [`Layout::unmap`], [`Layout::merge_new_range`] (`vma_merge_new_range`: mmap, copy_vma,
//!    mremap expand) and [`Layout::modify`] (`vma_merge_existing_range` or split: mprotect).
//!    Bits never move during editing; only descriptors do.
//! 3. `Layout::build` (in `commit.rs`, with the rest of the commit) builds the new VMAs:
//!    a descriptor that is exactly one unchanged published VMA is reused; one that is a
//!    whole published bitmap with new flags shares that bitmap; anything else gets a new
//!    bitmap copied from its pieces. The new index is the base with the loaded VMAs
//!    replaced by the window's (`VmaIndex::edited`). It publishes it, then seals and drains
//!    every bitmap that was copied (`PageBitmap::seal_and_drain`, `bitmap/drain.rs`).
//!
//! Which `VM_SOFTDIRTY` a merged VMA gets is the mode's policy ([`Mode`]): the target's
//! own flag, the modified VMA's (`vm_flags_reset` after mprotect), or the OR of all of them
//! (`sticky`). In `nomerge` the flag is compared like any other flag.

use crate::accounting::Accounting;
use crate::bitmap::CopyRule;
use crate::errno::{Errno, Result};
use crate::index::VmaIndex;
use crate::linux::{MAX_MAP_COUNT, PAGE_SHIFT};
use crate::mode::Mode;
use crate::regions::NonSdRegions;
use crate::sync::Arc;
use crate::vma::{Vma, VmaMeta};

/// Where a piece of a VMA-to-be gets its page state.
#[derive(Clone, Debug)]
pub(crate) enum Src {
    /// From a published VMA's bitmap, starting at its page `page`, transformed by `rule`.
    Old {
        /// the published VMA
        vma: Arc<Vma>,
        /// first page in its bitmap
        page: u64,
        /// how the state is transformed on the way
        rule: CopyRule,
    },
    /// New pages, none populated: soft-dirty at the page level (`dirty`) or clean.
    Fresh {
        /// page-level soft-dirty
        dirty: bool,
    },
}

/// A contiguous part of a [`WVma`] with one source.
#[derive(Clone, Debug)]
pub(crate) struct Piece {
    /// first address
    pub start: u64,
    /// end address (exclusive)
    pub end: u64,
    /// where its state comes from
    pub src: Src,
}

/// A VMA being edited.
#[derive(Clone, Debug)]
pub(crate) struct WVma {
    /// first address
    pub start: u64,
    /// end address (exclusive)
    pub end: u64,
    /// flags, pgoff, file
    pub meta: VmaMeta,
    /// anon_vma identity (0: none)
    pub anon: u64,
    /// page-state sources, in address order, covering `[start, end)`
    pub pieces: Vec<Piece>,
    /// `regions` mode: the RFC's non-soft-dirty region list (empty in other modes)
    pub nsdr: NonSdRegions,
}

impl WVma {
    /// Pages covered.
    pub(crate) fn pages(&self) -> u64 {
        (self.end - self.start) >> PAGE_SHIFT
    }

    fn had_uncowed_parents(&self) -> bool {
        self.meta.forked && self.anon != 0
    }

    /// The pieces covering `[start, end)` (within this VMA).
    pub(crate) fn cut(&self, start: u64, end: u64) -> Vec<Piece> {
        cut_pieces(&self.pieces, start, end)
    }
}

/// The pieces of `pieces` within `[start, end)`, trimmed.
pub(crate) fn cut_pieces(pieces: &[Piece], start: u64, end: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    for p in pieces {
        let s = p.start.max(start);
        let e = p.end.min(end);
        if s >= e {
            continue;
        }
        let src = match &p.src {
            Src::Old { vma, page, rule } => Src::Old {
                vma: vma.clone(),
                page: page + ((s - p.start) >> PAGE_SHIFT),
                rule: *rule,
            },
            f @ Src::Fresh { .. } => f.clone(),
        };
        out.push(Piece {
            start: s,
            end: e,
            src,
        });
    }
    out
}

/// Moves pieces by `delta` bytes (an mremap), applying `rule` to what they carry.
pub(crate) fn move_pieces(pieces: Vec<Piece>, new_start: u64, rule: CopyRule) -> Vec<Piece> {
    let base = pieces.first().map(|p| p.start).unwrap_or(new_start);
    pieces
        .into_iter()
        .map(|p| {
            let src = match p.src {
                Src::Old { vma, page, rule: r } => Src::Old {
                    vma,
                    page,
                    rule: compose(r, rule),
                },
                Src::Fresh { dirty } => Src::Fresh {
                    dirty: dirty || rule == CopyRule::AllDirty,
                },
            };
            Piece {
                start: p.start - base + new_start,
                end: p.end - base + new_start,
                src,
            }
        })
        .collect()
}

fn compose(a: CopyRule, b: CopyRule) -> CopyRule {
    use CopyRule::*;
    match (a, b) {
        (AllDirty, _) | (_, AllDirty) => AllDirty,
        (DirtyPopulated, _) | (_, DirtyPopulated) => DirtyPopulated,
        _ => Plain,
    }
}

/// The working layout of one address space: a window onto the published index.
///
/// Only the VMAs an operation touches are copied into working descriptors: an operation
/// [`load`](Layout::load)s the address ranges it will edit (with the VMAs abutting them,
/// its merge neighbours) before it looks anything up, and [`Layout::build`] publishes the
/// base index with the loaded VMAs replaced by the window's. Everything else stays in the
/// shared persistent index untouched, so an operation costs O(k log V) for the k VMAs it
/// loads, not O(V).
#[derive(Debug)]
pub(crate) struct Layout {
    /// the mode's policies
    pub mode: Mode,
    /// the loaded VMAs, as edited, sorted; every address range an operation edits has been
    /// loaded, so a neighbour that is not here does not abut what is edited
    pub vmas: Vec<WVma>,
    /// the published index this layout started from
    pub(super) base: VmaIndex,
    /// the published VMAs loaded into the window (each once), which the new index replaces
    pub(super) origin: Vec<Arc<Vma>>,
    /// the start addresses of `origin` (a published VMA is loaded at most once)
    loaded: std::collections::HashSet<u64>,
    /// the published VMAs whose `anon_vma` cell this layout froze ([`Vma::freeze_anon`]):
    /// thawed when the layout is dropped unpublished, or by [`Built::thaw`] for those
    /// that survive its publication
    pub(super) frozen: Vec<Arc<Vma>>,
    /// the accounts of the address space (new bitmaps count in them)
    pub(super) accounting: std::sync::Arc<Accounting>,
    /// has an edit been made? (the gap search reads the base index, so it must run first)
    pub(super) edited: bool,
}

impl Drop for Layout {
    fn drop(&mut self) {
        // Not published (or `build` took the list): nothing was decided.
        for v in self.frozen.drain(..) {
            v.thaw_anon();
        }
    }
}

/// Which code path of the RFC's kernel (6.1) a new-range merge stands for. It decides,
/// in `regions` mode only, what happens to the region list of a next VMA that the merge
/// absorbs together with the previous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NewRange {
    /// `mmap_region` → `vma_expand`, which the patch gives `nsdr_move(vma, next)`: next's
    /// regions are kept.
    Mmap,
    /// `vma_merge` (copy_vma at an mremap destination, an mremap in-place growth): case 1
    /// frees next, and with it its regions (the patch's `nsdr_adjust_new_first(prev,
    /// next)` then runs on freed memory; the model takes it as doing nothing).
    VmaMerge,
}

/// How a merge decides the resulting `VM_SOFTDIRTY`.
#[derive(Clone, Copy, Debug)]
enum FlagRule {
    /// The target keeps its own flags (new-range merges, copy_vma).
    Target,
    /// The caller resets the flags to these (mprotect's `vm_flags_reset(newflags)`).
    Reset(bool),
}

impl Layout {
    /// An empty window onto the published index `index`.
    pub(crate) fn from_index(
        mode: Mode,
        index: &VmaIndex,
        accounting: &std::sync::Arc<Accounting>,
    ) -> Layout {
        Layout {
            mode,
            vmas: Vec::new(),
            base: index.clone(),
            origin: Vec::new(),
            loaded: std::collections::HashSet::new(),
            frozen: Vec::new(),
            accounting: accounting.clone(),
            edited: false,
        }
    }

    /// Loads every published VMA that intersects `[start, end)` or abuts it (ends at
    /// `start` or begins at `end`) into the window, unless it is there already. Call it
    /// before looking up or editing anything in the range.
    ///
    /// Every loaded VMA's `anon_vma` is read with [`Vma::freeze_anon`]: no first write
    /// assigns one until the layout is published or dropped. VMAs that are not loaded are
    /// not replaced, so a first write may assign theirs meanwhile.
    pub(crate) fn load(&mut self, start: u64, end: u64) {
        let lo = start.saturating_sub(1);
        let hi = end.saturating_add(1);
        let fresh: Vec<Arc<Vma>> = self
            .base
            .range(lo, hi)
            .filter(|v| !self.loaded.contains(&v.start))
            .cloned()
            .collect();
        for v in fresh {
            self.loaded.insert(v.start);
            let (anon, froze) = v.freeze_anon();
            if froze {
                self.frozen.push(v.clone());
            }
            let w = WVma {
                start: v.start,
                end: v.end,
                meta: v.meta,
                anon,
                pieces: vec![Piece {
                    start: v.start,
                    end: v.end,
                    src: Src::Old {
                        vma: v.clone(),
                        page: 0,
                        rule: CopyRule::Plain,
                    },
                }],
                nsdr: v.nsdr.clone(),
            };
            // Edits happen only in loaded ranges, so a published VMA that was never loaded
            // overlaps no working one.
            let at = self.find_from(w.start);
            debug_assert!(at >= self.vmas.len() || self.vmas[at].start >= w.end);
            self.vmas.insert(at, w);
            self.origin.push(v);
        }
    }

    /// Loads the whole space (clear_refs).
    pub(crate) fn load_all(&mut self) {
        self.load(0, u64::MAX);
    }

    /// The number of VMAs the space would have if published now.
    pub(crate) fn count(&self) -> usize {
        self.base.len() - self.origin.len() + self.vmas.len()
    }

    /// Index of the VMA containing `addr`.
    pub(crate) fn find(&self, addr: u64) -> Option<usize> {
        let i = self.vmas.partition_point(|v| v.end <= addr);
        (i < self.vmas.len() && self.vmas[i].start <= addr).then_some(i)
    }

    /// Index of the first VMA ending above `addr`.
    pub(crate) fn find_from(&self, addr: u64) -> usize {
        self.vmas.partition_point(|v| v.end <= addr)
    }

    /// Does any VMA intersect `[start, end)`?
    pub(crate) fn intersects(&self, start: u64, end: u64) -> bool {
        let i = self.find_from(start);
        i < self.vmas.len() && self.vmas[i].start < end
    }

    /// `__split_vma`: splits VMA `i` at `addr` (strictly inside). Both halves keep every
    /// flag, including `VM_SOFTDIRTY`, and the anon_vma.
    pub(crate) fn split(&mut self, i: usize, addr: u64) {
        let v = &self.vmas[i];
        debug_assert!(v.start < addr && addr < v.end && addr % crate::linux::PAGE_SIZE == 0);
        let mut right = v.clone();
        right.start = addr;
        right.meta.pgoff = v.meta.pgoff + ((addr - v.start) >> PAGE_SHIFT);
        right.pieces = v.cut(addr, v.end);
        let left = &mut self.vmas[i];
        left.pieces = left.cut(left.start, addr);
        left.end = addr;
        right.nsdr = left.nsdr.split_off(addr);
        self.vmas.insert(i + 1, right);
        self.edited = true;
    }

    /// `split_vma` with its map-count limit.
    fn split_checked(&mut self, i: usize, addr: u64) -> Result<()> {
        if self.count() >= MAX_MAP_COUNT {
            return Err(Errno::ENOMEM);
        }
        self.split(i, addr);
        Ok(())
    }

    /// `do_vmi_munmap` of `[start, end)`: splits the edge VMAs and removes what is inside.
    /// Unmapping strictly inside one VMA at the map-count limit fails with ENOMEM; other
    /// splits may go one over the limit, as in the kernel.
    pub(crate) fn unmap(&mut self, start: u64, end: u64) -> Result<()> {
        self.load(start, end);
        let i = self.find_from(start);
        if i >= self.vmas.len() || self.vmas[i].start >= end {
            return Ok(());
        }
        if self.vmas[i].start < start && end < self.vmas[i].end && self.count() >= MAX_MAP_COUNT {
            return Err(Errno::ENOMEM);
        }
        if self.vmas[i].start < start {
            self.split(i, start);
        }
        let first = self.find_from(start);
        let mut last = first;
        while last < self.vmas.len() && self.vmas[last].start < end {
            if self.vmas[last].end > end {
                self.split(last, end);
            }
            last += 1;
        }
        self.vmas.drain(first..last);
        self.edited = true;
        Ok(())
    }

    /// Are two VMAs' flags compatible for a merge (`is_mergeable_vma`)?
    fn flags_mergeable(&self, a: &VmaMeta, b: &VmaMeta) -> bool {
        a.flags.prot == b.flags.prot
            && a.flags.shared == b.flags.shared
            && a.flags.account == b.flags.account
            && a.flags.noreserve == b.flags.noreserve
            && a.flags.dontcopy == b.flags.dontcopy
            && a.flags.wipeonfork == b.flags.wipeonfork
            && a.flags.growsdown == b.flags.growsdown
            && a.file == b.file
            && (!self.mode.flag_blocks_merge() || a.flags.softdirty == b.flags.softdirty)
    }

    /// `is_mergeable_anon_vma` of Linux 6.18 (after "mm/vma: fix incorrectly disallowed
    /// anonymous VMA merges"): `tgt` is the neighbour, `src_anon` the anon_vma of the range
    /// being merged and `src` the VMA it comes from (none for a new range or copy_vma).
    fn anon_mergeable(tgt: &WVma, src_anon: u64, src: Option<&WVma>) -> bool {
        if tgt.anon == 0 && src_anon != 0 {
            return !src.is_some_and(|s| s.had_uncowed_parents());
        }
        if tgt.anon != 0 && src_anon == 0 {
            return !tgt.had_uncowed_parents();
        }
        src_anon == tgt.anon
    }

    fn merged_softdirty(&self, target: bool, others: &[bool], rule: FlagRule) -> bool {
        match (self.mode, rule) {
            (Mode::Sticky, FlagRule::Reset(r)) => r || target || others.iter().any(|&b| b),
            (Mode::Sticky, FlagRule::Target) => target || others.iter().any(|&b| b),
            (_, FlagRule::Reset(r)) => r,
            (_, FlagRule::Target) => target,
        }
    }

    /// `vma_merge_new_range` (and, failing a merge, inserting a new VMA) for the hole
    /// `[start, end)`: mmap, copy_vma (mremap destination). `anon` is the anon_vma the
    /// range brings (copy_vma). Returns the index of the VMA now covering the range.
    ///
    /// `nsdr` is the region list a VMA inserted without merging gets (`regions` mode:
    /// empty for mmap, the source VMA's list cloned verbatim for copy_vma), and `origin`
    /// which of the RFC's code paths the merge stands for ([`NewRange`]).
    #[allow(clippy::too_many_arguments)] // the kernel's vma_merge_new_range inputs, plus the RFC's two
    pub(crate) fn merge_new_range(
        &mut self,
        start: u64,
        end: u64,
        meta: VmaMeta,
        anon: u64,
        pieces: Vec<Piece>,
        nsdr: NonSdRegions,
        origin: NewRange,
    ) -> usize {
        self.load(start, end);
        self.edited = true;
        let i = self.find_from(start);
        debug_assert!(
            i >= self.vmas.len() || self.vmas[i].start >= end,
            "range must be a hole"
        );
        let pglen = (end - start) >> PAGE_SHIFT;
        let new = WVma {
            start,
            end,
            meta,
            anon,
            pieces,
            nsdr,
        };
        let prev = (i > 0 && self.vmas[i - 1].end == start).then(|| i - 1);
        let next = (i < self.vmas.len() && self.vmas[i].start == end).then_some(i);
        let left = prev.is_some_and(|p| {
            let pv = &self.vmas[p];
            self.flags_mergeable(&pv.meta, &meta)
                && Self::anon_mergeable(pv, anon, None)
                && pv.meta.pgoff + pv.pages() == meta.pgoff
        });
        let right = next.is_some_and(|n| {
            let nv = &self.vmas[n];
            self.flags_mergeable(&nv.meta, &meta)
                && Self::anon_mergeable(nv, anon, None)
                && nv.meta.pgoff == meta.pgoff + pglen
                && (!left || {
                    let pv = &self.vmas[prev.unwrap_or(0)];
                    pv.anon == 0 || nv.anon == 0 || pv.anon == nv.anon
                })
        });
        match (left, right) {
            (true, true) => {
                let (p, n) = (prev.unwrap_or(0), next.unwrap_or(0));
                let nv = self.vmas.remove(n);
                let sd = {
                    let pv = &self.vmas[p];
                    self.merged_softdirty(
                        pv.meta.flags.softdirty,
                        &[meta.flags.softdirty, nv.meta.flags.softdirty],
                        FlagRule::Target,
                    )
                };
                let pv = &mut self.vmas[p];
                pv.end = nv.end;
                pv.pieces.extend(new.pieces);
                pv.pieces.extend(nv.pieces);
                if origin == NewRange::Mmap {
                    // `vma_expand(prev, .., next)` with `remove_next`: `nsdr_move`. On the
                    // `vma_merge` path (case 1) next's list is freed with it.
                    pv.nsdr.append(nv.nsdr);
                }
                if pv.anon == 0 {
                    // dup_anon_vma: the target takes the anon_vma (and its chain, so the
                    // fork-child state) of the VMA it absorbs.
                    let (a, f) = if nv.anon != 0 {
                        (nv.anon, nv.meta.forked)
                    } else {
                        (anon, meta.forked)
                    };
                    pv.anon = a;
                    pv.meta.forked = f;
                }
                pv.meta.flags.softdirty = sd;
                p
            }
            (true, false) => {
                let p = prev.unwrap_or(0);
                let sd = self.merged_softdirty(
                    self.vmas[p].meta.flags.softdirty,
                    &[meta.flags.softdirty],
                    FlagRule::Target,
                );
                let pv = &mut self.vmas[p];
                pv.end = end;
                pv.pieces.extend(new.pieces);
                if pv.anon == 0 && anon != 0 {
                    pv.anon = anon;
                    pv.meta.forked = meta.forked;
                }
                pv.meta.flags.softdirty = sd;
                p
            }
            (false, true) => {
                let n = next.unwrap_or(0);
                let sd = self.merged_softdirty(
                    self.vmas[n].meta.flags.softdirty,
                    &[meta.flags.softdirty],
                    FlagRule::Target,
                );
                let nv = &mut self.vmas[n];
                nv.start = start;
                nv.meta.pgoff = meta.pgoff;
                let mut pieces = new.pieces;
                pieces.append(&mut nv.pieces);
                nv.pieces = pieces;
                if nv.anon == 0 && anon != 0 {
                    nv.anon = anon;
                    nv.meta.forked = meta.forked;
                }
                nv.meta.flags.softdirty = sd;
                n
            }
            (false, false) => {
                self.vmas.insert(i, new);
                i
            }
        }
    }

    /// A new VMA `w` in the hole it covers, merged with nothing (brk's growth when the VMA
    /// below the old break is not part of the heap). Returns its index.
    pub(crate) fn insert_unmerged(&mut self, w: WVma) -> usize {
        self.load(w.start, w.end);
        self.edited = true;
        let i = self.find_from(w.start);
        debug_assert!(
            i >= self.vmas.len() || self.vmas[i].start >= w.end,
            "range must be a hole"
        );
        self.vmas.insert(i, w);
        i
    }

    /// mprotect's `vma_modify_flags` on `[start, end)` inside VMA `i`, then
    /// `vm_flags_reset(new)`: merge with a neighbour when the range touches an edge and the
    /// flags and anon_vmas allow it (`vma_merge_existing_range`), otherwise split.
    ///
    /// The caller has loaded `[start, end)`.
    pub(crate) fn modify(&mut self, i: usize, start: u64, end: u64, new: VmaMeta) -> Result<()> {
        self.edited = true;
        let mid = self.vmas[i].clone();
        let left_side = start == mid.start;
        let right_side = end == mid.end;
        let pgoff = mid.meta.pgoff + ((start - mid.start) >> PAGE_SHIFT);
        let pglen = (end - start) >> PAGE_SHIFT;
        let mut newm = new;
        newm.pgoff = pgoff;
        if left_side || right_side {
            let prev = (left_side && i > 0 && self.vmas[i - 1].end == start).then(|| i - 1);
            let next = (right_side && i + 1 < self.vmas.len() && self.vmas[i + 1].start == end)
                .then_some(i + 1);
            let merge_left = prev.is_some_and(|p| {
                let pv = &self.vmas[p];
                self.flags_mergeable(&pv.meta, &newm)
                    && Self::anon_mergeable(pv, mid.anon, Some(&mid))
                    && pv.meta.pgoff + pv.pages() == pgoff
            });
            let merge_right = next.is_some_and(|n| {
                let nv = &self.vmas[n];
                self.flags_mergeable(&nv.meta, &newm)
                    && Self::anon_mergeable(nv, mid.anon, Some(&mid))
                    && nv.meta.pgoff == pgoff + pglen
                    && (!merge_left || {
                        let pv = &self.vmas[prev.unwrap_or(0)];
                        pv.anon == 0 || nv.anon == 0 || pv.anon == nv.anon
                    })
            });
            let reset = FlagRule::Reset(new.flags.softdirty);
            if merge_left && merge_right {
                let (p, n) = (prev.unwrap_or(0), next.unwrap_or(0));
                let nv = self.vmas[n].clone();
                let sd = self.merged_softdirty(
                    self.vmas[p].meta.flags.softdirty,
                    &[mid.meta.flags.softdirty, nv.meta.flags.softdirty],
                    reset,
                );
                let pv = &mut self.vmas[p];
                pv.end = nv.end;
                pv.pieces.extend(mid.cut(start, end));
                pv.pieces.extend(nv.pieces.iter().cloned());
                if pv.anon == 0 {
                    let (a, f) = if nv.anon != 0 {
                        (nv.anon, nv.meta.forked)
                    } else {
                        (mid.anon, mid.meta.forked)
                    };
                    pv.anon = a;
                    pv.meta.forked = f;
                }
                let pgoff_p = pv.meta.pgoff;
                pv.meta = VmaMeta {
                    pgoff: pgoff_p,
                    forked: pv.meta.forked,
                    ..newm
                };
                pv.meta.flags.softdirty = sd;
                self.vmas.drain(i..=n);
                return Ok(());
            }
            if merge_left {
                let p = prev.unwrap_or(0);
                let sd = self.merged_softdirty(
                    self.vmas[p].meta.flags.softdirty,
                    &[mid.meta.flags.softdirty],
                    reset,
                );
                let pv = &mut self.vmas[p];
                pv.end = end;
                pv.pieces.extend(mid.cut(start, end));
                if pv.anon == 0 {
                    pv.anon = mid.anon;
                    pv.meta.forked = mid.meta.forked;
                }
                let (pgoff_p, forked) = (pv.meta.pgoff, pv.meta.forked);
                pv.meta = VmaMeta {
                    pgoff: pgoff_p,
                    forked,
                    ..newm
                };
                pv.meta.flags.softdirty = sd;
                if right_side {
                    self.vmas.remove(i);
                } else {
                    let m = &mut self.vmas[i];
                    m.pieces = m.cut(end, m.end);
                    m.meta.pgoff += (end - m.start) >> PAGE_SHIFT;
                    m.start = end;
                }
                return Ok(());
            }
            if merge_right {
                let n = next.unwrap_or(0);
                let sd = self.merged_softdirty(
                    self.vmas[n].meta.flags.softdirty,
                    &[mid.meta.flags.softdirty],
                    reset,
                );
                let nv = &mut self.vmas[n];
                let mut pieces = mid.cut(start, end);
                pieces.append(&mut nv.pieces);
                nv.pieces = pieces;
                nv.start = start;
                if nv.anon == 0 {
                    nv.anon = mid.anon;
                    nv.meta.forked = mid.meta.forked;
                }
                let forked = nv.meta.forked;
                nv.meta = VmaMeta {
                    pgoff,
                    forked,
                    ..newm
                };
                nv.meta.flags.softdirty = sd;
                if left_side {
                    self.vmas.remove(i);
                } else {
                    let m = &mut self.vmas[i];
                    m.pieces = m.cut(m.start, start);
                    m.end = start;
                }
                return Ok(());
            }
        }
        // No merge: split off what is outside the range.
        let mut j = i;
        if start > mid.start {
            self.split_checked(j, start)?;
            j += 1;
        }
        if end < self.vmas[j].end {
            self.split_checked(j, end)?;
        }
        let v = &mut self.vmas[j];
        let forked = v.meta.forked;
        v.meta = VmaMeta {
            pgoff: v.meta.pgoff,
            forked,
            ..new
        };
        Ok(())
    }
}
