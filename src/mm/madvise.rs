//! `madvise`: `MADV_DONTNEED` (zapping pages without changing VMAs) and the advices of
//! trace v2 ([`Advice`]): `MADV_FREE`, `MADV_POPULATE_READ`/`_WRITE`, and the fork flags
//! (`MADV_DONTFORK`/`_DOFORK`, `MADV_WIPEONFORK`/`_KEEPONFORK`), which split and merge
//! VMAs like mprotect and which `fork` honours.

use super::{page_align, AddressSpace};
use crate::bitmap::ZapRule;
use crate::epoch;
use crate::errno::{Errno, Result};
use crate::linux::{PAGE_SHIFT, PAGE_SIZE};
use crate::sync::lock;
use crate::vma::{Vma, VmaMeta};

impl AddressSpace {
    /// `madvise(addr, len, MADV_DONTNEED)`: zaps the pages (no VMA changes). Over a hole
    /// every mapped part is still zapped and the call fails with ENOMEM, as in Linux.
    pub fn madvise_dontneed(&self, addr: u64, len: u64) -> Result<()> {
        let r = self.dontneed_inner(addr, len);
        self.note_indirect();
        r
    }

    fn dontneed_inner(&self, addr: u64, len: u64) -> Result<()> {
        let Some(end) = madvise_range(addr, len)? else {
            return Ok(());
        };
        let _ctl = lock(&self.control);
        let guard = epoch::pin();
        let idx = self.index(&guard);
        let mut cursor = addr;
        let mut hole = false;
        for v in idx.range(addr, end) {
            if v.start > cursor {
                hole = true;
            }
            let s = v.start.max(addr);
            let e = v.end.min(end);
            v.bitmap
                .zap_with(v.page_of(s), (e - s) >> PAGE_SHIFT, self.dontneed_rule(v));
            cursor = e;
        }
        if hole || cursor < end {
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }
}

impl AddressSpace {
    /// What `MADV_DONTNEED` does to `v`'s page-level soft-dirty state. Every mode but
    /// `precise` loses it with the page table entries. `precise` reports what changed the
    /// content: private anonymous pages (and, as trace v1 defines it, shared anonymous
    /// ones) read zero afterwards; a regular file's or memfd's shared page comes back
    /// unchanged; a private file mapping loses its private copies only.
    pub(crate) fn dontneed_rule(&self, v: &Vma) -> ZapRule {
        if !self.mode.is_precise() {
            return ZapRule::Clean;
        }
        match v.meta.file {
            Some(f) if f.named() && v.meta.flags.shared => ZapRule::Keep,
            Some(f) if f.named() => ZapRule::DirtyCopies,
            _ => ZapRule::Dirty,
        }
    }
}

/// madvise's argument checks: EINVAL for a misaligned start or a range that overflows;
/// `None` for an empty range (success, nothing done); else the page-aligned end.
fn madvise_range(addr: u64, len: u64) -> Result<Option<u64>> {
    if addr % PAGE_SIZE != 0 {
        return Err(Errno::EINVAL);
    }
    let len = page_align(len).ok_or(Errno::EINVAL)?;
    let end = addr.checked_add(len).ok_or(Errno::EINVAL)?;
    Ok((len != 0).then_some(end))
}

/// A `madvise` advice of trace v2 (besides `MADV_DONTNEED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Advice {
    /// `MADV_DONTNEED`
    DontNeed,
    /// `MADV_FREE`: nothing observable changes without memory pressure (the model has
    /// none); private anonymous memory only (EINVAL on a shared VMA)
    Free,
    /// `MADV_POPULATE_READ`: read faults over the range
    PopulateRead,
    /// `MADV_POPULATE_WRITE`: write faults over the range
    PopulateWrite,
    /// `MADV_DONTFORK`: set `VM_DONTCOPY`
    DontFork,
    /// `MADV_DOFORK`: clear `VM_DONTCOPY`
    DoFork,
    /// `MADV_WIPEONFORK`: set `VM_WIPEONFORK` (private anonymous memory only)
    WipeOnFork,
    /// `MADV_KEEPONFORK`: clear `VM_WIPEONFORK`
    KeepOnFork,
    /// `MADV_GUARD_INSTALL` (6.13+): the pages become guard markers (an access fails)
    GuardInstall,
    /// `MADV_GUARD_REMOVE`: guard markers become unpopulated pages
    GuardRemove,
}

