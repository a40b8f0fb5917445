//! The data plane: write and read faults and marking (lock-free), the zap re-check that
//! redoes a fault a zap overlapped, and forwarding of a fault that found the bitmap sealed.

use super::chunk::{Chunk, Slot};
use super::words::word_mask;
use super::{DrainRule, Mark, PageBitmap, ABSENT_DIRTY, CHUNK_PAGES, ZAP_RING};
use crate::barrier::{self, LightWriter};
use crate::sync::{fence, lock, spin_loop, AtomicU64, Ordering};
use crate::twins;

/// Ordering of the fault path's read-modify-writes. Broken twin `relaxed_fault`
/// (loom-tests): Relaxed, which lets a fault that follows a drain miss the seal.
#[inline(always)]
fn fault_rmw() -> Ordering {
    if twins::RELAXED_FAULT.on() {
        Ordering::Relaxed
    } else {
        Ordering::AcqRel
    }
}

/// The result of one fault attempt.
enum Attempt {
    /// applied; pages flipped clean to dirty
    Done(u64),
    /// the chunk limit was reached
    NoMem,
    /// sealed under the fault: forward it
    Sealed,
    /// a zap overlapped the fault: wait for it and redo unless it zapped other pages
    /// (pages flipped so far, the zap generation read before the first RMW)
    Rezap(u64, u64),
}

/// The materialized chunk a writer handle's hint last used (`crate::writer`): the slot
/// load skipped. Sound because a slot only ever goes from a tag to a chunk (a CAS in
/// `materialize`; zaps and clears swap tags for tags), and a chunk is freed only when its
/// bitmap is dropped: while the bitmap lives, slot `k` holds this chunk.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChunkHint {
    k: usize,
    chunk: *const Chunk,
}

impl ChunkHint {
    /// No chunk cached.
    pub(crate) const NONE: ChunkHint = ChunkHint {
        k: usize::MAX,
        chunk: std::ptr::null(),
    };

    #[inline(always)]
    fn get<'b>(&self, k: usize) -> Option<&'b Chunk> {
        if self.k != k || self.chunk.is_null() {
            return None;
        }
        // SAFETY: `chunk` was slot `k`'s chunk of the bitmap the caller passes again (the
        // caller resets the hint when it moves to another bitmap, and keeps the bitmap
        // alive: the writer's pin holds its VMA); slot `k` keeps that chunk until the
        // bitmap is dropped (type docs).
        Some(unsafe { &*self.chunk })
    }
}

/// One 64-page word of a materialized chunk (`ChunkHint`'s reasoning: it stays its
/// bitmap's until the bitmap is dropped), kept by a writer handle's hint for the stores
/// that follow to the same pages (`AddressSpace::store_hot`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct WordHint {
    chunk: *const Chunk,
    wi: usize,
}

impl WordHint {
    /// No word.
    pub(crate) const NONE: WordHint = WordHint {
        chunk: std::ptr::null(),
        wi: 0,
    };

    /// Are the pages of mask `m` soft-dirty, populated and backed (a write fault would
    /// change nothing)? The loads of `nothing_to_do`, after the caller's mark barrier.
    /// False for [`WordHint::NONE`]. The caller keeps the word's bitmap alive (the writer's
    /// pin holds the VMA that holds it) and resets the word with its VMA.
    #[inline(always)]
    pub(crate) fn unchanged(&self, m: u64) -> bool {
        if self.chunk.is_null() {
            return false;
        }
        // SAFETY: a non-null `chunk` is a chunk of a bitmap the caller keeps alive (above),
        // and a chunk is freed only when its bitmap is dropped (`ChunkHint`).
        let c = unsafe { &*self.chunk };
        // A write's (`PageBitmap::write`: dirty, backed, populate).
        c.settled(self.wi, m, (true, true, true))
    }
}

