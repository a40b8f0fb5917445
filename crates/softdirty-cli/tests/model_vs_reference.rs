//! Differential test: random operation sequences run through the real model
//! (`softdirty::mm::AddressSpace`) and the deliberately simple reference model in
//! `src/reference.rs`, in `precise`, `legacy`, `sticky`, `nomerge` and `regions`
//! mode; every observable is compared after every operation: the result (value or
//! errno), the VMA list (boundaries, count, prot, shared, VM_SOFTDIRTY — `is_vma_sd` in
//! `regions` —, faulted), soft-dirty and present runs over the arena and over every VMA,
//! pagemap bits 55/56/61/63 of a few pages, the write-fault count, and in `regions` the
//! total number of non-soft-dirty regions and smaps' `sd`.
//!
//! `sticky` and `nomerge` differ from `legacy` only where VMAs with different
//! VM_SOFTDIRTY meet a merge, so their cases (`dense_case_s`) mix the random operations
//! with scenarios built to reach those merges: a cleared VMA next to a new mmap,
//! mprotect merges of dirty and clean VMAs, mremap moves and in-place growth that merge
//! at the destination, and alternating chains of clean and dirty VMAs followed by
//! `clear_refs 4`.
//!
//! `regions` follows the RFC patch's list rules (split, `nsdr_move`, `nsdr_clone`, lists
//! dropped or kept by the merges that do not adjust them), so its cases
//! (`regions_case_s`) add scenarios for each: new mappings between cleared VMAs, splits by
//! munmap and mprotect, the mprotect boundary between two VMAs moved back and forth (stale
//! regions coming back), mremap moves into a hole between two VMAs, away and back, or
//! below themselves and then grown in place, in-place growth swallowing the next VMA, and
//! fork followed by operations on the child; with DONTNEED, writes and `clear_refs 4`
//! between the steps.
//!
//! Cases: `PROPTEST_CASES` if set (CI runs `PROPTEST_CASES=10000`), else 1000 per mode.
//!
//! On failure proptest shrinks to a minimal sequence and prints it, and the failure
//! message holds the same sequence as resolved trace-format lines with both results.
#![allow(clippy::single_range_in_vec_init)] // page lists: `vec![3..4]` is a list of one run

use proptest::prelude::*;
use softdirty::backend::{Backend, Command, ModelBackend, Op, Outcome};
use softdirty::errno::Errno;
use softdirty::mm::{AddressSpace, Placement};
use softdirty::mode::Mode;
use softdirty::prot::Prot;
use softdirty_cli::reference::{RefBackend, RefSpace, P, TASK_SIZE};
use softdirty_trace::render;
use std::fmt;

/// The arena: 32 units (a unit is 1 page, or 131 pages in some cases so that VMAs cross
/// bitmap word and chunk boundaries) starting here.
const ARENA: u64 = 0x20_0000_0000;
const ARENA_UNITS: i64 = 32;

// ----------------------------------------------------------------- generated operations

#[derive(Clone, Copy, PartialEq, Eq)]
enum Addr {
    /// ARENA + units * unit pages + byte offset
    Arena(i64, u64),
    Raw(u64),
}

impl Addr {
    fn get(self, unit: u64) -> u64 {
        match self {
            Addr::Arena(u, off) => (ARENA as i64 + u * (unit * P) as i64) as u64 + off,
            Addr::Raw(a) => a,
        }
    }
}

impl fmt::Debug for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Addr::Arena(u, 0) => write!(f, "@{u}"),
            Addr::Arena(u, o) => write!(f, "@{u}+{o}"),
            Addr::Raw(a) => write!(f, "{a:#x}"),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Len {
    /// units
    Units(u64),
    /// units + bytes
    Bytes(u64, u64),
    Raw(u64),
}

impl Len {
    fn get(self, unit: u64) -> u64 {
        match self {
            Len::Units(n) => n * unit * P,
            Len::Bytes(n, b) => n * unit * P + b,
            Len::Raw(x) => x,
        }
    }
}

impl fmt::Debug for Len {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Len::Units(n) => write!(f, "{n}u"),
            Len::Bytes(n, b) => write!(f, "{n}u+{b}"),
            Len::Raw(x) => write!(f, "{x:#x}"),
        }
    }
}

/// A generated [`Command`] whose addresses and lengths are still symbolic: arena units
/// (the unit, 1 or 131 pages, is drawn per case, so an operation is generated before its
/// bytes are known, and proptest shrinks and prints it in units), and a `fork` whose child
/// is named when it runs. This is the generator's only extra data: every step runs as the
/// [`Command`] [`Sym::command`] resolves it to, through `Backend::perform`, and is logged
/// by the one trace renderer (`softdirty_trace::render`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Sym {
    Mmap {
        addr: Addr,
        len: Len,
        prot: Prot,
        shared: bool,
        place: Placement,
    },
    Munmap {
        addr: Addr,
        len: Len,
    },
    Mprotect {
        addr: Addr,
        len: Len,
        prot: Prot,
    },
    Mremap {
        addr: Addr,
        old: Len,
        new: Len,
        maymove: bool,
        fixed: Option<Addr>,
    },
    Dontneed {
        addr: Addr,
        len: Len,
    },
    Write {
        addr: Addr,
        len: Len,
    },
    Read {
        addr: Addr,
        len: Len,
    },
    ClearRefs(i32),
    Fork,
}

impl Sym {
    /// The command this is for `unit`; a fork's child is called `child`.
    fn command(&self, unit: u64, child: &str) -> Command {
        let (a, l) = (|x: Addr| x.get(unit), |x: Len| x.get(unit));
        match *self {
            Sym::Mmap {
                addr,
                len,
                prot,
                shared,
                place,
            } => Command::Op(Op::Mmap {
                addr: a(addr),
                len: l(len),
                prot,
                shared,
                placement: place,
                opts: softdirty::mm::MapOpts::default(),
            }),
            Sym::Munmap { addr, len } => Command::Op(Op::Munmap {
                addr: a(addr),
                len: l(len),
            }),
            Sym::Mprotect { addr, len, prot } => Command::Op(Op::Mprotect {
                addr: a(addr),
                len: l(len),
                prot,
            }),
            Sym::Mremap {
                addr,
                old,
                new,
                maymove,
                fixed,
            } => Command::Op(Op::Mremap {
                addr: a(addr),
                old_len: l(old),
                new_len: l(new),
                maymove,
                fixed: fixed.map(a),
            }),
            Sym::Dontneed { addr, len } => Command::Op(Op::DontNeed {
                addr: a(addr),
                len: l(len),
            }),
            Sym::Write { addr, len } => Command::Write {
                addr: a(addr),
                len: l(len),
            },
            Sym::Read { addr, len } => Command::Read {
                addr: a(addr),
                len: l(len),
            },
            Sym::ClearRefs(v) => Command::ClearRefs(v.to_string()),
            Sym::Fork => Command::Fork(child.to_string()),
        }
    }
}

/// One operation on address space `sp` (modulo the number of spaces; forks add spaces).
#[derive(Clone, PartialEq, Eq)]
struct OnSpace {
    sp: u8,
    op: Sym,
}

