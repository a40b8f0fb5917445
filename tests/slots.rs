//! The KVM-style slot dirty-log API (`softdirty::slots`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use softdirty::dirtylog::DirtyLog;
use softdirty::errno::Errno;
use softdirty::slots::{ConsumerConfig, SlotRegistry};

const GPA: u64 = 0x1_0000_0000;
const MANUAL: ConsumerConfig = ConsumerConfig {
    manual_protect: true,
    initially_set: false,
};

#[test]
fn get_and_clear() {
    let reg = SlotRegistry::new();
    let c = reg.register_consumer(ConsumerConfig::default());
    let bits = reg.register_slot(3, GPA, 10_000).unwrap();
    assert!(reg.get_dirty_log(c, 3).unwrap().is_clean());
    bits.mark(0, 1).unwrap();
    bits.mark(4095, 3).unwrap(); // across a chunk boundary
    bits.mark(9_999, 1).unwrap();
    let log = reg.get_dirty_log(c, 3).unwrap();
    assert_eq!(log.addr(), GPA);
    assert_eq!(log.len(), 10_000 * 4096);
    assert_eq!(log.runs(), &[(0, 1), (4095, 3), (9_999, 1)]);
    assert!(reg.get_dirty_log(c, 3).unwrap().is_clean());
    assert_eq!(reg.register_slot(3, 0, 1).unwrap_err(), Errno::EEXIST);
    assert_eq!(reg.get_dirty_log(c, 4).unwrap_err(), Errno::ENOENT);
    assert_eq!(reg.slot_ids(), vec![3]);
    assert_eq!(reg.slot_info(3).unwrap(), (GPA, 10_000));
    reg.remove_slot(3).unwrap();
    assert_eq!(reg.get_dirty_log(c, 3).unwrap_err(), Errno::ENOENT);
}

#[test]
fn manual_protect() {
    let reg = SlotRegistry::new();
    let c = reg.register_consumer(MANUAL);
    let bits = reg.register_slot(0, GPA, 1000).unwrap();
    bits.mark(10, 1).unwrap();
    bits.mark(70, 2).unwrap();
    bits.mark(500, 1).unwrap();
    // get does not clear.
    assert_eq!(
        reg.get_dirty_log(c, 0).unwrap().runs(),
        &[(10, 1), (70, 2), (500, 1)]
    );
    assert_eq!(
        reg.get_dirty_log(c, 0).unwrap().runs(),
        &[(10, 1), (70, 2), (500, 1)]
    );
    // clear only [64, 128): page 10 and 500 stay.
    assert_eq!(reg.clear_dirty_log(c, 0, 64, 64).unwrap(), 2);
    assert_eq!(
        reg.get_dirty_log(c, 0).unwrap().runs(),
        &[(10, 1), (500, 1)]
    );
    // A write between get and clear is erased by the clear (KVM semantics).
    bits.mark(11, 1).unwrap();
    assert_eq!(reg.clear_dirty_log(c, 0, 0, 64).unwrap(), 2);
    assert_eq!(reg.get_dirty_log(c, 0).unwrap().runs(), &[(500, 1)]);
    // A write after the clear is reported.
    bits.mark(12, 1).unwrap();
    assert_eq!(
        reg.get_dirty_log(c, 0).unwrap().runs(),
        &[(12, 1), (500, 1)]
    );
    // The tail: 1000 is not a multiple of 64 but the range runs to the slot's end.
    assert_eq!(reg.clear_dirty_log(c, 0, 448, 552).unwrap(), 1);
    assert_eq!(reg.get_dirty_log(c, 0).unwrap().runs(), &[(12, 1)]);
    assert_eq!(reg.clear_dirty_log(c, 0, 0, 0).unwrap(), 0);
}

