//! `regions` mode (the 2022 RFC's non-soft-dirty region lists) through the harvest API,
//! PAGEMAP_SCAN, the fault counter, smaps and the tracking-memory figure: every reader of
//! soft-dirty agrees with pagemap bit 55 when the VMA-level state varies inside a VMA.

use softdirty::mm::{AddressSpace, Placement, Sharing};
use softdirty::mode::Mode;
use softdirty::prot::Prot;
use softdirty::regions::{LIST_HEAD_BYTES, REGION_BYTES};
use softdirty::scan::{ScanArgs, PAGE_IS_SOFT_DIRTY};

const P: u64 = 4096;
const BASE: u64 = 0x20_0000_0000;

/// A cleared 16-page VMA with a fresh 4-page mapping merged after it (one VMA, one region
/// covering its first 16 pages), page 2 written.
fn space() -> AddressSpace {
    let mm = AddressSpace::new(Mode::Regions);
    mm.mmap(
        BASE,
        16 * P,
        Prot::RW,
        Sharing::Private,
        Placement::NoReplace,
    )
    .unwrap();
    mm.write(BASE, 16 * P).unwrap();
    mm.clear_refs(4).unwrap();
    mm.mmap(
        BASE + 16 * P,
        4 * P,
        Prot::RW,
        Sharing::Private,
        Placement::NoReplace,
    )
    .unwrap();
    assert_eq!(mm.vma_count(BASE, 20 * P), 1);
    mm.write(BASE + 2 * P, 1).unwrap();
    mm
}

#[test]
fn harvest_reports_page_bits_and_uncovered_pages_and_clears_only_page_bits() {
    let mm = space();
    assert_eq!(mm.softdirty_runs(BASE, 20 * P), vec![2..3, 16..20]);
    let got = mm.get_dirty_log(BASE, 20 * P).unwrap();
    assert_eq!(got.runs(), &[(2, 1), (16, 4)]);
    let log = mm.scan_and_clear(BASE, 20 * P).unwrap();
    assert_eq!(log.runs(), got.runs());
    // The written page is clean now; the pages no region covers stay soft-dirty until
    // clear_refs 4 makes the list cover them.
    assert_eq!(mm.softdirty_runs(BASE, 20 * P), vec![16..20]);
    let log = mm.scan_and_clear(BASE, 20 * P).unwrap();
    assert_eq!(log.runs(), &[(16, 4)]);
    mm.clear_refs(4).unwrap();
    assert!(mm.scan_and_clear(BASE, 20 * P).unwrap().runs().is_empty());
}

#[test]
fn pagemap_scan_agrees_with_pagemap() {
    let mm = space();
    let args = ScanArgs {
        start: BASE,
        end: BASE + 20 * P,
        mask: PAGE_IS_SOFT_DIRTY,
        anyof: 0,
        inverted: 0,
        ret: PAGE_IS_SOFT_DIRTY,
        clear: false,
        max_pages: 0,
        vec_len: 1024,
    };
    let r = mm.scan(&args).unwrap();
    let regions: Vec<(u64, u64)> = r.regions.iter().map(|g| (g.start, g.end)).collect();
    assert_eq!(
        regions,
        vec![(BASE + 2 * P, BASE + 3 * P), (BASE + 16 * P, BASE + 20 * P)]
    );
    for i in 0..20 {
        let sd = mm.pagemap_entry(BASE + i * P) >> 55 & 1 == 1;
        assert_eq!(sd, i == 2 || i >= 16, "page {i}");
    }
}

#[test]
fn faults_count_only_stores_that_change_the_report() {
    let mm = space();
    let before = mm.faults();
    // Covered and clean: a fault. Uncovered: already reported, not a fault. A range
    // across both counts only its covered part.
    mm.write(BASE + 5 * P, 1).unwrap();
    assert_eq!(mm.faults() - before, 1);
    mm.write(BASE + 17 * P, 1).unwrap();
    assert_eq!(mm.faults() - before, 1);
    mm.write(BASE + 14 * P, 4 * P).unwrap();
    assert_eq!(mm.faults() - before, 3);
}

#[test]
fn smaps_sd_region_count_and_list_memory() {
    let mm = space();
    // The merged VMA's list is [BASE, BASE+16p), not its whole range: `sd`.
    assert!(mm.smaps_vmflags(BASE).unwrap().ends_with(" sd"));
    assert!(mm.vmas()[0].vm_softdirty);
    assert_eq!(mm.region_count(), 1);
    let with_list = mm.tracking_bytes();
    mm.clear_refs(4).unwrap();
    assert!(!mm.smaps_vmflags(BASE).unwrap().contains("sd"));
    assert!(!mm.vmas()[0].vm_softdirty);
    // A split divides the list: two VMAs, two regions, two list heads.
    mm.munmap(BASE + 8 * P, P).unwrap();
    assert_eq!(mm.region_count(), 2);
    let legacy = AddressSpace::new(Mode::Legacy);
    legacy
        .mmap(
            BASE,
            20 * P,
            Prot::RW,
            Sharing::Private,
            Placement::NoReplace,
        )
        .unwrap();
    legacy.write(BASE, 20 * P).unwrap();
    legacy.munmap(BASE + 8 * P, P).unwrap();
    assert_eq!(legacy.region_count(), 0);
    assert!(with_list >= LIST_HEAD_BYTES + REGION_BYTES);
}
