//! Dirty rings (issue 17): KVM's dirty-ring interface over a shared [`PageBitmap`], so
//! that a harvest costs what was written, and each writer's dirty rate is known.
//!
//! Each writer ([`RingWriter`], one per vCPU) owns a ring of fixed capacity. A mark sets
//! the pages' bits as [`crate::Producer::mark`] does; when it turned a clean page dirty
//! it also pushes the run `(first, count)` onto the writer's ring. A harvest
//! ([`DirtyRings::harvest`]) collects every ring's entries and get-and-clears exactly
//! those runs in the bitmap, then resets the rings (moves their heads): its cost follows
//! the entries, not the size of memory. The bitmap stays the truth:
//!
//! - **Soft-full**: a mark reports [`RingMark::SoftFull`] once its ring holds
//!   `capacity - capacity / 8` entries, KVM's `KVM_EXIT_DIRTY_RING_FULL`: the writer
//!   should let the harvester run.
//! - **Overflow**: a push onto a full ring sets the rings' overflow flag instead, and the
//!   next harvest falls back to the whole bitmap. Nothing is lost: the page is dirty in
//!   the bitmap either way.
//!
//! # Why nothing is lost
//!
//! Invariant: every dirty page of the bitmap is in an uncollected ring entry, or the
//! overflow flag is set. A mark first sets the bit (the bitmap's own RMW, with the data
//! fence of contract 0), then publishes the entry (the slot's store, then the tail's
//! `Release` store, which pairs with the harvest's `Acquire` load of the tail) or the flag
//! (an `AcqRel` swap, totally ordered with the harvest's swap that takes it). A harvest takes the flag first,
//! then reads each tail and takes the runs below it. A mark that the harvest misses
//! published its entry or flag after the harvest read it, so its page is still dirty and
//! its entry or flag is there for the next harvest; a mark whose test found the page
//! already dirty pushes nothing, and the entry or flag of the mark that dirtied it covers
//! it. An entry whose pages a harvest already took (through another writer's entry)
//! costs the next harvest a get-and-clear that finds them clean, nothing more. Only ring
//! writers may mark a bitmap that is harvested through rings: a plain mark pushes no entry.
//! Loom model `ring::overflow_vs_harvest` (loom-tests), broken twin `ring_no_overflow`.

use crate::bitmap::{Mark, PageBitmap};
use crate::errno::{Errno, Result};
use crate::linux::{PAGE_SHIFT, PAGE_SIZE};
use crate::mm::AddressSpace;
use crate::sync::{lock, Arc, AtomicBool, AtomicU64, Mutex, Ordering};

/// Pages per ring entry at most (a longer run takes several entries).
const MAX_ENTRY_PAGES: u64 = 1 << 16;

/// [`SpaceRings::harvest`] takes runs at most this many pages apart with one get-and-clear
/// (four bitmap words).
const SCAN_GAP: u64 = 256;

/// One writer's ring: a single-producer, single-consumer queue of packed runs.
#[derive(Debug)]
struct Ring {
    slots: Box<[AtomicU64]>,
    /// next entry to collect (the harvester's)
    head: AtomicU64,
    /// next entry to write (the writer's)
    tail: AtomicU64,
    /// pages pushed since the ring was made (the writer's dirty count)
    pages: AtomicU64,
}

impl Ring {
    fn new(capacity: usize) -> Ring {
        Ring {
            slots: (0..capacity.max(1)).map(|_| AtomicU64::new(0)).collect(),
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            pages: AtomicU64::new(0),
        }
    }

