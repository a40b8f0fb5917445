//! Absurd sizes never turn into multi-gigabyte allocations: the model's memory (chunks
//! that faults materialize) is capped by the address space's accounts
//! (`softdirty::accounting`), and a fault beyond the cap fails with ENOMEM after the pages
//! before it, instead of allocating.

use std::sync::Arc;

use softdirty::accounting::{Accounting, DEFAULT_CHUNK_LIMIT};
use softdirty::bitmap::{CHUNK_BYTES, CHUNK_PAGES};
use softdirty::errno::Errno;
use softdirty::mm::{AddressSpace, Placement, Sharing};
use softdirty::mode::Mode;
use softdirty::prot::Prot;
use softdirty_trace::{parse, replay};

const P: u64 = 4096;

#[test]
fn a_64_tib_write_fails_with_enomem_at_the_cap_and_stays_small() {
    let mm =
        AddressSpace::with_accounting(Mode::Precise, Arc::new(Accounting::with_chunk_limit(8)));
    // A second space with accounts of its own is not limited by the first's.
    let other = AddressSpace::new(Mode::Precise);
    let b = other
        .mmap(
            0,
            64 * CHUNK_PAGES * P,
            Prot::RW,
            Sharing::Private,
            Placement::Hint,
        )
        .unwrap();
    other.write(b, 64 * CHUNK_PAGES * P).unwrap();
    assert_eq!(other.accounting().live_chunks(), 64);
    let a = mm
        .mmap(
            0x100_0000_0000,
            64 << 40,
            Prot::RW,
            Sharing::Private,
            Placement::Fixed,
        )
        .unwrap();
    mm.clear_refs(4).unwrap();
    assert_eq!(mm.write(a, 64 << 40), Err(Errno::ENOMEM));
    // The pages before the first chunk it could not get were written (8 chunks' worth).
    let written: u64 = mm
        .softdirty_runs(a, 64 << 40)
        .iter()
        .map(|r| r.end - r.start)
        .sum();
    assert_eq!(written, 8 * CHUNK_PAGES);
    assert_eq!(mm.accounting().live_chunks(), 8);
    assert!(mm.tracking_bytes() < 256 << 20);
    // Pages already in materialized chunks still fault normally.
    mm.write(a + 3 * P, 1).unwrap();
    // The same through a trace, at the default limit: a clear error, no panic, and no
    // more than the default limit's memory.
    assert!(DEFAULT_CHUNK_LIMIT * CHUNK_BYTES <= 256 << 20);
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
}
