//! Recording a real program's address-space history as a trace v2 (`softdirty record`).
//!
//! The recorder runs the program under ptrace and writes, as trace lines, every system
//! call that changes its layout (mmap, munmap, mprotect, pkey_mprotect, mremap, madvise,
//! brk, shmat, shmdt; fork and clone as new spaces, execve as a fresh one) with the
//! kernel's result, and the pages the program wrote between them, which it takes from
//! the kernel's own write tracking, never guessed:
//!
//! - **Which system calls stop.** A seccomp filter, installed in the child before the
//!   first execve and inherited by every process and thread the program starts, returns
//!   `SECCOMP_RET_TRACE` for exactly those calls, so the other calls never stop. At the
//!   seccomp stop (the call's entry) the recorder harvests the space's written pages; at
//!   the call's exit stop it writes the call with its result.
//! - **Where the written pages come from.** Each address space gets a userfaultfd made
//!   in it: the recorder makes the traced process call `userfaultfd(2)` (its registers
//!   pointed at a `syscall` instruction of its vDSO, then restored), pulls the descriptor
//!   over with `pidfd_getfd(2)`, closes the process's copy the same way, and arms it with
//!   `UFFD_FEATURE_WP_ASYNC | WP_UNPOPULATED`. Every writable mapping is registered for
//!   write-protect and write-protected when it appears (at exec, at a fork child's first
//!   stop, at the exit of the call that made it, while the caller is stopped). A harvest
//!   is `PAGEMAP_SCAN(PM_SCAN_WP_MATCHING, PAGE_IS_WRITTEN)` on `/proc/PID/pagemap`: the
//!   pages stored to since the last harvest, each reported once, and protected again in
//!   the same walk. Stores the kernel makes for the program (read(2) into a buffer) fault
//!   like the program's own, so they count.
//! - **Harvest points.** Every `interval`, each live space is harvested and the trace
//!   gets a harvest point: `scan` of the whole space (what `softdirty compare` measures)
//!   and `clear_refs 4`, as CRIU's pre-dump iterations do.
//!
//! What it cannot see is counted and stated in the trace's header ([`Summary::unrecorded`]):
//! advices and flags that the format has no word for, and mappings that refuse
//! registration. x86-64 Linux 6.7+ only.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsString};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::uapi::*;
use super::{last_errno, page_up, pm_scan, uffd_api, uffd_register_wp, RegionBuf};
use crate::backend::{Command, Op};
use crate::errno::Errno;
use crate::linux::{PAGE_SIZE, TASK_SIZE};
use crate::mm::{Advice, MapOpts, Placement};
use crate::prot::Prot;
use crate::scan::ScanArgs;

/// What to record and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// The program and its arguments; the program is looked up in `PATH` when it has
    /// no `/`.
    pub program: Vec<OsString>,
    /// The time between harvest points.
    pub interval: Duration,
    /// Kill the program after this long (the trace then says it was cut).
    pub max_time: Option<Duration>,
    /// Where the written pages come from; `None`: soft-dirty where the kernel has it
    /// (no registration changes the program's VMAs, and the trace checks itself), else
    /// userfaultfd.
    pub source: Option<Source>,
}

/// The kernel's page-level write tracking the recorder reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// userfaultfd async write-protect (Linux 6.7+), in every space.
    Uffd,
    /// PTE soft-dirty (CONFIG_MEM_SOFT_DIRTY): every harvest reads `/proc/PID/pagemap`,
    /// writes the kernel's answers as `expect softdirty` lines, and clears with
    /// `clear_refs 4` (in the trace and in the kernel).
    SoftDirty,
}

/// Why a recording could not be made at all (nothing was written).
#[derive(Debug)]
pub enum RecordError {
    /// The program does not exist or cannot be executed.
    Program(String),
    /// The kernel or the permissions do not allow recording (named, with the remedy).
    Unavailable(String),
    /// Writing the trace failed.
    Io(std::io::Error),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Program(s) | RecordError::Unavailable(s) => f.write_str(s),
            RecordError::Io(e) => write!(f, "writing the trace: {e}"),
        }
    }
}

impl std::error::Error for RecordError {}

impl From<std::io::Error> for RecordError {
    fn from(e: std::io::Error) -> RecordError {
        RecordError::Io(e)
    }
}

/// What a finished recording saw (the header of its trace says the same).
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// How the program ended: `exit status N`, `killed by signal N`, or why the recording
    /// was cut.
    pub ended: String,
    /// Whether the recording stopped before the program ended by itself (a signal that
    /// killed it, `max_time`, an interrupt).
    pub cut: bool,
    /// Address spaces recorded (the first exec, each fork, each later exec).
    pub spaces: u64,
    /// Recorded system calls by name (successful and failed).
    pub calls: BTreeMap<&'static str, u64>,
    /// Pages reported written, summed over harvests.
    pub pages_written: u64,
    /// Harvest points (every `interval`).
    pub harvest_points: u64,
    /// What the trace could not express, with counts.
    pub unrecorded: BTreeMap<String, u64>,
    /// The program's wall time under the recorder.
    pub wall: Duration,
    /// The write tracking used.
    pub source: Option<Source>,
    /// `expect softdirty` lines written (soft-dirty source).
    pub expectations: u64,
    /// The most VMAs the kernel held at a harvest point, summed over the live spaces
    /// (the lines of `/proc/PID/maps`, special mappings included).
    pub peak_vmas: u64,
}

/// One line of the recording, in order: the trace language (`softdirty_trace::render`)
/// writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A command (`space`, `fork`, a layout call, `write`, `file`, `clear_refs`, `scan`, ...).
    Command(Command),
    /// An expectation about the command before it.
    Expect(Expectation),
    /// A comment line (a mapped file's path, a call the format cannot express).
    Comment(String),
}

/// What the kernel answered, as the trace checks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expectation {
    /// `expect err ERRNO`: the call failed so.
    Err(Errno),
    /// `expect brk ADDR`: the program break is now `ADDR`.
    Brk(u64),
    /// `expect softdirty ADDR LEN PAGES`: exactly these page runs (relative, half-open)
    /// of the range report soft-dirty (the soft-dirty source).
    SoftDirty {
        /// the range's start
        addr: u64,
        /// its length in bytes
        len: u64,
        /// the soft-dirty runs of page indices relative to `addr`
        runs: Vec<(u64, u64)>,
    },
}

/// Where a recording goes: each event, in order; an error stops the recording.
pub type Sink<'a> = dyn FnMut(Event) -> std::io::Result<()> + 'a;

// x86-64 system call numbers of the calls that stop.
const SYS_MMAP: u64 = 9;
const SYS_MPROTECT: u64 = 10;
const SYS_MUNMAP: u64 = 11;
const SYS_BRK: u64 = 12;
const SYS_MREMAP: u64 = 25;
const SYS_MADVISE: u64 = 28;
const SYS_SHMAT: u64 = 30;
const SYS_CLONE: u64 = 56;
const SYS_FORK: u64 = 57;
const SYS_VFORK: u64 = 58;
const SYS_EXECVE: u64 = 59;
const SYS_SHMDT: u64 = 67;
const SYS_EXECVEAT: u64 = 322;
const SYS_PKEY_MPROTECT: u64 = 329;
const SYS_CLONE3: u64 = 435;
const TRACED: [u64; 15] = [
    SYS_MMAP,
    SYS_MPROTECT,
    SYS_MUNMAP,
    SYS_BRK,
    SYS_MREMAP,
    SYS_MADVISE,
    SYS_SHMAT,
    SYS_CLONE,
    SYS_FORK,
    SYS_VFORK,
    SYS_EXECVE,
    SYS_SHMDT,
    SYS_EXECVEAT,
    SYS_PKEY_MPROTECT,
    SYS_CLONE3,
];
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SYS_USERFAULTFD: u64 = 323;
const SYS_CLOSE: u64 = 3;

/// The seccomp filter: `SECCOMP_RET_TRACE` for the calls in [`TRACED`], allow the rest.
fn filter() -> Vec<libc::sock_filter> {
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let n = TRACED.len() as u8;
    let mut f = vec![
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 4), // seccomp_data.arch
        jump(AUDIT_ARCH_X86_64, 0, n + 1),                   // else: allow
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0), // seccomp_data.nr
    ];
    for (i, &nr) in TRACED.iter().enumerate() {
        // match: jump over the remaining tests and the allow to the trace
        f.push(jump(nr as u32, n - i as u8, 0));
    }
    f.push(stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW));
    f.push(stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_TRACE));
    f
}

