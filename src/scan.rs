//! PAGEMAP_SCAN, as the kernel implements it (`kernel-semantics.md` §3), over the model.
//!
//! Argument errors come in the kernel's order; matching uses `category_inverted`,
//! `category_mask` and `category_anyof_mask`, output the un-inverted categories masked by
//! `return_mask`; adjacent pages with equal output merge into one region, across VMA
//! boundaries; `max_pages` truncates; the output goes through the kernel's 512-entry
//! bounce buffer, which is what makes `walk_end` stale after more than 512 regions.
//!
//! With `clear`, the reported soft-dirty pages are harvested (get-and-clear) as they are
//! reported, under the control lock, so a clear never erases a bit it did not report.

use crate::bitmap::Run;
use crate::errno::{Errno, Result};
pub use crate::linux::{
    PAGE_IS_FILE, PAGE_IS_GUARD, PAGE_IS_HUGE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT,
    PAGE_IS_SOFT_DIRTY, PAGE_IS_SWAPPED, PAGE_IS_WPALLOWED, PAGE_IS_WRITTEN, PM_SCAN_CATEGORIES,
};
use crate::linux::{PAGE_SHIFT, PAGE_SIZE, TASK_SIZE};
use crate::mm::AddressSpace;
use crate::pagemap::PageInfo;

/// Category names in bit order, as traces spell them.
pub const CATEGORY_NAMES: [&str; 9] = [
    "wpallowed",
    "written",
    "file",
    "present",
    "swapped",
    "pfnzero",
    "huge",
    "softdirty",
    "guard",
];

/// The kernel's bounce buffer: `PAGEMAP_WALK_SIZE >> PAGE_SHIFT` entries.
const BOUNCE: u64 = 512;
/// `sizeof(struct page_region)`.
const REGION_SIZE: u64 = 24;

/// The arguments of one PAGEMAP_SCAN (`struct pm_scan_arg`, less the output buffer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanArgs {
    /// `start` (must be page aligned)
    pub start: u64,
    /// `end` (rounded up to a page)
    pub end: u64,
    /// `category_mask`: all must match
    pub mask: u64,
    /// `category_anyof_mask`: one must match (0: no condition)
    pub anyof: u64,
    /// `category_inverted`
    pub inverted: u64,
    /// `return_mask`
    pub ret: u64,
    /// get-and-clear the reported soft-dirty pages (`PM_SCAN_WP_MATCHING`'s analogue)
    pub clear: bool,
    /// `max_pages` (0: unlimited)
    pub max_pages: u64,
    /// `vec_len`
    pub vec_len: u64,
}

/// One `struct page_region`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Region {
    /// first address
    pub start: u64,
    /// end address (exclusive)
    pub end: u64,
    /// output categories
    pub categories: u64,
}

/// What PAGEMAP_SCAN returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanResult {
    /// the regions written to the vector (the ioctl's return value is their count)
    pub regions: Vec<Region>,
    /// `walk_end` as written back
    pub walk_end: u64,
}

/// The model's categories of a mapped page: unregistered memory, so WRITTEN on every
/// mapped page and WPALLOWED on none; no swap and no huge pages, but a guard marker is a
/// swap-type entry (SWAPPED and GUARD), as Linux 6.18 reports it.
pub fn categories(i: &PageInfo) -> u64 {
    let mut c = PAGE_IS_WRITTEN;
    if i.present {
        c |= PAGE_IS_PRESENT;
        if i.zero {
            c |= PAGE_IS_PFNZERO;
        }
        if i.shared {
            c |= PAGE_IS_FILE;
        }
    }
    if i.guard {
        c |= PAGE_IS_SWAPPED | PAGE_IS_GUARD;
    }
    if i.softdirty {
        c |= PAGE_IS_SOFT_DIRTY;
    }
    c
}

/// Formats categories as a trace would write them (`written,present`).
pub fn format_categories(c: u64) -> String {
    let names: Vec<&str> = (0..9)
        .filter(|b| c & (1 << b) != 0)
        .map(|b| CATEGORY_NAMES[b])
        .collect();
    names.join(",")
}

impl AddressSpace {
    /// PAGEMAP_SCAN over `[args.start, args.end)`.
    pub fn scan(&self, args: &ScanArgs) -> Result<ScanResult> {
        if (args.mask | args.anyof | args.inverted | args.ret) & !PM_SCAN_CATEGORIES != 0 {
            return Err(Errno::EINVAL);
        }
        if args.start % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        // access_ok(start, end - start)
        if args.end < args.start || args.end > TASK_SIZE {
            return Err(Errno::EFAULT);
        }
        // access_ok(vec, vec_len * sizeof(struct page_region))
        if args
            .vec_len
            .checked_mul(REGION_SIZE)
            .is_none_or(|b| b > TASK_SIZE)
        {
            return Err(Errno::EFAULT);
        }
        let end = args.end.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        if args.clear {
            self.with_control(|| Ok(self.scan_walk(args, end)))
        } else {
            Ok(self.scan_walk(args, end))
        }
    }

