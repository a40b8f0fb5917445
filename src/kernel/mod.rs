//! Real memory: the trace operations on real processes, with dirtiness from the kernel
//! itself (Linux only).
//!
//! Each trace space is a [`puppet`] process, forked from the replaying process when the
//! space is made; the backend makes every system call of the trace in it (mmap, munmap,
//! mprotect, mremap, madvise, brk, prctl) and observes it from outside through
//! `/proc/PID/{pagemap,maps,smaps,clear_refs}` and PAGEMAP_SCAN on its pagemap. `fork`
//! is a real fork(2) of the puppet; `brk_start` sets the puppet's heap with
//! `prctl(PR_SET_MM, PR_SET_MM_MAP)`, which needs no privilege, on a break nothing else
//! uses (the puppet never allocates); `write`/`read` are the puppet's own stores and loads,
//! one byte per page, so the faults are real (a `growsdown` stack grows, a guard or a
//! file's end is a signal the puppet turns into EFAULT). Files and memfds are made here
//! and passed to each puppet that maps them.
//!
//! Two flavours (`../shared/spec/trace-format.md`, "Kernel backend"):
//! - [`KernelFlavour::Uffd`]: each puppet has a userfaultfd with `UFFD_FEATURE_WP_ASYNC |
//!   WP_UNPOPULATED` (made in the puppet, used from here); every mapping the trace makes
//!   is registered for write-protect when made and again after an `mremap` (which drops
//!   the registration); `clear_refs 4` write-protects all of them with
//!   `PAGEMAP_SCAN(PM_SCAN_WP_MATCHING)`; soft-dirty is `PAGE_IS_WRITTEN`; `scan ... clear`
//!   is `PM_SCAN_WP_MATCHING`. What `precise` mode must reproduce. A fork child's
//!   registration does not survive the fork: its soft-dirty answers are skipped until its
//!   first `clear_refs 4`.
//! - [`KernelFlavour::SoftDirty`]: CONFIG_MEM_SOFT_DIRTY: `clear_refs` writes
//!   `/proc/PID/clear_refs`, soft-dirty is pagemap bit 55 / `PAGE_IS_SOFT_DIRTY`;
//!   `scan ... clear` is emulated with `clear_refs 4` and stores where that is exact, and
//!   reported as skipped where it is not ([`clear`]). What `legacy` mode must reproduce.
//!
//! Safety of the puppets: a puppet is a copy of the replaying process, so its memory holds
//! that process's code, stack and heap. The backend refuses `fixed`/`noreplace` mappings
//! below [`MIN_FIXED_ADDR`], and any operation whose range covers mapped memory the trace
//! did not map; a puppet dies with its space when the backend drops.

pub mod clear;
pub mod error;
pub mod procfs;
pub mod puppet;
#[cfg(target_arch = "x86_64")]
pub mod record;
pub mod uapi;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write as _;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

pub use self::error::KernelError;
use self::puppet::Puppet;
use self::uapi::*;
pub use crate::backend::KernelFlavour;
use crate::backend::{Backend, OpResult, Unobservable};
use crate::errno::Errno;
use crate::linux::{PAGE_SIZE, TASK_SIZE};
use crate::mm::Placement;
use crate::prot::Prot;
use crate::scan::{Region, ScanArgs, ScanResult};

/// The lowest address the kernel backend maps at with `fixed`/`noreplace`: below it lie
/// the replaying process's own executable and heap (the spec asks traces to stay above).
pub const MIN_FIXED_ADDR: u64 = 0x10_0000_0000;

/// Why a page's `precise` answer is not observable on the uffd flavour: it changed
/// behind the mapping's page table entries.
const BEHIND: &str = "a file or shared page changed behind this mapping's page table entries \
                      (through another mapping or space, write(2), a truncation, a discarded \
                      private copy or a dontneed of shared memory): precise reports it, no \
                      registration sees it";

/// Why a forked space's `precise` answers are not observable on the uffd flavour until
/// its first `clear_refs 4`.
const FORKED: &str = "the space was made by fork, which does not carry the parent's \
                      write-protect registration into the child (no UFFD_FEATURE_EVENT_FORK): \
                      the child's written pages are unknown until its first clear_refs 4";

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn to_errno(e: i32, what: &str) -> Result<Errno, String> {
    Errno::from_code(e).ok_or_else(|| format!("{what} failed with errno {e}, unknown to the model"))
}

fn page_down(a: u64) -> u64 {
    a & !(PAGE_SIZE - 1)
}

fn page_up(a: u64) -> u64 {
    a.checked_add(PAGE_SIZE - 1)
        .map_or(!(PAGE_SIZE - 1), page_down)
}

/// `UFFDIO_API` with `features`; returns the features the kernel reports.
fn uffd_api(fd: &OwnedFd, features: u64) -> Result<u64, i32> {
    let mut api = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes one `struct uffdio_api`, whose layout
    // `UffdioApi` reproduces (size checked in uapi.rs); `api` lives across the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API as _, &mut api as *mut UffdioApi) };
    if r != 0 {
        return Err(last_errno());
    }
    Ok(api.features)
}

/// Opens a userfaultfd of the puppet's address space (a userfaultfd tracks the mm of
/// the process that created it), falling back to `UFFD_USER_MODE_ONLY` when refused.
fn open_uffd_raw(p: &Puppet) -> Result<OwnedFd, KernelError> {
    let base = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let make = |flags: u64| -> Result<Result<OwnedFd, i32>, KernelError> {
        p.syscall_fd(libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0])
            .map_err(KernelError::Puppet)
    };
    match make(base)? {
        Ok(fd) => Ok(fd),
        Err(libc::ENOSYS) => Err(KernelError::UffdMissing),
        Err(e @ (libc::EPERM | libc::EACCES)) => match make(base | UFFD_USER_MODE_ONLY as u64)? {
            Ok(fd) => Ok(fd),
            Err(_) => Err(KernelError::UffdPermission { errno: e }),
        },
        Err(e) => Err(KernelError::Syscall {
            what: "userfaultfd(2)",
            errno: e,
        }),
    }
}

/// A userfaultfd of the puppet's memory with async write-protect on unpopulated memory
/// (and shmem if possible).
fn open_uffd(p: &Puppet) -> Result<OwnedFd, KernelError> {
    let probe = open_uffd_raw(p)?;
    let supported = uffd_api(&probe, 0).map_err(|e| KernelError::Syscall {
        what: "UFFDIO_API",
        errno: e,
    })?;
    drop(probe);
    let need = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
    if supported & need != need {
        return Err(KernelError::UffdFeatures {
            supported,
            missing: need & !supported,
        });
    }
    let fd = open_uffd_raw(p)?;
    uffd_api(&fd, need | (supported & UFFD_FEATURE_WP_HUGETLBFS_SHMEM)).map_err(|e| {
        KernelError::Syscall {
            what: "UFFDIO_API with WP_ASYNC | WP_UNPOPULATED",
            errno: e,
        }
    })?;
    Ok(fd)
}

/// `UFFDIO_REGISTER` of `[start, start + len)` in `UFFDIO_REGISTER_MODE_WP` on `fd`; the
/// errno on failure.
fn uffd_register_wp(fd: &OwnedFd, start: u64, len: u64) -> Result<(), i32> {
    let mut reg = UffdioRegister {
        range: UffdioRange { start, len },
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes one `struct uffdio_register` (layout
    // checked in uapi.rs), which lives across the call; it changes only the VMA flags of
    // the range in the userfaultfd's address space (a puppet's, or a recorded program's).
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            UFFDIO_REGISTER as _,
            &mut reg as *mut UffdioRegister,
        )
    };
    if r != 0 {
        return Err(last_errno());
    }
    Ok(())
}

/// One PAGEMAP_SCAN ioctl; returns the region count or the errno.
fn pm_scan(pagemap: &File, arg: &mut PmScanArg) -> Result<u64, i32> {
    // SAFETY: PAGEMAP_SCAN reads and writes one `struct pm_scan_arg` (layout checked in
    // uapi.rs) and writes at most `vec_len` `struct page_region`s at `vec`; every caller
    // passes either a null `vec` with `vec_len` 0, or a buffer of `vec_len` regions, or
    // (for `Backend::scan`) a buffer no smaller than the number of pages in the range,
    // which bounds the regions the kernel can write.
    let r = unsafe {
        libc::ioctl(
            pagemap.as_raw_fd(),
            PAGEMAP_SCAN as _,
            arg as *mut PmScanArg,
        )
    };
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(r as u64)
    }
}

