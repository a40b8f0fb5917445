//! The Linux uapi definitions the `libc` crate lacks, defined once.
//!
//! Values follow the 6.7+ headers (`include/uapi/linux/userfaultfd.h`,
//! `include/uapi/linux/fs.h`); the reference C is
//! `../shared/tools/kernel-oracle/common.h`. Every struct is `#[repr(C)]` with its size
//! and field offsets checked at compile time against the kernel's layout.

use std::mem::{offset_of, size_of};

pub use crate::linux::{
    PAGE_IS_FILE, PAGE_IS_HUGE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SOFT_DIRTY,
    PAGE_IS_SWAPPED, PAGE_IS_WPALLOWED, PAGE_IS_WRITTEN, PM_FILE, PM_MMAP_EXCLUSIVE, PM_PFN_MASK,
    PM_PRESENT, PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING, PM_SOFT_DIRTY, PM_SWAP, PM_UFFD_WP,
};

/// `_IOC` direction bits: read | write (`_IOWR`).
const IOC_READWRITE: u64 = 3;
/// `_IOC` direction bits: read (`_IOR`).
const IOC_READ: u64 = 2;

/// `_IOC(dir, type, nr, size)` for x86-64.
const fn ioc(dir: u64, ty: u8, nr: u8, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | ((ty as u64) << 8) | nr as u64
}

// ---------------------------------------------------------------- PAGEMAP_SCAN

/// `struct page_region`: one output region of PAGEMAP_SCAN.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageRegion {
    /// first address
    pub start: u64,
    /// end address (exclusive)
    pub end: u64,
    /// the categories of the region's pages, masked by `return_mask`
    pub categories: u64,
}

/// `struct pm_scan_arg`: the argument of the PAGEMAP_SCAN ioctl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PmScanArg {
    /// `sizeof(struct pm_scan_arg)`
    pub size: u64,
    /// `PM_SCAN_*` flags
    pub flags: u64,
    /// start of the range (page aligned)
    pub start: u64,
    /// end of the range (rounded up by the kernel)
    pub end: u64,
    /// out: where the walk stopped
    pub walk_end: u64,
    /// user address of a `struct page_region` array
    pub vec: u64,
    /// its length in regions
    pub vec_len: u64,
    /// report at most this many pages (0: unlimited)
    pub max_pages: u64,
    /// categories to invert before matching
    pub category_inverted: u64,
    /// categories that must all be set
    pub category_mask: u64,
    /// categories of which one must be set (0: no condition)
    pub category_anyof_mask: u64,
    /// categories to report
    pub return_mask: u64,
}

/// `PAGEMAP_SCAN` = `_IOWR('f', 16, struct pm_scan_arg)` (0xC0606610), on a
/// `/proc/PID/pagemap` fd.
pub const PAGEMAP_SCAN: u64 = ioc(IOC_READWRITE, b'f', 16, size_of::<PmScanArg>());

// ----------------------------------------------------------------- userfaultfd

/// `UFFD_API`
pub const UFFD_API: u64 = 0xAA;
/// `UFFD_USER_MODE_ONLY`: a userfaultfd that handles user-mode faults only (allowed
/// without privilege when `vm.unprivileged_userfaultfd` is 0).
pub const UFFD_USER_MODE_ONLY: i32 = 1;
/// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM`: uffd-wp on shmem (shared anonymous) mappings.
pub const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
/// `UFFD_FEATURE_WP_UNPOPULATED`: write-protect installs markers on unpopulated ptes.
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `UFFD_FEATURE_WP_ASYNC`: write faults on protected pages resolve in the kernel and
/// mark the page written (Linux 6.7+).
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// `UFFDIO_REGISTER_MODE_WP`
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// `UFFDIO_WRITEPROTECT_MODE_WP`
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;

/// `struct uffdio_api`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UffdioApi {
    /// must be `UFFD_API`
    pub api: u64,
    /// in: features requested; out: features supported
    pub features: u64,
    /// out: the ioctls available
    pub ioctls: u64,
}

/// `struct uffdio_range`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UffdioRange {
    /// start address (page aligned)
    pub start: u64,
    /// length in bytes (page multiple)
    pub len: u64,
}

/// `struct uffdio_register`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UffdioRegister {
    /// the range to register
    pub range: UffdioRange,
    /// `UFFDIO_REGISTER_MODE_*`
    pub mode: u64,
    /// out: the ioctls available on the range
    pub ioctls: u64,
}

/// `struct uffdio_writeprotect`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UffdioWriteprotect {
    /// the range to (un)protect
    pub range: UffdioRange,
    /// `UFFDIO_WRITEPROTECT_MODE_*`
    pub mode: u64,
}

