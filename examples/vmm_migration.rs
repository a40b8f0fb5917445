//! A small VMM-shaped live migration over `GuestMemoryMmap<SoftDirtyBitmap>`.
//!
//! Two vCPU threads write guest memory through vm-memory (`Bytes::write_obj`), a
//! device-emulation thread fills "virtio buffers" through vm-memory (`write_slice`), and a
//! migration thread harvests pre-copy rounds through the slot API
//! (`softdirty::slots`), copying each dirty page into a destination buffer. Each round's
//! harvest of a slot is a transaction (`SlotRegistry::begin_dirty_log`), committed once its
//! pages are sent; one send "fails" and its transaction is aborted, so the pages are
//! pending again and go out in the next round. A second consumer (a snapshotter) reads its own log at the
//! end, undisturbed by migration's harvests. After the stop-and-copy round the
//! destination must equal the source byte for byte.
//!
//! ```sh
//! cargo run --release --features vm-memory --example vmm_migration
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{rngs::SmallRng, Rng, SeedableRng};
use softdirty::slots::{ConsumerConfig, SlotRegistry};
use softdirty::vmm::SoftDirtyBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

const PAGE: u64 = 4096;
/// (guest physical base, size): 32 MiB of RAM and a 16 MiB region above a hole.
const RANGES: [(u64, usize); 2] = [(0, 32 << 20), (0x1_0000_0000, 16 << 20)];
const MAX_ROUNDS: usize = 8;
const STOP_BELOW_PAGES: u64 = 2048;

