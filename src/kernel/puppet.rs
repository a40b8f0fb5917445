//! The puppet: a separate process whose address space one trace space drives.
//!
//! The kernel backend never maps, touches or advises its own memory: each trace space is
//! a puppet process, forked from the replaying process when the space is made, that
//! executes what the backend asks over a `SOCK_SEQPACKET` socket and nothing else:
//! - a system call with up to six arguments, one of which may point at a 256-byte
//!   buffer the request carries and the reply returns (`mmap`, `mprotect`, `brk`,
//!   `prctl(PR_SET_MM_MAP)`, `userfaultfd`, ...);
//! - a real load or store of one byte per page ([`Puppet::touch`]): a real fault, so a
//!   `growsdown` stack grows and a store to a file past its end is SIGBUS, which the
//!   puppet turns into EFAULT (the errno `process_vm_writev` gives) and survives;
//! - `fork` ([`Puppet::fork`]): a real fork(2) of the puppet; the child serves a new
//!   socket, whose other end comes back in the reply (`SCM_RIGHTS`);
//! - taking a descriptor ([`Puppet::give_fd`]), so that a space maps the trace's files.
//!
//! The backend observes the puppet from outside: `/proc/PID/{pagemap,maps,smaps,
//! clear_refs}`, PAGEMAP_SCAN on its pagemap, and a userfaultfd the puppet created (a
//! userfaultfd belongs to the mm that created it; its ioctls work from any process that
//! holds it).
//!
//! A puppet is a fork of a process that may have threads, so between fork and exit it
//! only makes system calls: no allocation, no lock, no panic (every path below is
//! checked arithmetic on fixed buffers). It closes every descriptor it inherited but its
//! socket and stdio, and exits when the socket closes; the backend also kills it on drop.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Bytes of the buffer a request carries for a system call's pointer argument.
pub const BUF: usize = 256;

const OP_SYSCALL: u64 = 1;
const OP_SYSCALL_FD: u64 = 2;
const OP_TOUCH: u64 = 3;
const OP_FORK: u64 = 4;
const OP_TAKE_FD: u64 = 5;

/// No argument gets the buffer.
const NO_BUF: u64 = u64::MAX;

#[repr(C)]
#[derive(Clone, Copy)]
struct Request {
    op: u64,
    nr: u64,
    args: [u64; 6],
    /// the argument replaced by the buffer's address in the puppet, or [`NO_BUF`]
    buf_arg: u64,
    buf: [u8; BUF],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Reply {
    /// the system call's return value, or minus the errno
    ret: i64,
    buf: [u8; BUF],
}

/// One puppet process (see the module doc).
#[derive(Debug)]
pub struct Puppet {
    pid: i32,
    pidfd: OwnedFd,
    chan: OwnedFd,
    /// a child of this process (waited for on drop), not a puppet's fork
    ours: bool,
}

/// The errno of the last failed libc call.
fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Sends `bytes` as one message, with `fd` attached if given.
///
/// # Safety
/// `bytes` must be valid for reads; `fd`, if given, an open descriptor.
unsafe fn send(chan: RawFd, bytes: &[u8], fd: Option<RawFd>) -> isize {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // Room for one `cmsghdr` carrying one int: CMSG_SPACE(4) = 24 on 64-bit Linux.
    let mut cbuf = [0u64; 4];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
        // SAFETY: msg_control points at `cbuf`, 32 bytes, at least CMSG_SPACE(4): the
        // first header and its one-int payload lie inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
        }
    }
    // SAFETY: `msg` points at live buffers described above; MSG_NOSIGNAL turns a closed
    // peer into EPIPE instead of SIGPIPE.
    unsafe { libc::sendmsg(chan, &msg, libc::MSG_NOSIGNAL) }
}

