//! The program break: `brk_start` (what exec sets: `mm->start_brk`, `mm->brk`) and
//! `brk(2)` as Linux 6.18 does it (`mm/mmap.c` `SYSCALL_DEFINE1(brk)`, `do_brk_flags`).
//!
//! Growing maps `[PAGE_ALIGN(old break), PAGE_ALIGN(new break))` as private anonymous
//! read-write memory with `VM_ACCOUNT`, merged only into the VMA that ends at the old
//! break (`VMG_FLAG_JUST_EXPAND`: the guard check below keeps the next VMA at least a page
//! away, so it never abuts), and the resulting VMA gets `VM_SOFTDIRTY` — after a clear,
//! every old page of the heap reports soft-dirty again in `legacy` (kernel-semantics.md
//! §2.3). `precise` marks only the new pages; `regions` (the RFC, which removed the flag)
//! keeps the heap's region list and leaves the new pages in no region. Shrinking unmaps
//! `[PAGE_ALIGN(new), PAGE_ALIGN(old))`. Where the kernel returns the old break, the
//! command fails with ENOMEM (the trace format's rule).

use super::layout::{NewRange, Piece, Src, WVma};
use super::{page_align, AddressSpace, DAC_MMAP_MIN_ADDR};
use crate::errno::{Errno, Result};
use crate::linux::{MAX_MAP_COUNT, PAGE_SHIFT, PAGE_SIZE, TASK_SIZE};
use crate::mode::Mode;
use crate::prot::Prot;
use crate::regions::NonSdRegions;
use crate::sync::lock;
use crate::vma::{VmaFlags, VmaMeta};

/// The program break of one space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Brk {
    /// `mm->start_brk`, once `brk_start` set it
    start: Option<u64>,
    /// `mm->brk` (0 until `brk_start`)
    cur: u64,
    /// a `brk` ran, successful or not: `brk_start` is refused from then on
    used: bool,
}

impl AddressSpace {
    /// `brk_start ADDR`: the start of the heap and the break (what exec sets). EINVAL if
    /// `addr` is not page-aligned or lies beyond the user address space, if the break was
    /// set already (here or in the parent of a fork) or a `brk` ran before.
    pub fn brk_start(&self, addr: u64) -> Result<()> {
        if addr % PAGE_SIZE != 0 || addr >= TASK_SIZE {
            return Err(Errno::EINVAL);
        }
        let mut b = lock(&self.brk);
        if b.start.is_some() || b.used {
            return Err(Errno::EINVAL);
        }
        b.start = Some(addr);
        b.cur = addr;
        Ok(())
    }

    /// The start of the heap and the current break, once `brk_start` set them.
    pub fn brk_bounds(&self) -> Option<(u64, u64)> {
        let b = lock(&self.brk);
        b.start.map(|s| (s, b.cur))
    }

    /// The current break (`expect brk`): 0 before `brk_start`.
    pub fn current_brk(&self) -> u64 {
        lock(&self.brk).cur
    }

    /// `brk(addr)`: returns the new break, or ENOMEM where Linux leaves the break
    /// unchanged (below the start of the heap, growth into or within a page of the next
    /// VMA or beyond the address space, a shrink with nothing mapped to unmap, no
    /// `brk_start`).
    pub fn brk(&self, addr: u64) -> Result<u64> {
        // Lock order: the break, then the control lock (`structural`); fork takes them in
        // the same order.
        let mut b = lock(&self.brk);
        b.used = true;
        let Some(start) = b.start else {
            return Err(Errno::ENOMEM);
        };
        if addr < start {
            return Err(Errno::ENOMEM);
        }
        let newbrk = page_align(addr).ok_or(Errno::ENOMEM)?;
        let oldbrk = page_align(b.cur).ok_or(Errno::ENOMEM)?;
        if addr <= b.cur {
            // Always allow shrinking brk.
            if oldbrk == newbrk {
                b.cur = addr;
                return Ok(addr);
            }
            let mut unmap_failed = false;
            let r = self.structural(|l| {
                l.load(newbrk, oldbrk);
                if !l.intersects(newbrk, oldbrk) {
                    // "mapping intersects with an existing non-brk vma": nothing to unmap.
                    return (Err(Errno::ENOMEM), false);
                }
                match l.unmap(newbrk, oldbrk) {
                    Ok(()) => (Ok(()), true),
                    Err(e) => {
                        unmap_failed = true;
                        (Err(e), false)
                    }
                }
            });
            // The kernel sets mm->brk before the unmap and keeps it if the unmap fails
            // (the call still returns the old break).
            if r.is_ok() || unmap_failed {
                b.cur = addr;
            }
            return r.map(|()| addr).map_err(|_| Errno::ENOMEM);
        }
        if oldbrk == newbrk {
            b.cur = addr;
            return Ok(addr);
        }
        // check_brk_limits → get_unmapped_area(MAP_FIXED): inside the address space and
        // above the mmap floor.
        if newbrk > TASK_SIZE || oldbrk < DAC_MMAP_MIN_ADDR {
            return Err(Errno::ENOMEM);
        }
        let precise = self.mode.is_precise();
        let mode = self.mode;
        self.structural(|l| {
            // Room for the guard gap: the first VMA from the old break that starts below
            // newbrk + PAGE_SIZE + stack_guard_gap must start at least a page above
            // newbrk, or above its guard gap if it is a stack (vm_start_gap).
            let gap_end = newbrk.saturating_add(PAGE_SIZE + STACK_GUARD_GAP);
            if let Some(next) = l.base.range(oldbrk, gap_end).next() {
                let start_gap = if next.meta.flags.growsdown {
                    next.start.saturating_sub(STACK_GUARD_GAP)
                } else {
                    next.start
                };
                if newbrk + PAGE_SIZE > start_gap {
                    return (Err(Errno::ENOMEM), false);
                }
            }
            if l.count() > MAX_MAP_COUNT {
                return (Err(Errno::ENOMEM), false);
            }
            let meta = VmaMeta {
                // Nomerge: the new range counts as soft-dirty in the merge decision.
                flags: VmaFlags::new(Prot::RW, false, true, mode.flag_blocks_merge()),
                pgoff: oldbrk >> PAGE_SHIFT,
                file: None,
                forked: false,
            };
            let pieces = vec![Piece {
                start: oldbrk,
                end: newbrk,
                src: Src::Fresh { dirty: precise },
            }];
            // do_brk_flags expands only the VMA below the old break that
            // `vma_prev_limit(vmi, start_brk)` finds: one that reaches above start_brk. At
            // the heap's first growth (old break = start_brk) a VMA ending there (a bss)
            // is not part of the heap, and the heap is a VMA of its own. The RFC's
            // do_brk_flags expands the VMA in place: its region list is kept and the new
            // pages are in no region.
            let i = if oldbrk > start {
                l.merge_new_range(
                    oldbrk,
                    newbrk,
                    meta,
                    0,
                    pieces,
                    NonSdRegions::new(),
                    NewRange::Mmap,
                )
            } else {
                l.insert_unmerged(WVma {
                    start: oldbrk,
                    end: newbrk,
                    meta,
                    anon: 0,
                    pieces,
                    nsdr: NonSdRegions::new(),
                })
            };
            if mode != Mode::Regions {
                // do_brk_flags: `vm_flags_set(vma, VM_SOFTDIRTY)` on the result.
                l.vmas[i].meta.flags.softdirty = true;
            }
            (Ok(()), true)
        })?;
        b.cur = addr;
        Ok(addr)
    }
}

/// `stack_guard_gap`: 256 pages.
pub const STACK_GUARD_GAP: u64 = 256 * PAGE_SIZE;