impl Advice {
    /// Every advice, in the order the trace format lists them.
    pub const ALL: [Advice; 10] = [
        Advice::DontNeed,
        Advice::Free,
        Advice::PopulateRead,
        Advice::PopulateWrite,
        Advice::DontFork,
        Advice::DoFork,
        Advice::WipeOnFork,
        Advice::KeepOnFork,
        Advice::GuardInstall,
        Advice::GuardRemove,
    ];

    /// The trace format's word for it (`dontneed`, `populate_read`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Advice::DontNeed => "dontneed",
            Advice::Free => "free",
            Advice::PopulateRead => "populate_read",
            Advice::PopulateWrite => "populate_write",
            Advice::DontFork => "dontfork",
            Advice::DoFork => "dofork",
            Advice::WipeOnFork => "wipeonfork",
            Advice::KeepOnFork => "keeponfork",
            Advice::GuardInstall => "guard_install",
            Advice::GuardRemove => "guard_remove",
        }
    }

    /// The advice named `s`.
    pub fn from_name(s: &str) -> Option<Advice> {
        Advice::ALL.into_iter().find(|a| a.name() == s)
    }
}

impl AddressSpace {
    /// `madvise(addr, len, advice)` with the errors of Linux 6.18 (measured on 6.18.44 by
    /// a probe of every advice over private, shared, `PROT_NONE` and read-only VMAs and
    /// holes): misaligned `addr` or an overflowing range → EINVAL; `len == 0` → success.
    /// A hole in the range → ENOMEM after the advice was applied to the mapped parts
    /// (populate stops at the hole); a VMA the advice refuses → EINVAL at once, what came
    /// before it applied (`free` and `wipeonfork` on shared memory; `populate_read` on
    /// `PROT_NONE`, `populate_write` on memory without write permission).
    pub fn madvise(&self, addr: u64, len: u64, advice: Advice) -> Result<()> {
        if advice == Advice::DontNeed {
            return self.madvise_dontneed(addr, len);
        }
        // Even a failed advice may have applied to the VMAs before the failure.
        let r = self.madvise_inner(addr, len, advice);
        self.note_indirect();
        r
    }

    fn madvise_inner(&self, addr: u64, len: u64, advice: Advice) -> Result<()> {
        let Some(end) = madvise_range(addr, len)? else {
            return Ok(());
        };
        match advice {
            Advice::DontNeed => unreachable!("handled above"),
            Advice::Free => self.with_control(|| {
                let mut hole = false;
                let mut cursor = addr;
                let mut err = None;
                self.with_index(|idx| {
                    for v in idx.range(addr, end) {
                        hole |= v.start > cursor;
                        if v.meta.flags.shared || v.meta.file.is_some() {
                            err = Some(Errno::EINVAL);
                            return;
                        }
                        cursor = v.end.min(end);
                    }
                });
                match err {
                    Some(e) => Err(e),
                    None if hole || cursor < end => Err(Errno::ENOMEM),
                    None => Ok(()),
                }
            }),
            Advice::PopulateRead | Advice::PopulateWrite => {
                let write = advice == Advice::PopulateWrite;
                // faultin_page_range: VMA by VMA, stopping at the first hole (ENOMEM) or
                // the first VMA without the access (EINVAL).
                let segments: Vec<(u64, u64, bool, bool)> = self.with_index(|idx| {
                    idx.range(addr, end)
                        .map(|v| {
                            let ok = if write {
                                v.meta.flags.prot.write
                            } else {
                                v.meta.flags.prot.accessible()
                            };
                            // Where an access can fault inside the VMA: past the end of a
                            // file, or on a guard marker.
                            let sized = v.meta.file.is_some() || v.bitmap.may_have_guards();
                            (v.start.max(addr), v.end.min(end), ok, sized)
                        })
                        .collect()
                });
                let mut cursor = addr;
                for (s, e, ok, sized) in segments {
                    if s > cursor {
                        return Err(Errno::ENOMEM);
                    }
                    if !ok {
                        return Err(Errno::EINVAL);
                    }
                    let r = if write {
                        self.write(s, e - s)
                    } else {
                        self.read(s, e - s)
                    };
                    // A page past the end of a file (SIGBUS) or a guard marker
                    // (SIGSEGV): madvise_populate returns EFAULT. Otherwise a VMA changed under us (a racing
                    // munmap): as the kernel's next lookup would find, nothing is mapped
                    // there.
                    r.map_err(|e| {
                        if sized && e == Errno::EFAULT {
                            e
                        } else {
                            Errno::ENOMEM
                        }
                    })?;
                    cursor = e;
                }
                if cursor < end {
                    return Err(Errno::ENOMEM);
                }
                Ok(())
            }
            Advice::DontFork | Advice::DoFork | Advice::WipeOnFork | Advice::KeepOnFork => {
                self.madvise_flags(addr, end, advice)
            }
            Advice::GuardInstall | Advice::GuardRemove => {
                self.madvise_guard(addr, end, advice == Advice::GuardInstall)
            }
        }
    }

