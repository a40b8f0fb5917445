//! The trace parser: text (or raw bytes) to a [`Trace`].
//!
//! The language is specified in `shared/spec/trace-format.md` (a public contract). The
//! whole file is parsed before anything runs; the first malformed line stops parsing with
//! a [`ParseError`] that names the 1-based line and character column of the offending
//! token (or of the end of the line's last token when a token is missing).
//!
//! Decisions taken where the contract is silent:
//! - Lines are split on `\n`; one trailing `\r` is stripped. `#` starts a comment anywhere,
//!   even inside a token. Tokens are separated by spaces and tabs only.
//! - NUMBER: decimal, or hexadecimal with a lower-case `0x` (digits in either case); a
//!   single `_` may separate two digits (not leading, trailing, doubled or right after
//!   `0x`). Values must fit in a `u64`. SIZE is a NUMBER with an optional unit `p`, `K`,
//!   `M`, `G` or `T` (exact case); the product must fit in a `u64`.
//! - ADDR: NUMBER or `$name` (`[A-Za-z0-9_]+`), with at most one `+SIZE`/`-SIZE` offset;
//!   a numeric base plus its offset must lie in `0..=u64::MAX`. A `$name` used must have
//!   been bound on an earlier line (`mmap $name ...` without `fixed`/`noreplace`, or
//!   `mremap ... => $name`).
//! - Flags and options may come in any order, each at most once; `private`+`shared` and
//!   `fixed`+`noreplace` conflict. In `mremap`, `=> $name` must come last.
//! - `mode` is only allowed as the first command.
//! - (softdirty, bounded input) A line holds at most [`MAX_LINE_BYTES`] bytes besides its
//!   `\n`, is UTF-8, and holds no control byte but tab and `\r`; [`StatementReader`]
//!   parses as it reads, one line at a time, and stops at the first malformed line.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{BufRead, Read, Seek};

use super::ast::{
    Addr, AddrBase, Advice, Cats, Expect, MapOpts, MmapTarget, PageSet, ScanCmd, Spanned,
    Statement, Trace,
};
use softdirty::errno::Errno;
use softdirty::mm::Placement;
use softdirty::mode::Mode;
use softdirty::prot::Prot;

/// A syntax error: 1-based line and column (in characters) of the offending token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, in characters, of the offending token (or of the end of the line
    /// when a token is missing).
    pub col: usize,
    /// What was expected and what was found, in lower case.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.col, self.message)
    }
}

impl std::error::Error for ParseError {}

/// The longest line a trace may have, in bytes, not counting the `\n` that ends it (a
/// softdirty addition to the contract, `docs/trace-format.md`). A longer line is
/// malformed, at the column of its first character past the limit; [`StatementReader`]
/// detects it having read at most this many bytes of the line plus one.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Parses a whole trace.
///
/// Returns the first error of the file (in line order) if any line is malformed.
pub fn parse(text: &str) -> Result<Trace, ParseError> {
    let mut p = Parser::default();
    let mut commands = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = check_line(i + 1, line.as_bytes())?;
        commands.extend(p.line(i + 1, line)?);
    }
    Ok(p.finish(commands))
}

/// Like [`parse`], but takes raw bytes: invalid UTF-8 is a [`ParseError`] at its
/// line/column, never a panic.
pub fn parse_bytes(bytes: &[u8]) -> Result<Trace, ParseError> {
    let mut p = Parser::default();
    let mut commands = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = check_line(i + 1, raw)?;
        commands.extend(p.line(i + 1, line)?);
    }
    Ok(p.finish(commands))
}

/// The lexical checks of one line (without its `\n`), made before it is tokenized: it
/// must be UTF-8, hold no control byte other than tab and carriage return (a trailing
/// `\r` ends a CRLF line; elsewhere it stays part of a token, as before), and be at most
/// [`MAX_LINE_BYTES`] long. The first offending byte of the line is reported. Only the
/// first `MAX_LINE_BYTES` bytes are looked at, so a caller may pass a line cut after
/// `MAX_LINE_BYTES + 1` bytes and get the same answer as for the whole line.
fn check_line(no: usize, raw: &[u8]) -> Result<&str, ParseError> {
    let long = raw.len() > MAX_LINE_BYTES;
    let head = raw.get(..MAX_LINE_BYTES).unwrap_or(raw);
    let (valid, utf8_err) = match std::str::from_utf8(head) {
        Ok(s) => (s, None),
        Err(e) => (
            std::str::from_utf8(head.get(..e.valid_up_to()).unwrap_or_default())
                .unwrap_or_default(),
            // A sequence cut by the limit is not an error of its own: the line is too long.
            (e.error_len().is_some() || !long).then_some(e.valid_up_to()),
        ),
    };
    let col_of = |byte: usize| valid.get(..byte).map_or(0, |s| s.chars().count()) + 1;
    if let Some(at) = valid
        .bytes()
        .position(|b| (b < 0x20 && b != b'\t' && b != b'\r') || b == 0x7f)
    {
        let b = valid.as_bytes().get(at).copied().unwrap_or_default();
        return Err(ParseError {
            line: no,
            col: col_of(at),
            message: format!(
                "expected text, found the control byte 0x{b:02x} (only tab and a line's \
                 final carriage return are allowed)"
            ),
        });
    }
    if let Some(at) = utf8_err {
        let bad = head
            .get(at)
            .map_or_else(String::new, |b| format!(" (byte 0x{b:02x})"));
        return Err(ParseError {
            line: no,
            col: col_of(at),
            message: format!("expected UTF-8 text, found an invalid byte sequence{bad}"),
        });
    }
    if long {
        return Err(ParseError {
            line: no,
            col: col_of(valid.len()),
            message: format!("line too long: a line may hold at most {MAX_LINE_BYTES} bytes"),
        });
    }
    Ok(valid)
}

/// A [`StatementReader`] of the file at `path`.
pub fn read_file(
    path: &std::path::Path,
) -> Result<StatementReader<std::io::BufReader<std::fs::File>>, ReadError> {
    let f = std::fs::File::open(path).map_err(ReadError::Io)?;
    Ok(StatementReader::new(std::io::BufReader::new(f)))
}

/// An error of [`StatementReader`]: the input could not be read, or a line is malformed.
#[derive(Debug)]
pub enum ReadError {
    /// reading failed
    Io(std::io::Error),
    /// a malformed line
    Parse(ParseError),
}

impl ReadError {
    /// The message as the tools print it for the file `name`: `NAME: io error` or
    /// `NAME:LINE:COL: message`.
    pub fn in_file(&self, name: &str) -> String {
        match self {
            ReadError::Io(e) => format!("{name}: {e}"),
            ReadError::Parse(e) => format!("{name}:{e}"),
        }
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::Parse(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// A place in a [`StatementReader`]'s input (bytes read and lines counted since its
/// start), to come back to with [`StatementReader::rewind`].
#[derive(Clone, Copy, Debug)]
pub struct Checkpoint {
    pos: u64,
    line: usize,
}

/// Parses a trace as it reads it, one line at a time: the streaming form of
/// [`parse_bytes`], with the same statements and the same errors at the same lines and
/// columns. It holds one line (at most [`MAX_LINE_BYTES`] + 1 bytes) and the set of names
/// bound so far, never the file: a line that is not UTF-8, holds a control byte or is too
/// long is reported as soon as it is read, and nothing past it is parsed. After the first
/// error the iterator ends.
pub struct StatementReader<R> {
    src: R,
    parser: Parser,
    line: usize,
    buf: Vec<u8>,
    /// bytes read from `src` since the start
    consumed: u64,
    done: bool,
}

impl<R: BufRead> StatementReader<R> {
    /// A reader of the trace `src`.
    pub fn new(src: R) -> Self {
        StatementReader {
            src,
            parser: Parser::default(),
            line: 0,
            buf: Vec::new(),
            consumed: 0,
            done: false,
        }
    }

    /// The trace's `mode` header, once its first command has been read.
    pub fn mode(&self) -> Option<Mode> {
        self.parser.mode
    }

    /// The number of the last line read.
    pub fn line(&self) -> usize {
        self.line
    }

    /// Where the reader is now, to come back to with [`StatementReader::rewind`].
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            pos: self.consumed,
            line: self.line,
        }
    }

    /// Reads the rest of the input, checking every line, and returns the `mode` header:
    /// what [`parse_bytes`] accepts, without keeping the statements.
    pub fn validate(mut self) -> Result<Option<Mode>, ReadError> {
        for s in &mut self {
            s?;
        }
        Ok(self.parser.mode)
    }

    /// The next line, without its `\n`, cut after `MAX_LINE_BYTES + 1` bytes if longer.
    fn read_line(&mut self) -> std::io::Result<bool> {
        self.buf.clear();
        let cap = MAX_LINE_BYTES as u64 + 1;
        let n = (&mut self.src).take(cap).read_until(b'\n', &mut self.buf)?;
        self.consumed += n as u64;
        if n == 0 {
            return Ok(false);
        }
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        }
        Ok(true)
    }

    fn next_statement(&mut self) -> Result<Option<Spanned<Statement>>, ReadError> {
        loop {
            if !self.read_line().map_err(ReadError::Io)? {
                return Ok(None);
            }
            self.line += 1;
            let text = check_line(self.line, &self.buf).map_err(ReadError::Parse)?;
            if let Some(s) = self
                .parser
                .line(self.line, text)
                .map_err(ReadError::Parse)?
            {
                return Ok(Some(s));
            }
        }
    }
}