/// Is soft-dirty compiled in? A fresh anonymous VMA carries `sd` in its VmFlags.
fn kernel_has_soft_dirty() -> Result<bool, KernelError> {
    // SAFETY: an anonymous private mapping chosen by the kernel: it cannot overlap
    // anything we use; we unmap it below and never touch its memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE_SIZE as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(KernelError::Syscall {
            what: "mmap of a probe page",
            errno: last_errno(),
        });
    }
    let flags = procfs::smaps_vmflags(None, p as u64);
    // SAFETY: `p` is the page mapped above, unused by anything else.
    unsafe { libc::munmap(p, PAGE_SIZE as usize) };
    let flags = flags.map_err(|e| KernelError::Syscall {
        what: "reading /proc/self/smaps",
        errno: e.raw_os_error().unwrap_or(0),
    })?;
    Ok(flags.is_some_and(|l| l.split_ascii_whitespace().any(|t| t == "sd")))
}

/// A region buffer for PAGEMAP_SCAN: a `Vec` when small, else a lazily populated
/// `MAP_NORESERVE` mapping (the kernel touches only what it writes).
struct RegionBuf {
    ptr: *mut PageRegion,
    len: usize,
    mapped: bool,
    _vec: Vec<PageRegion>,
}

impl RegionBuf {
    fn new(len: usize) -> Result<RegionBuf, String> {
        if len <= 1 << 16 {
            let mut v = vec![PageRegion::default(); len];
            return Ok(RegionBuf {
                ptr: v.as_mut_ptr(),
                len,
                mapped: false,
                _vec: v,
            });
        }
        let bytes = len
            .checked_mul(std::mem::size_of::<PageRegion>())
            .filter(|b| (*b as u64) < (1 << 45))
            .ok_or_else(|| format!("a {len}-region scan buffer is too large"))?;
        // SAFETY: an anonymous mapping chosen by the kernel; it overlaps nothing and is
        // unmapped in `drop`.
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
        if p == libc::MAP_FAILED {
            return Err(format!("cannot map a {bytes}-byte scan buffer"));
        }
        Ok(RegionBuf {
            ptr: p.cast(),
            len,
            mapped: true,
            _vec: Vec::new(),
        })
    }

    /// The first `n` regions (`n` ≤ `len`, written by the kernel).
    fn regions(&self, n: usize) -> &[PageRegion] {
        assert!(n <= self.len);
        if n == 0 {
            return &[];
        }
        // SAFETY: `ptr` points to `len` initialized (zeroed or written) regions that live
        // as long as `self`; `n <= len`.
        unsafe { std::slice::from_raw_parts(self.ptr, n) }
    }
}

impl Drop for RegionBuf {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: the mapping made in `new`, of this size; no reference outlives self.
            unsafe {
                libc::munmap(
                    self.ptr.cast(),
                    self.len * std::mem::size_of::<PageRegion>(),
                )
            };
        }
    }
}

/// One trace space: a puppet process and what the backend knows of its memory.
#[derive(Debug)]
struct Space {
    puppet: Puppet,
    /// its `/proc/PID/pagemap`
    pagemap: File,
    /// uffd flavour: the puppet's userfaultfd
    uffd: Option<OwnedFd>,
    /// The ranges the trace mapped and still maps: disjoint, coalesced, start → end.
    owned: BTreeMap<u64, u64>,
    /// Soft-dirty flavour: why its soft-dirty bits are not the trace's since a
    /// `scan ... clear` it could not emulate (until the next `clear_refs 4`).
    tainted: Option<String>,
    /// uffd flavour: address ranges whose `precise` answer no registration can observe
    /// until the next `clear_refs 4` (a file page changed through another mapping, by a
    /// `write(2)` or a truncation; a private copy discarded), with the reason: the spec's
    /// "Kernel backend, v2" has expectations over them reported as skipped.
    precise_only: Vec<(u64, u64, &'static str)>,
    /// `brk_start` was given (successfully or not) or a `brk` was made: the trace's
    /// rule allows no `brk_start` after that.
    brk_used: bool,
    /// `brk_start` succeeded: the puppet's break is the trace's.
    brk_set: bool,
    /// The trace's files as descriptors of the puppet.
    fds: HashMap<String, i32>,
    /// A `growsdown` mapping was made: an access may grow it, and the grown part is the
    /// trace's too ([`KernelBackend::own_grown`]).
    growsdown: bool,
}

impl Space {
    fn new(puppet: Puppet, flavour: KernelFlavour) -> Result<Space, KernelError> {
        let path = procfs::path(Some(puppet.pid()), "pagemap");
        let pagemap = File::open(&path).map_err(|e| KernelError::Syscall {
            what: "open /proc/PID/pagemap of the puppet",
            errno: e.raw_os_error().unwrap_or(0),
        })?;
        let uffd = match flavour {
            KernelFlavour::Uffd => Some(open_uffd(&puppet)?),
            KernelFlavour::SoftDirty => None,
        };
        Ok(Space {
            puppet,
            pagemap,
            uffd,
            owned: BTreeMap::new(),
            tainted: None,
            precise_only: Vec::new(),
            brk_used: false,
            brk_set: false,
            fds: HashMap::new(),
            growsdown: false,
        })
    }
}

/// The trace's memory in puppet processes, tracked by the kernel (see the module doc).
#[derive(Debug)]
pub struct KernelBackend {
    flavour: KernelFlavour,
    /// The current space.
    cur: Space,
    cur_name: String,
    /// The other spaces, by name.
    parked: HashMap<String, Space>,
    /// Why the last scan did not clear as asked ([`Backend::take_scan_skip`]).
    scan_skip: Option<String>,
    /// A shared mapping was made (in some space): stores may reach other mappings.
    shared_mapped: bool,
    /// The trace's files (trace v2): memfds, and regular files in `file_dir`.
    files: HashMap<String, OwnedFd>,
    /// The private directory of the regular files, made on first use, removed on drop.
    file_dir: Option<std::path::PathBuf>,
}

impl KernelBackend {
    /// Opens the backend: `flavour`, or detection (soft-dirty if the kernel has
    /// CONFIG_MEM_SOFT_DIRTY, else uffd), with space `main`, a new puppet process. Fails
    /// with what is missing and how to get it.
    pub fn new(flavour: Option<KernelFlavour>) -> Result<KernelBackend, KernelError> {
        let pagemap = File::open("/proc/self/pagemap").map_err(|e| KernelError::Syscall {
            what: "open /proc/self/pagemap",
            errno: e.raw_os_error().unwrap_or(0),
        })?;
        let mut probe = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            ..PmScanArg::default()
        };
        match pm_scan(&pagemap, &mut probe) {
            Ok(_) => {}
            Err(libc::ENOTTY) | Err(libc::EINVAL) => return Err(KernelError::NoPagemapScan),
            Err(e) => {
                return Err(KernelError::Syscall {
                    what: "the PAGEMAP_SCAN ioctl",
                    errno: e,
                })
            }
        }
        let has_sd = kernel_has_soft_dirty()?;
        let flavour = match flavour {
            Some(KernelFlavour::SoftDirty) if !has_sd => return Err(KernelError::NoSoftDirty),
            Some(f) => f,
            None if has_sd => KernelFlavour::SoftDirty,
            None => KernelFlavour::Uffd,
        };
        let puppet = Puppet::spawn().map_err(KernelError::Puppet)?;
        Ok(KernelBackend {
            flavour,
            cur: Space::new(puppet, flavour)?,
            cur_name: "main".to_string(),
            parked: HashMap::new(),
            scan_skip: None,
            shared_mapped: false,
            files: HashMap::new(),
            file_dir: None,
        })
    }

    /// The current space's puppet process id.
    fn pid(&self) -> i32 {
        self.cur.puppet.pid()
    }

    /// The current space's VMAs.
    fn maps(&self) -> Result<Vec<procfs::MapsEntry>, String> {
        procfs::maps(Some(self.pid()))
            .map_err(|e| format!("reading /proc/{}/maps: {e}", self.pid()))
    }

    /// The `VmFlags:` line of the current space's VMA at `addr`.
    fn vmflags(&self, addr: u64) -> Result<Option<String>, String> {
        procfs::smaps_vmflags(Some(self.pid()), addr)
            .map_err(|e| format!("reading /proc/{}/smaps: {e}", self.pid()))
    }

    /// The flavour in use.
    pub fn flavour(&self) -> KernelFlavour {
        self.flavour
    }

    /// The ranges the trace mapped and still maps, in address order.
    pub fn owned(&self) -> Vec<(u64, u64)> {
        self.cur.owned.iter().map(|(&s, &e)| (s, e)).collect()
    }

