//! The seam: "a memory you can drive". [`Backend`] is what a trace, the fuzzer, the
//! comparison and the simulator run against: the model ([`ModelBackend`], any mode), on
//! Linux with the `kernel` feature real memory of the running process
//! (`crate::kernel::KernelBackend`), and the tools' independent reference model.
//!
//! [`Command`] is the one vocabulary of operations with concrete addresses that every
//! generator of operations produces (a trace once lowered, the fuzzer, `softdirty
//! compare`'s workloads, the proptests) and [`Backend::perform`] the one entry that runs
//! one; [`Outcome`] is what it returns. Its structural part, [`Op`] (mmap, munmap,
//! mprotect, mremap, madvise), is what `softdirty run`'s simulator applies straight to an
//! [`AddressSpace`] ([`Op::apply`]). [`open`] builds the backend a [`BackendChoice`] names.

use std::ops::Range;

use crate::errno::Errno;
use crate::file::{FileKind, FileRef};
use crate::linux::PAGE_SIZE;
use crate::mm::{self, AddressSpace, Placement};
use crate::mode::Mode;
use crate::prot::Prot;
use crate::scan::{ScanArgs, ScanResult};
use crate::sync::Arc;
use crate::tracker::Tracker;

/// One structural operation with concrete addresses: what a trace command becomes once its
/// addresses are resolved, and what `softdirty run` and `compare` apply to every space
/// they drive.
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
        /// MAP_NORESERVE, MAP_POPULATE (trace v2)
        opts: mm::MapOpts,
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
    /// `madvise` with an advice of trace v2 (`Advice::DontNeed` is [`Op::DontNeed`])
    Madvise {
        /// address
        addr: u64,
        /// length in bytes
        len: u64,
        /// the advice
        advice: mm::Advice,
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
                opts,
            } => mm.mmap_with(
                addr,
                len,
                prot,
                mm::Sharing::from_flag(shared),
                placement,
                opts,
            ),
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
            Op::Madvise { addr, len, advice } => mm.madvise(addr, len, advice).map(|()| 0),
        }
    }
}

/// One operation a [`Backend`] performs, addresses resolved: the one vocabulary of the
/// replayer, the fuzzer, the comparison and the proptests (the trace renderer,
/// `softdirty_trace::render`, writes any of them as a trace line the parser reads back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `space NAME`: make `NAME` the current space (created empty if new).
    Space(String),
    /// `fork CHILD`: fork the current space into a new space `CHILD`.
    Fork(String),
    /// A structural operation (mmap, munmap, mprotect, mremap, madvise).
    Op(Op),
    /// A store to every page overlapping `[addr, addr + len)`.
    Write {
        /// address
        addr: u64,
        /// length in bytes
        len: u64,
    },
    /// A load from every page overlapping `[addr, addr + len)`.
    Read {
        /// address
        addr: u64,
        /// length in bytes
        len: u64,
    },
    /// A write of the value (as written, parsed as the kernel parses it) to clear_refs.
    ClearRefs(String),
    /// Read the pagemap entries of `pages` pages from the page-aligned `start`. `perform`
    /// collects them; a caller of long ranges streams them with [`Backend::pagemap`].
    Pagemap {
        /// first page
        start: u64,
        /// number of pages
        pages: u64,
    },
    /// PAGEMAP_SCAN.
    Scan(ScanArgs),
    /// The smaps `VmFlags` line of the VMA containing the address.
    Smaps(u64),
    /// `brk_start ADDR` (trace v2): the start of the heap and the break.
    BrkStart(u64),
    /// `brk ADDR` (trace v2): brk(2).
    Brk(u64),
    /// `file NAME SIZE` / `memfd NAME SIZE` (trace v2): create the file if it does not
    /// exist, then set its size.
    File {
        /// the trace's name of the file
        name: String,
        /// a memfd (shmem) rather than a regular file
        memfd: bool,
        /// the size in bytes
        size: u64,
    },
    /// `fwrite NAME OFFSET LEN` (trace v2): write(2) to the file, through no mapping.
    Fwrite {
        /// the file
        name: String,
        /// byte offset
        offset: u64,
        /// bytes
        len: u64,
    },
    /// `mmap ... file NAME OFFSET` (trace v2): a file mapping.
    MmapFile(FileMapping),
}

