//! The published VMA index: an immutable, ordered snapshot of an address space's VMAs.
//!
//! Readers load it under an epoch guard and never lock; a structural operation builds a
//! new one and swaps it in (RCU). The snapshot is a persistent B-tree ([`imbl::OrdMap`],
//! keyed by start address): the new index is the old one with the VMAs an operation
//! replaced removed and their successors inserted, which shares every untouched node with
//! the old one, so publishing costs O(k log V) for k changed VMAs instead of a copy of
//! all V. VMAs that did not change are shared between snapshots through their `Arc`.
//!
//! Why `imbl` rather than a hand-written tree: it is the maintained persistent-collection
//! crate of the ecosystem (the fork of `im`), its `OrdMap` has the ordered lookups a VMA
//! index needs (`get_prev`, `range`), `clone` is O(1) and every update path-copies
//! O(log V) nodes. A snapshot is never mutated after it is published (the swap in
//! `mm/commit.rs` moves it into an epoch-managed box), so imbl's internal reference
//! counts need no ordering beyond the publishing swap's Release/Acquire.

use crate::sync::Arc;
use crate::vma::Vma;

/// An immutable snapshot of the VMAs of one address space, ordered by address.
#[derive(Clone, Debug, Default)]
pub struct VmaIndex {
    /// start address → VMA; the VMAs are non-overlapping
    map: imbl::OrdMap<u64, Arc<Vma>>,
}

impl VmaIndex {
    /// An index over `vmas`, which must be sorted and non-overlapping.
    pub fn new(vmas: Vec<Arc<Vma>>) -> VmaIndex {
        debug_assert!(vmas.windows(2).all(|w| w[0].end <= w[1].start));
        VmaIndex {
            map: vmas.into_iter().map(|v| (v.start, v)).collect(),
        }
    }

    /// All VMAs in address order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Arc<Vma>> + '_ {
        self.map.values()
    }

    /// The VMA containing `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&Arc<Vma>> {
        self.map
            .get_prev(&addr)
            .map(|(_, v)| v)
            .filter(|v| addr < v.end)
    }

    /// VMAs intersecting `[start, end)`, in order.
    pub fn range(&self, start: u64, end: u64) -> impl DoubleEndedIterator<Item = &Arc<Vma>> + '_ {
        // The VMA containing `start` begins below it; every other one begins in the range.
        let from = self.lookup(start).map_or(start, |v| v.start);
        let to = end.max(from);
        self.map.range(from..to).map(|(_, v)| v)
    }

    /// The VMAs starting below `addr`, in order.
    pub(crate) fn starting_below(
        &self,
        addr: u64,
    ) -> impl DoubleEndedIterator<Item = &Arc<Vma>> + '_ {
        self.map.range(..addr).map(|(_, v)| v)
    }

    /// The VMA ending at or before `addr` that is closest to it (the previous VMA of a
    /// range starting at `addr`).
    pub fn prev(&self, addr: u64) -> Option<&Arc<Vma>> {
        let below = addr.checked_sub(1)?;
        self.map
            .get_prev(&below)
            .map(|(_, v)| v)
            .filter(|v| v.end <= addr)
    }

    /// The first VMA starting at or after `addr`.
    pub fn next(&self, addr: u64) -> Option<&Arc<Vma>> {
        self.map.get_next(&addr).map(|(_, v)| v)
    }

    /// Number of VMAs.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No VMA at all?
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// This index with the VMAs starting at `removed` taken out and `added` put in: the
    /// successor a structural commit publishes. Shares every node it does not touch with
    /// `self`; costs O((removed + added) log V).
    pub(crate) fn edited(
        &self,
        removed: impl IntoIterator<Item = u64>,
        added: impl IntoIterator<Item = Arc<Vma>>,
    ) -> VmaIndex {
        let mut map = self.map.clone();
        for s in removed {
            let gone = map.remove(&s);
            debug_assert!(gone.is_some(), "removed VMA {s:#x} was not in the index");
        }
        for v in added {
            let start = v.start;
            let end = v.end;
            let clash = map.insert(start, v);
            debug_assert!(clash.is_none(), "two VMAs start at {start:#x}");
            // The neighbours of every inserted VMA do not overlap it.
            debug_assert!(map
                .get_prev(&start.wrapping_sub(1))
                .is_none_or(|(_, p)| start == 0 || p.end <= start));
            debug_assert!(map.get_next(&end).is_none_or(|(_, n)| n.start >= end));
            debug_assert!(map.range(start + 1..end).next().is_none());
        }
        VmaIndex { map }
    }
}