/// Receives one message into `bytes`; returns its length (0 at end of stream, negative
/// on error) and the descriptor attached to it, if any.
///
/// # Safety
/// `bytes` must be valid for writes.
unsafe fn recv(chan: RawFd, bytes: &mut [u8]) -> (isize, Option<RawFd>) {
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    };
    let mut cbuf = [0u64; 4];
    // SAFETY: as in `send`.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: `msg` describes live buffers; the kernel writes at most their lengths.
    let n = unsafe { libc::recvmsg(chan, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    let mut fd = None;
    if n >= 0 && msg.msg_controllen >= std::mem::size_of::<libc::cmsghdr>() {
        // SAFETY: the kernel filled `cbuf` with `msg_controllen` bytes of well-formed
        // headers; one SCM_RIGHTS header of one int is all a peer here sends.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            if !c.is_null()
                && (*c).cmsg_level == libc::SOL_SOCKET
                && (*c).cmsg_type == libc::SCM_RIGHTS
            {
                fd = Some(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>()));
            }
        }
    }
    (n, fd)
}

/// The request or reply as bytes.
fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: Request and Reply are repr(C) structs of integers and byte arrays, with no
    // padding (every field is 8-byte sized or a byte array at the end of 8-byte fields),
    // so every byte is initialized.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

fn bytes_of_mut<T: Copy>(v: &mut T) -> &mut [u8] {
    // SAFETY: as in `bytes_of`; any byte pattern is a valid Request or Reply.
    unsafe { std::slice::from_raw_parts_mut((v as *mut T).cast::<u8>(), std::mem::size_of::<T>()) }
}