impl fmt::Debug for OnSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] ", self.sp)?;
        match &self.op {
            Sym::Mmap {
                addr,
                len,
                prot,
                shared,
                place,
            } => write!(
                f,
                "mmap {addr:?} {len:?} {prot} {} {}",
                if *shared { "shared" } else { "private" },
                match place {
                    Placement::Hint => "hint",
                    Placement::Fixed => "fixed",
                    Placement::NoReplace => "noreplace",
                }
            ),
            Sym::Munmap { addr, len } => write!(f, "munmap {addr:?} {len:?}"),
            Sym::Mprotect { addr, len, prot } => write!(f, "mprotect {addr:?} {len:?} {prot}"),
            Sym::Mremap {
                addr,
                old,
                new,
                maymove,
                fixed,
            } => {
                write!(f, "mremap {addr:?} {old:?} {new:?}")?;
                if *maymove {
                    write!(f, " maymove")?;
                }
                if let Some(na) = fixed {
                    write!(f, " fixed {na:?}")?;
                }
                Ok(())
            }
            Sym::Dontneed { addr, len } => write!(f, "madvise {addr:?} {len:?} dontneed"),
            Sym::Write { addr, len } => write!(f, "write {addr:?} {len:?}"),
            Sym::Read { addr, len } => write!(f, "read {addr:?} {len:?}"),
            Sym::ClearRefs(v) => write!(f, "clear_refs {v}"),
            Sym::Fork => write!(f, "fork"),
        }
    }
}

fn addr_s() -> impl Strategy<Value = Addr> {
    prop_oneof![
        12 => (0..ARENA_UNITS).prop_map(|u| Addr::Arena(u, 0)),
        6 => (0..ARENA_UNITS / 4).prop_map(|u| Addr::Arena(u * 4, 0)),
        1 => (-3..ARENA_UNITS + 3, 1u64..P).prop_map(|(u, o)| Addr::Arena(u, o)),
        1 => prop_oneof![-6i64..0, ARENA_UNITS..ARENA_UNITS + 6].prop_map(|u| Addr::Arena(u, 0)),
        1 => prop::sample::select(vec![
            0u64,
            0x1000,
            0x2001,
            TASK_SIZE - P,
            TASK_SIZE - 2 * P,
            TASK_SIZE,
            u64::MAX & !(P - 1),
        ])
        .prop_map(Addr::Raw),
    ]
}

fn len_s() -> impl Strategy<Value = Len> {
    prop_oneof![
        12 => small_len_s(),
        1 => prop::sample::select(vec![
            u64::MAX,
            u64::MAX - P + 2,
            TASK_SIZE,
            TASK_SIZE + P,
            1u64 << 62,
        ])
        .prop_map(Len::Raw),
    ]
}

/// Lengths that cannot overflow page alignment (mremap's old_len: a wrapped old_len is
/// not documented).
fn small_len_s() -> impl Strategy<Value = Len> {
    prop_oneof![
        12 => (1u64..=4).prop_map(Len::Units),
        6 => (1u64..=12).prop_map(Len::Units),
        1 => Just(Len::Units(0)),
        2 => (0u64..6, 1u64..P).prop_map(|(n, b)| Len::Bytes(n, b)),
    ]
}

/// Lengths for write and read: mostly short, so that they land inside mappings.
fn rw_len_s() -> impl Strategy<Value = Len> {
    prop_oneof![
        8 => (1u64..=2).prop_map(Len::Units),
        2 => small_len_s(),
        1 => (0u64..P).prop_map(|b| Len::Bytes(0, b)),
        1 => Just(Len::Raw(u64::MAX)),
    ]
}

fn new_len_s() -> impl Strategy<Value = Len> {
    prop_oneof![
        12 => small_len_s(),
        1 => prop::sample::select(vec![u64::MAX, TASK_SIZE + P]).prop_map(Len::Raw),
    ]
}

fn prot_s() -> impl Strategy<Value = Prot> {
    prop_oneof![
        1 => Just(Prot::NONE),
        2 => Just(Prot::R),
        7 => Just(Prot::RW),
        1 => Just(Prot::RX),
        1 => Just(Prot::RWX),
    ]
}

// Boxed: the unions' value trees are large, and a chain of them inline overflowed
// the test thread's 2 MiB stack in debug builds.
fn op_s() -> BoxedStrategy<Sym> {
    prop_oneof![
        8 => (addr_s(), len_s(), prot_s(), prop::bool::weighted(0.25), prop_oneof![
                6 => Just(Placement::Fixed),
                2 => Just(Placement::NoReplace),
                1 => Just(Placement::Hint),
            ])
            .prop_map(|(addr, len, prot, shared, place)| Sym::Mmap { addr, len, prot, shared, place }),
        3 => (addr_s(), len_s()).prop_map(|(addr, len)| Sym::Munmap { addr, len }),
        7 => (addr_s(), len_s(), prot_s()).prop_map(|(addr, len, prot)| Sym::Mprotect { addr, len, prot }),
        5 => (addr_s(), small_len_s(), new_len_s(), prop::bool::weighted(0.7),
              prop::option::weighted(0.5, addr_s()))
            .prop_map(|(addr, old, new, maymove, fixed)| Sym::Mremap { addr, old, new, maymove, fixed }),
        2 => (addr_s(), len_s()).prop_map(|(addr, len)| Sym::Dontneed { addr, len }),
        6 => (addr_s(), rw_len_s()).prop_map(|(addr, len)| Sym::Write { addr, len }),
        3 => (addr_s(), rw_len_s()).prop_map(|(addr, len)| Sym::Read { addr, len }),
        2 => prop::sample::select(vec![4, 4, 4, 1, 5, 0, 6, -1]).prop_map(Sym::ClearRefs),
        1 => Just(Sym::Fork),
    ]
    .boxed()
}

/// A fixed mmap that fills part of the arena (cases start with a few, so that most
/// operations meet mappings).
// Boxed: the unions' value trees are large, and a chain of them inline overflowed
// the test thread's 2 MiB stack in debug builds.
fn fill_s() -> BoxedStrategy<OnSpace> {
    (
        0..ARENA_UNITS,
        2u64..=16,
        prot_s(),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(u, n, prot, shared)| OnSpace {
            sp: 0,
            op: Sym::Mmap {
                addr: Addr::Arena(u, 0),
                len: Len::Units(n),
                prot,
                shared,
                place: Placement::Fixed,
            },
        })
        .boxed()
}

fn case_s() -> impl Strategy<Value = (u64, Vec<OnSpace>)> {
    (
        prop_oneof![6 => Just(1u64), 1 => Just(131u64)],
        prop::collection::vec(fill_s(), 0..=4),
        prop::collection::vec(
            (prop_oneof![6 => Just(0u8), 1 => 1u8..3], op_s())
                .prop_map(|(sp, op)| OnSpace { sp, op }),
            1..=36,
        ),
    )
        .prop_map(|(unit, mut fill, body)| {
            fill.extend(body);
            (unit, fill)
        })
}

// ------------------------------------------------------- scenarios where the modes differ

fn fixed_at(u: i64, n: u64, prot: Prot) -> Sym {
    Sym::Mmap {
        addr: Addr::Arena(u, 0),
        len: Len::Units(n),
        prot,
        shared: false,
        place: Placement::Fixed,
    }
}

fn write_at(u: i64, n: u64) -> Sym {
    Sym::Write {
        addr: Addr::Arena(u, 0),
        len: Len::Units(n),
    }
}