/// What a fault has done so far (see [`PageBitmap::fault_impl`]).
#[derive(Clone, Copy, Default)]
struct FaultState {
    /// pages whose clean bit the fault flipped
    faults: u64,
    /// any RMW issued (then the seal and the zap generation must be re-checked)
    did_rmw: bool,
    /// the zap generation read at the start of the attempt
    zap0: u64,
    /// summary bits owed to the current chunk (words whose clean bits it cleared)
    owed: u64,
    /// a word of the current chunk was made dirty with a plain store (`fault_word`):
    /// its summary RMW is then unconditional (`settle_summary`)
    plain: bool,
}

impl FaultState {
    /// The state at the start of an attempt: the zap generation read before the
    /// attempt's first test load. Read there, not before the first RMW: a test that
    /// skips an RMW (the bit looked set) decides on a load that may be older than a zap
    /// the fault's later RMW reads from, and only a generation read before every such
    /// load tells the fault that a zap ran in between (loom: `dontneed_vs_write_precise`
    /// found a write that set `backed` after a zap but skipped `populated` on a stale
    /// load, and so stood, unpopulated, when the generation was read late).
    #[inline(always)]
    fn start(zap_seq: &AtomicU64) -> FaultState {
        FaultState {
            // Acquire: sequenced before the attempt's loads and RMWs (the RMWs are
            // AcqRel, so they cannot move above it). Pairs with nothing by itself;
            // `finish_fault` compares it with a later read (see `PageBitmap::zap`).
            // Broken twin `zap_no_seq`: not read.
            zap0: if twins::ZAP_NO_SEQ.on() || twins::ZAP_GEN_LATE.on() {
                0
            } else {
                zap_seq.load(Ordering::Acquire)
            },
            ..FaultState::default()
        }
    }

    /// Called before each RMW.
    #[inline(always)]
    fn before_rmw(&mut self, zap_seq: &AtomicU64) {
        // Broken twin `zap_gen_late`: the generation read here, before the first RMW.
        if twins::ZAP_GEN_LATE.on() && !self.did_rmw {
            self.zap0 = zap_seq.load(Ordering::Acquire);
        }
        self.did_rmw = true;
    }
}

/// The fault path on one word `wi` of `chunk`, pages `m`: test-before-set of `clean`
/// (if `dirty`), then `populated` and `backed` (`what` = (dirty, backed, populate)).
#[inline(always)]
fn fault_word(
    chunk: &Chunk,
    zap_seq: &AtomicU64,
    wi: usize,
    m: u64,
    what: (bool, bool, bool),
    st: &mut FaultState,
) {
    let (dirty, backed, populate) = what;
    // Order: clean first, then populated and backed. A copy reads populated before clean
    // (see `copy_from`), so a snapshot never shows a page written (backed) but clean.
    if dirty {
        let c = chunk.clean[wi].load(Ordering::Relaxed);
        if c & m != 0 {
            st.before_rmw(zap_seq);
            let flipped = if m == !0 {
                // The whole word is this fault's (every page of it in the range, and so
                // in the bitmap): it ends 0 whatever raced us, so a plain store makes it
                // so, without a locked instruction (four of a 256-page mark's six).
                // What the RMW's Acquire told the fault comes from the chunk's summary
                // RMW instead, which `settle_summary` then issues unconditionally, after
                // this store: a drain (`drain_slot`), a zap or another rewrite
                // (`update_range`) does a value-preserving RMW on the summary before it
                // reads or rewrites the chunk's words, and a harvest clears summary bits
                // with an RMW before it takes words. Whichever of the two summary RMWs
                // is later reads from the other: ours later, we see the seal or the zap
                // generation (sequenced before theirs); theirs later, they see this
                // store. A harvest whose take overwrites it already reported the pages
                // and copies our data (the mark's barrier, `take_word`). Release: a
                // harvest or drain that reads the word sees the data before it.
                // The count is the pages the test load saw clean: exact unless a racing
                // write flipped some of them meanwhile (then both count them).
                chunk.clean[wi].store(0, Ordering::Release);
                st.plain = true;
                c
            } else {
                // AcqRel: Acquire pairs with the drain RMW of a sealing structural
                // operation (then `sealed` is visible in `finish_fault`), with a zap's
                // RMW (then its generation bump is), and with a harvest's RMW or
                // `take_word`'s Release store (then the harvest's summary clear is
                // visible to `settle_summary`); Release lets a harvest that takes this
                // bit see the write.
                // First a CAS from the value just loaded: on x86-64 a `fetch_and` whose
                // result is used is a load + `lock cmpxchg` loop, so this saves the
                // reload; if the word changed meanwhile, the `fetch_and` (same ordering)
                // retries.
                let prev = match chunk.clean[wi].compare_exchange(
                    c,
                    c & !m,
                    fault_rmw(),
                    Ordering::Relaxed,
                ) {
                    Ok(p) => p,
                    Err(_) => chunk.clean[wi].fetch_and(!m, fault_rmw()),
                };
                prev & m
            };
            st.faults += if flipped == !0 {
                64 // a whole clean word
            } else {
                pages_in(flipped)
            };
            st.owed |= 1u64 << wi;
        }
    }
    if populate && chunk.populated[wi].load(Ordering::Relaxed) & m != m {
        st.before_rmw(zap_seq);
        // AcqRel: pairs with the drain and zap RMWs (see above).
        chunk.populated[wi].fetch_or(m, fault_rmw());
    }
    if backed && chunk.backed[wi].load(Ordering::Relaxed) & m != m {
        st.before_rmw(zap_seq);
        // AcqRel: pairs with the drain and zap RMWs (see above).
        chunk.backed[wi].fetch_or(m, fault_rmw());
    }
}

