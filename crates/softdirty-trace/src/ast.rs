//! The parsed form of a trace (see `../shared/spec/trace-format.md`, the public contract).
//!
//! The parser ([`super::parse`]) turns text into a [`Trace`]; the replayer
//! ([`super::replay`]) runs it against a backend. Nothing here knows about address
//! spaces: names are resolved at replay time.

use softdirty::errno::Errno;
use softdirty::mm::Placement;
use softdirty::mode::Mode;
use softdirty::prot::Prot;

/// A whole trace: an optional `mode` header and the commands in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// The `mode` header, if the first command was one.
    pub mode: Option<Mode>,
    /// Every command after the header, with its position.
    pub commands: Vec<Spanned<Statement>>,
}

/// A node with the position of its first character (1-based line and column).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spanned<T> {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column (in characters) of the command's first token.
    pub col: usize,
    /// The node itself.
    pub node: T,
}

/// An address expression: a number or a `$name`, plus a signed byte offset
/// (`$heap+3p`, `0x10_0000_0000-1p`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addr {
    /// What the offset is added to.
    pub base: AddrBase,
    /// Bytes added to the base (negative for `-SIZE`).
    pub offset: i128,
}

impl Addr {
    /// The address this expression names, given the current `$name` bindings: an error
    /// message for an unbound name or a result outside `0..=u64::MAX`. The one place
    /// every consumer of traces (replay, `softdirty run`'s and `compare`'s `trace:FILE`)
    /// resolves addresses.
    pub fn resolve(&self, names: &std::collections::HashMap<String, u64>) -> Result<u64, String> {
        let base = match &self.base {
            AddrBase::Number(n) => *n,
            AddrBase::Name(n) => *names
                .get(n)
                .ok_or_else(|| format!("${n} is not bound (its mmap or mremap failed)"))?,
        };
        let v = i128::from(base) + self.offset;
        u64::try_from(v).map_err(|_| format!("address {v:#x} is out of range"))
    }
}

/// The base of an [`Addr`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddrBase {
    /// A literal NUMBER.
    Number(u64),
    /// A `$name` bound earlier (stored without the `$`).
    Name(String),
}

/// The address operand of `mmap`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MmapTarget {
    /// An address (hint, or exact with `fixed`/`noreplace`).
    At(Addr),
    /// `mmap $name LEN PROT ...` without `fixed`/`noreplace`: the model chooses and the
    /// address is bound to the name (stored without the `$`).
    Bind(String),
}

/// The advice of `madvise` (v1: `dontneed`; v2: the rest).
pub use softdirty::mm::Advice;
/// The mmap words of v2 (`noreserve`, `populate`).
pub use softdirty::mm::MapOpts;

/// A PAGEMAP_SCAN category mask as written (`softdirty,present` or a raw NUMBER, ORed).
pub type Cats = u64;

/// The arguments of `scan`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanCmd {
    /// START
    pub start: Addr,
    /// LEN in bytes
    pub len: u64,
    /// `mask=` (category_mask), 0 if absent
    pub mask: Cats,
    /// `anyof=` (category_anyof_mask), 0 if absent
    pub anyof: Cats,
    /// `inverted=` (category_inverted), 0 if absent
    pub inverted: Cats,
    /// `return=` (return_mask), 0 if absent
    pub ret: Cats,
    /// `clear`: get-and-clear the reported pages
    pub clear: bool,
    /// `max_pages=`, 0 (unlimited) if absent
    pub max_pages: u64,
    /// `vec_len=`, 1024 if absent
    pub vec_len: u64,
}

/// A set of page indices in an `expect` (relative to the expectation's ADDR).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PageSet {
    /// `none`
    None,
    /// `all`
    All,
    /// Half-open ranges; a single index `i` is `(i, i + 1)`. In the order written.
    List(Vec<(u64, u64)>),
}

