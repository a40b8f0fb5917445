//! The structural commit, in one place: a control-plane operation edits a [`Layout`]
//! under the control lock ([`AddressSpace::structural`]), then [`Layout::build`] makes the
//! new VMAs and bitmaps, the new index is swapped in, and every retired bitmap is sealed
//! and drained into its copies ([`Retired::drain`]).

use super::layout::{Layout, Piece, Src};
use super::AddressSpace;
use crate::bitmap::{CopyRule, PageBitmap};
use crate::bitmap::{DrainRule, Target};
use crate::epoch::{self, Guard, Owned};
use crate::errno::Result;
use crate::index::VmaIndex;
use crate::linux::{PAGE_SHIFT, TASK_SIZE};
use crate::sync::{lock, Arc, Ordering};
use crate::twins;
use crate::vma::Vma;

impl AddressSpace {
    /// Runs a structural operation: edit a layout of the current index under the control
    /// lock; publish it if `f` says so (on success, or on a failure Linux leaves partial).
    pub(super) fn structural<T>(
        &self,
        f: impl FnOnce(&mut Layout) -> (Result<T>, bool),
    ) -> Result<T> {
        let _ctl = lock(&self.control);
        let guard = epoch::pin();
        let mut layout = Layout::from_index(self.mode, self.index(&guard), &self.accounting);
        let (r, publish) = f(&mut layout);
        if publish {
            self.publish(layout, &guard);
        }
        r
    }

    /// Builds and publishes `layout`, then seals and drains the retired bitmaps.
    pub(super) fn publish(&self, layout: Layout, guard: &Guard) {
        let mut built = layout.build();
        let retired = std::mem::take(&mut built.retired);
        let index = std::mem::take(&mut built.index);
        // AcqRel: Release publishes the new VMAs and bitmaps to readers' Acquire load;
        // Acquire orders our later seals after everything the old index's readers did
        // before we swapped (nothing needs it beyond the swap itself).
        let old = self.index.swap(Owned::new(index), Ordering::AcqRel, guard);
        // Broken twins: `no_defer` frees the old index at once, under pinned readers;
        // `no_reclaim` never frees it.
        if twins::NO_DEFER.on() {
            // SAFETY: none; deliberately wrong (dead code unless the twin is built).
            drop(unsafe { old.into_owned() });
        } else if !twins::NO_RECLAIM.on() {
            // SAFETY: `old` is no longer reachable from `self.index`; readers that loaded
            // it hold guards pinned before this swap, and destruction waits for them.
            unsafe { guard.defer_destroy(old) };
            // Writer handles repin at their next store (`crate::writer`).
            epoch::note_retired();
        }
        // After the swap (not required since sealed bitmaps forward their faults to the
        // successors, published or not; kept so that a fault that looks the address up
        // again finds the successors).
        for r in &retired {
            r.drain();
        }
        drop(retired);
        // After the swap: a writer waiting on a frozen cell sees the thaw or the new
        // index (and retries through it).
        built.thaw();
        // After the drain: the moved and new pages are where the new index says.
        self.note_indirect();
        guard.flush();
    }

    pub(super) fn count_vmas(&self) -> usize {
        self.with_index(|i| i.len())
    }

    /// Runs `f` under the control lock (get-and-clear scans).
    pub(crate) fn with_control<R>(&self, f: impl FnOnce() -> R) -> R {
        let _ctl = lock(&self.control);
        f()
    }
}

/// What [`Layout::build`] made: the new index, the published VMAs it retires, and the
/// frozen `anon_vma` cells to thaw once the index is published.
pub(crate) struct Built {
    /// the index to publish: the base with the window's VMAs replaced
    pub index: VmaIndex,
    /// the published VMAs whose bitmaps were copied, each with where its pages went
    pub retired: Vec<Retired>,
    /// VMAs kept unchanged whose frozen cell must thaw
    thaw: Vec<Arc<Vma>>,
}

impl Built {
    /// Thaws the `anon_vma` cells of the VMAs kept unchanged; call after publishing.
    /// Replaced VMAs (retired, or succeeded by a VMA over the same bitmap) keep a frozen
    /// cell: a writer that holds one waits for the new index and retries through it.
    pub(crate) fn thaw(&mut self) {
        for v in self.thaw.drain(..) {
            v.thaw_anon();
        }
    }
}

