//! The one trace renderer: a [`Command`] (or an [`Expect`]) as the trace line the parser
//! reads back. Every tool that writes trace text writes it through here (the fuzzer's
//! minimal traces, the proptests' failure logs).
//!
//! Round trip: for a command `c` whose addresses are page-aligned where the language
//! resolves pages (`pagemap`), `lower(parse(render::command(c)))` is `c` again (checked
//! by this module's tests over generated commands). Lengths that are whole pages are
//! written as `Np`, others and addresses in hexadecimal; scan options are written only
//! when they differ from the language's defaults, categories by name.

use std::fmt::Write as _;

use crate::ast::{Addr, AddrBase, Expect, PageSet};
use softdirty::backend::{Command, Op};
use softdirty::linux::PAGE_SIZE;
use softdirty::mm::Placement;
use softdirty::mode::Mode;
use softdirty::scan::{ScanArgs, CATEGORY_NAMES};

/// A LEN or SIZE: `Np` for whole pages, else hexadecimal bytes (`0` for zero).
pub fn size(len: u64) -> String {
    if len == 0 {
        "0".to_string()
    } else if len % PAGE_SIZE == 0 {
        format!("{}p", len / PAGE_SIZE)
    } else {
        format!("{len:#x}")
    }
}

/// An address: hexadecimal.
pub fn addr(a: u64) -> String {
    format!("{a:#x}")
}

/// An address expression (`0x1000`, `$heap+3p`, `$a-0x10`).
pub fn addr_expr(a: &Addr) -> String {
    let mut s = match &a.base {
        AddrBase::Number(n) => addr(*n),
        AddrBase::Name(n) => format!("${n}"),
    };
    let off = a.offset.unsigned_abs();
    if a.offset != 0 {
        let sign = if a.offset < 0 { '-' } else { '+' };
        match u64::try_from(off) {
            Ok(o) => {
                let _ = write!(s, "{sign}{}", size(o));
            }
            Err(_) => {
                let _ = write!(s, "{sign}{off:#x}");
            }
        }
    }
    s
}

/// A category mask as CATS: names for the known bits, a number for the rest.
pub fn categories(c: u64) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut rest = c;
    for (b, name) in CATEGORY_NAMES.iter().enumerate() {
        if c & (1 << b) != 0 {
            parts.push((*name).to_string());
            rest &= !(1 << b);
        }
    }
    if rest != 0 {
        parts.push(format!("{rest:#x}"));
    }
    parts.join(",")
}

/// The `mode` header.
pub fn mode(m: Mode) -> String {
    format!("mode {m}")
}

/// A structural operation as its trace line.
pub fn op(o: &Op) -> String {
    match *o {
        Op::Mmap {
            addr: a,
            len,
            prot,
            shared,
            placement,
            opts,
        } => {
            let place = match placement {
                Placement::Hint => "",
                Placement::Fixed => " fixed",
                Placement::NoReplace => " noreplace",
            };
            let share = if shared { "shared" } else { "private" };
            let noreserve = if opts.noreserve { " noreserve" } else { "" };
            let populate = if opts.populate { " populate" } else { "" };
            let growsdown = if opts.growsdown { " growsdown" } else { "" };
            // A library-level file mapping names its file by identity (a trace names it).
            let file = match opts.file {
                Some((f, off)) => format!(" file f{} {}", f.id, size(off)),
                None => String::new(),
            };
            format!(
                "mmap {} {} {prot} {share}{place}{file}{noreserve}{populate}{growsdown}",
                addr(a),
                size(len)
            )
        }
        Op::Munmap { addr: a, len } => format!("munmap {} {}", addr(a), size(len)),
        Op::Mprotect { addr: a, len, prot } => {
            format!("mprotect {} {} {prot}", addr(a), size(len))
        }
        Op::Mremap {
            addr: a,
            old_len,
            new_len,
            maymove,
            fixed,
        } => {
            let mut s = format!("mremap {} {} {}", addr(a), size(old_len), size(new_len));
            if maymove {
                s.push_str(" maymove");
            }
            if let Some(d) = fixed {
                let _ = write!(s, " fixed {}", addr(d));
            }
            s
        }
        Op::DontNeed { addr: a, len } => format!("madvise {} {} dontneed", addr(a), size(len)),
        Op::Madvise {
            addr: a,
            len,
            advice,
        } => format!("madvise {} {} {}", addr(a), size(len), advice.name()),
    }
}

