//! Reading `/proc/PID/maps` and `/proc/PID/smaps` (of this process, or of a puppet).

use std::io;

/// One VMA of `/proc/PID/maps`: `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapsEntry {
    /// first address
    pub start: u64,
    /// end address (exclusive)
    pub end: u64,
    /// mapped with `PROT_WRITE` (`w` in the permissions)
    pub writable: bool,
    /// `MAP_SHARED` (`s` in the permissions)
    pub shared: bool,
    /// the byte offset in the mapped file
    pub offset: u64,
    /// the mapped file: (device major, device minor, inode); inode 0 for anonymous memory
    pub file: (u32, u32, u64),
}

/// Parses `START-END` at the beginning of a maps/smaps header line.
fn parse_range(line: &str) -> Option<(u64, u64)> {
    let tok = line.split_ascii_whitespace().next()?;
    let (a, b) = tok.split_once('-')?;
    let a = u64::from_str_radix(a, 16).ok()?;
    let b = u64::from_str_radix(b, 16).ok()?;
    Some((a, b))
}

/// `/proc/PID/NAME`, or `/proc/self/NAME` without a pid.
pub fn path(pid: Option<i32>, name: &str) -> String {
    match pid {
        Some(p) => format!("/proc/{p}/{name}"),
        None => format!("/proc/self/{name}"),
    }
}

/// Every VMA of process `pid` (this process if `None`), in address order.
pub fn maps(pid: Option<i32>) -> io::Result<Vec<MapsEntry>> {
    let text = std::fs::read_to_string(path(pid, "maps"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (start, end) = parse_range(l)?;
            let mut f = l.split_ascii_whitespace().skip(1);
            let perms = f.next().unwrap_or("");
            let offset = u64::from_str_radix(f.next().unwrap_or("0"), 16).unwrap_or(0);
            let (maj, min) = f
                .next()
                .unwrap_or("0:0")
                .split_once(':')
                .unwrap_or(("0", "0"));
            let inode = f.next().unwrap_or("0").parse().unwrap_or(0);
            Some(MapsEntry {
                start,
                end,
                writable: perms.as_bytes().get(1) == Some(&b'w'),
                shared: perms.as_bytes().get(3) == Some(&b's'),
                offset,
                file: (
                    u32::from_str_radix(maj, 16).unwrap_or(0),
                    u32::from_str_radix(min, 16).unwrap_or(0),
                    inode,
                ),
            })
        })
        .collect())
}

/// The `VmFlags:` line (as printed, without the newline) of the VMA containing `addr`;
/// `None` if no VMA contains it. Of process `pid` (this process if `None`).
pub fn smaps_vmflags(pid: Option<i32>, addr: u64) -> io::Result<Option<String>> {
    let text = std::fs::read_to_string(path(pid, "smaps"))?;
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("VmFlags:") {
            if inside {
                return Ok(Some(line.to_string()));
            }
            continue;
        }
        // A header line starts with a hex range; field lines start with `Name:`.
        if let Some((s, e)) = parse_range(line) {
            if !line
                .split_ascii_whitespace()
                .next()
                .unwrap_or("")
                .ends_with(':')
            {
                inside = s <= addr && addr < e;
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_lines() {
        assert_eq!(
            parse_range("7f0000000000-7f0000001000 rw-p 00000000 00:00 0"),
            Some((0x7f00_0000_0000, 0x7f00_0000_1000))
        );
        assert_eq!(parse_range("Rss:                   4 kB"), None);
        assert!(!maps(None).unwrap().is_empty());
    }
}