    /// Unmaps everything the trace mapped in the current space.
    pub fn unmap_all(&mut self) -> Result<(), String> {
        self.sync_owned();
        for (s, e) in std::mem::take(&mut self.cur.owned) {
            self.sys(libc::SYS_munmap, [s, e - s, 0, 0, 0, 0], "munmap")?
                .map_err(|e| format!("munmap {s:#x}: {}", e.name()))?;
        }
        Ok(())
    }

    /// System call `nr` in the current space's puppet: its value, or the errno.
    fn sys(&self, nr: i64, args: [u64; 6], what: &str) -> OpResult<u64> {
        let r = self.cur.puppet.syscall(nr, args)?;
        if r < 0 {
            return Ok(Err(to_errno(-r as i32, what)?));
        }
        Ok(Ok(r as u64))
    }

    fn own(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        self.disown(start, end);
        let (mut s, mut e) = (start, end);
        if let Some((&ps, &pe)) = self.cur.owned.range(..=s).next_back() {
            if pe == s {
                self.cur.owned.remove(&ps);
                s = ps;
            }
        }
        if let Some(&ne) = self.cur.owned.get(&e) {
            self.cur.owned.remove(&e);
            e = ne;
        }
        self.cur.owned.insert(s, e);
    }

    fn disown(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let hit: Vec<(u64, u64)> = self
            .cur
            .owned
            .range(..end)
            .filter(|(_, &e)| e > start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in hit {
            self.cur.owned.remove(&s);
            if s < start {
                self.cur.owned.insert(s, start);
            }
            if e > end {
                self.cur.owned.insert(end, e);
            }
        }
    }

    fn covered(&self, start: u64, end: u64) -> bool {
        match self.cur.owned.range(..=start).next_back() {
            Some((_, &e)) => e >= end,
            None => false,
        }
    }

    /// Drops from the owned set whatever is no longer mapped (a failed MAP_FIXED may have
    /// unmapped the old range).
    fn sync_owned(&mut self) {
        let Ok(maps) = self.maps() else { return };
        let mut keep = BTreeMap::new();
        for (&s, &e) in &self.cur.owned {
            for m in &maps {
                let (a, b) = (m.start.max(s), m.end.min(e));
                if a < b {
                    keep.insert(a, b);
                }
            }
        }
        self.cur.owned = BTreeMap::new();
        for (a, b) in keep {
            self.own(a, b);
        }
    }

    /// Refuses a range that covers mapped memory the trace did not map.
    fn check_owned(&self, addr: u64, len: u64, what: &str) -> Result<(), String> {
        let start = page_down(addr);
        let end = page_up(addr.saturating_add(len.max(1)));
        let maps = self.maps()?;
        for m in maps {
            let (a, b) = (m.start.max(start), m.end.min(end));
            if a < b && !self.covered(a, b) {
                return Err(format!(
                    "{what} {addr:#x}+{len:#x}: the kernel backend refuses it: \
                     {a:#x}-{b:#x} is memory of the replaying process that the trace did not map \
                     (traces should use addresses at or above {MIN_FIXED_ADDR:#x})"
                ));
            }
        }
        Ok(())
    }

    fn refuse_low(addr: u64, what: &str) -> Result<(), String> {
        if addr < MIN_FIXED_ADDR {
            return Err(format!(
                "{what} at {addr:#x}: the kernel backend refuses fixed addresses below \
                 {MIN_FIXED_ADDR:#x}, where the replaying process's own memory lives \
                 (traces should use addresses at or above it)"
            ));
        }
        Ok(())
    }

    /// Why the uffd flavour cannot make this mremap, if it is a multi-VMA move: a move
    /// only (`fixed`, old length = new length) whose source starts in a VMA and runs past
    /// its end. Linux 6.17+ moves such a range VMA by VMA, but refuses it with EFAULT when
    /// the VMA is armed with userfaultfd (`vma_multi_allowed`), as this flavour arms every
    /// mapping: the EFAULT would be the flavour's, not the trace's.
    fn multi_vma_move(
        &self,
        addr: u64,
        old_len: u64,
        new_len: u64,
        fixed: Option<u64>,
    ) -> Result<Option<String>, String> {
        if self.flavour != KernelFlavour::Uffd || fixed.is_none() || old_len != new_len {
            return Ok(None);
        }
        let maps = self.maps()?;
        let end = page_up(addr.saturating_add(old_len));
        Ok(maps
            .iter()
            .find(|m| m.start <= addr && addr < m.end && m.end < end)
            .map(|m| {
                format!(
                    "mremap {addr:#x}+{old_len:#x} to {:#x}: the kernel backend's uffd flavour \
                     cannot make a multi-VMA move (the source runs past the VMA ending at {:#x}): \
                     Linux refuses it with EFAULT for userfaultfd-armed VMAs, and the flavour \
                     arms every mapping; replay this trace on the model",
                    fixed.unwrap_or(0),
                    m.end
                )
            }))
    }

    /// Why the uffd flavour cannot install guards over `[addr, addr + len)`, if it cannot:
    /// the range meets a write-protected entry (pagemap bit 57: a page not written since
    /// a clear) of a VMA that is not private anonymous memory (a file mapping, or shared
    /// memory). Zapping such an entry leaves a uffd-wp marker
    /// (`pte_install_uffd_wp_if_needed`), which `madvise_guard_install` takes for a
    /// populated entry and zaps again, forever: measured on Linux 6.18.44, where the call
    /// spins in the kernel until the process is killed (`softdirty fuzz`, seed 5).
    fn guard_livelock(&self, addr: u64, len: u64) -> Result<Option<String>, String> {
        if self.flavour != KernelFlavour::Uffd {
            return Ok(None);
        }
        let end = page_up(addr.saturating_add(len));
        let maps = self.maps()?;
        for m in maps
            .iter()
            .filter(|m| m.start < end && addr < m.end && (m.shared || m.file.2 != 0))
        {
            let (s, e) = (m.start.max(page_down(addr)), m.end.min(end));
            let pages = (e - s) / PAGE_SIZE;
            let marked = pages > 1 << 20
                || self
                    .pagemap_runs(s, e - s, PM_UFFD_WP)
                    .map(|r| !r.is_empty())?;
            if marked {
                return Ok(Some(format!(
                    "madvise {addr:#x}+{len:#x} guard_install: the kernel backend's uffd flavour \
                     cannot install guards over write-protected pages of a file or shared \
                     mapping ({s:#x}-{e:#x}): Linux 6.18 loops forever zapping their \
                     write-protect markers (madvise_guard_install); replay this trace on the model"
                )));
            }
        }
        Ok(None)
    }

    /// Registers `[start, start + len)` for async write-protect (uffd flavour).
    fn register(&self, start: u64, len: u64) -> Result<(), String> {
        let Some(fd) = &self.cur.uffd else {
            return Ok(());
        };
        if len == 0 {
            return Ok(());
        }
        uffd_register_wp(fd, start, len)
            .map_err(|e| format!("UFFDIO_REGISTER(WP) of {start:#x}+{len:#x} failed (errno {e})"))
    }

    /// One scan over `[start, end)` with `arg`'s masks, following `walk_end` until done;
    /// calls `f` on every region.
    fn scan_all(
        &self,
        start: u64,
        end: u64,
        mask: u64,
        flags: u64,
        f: &mut dyn FnMut(&PageRegion),
    ) -> Result<(), String> {
        const N: usize = 4096;
        let buf = RegionBuf::new(N)?;
        let mut cur = start;
        while cur < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags,
                start: cur,
                end,
                vec: buf.ptr as u64,
                vec_len: N as u64,
                category_mask: mask,
                return_mask: mask,
                ..PmScanArg::default()
            };
            let n = pm_scan(&self.cur.pagemap, &mut arg)
                .map_err(|e| format!("PAGEMAP_SCAN over {cur:#x}-{end:#x} failed (errno {e})"))?
                as usize;
            for r in buf.regions(n) {
                f(r);
            }
            // Complete unless the vector filled (walk_end is stale past 512 regions).
            if n < N || arg.walk_end <= cur {
                break;
            }
            cur = arg.walk_end;
        }
        Ok(())
    }

    /// Pages of `[addr, addr+len)` in category `cat`, as relative page runs.
    fn runs_of(&self, addr: u64, len: u64, cat: u64) -> Result<Vec<(u64, u64)>, String> {
        let base = page_down(addr);
        let end = addr
            .checked_add(len)
            .map_or(TASK_SIZE, |e| e.min(TASK_SIZE));
        let end = page_up(end);
        let mut out: Vec<(u64, u64)> = Vec::new();
        if base >= end {
            return Ok(out);
        }
        self.scan_all(base, end, cat, 0, &mut |r| {
            let (a, b) = (
                (r.start.max(base) - base) / PAGE_SIZE,
                (r.end.min(end) - base) / PAGE_SIZE,
            );
            match out.last_mut() {
                Some(l) if l.1 >= a => l.1 = l.1.max(b),
                _ => out.push((a, b)),
            }
        })?;
        Ok(out)
    }

    /// Reads pagemap entries for `n` pages from the page-aligned `start`.
    fn read_pagemap(&self, start: u64, n: usize) -> Result<Vec<u64>, String> {
        let mut buf = vec![0u8; n * 8];
        self.cur
            .pagemap
            .read_exact_at(&mut buf, (start / PAGE_SIZE) * 8)
            .map_err(|e| format!("reading /proc/self/pagemap at {start:#x}: {e}"))?;
        Ok(buf
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
            .collect())
    }

    /// Write-protects everything the trace mapped (uffd `clear_refs 4`).
    fn protect_all(&self) -> Result<(), String> {
        for (&s, &e) in &self.cur.owned {
            let mut cur = s;
            for _ in 0..4 {
                let mut arg = PmScanArg {
                    size: std::mem::size_of::<PmScanArg>() as u64,
                    flags: PM_SCAN_WP_MATCHING,
                    start: cur,
                    end: e,
                    category_mask: PAGE_IS_WRITTEN,
                    return_mask: PAGE_IS_WRITTEN,
                    ..PmScanArg::default()
                };
                pm_scan(&self.cur.pagemap, &mut arg).map_err(|er| {
                    format!("PAGEMAP_SCAN(WP_MATCHING) over {s:#x}-{e:#x} failed (errno {er})")
                })?;
                if arg.walk_end >= e || arg.walk_end <= cur {
                    break;
                }
                cur = arg.walk_end;
            }
        }
        Ok(())
    }

    /// Translates a trace's categories to this flavour's (`softdirty` is WRITTEN on uffd).
    fn cats_in(&self, c: u64) -> u64 {
        match self.flavour {
            KernelFlavour::Uffd if c & PAGE_IS_SOFT_DIRTY != 0 => {
                (c & !PAGE_IS_SOFT_DIRTY) | PAGE_IS_WRITTEN
            }
            _ => c,
        }
    }

    /// The trace's mappings as the clear emulation sees them ([`clear::Before`]).
    fn clear_before(&mut self) -> Result<clear::Before, String> {
        self.sync_owned();
        let maps = self.maps()?;
        let owned = self.owned();
        let mut b = clear::Before::default();
        for m in &maps {
            for &(s, e) in &owned {
                let (a, z) = (m.start.max(s), m.end.min(e));
                if a < z {
                    let flags = self.vmflags(m.start)?;
                    b.vmas.push(clear::TrackedVma {
                        start: a,
                        end: z,
                        writable: m.writable,
                        vm_softdirty: flags
                            .is_some_and(|l| l.split_ascii_whitespace().skip(1).any(|t| t == "sd")),
                    });
                }
            }
        }
        let abs = |s: u64, v: Vec<(u64, u64)>| -> Vec<(u64, u64)> {
            v.into_iter()
                .map(|(x, y)| (s + x * PAGE_SIZE, s + y * PAGE_SIZE))
                .collect()
        };
        for (s, e) in owned {
            let sd = self.pagemap_runs(s, e - s, PM_SOFT_DIRTY)?;
            b.soft_dirty.extend(abs(s, sd));
            b.present
                .extend(abs(s, self.runs_of(s, e - s, PAGE_IS_PRESENT)?));
            b.zero_pfn
                .extend(abs(s, self.runs_of(s, e - s, PAGE_IS_PFNZERO)?));
        }
        Ok(b)
    }

    /// Pages of `[addr, addr+len)` whose pagemap entry has `bit`, as relative page runs.
    fn pagemap_runs(&self, addr: u64, len: u64, bit: u64) -> Result<Vec<(u64, u64)>, String> {
        let base = page_down(addr);
        let end = page_up(
            addr.checked_add(len)
                .map_or(TASK_SIZE, |e| e.min(TASK_SIZE)),
        );
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut i = 0;
        let total = end.saturating_sub(base) / PAGE_SIZE;
        while i < total {
            let n = (total - i).min(4096);
            let es = self.read_pagemap(base + i * PAGE_SIZE, n as usize)?;
            for (k, e) in es.into_iter().enumerate() {
                if e & bit != 0 {
                    let p = i + k as u64;
                    match out.last_mut() {
                        Some(l) if l.1 == p => l.1 = p + 1,
                        _ => out.push((p, p + 1)),
                    }
                }
            }
            i += n;
        }
        Ok(out)
    }

    /// Loads the byte at `addr` of the puppet and stores it back, through the kernel
    /// (`process_vm_readv`/`writev`, which the kernel counts as a store for soft-dirty):
    /// the page is dirty again, its contents unchanged.
    fn restore_byte(&self, addr: u64) -> Result<(), String> {
        // `addr` is a page of the trace's mappings (the caller's plan keeps to them), and
        // the store writes back the value just loaded, so no contents change.
        let mut byte = 0u8;
        if !puppet::vm_byte(self.pid(), addr, &mut byte, false) {
            return Err(format!(
                "loading the byte at {addr:#x} failed (errno {})",
                last_errno()
            ));
        }
        if !puppet::vm_byte(self.pid(), addr, &mut byte, true) {
            return Err(format!(
                "storing the byte at {addr:#x} failed (errno {})",
                last_errno()
            ));
        }
        Ok(())
    }

    /// `scan ... clear` on the soft-dirty flavour: the scan without PM_SCAN_WP_MATCHING,
    /// then the clear of exactly the reported pages where [`clear::plan`] finds it exact;
    /// otherwise no clear, and the reason is kept for the replay to report.
    fn scan_clear_softdirty(&mut self, args: &ScanArgs) -> OpResult<ScanResult> {
        let plain = ScanArgs {
            clear: false,
            ..*args
        };
        let res = match self.scan(&plain)? {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let cleared: Vec<(u64, u64)> = if args.vec_len == 0 {
            // Nothing reported, every matching page cleared (as the model does).
            let pages = args.end.saturating_sub(args.start).div_ceil(PAGE_SIZE);
            let all = ScanArgs {
                vec_len: pages.saturating_add(1),
                max_pages: 0,
                ..plain
            };
            match self.scan(&all)? {
                Ok(r) => r.regions.iter().map(|r| (r.start, r.end)).collect(),
                Err(e) => return Ok(Err(e)),
            }
        } else {
            res.regions.iter().map(|r| (r.start, r.end)).collect()
        };
        let before = self.clear_before()?;
        match clear::plan(&before, &cleared) {
            Ok(keep) => {
                self.clear_refs("4")?
                    .map_err(|e| format!("clear_refs 4 failed: {}", e.name()))?;
                for &(s, e) in &keep {
                    let mut p = s;
                    while p < e {
                        self.restore_byte(p)?;
                        p += PAGE_SIZE;
                    }
                }
                // Check the emulation (a transparent huge page, for one, is dirtied whole).
                let want = clear::normalize(&keep);
                let mut got = Vec::new();
                for (s, e) in self.owned() {
                    let sd = self.pagemap_runs(s, e - s, PM_SOFT_DIRTY)?;
                    got.extend(
                        sd.into_iter()
                            .map(|(x, y)| (s + x * PAGE_SIZE, s + y * PAGE_SIZE)),
                    );
                }
                if clear::normalize(&got) != want {
                    let why = "whose emulation failed: clear_refs 4 and stores did not leave \
                               exactly the soft-dirty pages the scan did not report"
                        .to_string();
                    self.cur.tainted = Some(why.clone());
                    self.scan_skip = Some(why);
                }
            }
            Err(why) => {
                let why = format!("that the soft-dirty flavour cannot emulate: {why}");
                self.cur.tainted = Some(why.clone());
                self.scan_skip = Some(why);
            }
        }
        Ok(Ok(res))
    }

    /// A load or a store of one byte in every page of the range, by the puppet's own
    /// instructions: real faults, which grow a stack and see guards and file ends.
    fn touch(&mut self, addr: u64, len: u64, write: bool) -> OpResult<()> {
        if len == 0 {
            return Ok(Ok(()));
        }
        // The puppet's own stack and code are not the trace's to change.
        if write {
            self.check_owned(addr, len, "write")?;
        }
        let r = self.cur.puppet.touch(addr, len, write)?;
        if self.cur.growsdown {
            self.own_grown()?;
        }
        match r {
            Ok(()) => Ok(Ok(())),
            Err(e) => Ok(Err(to_errno(e, "an access")?)),
        }
    }

    /// Owns what a stack growth added: the part of a VMA below an owned range that
    /// starts inside it (only an access to a `growsdown` VMA extends one downwards).
    fn own_grown(&mut self) -> Result<(), String> {
        let maps = self.maps()?;
        for m in maps {
            let below = self
                .cur
                .owned
                .range(m.start + 1..m.end)
                .next()
                .map(|(&s, _)| s);
            if let Some(s) = below {
                let grows = self
                    .vmflags(m.start)?
                    .is_some_and(|l| l.split_ascii_whitespace().any(|t| t == "gd"));
                if grows && !self.covered(m.start, s) {
                    self.own(m.start, s);
                }
            }
        }
        Ok(())
    }
}

