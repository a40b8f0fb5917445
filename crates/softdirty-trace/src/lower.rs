//! Lowering: a parsed trace command with its addresses resolved, as the one vocabulary
//! every backend performs ([`softdirty::backend::Command`]). Every consumer of traces
//! lowers through here: the replayer (over the model or the kernel backend), `softdirty
//! run`'s `trace:FILE` layouts and `softdirty compare`'s `trace:FILE` workload. `$name`
//! bindings are made by [`bind`] from the address the operation returns; expectations
//! stay as parsed (the replayer resolves them, as it needs the previous outcome).

use std::collections::HashMap;

use crate::ast::{Expect, MmapTarget, ScanCmd, Statement};
use softdirty::backend::{Command, Op};
use softdirty::linux::{PAGE_SIZE, TASK_SIZE};
use softdirty::scan::ScanArgs;

/// The `$name` → address bindings of a replay.
pub type Bindings = HashMap<String, u64>;

/// A trace line, lowered: an operation for a backend, or an expectation.
#[derive(Clone, Debug, PartialEq)]
pub enum Action<'a> {
    /// An operation, addresses resolved; `bind` names the `$name` the returned address
    /// goes to (`mmap $name`, `mremap ... => $name`).
    Perform {
        /// the operation
        cmd: Command,
        /// the binding its result makes
        bind: Option<&'a str>,
    },
    /// an expectation (resolved by the replayer, which needs the previous outcome)
    Expect(&'a Expect),
}

/// The scan arguments of a `scan` command starting at `start` (`end` 0 when
/// `start + LEN` overflows, which the scan refuses).
pub fn scan_args(s: &ScanCmd, start: u64) -> ScanArgs {
    ScanArgs {
        start,
        end: start.checked_add(s.len).unwrap_or(0),
        mask: s.mask,
        anyof: s.anyof,
        inverted: s.inverted,
        ret: s.ret,
        clear: s.clear,
        max_pages: s.max_pages,
        vec_len: s.vec_len,
    }
}

/// The pages the `pagemap ADDR LEN` command prints: the first page and the count.
pub fn pagemap_pages(a: u64, len: u64) -> (u64, u64) {
    let start = a & !(PAGE_SIZE - 1);
    let end = a.saturating_add(len).min(TASK_SIZE).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    (start, end.saturating_sub(start) / PAGE_SIZE)
}

/// Lowers `c`, resolving its addresses with `names`. The error is the message of an
/// address that cannot be resolved (an unbound `$name`, an offset out of range).
pub fn lower<'a>(c: &'a Statement, names: &Bindings) -> Result<Action<'a>, String> {
    let r = |a: &crate::ast::Addr| a.resolve(names);
    let mut bind = None;
    let cmd = match c {
        Statement::Expect(e) => return Ok(Action::Expect(e)),
        Statement::Space(n) => Command::Space(n.clone()),
        Statement::Fork(n) => Command::Fork(n.clone()),
        Statement::Mmap {
            target,
            len,
            prot,
            shared,
            placement,
            opts,
            file,
        } => {
            let addr = match target {
                MmapTarget::At(a) => r(a)?,
                // The model chooses: the address is only a (null) hint.
                MmapTarget::Bind(n) => {
                    bind = Some(n.as_str());
                    0
                }
            };
            Command::mmap(addr, *len, *prot, *shared, *placement, *opts, file.clone())
        }
        Statement::Munmap { addr, len } => Command::Op(Op::Munmap {
            addr: r(addr)?,
            len: *len,
        }),
        Statement::Mprotect { addr, len, prot } => Command::Op(Op::Mprotect {
            addr: r(addr)?,
            len: *len,
            prot: *prot,
        }),
        Statement::Mremap {
            addr,
            old_len,
            new_len,
            maymove,
            fixed,
            bind: b,
        } => {
            let fixed = match fixed {
                Some(a) => Some(r(a)?),
                None => None,
            };
            bind = b.as_deref();
            Command::Op(Op::Mremap {
                addr: r(addr)?,
                old_len: *old_len,
                new_len: *new_len,
                maymove: *maymove,
                fixed,
            })
        }
        Statement::Madvise {
            addr,
            len,
            advice: softdirty::mm::Advice::DontNeed,
        } => Command::Op(Op::DontNeed {
            addr: r(addr)?,
            len: *len,
        }),
        Statement::Madvise { addr, len, advice } => Command::Op(Op::Madvise {
            addr: r(addr)?,
            len: *len,
            advice: *advice,
        }),
        Statement::Write { addr, len } => Command::Write {
            addr: r(addr)?,
            len: *len,
        },
        Statement::Read { addr, len } => Command::Read {
            addr: r(addr)?,
            len: *len,
        },
        Statement::ClearRefs(v) => Command::ClearRefs(v.clone()),
        Statement::Pagemap { addr, len } => {
            let (start, pages) = pagemap_pages(r(addr)?, *len);
            Command::Pagemap { start, pages }
        }
        Statement::Scan(s) => Command::Scan(scan_args(s, r(&s.start)?)),
        Statement::Smaps(a) => Command::Smaps(r(a)?),
        Statement::BrkStart(a) => Command::BrkStart(r(a)?),
        Statement::Brk(a) => Command::Brk(r(a)?),
        Statement::File { name, memfd, size } => Command::File {
            name: name.clone(),
            memfd: *memfd,
            size: *size,
        },
        Statement::Fwrite { name, offset, len } => Command::Fwrite {
            name: name.clone(),
            offset: *offset,
            len: *len,
        },
    };
    Ok(Action::Perform { cmd, bind })
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
        let Action::Perform { cmd, bind: b } = a0 else {
            panic!("{a0:?}")
        };
        assert!(matches!(
            cmd,
            Command::Op(Op::Mmap {
                addr: 0,
                len: 16384,
                ..
            })
        ));
        assert_eq!(b, Some("a"));
        // Unbound until the mmap's result is bound.
        assert!(lower(&t.commands[1].node, &names)
            .unwrap_err()
            .contains("$a"));
        bind(&mut names, b, 0x20_0000);
        assert_eq!(
            lower(&t.commands[1].node, &names).unwrap(),
            Action::Perform {
                cmd: Command::Op(Op::Mremap {
                    addr: 0x20_1000,
                    old_len: 4096,
                    new_len: 8192,
                    maymove: true,
                    fixed: Some(0x10000),
                }),
                bind: Some("b"),
            }
        );
        assert_eq!(
            lower(&t.commands[2].node, &names).unwrap(),
            Action::Perform {
                cmd: Command::Write {
                    addr: 0x20_2000,
                    len: 3
                },
                bind: None,
            }
        );
    }
}