    /// The writer's push of the runs of `[first, end)`, at most [`MAX_ENTRY_PAGES`] pages
    /// an entry; `false` if the ring filled up before the last one (the caller then sets
    /// its overflow flag).
    fn push(&self, first: u64, end: u64) -> bool {
        let cap = self.slots.len() as u64;
        let mut p = first;
        while p < end {
            let n = (end - p).min(MAX_ENTRY_PAGES);
            let t = self.tail.load(Ordering::Relaxed);
            // Pairs with the harvest's `Release` store of the head: a slot is reused only
            // after the harvest read it.
            if t - self.head.load(Ordering::Acquire) >= cap {
                return false;
            }
            self.slots[(t % cap) as usize].store((p << 16) | (n - 1), Ordering::Relaxed);
            // Release: pairs with the harvest's `Acquire` load of the tail; the slot and
            // the bits the mark set before it are visible to the harvest that sees it.
            self.tail.store(t + 1, Ordering::Release);
            p += n;
        }
        true
    }

    /// The writer's count of pages it dirtied (only this writer writes it: a load and a
    /// store, no locked RMW).
    fn count(&self, pages: u64) {
        let n = self.pages.load(Ordering::Relaxed);
        self.pages.store(n + pages, Ordering::Relaxed);
    }

    /// Whether the ring is at its soft limit (7/8 full).
    fn soft_full(&self) -> RingMark {
        let cap = self.slots.len() as u64;
        let used = self.tail.load(Ordering::Relaxed) - self.head.load(Ordering::Acquire);
        if used >= cap - cap / 8 {
            RingMark::SoftFull
        } else {
            RingMark::Ok
        }
    }

    /// The harvester's collection: appends the entries below the tail to `runs` (unless
    /// `None`: the caller harvests everything) and frees their slots; returns how many.
    fn collect(&self, mut runs: Option<&mut Vec<(u64, u64)>>) -> u64 {
        // Pairs with the writer's `Release` store of the tail: the slots below it are
        // written, and so are the bits their marks set.
        let t = self.tail.load(Ordering::Acquire);
        let h0 = self.head.load(Ordering::Relaxed);
        if let Some(runs) = runs.as_deref_mut() {
            let cap = self.slots.len() as u64;
            for h in h0..t {
                let v = self.slots[(h % cap) as usize].load(Ordering::Relaxed);
                runs.push((v >> 16, (v & 0xffff) + 1));
            }
        }
        // Pairs with the writer's `Acquire` load of the head: the slots are free (the
        // entries were copied out above).
        self.head.store(t, Ordering::Release);
        t - h0
    }
}

#[derive(Debug)]
struct Shared {
    bits: Arc<PageBitmap>,
    overflow: AtomicBool,
}

/// The rings of one bitmap: hands out writers, harvests them.
#[derive(Debug)]
pub struct DirtyRings {
    shared: Arc<Shared>,
    rings: Mutex<Vec<Arc<Ring>>>,
}

/// One writer's handle: marks pages and pushes what it dirtied onto its ring.
#[derive(Debug)]
pub struct RingWriter {
    shared: Arc<Shared>,
    ring: Arc<Ring>,
}

/// What a [`RingWriter::mark`] asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingMark {
    /// Carry on.
    Ok,
    /// The ring is at its soft limit: let the harvester run (KVM's dirty-ring-full exit).
    SoftFull,
}

/// What one [`DirtyRings::harvest`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingHarvest {
    /// ring entries collected
    pub entries: u64,
    /// whether a ring had overflowed, so the whole bitmap was harvested
    pub full_scan: bool,
}

impl DirtyRings {
    /// Rings over `bits`. Every mark of `bits` must then go through a [`RingWriter`].
    pub fn new(bits: Arc<PageBitmap>) -> DirtyRings {
        DirtyRings {
            shared: Arc::new(Shared {
                bits,
                overflow: AtomicBool::new(false),
            }),
            rings: Mutex::new(Vec::new()),
        }
    }

    /// A writer with a ring of `capacity` entries (at least 1).
    pub fn writer(&self, capacity: usize) -> RingWriter {
        let ring = Arc::new(Ring::new(capacity));
        lock(&self.rings).push(Arc::clone(&ring));
        RingWriter {
            shared: Arc::clone(&self.shared),
            ring,
        }
    }