impl KernelBackend {
    /// mmap(2) of anonymous memory, or of `file` = (descriptor, offset), with the trace's
    /// flags; the mapping is owned and, on uffd, registered.
    #[allow(clippy::too_many_arguments)] // mmap's arguments
    fn map(
        &mut self,
        addr: u64,
        len: u64,
        prot: Prot,
        shared: bool,
        placement: Placement,
        opts: crate::mm::MapOpts,
        file: Option<(i32, u64)>,
    ) -> OpResult<u64> {
        let fixed = match placement {
            Placement::Hint => 0,
            Placement::Fixed => libc::MAP_FIXED,
            Placement::NoReplace => libc::MAP_FIXED_NOREPLACE,
        };
        if placement != Placement::Hint {
            Self::refuse_low(addr, "mmap")?;
        }
        if placement == Placement::Fixed {
            self.check_owned(addr, len, "mmap fixed")?;
        }
        let bit = |on: bool, f: i32| if on { f } else { 0 };
        // On uffd, MAP_POPULATE is done after the registration (see below).
        let uffd = self.flavour == KernelFlavour::Uffd;
        let flags = bit(file.is_none(), libc::MAP_ANONYMOUS)
            | bit(shared, libc::MAP_SHARED)
            | bit(!shared, libc::MAP_PRIVATE)
            | fixed
            | bit(opts.noreserve, libc::MAP_NORESERVE)
            | bit(opts.populate && !uffd, libc::MAP_POPULATE)
            | bit(opts.growsdown, libc::MAP_GROWSDOWN);
        let (fd, offset) = file.unwrap_or((-1, 0));
        self.shared_mapped |= shared;
        self.cur.growsdown |= opts.growsdown;
        // With MAP_FIXED it replaces only memory the trace mapped (checked above, and
        // never below MIN_FIXED_ADDR); with MAP_FIXED_NOREPLACE or a hint it replaces
        // nothing. An offset above i64::MAX is the negative off_t the kernel refuses.
        let args = [
            addr,
            len,
            prot.bits() as u64,
            flags as u64,
            fd as i64 as u64,
            offset,
        ];
        let p = match self.sys(libc::SYS_mmap, args, "mmap")? {
            Ok(p) => p,
            Err(e) => {
                if placement == Placement::Fixed {
                    self.sync_owned();
                }
                return Ok(Err(e));
            }
        };
        let a = p;
        let end = page_up(a.saturating_add(len));
        self.own(a, end);
        self.register(a, end - a)?;
        if opts.populate && uffd {
            // MAP_POPULATE after the registration: populated first, the new VMA would get
            // its own anon_vma before the registration merges it with its registered
            // neighbours, which then cannot merge; without userfaultfd it merges at
            // creation, then populates. mm_populate write-faults a private writable
            // mapping and read-faults the rest, and ignores failures, as this does.
            let write = !shared && prot.bits() & libc::PROT_WRITE != 0;
            let adv = if write { 23 } else { 22 }; // MADV_POPULATE_WRITE / _READ
            let _ = self.sys(libc::SYS_madvise, [a, end - a, adv, 0, 0, 0], "madvise")?;
        }
        Ok(Ok(a))
    }

