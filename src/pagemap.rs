//! `/proc/PID/pagemap`: per-page state as the kernel reports it, and run iteration.
//!
//! The reporting rule is the kernel's in every mode (`kernel-semantics.md` §1.2, §6.1):
//! a page is soft-dirty iff its page-level bit is dirty **or** its VMA carries a
//! `VM_SOFTDIRTY` that the mode reports. pagemap bit 55 and PAGEMAP_SCAN's
//! `PAGE_IS_SOFT_DIRTY` are both computed from [`PageInfo`], so they agree on every page.

use std::ops::Range;

use crate::bitmap::CHUNK_PAGES;
use crate::index::VmaIndex;
use crate::linux::{PAGE_SHIFT, PAGE_SIZE, TASK_SIZE};
pub use crate::linux::{
    PM_FILE, PM_GUARD_REGION, PM_MMAP_EXCLUSIVE, PM_PRESENT, PM_SOFT_DIRTY, PM_SWAP,
};
use crate::mm::AddressSpace;

/// What the kernel reports about one mapped page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PageInfo {
    /// pagemap bit 55 / PAGE_IS_SOFT_DIRTY
    pub softdirty: bool,
    /// bit 63 / PAGE_IS_PRESENT
    pub present: bool,
    /// the present page is the shared zero page (PAGE_IS_PFNZERO)
    pub zero: bool,
    /// a file's page: shared memory, or the unwritten page of a private file mapping
    /// (bit 61 / PAGE_IS_FILE when present)
    pub shared: bool,
    /// a guard marker (`MADV_GUARD_INSTALL`): not present; bits 62 and 58, scan categories
    /// SWAPPED and GUARD, as Linux 6.18 reports a marker entry
    pub guard: bool,
}

impl PageInfo {
    /// The 64-bit pagemap entry (PFN bits 0, as for an unprivileged reader).
    pub fn entry(self) -> u64 {
        let mut e = 0;
        if self.softdirty {
            e |= PM_SOFT_DIRTY;
        }
        if self.guard {
            e |= PM_SWAP | PM_GUARD_REGION;
        }
        if self.present {
            e |= PM_PRESENT;
            if self.shared {
                e |= PM_FILE;
            }
            if !self.zero {
                e |= PM_MMAP_EXCLUSIVE;
            }
        }
        e
    }
}

impl AddressSpace {
    /// Calls `f(start, end, info)` for maximal runs of pages with equal [`PageInfo`] in
    /// `[start, end)` (page aligned), `info == None` for addresses outside any VMA.
    /// Cost follows the number of runs and touched chunks, not the size of the range.
    pub fn for_each_run(
        &self,
        start: u64,
        end: u64,
        mut f: impl FnMut(u64, u64, Option<PageInfo>),
    ) {
        self.with_index(|idx| {
            self.runs_in(idx, start, end, |s, e, i| {
                f(s, e, i);
                true
            })
        })
    }