/// `prot` mostly RW (the prot that merges), sometimes R, for the scenarios.
fn sprot_s() -> impl Strategy<Value = Prot> {
    prop_oneof![4 => Just(Prot::RW), 1 => Just(Prot::R)]
}

/// Optionally a write of `n` units at `u` (`Read` instead sometimes: a read fault maps the
/// zero page and gives the VMA no anon_vma).
fn maybe_touch(u: i64, n: u64, what: u8) -> Option<Sym> {
    match what {
        0 => Some(write_at(u, n)),
        1 => Some(Sym::Read {
            addr: Addr::Arena(u, 0),
            len: Len::Units(n),
        }),
        _ => None,
    }
}

/// The seed thread's pattern: a VMA, (written,) cleared, then a new mapping placed right
/// after it (or right before it), (then written,) and maybe cleared again.
fn seed_s() -> impl Strategy<Value = Vec<Sym>> {
    (
        0i64..20,
        1u64..=4,
        1u64..=4,
        sprot_s(),
        any::<bool>(),
        0u8..3,
        0u8..3,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(u, n, m, prot, left, t0, t1, noreplace, clear2)| {
            let mut v = vec![fixed_at(u + 4, n, Prot::RW)];
            v.extend(maybe_touch(u + 4, n, t0));
            v.push(Sym::ClearRefs(4));
            let at = if left {
                u + 4 - m as i64
            } else {
                u + 4 + n as i64
            };
            v.push(Sym::Mmap {
                addr: Addr::Arena(at, 0),
                len: Len::Units(m),
                prot,
                shared: false,
                place: if noreplace {
                    Placement::NoReplace
                } else {
                    Placement::Fixed
                },
            });
            v.extend(maybe_touch(at, 1, t1));
            if clear2 {
                v.push(Sym::ClearRefs(4));
            }
            v
        })
}

/// Three adjacent VMAs A, B, C of chosen prots, a `clear_refs 4` somewhere among their
/// mmaps (so some are clean and some dirty), optional writes, then an mprotect of a range
/// (often exactly one VMA, or an edge of one) to one of the prots present: the
/// mprotect merges of `vma_merge_existing_range` between dirty and clean VMAs.
fn mprotect_merge_s() -> impl Strategy<Value = Vec<Sym>> {
    let prot3 = prop_oneof![2 => Just(Prot::RW), 1 => Just(Prot::R), 1 => Just(Prot::NONE)];
    (
        0i64..16,
        prop::array::uniform3(1u64..=4),
        prop::array::uniform3(prot3),
        0usize..=3,
        prop::array::uniform3(0u8..4),
        0usize..8,
        0usize..3,
        any::<bool>(),
    )
        .prop_map(
            |(u, n, prot, clear_at, touch, range, which_prot, clear_end)| {
                let at = [u, u + n[0] as i64, u + (n[0] + n[1]) as i64];
                let mut v = Vec::new();
                for k in 0..3 {
                    if clear_at == k {
                        v.push(Sym::ClearRefs(4));
                    }
                    v.push(fixed_at(at[k], n[k], prot[k]));
                }
                if clear_at == 3 {
                    v.push(Sym::ClearRefs(4));
                }
                for k in 0..3 {
                    if prot[k].write {
                        v.extend(maybe_touch(at[k], 1, touch[k]));
                    }
                }
                // The range: a whole VMA, its head or its tail, or two VMAs' joining edges.
                let (a, l) = match range {
                    0 => (at[1], n[1]),
                    1 => (at[1], 1),
                    2 => (at[2] - 1, 1),
                    3 => (at[0], n[0]),
                    4 => (at[2], n[2]),
                    5 => (at[1] - 1, 2),
                    6 => (at[0], n[0] + n[1]),
                    _ => (at[2] - 1, n[2] + 1),
                };
                v.push(Sym::Mprotect {
                    addr: Addr::Arena(a, 0),
                    len: Len::Units(l),
                    prot: prot[which_prot],
                });
                if clear_end {
                    v.push(Sym::ClearRefs(4));
                }
                v
            },
        )
}

/// A target VMA T, a source VMA S elsewhere, a `clear_refs 4` before or after S exists,
/// optional touches, then S (or part of it) moved by mremap right after or right before T
/// (copy_vma's merge at the destination: an unfaulted source's pgoff is rebased, so it
/// merges); or T grown in place over a hole up to a next VMA (vma_merge_extend swallows
/// it).
fn mremap_merge_s() -> impl Strategy<Value = Vec<Sym>> {
    (
        0i64..14,
        1u64..=4,
        1u64..=4,
        sprot_s(),
        any::<bool>(),
        prop::array::uniform2(0u8..4),
        0u8..4,
        any::<bool>(),
        1u64..=3,
    )
        .prop_map(|(u, n, m, prot, clear_first, touch, kind, part, gap)| {
            let t = u + 4;
            let src = 24i64;
            let mut v = Vec::new();
            if kind == 3 {
                // In-place growth of T over a gap of `gap` units up to N.
                let nx = t + (n + gap) as i64;
                v.push(fixed_at(t, n, Prot::RW));
                if clear_first {
                    v.push(Sym::ClearRefs(4));
                }
                v.push(fixed_at(nx, m, prot));
                if !clear_first {
                    v.push(Sym::ClearRefs(4));
                }
                v.extend(maybe_touch(t, 1, touch[0]));
                v.extend(maybe_touch(nx, 1, touch[1]));
                v.push(Sym::Mremap {
                    addr: Addr::Arena(t, 0),
                    old: Len::Units(n),
                    new: Len::Units(n + gap),
                    maymove: false,
                    fixed: None,
                });
                return v;
            }
            v.push(fixed_at(t, n, Prot::RW));
            if clear_first {
                v.push(Sym::ClearRefs(4));
            }
            v.push(fixed_at(src, m, prot));
            if !clear_first {
                v.push(Sym::ClearRefs(4));
            }
            v.extend(maybe_touch(t, 1, touch[0]));
            if prot.write {
                v.extend(maybe_touch(src, 1, touch[1]));
            }
            let (from, len) = if part && m > 1 {
                (src + 1, m - 1)
            } else {
                (src, m)
            };
            let dest = match kind {
                0 => t + n as i64,
                1 => t - len as i64,
                _ => t + n as i64 + 1,
            };
            v.push(Sym::Mremap {
                addr: Addr::Arena(from, 0),
                old: Len::Units(len),
                new: Len::Units(len),
                maymove: true,
                fixed: Some(Addr::Arena(dest, 0)),
            });
            v
        })
}

/// Hildenbrand's alternating chain: a VMA, cleared, then fresh one-unit mappings
/// MAP_FIXED over every other unit ([clean][dirty][clean]...), writes, then
/// `clear_refs 4` (which `nomerge` follows with its merges), and maybe a second round.
fn chain_s() -> impl Strategy<Value = Vec<Sym>> {
    (
        0i64..16,
        3u64..=12,
        0u64..2,
        sprot_s(),
        prop::collection::vec(0u64..12, 0..3),
        any::<bool>(),
    )
        .prop_map(|(u, n, phase, prot, writes, again)| {
            let mut v = vec![fixed_at(u, n, Prot::RW), Sym::ClearRefs(4)];
            let rounds = if again { 2 } else { 1 };
            for r in 0..rounds {
                let mut k = (phase + r) % 2;
                while k < n {
                    v.push(fixed_at(u + k as i64, 1, prot));
                    k += 2;
                }
                for &w in &writes {
                    v.push(write_at(u + (w % n) as i64, 1));
                }
                v.push(Sym::ClearRefs(4));
            }
            v
        })
}

