//! Conformance of `SoftDirtyBitmap` with what vm-memory's own `AtomicBitmap` tests assert
//! (vm-memory 0.18 `bitmap/mod.rs` `tests::test_bitmap`, `backend/slice.rs` `test_slice`,
//! `backend/atomic_bitmap.rs` tests), and `GuestMemoryMmap<SoftDirtyBitmap>` marking.
#![cfg(feature = "vm-memory")]

use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;

use softdirty::vmm::SoftDirtyBitmap;
use vm_memory::bitmap::{AtomicBitmap, Bitmap, BitmapSlice, NewBitmap};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress, VolatileMemory,
};

const PS128: NonZeroUsize = NonZeroUsize::new(128).unwrap();

// vm-memory's helpers (`bitmap::tests`), copied: they are `#[cfg(test)]` there.
fn range_is_clean<B: Bitmap>(b: &B, start: usize, len: usize) -> bool {
    (start..start + len).all(|o| !b.dirty_at(o))
}
fn range_is_dirty<B: Bitmap>(b: &B, start: usize, len: usize) -> bool {
    (start..start + len).all(|o| b.dirty_at(o))
}
fn check_range<B: Bitmap>(b: &B, start: usize, len: usize, clean: bool) -> bool {
    if clean {
        range_is_clean(b, start, len)
    } else {
        range_is_dirty(b, start, len)
    }
}

/// vm-memory's `test_bitmap`.
fn test_bitmap<B: Bitmap>(b: &B) {
    let len = 0x800;
    let dirty_offset = 0x400;
    let dirty_len = 0x100;
    let s = b.slice_at(dirty_offset);
    assert!(range_is_clean(b, 0, len));
    assert!(range_is_clean(&s, 0, dirty_len));
    b.mark_dirty(dirty_offset, dirty_len);
    assert!(range_is_dirty(b, dirty_offset, dirty_len));
    assert!(range_is_dirty(&s, 0, dirty_len));
}

fn is_bitmap_slice<S: BitmapSlice>(_: &S) {}

#[test]
fn test_bitmap_impl() {
    test_bitmap(&SoftDirtyBitmap::new(0x800, PS128));
    test_bitmap(&SoftDirtyBitmap::new(0x800, NonZeroUsize::MIN));
    test_bitmap(&SoftDirtyBitmap::with_len(0x800));
    // The same helper holds for AtomicBitmap (sanity of the copy).
    test_bitmap(&AtomicBitmap::new(0x800, PS128));
}

#[test]
fn test_bitmap_basic() {
    let a = SoftDirtyBitmap::new(1025, PS128);
    assert_eq!(a.len(), 9);
    let b = SoftDirtyBitmap::new(1024, PS128);
    assert_eq!(b.len(), 8);
    b.set_addr_range(128, 129);
    assert!(!b.is_addr_set(0));
    assert!(b.is_addr_set(128));
    assert!(b.is_addr_set(256));
    assert!(!b.is_addr_set(384));

    // Clone shares (unlike AtomicBitmap's copy, by design): the state is the same.
    let copy_b = b.clone();
    assert!(copy_b.is_addr_set(256));
    assert!(!copy_b.is_addr_set(384));

    b.reset();
    assert!(!b.is_addr_set(128));
    assert!(!b.is_addr_set(256));
    assert!(!b.is_addr_set(384));

    b.set_addr_range(128, 129);
    let v = b.get_and_reset();
    assert!(!b.is_addr_set(128));
    assert!(!b.is_addr_set(256));
    assert!(!b.is_addr_set(384));
    assert_eq!(v.len(), 1);
    assert_eq!(v[0], 0b110);
}

#[test]
fn test_bitmap_reset() {
    let b = SoftDirtyBitmap::new(1024, PS128);
    assert_eq!(b.len(), 8);
    b.set_addr_range(128, 129);
    assert!(!b.is_addr_set(0) && b.is_addr_set(128) && b.is_addr_set(256) && !b.is_addr_set(384));
    b.reset_addr_range(128, 129);
    for a in [0, 128, 256, 384] {
        assert!(!b.is_addr_set(a));
    }
    b.set_bit(5);
    assert!(b.is_page_dirty(5));
    b.reset_bit(5);
    assert!(!b.is_page_dirty(5));
    b.set_bit(8); // out of range: ignored
    assert!(!b.is_page_dirty(8));
}