/// The pages of a partly flipped word: a call, never inlined, so that the whole-word
/// case stays a branch. Baseline x86-64 has no `POPCNT`, so `count_ones` is a software
/// routine of about 20 instructions, which the compiler computed for every word and then
/// discarded behind a conditional move when it was inline (callgrind: 80 of a 256-page
/// mark's 549 instructions).
#[cold]
#[inline(never)]
fn pages_in(flipped: u64) -> u64 {
    u64::from(flipped.count_ones())
}

/// Sets the summary bits a fault owes `chunk`, after its word RMWs: test-before-set, or
/// an RMW in any case after a plain word store (`plain`, see `fault_word`).
#[inline]
fn settle_summary(chunk: &Chunk, owed: u64, plain: bool) {
    // Broken twin `plain_store_summary_test`: the test decides after a plain store too.
    let test_first = !plain || twins::PLAIN_STORE_SUMMARY_TEST.on();
    if owed != 0 && (!test_first || chunk.summary.load(Ordering::Relaxed) & owed != owed) {
        // AcqRel: ordered after this fault's word RMWs, so a harvest that clears these
        // summary bits and then visits the words sees our bits.
        chunk.summary.fetch_or(owed, Ordering::AcqRel);
    }
}

impl PageBitmap {
    /// A write fault on pages `[first, first + count)`: populate, back with a real page,
    /// and make soft-dirty at the page level. Test-before-set: a page already in that
    /// state costs one relaxed load per word and no read-modify-write.
    /// [`Mark::OutOfRange`] (nothing done) if the range overflows or leaves the bitmap.
    #[inline]
    pub fn write(&self, first: u64, count: u64) -> Mark {
        self.fault(first, count, true, true, true)
    }

    /// [`Self::write`] for a caller that holds a light writer's registration
    /// (`crate::barrier::LightWriter`, as a writer handle does): the data-ordering barrier
    /// before the test loads is a compiler barrier; the harvests' `membarrier` does the rest.
    pub(crate) fn write_light(&self, first: u64, count: u64) -> Mark {
        self.fault_impl(first, count, true, true, true, true, true)
    }

    /// Marks `[first, first + count)` soft-dirty without touching population: the write
    /// path of a VMM's dirty bitmap (`crate::vmm`), where only the dirty bit matters. One
    /// relaxed load per word when the pages are already dirty; an untouched all-dirty
    /// chunk is not even materialized. [`Mark::OutOfRange`] (nothing done) if the range
    /// overflows or leaves the bitmap.
    #[inline]
    pub fn mark_dirty(&self, first: u64, count: u64) -> Mark {
        self.fault_impl(first, count, true, false, false, false, false)
    }