/// One item of a dense case's body: a random operation, or a scenario (on one space).
// Boxed: the unions' value trees are large, and a chain of them inline overflowed
// the test thread's 2 MiB stack in debug builds.
fn item_s() -> BoxedStrategy<Vec<OnSpace>> {
    let sp = || prop_oneof![6 => Just(0u8), 1 => 1u8..3];
    prop_oneof![
        10 => (sp(), op_s()).prop_map(|(sp, op)| vec![OnSpace { sp, op }]),
        2 => (sp(), seed_s()).prop_map(|(sp, ops)| on_all(sp, ops)),
        3 => (sp(), mprotect_merge_s()).prop_map(|(sp, ops)| on_all(sp, ops)),
        2 => (sp(), mremap_merge_s()).prop_map(|(sp, ops)| on_all(sp, ops)),
        1 => (sp(), chain_s()).prop_map(|(sp, ops)| on_all(sp, ops)),
    ]
    .boxed()
}

fn on_all(sp: u8, ops: Vec<Sym>) -> Vec<OnSpace> {
    ops.into_iter().map(|op| OnSpace { sp, op }).collect()
}

/// `case_s`'s shape (unit, a few filling mmaps, a body), with a body of random operations
/// and scenarios (`item_s`).
fn dense_case_s() -> impl Strategy<Value = (u64, Vec<OnSpace>)> {
    (
        prop_oneof![6 => Just(1u64), 1 => Just(131u64)],
        prop::collection::vec(fill_s(), 0..=4),
        prop::collection::vec(item_s(), 1..=12),
    )
        .prop_map(|(unit, mut fill, body)| {
            fill.extend(body.into_iter().flatten());
            (unit, fill)
        })
}

// ------------------------------------------------- scenarios for `regions`' list rules

fn mprotect_at(u: i64, n: u64, prot: Prot) -> Sym {
    Sym::Mprotect {
        addr: Addr::Arena(u, 0),
        len: Len::Units(n),
        prot,
    }
}

fn dontneed_at(u: i64, n: u64) -> Sym {
    Sym::Dontneed {
        addr: Addr::Arena(u, 0),
        len: Len::Units(n),
    }
}

fn move_to(from: i64, old: u64, new: u64, to: i64) -> Sym {
    Sym::Mremap {
        addr: Addr::Arena(from, 0),
        old: Len::Units(old),
        new: Len::Units(new),
        maymove: true,
        fixed: Some(Addr::Arena(to, 0)),
    }
}

/// After a list-changing operation on `[u, u + n)`: nothing, a DONTNEED of it (the PTE bit
/// goes, the list stays), a write or a read of its first unit, or `clear_refs 4`.
fn after_op(u: i64, n: u64, what: u8) -> Option<Sym> {
    match what {
        0 => Some(dontneed_at(u, n)),
        1 => Some(write_at(u, 1)),
        2 => Some(Sym::Read {
            addr: Addr::Arena(u, 0),
            len: Len::Units(n),
        }),
        3 => Some(Sym::ClearRefs(4)),
        _ => None,
    }
}

/// Two cleared VMAs A and B with a hole between them, maybe split first (munmap of a unit
/// inside A; mprotect of a unit inside B and back, which splits and then merges the three
/// parts again, case 6), then a new mapping in the hole: exactly the hole (both neighbours:
/// `vma_expand` + `nsdr_move`), touching one side only, or MAP_FIXED over both edges
/// (unmap splits A and B, then the new range merges with both).
fn between_s() -> impl Strategy<Value = Vec<Sym>> {
    (
        0i64..16,
        prop::array::uniform3(1u64..=4),
        prop::array::uniform2(0u8..4),
        0u8..4,
        0u8..4,
        sprot_s(),
        0u8..3,
        0u8..6,
    )
        .prop_map(|(u, [a, g, b], touch, split, fill, prot, t_new, after)| {
            let (pa, pb) = (u, u + (a + g) as i64);
            let mut v = vec![fixed_at(pa, a, Prot::RW), fixed_at(pb, b, Prot::RW)];
            v.extend(maybe_touch(pa, a, touch[0]));
            v.extend(maybe_touch(pb, b, touch[1]));
            v.push(Sym::ClearRefs(4));
            match split {
                1 if a >= 3 => v.push(Sym::Munmap {
                    addr: Addr::Arena(pa + 1, 0),
                    len: Len::Units(1),
                }),
                2 if b >= 3 => {
                    v.push(mprotect_at(pb + 1, 1, Prot::R));
                    v.extend(after_op(pb + 1, 1, touch[1]));
                    v.push(mprotect_at(pb + 1, 1, Prot::RW));
                }
                3 => v.push(write_at(pb, 1)),
                _ => {}
            }
            let hole = pa + a as i64;
            let (at, n) = match fill {
                0 => (hole, g),
                1 if g > 1 => (hole, g - 1),
                2 if g > 1 => (hole + 1, g - 1),
                3 if a > 1 && b > 1 => (hole - 1, g + 2),
                _ => (hole, g),
            };
            v.push(Sym::Mmap {
                addr: Addr::Arena(at, 0),
                len: Len::Units(n),
                prot,
                shared: false,
                place: Placement::Fixed,
            });
            v.extend(maybe_touch(at, 1, t_new));
            v.extend(after_op(pa, a + g + b, after));
            v
        })
}

/// The boundary between a cleared RW VMA A and a VMA B of another prot (and maybe a RW C
/// after B) moved back and forth by mprotect: A's tail to B's prot (case 4: A shrinks and
/// keeps its regions, B grows), B's head to RW (case 5: A grows back over its stale
/// regions, B keeps its own), a whole VMA (cases 7, 8, and 6 when C merges too), with
/// DONTNEED, writes, reads and `clear_refs 4` in between: the arena's poisoned tail.
fn boundary_s() -> impl Strategy<Value = Vec<Sym>> {
    (
        0i64..12,
        prop::array::uniform3(1u64..=5),
        prop_oneof![2 => Just(Prot::NONE), 2 => Just(Prot::R), 1 => Just(Prot::RX)],
        0u8..3,
        any::<bool>(),
        prop::array::uniform3(0u8..4),
        0usize..3,
        prop::collection::vec((any::<bool>(), 1u64..=3, 0u8..7), 1..=6),
    )
        .prop_map(
            |(u, [a, b, c], p, b_init, with_c, touch, clear_at, moves)| {
                let (pa, pb, pc) = (u, u + a as i64, u + (a + b) as i64);
                let mut v = vec![fixed_at(pa, a, Prot::RW)];
                v.extend(maybe_touch(pa, a, touch[0]));
                if clear_at == 0 {
                    v.push(Sym::ClearRefs(4));
                }
                if b_init == 0 {
                    v.push(fixed_at(pb, b, p));
                } else {
                    // B made RW first (faulted or not), then given its prot: it may keep
                    // VM_ACCOUNT and share A's anon_vma, so that A's tail can merge into it.
                    v.push(fixed_at(pb, b, Prot::RW));
                    v.extend(maybe_touch(pb, b, touch[1]));
                    v.push(mprotect_at(pb, b, p));
                }
                if with_c {
                    v.push(fixed_at(pc, c, Prot::RW));
                    v.extend(maybe_touch(pc, 1, touch[2]));
                }
                if clear_at == 1 {
                    v.push(Sym::ClearRefs(4));
                }
                let mut bd = pb;
                for (left, k, what) in moves {
                    if left {
                        let k = k.min((bd - pa) as u64);
                        if k == 0 {
                            continue;
                        }
                        bd -= k as i64;
                        v.push(mprotect_at(bd, k, p));
                        v.extend(after_op(bd, k, what));
                    } else {
                        let k = k.min((pc - bd) as u64);
                        if k == 0 {
                            continue;
                        }
                        v.push(mprotect_at(bd, k, Prot::RW));
                        v.extend(after_op(bd, k, what));
                        bd += k as i64;
                    }
                    if clear_at == 2 && what == 6 {
                        v.push(Sym::ClearRefs(4));
                    }
                }
                v
            },
        )
}

