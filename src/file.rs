//! Files (trace format v2): the regular files and memfds a process maps, and the shmem
//! object behind shared anonymous memory.
//!
//! A VMA that maps a file records *which* file and where in it ([`FileRef`] in
//! [`VmaMeta::file`](crate::vma::VmaMeta::file), the page offset in `pgoff`); the file's
//! size lives here, in the [`Files`] table that every space of a
//! [`Tracker`](crate::tracker::Tracker) shares (fork children included), because a file
//! outlives and is shared by its mappings. Nothing else about a file is stored: its pages'
//! content is not modelled, only which mappings show it, so a 1 TiB file mapping costs what
//! a 1 TiB anonymous mapping costs.
//!
//! What the file's size decides ([`Files::size`]): an access to a mapped page wholly past
//! the end of the file fails with EFAULT (the kernel's SIGBUS). Size changes and
//! `write(2)`s reach every mapping of the file, in every space, so they are the tracker's
//! operations ([`Tracker::set_file_size`](crate::tracker::Tracker::set_file_size),
//! [`Tracker::fwrite`](crate::tracker::Tracker::fwrite)); what they do to one space's
//! mappings is [`AddressSpace::file_changed`](crate::mm::AddressSpace::file_changed).

use crate::errno::{Errno, Result};
use crate::linux::{PAGE_SHIFT, PAGE_SIZE};
use crate::sync::{lock, Arc, AtomicU64, Mutex, Ordering};
use std::collections::HashMap;

/// `MAX_LFS_FILESIZE` on 64-bit Linux: the largest file size (`s_maxbytes` of tmpfs, and
/// the limit `file_mmap_ok` checks a mapping's offset against).
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

/// `MAX_RW_COUNT`: the most bytes one `write(2)` transfers (a longer one is short).
pub const MAX_RW_COUNT: u64 = (i32::MAX as u64) & !(PAGE_SIZE - 1);

/// What a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// The shmem object of one shared anonymous mapping (`shmem_zero_setup`): unnamed,
    /// never in the [`Files`] table, of the mapping's length (fixed: an mremap growth
    /// maps pages past its end, whose access is SIGBUS).
    Anonymous,
    /// A regular file (trace `file NAME SIZE`).
    Regular,
    /// A memfd: a shmem file (trace `memfd NAME SIZE`).
    Memfd,
}

/// The file a VMA maps: its identity and kind (compared by merges: only VMAs of the same
/// file merge).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileRef {
    /// identity, unique within the tracker's [`Accounting`](crate::accounting::Accounting)
    pub id: u64,
    /// kind
    pub kind: FileKind,
    /// The size in bytes of an [`FileKind::Anonymous`] object, which never changes; 0 for
    /// a named file (whose size is in the [`Files`] table).
    pub anon_size: u64,
}

impl FileRef {
    /// Is it a file of the trace (a regular file or a memfd, not the object of shared
    /// anonymous memory, whose pages the trace format counts as anonymous)?
    pub fn named(self) -> bool {
        self.kind != FileKind::Anonymous
    }
}

/// One sized file.
#[derive(Debug)]
struct Inode {
    kind: FileKind,
    /// `i_size` in bytes
    size: AtomicU64,
}

/// The files of a tracker, by name and by identity.
#[derive(Debug, Default)]
pub struct Files {
    /// name → identity (the trace's names; the control path only)
    names: Mutex<HashMap<String, FileRef>>,
    /// identity → inode (read by the fault path of file VMAs)
    inodes: dashmap::DashMap<u64, Arc<Inode>>,
}

impl Files {
    /// The file called `name`, if it was created.
    pub fn lookup(&self, name: &str) -> Option<FileRef> {
        lock(&self.names).get(name).copied()
    }