/// One `expect` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// `expect err ERRNO`
    Err(Errno),
    /// `expect ok`
    Ok,
    /// `expect softdirty ADDR LEN PAGES`
    SoftDirty {
        /// ADDR
        addr: Addr,
        /// LEN in bytes
        len: u64,
        /// PAGES
        pages: PageSet,
    },
    /// `expect present ADDR LEN PAGES`
    Present {
        /// ADDR
        addr: Addr,
        /// LEN in bytes
        len: u64,
        /// PAGES
        pages: PageSet,
    },
    /// `expect vmas ADDR LEN N`
    Vmas {
        /// ADDR
        addr: Addr,
        /// LEN in bytes
        len: u64,
        /// N
        count: u64,
    },
    /// `expect regions N`
    Regions(u64),
    /// `expect walk_end ADDR`
    WalkEnd(Addr),
    /// `expect faults N`
    Faults(u64),
    /// `expect brk ADDR` (v2): the current program break
    Brk(Addr),
}

/// One command of a trace (an operation or an expectation): what one line holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Statement {
    /// `space NAME`
    Space(String),
    /// `fork CHILD`
    Fork(String),
    /// `mmap ADDR LEN PROT [private|shared] [fixed|noreplace]`
    Mmap {
        /// where
        target: MmapTarget,
        /// LEN in bytes
        len: u64,
        /// PROT
        prot: Prot,
        /// `shared` (default private)
        shared: bool,
        /// hint, fixed or noreplace
        placement: Placement,
        /// `noreserve`, `populate`, `growsdown` (v2; its `file` is always `None`)
        opts: MapOpts,
        /// `file NAME OFFSET` (v2): the file's name and the byte offset
        file: Option<(String, u64)>,
    },
    /// `munmap ADDR LEN`
    Munmap {
        /// ADDR
        addr: Addr,
        /// LEN in bytes
        len: u64,
    },
    /// `mprotect ADDR LEN PROT`
    Mprotect {
        /// ADDR
        addr: Addr,
        /// LEN in bytes
        len: u64,
        /// PROT
        prot: Prot,
    },
    /// `mremap ADDR OLDLEN NEWLEN [maymove] [fixed NEWADDR] [=> $name]`
    Mremap {
        /// ADDR
        addr: Addr,
        /// OLDLEN in bytes
        old_len: u64,
        /// NEWLEN in bytes
        new_len: u64,
        /// `maymove`
        maymove: bool,
        /// `fixed NEWADDR`
        fixed: Option<Addr>,
        /// `=> $name` (without the `$`)
        bind: Option<String>,
    },
    /// `madvise ADDR LEN ADVICE`
    Madvise {
        /// ADDR
        addr: Addr,
        /// LEN in bytes
        len: u64,
        /// the advice
        advice: Advice,
    },
    /// `write ADDR [LEN]` (LEN defaults to 1 byte)
    Write {
        /// ADDR
        addr: Addr,
        /// LEN in bytes
        len: u64,
    },
    /// `read ADDR [LEN]` (LEN defaults to 1 byte)
    Read {
        /// ADDR
        addr: Addr,
        /// LEN in bytes
        len: u64,
    },
    /// `clear_refs VALUE`: the token exactly as written; it is interpreted the way the
    /// kernel parses what is written to /proc/PID/clear_refs (`kstrtoint` base 10), so
    /// `clear_refs abc` is valid syntax and fails with EINVAL when replayed.
    ClearRefs(String),
    /// `pagemap ADDR LEN`
    Pagemap {
        /// ADDR
        addr: Addr,
        /// LEN in bytes
        len: u64,
    },
    /// `scan START LEN [options]`
    Scan(ScanCmd),
    /// `smaps ADDR`
    Smaps(Addr),
    /// `brk_start ADDR` (v2)
    BrkStart(Addr),
    /// `brk ADDR` (v2)
    Brk(Addr),
    /// `file NAME SIZE` or `memfd NAME SIZE` (v2)
    File {
        /// NAME
        name: String,
        /// `memfd` rather than `file`
        memfd: bool,
        /// SIZE in bytes
        size: u64,
    },
    /// `fwrite NAME OFFSET LEN` (v2)
    Fwrite {
        /// NAME
        name: String,
        /// OFFSET in bytes
        offset: u64,
        /// LEN in bytes
        len: u64,
    },
    /// `expect ...`
    Expect(Expect),
}
