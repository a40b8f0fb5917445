//! Why the kernel backend cannot run here, and what to do about it.

use std::fmt;

/// What the running kernel or process lacks for the kernel backend. Every variant's
/// message names the missing piece and how to get it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelError {
    /// `userfaultfd(2)` is refused (EPERM/EACCES), even with `UFFD_USER_MODE_ONLY`.
    UffdPermission {
        /// the errno of the last attempt
        errno: i32,
    },
    /// `userfaultfd(2)` does not exist (ENOSYS): no CONFIG_USERFAULTFD, or a seccomp
    /// filter answers ENOSYS.
    UffdMissing,
    /// The userfaultfd lacks features this backend needs (WP_ASYNC and WP_UNPOPULATED
    /// arrived in Linux 6.7).
    UffdFeatures {
        /// what `UFFDIO_API` reported
        supported: u64,
        /// what is needed and missing
        missing: u64,
    },
    /// `PAGEMAP_SCAN` is not implemented (ENOTTY: Linux older than 6.7).
    NoPagemapScan,
    /// The soft-dirty flavour was asked for but the kernel has no CONFIG_MEM_SOFT_DIRTY.
    NoSoftDirty,
    /// A system call failed in a way that names no specific cause (a seccomp filter
    /// returning EPERM looks like this).
    Syscall {
        /// what was being done
        what: &'static str,
        /// the errno
        errno: i32,
    },
    /// The kernel backend exists only on Linux.
    Unsupported,
    /// The puppet process that holds a trace space could not be made or did not answer.
    Puppet(String),
}

fn errname(e: i32) -> String {
    match crate::errno::Errno::from_code(e) {
        Some(x) => x.name().to_string(),
        None => format!("errno {e}"),
    }
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::UffdPermission { errno } => write!(
                f,
                "userfaultfd is not permitted ({}): run as root (or with CAP_SYS_PTRACE), \
                 or `sysctl vm.unprivileged_userfaultfd=1`, or use a kernel that allows \
                 UFFD_USER_MODE_ONLY (5.11+); a seccomp filter (containers) can also forbid it",
                errname(*errno)
            ),
            KernelError::UffdMissing => write!(
                f,
                "userfaultfd(2) is not available (ENOSYS): the kernel lacks \
                 CONFIG_USERFAULTFD, or a seccomp filter blocks the syscall"
            ),
            KernelError::UffdFeatures { supported, missing } => write!(
                f,
                "the userfaultfd lacks features {missing:#x} (supported {supported:#x}): \
                 UFFD_FEATURE_WP_ASYNC and WP_UNPOPULATED need Linux 6.7 or later with \
                 CONFIG_PTE_MARKER_UFFD_WP"
            ),
            KernelError::NoPagemapScan => write!(
                f,
                "the PAGEMAP_SCAN ioctl is not implemented (ENOTTY): it needs Linux 6.7 or later"
            ),
            KernelError::NoSoftDirty => write!(
                f,
                "the kernel has no soft-dirty tracking (CONFIG_MEM_SOFT_DIRTY is not set): \
                 use `--backend kernel=uffd`, or a kernel built with CONFIG_MEM_SOFT_DIRTY=y \
                 (e.g. Debian's, see ../shared/tools/kvm-oracle/)"
            ),
            KernelError::Syscall { what, errno } => write!(
                f,
                "{what} failed ({}); if it is EPERM, a seccomp filter may forbid it",
                errname(*errno)
            ),
            KernelError::Unsupported => write!(f, "the kernel backend exists only on Linux"),
            KernelError::Puppet(why) => write!(f, "the puppet process: {why}"),
        }
    }
}

impl std::error::Error for KernelError {}