#[test]
fn test_bitmap_out_of_range() {
    let b = SoftDirtyBitmap::new(1024, NonZeroUsize::MIN);
    b.set_addr_range(768, 512);
    assert!(b.is_addr_set(768));
    assert!(!b.is_addr_set(1024));
    assert!(!b.is_addr_set(1152));
    // len == 0 marks nothing; an overflowing range saturates.
    b.set_addr_range(10, 0);
    assert!(!b.is_addr_set(10));
    b.set_addr_range(usize::MAX - 1, 16);
    assert_eq!(b.harvest_runs(), vec![(768, 256)]);
}

#[test]
fn test_slice() {
    let bitmap_size = 0x800;
    let dirty_offset = 0x400;
    let dirty_len = 0x100;
    let bitmap = SoftDirtyBitmap::new(bitmap_size, NonZeroUsize::MIN);
    let slice1 = bitmap.slice_at(0);
    let slice2 = bitmap.slice_at(dirty_offset);
    is_bitmap_slice(&slice1);
    assert!(range_is_clean(&slice1, 0, bitmap_size));
    assert!(range_is_clean(&slice2, 0, dirty_len));
    bitmap.mark_dirty(dirty_offset, dirty_len);
    assert!(range_is_dirty(&slice1, dirty_offset, dirty_len));
    assert!(range_is_dirty(&slice2, 0, dirty_len));
    // Slices of slices add offsets; marking through a slice marks the bitmap.
    let s3 = slice1.slice_at(0x100).slice_at(0x100);
    s3.mark_dirty(0x10, 0x10);
    assert!(range_is_dirty(&bitmap, 0x210, 0x10));
    assert!(range_is_clean(&bitmap, 0x200, 0x10));
    assert!(range_is_clean(&bitmap, 0x220, 0x1e0));
}

/// Marking the same random ranges in both bitmaps gives the same `dirty_at` everywhere
/// and the same `get_and_reset`.
#[test]
fn same_as_atomic_bitmap() {
    let size = 64 * 1024 + 77;
    let a = AtomicBitmap::new(size, PS128);
    let s = SoftDirtyBitmap::new(size, PS128);
    let mut x = 12345u64;
    for round in 0..20 {
        for _ in 0..50 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let off = (x >> 33) as usize % (size + 200);
            let len = (x >> 13) as usize % 3000;
            a.mark_dirty(off, len);
            s.mark_dirty(off, len);
            let so = (x >> 40) as usize % size;
            assert_eq!(
                a.slice_at(so).dirty_at(off % 512),
                s.slice_at(so).dirty_at(off % 512)
            );
        }
        for o in (0..size + 256).step_by(64) {
            assert_eq!(a.dirty_at(o), s.dirty_at(o), "offset {o}");
        }
        if round % 3 == 0 {
            assert_eq!(a.get_and_reset(), s.get_and_reset());
        }
    }
}

/// vm-memory's `test_volatile_memory` over a region's memory, plus `test_guest_memory_and_region`.
#[test]
fn guest_memory_and_region() {
    let m: GuestMemoryMmap<SoftDirtyBitmap> = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x10000),
        (GuestAddress(0x10000), 0x10000),
    ])
    .unwrap();
    let dirty_addr = GuestAddress(0x1000);
    let val = 123u64;
    let (region, region_addr) = m.to_region_addr(dirty_addr).unwrap();
    assert!(range_is_clean(&region.bitmap(), 0, region.len() as usize));
    m.write_obj(val, dirty_addr).unwrap();
    assert!(range_is_dirty(&region.bitmap(), region_addr.0 as usize, 8));

    // test_bytes on a region: write, write_slice, write_obj, store, 0x1000 apart.
    let r = m.find_region(GuestAddress(0x10000)).unwrap();
    let buf = vec![1u8; 1024];
    let chk = |o: usize, clean: bool| check_range(&r.bitmap(), o, 1024, clean);
    assert!(chk(0x1000, true));
    r.write(&buf, MemoryRegionAddress(0x1000)).unwrap();
    assert!(chk(0x1000, false));
    assert!(chk(0x2000, true));
    r.write_slice(&buf, MemoryRegionAddress(0x2000)).unwrap();
    assert!(chk(0x2000, false));
    assert!(chk(0x3000, true));
    r.write_obj(val, MemoryRegionAddress(0x3000)).unwrap();
    assert!(chk(0x3000, false));
    assert!(chk(0x4000, true));
    r.store(val, MemoryRegionAddress(0x4000), Ordering::Relaxed)
        .unwrap();
    assert!(chk(0x4000, false));

    // test_volatile_memory: VolatileSlice writes, get_ref / get_array_ref stores.
    let vs = r.get_slice(MemoryRegionAddress(0x8000), 0x8000).unwrap();
    let s2 = vs.get_slice(0x1000, 8).unwrap();
    assert!(range_is_clean(s2.bitmap(), 0, 8));
    vs.write_obj(val, 0x1000).unwrap();
    assert!(range_is_dirty(vs.bitmap(), 0x1000, 8));
    assert!(range_is_dirty(s2.bitmap(), 0, 8));
    let vref = vs.get_ref::<u64>(0x2000).unwrap();
    assert!(range_is_clean(vs.bitmap(), 0x2000, 8));
    vref.store(val);
    assert!(range_is_dirty(vs.bitmap(), 0x2000, 8));
    let arr = vs.get_array_ref::<u64>(0x3000, 1).unwrap();
    arr.store(0, val);
    assert!(range_is_dirty(vs.bitmap(), 0x3000, 8));

    let b1: &SoftDirtyBitmap = (**r).bitmap();
    assert_eq!(b1.harvest_runs(), vec![(1, 4), (9, 3)]);
}

