//! [`Op`]: one structural operation on an address space (mmap, munmap, mprotect, mremap,
//! madvise) with concrete addresses — what a trace command becomes once its addresses are
//! resolved (`trace::lower`), and what `softdirty run` and `softdirty compare` apply to
//! every space they drive.

use crate::errno::Errno;
use crate::mm::{AddressSpace, Placement};
use crate::prot::Prot;

/// One structural operation with concrete addresses, applied identically to every
/// address space of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `mmap` of anonymous memory.
    Mmap {
        /// address
        addr: u64,
        /// length in bytes
        len: u64,
        /// protection
        prot: Prot,
        /// MAP_SHARED
        shared: bool,
        /// placement
        placement: Placement,
    },
    /// `munmap`
    Munmap {
        /// address
        addr: u64,
        /// length in bytes
        len: u64,
    },
    /// `mprotect`
    Mprotect {
        /// address
        addr: u64,
        /// length in bytes
        len: u64,
        /// new protection
        prot: Prot,
    },
    /// `mremap`
    Mremap {
        /// old address
        addr: u64,
        /// old length in bytes
        old_len: u64,
        /// new length in bytes
        new_len: u64,
        /// MREMAP_MAYMOVE
        maymove: bool,
        /// MREMAP_FIXED destination
        fixed: Option<u64>,
    },
    /// `madvise(MADV_DONTNEED)`
    DontNeed {
        /// address
        addr: u64,
        /// length in bytes
        len: u64,
    },
}

impl Op {
    /// Applies the operation; returns the resulting address (mmap, mremap) or 0.
    pub fn apply(&self, mm: &AddressSpace) -> Result<u64, Errno> {
        match *self {
            Op::Mmap {
                addr,
                len,
                prot,
                shared,
                placement,
            } => mm.mmap(addr, len, prot, shared, placement),
            Op::Munmap { addr, len } => mm.munmap(addr, len).map(|()| 0),
            Op::Mprotect { addr, len, prot } => mm.mprotect(addr, len, prot).map(|()| 0),
            Op::Mremap {
                addr,
                old_len,
                new_len,
                maymove,
                fixed,
            } => mm.mremap(addr, old_len, new_len, maymove, fixed),
            Op::DontNeed { addr, len } => mm.madvise_dontneed(addr, len).map(|()| 0),
        }
    }
}
