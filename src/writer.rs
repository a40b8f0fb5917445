//! The writer handle (issue 16): a per-thread handle for a writer that stores again and
//! again (a vCPU, a workload thread), which pins the reclamation epoch once per batch
//! rather than once per store, starts each store from the VMA it used last, and marks as
//! a light writer (no fence: `crate::barrier`) where `membarrier` is available.
//!
//! [`AddressSpace::writer`] returns a [`Writer`]. It holds an epoch guard and a hint
//! (`VmaHint`, in `mm/fault.rs`): the last VMA, the index it was found in, the bitmap
//! chunk last used and the *hot word* (the 64-page word of the last store that changed
//! nothing). A store ([`Writer::write`]) tries three tiers (ARCHITECTURE.md, "The path of
//! a write"): the hot word (`AddressSpace::store_hot`: the retirement count and the index
//! unchanged, then the word's three loads), the hinted VMA (`store_unchanged`), and the
//! fault path of `AddressSpace::write` from the hinted VMA or a lookup: the same checks,
//! the same mark (with a compiler barrier for a light writer), the same retry when a
//! structural operation sealed the VMA's bitmap. The first two only answer stores that
//! change nothing, with the loads the fault path would make. So the handle's contract
//! under concurrent splits, merges, munmaps and harvests is `write`'s: no store lost, no
//! false clean.
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
//! twin, `writer_no_revalidate`; `writer_hot_word_vs_remap` rejects the hot word trusted
//! without its tests, `hot_word_no_revalidate`.
//!
//! # How long a handle pins, and what it costs
//!
//! The guard is repinned (`Guard::repin`: unpin, pin, one `SeqCst` fence) every
//! [`REPIN_EVERY`] counted stores, at the first store after anything was retired on
//! softdirty's collector (any space's published index retires its predecessor:
//! `epoch::retired`), and at [`Writer::repin`]. No structural operation and no harvest
//! ever waits for a guard (retired indexes are deferred, not waited for), so a pinned
//! handle never blocks one; what it holds back is reclamation. A store answered from the
//! hot word (`AddressSpace::store_hot`) is not counted while the retirement count is the
//! one seen at the last pin: the pin then holds back nothing retired since, so a handle
//! that stores to its hot pages for ever holds at most what was retired around its last
//! pin, and repins at its first store after any retirement. Counting those stores (one
//! read-modify-write of the counter on every store) cost 0.4 ns of 3.6. A writer about to
//! block or go idle should call [`Writer::repin`] or drop the handle, as with any
//! crossbeam-epoch guard.

use crate::barrier::LightWriter;
use crate::epoch::{self, Guard};
use crate::errno::Result;
use crate::mm::{AddressSpace, FaultCell, VmaHint};
use crate::twins;

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
    /// `epoch::retired()` when the guard was last pinned.
    retired_seen: usize,
    /// This thread's cell of the space's fault counter, looked up once.
    faults: FaultCell<'a>,
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
            retired_seen: epoch::retired(),
            faults: self.fault_cell(),
        }
    }
}

impl Writer<'_> {
    /// [`AddressSpace::write`] (store the data first).
    #[inline]
    pub fn write(&mut self, addr: u64, len: u64) -> Result<()> {
        // A hot page stored to again: answered from the hint's word (`store_hot`), or
        // from its VMA (`store_unchanged`). A hot store is not counted towards a repin
        // while nothing was retired since the last (module docs).
        let light = self.light.is_some();
        // Broken twin `hot_word_no_revalidate`: the retirement count not compared.
        if (self.retired_seen == epoch::retired() || twins::HOT_WORD_NO_REVALIDATE.on())
            && self.mm.store_hot(&self.guard, &self.hint, addr, len, light)
        {
            return Ok(());
        }
        self.tick();
        if self
            .mm
            .store_unchanged(&self.guard, &mut self.hint, addr, len, light)
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
        self.faults.add(dirtied);
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
        // After the pin: a retirement this misses is one the pin may hold back, at most
        // until the next retirement or `REPIN_EVERY` counted stores.
        self.retired_seen = epoch::retired();
    }

    #[inline]
    fn tick(&mut self) {
        self.since_repin += 1;
        if self.since_repin >= REPIN_EVERY || self.retired_seen != epoch::retired() {
            self.repin();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::linux::PAGE_SIZE;
    use crate::{AddressSpace, Mode, Placement, Prot, Sharing};

    /// Every first write is counted once, whichever thread made it and however: plain
    /// writes and writer handles, threads at once and threads started after others
    /// exited (which inherit their cells: `thread_local` recycles thread ids), a handle's
    /// counts visible while it is still alive. A counter that lost a cell's counts, or
    /// shared a cell between live threads without an RMW, would come out short.
    #[test]
    fn every_first_write_is_counted_once() {
        const THREADS: u64 = 4;
        const PAGES: u64 = 512; // per thread and wave: half plain, half through a handle
        let mm = AddressSpace::new(Mode::Precise);
        let len = 2 * THREADS * PAGES * PAGE_SIZE;
        let a = mm
            .mmap(0, len, Prot::RW, Sharing::Private, Placement::Hint)
            .expect("mmap");
        // Populated and then cleared: each page's next write turns it soft-dirty.
        mm.write(a, len).expect("write");
        mm.clear_refs(4).expect("clear_refs");
        let mut expected = mm.faults();
        for wave in 0..2u64 {
            let counted: u64 = std::thread::scope(|s| {
                let hs: Vec<_> = (0..THREADS)
                    .map(|t| {
                        let mm = &mm;
                        s.spawn(move || {
                            let base = a + ((wave * THREADS + t) * PAGES) * PAGE_SIZE;
                            let mut n = 0;
                            let mut w = mm.writer();
                            for p in 0..PAGES {
                                let at = base + p * PAGE_SIZE;
                                let (d, r) = if p % 2 == 0 {
                                    mm.write_counting(at, PAGE_SIZE)
                                } else {
                                    w.write_counting(at, PAGE_SIZE)
                                };
                                r.expect("write");
                                n += d;
                            }
                            n
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().expect("writer")).sum()
            });
            let fresh = THREADS * PAGES;
            assert_eq!(counted, fresh, "wave {wave}: pages the writes turned dirty");
            expected += fresh;
            assert_eq!(mm.faults(), expected, "wave {wave}: the fault counter");
        }
        // A live handle's count is visible at once.
        mm.clear_refs(4).expect("clear_refs");
        let mut w = mm.writer();
        w.write(a, 3 * PAGE_SIZE).expect("write");
        assert_eq!(mm.faults(), expected + 3);
    }
}