impl Layout {
    /// Builds the window's VMAs and their bitmaps. Returns the new index and the published
    /// VMAs whose bitmaps were copied, each with the places its pages went (for the drain).
    /// Linear in the window (the VMAs the operation loaded), plus O(log V) per VMA to
    /// edit the persistent index.
    pub(crate) fn build(mut self) -> Built {
        let wvmas = std::mem::take(&mut self.vmas);
        let origin = std::mem::take(&mut self.origin);
        let frozen = std::mem::take(&mut self.frozen);
        let mut out = Vec::with_capacity(wvmas.len());
        // Every copy made from a published bitmap, and every new VMA made from a published
        // one: the retired VMAs' drain targets and heirs.
        let mut copies: Vec<Copied> = Vec::new();
        let mut derived: Vec<Derived> = Vec::new();
        for w in wvmas {
            // Exactly one published VMA, whole and unchanged?
            if let [Piece {
                start,
                end,
                src:
                    Src::Old {
                        vma,
                        page: 0,
                        rule: CopyRule::Plain,
                    },
            }] = w.pieces.as_slice()
            {
                if *start == vma.start
                    && *end == vma.end
                    && w.start == vma.start
                    && w.end == vma.end
                {
                    if w.meta == vma.meta && w.anon == vma.anon() && w.nsdr == vma.nsdr {
                        out.push(vma.clone());
                    } else {
                        // New flags, same pages: share the bitmap, no copy. The
                        // anon_vma cell is new: the old one stays frozen (if this
                        // layout froze it), so a writer that loaded the old index
                        // cannot assign an anon_vma the successor would not have; it
                        // waits for the new index and retries there.
                        let nv = Arc::new(
                            Vma::new(w.start, w.end, w.meta, w.anon, vma.bitmap.clone())
                                .with_nsdr(w.nsdr),
                        );
                        derived.push(Derived {
                            from: vma.clone(),
                            to: nv.clone(),
                        });
                        out.push(nv);
                    }
                    continue;
                }
            }
            // Grown upwards (an mmap or mremap merged onto its end, a heap growing): keep
            // the bitmap if it has room, so that growing a VMA by n pages costs n, not
            // its size.
            if let Some(grown) = grown_in_place(&w).cloned() {
                if grown.bitmap.pages() >= w.pages() {
                    let bm = grown.bitmap.clone();
                    // The new pages were never part of any VMA, so no fault touches them;
                    // `set_clean` is RMWs under the clear lock, so a fault racing on the
                    // old VMA's pages of a word it shares with them keeps its bit.
                    for p in &w.pieces[1..] {
                        if let Src::Fresh { dirty } = p.src {
                            let dst = (p.start - w.start) >> PAGE_SHIFT;
                            let n = (p.end - p.start) >> PAGE_SHIFT;
                            if twins::GROW_STORE.on() {
                                bm.twin_store_clean(dst, n, !dirty);
                            } else {
                                bm.set_clean(dst, n, !dirty);
                            }
                        }
                    }
                    // A new VMA over the same bitmap, as for new flags above: the old
                    // VMA is not retired (no seal, no drain): a fault that loaded it
                    // marks the very bitmap the new one reads.
                    let nv =
                        Arc::new(Vma::new(w.start, w.end, w.meta, w.anon, bm).with_nsdr(w.nsdr));
                    derived.push(Derived {
                        from: grown.clone(),
                        to: nv.clone(),
                    });
                    out.push(nv);
                    continue;
                }
            }
            let pages = w.pages();
            // Room to grow in place for a VMA that grew: twice its size (up to the
            // address space), so that a VMA grown page by page is copied O(log n) times.
            let capacity = if grown_in_place(&w).is_some() {
                pages
                    .saturating_mul(2)
                    .min(TASK_SIZE >> PAGE_SHIFT)
                    .max(pages)
            } else {
                pages
            };
            let all_fresh_dirty = w
                .pieces
                .iter()
                .all(|p| matches!(p.src, Src::Fresh { dirty: true }));
            let bm = Arc::new(PageBitmap::accounted(
                capacity,
                all_fresh_dirty,
                Some(&self.accounting),
            ));
            for p in &w.pieces {
                let dst = (p.start - w.start) >> PAGE_SHIFT;
                let n = (p.end - p.start) >> PAGE_SHIFT;
                match &p.src {
                    Src::Fresh { dirty } => {
                        if !all_fresh_dirty {
                            bm.set_clean(dst, n, !dirty);
                        }
                    }
                    Src::Old { vma, page, rule } => {
                        bm.copy_from(dst, &vma.bitmap, *page, n, *rule);
                        let drain = if *rule == CopyRule::DirtyPopulated {
                            DrainRule::DirtyPopulated
                        } else {
                            DrainRule::Plain
                        };
                        copies.push(Copied {
                            from: vma.clone(),
                            target: Target {
                                src_first: *page,
                                dst: bm.clone(),
                                dst_first: dst,
                                count: n,
                                rule: drain,
                            },
                        });
                    }
                }
            }
            let nv = Arc::new(Vma::new(w.start, w.end, w.meta, w.anon, bm).with_nsdr(w.nsdr));
            for p in &w.pieces {
                if let Src::Old { vma, .. } = &p.src {
                    derived.push(Derived {
                        from: vma.clone(),
                        to: nv.clone(),
                    });
                }
            }
            out.push(nv);
        }
        // Every loaded VMA whose bitmap no new VMA shares as a whole is retired: it gets
        // sealed and drained into the copies made from it. Grouped by source VMA, so that
        // this is linear in the window.
        let kept_bitmaps: std::collections::HashSet<*const PageBitmap> =
            out.iter().map(|n| Arc::as_ptr(&n.bitmap)).collect();
        let kept_cells: std::collections::HashSet<*const crate::sync::AtomicU64> =
            out.iter().map(|n| Arc::as_ptr(n.anon_cell())).collect();
        let thaw = frozen
            .into_iter()
            .filter(|v| kept_cells.contains(&Arc::as_ptr(v.anon_cell())))
            .collect();
        let mut targets: std::collections::HashMap<*const Vma, Vec<Target>> =
            std::collections::HashMap::new();
        for c in copies {
            targets
                .entry(Arc::as_ptr(&c.from))
                .or_default()
                .push(c.target);
        }
        let mut heirs: std::collections::HashMap<*const Vma, Vec<Arc<Vma>>> =
            std::collections::HashMap::new();
        for d in derived {
            heirs.entry(Arc::as_ptr(&d.from)).or_default().push(d.to);
        }
        let mut retired = Vec::new();
        for old in &origin {
            if kept_bitmaps.contains(&Arc::as_ptr(&old.bitmap)) {
                continue;
            }
            let key = Arc::as_ptr(old);
            retired.push(Retired {
                vma: old.clone(),
                targets: targets.remove(&key).unwrap_or_default(),
                heirs: heirs.remove(&key).unwrap_or_default(),
            });
        }
        let index = self
            .base
            .edited(origin.iter().map(|v| (v.start, v.end)), out);
        Built {
            index,
            retired,
            thaw,
        }
    }
}