    /// Collects every ring and get-and-clears the runs it names, calling `sink(first,
    /// count)` with each run taken, in ring order (two entries may name one page: a write
    /// that dirtied it again between them makes one harvest report it twice); after an
    /// overflow, harvests the whole bitmap instead. One harvester
    /// at a time per set of rings (the rings are single-consumer): this takes the rings'
    /// lock.
    pub fn harvest(&self, mut sink: impl FnMut(u64, u64)) -> RingHarvest {
        let rings = lock(&self.rings);
        let mut out = RingHarvest::default();
        let bits = &self.shared.bits;
        // Pairs with a writer's swap of the flag: the bit it set before is visible to the
        // full harvest below.
        if self.shared.overflow.swap(false, Ordering::AcqRel) {
            out.full_scan = true;
            for r in rings.iter() {
                // Entries before this tail are covered by the full harvest.
                out.entries += r.collect(None);
            }
            bits.harvest(0, bits.pages(), |run| sink(run.first, run.count));
            return out;
        }
        let mut runs = Vec::new();
        for r in rings.iter() {
            out.entries += r.collect(Some(&mut runs));
        }
        // One clear lock and one data-ordering fence for all the entries.
        bits.harvest_runs(&runs, |run| sink(run.first, run.count));
        out
    }

    /// Pages each writer has pushed since it was made, in the order the writers were made:
    /// divided by the time between two calls, the writers' dirty rates.
    pub fn pages_dirtied(&self) -> Vec<u64> {
        lock(&self.rings)
            .iter()
            .map(|r| r.pages.load(Ordering::Relaxed))
            .collect()
    }
}

impl RingWriter {
    /// Marks pages `[first, first + count)` dirty (store the data first, as for
    /// [`crate::Producer::mark`]) and, if that dirtied a clean page, pushes the run onto
    /// this writer's ring. `EINVAL` (and nothing marked) if the range leaves the bitmap.
    pub fn mark(&self, first: u64, count: u64) -> Result<RingMark> {
        let bits = &self.shared.bits;
        let end = first.checked_add(count).ok_or(Errno::EINVAL)?;
        if end > bits.pages() {
            return Err(Errno::EINVAL);
        }
        if count == 0 {
            return Ok(RingMark::Ok);
        }
        let faults = match bits.mark_dirty(first, count) {
            Mark::Done { faults } => faults,
            m => {
                debug_assert!(false, "{m:?}");
                count
            }
        };
        let r = &self.ring;
        if faults > 0 {
            if !r.push(first, end) && !crate::twins::RING_NO_OVERFLOW.on() {
                // An RMW, like the harvest's swap that takes the flag: the two are totally
                // ordered, so either the harvest takes this flag (and, `AcqRel`, sees the
                // bit set above) or the flag stays set for the next one. (A plain store is
                // as good on hardware; loom let a later swap miss it.)
                self.shared.overflow.swap(true, Ordering::AcqRel);
            }
            r.count(faults);
        }
        Ok(r.soft_full())
    }
}

/// Dirty rings over an [`AddressSpace`] (`precise` mode): each [`SpaceRingWriter`] writes
/// through the space ([`AddressSpace::write_counting`]) and pushes the address runs whose
/// pages it turned soft-dirty onto its ring; a harvest ([`SpaceRings::harvest`]) get-and-
/// clears exactly those runs. The invariant of [`DirtyRings`] needs one more clause here,
/// because a page can become soft-dirty, or move, without a write at its address (an
/// mremap move, a madvise, a store through another view of shared memory, an `fwrite`,
/// a truncation, a structural change):
///
/// Every soft-dirty page is in an uncollected entry naming its address, or the overflow
/// flag is set, or the space's [`AddressSpace::indirect_changes`] count has moved since
/// the last harvest read it. Each such change bumps the count (`Release`) after its last
/// page-state RMW (for mremap, after the new index is published and the old bitmaps are
/// drained); a harvest reads it (`Acquire`) before anything else, and scans the whole
/// space if it moved. A change the harvest's read missed is counted after that read, so
/// the next harvest scans everything, and the page is still soft-dirty (a harvest is
/// the only thing that cleans it). The first harvest scans everything too (pages may be
/// soft-dirty from before the rings). Only ring writers may write to a space harvested
/// through rings, and only this harvest may take its pages: a plain write or another
/// harvest pushes no entry and is not counted.
///
/// A harvest is transactional, like [`AddressSpace::begin_harvest`]: dropping the returned
/// [`SpaceRingHarvest`] aborts it, making its pages soft-dirty again and handing their
/// runs to the next harvest.
///
/// Loom model `ring::space_ring_vs_mremap` (loom-tests), broken twin `ring_ignores_moves`.
#[derive(Debug)]
pub struct SpaceRings {
    shared: Arc<SpaceShared>,
    state: Mutex<SpaceState>,
}

