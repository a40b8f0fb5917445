//! `mmap` (with the model's deterministic address choice) and `munmap`.

use super::layout::{Layout, NewRange, Piece, Src};
use super::{page_align, AddressSpace, Placement, DAC_MMAP_MIN_ADDR, MMAP_BASE};
use crate::errno::{Errno, Result};
use crate::linux::{MAX_MAP_COUNT, MMAP_MIN_ADDR, PAGE_SHIFT, PAGE_SIZE, TASK_SIZE};
use crate::mode::Mode;
use crate::prot::Prot;
use crate::regions::NonSdRegions;
use crate::vma::{VmaFlags, VmaMeta};

impl AddressSpace {
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
    pub(super) fn unmapped_area(l: &Layout, len: u64) -> Option<u64> {
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
}
