//! `mmap` (with the model's deterministic address choice) and `munmap`.

use super::layout::{Layout, NewRange, Piece, Src};
use super::{page_align, AddressSpace, MapOpts, Placement, Sharing, DAC_MMAP_MIN_ADDR, MMAP_BASE};
use crate::errno::{Errno, Result};
use crate::file::{FileKind, FileRef, MAX_FILE_SIZE};
use crate::linux::{MAX_MAP_COUNT, MMAP_MIN_ADDR, PAGE_SHIFT, PAGE_SIZE, TASK_SIZE};
use crate::mode::Mode;
use crate::prot::Prot;
use crate::regions::NonSdRegions;
use crate::vma::{VmaFlags, VmaMeta};

impl AddressSpace {
    /// `mmap(addr, len, prot, MAP_ANONYMOUS | sharing | placement)`. Returns the address of
    /// the mapping.
    pub fn mmap(
        &self,
        addr: u64,
        len: u64,
        prot: Prot,
        sharing: Sharing,
        placement: Placement,
    ) -> Result<u64> {
        self.mmap_with(addr, len, prot, sharing, placement, MapOpts::default())
    }

    /// [`Self::mmap`] with the v2 flags `opts` (`MAP_NORESERVE`, `MAP_POPULATE`,
    /// `MAP_GROWSDOWN`, a file and its offset).
    ///
    /// A file mapping follows `do_mmap` for a file opened read-write: EBADF for a file
    /// that is not one of [`Self::files`]; EINVAL for an offset that is not page-aligned
    /// (before anything else, as x86-64's `sys_mmap` checks it); EOVERFLOW where
    /// `file_mmap_ok` refuses the offset and length (after the placement); EINVAL with
    /// `MAP_GROWSDOWN`. The VMA's `vm_pgoff` is the offset in pages, and it merges only
    /// with VMAs of the same file at contiguous offsets. Mapping past the end of the file
    /// is allowed; an access there fails with EFAULT (SIGBUS).
    pub fn mmap_with(
        &self,
        addr: u64,
        len: u64,
        prot: Prot,
        sharing: Sharing,
        placement: Placement,
        opts: MapOpts,
    ) -> Result<u64> {
        let a = self.mmap_inner(addr, len, prot, sharing, placement, opts)?;
        if opts.populate && prot.accessible() {
            // mm_populate after the mapping is made; its errors are ignored, as mmap does.
            let len = page_align(len).unwrap_or(len);
            let _ = if !sharing.is_shared() && prot.write {
                self.write(a, len)
            } else {
                self.read(a, len)
            };
        }
        Ok(a)
    }