#[test]
fn clear_alignment_einval() {
    let reg = SlotRegistry::new();
    let c = reg.register_consumer(MANUAL);
    let g = reg.register_consumer(ConsumerConfig::default());
    reg.register_slot(0, 0, 1000).unwrap();
    assert_eq!(reg.clear_dirty_log(c, 0, 1, 64).unwrap_err(), Errno::EINVAL); // first_page
    assert_eq!(
        reg.clear_dirty_log(c, 0, 32, 64).unwrap_err(),
        Errno::EINVAL
    );
    assert_eq!(reg.clear_dirty_log(c, 0, 0, 63).unwrap_err(), Errno::EINVAL); // num_pages
    assert_eq!(
        reg.clear_dirty_log(c, 0, 64, 100).unwrap_err(),
        Errno::EINVAL
    );
    assert_eq!(
        reg.clear_dirty_log(c, 0, 960, 64).unwrap_err(),
        Errno::EINVAL
    ); // past end
    assert_eq!(
        reg.clear_dirty_log(c, 0, 1024, 0).unwrap_err(),
        Errno::EINVAL
    );
    assert_eq!(
        reg.clear_dirty_log(c, 0, u64::MAX - 63, 128).unwrap_err(),
        Errno::EINVAL
    );
    assert_eq!(reg.clear_dirty_log(c, 0, 960, 40).unwrap(), 0); // runs to the end
    assert_eq!(reg.clear_dirty_log(c, 0, 0, 1000).unwrap(), 0);
    // Without manual protect, clear is EINVAL (as KVM without the capability).
    assert_eq!(reg.clear_dirty_log(g, 0, 0, 64).unwrap_err(), Errno::EINVAL);
    assert_eq!(reg.clear_dirty_log(c, 9, 0, 64).unwrap_err(), Errno::ENOENT);
}

#[test]
fn initially_set() {
    let reg = SlotRegistry::new();
    let c = reg.register_consumer(ConsumerConfig {
        manual_protect: true,
        initially_set: true,
    });
    let plain = reg.register_consumer(ConsumerConfig::default());
    let bits = reg.register_slot(1, GPA, 200).unwrap();
    assert_eq!(reg.get_dirty_log(c, 1).unwrap().runs(), &[(0, 200)]);
    assert!(reg.get_dirty_log(plain, 1).unwrap().is_clean());
    reg.clear_dirty_log(c, 1, 0, 128).unwrap();
    assert_eq!(reg.get_dirty_log(c, 1).unwrap().runs(), &[(128, 72)]);
    reg.clear_dirty_log(c, 1, 128, 72).unwrap();
    assert!(reg.get_dirty_log(c, 1).unwrap().is_clean());
    bits.mark(3, 1).unwrap();
    assert_eq!(reg.get_dirty_log(c, 1).unwrap().runs(), &[(3, 1)]);
    assert_eq!(reg.get_dirty_log(plain, 1).unwrap().runs(), &[(3, 1)]);
    // A get-and-clear consumer with initially_set reports everything once.
    let gc = reg.register_consumer(ConsumerConfig {
        manual_protect: false,
        initially_set: true,
    });
    assert_eq!(reg.get_dirty_log(gc, 1).unwrap().runs(), &[(0, 200)]);
    assert!(reg.get_dirty_log(gc, 1).unwrap().is_clean());
}

