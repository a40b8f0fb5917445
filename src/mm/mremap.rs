//! `mremap`: shrink, grow in place, move (`copy_vma`), and the 6.17+ multi-VMA move.

use super::layout::{cut_pieces, move_pieces, Layout, NewRange, Piece, Src, WVma};
use super::{page_align, AddressSpace};
use crate::bitmap::CopyRule;
use crate::errno::{Errno, Result};
use crate::linux::{MAX_MAP_COUNT, PAGE_SHIFT, PAGE_SIZE, TASK_SIZE};
use crate::regions::NonSdRegions;

impl AddressSpace {
    /// `mremap(addr, old_len, new_len, flags, new_addr)`. Returns the new address.
    pub fn mremap(
        &self,
        addr: u64,
        old_len: u64,
        new_len: u64,
        maymove: bool,
        fixed: Option<u64>,
    ) -> Result<u64> {
        if addr % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        let old_len = page_align(old_len).ok_or(Errno::EINVAL)?;
        let new_len = page_align(new_len).unwrap_or(0);
        if new_len == 0 || new_len > TASK_SIZE {
            return Err(Errno::EINVAL);
        }
        if let Some(na) = fixed {
            if na > TASK_SIZE - new_len || na % PAGE_SIZE != 0 || !maymove {
                return Err(Errno::EINVAL);
            }
            let old_end = addr.saturating_add(old_len);
            if addr < na + new_len && na < old_end {
                return Err(Errno::EINVAL);
            }
        }
        let precise = self.mode.is_precise();
        let move_rule = if precise {
            CopyRule::AllDirty
        } else {
            CopyRule::DirtyPopulated
        };
        self.structural(|l| {
            if let Some(na) = fixed {
                if old_len == new_len {
                    return Self::remap_move(l, addr, old_len, na, move_rule);
                }
            }
            l.load(addr, addr.saturating_add(old_len));
            let Some(i) = l.find(addr) else {
                return (Err(Errno::EFAULT), false);
            };
            if old_len == 0 {
                // Duplicating a shared mapping (old_len == 0) is not modelled; for private
                // mappings Linux refuses it with EINVAL too.
                return (Err(Errno::EINVAL), false);
            }
            let v_end = l.vmas[i].end;
            if fixed.is_none() && new_len <= old_len {
                if new_len < old_len {
                    // Shrink: unmap the tail, which may cross VMA boundaries in 6.18.
                    let tail_end = addr.saturating_add(old_len).min(TASK_SIZE);
                    if let Err(e) = l.unmap(addr + new_len, tail_end) {
                        return (Err(e), false);
                    }
                    return (Ok(addr), true);
                }
                return (Ok(addr), false);
            }
            if let Some(na) = fixed {
                // check_prep_vma: the (possibly shrunk) source must lie in one VMA, checked
                // before anything is unmapped.
                if old_len.min(new_len) > v_end - addr {
                    return (Err(Errno::EFAULT), false);
                }
                // mremap_to: the destination is unmapped first.
                if let Err(e) = l.unmap(na, na + new_len) {
                    return (Err(e), false);
                }
                let mut old_len = old_len;
                if new_len < old_len {
                    if let Err(e) = l.unmap(addr + new_len, addr + old_len) {
                        return (Err(e), true);
                    }
                    old_len = new_len;
                }
                let Some(i) = l.find(addr) else {
                    return (Err(Errno::EFAULT), true);
                };
                if old_len > l.vmas[i].end - addr {
                    return (Err(Errno::EFAULT), true);
                }
                return match Self::move_range(l, addr, old_len, na, new_len, move_rule) {
                    Ok(()) => (Ok(na), true),
                    Err(e) => (Err(e), true),
                };
            }
            // Grow.
            if old_len > v_end - addr {
                return (Err(Errno::EFAULT), false);
            }
            let delta = new_len - old_len;
            if v_end - addr == old_len
                && v_end.checked_add(delta).is_some_and(|e| e <= TASK_SIZE)
                && l.base.range(v_end, v_end + delta).next().is_none()
            {
                // In place: vma_merge_extend, a new-range merge with the VMA as prev. The
                // extension is unpopulated and the VMA keeps its flags; a compatible next
                // VMA the extension reaches is swallowed too (checked on 6.18.44).
                let v = &l.vmas[i];
                let mut meta = v.meta;
                meta.pgoff = v.meta.pgoff + v.pages();
                let anon = v.anon;
                let fresh = vec![Piece {
                    start: v_end,
                    end: v_end + delta,
                    src: Src::Fresh { dirty: precise },
                }];
                l.merge_new_range(
                    v_end,
                    v_end + delta,
                    meta,
                    anon,
                    fresh,
                    NonSdRegions::new(),
                    NewRange::VmaMerge,
                );
                return (Ok(addr), true);
            }
            if !maymove {
                return (Err(Errno::ENOMEM), false);
            }
            let Some(na) = Self::unmapped_area(l, new_len) else {
                return (Err(Errno::ENOMEM), false);
            };
            match Self::move_range(l, addr, old_len, na, new_len, move_rule) {
                Ok(()) => (Ok(na), true),
                Err(e) => (Err(e), false),
            }
        })
    }

