//! The tracker service: a registry of named address spaces.
//!
//! `dashmap` is the right tool here and only here: keyed lookups by name with moderate
//! churn (`space`, `fork`), never on the fault path. Lookups clone the `Arc` out
//! immediately, so no map guard is ever held across another call (dashmap can deadlock
//! when a shard guard is held while the same map is used again).

use crate::accounting::Accounting;
use crate::errno::{Errno, Result};
use crate::file::{page_span, FileKind, FileRef, Files, MAX_FILE_SIZE, MAX_RW_COUNT};
use crate::mm::AddressSpace;
use crate::mode::Mode;
use crate::shmem::SharedRun;
use crate::sync::Arc;
use dashmap::DashMap;

/// A registry of address spaces by name, all following one mode.
#[derive(Debug)]
pub struct Tracker {
    mode: Mode,
    spaces: DashMap<String, Arc<AddressSpace>>,
    /// shared by every space (and fork child): one machine's memory
    accounting: std::sync::Arc<Accounting>,
    /// shared by every space (and fork child): one machine's files
    files: std::sync::Arc<Files>,
}

impl Tracker {
    /// An empty registry whose spaces follow `mode`, with the default chunk limit.
    pub fn new(mode: Mode) -> Tracker {
        Tracker::with_accounting(mode, std::sync::Arc::default())
    }

    /// An empty registry whose spaces follow `mode` and share `accounting` (its chunk
    /// limit is the memory of all of them together).
    pub fn with_accounting(mode: Mode, accounting: std::sync::Arc<Accounting>) -> Tracker {
        Tracker {
            mode,
            spaces: DashMap::new(),
            accounting,
            files: std::sync::Arc::default(),
        }
    }

    /// The accounts every space of this tracker counts in.
    pub fn accounting(&self) -> &std::sync::Arc<Accounting> {
        &self.accounting
    }

    /// The mode of every space.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The space called `name`, created empty if it does not exist.
    pub fn space(&self, name: &str) -> Arc<AddressSpace> {
        if let Some(s) = self.spaces.get(name) {
            return s.value().clone();
        }
        self.spaces
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(AddressSpace::with_shared(
                    self.mode,
                    self.accounting.clone(),
                    self.files.clone(),
                ))
            })
            .value()
            .clone()
    }

    /// The space called `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<Arc<AddressSpace>> {
        self.spaces.get(name).map(|s| s.value().clone())
    }

    /// Forks `parent` into a new space `child`; EEXIST if `child` exists.
    pub fn fork(&self, parent: &str, child: &str) -> Result<Arc<AddressSpace>> {
        let p = self.get(parent).ok_or(Errno::ESRCH)?;
        if self.spaces.contains_key(child) {
            return Err(Errno::EEXIST);
        }
        let c = Arc::new(p.fork());
        match self.spaces.entry(child.to_string()) {
            dashmap::mapref::entry::Entry::Occupied(_) => Err(Errno::EEXIST),
            dashmap::mapref::entry::Entry::Vacant(v) => {
                v.insert(c.clone());
                Ok(c)
            }
        }
    }

    /// After a store by `from` to `[addr, addr + len)` (a write, a populating write):
    /// in `precise` mode, every other mapping of the shared memory pages it changed, in
    /// any space, reports them soft-dirty ([`crate::shmem`]). Nothing in the other modes.
    pub fn propagate_shared_store(&self, from: &AddressSpace, addr: u64, len: u64) {
        if !self.mode.is_precise() {
            return;
        }
        let runs = from.shared_runs_of_store(addr, len);
        if runs.is_empty() {
            return;
        }
        for e in self.spaces.iter() {
            let same = std::ptr::eq(Arc::as_ptr(e.value()), from);
            for r in &runs {
                e.value().mark_shared_run(r, same);
            }
        }
    }

    /// The files every space of this tracker can map.
    pub fn files(&self) -> &std::sync::Arc<Files> {
        &self.files
    }

    /// `file NAME SIZE` / `memfd NAME SIZE` (trace v2): creates the file `name` of `kind`
    /// (a regular file or a memfd) if it does not exist, then sets its size as
    /// `ftruncate` does ([`Self::set_file_size`]). EINVAL if `name` is a file of the
    /// other kind, or for a size `ftruncate` refuses (the file is created all the same,
    /// as `open(O_CREAT)` before a failing `ftruncate` leaves it).
    pub fn file(&self, name: &str, kind: FileKind, size: u64) -> Result<FileRef> {
        let f = self
            .files
            .create(name, kind, || self.accounting.next_id())?;
        self.set_file_size(f, size)?;
        Ok(f)
    }

    /// `ftruncate(f, size)`: a shrink removes the pages past the new end from every
    /// mapping of the file in every space (private copies included, as truncation does);
    /// in `precise` the pages whose content the change may alter report soft-dirty
    /// ([`AddressSpace::file_changed`]). EINVAL for a size above
    /// [`MAX_FILE_SIZE`], EBADF for a file of another tracker.
    pub fn set_file_size(&self, f: FileRef, size: u64) -> Result<()> {
        let old = self.files.set_size(f, size)?;
        if old != size {
            for sp in self.all_spaces() {
                sp.file_changed(f, old, size);
            }
        }
        Ok(())
    }

    /// `pwrite(f, LEN bytes, offset)`: changes the content of the file's pages in that
    /// range through no mapping (so no page table entry sees it: nothing changes in any
    /// mode but `precise`, where every mapping that shows those pages reports them
    /// soft-dirty), extending the file where it ends before `offset + len`. Returns the
    /// bytes written: at most [`MAX_RW_COUNT`], as one
    /// `write(2)`. Errors as `vfs_write`: EINVAL for an offset or an end beyond
    /// `i64::MAX`; EFBIG for a non-empty write at or past the file size limit.
    pub fn fwrite(&self, f: FileRef, offset: u64, len: u64) -> Result<u64> {
        // No size: not a file of this tracker (or shared anonymous memory's object).
        let size = self.files.size(f).ok_or(Errno::EBADF)?;
        // rw_verify_area: the position and its end as a signed loff_t.
        if offset > MAX_FILE_SIZE || offset.checked_add(len).is_none_or(|e| e > MAX_FILE_SIZE) {
            return Err(Errno::EINVAL);
        }
        let len = len.min(MAX_RW_COUNT);
        if len == 0 {
            return Ok(0);
        }
        // generic_write_checks with s_maxbytes = MAX_LFS_FILESIZE.
        if offset >= MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        let len = len.min(MAX_FILE_SIZE - offset);
        let end = offset + len;
        if end > size {
            self.set_file_size(f, end)?;
        }
        if self.mode.is_precise() {
            let (first, last) = page_span(offset, len);
            let run = SharedRun {
                file: f,
                pgoff: first,
                count: last - first,
                addr: None,
            };
            for sp in self.all_spaces() {
                sp.mark_shared_run(&run, false);
            }
        }
        Ok(len)
    }

    /// Every space, cloned out of the registry (no map guard is held while they are used).
    fn all_spaces(&self) -> Vec<Arc<AddressSpace>> {
        self.spaces.iter().map(|e| e.value().clone()).collect()
    }

    /// Names of all spaces, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.spaces.iter().map(|e| e.key().clone()).collect();
        v.sort();
        v
    }
}
