//! The 2022 RFC's per-VMA list of non-soft-dirty regions (`regions` mode).
//!
//! "[PATCH RFC] mm: implement granular soft-dirty vma support"
//! (`../shared/reference/seed-lkml-thread.txt`) removes `VM_SOFTDIRTY` and gives every
//! VMA a `list_head non_sd_reg` of `struct non_sd_reg { start, end }`: the address ranges
//! that are *not* soft-dirty at the VMA level. A page reports soft-dirty iff its PTE's
//! soft-dirty bit is set or no region of its VMA's list contains it
//! (`is_vma_addr_sd`). [`NonSdRegions`] is that list, in the list's order, with the
//! patch's operations and nothing more:
//!
//! | patch | here | called from (`Layout`, `AddressSpace`) |
//! |---|---|---|
//! | `clear_refs_write` (one entry `[vm_start, vm_end)`) | [`NonSdRegions::whole`] | `clear_refs 4` |
//! | `nsdr_adjust_new_first` / `nsdr_adjust_new_after` | [`NonSdRegions::split_off`] | `Layout::split` (`__split_vma`) |
//! | `nsdr_move(vma, next)` | [`NonSdRegions::append`] | mmap's merge with both neighbours (`vma_expand`) |
//! | `nsdr_clone` | `Clone` | fork (`dup_mmap`), an mremap move that does not merge (`copy_vma`) |
//! | `is_vma_addr_sd` | [`NonSdRegions::covers`], [`NonSdRegions::clean_segments`] | pagemap, `PAGEMAP_SCAN`, faults |
//! | `is_vma_sd` (smaps `sd`) | [`NonSdRegions::is_vma_sd`] | smaps, the VMA list |
//!
//! Every other merge keeps the target VMA's own list and drops the absorbed VMAs' lists,
//! which is what the patch does (it adjusts no list there); a VMA that shrinks keeps
//! regions outside its range. `docs/design-comparison.md` lists each such place and what
//! follows from it; `Layout` applies them (`Layout::merge_new_range`, `Layout::modify`).
//!
//! The kernel's regions are byte addresses with page-aligned ends; so are these.

/// Bytes one region costs in the patch: `struct non_sd_reg` (a `list_head` and two
/// `unsigned long`s), one `kmalloc-32` object.
pub const REGION_BYTES: usize = 32;
/// Bytes every VMA pays for the list head, used or not (Hildenbrand's objection: "increases
/// the size of each and every VMA in the system").
pub const LIST_HEAD_BYTES: usize = 16;

/// A VMA's list of non-soft-dirty regions, `[start, end)` address pairs in list order.
/// Empty: the whole VMA is soft-dirty at the VMA level (a new mapping).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NonSdRegions(Vec<(u64, u64)>);

impl NonSdRegions {
    /// The empty list: every page soft-dirty.
    pub const fn new() -> NonSdRegions {
        NonSdRegions(Vec::new())
    }

    /// `clear_refs_write`: the single region `[start, end)`.
    pub fn whole(start: u64, end: u64) -> NonSdRegions {
        NonSdRegions(vec![(start, end)])
    }