impl Puppet {
    /// Forks a new puppet from this process.
    pub fn spawn() -> Result<Puppet, String> {
        let (ours_end, theirs) = socketpair()?;
        // SAFETY: fork has no memory preconditions. The child only runs `serve`, which
        // makes system calls on its own stack and never returns (see the module doc).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!(
                "fork of a puppet process failed (errno {})",
                errno()
            ));
        }
        if pid == 0 {
            let keep = theirs.as_raw_fd();
            std::mem::forget(theirs);
            std::mem::forget(ours_end);
            serve(keep);
        }
        drop(theirs);
        Puppet::adopt(pid, ours_end, true)
    }

    fn adopt(pid: i32, chan: OwnedFd, ours: bool) -> Result<Puppet, String> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if pidfd < 0 {
            let e = errno();
            // SAFETY: kill has no memory effects; `pid` is the puppet just made.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return Err(format!("pidfd_open of puppet {pid} failed (errno {e})"));
        }
        Ok(Puppet {
            pid,
            // SAFETY: a new descriptor that nothing else owns.
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd as i32) },
            chan,
            ours,
        })
    }

    /// The puppet's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn call(&self, req: &Request, fd: Option<RawFd>) -> Result<(Reply, Option<OwnedFd>), String> {
        let chan = self.chan.as_raw_fd();
        // SAFETY: `req` is a live Request; `fd`, if any, is a descriptor the caller holds.
        let n = unsafe { send(chan, bytes_of(req), fd) };
        if n < 0 {
            return Err(format!(
                "puppet {}: sending a request failed (errno {}): the process died",
                self.pid,
                errno()
            ));
        }
        let mut rep = Reply {
            ret: 0,
            buf: [0; BUF],
        };
        // SAFETY: `rep` is a live Reply.
        let (n, got) = unsafe { recv(chan, bytes_of_mut(&mut rep)) };
        // SAFETY: a descriptor the kernel just installed for us.
        let got = got.map(|f| unsafe { OwnedFd::from_raw_fd(f) });
        if n != std::mem::size_of::<Reply>() as isize {
            return Err(format!(
                "puppet {}: no reply (recvmsg returned {n}, errno {}): the process died",
                self.pid,
                errno()
            ));
        }
        Ok((rep, got))
    }

    fn request(op: u64, nr: i64, args: [u64; 6]) -> Request {
        Request {
            op,
            nr: nr as u64,
            args,
            buf_arg: NO_BUF,
            buf: [0; BUF],
        }
    }

    /// System call `nr` in the puppet: its return value, or minus the errno.
    pub fn syscall(&self, nr: i64, args: [u64; 6]) -> Result<i64, String> {
        Ok(self.call(&Self::request(OP_SYSCALL, nr, args), None)?.0.ret)
    }

    /// System call `nr` with argument `buf_arg` pointing at a copy of `buf` in the
    /// puppet; `buf` gets what the call left there.
    pub fn syscall_buf(
        &self,
        nr: i64,
        mut args: [u64; 6],
        buf_arg: usize,
        buf: &mut [u8],
    ) -> Result<i64, String> {
        if buf.len() > BUF || buf_arg >= 6 {
            return Err(format!(
                "puppet: a buffer of {} bytes is too large",
                buf.len()
            ));
        }
        args[buf_arg] = 0;
        let mut req = Self::request(OP_SYSCALL, nr, args);
        req.buf_arg = buf_arg as u64;
        req.buf[..buf.len()].copy_from_slice(buf);
        let (rep, _) = self.call(&req, None)?;
        buf.copy_from_slice(&rep.buf[..buf.len()]);
        Ok(rep.ret)
    }

    /// System call `nr` that returns a new descriptor, which the puppet sends here and
    /// closes: `Ok(Err(errno))` if the call failed.
    pub fn syscall_fd(&self, nr: i64, args: [u64; 6]) -> Result<Result<OwnedFd, i32>, String> {
        let (rep, fd) = self.call(&Self::request(OP_SYSCALL_FD, nr, args), None)?;
        if rep.ret < 0 {
            return Ok(Err(-rep.ret as i32));
        }
        fd.map(Ok)
            .ok_or_else(|| format!("puppet {}: no descriptor came back", self.pid))
    }

    /// A load (`write` false) or a store of one byte in every page of
    /// `[addr, addr + len)`, in order, by the puppet's own instructions; stops at the
    /// first that faults, with EFAULT (`Ok(Err)`).
    pub fn touch(&self, addr: u64, len: u64, write: bool) -> Result<Result<(), i32>, String> {
        let rep = self
            .call(
                &Self::request(OP_TOUCH, 0, [addr, len, write as u64, 0, 0, 0]),
                None,
            )?
            .0;
        Ok(if rep.ret < 0 {
            Err(-rep.ret as i32)
        } else {
            Ok(())
        })
    }

    /// fork(2) of the puppet: the child, a puppet too; `Ok(Err(errno))` if fork failed.
    pub fn fork(&self) -> Result<Result<Puppet, i32>, String> {
        let (rep, chan) = self.call(&Self::request(OP_FORK, 0, [0; 6]), None)?;
        if rep.ret < 0 {
            return Ok(Err(-rep.ret as i32));
        }
        let chan = chan.ok_or_else(|| format!("puppet {}: fork sent no socket", self.pid))?;
        Puppet::adopt(rep.ret as i32, chan, false).map(Ok)
    }

    /// Gives the puppet a duplicate of `fd`; its number there.
    pub fn give_fd(&self, fd: BorrowedFd<'_>) -> Result<i32, String> {
        let rep = self
            .call(&Self::request(OP_TAKE_FD, 0, [0; 6]), Some(fd.as_raw_fd()))?
            .0;
        if rep.ret < 0 {
            return Err(format!(
                "puppet {}: passing a descriptor failed (errno {})",
                self.pid, -rep.ret
            ));
        }
        Ok(rep.ret as i32)
    }
}

impl Drop for Puppet {
    fn drop(&mut self) {
        // SAFETY: pidfd_send_signal on our pidfd of the puppet: it signals that process
        // and no other, even if its pid was reused.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if self.ours {
            let mut status = 0;
            // SAFETY: waits for our own child, which was just killed.
            unsafe { libc::waitpid(self.pid, &mut status, 0) };
        }
    }
}

/// A connected `SOCK_SEQPACKET` pair, close-on-exec.
fn socketpair() -> Result<(OwnedFd, OwnedFd), String> {
    let mut sv = [0i32; 2];
    // SAFETY: socketpair writes two descriptors into `sv`.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(format!("socketpair failed (errno {})", errno()));
    }
    // SAFETY: two new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) })
}

// ------------------------------------------------------------------ the puppet's side

