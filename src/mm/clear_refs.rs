//! `/proc/PID/clear_refs`: the value's parsing (`kstrtoint`) and the soft-dirty clear
//! (with nomerge's merge of newly compatible neighbours).

use super::layout::Layout;
use super::AddressSpace;
use crate::epoch;
use crate::errno::{Errno, Result};
use crate::mode::Mode;
use crate::regions::NonSdRegions;
use crate::sync::lock;

impl AddressSpace {
    /// Writes `value` to `/proc/PID/clear_refs`, parsed as the kernel parses it (at most 12
    /// bytes, whitespace stripped, `kstrtoint` base 10). `4` clears soft-dirty on the whole
    /// space; 1, 2, 3 and 5 have no effect on soft-dirty; anything else fails.
    pub fn clear_refs_str(&self, value: &str) -> Result<()> {
        let bytes = value.as_bytes();
        let b = &bytes[..bytes.len().min(12)];
        let s = std::str::from_utf8(b).map_err(|_| Errno::EINVAL)?.trim();
        let v = parse_kstrtoint(s)?;
        self.clear_refs(v)
    }

    /// `clear_refs` with an integer value.
    pub fn clear_refs(&self, value: i32) -> Result<()> {
        match value {
            1 | 2 | 3 | 5 => Ok(()),
            4 => {
                self.clear_soft_dirty();
                Ok(())
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn clear_soft_dirty(&self) {
        let _ctl = lock(&self.control);
        let guard = epoch::pin();
        let idx = self.index(&guard);
        let mut flags = false;
        for v in idx.iter() {
            v.bitmap.clear_all();
            flags |= v.meta.flags.softdirty;
            // Regions: the list must become the one region `[vm_start, vm_end)`.
            flags |= self.mode == Mode::Regions && v.nsdr.is_vma_sd(v.start, v.end);
        }
        if flags || self.mode == Mode::Nomerge {
            let mut l = Layout::from_index(self.mode, idx, &self.accounting);
            l.load_all();
            for w in &mut l.vmas {
                w.meta.flags.softdirty = false;
                if self.mode == Mode::Regions {
                    w.nsdr = NonSdRegions::whole(w.start, w.end);
                }
            }
            if self.mode == Mode::Nomerge {
                l.merge_compatible_neighbours();
            }
            self.publish(l, &guard);
        }
    }
}

/// The kernel's `kstrtoint(s, 10)`: optional sign, decimal digits, fits `i32`; one
/// trailing newline is accepted. EINVAL on bad syntax, ERANGE on overflow.
pub fn parse_kstrtoint(s: &str) -> Result<i32> {
    let s = s.strip_suffix('\n').unwrap_or(s);
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Errno::EINVAL);
    }
    let mut v: i64 = 0;
    for b in digits.bytes() {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(b - b'0')))
            .ok_or(Errno::ERANGE)?;
        if v > i64::from(i32::MAX) + 1 {
            return Err(Errno::ERANGE);
        }
    }
    let v = if neg { -v } else { v };
    i32::try_from(v).map_err(|_| Errno::ERANGE)
}

impl Layout {
    /// Hildenbrand's "merge after clear_refs" (nomerge mode): merge every pair of adjacent
    /// VMAs that are now compatible.
    /// One pass, linear in the VMAs.
    pub(crate) fn merge_compatible_neighbours(&mut self) {
        let mut out: Vec<super::layout::WVma> = Vec::with_capacity(self.vmas.len());
        for b in std::mem::take(&mut self.vmas) {
            let Some(a) = out.last_mut() else {
                out.push(b);
                continue;
            };
            let ok = a.end == b.start
                && a.meta.flags == b.meta.flags
                && a.meta.file == b.meta.file
                && a.meta.pgoff + a.pages() == b.meta.pgoff
                && (a.anon == 0 || b.anon == 0 || a.anon == b.anon)
                && !(a.anon == 0 && b.anon != 0 && b.meta.forked)
                && !(b.anon == 0 && a.anon != 0 && a.meta.forked);
            if ok {
                a.end = b.end;
                a.pieces.extend(b.pieces);
                if a.anon == 0 {
                    a.anon = b.anon;
                    a.meta.forked = b.meta.forked;
                }
            } else {
                out.push(b);
            }
        }
        self.vmas = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kstrtoint_like_the_kernel() {
        assert_eq!(parse_kstrtoint("4"), Ok(4));
        assert_eq!(parse_kstrtoint("+4"), Ok(4));
        assert_eq!(parse_kstrtoint("-1"), Ok(-1));
        assert_eq!(parse_kstrtoint("4\n"), Ok(4));
        assert_eq!(parse_kstrtoint("0x4"), Err(Errno::EINVAL));
        assert_eq!(parse_kstrtoint("abc"), Err(Errno::EINVAL));
        assert_eq!(parse_kstrtoint(""), Err(Errno::EINVAL));
        assert_eq!(parse_kstrtoint("99999999999"), Err(Errno::ERANGE));
    }
}
