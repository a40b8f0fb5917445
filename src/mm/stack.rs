//! Stack growth (trace v2): an access to an unmapped page below a `VM_GROWSDOWN` VMA
//! grows it down to that page, as the kernel's `expand_downwards` does.
//!
//! Limits (Linux 6.18, measured on 6.18.44 with a probe): the stack may reach
//! `RLIMIT_STACK` (8 MiB) below its end, and the new start may not come within
//! [`STACK_GUARD_GAP`] of the VMA just below it when that VMA is accessible and does not
//! itself grow down (only that nearest VMA is checked). Outside them the access fails with
//! EFAULT (SIGSEGV). Growth keeps `VM_SOFTDIRTY`; the new pages are unpopulated — new
//! pages, so soft-dirty in `precise`.

use super::brk::STACK_GUARD_GAP;
use super::layout::{Piece, Src};
use super::AddressSpace;
use crate::errno::Result;
use crate::linux::{PAGE_SHIFT, PAGE_SIZE};

/// `ulimit -s`: 8 MiB.
pub const STACK_LIMIT: u64 = 8 << 20;

impl AddressSpace {
    /// Grows the stack VMA above `page` (unmapped) down to it, if there is one and the
    /// limits allow; `Ok(false)` if the access must fault.
    #[cold]
    #[inline(never)]
    pub(super) fn expand_stack(&self, page: u64) -> Result<bool> {
        let precise = self.mode.is_precise();
        self.structural(|l| {
            // The VMA above the page, if the page is still unmapped (a racing
            // structural operation may have mapped it: then retry the access).
            if l.base.lookup(page).is_some() {
                return (Ok(true), false);
            }
            let Some(next) = l.base.next(page).cloned() else {
                return (Ok(false), false);
            };
            if !next.meta.flags.growsdown || next.end - page > STACK_LIMIT {
                return (Ok(false), false);
            }
            if page < super::DAC_MMAP_MIN_ADDR {
                return (Ok(false), false);
            }
            if let Some(prev) = l.base.prev(page + PAGE_SIZE) {
                if !prev.meta.flags.growsdown
                    && prev.meta.flags.prot.accessible()
                    && page - prev.end < STACK_GUARD_GAP
                {
                    return (Ok(false), false);
                }
            }
            // expand_downwards starts with anon_vma_prepare: an adjacent compatible
            // VMA's anon_vma is reused, as for a first write fault (seen on 6.18.44: the
            // grown stack then merges with its written neighbour after an mprotect; CI's
            // reference fuzz, seed 6593).
            let anon = if next.anon() == 0 {
                self.anon_for_first_fault(&l.base, &next)
            } else {
                next.anon()
            };
            l.load(page, next.end);
            let Some(i) = l.find(next.start) else {
                return (Ok(false), false);
            };
            let w = &mut l.vmas[i];
            let grow = (w.start - page) >> PAGE_SHIFT;
            let mut pieces = vec![Piece {
                start: page,
                end: w.start,
                src: Src::Fresh { dirty: precise },
            }];
            pieces.append(&mut w.pieces);
            w.pieces = pieces;
            w.start = page;
            w.meta.pgoff = w.meta.pgoff.wrapping_sub(grow);
            // expand_downwards prepares the VMA's anon_vma first.
            if w.anon == 0 {
                w.anon = anon;
            }
            l.edited = true;
            (Ok(true), true)
        })
    }
}
