//! Output paths of the subcommands: `-` is stdout wherever a path is taken, a plot's path
//! must name an `.svg` file (SVG is what the charts are), and every path is opened for
//! writing before any work so that an unwritable one fails at once.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Whether `p` is `-` (stdout).
pub fn is_stdout(p: &Path) -> bool {
    p.as_os_str() == "-"
}

/// Parses a `--plot` path: `-` (stdout) or a file name ending in `.svg`.
pub fn parse_svg_path(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if s == "-" {
        return Ok(p);
    }
    match p.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("svg") => Ok(p),
        _ => Err(format!(
            "`{s}`: the chart is written as SVG, so the file name must end in .svg (or be `-` for stdout)"
        )),
    }
}

/// Checks that `p` can be written, before any work: opens it for writing (creating it,
/// without truncating it); `-` always can.
pub fn check_writable(flag: &str, p: &Path) -> Result<(), String> {
    if is_stdout(p) {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)
        .map(drop)
        .map_err(|e| format!("{flag} {}: cannot write: {e}", p.display()))
}

/// Can `p` be written later, without creating or changing it now (an output written only
/// on failure, such as `fuzz --out`)? An existing file must open for writing; a new one
/// needs a writable directory.
pub fn check_creatable(flag: &str, p: &Path) -> Result<(), String> {
    if is_stdout(p) {
        return Ok(());
    }
    if p.exists() {
        return std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .map(drop)
            .map_err(|e| format!("{flag} {}: cannot write: {e}", p.display()));
    }
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "{flag} {}: cannot write: {} is not a directory",
            p.display(),
            dir.display()
        ));
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{flag} {}: a NUL in the path", p.display()))?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call; access(2) only reads it.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        return Err(format!(
            "{flag} {}: cannot write: {}: {}",
            p.display(),
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Writes `text` to `p`, or to stdout when `p` is `-`.
pub fn write_text(p: &Path, text: &str) -> Result<(), String> {
    if is_stdout(p) {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| format!("stdout: {e}"))
    } else {
        std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()))
    }
}