    fn scan_walk(&self, a: &ScanArgs, end: u64) -> ScanResult {
        let max = if a.max_pages == 0 {
            u64::MAX
        } else {
            a.max_pages
        };
        let matches = |c: u64| {
            let c = c ^ a.inverted;
            (c & a.mask) == a.mask && (a.anyof == 0 || c & a.anyof != 0)
        };
        let mut out = ScanResult::default();
        if a.vec_len == 0 {
            // No output buffer: nothing is counted, every matching page is cleared.
            if a.clear {
                let mut todo = Vec::new();
                self.for_each_run(a.start, end, |s, e, i| {
                    if let Some(i) = i {
                        if i.softdirty && matches(categories(&i)) {
                            todo.push((s, e));
                        }
                    }
                });
                self.harvest_ranges(&todo, |_| {});
            }
            out.walk_end = end;
            return out;
        }
        // One pass over the runs. The kernel walks, fills a bounce buffer of at most 512
        // regions, flushes it and restarts the walk at the first page it could not report;
        // pages from there on are untouched by the first walk, so continuing the same
        // pass with a fresh buffer is exactly equivalent (and linear in the runs).
        let mut vec_left = a.vec_len;
        let mut buf_len = BOUNCE.min(vec_left);
        let mut buf: Vec<Region> = Vec::new();
        let mut found = 0u64;
        let mut walk_end: Option<u64> = None;
        let mut to_clear: Vec<(u64, u64)> = Vec::new();
        let flush = |buf: &mut Vec<Region>, out: &mut ScanResult| -> u64 {
            // pagemap_scan_flush_buffer: a trailing empty region is not emitted.
            if buf.last().is_some_and(|r| r.start == r.end) {
                buf.pop();
            }
            let n = buf.len() as u64;
            out.regions.append(buf);
            n
        };
        self.with_index(|idx| {
            self.runs_in(idx, a.start, end, |s, e, i| {
                let Some(i) = i else { return true };
                let c = categories(&i);
                if !matches(c) {
                    return true;
                }
                let cats = c & a.ret;
                loop {
                    let n = (e - s) >> PAGE_SHIFT;
                    let (mut e2, mut take, mut stop) = (e, n, false);
                    if found.checked_add(n).is_none_or(|t| t > max) {
                        take = max - found;
                        e2 = s + (take << PAGE_SHIFT);
                        stop = true;
                    }
                    // pagemap_scan_push_range
                    let full = buf.len() as u64 >= buf_len;
                    match buf.last_mut() {
                        Some(last) if last.end == s && last.categories == cats => last.end = e2,
                        Some(_) if full => {
                            // Buffer full: flush, and restart at `s` with a fresh buffer.
                            walk_end = Some(s);
                            vec_left -= flush(&mut buf, &mut out);
                            if vec_left == 0 || found == max {
                                return false;
                            }
                            buf_len = BOUNCE.min(vec_left);
                            continue;
                        }
                        _ => buf.push(Region {
                            start: s,
                            end: e2,
                            categories: cats,
                        }),
                    }
                    found += take;
                    if a.clear && i.softdirty && e2 > s {
                        to_clear.push((s, e2));
                    }
                    if stop {
                        walk_end = Some(e2);
                        return false;
                    }
                    return true;
                }
            });
        });
        flush(&mut buf, &mut out);
        self.harvest_ranges(&to_clear, |_| {});
        out.walk_end = walk_end.unwrap_or(end);
        out
    }

    /// Get-and-clear of the page-level soft-dirty bits in each of the sorted `ranges`
    /// (within mapped VMAs), under one index load: calls `sink` with every run of pages it
    /// cleared, as absolute page numbers (`sink` must not read their data: the
    /// data-ordering fence comes once, at the end). Callers hold the control lock.
    pub(crate) fn harvest_ranges(&self, ranges: &[(u64, u64)], mut sink: impl FnMut(Run)) {
        self.with_index(|idx| {
            for &(start, end) in ranges {
                for v in idx.range(start, end) {
                    let s = v.start.max(start);
                    let e = v.end.min(end);
                    v.bitmap
                        .harvest_unfenced(v.page_of(s), (e - s) >> PAGE_SHIFT, |r| {
                            sink(Run {
                                first: (v.start >> PAGE_SHIFT) + r.first,
                                count: r.count,
                            })
                        });
                }
            }
        });
        // Data ordering: after every get-and-clear, before the caller reads a page.
        crate::barrier::clear_fence();
    }
}