    /// Creates the trace's file `name` (a memfd, or a regular file in the private
    /// directory); `Ok(Err)` with the errno of the call that failed.
    fn create_file(&mut self, name: &str, memfd: bool) -> Result<Result<OwnedFd, Errno>, String> {
        let fd = if memfd {
            let cname = std::ffi::CString::new(name).map_err(|e| format!("memfd {name}: {e}"))?;
            // SAFETY: memfd_create reads the NUL-terminated name and returns a new fd or -1.
            let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
            if fd < 0 {
                return Ok(Err(to_errno(last_errno(), "memfd_create")?));
            }
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            unsafe { OwnedFd::from_raw_fd(fd) }
        } else {
            let dir = match &self.file_dir {
                Some(d) => d.clone(),
                None => {
                    let d = std::env::temp_dir().join(format!(
                        "softdirty-files-{}-{:x}",
                        std::process::id(),
                        self as *const Self as usize
                    ));
                    std::fs::create_dir(&d)
                        .map_err(|e| format!("file {name}: creating {}: {e}", d.display()))?;
                    self.file_dir = Some(d.clone());
                    d
                }
            };
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.join(name));
            match f {
                Ok(f) => OwnedFd::from(f),
                Err(e) => match e.raw_os_error() {
                    Some(n) => return Ok(Err(to_errno(n, "open")?)),
                    None => return Err(format!("file {name}: {e}")),
                },
            }
        };
        Ok(Ok(fd))
    }

    /// fstat(2) of the trace's file `name`.
    fn file_stat(&self, name: &str) -> Result<libc::stat, String> {
        let fd = self.file_fd(name)?;
        // SAFETY: fstat fills the zeroed `st` for a descriptor this backend owns.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Err(format!("fstat of file {name}: errno {}", last_errno()));
        }
        Ok(st)
    }

    /// The identity of the trace's file `name` as /proc/self/maps prints it.
    fn file_identity(&self, name: &str) -> Result<(u32, u32, u64), String> {
        let st = self.file_stat(name)?;
        Ok((libc::major(st.st_dev), libc::minor(st.st_dev), st.st_ino))
    }

    /// uffd flavour: the pages `[first, end)` of the file `id` changed through no page
    /// table entry of the mappings that show them (except `[skip)`, the storing one):
    /// their `precise` answer is unobservable until the next `clear_refs 4`.
    fn file_changed_behind(
        &mut self,
        id: (u32, u32, u64),
        first: u64,
        end: u64,
        skip: Option<(u64, u64)>,
    ) -> Result<(), String> {
        if self.flavour != KernelFlavour::Uffd || first >= end {
            return Ok(());
        }
        let cur = self.pid();
        for sp in std::iter::once(&mut self.cur).chain(self.parked.values_mut()) {
            let pid = sp.puppet.pid();
            let maps =
                procfs::maps(Some(pid)).map_err(|e| format!("reading /proc/{pid}/maps: {e}"))?;
            for m in maps.iter().filter(|m| m.file == id) {
                let pg = m.offset >> 12;
                let pages = (m.end - m.start) >> 12;
                let (s, e) = (pg.max(first), (pg + pages).min(end));
                if s >= e {
                    continue;
                }
                let (a, b) = (m.start + ((s - pg) << 12), m.start + ((e - pg) << 12));
                if pid == cur && skip.is_some_and(|(ks, ke)| a < ke && ks < b) {
                    continue;
                }
                sp.precise_only.push((a, b, BEHIND));
            }
        }
        Ok(())
    }

    /// uffd flavour: a store to `[addr, addr + len)` reached the trace's files (or the
    /// shmem object of a shared anonymous mapping, which a fork shares) through the
    /// shared mappings there; every other mapping of those pages, in every space, changed.
    fn store_reached_files(&mut self, addr: u64, len: u64) -> Result<(), String> {
        if self.flavour != KernelFlavour::Uffd || !self.shared_mapped || len == 0 {
            return Ok(());
        }
        let end = page_up(addr.saturating_add(len));
        let maps = self.maps()?;
        for m in maps {
            if !m.shared || m.file.2 == 0 || m.end <= addr || m.start >= end {
                continue;
            }
            let (s, e) = (m.start.max(page_down(addr)), m.end.min(end));
            let first = (m.offset >> 12) + ((s - m.start) >> 12);
            self.file_changed_behind(m.file, first, first + ((e - s) >> 12), Some((s, e)))?;
        }
        Ok(())
    }

    /// Why the soft-dirty state of `[addr, addr + len)` cannot be compared with
    /// `precise`'s, if a part of it cannot.
    fn precise_only_in(&self, addr: u64, len: u64) -> Option<String> {
        let end = addr.saturating_add(len);
        self.cur
            .precise_only
            .iter()
            .find(|&&(s, e, _)| s < end && addr < e)
            .map(|&(_, _, why)| why.to_string())
    }

    /// The descriptor of the trace's file `name` in the current space's puppet (passed
    /// to it on first use).
    fn remote_fd(&mut self, name: &str) -> Result<i32, String> {
        if let Some(&n) = self.cur.fds.get(name) {
            return Ok(n);
        }
        let f = self
            .files
            .get(name)
            .ok_or_else(|| format!("no file {name:?} was created"))?;
        let n = self.cur.puppet.give_fd(f.as_fd())?;
        self.cur.fds.insert(name.to_string(), n);
        Ok(n)
    }

    /// Makes `sp` the current space, named `name`, and parks the current one.
    fn park(&mut self, name: &str, sp: Space) {
        let prev = std::mem::replace(&mut self.cur, sp);
        let prev_name = std::mem::replace(&mut self.cur_name, name.to_string());
        self.parked.insert(prev_name, prev);
    }

    /// Sets the current space's start of the heap and break to `addr`, as exec does:
    /// `prctl(PR_SET_MM, PR_SET_MM_MAP)` with the other fields as they are (read from
    /// `/proc/PID/stat`), which needs no privilege (PR_SET_MM_START_BRK needs
    /// CAP_SYS_RESOURCE).
    fn set_mm_brk(&mut self, addr: u64) -> OpResult<()> {
        let path = procfs::path(Some(self.pid()), "stat");
        let stat = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
        // Fields after the command name, which ends at the last ')': field k (1-based,
        // proc(5)) is at index k - 3.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = rest
            .split_ascii_whitespace()
            .map(|t| t.parse().unwrap_or(0))
            .collect();
        let field = |k: usize| f.get(k - 3).copied().unwrap_or(0);
        // struct prctl_mm_map: start_code, end_code, start_data, end_data, start_brk,
        // brk, start_stack, arg_start, arg_end, env_start, env_end, auxv, auxv_size,
        // exe_fd (-1: unchanged).
        let words = [
            field(26),
            field(27),
            field(45),
            field(46),
            addr,
            addr,
            field(28),
            field(48),
            field(49),
            field(50),
            field(51),
            0,
        ];
        let mut buf = [0u8; 104];
        for (i, w) in words.iter().enumerate() {
            buf[i * 8..i * 8 + 8].copy_from_slice(&w.to_ne_bytes());
        }
        buf[100..104].copy_from_slice(&u32::MAX.to_ne_bytes());
        let args = [
            libc::PR_SET_MM as u64,
            libc::PR_SET_MM_MAP as u64,
            0,
            104,
            0,
            0,
        ];
        let r = self
            .cur
            .puppet
            .syscall_buf(libc::SYS_prctl, args, 2, &mut buf)?;
        if r < 0 {
            return Ok(Err(to_errno(-r as i32, "prctl(PR_SET_MM_MAP)")?));
        }
        Ok(Ok(()))
    }

    /// The descriptor of the trace's file `name`.
    fn file_fd(&self, name: &str) -> Result<i32, String> {
        self.files
            .get(name)
            .map(|f| f.as_raw_fd())
            .ok_or_else(|| format!("no file {name:?} was created"))
    }
}