    pub(crate) fn runs_in(
        &self,
        idx: &VmaIndex,
        start: u64,
        end: u64,
        mut f: impl FnMut(u64, u64, Option<PageInfo>) -> bool,
    ) {
        // `f` returns false to stop the iteration early.
        let stopped = std::cell::Cell::new(false);
        let mut pending: Option<(u64, u64, Option<PageInfo>)> = None;
        let mut emit = |s: u64, e: u64, i: Option<PageInfo>| {
            if s >= e || stopped.get() {
                return;
            }
            match &mut pending {
                Some((_, pe, pi)) if *pe == s && *pi == i => *pe = e,
                _ => {
                    if let Some((a, b, c)) = pending.take() {
                        if !f(a, b, c) {
                            stopped.set(true);
                        }
                    }
                    pending = Some((s, e, i));
                }
            }
        };
        let mut cursor = start;
        for v in idx.range(start, end) {
            if stopped.get() {
                return;
            }
            if v.start > cursor {
                emit(cursor, v.start, None);
            }
            let s = v.start.max(start);
            let e = v.end.min(end);
            self.vma_level_segments(v, s, e, |s, e, flag| {
                let mut p = v.page_of(s);
                let pe = v.page_of(e - 1) + 1;
                let shared = v.meta.flags.shared;
                // A private file mapping's unwritten present page is the file's page
                // (bit 61), a written one a private anonymous copy.
                let private_file = v.private_file();
                let bm = &v.bitmap;
                while p < pe && !stopped.get() {
                    if let Some((clean, ue)) = bm.uniform_run_end(p, pe) {
                        let info = PageInfo {
                            softdirty: flag || !clean,
                            present: false,
                            zero: false,
                            shared,
                            guard: false,
                        };
                        emit(
                            v.start + (p << PAGE_SHIFT),
                            v.start + (ue << PAGE_SHIFT),
                            Some(info),
                        );
                        p = ue;
                        continue;
                    }
                    let w = p - p % 64;
                    let bits = bm.window(w);
                    let lim = (w + 64).min(pe).min((p / CHUNK_PAGES + 1) * CHUNK_PAGES);
                    // Positions where any of the three bits changes from the previous page.
                    let all = [bits.clean, bits.populated, bits.backed];
                    let mut q = p;
                    while q < lim {
                        let sh = q - w;
                        let here = all.map(|x| (x >> sh) & 1);
                        let mut r = q + 1;
                        while r < lim {
                            let s2 = r - w;
                            if all.map(|x| (x >> s2) & 1) != here {
                                break;
                            }
                            r += 1;
                        }
                        let unbacked = here[1] == 1 && here[2] == 0;
                        let info = PageInfo {
                            softdirty: flag || here[0] == 0,
                            present: here[1] == 1,
                            zero: unbacked && !private_file,
                            shared: shared || (unbacked && private_file),
                            guard: here[1] == 0 && here[2] == 1,
                        };
                        emit(
                            v.start + (q << PAGE_SHIFT),
                            v.start + (r << PAGE_SHIFT),
                            Some(info),
                        );
                        q = r;
                    }
                    p = lim;
                }
            });
            cursor = e;
        }
        if cursor < end {
            emit(cursor, end, None);
        }
        if let Some((a, b, c)) = pending {
            if !stopped.get() {
                f(a, b, c);
            }
        }
    }

    /// The pagemap entry of the page containing `addr` (0 outside any VMA).
    pub fn pagemap_entry(&self, addr: u64) -> u64 {
        let a = addr & !(PAGE_SIZE - 1);
        let mut e = 0;
        if a < TASK_SIZE {
            self.for_each_run(a, a + PAGE_SIZE, |_, _, i| e = i.map_or(0, PageInfo::entry));
        }
        e
    }

    /// Soft-dirty pages of `[addr, addr + len)` as ranges of page indices relative to the
    /// range's first page (the form `expect softdirty` compares): `3..5` is pages 3 and 4.
    /// (A `Range`, not a tuple: `DirtyLog::runs` and the harvests give `(first, count)`.)
    pub fn softdirty_runs(&self, addr: u64, len: u64) -> Vec<Range<u64>> {
        self.relative_runs(addr, len, |i| i.softdirty)
    }

    /// Present pages of `[addr, addr + len)`, as [`Self::softdirty_runs`].
    pub fn present_runs(&self, addr: u64, len: u64) -> Vec<Range<u64>> {
        self.relative_runs(addr, len, |i| i.present)
    }

    fn relative_runs(
        &self,
        addr: u64,
        len: u64,
        pred: impl Fn(&PageInfo) -> bool,
    ) -> Vec<Range<u64>> {
        let base = addr & !(PAGE_SIZE - 1);
        let end = match addr.checked_add(len) {
            Some(e) => e.min(TASK_SIZE),
            None => TASK_SIZE,
        };
        let end = end.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let mut out: Vec<Range<u64>> = Vec::new();
        if base >= end {
            return out;
        }
        self.for_each_run(base, end, |s, e, i| {
            if i.as_ref().is_some_and(&pred) {
                let (a, b) = ((s - base) >> PAGE_SHIFT, (e - base) >> PAGE_SHIFT);
                match out.last_mut() {
                    Some(l) if l.end == a => l.end = b,
                    _ => out.push(a..b),
                }
            }
        });
        out
    }
}
