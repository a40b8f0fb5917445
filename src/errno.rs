//! Linux error numbers, as the model reports them.
//!
//! Every failing operation of the model returns an [`Errno`] with the same value Linux
//! x86-64 returns for the same misuse, so that a trace (and an embedder) can check the
//! exact error. The names are the kernel's (`EINVAL`, not `InvalidArgument`).

use std::fmt;

macro_rules! errnos {
    ($($name:ident = $code:expr, $text:expr;)*) => {
        /// A Linux error number (x86-64 values).
        #[allow(clippy::upper_case_acronyms)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Errno {
            $(
                #[doc = $text]
                $name,
            )*
        }

        impl Errno {
            /// Every error number the model knows, in numeric order.
            pub const ALL: &'static [Errno] = &[$(Errno::$name),*];

            /// The numeric value (`EINVAL` is 22).
            pub const fn code(self) -> i32 {
                match self { $(Errno::$name => $code,)* }
            }

            /// The symbolic name, as `strerrorname_np(3)` prints it.
            pub const fn name(self) -> &'static str {
                match self { $(Errno::$name => stringify!($name),)* }
            }

            /// The message `strerror(3)` prints.
            pub const fn description(self) -> &'static str {
                match self { $(Errno::$name => $text,)* }
            }

            /// Parses a symbolic name such as `EINVAL`.
            pub fn from_name(name: &str) -> Option<Errno> {
                match name { $(stringify!($name) => Some(Errno::$name),)* _ => None }
            }

            /// Maps a numeric value back to its name, if the model knows it.
            pub fn from_code(code: i32) -> Option<Errno> {
                match code { $($code => Some(Errno::$name),)* _ => None }
            }
        }
    };
}

errnos! {
    EPERM = 1, "Operation not permitted";
    ENOENT = 2, "No such file or directory";
    ESRCH = 3, "No such process";
    EINTR = 4, "Interrupted system call";
    EIO = 5, "Input/output error";
    EBADF = 9, "Bad file descriptor";
    EAGAIN = 11, "Resource temporarily unavailable";
    ENOMEM = 12, "Cannot allocate memory";
    EACCES = 13, "Permission denied";
    EFAULT = 14, "Bad address";
    EBUSY = 16, "Device or resource busy";
    EEXIST = 17, "File exists";
    ENODEV = 19, "No such device";
    EINVAL = 22, "Invalid argument";
    ENFILE = 23, "Too many open files in system";
    EMFILE = 24, "Too many open files";
    ENOTTY = 25, "Inappropriate ioctl for device";
    EFBIG = 27, "File too large";
    ENOSPC = 28, "No space left on device";
    ERANGE = 34, "Numerical result out of range";
    ENOSYS = 38, "Function not implemented";
    EOVERFLOW = 75, "Value too large for defined data type";
    EOPNOTSUPP = 95, "Operation not supported";
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.description())
    }
}

impl std::error::Error for Errno {}

/// The model's result type: an error is always a Linux error number.
pub type Result<T> = std::result::Result<T, Errno>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip() {
        for &e in Errno::ALL {
            assert_eq!(Errno::from_name(e.name()), Some(e));
            assert_eq!(Errno::from_code(e.code()), Some(e));
        }
        assert_eq!(Errno::EINVAL.code(), 22);
        assert_eq!(Errno::from_name("EWHATEVER"), None);
        assert_eq!(Errno::EFAULT.to_string(), "EFAULT (Bad address)");
    }
}