impl<R: BufRead + Seek> StatementReader<R> {
    /// Goes back to `cp` (of this reader): the statements after it are read again. Names
    /// bound in between stay bound, which changes nothing for statements that were valid
    /// there the first time. (`seek_relative`: a `BufReader` keeps its buffer when it can.)
    pub fn rewind(&mut self, cp: Checkpoint) -> std::io::Result<()> {
        let back = i64::try_from(self.consumed - cp.pos).map_err(std::io::Error::other)?;
        self.src.seek_relative(-back)?;
        self.consumed = cp.pos;
        self.line = cp.line;
        self.done = false;
        Ok(())
    }
}

impl<R: BufRead> Iterator for StatementReader<R> {
    type Item = Result<Spanned<Statement>, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_statement() {
            Ok(Some(s)) => Some(Ok(s)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Lexing

/// One token of a line: its text and 1-based character column.
#[derive(Clone, Copy, Debug)]
struct Tok<'a> {
    text: &'a str,
    col: usize,
}

/// Splits a line (already stripped of `\n` and a trailing `\r`) into tokens, dropping the
/// comment. Returns the tokens and the column just after the last token.
fn lex(text: &str) -> (Vec<Tok<'_>>, usize) {
    let mut toks = Vec::new();
    let mut start: Option<(usize, usize)> = None; // (byte index, column)
    let mut end_byte = text.len();
    let mut col = 0usize;
    for (bi, ch) in text.char_indices() {
        col += 1;
        if ch == '#' {
            end_byte = bi;
            break;
        }
        if ch == ' ' || ch == '\t' {
            if let Some((sb, sc)) = start.take() {
                toks.push(Tok {
                    text: text.get(sb..bi).unwrap_or_default(),
                    col: sc,
                });
            }
        } else if start.is_none() {
            start = Some((bi, col));
        }
    }
    if let Some((sb, sc)) = start {
        toks.push(Tok {
            text: text.get(sb..end_byte).unwrap_or_default(),
            col: sc,
        });
    }
    let end_col = toks.last().map_or(1, |t| t.col + t.text.chars().count());
    (toks, end_col)
}

/// The tokens of one line, consumed left to right.
struct Cursor<'a> {
    line: usize,
    toks: Vec<Tok<'a>>,
    pos: usize,
    end_col: usize,
}

impl<'a> Cursor<'a> {
    fn err_at(&self, col: usize, message: String) -> ParseError {
        ParseError {
            line: self.line,
            col,
            message,
        }
    }

    fn err(&self, tok: Tok<'_>, message: String) -> ParseError {
        self.err_at(tok.col, message)
    }

    fn peek(&self) -> Option<Tok<'a>> {
        self.toks.get(self.pos).copied()
    }

    /// The next token, or an error at the end of the line saying `what` was expected.
    fn next(&mut self, what: &str) -> Result<Tok<'a>, ParseError> {
        match self.peek() {
            Some(t) => {
                self.pos += 1;
                Ok(t)
            }
            None => Err(self.err_at(self.end_col, format!("expected {what}, found end of line"))),
        }
    }

    /// The next token if there is one.
    fn next_opt(&mut self) -> Option<Tok<'a>> {
        let t = self.peek()?;
        self.pos += 1;
        Some(t)
    }

    /// Requires that no token is left.
    fn end(&self) -> Result<(), ParseError> {
        match self.peek() {
            Some(t) => Err(self.err(t, format!("expected end of line, found {:?}", t.text))),
            None => Ok(()),
        }
    }
}

/// ` (keywords are lower case)` when `text` is a candidate in the wrong case.
fn case_hint(text: &str, candidates: &[&str]) -> String {
    let lower = text.to_lowercase();
    if lower != text && candidates.contains(&lower.as_str()) {
        format!(" (keywords are lower case: did you mean {lower:?}?)")
    } else {
        String::new()
    }
}

// ---------------------------------------------------------------------------------------
// Numbers, sizes, names

/// Parses a NUMBER; the error is the reason it is not one.
fn number(s: &str) -> Result<u64, String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    if s.starts_with("0X") {
        return Err("the hexadecimal prefix is a lower-case 0x".into());
    }
    let (digits, radix, kind) = match s.strip_prefix("0x") {
        Some(r) => (r, 16u32, "hexadecimal"),
        None => (s, 10u32, "decimal"),
    };
    if digits.is_empty() {
        return Err("no digits after 0x".into());
    }
    if digits.starts_with('_') {
        return Err("\"_\" must be between two digits".into());
    }
    if digits.ends_with('_') || digits.contains("__") {
        return Err("\"_\" must be between two digits".into());
    }
    let mut v: u64 = 0;
    for c in digits.chars() {
        if c == '_' {
            continue;
        }
        let d = c
            .to_digit(radix)
            .ok_or_else(|| format!("{c:?} is not a {kind} digit"))?;
        v = v
            .checked_mul(u64::from(radix))
            .and_then(|v| v.checked_add(u64::from(d)))
            .ok_or_else(|| "overflows 64 bits".to_string())?;
    }
    Ok(v)
}

/// Parses a SIZE (NUMBER with an optional unit); the error is the reason it is not one.
fn size(s: &str) -> Result<u64, String> {
    let units: [(char, u64); 5] = [
        ('p', 4096),
        ('K', 1 << 10),
        ('M', 1 << 20),
        ('G', 1 << 30),
        ('T', 1 << 40),
    ];
    let (num, mult) = units
        .iter()
        .find_map(|&(u, m)| s.strip_suffix(u).map(|n| (n, m)))
        .unwrap_or((s, 1));
    let n = number(num).map_err(|e| {
        if matches!(s.chars().last(), Some('P' | 'k' | 'm' | 'g' | 't')) {
            "units are p, K, M, G, T".to_string()
        } else {
            e
        }
    })?;
    n.checked_mul(mult)
        .ok_or_else(|| "overflows 64 bits".to_string())
}

/// Checks the characters of a `$name` (without the `$`).
fn check_var(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("missing name after \"$\"".into());
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        Some(c) => Err(format!(
            "{c:?} is not allowed in a name (letters, digits, \"_\")"
        )),
        None => Ok(()),
    }
}

const COMMANDS: &[&str] = &[
    "mode",
    "mmap",
    "munmap",
    "mprotect",
    "mremap",
    "madvise",
    "write",
    "read",
    "clear_refs",
    "pagemap",
    "scan",
    "smaps",
    "space",
    "fork",
    "brk_start",
    "brk",
    "file",
    "memfd",
    "fwrite",
    "expect",
];

const EXPECTS: &[&str] = &[
    "err",
    "ok",
    "softdirty",
    "present",
    "vmas",
    "regions",
    "walk_end",
    "faults",
    "brk",
];

const CATEGORIES: &[(&str, u64)] = &[
    ("wpallowed", 1 << 0),
    ("written", 1 << 1),
    ("file", 1 << 2),
    ("present", 1 << 3),
    ("swapped", 1 << 4),
    ("pfnzero", 1 << 5),
    ("huge", 1 << 6),
    ("softdirty", 1 << 7),
    ("guard", 1 << 8),
];

const SCAN_OPTIONS: &[&str] = &[
    "mask",
    "anyof",
    "inverted",
    "return",
    "clear",
    "max_pages",
    "vec_len",
];

// ---------------------------------------------------------------------------------------
// The parser

/// A file NAME: `[a-z0-9_]+`.
fn file_name(c: &Cursor<'_>, t: Tok<'_>) -> Result<String, ParseError> {
    if let Some(ch) = t
        .text
        .chars()
        .find(|ch| !(ch.is_ascii_lowercase() || ch.is_ascii_digit() || *ch == '_'))
    {
        return Err(c.err(
            t,
            format!(
                "expected NAME of a file (lowercase letters, digits, \"_\"), found {:?} \
                 ({ch:?} is not allowed)",
                t.text
            ),
        ));
    }
    Ok(t.text.to_string())
}

#[derive(Default)]
struct Parser {
    mode: Option<Mode>,
    /// Whether a command (including `mode`) has been seen.
    seen_command: bool,
    /// Names bound on earlier lines.
    bound: HashSet<String>,
    /// Files created on earlier lines: name → is a memfd.
    files: HashMap<String, bool>,
}

impl Parser {
    fn finish(self, commands: Vec<Spanned<Statement>>) -> Trace {
        Trace {
            mode: self.mode,
            commands,
        }
    }

