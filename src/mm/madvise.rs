//! `madvise(MADV_DONTNEED)`: zapping pages without changing VMAs.

use super::{page_align, AddressSpace};
use crate::epoch;
use crate::errno::{Errno, Result};
use crate::linux::{PAGE_SHIFT, PAGE_SIZE};
use crate::sync::lock;

impl AddressSpace {
    /// `madvise(addr, len, MADV_DONTNEED)`: zaps the pages (no VMA changes). Over a hole
    /// every mapped part is still zapped and the call fails with ENOMEM, as in Linux.
    pub fn madvise_dontneed(&self, addr: u64, len: u64) -> Result<()> {
        if addr % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        let len = page_align(len).ok_or(Errno::EINVAL)?;
        let end = addr.checked_add(len).ok_or(Errno::EINVAL)?;
        if len == 0 {
            return Ok(());
        }
        let _ctl = lock(&self.control);
        let guard = epoch::pin();
        let idx = self.index(&guard);
        let mut cursor = addr;
        let mut hole = false;
        let dirty = self.mode.is_precise();
        for v in idx.range(addr, end) {
            if v.start > cursor {
                hole = true;
            }
            let s = v.start.max(addr);
            let e = v.end.min(end);
            v.bitmap.zap(v.page_of(s), (e - s) >> PAGE_SHIFT, dirty);
            cursor = e;
        }
        if hole || cursor < end {
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }
}
