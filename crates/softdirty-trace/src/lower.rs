//! Lowering: a parsed trace command with its addresses resolved, in the one form every
//! consumer of traces executes — the replayer (over the model or the kernel backend),
//! `softdirty run`'s `trace:FILE` layouts and `softdirty compare`'s `trace:FILE`
//! workload. The five structural commands become an [`Op`]; `$name` bindings are made by
//! [`Bindings::bind`] from the address the operation returns.

use std::collections::HashMap;

use softdirty::mm::Placement;
use softdirty::backend::Op;
use crate::ast::{Command, Expect, MmapTarget, ScanCmd};

/// The `$name` → address bindings of a replay.
pub type Bindings = HashMap<String, u64>;

/// A trace command, lowered.
#[derive(Clone, Debug, PartialEq)]
pub enum Action<'a> {
    /// `space NAME`
    Space(&'a str),
    /// `fork CHILD`
    Fork(&'a str),
    /// mmap, munmap, mprotect, mremap, madvise; `bind` names the `$name` the returned
    /// address goes to (`mmap $name`, `mremap ... => $name`).
    Op {
        /// the operation, addresses resolved
        op: Op,
        /// the binding its result makes
        bind: Option<&'a str>,
    },
    /// `write ADDR [LEN]`
    Write {
        /// address
        addr: u64,
        /// length in bytes
        len: u64,
    },
    /// `read ADDR [LEN]`
    Read {
        /// address
        addr: u64,
        /// length in bytes
        len: u64,
    },
    /// `clear_refs VALUE` (the value as written)
    ClearRefs(&'a str),
    /// `pagemap ADDR LEN`
    Pagemap {
        /// address
        addr: u64,
        /// length in bytes
        len: u64,
    },
    /// `scan ...` with START resolved
    Scan {
        /// START
        start: u64,
        /// the other arguments
        scan: &'a ScanCmd,
    },
    /// `smaps ADDR`
    Smaps(u64),
    /// an expectation (resolved by the replayer, which needs the previous outcome)
    Expect(&'a Expect),
}

/// Lowers `c`, resolving its addresses with `names`. The error is the message of an
/// address that cannot be resolved (an unbound `$name`, an offset out of range).
pub fn lower<'a>(c: &'a Command, names: &Bindings) -> Result<Action<'a>, String> {
    let r = |a: &crate::ast::Addr| a.resolve(names);
    Ok(match c {
        Command::Space(n) => Action::Space(n),
        Command::Fork(n) => Action::Fork(n),
        Command::Mmap {
            target,
            len,
            prot,
            shared,
            placement,
        } => {
            let (addr, bind) = match target {
                MmapTarget::At(a) => (r(a)?, None),
                // The model chooses: the address is only a (null) hint.
                MmapTarget::Bind(n) => (0, Some(n.as_str())),
            };
            Action::Op {
                op: Op::Mmap {
                    addr,
                    len: *len,
                    prot: *prot,
                    shared: *shared,
                    placement: Placement::from(*placement),
                },
                bind,
            }
        }
        Command::Munmap { addr, len } => Action::Op {
            op: Op::Munmap {
                addr: r(addr)?,
                len: *len,
            },
            bind: None,
        },
        Command::Mprotect { addr, len, prot } => Action::Op {
            op: Op::Mprotect {
                addr: r(addr)?,
                len: *len,
                prot: *prot,
            },
            bind: None,
        },
        Command::Mremap {
            addr,
            old_len,
            new_len,
            maymove,
            fixed,
            bind,
        } => {
            let fixed = match fixed {
                Some(a) => Some(r(a)?),
                None => None,
            };
            Action::Op {
                op: Op::Mremap {
                    addr: r(addr)?,
                    old_len: *old_len,
                    new_len: *new_len,
                    maymove: *maymove,
                    fixed,
                },
                bind: bind.as_deref(),
            }
        }
        Command::Madvise { addr, len, .. } => Action::Op {
            op: Op::DontNeed {
                addr: r(addr)?,
                len: *len,
            },
            bind: None,
        },
        Command::Write { addr, len } => Action::Write {
            addr: r(addr)?,
            len: *len,
        },
        Command::Read { addr, len } => Action::Read {
            addr: r(addr)?,
            len: *len,
        },
        Command::ClearRefs(v) => Action::ClearRefs(v),
        Command::Pagemap { addr, len } => Action::Pagemap {
            addr: r(addr)?,
            len: *len,
        },
        Command::Scan(s) => Action::Scan {
            start: r(&s.start)?,
            scan: s,
        },
        Command::Smaps(a) => Action::Smaps(r(a)?),
        Command::Expect(e) => Action::Expect(e),
    })
}

/// Records `bind` (if any) → `addr`, the address an operation returned.
pub fn bind(names: &mut Bindings, bind: Option<&str>, addr: u64) {
    if let Some(n) = bind {
        names.insert(n.to_string(), addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse;

    #[test]
    fn lowers_structural_commands_and_resolves_names() {
        let t =
            parse("mmap $a 4p rw\nmremap $a+1p 1p 2p maymove fixed 0x10000 => $b\nwrite $a+2p 3\n")
                .unwrap();
        let mut names = Bindings::new();
        let a0 = lower(&t.commands[0].node, &names).unwrap();
        let Action::Op { op, bind: b } = a0 else {
            panic!("{a0:?}")
        };
        assert!(matches!(
            op,
            Op::Mmap {
                addr: 0,
                len: 16384,
                ..
            }
        ));
        assert_eq!(b, Some("a"));
        // Unbound until the mmap's result is bound.
        assert!(lower(&t.commands[1].node, &names)
            .unwrap_err()
            .contains("$a"));
        bind(&mut names, b, 0x20_0000);
        assert_eq!(
            lower(&t.commands[1].node, &names).unwrap(),
            Action::Op {
                op: Op::Mremap {
                    addr: 0x20_1000,
                    old_len: 4096,
                    new_len: 8192,
                    maymove: true,
                    fixed: Some(0x10000),
                },
                bind: Some("b"),
            }
        );
        assert_eq!(
            lower(&t.commands[2].node, &names).unwrap(),
            Action::Write {
                addr: 0x20_2000,
                len: 3
            }
        );
    }
}
