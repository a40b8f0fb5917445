//! Shared memory seen from several mappings: in `precise` mode a store through one mapping
//! of a file's page (a memfd, a regular file, the shmem object of shared anonymous memory),
//! or a `write(2)` to the file, changes the content every other mapping of that page shows,
//! so each of them must report the page soft-dirty (trace format v2, "What soft-dirty
//! means for the new memory"): a shared mapping's page, populated or not, and a private
//! mapping's page that still shows the file's page (no private copy yet).
//!
//! The kernel's page tables see only the store's own mapping, so `legacy`, `sticky`,
//! `nomerge` and `regions` do nothing here. Propagation is done by whoever holds the
//! spaces ([`crate::tracker::Tracker::propagate_shared_store`],
//! [`crate::tracker::Tracker::fwrite`]) after the store: each other mapping of the file's
//! pages gets a dirtying mark (no population), with the mark's ordering (a harvest that
//! misses it runs before it, and the page stays dirty for the next one).

use crate::file::{FileRef, Files};
use crate::linux::{PAGE_SHIFT, PAGE_SIZE};
use crate::mm::AddressSpace;

/// A run of pages of one file that a store changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedRun {
    /// the file (`VmaMeta::file`)
    pub file: FileRef,
    /// its first page
    pub pgoff: u64,
    /// pages
    pub count: u64,
    /// where the store reached it in the storing space (`None`: a `write(2)`, through no
    /// mapping)
    pub addr: Option<u64>,
}

impl AddressSpace {
    /// The file pages a store to `[addr, addr + len)` changes: those of shared writable
    /// VMAs, up to the first page a store would fault on (as `write` stops).
    pub fn shared_runs_of_store(&self, addr: u64, len: u64) -> Vec<SharedRun> {
        let mut out = Vec::new();
        if len == 0 {
            return out;
        }
        // The pages a store reaches, as `write` counts them (the last one included,
        // without overflow at the top of the address space).
        let last = addr.checked_add(len - 1).map_or(u64::MAX, |l| l) & !(PAGE_SIZE - 1);
        let end = last.saturating_add(PAGE_SIZE);
        let mut cursor = addr & !(PAGE_SIZE - 1);
        self.with_index(|idx| {
            for v in idx.range(cursor, end) {
                if v.start > cursor || !v.meta.flags.prot.write {
                    return;
                }
                let mut e = v.end.min(end);
                // A store stops at a guard marker (SIGSEGV), in any VMA.
                let mut stop = false;
                if v.bitmap.may_have_guards() {
                    let first = v.page_of(cursor);
                    if let Some(g) = v.bitmap.first_guard(first, (e - cursor) >> PAGE_SHIFT) {
                        e = cursor + ((g - first) << PAGE_SHIFT);
                        stop = true;
                    }
                }
                let Some(file) = v.meta.file else {
                    if stop {
                        return;
                    }
                    cursor = e;
                    continue;
                };
                // A store stops at the end of a sized file (SIGBUS).
                if let Some(size) = self.files().size(file) {
                    let pages = Files::pages_of(size).saturating_sub(v.meta.pgoff);
                    let eof = v.start.saturating_add(pages.saturating_mul(PAGE_SIZE));
                    if eof < e {
                        e = eof;
                        stop = true;
                    }
                }
                if v.meta.flags.shared && cursor < e {
                    out.push(SharedRun {
                        file,
                        pgoff: v.meta.pgoff + ((cursor - v.start) >> PAGE_SHIFT),
                        count: (e - cursor) >> PAGE_SHIFT,
                        addr: Some(cursor),
                    });
                }
                if stop {
                    return;
                }
                cursor = e;
            }
        });
        out
    }

    /// Marks soft-dirty (without populating) every page of this space's mappings that
    /// shows a page of `run`: all of a shared mapping's, and a private mapping's pages
    /// without a private copy. Skips the pages at `run.addr` when `skip_own` (the storing
    /// mapping, already marked by the store).
    pub fn mark_shared_run(&self, run: &SharedRun, skip_own: bool) {
        self.with_index(|idx| {
            for v in idx.iter() {
                if v.meta.file != Some(run.file) {
                    continue;
                }
                let (a, b) = (v.meta.pgoff, v.meta.pgoff + v.pages());
                let (s, e) = (a.max(run.pgoff), b.min(run.pgoff + run.count));
                if s >= e {
                    continue;
                }
                let at = v.start + ((s - a) << PAGE_SHIFT);
                if let (true, Some(own)) = (skip_own, run.addr) {
                    let own_end = own + (run.count << PAGE_SHIFT);
                    if at < own_end && own < at + ((e - s) << PAGE_SHIFT) {
                        continue;
                    }
                }
                if v.meta.flags.shared {
                    let _ = v.bitmap.mark_dirty(v.page_of(at), e - s);
                } else {
                    let _ = v.bitmap.mark_dirty_unbacked(v.page_of(at), e - s);
                }
            }
        });
        self.note_indirect();
    }
}