/// `UFFDIO_API` = `_IOWR(0xAA, 0x3F, struct uffdio_api)`
pub const UFFDIO_API: u64 = ioc(IOC_READWRITE, 0xAA, 0x3F, size_of::<UffdioApi>());
/// `UFFDIO_REGISTER` = `_IOWR(0xAA, 0x00, struct uffdio_register)`
pub const UFFDIO_REGISTER: u64 = ioc(IOC_READWRITE, 0xAA, 0x00, size_of::<UffdioRegister>());
/// `UFFDIO_UNREGISTER` = `_IOR(0xAA, 0x01, struct uffdio_range)`
pub const UFFDIO_UNREGISTER: u64 = ioc(IOC_READ, 0xAA, 0x01, size_of::<UffdioRange>());
/// `UFFDIO_WRITEPROTECT` = `_IOWR(0xAA, 0x06, struct uffdio_writeprotect)`
pub const UFFDIO_WRITEPROTECT: u64 =
    ioc(IOC_READWRITE, 0xAA, 0x06, size_of::<UffdioWriteprotect>());

// ------------------------------------------------------- layout, checked once

const _: () = assert!(size_of::<PageRegion>() == 24);
const _: () = assert!(offset_of!(PageRegion, start) == 0);
const _: () = assert!(offset_of!(PageRegion, end) == 8);
const _: () = assert!(offset_of!(PageRegion, categories) == 16);

const _: () = assert!(size_of::<PmScanArg>() == 96);
const _: () = assert!(offset_of!(PmScanArg, size) == 0);
const _: () = assert!(offset_of!(PmScanArg, flags) == 8);
const _: () = assert!(offset_of!(PmScanArg, start) == 16);
const _: () = assert!(offset_of!(PmScanArg, end) == 24);
const _: () = assert!(offset_of!(PmScanArg, walk_end) == 32);
const _: () = assert!(offset_of!(PmScanArg, vec) == 40);
const _: () = assert!(offset_of!(PmScanArg, vec_len) == 48);
const _: () = assert!(offset_of!(PmScanArg, max_pages) == 56);
const _: () = assert!(offset_of!(PmScanArg, category_inverted) == 64);
const _: () = assert!(offset_of!(PmScanArg, category_mask) == 72);
const _: () = assert!(offset_of!(PmScanArg, category_anyof_mask) == 80);
const _: () = assert!(offset_of!(PmScanArg, return_mask) == 88);

const _: () = assert!(size_of::<UffdioApi>() == 24);
const _: () = assert!(offset_of!(UffdioApi, features) == 8);
const _: () = assert!(offset_of!(UffdioApi, ioctls) == 16);
const _: () = assert!(size_of::<UffdioRange>() == 16);
const _: () = assert!(offset_of!(UffdioRange, len) == 8);
const _: () = assert!(size_of::<UffdioRegister>() == 32);
const _: () = assert!(offset_of!(UffdioRegister, mode) == 16);
const _: () = assert!(offset_of!(UffdioRegister, ioctls) == 24);
const _: () = assert!(size_of::<UffdioWriteprotect>() == 24);
const _: () = assert!(offset_of!(UffdioWriteprotect, mode) == 16);

const _: () = assert!(PAGEMAP_SCAN == 0xC060_6610);
const _: () = assert!(UFFDIO_API == 0xC018_AA3F);
const _: () = assert!(UFFDIO_REGISTER == 0xC020_AA00);
const _: () = assert!(UFFDIO_UNREGISTER == 0x8010_AA01);
const _: () = assert!(UFFDIO_WRITEPROTECT == 0xC018_AA06);
// The model's category bits are the kernel's.
const _: () = assert!(PAGE_IS_WRITTEN == crate::scan::PAGE_IS_WRITTEN);
const _: () = assert!(PAGE_IS_SOFT_DIRTY == crate::scan::PAGE_IS_SOFT_DIRTY);
const _: () = assert!(PAGE_IS_WPALLOWED == crate::scan::PAGE_IS_WPALLOWED);
const _: () = assert!(PAGE_IS_PRESENT == crate::scan::PAGE_IS_PRESENT);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ioctl_numbers_match_the_kernel() {
        assert_eq!(size_of::<PmScanArg>(), 96);
        assert_eq!(size_of::<PageRegion>(), 24);
        assert_eq!(size_of::<UffdioApi>(), 24);
        assert_eq!(size_of::<UffdioRange>(), 16);
        assert_eq!(size_of::<UffdioRegister>(), 32);
        assert_eq!(size_of::<UffdioWriteprotect>(), 24);
        assert_eq!(offset_of!(PmScanArg, return_mask), 88);
        assert_eq!(PAGEMAP_SCAN, 0xC060_6610);
        assert_eq!(UFFDIO_API, 0xC018_AA3F);
        assert_eq!(UFFDIO_REGISTER, 0xC020_AA00);
        assert_eq!(UFFDIO_WRITEPROTECT, 0xC018_AA06);
    }
}