#[derive(Debug)]
struct SpaceShared {
    mm: Arc<AddressSpace>,
    overflow: AtomicBool,
}

#[derive(Debug)]
struct SpaceState {
    rings: Vec<Arc<Ring>>,
    /// `indirect_changes` when the last harvest began (`None`: no harvest yet)
    seen: Option<u64>,
    /// runs of aborted harvests, for the next one
    returned: Vec<(u64, u64)>,
}

/// One writer of a [`SpaceRings`] (one per vCPU thread).
#[derive(Debug)]
pub struct SpaceRingWriter {
    shared: Arc<SpaceShared>,
    ring: Arc<Ring>,
}

/// A harvest of a [`SpaceRings`] in progress: [`Self::commit`] keeps its pages clean;
/// [`Self::abort`], or dropping it, makes them soft-dirty again for the next harvest.
#[must_use = "dropping a SpaceRingHarvest aborts it: its pages report soft-dirty again"]
#[derive(Debug)]
pub struct SpaceRingHarvest<'a> {
    rings: &'a SpaceRings,
    state: Option<crate::sync::MutexGuard<'a, SpaceState>>,
    logs: Vec<crate::dirtylog::DirtyLog>,
    /// what the harvest did
    pub stats: RingHarvest,
}

impl SpaceRings {
    /// Rings over `mm`, which must follow `precise` (EINVAL otherwise: in the flag modes a
    /// VMA's `VM_SOFTDIRTY` reports pages no write named).
    pub fn new(mm: Arc<AddressSpace>) -> Result<SpaceRings> {
        if !mm.mode().is_precise() {
            return Err(Errno::EINVAL);
        }
        Ok(SpaceRings {
            shared: Arc::new(SpaceShared {
                mm,
                overflow: AtomicBool::new(false),
            }),
            state: Mutex::new(SpaceState {
                rings: Vec::new(),
                seen: None,
                returned: Vec::new(),
            }),
        })
    }

    /// A writer with a ring of `capacity` entries (at least 1).
    pub fn writer(&self, capacity: usize) -> SpaceRingWriter {
        let ring = Arc::new(Ring::new(capacity));
        lock(&self.state).rings.push(Arc::clone(&ring));
        SpaceRingWriter {
            shared: Arc::clone(&self.shared),
            ring,
        }
    }