/// The puppet's loop: serves requests on `chan` until it closes.
fn serve(chan: RawFd) -> ! {
    let mut chan = chan;
    setup(chan);
    loop {
        let mut req = Request {
            op: 0,
            nr: 0,
            args: [0; 6],
            buf_arg: NO_BUF,
            buf: [0; BUF],
        };
        // SAFETY: `req` is a live Request.
        let (n, fd) = unsafe { recv(chan, bytes_of_mut(&mut req)) };
        if n != std::mem::size_of::<Request>() as isize {
            // SAFETY: _exit ends this process without running anything of the parent's.
            unsafe { libc::_exit(0) };
        }
        let mut rep = Reply {
            ret: 0,
            buf: [0; BUF],
        };
        let mut out_fd = None;
        match req.op {
            OP_SYSCALL | OP_SYSCALL_FD => {
                let mut a = req.args;
                if let Some(slot) = a.get_mut(req.buf_arg as usize) {
                    *slot = req.buf.as_mut_ptr() as u64;
                }
                // SAFETY: the backend asks only for calls on the puppet's own memory and
                // descriptors; a pointer argument is `req.buf` (256 live bytes) or an
                // address of the trace's, which the kernel checks.
                let r = unsafe {
                    libc::syscall(req.nr as libc::c_long, a[0], a[1], a[2], a[3], a[4], a[5])
                };
                rep.ret = if r < 0 { -(errno() as i64) } else { r };
                rep.buf = req.buf;
                if req.op == OP_SYSCALL_FD && r >= 0 {
                    out_fd = Some(r as RawFd);
                }
            }
            OP_TOUCH => rep.ret = touch(req.args[0], req.args[1], req.args[2] != 0),
            OP_FORK => match fork_child(chan) {
                Forked::Child(c) => {
                    chan = c;
                    continue;
                }
                Forked::Parent { pid, chan: c } => {
                    rep.ret = pid as i64;
                    out_fd = Some(c);
                }
                Forked::Failed(e) => rep.ret = -(e as i64),
            },
            OP_TAKE_FD => rep.ret = fd.map_or(-(libc::EBADF as i64), |f| f as i64),
            _ => rep.ret = -(libc::ENOSYS as i64),
        }
        // SAFETY: `rep` is a live Reply; `out_fd`, if any, is open in this process.
        unsafe { send(chan, bytes_of(&rep), out_fd) };
        if let Some(f) = out_fd {
            // SAFETY: the descriptor was sent (the peer has its own); ours is closed.
            unsafe { libc::close(f) };
        }
    }
}

/// Closes every inherited descriptor but `chan` and stdio, ignores SIGCHLD (forks of this
/// puppet are reaped by the kernel), sets the 8 MiB stack limit of the spec, and installs
/// the fault handler of [`touch`].
fn setup(chan: RawFd) {
    // SAFETY: close_range and prlimit-style calls take integers; sigaction reads a
    // zero-initialized struct with the handler set.
    unsafe {
        if chan > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, (chan - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (chan + 1) as u32, u32::MAX, 0u32);
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: 8 << 20,
            rlim_max: libc::RLIM_INFINITY,
        };
        let mut old: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_STACK, &mut old) == 0 {
            let lim = libc::rlimit {
                rlim_max: old.rlim_max,
                ..lim
            };
            libc::setrlimit(libc::RLIMIT_STACK, &lim);
        }
        fault::install();
    }
}

enum Forked {
    Child(RawFd),
    Parent { pid: i32, chan: RawFd },
    Failed(i32),
}

/// fork(2) by the raw system call (glibc's fork runs atfork handlers, which a fork of a
/// threaded process must not): the child keeps one end of a new socket, the parent the
/// other; the child closes its copy of the parent's socket `chan` and keeps every other
/// descriptor (the trace's files, at the same numbers), as fork does.
fn fork_child(chan: RawFd) -> Forked {
    let mut sv = [0i32; 2];
    // SAFETY: socketpair writes two descriptors into `sv`.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, sv.as_mut_ptr()) } != 0 {
        return Forked::Failed(errno());
    }
    // SAFETY: clone with only SIGCHLD is fork(2); both sides continue on a copy of this
    // stack in `serve`'s loop.
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0) };
    if pid < 0 {
        let e = errno();
        // SAFETY: closes the two descriptors made above.
        unsafe {
            libc::close(sv[0]);
            libc::close(sv[1]);
        }
        return Forked::Failed(e);
    }
    if pid == 0 {
        // SAFETY: the child keeps sv[1] and closes the parent's two sockets; its signal
        // dispositions and limits are the parent's (`setup` ran there).
        unsafe {
            libc::close(sv[0]);
            libc::close(chan);
        }
        return Forked::Child(sv[1]);
    }
    // SAFETY: the parent keeps sv[0] to send to the backend, and closes the child's end.
    unsafe { libc::close(sv[1]) };
    Forked::Parent {
        pid: pid as i32,
        chan: sv[0],
    }
}

