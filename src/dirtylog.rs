//! The harvest API for embedders: KVM-style dirty logs of an address range.
//!
//! A hypervisor's migration thread calls one of two protocols in its downtime window:
//!
//! - **get-and-clear** — [`AddressSpace::scan_and_clear`]: returns the soft-dirty pages of
//!   a range and makes them clean in one step, atomically per bitmap word against
//!   concurrent writers (the analogue of `PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING`, or of
//!   `KVM_GET_DIRTY_LOG` without manual protect). A page is reported by exactly one
//!   harvest per write, or stays dirty for the next one: nothing is lost and nothing
//!   is cleared that was not reported.
//! - **manual protect** — [`AddressSpace::get_dirty_log`] then
//!   [`AddressSpace::clear_dirty_log`], as `KVM_GET_DIRTY_LOG` + `KVM_CLEAR_DIRTY_LOG`
//!   with `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`. `get` reads without clearing and without a
//!   lock; `clear` makes clean exactly the pages the log names, whatever happened to them
//!   since the `get`. As with KVM, a write that lands between the `get` and the `clear`
//!   of a page is erased by the `clear`: the caller must copy a page **after** clearing
//!   it (KVM's "clear before copying"), so that such a write is either in the copy or
//!   re-dirties the page after the clear and shows up in the next log.
//!
//! - **transactional** — [`AddressSpace::begin_harvest`]: a get-and-clear whose pages
//!   count as harvested only when the caller [`Harvest::commit`]s; an aborted or dropped
//!   harvest (a failed send, a retried round) makes every page it took soft-dirty again,
//!   merged with what was written meanwhile ([`AddressSpace::redirty`]): nothing lost,
//!   nothing clean that this consumer did not keep.
//!
//! Pages are reported relative to the range's first page, as runs `(first, count)`, and
//! on request as a bitmap in KVM's layout ([`DirtyLog::to_bitvec`]: bit `i` = page `i`).
//!
//! In the legacy modes, a page that is soft-dirty only through its VMA's `VM_SOFTDIRTY`
//! flag (what pagemap bit 55 reports) is reported by every harvest until `clear_refs 4`
//! clears the flag, as `PAGEMAP_SCAN` reports it; `precise` mode has no such pages.
//!
//! Large harvests run in parallel (rayon) over chunk-aligned pieces of a VMA when the
//! range is at least [`PARALLEL_MIN_PAGES`] pages; see `softdirty bench` for the numbers
//! behind the threshold.

use crate::barrier;
use crate::bitmap::Run;
use crate::errno::{Errno, Result};
use crate::linux::{PAGE_SHIFT, PAGE_SIZE, TASK_SIZE};
use crate::mm::AddressSpace;
use crate::vma::Vma;

/// Ranges of at least this many pages (of one VMA) are harvested in parallel by
/// [`AddressSpace::scan_and_clear`]: 2^26 pages = 256 GiB = 2^20 bitmap words. Measured
/// on the shared 2-core box (`softdirty bench --filter par`, wall time), the parallel
/// path never won up to 64 GiB (16 GiB all dirty: 0.2–0.7×, 64 GiB: 0.6–1.1×, sparse
/// 16 GiB: 0.3–0.9×); rust-anchors §3.3 measured 1.9× at 2^20 words on an idle box.
/// A many-core host will want a lower value.
pub const PARALLEL_MIN_PAGES: u64 = 1 << 26;

#[cfg_attr(all(loom, feature = "loom"), allow(dead_code))]
/// Pages per parallel task: 64 chunks (256 MiB of address space, 4,096 words).
#[cfg(feature = "rayon")]
const PARALLEL_PIECE_PAGES: u64 = crate::bitmap::CHUNK_PAGES * 64;

/// The dirty pages of one range `[addr, addr + len)`, as runs of page indices relative to
/// the range's first page (`(first, count)`, sorted, disjoint, maximal: two runs never
/// touch).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirtyLog {
    addr: u64,
    len: u64,
    runs: Vec<(u64, u64)>,
}