/// A system call's entry, kept until its exit stop.
#[derive(Clone, Copy, Debug)]
struct Pending {
    nr: u64,
    args: [u64; 6],
}

/// A traced thread.
#[derive(Debug)]
struct Task {
    /// its address space (an index into `Recorder::spaces`); `None` before the first exec
    space: Option<usize>,
    /// the call between its seccomp stop and its exit stop
    pending: Option<Pending>,
    /// not yet seen stopped (a new task's first stop initialises it)
    fresh: bool,
}

/// A recorded address space: one mm.
struct Space {
    name: String,
    /// a live task of it (for /proc and injection)
    pid: i32,
    uffd: Option<OwnedFd>,
    pagemap: Option<File>,
    /// `/proc/PID/clear_refs` (soft-dirty source)
    clear_refs: Option<File>,
    tasks: u64,
    /// the current program break, as the trace knows it
    brk: Option<u64>,
    /// shmat attachments: address -> length
    shm: HashMap<u64, u64>,
    /// made by fork, not yet armed (its first stop does it)
    unarmed: bool,
}

/// A file seen mapped: its trace name and last declared size.
struct FileInfo {
    name: String,
    memfd: bool,
    size: u64,
    /// an `O_PATH` descriptor, to see its size change (at most `MAX_WATCHED`)
    fd: Option<OwnedFd>,
}

/// At most this many files keep a descriptor for size changes.
const MAX_WATCHED: usize = 1024;

struct Recorder<'a, 'b> {
    out: &'a mut Sink<'b>,
    source: Source,
    tasks: HashMap<i32, Task>,
    spaces: Vec<Space>,
    files: HashMap<(u64, u64), FileInfo>,
    used_names: HashMap<String, u32>,
    /// the space the trace's `space` lines last selected
    current: Option<usize>,
    /// tasks that stopped before their parent's clone event named them
    early: Vec<i32>,
    /// tasks stopped at the entry of a layout call while another task of their space was
    /// inside one (see [`Recorder::busy`]): processed, in order, when it leaves
    deferred: Vec<i32>,
    root: i32,
    execs: u64,
    forks: u64,
    sum: Summary,
    regions: RegionBuf,
}

fn errno_name(e: i32) -> String {
    match crate::errno::Errno::from_code(e) {
        Some(x) => x.name().to_string(),
        None => format!("errno {e}"),
    }
}

/// `PROT_READ | PROT_WRITE | PROT_EXEC` of a system call argument.
fn prot(p: u64) -> Prot {
    Prot::from_bits((p & 7) as i32)
}

/// The trace v2 advice of a madvise advice, if it has one.
fn advice(a: u64) -> Option<Advice> {
    Some(match a {
        4 | 24 => Advice::DontNeed, // MADV_DONTNEED, MADV_DONTNEED_LOCKED
        8 => Advice::Free,
        10 => Advice::DontFork,
        11 => Advice::DoFork,
        18 => Advice::WipeOnFork,
        19 => Advice::KeepOnFork,
        22 => Advice::PopulateRead,
        23 => Advice::PopulateWrite,
        102 => Advice::GuardInstall,
        103 => Advice::GuardRemove,
        _ => return None,
    })
}

/// A `madvise` of the trace: `dontneed` is [`Op::DontNeed`].
fn madvise_op(addr: u64, len: u64, a: Advice) -> Op {
    match a {
        Advice::DontNeed => Op::DontNeed { addr, len },
        advice => Op::Madvise { addr, len, advice },
    }
}

/// The harvest point's scan: soft-dirty over the whole space.
fn harvest_scan() -> Command {
    Command::Scan(ScanArgs {
        start: 0,
        end: TASK_SIZE,
        mask: PAGE_IS_SOFT_DIRTY,
        anyof: 0,
        inverted: 0,
        ret: PAGE_IS_SOFT_DIRTY,
        clear: false,
        max_pages: 0,
        vec_len: 1024,
    })
}

fn advice_name(a: u64) -> String {
    match a {
        0 => "normal".into(),
        1 => "random".into(),
        2 => "sequential".into(),
        3 => "willneed".into(),
        9 => "remove".into(),
        12 => "mergeable".into(),
        13 => "unmergeable".into(),
        14 => "hugepage".into(),
        15 => "nohugepage".into(),
        16 => "dontdump".into(),
        17 => "dodump".into(),
        20 => "cold".into(),
        21 => "pageout".into(),
        25 => "collapse".into(),
        _ => format!("advice {a}"),
    }
}

/// The kernel's errno in a system call's return value, if it failed.
fn failed(ret: u64) -> Option<i32> {
    let r = ret as i64;
    (-4095..0).contains(&r).then_some(-r as i32)
}

fn ptrace(req: libc::c_uint, pid: i32, addr: u64, data: u64) -> Result<i64, i32> {
    // SAFETY: every request made here either takes plain integers or, for GETREGS,
    // SETREGS and GETEVENTMSG, a pointer to a live object of the type the request
    // reads or writes (the callers pass `&mut user_regs_struct` / `&mut c_ulong`).
    let r = unsafe {
        libc::ptrace(
            req,
            pid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if r == -1 {
        let e = last_errno();
        if e != 0 {
            return Err(e);
        }
    }
    Ok(r)
}

fn getregs(pid: i32) -> Result<libc::user_regs_struct, i32> {
    // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
    let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    ptrace(libc::PTRACE_GETREGS, pid, 0, &mut r as *mut _ as u64)?;
    Ok(r)
}

fn setregs(pid: i32, r: &libc::user_regs_struct) -> Result<(), i32> {
    ptrace(libc::PTRACE_SETREGS, pid, 0, r as *const _ as u64).map(drop)
}

fn resume(pid: i32, syscall: bool, sig: i32) {
    let req = if syscall {
        libc::PTRACE_SYSCALL
    } else {
        libc::PTRACE_CONT
    };
    // ESRCH: the task died meanwhile; its exit is reported by waitpid.
    let _ = ptrace(req, pid, 0, sig as u64);
}

fn waitpid(pid: i32, flags: i32) -> Result<Option<(i32, i32)>, i32> {
    let mut st = 0;
    // SAFETY: waitpid writes one int to `st`, which lives across the call.
    let r = unsafe { libc::waitpid(pid, &mut st, flags | libc::__WALL) };
    match r {
        0 => Ok(None),
        r if r > 0 => Ok(Some((r, st))),
        _ => Err(last_errno()),
    }
}

/// One line of `/proc/PID/maps`, with what the recorder needs.
#[derive(Clone, Debug)]
struct MapLine {
    start: u64,
    end: u64,
    perms: String,
    offset: u64,
    inode: u64,
    path: String,
}

fn read_maps(pid: i32) -> Result<Vec<MapLine>, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| format!("reading /proc/{pid}/maps: {e}"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(6, ' ');
            let (a, b) = f.next()?.split_once('-')?;
            let perms = f.next()?.to_string();
            let offset = u64::from_str_radix(f.next()?, 16).ok()?;
            let _dev = f.next()?;
            let inode = f.next()?.parse().ok()?;
            let path = f.next().unwrap_or("").trim_start().to_string();
            Some(MapLine {
                start: u64::from_str_radix(a, 16).ok()?,
                end: u64::from_str_radix(b, 16).ok()?,
                perms,
                offset,
                inode,
                path,
            })
        })
        .collect())
}

/// `VmFlags` of every VMA of `pid`, by start address.
fn read_vmflags(pid: i32) -> HashMap<u64, Vec<String>> {
    let mut out = HashMap::new();
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return out;
    };
    let mut cur = None;
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("VmFlags:") {
            if let Some(s) = cur.take() {
                out.insert(s, rest.split_ascii_whitespace().map(String::from).collect());
            }
        } else if let Some((a, _)) = l.split_once('-') {
            if let Ok(s) = u64::from_str_radix(a, 16) {
                if l.split_ascii_whitespace().count() >= 5 {
                    cur = Some(s);
                }
            }
        }
    }
    out
}

