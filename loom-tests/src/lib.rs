//! The harness shared by the loom models in `tests/` (built only under `cfg(loom)`): how a
//! model is run and reported, and the two-thread race of the bitmap models.

#[cfg(loom)]
mod harness {
    use loom::thread;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::time::Instant;

    /// Runs `f` under loom at `LOOM_MAX_PREEMPTIONS` if set, else at `bound`; with
    /// `epoch`, at most `SOFTDIRTY_LOOM_EPOCH_BOUND` (default `bound`): pinning makes
    /// the epoch models orders of magnitude more expensive (rust-anchors §2.6). Reports
    /// `loom-model NAME: preemption bound B, N executions, T s` on stderr.
    fn run<F: Fn() + Sync + Send + 'static>(name: &str, bound: usize, epoch: bool, f: F) {
        let mut b = loom::model::Builder::new();
        let bound = if epoch {
            let cap = std::env::var("SOFTDIRTY_LOOM_EPOCH_BOUND")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(bound);
            b.preemption_bound.map_or(cap, |p: usize| p.min(cap))
        } else {
            b.preemption_bound.unwrap_or(bound)
        };
        b.preemption_bound = Some(bound);
        // Setup and final checks are straight-line code, but every atomic access counts.
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

    /// A model without epoch pinning, at `bound` unless `LOOM_MAX_PREEMPTIONS` is set.
    pub fn check<F: Fn() + Sync + Send + 'static>(name: &str, bound: usize, f: F) {
        run(name, bound, false, f)
    }

    /// A model that pins (an `AddressSpace`, reclamation): also capped by
    /// `SOFTDIRTY_LOOM_EPOCH_BOUND`.
    pub fn check_epoch<F: Fn() + Sync + Send + 'static>(name: &str, bound: usize, f: F) {
        run(name, bound, true, f)
    }

    /// Runs `f(swap)` twice, as `NAME/LABEL0` with `swap == false` and `NAME/LABEL1` with
    /// `swap == true`. Why both arrangements: loom's partial-order reduction only
    /// remembers the *last* access to each atomic, so a thread's pure loads (a copy, a
    /// pre-check) are never moved after another thread's "load, then RMW" pair on the
    /// same word when they start out first; loom's first schedule runs the main thread to
    /// its `join`, so each arrangement explores the orders the other one can miss.
    pub fn check2<F: Fn(bool) + Sync + Send + 'static>(
        name: &str,
        bound: usize,
        labels: [&str; 2],
        f: F,
    ) {
        let f = std::sync::Arc::new(f);
        for (swap, label) in [(false, labels[0]), (true, labels[1])] {
            let f = f.clone();
            check(&format!("{name}/{label}"), bound, move || f(swap));
        }
    }

    /// Runs `a` and `b` concurrently: `b` on the main thread and `a` spawned, or the other
    /// way round with `swap`.
    pub fn race<RA, RB>(
        swap: bool,
        a: impl FnOnce() -> RA + Send + 'static,
        b: impl FnOnce() -> RB + Send + 'static,
    ) -> (RA, RB)
    where
        RA: Send + 'static,
        RB: Send + 'static,
    {
        if swap {
            let h = thread::spawn(b);
            let ra = a();
            (ra, h.join().unwrap())
        } else {
            let h = thread::spawn(a);
            let rb = b();
            (h.join().unwrap(), rb)
        }
    }
}

#[cfg(loom)]
pub use harness::{check, check2, check_epoch, race};
