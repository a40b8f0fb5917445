//! The data-ordering barriers of contract 0 (ARCHITECTURE.md): the mark's barrier, which
//! orders the caller's data stores before the mark's test loads, and the harvest's, which
//! orders a get-and-clear before the harvester reads the pages it took.
//!
//! # Symmetric: a fence on each side
//!
//! A mark issues a `SeqCst` fence before its first test load (`mark_fence`); a harvest
//! issues one after its get-and-clear (`clear_fence`). In the `SeqCst` order either the
//! harvest's fence comes first, and the mark's test sees the page clean (its RMW makes it
//! dirty again), or the mark's does, and the harvest's copy sees the data. On x86-64 the
//! mark's fence is about as dear as AtomicBitmap's whole mark (a `lock or`, 5.2 ns here).
//!
//! # Asymmetric: nothing on the writer's side, `membarrier` on the harvester's
//!
//! A writer handle ([`crate::writer::Writer`]) registers as a *light writer*
//! ([`LightWriter`]) and marks with a compiler barrier only: its data stores stay before
//! its test loads in program order, but a store may still wait in the store buffer while
//! the load completes. Every harvest then ends its fence with
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` while any light writer is registered:
//! the kernel makes every running thread of the process execute a full memory barrier
//! before the call returns (an IPI to each CPU running one; a thread not running was
//! serialized by its context switch). So each light mark is split by that barrier:
//! either its data store comes before it (drained, visible to the harvester's copy,
//! which reads after the call), or its test load comes after it, and after the
//! harvester's get-and-clear, which the harvester's own fence ordered before the call:
//! the test sees the page clean and re-dirties it. This is the pattern of liburcu's
//! `urcu-memb` flavour and of folly's `asymmetricLightBarrier`/`asymmetricHeavyBarrier`;
//! the kernel's man page, membarrier(2), gives it as its example.
//!
//! Registration is counted process-wide (`LIGHT_WRITERS`), as `membarrier` itself acts
//! process-wide: a harvest pays the call (0.1 µs alone, 0.3–2.9 µs with a thread
//! running on the other core, measured here) only while some light writer exists, once
//! per harvest call (`PageBitmap::harvest` holds back the runs it takes until it has
//! called it, and an address-space harvest calls it once at its end). Why a harvest that
//! reads the count as zero needs no call:
//! - a writer registered later: it registers with a `SeqCst` RMW and a `SeqCst` fence
//!   before its first mark, the harvester reads the count after its own `SeqCst` fence
//!   and saw no registration, so the harvester's fence precedes the writer's in the
//!   `SeqCst` order and every later test load of the writer sees the get-and-clear;
//! - a writer that deregistered: its `Release` decrement comes after its last mark and
//!   the data before it, and the harvester's `Acquire` load read it (or an RMW after it
//!   in the counter's release sequence), so the data is visible to the copy.
//!
//! What checks it: the C++ memory model has no `membarrier`, so loom cannot; in a loom
//! build there are no light writers (every mark fences) and the models check the rest of
//! the protocol. The asymmetric pair is checked on the hardware by `tests/litmus.rs`'s
//! writer-handle shape (the store-buffering outcome, counted as lost writes), whose twin
//! `no_heavy_barrier` (a harvest that never calls `membarrier`) it catches
//! (`scripts/stress-twins.sh`), and by the stress, whose writer handles are light.
//! Where `membarrier` is missing (Linux before 4.14, a seccomp filter, or
//! `SOFTDIRTY_NO_MEMBARRIER=1` in the environment) no writer is light.

use crate::sync::{fence, Ordering};
use crate::twins;
use std::sync::atomic::AtomicUsize;
use std::sync::OnceLock;

/// Light writers registered in this process ([`LightWriter`]). A std atomic, not loom's:
/// a loom build has no light writers.
static LIGHT_WRITERS: AtomicUsize = AtomicUsize::new(0);

/// Whether this process registered for `MEMBARRIER_CMD_PRIVATE_EXPEDITED` (asked once).
static MEMBARRIER: OnceLock<bool> = OnceLock::new();

/// Runs after the runs a harvest holds back before its `membarrier` (`PageBitmap::harvest`
/// with light writers registered): the memory it may take stays bounded.
pub(crate) const HELD_RUNS: usize = 4096;

fn membarrier_available() -> bool {
    *MEMBARRIER.get_or_init(|| {
        if cfg!(all(loom, feature = "loom"))
            || std::env::var_os("SOFTDIRTY_NO_MEMBARRIER").is_some_and(|v| v != "0")
        {
            return false;
        }
        // SAFETY: membarrier(2) takes plain integers and touches no memory of ours.
        let r = unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                libc::MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
                0,
                0,
            )
        };
        r == 0
    })
}

/// A light writer's registration: while one exists, every harvest in the process ends
/// with `membarrier` (module docs). Dropping it deregisters.
///
/// `Send` and `Sync`: `membarrier` acts on every thread of the process, so one
/// registration may cover the marks of many threads (a vm-memory bitmap shares one,
/// `crate::vmm`). A thread that marks through it received it by some synchronization
/// after `register` returned, so the registration's fence happens before its marks, and
/// the module docs' argument holds for it: were a harvest that read the count as zero
/// to take a page a later mark tested as dirty, that test would be coherence-ordered
/// before the get-and-clear, and C++20's rule for `SeqCst` fences (\[atomics.order\]:
/// a fence that happens before the first of two coherence-ordered operations precedes
/// in S a fence that happens after the second) would put the registration's fence
/// before the harvester's, which read no registration. Dropping it, the last owner's
/// `Release` decrement comes after every mark through it (the owners synchronize
/// through whatever shared it, an `Arc`'s count for instance).
#[derive(Debug)]
pub struct LightWriter {
    _registered: (),
}

impl LightWriter {
    /// Registers a light writer, or `None` where `membarrier` is unavailable (the writer
    /// then fences every mark).
    pub fn register() -> Option<LightWriter> {
        if !membarrier_available() {
            return None;
        }
        // SeqCst RMW, then a SeqCst fence before the writer's first mark: pairs with the
        // harvester's fence before it reads the count (module docs, "registered later").
        LIGHT_WRITERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Some(LightWriter { _registered: () })
    }
}

impl Drop for LightWriter {
    fn drop(&mut self) {
        // Release: after this writer's last mark and the data stores before it; pairs with
        // the harvester's Acquire load of the count (module docs, "deregistered").
        LIGHT_WRITERS.fetch_sub(1, std::sync::atomic::Ordering::Release);
    }
}

/// The mark side: before a dirtying mark's first test load. `light`: the caller holds a
/// [`LightWriter`] (a compiler barrier suffices); otherwise a `SeqCst` fence, which pairs
/// with [`clear_fence`]'s.
#[inline(always)]
pub(crate) fn mark_fence(light: bool) {
    if light {
        // Keeps the caller's data stores before the test loads in program order; the
        // harvester's membarrier does the rest (module docs).
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    } else if !twins::MARK_NO_FENCE.on() {
        // Broken twin `mark_no_fence` (loom-tests, tests/litmus.rs): the test-before-set
        // marking of before the fix.
        fence(Ordering::SeqCst);
    }
}

/// The harvest side, in full: after a get-and-clear and before the harvester reads any
/// page it took; also at the end of every other clean-making operation.
#[inline]
pub(crate) fn clear_fence() {
    if heavy_needed() {
        heavy();
    }
}

/// The harvest side's fence, and whether the heavy barrier must follow it before the
/// pages are read ([`heavy`]): a harvest that holds its runs back calls this after each
/// get-and-clear and [`heavy`] once for all of them.
#[inline]
pub(crate) fn heavy_needed() -> bool {
    // Broken twin `harvest_no_fence` (loom-tests, tests/litmus.rs).
    if !twins::HARVEST_NO_FENCE.on() {
        fence(Ordering::SeqCst);
    }
    // Acquire, after the fence: pairs with a light writer's Release deregistration and,
    // through the fence, with its registration (module docs). Broken twin
    // `no_heavy_barrier` (tests/litmus.rs): light writers, and no membarrier.
    !twins::NO_HEAVY_BARRIER.on() && LIGHT_WRITERS.load(std::sync::atomic::Ordering::Acquire) != 0
}

/// The heavy barrier: every running thread of the process executes a full memory barrier
/// before this returns. Only called while a light writer is registered, so the process
/// registered for it.
#[cold]
pub(crate) fn heavy() {
    // SAFETY: membarrier(2) takes plain integers and touches no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            libc::MEMBARRIER_CMD_PRIVATE_EXPEDITED,
            0,
            0,
        )
    };
    // Registered before any light writer existed (`membarrier_available`), and the
    // command has no other failure.
    debug_assert_eq!(r, 0, "membarrier failed after registration");
}

/// Light writers registered now (tests, reports).
pub fn light_writers() -> usize {
    LIGHT_WRITERS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether writer handles are light in this process (`membarrier` available and not
/// disabled by `SOFTDIRTY_NO_MEMBARRIER`).
pub fn light_available() -> bool {
    membarrier_available()
}