/// The `scan` line of `args` (LEN is `end - start`, wrapping: an `end` of 0 past a
/// `start` is what an overflowing `start + LEN` lowers to).
pub fn scan(args: &ScanArgs) -> String {
    let ScanArgs {
        start,
        end,
        mask,
        anyof,
        inverted,
        ret,
        clear,
        max_pages,
        vec_len,
    } = *args;
    let mut s = format!("scan {} {}", addr(start), size(end.wrapping_sub(start)));
    for (key, v) in [
        ("mask", mask),
        ("anyof", anyof),
        ("inverted", inverted),
        ("return", ret),
    ] {
        if v != 0 {
            let _ = write!(s, " {key}={}", categories(v));
        }
    }
    if clear {
        s.push_str(" clear");
    }
    if max_pages != 0 {
        let _ = write!(s, " max_pages={max_pages}");
    }
    if vec_len != 1024 {
        let _ = write!(s, " vec_len={vec_len}");
    }
    s
}

/// A command as its trace line.
pub fn command(c: &Command) -> String {
    match c {
        Command::Space(n) => format!("space {n}"),
        Command::Fork(n) => format!("fork {n}"),
        Command::Op(o) => op(o),
        Command::Write { addr: a, len } => format!("write {} {}", addr(*a), size(*len)),
        Command::Read { addr: a, len } => format!("read {} {}", addr(*a), size(*len)),
        Command::ClearRefs(v) => format!("clear_refs {v}"),
        Command::Pagemap { start, pages } => format!(
            "pagemap {} {}",
            addr(*start),
            size(pages.saturating_mul(PAGE_SIZE))
        ),
        Command::Scan(args) => scan(args),
        Command::Smaps(a) => format!("smaps {}", addr(*a)),
        Command::BrkStart(a) => format!("brk_start {}", addr(*a)),
        Command::Brk(a) => format!("brk {}", addr(*a)),
        Command::File {
            name,
            memfd,
            size: sz,
        } => {
            let what = if *memfd { "memfd" } else { "file" };
            format!("{what} {name} {}", size(*sz))
        }
        Command::Fwrite { name, offset, len } => {
            format!("fwrite {name} {} {}", size(*offset), size(*len))
        }
        Command::MmapFile(m) => {
            let line = op(&Op::Mmap {
                addr: m.addr,
                len: m.len,
                prot: m.prot,
                shared: m.shared,
                placement: m.placement,
                opts: m.opts,
            });
            // The file words go after the placement, as the format lists them.
            let flags_at = line
                .find(" noreserve")
                .or_else(|| line.find(" populate"))
                .or_else(|| line.find(" growsdown"))
                .unwrap_or(line.len());
            format!(
                "{} file {} {}{}",
                &line[..flags_at],
                m.name,
                size(m.offset),
                &line[flags_at..]
            )
        }
    }
}

