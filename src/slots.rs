//! A KVM-style dirty-log API over memory slots, with several independent consumers.
//!
//! A [`SlotRegistry`] holds memory slots (KVM's memslots: a slot number, a guest-physical
//! base and a size in 4 KiB pages) and consumers (for example a migration thread and a
//! snapshotter). Each slot has one shared [`PageBitmap`] that producers (vCPUs, device
//! emulation, a `vmm::SoftDirtyBitmap` under vm-memory) mark **without any
//! lock** through a [`Producer`] ([`SlotRegistry::producer`], which can mark but not
//! clear: store the data, then mark, and a harvest that takes the page copies the data
//! after it, or the page stays dirty). Each consumer then reads its own view:
//!
//! - [`SlotRegistry::get_dirty_log`]: `KVM_GET_DIRTY_LOG`. For a consumer without manual
//!   protect it is a get-and-clear; with manual protect
//!   ([`ConsumerConfig::manual_protect`], `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`) it only
//!   reads, and
//! - [`SlotRegistry::clear_dirty_log`]: `KVM_CLEAR_DIRTY_LOG` clears the consumer's pages
//!   `[first_page, first_page + num_pages)`. As in KVM, `first_page` must be a multiple of
//!   64 and `num_pages` a multiple of 64 unless the range runs to the slot's end;
//!   otherwise `EINVAL`. A write that lands between the `get` and the `clear` of a page
//!   is erased by the `clear`: copy a page **after** clearing it.
//! - [`ConsumerConfig::initially_set`]: `KVM_DIRTY_LOG_INITIALLY_SET`: the consumer's first
//!   log of each slot reports every page (costs nothing until cleared: an untouched
//!   chunk is a tag).
//! - [`SlotRegistry::restore_dirty_log`]: Firecracker's rollback (`store_dirty_bitmap`):
//!   a failed send puts the harvested pages back into the consumer's next log.
//!
//! # Independent consumers
//!
//! Every consumer sees every write once, and no consumer steals another's bits. Each slot
//! keeps, per consumer, a private *pending* bitmap (same size as the slot, sparse). A
//! consumer's harvest, under the slot's harvest mutex (which only consumers take;
//! producers never lock):
//!
//! 1. get-and-clears the shared bitmap (atomic per word against producers: a write is
//!    taken by exactly one harvest or stays for the next);
//! 2. ORs the taken runs into every *other* consumer's pending bitmap;
//! 3. get-and-clears its own pending bitmap and reports the union of (1) and (3).
//!
//! So a write is taken from the shared bitmap exactly once and lands either directly in
//! the harvesting consumer's log or in every other consumer's pending set, each of which
//! reports it exactly once. A manual-protect `get` moves the shared bits into **every**
//! consumer's pending set (its own included) and reads its own set without clearing it;
//! `clear` moves the shared bits of the range to the others and clears its own set there.
//!
//! **Cost per extra consumer.** Memory: one sparse bitmap of the slot's size per slot (a
//! directory of `pages / 4096` words, plus a 1.5 KiB chunk for each 4,096-page chunk
//! holding a page the consumer has not yet collected; an idle or up-to-date consumer
//! costs only the directory). Time: one OR pass (one atomic RMW per dirty 64-page word)
//! over the runs each harvest takes from the shared bitmap, plus that consumer's own
//! later get-and-clear of them. With a single consumer no pass is made: its harvest is
//! the shared get-and-clear plus an (empty, summary-skipped) check of its pending set.
//! Producers pay nothing per consumer.
//!
//! A consumer registered while slots exist starts with a clean pending set (or all set
//! with `initially_set`); writes still in the shared bitmap when it registers are also
//! reported to it. A slot registered later gets a pending set for every consumer.
//!
//! ```
//! use softdirty::slots::{ConsumerConfig, SlotRegistry};
//!
//! let reg = SlotRegistry::new();
//! let migration = reg.register_consumer(ConsumerConfig::default());
//! let snapshot = reg.register_consumer(ConsumerConfig::default());
//! let bits = reg.register_slot(0, 0x1_0000_0000, 1024).unwrap();
//! bits.mark(5, 2).unwrap(); // a producer: store the data, then mark (lock-free)
//! assert_eq!(reg.get_dirty_log(migration, 0).unwrap().runs(), &[(5, 2)]);
//! assert!(reg.get_dirty_log(migration, 0).unwrap().is_clean());
//! // The snapshotter still sees the write: migration did not steal it.
//! assert_eq!(reg.get_dirty_log(snapshot, 0).unwrap().runs(), &[(5, 2)]);
//! ```

