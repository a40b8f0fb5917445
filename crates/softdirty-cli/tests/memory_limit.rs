//! Absurd sizes never turn into multi-gigabyte allocations: the model's memory (chunks
//! that faults materialize) is capped process-wide, and a fault beyond the cap fails with
//! ENOMEM after the pages before it, instead of allocating. (Its own test binary: the cap
//! is process-wide.)

use softdirty::bitmap::{live_chunks, set_chunk_limit, CHUNK_PAGES};
use softdirty::errno::Errno;
use softdirty::mm::{AddressSpace, Placement};
use softdirty::mode::Mode;
use softdirty::prot::Prot;
use softdirty_trace::{parse, replay};

const P: u64 = 4096;

#[test]
fn a_64_tib_write_fails_with_enomem_at_the_cap_and_stays_small() {
    set_chunk_limit(live_chunks() + 8);
    let mm = AddressSpace::new(Mode::Precise);
    let a = mm
        .mmap(0x100_0000_0000, 64 << 40, Prot::RW, false, Placement::Fixed)
        .unwrap();
    mm.clear_refs(4).unwrap();
    assert_eq!(mm.write(a, 64 << 40), Err(Errno::ENOMEM));
    // The pages before the first chunk it could not get were written (8 chunks' worth).
    let written: u64 = mm
        .softdirty_runs(a, 64 << 40)
        .iter()
        .map(|(s, e)| e - s)
        .sum();
    assert_eq!(written, 8 * CHUNK_PAGES);
    assert!(mm.tracking_bytes() < 256 << 20);
    // Pages already in materialized chunks still fault normally.
    mm.write(a + 3 * P, 1).unwrap();
    // The same through a trace: a clear error, exit status 1, no panic.
    let t = parse::parse(
        "mmap 0x200_0000_0000 64T rw noreplace\nwrite 0x200_0000_0000 64T\nexpect err ENOMEM\n",
    )
    .unwrap();
    let s = replay::replay(
        &t,
        "t",
        &replay::Options::default(),
        &mut std::io::sink(),
        &mut std::io::sink(),
    );
    assert_eq!(s.exit_status(false), 0, "{s:?}");
    set_chunk_limit(1 << 17);
}
