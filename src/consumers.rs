//! Independent consumers of one address space (issue 17): a migration, a snapshotter and
//! a garbage collector each see every write since their own last harvest, although the
//! space keeps one soft-dirty bit per page.
//!
//! The scheme is the slots' ([`crate::slots`]), over addresses instead of a memslot:
//! every harvest, by a consumer or anonymous ([`AddressSpace::scan_and_clear`]), is a
//! get-and-clear of the shared bitmap; the pages it takes are added to every *other*
//! registered consumer's pending set, and a consumer's harvest reports what it took plus
//! its own pending pages in the range (and empties those). Harvests that touch consumers
//! serialize on the space's consumer lock (taken before the control lock), so no harvest
//! can take a page while another consumer's pending set is being read; writers never take
//! it. A consumer's harvest is transactional ([`crate::dirtylog::Harvest`]): an abort gives
//! the pages back to that consumer alone, the others never lost them.
//!
//! A pending set is a set of address runs, so it costs memory for the runs another
//! consumer harvested that this one has not (about 48 bytes a run,
//! [`AddressSpace::consumer_tracking_bytes`]), nothing while every consumer keeps up.
//! Pages that are unmapped when a consumer harvests are not reported; a page moved by
//! `mremap` is reported at its destination, which is soft-dirty by the mode's own rule in
//! `precise`. `clear_refs 4` is the process-wide reset: it clears the shared bits and
//! leaves the pending sets as they are.

use std::collections::BTreeMap;

use crate::dirtylog::{DirtyLog, Harvest};
use crate::errno::{Errno, Result};
use crate::linux::PAGE_SHIFT;
use crate::mm::AddressSpace;
use crate::sync::lock;

/// A registered consumer of an [`AddressSpace`] ([`AddressSpace::register_consumer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConsumerId(u32);

/// Disjoint, non-touching address runs `[start, end)`, keyed by start.
#[derive(Clone, Debug, Default)]
struct Runs(BTreeMap<u64, u64>);

impl Runs {
    /// Adds `[s, e)`, merging with what it touches.
    fn insert(&mut self, mut s: u64, mut e: u64) {
        if s >= e {
            return;
        }
        if let Some((&ps, &pe)) = self.0.range(..=s).next_back() {
            if pe >= s {
                s = ps;
                e = e.max(pe);
                self.0.remove(&ps);
            }
        }
        while let Some((&ns, &ne)) = self.0.range(s..).next() {
            if ns > e {
                break;
            }
            e = e.max(ne);
            self.0.remove(&ns);
        }
        self.0.insert(s, e);
    }

    /// Removes and returns the parts of the runs inside `[s, e)`.
    fn take(&mut self, s: u64, e: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let first = self.0.range(..s).next_back().map_or(s, |(&ps, _)| ps);
        let keys: Vec<u64> = self.0.range(first..e).map(|(&k, _)| k).collect();
        for k in keys {
            let ke = self.0[&k];
            let (a, b) = (k.max(s), ke.min(e));
            if a >= b {
                continue;
            }
            self.0.remove(&k);
            if k < a {
                self.0.insert(k, a);
            }
            if b < ke {
                self.0.insert(b, ke);
            }
            out.push((a, b));
        }
        out
    }
}

/// One registered consumer.
#[derive(Debug)]
struct Consumer {
    id: u32,
    name: String,
    /// what other harvests took that this consumer has not seen
    pending: Runs,
}

/// The consumers of one space (`AddressSpace::consumers`).
#[derive(Debug, Default)]
pub(crate) struct Consumers {
    next: u32,
    list: Vec<Consumer>,
}

impl Consumers {
    /// Adds the pages `log` took to every consumer's pending set but `except`'s.
    fn note_taken(&mut self, log: &DirtyLog, except: Option<u32>) {
        for c in self.list.iter_mut().filter(|c| Some(c.id) != except) {
            for (a, b) in log.address_ranges() {
                c.pending.insert(a, b);
            }
        }
    }
}

impl AddressSpace {
    /// Registers a consumer named `name`: from now on it sees every page written (and,
    /// in `precise`, every page changed) after this call, at its own harvests
    /// ([`Self::consumer_harvest`]), whatever the others harvest. `EEXIST` if the name is
    /// taken.
    pub fn register_consumer(&self, name: &str) -> Result<ConsumerId> {
        let mut cs = lock(&self.consumers);
        if cs.list.iter().any(|c| c.name == name) {
            return Err(Errno::EEXIST);
        }
        let id = cs.next;
        cs.next += 1;
        cs.list.push(Consumer {
            id,
            name: name.to_string(),
            pending: Runs::default(),
        });
        Ok(ConsumerId(id))
    }

