//! `fork`: a child address space with a copy of the mappings and the page state.

use super::{AddressSpace, FaultCounter};
use crate::bitmap::{CopyRule, PageBitmap};
use crate::epoch::{self, Atomic};
use crate::index::VmaIndex;
use crate::sync::{lock, Arc, Mutex};
use crate::vma::Vma;

impl AddressSpace {
    /// `fork()`: a new address space with a copy of this one's mappings and page state.
    /// Private VMAs that were write-faulted get their PTEs copied (and a new anon_vma
    /// whose chain links ours); others start unpopulated in the child, as in Linux.
    pub fn fork(&self) -> AddressSpace {
        // The break first (brk.rs's lock order), held so that no brk runs while the
        // child is built; the child inherits it.
        let brk = lock(&self.brk);
        let _ctl = lock(&self.control);
        let guard = epoch::pin();
        let idx = self.index(&guard);
        let mut vmas = Vec::with_capacity(idx.len());
        // Frozen while the child is built: a first write either assigned its anon_vma
        // before (the child gets the PTEs) or waits until the child exists.
        let mut frozen = Vec::new();
        for v in idx.iter() {
            // dup_mmap: a VM_DONTCOPY VMA is left out of the child.
            if v.meta.flags.dontcopy {
                continue;
            }
            if v.meta.flags.wipeonfork {
                // The child's VMA is empty (no anon_vma, no page copied): its pages are
                // unpopulated, and in precise mode soft-dirty (their content was wiped).
                let bm = PageBitmap::accounted(
                    v.pages(),
                    self.mode.is_precise(),
                    Some(&self.accounting),
                );
                let mut meta = v.meta;
                meta.forked = false;
                vmas.push(Arc::new(
                    Vma::new(v.start, v.end, meta, 0, Arc::new(bm)).with_nsdr(v.nsdr.clone()),
                ));
                continue;
            }
            let (anon, froze) = v.freeze_anon();
            if froze {
                frozen.push(v);
            }
            let copy_ptes = !v.meta.flags.shared && anon != 0;
            let bm = PageBitmap::accounted(v.pages(), false, Some(&self.accounting));
            bm.copy_from(0, &v.bitmap, 0, v.pages(), CopyRule::Plain);
            if !copy_ptes {
                // No PTEs are copied: the child's pages start unpopulated. Legacy: their
                // soft-dirty bits go with the PTEs; precise: the state is copied.
                if self.mode.is_precise() {
                    bm.unpopulate(0, v.pages());
                } else {
                    bm.zap(0, v.pages(), false);
                }
            }
            if !self.mode.is_precise() {
                // Guard markers are copied as fresh markers, without soft-dirty.
                bm.clean_guards();
            }
            let mut meta = v.meta;
            meta.forked = anon != 0;
            let child_anon = if anon != 0 {
                self.accounting.next_id()
            } else {
                0
            };
            // dup_mmap: the RFC clones the region list (`nsdr_clone`).
            vmas.push(Arc::new(
                Vma::new(v.start, v.end, meta, child_anon, Arc::new(bm)).with_nsdr(v.nsdr.clone()),
            ));
        }
        for v in frozen {
            v.thaw_anon();
        }
        AddressSpace {
            mode: self.mode,
            index: Atomic::new(VmaIndex::new(vmas)),
            control: Mutex::new(()),
            brk: Mutex::new(*brk),
            faults: FaultCounter::new(),
            accounting: self.accounting.clone(),
            files: self.files.clone(),
            // a fork child's harvests are its own: it starts with no consumers
            consumers: Mutex::default(),
            indirect: crate::sync::AtomicU64::new(0),
        }
    }
}
