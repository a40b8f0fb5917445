//! The tracker service: a registry of named address spaces.
//!
//! `dashmap` is the right tool here and only here: keyed lookups by name with moderate
//! churn (`space`, `fork`), never on the fault path. Lookups clone the `Arc` out
//! immediately, so no map guard is ever held across another call (dashmap can deadlock
//! when a shard guard is held while the same map is used again).

use crate::accounting::Accounting;
use crate::errno::{Errno, Result};
use crate::mm::AddressSpace;
use crate::mode::Mode;
use crate::sync::Arc;
use dashmap::DashMap;

/// A registry of address spaces by name, all following one mode.
#[derive(Debug)]
pub struct Tracker {
    mode: Mode,
    spaces: DashMap<String, Arc<AddressSpace>>,
    /// shared by every space (and fork child): one machine's memory
    accounting: std::sync::Arc<Accounting>,
}

impl Tracker {
    /// An empty registry whose spaces follow `mode`, with the default chunk limit.
    pub fn new(mode: Mode) -> Tracker {
        Tracker::with_accounting(mode, std::sync::Arc::default())
    }

    /// An empty registry whose spaces follow `mode` and share `accounting` (its chunk
    /// limit is the memory of all of them together).
    pub fn with_accounting(mode: Mode, accounting: std::sync::Arc<Accounting>) -> Tracker {
        Tracker {
            mode,
            spaces: DashMap::new(),
            accounting,
        }
    }

    /// The accounts every space of this tracker counts in.
    pub fn accounting(&self) -> &std::sync::Arc<Accounting> {
        &self.accounting
    }

    /// The mode of every space.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The space called `name`, created empty if it does not exist.
    pub fn space(&self, name: &str) -> Arc<AddressSpace> {
        if let Some(s) = self.spaces.get(name) {
            return s.value().clone();
        }
        self.spaces
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(AddressSpace::with_accounting(
                    self.mode,
                    self.accounting.clone(),
                ))
            })
            .value()
            .clone()
    }

    /// The space called `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<Arc<AddressSpace>> {
        self.spaces.get(name).map(|s| s.value().clone())
    }

    /// Forks `parent` into a new space `child`; EEXIST if `child` exists.
    pub fn fork(&self, parent: &str, child: &str) -> Result<Arc<AddressSpace>> {
        let p = self.get(parent).ok_or(Errno::ESRCH)?;
        if self.spaces.contains_key(child) {
            return Err(Errno::EEXIST);
        }
        let c = Arc::new(p.fork());
        match self.spaces.entry(child.to_string()) {
            dashmap::mapref::entry::Entry::Occupied(_) => Err(Errno::EEXIST),
            dashmap::mapref::entry::Entry::Vacant(v) => {
                v.insert(c.clone());
                Ok(c)
            }
        }
    }

    /// After a store by `from` to `[addr, addr + len)` (a write, a populating write):
    /// in `precise` mode, every other mapping of the shared memory pages it changed, in
    /// any space, reports them soft-dirty ([`crate::shmem`]). Nothing in the other modes.
    pub fn propagate_shared_store(&self, from: &AddressSpace, addr: u64, len: u64) {
        if !self.mode.is_precise() {
            return;
        }
        let runs = from.shared_runs_of_store(addr, len);
        if runs.is_empty() {
            return;
        }
        for e in self.spaces.iter() {
            let same = std::ptr::eq(Arc::as_ptr(e.value()), from);
            for r in &runs {
                e.value().mark_shared_run(r, same);
            }
        }
    }

    /// Names of all spaces, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.spaces.iter().map(|e| e.key().clone()).collect();
        v.sort();
        v
    }
}
