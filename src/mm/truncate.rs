//! `ftruncate` of a mapped file (trace v2's `file NAME SIZE` on an existing file): what
//! a size change does to one space's mappings of the file. The tracker calls it for every
//! space ([`Tracker::set_file_size`](crate::tracker::Tracker::set_file_size)), as the
//! kernel's `unmap_mapping_range` reaches every mapping of the file.

use super::AddressSpace;
use crate::bitmap::ZapRule;
use crate::file::{FileRef, Files};
use crate::linux::PAGE_SHIFT;
use crate::sync::lock;

impl AddressSpace {
    /// What a size change of the file `f` from `old` to `new` bytes does to this space's
    /// mappings of it (called by [`Tracker::set_file_size`](crate::tracker::Tracker::set_file_size)
    /// for every space): a shrink zaps the pages wholly past the new end, private copies
    /// included (`truncate_pagecache` → `unmap_mapping_range(.., even_cows)`), soft-dirty
    /// in `precise` (their content is gone), clean elsewhere (the page table entries are
    /// gone); in `precise`, every page between the old and the new end (the partial page
    /// at the lower one included) reports soft-dirty in every mapping that shows the
    /// file's page there. No VMA changes.
    pub fn file_changed(&self, f: FileRef, old: u64, new: u64) {
        let _ctl = lock(&self.control);
        let precise = self.mode.is_precise();
        let cut = Files::pages_of(new);
        let (lo, hi) = (old.min(new) >> PAGE_SHIFT, Files::pages_of(old.max(new)));
        self.with_index(|idx| {
            for v in idx.iter() {
                if v.meta.file != Some(f) {
                    continue;
                }
                let (a, b) = (v.meta.pgoff, v.meta.pgoff + v.pages());
                // The pages that were in the file and are no longer (past the old end
                // there was nothing to map, and nothing changed).
                let (zs, ze) = (a.max(cut), b.min(hi));
                if new < old && zs < ze {
                    let rule = if precise {
                        ZapRule::Dirty
                    } else {
                        ZapRule::Clean
                    };
                    v.bitmap.zap_with(zs - a, ze - zs, rule);
                }
                let (s, e) = (a.max(lo), b.min(hi));
                if precise && s < e {
                    // On the control plane: whole untouched chunks become the dirty tag,
                    // so a terabyte of new file pages allocates nothing.
                    if v.meta.flags.shared {
                        v.bitmap.set_clean(s - a, e - s, false);
                    } else {
                        v.bitmap.set_dirty_unbacked(s - a, e - s);
                    }
                }
            }
        });
        self.note_indirect();
    }
}