use crate::sync::{lock, Arc, Mutex, MutexGuard};

use dashmap::DashMap;

use crate::bitmap::{PageBitmap, Run, CHUNK_PAGES};
use crate::dirtylog::DirtyLog;
use crate::errno::{Errno, Result};
use crate::linux::{PAGE_SHIFT, PAGE_SIZE};
use crate::producer::Producer;

/// Identifies a consumer of a [`SlotRegistry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsumerId(u32);

impl ConsumerId {
    /// The numeric id (ids are handed out in registration order from 0).
    pub fn get(self) -> u32 {
        self.0
    }
}

/// How a consumer reads its dirty logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`: `get_dirty_log` does not clear;
    /// `clear_dirty_log` does. Without it, `get_dirty_log` is a get-and-clear and
    /// `clear_dirty_log` fails with `EINVAL`.
    pub manual_protect: bool,
    /// `KVM_DIRTY_LOG_INITIALLY_SET`: every page of every slot starts dirty for this
    /// consumer (slots registered later too).
    pub initially_set: bool,
}

struct Pending {
    id: ConsumerId,
    bits: PageBitmap,
}

/// The most pages a memslot may have: KVM's `KVM_MEM_MAX_NR_PAGES` (`(1 << 31) - 1`,
/// 8 TiB of 4 KiB pages).
pub const KVM_MEM_MAX_NR_PAGES: u64 = (1 << 31) - 1;

/// `KVM_SET_USER_MEMORY_REGION`'s range checks (`__kvm_set_memory_region`): a page-aligned
/// guest-physical base, at most [`KVM_MEM_MAX_NR_PAGES`] pages, no wrap-around; `EINVAL`.
fn check_slot_range(guest_phys_addr: u64, pages: u64) -> Result<()> {
    if guest_phys_addr % PAGE_SIZE != 0 || pages > KVM_MEM_MAX_NR_PAGES {
        return Err(Errno::EINVAL);
    }
    // `pages << PAGE_SHIFT` cannot overflow: pages < 2^31.
    guest_phys_addr
        .checked_add(pages << PAGE_SHIFT)
        .map(|_| ())
        .ok_or(Errno::EINVAL)
}

/// One KVM-style memory slot (a memslot): its guest-physical range and shared bitmap. Named
/// apart from the bitmap directory's slots (`bitmap::chunk`).
struct MemSlot {
    guest_phys_addr: u64,
    pages: u64,
    shared: Arc<PageBitmap>,
    /// Taken only by consumers (harvest, clear, rollback) and by consumer registration.
    pending: Mutex<Vec<Pending>>,
}

impl MemSlot {
    fn lock(&self) -> MutexGuard<'_, Vec<Pending>> {
        lock(&self.pending)
    }

    /// Get-and-clears the shared bits of `[first, first + count)`.
    fn take_shared(&self, first: u64, count: u64) -> Vec<Run> {
        let mut runs = Vec::new();
        self.shared.harvest(first, count, |r| runs.push(r));
        runs
    }

    fn log(&self, runs: impl IntoIterator<Item = (u64, u64)>) -> DirtyLog {
        DirtyLog::new(self.guest_phys_addr, self.pages * PAGE_SIZE, runs)
    }
}

/// Marks `runs` dirty in `bits` (the OR pass).
fn or_runs(bits: &PageBitmap, runs: &[Run]) {
    for r in runs {
        bits.set_clean(r.first, r.count, false);
    }
}

/// The dirty runs of `bits` in `[0, pages)`, without clearing.
fn read_runs(bits: &PageBitmap, pages: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut push = |f: u64, n: u64| match out.last_mut() {
        Some((lf, ln)) if *lf + *ln == f => *ln += n,
        _ => out.push((f, n)),
    };
    let mut p = 0;
    while p < pages {
        if let Some((clean, end)) = bits.uniform_run_end(p, pages) {
            if !clean {
                push(p, end - p);
            }
            p = end;
            continue;
        }
        let chunk_end = ((p / CHUNK_PAGES + 1) * CHUNK_PAGES).min(pages);
        while p < chunk_end {
            let dirty = !bits.window(p).clean;
            let valid = if chunk_end - p >= 64 {
                !0
            } else {
                (1u64 << (chunk_end - p)) - 1
            };
            crate::bitmap::for_each_run(dirty & valid, |s, n| push(p + s, n));
            p += 64;
        }
        p = chunk_end;
    }
    out
}

