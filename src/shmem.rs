//! Shared memory seen from several spaces: in `precise` mode a store through one mapping
//! of a shared memory object's page changes the content every other mapping of that page
//! shows, so each of them must report the page soft-dirty (trace format v2, "What
//! soft-dirty means for the new memory"; shared anonymous memory is a shmem object, mapped
//! again by every fork child).
//!
//! The kernel's page tables see only the store's own mapping, so `legacy`, `sticky`,
//! `nomerge` and `regions` do nothing here. Propagation is done by whoever holds the
//! spaces ([`crate::tracker::Tracker::propagate_shared_store`]) after a store: each other
//! mapping of the object's pages gets a dirtying mark (no population), with the mark's
//! ordering (a harvest that misses it runs before it, and the page stays dirty for the
//! next one).

use crate::linux::{PAGE_SHIFT, PAGE_SIZE};
use crate::mm::AddressSpace;

/// A run of pages of one shared memory object a store changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedRun {
    /// the object (`VmaMeta::file`)
    pub file: u64,
    /// its first page
    pub pgoff: u64,
    /// pages
    pub count: u64,
    /// the address the store reached it at, in the storing space
    pub addr: u64,
}

impl AddressSpace {
    /// The shared-memory pages a store to `[addr, addr + len)` changes: those of shared
    /// writable VMAs, up to the first page a store would fault on (as `write` stops).
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
                let e = v.end.min(end);
                if let (true, Some(file)) = (v.meta.flags.shared, v.meta.file) {
                    out.push(SharedRun {
                        file,
                        pgoff: v.meta.pgoff + ((cursor - v.start) >> PAGE_SHIFT),
                        count: (e - cursor) >> PAGE_SHIFT,
                        addr: cursor,
                    });
                }
                cursor = e;
            }
        });
        out
    }

    /// Marks soft-dirty (without populating) every page of this space's shared mappings
    /// that shows a page of `run`, except the pages at `run.addr` when `skip_own` (the
    /// storing mapping, already marked by the store).
    pub fn mark_shared_run(&self, run: &SharedRun, skip_own: bool) {
        self.with_index(|idx| {
            for v in idx.iter() {
                if !v.meta.flags.shared || v.meta.file != Some(run.file) {
                    continue;
                }
                let (a, b) = (v.meta.pgoff, v.meta.pgoff + v.pages());
                let (s, e) = (a.max(run.pgoff), b.min(run.pgoff + run.count));
                if s >= e {
                    continue;
                }
                let at = v.start + ((s - a) << PAGE_SHIFT);
                let own_end = run.addr + (run.count << PAGE_SHIFT);
                if skip_own && at < own_end && run.addr < at + ((e - s) << PAGE_SHIFT) {
                    continue;
                }
                let _ = v.bitmap.mark_dirty(v.page_of(at), e - s);
            }
        });
    }
}
