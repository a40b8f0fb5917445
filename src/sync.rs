//! The one switchboard for synchronization primitives.
//!
//! Production code imports atomics, `Arc`, `Mutex` and fences from here and nowhere else,
//! so that building with `RUSTFLAGS="--cfg loom --cfg crossbeam_loom"` (see
//! `loom-tests/README.md`) swaps every one of them for loom's model-checked twin. The
//! loom build also needs the crate feature `loom`, which only pulls the dependency in.

#[cfg(all(loom, feature = "loom"))]
#[allow(unused_imports)]
mod imp {
    pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
    pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};

    /// One round of a wait loop: loom must be told, or it explores the loop forever.
    pub(crate) fn spin_loop() {
        loom::thread::yield_now();
    }

    /// An `Arc<[T]>` from a vector (loom's `Arc` only builds unsized values from std's).
    pub(crate) fn arc_slice<T>(v: Vec<T>) -> Arc<[T]> {
        Arc::from_std(std::sync::Arc::from(v))
    }
}

#[cfg(not(all(loom, feature = "loom")))]
#[allow(unused_imports)]
mod imp {
    pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
    pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

    /// One round of a wait loop. The waits it serves last one control-plane step of
    /// another thread (a zap, a structural operation), which may be descheduled: yield
    /// rather than burn the core it needs.
    pub(crate) fn spin_loop() {
        std::thread::yield_now();
    }

    /// An `Arc<[T]>` from a vector.
    pub(crate) fn arc_slice<T>(v: Vec<T>) -> Arc<[T]> {
        Arc::from(v)
    }
}

#[allow(unused_imports)]
pub(crate) use imp::*;

/// Locks a mutex, ignoring poisoning: the data behind our mutexes is only mutated by
/// code that restores its invariants before any operation that can panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A plain std atomic for statistics counters (live objects, bytes). Deliberately not
/// switched to loom: counters carry no synchronization, and loom atomics cannot live in
/// `static`s.
pub(crate) type StdCounter = std::sync::atomic::AtomicUsize;
