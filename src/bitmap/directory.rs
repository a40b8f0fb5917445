//! The directory of a [`PageBitmap`](super::PageBitmap): one slot per chunk, in two levels
//! so that an untouched stretch of [`LEAF_SLOTS`] chunks costs one top entry, whatever the
//! size of the mapping (a 126 TiB mapping has 16,128 top entries, 126 KiB, instead of
//! 8.3 million slots, 63 MiB), and a fork copies a top entry per untouched stretch.
//!
//! A top entry is a slot tag ([`ABSENT_CLEAN`], [`ABSENT_DIRTY`]: every slot of the leaf
//! holds that tag) or a pointer to a leaf of [`LEAF_SLOTS`] slots (the last leaf: the
//! slots left, so that a small bitmap's leaf costs what it covers). A leaf is installed
//! with a CAS from the tag, filled with the tag, the first time one of its slots must
//! change; it is freed only with the bitmap.
//!
//! # Why the seal argument survives the second level
//!
//! A fault that installs a chunk now does up to two CASes (the leaf into the top entry,
//! then the chunk into the leaf slot), each `AcqRel`. The drain (`seal_and_drain`) does a
//! value-preserving `AcqRel` RMW on every top entry, and on every slot of each leaf it
//! finds. If the fault's top CAS precedes the drain's RMW on that entry, the drain reads
//! the leaf and the single-level argument applies to the slot. Otherwise the CAS reads
//! from the drain's RMW (or from a later RMW in its release sequence: another fault's
//! leaf CAS), synchronizes with it and sees `sealed`. A fault that finds a leaf installed
//! after the drain's RMW read the top entry through that release sequence, so it sees
//! `sealed` too. The loom build uses one slot per leaf, so every first write of a model
//! installs a leaf.

use super::{ABSENT_CLEAN, ABSENT_DIRTY};
use crate::sync::{AtomicUsize, Ordering};

/// Slots per leaf: 512 (8 GiB of 4 KiB pages per leaf, 4 KiB per leaf).
#[cfg(not(all(loom, feature = "loom")))]
pub(super) const LEAF_SLOTS: usize = 512;
/// Slots per leaf under loom: one, so that every chunk install also installs a leaf.
#[cfg(all(loom, feature = "loom"))]
pub(super) const LEAF_SLOTS: usize = 1;

/// Is `v` (a top entry or a slot) a tag rather than a pointer?
#[inline]
pub(super) fn is_tag(v: usize) -> bool {
    v == ABSENT_CLEAN || v == ABSENT_DIRTY
}

/// A top entry, read.
pub(super) enum Entry<'a> {
    /// Every slot of the leaf holds this tag.
    Tag(usize),
    /// The leaf's slots.
    Leaf(&'a [AtomicUsize]),
}

/// The two-level directory.
pub(super) struct Directory {
    /// Per leaf: a tag or a leaf pointer (from `Box::into_raw` of a `[AtomicUsize]` of
    /// `LEAF_SLOTS` slots, stored as the address of its first slot).
    top: Top,
    /// The address of `top`'s first entry, so that the write path's `load` indexes it
    /// without `Top`'s deref (a match and a bounds check). `top` is made once, in `new`,
    /// and its entries never move: a boxed slice or a mapping, both freed only in `Drop`.
    top_base: usize,
    /// Number of slots (chunks).
    len: usize,
}

impl Directory {
    /// `len` slots, all holding `tag`. A top of `ABSENT_CLEAN` (0) tags is allocated
    /// zeroed, so it stays unbacked by the OS until written.
    pub(super) fn new(len: usize, tag: usize) -> Directory {
        let n = len.div_ceil(LEAF_SLOTS);
        let top = if tag == 0 {
            Top::zeroed(n)
        } else {
            Top::Heap((0..n).map(|_| AtomicUsize::new(tag)).collect())
        };
        let top_base = top.as_ptr() as usize;
        Directory { top, top_base, len }
    }