/// mremap against cleared VMAs: a move into the hole between two VMAs (both neighbours:
/// copy_vma's case 1 frees next's list), a move that cannot merge (clone of the whole
/// source list, old addresses) and later comes back over its old addresses or grows in
/// place over them, a move that grows, an in-place growth swallowing the next VMA.
fn mremap_regions_s() -> impl Strategy<Value = Vec<Sym>> {
    (
        0i64..12,
        prop::array::uniform3(1u64..=4),
        0u8..5,
        any::<bool>(),
        prop::array::uniform3(0u8..4),
        any::<bool>(),
        0u8..5,
        sprot_s(),
    )
        .prop_map(
            |(u, [n, m, k], kind, part, touch, clear_first, after, prot)| {
                let src = 24i64;
                let mut v = Vec::new();
                let (from, len) = if part && m > 1 {
                    (src + 1, m - 1)
                } else {
                    (src, m)
                };
                match kind {
                    0 => {
                        // T1 [u, u+n), hole of `len`, T2; S moved into the hole.
                        let t2 = u + (n + len) as i64;
                        v.push(fixed_at(u, n, Prot::RW));
                        v.push(fixed_at(t2, k, Prot::RW));
                        v.push(fixed_at(src, m, prot));
                        if clear_first {
                            v.push(Sym::ClearRefs(4));
                        }
                        v.extend(maybe_touch(u, 1, touch[0]));
                        v.extend(maybe_touch(t2, 1, touch[1]));
                        if prot.write {
                            v.extend(maybe_touch(src, 1, touch[2]));
                        }
                        if !clear_first {
                            v.push(Sym::ClearRefs(4));
                        }
                        v.push(move_to(from, len, len, u + n as i64));
                        v.extend(after_op(u, n + len + k, after));
                    }
                    1 => {
                        // S (written or not) cleared, moved away next to a VMA of another
                        // prot (a new VMA with S's cloned list, old addresses), then back.
                        v.push(fixed_at(src, m, Prot::RW));
                        v.extend(maybe_touch(src, m, touch[0]));
                        v.push(fixed_at(u + len as i64, 1, Prot::R));
                        v.push(Sym::ClearRefs(4));
                        v.push(move_to(from, len, len, u));
                        v.extend(after_op(u, len, after));
                        v.push(move_to(u, len, len, from));
                        v.extend(after_op(from, len, touch[1]));
                    }
                    2 => {
                        // S cleared, moved just below itself (a faulted S does not merge with
                        // itself: its pgoff is kept), then grown in place over its old
                        // addresses, which its cloned list still covers.
                        let g = (k % 2) as i64;
                        let to = src - m as i64 - g;
                        v.push(fixed_at(src, m, Prot::RW));
                        v.extend(maybe_touch(src, m, touch[0]));
                        v.push(Sym::ClearRefs(4));
                        v.push(move_to(src, m, m, to));
                        v.extend(after_op(to, m, after));
                        v.push(Sym::Mremap {
                            addr: Addr::Arena(to, 0),
                            old: Len::Units(m),
                            new: Len::Units(m + k),
                            maymove: false,
                            fixed: None,
                        });
                        v.extend(after_op(to + m as i64, k, touch[1]));
                    }
                    3 => {
                        // A move that grows, to a fixed address next to T or apart.
                        v.push(fixed_at(u, n, Prot::RW));
                        v.push(fixed_at(src, m, prot));
                        v.extend(maybe_touch(src, 1, touch[0]));
                        v.push(Sym::ClearRefs(4));
                        let to = if clear_first {
                            u + n as i64
                        } else {
                            u + n as i64 + 1
                        };
                        v.push(move_to(from, len, len + k, to));
                        v.extend(after_op(to, len + k, after));
                    }
                    _ => {
                        // In-place growth over a hole up to N, cleared: swallows N (case 1).
                        let nx = u + (n + k) as i64;
                        v.push(fixed_at(u, n, Prot::RW));
                        v.push(fixed_at(nx, m, prot));
                        v.extend(maybe_touch(u, 1, touch[0]));
                        v.extend(maybe_touch(nx, 1, touch[1]));
                        v.push(Sym::ClearRefs(4));
                        if clear_first {
                            v.push(write_at(nx, 1));
                        }
                        v.push(Sym::Mremap {
                            addr: Addr::Arena(u, 0),
                            old: Len::Units(n),
                            new: Len::Units(n + k),
                            maymove: false,
                            fixed: None,
                        });
                        v.extend(after_op(u, n + k + m, after));
                    }
                }
                v
            },
        )
}

/// A cleared (and maybe split) VMA, then fork: the child's lists are clones; then
/// list-changing operations on the child (or the parent).
fn fork_s() -> impl Strategy<Value = Vec<OnSpace>> {
    (
        0i64..16,
        2u64..=6,
        0u8..4,
        0u8..3,
        1u8..3,
        prop::collection::vec(
            prop_oneof![
                2 => (0u64..6, 1u64..=2, prot_s()).prop_map(|(o, n, p)| (0u8, o, n, p)),
                1 => (0u64..6, 1u64..=2).prop_map(|(o, n)| (1u8, o, n, Prot::RW)),
                1 => (0u64..6, 1u64..=2).prop_map(|(o, n)| (2u8, o, n, Prot::RW)),
                1 => (0u64..6, 1u64..=2).prop_map(|(o, n)| (3u8, o, n, Prot::RW)),
            ],
            1..=4,
        ),
    )
        .prop_map(|(u, n, touch, split, child, ops)| {
            let mut v = vec![fixed_at(u, n, Prot::RW)];
            v.extend(maybe_touch(u, n, touch));
            v.push(Sym::ClearRefs(4));
            match split {
                1 => v.push(mprotect_at(u + 1, 1, Prot::R)),
                2 => v.push(fixed_at(u + n as i64, 2, Prot::RW)),
                _ => {}
            }
            let mut steps: Vec<OnSpace> = v.into_iter().map(|op| OnSpace { sp: 0, op }).collect();
            steps.push(OnSpace {
                sp: 0,
                op: Sym::Fork,
            });
            for (what, o, k, p) in ops {
                let at = u + (o % n) as i64;
                let op = match what {
                    0 => mprotect_at(at, k, p),
                    1 => write_at(at, k),
                    2 => dontneed_at(at, k),
                    _ => move_to(at, k, k, 28),
                };
                steps.push(OnSpace { sp: child, op });
            }
            steps
        })
}