    /// [`Self::mark_dirty`] by a light writer (`crate::barrier`): no fence before the test
    /// loads, so an already-dirty page costs loads only. Sound because every harvest
    /// calls `membarrier` while `_light` (the caller's registration) exists.
    #[inline]
    pub fn mark_dirty_light(&self, _light: &LightWriter, first: u64, count: u64) -> Mark {
        self.fault_impl(first, count, true, false, false, false, true)
    }

    /// [`Self::mark_dirty_light`] of the one page `page`, as vm-memory's `write_obj`
    /// marks: the same test before anything else (`nothing_to_do`: the page's word in a
    /// materialized chunk, after the light barrier, already soft-dirty) with a one-bit
    /// mask and none of the range arithmetic; the general mark when it fails.
    #[inline(always)]
    pub fn mark_page_dirty_light(&self, light: &LightWriter, page: u64) -> Mark {
        if page < self.pages {
            barrier::mark_fence(true);
            if let Slot::Chunk(c) = self.slot((page / CHUNK_PAGES) as usize) {
                let wi = ((page % CHUNK_PAGES) / 64) as usize;
                if c.settled(wi, 1 << (page % 64), (true, false, false)) {
                    return Mark::Done { faults: 0 };
                }
            }
        }
        self.mark_dirty_light(light, page, 1)
    }

    /// Marks soft-dirty, as [`Self::mark_dirty`], the pages of `[first, first + count)`
    /// that hold no private copy (`backed` clear): in a private file mapping, the pages
    /// that show the file's page, whose content a store to the file changes. A page that
    /// becomes a private copy concurrently is dirty by its own write fault, so reading
    /// `backed` before marking loses nothing. Untouched stretches are marked whole.
    pub fn mark_dirty_unbacked(&self, first: u64, count: u64) -> Mark {
        if !self.in_range(first, count) {
            return Mark::OutOfRange;
        }
        let end = first + count;
        let mut p = first;
        let mut run: Option<u64> = None; // start of the pending run of unbacked pages
        let mut faults = 0;
        let mut flush = |s: u64, e: u64| match self.mark_dirty(s, e - s) {
            Mark::Done { faults: f } => {
                faults += f;
                None
            }
            m => Some(m),
        };
        while p < end {
            if let Some((_, ue)) = self.uniform_run_end(p, end) {
                run.get_or_insert(p);
                p = ue;
                continue;
            }
            let w = p - p % 64;
            let lim = (w + 64).min(end);
            let backed = self.window(w).backed;
            for q in p..lim {
                if (backed >> (q - w)) & 1 == 0 {
                    run.get_or_insert(q);
                } else if let Some(s) = run.take() {
                    if let Some(m) = flush(s, q) {
                        return m;
                    }
                }
            }
            p = lim;
        }
        if let Some(s) = run {
            if let Some(m) = flush(s, end) {
                return m;
            }
        }
        Mark::Done { faults }
    }

    /// A read fault on `[first, first + count)`: populate without dirtying. `zero_page`:
    /// map the shared zero page (private anonymous memory) rather than a real page.
    /// [`Mark::OutOfRange`] (nothing done) if the range overflows or leaves the bitmap.
    pub fn read(&self, first: u64, count: u64, zero_page: bool) -> Mark {
        self.fault(first, count, false, !zero_page, true)
    }

    #[inline]
    fn fault(&self, first: u64, count: u64, dirty: bool, backed: bool, populate: bool) -> Mark {
        self.fault_impl(first, count, dirty, backed, populate, true, false)
    }

    /// A fault: the data-ordering fence of a mark, then [`Self::fault_loop`].
    #[inline]
    fn fault_impl(
        &self,
        first: u64,
        count: u64,
        dirty: bool,
        backed: bool,
        populate: bool,
        limited: bool,
        light: bool,
    ) -> Mark {
        // The one range check of every mark (`write`, `mark_dirty`, `read`): nothing done
        // for a range that overflows or leaves the bitmap.
        if !self.in_range(first, count) {
            return Mark::OutOfRange;
        }
        if dirty {
            // Data ordering (ARCHITECTURE.md, contract 0; `crate::barrier`): the caller's
            // stores to the pages come before this call; the barrier orders them before
            // the test loads below. With a fence, it pairs with the fence a harvest issues
            // after its get-and-clear and before it hands out the pages: either the
            // harvest's fence comes first in the SeqCst order, and the test load sees the
            // page clean (so the RMW re-dirties it), or ours does, and the harvest's copy
            // sees the data. A light writer's compiler barrier pairs with the harvest's
            // membarrier instead.
            barrier::mark_fence(light);
        }
        if self.nothing_to_do(first, count, dirty, backed, populate) {
            return Mark::Done { faults: 0 };
        }
        self.fault_loop(first, count, dirty, backed, populate, limited)
    }

