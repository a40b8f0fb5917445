//! The published VMA index: an immutable, sorted snapshot of an address space's VMAs.
//!
//! Readers load it under an epoch guard and never lock; a structural operation builds a
//! new one and swaps it in (RCU). VMAs that did not change are shared between snapshots
//! through their `Arc`.

use crate::sync::Arc;
use crate::vma::Vma;

/// An immutable snapshot of the VMAs of one address space, sorted by address.
#[derive(Debug, Default)]
pub struct VmaIndex {
    vmas: Vec<Arc<Vma>>,
}

impl VmaIndex {
    /// An index over `vmas`, which must be sorted and non-overlapping.
    pub fn new(vmas: Vec<Arc<Vma>>) -> VmaIndex {
        debug_assert!(vmas.windows(2).all(|w| w[0].end <= w[1].start));
        VmaIndex { vmas }
    }

    /// All VMAs in address order.
    pub fn vmas(&self) -> &[Arc<Vma>] {
        &self.vmas
    }

    /// Position of the first VMA whose end is above `addr` (the VMA containing `addr`, or
    /// the next one after it).
    pub fn find_from(&self, addr: u64) -> usize {
        self.vmas.partition_point(|v| v.end <= addr)
    }

    /// The VMA containing `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&Arc<Vma>> {
        let i = self.find_from(addr);
        self.vmas.get(i).filter(|v| v.start <= addr)
    }

    /// VMAs intersecting `[start, end)`, in order.
    pub fn range(&self, start: u64, end: u64) -> &[Arc<Vma>] {
        let i = self.find_from(start);
        let j = self.vmas.partition_point(|v| v.start < end);
        if i >= j {
            &[]
        } else {
            &self.vmas[i..j]
        }
    }

    /// Number of VMAs.
    pub fn len(&self) -> usize {
        self.vmas.len()
    }

    /// No VMA at all?
    pub fn is_empty(&self) -> bool {
        self.vmas.is_empty()
    }
}