/// Memory slots and dirty-log consumers; see the [module documentation](self).
///
/// `Send + Sync`: share it (`Arc`) between producers and consumers.
#[derive(Default)]
pub struct SlotRegistry {
    slots: DashMap<u32, Arc<MemSlot>>,
    /// Registered consumers. Taken by slot and consumer (un)registration, which keeps
    /// every slot's pending list in step with this list.
    consumers: Mutex<Vec<(ConsumerId, ConsumerConfig)>>,
    next_consumer: Mutex<u32>,
}

impl std::fmt::Debug for SlotRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotRegistry")
            .field("slots", &self.slots.len())
            .field("consumers", &self.lock_consumers().len())
            .finish()
    }
}

impl SlotRegistry {
    /// An empty registry.
    pub fn new() -> SlotRegistry {
        SlotRegistry::default()
    }

    fn lock_consumers(&self) -> MutexGuard<'_, Vec<(ConsumerId, ConsumerConfig)>> {
        lock(&self.consumers)
    }

    fn slot(&self, slot: u32) -> Result<Arc<MemSlot>> {
        self.slots
            .get(&slot)
            .map(|s| Arc::clone(s.value()))
            .ok_or(Errno::ENOENT)
    }

    fn config(&self, c: ConsumerId) -> Result<ConsumerConfig> {
        self.lock_consumers()
            .iter()
            .find(|(id, _)| *id == c)
            .map(|&(_, cfg)| cfg)
            .ok_or(Errno::ENOENT)
    }

    /// Registers a consumer; every existing and future slot gets a pending set for it.
    pub fn register_consumer(&self, config: ConsumerConfig) -> ConsumerId {
        let mut consumers = self.lock_consumers();
        let id = {
            let mut n = lock(&self.next_consumer);
            *n += 1;
            ConsumerId(*n - 1)
        };
        for s in self.slots.iter() {
            s.lock().push(Pending {
                id,
                bits: PageBitmap::new(s.pages, config.initially_set),
            });
        }
        consumers.push((id, config));
        id
    }

    /// Removes a consumer and its pending sets. `ENOENT` if unknown.
    pub fn unregister_consumer(&self, c: ConsumerId) -> Result<()> {
        let mut consumers = self.lock_consumers();
        let i = consumers
            .iter()
            .position(|(id, _)| *id == c)
            .ok_or(Errno::ENOENT)?;
        consumers.remove(i);
        for s in self.slots.iter() {
            s.lock().retain(|p| p.id != c);
        }
        Ok(())
    }

    /// Registers slot `slot` of `pages` 4 KiB pages at `guest_phys_addr`, all clean, and
    /// returns a [`Producer`] on its shared bitmap (what [`Self::producer`] returns).
    ///
    /// Errors, as `KVM_SET_USER_MEMORY_REGION` checks them: `EINVAL` if
    /// `guest_phys_addr` is not page aligned, the slot has more than
    /// [`KVM_MEM_MAX_NR_PAGES`] pages, or it would end past the 64-bit address space;
    /// `EEXIST` if the slot number is taken. Nothing is allocated before the checks.
    pub fn register_slot(&self, slot: u32, guest_phys_addr: u64, pages: u64) -> Result<Producer> {
        check_slot_range(guest_phys_addr, pages)?;
        let bits = Arc::new(PageBitmap::new(pages, false));
        self.register_slot_with(slot, guest_phys_addr, Arc::clone(&bits))?;
        Ok(Producer::new(bits))
    }

    /// Registers slot `slot` at `guest_phys_addr` over an existing bitmap (for example a
    /// `vmm::SoftDirtyBitmap`'s, so vm-memory's marking feeds the slot). Pages
    /// already dirty in it are reported to every consumer. `EEXIST` if the slot number is
    /// taken.
    ///
    /// The bitmap then has two owners, and both may make its pages clean: the slot's
    /// consumers harvest it under the slot's mutex, the other owner (a `SoftDirtyBitmap`
    /// harvest or reset, a `PageBitmap::harvest`) under its own locks. That is safe: every
    /// clean-making operation of a [`PageBitmap`] takes the bitmap's own clear lock, so
    /// two harvests never race on a word, and each write is reported by exactly one of
    /// them or stays dirty. But a page the other owner harvests is not reported to this
    /// slot's consumers: give it to one owner for harvesting if every consumer must see
    /// every write.
    pub fn register_slot_with(
        &self,
        slot: u32,
        guest_phys_addr: u64,
        bitmap: Arc<PageBitmap>,
    ) -> Result<()> {
        let pages = bitmap.pages();
        check_slot_range(guest_phys_addr, pages)?;
        let consumers = self.lock_consumers();
        let pending = consumers
            .iter()
            .map(|&(id, cfg)| Pending {
                id,
                bits: PageBitmap::new(pages, cfg.initially_set),
            })
            .collect();
        match self.slots.entry(slot) {
            dashmap::mapref::entry::Entry::Occupied(_) => Err(Errno::EEXIST),
            dashmap::mapref::entry::Entry::Vacant(v) => {
                v.insert(Arc::new(MemSlot {
                    guest_phys_addr,
                    pages,
                    shared: bitmap,
                    pending: Mutex::new(pending),
                }));
                Ok(())
            }
        }
    }

    /// Removes a slot. `ENOENT` if unknown.
    pub fn remove_slot(&self, slot: u32) -> Result<()> {
        let _consumers = self.lock_consumers();
        self.slots.remove(&slot).map(|_| ()).ok_or(Errno::ENOENT)
    }

    /// A producer handle on the shared bitmap of `slot`: keep it and call
    /// [`Producer::mark`] (lock-free) after storing the data the pages hold. It cannot
    /// harvest, so it cannot take pages from the slot's consumers. `ENOENT` if unknown.
    pub fn producer(&self, slot: u32) -> Result<Producer> {
        Ok(Producer::new(Arc::clone(&self.slot(slot)?.shared)))
    }

    /// The registered slot numbers, sorted.
    pub fn slot_ids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.slots.iter().map(|e| *e.key()).collect();
        v.sort_unstable();
        v
    }

    /// `(guest_phys_addr, pages)` of `slot`. `ENOENT` if unknown.
    pub fn slot_info(&self, slot: u32) -> Result<(u64, u64)> {
        let s = self.slot(slot)?;
        Ok((s.guest_phys_addr, s.pages))
    }

    /// `KVM_GET_DIRTY_LOG` for consumer `c`: the slot's dirty pages for this consumer,
    /// relative to the slot's first page. Clears them unless the consumer uses manual
    /// protect. `ENOENT` for an unknown slot or consumer.
    pub fn get_dirty_log(&self, c: ConsumerId, slot: u32) -> Result<DirtyLog> {
        let cfg = self.config(c)?;
        let s = self.slot(slot)?;
        let mut pending = s.lock();
        let own = pending
            .iter()
            .position(|p| p.id == c)
            .ok_or(Errno::ENOENT)?;
        let shared = s.take_shared(0, s.pages);
        if cfg.manual_protect {
            for p in pending.iter() {
                or_runs(&p.bits, &shared);
            }
            Ok(s.log(read_runs(&pending[own].bits, s.pages)))
        } else {
            for (i, p) in pending.iter_mut().enumerate() {
                if i != own {
                    or_runs(&p.bits, &shared);
                }
            }
            let mut runs: Vec<(u64, u64)> = shared.iter().map(|r| (r.first, r.count)).collect();
            pending[own]
                .bits
                .harvest(0, s.pages, |r| runs.push((r.first, r.count)));
            Ok(s.log(runs))
        }
    }

    /// `KVM_CLEAR_DIRTY_LOG` for a manual-protect consumer: makes pages
    /// `[first_page, first_page + num_pages)` of `slot` clean for `c` only (other consumers
    /// keep them). Returns the number of pages cleared that were dirty.
    ///
    /// `EINVAL` if `c` does not use manual protect, if `first_page` is not a multiple of
    /// 64, if `num_pages` is not a multiple of 64 and the range does not end at the slot's
    /// end, or if the range exceeds the slot; `ENOENT` for an unknown slot or consumer.
    /// `num_pages == 0` does nothing.
    pub fn clear_dirty_log(
        &self,
        c: ConsumerId,
        slot: u32,
        first_page: u64,
        num_pages: u64,
    ) -> Result<u64> {
        let cfg = self.config(c)?;
        let s = self.slot(slot)?;
        if !cfg.manual_protect {
            return Err(Errno::EINVAL);
        }
        let end = first_page.checked_add(num_pages).ok_or(Errno::EINVAL)?;
        if first_page % 64 != 0 || end > s.pages || (num_pages % 64 != 0 && end != s.pages) {
            return Err(Errno::EINVAL);
        }
        if num_pages == 0 {
            return Ok(0);
        }
        let mut pending = s.lock();
        let own = pending
            .iter()
            .position(|p| p.id == c)
            .ok_or(Errno::ENOENT)?;
        let shared = s.take_shared(first_page, num_pages);
        for (i, p) in pending.iter_mut().enumerate() {
            if i != own {
                or_runs(&p.bits, &shared);
            }
        }
        let mut own_runs = Vec::new();
        pending[own]
            .bits
            .harvest(first_page, num_pages, |r| own_runs.push(r));
        let cleared = s
            .log(shared.iter().chain(&own_runs).map(|r| (r.first, r.count)))
            .dirty_count();
        Ok(cleared)
    }

    /// A transactional [`Self::get_dirty_log`] (issue 17): the pages are `c`'s only if the
    /// returned [`SlotHarvest`] is committed (the round was sent); aborted or dropped, they
    /// go back into `c`'s pending set ([`Self::restore_dirty_log`]), merged with what was
    /// marked meanwhile. `EINVAL` for a manual-protect consumer (its `get_dirty_log`
    /// clears nothing: its `clear_dirty_log` is the commit); errors as `get_dirty_log`.
    pub fn begin_dirty_log(&self, c: ConsumerId, slot: u32) -> Result<SlotHarvest<'_>> {
        if self.config(c)?.manual_protect {
            return Err(Errno::EINVAL);
        }
        let log = self.get_dirty_log(c, slot)?;
        Ok(SlotHarvest {
            reg: self,
            consumer: c,
            slot,
            log: Some(log),
        })
    }

    /// Rollback (Firecracker's `store_dirty_bitmap`): puts the pages of `log` (a log of
    /// this slot, for example one whose send failed) back into `c`'s pending set, so the
    /// next [`Self::get_dirty_log`] reports them again. Other consumers are unaffected.
    /// `EINVAL` if the log's range is not the slot's; `ENOENT` for an unknown slot or
    /// consumer.
    pub fn restore_dirty_log(&self, c: ConsumerId, slot: u32, log: &DirtyLog) -> Result<()> {
        let s = self.slot(slot)?;
        if log.addr() != s.guest_phys_addr || log.len() != s.pages * PAGE_SIZE {
            return Err(Errno::EINVAL);
        }
        let pending = s.lock();
        let own = pending.iter().find(|p| p.id == c).ok_or(Errno::ENOENT)?;
        for (f, n) in log.iter() {
            own.bits.set_clean(f, n, false);
        }
        Ok(())
    }

    /// Bytes of tracking memory held by `slot`: the shared bitmap plus every consumer's
    /// pending set (see [`PageBitmap::tracking_bytes`]).
    pub fn tracking_bytes(&self, slot: u32) -> Result<usize> {
        let s = self.slot(slot)?;
        let pending = s.lock();
        Ok(s.shared.tracking_bytes()
            + pending
                .iter()
                .map(|p| p.bits.tracking_bytes())
                .sum::<usize>())
    }
}

/// A transactional harvest of one slot for one consumer
/// ([`SlotRegistry::begin_dirty_log`]).
#[must_use = "dropping a SlotHarvest aborts it: its pages are the consumer's again"]
#[derive(Debug)]
pub struct SlotHarvest<'a> {
    reg: &'a SlotRegistry,
    consumer: ConsumerId,
    slot: u32,
    log: Option<DirtyLog>,
}

impl SlotHarvest<'_> {
    /// The pages taken, relative to the slot's first page.
    pub fn log(&self) -> &DirtyLog {
        self.log
            .as_ref()
            .expect("a SlotHarvest holds its log until it ends")
    }

    /// The pages were sent: they stay clean for this consumer. Returns the log.
    pub fn commit(mut self) -> DirtyLog {
        self.log.take().unwrap_or_default()
    }

    /// The pages were not sent: they are this consumer's pending pages again.
    pub fn abort(self) {}
}

impl Drop for SlotHarvest<'_> {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            // The slot or the consumer may be gone since; then there is nothing to
            // give back to.
            let _ = self.reg.restore_dirty_log(self.consumer, self.slot, &log);
        }
    }
}
