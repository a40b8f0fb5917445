//! softdirty: precise, concurrent soft-dirty page tracking.
//!
//! A user-space model of a Linux process address space (x86-64, 4 KiB pages) that tracks
//! which pages were written ("soft-dirty"), in two main modes:
//! - `legacy` reproduces the kernel's `VM_SOFTDIRTY` behaviour up to 6.18.36 exactly,
//!   including the false positives VMA merges cause and the dirtiness mprotect merges lose;
//! - `precise` reports a page soft-dirty iff its content may have changed since the last
//!   clear: no split or merge changes any page's state.
//!
//! Which type to start from:
//!
//! | you want to | start from |
//! |---|---|
//! | simulate a process's address space (mmap, mprotect, mremap, fork, faults, clear_refs, pagemap, PAGEMAP_SCAN) | [`mm::AddressSpace`], or several named ones in a [`tracker::Tracker`] |
//! | harvest dirty pages as an embedder (runs, KVM-layout bitmaps, get/clear pairs) | [`dirtylog::DirtyLog`] via `AddressSpace::scan_and_clear` / `get_dirty_log` / `clear_dirty_log` |
//! | track **real** memory of this process through the kernel (userfaultfd WP-async + PAGEMAP_SCAN, or real soft-dirty) | `kernel` (Linux only) |
//! | give a rust-vmm VMM a dirty bitmap (`GuestMemoryMmap<SoftDirtyBitmap>`) | `vmm::SoftDirtyBitmap` (feature `vm-memory`) |
//! | KVM-style memory-slot dirty logs with several independent consumers | [`slots::SlotRegistry`] (producers mark through a [`producer::Producer`]) |
//! | write or check a scenario | [`trace`] (the trace language) |
//! | the lock-free bitmap core on its own | [`bitmap::PageBitmap`] |
//!
//! ```
//! use softdirty::{mm::{AddressSpace, Placement}, mode::Mode, prot::Prot};
//! let mm = AddressSpace::new(Mode::Precise);
//! let heap = mm.mmap(0, 64 * 4096, Prot::RW, false, Placement::Hint).unwrap();
//! mm.clear_refs(4).unwrap();
//! mm.write(heap + 5 * 4096, 1).unwrap();
//! assert_eq!(mm.softdirty_runs(heap, 64 * 4096), vec![(5, 6)]);
//! ```
#![warn(missing_docs)]

pub mod accounting;
pub mod backend;
pub mod bitmap;
pub mod dirtylog;
pub mod epoch;
pub mod errno;
pub mod index;
#[cfg(all(
    target_os = "linux",
    feature = "kernel",
    not(all(loom, feature = "loom"))
))]
pub mod kernel;
pub mod layout;
pub mod mm;
pub mod mode;
pub mod pagemap;
pub mod producer;
pub mod prot;
pub mod regions;
pub mod scan;
pub mod slots;
pub(crate) mod sync;
pub mod tracker;
mod twins;
pub mod vma;
#[cfg(feature = "vm-memory")]
pub mod vmm;