    /// `remap_move` (Linux 6.17+): a same-size MREMAP_FIXED move of every VMA in
    /// `[addr, addr + len)`, gaps preserved. A failure part-way leaves a partial move.
    fn remap_move(
        l: &mut Layout,
        addr: u64,
        len: u64,
        na: u64,
        rule: CopyRule,
    ) -> (Result<u64>, bool) {
        let end = addr.saturating_add(len);
        l.load(addr, end);
        if l.find(addr).is_none() {
            return (Err(Errno::EFAULT), false);
        }
        let parts: Vec<(u64, u64)> = {
            let i = l.find_from(addr);
            l.vmas[i..]
                .iter()
                .take_while(|v| v.start < end)
                .map(|v| (v.start.max(addr), v.end.min(end)))
                .collect()
        };
        let mut moved = false;
        for (s, e) in parts {
            let target = na + (s - addr);
            if let Err(err) = l.unmap(target, target + (e - s)) {
                return (Err(err), moved);
            }
            if let Err(err) = Self::move_range(l, s, e - s, target, e - s, rule) {
                return (Err(err), moved);
            }
            moved = true;
        }
        (Ok(na), true)
    }

    /// `move_vma`: `[addr, addr + old_len)` (inside one VMA) to a free `[na, na + new_len)`:
    /// `copy_vma` (merging at the destination), then unmap the source.
    fn move_range(
        l: &mut Layout,
        addr: u64,
        old_len: u64,
        na: u64,
        new_len: u64,
        rule: CopyRule,
    ) -> Result<()> {
        if l.count() >= MAX_MAP_COUNT - 3 {
            return Err(Errno::ENOMEM);
        }
        let i = l.find(addr).ok_or(Errno::EFAULT)?;
        let v: WVma = l.vmas[i].clone();
        let mut pieces = move_pieces(cut_pieces(&v.pieces, addr, addr + old_len), na, rule);
        if new_len > old_len {
            pieces.push(Piece {
                start: na + old_len,
                end: na + new_len,
                src: Src::Fresh {
                    dirty: rule == CopyRule::AllDirty,
                },
            });
        }
        let mut meta = v.meta;
        // copy_vma: only an anonymous VMA (no file: shared anonymous memory has its
        // shmem file) without an anon_vma takes the destination's address as pgoff.
        meta.pgoff = if v.meta.file.is_none() && v.anon == 0 {
            na >> PAGE_SHIFT
        } else {
            v.meta.pgoff + ((addr - v.start) >> PAGE_SHIFT)
        };
        // copy_vma: merged at the destination (`vma_merge`), or a new VMA with the whole
        // source VMA's region list cloned verbatim, old addresses included (`nsdr_clone`).
        l.merge_new_range(
            na,
            na + new_len,
            meta,
            v.anon,
            pieces,
            v.nsdr,
            NewRange::VmaMerge,
        );
        l.unmap(addr, addr + old_len)
    }
}
