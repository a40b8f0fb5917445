//! softdirty: precise, concurrent soft-dirty page tracking.
//!
//! A user-space model of a Linux process address space (x86-64, 4 KiB pages) that tracks
//! which pages were written ("soft-dirty"), lock-free on the write path, in two main
//! modes and three more from the 2022 LKML thread ([`Mode`]):
//! - `legacy` reproduces the kernel's `VM_SOFTDIRTY` behaviour up to 6.18.36 exactly,
//!   including the false positives VMA merges cause and the dirtiness mprotect merges lose;
//! - `precise` reports a page soft-dirty iff its content may have changed since the last
//!   clear: no split or merge changes any page's state.
//!
//! A write is never lost: a page written after a harvest began is reported by that
//! harvest or stays dirty for the next, whatever splits, merges, forks, `MADV_DONTNEED`s
//! or `clear_refs` race with it (ARCHITECTURE.md, "The concurrency argument"; checked by
//! loom models on this code and by stress tests against broken twins).
//!
//! ```
//! use softdirty::{AddressSpace, Errno, Mode, Placement, Prot, Sharing};
//!
//! const PAGE: u64 = 4096;
//! # fn main() -> Result<(), Errno> {
//! for mode in [Mode::Legacy, Mode::Precise] {
//!     let mm = AddressSpace::new(mode);
//!     let heap = mm.mmap(0, 48 * PAGE, Prot::RW, Sharing::Private, Placement::Hint)?;
//!     mm.write(heap, 48 * PAGE)?; // simulated write faults: 48 pages dirty
//!     mm.clear_refs(4)?; // echo 4 > /proc/PID/clear_refs: all clean
//!     // A fresh mapping right after the heap: the kernel merges the two VMAs.
//!     mm.mmap(heap + 48 * PAGE, 16 * PAGE, Prot::RW, Sharing::Private, Placement::Fixed)?;
//!     mm.write(heap + 5 * PAGE, 1)?; // one store into the old heap, lock-free
//!     let log = mm.scan_and_clear(heap, 64 * PAGE)?; // PAGEMAP_SCAN with clear
//!     assert_eq!(mm.vma_count(heap, 64 * PAGE), 1);
//!     match mode {
//!         // The merge made the whole VMA soft-dirty: 63 false positives.
//!         Mode::Legacy => assert_eq!(log.dirty_count(), 64),
//!         // The written page, and the new mapping's pages (never cleared).
//!         _ => assert_eq!(log.runs(), vec![(5, 1), (48, 16)]),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Where to start
//!
//! | you want to | start from |
//! |---|---|
//! | simulate a process's address space (mmap, mprotect, mremap, fork, faults, clear_refs, pagemap, PAGEMAP_SCAN) | [`AddressSpace`], or several named ones in a [`Tracker`] |
//! | harvest dirty pages as an embedder (runs, KVM-layout bitmaps, get/clear pairs) | [`DirtyLog`] via [`AddressSpace::scan_and_clear`], `get_dirty_log`, `clear_dirty_log` |
//! | KVM-style memory-slot dirty logs with several independent consumers | [`SlotRegistry`] (producers mark through a [`Producer`]) |
//! | give a rust-vmm VMM a dirty bitmap (`GuestMemoryMmap<SoftDirtyBitmap>`) | `SoftDirtyBitmap` (feature `vm-memory`) |
//! | drive the model, or real memory of this process through the kernel, with one interface | [`Backend`]: [`ModelBackend`], `kernel::KernelBackend` (feature `kernel`, Linux) |
//! | the lock-free bitmap core on its own | [`PageBitmap`] |
//! | cap the model's memory, count live objects | [`Accounting`] |
//!
//! The trace language (parse, replay) is the crate `softdirty-trace`; the `softdirty`
//! command-line tool (the pre-copy simulator, the mode comparison, benchmarks, the fuzzer
//! and the reference model) is `softdirty-cli`. Neither is needed to embed this crate.
//!
//! # Features
//!
//! | feature | default | gives |
//! |---|---|---|
//! | `kernel` | yes | [`kernel`] (Linux): the [`Backend`] over real memory of this process, with userfaultfd WP-async + PAGEMAP_SCAN or real soft-dirty |
//! | `vm-memory` | no | `vmm::SoftDirtyBitmap`, a `vm_memory::bitmap::Bitmap` backed by [`PageBitmap`] |
//! | `rayon` | yes | parallel get-and-clear of VMAs of at least [`dirtylog::PARALLEL_MIN_PAGES`] pages on rayon's pool; without it every harvest is sequential |
//! | `serde` | no | `Serialize` for [`Mode`], [`mm::VmaInfo`] and scan categories |
//! | `loom` | no | the loom build of the synchronization shim (`loom-tests/`) |
//!
//! crossbeam-epoch (reclamation of VMA indexes), dashmap (the tracker's registry), bitvec
//! (a harvested log's KVM-layout view) and libc are always in.
//!
//! # Layers
//!
//! From the bottom: [`bitmap`] (per-VMA atomic page state, the fault and harvest
//! protocols), [`vma`] and [`index`] (immutable VMAs, the published sorted index),
//! [`mm`] (the address space: faults in `mm/fault.rs`, the private layout editor and the
//! structural commit in `mm/layout.rs` and `mm/commit.rs`, one file per system call), then the
//! observers ([`pagemap`], [`scan`], [`dirtylog`]) and the embedding APIs ([`slots`],
//! [`producer`], `vmm`), with [`backend`] as the seam the tools drive. ARCHITECTURE.md
//! walks a write, a clear_refs and a split through them.
#![warn(missing_docs, unreachable_pub)]

pub use crate::accounting::Accounting;
pub use crate::backend::{Backend, ModelBackend};
pub use crate::bitmap::PageBitmap;
pub use crate::dirtylog::{DirtyLog, Harvest};
pub use crate::errno::Errno;
pub use crate::mm::{AddressSpace, Placement, Sharing};
pub use crate::mode::Mode;
pub use crate::producer::Producer;
pub use crate::prot::Prot;
pub use crate::slots::SlotRegistry;
pub use crate::tracker::Tracker;
#[cfg(feature = "vm-memory")]
pub use crate::vmm::SoftDirtyBitmap;

pub mod accounting;
pub mod backend;
pub mod barrier;
pub mod bitmap;
pub mod consumers;
pub mod dirtylog;
pub mod epoch;
pub mod errno;
pub mod file;
pub mod index;
#[cfg(all(
    target_os = "linux",
    feature = "kernel",
    not(all(loom, feature = "loom"))
))]
pub mod kernel;

pub mod linux;
pub mod mm;
pub mod mode;
pub mod pagemap;
pub mod producer;
pub mod prot;
pub mod regions;
pub mod ring;
pub mod scan;
pub mod shmem;
pub mod slots;
pub(crate) mod sync;
pub mod tracker;
mod twins;
pub mod vma;
#[cfg(feature = "vm-memory")]
pub mod vmm;
pub mod writer;