/// One item of a `regions` case's body: a random operation or a scenario.
// Boxed: the unions' value trees are large, and a chain of them inline overflowed
// the test thread's 2 MiB stack in debug builds.
fn regions_item_s() -> BoxedStrategy<Vec<OnSpace>> {
    let sp = || prop_oneof![6 => Just(0u8), 1 => 1u8..3];
    prop_oneof![
        8 => (sp(), op_s()).prop_map(|(sp, op)| vec![OnSpace { sp, op }]),
        2 => (sp(), seed_s()).prop_map(|(sp, ops)| on_all(sp, ops)),
        2 => (sp(), between_s()).prop_map(|(sp, ops)| on_all(sp, ops)),
        3 => (sp(), boundary_s()).prop_map(|(sp, ops)| on_all(sp, ops)),
        2 => (sp(), mprotect_merge_s()).prop_map(|(sp, ops)| on_all(sp, ops)),
        1 => (sp(), mremap_merge_s()).prop_map(|(sp, ops)| on_all(sp, ops)),
        3 => (sp(), mremap_regions_s()).prop_map(|(sp, ops)| on_all(sp, ops)),
        1 => (sp(), chain_s()).prop_map(|(sp, ops)| on_all(sp, ops)),
        1 => fork_s(),
    ]
    .boxed()
}

/// `dense_case_s`'s shape with `regions_item_s` items.
fn regions_case_s() -> impl Strategy<Value = (u64, Vec<OnSpace>)> {
    (
        prop_oneof![6 => Just(1u64), 1 => Just(131u64)],
        prop::collection::vec(fill_s(), 0..=4),
        prop::collection::vec(regions_item_s(), 1..=8),
    )
        .prop_map(|(unit, mut fill, body)| {
            fill.extend(body.into_iter().flatten());
            (unit, fill)
        })
}

// ------------------------------------------------------------------------------ running

/// The model and the reference, as backends, and the names of the spaces the steps
/// address (index `sp % names.len()`): `main`, then up to two fork children (a third fork
/// replaces the last one: its child gets a fresh name, the old child is left alone).
struct Pair {
    model: ModelBackend,
    reference: RefBackend,
    names: Vec<String>,
    forks: usize,
}

impl Pair {
    fn new(mode: Mode) -> Pair {
        Pair {
            model: ModelBackend::new(mode),
            reference: RefBackend::new(mode),
            names: vec!["main".to_string()],
            forks: 0,
        }
    }

    fn model_space(&self, k: usize) -> std::sync::Arc<AddressSpace> {
        self.model
            .tracker()
            .get(&self.names[k])
            .expect("the model has the space")
    }

    fn ref_space(&self, k: usize) -> &RefSpace {
        self.reference
            .get(&self.names[k])
            .expect("the reference has the space")
    }

    /// Performs a step on both (in its space); returns the command and both results (the
    /// address an mmap or mremap returned, else 0). The reference follows the model's
    /// choice of an address where it has to choose one.
    fn step(
        &mut self,
        unit: u64,
        step: &OnSpace,
    ) -> (Command, Result<u64, Errno>, Result<u64, Errno>) {
        let k = step.sp as usize % self.names.len();
        let space = Command::Space(self.names[k].clone());
        self.forks += 1;
        let cmd = step.op.command(unit, &format!("fork{}", self.forks));
        let run = |b: &mut dyn Backend, c: &Command| -> Result<u64, Errno> {
            match b.perform(c) {
                Ok(r) => r.map(|o: Outcome| o.addr()),
                Err(msg) => panic!(
                    "{} cannot perform `{}`: {msg}",
                    b.name(),
                    render::command(c)
                ),
            }
        };
        run(&mut self.model, &space).unwrap();
        run(&mut self.reference, &space).unwrap();
        let got = run(&mut self.model, &cmd);
        self.reference.follow(got.ok());
        let want = run(&mut self.reference, &cmd);
        if let Command::Fork(child) = &cmd {
            if self.names.len() < 3 {
                self.names.push(child.clone());
            } else {
                self.names[2] = child.clone();
            }
        }
        (cmd, got, want)
    }
}

fn fmt_res(r: &Result<u64, Errno>) -> String {
    match r {
        Ok(v) => format!("Ok({v:#x})"),
        Err(e) => format!("Err({})", e.name()),
    }
}

/// Compares every observable of one space; `Err` describes the first difference.
fn compare(
    unit: u64,
    m: &AddressSpace,
    r: &RefSpace,
    probe: &[u64],
    forked: bool,
) -> Result<(), String> {
    let mv = m.vmas();
    let rv = r.vma_infos();
    if mv != rv {
        return Err(format!(
            "VMA lists differ\n  model:     {}\n  reference: {}",
            fmt_vmas(&mv),
            fmt_vmas(&rv)
        ));
    }
    // Regions mode: the lists' lengths (stale and cut regions included), and smaps' `sd`
    // (printed last, when `is_vma_sd`; `vm_softdirty` above is the same predicate).
    if m.region_count() != r.region_count() {
        return Err(format!(
            "region counts differ: model {} reference {}",
            m.region_count(),
            r.region_count()
        ));
    }
    if r.mode == Mode::Regions {
        for v in &rv {
            let line = m.smaps_vmflags(v.start).unwrap_or_default();
            if line.ends_with("sd") != v.vm_softdirty {
                return Err(format!(
                    "smaps of the VMA at {:#x}: model {line:?}, reference sd = {}",
                    v.start, v.vm_softdirty
                ));
            }
        }
    }
    if m.faults() != r.faults {
        return Err(format!(
            "write-fault counts differ: model {} reference {}",
            m.faults(),
            r.faults
        ));
    }
    let ws = ARENA - 8 * unit * P;
    let wl = (ARENA_UNITS as u64 + 16) * unit * P;
    let mut windows = vec![(ws, wl)];
    for v in &rv {
        if v.start < ws || v.end > ws + wl {
            windows.push((v.start, v.end - v.start));
        }
    }
    for (s, l) in windows {
        let (a, b) = (m.softdirty_runs(s, l), r.softdirty_runs(s, l));
        if a != b {
            return Err(format!(
                "softdirty_runs({s:#x}, {l:#x}) differ (page indices)\n  model:     {a:?}\n  reference: {b:?}"
            ));
        }
        let (a, b) = (m.present_runs(s, l), r.present_runs(s, l));
        if a != b {
            return Err(format!(
                "present_runs({s:#x}, {l:#x}) differ (page indices)\n  model:     {a:?}\n  reference: {b:?}"
            ));
        }
    }
    // Bit 56 (exclusive) is the model's own notion once a fork shares pages: skip it then.
    let mask: u64 = (1 << 55) | (1 << 61) | (1 << 63) | if forked { 0 } else { 1 << 56 };
    let mut pages: Vec<u64> = probe.to_vec();
    for v in &rv {
        pages.push(v.start);
        pages.push(v.end - P);
        pages.push(v.end);
    }
    for a in pages {
        if a >= TASK_SIZE {
            continue;
        }
        let (x, y) = (m.pagemap_entry(a) & mask, r.pagemap_entry(a) & mask);
        if x != y {
            return Err(format!(
                "pagemap_entry({a:#x}) differs: model {x:#018x} reference {y:#018x}"
            ));
        }
    }
    Ok(())
}