impl DirtyLog {
    /// A log of `[addr, addr + len)` holding `runs` (relative page indices). Runs are
    /// sorted and merged; pages past the end of the range are dropped. `len` is rounded
    /// up to a page, and the range is cut to end within the 64-bit address space (at
    /// most `2^64 - 4096`), so every address the log reports exists.
    pub fn new(addr: u64, len: u64, runs: impl IntoIterator<Item = (u64, u64)>) -> DirtyLog {
        // Pages from `addr` to the last page boundary of the address space.
        let room = (u64::MAX - PAGE_SIZE + 1).saturating_sub(addr) >> PAGE_SHIFT;
        let npages = len.div_ceil(PAGE_SIZE).min(room);
        let len = npages << PAGE_SHIFT;
        let mut v: Vec<(u64, u64)> = runs
            .into_iter()
            .filter(|&(f, n)| n > 0 && f < npages)
            .map(|(f, n)| (f, n.min(npages - f)))
            .collect();
        v.sort_unstable();
        let mut log = DirtyLog {
            addr,
            len,
            runs: Vec::with_capacity(v.len()),
        };
        for (f, n) in v {
            log.push_run(f, n);
        }
        log
    }

    /// Appends a run that starts at or after the end of the last one (merging when they
    /// touch or overlap).
    fn push_run(&mut self, first: u64, count: u64) {
        if count == 0 {
            return;
        }
        match self.runs.last_mut() {
            Some((f, n)) if *f + *n >= first => {
                let end = (first + count).max(*f + *n);
                *n = end - *f;
            }
            _ => self.runs.push((first, count)),
        }
    }

    /// The first address of the range.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// The length of the range in bytes (a multiple of the page size).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Is the range empty (zero pages)? See [`Self::is_clean`] for "no dirty page".
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of pages in the range (the bitmap's length).
    pub fn range_pages(&self) -> u64 {
        self.len >> PAGE_SHIFT
    }

    /// No page of the range is dirty.
    pub fn is_clean(&self) -> bool {
        self.runs.is_empty()
    }

    /// The dirty runs `(first_page, count)`, relative to the range's first page.
    pub fn runs(&self) -> &[(u64, u64)] {
        &self.runs
    }

    /// Number of dirty pages.
    pub fn dirty_count(&self) -> u64 {
        self.runs.iter().map(|r| r.1).sum()
    }

    /// Iterates over the dirty pages' indices (relative to the range's first page), in
    /// order.
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs.iter().flat_map(|&(f, n)| f..f + n)
    }

    /// Iterates over the dirty runs `(first_page, count)`, in order.
    pub fn iter(&self) -> std::iter::Copied<std::slice::Iter<'_, (u64, u64)>> {
        self.runs.iter().copied()
    }

    /// Iterates over the dirty runs as address ranges `[start, end)`.
    pub fn address_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.runs.iter().map(|&(f, n)| {
            (
                self.addr + (f << PAGE_SHIFT),
                self.addr + ((f + n) << PAGE_SHIFT),
            )
        })
    }

    /// Is page `i` (relative) dirty in this log? `O(log runs)`.
    pub fn contains(&self, i: u64) -> bool {
        let k = self.runs.partition_point(|&(f, _)| f <= i);
        k > 0 && {
            let (f, n) = self.runs[k - 1];
            i < f + n
        }
    }

    /// The log as a bitmap in KVM's layout: one bit per page of the range, bit `i` of the
    /// bitmap (bit `i % 64` of word `i / 64`, least significant first) set iff page `i`
    /// is dirty. The length is [`Self::range_pages`].
    pub fn to_bitvec(&self) -> bitvec::vec::BitVec<u64, bitvec::order::Lsb0> {
        let n = self.range_pages() as usize;
        let mut bv = bitvec::vec::BitVec::<u64, bitvec::order::Lsb0>::repeat(false, n);
        for &(f, c) in &self.runs {
            bv[f as usize..(f + c) as usize].fill(true);
        }
        bv
    }
}

impl<'a> IntoIterator for &'a DirtyLog {
    type Item = (u64, u64);
    type IntoIter = std::iter::Copied<std::slice::Iter<'a, (u64, u64)>>;
    /// The dirty runs, as [`DirtyLog::iter`].
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Checks a dirty-log range as the kernel checks `PAGEMAP_SCAN`'s: EINVAL for a
/// misaligned start, EFAULT for a range that overflows or ends above `TASK_SIZE`.
/// Returns the page-aligned end.
fn check_range(addr: u64, len: u64) -> Result<u64> {
    if addr % PAGE_SIZE != 0 {
        return Err(Errno::EINVAL);
    }
    let end = addr.checked_add(len).ok_or(Errno::EFAULT)?;
    if end > TASK_SIZE {
        return Err(Errno::EFAULT);
    }
    Ok(end.div_ceil(PAGE_SIZE) * PAGE_SIZE)
}

impl AddressSpace {
    /// Get-and-clear: the soft-dirty pages of `[addr, addr + len)` (`len` rounded up to a
    /// page), made clean as they are reported. Runs under the control lock, like a
    /// `PAGEMAP_SCAN` with clear; faults go on concurrently and are never lost: a write
    /// whose bit this call clears is in the returned log, any other stays dirty.
    ///
    /// Errors: EINVAL if `addr` is not page aligned; EFAULT if the range overflows or
    /// ends above `TASK_SIZE`. Holes are not errors: they hold no dirty page.
    pub fn scan_and_clear(&self, addr: u64, len: u64) -> Result<DirtyLog> {
        self.scan_and_clear_with(addr, len, None)
    }

