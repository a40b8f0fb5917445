//! Observation: the VMA list, smaps flags, tracking memory and region counts.

use super::{AddressSpace, VmaInfo};
use crate::mode::Mode;

impl AddressSpace {
    /// The VMAs, in address order.
    pub fn vmas(&self) -> Vec<VmaInfo> {
        self.with_index(|idx| {
            idx.iter()
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
                    file: v.meta.file.is_some_and(|f| f.named()),
                })
                .collect()
        })
    }

    /// Number of VMAs intersecting `[addr, addr + len)`.
    pub fn vma_count(&self, addr: u64, len: u64) -> usize {
        let end = addr.saturating_add(len);
        self.with_index(|idx| idx.range(addr, end).count())
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
    /// ([`NonSdRegions::bytes`](crate::regions::NonSdRegions::bytes): a list head per VMA and a 32-byte object per region).
    pub fn tracking_bytes(&self) -> usize {
        self.with_index(|idx| {
            idx.iter()
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
        self.with_index(|idx| idx.iter().map(|v| v.nsdr.len()).sum())
    }
}