fn fmt_vmas(v: &[softdirty::mm::VmaInfo]) -> String {
    v.iter()
        .map(|i| {
            format!(
                "[{:#x}-{:#x} {}{}{}{}]",
                i.start,
                i.end,
                i.prot,
                if i.shared { " sh" } else { "" },
                if i.vm_softdirty { " sd" } else { "" },
                if i.faulted { " anon" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn run_case(mode: Mode, unit: u64, steps: &[OnSpace]) -> Result<(), TestCaseError> {
    run_spaces(mode, unit, steps).map(|_| ())
}

/// [`run_case`], returning the reference spaces at the end (equal to the model's on every
/// observable, or this fails).
fn run_spaces(mode: Mode, unit: u64, steps: &[OnSpace]) -> Result<Vec<RefSpace>, TestCaseError> {
    let mut pair = Pair::new(mode);
    let mut log = vec![format!("mode {mode}    # unit = {unit} page(s)")];
    let mut forked = false;
    for (n, step) in steps.iter().enumerate() {
        let k = step.sp as usize % pair.names.len();
        let (cmd, got, want) = pair.step(unit, step);
        forked |= step.op == Sym::Fork;
        log.push(format!(
            "[space {k}] {:<60} # model {} reference {}",
            render::command(&cmd),
            fmt_res(&got),
            fmt_res(&want)
        ));
        let fail = |what: String| {
            TestCaseError::fail(format!(
                "step {n}: {what}\ntrace so far:\n  {}",
                log.join("\n  ")
            ))
        };
        if got != want {
            return Err(fail(format!(
                "results differ: model {} reference {}",
                fmt_res(&got),
                fmt_res(&want)
            )));
        }
        let mut probe = vec![ARENA, ARENA + 7 * unit * P, ARENA + 21 * unit * P];
        match &cmd {
            Command::Op(
                Op::Mmap { addr, .. }
                | Op::Munmap { addr, .. }
                | Op::Mprotect { addr, .. }
                | Op::DontNeed { addr, .. }
                | Op::Mremap { addr, .. },
            )
            | Command::Write { addr, .. }
            | Command::Read { addr, .. } => {
                let a = addr & !(P - 1);
                probe.push(a);
                probe.push(a.wrapping_add(P));
                probe.push(a.wrapping_sub(P));
            }
            _ => {}
        }
        if let Ok(v) = got {
            if v != 0 {
                probe.push(v & !(P - 1));
            }
        }
        for j in 0..pair.names.len() {
            compare(
                unit,
                &pair.model_space(j),
                pair.ref_space(j),
                &probe,
                forked,
            )
            .map_err(|e| fail(format!("space {j}: {e}")))?;
        }
    }
    Ok((0..pair.names.len())
        .map(|j| pair.ref_space(j).clone())
        .collect())
}

fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 1000;
    }
    // Do not write regression files into the source tree; the failure message has the
    // minimal sequence.
    c.failure_persistence = None;
    c
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn precise_model_matches_reference((unit, steps) in case_s()) {
        run_case(Mode::Precise, unit, &steps)?;
    }

    #[test]
    fn legacy_model_matches_reference((unit, steps) in case_s()) {
        run_case(Mode::Legacy, unit, &steps)?;
    }

    #[test]
    fn sticky_model_matches_reference((unit, steps) in dense_case_s()) {
        run_case(Mode::Sticky, unit, &steps)?;
    }

    #[test]
    fn nomerge_model_matches_reference((unit, steps) in dense_case_s()) {
        run_case(Mode::Nomerge, unit, &steps)?;
    }

    #[test]
    fn regions_model_matches_reference((unit, steps) in regions_case_s()) {
        run_case(Mode::Regions, unit, &steps)?;
    }
}

// ------------------------------------------------------------------- directed sequences

fn mmap(u: i64, n: u64, prot: Prot) -> Sym {
    Sym::Mmap {
        addr: Addr::Arena(u, 0),
        len: Len::Units(n),
        prot,
        shared: false,
        place: Placement::Fixed,
    }
}

fn on(sp: u8, op: Sym) -> OnSpace {
    OnSpace { sp, op }
}

/// Runs a hand-written sequence in both modes.
fn directed(steps: &[OnSpace]) {
    for mode in [Mode::Precise, Mode::Legacy] {
        if let Err(e) = run_case(mode, 1, steps) {
            panic!("{e}");
        }
    }
}

/// A fork child's faulted VMA, moved by mremap next to an unfaulted neighbour whose pgoff
/// lines up, merges into it (6.18 pre-FORKFIX, kernel-rules §4.5); the neighbour gets the
/// child's anon_vma by `dup_anon_vma`, i.e. a clone of its non-singular chain, so it must
/// then refuse a fresh adjacent mapping (§6.1 Case 2, §6.5).
// Regression (was KNOWN-BUG(1)): a copy_vma merge into an unfaulted VMA must carry the
// fork-child state of the anon_vma it brings (dup_anon_vma clones the chain).
#[test]
fn fork_child_mremap_merge_keeps_uncowed_parents() {
    directed(&[
        on(0, mmap(0, 4, Prot::RW)),
        on(
            0,
            Sym::Write {
                addr: Addr::Arena(0, 0),
                len: Len::Units(4),
            },
        ),
        on(0, Sym::Fork),
        on(
            1,
            Sym::Mremap {
                addr: Addr::Arena(2, 0),
                old: Len::Units(2),
                new: Len::Units(2),
                maymove: true,
                fixed: Some(Addr::Arena(10, 0)),
            },
        ),
        on(
            1,
            Sym::Munmap {
                addr: Addr::Arena(0, 0),
                len: Len::Units(2),
            },
        ),
        on(1, mmap(0, 2, Prot::RW)),
        on(
            1,
            Sym::Mremap {
                addr: Addr::Arena(10, 0),
                old: Len::Units(2),
                new: Len::Units(2),
                maymove: true,
                fixed: Some(Addr::Arena(2, 0)),
            },
        ),
        on(1, mmap(4, 2, Prot::RW)),
    ]);
}

/// `regions`: one hand-written sequence per list rule that a fix of the RFC would change,
/// model and reference compared at every step, then what the patch predicts
/// (docs/design-comparison.md, "The RFC patch, case by case"): soft-dirty pages (indices
/// from arena unit 0), the number of regions, smaps `sd`.
#[test]
fn regions_rules_directed() {
    let run = |steps: &[Sym]| -> RefSpace {
        let steps: Vec<OnSpace> = steps.iter().cloned().map(|op| on(0, op)).collect();
        match run_spaces(Mode::Regions, 1, &steps) {
            Ok(mut refs) => refs.remove(0),
            Err(e) => panic!("{e}"),
        }
    };
    let sd = |r: &RefSpace| r.softdirty_runs(ARENA, 16 * P);
    let vma_sd =
        |r: &RefSpace| -> Vec<bool> { r.vma_infos().iter().map(|v| v.vm_softdirty).collect() };

    // Point 7: an arena's tail poisoned next to its (faulted, VM_ACCOUNT) PROT_NONE guard.
    // mprotect NONE merges the tail into the guard (case 4: A keeps the stale region, the
    // guard does not cover the page: a false positive); DONTNEED zaps it; mprotect RW
    // merges it back (case 5): A's stale region covers it again and the zeroed page
    // reports clean, with both lists exact again.
    let poison = [
        mmap(0, 4, Prot::RW),
        write_at(0, 4),
        mmap(4, 1, Prot::RW),
        write_at(4, 1),
        mprotect_at(4, 1, Prot::NONE),
        Sym::ClearRefs(4),
        mprotect_at(3, 1, Prot::NONE),
    ];
    let r = run(&poison);
    assert_eq!(sd(&r), vec![3..4]);
    assert_eq!((r.vmas.len(), r.region_count()), (2, 2));
    let mut back = poison.to_vec();
    back.extend([dontneed_at(3, 1), mprotect_at(3, 1, Prot::RW)]);
    let r = run(&back);
    assert_eq!(sd(&r), vec![]);
    assert_eq!(r.present_runs(ARENA, 16 * P), vec![0..3, 4..5]);
    assert_eq!(vma_sd(&r), vec![false, false]);

    // mmap into the hole between two cleared VMAs: vma_expand + nsdr_move keeps both
    // lists; the same shape made by copy_vma (mremap into the hole) is vma_merge case 1,
    // which frees next's list: next's clean pages report soft-dirty.
    let two = [
        mmap(0, 2, Prot::RW),
        mmap(4, 2, Prot::RW),
        mmap(10, 2, Prot::RW),
    ];
    let mut by_mmap = two.to_vec();
    by_mmap.extend([Sym::ClearRefs(4), mmap(2, 2, Prot::RW)]);
    let r = run(&by_mmap);
    assert_eq!((sd(&r), r.region_count()), (vec![2..4], 3));
    let mut by_move = two.to_vec();
    by_move.extend([Sym::ClearRefs(4), move_to(10, 2, 2, 2)]);
    let r = run(&by_move);
    assert_eq!(r.vmas.len(), 1);
    assert_eq!((sd(&r), r.region_count()), (vec![2..6], 1));

    // In-place growth swallowing the next VMA: case 1 again.
    let grow = [
        mmap(0, 2, Prot::RW),
        mmap(3, 2, Prot::RW),
        Sym::ClearRefs(4),
        Sym::Mremap {
            addr: Addr::Arena(0, 0),
            old: Len::Units(2),
            new: Len::Units(3),
            maymove: false,
            fixed: None,
        },
    ];
    let r = run(&grow);
    assert_eq!(
        (sd(&r), r.region_count(), vma_sd(&r)),
        (vec![2..5], 1, vec![true])
    );

    // copy_vma without a merge clones the list verbatim, old addresses included: moved
    // away the pages report soft-dirty (present ones by their PTE bit, the others because
    // no region covers them); zapped there and moved back, the clone of the clone covers
    // them again and the zero pages report clean.
    let away = [
        mmap(0, 4, Prot::RW),
        write_at(0, 2),
        Sym::ClearRefs(4),
        move_to(0, 4, 4, 10),
    ];
    let r = run(&away);
    assert_eq!((sd(&r), vma_sd(&r)), (vec![10..14], vec![true]));
    let mut home = away.to_vec();
    home.extend([dontneed_at(10, 4), move_to(10, 4, 4, 0)]);
    let r = run(&home);
    assert_eq!(
        (sd(&r), vma_sd(&r), r.region_count()),
        (vec![], vec![false], 1)
    );

    // A split (mprotect in the middle: three lists) and the merge back (case 6: the
    // middle's and next's lists are freed), then fork, which clones the one list left.
    let steps = [
        on(0, mmap(0, 4, Prot::RW)),
        on(0, Sym::ClearRefs(4)),
        on(0, mprotect_at(1, 1, Prot::R)),
        on(0, mprotect_at(1, 1, Prot::RW)),
        on(0, Sym::Fork),
    ];
    let refs = run_spaces(Mode::Regions, 1, &steps).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((sd(&refs[0]), refs[0].region_count()), (vec![1..4], 1));
    assert_eq!((sd(&refs[1]), refs[1].region_count()), (vec![1..4], 1));
}

/// The reference lives in the tools crate (so that `softdirty fuzz --against reference`
/// can run it) and must stay independent of the model it checks: it may take plain value
/// types from the core and the seam it implements (`softdirty::backend`'s trait and its
/// result types), never the model's machinery (mm's `AddressSpace`, layout, vma,
/// bitmap, index, tracker, ...). That the model never calls it Cargo enforces: the core
/// (`softdirty`) cannot depend on this crate.
#[test]
fn reference_stays_independent_of_the_model() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/src/reference.rs");
    let src = std::fs::read_to_string(file).unwrap();
    let allowed = [
        "softdirty::backend::{Backend, FileMapping, OpResult, Unobservable}",
        "softdirty::errno::Errno",
        "softdirty::mm::{Advice, MapOpts, Placement, VmaInfo}",
        "softdirty::mode::Mode",
        "softdirty::prot::Prot",
        "softdirty::scan::{Region, ScanArgs, ScanResult}",
    ];
    let mut uses = 0;
    for (n, line) in src.lines().enumerate() {
        let line = line.split("//").next().unwrap_or(""); // code, not comments
        let mut rest = line;
        while let Some(i) = rest.find("softdirty::") {
            let tail = &rest[i..];
            assert!(
                allowed.iter().any(|a| tail.starts_with(a)),
                "crates/softdirty-cli/src/reference.rs:{}: takes `{}` from the core; the \
                 reference may only use the value types {allowed:?}",
                n + 1,
                tail.trim_end_matches(';')
            );
            uses += 1;
            rest = &tail[11..];
        }
        assert!(
            !line.contains("crate::")
                && !line.contains("super::")
                && !line.contains("softdirty_cli")
                && !line.contains("softdirty_trace"),
            "crates/softdirty-cli/src/reference.rs:{}: reaches into a crate another way: {line}",
            n + 1
        );
    }
    assert!(
        uses >= allowed.len(),
        "the check found only {uses} uses: is it reading the file?"
    );
}

/// `softdirty fuzz --against reference`: the model and the reference agree on random
/// traces with trace v2's operations (files and memfds, brk, mmap flags with growsdown
/// stacks, every madvise advice, fork and spaces) in every mode, `PROPTEST_CASES` cases (CI: 10,000)
/// or 1,000; a mode no kernel implements is refused `--against kernel` with exit status 2.
#[test]
fn fuzz_against_the_reference() {
    let cases = std::env::var("PROPTEST_CASES").unwrap_or_else(|_| "1000".to_string());
    for mode in ["precise", "legacy", "sticky", "nomerge", "regions"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_softdirty"))
            .args(["fuzz", "--against", "reference", "--mode", mode])
            .args(["--seed", "1000", "--cases", &cases, "--ops", "100"])
            .arg("--out")
            .arg(std::env::temp_dir().join(format!("softdirty-ref-{}.trace", std::process::id())))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{mode}: {err}");
        assert!(err.contains("and the reference model agree"), "{err}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_softdirty"))
        .args(["fuzz", "--against", "kernel", "--mode", "sticky"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