/// The arguments of a file mapping ([`Command::MmapFile`]): those of [`Op::Mmap`] plus the
/// file, by its trace name, and the byte offset in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMapping {
    /// address (a hint unless `placement` says otherwise)
    pub addr: u64,
    /// length in bytes
    pub len: u64,
    /// protection
    pub prot: Prot,
    /// MAP_SHARED
    pub shared: bool,
    /// placement
    pub placement: Placement,
    /// MAP_NORESERVE, MAP_POPULATE, MAP_GROWSDOWN (its `file` is `None`: the file is
    /// named by `name`)
    pub opts: mm::MapOpts,
    /// the file's trace name
    pub name: String,
    /// byte offset in the file
    pub offset: u64,
}

impl From<Op> for Command {
    fn from(op: Op) -> Command {
        Command::Op(op)
    }
}

impl Command {
    /// An `mmap`: of the file `(name, offset)` ([`Command::MmapFile`]), or anonymous
    /// ([`Op::Mmap`]) — the one place the trace language and the recorder build either.
    #[allow(clippy::too_many_arguments)] // mmap's own arguments
    pub fn mmap(
        addr: u64,
        len: u64,
        prot: Prot,
        shared: bool,
        placement: Placement,
        opts: mm::MapOpts,
        file: Option<(String, u64)>,
    ) -> Command {
        match file {
            Some((name, offset)) => Command::MmapFile(FileMapping {
                addr,
                len,
                prot,
                shared,
                placement,
                opts,
                name,
                offset,
            }),
            None => Command::Op(Op::Mmap {
                addr,
                len,
                prot,
                shared,
                placement,
                opts,
            }),
        }
    }
}

/// What a successful [`Command`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done; nothing to return (space, fork, munmap, mprotect, madvise, write, read,
    /// clear_refs).
    Done,
    /// The address of the mapping (mmap, mremap).
    Addr(u64),
    /// `(address, entry)` per page (pagemap; PFN bits 0).
    Pagemap(Vec<(u64, u64)>),
    /// What PAGEMAP_SCAN returned.
    Scan(ScanResult),
    /// The smaps `VmFlags` line; `None` if no VMA contains the address.
    Smaps(Option<String>),
}

impl Outcome {
    /// The address of an [`Outcome::Addr`], else 0.
    pub fn addr(&self) -> u64 {
        match self {
            Outcome::Addr(a) => *a,
            _ => 0,
        }
    }
}

/// The outcome of an operation on a backend: `Ok(Ok(v))` it succeeded, `Ok(Err(e))` it
/// failed with a Linux error number, `Err(msg)` it could not run at all (the backend
/// cannot perform it, or refuses it; the message says why).
pub type OpResult<T> = Result<Result<T, Errno>, String>;

/// Why an observation has no value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unobservable {
    /// The backend cannot observe this by design (the expectation is skipped); the
    /// string says what and why.
    Skip(String),
    /// The observation failed (an I/O error reading /proc, a refused range).
    Broken(String),
}

/// Which flavour of the kernel backend (the spec's "Kernel backend" section).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelFlavour {
    /// Real soft-dirty (CONFIG_MEM_SOFT_DIRTY): clear_refs, pagemap bit 55,
    /// PAGE_IS_SOFT_DIRTY. What `legacy` mode must reproduce.
    SoftDirty,
    /// userfaultfd async write-protect: `softdirty` is PAGE_IS_WRITTEN. What `precise`
    /// mode must reproduce.
    Uffd,
}

impl KernelFlavour {
    /// `softdirty` or `uffd`, as `--backend kernel=NAME` spells it.
    pub const fn name(self) -> &'static str {
        match self {
            KernelFlavour::SoftDirty => "softdirty",
            KernelFlavour::Uffd => "uffd",
        }
    }
}

/// The backend a replay runs against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// The model, in the trace's mode (the default).
    #[default]
    Model,
    /// Real memory of the replaying process; `None` detects the flavour (soft-dirty if
    /// the kernel has it, else uffd).
    Kernel(Option<KernelFlavour>),
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "model" => Ok(BackendChoice::Model),
            "kernel" => Ok(BackendChoice::Kernel(None)),
            "kernel=softdirty" => Ok(BackendChoice::Kernel(Some(KernelFlavour::SoftDirty))),
            "kernel=uffd" => Ok(BackendChoice::Kernel(Some(KernelFlavour::Uffd))),
            _ => Err(format!(
                "unknown backend `{s}` (expected model, kernel, kernel=softdirty or kernel=uffd)"
            )),
        }
    }
}

