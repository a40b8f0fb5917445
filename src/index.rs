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

use std::cmp::Ordering;

use crate::sync::Arc;
use crate::vma::Vma;

/// A VMA's range as the index's key, ordered by start (VMAs never overlap, so this is the
/// order of their ends too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Key {
    start: u64,
    end: u64,
}

impl Key {
    /// The smallest key at `addr`: a bound for ranges over starts.
    fn at(addr: u64) -> Key {
        Key {
            start: addr,
            end: 0,
        }
    }
}

/// The query "the VMA containing this address": equal to the key whose range contains
/// it, less than every key above, greater than every key below. Consistent with the keys
/// of the map (the VMAs are disjoint), so the B-tree's own search (`OrdMap::get`) finds
/// the VMA in O(log V) without the cursor (and its allocation) that a predecessor search
/// builds: the fault path's lookup. Not always consistent with the separator keys of the
/// B-tree's branches, which may be left over from removed VMAs: see [`VmaIndex::lookup`].
struct Containing(u64);

impl equivalent::Equivalent<Key> for Containing {
    fn equivalent(&self, k: &Key) -> bool {
        k.start <= self.0 && self.0 < k.end
    }
}

impl equivalent::Comparable<Key> for Containing {
    fn compare(&self, k: &Key) -> Ordering {
        if self.0 < k.start {
            Ordering::Less
        } else if self.0 >= k.end {
            Ordering::Greater
        } else {
            Ordering::Equal
        }
    }
}

/// An immutable snapshot of the VMAs of one address space, ordered by address.
#[derive(Clone, Debug, Default)]
pub struct VmaIndex {
    /// the VMA's range → VMA; the VMAs are non-overlapping
    map: imbl::OrdMap<Key, Arc<Vma>>,
}

impl VmaIndex {
    /// An index over `vmas`, which must be sorted and non-overlapping.
    pub fn new(vmas: Vec<Arc<Vma>>) -> VmaIndex {
        debug_assert!(vmas.windows(2).all(|w| w[0].end <= w[1].start));
        VmaIndex {
            map: vmas
                .into_iter()
                .map(|v| {
                    (
                        Key {
                            start: v.start,
                            end: v.end,
                        },
                        v,
                    )
                })
                .collect(),
        }
    }

    /// All VMAs in address order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Arc<Vma>> + '_ {
        self.map.values()
    }

    /// The VMA containing `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&Arc<Vma>> {
        // Fast path: the B-tree's own descent. A VMA it returns contains `addr` (a leaf
        // key compared equal), so it is the answer. It may miss: a separator key left in
        // a branch by a removed VMA can contain `addr` and send the descent to the wrong
        // child. Then the predecessor search decides (slower: it builds a cursor).
        if let Some(v) = self.map.get(&Containing(addr)) {
            return Some(v);
        }
        self.map
            .range(..=Key::at(addr.saturating_add(1)))
            .next_back()
            .map(|(_, v)| v)
            .filter(|v| v.start <= addr && addr < v.end)
    }

    /// VMAs intersecting `[start, end)`, in order.
    pub fn range(&self, start: u64, end: u64) -> impl DoubleEndedIterator<Item = &Arc<Vma>> + '_ {
        // The VMA containing `start` begins below it; every other one begins in the range.
        let from = self.lookup(start).map_or(start, |v| v.start);
        let to = end.max(from);
        self.map.range(Key::at(from)..Key::at(to)).map(|(_, v)| v)
    }

    /// The VMAs starting below `addr`, in order.
    pub(crate) fn starting_below(
        &self,
        addr: u64,
    ) -> impl DoubleEndedIterator<Item = &Arc<Vma>> + '_ {
        self.map.range(..Key::at(addr)).map(|(_, v)| v)
    }

    /// The VMA ending at or before `addr` that is closest to it (the previous VMA of a
    /// range starting at `addr`).
    pub fn prev(&self, addr: u64) -> Option<&Arc<Vma>> {
        self.map
            .range(..Key::at(addr))
            .next_back()
            .map(|(_, v)| v)
            .filter(|v| v.end <= addr)
    }

    /// The first VMA starting at or after `addr`.
    pub fn next(&self, addr: u64) -> Option<&Arc<Vma>> {
        self.map.get_next(&Key::at(addr)).map(|(_, v)| v)
    }

    /// Number of VMAs.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No VMA at all?
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// This index with the VMAs `removed` (their ranges) taken out and `added` put in:
    /// the successor a structural commit publishes. Shares every node it does not touch
    /// with `self`; costs O((removed + added) log V).
    pub(crate) fn edited(
        &self,
        removed: impl IntoIterator<Item = (u64, u64)>,
        added: impl IntoIterator<Item = Arc<Vma>>,
    ) -> VmaIndex {
        let mut map = self.map.clone();
        for (start, end) in removed {
            let gone = map.remove(&Key { start, end });
            debug_assert!(
                gone.is_some(),
                "removed VMA {start:#x} was not in the index"
            );
        }
        for v in added {
            let key = Key {
                start: v.start,
                end: v.end,
            };
            let clash = map.insert(key, v);
            debug_assert!(clash.is_none(), "two VMAs start at {:#x}", key.start);
            // No VMA overlaps the inserted one.
            debug_assert!(map
                .range(..key)
                .next_back()
                .is_none_or(|(p, _)| p.end <= key.start));
            debug_assert!(map
                .range(Key::at(key.start + 1)..)
                .next()
                .is_none_or(|(n, _)| n.start >= key.end));
        }
        VmaIndex { map }
    }
}