#[test]
fn rollback() {
    let reg = SlotRegistry::new();
    let c = reg.register_consumer(ConsumerConfig::default());
    let other = reg.register_consumer(ConsumerConfig::default());
    let bits = reg.register_slot(0, GPA, 300).unwrap();
    bits.mark(7, 2).unwrap();
    bits.mark(200, 1).unwrap();
    let log = reg.get_dirty_log(c, 0).unwrap();
    assert_eq!(log.runs(), &[(7, 2), (200, 1)]);
    // The send failed: put the bits back; a new write also shows up.
    reg.restore_dirty_log(c, 0, &log).unwrap();
    bits.mark(100, 1).unwrap();
    assert_eq!(
        reg.get_dirty_log(c, 0).unwrap().runs(),
        &[(7, 2), (100, 1), (200, 1)]
    );
    assert!(reg.get_dirty_log(c, 0).unwrap().is_clean());
    // The other consumer saw each write exactly once, rollback or not.
    assert_eq!(
        reg.get_dirty_log(other, 0).unwrap().runs(),
        &[(7, 2), (100, 1), (200, 1)]
    );
    assert!(reg.get_dirty_log(other, 0).unwrap().is_clean());
    // A log of another range is rejected.
    let bad = DirtyLog::new(0, 300 * 4096, [(1, 1)]);
    assert_eq!(
        reg.restore_dirty_log(c, 0, &bad).unwrap_err(),
        Errno::EINVAL
    );
    // Rollback with manual protect.
    let m = reg.register_consumer(MANUAL);
    bits.mark(5, 1).unwrap();
    let log = reg.get_dirty_log(m, 0).unwrap();
    reg.clear_dirty_log(m, 0, 0, 300).unwrap();
    assert!(reg.get_dirty_log(m, 0).unwrap().is_clean());
    reg.restore_dirty_log(m, 0, &log).unwrap();
    assert_eq!(reg.get_dirty_log(m, 0).unwrap().runs(), &[(5, 1)]);
}

#[test]
fn consumers_lifecycle() {
    let reg = SlotRegistry::new();
    let bits = reg.register_slot(0, 0, 128).unwrap();
    bits.mark(1, 1).unwrap();
    // A consumer registered later still gets writes left in the shared bitmap.
    let a = reg.register_consumer(ConsumerConfig::default());
    bits.mark(2, 1).unwrap();
    assert_eq!(reg.get_dirty_log(a, 0).unwrap().runs(), &[(1, 2)]);
    let b = reg.register_consumer(ConsumerConfig::default());
    bits.mark(9, 1).unwrap();
    assert_eq!(reg.get_dirty_log(a, 0).unwrap().runs(), &[(9, 1)]);
    reg.unregister_consumer(a).unwrap();
    assert_eq!(reg.get_dirty_log(a, 0).unwrap_err(), Errno::ENOENT);
    assert_eq!(reg.unregister_consumer(a).unwrap_err(), Errno::ENOENT);
    assert_eq!(reg.get_dirty_log(b, 0).unwrap().runs(), &[(9, 1)]);
    // A slot registered after the consumers gets their pending sets.
    let bits2 = reg.register_slot(1, 0x10_0000, 64).unwrap();
    bits2.mark(63, 1).unwrap();
    assert_eq!(reg.get_dirty_log(b, 1).unwrap().runs(), &[(63, 1)]);
    assert!(reg.tracking_bytes(1).unwrap() > 0);
}

/// Two consumers (one get-and-clear, one manual-protect) harvest concurrently with a
/// writer thread; each sees every write exactly once: the writer writes each page
/// exactly once, so over all its logs a consumer must report each page exactly once.
#[test]
fn two_consumers_each_see_every_write_once() {
    const PAGES: u64 = 20_000;
    let reg = Arc::new(SlotRegistry::new());
    let mig = reg.register_consumer(ConsumerConfig::default());
    let snap = reg.register_consumer(MANUAL);
    let bits = reg.register_slot(0, GPA, PAGES).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            // Each page once, in a scattered order.
            for i in 0..PAGES {
                bits.mark((i * 7919) % PAGES, 1).unwrap();
                if i % 512 == 0 {
                    std::thread::yield_now();
                }
            }
            // Release: pairs with the Acquire load below, so the final harvests see
            // every write.
            done.store(true, Ordering::Release);
        })
    };
    let run = |c, manual: bool, reg: Arc<SlotRegistry>, done: Arc<AtomicBool>| {
        std::thread::spawn(move || {
            let mut count = vec![0u32; PAGES as usize];
            let harvest = |count: &mut Vec<u32>| {
                let log = reg.get_dirty_log(c, 0).unwrap();
                if manual {
                    reg.clear_dirty_log(c, 0, 0, PAGES).unwrap();
                    // Only count what the clear covered: everything in `log` is cleared.
                }
                for p in log.pages() {
                    count[p as usize] += 1;
                }
                log.dirty_count()
            };
            let mut rounds = 0;
            loop {
                let finished = done.load(Ordering::Acquire);
                harvest(&mut count);
                rounds += 1;
                if finished {
                    break;
                }
            }
            harvest(&mut count);
            (count, rounds)
        })
    };
    let t1 = run(mig, false, Arc::clone(&reg), Arc::clone(&done));
    writer.join().unwrap();
    let (c1, r1) = t1.join().unwrap();
    // The manual consumer harvests after the writer is done, in one go, plus again.
    let t2 = run(snap, true, Arc::clone(&reg), Arc::clone(&done));
    let (c2, _) = t2.join().unwrap();
    assert!(r1 >= 1);
    assert!(
        c1.iter().all(|&n| n == 1),
        "migration saw a page {:?} times",
        c1.iter().find(|&&n| n != 1)
    );
    assert!(
        c2.iter().all(|&n| n == 1),
        "snapshot saw a page {:?} times",
        c2.iter().find(|&&n| n != 1)
    );
}

