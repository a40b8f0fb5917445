//! Memory protection (`PROT_READ | PROT_WRITE | PROT_EXEC`).

use std::fmt;
use std::str::FromStr;

/// The protection of a mapping, as given to `mmap(2)` and `mprotect(2)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Prot {
    /// `PROT_READ`
    pub read: bool,
    /// `PROT_WRITE`
    pub write: bool,
    /// `PROT_EXEC`
    pub exec: bool,
}

impl Prot {
    /// `PROT_NONE`
    pub const NONE: Prot = Prot {
        read: false,
        write: false,
        exec: false,
    };
    /// `PROT_READ`
    pub const R: Prot = Prot {
        read: true,
        write: false,
        exec: false,
    };
    /// `PROT_READ | PROT_WRITE`
    pub const RW: Prot = Prot {
        read: true,
        write: true,
        exec: false,
    };
    /// `PROT_READ | PROT_EXEC`
    pub const RX: Prot = Prot {
        read: true,
        write: false,
        exec: true,
    };
    /// `PROT_READ | PROT_WRITE | PROT_EXEC`
    pub const RWX: Prot = Prot {
        read: true,
        write: true,
        exec: true,
    };

    /// The `PROT_*` bits as the syscall takes them.
    pub const fn bits(self) -> i32 {
        (self.read as i32) | ((self.write as i32) << 1) | ((self.exec as i32) << 2)
    }

    /// Builds a protection from `PROT_*` bits (other bits are ignored).
    pub const fn from_bits(bits: i32) -> Prot {
        Prot {
            read: bits & 1 != 0,
            write: bits & 2 != 0,
            exec: bits & 4 != 0,
        }
    }

    /// Can the pages be accessed at all (x86: any of read, write, exec allows a load)?
    pub const fn accessible(self) -> bool {
        self.read || self.write || self.exec
    }
}

impl fmt::Display for Prot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.accessible() {
            return f.write_str("none");
        }
        for (on, c) in [(self.read, 'r'), (self.write, 'w'), (self.exec, 'x')] {
            if on {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for Prot {
    type Err = String;
    /// Parses `none` or a non-empty combination of `r`, `w`, `x` in that order.
    fn from_str(s: &str) -> Result<Prot, String> {
        if s == "none" {
            return Ok(Prot::NONE);
        }
        let mut p = Prot::NONE;
        let mut rest = s;
        for (c, field) in [('r', 0), ('w', 1), ('x', 2)] {
            if let Some(r) = rest.strip_prefix(c) {
                rest = r;
                match field {
                    0 => p.read = true,
                    1 => p.write = true,
                    _ => p.exec = true,
                }
            }
        }
        if s.is_empty() || !rest.is_empty() {
            return Err(format!(
                "bad protection `{s}` (expected none, or r, w, x in that order)"
            ));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling_and_rejects_others() {
        for s in ["none", "r", "rw", "rx", "rwx", "w", "wx", "x"] {
            let p: Prot = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        for s in ["", "wr", "rr", "rwz", "NONE", "xr"] {
            assert!(s.parse::<Prot>().is_err(), "{s}");
        }
        assert_eq!(Prot::RW.bits(), 3);
        assert_eq!(Prot::from_bits(5), Prot::RX);
    }
}