/// What a trace runs against: the model or real memory. Addresses are resolved (`$name`
/// bound) by the replayer; every operation has the semantics the trace format gives it.
pub trait Backend {
    /// A short name for messages (`model`, `kernel=uffd`).
    fn name(&self) -> String;
    /// `space NAME`.
    fn space(&mut self, name: &str) -> Result<(), String>;
    /// `fork CHILD` of the current space.
    fn fork(&mut self, child: &str) -> OpResult<()>;
    /// `mmap`; returns the address of the mapping.
    fn mmap(
        &mut self,
        addr: u64,
        len: u64,
        prot: Prot,
        shared: bool,
        placement: mm::Placement,
    ) -> OpResult<u64>;
    /// `munmap`.
    fn munmap(&mut self, addr: u64, len: u64) -> OpResult<()>;
    /// `mprotect`.
    fn mprotect(&mut self, addr: u64, len: u64, prot: Prot) -> OpResult<()>;
    /// `mremap`; returns the new address.
    fn mremap(
        &mut self,
        addr: u64,
        old_len: u64,
        new_len: u64,
        maymove: bool,
        fixed: Option<u64>,
    ) -> OpResult<u64>;
    /// `madvise(MADV_DONTNEED)`.
    fn madvise_dontneed(&mut self, addr: u64, len: u64) -> OpResult<()>;
    /// `madvise` with any advice (trace v2). By default `dontneed` only; the backend
    /// cannot run the others.
    fn madvise(&mut self, addr: u64, len: u64, advice: mm::Advice) -> OpResult<()> {
        if advice == mm::Advice::DontNeed {
            return self.madvise_dontneed(addr, len);
        }
        Err(format!(
            "{}: madvise {} is not supported on this backend",
            self.name(),
            advice.name()
        ))
    }
    /// `mmap` with the v2 flags (`noreserve`, `populate`). By default only without them.
    #[allow(clippy::too_many_arguments)] // mmap's arguments
    fn mmap_with(
        &mut self,
        addr: u64,
        len: u64,
        prot: Prot,
        shared: bool,
        placement: mm::Placement,
        opts: mm::MapOpts,
    ) -> OpResult<u64> {
        if opts == mm::MapOpts::default() {
            return self.mmap(addr, len, prot, shared, placement);
        }
        Err(format!(
            "{}: mmap noreserve/populate is not supported on this backend",
            self.name()
        ))
    }
    /// A store to every page overlapping the range, in order, stopping at the first page
    /// that faults (EFAULT).
    fn write(&mut self, addr: u64, len: u64) -> OpResult<()>;
    /// A load from every page overlapping the range (EFAULT as for `write`).
    fn read(&mut self, addr: u64, len: u64) -> OpResult<()>;
    /// Writes `value` to clear_refs.
    fn clear_refs(&mut self, value: &str) -> OpResult<()>;
    /// Calls `f(address, entry)` for `pages` pages from the page-aligned `start`
    /// (the `pagemap` command's output, PFN bits 0).
    fn pagemap(
        &mut self,
        start: u64,
        pages: u64,
        f: &mut dyn FnMut(u64, u64),
    ) -> Result<(), String>;
    /// PAGEMAP_SCAN.
    fn scan(&mut self, args: &ScanArgs) -> OpResult<ScanResult>;
    /// Why the regions and `walk_end` of this scan cannot be compared with the model's,
    /// if they cannot (`expect regions`/`expect walk_end` after it are then skipped).
    fn scan_unobservable(&self, args: &ScanArgs) -> Option<String> {
        let _ = args;
        None
    }
    /// Why the last successful `scan` did not do all that the trace asked of it, if it
    /// did not (the kernel's soft-dirty flavour, where it cannot emulate a `clear`
    /// exactly): the replay reports the scan as skipped with this reason, neither passed
    /// nor failed. Taken once.
    fn take_scan_skip(&mut self) -> Option<String> {
        None
    }
    /// The smaps `VmFlags` line of the VMA containing `addr`; `None` if there is none.
    fn smaps_vmflags(&mut self, addr: u64) -> Result<Option<String>, String>;
    /// Soft-dirty pages of the range as runs of page indices relative to its first page.
    fn softdirty_runs(&mut self, addr: u64, len: u64) -> Result<Vec<Range<u64>>, Unobservable>;
    /// [`Self::softdirty_runs`] where only parts of the range are unobservable: the runs
    /// as the backend sees them, and the page runs (relative, as the runs) where they do
    /// not mean what `expect softdirty` asks. By default all or nothing:
    /// `softdirty_runs`, with nothing masked.
    fn softdirty_runs_masked(
        &mut self,
        addr: u64,
        len: u64,
    ) -> Result<(Vec<Range<u64>>, Vec<Range<u64>>), Unobservable> {
        Ok((self.softdirty_runs(addr, len)?, Vec::new()))
    }
    /// Present pages, as [`Self::softdirty_runs`].
    fn present_runs(&mut self, addr: u64, len: u64) -> Result<Vec<Range<u64>>, Unobservable>;
    /// Number of VMAs intersecting the range.
    fn vma_count(&mut self, addr: u64, len: u64) -> Result<u64, Unobservable>;
    /// Simulated write faults in the current space so far.
    fn faults(&mut self) -> Result<u64, Unobservable>;
    /// `brk_start ADDR` (trace v2). By default the backend cannot run it.
    fn brk_start(&mut self, addr: u64) -> OpResult<()> {
        let _ = addr;
        Err(format!(
            "{}: brk_start is not supported on this backend",
            self.name()
        ))
    }
    /// `brk ADDR` (trace v2); the new break. By default the backend cannot run it.
    fn brk(&mut self, addr: u64) -> OpResult<u64> {
        let _ = addr;
        Err(format!(
            "{}: brk is not supported on this backend",
            self.name()
        ))
    }
    /// The current break (`expect brk`). By default unobservable.
    fn current_brk(&mut self) -> Result<u64, Unobservable> {
        Err(Unobservable::Skip(format!(
            "{}: the program break is not observable on this backend",
            self.name()
        )))
    }