/// Both consumers harvesting concurrently with the writer.
#[test]
fn two_concurrent_consumers() {
    const PAGES: u64 = 30_000;
    let reg = Arc::new(SlotRegistry::new());
    let a = reg.register_consumer(ConsumerConfig::default());
    let b = reg.register_consumer(ConsumerConfig::default());
    let bits = reg.register_slot(0, 0, PAGES).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let consumers: Vec<_> = [a, b]
        .into_iter()
        .map(|c| {
            let (reg, done) = (Arc::clone(&reg), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut count = vec![0u32; PAGES as usize];
                loop {
                    // Acquire: pairs with the writer's Release store of `done`.
                    let finished = done.load(Ordering::Acquire);
                    for p in reg.get_dirty_log(c, 0).unwrap().pages() {
                        count[p as usize] += 1;
                    }
                    if finished {
                        return count;
                    }
                }
            })
        })
        .collect();
    for i in 0..PAGES {
        bits.mark((i * 104_729) % PAGES, 1).unwrap();
    }
    done.store(true, Ordering::Release);
    for t in consumers {
        let count = t.join().unwrap();
        assert!(count.iter().all(|&n| n == 1));
    }
}

/// A slot's transactional harvest (issue 17): commit keeps the pages the consumer's,
/// abort or drop gives them back to it alone; a manual-protect consumer has none.
#[test]
fn begin_dirty_log_commits_or_gives_back() {
    let reg = SlotRegistry::new();
    let m = reg.register_consumer(ConsumerConfig::default());
    let s = reg.register_consumer(ConsumerConfig::default());
    let p = reg.register_slot(0, 0x1000_0000, 256).unwrap();
    p.mark(3, 2).unwrap();
    let h = reg.begin_dirty_log(m, 0).unwrap();
    assert_eq!(h.log().runs(), &[(3, 2)]);
    h.abort();
    p.mark(9, 1).unwrap();
    let h = reg.begin_dirty_log(m, 0).unwrap();
    assert_eq!(h.log().runs(), &[(3, 2), (9, 1)], "given back, merged");
    drop(h);
    assert_eq!(
        reg.begin_dirty_log(m, 0).unwrap().commit().runs(),
        &[(3, 2), (9, 1)]
    );
    assert_eq!(
        reg.begin_dirty_log(m, 0).unwrap().commit().runs(),
        &[],
        "committed"
    );
    assert_eq!(
        reg.get_dirty_log(s, 0).unwrap().runs(),
        &[(3, 2), (9, 1)],
        "the other consumer"
    );
    let manual = reg.register_consumer(ConsumerConfig {
        manual_protect: true,
        ..ConsumerConfig::default()
    });
    assert_eq!(reg.begin_dirty_log(manual, 0).unwrap_err(), Errno::EINVAL);
}