    /// Parses line `no` (already through [`check_line`]): its statement, if it has one
    /// (`None` for a blank or comment line and for the `mode` header).
    fn line(&mut self, no: usize, text: &str) -> Result<Option<Spanned<Statement>>, ParseError> {
        let text = text.strip_suffix('\r').unwrap_or(text);
        let (toks, end_col) = lex(text);
        if toks.is_empty() {
            return Ok(None);
        }
        let mut c = Cursor {
            line: no,
            toks,
            pos: 0,
            end_col,
        };
        let first = c.next("a command")?;
        let is_first = !self.seen_command;
        self.seen_command = true;
        let mut binds: Vec<String> = Vec::new();
        let cmd = match first.text {
            "mode" => {
                if !is_first {
                    return Err(c.err(
                        first,
                        "\"mode\" is only allowed as the first command of a trace".into(),
                    ));
                }
                let t = c.next("MODE (precise, legacy, nomerge, regions, sticky)")?;
                let m = t.text.parse::<Mode>().map_err(|_| {
                    let names: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
                    c.err(
                        t,
                        format!(
                            "unknown mode: expected MODE (precise, legacy, nomerge, regions, \
                             sticky), found {:?}{}",
                            t.text,
                            case_hint(t.text, &names)
                        ),
                    )
                })?;
                c.end()?;
                self.mode = Some(m);
                return Ok(None);
            }
            "space" => Statement::Space(self.space_name(&mut c, "NAME")?),
            "fork" => Statement::Fork(self.space_name(&mut c, "CHILD")?),
            "mmap" => self.mmap(&mut c, &mut binds)?,
            "munmap" => {
                let addr = self.addr(&mut c, "ADDR")?;
                let len = self.size(&mut c, "LEN")?;
                Statement::Munmap { addr, len }
            }
            "mprotect" => {
                let addr = self.addr(&mut c, "ADDR")?;
                let len = self.size(&mut c, "LEN")?;
                let prot = self.prot(&mut c)?;
                Statement::Mprotect { addr, len, prot }
            }
            "mremap" => self.mremap(&mut c, &mut binds)?,
            "madvise" => {
                let addr = self.addr(&mut c, "ADDR")?;
                let len = self.size(&mut c, "LEN")?;
                let names: Vec<&str> = Advice::ALL.iter().map(|a| a.name()).collect();
                let what = format!("ADVICE ({})", names.join(", "));
                let t = c.next(&what)?;
                let Some(advice) = Advice::from_name(t.text) else {
                    let why = case_hint(t.text, &names);
                    return Err(c.err(t, format!("expected {what}, found {:?}{why}", t.text)));
                };
                Statement::Madvise { addr, len, advice }
            }
            "write" | "read" => {
                let addr = self.addr(&mut c, "ADDR")?;
                let len = match c.peek() {
                    Some(_) => self.size(&mut c, "LEN")?,
                    None => 1,
                };
                if first.text == "write" {
                    Statement::Write { addr, len }
                } else {
                    Statement::Read { addr, len }
                }
            }
            "clear_refs" => Statement::ClearRefs(c.next("VALUE")?.text.to_string()),
            "pagemap" => {
                let addr = self.addr(&mut c, "ADDR")?;
                let len = self.size(&mut c, "LEN")?;
                Statement::Pagemap { addr, len }
            }
            "scan" => self.scan(&mut c)?,
            "smaps" => Statement::Smaps(self.addr(&mut c, "ADDR")?),
            "brk_start" => Statement::BrkStart(self.addr(&mut c, "ADDR")?),
            "brk" => Statement::Brk(self.addr(&mut c, "ADDR")?),
            "file" | "memfd" => {
                let memfd = first.text == "memfd";
                let t = c.next("NAME")?;
                let name = file_name(&c, t)?;
                if let Some(&was) = self.files.get(&name) {
                    if was != memfd {
                        let (is, other) = if was {
                            ("memfd", "file")
                        } else {
                            ("file", "memfd")
                        };
                        return Err(c.err(
                            t,
                            format!("{name:?} is a {is}, created earlier; a {other} line cannot name it"),
                        ));
                    }
                }
                let size = self.size(&mut c, "SIZE")?;
                c.end()?;
                self.files.insert(name.clone(), memfd);
                Statement::File { name, memfd, size }
            }
            "fwrite" => {
                let name = self.existing_file(&mut c)?;
                let offset = self.size(&mut c, "OFFSET")?;
                let len = self.size(&mut c, "LEN")?;
                Statement::Fwrite { name, offset, len }
            }
            "expect" => Statement::Expect(self.expect(&mut c)?),
            other => {
                return Err(c.err(
                    first,
                    format!(
                        "unknown command {:?}{}: expected one of {}",
                        other,
                        case_hint(other, COMMANDS),
                        COMMANDS.join(", ")
                    ),
                ))
            }
        };
        c.end()?;
        self.bound.extend(binds);
        Ok(Some(Spanned {
            line: no,
            col: first.col,
            node: cmd,
        }))
    }

    /// NAME of a file created on an earlier line (`fwrite`, `mmap ... file`).
    fn existing_file(&self, c: &mut Cursor<'_>) -> Result<String, ParseError> {
        let t = c.next("NAME")?;
        let name = file_name(c, t)?;
        if !self.files.contains_key(&name) {
            return Err(c.err(
                t,
                format!(
                    "no file {name:?}: create it on an earlier line with \"file {name} SIZE\" \
                     or \"memfd {name} SIZE\""
                ),
            ));
        }
        Ok(name)
    }