    /// Whether a write fault on `[first, first + count)` would change nothing (the pages
    /// are soft-dirty, populated and backed, inside one word of a materialized chunk),
    /// after the mark's data-ordering barrier: [`Self::write`]'s first steps, for a
    /// caller that answers such a store without the rest (`AddressSpace::store_unchanged`).
    /// `hint` caches the chunk last found (it must be reset when the caller moves to
    /// another bitmap). `Some(word)`, the word the pages are in, when nothing would change.
    #[inline(always)]
    pub(crate) fn unchanged_by_write(
        &self,
        hint: &mut ChunkHint,
        first: u64,
        count: u64,
        light: bool,
    ) -> Option<WordHint> {
        let off = first % 64;
        if count == 0 || off + count > 64 || !self.in_range(first, count) {
            return None;
        }
        barrier::mark_fence(light);
        let k = (first / CHUNK_PAGES) as usize;
        let c = match hint.get(k) {
            Some(c) => c,
            None => match self.slot(k) {
                Slot::Chunk(c) => {
                    *hint = ChunkHint { k, chunk: c };
                    c
                }
                Slot::Absent { .. } => return None,
            },
        };
        let word = WordHint {
            chunk: c,
            wi: ((first % CHUNK_PAGES) / 64) as usize,
        };
        word.unchanged(word_mask(off, off + count)).then_some(word)
    }

    /// The commonest mark, answered before the fault machinery: a range inside one word of
    /// a materialized chunk whose pages already are what the fault would make them (a hot
    /// page stored to again). The same loads as `fault_once`'s first steps (slot, then
    /// `clean`, `populated`, `backed` as asked); a fault that changes nothing needs no zap
    /// generation, no seal check and no summary, so it linearizes at these loads.
    /// Checked separately from `fault_loop`, whose prologue (the retry loop's hoisted
    /// setup) cost a vm-memory `write_obj` about 60 instructions (callgrind).
    #[inline(always)]
    fn nothing_to_do(
        &self,
        first: u64,
        count: u64,
        dirty: bool,
        backed: bool,
        populate: bool,
    ) -> bool {
        let off = first % 64;
        if count == 0 || off + count > 64 {
            return false;
        }
        let Slot::Chunk(c) = self.slot((first / CHUNK_PAGES) as usize) else {
            return false;
        };
        let wi = ((first % CHUNK_PAGES) / 64) as usize;
        c.settled(wi, word_mask(off, off + count), (dirty, backed, populate))
    }

    /// Applies a fault until it linearizes: redone after an overlapping zap, forwarded
    /// to the successors of a bitmap sealed under it.
    fn fault_loop(
        &self,
        first: u64,
        count: u64,
        dirty: bool,
        backed: bool,
        populate: bool,
        limited: bool,
    ) -> Mark {
        // Checked by `fault_impl`; forwarded ranges were cut to their targets at the seal.
        debug_assert!(self.in_range(first, count));
        // Faults flipped by an attempt a zap then undid are counted once.
        let mut counted = 0;
        loop {
            match self.fault_once(first, count, dirty, backed, populate, limited) {
                Attempt::Done(f) => {
                    return Mark::Done {
                        faults: f.max(counted),
                    }
                }
                Attempt::NoMem => return Mark::NoMem,
                Attempt::Rezap(f, zap0) => {
                    counted = counted.max(f);
                    self.wait_zap();
                    if self.only_other_pages_zapped(zap0, first, first + count) {
                        return Mark::Done { faults: counted };
                    }
                }
                Attempt::Sealed => {
                    return match self.forward(first, count, dirty, backed, populate, limited) {
                        Mark::Done { faults } => Mark::Done {
                            faults: faults.max(counted),
                        },
                        m => m,
                    }
                }
            }
        }
    }

