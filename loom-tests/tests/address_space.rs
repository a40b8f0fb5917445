#![cfg(loom)]
//! loom models of the data plane against the index/epoch side (`src/mm.rs`): the
//! production `AddressSpace`, its crossbeam-epoch publication (`crossbeam_loom`) and its
//! control lock, all through the `cfg(loom)` shim. Pinning makes these models expensive
//! (rust-anchors §2.6), so they are small (one writer, one structural operation) and run
//! at preemption bound 2 by default (`SOFTDIRTY_LOOM_EPOCH_BOUND` overrides it).

use loom::sync::Arc;
use loom::thread;
use softdirty::errno::Errno;
use softdirty::mm::{AddressSpace, Placement};
use softdirty::mode::Mode;
use softdirty::prot::Prot;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

const PAGE: u64 = 4096;

/// Runs `f` under loom at preemption bound `min(LOOM_MAX_PREEMPTIONS, epoch bound)`,
/// where the epoch bound is `SOFTDIRTY_LOOM_EPOCH_BOUND` or `bound`, and reports the
/// explored executions and the wall time on stderr.
fn check<F: Fn() + Sync + Send + 'static>(name: &str, bound: usize, f: F) {
    let mut b = loom::model::Builder::new();
    let cap = std::env::var("SOFTDIRTY_LOOM_EPOCH_BOUND")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(bound);
    b.preemption_bound = Some(b.preemption_bound.map_or(cap, |p| p.min(cap)));
    b.max_branches = b.max_branches.max(100_000);
    let n = std::sync::Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let t = Instant::now();
    b.check(move || {
        n2.fetch_add(1, Relaxed);
        f()
    });
    eprintln!(
        "loom-model {name}: preemption bound {:?}, {} executions, {:.3} s",
        b.preemption_bound,
        n.load(Relaxed),
        t.elapsed().as_secs_f64()
    );
}

/// munmap ∥ write (contract 4): the write either lands before the unmap (`Ok`, in the
/// retired bitmap, which stays alive while the writer is pinned) or fails with EFAULT;
/// afterwards the range is gone and every write to it fails. Freed memory is never
/// touched: see `reclamation.rs` for the model that would notice. Broken twin:
/// `no_defer` (caught by `reclamation.rs`; here it is undefined behaviour that loom does
/// not see, which is why that model exists).
#[test]
fn munmap_vs_write() {
    check("munmap_vs_write", 2, || {
        let mm = Arc::new(AddressSpace::new(Mode::Precise));
        let a = mm
            .mmap(0, 2 * PAGE, Prot::RW, false, Placement::Hint)
            .unwrap();
        let w = {
            let mm = mm.clone();
            thread::spawn(move || mm.write(a + PAGE, 1))
        };
        mm.munmap(a, 2 * PAGE).unwrap();
        let r = w.join().unwrap();
        assert!(r == Ok(()) || r == Err(Errno::EFAULT), "{r:?}");
        assert_eq!(mm.write(a + PAGE, 1), Err(Errno::EFAULT));
        assert_eq!(mm.vma_total(), 0);
    });
}

/// mprotect split ∥ write through `AddressSpace` (contract 3, the publication side):
/// `publish` swaps the new index in *before* it seals the retired bitmap, so a fault that
/// finds the bitmap sealed and retries through the index finds the heirs. Afterwards the
/// written page is soft-dirty in pagemap and nothing else is. Broken twin:
/// `seal_before_publish`.
#[test]
fn mprotect_split_vs_write() {
    check("mprotect_split_vs_write", 2, || {
        let mm = Arc::new(AddressSpace::new(Mode::Precise));
        let a = mm
            .mmap(0, 128 * PAGE, Prot::RW, false, Placement::Hint)
            .unwrap();
        mm.clear_refs(4).unwrap();
        let w = {
            let mm = mm.clone();
            thread::spawn(move || mm.write(a + 3 * PAGE, 1))
        };
        mm.mprotect(a + 64 * PAGE, 64 * PAGE, Prot::RWX).unwrap();
        assert_eq!(w.join().unwrap(), Ok(()));
        assert_eq!(mm.vma_total(), 2);
        assert_eq!(
            mm.softdirty_runs(a, 128 * PAGE),
            vec![(3, 4)],
            "write lost in the split"
        );
    });
}
