//! The writer handle (issue 16): a per-thread handle for a writer that stores again and
//! again (a vCPU, a workload thread), which pins the reclamation epoch once per batch
//! rather than once per store and starts each store from the VMA it used last.
//!
//! [`AddressSpace::writer`] returns a [`Writer`]. It holds an epoch guard and a hint
//! (`VmaHint`, in `mm/fault.rs`): the last VMA and the index it was found in. A store
//! ([`Writer::write`]) loads the published index (one `Acquire` load); if it is the
//! index of the hint and the VMA contains the page, the lookup is skipped; otherwise it
//! looks the page up and keeps the new VMA. Everything after the lookup is
//! `AddressSpace::write`'s fault path, unchanged: the same checks, the same mark with
//! the data-ordering fence of contract 0, the same retry when a structural operation
//! sealed the VMA's bitmap. So the handle's contract under concurrent splits, merges,
//! munmaps and harvests is `write`'s: no store lost, no false clean.
//!
//! # Why the hint is sound
//!
//! An index is immutable once published, and destroyed only after every guard pinned
//! before its retirement is dropped (`crossbeam_epoch::Guard::defer_destroy`). The handle
//! takes its hint under its own guard and forgets it whenever it repins, so while a hint
//! exists the index it names is alive and its address cannot be reused: "the published
//! index is the hint's index" is then exactly "no structural change was published since
//! the hint was taken", and the hinted VMA is what a lookup would return. Trusting the
//! hint without that test lets a store land in a VMA that munmap or `MAP_FIXED` already
//! replaced — a lost write. loom model `address_space::writer_hint_vs_remap` rejects that
//! twin, `writer_no_revalidate`.
//!
//! # How long a handle pins, and what it costs
//!
//! The guard is repinned (`Guard::repin`: unpin, pin, one `SeqCst` fence) every
//! [`REPIN_EVERY`] stores and at [`Writer::repin`]. No structural operation and no
//! harvest ever waits for a guard (retired indexes are deferred, not waited for), so a
//! pinned handle never blocks one; what it holds back is reclamation: the indexes, VMAs
//! and bitmaps retired while it is pinned stay allocated until it repins. A writer about
//! to block or go idle should call [`Writer::repin`] or drop the handle, as with any
//! crossbeam-epoch guard.

use crate::barrier::LightWriter;
use crate::epoch::{self, Guard};
use crate::errno::Result;
use crate::mm::{AddressSpace, VmaHint};

/// Stores between two repins of a [`Writer`]'s guard.
pub const REPIN_EVERY: u32 = 1024;

/// A per-thread writer of one address space ([`AddressSpace::writer`]): not `Send`
/// (it holds an epoch guard of its thread).
pub struct Writer<'a> {
    mm: &'a AddressSpace,
    guard: Guard,
    hint: VmaHint,
    since_repin: u32,
    /// Registered as a light writer (`crate::barrier`): marks without a fence.
    light: Option<LightWriter>,
}

impl std::fmt::Debug for Writer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("since_repin", &self.since_repin)
            .field("light", &self.light.is_some())
            .finish_non_exhaustive()
    }
}

impl AddressSpace {
    /// A writer handle for the calling thread (module docs): stores through it cost less
    /// than [`AddressSpace::write`] and keep its contract.
    pub fn writer(&self) -> Writer<'_> {
        Writer {
            mm: self,
            guard: epoch::pin(),
            hint: VmaHint::NONE,
            since_repin: 0,
            light: LightWriter::register(),
        }
    }
}

impl Writer<'_> {
    /// [`AddressSpace::write`] (store the data first).
    #[inline]
    pub fn write(&mut self, addr: u64, len: u64) -> Result<()> {
        // A hot page stored to again: answered from the hint (`store_unchanged`).
        self.tick();
        if self
            .mm
            .store_unchanged(&self.guard, &mut self.hint, addr, len, self.light.is_some())
        {
            return Ok(());
        }
        self.store(addr, len).1
    }

    /// [`AddressSpace::write_counting`]: also how many pages the store turned soft-dirty.
    #[inline]
    pub fn write_counting(&mut self, addr: u64, len: u64) -> (u64, Result<()>) {
        self.tick();
        self.store(addr, len)
    }

    /// The store through the fault path, after `tick`.
    fn store(&mut self, addr: u64, len: u64) -> (u64, Result<()>) {
        let mut dirtied = 0;
        let light = self.light.is_some();
        let r = self.mm.fault_in(
            &self.guard,
            &mut self.hint,
            addr,
            len,
            true,
            light,
            &mut dirtied,
        );
        (dirtied, r)
    }

    /// [`AddressSpace::read`].
    pub fn read(&mut self, addr: u64, len: u64) -> Result<()> {
        self.tick();
        self.mm
            .fault_in(&self.guard, &mut self.hint, addr, len, false, false, &mut 0)
    }

    /// Whether this handle marks without a fence (a light writer, `crate::barrier`).
    pub fn is_light(&self) -> bool {
        self.light.is_some()
    }

    /// Lets reclamation advance past this handle now (before blocking or idling): forgets
    /// the hint and repins.
    pub fn repin(&mut self) {
        // The hint must not outlive the pin it was taken under (module docs).
        self.hint = VmaHint::NONE;
        self.since_repin = 0;
        self.guard.repin();
    }

    #[inline]
    fn tick(&mut self) {
        self.since_repin += 1;
        if self.since_repin >= REPIN_EVERY {
            self.repin();
        }
    }
}