    /// One attempt of a fault.
    #[inline]
    fn fault_once(
        &self,
        first: u64,
        count: u64,
        dirty: bool,
        backed: bool,
        populate: bool,
        limited: bool,
    ) -> Attempt {
        // Fast path: a range inside one word of a materialized chunk (a hot page written
        // again, a small store). The same atomic steps as the general path, without its
        // chunk and word loop: one slot load, then `fault_word`; a fault that changes
        // nothing returns after the word loads (no RMW, no summary, no re-checks).
        let off = first % 64;
        if count != 0 && off + count <= 64 {
            let k = (first / CHUNK_PAGES) as usize;
            if let Slot::Chunk(c) = self.slot(k) {
                let wi = ((first % CHUNK_PAGES) / 64) as usize;
                let mut st = FaultState::start(&self.zap_seq);
                fault_word(
                    c,
                    &self.zap_seq,
                    wi,
                    word_mask(off, off + count),
                    (dirty, backed, populate),
                    &mut st,
                );
                if !st.did_rmw {
                    return Attempt::Done(0);
                }
                settle_summary(c, st.owed, st.plain);
                return self.finish_fault(false, false, st);
            }
        }
        self.fault_words(first, count, dirty, backed, populate, limited)
    }

    /// The general fault path: chunk by chunk, word by word (full-word masks inside the
    /// range), test-before-set per word, then one summary update per chunk.
    fn fault_words(
        &self,
        first: u64,
        count: u64,
        dirty: bool,
        backed: bool,
        populate: bool,
        limited: bool,
    ) -> Attempt {
        let mut st = FaultState::start(&self.zap_seq);
        let mut sealed = false;
        let mut nomem = false;
        let end = first + count;
        let mut p = first;
        while p < end {
            let k = (p / CHUNK_PAGES) as usize;
            let base = k as u64 * CHUNK_PAGES;
            let hi = end.min(base + CHUNK_PAGES);
            // Marking only (no population): an untouched all-dirty chunk already says
            // what we would write.
            if !populate && self.slots.load(k, Ordering::Acquire) == ABSENT_DIRTY {
                p = hi;
                continue;
            }
            let chunk = match self.materialize(k, limited) {
                Ok(c) => c,
                Err(Mark::NoMem) => {
                    nomem = true;
                    break;
                }
                Err(_) => {
                    sealed = true;
                    break;
                }
            };
            st.owed = 0;
            st.plain = false;
            let w0 = ((p - base) / 64) as usize;
            let w1 = ((hi - 1 - base) / 64) as usize;
            for wi in w0..=w1 {
                let wbase = base + wi as u64 * 64;
                // Full words inside the range: the whole mask, no per-page work.
                let m = if wi != w0 && wi != w1 {
                    !0
                } else {
                    word_mask(p.max(wbase) - wbase, hi.min(wbase + 64) - wbase)
                };
                fault_word(
                    chunk,
                    &self.zap_seq,
                    wi,
                    m,
                    (dirty, backed, populate),
                    &mut st,
                );
            }
            settle_summary(chunk, st.owed, st.plain);
            p = hi;
        }
        self.finish_fault(sealed, nomem, st)
    }

    /// The end of a fault attempt: the seal and zap re-checks after any RMW.
    #[inline]
    fn finish_fault(&self, sealed: bool, nomem: bool, st: FaultState) -> Attempt {
        // Acquire: if any RMW of the fault read from a drain, the seal store (sequenced
        // before the drain) is visible here.
        // (Broken twin `no_recheck`: trusts the RMWs without the re-check.)
        if sealed || (!twins::NO_RECHECK.on() && st.did_rmw && self.sealed.load(Ordering::Acquire))
        {
            return Attempt::Sealed;
        }
        // Acquire: if any RMW of the fault read from a zap's RMW, the zap's first
        // generation bump (sequenced before it) is visible here (see `zap`).
        if !twins::ZAP_NO_SEQ.on() && st.did_rmw {
            let now = self.zap_seq.load(Ordering::Acquire);
            if st.zap0 & 1 == 1 || now != st.zap0 {
                return Attempt::Rezap(st.faults, st.zap0);
            }
        }
        if nomem {
            return Attempt::NoMem;
        }
        Attempt::Done(st.faults)
    }