    /// [`Self::scan_and_clear`] with the parallel decision forced (`Some(true)`: always
    /// split large VMAs across rayon's pool, `Some(false)`: never) — for benchmarks that
    /// pick [`PARALLEL_MIN_PAGES`].
    #[doc(hidden)]
    pub fn scan_and_clear_with(
        &self,
        addr: u64,
        len: u64,
        parallel: Option<bool>,
    ) -> Result<DirtyLog> {
        // With consumers registered, what this harvest takes becomes their pending pages
        // (`crate::consumers`), under their lock.
        self.with_consumers(|note| {
            let log = self.scan_and_clear_shared_with(addr, len, parallel)?;
            note(&log);
            Ok(log)
        })
    }

    /// The get-and-clear of the shared bitmap alone (a consumer's harvest notes the
    /// other consumers itself).
    pub(crate) fn scan_and_clear_shared(&self, addr: u64, len: u64) -> Result<DirtyLog> {
        self.scan_and_clear_shared_with(addr, len, None)
    }

    fn scan_and_clear_shared_with(
        &self,
        addr: u64,
        len: u64,
        parallel: Option<bool>,
    ) -> Result<DirtyLog> {
        let end = check_range(addr, len)?;
        let mut log = DirtyLog {
            addr,
            len: end - addr,
            runs: Vec::new(),
        };
        if end == addr {
            return Ok(log);
        }
        let base = addr >> PAGE_SHIFT;
        self.with_control(|| {
            self.with_index(|idx| {
                for v in idx.range(addr, end) {
                    let vbase = v.start >> PAGE_SHIFT;
                    let (s, e) = (v.start.max(addr), v.end.min(end));
                    self.vma_level_segments(v, s, e, |s, e, vma_dirty| {
                        let first = v.page_of(s);
                        let count = (e - s) >> PAGE_SHIFT;
                        if vma_dirty {
                            // Every page is soft-dirty at the VMA level (VM_SOFTDIRTY, or
                            // outside every region), which only `clear_refs 4` clears:
                            // report all, clear the page-level bits.
                            v.bitmap.harvest_unfenced(first, count, |_| {});
                            log.push_run((s >> PAGE_SHIFT) - base, count);
                            return;
                        }
                        let par = parallel.unwrap_or(count >= PARALLEL_MIN_PAGES);
                        harvest_vma(v, first, count, par, |r| {
                            log.push_run(vbase + r.first - base, r.count)
                        });
                    });
                }
            });
            // Data ordering: after every get-and-clear above, before the caller reads a
            // page of the log (`crate::barrier`).
            barrier::clear_fence();
        });
        Ok(log)
    }

    /// The soft-dirty pages of `[addr, addr + len)` without clearing them (the first
    /// half of KVM's manual-protect pair). Lock-free: it runs concurrently with faults
    /// and harvests and sees each bitmap word at one instant. The pages it reports are
    /// the ones pagemap bit 55 reports.
    ///
    /// Errors as [`Self::scan_and_clear`].
    pub fn get_dirty_log(&self, addr: u64, len: u64) -> Result<DirtyLog> {
        let end = check_range(addr, len)?;
        let mut log = DirtyLog {
            addr,
            len: end - addr,
            runs: Vec::new(),
        };
        if end == addr {
            return Ok(log);
        }
        let base = addr >> PAGE_SHIFT;
        // Word-level: a segment dirty at the VMA level is one run; otherwise the bitmap's
        // read-only walk (`PageBitmap::dirty_runs`), whose cost follows the words. Runs
        // of adjacent VMAs and segments merge in `push_run`, as pagemap's runs do.
        self.with_index(|idx| {
            for v in idx.range(addr, end) {
                let vbase = v.start >> PAGE_SHIFT;
                let (s, e) = (v.start.max(addr), v.end.min(end));
                self.vma_level_segments(v, s, e, |s, e, vma_dirty| {
                    let count = (e - s) >> PAGE_SHIFT;
                    if vma_dirty {
                        log.push_run((s >> PAGE_SHIFT) - base, count);
                    } else {
                        v.bitmap.dirty_runs(v.page_of(s), count, |r| {
                            log.push_run(vbase + r.first - base, r.count)
                        });
                    }
                });
            }
        });
        Ok(log)
    }