    /// `MADV_GUARD_INSTALL` / `MADV_GUARD_REMOVE` over `[addr, end)` (measured on
    /// 6.18.44): every VMA kind takes guards (private, shared, file, `PROT_NONE`); a hole
    /// gives ENOMEM after the mapped parts were done. Installing discards the pages as
    /// `dontneed` does and leaves markers (soft-dirty in `precise`, where the content
    /// changed; clean elsewhere: a marker has no soft-dirty bit); removing leaves the
    /// marked pages unpopulated (soft-dirty in `precise`) and other pages alone. No VMA
    /// changes, but installing gives a private VMA its anon_vma (`anon_vma_prepare`).
    fn madvise_guard(&self, addr: u64, end: u64, install: bool) -> Result<()> {
        let _ctl = lock(&self.control);
        let dirty = self.mode.is_precise();
        let mut cursor = addr;
        let mut hole = false;
        let mut err = None;
        self.with_index(|idx| {
            for v in idx.range(addr, end) {
                hole |= v.start > cursor;
                let s = v.start.max(addr);
                let e = v.end.min(end);
                let (first, n) = (v.page_of(s), (e - s) >> PAGE_SHIFT);
                if install {
                    // anon_vma_prepare, as a first write fault would (measured on
                    // 6.18.44: a guarded private VMA keeps VM_ACCOUNT through an mprotect
                    // that removes write, so it has an anon_vma). The control lock keeps
                    // structural operations, the only freezers of the cell, out.
                    if !v.meta.flags.shared && v.anon() == 0 {
                        let _ = v.assign_anon(self.anon_for_first_fault(idx, v));
                    }
                    if let Err(e) = v.bitmap.install_guard(first, n, dirty) {
                        // The model's memory limit, as the kernel's page tables would
                        // run out: what came before stays done.
                        err = Some(e);
                        return;
                    }
                } else {
                    v.bitmap.remove_guard(first, n, dirty);
                }
                cursor = e;
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        if hole || cursor < end {
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }

    /// The flag-changing advices: `madvise_update_vma` per VMA (split or merge as
    /// mprotect does, then `vm_flags_reset`, so a merged VMA takes the modified VMA's
    /// `VM_SOFTDIRTY` up to Linux 6.18.36).
    fn madvise_flags(&self, addr: u64, end: u64, advice: Advice) -> Result<()> {
        self.structural(|l| {
            l.load(addr, end);
            let mut cursor = addr;
            let mut hole = false;
            let mut changed = false;
            loop {
                let i = l.find_from(cursor);
                if i >= l.vmas.len() || l.vmas[i].start >= end {
                    break;
                }
                let v = &l.vmas[i];
                if v.start > cursor {
                    hole = true;
                    cursor = v.start;
                }
                let seg_end = v.end.min(end);
                let mut flags = v.meta.flags;
                match advice {
                    Advice::DontFork => flags.dontcopy = true,
                    Advice::DoFork => flags.dontcopy = false,
                    Advice::WipeOnFork => {
                        if v.meta.flags.shared || v.meta.file.is_some() {
                            return (Err(Errno::EINVAL), changed);
                        }
                        flags.wipeonfork = true;
                    }
                    Advice::KeepOnFork => flags.wipeonfork = false,
                    _ => unreachable!("not a flag advice"),
                }
                if flags != v.meta.flags {
                    let meta = VmaMeta { flags, ..v.meta };
                    if let Err(e) = l.modify(i, cursor, seg_end, meta) {
                        // madvise returns EAGAIN where a split fails for resources.
                        let e = if e == Errno::ENOMEM { Errno::EAGAIN } else { e };
                        return (Err(e), changed);
                    }
                    changed = true;
                }
                cursor = seg_end;
                if cursor >= end {
                    break;
                }
            }
            if hole || cursor < end {
                (Err(Errno::ENOMEM), changed)
            } else {
                (Ok(()), changed)
            }
        })
    }
}