/// `start_brk` (field 47 of /proc/PID/stat).
fn start_brk(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the fields after the command name, which is in parentheses and may hold spaces
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_ascii_whitespace().nth(47 - 3)?.parse().ok()
}

impl Recorder<'_, '_> {
    /// Emits `ev` in space `space` (a `space` command first if another was current).
    fn emit(&mut self, space: usize, ev: Event) -> Result<(), RecordError> {
        if self.current != Some(space) {
            (self.out)(Event::Command(Command::Space(
                self.spaces[space].name.clone(),
            )))?;
            self.current = Some(space);
        }
        (self.out)(ev)?;
        Ok(())
    }

    fn cmd(&mut self, space: usize, c: impl Into<Command>) -> Result<(), RecordError> {
        self.emit(space, Event::Command(c.into()))
    }

    /// `expect err` for the kernel's errno `e` (a number the trace cannot name is noted).
    fn expect_err(&mut self, space: usize, e: i32) -> Result<(), RecordError> {
        match Errno::from_code(e) {
            Some(x) => self.emit(space, Event::Expect(Expectation::Err(x))),
            None => {
                self.note(format!(
                    "a failure with errno {e}, which the format cannot name"
                ));
                Ok(())
            }
        }
    }

    fn note(&mut self, what: impl Into<String>) {
        *self.sum.unrecorded.entry(what.into()).or_insert(0) += 1;
    }

    fn count(&mut self, call: &'static str) {
        *self.sum.calls.entry(call).or_insert(0) += 1;
    }

    /// A trace name for a file path: `[a-z0-9_]+`, unique.
    fn file_name(&mut self, path: &str) -> String {
        let base = path.rsplit('/').next().unwrap_or(path);
        let base = base.strip_suffix(" (deleted)").unwrap_or(base);
        let base = base.strip_prefix("memfd:").unwrap_or(base);
        let mut s: String = base
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        if s.is_empty() {
            s.push('f');
        }
        let n = self.used_names.entry(s.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            s = format!("{s}_{n}");
        }
        s
    }

