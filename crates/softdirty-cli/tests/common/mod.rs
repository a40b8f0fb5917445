//! Helpers shared by the CLI's integration tests that spawn the binary.

use std::time::{Duration, Instant};

/// Waits for the child `pid` with `wait4`, returning its raw wait status and peak RSS in
/// KiB (`ru_maxrss`); kills it once `kill_after` has passed (a guard against a hang,
/// never an assertion on time: the caller sees the signal in the status). The caller must
/// not reap the child otherwise (`Child::wait`).
pub fn wait_with_rusage(pid: u32, kill_after: Duration) -> (i32, i64) {
    let pid = libc::pid_t::try_from(pid).expect("pid");
    let started = Instant::now();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut killed = false;
    loop {
        // SAFETY: `pid` is the caller's child, not yet reaped; `status` and `ru` are
        // valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
        if r == pid {
            return (status, ru.ru_maxrss);
        }
        if !killed && started.elapsed() > kill_after {
            // SAFETY: kill(2) on our unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
