//! What Linux (x86-64) defines and the model shares with the kernel backend: page
//! geometry, address limits, the `/proc/PID/pagemap` entry bits and the PAGEMAP_SCAN
//! categories and flags (`include/uapi/linux/fs.h`). Each is defined here and nowhere
//! else.

// ------------------------------------------------------------ pages and addresses

/// Page size (x86-64).
pub const PAGE_SIZE: u64 = 4096;
/// Page shift.
pub const PAGE_SHIFT: u32 = 12;
/// x86-64 4-level paging: the first address user space cannot map.
pub const TASK_SIZE: u64 = 0x7fff_ffff_f000;
/// The kernel's `mmap_min_addr` floor for hints and (unprivileged) fixed mappings.
pub const MMAP_MIN_ADDR: u64 = 0x10000;
/// `vm.max_map_count`'s default.
pub const MAX_MAP_COUNT: usize = 65530;

// ---------------------------------------------------------------------- pagemap

/// pagemap bits 0-54: the PFN (or swap type and offset).
pub const PM_PFN_MASK: u64 = (1 << 55) - 1;
/// pagemap bit 55: soft-dirty.
pub const PM_SOFT_DIRTY: u64 = 1 << 55;
/// pagemap bit 56: exclusively mapped.
pub const PM_MMAP_EXCLUSIVE: u64 = 1 << 56;
/// pagemap bit 57: uffd-wp (a protected pte or a marker).
pub const PM_UFFD_WP: u64 = 1 << 57;
/// pagemap bit 61: file page or shared anonymous memory.
pub const PM_FILE: u64 = 1 << 61;
/// pagemap bit 58: the entry is a guard marker (`MADV_GUARD_INSTALL`, 6.15+).
pub const PM_GUARD_REGION: u64 = 1 << 58;
/// pagemap bit 62: swapped (also set on uffd-wp markers).
pub const PM_SWAP: u64 = 1 << 62;
/// pagemap bit 63: present.
pub const PM_PRESENT: u64 = 1 << 63;

// ----------------------------------------------------------------- PAGEMAP_SCAN

/// `PAGE_IS_WPALLOWED`: the page may be write-protected (registered for async uffd-wp).
pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
/// `PAGE_IS_WRITTEN`: written since the last write-protect (or never protected).
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
/// `PAGE_IS_FILE`: file-backed or shared anonymous.
pub const PAGE_IS_FILE: u64 = 1 << 2;
/// `PAGE_IS_PRESENT`: a present pte.
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
/// `PAGE_IS_SWAPPED`: a swap entry (uffd-wp markers report it too).
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
/// `PAGE_IS_PFNZERO`: the shared zero page.
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
/// `PAGE_IS_HUGE`: part of a huge page.
pub const PAGE_IS_HUGE: u64 = 1 << 6;
/// `PAGE_IS_SOFT_DIRTY`: soft-dirty (CONFIG_MEM_SOFT_DIRTY kernels only).
pub const PAGE_IS_SOFT_DIRTY: u64 = 1 << 7;
/// `PAGE_IS_GUARD`: a guard region (`MADV_GUARD_INSTALL`).
pub const PAGE_IS_GUARD: u64 = 1 << 8;
/// Every category Linux 6.18 accepts.
pub const PM_SCAN_CATEGORIES: u64 = 0x1ff;

/// `PM_SCAN_WP_MATCHING`: write-protect the matching pages atomically with the report.
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: fail with EPERM on a VMA not registered for async uffd-wp.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