/// One byte per page of `[addr, addr + len)`: 0, or `-EFAULT` at the first page that
/// faults (SIGSEGV or SIGBUS).
fn touch(addr: u64, len: u64, write: bool) -> i64 {
    if len == 0 {
        return 0;
    }
    let page = crate::linux::PAGE_SIZE;
    let last = match addr.checked_add(len - 1) {
        Some(l) => l & !(page - 1),
        None => !(page - 1),
    };
    let mut p = addr & !(page - 1);
    loop {
        let target = if p < addr { addr } else { p };
        if !fault::access(target, write) {
            return -(libc::EFAULT as i64);
        }
        if p >= last {
            return 0;
        }
        p += page;
    }
}

/// A load or store that reports a fault instead of dying of it.
#[cfg(target_arch = "x86_64")]
mod fault {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Where the faulting access resumes; 0 outside an access. Written and read by one
    /// thread (the puppet has one), in program order with its signal handler.
    static RECOVER: AtomicU64 = AtomicU64::new(0);

    extern "C" fn on_fault(sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        let rec = RECOVER.load(Ordering::Relaxed);
        if rec == 0 {
            // Not ours: the default action, by returning to the faulting instruction.
            // SAFETY: signal() with SIG_DFL is async-signal-safe.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
            return;
        }
        // SAFETY: the kernel passes a valid ucontext_t for an SA_SIGINFO handler; on
        // return it restores the registers from it: execution resumes at the access's
        // recovery label with rax = 1 (faulted).
        unsafe {
            let uc = ctx.cast::<libc::ucontext_t>();
            (*uc).uc_mcontext.gregs[libc::REG_RIP as usize] = rec as i64;
            (*uc).uc_mcontext.gregs[libc::REG_RAX as usize] = 1;
        }
    }

    /// Installs the handler for SIGSEGV and SIGBUS.
    ///
    /// # Safety
    /// Only in the single-threaded puppet.
    pub(super) unsafe fn install() {
        // SAFETY: a zeroed sigaction with a handler and SA_SIGINFO, for two signals.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_fault as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut());
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
        }
    }

    /// Loads or stores (0x5a) the byte at `addr` with one instruction; false if it
    /// faulted. Either instruction resumes at label 2 on a fault.
    pub(super) fn access(addr: u64, write: bool) -> bool {
        let faulted: u64;
        // SAFETY: the puppet's memory is only the trace's to change: the backend asks
        // only for addresses the trace names, never the puppet's own stack or code (its
        // ranges are refused before). A fault resumes at label 2 with rax = 1 (see
        // `on_fault`); RECOVER holds label 2 exactly while the access can fault.
        unsafe {
            core::arch::asm!(
                "lea {t}, [rip + 2f]",
                "mov qword ptr [{rec}], {t}",
                "xor eax, eax",
                "test {w}, {w}",
                "jz 3f",
                "mov byte ptr [{a}], 0x5a",
                "jmp 2f",
                "3:",
                "mov {t:l}, byte ptr [{a}]",
                "2:",
                "mov qword ptr [{rec}], 0",
                a = in(reg) addr,
                w = in(reg) write as u64,
                rec = in(reg) RECOVER.as_ptr(),
                t = out(reg) _,
                out("rax") faulted,
                options(nostack),
            );
        }
        faulted == 0
    }
}

