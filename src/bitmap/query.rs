//! Lock-free reads of a bitmap: one page, a 64-page window, any 64 pages, uniform
//! (untouched) stretches, and the dirty runs of a range.

use super::chunk::Slot;
use super::words::{for_each_run, word_mask};
use super::{Bits, PageBitmap, Run, CHUNK_PAGES};
use crate::sync::Ordering;
use crate::twins;

impl PageBitmap {
    /// The bits of page `p`.
    pub fn page(&self, p: u64) -> Bits {
        if p >= self.pages {
            return Bits {
                clean: 1,
                populated: 0,
                backed: 0,
            };
        }
        let b = self.window(p - p % 64);
        let s = p % 64;
        Bits {
            clean: (b.clean >> s) & 1,
            populated: (b.populated >> s) & 1,
            backed: (b.backed >> s) & 1,
        }
    }

    /// The 64 pages starting at `p` (rounded down to a multiple of 64); bits past the
    /// end read as clean, unpopulated.
    pub fn window(&self, p: u64) -> Bits {
        let p = p - p % 64;
        if p >= self.pages {
            return Bits {
                clean: !0,
                populated: 0,
                backed: 0,
            };
        }
        let k = (p / CHUNK_PAGES) as usize;
        let wi = ((p % CHUNK_PAGES) / 64) as usize;
        match self.slot(k) {
            Slot::Absent { clean } => Bits {
                clean: if clean { !0 } else { 0 },
                populated: 0,
                backed: 0,
            },
            Slot::Chunk(c) => {
                // Acquire loads: populated and backed before clean, mirroring the fault
                // path's order (clean first), so a page seen backed is seen dirty.
                // Broken twin `copy_clean_first` (loom-tests): clean first.
                let clean_first = twins::COPY_CLEAN_FIRST
                    .on()
                    .then(|| c.clean[wi].load(Ordering::Acquire));
                let populated = c.populated[wi].load(Ordering::Acquire);
                let backed = c.backed[wi].load(Ordering::Acquire);
                let clean = clean_first.unwrap_or_else(|| c.clean[wi].load(Ordering::Acquire));
                Bits {
                    clean,
                    populated,
                    backed,
                }
            }
        }
    }

    /// If every page of `[first, first+count)` lies in untouched chunks with the same
    /// tag, that tag's cleanliness.
    pub fn uniform(&self, first: u64, count: u64) -> Option<bool> {
        let (first, count) = self.clip(first, count);
        if count == 0 {
            return None;
        }
        let k0 = (first / CHUNK_PAGES) as usize;
        let k1 = ((first + count - 1) / CHUNK_PAGES) as usize;
        let mut tag = None;
        for k in k0..=k1 {
            match self.slot(k) {
                Slot::Chunk(_) => return None,
                Slot::Absent { clean } => match tag {
                    None => tag = Some(clean),
                    Some(t) if t != clean => return None,
                    _ => {}
                },
            }
        }
        tag
    }

    /// The end of the stretch of untouched slots with the same tag that contains `p`
    /// (at most `limit`), if `p` is in an untouched slot.
    pub fn uniform_run_end(&self, p: u64, limit: u64) -> Option<(bool, u64)> {
        if p >= self.pages {
            return None;
        }
        let limit = limit.min(self.pages);
        let mut k = (p / CHUNK_PAGES) as usize;
        let tag = match self.slot(k) {
            Slot::Chunk(_) => return None,
            Slot::Absent { clean } => clean,
        };
        let mut end = (k as u64 + 1) * CHUNK_PAGES;
        while end < limit {
            k += 1;
            match self.slot(k) {
                Slot::Absent { clean } if clean == tag => end += CHUNK_PAGES,
                _ => break,
            }
        }
        Some((tag, end.min(limit)))
    }

    /// Calls `sink` with each maximal run of the pages of `[first, first+count)` that are
    /// soft-dirty at the page level (`clean` bit 0), in order, changing nothing: the
    /// read-only walk behind `AddressSpace::get_dirty_log`. Lock-free, data plane: it
    /// runs concurrently with faults and harvests and reads each word once.
    ///
    /// Cost follows the words, not the pages: one slot load per chunk (an untouched chunk
    /// is one run or nothing), one load per word of a materialized chunk, and
    /// `trailing_zeros` per run boundary. Summary bits are not used to skip words: a
    /// harvest clears a word's summary bit before it clears the word, so a reader that
    /// trusted a clear summary bit could miss a page that is dirty during its whole call.
    pub fn dirty_runs(&self, first: u64, count: u64, mut sink: impl FnMut(Run)) {
        let (first, count) = self.clip(first, count);
        let end = first + count;
        // The run being built, `[start, stop)`; emitted when a later run does not touch it.
        let mut open: Option<(u64, u64)> = None;
        let mut add = |s: u64, e: u64| match &mut open {
            Some((_, stop)) if *stop == s => *stop = e,
            _ => {
                if let Some((a, b)) = open.replace((s, e)) {
                    sink(Run {
                        first: a,
                        count: b - a,
                    });
                }
            }
        };
        let mut p = first;
        while p < end {
            let k = (p / CHUNK_PAGES) as usize;
            let base = k as u64 * CHUNK_PAGES;
            let hi = end.min(base + CHUNK_PAGES);
            match self.slot(k) {
                Slot::Absent { clean: true } => {}
                Slot::Absent { clean: false } => add(p, hi),
                Slot::Chunk(c) => {
                    let w0 = ((p - base) / 64) as usize;
                    let w1 = ((hi - 1 - base) / 64) as usize;
                    for wi in w0..=w1 {
                        // Acquire: as `window`, pairs with the Release half of the fault
                        // RMW that dirtied the word (a page reported dirty was written).
                        let clean = c.clean[wi].load(Ordering::Acquire);
                        if clean == !0 {
                            continue; // the common case of a sparse log: a few instructions
                        }
                        let wbase = base + wi as u64 * 64;
                        let m = if wi != w0 && wi != w1 {
                            !0
                        } else {
                            word_mask(p.max(wbase) - wbase, hi.min(wbase + 64) - wbase)
                        };
                        let dirty = !clean & m;
                        if dirty == !0 {
                            add(wbase, wbase + 64);
                        } else {
                            for_each_run(dirty, |s, n| add(wbase + s, wbase + s + n));
                        }
                    }
                }
            }
            p = hi;
        }
        if let Some((a, b)) = open {
            sink(Run {
                first: a,
                count: b - a,
            });
        }
    }

    /// `n` (≤ 64, larger is read as 64) pages starting at any page `p`, in the low bits;
    /// pages past the end read as clean, unpopulated.
    pub fn bits_at(&self, p: u64, n: u64) -> Bits {
        let n = n.min(64);
        if p >= self.pages {
            return self.window(u64::MAX);
        }
        let off = p % 64;
        let a = self.window(p - off);
        let mut out = Bits {
            clean: a.clean >> off,
            populated: a.populated >> off,
            backed: a.backed >> off,
        };
        if off != 0 && off + n > 64 {
            let b = self.window(p - off + 64);
            out.clean |= b.clean << (64 - off);
            out.populated |= b.populated << (64 - off);
            out.backed |= b.backed << (64 - off);
        }
        out
    }
}