    fn mmap_inner(
        &self,
        addr: u64,
        len: u64,
        prot: Prot,
        sharing: Sharing,
        placement: Placement,
        opts: MapOpts,
    ) -> Result<u64> {
        let shared = sharing.is_shared();
        if let Some((f, offset)) = opts.file {
            if offset % PAGE_SIZE != 0 {
                return Err(Errno::EINVAL);
            }
            if !self.files().contains(f) {
                return Err(Errno::EBADF);
            }
        }
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let fixed = placement != Placement::Hint;
        let mut addr = addr;
        if !fixed {
            // round_hint_to_min
            addr &= !(PAGE_SIZE - 1);
            if addr != 0 && addr < MMAP_MIN_ADDR {
                addr = MMAP_MIN_ADDR;
            }
        }
        let len = match page_align(len) {
            Some(l) if l != 0 => l,
            _ => return Err(Errno::ENOMEM),
        };
        self.structural(|l| {
            if l.count() > MAX_MAP_COUNT {
                return (Err(Errno::ENOMEM), false);
            }
            // __get_unmapped_area
            if len > TASK_SIZE {
                return (Err(Errno::ENOMEM), false);
            }
            // A fixed address, or a hint that is free and fits, is used as it is.
            let usable_hint = addr != 0
                && addr.checked_add(len).is_some_and(|e| e <= TASK_SIZE)
                && l.base.range(addr, addr + len).next().is_none();
            let addr = if fixed || usable_hint {
                addr
            } else {
                match Self::unmapped_area(l, len) {
                    Some(a) => a,
                    None => return (Err(Errno::ENOMEM), false),
                }
            };
            if addr > TASK_SIZE - len {
                return (Err(Errno::ENOMEM), false);
            }
            if addr % PAGE_SIZE != 0 {
                return (Err(Errno::EINVAL), false);
            }
            if fixed && addr < DAC_MMAP_MIN_ADDR {
                // security_mmap_addr → cap_mmap_addr, for a caller without CAP_SYS_RAWIO
                return (Err(Errno::EPERM), false);
            }
            let end = addr + len;
            l.load(addr, end);
            if placement == Placement::NoReplace && l.intersects(addr, end) {
                return (Err(Errno::EEXIST), false);
            }
            if let Some((_, offset)) = opts.file {
                // file_mmap_ok, with s_maxbytes = MAX_LFS_FILESIZE (tmpfs, and the limit
                // of the files the model stands for).
                let max = MAX_FILE_SIZE;
                if len > max || (offset >> PAGE_SHIFT) > (max - len) >> PAGE_SHIFT {
                    return (Err(Errno::EOVERFLOW), false);
                }
            }
            if (shared || opts.file.is_some()) && opts.growsdown {
                // do_mmap: MAP_SHARED anonymous memory and every file mapping refuse
                // VM_GROWSDOWN (after the placement).
                return (Err(Errno::EINVAL), false);
            }
            if let Err(e) = l.unmap(addr, end) {
                return (Err(e), false);
            }
            let precise = self.mode.is_precise();
            let meta = VmaMeta {
                flags: VmaFlags {
                    noreserve: opts.noreserve,
                    growsdown: opts.growsdown,
                    ..VmaFlags::new(
                        prot,
                        shared,
                        !shared && prot.write && !opts.noreserve,
                        // Nomerge: the new range counts as soft-dirty in the merge decision.
                        self.mode.flag_blocks_merge(),
                    )
                },
                pgoff: match opts.file {
                    Some((_, offset)) => offset >> PAGE_SHIFT,
                    None if shared => 0,
                    None => addr >> PAGE_SHIFT,
                },
                file: match opts.file {
                    Some((f, _)) => Some(f),
                    None => shared.then(|| FileRef {
                        id: self.accounting.next_id(),
                        kind: FileKind::Anonymous,
                        anon_size: end - addr,
                    }),
                },
                forked: false,
            };
            let pieces = vec![Piece {
                start: addr,
                end,
                src: Src::Fresh { dirty: precise },
            }];
            let i = l.merge_new_range(
                addr,
                end,
                meta,
                0,
                pieces,
                NonSdRegions::new(),
                NewRange::Mmap,
            );
            // "New (or expanded) vma always get soft dirty status." (The RFC removes the
            // flag: its new pages are in no region.)
            if self.mode != Mode::Regions {
                l.vmas[i].meta.flags.softdirty = true;
            }
            (Ok(addr), true)
        })
    }

    /// Top-down search below [`MMAP_BASE`], then bottom-up above it (the kernel's
    /// fallback), for a free range of `len` bytes. Reads the layout's base index, so it
    /// runs before any edit. It walks the VMAs from `MMAP_BASE` down until a gap fits:
    /// O(log V) when one does near the top, O(V) when the space below is packed (Linux
    /// keeps the largest gap of every maple-tree subtree to skip those; this index does not).
    pub(super) fn unmapped_area(l: &Layout, len: u64) -> Option<u64> {
        debug_assert!(!l.edited, "the gap search reads the unedited index");
        let fits = |lo: u64, hi: u64| hi >= lo && hi - lo >= len;
        // Top-down: gaps between VMAs below MMAP_BASE, highest first.
        let mut top = MMAP_BASE;
        for v in l.base.starting_below(MMAP_BASE).rev() {
            let gap_lo = v.end.max(MMAP_MIN_ADDR);
            if fits(gap_lo, top) {
                return Some(top - len);
            }
            top = v.start;
        }
        if fits(MMAP_MIN_ADDR, top) {
            return Some(top - len);
        }
        // Bottom-up above MMAP_BASE.
        let mut lo = MMAP_BASE;
        for v in l.base.range(MMAP_BASE, u64::MAX) {
            if v.start >= lo && v.start - lo >= len {
                return Some(lo);
            }
            lo = lo.max(v.end);
        }
        fits(lo, TASK_SIZE).then_some(lo)
    }

    /// `munmap(addr, len)`.
    pub fn munmap(&self, addr: u64, len: u64) -> Result<()> {
        if addr % PAGE_SIZE != 0 || addr > TASK_SIZE || len > TASK_SIZE - addr {
            return Err(Errno::EINVAL);
        }
        let len = page_align(len).ok_or(Errno::EINVAL)?;
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        self.structural(|l| match l.unmap(addr, addr + len) {
            Ok(()) => (Ok(()), true),
            Err(e) => (Err(e), false),
        })
    }
}