    /// The regions, in list order.
    pub fn as_slice(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No region: every page is soft-dirty at the VMA level.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `!is_vma_addr_sd(vma, addr)`: does a region contain `addr`?
    pub fn covers(&self, addr: u64) -> bool {
        self.0.iter().any(|&(s, e)| s <= addr && addr < e)
    }

    /// `is_vma_sd` for a VMA `[start, end)`: soft-dirty unless the list is exactly the one
    /// region `[start, end)` (what `clear_refs` leaves). A VMA that was split, merged or
    /// moved since reports `sd` even if no page of it was written.
    pub fn is_vma_sd(&self, start: u64, end: u64) -> bool {
        self.0.as_slice() != [(start, end)]
    }

    /// `__split_vma` at `mid` (`nsdr_adjust_new_first` / `nsdr_adjust_new_after`, which
    /// divide the list the same way): `self` keeps the regions below `mid` and returns
    /// those at or above it; a region crossing `mid` is cut in two. Regions that lie
    /// outside the VMA (left by a merge that moved a boundary) go with the side they are
    /// on.
    pub fn split_off(&mut self, mid: u64) -> NonSdRegions {
        let mut right = Vec::new();
        let mut left = Vec::with_capacity(self.0.len());
        for &(s, e) in &self.0 {
            if s < mid && e > mid {
                left.push((s, mid));
                right.push((mid, e));
            } else if e <= mid {
                left.push((s, e));
            } else {
                right.push((s, e));
            }
        }
        self.0 = left;
        NonSdRegions(right)
    }

    /// `nsdr_move(self, from)`: appends `from`'s regions (a VMA absorbing its next).
    pub fn append(&mut self, from: NonSdRegions) {
        self.0.extend(from.0);
    }

    /// The parts of `[start, end)` that some region covers, sorted and merged: the pages
    /// there are *not* soft-dirty at the VMA level.
    pub fn clean_segments(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self
            .0
            .iter()
            .map(|&(s, e)| (s.max(start), e.min(end)))
            .filter(|&(s, e)| s < e)
            .collect();
        v.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (s, e) in v {
            match out.last_mut() {
                Some(last) if last.1 >= s => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        out
    }

    /// Calls `f(s, e, vma_dirty)` for the sub-ranges of `[start, end)`, in order, where
    /// VMA-level dirtiness is constant: `vma_dirty` iff no region covers them.
    pub fn segments(&self, start: u64, end: u64, mut f: impl FnMut(u64, u64, bool)) {
        let mut cur = start;
        for (s, e) in self.clean_segments(start, end) {
            if s > cur {
                f(cur, s, true);
            }
            f(s, e, false);
            cur = e;
        }
        if cur < end {
            f(cur, end, true);
        }
    }

    /// The kernel memory the list costs its VMA (slab objects plus the list head).
    pub fn bytes(&self) -> usize {
        LIST_HEAD_BYTES + REGION_BYTES * self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_divides_and_cuts_the_crossing_region() {
        let mut l = NonSdRegions(vec![(0x1000, 0x5000), (0x6000, 0x8000), (0x9000, 0xa000)]);
        let r = l.split_off(0x3000);
        assert_eq!(l.as_slice(), &[(0x1000, 0x3000)]);
        assert_eq!(
            r.as_slice(),
            &[(0x3000, 0x5000), (0x6000, 0x8000), (0x9000, 0xa000)]
        );
        let mut l2 = r.clone();
        let r2 = l2.split_off(0x8000);
        assert_eq!(l2.as_slice(), &[(0x3000, 0x5000), (0x6000, 0x8000)]);
        assert_eq!(r2.as_slice(), &[(0x9000, 0xa000)]);
    }

    #[test]
    fn is_vma_sd_only_false_for_the_exact_single_region() {
        assert!(!NonSdRegions::whole(0x1000, 0x3000).is_vma_sd(0x1000, 0x3000));
        assert!(NonSdRegions::whole(0x1000, 0x3000).is_vma_sd(0x1000, 0x4000));
        assert!(NonSdRegions::new().is_vma_sd(0x1000, 0x3000));
        let two = NonSdRegions(vec![(0x1000, 0x2000), (0x2000, 0x3000)]);
        assert!(two.is_vma_sd(0x1000, 0x3000));
    }

    #[test]
    fn segments_alternate_and_cover_the_range() {
        let l = NonSdRegions(vec![(0x6000, 0x8000), (0x1000, 0x3000), (0x2000, 0x4000)]);
        let mut seen = Vec::new();
        l.segments(0x0, 0x9000, |s, e, d| seen.push((s, e, d)));
        assert_eq!(
            seen,
            vec![
                (0x0, 0x1000, true),
                (0x1000, 0x4000, false),
                (0x4000, 0x6000, true),
                (0x6000, 0x8000, false),
                (0x8000, 0x9000, true),
            ]
        );
        assert!(l.covers(0x3fff) && !l.covers(0x4000));
        assert_eq!(l.bytes(), 16 + 3 * 32);
    }
}