    /// Number of slots.
    #[inline]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Number of top entries.
    #[inline]
    pub(super) fn leaves(&self) -> usize {
        self.top.len()
    }

    /// Bytes of the directory: the top and the leaves installed.
    pub(super) fn bytes(&self) -> usize {
        let mut b = self.top.len() * std::mem::size_of::<usize>();
        for j in 0..self.top.len() {
            if let Entry::Leaf(l) = self.entry(j, Ordering::Acquire) {
                b += std::mem::size_of_val(l);
            }
        }
        b
    }

    /// Slots in leaf `j`: [`LEAF_SLOTS`], but for the last leaf, which has the slots left.
    #[inline]
    fn leaf_len(&self, j: usize) -> usize {
        LEAF_SLOTS.min(self.len - j * LEAF_SLOTS)
    }

    /// Top entry `j`, read with `ord` (Acquire or stronger to follow a leaf pointer).
    #[inline]
    pub(super) fn entry(&self, j: usize, ord: Ordering) -> Entry<'_> {
        let v = self.top[j].load(ord);
        self.decode(j, v)
    }

    /// Top entry `j` after a value-preserving `AcqRel` RMW (the drain's).
    pub(super) fn entry_rmw(&self, j: usize) -> Entry<'_> {
        // AcqRel: see the module documentation (pairs with a fault's leaf-installing CAS).
        let v = self.top[j].fetch_or(0, Ordering::AcqRel);
        self.decode(j, v)
    }

    /// Top entry `j`'s value `v`, decoded.
    #[inline]
    fn decode(&self, j: usize, v: usize) -> Entry<'_> {
        if is_tag(v) {
            Entry::Tag(v)
        } else {
            // SAFETY: a non-tag top entry `j` is the first slot of a leaf of
            // `leaf_len(j)` slots made by `Box::into_raw` in `leaf_for` and freed only in
            // `Drop` (`&mut self`), so it lives as long as this `&self` borrow.
            Entry::Leaf(unsafe {
                std::slice::from_raw_parts(v as *const AtomicUsize, self.leaf_len(j))
            })
        }
    }

    /// Slot `k`, read with `ord` (the top entry with Acquire: pairs with the CAS that
    /// installed the leaf, so its initial tags are visible).
    #[inline]
    pub(super) fn load(&self, k: usize, ord: Ordering) -> usize {
        // The write path's lookup (every mark reads a slot): the top entry and the leaf
        // slot by address, without `Top`'s deref or the leaf's slice, whose lengths and
        // bounds checks cost a vm-memory `write_obj` about ten instructions (callgrind).
        // Out of range is a caller's bug, as an index would be.
        assert!(
            k < self.len,
            "slot {k} of a directory of {} slots",
            self.len
        );
        // SAFETY: `k < len` puts `k / LEAF_SLOTS` below `top.len()` (`len.div_ceil(
        // LEAF_SLOTS)` entries), and `top_base` is the first of them, alive while `self` is
        // (field docs).
        let top = unsafe { &*(self.top_base as *const AtomicUsize).add(k / LEAF_SLOTS) };
        // Acquire: pairs with the CAS that installed the leaf (`leaf_for`).
        let v = top.load(Ordering::Acquire);
        if is_tag(v) {
            return v;
        }
        // SAFETY: as in `decode`: a non-tag top entry is the first slot of a live leaf of
        // `leaf_len(k / LEAF_SLOTS)` slots, and `k < len` puts `k % LEAF_SLOTS` inside it
        // (only the last leaf is shorter, and it holds the slots up to `len`).
        unsafe { &*(v as *const AtomicUsize).add(k % LEAF_SLOTS) }.load(ord)
    }

    /// The leaf of top entry `j`, installing one filled with the entry's tag if it has
    /// none; `Err(tag)` if the entry holds a tag other than `expect` (a racing clear
    /// changed it, or `expect` was stale).
    fn leaf_for(&self, j: usize, expect: usize) -> Result<&[AtomicUsize], usize> {
        loop {
            let v = self.top[j].load(Ordering::Acquire);
            if !is_tag(v) {
                return match self.decode(j, v) {
                    Entry::Leaf(l) => Ok(l),
                    Entry::Tag(_) => unreachable!("decoded a pointer"),
                };
            }
            if v != expect {
                return Err(v);
            }
            let n = self.leaf_len(j);
            let leaf: Box<[AtomicUsize]> = (0..n).map(|_| AtomicUsize::new(v)).collect();
            let p = Box::into_raw(leaf) as *mut AtomicUsize;
            // AcqRel: Release publishes the leaf's initial tags to `load`/`entry` readers;
            // Acquire pairs with the drain's RMW on this entry (module documentation).
            match self.top[j].compare_exchange(v, p as usize, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    // SAFETY: just installed; owned by the directory from now on.
                    return Ok(unsafe { std::slice::from_raw_parts(p, n) });
                }
                Err(_) => {
                    // SAFETY: the CAS failed, so the leaf was never shared; it was made
                    // from a boxed slice of exactly `n` slots.
                    drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n)) });
                }
            }
        }
    }

    /// `compare_exchange` on slot `k` (installing its leaf first when the slot's value is
    /// its top entry's tag and equals `cur`). On failure, returns the slot's value.
    pub(super) fn compare_exchange(
        &self,
        k: usize,
        cur: usize,
        new: usize,
        success: Ordering,
        failure: Ordering,
    ) -> Result<usize, usize> {
        let leaf = self.leaf_for(k / LEAF_SLOTS, cur)?;
        leaf[k % LEAF_SLOTS].compare_exchange(cur, new, success, failure)
    }

    /// Stores `v` in slot `k` of a directory no other thread can reach yet (a bitmap
    /// being built before it is published).
    pub(super) fn store_unpublished(&self, k: usize, v: usize) {
        let j = k / LEAF_SLOTS;
        let leaf = match self.entry(j, Ordering::Acquire) {
            // Nothing to change: keep the leaf (and its page) uninstalled.
            Entry::Tag(t) if t == v => return,
            Entry::Tag(t) => match self.leaf_for(j, t) {
                Ok(l) => l,
                Err(_) => unreachable!("no other thread reaches an unpublished bitmap"),
            },
            Entry::Leaf(l) => l,
        };
        leaf[k % LEAF_SLOTS].store(v, Ordering::Relaxed);
    }

    /// Sets top entry `j` of a directory no other thread can reach yet to `tag`, if it
    /// holds a tag (a whole untouched leaf copied at once); `false` if it holds a leaf.
    pub(super) fn set_tag_unpublished(&self, j: usize, tag: usize) -> bool {
        let v = self.top[j].load(Ordering::Relaxed);
        if is_tag(v) {
            if v != tag {
                // Only when it changes: an unchanged entry of a zeroed top stays unbacked.
                self.top[j].store(tag, Ordering::Relaxed);
            }
            true
        } else {
            false
        }
    }

    /// CAS of top entry `j` from one tag to another (a clear of a whole untouched leaf);
    /// on failure, the entry as it is.
    pub(super) fn cas_tag(&self, j: usize, cur: usize, new: usize) -> Result<(), Entry<'_>> {
        // AcqRel: a racing fault's leaf-installing CAS either wins (the caller then visits
        // the leaf) or loses and re-reads our tag.
        match self.top[j].compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ok(()),
            Err(v) => Err(self.decode(j, v)),
        }
    }

    /// Calls `f` with every chunk pointer in the directory (for `Drop` and counting).
    pub(super) fn for_each_chunk_ptr(&self, mut f: impl FnMut(usize)) {
        for j in 0..self.top.len() {
            if let Entry::Leaf(l) = self.entry(j, Ordering::Acquire) {
                for s in l {
                    let v = s.load(Ordering::Acquire);
                    if !is_tag(v) {
                        f(v);
                    }
                }
            }
        }
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        for (j, e) in self.top.iter().enumerate() {
            let v = e.load(Ordering::Relaxed);
            if !is_tag(v) {
                // SAFETY: `&mut self`: no other reference exists; the value came from
                // `Box::into_raw` of a boxed slice of `leaf_len(j)` slots in `leaf_for`
                // and is freed only here. (The chunks it points to are freed by the
                // bitmap's `Drop`, which runs first.)
                drop(unsafe {
                    Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                        v as *mut AtomicUsize,
                        self.leaf_len(j),
                    ))
                });
            }
        }
    }
}

