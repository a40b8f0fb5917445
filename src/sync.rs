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
}

#[cfg(not(all(loom, feature = "loom")))]
#[allow(unused_imports)]
mod imp {
    pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
    pub(crate) use std::sync::{Arc, Mutex, MutexGuard};
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