    /// `file NAME SIZE` / `memfd NAME SIZE` (trace v2). By default the backend cannot
    /// run it.
    fn file(&mut self, name: &str, memfd: bool, size: u64) -> OpResult<()> {
        let _ = (name, size);
        Err(format!(
            "{}: {} is not supported on this backend",
            self.name(),
            if memfd { "memfd" } else { "file" }
        ))
    }
    /// `fwrite NAME OFFSET LEN` (trace v2). By default the backend cannot run it.
    fn fwrite(&mut self, name: &str, offset: u64, len: u64) -> OpResult<()> {
        let _ = (name, offset, len);
        Err(format!(
            "{}: fwrite is not supported on this backend",
            self.name()
        ))
    }
    /// `mmap ... file NAME OFFSET` (trace v2); the address of the mapping. By default the
    /// backend cannot run it.
    fn mmap_file(&mut self, m: &FileMapping) -> OpResult<u64> {
        let _ = m;
        Err(format!(
            "{}: file mappings are not supported on this backend",
            self.name()
        ))
    }

    /// Performs one [`Command`] through the methods above: the one entry every generator
    /// of operations uses. `Err(msg)`: the backend cannot perform it.
    fn perform(&mut self, cmd: &Command) -> OpResult<Outcome> {
        let done = |r: Result<(), Errno>| r.map(|()| Outcome::Done);
        Ok(match cmd {
            Command::Space(name) => {
                self.space(name)?;
                Ok(Outcome::Done)
            }
            Command::Fork(child) => done(self.fork(child)?),
            Command::Op(op) => self.apply(*op)?.map(Outcome::Addr).map(|o| match (op, o) {
                (Op::Mmap { .. } | Op::Mremap { .. }, o) => o,
                _ => Outcome::Done,
            }),
            Command::Write { addr, len } => done(self.write(*addr, *len)?),
            Command::Read { addr, len } => done(self.read(*addr, *len)?),
            Command::ClearRefs(v) => done(self.clear_refs(v)?),
            Command::Pagemap { start, pages } => {
                let mut v = Vec::new();
                self.pagemap(*start, *pages, &mut |a, e| v.push((a, e)))?;
                Ok(Outcome::Pagemap(v))
            }
            Command::Scan(args) => self.scan(args)?.map(Outcome::Scan),
            Command::Smaps(addr) => Ok(Outcome::Smaps(self.smaps_vmflags(*addr)?)),
            Command::BrkStart(addr) => done(self.brk_start(*addr)?),
            Command::Brk(addr) => done(self.brk(*addr)?.map(|_| ())),
            Command::File { name, memfd, size } => done(self.file(name, *memfd, *size)?),
            Command::Fwrite { name, offset, len } => done(self.fwrite(name, *offset, *len)?),
            Command::MmapFile(m) => self.mmap_file(m)?.map(Outcome::Addr),
        })
    }