    /// Waits until no zap is rewriting this bitmap's words.
    fn wait_zap(&self) {
        // Acquire: pairs with the Release bump that ends the zap, so the redone fault's
        // RMWs come after every zap RMW in their words' modification orders.
        while self.zap_seq.load(Ordering::Acquire) & 1 == 1 {
            spin_loop();
        }
    }

    /// After [`Self::wait_zap`]: were all the zaps that ran since the fault read `zap0`
    /// (the one in progress then, and those after it) on pages disjoint from
    /// `[first, end)`? Then they changed none of the fault's bits (every zap RMW is
    /// masked to its pages) and the fault stands. Read like a seqlock: the ranges between
    /// two reads of the generation, which must agree; more zaps than the ring holds, or a
    /// new one meanwhile, mean a redo.
    fn only_other_pages_zapped(&self, zap0: u64, first: u64, end: u64) -> bool {
        // Acquire: pairs with the zaps' Release bumps, so the ranges they stored after
        // their odd bumps are visible.
        let g = self.zap_seq.load(Ordering::Acquire);
        if g & 1 == 1 {
            return false;
        }
        // Zaps `n0..n1` ran: the one in progress at `zap0` (odd) or the next one, up to
        // the last completed one.
        let (n0, n1) = (zap0 / 2, g / 2);
        if n1 <= n0 || n1 - n0 > ZAP_RING as u64 {
            return n1 <= n0;
        }
        let disjoint = (n0..n1).all(|n| {
            let slot = &self.zap_ring[(n % ZAP_RING as u64) as usize];
            let (lo, hi) = (
                slot[0].load(Ordering::Relaxed),
                slot[1].load(Ordering::Relaxed),
            );
            hi <= first || end <= lo
        });
        // Acquire fence: orders the range loads before the re-read; a zap that stored a
        // range we read after its odd bump makes the re-read differ (see `zap`).
        fence(Ordering::Acquire);
        disjoint && self.zap_seq.load(Ordering::Relaxed) == g
    }

    /// A fault that found this bitmap sealed: apply it to the successors the sealing
    /// operation named, in their coordinates (recursively, if one of them was sealed in
    /// turn). The fault linearizes before the structural operation: every page of it
    /// lands where the operation carried that page (pages the operation dropped, an
    /// unmapped part, are written into the retired bitmap only, as a write that
    /// completed just before the unmap). Retrying through the index instead would let
    /// a write that the drain partly carried over fail with EFAULT at the moved source.
    fn forward(
        &self,
        first: u64,
        count: u64,
        dirty: bool,
        backed: bool,
        populate: bool,
        limited: bool,
    ) -> Mark {
        // Broken twin `retry_via_index` (loom-tests): the code before forwarding.
        if twins::RETRY_VIA_INDEX.on() {
            return Mark::Sealed;
        }
        // The mutex orders this read after the store in `seal_and_drain`, which precedes
        // the seal we observed.
        #[allow(unreachable_code)]
        let Some(targets) = lock(&self.forward).clone() else {
            return Mark::Sealed;
        };
        let end = first + count;
        let mut faults = 0;
        for t in targets.iter() {
            let lo = first.max(t.src_first);
            let hi = end.min(t.src_first + t.count);
            if lo >= hi {
                continue;
            }
            // A legacy mremap move marks every moved present page soft-dirty: a read
            // fault that lands before the move is such a page.
            let dirty_t = dirty || (populate && t.rule == DrainRule::DirtyPopulated);
            let d = t.dst_first + (lo - t.src_first);
            match t
                .dst
                .fault_loop(d, hi - lo, dirty_t, backed, populate, limited)
            {
                Mark::Done { faults: f } => faults += f,
                m => return m,
            }
        }
        Mark::Done { faults }
    }
}