/// The published VMA that `w` grows upwards: `w` begins with the whole of it, from its
/// first page, unchanged, and continues with fresh pages only.
fn grown_in_place(w: &super::layout::WVma) -> Option<&Arc<Vma>> {
    let (first, rest) = w.pieces.split_first()?;
    let Src::Old {
        vma,
        page: 0,
        rule: CopyRule::Plain,
    } = &first.src
    else {
        return None;
    };
    let whole = first.start == vma.start && first.end == vma.end && w.start == vma.start;
    let fresh = !rest.is_empty() && rest.iter().all(|p| matches!(p.src, Src::Fresh { .. }));
    (whole && fresh).then_some(vma)
}

/// A copy of part of a published VMA's bitmap into a new bitmap, made by [`Layout::build`].
struct Copied {
    /// the published VMA copied from
    from: Arc<Vma>,
    /// the pages copied and where they went
    target: Target,
}

/// A new VMA made (wholly or partly) from a published one.
struct Derived {
    /// the published VMA
    from: Arc<Vma>,
    /// the new VMA
    to: Arc<Vma>,
}

/// A published VMA replaced by a commit, and where its pages went.
pub(crate) struct Retired {
    /// the old VMA
    pub vma: Arc<Vma>,
    /// where each copy made from it went (the seal's drain targets)
    pub targets: Vec<Target>,
    /// the new VMAs built (partly) from it
    pub heirs: Vec<Arc<Vma>>,
}

impl Retired {
    /// Seals the old bitmap and carries late faults into the copies; passes on an
    /// anon_vma a racing first write fault assigned after the layout was read.
    pub(crate) fn drain(&self) {
        if !self.targets.is_empty() {
            self.vma.bitmap.seal_and_drain(self.targets.clone());
        }
        let anon = self.vma.anon();
        if anon != 0 && !self.vma.meta.flags.shared {
            for h in &self.heirs {
                h.assign_anon(anon);
            }
        }
    }
}