    /// The trace file behind descriptor `fd` of `pid` (declared now if new or resized):
    /// `(name, kind)`, where kind is `None` for a regular file or memfd, or the reason it
    /// is recorded as shared anonymous memory instead.
    fn file_of(
        &mut self,
        space: usize,
        proc_path: &str,
        shown: Option<&str>,
    ) -> Result<Result<String, &'static str>, RecordError> {
        let c = CString::new(proc_path).unwrap_or_default();
        // SAFETY: `c` is a NUL-terminated path; O_PATH opens no data access.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if fd < 0 {
            return Ok(Err("a mapped file the recorder cannot open"));
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: both structs are plain integers (all-zero valid); fstat/fstatfs fill
        // them from a live descriptor.
        let (st, fs) = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            let mut fs: libc::statfs = std::mem::zeroed();
            if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
                return Ok(Err("a mapped file the recorder cannot stat"));
            }
            if libc::fstatfs(fd.as_raw_fd(), &mut fs) != 0 {
                fs.f_type = 0;
            }
            (st, fs)
        };
        let fmt = st.st_mode & libc::S_IFMT;
        if fmt != libc::S_IFREG {
            return Ok(Err(
                "a mapping of a special file (device, anonymous inode), recorded as shared anonymous memory",
            ));
        }
        let key = (st.st_dev, st.st_ino);
        let size = st.st_size as u64;
        if let Some(f) = self.files.get_mut(&key) {
            if f.size != size {
                f.size = size;
                let (name, memfd) = (f.name.clone(), f.memfd);
                self.cmd(space, Command::File { name, memfd, size })?;
            }
            return Ok(Ok(self.files[&key].name.clone()));
        }
        let link = match shown {
            Some(p) => p.to_string(),
            None => std::fs::read_link(proc_path)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        let memfd = fs.f_type == libc::TMPFS_MAGIC || link.starts_with("/memfd:");
        let name = self.file_name(&link);
        self.emit(space, Event::Comment(link.replace(['\n', '\r'], " ")))?;
        self.cmd(
            space,
            Command::File {
                name: name.clone(),
                memfd,
                size,
            },
        )?;
        let watched = self.files.values().filter(|f| f.fd.is_some()).count() < MAX_WATCHED;
        self.files.insert(
            key,
            FileInfo {
                name: name.clone(),
                memfd,
                size,
                fd: watched.then_some(fd),
            },
        );
        Ok(Ok(name))
    }

    /// Declares the new size of every watched file that changed.
    fn resync_files(&mut self, space: usize) -> Result<(), RecordError> {
        let mut changed = Vec::new();
        for f in self.files.values_mut() {
            let Some(fd) = &f.fd else { continue };
            // SAFETY: plain integers; fstat fills it from a live descriptor.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: as above; `st` lives across the call.
            if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0 && st.st_size as u64 != f.size {
                f.size = st.st_size as u64;
                changed.push((f.name.clone(), f.memfd, f.size));
            }
        }
        changed.sort();
        for (name, memfd, size) in changed {
            self.cmd(space, Command::File { name, memfd, size })?;
        }
        Ok(())
    }

    /// Makes task `tid` (stopped, its registers final) run system call `nr` with `args`
    /// from its vDSO's `syscall` instruction; returns the raw result and restores its
    /// registers.
    fn inject(&mut self, tid: i32, gadget: u64, nr: u64, args: [u64; 6]) -> Result<u64, String> {
        let saved = getregs(tid).map_err(|e| format!("PTRACE_GETREGS: {}", errno_name(e)))?;
        let mut r = saved;
        r.rip = gadget;
        r.rax = nr;
        r.orig_rax = u64::MAX;
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        r.r10 = args[3];
        r.r8 = args[4];
        r.r9 = args[5];
        setregs(tid, &r).map_err(|e| format!("PTRACE_SETREGS: {}", errno_name(e)))?;
        // entry stop, then exit stop (a signal arriving first is delivered later: the
        // task keeps it pending while it is stopped here)
        for _ in 0..2 {
            loop {
                resume(tid, true, 0);
                match waitpid(tid, 0) {
                    Ok(Some((_, st))) if libc::WIFSTOPPED(st) => {
                        if libc::WSTOPSIG(st) == libc::SIGTRAP | 0x80 {
                            break;
                        }
                        // another stop (a signal): suppressed here, the task re-raises
                        // nothing; count it
                        self.note("a signal that arrived during the recorder's injected system call (dropped)");
                    }
                    Ok(_) => return Err("the task died during an injected system call".into()),
                    Err(e) => return Err(format!("waitpid: {}", errno_name(e))),
                }
            }
        }
        let res = getregs(tid)
            .map_err(|e| format!("PTRACE_GETREGS: {}", errno_name(e)))?
            .rax;
        setregs(tid, &saved).map_err(|e| format!("PTRACE_SETREGS: {}", errno_name(e)))?;
        Ok(res)
    }

    /// Gives space `s` (its task `tid` stopped with final registers) a userfaultfd armed
    /// for async write-protect, and registers and protects its writable mappings.
    fn arm(&mut self, s: usize, tid: i32) -> Result<(), RecordError> {
        if self.source == Source::SoftDirty {
            let tgid = self.spaces[s].pid;
            let open = |name: &str, write: bool| {
                std::fs::OpenOptions::new()
                    .read(!write)
                    .write(write)
                    .open(format!("/proc/{tgid}/{name}"))
                    .map_err(|e| RecordError::Unavailable(format!("/proc/{tgid}/{name}: {e}")))
            };
            self.spaces[s].pagemap = Some(open("pagemap", false)?);
            self.spaces[s].clear_refs = Some(open("clear_refs", true)?);
            self.spaces[s].unarmed = false;
            return Ok(());
        }
        let maps = read_maps(tid).map_err(RecordError::Unavailable)?;
        let vdso = maps
            .iter()
            .find(|m| m.path == "[vdso]")
            .ok_or_else(|| RecordError::Unavailable("the program has no vDSO (booted with vdso=0?): the recorder runs its system calls from it".into()))?;
        let mem = File::open(format!("/proc/{tid}/mem"))
            .map_err(|e| RecordError::Unavailable(format!("/proc/{tid}/mem: {e}")))?;
        let mut code = vec![0u8; (vdso.end - vdso.start) as usize];
        mem.read_exact_at(&mut code, vdso.start)
            .map_err(|e| RecordError::Unavailable(format!("reading the vDSO: {e}")))?;
        let gadget = code
            .windows(2)
            .position(|w| w == [0x0f, 0x05])
            .map(|i| vdso.start + i as u64)
            .ok_or_else(|| RecordError::Unavailable("no syscall instruction in the vDSO".into()))?;
        let unavailable = RecordError::Unavailable;
        let base = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
        let mut fd = self
            .inject(tid, gadget, SYS_USERFAULTFD, [base, 0, 0, 0, 0, 0])
            .map_err(unavailable)?;
        if matches!(failed(fd), Some(libc::EPERM | libc::EACCES)) {
            fd = self
                .inject(
                    tid,
                    gadget,
                    SYS_USERFAULTFD,
                    [base | UFFD_USER_MODE_ONLY as u64, 0, 0, 0, 0, 0],
                )
                .map_err(RecordError::Unavailable)?;
        }
        if let Some(e) = failed(fd) {
            return Err(RecordError::Unavailable(format!(
                "userfaultfd(2) in the program failed ({}): recording needs userfaultfd \
                 (CONFIG_USERFAULTFD; UFFD_USER_MODE_ONLY, Linux 5.11+, or \
                 vm.unprivileged_userfaultfd=1, or CAP_SYS_PTRACE)",
                errno_name(e)
            )));
        }
        let tgid = self.spaces[s].pid;
        // SAFETY: pidfd_open and pidfd_getfd take integers and return a new descriptor.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, tgid, 0) };
        let got = if pidfd >= 0 {
            // SAFETY: as above; `pidfd` is ours and closed just below.
            let u = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) };
            let e = last_errno();
            // SAFETY: `pidfd` is a descriptor we own and no longer use.
            unsafe { libc::close(pidfd as i32) };
            if u >= 0 {
                Ok(u as i32)
            } else {
                Err(e)
            }
        } else {
            Err(last_errno())
        };
        // the program's copy goes away whatever happened
        let _ = self.inject(tid, gadget, SYS_CLOSE, [fd, 0, 0, 0, 0, 0]);
        let u = got.map_err(|e| {
            RecordError::Unavailable(format!(
                "pidfd_getfd(2) failed ({}): it needs Linux 5.6+ and ptrace access to the program",
                errno_name(e)
            ))
        })?;
        // SAFETY: pidfd_getfd returned a new descriptor that nothing else owns.
        let u = unsafe { OwnedFd::from_raw_fd(u) };
        let need = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
        uffd_api(&u, need).map_err(|e| {
            RecordError::Unavailable(format!(
                "UFFDIO_API with WP_ASYNC | WP_UNPOPULATED failed ({}): recording needs Linux 6.7+",
                errno_name(e)
            ))
        })?;
        let pagemap = File::open(format!("/proc/{tgid}/pagemap"))
            .map_err(|e| RecordError::Unavailable(format!("/proc/{tgid}/pagemap: {e}")))?;
        self.spaces[s].uffd = Some(u);
        self.spaces[s].pagemap = Some(pagemap);
        self.spaces[s].unarmed = false;
        for m in maps
            .iter()
            .filter(|m| m.perms.as_bytes().get(1) == Some(&b'w'))
        {
            self.protect(s, m.start, m.end - m.start, &m.path)?;
        }
        Ok(())
    }

    /// Registers `[start, start+len)` of space `s` for write-protect and protects it.
    fn protect(&mut self, s: usize, start: u64, len: u64, what: &str) -> Result<(), RecordError> {
        let Some(u) = &self.spaces[s].uffd else {
            return Ok(());
        };
        if len == 0 {
            return Ok(());
        }
        if let Err(e) = uffd_register_wp(u, start, len) {
            let kind = if what.is_empty() { "anonymous" } else { what };
            self.note(format!(
                "writes to a mapping that refused write-protect registration ({}; {kind})",
                errno_name(e)
            ));
            return Ok(());
        }
        let mut wp = UffdioWriteprotect {
            range: UffdioRange { start, len },
            mode: UFFDIO_WRITEPROTECT_MODE_WP,
        };
        // SAFETY: UFFDIO_WRITEPROTECT reads one `struct uffdio_writeprotect` (layout
        // checked in uapi.rs), which lives across the call.
        let r = unsafe { libc::ioctl(u.as_raw_fd(), UFFDIO_WRITEPROTECT as _, &mut wp) };
        if r != 0 {
            let e = last_errno();
            self.note(format!(
                "writes to a mapping that refused write-protection ({})",
                errno_name(e)
            ));
        }
        Ok(())
    }

    /// Harvests space `s`'s written pages in `[start, end)` (protecting them again);
    /// returns them as page-aligned runs.
    fn written(&mut self, s: usize, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let Some(pm) = &self.spaces[s].pagemap else {
            return runs;
        };
        let n_max = self.regions.len;
        let mut cur = start;
        while cur < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags: PM_SCAN_WP_MATCHING,
                start: cur,
                end,
                vec: self.regions.ptr as u64,
                vec_len: n_max as u64,
                category_mask: PAGE_IS_WRITTEN,
                return_mask: PAGE_IS_WRITTEN,
                ..PmScanArg::default()
            };
            let Ok(n) = pm_scan(pm, &mut arg) else {
                // the space is exiting (ESRCH) or gone
                break;
            };
            for r in self.regions.regions(n as usize) {
                match runs.last_mut() {
                    Some(l) if l.1 == r.start => l.1 = r.end,
                    _ => runs.push((r.start, r.end)),
                }
            }
            if (n as usize) < n_max || arg.walk_end <= cur {
                break;
            }
            cur = arg.walk_end;
        }
        runs
    }

    fn emit_writes(&mut self, s: usize, runs: &[(u64, u64)]) -> Result<(), RecordError> {
        for &(a, b) in runs {
            self.sum.pages_written += (b - a) / PAGE_SIZE;
            self.cmd(
                s,
                Command::Write {
                    addr: a,
                    len: b - a,
                },
            )?;
        }
        Ok(())
    }

    /// Harvests the whole space `s`: writes its written pages; with `point`, a harvest
    /// point (`scan`, then `clear_refs 4`). On the soft-dirty source every harvest also
    /// writes the kernel's answers as `expect softdirty` and clears (in the kernel and in
    /// the trace), since clearing is how the next harvest tells new stores.
    fn harvest(&mut self, s: usize, point: bool) -> Result<(), RecordError> {
        if self.spaces[s].pagemap.is_none() {
            return Ok(());
        }
        if self.source == Source::SoftDirty {
            return self.harvest_softdirty(s, point);
        }
        let runs = self.written(s, 0, TASK_SIZE);
        if !runs.is_empty() {
            self.resync_files(s)?;
        }
        self.emit_writes(s, &runs)?;
        if point {
            self.cmd(s, harvest_scan())?;
            self.cmd(s, Command::ClearRefs("4".into()))?;
        }
        Ok(())
    }

    /// The soft-dirty harvest of space `s`: reads pagemap over every VMA; the stores
    /// since the last clear are the pages whose page table entry is soft-dirty (in a VMA
    /// without `VM_SOFTDIRTY` that is bit 55 itself; in one with it, where bit 55 is set
    /// on every page, the present pages that are not the file's own page: a private
    /// copy, or any page of a shared mapping, which overstates shared mappings read but
    /// not written); the kernel's answer per VMA becomes an `expect softdirty`; then
    /// `clear_refs 4`, here and in the trace. A store another thread makes between the
    /// read and the clear is lost to the kernel's soft-dirty as well: the trace and the
    /// kernel agree on it, and the trace lacks that store.
    fn harvest_softdirty(&mut self, s: usize, point: bool) -> Result<(), RecordError> {
        let pid = self.spaces[s].pid;
        let Ok(maps) = read_maps(pid) else {
            return Ok(());
        };
        let flags = read_vmflags(pid);
        let mut written: Vec<(u64, u64)> = Vec::new();
        let mut expects: Vec<Expectation> = Vec::new();
        for m in &maps {
            if m.start >= TASK_SIZE
                || (m.path.starts_with('[') && m.path != "[stack]" && m.path != "[heap]")
            {
                continue;
            }
            let n = ((m.end - m.start) / PAGE_SIZE) as usize;
            if n > 1 << 22 {
                self.note("a VMA over 16 GiB, not read for soft-dirty");
                continue;
            }
            let mut buf = vec![0u8; n * 8];
            let Some(pm) = &self.spaces[s].pagemap else {
                return Ok(());
            };
            if pm.read_exact_at(&mut buf, m.start / PAGE_SIZE * 8).is_err() {
                return Ok(()); // the space is exiting
            }
            let vma_sd = flags
                .get(&m.start)
                .is_some_and(|f| f.iter().any(|x| x == "sd"));
            let shared = m.perms.as_bytes().get(3) == Some(&b's');
            let mut dirty: Vec<(u64, u64)> = Vec::new();
            for (i, c) in buf.chunks_exact(8).enumerate() {
                let e = u64::from_ne_bytes(c.try_into().unwrap_or([0; 8]));
                if e & PM_SOFT_DIRTY == 0 {
                    continue;
                }
                let i = i as u64;
                match dirty.last_mut() {
                    Some(l) if l.1 == i => l.1 = i + 1,
                    _ => dirty.push((i, i + 1)),
                }
                let store = !vma_sd || (e & PM_PRESENT != 0 && (shared || e & PM_FILE == 0));
                if store {
                    let a = m.start + i * PAGE_SIZE;
                    match written.last_mut() {
                        Some(l) if l.1 == a => l.1 = a + PAGE_SIZE,
                        _ => written.push((a, a + PAGE_SIZE)),
                    }
                }
            }
            expects.push(Expectation::SoftDirty {
                addr: m.start,
                len: m.end - m.start,
                runs: dirty,
            });
        }
        if !written.is_empty() {
            self.resync_files(s)?;
        }
        self.emit_writes(s, &written)?;
        for e in expects {
            self.sum.expectations += 1;
            self.emit(s, Event::Expect(e))?;
        }
        if point {
            self.cmd(s, harvest_scan())?;
        }
        self.clear_softdirty(s)
    }

    /// `clear_refs 4` in the kernel and in the trace (soft-dirty source).
    fn clear_softdirty(&mut self, s: usize) -> Result<(), RecordError> {
        if let Some(f) = &mut self.spaces[s].clear_refs {
            if std::io::Write::write_all(f, b"4").is_err() {
                return Ok(()); // the space is exiting
            }
        }
        self.cmd(s, Command::ClearRefs("4".into()))
    }

    /// Is a task of space `s` inside a layout call (between its entry and exit stops)?
    /// A harvest then would see the call half done: a zap of anonymous memory drops the
    /// write-protect markers before the exit stop protects the range again, and 6.18.44
    /// reports the empty entries as written. So harvests of a busy space wait: an
    /// interval harvest point skips it, and another task's entry waits in `deferred`.
    fn busy(&self, s: usize) -> bool {
        self.tasks.values().any(|t| {
            t.space == Some(s)
                && t.pending.is_some_and(|p| {
                    !matches!(
                        p.nr,
                        SYS_CLONE | SYS_CLONE3 | SYS_FORK | SYS_VFORK | SYS_EXECVE | SYS_EXECVEAT
                    )
                })
        })
    }

    /// Processes the deferred entries of space `s` while it is not busy.
    fn drain_deferred(&mut self, s: usize) -> Result<(), RecordError> {
        while !self.busy(s) {
            let Some(i) = self
                .deferred
                .iter()
                .position(|t| self.tasks.get(t).and_then(|t| t.space) == Some(s))
            else {
                break;
            };
            let tid = self.deferred.remove(i);
            self.on_entry(tid)?;
            resume(tid, true, 0);
        }
        Ok(())
    }

    /// A harvest point: every live space harvested, scanned and cleared.
    fn harvest_point(&mut self) -> Result<(), RecordError> {
        let live: Vec<usize> = (0..self.spaces.len())
            .filter(|&s| {
                self.spaces[s].tasks > 0 && self.spaces[s].pagemap.is_some() && !self.busy(s)
            })
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        self.sum.harvest_points += 1;
        let mut vmas = 0;
        for s in live {
            vmas += read_maps(self.spaces[s].pid).map_or(0, |m| m.len() as u64);
            self.harvest(s, true)?;
        }
        self.sum.peak_vmas = self.sum.peak_vmas.max(vmas);
        Ok(())
    }

    /// The initial layout of a freshly exec'd space, then `clear_refs 4`.
    fn layout(&mut self, s: usize, pid: i32) -> Result<(), RecordError> {
        let maps = read_maps(pid).map_err(RecordError::Unavailable)?;
        let flags = read_vmflags(pid);
        let sb = start_brk(pid);
        let mut brk_done = false;
        if let Some(b) = sb {
            if !maps.iter().any(|m| m.path == "[heap]") {
                if b % PAGE_SIZE != 0 {
                    self.note("a start_brk that is not page-aligned (rounded up)");
                }
                let b = page_up(b);
                self.cmd(s, Command::BrkStart(b))?;
                self.spaces[s].brk = Some(b);
                brk_done = true;
            }
        }
        for m in &maps {
            let len = m.end - m.start;
            let prot = prot({
                let p = m.perms.as_bytes();
                (u64::from(p.first() == Some(&b'r')))
                    | (u64::from(p.get(1) == Some(&b'w')) << 1)
                    | (u64::from(p.get(2) == Some(&b'x')) << 2)
            });
            let shared = m.perms.as_bytes().get(3) == Some(&b's');
            let vf = flags.get(&m.start).cloned().unwrap_or_default();
            let has = |f: &str| vf.iter().any(|x| x == f);
            if m.path.starts_with('[') && m.path != "[stack]" && m.path != "[heap]" {
                if m.start < TASK_SIZE {
                    self.note(format!("the special mapping {} (not in the trace)", m.path));
                }
                continue;
            }
            if m.path == "[heap]" {
                if !brk_done {
                    let b = sb.unwrap_or(m.start).min(m.start);
                    self.cmd(s, Command::BrkStart(b))?;
                    if b < m.start {
                        self.note("a heap that does not start at start_brk");
                    }
                    self.cmd(s, Command::Brk(m.end))?;
                    self.spaces[s].brk = Some(m.end);
                    brk_done = true;
                } else {
                    self.note("a second [heap] mapping");
                }
                continue;
            }
            let opts = MapOpts {
                noreserve: has("nr"),
                growsdown: has("gd"),
                ..MapOpts::default()
            };
            let mut file = None;
            if m.inode != 0 && !m.path.is_empty() {
                // map_files needs CAP_CHECKPOINT_RESTORE; the path does not (unless
                // the file was deleted)
                let proc_path = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
                let found = match self.file_of(s, &proc_path, Some(&m.path))? {
                    Ok(n) => Ok(n),
                    Err(_) => self.file_of(s, &m.path, Some(&m.path))?,
                };
                match found {
                    Ok(name) => file = Some((name, m.offset)),
                    Err(why) => self.note(why),
                }
            }
            let c = Command::mmap(m.start, len, prot, shared, Placement::Fixed, opts, file);
            self.cmd(s, c)?;
        }
        if self.source == Source::SoftDirty {
            self.clear_softdirty(s)
        } else {
            self.cmd(s, Command::ClearRefs("4".into()))
        }
    }

    fn new_space(&mut self, name: String, pid: i32) -> usize {
        self.sum.spaces += 1;
        self.spaces.push(Space {
            name,
            pid,
            uffd: None,
            pagemap: None,
            clear_refs: None,
            tasks: 1,
            brk: None,
            shm: HashMap::new(),
            unarmed: true,
        });
        self.spaces.len() - 1
    }

    fn leave_space(&mut self, s: usize) {
        let sp = &mut self.spaces[s];
        sp.tasks = sp.tasks.saturating_sub(1);
        if sp.tasks == 0 {
            sp.uffd = None;
            sp.pagemap = None;
            sp.clear_refs = None;
        }
    }

    /// A traced call's entry (its seccomp stop).
    fn on_entry(&mut self, tid: i32) -> Result<(), RecordError> {
        let Ok(r) = getregs(tid) else { return Ok(()) };
        let p = Pending {
            nr: r.orig_rax,
            args: [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9],
        };
        let space = self.tasks.get(&tid).and_then(|t| t.space);
        if let Some(t) = self.tasks.get_mut(&tid) {
            t.pending = Some(p);
        }
        if let Some(s) = space {
            self.harvest(s, false)?;
        }
        Ok(())
    }

    /// A traced call's exit: writes it with the kernel's result.
    fn on_exit(&mut self, tid: i32) -> Result<(), RecordError> {
        let Some(t) = self.tasks.get_mut(&tid) else {
            return Ok(());
        };
        let Some(p) = t.pending.take() else {
            return Ok(());
        };
        let Some(s) = t.space else { return Ok(()) };
        let Ok(r) = getregs(tid) else { return Ok(()) };
        let ret = r.rax;
        let a = p.args;
        let err = failed(ret);
        match p.nr {
            SYS_MMAP => {
                self.count("mmap");
                let len = page_up(a[1]);
                let (pr, flags) = (prot(a[2]), a[3]);
                let fixed = flags & libc::MAP_FIXED as u64 != 0;
                let noreplace = flags & libc::MAP_FIXED_NOREPLACE as u64 != 0;
                let mut shared = matches!(flags & 3, 1 | 3);
                let anon = flags & libc::MAP_ANONYMOUS as u64 != 0;
                let unsupported = libc::MAP_HUGETLB | libc::MAP_LOCKED | libc::MAP_SYNC;
                if flags & unsupported as u64 != 0 {
                    self.note("mmap flags the format has no word for (MAP_HUGETLB, MAP_LOCKED, MAP_SYNC): mapped without them");
                }
                let opts = MapOpts {
                    noreserve: flags & libc::MAP_NORESERVE as u64 != 0,
                    populate: flags & libc::MAP_POPULATE as u64 != 0,
                    growsdown: flags & libc::MAP_GROWSDOWN as u64 != 0,
                    file: None,
                };
                let mut file = None;
                if !anon {
                    let fdpath = format!("/proc/{tid}/fd/{}", a[4] as i32);
                    let link = std::fs::read_link(&fdpath).unwrap_or_default();
                    if link.as_os_str() == "/dev/zero" {
                        // MAP_PRIVATE of /dev/zero is anonymous; MAP_SHARED is shmem
                    } else if err.is_none() {
                        match self.file_of(s, &fdpath, None)? {
                            Ok(name) => file = Some((name, a[5])),
                            Err(why) => {
                                self.note(why);
                                shared = true;
                            }
                        }
                    } else {
                        self.note("a failed mmap of a file");
                        return Ok(());
                    }
                }
                // a kernel-chosen address is replayed there, refusing an overlap
                let placement = if fixed {
                    Placement::Fixed
                } else {
                    Placement::NoReplace
                };
                match err {
                    None => self.cmd(
                        s,
                        Command::mmap(ret, len, pr, shared, placement, opts, file),
                    )?,
                    // (a failed mmap of a file returned above)
                    Some(e) if fixed || noreplace => {
                        let c = Command::mmap(a[0], a[1], pr, shared, placement, opts, None);
                        self.cmd(s, c)?;
                        self.expect_err(s, e)?;
                    }
                    Some(_) => self.note("a failed mmap without a fixed address"),
                }
                if err.is_none() && a[2] & 2 != 0 {
                    self.protect(s, ret, len, "")?;
                }
            }
            SYS_MUNMAP => {
                self.count("munmap");
                self.cmd(
                    s,
                    Op::Munmap {
                        addr: a[0],
                        len: a[1],
                    },
                )?;
                if let Some(e) = err {
                    self.expect_err(s, e)?;
                }
            }
            SYS_MPROTECT | SYS_PKEY_MPROTECT => {
                self.count("mprotect");
                if a[2] & !7 != 0 {
                    self.note("mprotect bits other than rwx (PROT_GROWSDOWN, PROT_SEM): ignored");
                }
                if p.nr == SYS_PKEY_MPROTECT && a[3] as i64 != -1 {
                    self.note("pkey_mprotect's protection key: ignored");
                }
                // Stores other threads made into the range during the call: before it
                // if it took write permission away, else after.
                let end = a[0].saturating_add(page_up(a[1])).min(TASK_SIZE);
                let during = self.written(s, a[0] & !(PAGE_SIZE - 1), end);
                let writable = a[2] & 2 != 0;
                if !writable {
                    self.emit_writes(s, &during)?;
                }
                self.cmd(
                    s,
                    Op::Mprotect {
                        addr: a[0],
                        len: a[1],
                        prot: prot(a[2]),
                    },
                )?;
                match err {
                    Some(e) => self.expect_err(s, e)?,
                    None if writable => {
                        self.protect(s, a[0], page_up(a[1]), "")?;
                    }
                    None => {}
                }
                if writable {
                    self.emit_writes(s, &during)?;
                }
            }
            SYS_MREMAP => {
                self.count("mremap");
                let (old, oldlen, newlen, fl) = (a[0], a[1], a[2], a[3]);
                if fl & 4 != 0 {
                    self.note("mremap MREMAP_DONTUNMAP (not in the format): recorded as a move");
                }
                let mremap = |maymove: bool, fixed: Option<u64>| Op::Mremap {
                    addr: old,
                    old_len: oldlen,
                    new_len: newlen,
                    maymove,
                    fixed,
                };
                match err {
                    // in place, or moved where the kernel chose (replayed there)
                    None if ret == old => self.cmd(s, mremap(false, None))?,
                    None => self.cmd(s, mremap(true, Some(ret)))?,
                    Some(e) if matches!(e, libc::EINVAL | libc::EFAULT) => {
                        let fixed = (fl & 2 != 0).then_some(a[4]);
                        self.cmd(s, mremap(fl & 1 != 0, fixed))?;
                        self.expect_err(s, e)?;
                    }
                    Some(_) => self.note("a failed mremap (ENOMEM, EAGAIN): not replayable"),
                }
                if err == Some(libc::EFAULT) && fl & 1 != 0 {
                    let end = old.saturating_add(oldlen);
                    let n = read_maps(tid)
                        .unwrap_or_default()
                        .iter()
                        .filter(|m| m.start < end && m.end > old)
                        .count();
                    if n > 1 {
                        self.note("an mremap move of several VMAs, which Linux refuses (EFAULT) for userfaultfd-armed memory: the recorder's registration changed the program's result");
                    }
                }
                if err.is_none() {
                    self.protect(s, ret, page_up(newlen), "")?;
                }
            }
            SYS_MADVISE => {
                let Some(adv) = advice(a[2]) else {
                    self.note(format!(
                        "madvise {} (not in the format; it may split VMAs)",
                        advice_name(a[2])
                    ));
                    return Ok(());
                };
                self.count("madvise");
                self.cmd(s, madvise_op(a[0], a[1], adv))?;
                match err {
                    Some(e) => self.expect_err(s, e)?,
                    // A zap of anonymous memory drops the write-protect markers, and
                    // 6.18.44 then reports the empty entries as written (and a read
                    // fault there as a store): protect the range again, while the caller
                    // is stopped. Measured: tests/programs' dontneed case.
                    None if matches!(a[2], 4 | 9 | 24) => {
                        self.protect(s, a[0], page_up(a[1]), "")?;
                    }
                    None => {}
                }
            }
            SYS_BRK => {
                if a[0] == 0 {
                    return Ok(());
                }
                self.count("brk");
                let old = self.spaces[s].brk;
                if ret == a[0] {
                    self.cmd(s, Command::Brk(ret))?;
                    self.emit(s, Event::Expect(Expectation::Brk(ret)))?;
                    if let Some(o) = old {
                        if page_up(ret) > page_up(o) {
                            self.protect(s, page_up(o), page_up(ret) - page_up(o), "[heap]")?;
                        }
                    }
                    self.spaces[s].brk = Some(ret);
                } else {
                    self.cmd(s, Command::Brk(a[0]))?;
                    self.expect_err(s, libc::ENOMEM)?;
                }
            }
            SYS_SHMAT => {
                self.count("shmat");
                if err.is_some() {
                    return Ok(());
                }
                let maps = read_maps(tid).unwrap_or_default();
                let Some(m) = maps.iter().find(|m| m.start == ret) else {
                    self.note("an shmat whose mapping vanished");
                    return Ok(());
                };
                let len = m.end - m.start;
                let name = format!("sysv_{}", a[0]);
                if !self.used_names.contains_key(&name) {
                    self.used_names.insert(name.clone(), 1);
                    let file = Command::File {
                        name: name.clone(),
                        memfd: true,
                        size: len,
                    };
                    self.cmd(s, file)?;
                }
                // SHM_RDONLY
                let pr = if a[2] & 0o10000 != 0 {
                    Prot::R
                } else {
                    Prot::RW
                };
                let file = Some((name, 0));
                let c = Command::mmap(
                    ret,
                    len,
                    pr,
                    true,
                    Placement::Fixed,
                    MapOpts::default(),
                    file,
                );
                self.cmd(s, c)?;
                self.spaces[s].shm.insert(ret, len);
                if pr == Prot::RW {
                    self.protect(s, ret, len, "SysV shared memory")?;
                }
            }
            SYS_SHMDT => {
                self.count("shmdt");
                if err.is_none() {
                    if let Some(len) = self.spaces[s].shm.remove(&a[0]) {
                        self.cmd(s, Op::Munmap { addr: a[0], len })?;
                    }
                }
            }
            SYS_EXECVE | SYS_EXECVEAT if err.is_none() => {
                // the exec event made the new space; arm it and write its layout
                self.arm(s, tid)?;
                self.layout(s, tid)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// A clone/fork/vfork event of `tid`: a new task, in its space or a new one.
    fn on_clone(&mut self, tid: i32, event: i32) -> Result<(), RecordError> {
        let mut msg: libc::c_ulong = 0;
        if ptrace(libc::PTRACE_GETEVENTMSG, tid, 0, &mut msg as *mut _ as u64).is_err() {
            return Ok(());
        }
        let child = msg as i32;
        let Some(parent) = self.tasks.get(&tid) else {
            return Ok(());
        };
        let ps = parent.space;
        let shares = match event {
            libc::PTRACE_EVENT_VFORK => true,
            libc::PTRACE_EVENT_FORK => false,
            _ => match parent.pending {
                Some(Pending {
                    nr: SYS_CLONE,
                    args,
                }) => args[0] & libc::CLONE_VM as u64 != 0,
                Some(Pending {
                    nr: SYS_CLONE3,
                    args,
                }) => {
                    let mut b = [0u8; 8];
                    File::open(format!("/proc/{tid}/mem"))
                        .and_then(|f| f.read_exact_at(&mut b, args[0]))
                        .is_ok_and(|()| u64::from_ne_bytes(b) & libc::CLONE_VM as u64 != 0)
                }
                _ => true,
            },
        };
        let space = match (ps, shares) {
            (Some(s), true) => {
                self.spaces[s].tasks += 1;
                Some(s)
            }
            (Some(s), false) => {
                self.forks += 1;
                let name = format!("c{}", self.forks);
                self.count("fork");
                self.cmd(s, Command::Fork(name.clone()))?;
                let c = self.new_space(name, child);
                self.spaces[c].brk = self.spaces[s].brk;
                self.spaces[c].shm = self.spaces[s].shm.clone();
                Some(c)
            }
            (None, _) => None,
        };
        self.tasks.insert(
            child,
            Task {
                space,
                pending: None,
                fresh: true,
            },
        );
        if let Some(i) = self.early.iter().position(|&t| t == child) {
            self.early.swap_remove(i);
            self.first_stop(child)?;
        }
        Ok(())
    }

    /// A new task's first stop: arms its space if it is a fork child's; resumes it.
    fn first_stop(&mut self, tid: i32) -> Result<(), RecordError> {
        let Some(t) = self.tasks.get_mut(&tid) else {
            return Ok(());
        };
        t.fresh = false;
        if let Some(s) = t.space {
            if self.spaces[s].unarmed {
                self.arm(s, tid)?;
            }
        }
        resume(tid, false, 0);
        Ok(())
    }

    /// An exec event: the task's space is a fresh one.
    fn on_exec(&mut self, tid: i32) {
        let mut msg: libc::c_ulong = 0;
        let former = match ptrace(libc::PTRACE_GETEVENTMSG, tid, 0, &mut msg as *mut _ as u64) {
            Ok(_) => msg as i32,
            Err(_) => tid,
        };
        let task = self
            .tasks
            .remove(&former)
            .or_else(|| self.tasks.remove(&tid));
        let pending = task.as_ref().and_then(|t| t.pending);
        if let Some(s) = task.and_then(|t| t.space) {
            self.leave_space(s);
        }
        self.execs += 1;
        let name = if self.execs == 1 {
            "main".to_string()
        } else {
            format!("e{}", self.execs - 1)
        };
        self.count("execve");
        let s = self.new_space(name, tid);
        self.tasks.insert(
            tid,
            Task {
                space: Some(s),
                pending,
                fresh: false,
            },
        );
    }
}

/// Looks `prog` up in `PATH` (as execvp would), returning a path that exists and is
/// executable.
fn resolve(prog: &OsString) -> Result<CString, RecordError> {
    let bytes = prog.as_bytes();
    let cands: Vec<std::path::PathBuf> = if bytes.contains(&b'/') {
        vec![prog.into()]
    } else {
        std::env::var_os("PATH")
            .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into())
            .as_bytes()
            .split(|&b| b == b':')
            .map(|d| {
                let d = if d.is_empty() { b".".as_slice() } else { d };
                std::path::Path::new(std::ffi::OsStr::from_bytes(d)).join(prog)
            })
            .collect()
    };
    for c in &cands {
        let Ok(cs) = CString::new(c.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: `cs` is NUL-terminated and outlives the call; access only reads it.
        if c.is_file() && unsafe { libc::access(cs.as_ptr(), libc::X_OK) } == 0 {
            return Ok(cs);
        }
    }
    Err(RecordError::Program(format!(
        "{}: no such program{}",
        prog.to_string_lossy(),
        if bytes.contains(&b'/') {
            " (or it is not an executable file)"
        } else {
            " in PATH"
        }
    )))
}

/// Records `opts.program` and writes its trace body to `out` (the caller adds the header
/// from the returned [`Summary`]).
pub fn record(opts: &Options, out: &mut Sink<'_>) -> Result<Summary, RecordError> {
    let Some(prog) = opts.program.first() else {
        return Err(RecordError::Program("no program to record".into()));
    };
    let path = resolve(prog)?;
    let has_sd =
        super::kernel_has_soft_dirty().map_err(|e| RecordError::Unavailable(e.to_string()))?;
    let source = match opts.source {
        Some(Source::SoftDirty) if !has_sd => {
            return Err(RecordError::Unavailable(
                "the kernel has no soft-dirty tracking (CONFIG_MEM_SOFT_DIRTY is not set): \
                 record with --source uffd"
                    .into(),
            ))
        }
        Some(s) => s,
        None if has_sd => Source::SoftDirty,
        None => Source::Uffd,
    };
    let argv: Vec<CString> = opts
        .program
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| RecordError::Program("an argument holds a NUL byte".into()))?;
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let prog_filter = filter();
    let fprog = libc::sock_fprog {
        len: prog_filter.len() as u16,
        filter: prog_filter.as_ptr() as *mut _,
    };
    // SIGCHLD, SIGINT and SIGTERM are taken with sigtimedwait from here on.
    // SAFETY: sigset_t is plain data; the sig* calls only read/write the local sets.
    let (set, oldset) = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGCHLD, libc::SIGINT, libc::SIGTERM] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        (set, old)
    };
    let restore = || {
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &oldset, std::ptr::null_mut()) };
    };
    // SAFETY: fork in a process whose other threads (if any) hold no lock the child
    // needs: the child calls only async-signal-safe functions (ptrace, sigprocmask,
    // raise, prctl, execve, _exit) on data prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        restore();
        return Err(RecordError::Io(std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: the child, as described above; every pointer was made before fork and
        // is valid in this copy of the address space.
        unsafe {
            libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
            libc::pthread_sigmask(libc::SIG_SETMASK, &oldset, std::ptr::null_mut());
            libc::raise(libc::SIGSTOP);
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &fprog as *const libc::sock_fprog,
                ) != 0
            {
                libc::_exit(126);
            }
            extern "C" {
                static environ: *const *const libc::c_char;
            }
            libc::execve(path.as_ptr(), argv_p.as_ptr(), environ);
            libc::_exit(127);
        }
    }
    let t0 = Instant::now();
    let r = run(pid, opts, source, out, &set);
    restore();
    if r.is_err() {
        // SAFETY: kill takes integers; the child is ours.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        while waitpid(-1, 0).is_ok() {}
    }
    let mut sum = r?;
    sum.wall = t0.elapsed();
    Ok(sum)
}

