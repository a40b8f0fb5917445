//! Epoch-based reclamation for retired VMA indexes, VMAs and bitmaps (RCU in user space).
//!
//! Readers (the write/read fault path, pagemap, scans) [`pin`] the current thread, load
//! the published [`crate::index::VmaIndex`] and use it; structural operations publish a
//! new index and hand the old one to [`Guard::defer_destroy`]. Nothing is freed while a
//! thread that may still see it is pinned.
//!
//! softdirty uses its own `crossbeam_epoch::Collector`, not the global one that rayon's
//! deques share (`../shared/reference/rust-anchors.md` §0.7): idle rayon workers would
//! otherwise slow down epoch advancement for our writers, and tests can reason about one
//! domain. Under `cfg(loom)` the global collector is used, because crossbeam-epoch makes
//! that one a loom `lazy_static` that is reset between model executions.

pub use crossbeam_epoch::{unprotected, Atomic, Guard, Owned, Shared};

#[cfg(not(all(loom, feature = "loom")))]
mod imp {
    use crossbeam_epoch::{Collector, Guard, LocalHandle};
    use std::sync::OnceLock;

    fn collector() -> &'static Collector {
        static COLLECTOR: OnceLock<Collector> = OnceLock::new();
        COLLECTOR.get_or_init(Collector::new)
    }

    thread_local! {
        static HANDLE: LocalHandle = collector().register();
    }

    /// Is `guard` pinned in softdirty's collector?
    pub fn is_ours(guard: &Guard) -> bool {
        guard.collector() == Some(collector())
    }

    /// Pins the current thread in softdirty's reclamation domain.
    pub fn pin() -> Guard {
        HANDLE
            .try_with(|h| h.pin())
            // During thread-local destruction: a temporary handle. Its `Local` lives on
            // until the guard is dropped (crossbeam counts guards and handles separately).
            .unwrap_or_else(|_| collector().register().pin())
    }
}

#[cfg(all(loom, feature = "loom"))]
mod imp {
    /// Pins the current (modelled) thread.
    pub fn pin() -> crossbeam_epoch::Guard {
        crossbeam_epoch::pin()
    }

    /// Is `guard` pinned (in the global collector that loom builds use)?
    pub fn is_ours(guard: &crossbeam_epoch::Guard) -> bool {
        guard.collector().is_some()
    }
}

pub use imp::{is_ours, pin};

/// Retirements on softdirty's collector so far (every published index retires its
/// predecessor: `mm/commit.rs`, the one `defer_destroy`). A writer handle compares it with
/// the count it saw at its last repin: while it is unchanged, the handle's pin holds back
/// nothing retired since, so its hot stores need not count towards a repin
/// (`crate::writer`). A progress hint for reclamation, never for safety: std's atomic,
/// `Relaxed`.
static RETIRED: crate::sync::StdCounter = crate::sync::StdCounter::new(0);

/// Counts one retirement (call with each `defer_destroy`).
#[inline]
pub(crate) fn note_retired() {
    RETIRED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Retirements so far ([`note_retired`]).
#[inline]
pub(crate) fn retired() -> usize {
    RETIRED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Pins and immediately flushes the thread's garbage bag several times, so that deferred
/// destructions whose grace period has passed actually run. For tests and for the end of
/// a benchmark; never needed for correctness.
pub fn quiesce() {
    for _ in 0..256 {
        let g = pin();
        g.flush();
    }
}