    /// Applies a structural operation through the methods above; returns the address
    /// (mmap, mremap) or 0.
    fn apply(&mut self, op: Op) -> OpResult<u64> {
        Ok(match op {
            Op::Mmap {
                addr,
                len,
                prot,
                shared,
                placement,
                opts,
            } => self.mmap_with(addr, len, prot, shared, placement, opts)?,
            Op::Munmap { addr, len } => self.munmap(addr, len)?.map(|()| 0),
            Op::Mprotect { addr, len, prot } => self.mprotect(addr, len, prot)?.map(|()| 0),
            Op::Mremap {
                addr,
                old_len,
                new_len,
                maymove,
                fixed,
            } => self.mremap(addr, old_len, new_len, maymove, fixed)?,
            Op::DontNeed { addr, len } => self.madvise_dontneed(addr, len)?.map(|()| 0),
            Op::Madvise { addr, len, advice } => self.madvise(addr, len, advice)?.map(|()| 0),
        })
    }
}

/// The model as a [`Backend`]: a [`Tracker`] and its current space.
#[derive(Debug)]
pub struct ModelBackend {
    tracker: Tracker,
    current: String,
}

impl ModelBackend {
    /// A tracker in `mode` with the current space `main`.
    pub fn new(mode: Mode) -> ModelBackend {
        let tracker = Tracker::new(mode);
        tracker.space("main");
        ModelBackend {
            tracker,
            current: "main".to_string(),
        }
    }

    /// The current space.
    pub fn current(&self) -> Arc<AddressSpace> {
        self.tracker.space(&self.current)
    }

    /// The file the trace calls `name` (the parser refuses a name used before its
    /// `file`/`memfd` line, so a miss is the caller's bug, reported as a message).
    fn named_file(&self, name: &str) -> Result<FileRef, String> {
        self.tracker
            .files()
            .lookup(name)
            .ok_or_else(|| format!("no file {name:?} was created"))
    }

    /// The tracker.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }
}