/// Objects and slices across page and region boundaries; the harvested pages of each
/// region are exactly the pages touched.
#[test]
fn guest_memory_mmap_harvest() {
    let (a0, a1) = (0u64, 0x40000u64); // two adjacent 256 KiB regions (64 pages each)
    let m: GuestMemoryMmap<SoftDirtyBitmap> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(a0), 0x40000), (GuestAddress(a1), 0x40000)])
            .unwrap();
    // A u64 straddling pages 2/3 of region 0.
    m.write_obj(0xdead_beef_u64, GuestAddress(3 * 4096 - 4))
        .unwrap();
    // A 10 KiB slice from the end of region 0 into region 1: pages 63 (r0), 0..=1 (r1).
    let buf = vec![7u8; 10 * 1024];
    m.write_slice(&buf, GuestAddress(a1 - 2048)).unwrap();
    // A 4 KiB page-aligned slice: exactly page 20 of region 1.
    m.write_slice(&[1u8; 4096], GuestAddress(a1 + 20 * 4096))
        .unwrap();
    // A u32 at the last bytes of region 1.
    m.write_obj(5u32, GuestAddress(a1 + 0x40000 - 4)).unwrap();
    // Atomic store.
    m.store(9u16, GuestAddress(40 * 4096), Ordering::Relaxed)
        .unwrap();

    let harvest = |addr: u64| {
        let r = m.find_region(GuestAddress(addr)).unwrap();
        let b: &SoftDirtyBitmap = (**r).bitmap();
        b.harvest_runs()
    };
    assert_eq!(harvest(a0), vec![(2, 2), (40, 1), (63, 1)]);
    assert_eq!(harvest(a1), vec![(0, 2), (20, 1), (63, 1)]);
    assert_eq!(harvest(a0), vec![]);
    assert_eq!(harvest(a1), vec![]);
    // Writes after a harvest show up in the next one.
    m.write_obj(1u8, GuestAddress(a1 + 5 * 4096)).unwrap();
    assert_eq!(harvest(a1), vec![(5, 1)]);
    // get_and_reset matches AtomicBitmap's format.
    m.write_obj(1u8, GuestAddress(a0 + 63 * 4096)).unwrap();
    let r = m.find_region(GuestAddress(a0)).unwrap();
    assert_eq!((**r).bitmap().get_and_reset(), vec![1u64 << 63]);
}

/// vCPU-like threads writing through vm-memory while a harvester runs: every written
/// page is harvested, and nothing else.
#[test]
fn concurrent_writes_and_harvests() {
    let m: std::sync::Arc<GuestMemoryMmap<SoftDirtyBitmap>> =
        std::sync::Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 22)]).unwrap());
    let pages = (1u64 << 22) / 4096;
    let ths: Vec<_> = (0..2u64)
        .map(|t| {
            let m = m.clone();
            std::thread::spawn(move || {
                for i in 0..20_000u64 {
                    let p = (i * 7 + t) % pages;
                    if p % 3 == t {
                        m.write_obj(i, GuestAddress(p * 4096 + 8)).unwrap();
                    }
                }
            })
        })
        .collect();
    let r = m.find_region(GuestAddress(0)).unwrap();
    let b: &SoftDirtyBitmap = (**r).bitmap();
    let mut seen = vec![false; pages as usize];
    let mut collect = |b: &SoftDirtyBitmap| {
        b.harvest(|f, n| {
            for p in f..f + n {
                seen[p as usize] = true;
            }
        })
    };
    while !ths.iter().all(|t| t.is_finished()) {
        collect(b);
    }
    for t in ths {
        t.join().unwrap();
    }
    collect(b);
    for p in 0..pages {
        assert_eq!(seen[p as usize], p % 3 != 2, "page {p}");
    }
}