fn run(
    pid: i32,
    opts: &Options,
    source: Source,
    out: &mut Sink<'_>,
    set: &libc::sigset_t,
) -> Result<Summary, RecordError> {
    // the child's SIGSTOP
    match waitpid(pid, 0) {
        Ok(Some((_, st))) if libc::WIFSTOPPED(st) => {}
        _ => {
            return Err(RecordError::Unavailable(
                "the program's process did not stop for the recorder (ptrace refused?)".into(),
            ))
        }
    }
    let o = libc::PTRACE_O_TRACESYSGOOD
        | libc::PTRACE_O_TRACESECCOMP
        | libc::PTRACE_O_TRACECLONE
        | libc::PTRACE_O_TRACEFORK
        | libc::PTRACE_O_TRACEVFORK
        | libc::PTRACE_O_TRACEEXEC
        | libc::PTRACE_O_TRACEEXIT
        | libc::PTRACE_O_EXITKILL;
    ptrace(libc::PTRACE_SETOPTIONS, pid, 0, o as u64).map_err(|e| {
        RecordError::Unavailable(format!(
            "PTRACE_SETOPTIONS failed ({}): recording needs ptrace (kernel.yama.ptrace_scope, a container's seccomp policy)",
            errno_name(e)
        ))
    })?;
    let mut rec = Recorder {
        out,
        source,
        tasks: HashMap::new(),
        spaces: Vec::new(),
        files: HashMap::new(),
        used_names: HashMap::new(),
        // the first exec's space, `main`, is index 0: replay starts there
        current: Some(0),
        early: Vec::new(),
        deferred: Vec::new(),
        root: pid,
        execs: 0,
        forks: 0,
        sum: Summary::default(),
        regions: RegionBuf::new(4096).map_err(RecordError::Unavailable)?,
    };
    rec.tasks.insert(
        pid,
        Task {
            space: None,
            pending: None,
            fresh: false,
        },
    );
    resume(pid, false, 0);
    let t0 = Instant::now();
    let mut next_harvest = t0 + opts.interval;
    let mut root_status: Option<String> = None;
    let mut cut: Option<String> = None;
    let mut killed = false;
    while !rec.tasks.is_empty() {
        let now = Instant::now();
        if let Some(max) = opts.max_time {
            if !killed && now >= t0 + max {
                cut = Some(format!("stopped after --max-seconds {}", max.as_secs()));
                // SAFETY: kill takes integers; the tasks are ours.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                killed = true;
            }
        }
        if now >= next_harvest && rec.execs > 0 && !killed {
            rec.harvest_point()?;
            next_harvest = Instant::now() + opts.interval;
        }
        let ev = match waitpid(-1, libc::WNOHANG) {
            Ok(Some(ev)) => ev,
            Ok(None) => {
                let wait = next_harvest.saturating_duration_since(Instant::now());
                let ts = libc::timespec {
                    tv_sec: wait.as_secs() as libc::time_t,
                    tv_nsec: wait.subsec_nanos() as libc::c_long,
                };
                // SAFETY: `set` and `ts` live across the call; the info pointer may be null.
                let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
                if (sig == libc::SIGINT || sig == libc::SIGTERM) && !killed {
                    cut = Some(format!(
                        "the recorder was interrupted (signal {sig}) and killed the program"
                    ));
                    // SAFETY: as above.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    killed = true;
                }
                continue;
            }
            Err(libc::ECHILD) => break,
            Err(e) => {
                return Err(RecordError::Io(std::io::Error::from_raw_os_error(e)));
            }
        };
        let (tid, st) = ev;
        if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
            rec.deferred.retain(|&t| t != tid);
            if let Some(t) = rec.tasks.remove(&tid) {
                if let Some(s) = t.space {
                    rec.leave_space(s);
                    rec.drain_deferred(s)?;
                }
            }
            if tid == rec.root {
                root_status = Some(if libc::WIFEXITED(st) {
                    format!("exit status {}", libc::WEXITSTATUS(st))
                } else {
                    format!("killed by signal {}", libc::WTERMSIG(st))
                });
            }
            continue;
        }
        if !libc::WIFSTOPPED(st) {
            continue;
        }
        let sig = libc::WSTOPSIG(st);
        let event = st >> 16;
        let known = rec.tasks.contains_key(&tid);
        if !known {
            // a new task stopped before its parent's event named it
            rec.early.push(tid);
            continue;
        }
        let in_call = rec.tasks.get(&tid).is_some_and(|t| t.pending.is_some());
        match event {
            libc::PTRACE_EVENT_SECCOMP => {
                let s = rec.tasks.get(&tid).and_then(|t| t.space);
                if s.is_some_and(|s| rec.busy(s)) {
                    rec.deferred.push(tid);
                } else {
                    rec.on_entry(tid)?;
                    resume(tid, true, 0);
                }
            }
            libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK | libc::PTRACE_EVENT_CLONE => {
                rec.on_clone(tid, event)?;
                resume(tid, true, 0);
            }
            libc::PTRACE_EVENT_EXEC => {
                rec.on_exec(tid);
                resume(tid, true, 0);
            }
            libc::PTRACE_EVENT_EXIT => {
                // the last task of a space: its final writes
                if let Some(s) = rec.tasks.get(&tid).and_then(|t| t.space) {
                    if rec.spaces[s].tasks == 1 && !killed {
                        rec.harvest(s, false)?;
                    }
                }
                resume(tid, false, 0);
            }
            _ if sig == libc::SIGTRAP | 0x80 => {
                rec.on_exit(tid)?;
                resume(tid, false, 0);
                if let Some(s) = rec.tasks.get(&tid).and_then(|t| t.space) {
                    rec.drain_deferred(s)?;
                }
            }
            _ if sig == libc::SIGSTOP && rec.tasks.get(&tid).is_some_and(|t| t.fresh) => {
                rec.first_stop(tid)?;
            }
            _ => {
                // a signal for the program: deliver it; a group-stop (no siginfo) is
                // resumed without one
                // SAFETY: siginfo_t is plain data; PTRACE_GETSIGINFO fills it.
                let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
                let group_stop = matches!(
                    ptrace(libc::PTRACE_GETSIGINFO, tid, 0, &mut si as *mut _ as u64),
                    Err(libc::EINVAL)
                );
                let fwd = if (sig == libc::SIGTRAP && event != 0) || group_stop {
                    0
                } else {
                    sig
                };
                resume(tid, in_call, fwd);
            }
        }
    }
    let mut sum = std::mem::take(&mut rec.sum);
    sum.source = Some(source);
    match (cut, root_status) {
        (Some(c), _) => {
            sum.ended = c;
            sum.cut = true;
        }
        (None, Some(s)) => {
            sum.cut = s.starts_with("killed");
            sum.ended = s;
        }
        (None, None) => sum.ended = "ended".into(),
    }
    if rec.execs == 0 {
        // The child exits 126 when it cannot install the seccomp filter (before exec).
        if sum.ended == "exit status 126" {
            return Err(RecordError::Unavailable(
                "the recorder's child could not install its seccomp filter \
                 (prctl PR_SET_NO_NEW_PRIVS / PR_SET_SECCOMP refused: CONFIG_SECCOMP_FILTER, \
                 or a container's policy)"
                    .into(),
            ));
        }
        return Err(RecordError::Program(format!(
            "the program did not start ({})",
            sum.ended
        )));
    }
    Ok(sum)
}
