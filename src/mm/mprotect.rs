//! `mprotect`: flag changes that split and merge VMAs, and VM_ACCOUNT.

use super::{page_align, AddressSpace};
use crate::errno::{Errno, Result};
use crate::linux::PAGE_SIZE;
use crate::prot::Prot;
use crate::vma::VmaMeta;

impl AddressSpace {
    /// `mprotect(addr, len, prot)`. Over a hole it fails with ENOMEM after changing the
    /// VMAs before the hole, as Linux does.
    pub fn mprotect(&self, addr: u64, len: u64, prot: Prot) -> Result<()> {
        if addr % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        if len == 0 {
            return Ok(());
        }
        let len = page_align(len).ok_or(Errno::ENOMEM)?;
        let end = addr.checked_add(len).ok_or(Errno::ENOMEM)?;
        if end <= addr {
            return Err(Errno::ENOMEM);
        }
        self.structural(|l| {
            l.load(addr, end);
            let Some(mut i) = l.find(addr) else {
                return (Err(Errno::ENOMEM), false);
            };
            let mut cursor = addr;
            let mut changed = false;
            loop {
                let v = &l.vmas[i];
                if v.start > cursor {
                    return (Err(Errno::ENOMEM), changed);
                }
                let tmp = v.end.min(end);
                let old = v.meta.flags;
                let mut new = old;
                new.prot = prot;
                if prot.write {
                    if !(old.account || old.prot.write || old.shared || old.noreserve) {
                        new.account = true;
                    }
                } else if old.account && v.meta.file.is_none() && v.anon == 0 {
                    // vma_is_anonymous: a private file mapping keeps VM_ACCOUNT (measured
                    // on 6.18: its rw → r round trip leaves three VMAs).
                    new.account = false;
                }
                if new != old {
                    let meta = VmaMeta {
                        flags: new,
                        ..v.meta
                    };
                    if let Err(e) = l.modify(i, cursor, tmp, meta) {
                        return (Err(e), changed);
                    }
                    changed = true;
                }
                cursor = tmp;
                if cursor >= end {
                    return (Ok(()), changed);
                }
                match l.find(cursor).or_else(|| {
                    let j = l.find_from(cursor);
                    (j < l.vmas.len()).then_some(j)
                }) {
                    Some(j) => i = j,
                    None => return (Err(Errno::ENOMEM), changed),
                }
            }
        })
    }
}