impl Backend for ModelBackend {
    fn name(&self) -> String {
        format!("model ({})", self.tracker.mode())
    }
    fn space(&mut self, name: &str) -> Result<(), String> {
        self.tracker.space(name);
        self.current = name.to_string();
        Ok(())
    }
    fn fork(&mut self, child: &str) -> OpResult<()> {
        Ok(self.tracker.fork(&self.current, child).map(|_| ()))
    }
    fn mmap(
        &mut self,
        addr: u64,
        len: u64,
        prot: Prot,
        shared: bool,
        placement: mm::Placement,
    ) -> OpResult<u64> {
        Ok(self
            .current()
            .mmap(addr, len, prot, mm::Sharing::from_flag(shared), placement))
    }
    fn munmap(&mut self, addr: u64, len: u64) -> OpResult<()> {
        Ok(self.current().munmap(addr, len))
    }
    fn mprotect(&mut self, addr: u64, len: u64, prot: Prot) -> OpResult<()> {
        Ok(self.current().mprotect(addr, len, prot))
    }
    fn mremap(
        &mut self,
        addr: u64,
        old_len: u64,
        new_len: u64,
        maymove: bool,
        fixed: Option<u64>,
    ) -> OpResult<u64> {
        Ok(self
            .current()
            .mremap(addr, old_len, new_len, maymove, fixed))
    }
    fn madvise_dontneed(&mut self, addr: u64, len: u64) -> OpResult<()> {
        Ok(self.current().madvise_dontneed(addr, len))
    }
    fn madvise(&mut self, addr: u64, len: u64, advice: mm::Advice) -> OpResult<()> {
        let sp = self.current();
        let r = sp.madvise(addr, len, advice);
        if advice == mm::Advice::PopulateWrite {
            self.tracker.propagate_shared_store(&sp, addr, len);
        }
        Ok(r)
    }
    fn mmap_with(
        &mut self,
        addr: u64,
        len: u64,
        prot: Prot,
        shared: bool,
        placement: mm::Placement,
        opts: mm::MapOpts,
    ) -> OpResult<u64> {
        Ok(self.current().mmap_with(
            addr,
            len,
            prot,
            mm::Sharing::from_flag(shared),
            placement,
            opts,
        ))
    }
    fn write(&mut self, addr: u64, len: u64) -> OpResult<()> {
        let sp = self.current();
        let r = sp.write(addr, len);
        // Other mappings of shared memory see the store (precise; crate::shmem).
        self.tracker.propagate_shared_store(&sp, addr, len);
        Ok(r)
    }
    fn read(&mut self, addr: u64, len: u64) -> OpResult<()> {
        Ok(self.current().read(addr, len))
    }
    fn clear_refs(&mut self, value: &str) -> OpResult<()> {
        Ok(self.current().clear_refs_str(value))
    }
    fn pagemap(
        &mut self,
        start: u64,
        pages: u64,
        f: &mut dyn FnMut(u64, u64),
    ) -> Result<(), String> {
        let sp = self.current();
        for i in 0..pages {
            let p = start + i * PAGE_SIZE;
            f(p, sp.pagemap_entry(p));
        }
        Ok(())
    }
    fn scan(&mut self, args: &ScanArgs) -> OpResult<ScanResult> {
        Ok(self.current().scan(args))
    }
    fn smaps_vmflags(&mut self, addr: u64) -> Result<Option<String>, String> {
        Ok(self.current().smaps_vmflags(addr))
    }
    fn brk_start(&mut self, addr: u64) -> OpResult<()> {
        Ok(self.current().brk_start(addr))
    }
    fn brk(&mut self, addr: u64) -> OpResult<u64> {
        Ok(self.current().brk(addr))
    }
    fn current_brk(&mut self) -> Result<u64, Unobservable> {
        Ok(self.current().current_brk())
    }
    fn file(&mut self, name: &str, memfd: bool, size: u64) -> OpResult<()> {
        let kind = if memfd {
            FileKind::Memfd
        } else {
            FileKind::Regular
        };
        Ok(self.tracker.file(name, kind, size).map(|_| ()))
    }
    fn fwrite(&mut self, name: &str, offset: u64, len: u64) -> OpResult<()> {
        let f = self.named_file(name)?;
        Ok(self.tracker.fwrite(f, offset, len).map(|_| ()))
    }
    fn mmap_file(&mut self, m: &FileMapping) -> OpResult<u64> {
        let f = self.named_file(&m.name)?;
        let opts = mm::MapOpts {
            file: Some((f, m.offset)),
            ..m.opts
        };
        Ok(self.current().mmap_with(
            m.addr,
            m.len,
            m.prot,
            mm::Sharing::from_flag(m.shared),
            m.placement,
            opts,
        ))
    }
    fn softdirty_runs(&mut self, addr: u64, len: u64) -> Result<Vec<Range<u64>>, Unobservable> {
        Ok(self.current().softdirty_runs(addr, len))
    }
    fn present_runs(&mut self, addr: u64, len: u64) -> Result<Vec<Range<u64>>, Unobservable> {
        Ok(self.current().present_runs(addr, len))
    }
    fn vma_count(&mut self, addr: u64, len: u64) -> Result<u64, Unobservable> {
        Ok(self.current().vma_count(addr, len) as u64)
    }
    fn faults(&mut self) -> Result<u64, Unobservable> {
        Ok(self.current().faults())
    }
}

/// The backend `choice` names, in `mode` (the model's; the kernel has its own).
pub fn open(choice: BackendChoice, mode: Mode) -> Result<Box<dyn Backend>, String> {
    match choice {
        BackendChoice::Model => Ok(Box::new(ModelBackend::new(mode))),
        BackendChoice::Kernel(flavour) => open_kernel(flavour),
    }
}

#[cfg(all(
    target_os = "linux",
    feature = "kernel",
    not(all(loom, feature = "loom"))
))]
fn open_kernel(flavour: Option<KernelFlavour>) -> Result<Box<dyn Backend>, String> {
    crate::kernel::KernelBackend::new(flavour)
        .map(|b| Box::new(b) as Box<dyn Backend>)
        .map_err(|e| e.to_string())
}

#[cfg(not(all(
    target_os = "linux",
    feature = "kernel",
    not(all(loom, feature = "loom"))
)))]
fn open_kernel(flavour: Option<KernelFlavour>) -> Result<Box<dyn Backend>, String> {
    let _ = flavour;
    Err("the kernel backend exists only on Linux, with softdirty's `kernel` feature".to_string())
}