/// Elsewhere: through the kernel (no stack growth, no SIGBUS; EFAULT either way).
#[cfg(not(target_arch = "x86_64"))]
mod fault {
    pub(super) unsafe fn install() {}

    pub(super) fn access(addr: u64, write: bool) -> bool {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        super::vm_byte(pid, addr, &mut 0x5a, write)
    }
}

/// Copies one byte between `byte` and `addr` in process `pid` through the kernel
/// (`process_vm_writev` if `write`, else `process_vm_readv`): a bad address is an error
/// (false), never a signal. The kernel counts it as an access for soft-dirty and uffd-wp,
/// but it grows no stack.
pub(super) fn vm_byte(pid: i32, addr: u64, byte: &mut u8, write: bool) -> bool {
    let local = libc::iovec {
        iov_base: (byte as *mut u8).cast(),
        iov_len: 1,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: 1,
    };
    // SAFETY: one byte between the live `byte` and `addr` of `pid`, through the kernel,
    // which checks `addr`; callers pass addresses of the trace's memory only.
    unsafe {
        if write {
            libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) == 1
        } else {
            libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) == 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_puppet_maps_touches_forks_and_survives_faults() {
        let p = Puppet::spawn().unwrap();
        assert_ne!(p.pid(), std::process::id() as i32);
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let a = p
            .syscall(libc::SYS_mmap, [0, 3 * 4096, prot, flags, u64::MAX, 0])
            .unwrap();
        assert!(a > 0, "mmap in the puppet: {a}");
        let a = a as u64;
        // The third page inaccessible (whatever the kernel placed after the mapping, a
        // copy of this process's memory, is not to be touched).
        let none = [a + 8192, 4096, libc::PROT_NONE as u64, 0, 0, 0];
        assert_eq!(p.syscall(libc::SYS_mprotect, none).unwrap(), 0);
        assert_eq!(p.touch(a, 8192, true).unwrap(), Ok(()));
        // A store to the inaccessible page faults and the puppet lives on.
        assert_eq!(p.touch(a + 8192, 1, true).unwrap(), Err(libc::EFAULT));
        assert_eq!(p.touch(a + 4096, 8192, false).unwrap(), Err(libc::EFAULT));
        assert_eq!(p.touch(a, 1, false).unwrap(), Ok(()));
        // Not mapped here: the puppet's memory is its own.
        let mine = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert!(!mine.contains(&format!("{a:x}-")));
        let child = p.fork().unwrap().unwrap();
        assert_eq!(child.touch(a, 1, true).unwrap(), Ok(()));
        assert_eq!(
            child
                .syscall(libc::SYS_munmap, [a, 3 * 4096, 0, 0, 0, 0])
                .unwrap(),
            0
        );
        assert_eq!(child.touch(a, 1, true).unwrap(), Err(libc::EFAULT));
        assert_eq!(
            p.touch(a, 1, true).unwrap(),
            Ok(()),
            "the parent keeps its mapping"
        );
        assert_eq!(
            p.syscall(libc::SYS_munmap, [a + 1, 8192, 0, 0, 0, 0])
                .unwrap(),
            -(libc::EINVAL as i64)
        );
    }

    #[test]
    fn a_buffer_argument_round_trips() {
        let p = Puppet::spawn().unwrap();
        let mut buf = [0u8; 16];
        // getrlimit(RLIMIT_STACK) into the buffer: the spec's 8 MiB soft limit.
        let r = p
            .syscall_buf(
                libc::SYS_getrlimit,
                [libc::RLIMIT_STACK as u64, 0, 0, 0, 0, 0],
                1,
                &mut buf,
            )
            .unwrap();
        assert_eq!(r, 0);
        assert_eq!(u64::from_ne_bytes(buf[..8].try_into().unwrap()), 8 << 20);
        let efd = p
            .syscall_fd(libc::SYS_eventfd2, [0, 0, 0, 0, 0, 0])
            .unwrap()
            .unwrap();
        assert!(efd.as_raw_fd() > 2);
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        let n = p.give_fd(std::os::fd::AsFd::as_fd(&f)).unwrap();
        assert!(n > 2);
    }
}