/// The top level: a boxed slice, or, when large and zeroed, an anonymous mapping of its
/// own, so that its untouched pages stay unbacked by the OS whatever the allocator does
/// with `calloc` (glibc serves requests under its moving mmap threshold from the heap and
/// clears reused memory by writing it: a fork child's 126 KiB top was resident).
enum Top {
    Heap(Box<[AtomicUsize]>),
    /// `addr` is the start of a private anonymous mapping of `len` slots (as an address,
    /// so that `Directory` stays `Send + Sync` by its fields), unmapped in `Drop`.
    #[cfg(not(all(loom, feature = "loom")))]
    Mapped {
        addr: usize,
        len: usize,
    },
}

/// Tops at least this large (bytes) get a mapping of their own.
#[cfg(not(all(loom, feature = "loom")))]
const MAP_TOP_BYTES: usize = 64 << 10;

impl Top {
    fn zeroed(n: usize) -> Top {
        #[cfg(not(all(loom, feature = "loom")))]
        {
            let bytes = n * std::mem::size_of::<usize>();
            if bytes >= MAP_TOP_BYTES {
                // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
                let p = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        bytes,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                        -1,
                        0,
                    )
                };
                if p != libc::MAP_FAILED {
                    return Top::Mapped {
                        addr: p as usize,
                        len: n,
                    };
                }
            }
            let v: Vec<usize> = vec![0usize; n]; // `vec![0; n]` uses alloc_zeroed
            let b: Box<[usize]> = v.into_boxed_slice();
            let raw = Box::into_raw(b) as *mut [AtomicUsize];
            // SAFETY: `AtomicUsize` has the same size, alignment and bit validity as
            // `usize` (documented in std), so a boxed `[usize]` is a valid boxed
            // `[AtomicUsize]`.
            Top::Heap(unsafe { Box::from_raw(raw) })
        }
        #[cfg(all(loom, feature = "loom"))]
        {
            Top::Heap((0..n).map(|_| AtomicUsize::new(0)).collect())
        }
    }
}

impl std::ops::Deref for Top {
    type Target = [AtomicUsize];

    #[inline]
    fn deref(&self) -> &[AtomicUsize] {
        match self {
            Top::Heap(b) => b,
            #[cfg(not(all(loom, feature = "loom")))]
            // SAFETY: `addr` is a live mapping of `len` zero-initialized slots owned by
            // this `Top` (unmapped only in `Drop`, with `&mut self`); all-zero bytes are a
            // valid `AtomicUsize`, which has the size and alignment of `usize` (the
            // mapping is page aligned).
            Top::Mapped { addr, len } => unsafe {
                std::slice::from_raw_parts(*addr as *const AtomicUsize, *len)
            },
        }
    }
}

impl Drop for Top {
    fn drop(&mut self) {
        #[cfg(not(all(loom, feature = "loom")))]
        if let Top::Mapped { addr, len } = *self {
            // SAFETY: the mapping made in `zeroed`, of exactly this size, unmapped once;
            // the directory's leaves were freed before (`Directory::drop`) and nothing
            // else points into it.
            unsafe {
                libc::munmap(
                    addr as *mut libc::c_void,
                    len * std::mem::size_of::<usize>(),
                )
            };
        }
    }
}