    /// Makes clean exactly the pages `log` names (KVM's `KVM_CLEAR_DIRTY_LOG`): pages the
    /// log does not name are untouched, whether dirty or not. A page the log names is
    /// cleared even if it was written again after the log was taken — copy pages after
    /// clearing them (module docs). Pages of the log that are no longer mapped are
    /// skipped. Runs under the control lock.
    ///
    /// Returns the number of logged pages that were mapped (and are now clean at the page
    /// level; in the flag modes a VMA's `VM_SOFTDIRTY`, and in `regions` the absence of a
    /// region covering them, keeps reporting them until `clear_refs 4`).
    ///
    /// Errors as [`Self::scan_and_clear`] for `(addr, len)`, and EINVAL if `log` is the
    /// log of another range.
    pub fn clear_dirty_log(&self, addr: u64, len: u64, log: &DirtyLog) -> Result<u64> {
        let end = check_range(addr, len)?;
        if log.addr != addr || log.len != end - addr {
            return Err(Errno::EINVAL);
        }
        if log.runs.is_empty() {
            return Ok(0);
        }
        let mut cleared = 0u64;
        self.for_log_pages(log, |v, first, count| {
            v.bitmap.clean_runs([Run { first, count }]);
            cleared += count;
        });
        Ok(cleared)
    }

    /// Calls `f(vma, first, count)` for every piece of `log`'s runs that a VMA maps now
    /// (VMA-relative pages), under the control lock, so that no structural operation
    /// moves the pages meanwhile.
    fn for_log_pages(&self, log: &DirtyLog, mut f: impl FnMut(&Vma, u64, u64)) {
        if log.runs.is_empty() {
            return;
        }
        let (addr, end) = (log.addr, log.addr + log.len);
        self.with_control(|| {
            self.with_index(|idx| {
                let vmas: Vec<_> = idx.range(addr, end).collect();
                let mut vi = 0;
                for &(first, n) in &log.runs {
                    let rs = addr + (first << PAGE_SHIFT);
                    let re = addr + ((first + n) << PAGE_SHIFT);
                    while vi < vmas.len() && vmas[vi].end <= rs {
                        vi += 1;
                    }
                    let mut j = vi;
                    while j < vmas.len() && vmas[j].start < re {
                        let v = &vmas[j];
                        let s = v.start.max(rs);
                        let e = v.end.min(re);
                        f(v, v.page_of(s), (e - s) >> PAGE_SHIFT);
                        j += 1;
                    }
                }
            })
        });
    }

    /// Begins a transactional harvest of `[addr, addr + len)`: a get-and-clear
    /// ([`Self::scan_and_clear`]) whose pages count as harvested only when the returned
    /// [`Harvest`] is committed. Writers carry on meanwhile, as with any harvest. Errors
    /// as `scan_and_clear`.
    pub fn begin_harvest(&self, addr: u64, len: u64) -> Result<Harvest<'_>> {
        let log = self.scan_and_clear(addr, len)?;
        Ok(Harvest {
            mm: self,
            log: Some(log),
            consumer: None,
        })
    }

