#![cfg(loom)]
//! Reclamation (contract 5): compares the live-object counts of one `Accounting`
//! (`live_vmas`, `live_bitmaps`), kept in a std `Arc` across executions, before and after
//! each execution; loom runs executions one after another.

use loom::sync::Arc;
use loom::thread;
use std::sync::OnceLock;

use softdirty::accounting::Accounting;
use softdirty::mm::{AddressSpace, Placement, Sharing};
use softdirty::mode::Mode;
use softdirty::prot::Prot;
use softdirty_loom_tests::check_epoch;

const PAGE: u64 = 4096;

/// The accounts of every execution's address space: a std `Arc` in a std static, so that
/// the counts survive from one execution to the next.
fn accounts() -> &'static std::sync::Arc<Accounting> {
    static ACCOUNTS: OnceLock<std::sync::Arc<Accounting>> = OnceLock::new();
    ACCOUNTS.get_or_init(std::sync::Arc::default)
}

fn live_vmas() -> usize {
    accounts().live_vmas()
}

fn live_bitmaps() -> usize {
    accounts().live_bitmaps()
}

/// No use-after-free, no leak. A reader pins and holds the published index while the main
/// thread unmaps all of it, retiring its VMA. As
/// long as the reader is pinned, every VMA of the index it holds is alive (the counter
/// cannot drop below what it sees); once the execution is over and its garbage
/// collected, the live VMA and bitmap counts are back to zero. The main thread advances
/// the epoch three times after the munmap (pin + flush), so the retired index is freed
/// inside the execution unless a reader is pinned. Broken twins: `no_defer` (old index
/// freed at once: the reader sees its VMAs die), `no_pin` (the reader does not pin: the
/// flushes free its index under it), `no_reclaim` (old index never freed: loom reports
/// the leaked `Arc`s, or the counts do not come back).
#[test]
fn reclamation_no_uaf_no_leak() {
    check_epoch("reclamation_no_uaf_no_leak", 2, || {
        // Nothing else runs in this process: every VMA and bitmap of the previous
        // execution must have been reclaimed by now.
        let (v0, b0) = (live_vmas(), live_bitmaps());
        assert_eq!(
            (v0, b0),
            (0, 0),
            "leaked VMAs or bitmaps (previous execution)"
        );
        let mm = Arc::new(AddressSpace::with_accounting(
            Mode::Precise,
            accounts().clone(),
        ));
        let a = mm
            .mmap(0, 4 * PAGE, Prot::RW, Sharing::Private, Placement::Hint)
            .unwrap();
        mm.write(a, 4 * PAGE).unwrap();
        let r = {
            let mm = mm.clone();
            thread::spawn(move || {
                mm.with_index(|idx| {
                    let n = idx.len();
                    // Let the structural operations run while we hold the index.
                    thread::yield_now();
                    assert!(
                        live_vmas() >= v0 + n && live_bitmaps() >= b0 + n,
                        "a VMA of a pinned index was freed"
                    );
                    idx.iter().map(|v| v.bitmap.page(0).clean).sum::<u64>()
                })
            })
        };
        // One structural operation only: with an mprotect split before the munmap the
        // model explores 1.3 M executions (338 s) at bound 2, too long for CI.
        mm.munmap(a, 4 * PAGE).unwrap();
        // Advance the epoch inside the execution: each pin + flush hands this thread's
        // garbage to the global queue and tries to advance the global epoch and collect.
        // Three of them free the retired index (two epochs after its retirement) unless
        // a reader is still pinned, so a reader that does not pin (`no_pin`) sees its
        // VMAs freed under it.
        for _ in 0..3 {
            softdirty::epoch::pin().flush();
        }
        r.join().unwrap();
        drop(mm);
        // Deferred destructions run when the epoch advances far enough, at the latest
        // when loom drops crossbeam-epoch's global collector at the end of the execution
        // (a loom lazy_static). So the leak check is made at the start of the next
        // execution and after the model.
    });
    assert_eq!(
        (live_vmas(), live_bitmaps()),
        (0, 0),
        "leaked VMAs or bitmaps after the last execution"
    );
}