impl Drop for KernelBackend {
    fn drop(&mut self) {
        // The puppets die with their spaces (killed by `Puppet`'s drop).
        self.files.clear();
        if let Some(d) = self.file_dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Backend for KernelBackend {
    fn name(&self) -> String {
        format!("kernel={}", self.flavour.name())
    }

    fn space(&mut self, name: &str) -> Result<(), String> {
        if name == self.cur_name {
            return Ok(());
        }
        let next = match self.parked.remove(name) {
            Some(sp) => sp,
            None => Space::new(Puppet::spawn()?, self.flavour).map_err(|e| e.to_string())?,
        };
        self.park(name, next);
        Ok(())
    }

    fn fork(&mut self, child: &str) -> OpResult<()> {
        if child == self.cur_name || self.parked.contains_key(child) {
            return Ok(Err(Errno::EEXIST));
        }
        let p = match self.cur.puppet.fork()? {
            Ok(p) => p,
            Err(e) => return Ok(Err(to_errno(e, "fork")?)),
        };
        let mut sp = Space::new(p, self.flavour).map_err(|e| e.to_string())?;
        // The child's soft-dirty bits and break are the parent's; its descriptors keep
        // their numbers.
        sp.owned = self.cur.owned.clone();
        sp.tainted = self.cur.tainted.clone();
        sp.precise_only = self.cur.precise_only.clone();
        sp.brk_used = self.cur.brk_used;
        sp.brk_set = self.cur.brk_set;
        sp.fds = self.cur.fds.clone();
        sp.growsdown = self.cur.growsdown;
        let parent = self.cur_name.clone();
        self.park(child, sp);
        // In the child: `dontfork` VMAs are gone; on uffd, register what is left.
        self.sync_owned();
        if self.flavour == KernelFlavour::Uffd {
            for (s, e) in self.owned() {
                self.register(s, e - s)?;
            }
            self.cur.precise_only.push((0, TASK_SIZE, FORKED));
        }
        self.space(&parent)?;
        Ok(Ok(()))
    }

    fn brk_start(&mut self, addr: u64) -> OpResult<()> {
        // The trace format's rules (what exec guarantees a real process).
        if addr % PAGE_SIZE != 0 || addr >= TASK_SIZE || self.cur.brk_used || self.cur.brk_set {
            return Ok(Err(Errno::EINVAL));
        }
        if let Err(e) = self.set_mm_brk(addr)? {
            return Ok(Err(e));
        }
        self.cur.brk_set = true;
        Ok(Ok(()))
    }

    fn brk(&mut self, addr: u64) -> OpResult<u64> {
        self.cur.brk_used = true;
        if !self.cur.brk_set {
            // The trace format's rule: a space without `brk_start` has no heap.
            return Ok(Err(Errno::ENOMEM));
        }
        let old = self
            .sys(libc::SYS_brk, [0; 6], "brk")?
            .map_err(|e| e.name())?;
        let (lo, hi) = (page_up(addr.min(old)), page_up(addr.max(old)));
        if addr < old && lo < hi {
            // A shrink unmaps whatever lies in [lo, hi): it must be the trace's.
            self.check_owned(lo, hi - lo, "brk")?;
        }
        let new = self
            .sys(libc::SYS_brk, [addr, 0, 0, 0, 0, 0], "brk")?
            .map_err(|e| e.name())?;
        let (a, b) = (page_up(old), page_up(new));
        if b > a {
            self.own(a, b);
            // The new VMA does not merge with a registered heap until it is registered
            // too (the uffd context is part of the merge test).
            self.register(a, b - a)?;
        } else if b < a {
            self.disown(b, a);
        }
        // brk(2) returns the break, unchanged where it refused.
        Ok(if new == addr {
            Ok(addr)
        } else {
            Err(Errno::ENOMEM)
        })
    }

    fn current_brk(&mut self) -> Result<u64, Unobservable> {
        if !self.cur.brk_set {
            return Ok(0);
        }
        match self.sys(libc::SYS_brk, [0; 6], "brk") {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(e)) => Err(Unobservable::Broken(format!("brk(0) failed: {}", e.name()))),
            Err(e) => Err(Unobservable::Broken(e)),
        }
    }

    fn mmap(
        &mut self,
        addr: u64,
        len: u64,
        prot: Prot,
        shared: bool,
        placement: Placement,
    ) -> OpResult<u64> {
        self.mmap_with(
            addr,
            len,
            prot,
            shared,
            placement,
            crate::mm::MapOpts::default(),
        )
    }

    fn mmap_with(
        &mut self,
        addr: u64,
        len: u64,
        prot: Prot,
        shared: bool,
        placement: Placement,
        opts: crate::mm::MapOpts,
    ) -> OpResult<u64> {
        self.map(addr, len, prot, shared, placement, opts, None)
    }

    fn file(&mut self, name: &str, memfd: bool, size: u64) -> OpResult<()> {
        if !self.files.contains_key(name) {
            match self.create_file(name, memfd)? {
                Ok(fd) => {
                    self.files.insert(name.to_string(), fd);
                }
                Err(e) => return Ok(Err(e)),
            }
        }
        let fd = self.file_fd(name)?;
        let old = self.file_stat(name)?.st_size as u64;
        // SAFETY: ftruncate on a descriptor this backend owns; a size above i64::MAX is
        // passed as the negative off_t it becomes, which the kernel refuses (EINVAL).
        if unsafe { libc::ftruncate(fd, size as libc::off_t) } != 0 {
            return Ok(Err(to_errno(last_errno(), "ftruncate")?));
        }
        if old != size {
            let id = self.file_identity(name)?;
            let (lo, hi) = (old.min(size) >> 12, old.max(size).div_ceil(PAGE_SIZE));
            self.file_changed_behind(id, lo, hi, None)?;
        }
        Ok(Ok(()))
    }

    fn fwrite(&mut self, name: &str, offset: u64, len: u64) -> OpResult<()> {
        let fd = self.file_fd(name)?;
        let old_size = self.file_stat(name)?.st_size as u64;
        // The source: a read-only private anonymous mapping, all zero pages, of as many
        // bytes as one write(2) transfers at most (MAX_RW_COUNT).
        let n = len.clamp(1, crate::file::MAX_RW_COUNT) as usize;
        // SAFETY: a fresh anonymous mapping the kernel places; nothing else uses it.
        let buf = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                n,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if buf == libc::MAP_FAILED {
            return Err(format!(
                "fwrite {name}: no source buffer (errno {})",
                last_errno()
            ));
        }
        // SAFETY: pwrite reads at most `len` bytes from `buf`, of which the kernel reads
        // at most MAX_RW_COUNT = `n` (a longer write is short); an offset above i64::MAX
        // is the negative off_t the kernel refuses (EINVAL).
        let r = unsafe { libc::pwrite(fd, buf, len as usize, offset as libc::off_t) };
        let e = last_errno();
        // SAFETY: `buf` is the mapping made above, of `n` bytes.
        unsafe { libc::munmap(buf, n) };
        if r < 0 {
            return Ok(Err(to_errno(e, "pwrite")?));
        }
        let id = self.file_identity(name)?;
        let (first, end) = crate::file::page_span(offset, r as u64);
        // A write past the end also brings the hole between the old end and the write
        // into the file.
        let first = first.min(old_size >> 12);
        self.file_changed_behind(id, first, end, None)?;
        Ok(Ok(()))
    }

    fn mmap_file(&mut self, m: &crate::backend::FileMapping) -> OpResult<u64> {
        let fd = self.remote_fd(&m.name)?;
        self.map(
            m.addr,
            m.len,
            m.prot,
            m.shared,
            m.placement,
            m.opts,
            Some((fd, m.offset)),
        )
    }

    fn munmap(&mut self, addr: u64, len: u64) -> OpResult<()> {
        self.check_owned(addr, len, "munmap")?;
        if let Err(e) = self.sys(libc::SYS_munmap, [addr, len, 0, 0, 0, 0], "munmap")? {
            return Ok(Err(e));
        }
        self.disown(page_down(addr), page_up(addr.saturating_add(len)));
        Ok(Ok(()))
    }

    fn mprotect(&mut self, addr: u64, len: u64, prot: Prot) -> OpResult<()> {
        self.check_owned(addr, len, "mprotect")?;
        let args = [addr, len, prot.bits() as u64, 0, 0, 0];
        Ok(self.sys(libc::SYS_mprotect, args, "mprotect")?.map(|_| ()))
    }

    fn mremap(
        &mut self,
        addr: u64,
        old_len: u64,
        new_len: u64,
        maymove: bool,
        fixed: Option<u64>,
    ) -> OpResult<u64> {
        if let Some(n) = fixed {
            Self::refuse_low(n, "mremap fixed")?;
            self.check_owned(n, new_len, "mremap fixed")?;
        }
        self.check_owned(addr, old_len, "mremap")?;
        if let Some(why) = self.multi_vma_move(addr, old_len, new_len, fixed)? {
            return Err(why);
        }
        let mut flags = 0;
        if maymove {
            flags |= libc::MREMAP_MAYMOVE;
        }
        if fixed.is_some() {
            flags |= libc::MREMAP_FIXED;
        }
        // The source and the destination hold only memory the trace mapped (checked
        // above); without MREMAP_FIXED the kernel picks a free destination.
        let args = [addr, old_len, new_len, flags as u64, fixed.unwrap_or(0), 0];
        let a = match self.sys(libc::SYS_mremap, args, "mremap")? {
            Ok(a) => a,
            Err(e) => {
                self.sync_owned();
                return Ok(Err(e));
            }
        };
        let old_end = page_up(addr.saturating_add(old_len));
        let new_end = page_up(a.saturating_add(new_len));
        if a == addr {
            if new_end < old_end {
                self.disown(new_end, old_end);
            }
        } else if old_len != 0 {
            self.disown(addr, old_end);
        }
        self.own(a, new_end);
        // A same-size mremap in place succeeds without looking at the range, which may
        // hold gaps: own only what is mapped.
        self.sync_owned();
        // Without UFFD_FEATURE_EVENT_REMAP the kernel resets the registration of the VMA
        // the moved range lands in, which a merge may have made larger than the range
        // (an unmoved neighbour loses its registration too): register everything again.
        let ranges = self.owned();
        for (s, e) in ranges {
            self.register(s, e - s)?;
        }
        Ok(Ok(a))
    }

    fn madvise_dontneed(&mut self, addr: u64, len: u64) -> OpResult<()> {
        self.check_owned(addr, len, "madvise")?;
        let args = [addr, len, libc::MADV_DONTNEED as u64, 0, 0, 0];
        let r = self.sys(libc::SYS_madvise, args, "madvise")?;
        if self.flavour == KernelFlavour::Uffd && (self.shared_mapped || !self.files.is_empty()) {
            // A private file mapping's discarded copies, and shared anonymous memory
            // (shmem: the trace format counts its pages as anonymous, whose content
            // dontneed zeroes): the kernel keeps the zapped entries' write-protect
            // markers, precise reports the pages changed.
            let ours = self
                .files
                .keys()
                .map(|n| self.file_identity(n))
                .collect::<Result<Vec<_>, _>>()?;
            let end = page_up(addr.saturating_add(len));
            let maps = self.maps()?;
            for m in maps {
                let private_file = !m.shared && m.file.2 != 0;
                let shared_anon = m.shared && !ours.contains(&m.file);
                if (private_file || shared_anon) && m.start < end && addr < m.end {
                    self.cur
                        .precise_only
                        .push((m.start.max(addr), m.end.min(end), BEHIND));
                }
            }
        }
        Ok(r.map(|_| ()))
    }

    fn madvise(&mut self, addr: u64, len: u64, advice: crate::mm::Advice) -> OpResult<()> {
        use crate::mm::Advice;
        let adv = match advice {
            Advice::DontNeed => return self.madvise_dontneed(addr, len),
            Advice::Free => libc::MADV_FREE,
            Advice::PopulateRead => 22,  // MADV_POPULATE_READ (5.14+)
            Advice::PopulateWrite => 23, // MADV_POPULATE_WRITE
            Advice::DontFork => libc::MADV_DONTFORK,
            Advice::DoFork => libc::MADV_DOFORK,
            Advice::WipeOnFork => libc::MADV_WIPEONFORK,
            Advice::KeepOnFork => libc::MADV_KEEPONFORK,
            Advice::GuardInstall => 102, // MADV_GUARD_INSTALL (6.13+)
            Advice::GuardRemove => 103,  // MADV_GUARD_REMOVE
        };
        // A range that wraps the address space is refused by the kernel before it looks at
        // any VMA (EINVAL), so it may be passed on; any other must be the trace's memory.
        let wraps = len
            .checked_add(PAGE_SIZE - 1)
            .and_then(|l| addr.checked_add(l & !(PAGE_SIZE - 1)))
            .is_none();
        if !wraps {
            self.check_owned(addr, len, "madvise")?;
        }
        if advice == Advice::GuardInstall {
            if let Some(why) = self.guard_livelock(addr, len)? {
                return Err(why);
            }
        }
        // The range holds only memory the trace mapped (checked above), or wraps and is
        // refused with EINVAL before anything is done.
        let args = [addr, len, adv as u64, 0, 0, 0];
        let r = self.sys(libc::SYS_madvise, args, "madvise")?;
        if advice == Advice::PopulateWrite && !wraps {
            // A write fault through a shared mapping counts as a store there (trace v2);
            // even one that failed part way may have faulted some pages.
            self.store_reached_files(addr, len)?;
        }
        Ok(r.map(|_| ()))
    }

    fn write(&mut self, addr: u64, len: u64) -> OpResult<()> {
        let r = self.touch(addr, len, true)?;
        self.store_reached_files(addr, len)?;
        Ok(r)
    }

    fn read(&mut self, addr: u64, len: u64) -> OpResult<()> {
        self.touch(addr, len, false)
    }

    fn clear_refs(&mut self, value: &str) -> OpResult<()> {
        let path = procfs::path(Some(self.pid()), "clear_refs");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| format!("open {path}: {e}"))?;
        if let Err(e) = f.write(value.as_bytes()) {
            return match e.raw_os_error() {
                Some(c) => Ok(Err(to_errno(c, "clear_refs")?)),
                None => Err(format!("writing {path}: {e}")),
            };
        }
        if crate::mm::parse_kstrtoint(value.trim()) == Ok(4) {
            if self.flavour == KernelFlavour::Uffd {
                self.protect_all()?;
            }
            // Every soft-dirty bit of the process is clear, as in the model.
            self.cur.tainted = None;
            self.cur.precise_only.clear();
        }
        Ok(Ok(()))
    }