    /// Begins a harvest: takes (get-and-clear) the pages of every collected entry and of
    /// every aborted harvest, or of the whole space when an indirect change, an overflow
    /// or the first harvest asks for it. One harvest at a time: the next waits for this
    /// one's commit or abort.
    pub fn harvest(&self) -> SpaceRingHarvest<'_> {
        let mut st = lock(&self.state);
        let mm = &self.shared.mm;
        // First: a change counted after this read is seen by the next harvest.
        let changes = mm.indirect_changes();
        // Pairs with a writer's swap of the flag: the pages it wrote before are visible.
        let overflow = self.shared.overflow.swap(false, Ordering::AcqRel);
        let full = overflow || st.seen != Some(changes);
        st.seen = Some(changes);
        let mut stats = RingHarvest {
            full_scan: full,
            ..RingHarvest::default()
        };
        let mut runs = std::mem::take(&mut st.returned);
        for r in st.rings.iter() {
            stats.entries += r.collect((!full).then_some(&mut runs));
        }
        let mut logs = Vec::new();
        if full {
            let log = mm
                .scan_and_clear(0, crate::linux::TASK_SIZE)
                .expect("the whole user address space is a valid range");
            logs.push(log);
        } else {
            runs.sort_unstable();
            // Runs closer than `SCAN_GAP` pages are taken by one get-and-clear: a call
            // costs far more than the words between them, and taking a dirty page no
            // entry named is harmless (its own entry, if any, finds it clean).
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
            for (p, n) in runs {
                match merged.last_mut() {
                    Some(l) if l.0 + l.1 + SCAN_GAP >= p => l.1 = l.1.max(p + n - l.0),
                    _ => merged.push((p, n)),
                }
            }
            for (p, n) in merged {
                let log = mm
                    .scan_and_clear(p << PAGE_SHIFT, n << PAGE_SHIFT)
                    .expect("entries name user pages");
                if !log.runs().is_empty() {
                    logs.push(log);
                }
            }
        }
        SpaceRingHarvest {
            rings: self,
            state: Some(st),
            logs,
            stats,
        }
    }

    /// Pages each writer has pushed since it was made, in the order the writers were made.
    pub fn pages_dirtied(&self) -> Vec<u64> {
        lock(&self.state)
            .rings
            .iter()
            .map(|r| r.pages.load(Ordering::Relaxed))
            .collect()
    }
}

impl SpaceRingWriter {
    /// A store to `[addr, addr + len)` ([`AddressSpace::write`], store the data first):
    /// pushes the pages' address run onto this writer's ring when the write turned a page
    /// soft-dirty (with an error, the pages before the faulting one were written, and the
    /// whole range is pushed). The space's errors.
    pub fn write(&self, addr: u64, len: u64) -> Result<RingMark> {
        let (dirtied, r) = self.shared.mm.write_counting(addr, len);
        if dirtied > 0 {
            let first = addr >> PAGE_SHIFT;
            // Pages past the top of user space were not written (the write failed there).
            let end = addr
                .saturating_add(len)
                .min(crate::linux::TASK_SIZE)
                .div_ceil(PAGE_SIZE);
            if !self.ring.push(first, end) {
                // As `RingWriter::mark`: an RMW, ordered with the harvest's swap.
                self.shared.overflow.swap(true, Ordering::AcqRel);
            }
            self.ring.count(dirtied);
        }
        r.map(|()| self.ring.soft_full())
    }
}

impl SpaceRingHarvest<'_> {
    /// The pages taken, as address ranges `(start, end)`, sorted.
    pub fn address_ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for l in &self.logs {
            for (a, b) in l.address_ranges() {
                match out.last_mut() {
                    Some(x) if x.1 == a => x.1 = b,
                    _ => out.push((a, b)),
                }
            }
        }
        out
    }

    /// The pages were sent: they stay clean.
    pub fn commit(mut self) {
        self.logs.clear();
        self.state = None;
    }

    /// The round failed: every page taken is soft-dirty again
    /// ([`AddressSpace::redirty`]), merged with what was written meanwhile, and the next
    /// harvest takes it. Returns the pages made soft-dirty.
    pub fn abort(mut self) -> u64 {
        self.give_back()
    }

    fn give_back(&mut self) -> u64 {
        let Some(mut st) = self.state.take() else {
            return 0;
        };
        let mm = &self.rings.shared.mm;
        let mut n = 0;
        for l in self.logs.drain(..) {
            // Dirty first, then the runs for the next harvest (which takes them under the
            // lock this harvest still holds).
            n += mm.redirty(&l);
            for (a, b) in l.address_ranges() {
                st.returned.push((a >> PAGE_SHIFT, (b - a) >> PAGE_SHIFT));
            }
        }
        n
    }
}

impl Drop for SpaceRingHarvest<'_> {
    fn drop(&mut self) {
        self.give_back();
    }
}
