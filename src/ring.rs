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
use crate::sync::{lock, Arc, AtomicBool, AtomicU64, Mutex, Ordering};

/// Pages per ring entry at most (a longer run takes several entries).
const MAX_ENTRY_PAGES: u64 = 1 << 16;

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
        let ring = Arc::new(Ring {
            slots: (0..capacity.max(1)).map(|_| AtomicU64::new(0)).collect(),
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            pages: AtomicU64::new(0),
        });
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
                let t = r.tail.load(Ordering::Acquire);
                out.entries += t - r.head.load(Ordering::Relaxed);
                r.head.store(t, Ordering::Release);
            }
            bits.harvest(0, bits.pages(), |run| sink(run.first, run.count));
            return out;
        }
        let mut runs = Vec::new();
        for r in rings.iter() {
            // Pairs with the writer's `Release` store of the tail: the slots below it are
            // written, and so are the bits their marks set.
            let t = r.tail.load(Ordering::Acquire);
            let mut h = r.head.load(Ordering::Relaxed);
            let cap = r.slots.len() as u64;
            while h < t {
                let v = r.slots[(h % cap) as usize].load(Ordering::Relaxed);
                runs.push((v >> 16, (v & 0xffff) + 1));
                h += 1;
            }
            // Pairs with the writer's `Acquire` load of the head: the slots are free (the
            // entries were copied out above).
            r.head.store(t, Ordering::Release);
        }
        out.entries = runs.len() as u64;
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
        let cap = r.slots.len() as u64;
        if faults > 0 {
            let mut p = first;
            while p < end {
                let n = (end - p).min(MAX_ENTRY_PAGES);
                let t = r.tail.load(Ordering::Relaxed);
                // Pairs with the harvest's `Release` store of the head: a slot is reused
                // only after the harvest read it.
                if t - r.head.load(Ordering::Acquire) >= cap {
                    if !crate::twins::RING_NO_OVERFLOW {
                        // An RMW, like the harvest's swap that takes the flag: the two
                        // are totally ordered, so either the harvest takes this flag
                        // (and, `AcqRel`, sees the bit set above) or the flag stays set
                        // for the next one. (A plain store is as good on hardware; loom
                        // let a later swap miss it.)
                        self.shared.overflow.swap(true, Ordering::AcqRel);
                    }
                    break;
                }
                r.slots[(t % cap) as usize].store((p << 16) | (n - 1), Ordering::Relaxed);
                r.tail.store(t + 1, Ordering::Release);
                p += n;
            }
            // Only this writer writes its counter: a load and a store, no locked RMW.
            let n = r.pages.load(Ordering::Relaxed);
            r.pages.store(n + faults, Ordering::Relaxed);
        }
        let used = r.tail.load(Ordering::Relaxed) - r.head.load(Ordering::Acquire);
        Ok(if used >= cap - cap / 8 {
            RingMark::SoftFull
        } else {
            RingMark::Ok
        })
    }
}