    /// Unregisters a consumer and drops its pending set. `ENOENT` if it is not registered.
    pub fn unregister_consumer(&self, c: ConsumerId) -> Result<()> {
        let mut cs = lock(&self.consumers);
        let i = cs
            .list
            .iter()
            .position(|x| x.id == c.0)
            .ok_or(Errno::ENOENT)?;
        cs.list.remove(i);
        Ok(())
    }

    /// Consumer `c`'s harvest of `[addr, addr + len)`, transactional: the pages written
    /// since `c`'s last committed harvest of them (taken from the shared bitmap now, or
    /// taken earlier by another consumer or an anonymous harvest), still mapped.
    /// Committed, they are `c`'s; aborted or dropped, they are `c`'s pending pages again.
    /// Errors: as [`Self::scan_and_clear`]; `ENOENT` for an unknown consumer.
    pub fn consumer_harvest(&self, c: ConsumerId, addr: u64, len: u64) -> Result<Harvest<'_>> {
        let mut cs = lock(&self.consumers);
        if !cs.list.iter().any(|x| x.id == c.0) {
            return Err(Errno::ENOENT);
        }
        let taken = self.scan_and_clear_shared(addr, len)?;
        cs.note_taken(&taken, Some(c.0));
        let (start, end) = (taken.addr(), taken.addr() + taken.len());
        let own = cs
            .list
            .iter_mut()
            .find(|x| x.id == c.0)
            .map(|x| x.pending.take(start, end))
            .unwrap_or_default();
        drop(cs);
        let mut runs: Vec<(u64, u64)> = taken.runs().to_vec();
        if !own.is_empty() {
            // The pending pages that are still mapped.
            let mapped: Vec<(u64, u64)> = self
                .vmas()
                .iter()
                .filter(|v| v.start < end && v.end > start)
                .map(|v| (v.start, v.end))
                .collect();
            for (a, b) in own {
                for &(vs, ve) in &mapped {
                    let (s, e) = (a.max(vs), b.min(ve));
                    if s < e {
                        runs.push(((s - start) >> PAGE_SHIFT, (e - s) >> PAGE_SHIFT));
                    }
                }
            }
        }
        let log = DirtyLog::new(start, end - start, runs);
        Ok(Harvest::for_consumer(self, log, c))
    }

    /// Gives an aborted harvest's pages back to consumer `c` (nothing if it is gone).
    pub(crate) fn consumer_give_back(&self, c: ConsumerId, log: &DirtyLog) {
        let mut cs = lock(&self.consumers);
        if let Some(x) = cs.list.iter_mut().find(|x| x.id == c.0) {
            for (a, b) in log.address_ranges() {
                x.pending.insert(a, b);
            }
        }
    }

    /// Adds what an anonymous harvest took to every consumer's pending set; called by
    /// [`Self::scan_and_clear`] with the consumer lock held.
    pub(crate) fn with_consumers<T>(&self, f: impl FnOnce(&mut dyn FnMut(&DirtyLog)) -> T) -> T {
        let mut cs = lock(&self.consumers);
        if cs.list.is_empty() {
            return f(&mut |_| {});
        }
        f(&mut |log| cs.note_taken(log, None))
    }

    /// Bytes held by the consumers' pending sets (about 48 per run: the `BTreeMap` entry
    /// and its share of a node).
    pub fn consumer_tracking_bytes(&self) -> usize {
        let cs = lock(&self.consumers);
        cs.list.iter().map(|c| 48 * c.pending.0.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::Runs;

    #[test]
    fn runs_merge_and_take() {
        let mut r = Runs::default();
        r.insert(10, 20);
        r.insert(30, 40);
        r.insert(20, 30);
        assert_eq!(r.0.len(), 1);
        r.insert(5, 8);
        assert_eq!(r.take(0, 12), vec![(5, 8), (10, 12)]);
        assert_eq!(r.take(35, 100), vec![(35, 40)]);
        assert_eq!(r.0.into_iter().collect::<Vec<_>>(), vec![(12, 35)]);
    }
}