    fn space_name(&self, c: &mut Cursor<'_>, what: &str) -> Result<String, ParseError> {
        let t = c.next(what)?;
        if let Some(ch) = t
            .text
            .chars()
            .find(|ch| !(ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-')))
        {
            return Err(c.err(
                t,
                format!(
                    "expected {what} (letters, digits, \"_\", \".\", \"-\"), found {:?} ({ch:?} \
                     is not allowed)",
                    t.text
                ),
            ));
        }
        Ok(t.text.to_string())
    }

    fn size(&self, c: &mut Cursor<'_>, what: &str) -> Result<u64, ParseError> {
        let t = c.next(what)?;
        size(t.text).map_err(|why| {
            c.err(
                t,
                format!(
                    "expected {what} (a SIZE such as 4096, 0x1000, 1p, 4K), found {:?} ({why})",
                    t.text
                ),
            )
        })
    }

    fn number(&self, c: &mut Cursor<'_>, what: &str) -> Result<u64, ParseError> {
        let t = c.next(what)?;
        number(t.text).map_err(|why| {
            c.err(
                t,
                format!("expected {what} (a NUMBER), found {:?} ({why})", t.text),
            )
        })
    }

    fn prot(&self, c: &mut Cursor<'_>) -> Result<Prot, ParseError> {
        const WHAT: &str = "PROT (none, r, rw, rx, rwx, w, wx, x)";
        let t = c.next(WHAT)?;
        t.text.parse::<Prot>().map_err(|_| {
            c.err(
                t,
                format!(
                    "expected {WHAT}, found {:?}{}",
                    t.text,
                    case_hint(t.text, &["none", "r", "rw", "rx", "rwx", "w", "wx", "x"])
                ),
            )
        })
    }

    /// Parses the syntax of an ADDR token (without checking that a name is bound).
    fn addr_syntax(&self, c: &Cursor<'_>, t: Tok<'_>, what: &str) -> Result<Addr, ParseError> {
        let bad = |why: String| {
            c.err(
                t,
                format!(
                    "expected {what} (NUMBER or $name, optionally +SIZE or -SIZE), found {:?} \
                     ({why})",
                    t.text
                ),
            )
        };
        let s = t.text;
        let (base_s, off) = match s.find(['+', '-']) {
            Some(i) => {
                let (b, rest) = s.split_at(i);
                let neg = rest.starts_with('-');
                (b, Some((neg, rest.get(1..).unwrap_or_default())))
            }
            None => (s, None),
        };
        let base = if let Some(name) = base_s.strip_prefix('$') {
            check_var(name).map_err(bad)?;
            AddrBase::Name(name.to_string())
        } else {
            if base_s.is_empty() {
                return Err(bad("missing NUMBER or $name before the offset".into()));
            }
            AddrBase::Number(number(base_s).map_err(bad)?)
        };
        let offset: i128 = match off {
            None => 0,
            Some((neg, sz)) => {
                if sz.contains(['+', '-']) {
                    return Err(bad("only one +SIZE or -SIZE offset is allowed".into()));
                }
                let v = i128::from(size(sz).map_err(|why| bad(format!("offset: {why}")))?);
                if neg {
                    -v
                } else {
                    v
                }
            }
        };
        if let AddrBase::Number(n) = base {
            let sum = i128::from(n) + offset;
            if sum < 0 || sum > i128::from(u64::MAX) {
                return Err(bad(
                    "the address is outside 0..=0xffff_ffff_ffff_ffff".into()
                ));
            }
        }
        Ok(Addr { base, offset })
    }

    /// Errors unless every name used by `a` is bound.
    fn check_bound(&self, c: &Cursor<'_>, t: Tok<'_>, a: &Addr) -> Result<(), ParseError> {
        match &a.base {
            AddrBase::Name(n) if !self.bound.contains(n) => Err(c.err(
                t,
                format!(
                    "unbound name ${n} (bind it on an earlier line with \"mmap ${n} LEN PROT\" \
                     or \"mremap ... => ${n}\")"
                ),
            )),
            _ => Ok(()),
        }
    }

    fn addr(&self, c: &mut Cursor<'_>, what: &str) -> Result<Addr, ParseError> {
        let t = c.next(what)?;
        let a = self.addr_syntax(c, t, what)?;
        self.check_bound(c, t, &a)?;
        Ok(a)
    }

    fn mmap(&self, c: &mut Cursor<'_>, binds: &mut Vec<String>) -> Result<Statement, ParseError> {
        let at = c.next("ADDR")?;
        let a = self.addr_syntax(c, at, "ADDR")?;
        let rest_has_placement = c
            .toks
            .get(c.pos..)
            .unwrap_or_default()
            .iter()
            .any(|t| t.text == "fixed" || t.text == "noreplace");
        let target = match (&a.base, rest_has_placement) {
            (AddrBase::Name(n), false) if !at.text.contains(['+', '-']) => {
                binds.push(n.clone());
                MmapTarget::Bind(n.clone())
            }
            _ => {
                self.check_bound(c, at, &a)?;
                MmapTarget::At(a)
            }
        };
        let len = self.size(c, "LEN")?;
        let prot = self.prot(c)?;
        let mut sharing: Option<&str> = None;
        let mut placing: Option<&str> = None;
        let mut noreserve: Option<&str> = None;
        let mut populate: Option<&str> = None;
        let mut growsdown: Option<&str> = None;
        let mut file: Option<(String, u64)> = None;
        const FLAGS: &[&str] = &[
            "private",
            "shared",
            "fixed",
            "noreplace",
            "noreserve",
            "populate",
            "growsdown",
            "file",
        ];
        while let Some(t) = c.next_opt() {
            let slot = match t.text {
                "private" | "shared" => &mut sharing,
                "fixed" | "noreplace" => &mut placing,
                "noreserve" => &mut noreserve,
                "populate" => &mut populate,
                "growsdown" => &mut growsdown,
                "file" => {
                    if file.is_some() {
                        return Err(c.err(t, "duplicate flag \"file\"".into()));
                    }
                    let name = self.existing_file(c)?;
                    let offset = self.size(c, "OFFSET")?;
                    file = Some((name, offset));
                    continue;
                }
                other => {
                    return Err(c.err(
                        t,
                        format!(
                            "expected a flag (private, shared, fixed, noreplace, file NAME \
                             OFFSET, noreserve, populate, growsdown) or end of line, found \
                             {other:?}{}",
                            case_hint(other, FLAGS)
                        ),
                    ))
                }
            };
            match *slot {
                Some(prev) if prev == t.text => {
                    return Err(c.err(t, format!("duplicate flag {:?}", t.text)))
                }
                Some(prev) => {
                    return Err(c.err(t, format!("conflicting flags {prev:?} and {:?}", t.text)))
                }
                None => *slot = Some(t.text),
            }
        }
        let placement = match placing {
            None => Placement::Hint,
            Some("fixed") => Placement::Fixed,
            Some(_) => Placement::NoReplace,
        };
        Ok(Statement::Mmap {
            target,
            len,
            prot,
            shared: sharing == Some("shared"),
            placement,
            opts: MapOpts {
                file: None,
                noreserve: noreserve.is_some(),
                populate: populate.is_some(),
                growsdown: growsdown.is_some(),
            },
            file,
        })
    }

    fn mremap(&self, c: &mut Cursor<'_>, binds: &mut Vec<String>) -> Result<Statement, ParseError> {
        let addr = self.addr(c, "ADDR")?;
        let old_len = self.size(c, "OLDLEN")?;
        let new_len = self.size(c, "NEWLEN")?;
        let mut maymove = false;
        let mut fixed: Option<Addr> = None;
        let mut bind: Option<String> = None;
        while let Some(t) = c.next_opt() {
            match t.text {
                "maymove" => {
                    if maymove {
                        return Err(c.err(t, "duplicate option \"maymove\"".into()));
                    }
                    maymove = true;
                }
                "fixed" => {
                    if fixed.is_some() {
                        return Err(c.err(t, "duplicate option \"fixed\"".into()));
                    }
                    fixed = Some(self.addr(c, "NEWADDR")?);
                }
                "=>" => {
                    let n = c.next("$name after \"=>\"")?;
                    let name = n.text.strip_prefix('$').ok_or_else(|| {
                        c.err(
                            n,
                            format!("expected $name after \"=>\", found {:?}", n.text),
                        )
                    })?;
                    check_var(name).map_err(|why| {
                        c.err(
                            n,
                            format!("expected $name after \"=>\", found {:?} ({why})", n.text),
                        )
                    })?;
                    bind = Some(name.to_string());
                    // `=> $name` comes last: anything after it is an error.
                    c.end()?;
                }
                other => {
                    return Err(c.err(
                        t,
                        format!(
                            "expected an option (maymove, fixed NEWADDR, => $name) or end of \
                             line, found {other:?}{}",
                            case_hint(other, &["maymove", "fixed"])
                        ),
                    ))
                }
            }
        }
        binds.extend(bind.clone());
        Ok(Statement::Mremap {
            addr,
            old_len,
            new_len,
            maymove,
            fixed,
            bind,
        })
    }

    fn scan(&self, c: &mut Cursor<'_>) -> Result<Statement, ParseError> {
        let start = self.addr(c, "START")?;
        let len = self.size(c, "LEN")?;
        let mut cmd = ScanCmd {
            start,
            len,
            mask: 0,
            anyof: 0,
            inverted: 0,
            ret: 0,
            clear: false,
            max_pages: 0,
            vec_len: 1024,
        };
        let mut seen: HashSet<&str> = HashSet::new();
        while let Some(t) = c.next_opt() {
            let (key, value) = match t.text.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (t.text, None),
            };
            let unknown = || {
                c.err(
                    t,
                    format!(
                        "expected a scan option (mask=CATS, anyof=CATS, inverted=CATS, \
                         return=CATS, clear, max_pages=N, vec_len=N) or end of line, found {:?}{}",
                        t.text,
                        case_hint(key, SCAN_OPTIONS)
                    ),
                )
            };
            let Some(&canon) = SCAN_OPTIONS.iter().find(|&&o| o == key) else {
                return Err(unknown());
            };
            if !seen.insert(canon) {
                return Err(c.err(t, format!("duplicate option {canon:?}")));
            }
            match (canon, value) {
                ("clear", None) => cmd.clear = true,
                ("clear", Some(_)) => {
                    return Err(c.err(
                        t,
                        format!("expected \"clear\" (it takes no value), found {:?}", t.text),
                    ))
                }
                (_, None) => {
                    return Err(c.err(
                        t,
                        format!(
                            "expected \"{canon}=...\" (it needs a value), found {:?}",
                            t.text
                        ),
                    ))
                }
                ("max_pages" | "vec_len", Some(v)) => {
                    let n = number(v).map_err(|why| {
                        c.err(
                            t,
                            format!("expected {canon}=N (a NUMBER), found {:?} ({why})", t.text),
                        )
                    })?;
                    if canon == "max_pages" {
                        cmd.max_pages = n;
                    } else {
                        cmd.vec_len = n;
                    }
                }
                (_, Some(v)) => {
                    let cats =
                        cats(v).map_err(|why| {
                            c.err(
                                t,
                                format!(
                                "expected {canon}=CATS (comma list of {} or NUMBERs), found {:?} \
                                 ({why})",
                                CATEGORIES.iter().map(|c| c.0).collect::<Vec<_>>().join(", "),
                                t.text
                            ),
                            )
                        })?;
                    match canon {
                        "mask" => cmd.mask = cats,
                        "anyof" => cmd.anyof = cats,
                        "inverted" => cmd.inverted = cats,
                        _ => cmd.ret = cats,
                    }
                }
            }
        }
        Ok(Statement::Scan(cmd))
    }

    fn pages(&self, c: &mut Cursor<'_>) -> Result<PageSet, ParseError> {
        const WHAT: &str = "PAGES (none, all, or page indices i and ranges a..b)";
        let first = c.next(WHAT)?;
        match first.text {
            "none" => return Ok(PageSet::None),
            "all" => return Ok(PageSet::All),
            _ => {}
        }
        let mut list = Vec::new();
        let mut t = Some(first);
        while let Some(tok) = t {
            let bad = |why: String| {
                c.err(
                    tok,
                    format!("expected {WHAT}, found {:?} ({why})", tok.text),
                )
            };
            let range = match tok.text.split_once("..") {
                Some((a, b)) => {
                    let a = number(a).map_err(|w| bad(format!("range start: {w}")))?;
                    let b = number(b).map_err(|w| bad(format!("range end: {w}")))?;
                    if a > b {
                        return Err(bad("the range start is after its end".into()));
                    }
                    (a, b)
                }
                None => {
                    let i = number(tok.text).map_err(|w| {
                        if tok.text == "none" || tok.text == "all" {
                            bad(format!("{:?} must be alone", tok.text))
                        } else {
                            bad(w)
                        }
                    })?;
                    let j = i
                        .checked_add(1)
                        .ok_or_else(|| bad("overflows 64 bits".into()))?;
                    (i, j)
                }
            };
            list.push(range);
            t = c.next_opt();
        }
        Ok(PageSet::List(list))
    }

    fn expect(&self, c: &mut Cursor<'_>) -> Result<Expect, ParseError> {
        let what = format!("an expectation ({})", EXPECTS.join(", "));
        let t = c.next(&what)?;
        Ok(match t.text {
            "err" => {
                let e = c.next("ERRNO (EINVAL, ENOMEM, EEXIST, EFAULT, ...)")?;
                let errno = Errno::from_name(e.text).ok_or_else(|| {
                    let upper = e.text.to_uppercase();
                    let hint = if upper != e.text && Errno::from_name(&upper).is_some() {
                        format!(" (errno names are upper case: did you mean {upper:?}?)")
                    } else {
                        String::new()
                    };
                    c.err(
                        e,
                        format!(
                            "unknown errno: expected ERRNO (EINVAL, ENOMEM, EEXIST, EFAULT, ...), \
                             found {:?}{hint}",
                            e.text
                        ),
                    )
                })?;
                Expect::Err(errno)
            }
            "ok" => Expect::Ok,
            "softdirty" | "present" => {
                let addr = self.addr(c, "ADDR")?;
                let len = self.size(c, "LEN")?;
                let pages = self.pages(c)?;
                if t.text == "softdirty" {
                    Expect::SoftDirty { addr, len, pages }
                } else {
                    Expect::Present { addr, len, pages }
                }
            }
            "vmas" => {
                let addr = self.addr(c, "ADDR")?;
                let len = self.size(c, "LEN")?;
                let count = self.number(c, "N")?;
                Expect::Vmas { addr, len, count }
            }
            "regions" => Expect::Regions(self.number(c, "N")?),
            "walk_end" => Expect::WalkEnd(self.addr(c, "ADDR")?),
            "faults" => Expect::Faults(self.number(c, "N")?),
            "brk" => Expect::Brk(self.addr(c, "ADDR")?),
            other => {
                return Err(c.err(
                    t,
                    format!(
                        "expected {what}, found {other:?}{}",
                        case_hint(other, EXPECTS)
                    ),
                ))
            }
        })
    }
}

/// Parses CATS: a comma list of category names or NUMBERs, ORed.
fn cats(v: &str) -> Result<Cats, String> {
    let mut bits: Cats = 0;
    for el in v.split(',') {
        if el.is_empty() {
            return Err("empty element".into());
        }
        if let Some(&(_, b)) = CATEGORIES.iter().find(|(n, _)| *n == el) {
            bits |= b;
        } else if el.starts_with(|ch: char| ch.is_ascii_digit()) {
            bits |= number(el).map_err(|why| format!("{el:?}: {why}"))?;
        } else {
            let names: Vec<&str> = CATEGORIES.iter().map(|c| c.0).collect();
            return Err(format!("unknown category {el:?}{}", case_hint(el, &names)));
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TRACES: &[(&str, &str)] = &[
        (
            "errno-basics",
            include_str!("../../../../shared/traces/errno-basics.trace"),
        ),
        (
            "quickstart",
            include_str!("../../../../shared/traces/quickstart.trace"),
        ),
        (
            "seed-merge-bug.legacy",
            include_str!("../../../../shared/traces/seed-merge-bug.legacy.trace"),
        ),
        (
            "seed-merge-bug.precise",
            include_str!("../../../../shared/traces/seed-merge-bug.precise.trace"),
        ),
    ];

    fn ok(text: &str) -> Trace {
        match parse(text) {
            Ok(t) => t,
            Err(e) => panic!("{text:?} failed: {e}"),
        }
    }

    /// The single command of a one-command trace.
    fn one(text: &str) -> Statement {
        let t = ok(text);
        assert_eq!(t.commands.len(), 1, "{text:?}");
        t.commands
            .into_iter()
            .next()
            .map(|c| c.node)
            .unwrap_or(Statement::Space(String::new()))
    }

    /// Parses `text` after a prelude binding `$heap` and `$a` (lines 1 and 2), returning the
    /// last command.
    fn last(text: &str) -> Statement {
        let t = ok(&format!("mmap $heap 64p rw\nmmap $a 1p r\n{text}"));
        t.commands
            .last()
            .map(|c| c.node.clone())
            .unwrap_or(Statement::Space(String::new()))
    }

    #[track_caller]
    fn bad(text: &str, line: usize, col: usize, msg: &str) {
        match parse(text) {
            Ok(t) => panic!("{text:?} parsed: {t:?}"),
            Err(e) => {
                assert_eq!((e.line, e.col), (line, col), "{text:?}: {e}");
                assert!(
                    e.message.contains(msg),
                    "{text:?}: {e} does not contain {msg:?}"
                );
                assert_eq!(parse_bytes(text.as_bytes()), Err(e));
            }
        }
    }

    #[test]
    fn v2_files_parse_and_their_malformed_classes() {
        assert_eq!(
            one("memfd ring 4p"),
            Statement::File {
                name: "ring".into(),
                memfd: true,
                size: 4 * P
            }
        );
        let t = parse(
            "file data_1 8p\nmmap $m 2p rw shared file data_1 4p populate\nfwrite data_1 1p 10\n",
        )
        .unwrap();
        assert_eq!(
            t.commands[1].node,
            Statement::Mmap {
                target: MmapTarget::Bind("m".into()),
                len: 2 * P,
                prot: Prot::RW,
                shared: true,
                placement: Placement::Hint,
                opts: MapOpts {
                    populate: true,
                    ..MapOpts::default()
                },
                file: Some(("data_1".into(), 4 * P)),
            }
        );
        assert_eq!(
            t.commands[2].node,
            Statement::Fwrite {
                name: "data_1".into(),
                offset: P,
                len: 10
            }
        );
        // A file of the other kind, a name used before its file exists, a bad name.
        bad("file a 1p\nmemfd a 1p\n", 2, 7, "is a file");
        bad("memfd a 1p\nfile a 2p\n", 2, 6, "is a memfd");
        bad("mmap 0x1000 1p r file a 0\n", 1, 23, "no file \"a\"");
        bad("fwrite a 0 1\n", 1, 8, "no file \"a\"");
        bad("file A 1p\n", 1, 6, "lowercase letters");
        bad("file a\n", 1, 7, "SIZE");
        bad("file a 1p\nmmap 0x1000 1p r file a\n", 2, 24, "OFFSET");
        bad(
            "file a 1p\nmmap 0x1000 1p r file a 0 file a 0\n",
            2,
            27,
            "duplicate flag",
        );
        // The name is created by the line that names it, not before.
        bad("mmap 0x1000 1p r file a 0\nfile a 1p\n", 1, 23, "no file");
    }

    fn num(n: u64) -> Addr {
        Addr {
            base: AddrBase::Number(n),
            offset: 0,
        }
    }

    fn var(n: &str, offset: i128) -> Addr {
        Addr {
            base: AddrBase::Name(n.into()),
            offset,
        }
    }

    const P: u64 = 4096;

    // ---- the shipped traces ----

    #[test]
    fn shipped_traces_parse() {
        for (name, text) in TRACES {
            let t = parse(text).unwrap_or_else(|e| panic!("{name}.trace:{e}"));
            assert!(!t.commands.is_empty(), "{name}");
            assert_eq!(parse_bytes(text.as_bytes()).as_ref(), Ok(&t), "{name}");
        }
    }

    #[test]
    fn quickstart_shape() {
        let t = ok(TRACES[1].1);
        assert_eq!(t.mode, Some(Mode::Precise));
        let first = &t.commands[0];
        assert_eq!((first.line, first.col), (3, 1));
        assert_eq!(
            first.node,
            Statement::Mmap {
                target: MmapTarget::Bind("heap".into()),
                len: 64 * P,
                prot: Prot::RW,
                shared: false,
                placement: Placement::Hint,
                opts: MapOpts::default(),
                file: None,
            }
        );
        assert_eq!(
            t.commands[5].node,
            Statement::Write {
                addr: var("heap", 6 * P as i128),
                len: 2 * P
            }
        );
        assert_eq!(
            t.commands[6].node,
            Statement::Expect(Expect::SoftDirty {
                addr: var("heap", 0),
                len: 64 * P,
                pages: PageSet::List(vec![(5, 8)]),
            })
        );
    }

    // ---- positive forms ----

    #[test]
    fn display_format() {
        let e = ParseError {
            line: 3,
            col: 7,
            message: "boom".into(),
        };
        assert_eq!(e.to_string(), "3:7: boom");
    }

    #[test]
    fn empty_and_comments() {
        assert_eq!(
            ok(""),
            Trace {
                mode: None,
                commands: vec![]
            }
        );
        assert_eq!(ok("\n# only a comment\n   \t\n\r\n").commands.len(), 0);
    }

    #[test]
    fn mode_header() {
        let t = ok("# header\n\n  mode legacy # c\nwrite 0x1000\n");
        assert_eq!(t.mode, Some(Mode::Legacy));
        assert_eq!(t.commands.len(), 1);
        assert_eq!((t.commands[0].line, t.commands[0].col), (4, 1));
        for m in Mode::ALL {
            assert_eq!(ok(&format!("mode {}", m.name())).mode, Some(m));
        }
        assert_eq!(ok("write 1").mode, None);
    }

    #[test]
    fn sizes_and_units() {
        for s in [
            "16p", "64K", "65536", "0x10000", "0x1_0000", "6_5536", "0x10p",
        ] {
            assert_eq!(
                one(&format!("munmap 0 {s}")),
                Statement::Munmap {
                    addr: num(0),
                    len: 65536
                },
                "{s}"
            );
        }
        assert_eq!(size("1M"), Ok(1 << 20));
        assert_eq!(size("1G"), Ok(1 << 30));
        assert_eq!(size("2T"), Ok(2 << 40));
        assert_eq!(size("0xABCdef"), Ok(0xabcdef));
        assert_eq!(size("0"), Ok(0));
        assert_eq!(size("0xffff_ffff_ffff_ffff"), Ok(u64::MAX));
        assert_eq!(size("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(size("0xf_ffff_ffff_ffffp"), Ok(0xf_ffff_ffff_ffff * 4096));
    }

    #[test]
    fn addresses() {
        assert_eq!(
            one("smaps 0x10_0000_0000+3p"),
            Statement::Smaps(Addr {
                base: AddrBase::Number(0x10_0000_0000),
                offset: 3 * 4096
            })
        );
        assert_eq!(
            last("smaps $heap-2p"),
            Statement::Smaps(var("heap", -2 * 4096))
        );
        assert_eq!(last("smaps $heap+0"), Statement::Smaps(var("heap", 0)));
        assert_eq!(last("smaps $heap"), Statement::Smaps(var("heap", 0)));
        assert_eq!(
            one("smaps 0x2000-0x2000"),
            Statement::Smaps(Addr {
                base: AddrBase::Number(0x2000),
                offset: -0x2000
            })
        );
        assert_eq!(
            one("smaps 0xffff_ffff_ffff_f000+0xfff"),
            Statement::Smaps(Addr {
                base: AddrBase::Number(0xffff_ffff_ffff_f000),
                offset: 0xfff
            })
        );
        // Names may be rebound and hold digits and underscores.
        let t = ok("mmap $x_1 1p rw\nmmap $x_1 2p rw\nwrite $x_1+1p\n");
        assert_eq!(
            t.commands[2].node,
            Statement::Write {
                addr: var("x_1", 4096),
                len: 1
            }
        );
        // A name's offset may be large: it is resolved at replay time.
        assert_eq!(
            last("smaps $a+0xffff_ffff_ffff_ffff"),
            Statement::Smaps(var("a", u64::MAX as i128))
        );
        assert_eq!(
            last("smaps $a-16T"),
            Statement::Smaps(var("a", -(16i128 << 40)))
        );
    }

    #[test]
    fn mmap_forms() {
        assert_eq!(
            one("mmap $heap 64p rw"),
            Statement::Mmap {
                target: MmapTarget::Bind("heap".into()),
                len: 64 * P,
                prot: Prot::RW,
                shared: false,
                placement: Placement::Hint,
                opts: MapOpts::default(),
                file: None,
            }
        );
        assert_eq!(
            last("mmap $heap+4p 4p rw fixed"),
            Statement::Mmap {
                target: MmapTarget::At(var("heap", 4 * P as i128)),
                len: 4 * P,
                prot: Prot::RW,
                shared: false,
                placement: Placement::Fixed,
                opts: MapOpts::default(),
                file: None,
            }
        );
        assert_eq!(
            last("mmap $heap 1p none noreplace shared"),
            Statement::Mmap {
                target: MmapTarget::At(var("heap", 0)),
                len: P,
                prot: Prot::NONE,
                shared: true,
                placement: Placement::NoReplace,
                opts: MapOpts::default(),
                file: None,
            }
        );
        // A bare name with an explicit +0 offset is a use, not a binding.
        assert_eq!(
            last("mmap $heap+0 1p r"),
            Statement::Mmap {
                target: MmapTarget::At(var("heap", 0)),
                len: P,
                prot: Prot::R,
                shared: false,
                placement: Placement::Hint,
                opts: MapOpts::default(),
                file: None,
            }
        );
        assert_eq!(
            one("mmap 0x1000 0x2000 rwx private"),
            Statement::Mmap {
                target: MmapTarget::At(num(0x1000)),
                len: 0x2000,
                prot: Prot::RWX,
                shared: false,
                placement: Placement::Hint,
                opts: MapOpts::default(),
                file: None,
            }
        );
        assert_eq!(
            one("mmap 0x1000 1p wx fixed shared"),
            Statement::Mmap {
                target: MmapTarget::At(num(0x1000)),
                len: P,
                prot: Prot {
                    read: false,
                    write: true,
                    exec: true
                },
                shared: true,
                placement: Placement::Fixed,
                opts: MapOpts::default(),
                file: None,
            }
        );
        for (s, p) in [
            ("r", Prot::R),
            ("rx", Prot::RX),
            ("x", Prot::from_bits(4)),
            ("w", Prot::from_bits(2)),
        ] {
            assert_eq!(
                one(&format!("mprotect 0 1p {s}")),
                Statement::Mprotect {
                    addr: num(0),
                    len: P,
                    prot: p
                }
            );
        }
    }

    #[test]
    fn simple_commands() {
        assert_eq!(
            last("munmap $heap 1p"),
            Statement::Munmap {
                addr: var("heap", 0),
                len: P
            }
        );
        assert_eq!(
            last("madvise $heap+1p 2p dontneed"),
            Statement::Madvise {
                addr: var("heap", P as i128),
                len: 2 * P,
                advice: Advice::DontNeed
            }
        );
        assert_eq!(
            one("write 0x1000"),
            Statement::Write {
                addr: num(0x1000),
                len: 1
            }
        );
        assert_eq!(
            one("read 0x1000"),
            Statement::Read {
                addr: num(0x1000),
                len: 1
            }
        );
        assert_eq!(
            one("read 0x1000 3p"),
            Statement::Read {
                addr: num(0x1000),
                len: 3 * P
            }
        );
        assert_eq!(
            one("write 0x1000 0"),
            Statement::Write {
                addr: num(0x1000),
                len: 0
            }
        );
        assert_eq!(
            one("pagemap 0x1000 2p"),
            Statement::Pagemap {
                addr: num(0x1000),
                len: 2 * P
            }
        );
        assert_eq!(one("smaps 4096"), Statement::Smaps(num(4096)));
        assert_eq!(
            one("space child-1.a_b"),
            Statement::Space("child-1.a_b".into())
        );
        assert_eq!(one("fork kid"), Statement::Fork("kid".into()));
        assert_eq!(one("clear_refs 4"), Statement::ClearRefs("4".into()));
        assert_eq!(one("clear_refs abc"), Statement::ClearRefs("abc".into()));
        assert_eq!(one("clear_refs -0x7"), Statement::ClearRefs("-0x7".into()));
    }

    #[test]
    fn mremap_forms() {
        let base = |maymove, fixed, bind| Statement::Mremap {
            addr: var("heap", 0),
            old_len: P,
            new_len: 2 * P,
            maymove,
            fixed,
            bind,
        };
        assert_eq!(last("mremap $heap 1p 2p"), base(false, None, None));
        assert_eq!(last("mremap $heap 1p 2p maymove"), base(true, None, None));
        assert_eq!(
            last("mremap $heap 1p 2p maymove fixed 0x3000 => $b"),
            base(true, Some(num(0x3000)), Some("b".into()))
        );
        assert_eq!(
            last("mremap $heap 1p 2p fixed $a+1p maymove"),
            base(true, Some(var("a", P as i128)), None)
        );
        // The bound name is usable on later lines, and may rebind a name used on its line.
        let t = ok(
            "mmap $a 1p rw\nmremap $a 1p 2p maymove => $a\nmremap $a 2p 3p => $new\nwrite $new\n",
        );
        assert_eq!(
            t.commands[3].node,
            Statement::Write {
                addr: var("new", 0),
                len: 1
            }
        );
    }

    #[test]
    fn scan_forms() {
        let t = last("scan $heap 64p");
        let Statement::Scan(s) = t else {
            panic!("{t:?}")
        };
        assert_eq!(
            s,
            ScanCmd {
                start: var("heap", 0),
                len: 64 * P,
                mask: 0,
                anyof: 0,
                inverted: 0,
                ret: 0,
                clear: false,
                max_pages: 0,
                vec_len: 1024,
            }
        );
        let t = one(
            "scan 0x1000 1p vec_len=0 clear return=softdirty,present mask=0x80,huge \
             anyof=wpallowed,written,file,swapped,pfnzero,guard inverted=0x1_0000 max_pages=7",
        );
        let Statement::Scan(s) = t else {
            panic!("{t:?}")
        };
        assert_eq!(s.ret, (1 << 7) | (1 << 3));
        assert_eq!(s.mask, 0x80 | (1 << 6));
        assert_eq!(s.anyof, 1 | 2 | 4 | 16 | 32 | 256);
        assert_eq!(s.inverted, 0x1_0000);
        assert_eq!(s.max_pages, 7);
        assert_eq!(s.vec_len, 0);
        assert!(s.clear);
    }

    #[test]
    fn expect_forms() {
        let e = |s: &str| match last(s) {
            Statement::Expect(e) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(e("expect err EINVAL"), Expect::Err(Errno::EINVAL));
        assert_eq!(e("expect err EOPNOTSUPP"), Expect::Err(Errno::EOPNOTSUPP));
        assert_eq!(e("expect ok"), Expect::Ok);
        assert_eq!(
            e("expect softdirty $heap 64p 3 7 9..12 4..4"),
            Expect::SoftDirty {
                addr: var("heap", 0),
                len: 64 * P,
                pages: PageSet::List(vec![(3, 4), (7, 8), (9, 12), (4, 4)]),
            }
        );
        assert_eq!(
            e("expect present $heap 64p none"),
            Expect::Present {
                addr: var("heap", 0),
                len: 64 * P,
                pages: PageSet::None
            }
        );
        assert_eq!(
            e("expect present 0x1000 1p all"),
            Expect::Present {
                addr: num(0x1000),
                len: P,
                pages: PageSet::All
            }
        );
        assert_eq!(
            e("expect vmas $heap 64p 2"),
            Expect::Vmas {
                addr: var("heap", 0),
                len: 64 * P,
                count: 2
            }
        );
        assert_eq!(e("expect regions 0x10"), Expect::Regions(16));
        assert_eq!(
            e("expect walk_end $heap+64p"),
            Expect::WalkEnd(var("heap", 64 * P as i128))
        );
        assert_eq!(e("expect faults 3"), Expect::Faults(3));
    }

    #[test]
    fn whitespace_crlf_tabs_comments() {
        let t = ok(concat!(
            "mode sticky\r\n",
            "\twrite\t0x1000  \t2p # comment\r\n",
            "read 0x1000#c\r\n",
            "  # x\r\n",
            "fork a#b\n"
        ));
        assert_eq!(t.mode, Some(Mode::Sticky));
        assert_eq!(t.commands.len(), 3);
        assert_eq!((t.commands[0].line, t.commands[0].col), (2, 2));
        assert_eq!(
            t.commands[0].node,
            Statement::Write {
                addr: num(0x1000),
                len: 2 * P
            }
        );
        assert_eq!(
            t.commands[1].node,
            Statement::Read {
                addr: num(0x1000),
                len: 1
            }
        );
        assert_eq!(t.commands[2].node, Statement::Fork("a".into()));
        // A lone \r (not at the end of a line) is part of a token.
        bad("write 1\r 2\n", 1, 7, "found \"1\\r\"");
        // Columns count characters, not bytes.
        bad("# é\néé write\n", 2, 1, "unknown command \"éé\"");
        bad("write 1 2 é\n", 1, 11, "expected end of line, found \"é\"");
    }

    // ---- one test per malformed-line class ----

    #[test]
    fn err_unknown_command() {
        bad(
            "write 1\nfrobnicate 1 2\n",
            2,
            1,
            "unknown command \"frobnicate\"",
        );
        bad("  mmapp 0 1p rw", 1, 3, "unknown command");
        bad("expect nothing", 1, 8, "expected an expectation");
    }

    #[test]
    fn err_wrong_case_keyword() {
        bad("MMAP 0 1p rw", 1, 1, "did you mean \"mmap\"");
        bad("mmap 0 1p rw FIXED", 1, 14, "keywords are lower case");
        bad("madvise 0 1p DONTNEED", 1, 14, "did you mean \"dontneed\"");
        bad("mode Legacy", 1, 6, "did you mean \"legacy\"");
        bad("munmap 0 16P", 1, 10, "units are p, K, M, G, T");
        bad("munmap 0 64k", 1, 10, "units are p, K, M, G, T");
        bad("scan 0 1p MASK=softdirty", 1, 11, "expected a scan option");
        bad(
            "scan 0 1p mask=SoftDirty",
            1,
            11,
            "unknown category \"SoftDirty\"",
        );
        bad("expect OK", 1, 8, "did you mean \"ok\"");
    }

    #[test]
    fn err_bad_number() {
        bad("write 0x", 1, 7, "no digits after 0x");
        bad("write 1__0", 1, 7, "\"_\" must be between two digits");
        bad("write _1", 1, 7, "\"_\" must be between two digits");
        bad("write 1_", 1, 7, "\"_\" must be between two digits");
        bad("write 0x_1", 1, 7, "\"_\" must be between two digits");
        bad("write 12a", 1, 7, "'a' is not a decimal digit");
        bad("write 0xfg", 1, 7, "'g' is not a hexadecimal digit");
        bad("write 0X10", 1, 7, "lower-case 0x");
        bad("write 1 0x", 1, 9, "expected LEN");
        bad("expect faults 1p", 1, 15, "expected N (a NUMBER)");
        bad("write 1 +1", 1, 9, "'+' is not a decimal digit");
        bad("write +1", 1, 7, "missing NUMBER or $name");
    }

    #[test]
    fn err_u64_overflow() {
        bad("write 18446744073709551616", 1, 7, "overflows 64 bits");
        bad("write 0 0x1_0000_0000_0000_0000", 1, 9, "overflows 64 bits");
        bad(
            "expect present 0 1p 18446744073709551615",
            1,
            21,
            "overflows 64 bits",
        );
        bad(
            "smaps 0xffff_ffff_ffff_ffff+1",
            1,
            7,
            "outside 0..=0xffff_ffff_ffff_ffff",
        );
        bad("smaps 0x1000-0x1001", 1, 7, "outside");
    }

    #[test]
    fn err_unit_overflow() {
        bad(
            "munmap 0 0xffff_ffff_ffff_ffffp",
            1,
            10,
            "overflows 64 bits",
        );
        bad("munmap 0 16777216T", 1, 10, "overflows 64 bits");
        bad("smaps 0+0xffff_ffff_ffff_ffffp", 1, 7, "overflows 64 bits");
    }

    #[test]
    fn err_bad_prot() {
        bad(
            "mmap 0 1p rq",
            1,
            11,
            "expected PROT (none, r, rw, rx, rwx, w, wx, x), found \"rq\"",
        );
        bad("mprotect 0 1p wr", 1, 15, "expected PROT");
        bad("mprotect 0 1p RW", 1, 15, "did you mean \"rw\"");
    }

    #[test]
    fn err_missing_operand() {
        bad("munmap 0x1000", 1, 14, "expected LEN, found end of line");
        bad(
            "munmap 0x1000 # c",
            1,
            14,
            "expected LEN, found end of line",
        );
        bad("mmap 0 1p", 1, 10, "expected PROT");
        bad("mode", 1, 5, "expected MODE");
        bad("smaps", 1, 6, "expected ADDR");
        bad("clear_refs", 1, 11, "expected VALUE");
        bad("expect", 1, 7, "expected an expectation");
        bad("expect err", 1, 11, "expected ERRNO");
        bad("expect softdirty 0 1p", 1, 22, "expected PAGES");
        bad("mremap 0 1p 2p fixed", 1, 21, "expected NEWADDR");
        bad("madvise 0 1p", 1, 13, "expected ADVICE");
        bad("space", 1, 6, "expected NAME");
        bad("fork\t", 1, 5, "expected CHILD");
        bad("scan 0 1p mask=", 1, 11, "empty element");
    }

    #[test]
    fn err_extra_token() {
        bad(
            "munmap 0 1p 2p",
            1,
            13,
            "expected end of line, found \"2p\"",
        );
        bad("write 0 1 2", 1, 11, "expected end of line");
        bad("mode precise legacy", 1, 14, "expected end of line");
        bad("clear_refs 4 4", 1, 14, "expected end of line");
        bad("expect ok now", 1, 11, "expected end of line");
        bad(
            "expect softdirty 0 1p none 3",
            1,
            28,
            "expected end of line",
        );
        bad(
            "expect softdirty 0 1p 3 all",
            1,
            25,
            "\"all\" must be alone",
        );
        bad(
            "mremap 0 1p 2p => $b maymove",
            1,
            22,
            "expected end of line",
        );
        bad("mmap 0 1p rw extra", 1, 14, "expected a flag");
        bad("madvise 0 1p dontneed x", 1, 23, "expected end of line");
        bad("space a b", 1, 9, "expected end of line");
    }

    #[test]
    fn err_bad_cats_element() {
        bad("scan 0 1p mask=softdirty,,present", 1, 11, "empty element");
        bad("scan 0 1p mask=softdirty,", 1, 11, "empty element");
        bad("scan 0 1p anyof=dirty", 1, 11, "unknown category \"dirty\"");
        bad(
            "scan 0 1p return=0x1_",
            1,
            11,
            "\"_\" must be between two digits",
        );
        bad("scan 0 1p max_pages=1p", 1, 11, "expected max_pages=N");
        bad("scan 0 1p clear=1", 1, 11, "it takes no value");
        bad("scan 0 1p vec_len", 1, 11, "it needs a value");
    }

    #[test]
    fn err_duplicate_option() {
        bad(
            "scan 0 1p mask=1 clear mask=2",
            1,
            24,
            "duplicate option \"mask\"",
        );
        bad("scan 0 1p clear clear", 1, 17, "duplicate option \"clear\"");
        bad(
            "mmap 0 1p rw fixed fixed",
            1,
            20,
            "duplicate flag \"fixed\"",
        );
        bad(
            "mmap 0 1p rw shared fixed shared",
            1,
            27,
            "duplicate flag \"shared\"",
        );
        bad(
            "mremap 0 1p 2p maymove maymove",
            1,
            24,
            "duplicate option \"maymove\"",
        );
        bad(
            "mremap 0 1p 2p fixed 0 fixed 1",
            1,
            24,
            "duplicate option \"fixed\"",
        );
    }

    #[test]
    fn err_conflicting_flags() {
        bad(
            "mmap 0 1p rw private shared",
            1,
            22,
            "conflicting flags \"private\" and \"shared\"",
        );
        bad(
            "mmap 0 1p rw noreplace fixed",
            1,
            24,
            "conflicting flags \"noreplace\" and \"fixed\"",
        );
    }

    #[test]
    fn err_mode_not_first() {
        bad(
            "write 1\nmode precise\n",
            2,
            1,
            "only allowed as the first command",
        );
        bad(
            "mode precise\nmode precise\n",
            2,
            1,
            "only allowed as the first command",
        );
    }

    #[test]
    fn err_unknown_mode() {
        bad("# c\nmode fast\n", 2, 6, "unknown mode");
    }

    #[test]
    fn err_unbound_name() {
        bad("write $x", 1, 7, "unbound name $x");
        bad(
            "mmap $heap 1p rw\nwrite $heapx+1p",
            2,
            7,
            "unbound name $heapx",
        );
        // `fixed`/`noreplace` and offsets make mmap's ADDR a use.
        bad("mmap $x 1p rw fixed", 1, 6, "unbound name $x");
        bad("mmap $x+1p 1p rw", 1, 6, "unbound name $x");
        // The name is bound only for later lines.
        bad("mremap $b 1p 2p => $b", 1, 8, "unbound name $b");
        bad(
            "mmap $a 1p rw\nmremap $a 1p 2p fixed $c",
            2,
            23,
            "unbound name $c",
        );
        bad("expect walk_end $z", 1, 17, "unbound name $z");
        // A binding on a line that fails is not made (the parse stops anyway), and
        // bad name syntax is reported as such.
        bad("write $", 1, 7, "missing name after \"$\"");
        bad("write $a.b", 1, 7, "'.' is not allowed in a name");
        bad(
            "mmap $a 1p rw\nwrite $a+1p+1p",
            2,
            7,
            "only one +SIZE or -SIZE offset",
        );
        bad("mmap $a 1p rw\nwrite $a+", 2, 7, "offset: empty");
    }

    #[test]
    fn err_bad_pages() {
        bad(
            "expect softdirty 0 1p 1 5..3",
            1,
            25,
            "the range start is after its end",
        );
        bad("expect softdirty 0 1p 1..", 1, 23, "range end: empty");
        bad("expect softdirty 0 1p ..2", 1, 23, "range start: empty");
        bad("expect softdirty 0 1p 1...2", 1, 23, "range end");
        bad("expect present 0 1p some", 1, 21, "expected PAGES");
    }

    #[test]
    fn err_unknown_errno() {
        bad("expect err EWHATEVER", 1, 12, "unknown errno");
        bad("expect err einval", 1, 12, "did you mean \"EINVAL\"");
        bad("expect err 22", 1, 12, "unknown errno");
    }

    #[test]
    fn err_arrow_without_name() {
        bad(
            "mremap 0 1p 2p =>",
            1,
            18,
            "expected $name after \"=>\", found end of line",
        );
        bad(
            "mremap 0 1p 2p => b",
            1,
            19,
            "expected $name after \"=>\", found \"b\"",
        );
        bad("mremap 0 1p 2p => $", 1, 19, "missing name after \"$\"");
        bad("mremap 0 1p 2p =>$b", 1, 16, "expected an option");
    }

    #[test]
    fn err_bad_names() {
        bad("space a/b", 1, 7, "'/' is not allowed");
        bad("fork $x", 1, 6, "'$' is not allowed");
    }

    #[test]
    fn err_invalid_utf8() {
        let e = parse_bytes(b"write 0x1000\n\xff\n").unwrap_err();
        assert_eq!((e.line, e.col), (2, 1), "{e}");
        assert!(e.message.contains("UTF-8"), "{e}");
        let e = parse_bytes(b"write 0x1000\nfork \xc3\xa9\xc3\xa9\xc3 # \n").unwrap_err();
        assert_eq!((e.line, e.col), (2, 8), "{e}");
        assert!(e.message.contains("0xc3"), "{e}");
        // The first error of the file wins, whatever its kind.
        let e = parse_bytes(b"bogus\n\xff\n").unwrap_err();
        assert_eq!((e.line, e.col), (1, 1), "{e}");
        assert_eq!(parse_bytes(b"write 1\r\n").map(|t| t.commands.len()), Ok(1));
    }

    #[test]
    fn err_control_bytes() {
        let e = parse_bytes(b"write 0x1000\nwr\0ite 1\n").unwrap_err();
        assert_eq!((e.line, e.col), (2, 3), "{e}");
        assert!(e.message.contains("control byte 0x00"), "{e}");
        // In a comment too, and DEL; columns count characters.
        bad("write 1 # \u{1b}[0m", 1, 11, "control byte 0x1b");
        bad("\u{e9}\u{7f}", 1, 2, "control byte 0x7f");
        // Tab and carriage returns are not control bytes here (a lone \r is a token's).
        assert_eq!(parse("\twrite 1\r\n").map(|t| t.commands.len()), Ok(1));
        // The first offending byte of the line wins.
        let e = parse_bytes(b"\xff\x01").unwrap_err();
        assert!(e.message.contains("UTF-8"), "{e}");
        let e = parse_bytes(b"\x01\xff").unwrap_err();
        assert!(e.message.contains("control"), "{e}");
    }

    #[test]
    fn err_line_too_long() {
        let max = "#".repeat(MAX_LINE_BYTES);
        assert_eq!(
            parse(&format!("{max}\nwrite 1")).map(|t| t.commands.len()),
            Ok(1)
        );
        bad(
            &format!("write 1\n{max}#"),
            2,
            MAX_LINE_BYTES + 1,
            "line too long",
        );
        // Columns are characters; a character cut by the limit starts the excess.
        let e = parse(&format!("{}\u{e9}", "#".repeat(MAX_LINE_BYTES - 1))).unwrap_err();
        assert_eq!((e.line, e.col), (1, MAX_LINE_BYTES), "{e}");
        assert!(e.message.contains("line too long"), "{e}");
        // An invalid byte before the limit is reported first.
        let mut b = vec![b'#'; MAX_LINE_BYTES + 10];
        b[5] = 0xff;
        let e = parse_bytes(&b).unwrap_err();
        assert_eq!((e.line, e.col), (1, 6), "{e}");
    }

    /// A reader that fails the test if more than `limit` bytes are read from it.
    struct Endless {
        byte: u8,
        read: usize,
        limit: usize,
    }

    impl std::io::Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.read += buf.len();
            assert!(self.read <= self.limit, "read {} bytes", self.read);
            buf.fill(self.byte);
            Ok(buf.len())
        }
    }

    #[test]
    fn reader_stops_at_the_bad_line() {
        for (byte, col, msg) in [
            (0u8, 1, "control byte 0x00"),
            (0xff, 1, "UTF-8"),
            (b'#', MAX_LINE_BYTES + 1, "line too long"),
        ] {
            let src = std::io::BufReader::new(Endless {
                byte,
                read: 0,
                limit: MAX_LINE_BYTES + 16 * 1024,
            });
            let mut r = StatementReader::new(src);
            match r.next() {
                Some(Err(ReadError::Parse(e))) => {
                    assert_eq!((e.line, e.col), (1, col), "{e}");
                    assert!(e.message.contains(msg), "{e}");
                }
                other => panic!("{other:?}"),
            }
            assert!(r.next().is_none());
        }
    }

    #[test]
    fn reader_rewinds() {
        let text = "mode legacy\nmmap $a 1p rw\nexpect ok\n\nexpect err EINVAL\nwrite $a\n";
        let mut r = StatementReader::new(std::io::Cursor::new(text.as_bytes()));
        let first = r.next().and_then(Result::ok).map(|s| s.line);
        assert_eq!((first, r.mode()), (Some(2), Some(Mode::Legacy)));
        let cp = r.checkpoint();
        let lines: Vec<usize> = (&mut r).map(|s| s.map(|s| s.line).unwrap_or(0)).collect();
        assert_eq!(lines, [3, 5, 6]);
        r.rewind(cp).unwrap();
        assert_eq!(r.next().and_then(Result::ok).map(|s| s.line), Some(3));
    }

    /// The statements and the error of a [`StatementReader`] over `bytes`, read through a
    /// tiny buffer so that lines straddle refills.
    fn streamed(bytes: &[u8]) -> Result<Trace, ParseError> {
        let mut r = StatementReader::new(std::io::BufReader::with_capacity(3, bytes));
        let mut commands = Vec::new();
        for s in &mut r {
            match s {
                Ok(s) => commands.push(s),
                Err(ReadError::Parse(e)) => return Err(e),
                Err(ReadError::Io(e)) => panic!("{e}"),
            }
        }
        Ok(Trace {
            mode: r.mode(),
            commands,
        })
    }

    #[test]
    fn shipped_traces_stream() {
        for (name, text) in TRACES {
            assert_eq!(streamed(text.as_bytes()), parse(text), "{name}");
        }
    }

    // ---- properties ----

    const VOCAB: &[&str] = &[
        "mode",
        "precise",
        "legacy",
        "mmap",
        "munmap",
        "mprotect",
        "mremap",
        "madvise",
        "write",
        "read",
        "clear_refs",
        "pagemap",
        "scan",
        "smaps",
        "space",
        "fork",
        "expect",
        "err",
        "ok",
        "softdirty",
        "present",
        "vmas",
        "regions",
        "walk_end",
        "faults",
        "EINVAL",
        "EEXIST",
        "private",
        "shared",
        "fixed",
        "noreplace",
        "maymove",
        "dontneed",
        "none",
        "all",
        "r",
        "rw",
        "rwx",
        "wr",
        "$a",
        "$b",
        "$",
        "$a+3p",
        "$a-1p",
        "+3p",
        "-1p",
        "+",
        "=>",
        "0",
        "1",
        "4",
        "0x",
        "0x10_0000_0000",
        "0xffff_ffff_ffff_ffff",
        "64p",
        "4K",
        "1M",
        "16T",
        "1__0",
        "_",
        "..",
        "3..7",
        "7..3",
        "5",
        "mask=",
        "softdirty,present",
        "anyof=",
        "return=",
        "inverted=",
        "clear",
        "max_pages=",
        "vec_len=",
        ",",
        "=",
        "#",
        "é",
        "\u{1F600}",
        "\r",
        "p",
        "K",
    ];

    fn vocab_text() -> impl Strategy<Value = String> {
        let tok = prop::sample::select(VOCAB);
        let sep = prop::sample::select(&[" ", " ", " ", "", "\t", "\n", "\n", "\r\n"][..]);
        prop::collection::vec((tok, sep), 0..48)
            .prop_map(|v| v.into_iter().map(|(t, s)| format!("{t}{s}")).collect())
    }

    /// Lines that are mostly well-formed, so that parsing goes deep into later lines.
    fn plausible_text() -> impl Strategy<Value = String> {
        let line = prop::sample::select(
            &[
                "mmap $a 64p rw",
                "mmap $b 1p r shared",
                "mmap $a+1p 2p rw fixed",
                "mremap $a 1p 2p maymove => $b",
                "mremap $b 1p 2p fixed $a+2p maymove",
                "write $a+3p 2p",
                "read $b",
                "scan $a 64p mask=softdirty return=softdirty,present clear vec_len=0",
                "expect softdirty $a 64p 3 5..9",
                "expect err EEXIST",
                "expect walk_end $b+1p",
                "clear_refs 4",
                "fork kid",
                "space kid",
                "mode precise",
                "# comment",
                "",
                "munmap 0x10_0000_0000+3p 1p",
            ][..],
        );
        prop::collection::vec(line, 0..24).prop_map(|v| v.join("\n"))
    }

    fn check(text: &str) {
        let r = parse(text);
        assert_eq!(parse_bytes(text.as_bytes()), r);
        assert_eq!(streamed(text.as_bytes()), r);
        if let Err(e) = r {
            let lines: Vec<&str> = text.split('\n').collect();
            assert!(e.line >= 1 && e.line <= lines.len(), "{e}");
            let len = lines[e.line - 1].chars().count();
            assert!(e.col >= 1 && e.col <= len + 1, "{e}");
            assert!(!e.message.is_empty());
        }
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_bytes(&bytes);
        }

        #[test]
        fn streaming_agrees_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            prop_assert_eq!(streamed(&bytes), parse_bytes(&bytes));
        }

        #[test]
        fn vocabulary_never_panics(text in vocab_text()) {
            check(&text);
        }

        #[test]
        fn plausible_lines(text in plausible_text()) {
            check(&text);
            if let Ok(t) = parse(&text) {
                let n = text.split('\n').filter(|l| !l.is_empty() && !l.starts_with('#')).count();
                prop_assert_eq!(t.commands.len() + usize::from(t.mode.is_some()), n);
            }
        }

        #[test]
        fn numbers_round_trip(n in any::<u64>(), hex in any::<bool>()) {
            let s = if hex { format!("{n:#x}") } else { n.to_string() };
            prop_assert_eq!(number(&s), Ok(n));
            prop_assert_eq!(size(&s), Ok(n));
        }
    }
}