    fn pagemap(
        &mut self,
        start: u64,
        pages: u64,
        f: &mut dyn FnMut(u64, u64),
    ) -> Result<(), String> {
        let mut done = 0;
        while done < pages {
            let n = (pages - done).min(512);
            let s = start + done * PAGE_SIZE;
            let entries = self.read_pagemap(s, n as usize)?;
            let written = if self.flavour == KernelFlavour::Uffd {
                self.runs_of(s, n * PAGE_SIZE, PAGE_IS_WRITTEN)?
            } else {
                Vec::new()
            };
            for (i, mut e) in entries.into_iter().enumerate() {
                e &= !PM_PFN_MASK;
                if self.flavour == KernelFlavour::Uffd {
                    // Bit 55 is WRITTEN; a uffd-wp marker is not a swap entry to the model.
                    let i = i as u64;
                    if written.iter().any(|&(a, b)| a <= i && i < b) {
                        e |= PM_SOFT_DIRTY;
                    }
                    if e & PM_PRESENT == 0 && e & PM_UFFD_WP != 0 {
                        e &= !PM_SWAP;
                    }
                    e &= !PM_UFFD_WP;
                }
                f(s + i as u64 * PAGE_SIZE, e);
            }
            done += n;
        }
        Ok(())
    }

    fn scan(&mut self, args: &ScanArgs) -> OpResult<ScanResult> {
        if args.clear && self.flavour == KernelFlavour::SoftDirty {
            return self.scan_clear_softdirty(args);
        }
        let pages = args.end.saturating_sub(args.start).div_ceil(PAGE_SIZE);
        let n = args.vec_len.min(pages.saturating_add(1));
        let buf = RegionBuf::new(n as usize)?;
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: if args.clear { PM_SCAN_WP_MATCHING } else { 0 },
            start: args.start,
            end: args.end,
            walk_end: 0,
            vec: if args.vec_len == 0 { 0 } else { buf.ptr as u64 },
            vec_len: args.vec_len,
            max_pages: args.max_pages,
            category_inverted: self.cats_in(args.inverted),
            category_mask: self.cats_in(args.mask),
            category_anyof_mask: self.cats_in(args.anyof),
            return_mask: self.cats_in(args.ret),
        };
        let count = match pm_scan(&self.cur.pagemap, &mut arg) {
            Ok(c) => c as usize,
            Err(e) => return Ok(Err(to_errno(e, "PAGEMAP_SCAN")?)),
        };
        if count > buf.len {
            return Err(format!(
                "PAGEMAP_SCAN returned {count} regions, more than the {} pages scanned",
                buf.len
            ));
        }
        let uffd = self.flavour == KernelFlavour::Uffd;
        let regions = buf
            .regions(count)
            .iter()
            .map(|r| {
                let mut c = r.categories;
                if uffd && c & PAGE_IS_WRITTEN != 0 {
                    if args.ret & PAGE_IS_SOFT_DIRTY != 0 {
                        c |= PAGE_IS_SOFT_DIRTY;
                    }
                    if args.ret & PAGE_IS_WRITTEN == 0 {
                        c &= !PAGE_IS_WRITTEN;
                    }
                }
                Region {
                    start: r.start,
                    end: r.end,
                    categories: c,
                }
            })
            .collect();
        Ok(Ok(ScanResult {
            regions,
            walk_end: arg.walk_end,
        }))
    }

    fn scan_unobservable(&self, args: &ScanArgs) -> Option<String> {
        let cats = args.mask | args.anyof | args.inverted | args.ret;
        let odd = PAGE_IS_WRITTEN | PAGE_IS_WPALLOWED | PAGE_IS_SWAPPED;
        if let Some(why) = &self.cur.tainted {
            if cats & PAGE_IS_SOFT_DIRTY != 0 {
                return Some(format!("soft-dirty since a `scan ... clear` {why}"));
            }
        }
        if cats & PAGE_IS_SOFT_DIRTY != 0 {
            if let Some(why) = self.precise_only_in(args.start, args.end.saturating_sub(args.start))
            {
                return Some(why);
            }
        }
        if self.flavour == KernelFlavour::Uffd && cats & odd != 0 {
            return Some(
                "the scan uses `written`, `wpallowed` or `swapped`, which uffd registration \
                 changes (the model reports unregistered memory)"
                    .to_string(),
            );
        }
        None
    }

    fn take_scan_skip(&mut self) -> Option<String> {
        self.scan_skip.take()
    }

    fn smaps_vmflags(&mut self, addr: u64) -> Result<Option<String>, String> {
        self.vmflags(addr)
    }

    fn softdirty_runs_masked(
        &mut self,
        addr: u64,
        len: u64,
    ) -> Result<(Vec<Range<u64>>, Vec<Range<u64>>), Unobservable> {
        let base = page_down(addr);
        let end = page_up(addr.saturating_add(len));
        let mask: Vec<Range<u64>> = self
            .cur
            .precise_only
            .iter()
            .filter(|&&(s, e, _)| s < end && base < e)
            .map(|&(s, e, _)| ((s.max(base) - base) / PAGE_SIZE)..((e.min(end) - base) / PAGE_SIZE))
            .collect();
        let saved = std::mem::take(&mut self.cur.precise_only);
        let runs = self.softdirty_runs(addr, len);
        self.cur.precise_only = saved;
        Ok((runs?, mask))
    }

    fn softdirty_runs(&mut self, addr: u64, len: u64) -> Result<Vec<Range<u64>>, Unobservable> {
        if let Some(why) = self.precise_only_in(addr, len) {
            return Err(Unobservable::Skip(why));
        }
        if let Some(why) = &self.cur.tainted {
            return Err(Unobservable::Skip(format!(
                "soft-dirty since a `scan ... clear` {why}"
            )));
        }
        match self.flavour {
            KernelFlavour::Uffd => self
                .runs_of(addr, len, PAGE_IS_WRITTEN)
                .map(ranges)
                .map_err(Unobservable::Broken),
            KernelFlavour::SoftDirty => self
                .pagemap_runs(addr, len, PM_SOFT_DIRTY)
                .map(ranges)
                .map_err(Unobservable::Broken),
        }
    }

    fn present_runs(&mut self, addr: u64, len: u64) -> Result<Vec<Range<u64>>, Unobservable> {
        self.runs_of(addr, len, PAGE_IS_PRESENT)
            .map(ranges)
            .map_err(Unobservable::Broken)
    }

    fn vma_count(&mut self, addr: u64, len: u64) -> Result<u64, Unobservable> {
        let end = addr.saturating_add(len);
        let maps = self.maps().map_err(Unobservable::Broken)?;
        Ok(maps
            .iter()
            .filter(|m| m.start < end && m.end > addr)
            .count() as u64)
    }

    fn faults(&mut self) -> Result<u64, Unobservable> {
        Err(Unobservable::Skip(format!(
            "the kernel ({} flavour) does not count simulated write faults",
            self.flavour.name()
        )))
    }
}

/// `(start, end)` page-index pairs as ranges (the [`Backend`] form).
fn ranges(v: Vec<(u64, u64)>) -> Vec<Range<u64>> {
    v.into_iter().map(|(s, e)| s..e).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_set_coalesces_and_splits() {
        let Ok(mut b) = KernelBackend::new(Some(KernelFlavour::Uffd)) else {
            return;
        };
        b.own(0x1000, 0x3000);
        b.own(0x3000, 0x5000);
        assert_eq!(b.owned(), vec![(0x1000, 0x5000)]);
        b.disown(0x2000, 0x3000);
        assert_eq!(b.owned(), vec![(0x1000, 0x2000), (0x3000, 0x5000)]);
        assert!(b.covered(0x3000, 0x5000));
        assert!(!b.covered(0x1000, 0x3000));
        b.cur.owned.clear();
    }
}
