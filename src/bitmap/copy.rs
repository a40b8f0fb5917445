//! Building a new, unpublished bitmap from an old one (`copy_from`, transformed by a
//! [`CopyRule`]).

use super::chunk::Slot;
use super::directory::{Entry, LEAF_SLOTS};
use super::words::word_mask;
use super::{Bits, PageBitmap, ABSENT_CLEAN, ABSENT_DIRTY, CHUNK_PAGES};
use crate::sync::Ordering;

/// How [`PageBitmap::copy_from`] transforms the copied state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyRule {
    /// As is.
    Plain,
    /// Every page soft-dirty (precise mremap destination).
    AllDirty,
    /// Every populated page and guard marker soft-dirty (legacy mremap: moved PTEs and
    /// markers are marked).
    DirtyPopulated,
}

impl PageBitmap {
    /// Builds this (unpublished) bitmap's pages `[dst_first, dst_first+count)` from
    /// `src`'s pages `[src_first, ...)`. With `dirty_all`, every copied page is dirty;
    /// with `dirty_populated`, every copied populated page is dirty (legacy mremap).
    /// `count` is cut to what fits both ranges in their bitmaps.
    pub fn copy_from(
        &self,
        dst_first: u64,
        src: &PageBitmap,
        src_first: u64,
        count: u64,
        xform: CopyRule,
    ) {
        let count = self
            .clip(dst_first, count)
            .1
            .min(src.clip(src_first, count).1);
        if src.may_have_guards() {
            // Guard markers are page state: they come along (`guard.rs`).
            self.note_guards();
        }
        let mut done = 0u64;
        while done < count {
            let d = dst_first + done;
            let s = src_first + done;
            // Fastest path: a whole destination leaf from a whole untouched source leaf at
            // the same offset (a fork, a copy of a whole VMA): one top entry, nothing
            // allocated, no page of the destination's directory touched if the tag is
            // unchanged.
            let leaf_pages = LEAF_SLOTS as u64 * CHUNK_PAGES;
            if d % leaf_pages == 0
                && s % leaf_pages == 0
                && count - done >= leaf_pages.min(self.pages - d)
                && src.pages - s >= leaf_pages.min(self.pages - d)
            {
                let n = leaf_pages.min(self.pages - d);
                let (jd, js) = ((d / leaf_pages) as usize, (s / leaf_pages) as usize);
                if let Entry::Tag(t) = src.slots.entry(js, Ordering::Acquire) {
                    let clean = t == ABSENT_CLEAN && xform != CopyRule::AllDirty;
                    let tag = if clean { ABSENT_CLEAN } else { ABSENT_DIRTY };
                    if self.slots.set_tag_unpublished(jd, tag) {
                        done += n;
                        continue;
                    }
                }
            }
            // Fast path: a whole destination chunk from uniform source chunks.
            if d % CHUNK_PAGES == 0 && count - done >= CHUNK_PAGES.min(self.pages - d) {
                let n = CHUNK_PAGES.min(self.pages - d);
                let k = (d / CHUNK_PAGES) as usize;
                // Only over a tag: a chunk pointer is never overwritten (it would leak,
                // and a reader holding it would see it vanish). Pieces are copied in
                // address order and this chunk starts here, so nothing materialized it
                // yet; if that ever changes, the word-by-word path below is taken.
                let untouched = matches!(
                    self.slots.load(k, Ordering::Relaxed),
                    ABSENT_CLEAN | ABSENT_DIRTY
                );
                debug_assert!(untouched, "copy_from over a materialized chunk");
                if let Some(clean) = src.uniform(s, n).filter(|_| untouched) {
                    let clean = clean && xform != CopyRule::AllDirty;
                    self.slots
                        .store_unpublished(k, if clean { ABSENT_CLEAN } else { ABSENT_DIRTY });
                    done += n;
                    continue;
                }
            }
            // 64 pages at a time, aligned to the destination's words.
            let n = (64 - d % 64).min(count - done);
            let b = src.bits_at(s, n);
            let m = word_mask(0, n);
            let mut clean = b.clean & m;
            match xform {
                CopyRule::Plain => {}
                CopyRule::AllDirty => clean = 0,
                // Present PTEs and swap-type entries (a guard marker: `backed` without
                // `populated`) alike: move_soft_dirty_pte marks both.
                CopyRule::DirtyPopulated => clean &= !(b.populated | b.backed),
            }
            self.build_bits(
                d,
                n,
                Bits {
                    clean,
                    populated: b.populated & m,
                    backed: b.backed & m,
                },
            );
            done += n;
        }
    }

    /// Writes `n` (≤ 64, not crossing a word) pages at `p` into a bitmap being built.
    fn build_bits(&self, p: u64, n: u64, b: Bits) {
        let k = (p / CHUNK_PAGES) as usize;
        let wi = ((p % CHUNK_PAGES) / 64) as usize;
        let off = p % 64;
        let m = word_mask(off, off + n);
        let slot_clean = match self.slot(k) {
            Slot::Absent { clean } => Some(clean),
            Slot::Chunk(_) => None,
        };
        // Skip the allocation when the bits equal the untouched slot's state.
        if let Some(clean) = slot_clean {
            let want_clean = if clean { m } else { 0 };
            if (b.clean << off) & m == want_clean && b.populated == 0 && b.backed == 0 {
                return;
            }
        }
        let c = self.materialize_ctl(k);
        let cl = c.clean[wi].load(Ordering::Relaxed);
        let ncl = (cl & !m) | ((b.clean << off) & m);
        c.clean[wi].store(ncl, Ordering::Relaxed);
        if ncl != !0 {
            c.summary.fetch_or(1 << wi, Ordering::Relaxed);
        }
        let pp = c.populated[wi].load(Ordering::Relaxed);
        c.populated[wi].store((pp & !m) | ((b.populated << off) & m), Ordering::Relaxed);
        let bb = c.backed[wi].load(Ordering::Relaxed);
        c.backed[wi].store((bb & !m) | ((b.backed << off) & m), Ordering::Relaxed);
    }
}