/// PAGES: `none`, `all`, or indices and `a..b` ranges.
pub fn pages(p: &PageSet) -> String {
    match p {
        PageSet::None => "none".to_string(),
        PageSet::All => "all".to_string(),
        PageSet::List(l) if l.is_empty() => "none".to_string(),
        PageSet::List(l) => l
            .iter()
            .map(|&(a, b)| {
                if b == a + 1 {
                    a.to_string()
                } else {
                    format!("{a}..{b}")
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// An expectation as its trace line.
pub fn expect(e: &Expect) -> String {
    match e {
        Expect::Err(errno) => format!("expect err {}", errno.name()),
        Expect::Ok => "expect ok".to_string(),
        Expect::SoftDirty {
            addr: a,
            len,
            pages: p,
        } => format!(
            "expect softdirty {} {} {}",
            addr_expr(a),
            size(*len),
            pages(p)
        ),
        Expect::Present {
            addr: a,
            len,
            pages: p,
        } => format!(
            "expect present {} {} {}",
            addr_expr(a),
            size(*len),
            pages(p)
        ),
        Expect::Vmas {
            addr: a,
            len,
            count,
        } => format!("expect vmas {} {} {count}", addr_expr(a), size(*len)),
        Expect::Regions(n) => format!("expect regions {n}"),
        Expect::WalkEnd(a) => format!("expect walk_end {}", addr_expr(a)),
        Expect::Faults(n) => format!("expect faults {n}"),
        Expect::Brk(a) => format!("expect brk {}", addr_expr(a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::{lower, Action, Bindings};
    use crate::parse::parse;
    use proptest::prelude::*;
    use softdirty::errno::Errno;
    use softdirty::linux::TASK_SIZE;
    use softdirty::prot::Prot;

    /// Parses `text` and lowers every line with no bindings.
    fn read_back(text: &str) -> Vec<Command> {
        let t = parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        t.commands
            .iter()
            .map(|c| match lower(&c.node, &Bindings::new()) {
                Ok(Action::Perform { cmd, bind: None }) => cmd,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn u64_s() -> impl Strategy<Value = u64> {
        prop_oneof![
            4 => (0u64..64).prop_map(|p| 0x20_0000_0000 + p * PAGE_SIZE),
            1 => any::<u64>(),
            1 => prop::sample::select(vec![0, 1, 4095, 4096, TASK_SIZE, u64::MAX]),
        ]
    }

    fn prot_s() -> impl Strategy<Value = Prot> {
        prop::sample::select(vec![Prot::NONE, Prot::R, Prot::RW, Prot::RX, Prot::RWX])
    }

    fn op_s() -> impl Strategy<Value = Op> {
        let place = prop::sample::select(vec![
            Placement::Hint,
            Placement::Fixed,
            Placement::NoReplace,
        ]);
        prop_oneof![
            (
                u64_s(),
                u64_s(),
                prot_s(),
                any::<bool>(),
                place,
                any::<(bool, bool, bool)>()
            )
                .prop_map(
                    |(addr, len, prot, shared, placement, (noreserve, populate, growsdown))| {
                        Op::Mmap {
                            addr,
                            len,
                            prot,
                            shared,
                            placement,
                            opts: softdirty::mm::MapOpts {
                                file: None,
                                noreserve,
                                populate,
                                growsdown,
                            },
                        }
                    }
                ),
            (
                u64_s(),
                u64_s(),
                prop::sample::select(softdirty::mm::Advice::ALL.to_vec())
            )
                .prop_filter("dontneed is Op::DontNeed", |(_, _, a)| {
                    *a != softdirty::mm::Advice::DontNeed
                })
                .prop_map(|(addr, len, advice)| Op::Madvise { addr, len, advice }),
            (u64_s(), u64_s()).prop_map(|(addr, len)| Op::Munmap { addr, len }),
            (u64_s(), u64_s(), prot_s()).prop_map(|(addr, len, prot)| Op::Mprotect {
                addr,
                len,
                prot
            }),
            (
                u64_s(),
                u64_s(),
                u64_s(),
                any::<bool>(),
                prop::option::of(u64_s())
            )
                .prop_map(|(addr, old_len, new_len, maymove, fixed)| Op::Mremap {
                    addr,
                    old_len,
                    new_len,
                    maymove,
                    fixed
                }),
            (u64_s(), u64_s()).prop_map(|(addr, len)| Op::DontNeed { addr, len }),
        ]
    }

    fn cats_s() -> impl Strategy<Value = u64> {
        prop_oneof![Just(0u64), 0u64..0x200, any::<u64>()]
    }

    fn command_s() -> impl Strategy<Value = Command> {
        let name = "[a-z][a-z0-9_.-]{0,6}";
        prop_oneof![
            name.prop_map(Command::Space),
            name.prop_map(Command::Fork),
            op_s().prop_map(Command::Op),
            (u64_s(), u64_s()).prop_map(|(addr, len)| Command::Write { addr, len }),
            (u64_s(), u64_s()).prop_map(|(addr, len)| Command::Read { addr, len }),
            "(4|1|0|-1|abc|99999999999)".prop_map(Command::ClearRefs),
            // pagemap lowers to whole pages below TASK_SIZE
            (0u64..64, 0u64..64).prop_map(|(p, n)| Command::Pagemap {
                start: 0x20_0000_0000 + p * PAGE_SIZE,
                pages: n
            }),
            (
                u64_s(),
                u64_s(),
                (cats_s(), cats_s(), cats_s(), cats_s()),
                any::<bool>(),
                prop_oneof![Just(0u64), any::<u64>()],
                prop_oneof![Just(1024u64), any::<u64>()]
            )
                .prop_map(
                    |(start, len, (mask, anyof, inverted, ret), clear, max_pages, vec_len)| {
                        Command::Scan(ScanArgs {
                            start,
                            end: start.checked_add(len).unwrap_or(0),
                            mask,
                            anyof,
                            inverted,
                            ret,
                            clear,
                            max_pages,
                            vec_len,
                        })
                    }
                ),
            u64_s().prop_map(Command::Smaps),
            u64_s().prop_map(Command::BrkStart),
            u64_s().prop_map(Command::Brk),
            // Files: "fa" is a regular file, "fm" a memfd (created by the prelude of
            // `rendered_commands_parse_back`, as a trace must before it names them).
            (any::<bool>(), u64_s()).prop_map(|(memfd, size)| Command::File {
                name: if memfd { "fm" } else { "fa" }.into(),
                memfd,
                size
            }),
            (any::<bool>(), u64_s(), u64_s()).prop_map(|(m, offset, len)| Command::Fwrite {
                name: if m { "fm" } else { "fa" }.into(),
                offset,
                len
            }),
            (op_s(), any::<bool>(), u64_s()).prop_filter_map("an mmap", |(o, m, offset)| {
                match o {
                    Op::Mmap {
                        addr,
                        len,
                        prot,
                        shared,
                        placement,
                        opts,
                    } => Some(Command::MmapFile(softdirty::backend::FileMapping {
                        addr,
                        len,
                        prot,
                        shared,
                        placement,
                        opts,
                        name: if m { "fm" } else { "fa" }.into(),
                        offset,
                    })),
                    _ => None,
                }
            }),
        ]
    }

    proptest! {
        /// Render then parse (and lower) gives the same commands.
        #[test]
        fn rendered_commands_parse_back(cmds in prop::collection::vec(command_s(), 1..20)) {
            let prelude = [
                Command::File { name: "fa".into(), memfd: false, size: 0 },
                Command::File { name: "fm".into(), memfd: true, size: 0 },
            ];
            let cmds: Vec<Command> = prelude.into_iter().chain(cmds).collect();
            let text: String = cmds.iter().map(|c| command(c) + "\n").collect();
            prop_assert_eq!(read_back(&text), cmds);
        }
    }

    #[test]
    fn lines_read_as_written() {
        let c = Command::Op(Op::Mremap {
            addr: 0x50_0000_0000,
            old_len: 2 * PAGE_SIZE,
            new_len: 3 * PAGE_SIZE,
            maymove: true,
            fixed: Some(0x50_0000_9000),
        });
        assert_eq!(
            command(&c),
            "mremap 0x5000000000 2p 3p maymove fixed 0x5000009000"
        );
        let s = Command::Scan(ScanArgs {
            start: 0x1000,
            end: 0x3000,
            mask: 1 << 7,
            ret: 1 << 7,
            clear: true,
            vec_len: 1024,
            ..ScanArgs::default()
        });
        assert_eq!(
            command(&s),
            "scan 0x1000 2p mask=softdirty return=softdirty clear"
        );
        let e = [
            Expect::Err(Errno::EEXIST),
            Expect::Ok,
            Expect::SoftDirty {
                addr: Addr {
                    base: AddrBase::Name("heap".into()),
                    offset: -4096,
                },
                len: 3 * PAGE_SIZE,
                pages: PageSet::List(vec![(0, 1), (2, 3)]),
            },
            Expect::Present {
                addr: Addr {
                    base: AddrBase::Number(0x1000),
                    offset: 5,
                },
                len: 5,
                pages: PageSet::All,
            },
            Expect::Vmas {
                addr: Addr {
                    base: AddrBase::Number(0x1000),
                    offset: 0,
                },
                len: 4096,
                count: 2,
            },
            Expect::Regions(3),
            Expect::WalkEnd(Addr {
                base: AddrBase::Number(0x2000),
                offset: 0,
            }),
            Expect::Faults(1),
            Expect::Brk(Addr {
                base: AddrBase::Number(0x20_0000_0000),
                offset: 3 * 4096,
            }),
        ];
        let text: String = std::iter::once("mmap $heap 4p rw\n".to_string())
            .chain(e.iter().map(|x| expect(x) + "\n"))
            .collect();
        let t = parse(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
        let got: Vec<Expect> = t.commands[1..]
            .iter()
            .map(|c| match &c.node {
                crate::ast::Statement::Expect(x) => x.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, e, "{text}");
    }
}