fn main() {
    let mem: Arc<GuestMemoryMmap<SoftDirtyBitmap>> = Arc::new(
        GuestMemoryMmap::from_ranges(
            &RANGES
                .iter()
                .map(|&(a, l)| (GuestAddress(a), l))
                .collect::<Vec<_>>(),
        )
        .expect("guest memory"),
    );

    // One slot per region, over the region's own bitmap: what vm-memory marks is what
    // the slot's consumers harvest.
    let reg = Arc::new(SlotRegistry::new());
    let migration = reg.register_consumer(ConsumerConfig {
        manual_protect: false,
        initially_set: true, // round 0 sends everything
    });
    let snapshot = reg.register_consumer(ConsumerConfig::default());
    for (i, region) in mem.iter().enumerate() {
        let bitmap: &SoftDirtyBitmap = (**region).bitmap();
        assert_eq!(bitmap.page_size() as u64, PAGE, "slots use 4 KiB pages");
        bitmap
            .register_slot(&reg, i as u32, region.start_addr().0)
            .expect("slot");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let guest_writes = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    // vCPUs: 99% of writes into a 2 MiB hot set, the rest anywhere in RAM.
    for cpu in 0..2u64 {
        let (mem, stop, n) = (
            Arc::clone(&mem),
            Arc::clone(&stop),
            Arc::clone(&guest_writes),
        );
        workers.push(std::thread::spawn(move || {
            let mut rng = SmallRng::seed_from_u64(cpu + 1);
            let ram = RANGES[0].1 as u64;
            let mut i = 0u64;
            // Relaxed: a stop flag; the join orders everything after it.
            while !stop.load(Ordering::Relaxed) {
                let a = if rng.gen_ratio(99, 100) {
                    (cpu << 20) + rng.gen_range(0..(1u64 << 20))
                } else {
                    rng.gen_range(0..ram)
                } & !7;
                mem.write_obj(i ^ a, GuestAddress(a)).expect("vcpu write");
                i += 1;
                if i % 2048 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            n.fetch_add(i, Ordering::Relaxed);
        }));
    }
    // Device emulation: 4 KiB DMA buffers into a ring in the high region, crossing pages.
    {
        let (mem, stop, n) = (
            Arc::clone(&mem),
            Arc::clone(&stop),
            Arc::clone(&guest_writes),
        );
        workers.push(std::thread::spawn(move || {
            let base = RANGES[1].0;
            let ring = 4u64 << 20;
            let mut buf = [0u8; 4096];
            let mut off = 0u64;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                buf.fill(i as u8);
                // 1 KiB-aligned: three of four buffers straddle a page boundary.
                mem.write_slice(&buf, GuestAddress(base + off))
                    .expect("dma");
                off = (off + 5 * 1024) % (ring - 4096);
                i += 1;
                if i % 64 == 0 {
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
            n.fetch_add(i, Ordering::Relaxed);
        }));
    }

    // The destination VM's memory.
    let mut dest: Vec<Vec<u8>> = RANGES.iter().map(|&(_, l)| vec![0u8; l]).collect();
    let mut page = vec![0u8; PAGE as usize];
    let t0 = Instant::now();
    println!("round  dirty pages  sent MiB  rolled back  harvest us  round ms");
    let mut round = 0;
    let mut failed_once = false;
    loop {
        let last = round == MAX_ROUNDS;
        if last {
            stop.store(true, Ordering::Relaxed);
            for w in workers.drain(..) {
                w.join().expect("worker");
            }
        }
        let tr = Instant::now();
        let (mut dirty, mut sent, mut rolled, mut harvest_us) = (0u64, 0u64, 0u64, 0u128);
        for slot in reg.slot_ids() {
            let th = Instant::now();
            // A transactional harvest: the pages are migration's only once committed.
            let h = reg.begin_dirty_log(migration, slot).expect("log");
            harvest_us += th.elapsed().as_micros();
            let log = h.log().clone();
            dirty += log.dirty_count();
            // Round 1, slot 1: the "network" fails; abort: the pages are pending again.
            if round == 1 && slot == 1 && !failed_once {
                failed_once = true;
                rolled += log.dirty_count();
                h.abort();
                continue;
            }
            let d = &mut dest[slot as usize];
            for p in log.pages() {
                // Get-and-clear happened before this copy, so a write racing the copy
                // re-dirties the page for the next round.
                mem.read_slice(&mut page, GuestAddress(log.addr() + p * PAGE))
                    .expect("read");
                d[(p * PAGE) as usize..((p + 1) * PAGE) as usize].copy_from_slice(&page);
                sent += 1;
            }
            h.commit(); // sent
        }
        println!(
            "{:>5}  {:>11}  {:>8.1}  {:>11}  {:>10}  {:>8.1}{}",
            round,
            dirty,
            (sent * PAGE) as f64 / (1 << 20) as f64,
            rolled,
            harvest_us,
            tr.elapsed().as_secs_f64() * 1e3,
            if last { "  (stop-and-copy)" } else { "" }
        );
        if last {
            break;
        }
        round += 1;
        if round > 2 && dirty < STOP_BELOW_PAGES {
            round = MAX_ROUNDS;
        } else {
            std::thread::sleep(Duration::from_millis(40));
        }
    }

    let mut same = true;
    for (i, region) in mem.iter().enumerate() {
        let mut src = vec![0u8; region.len() as usize];
        mem.read_slice(&mut src, region.start_addr()).expect("read");
        same &= src == dest[i];
    }
    let snap: u64 = reg
        .slot_ids()
        .iter()
        .map(|&s| {
            reg.get_dirty_log(snapshot, s)
                .expect("snapshot log")
                .dirty_count()
        })
        .sum();
    let tracking: usize = reg
        .slot_ids()
        .iter()
        .map(|&s| reg.tracking_bytes(s).unwrap())
        .sum();
    println!(
        "guest writes: {}  snapshot consumer saw {} dirty pages (independent of migration's {} rounds)",
        guest_writes.load(Ordering::Relaxed),
        snap,
        round + 1
    );
    println!(
        "tracking memory (shared + 2 consumers, {} MiB guest): {} KiB",
        RANGES.iter().map(|r| r.1).sum::<usize>() >> 20,
        tracking >> 10
    );
    println!(
        "destination == source: {}  total {:.0} ms",
        same,
        t0.elapsed().as_secs_f64() * 1e3
    );
    assert!(same, "migration lost a write");
}
