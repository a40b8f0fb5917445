//! Differential test: random operation sequences run through the real model
//! (`softdirty::mm::AddressSpace`) and the deliberately simple reference model in
//! `src/reference.rs`, in `precise` and `legacy` mode; every observable is compared
//! after every operation: the result (value or errno), the VMA list (boundaries, count,
//! prot, shared, VM_SOFTDIRTY, faulted), soft-dirty and present runs over the arena and
//! over every VMA, pagemap bits 55/56/61/63 of a few pages, and the write-fault count.
//!
//! Cases: `PROPTEST_CASES` if set (CI runs `PROPTEST_CASES=10000`), else 1000 per mode.
//!
//! On failure proptest shrinks to a minimal sequence and prints it, and the failure
//! message holds the same sequence as resolved trace-format lines with both results.

use proptest::prelude::*;
use softdirty::errno::Errno;
use softdirty::mm::{AddressSpace, Placement};
use softdirty::mode::Mode;
use softdirty::prot::Prot;
use softdirty::reference::{RefSpace, P, TASK_SIZE};
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

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
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

/// One operation on address space `sp` (modulo the number of spaces; forks add spaces).
#[derive(Clone, PartialEq, Eq)]
struct Step {
    sp: u8,
    op: Op,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] ", self.sp)?;
        match &self.op {
            Op::Mmap {
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
            Op::Munmap { addr, len } => write!(f, "munmap {addr:?} {len:?}"),
            Op::Mprotect { addr, len, prot } => write!(f, "mprotect {addr:?} {len:?} {prot}"),
            Op::Mremap {
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
            Op::Dontneed { addr, len } => write!(f, "madvise {addr:?} {len:?} dontneed"),
            Op::Write { addr, len } => write!(f, "write {addr:?} {len:?}"),
            Op::Read { addr, len } => write!(f, "read {addr:?} {len:?}"),
            Op::ClearRefs(v) => write!(f, "clear_refs {v}"),
            Op::Fork => write!(f, "fork"),
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

fn op_s() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (addr_s(), len_s(), prot_s(), prop::bool::weighted(0.25), prop_oneof![
                6 => Just(Placement::Fixed),
                2 => Just(Placement::NoReplace),
                1 => Just(Placement::Hint),
            ])
            .prop_map(|(addr, len, prot, shared, place)| Op::Mmap { addr, len, prot, shared, place }),
        3 => (addr_s(), len_s()).prop_map(|(addr, len)| Op::Munmap { addr, len }),
        7 => (addr_s(), len_s(), prot_s()).prop_map(|(addr, len, prot)| Op::Mprotect { addr, len, prot }),
        5 => (addr_s(), small_len_s(), new_len_s(), prop::bool::weighted(0.7),
              prop::option::weighted(0.5, addr_s()))
            .prop_map(|(addr, old, new, maymove, fixed)| Op::Mremap { addr, old, new, maymove, fixed }),
        2 => (addr_s(), len_s()).prop_map(|(addr, len)| Op::Dontneed { addr, len }),
        6 => (addr_s(), rw_len_s()).prop_map(|(addr, len)| Op::Write { addr, len }),
        3 => (addr_s(), rw_len_s()).prop_map(|(addr, len)| Op::Read { addr, len }),
        2 => prop::sample::select(vec![4, 4, 4, 1, 5, 0, 6, -1]).prop_map(Op::ClearRefs),
        1 => Just(Op::Fork),
    ]
}

/// A fixed mmap that fills part of the arena (cases start with a few, so that most
/// operations meet mappings).
fn fill_s() -> impl Strategy<Value = Step> {
    (
        0..ARENA_UNITS,
        2u64..=16,
        prot_s(),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(u, n, prot, shared)| Step {
            sp: 0,
            op: Op::Mmap {
                addr: Addr::Arena(u, 0),
                len: Len::Units(n),
                prot,
                shared,
                place: Placement::Fixed,
            },
        })
}

fn case_s() -> impl Strategy<Value = (u64, Vec<Step>)> {
    (
        prop_oneof![6 => Just(1u64), 1 => Just(131u64)],
        prop::collection::vec(fill_s(), 0..=4),
        prop::collection::vec(
            (prop_oneof![6 => Just(0u8), 1 => 1u8..3], op_s()).prop_map(|(sp, op)| Step { sp, op }),
            1..=36,
        ),
    )
        .prop_map(|(unit, mut fill, body)| {
            fill.extend(body);
            (unit, fill)
        })
}

// ------------------------------------------------------------------------------ running

/// Applies a step to the real model and to the reference; returns both results.
fn apply(
    unit: u64,
    step: &Step,
    models: &mut Vec<AddressSpace>,
    refs: &mut Vec<RefSpace>,
) -> (Result<u64, Errno>, Result<u64, Errno>) {
    let k = step.sp as usize % models.len();
    let (m, r) = (&models[k], &mut refs[k]);
    match step.op {
        Op::Mmap {
            addr,
            len,
            prot,
            shared,
            place,
        } => {
            let (a, l) = (addr.get(unit), len.get(unit));
            let got = m.mmap(a, l, prot, shared, place);
            let want = r.mmap(a, l, prot, shared, place, || got.ok());
            (got, want)
        }
        Op::Munmap { addr, len } => {
            let (a, l) = (addr.get(unit), len.get(unit));
            (m.munmap(a, l).map(|_| 0), r.munmap(a, l).map(|_| 0))
        }
        Op::Mprotect { addr, len, prot } => {
            let (a, l) = (addr.get(unit), len.get(unit));
            (
                m.mprotect(a, l, prot).map(|_| 0),
                r.mprotect(a, l, prot).map(|_| 0),
            )
        }
        Op::Mremap {
            addr,
            old,
            new,
            maymove,
            fixed,
        } => {
            let (a, o, n) = (addr.get(unit), old.get(unit), new.get(unit));
            let fx = fixed.map(|f| f.get(unit));
            let got = m.mremap(a, o, n, maymove, fx);
            let want = r.mremap(a, o, n, maymove, fx, || got.ok());
            (got, want)
        }
        Op::Dontneed { addr, len } => {
            let (a, l) = (addr.get(unit), len.get(unit));
            (
                m.madvise_dontneed(a, l).map(|_| 0),
                r.madvise_dontneed(a, l).map(|_| 0),
            )
        }
        Op::Write { addr, len } => {
            let (a, l) = (addr.get(unit), len.get(unit));
            (m.write(a, l).map(|_| 0), r.write(a, l).map(|_| 0))
        }
        Op::Read { addr, len } => {
            let (a, l) = (addr.get(unit), len.get(unit));
            (m.read(a, l).map(|_| 0), r.read(a, l).map(|_| 0))
        }
        Op::ClearRefs(v) => (m.clear_refs(v).map(|_| 0), r.clear_refs(v).map(|_| 0)),
        Op::Fork => {
            let child = m.fork();
            let rchild = r.fork();
            if models.len() < 3 {
                models.push(child);
                refs.push(rchild);
            } else {
                models[2] = child;
                refs[2] = rchild;
            }
            (Ok(0), Ok(0))
        }
    }
}

/// The trace-format line of a step, resolved for `unit`.
fn trace_line(unit: u64, step: &Step) -> String {
    let a = |x: Addr| format!("{:#x}", x.get(unit));
    let l = |x: Len| format!("{:#x}", x.get(unit));
    match &step.op {
        Op::Mmap {
            addr,
            len,
            prot,
            shared,
            place,
        } => format!(
            "mmap {} {} {prot} {}{}",
            a(*addr),
            l(*len),
            if *shared { "shared" } else { "private" },
            match place {
                Placement::Hint => "",
                Placement::Fixed => " fixed",
                Placement::NoReplace => " noreplace",
            }
        ),
        Op::Munmap { addr, len } => format!("munmap {} {}", a(*addr), l(*len)),
        Op::Mprotect { addr, len, prot } => format!("mprotect {} {} {prot}", a(*addr), l(*len)),
        Op::Mremap {
            addr,
            old,
            new,
            maymove,
            fixed,
        } => format!(
            "mremap {} {} {}{}{}",
            a(*addr),
            l(*old),
            l(*new),
            if *maymove { " maymove" } else { "" },
            fixed
                .map(|f| format!(" fixed {}", a(f)))
                .unwrap_or_default()
        ),
        Op::Dontneed { addr, len } => format!("madvise {} {} dontneed", a(*addr), l(*len)),
        Op::Write { addr, len } => format!("write {} {}", a(*addr), l(*len)),
        Op::Read { addr, len } => format!("read {} {}", a(*addr), l(*len)),
        Op::ClearRefs(v) => format!("clear_refs {v}"),
        Op::Fork => "fork".to_string(),
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

fn run_case(mode: Mode, unit: u64, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut models = vec![AddressSpace::new(mode)];
    let mut refs = vec![RefSpace::new(mode)];
    let mut log = vec![format!("mode {mode}    # unit = {unit} page(s)")];
    let mut forked = false;
    for (n, step) in steps.iter().enumerate() {
        let k = step.sp as usize % models.len();
        let (got, want) = apply(unit, step, &mut models, &mut refs);
        forked |= step.op == Op::Fork;
        log.push(format!(
            "[space {k}] {:<60} # model {} reference {}",
            trace_line(unit, step),
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
        match &step.op {
            Op::Mmap { addr, .. }
            | Op::Munmap { addr, .. }
            | Op::Mprotect { addr, .. }
            | Op::Dontneed { addr, .. }
            | Op::Write { addr, .. }
            | Op::Read { addr, .. }
            | Op::Mremap { addr, .. } => {
                let a = addr.get(unit) & !(P - 1);
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
        for (j, (m, r)) in models.iter().zip(refs.iter()).enumerate() {
            compare(unit, m, r, &probe, forked).map_err(|e| fail(format!("space {j}: {e}")))?;
        }
    }
    Ok(())
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
}

// ------------------------------------------------------------------- directed sequences

fn mmap(u: i64, n: u64, prot: Prot) -> Op {
    Op::Mmap {
        addr: Addr::Arena(u, 0),
        len: Len::Units(n),
        prot,
        shared: false,
        place: Placement::Fixed,
    }
}

fn on(sp: u8, op: Op) -> Step {
    Step { sp, op }
}

/// Runs a hand-written sequence in both modes.
fn directed(steps: &[Step]) {
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
            Op::Write {
                addr: Addr::Arena(0, 0),
                len: Len::Units(4),
            },
        ),
        on(0, Op::Fork),
        on(
            1,
            Op::Mremap {
                addr: Addr::Arena(2, 0),
                old: Len::Units(2),
                new: Len::Units(2),
                maymove: true,
                fixed: Some(Addr::Arena(10, 0)),
            },
        ),
        on(
            1,
            Op::Munmap {
                addr: Addr::Arena(0, 0),
                len: Len::Units(2),
            },
        ),
        on(1, mmap(0, 2, Prot::RW)),
        on(
            1,
            Op::Mremap {
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

/// The reference lives in the library (so that `softdirty fuzz --against reference` can
/// run it) but must stay independent of the model it checks: it may take plain value
/// types from the crate, never the model's machinery (mm's `AddressSpace`, layout, vma,
/// bitmap, index, ...), and the model must never call it.
#[test]
fn reference_stays_independent_of_the_model() {
    let root = env!("CARGO_MANIFEST_DIR");
    let src = std::fs::read_to_string(format!("{root}/src/reference.rs")).unwrap();
    let allowed = [
        "crate::errno::Errno",
        "crate::mm::{Placement, VmaInfo}",
        "crate::mode::Mode",
        "crate::prot::Prot",
    ];
    for (n, line) in src.lines().enumerate() {
        let line = line.split("//").next().unwrap_or(""); // code, not comments
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let tail = &rest[i..];
            assert!(
                allowed.iter().any(|a| tail.starts_with(a)),
                "src/reference.rs:{}: takes `{}` from the crate; the reference may only use \
                 the value types {allowed:?}",
                n + 1,
                tail.trim_end_matches(';')
            );
            rest = &tail[7..];
        }
        assert!(
            !line.contains("softdirty::") && !line.contains("super::"),
            "src/reference.rs:{}: reaches into the crate another way: {line}",
            n + 1
        );
    }
    // ... and nothing but the fuzz harness (where it is the other side) uses it.
    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    rust_files(std::path::Path::new(&format!("{root}/src")), &mut files);
    assert!(files.len() > 10, "found only {files:?} under src/");
    for path in files {
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        if ["src/reference.rs", "src/fuzz.rs", "src/lib.rs"].contains(&rel.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("reference::"),
            "{rel} uses the reference model: the model must not depend on what checks it"
        );
    }
}

/// `softdirty fuzz --against reference`: the model and the reference agree on random
/// traces in both modes; modes the reference lacks are refused with exit status 2.
#[test]
fn fuzz_against_the_reference() {
    for mode in ["precise", "legacy"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_softdirty"))
            .args(["fuzz", "--against", "reference", "--mode", mode])
            .args(["--seed", "1000", "--cases", "1000", "--ops", "100"])
            .arg("--out")
            .arg(std::env::temp_dir().join(format!("softdirty-ref-{}.trace", std::process::id())))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{mode}: {err}");
        assert!(err.contains("and the reference model agree"), "{err}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_softdirty"))
        .args(["fuzz", "--against", "reference", "--mode", "sticky"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