    /// Creates the file `name` of `kind` with size 0 (the identity from `new_id`), or
    /// returns the existing one; EINVAL if it exists with the other kind.
    pub(crate) fn create(
        &self,
        name: &str,
        kind: FileKind,
        new_id: impl FnOnce() -> u64,
    ) -> Result<FileRef> {
        if kind == FileKind::Anonymous {
            return Err(Errno::EINVAL);
        }
        let mut names = lock(&self.names);
        if let Some(f) = names.get(name) {
            return if f.kind == kind {
                Ok(*f)
            } else {
                Err(Errno::EINVAL)
            };
        }
        let f = FileRef {
            id: new_id(),
            kind,
            anon_size: 0,
        };
        self.inodes.insert(
            f.id,
            Arc::new(Inode {
                kind,
                size: AtomicU64::new(0),
            }),
        );
        names.insert(name.to_string(), f);
        Ok(f)
    }

    /// Is `f` a file of this table?
    pub fn contains(&self, f: FileRef) -> bool {
        self.inodes.get(&f.id).is_some_and(|i| i.kind == f.kind)
    }

    /// The size of `f` in bytes: the object of shared anonymous memory carries its own;
    /// `None` for a named file not in this table.
    pub fn size(&self, f: FileRef) -> Option<u64> {
        if !f.named() {
            return Some(f.anon_size);
        }
        // Acquire: pairs with the Release store of `set_size`; a fault that sees a new
        // size sees the table state that came with it (nothing else is published with
        // it today; the ordering against the zap of a shrink is the zap's own protocol).
        self.inodes
            .get(&f.id)
            .map(|i| i.size.load(Ordering::Acquire))
    }

    /// Sets the size of `f`; returns the old one. EINVAL for a size `ftruncate` refuses
    /// (one that is negative as an `off_t`), EBADF for a file of another table.
    pub(crate) fn set_size(&self, f: FileRef, size: u64) -> Result<u64> {
        if size > MAX_FILE_SIZE {
            return Err(Errno::EINVAL);
        }
        let i = self
            .inodes
            .get(&f.id)
            .map(|i| i.clone())
            .ok_or(Errno::EBADF)?;
        // Release: pairs with `size`'s Acquire load.
        Ok(i.size.swap(size, Ordering::AcqRel))
    }

    /// Pages of a file of `size` bytes that an access may reach (a partial last page
    /// counts).
    pub fn pages_of(size: u64) -> u64 {
        size.div_ceil(PAGE_SIZE)
    }
}

/// The file pages `[first, end)` that bytes `[offset, offset + len)` touch.
pub fn page_span(offset: u64, len: u64) -> (u64, u64) {
    let first = offset >> PAGE_SHIFT;
    let end = offset.saturating_add(len).div_ceil(PAGE_SIZE);
    (first, end)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn create_lookup_and_sizes() {
        let files = Files::default();
        let mut next = 10;
        let mut id = || {
            next += 1;
            next
        };
        let f = files.create("a", FileKind::Regular, &mut id).unwrap();
        assert_eq!(files.create("a", FileKind::Regular, &mut id).unwrap(), f);
        assert_eq!(
            files.create("a", FileKind::Memfd, &mut id),
            Err(Errno::EINVAL)
        );
        assert_eq!(files.lookup("a"), Some(f));
        assert_eq!(files.lookup("b"), None);
        assert_eq!(files.size(f), Some(0));
        assert_eq!(files.set_size(f, 8192), Ok(0));
        assert_eq!(files.size(f), Some(8192));
        assert_eq!(files.set_size(f, MAX_FILE_SIZE + 1), Err(Errno::EINVAL));
        let anon = FileRef {
            id: 99,
            kind: FileKind::Anonymous,
            anon_size: 8192,
        };
        assert_eq!(files.size(anon), Some(8192));
        assert!(!files.contains(anon));
        assert_eq!(Files::pages_of(4097), 2);
        assert_eq!(page_span(4095, 2), (0, 2));
        assert_eq!(page_span(4096, 0), (1, 1));
    }
}