    /// Makes every page of `log` soft-dirty again where a VMA maps it now: an aborted
    /// harvest's pages, merged with what was written since (a page-level RMW that can
    /// only dirty, so a racing write or a racing harvest loses nothing; a racing harvest
    /// may report such a page twice). Pages unmapped since are gone, and pages that moved
    /// are at their destination, which `precise` reports soft-dirty by its own rule.
    /// Returns the pages made soft-dirty.
    pub fn redirty(&self, log: &DirtyLog) -> u64 {
        let mut n = 0;
        self.for_log_pages(log, |v, first, count| {
            v.bitmap.set_clean(first, count, false);
            n += count;
        });
        if crate::twins::RESTORE_SNAPSHOT.on() {
            // The bug: an abort that restores the range as the harvest found it, making
            // clean again the pages it did not take, whatever was written to them since.
            let mut gaps = Vec::new();
            let mut p = 0;
            for &(f, c) in &log.runs {
                if f > p {
                    gaps.push((p, f - p));
                }
                p = f + c;
            }
            let pages = log.len >> PAGE_SHIFT;
            if pages > p {
                gaps.push((p, pages - p));
            }
            let gaps = DirtyLog {
                addr: log.addr,
                len: log.len,
                runs: gaps,
            };
            self.for_log_pages(&gaps, |v, first, count| {
                v.bitmap.set_clean(first, count, true)
            });
        }
        n
    }
}

/// A transactional harvest ([`AddressSpace::begin_harvest`]): the pages it took are clean
/// for now; [`Harvest::commit`] keeps them so (the consumer sent them), and
/// [`Harvest::abort`], or dropping it, makes them soft-dirty again
/// ([`AddressSpace::redirty`]).
#[must_use = "dropping a Harvest aborts it: its pages report soft-dirty again"]
#[derive(Debug)]
pub struct Harvest<'a> {
    mm: &'a AddressSpace,
    log: Option<DirtyLog>,
    /// the consumer whose harvest this is (`crate::consumers`); `None`: the space's own
    consumer: Option<crate::consumers::ConsumerId>,
}

impl<'a> Harvest<'a> {
    /// A consumer's harvest (`AddressSpace::consumer_harvest`): an abort gives the pages
    /// back to that consumer alone.
    pub(crate) fn for_consumer(
        mm: &'a AddressSpace,
        log: DirtyLog,
        c: crate::consumers::ConsumerId,
    ) -> Harvest<'a> {
        Harvest {
            mm,
            log: Some(log),
            consumer: Some(c),
        }
    }

    /// The pages taken, as [`AddressSpace::scan_and_clear`] reports them.
    pub fn log(&self) -> &DirtyLog {
        const EMPTY: &DirtyLog = &DirtyLog {
            addr: 0,
            len: 0,
            runs: Vec::new(),
        };
        self.log.as_ref().unwrap_or(EMPTY)
    }

    /// The pages were sent: they stay clean until written again. Returns the log.
    pub fn commit(mut self) -> DirtyLog {
        self.log.take().unwrap_or_default()
    }

    /// The pages were not sent: they report soft-dirty again (as dropping does).
    pub fn abort(self) {}
}

impl Drop for Harvest<'_> {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            match self.consumer {
                Some(c) => self.mm.consumer_give_back(c, &log),
                None => {
                    self.mm.redirty(&log);
                }
            }
        }
    }
}

/// Harvests pages `[first, first + count)` of `v`'s bitmap, calling `sink` with the runs
/// (VMA-relative page indices) in order; in parallel over chunk-aligned pieces if `par`.
/// Unfenced: the caller issues `barrier::clear_fence` before the pages' data is read.
fn harvest_vma(v: &Vma, first: u64, count: u64, par: bool, sink: impl FnMut(Run)) {
    #[cfg(all(feature = "rayon", not(all(loom, feature = "loom"))))]
    if par && count > PARALLEL_PIECE_PAGES {
        use rayon::prelude::*;
        let end = first + count;
        // Chunk-aligned pieces: two tasks never touch the same chunk, slot or summary
        // word. Control operations are serialized by the caller's control lock, so the
        // pieces race only with faults, exactly as a sequential harvest does.
        let p0 = first / PARALLEL_PIECE_PAGES;
        let p1 = (end - 1) / PARALLEL_PIECE_PAGES;
        let bm = &v.bitmap;
        // One clear lock for all pieces: the tasks harvest disjoint chunks under it.
        let _clear = bm.clear_lock();
        let parts: Vec<Vec<Run>> = (p0..=p1)
            .into_par_iter()
            .map(|p| {
                let lo = (p * PARALLEL_PIECE_PAGES).max(first);
                let hi = ((p + 1) * PARALLEL_PIECE_PAGES).min(end);
                let mut out = Vec::new();
                bm.harvest_held_unfenced(lo, hi - lo, |r| out.push(r));
                out
            })
            .collect();
        let mut sink = sink;
        for r in parts.into_iter().flatten() {
            sink(r);
        }
        return;
    }
    let _ = par;
    v.bitmap.harvest_unfenced(first, count, sink);
}
