//! Sorted, disjoint page ranges as the harvest returns them, and the set arithmetic the
//! migration does on them: page counts, difference, intersection, union.

use crate::workload::PAGE;

/// Sorted, disjoint `(start, end)` address ranges.
pub(super) type Ranges = Vec<(u64, u64)>;

/// Pages in sorted ranges.
pub(super) fn pages(r: &[(u64, u64)]) -> u64 {
    r.iter().map(|(s, e)| (e - s) / PAGE).sum()
}

/// Pages of `a` not in `b` (both sorted, disjoint ranges).
pub(super) fn minus(a: &[(u64, u64)], b: &[(u64, u64)]) -> u64 {
    let mut n = 0;
    let mut j = 0;
    for &(s, e) in a {
        let mut cur = s;
        while j < b.len() && b[j].1 <= cur {
            j += 1;
        }
        let mut k = j;
        while cur < e {
            match b.get(k) {
                Some(&(bs, be)) if bs < e => {
                    if bs > cur {
                        n += (bs - cur) / PAGE;
                    }
                    cur = cur.max(be);
                    k += 1;
                }
                _ => {
                    n += (e - cur) / PAGE;
                    cur = e;
                }
            }
        }
    }
    n
}

/// Pages of `a` inside `b`.
pub(super) fn within(a: &[(u64, u64)], b: &[(u64, u64)]) -> u64 {
    pages(a) - minus(a, b)
}

/// Union of sorted range lists.
pub(super) fn union(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut all: Vec<(u64, u64)> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(all.len());
    for (s, e) in all {
        match out.last_mut() {
            Some(l) if s <= l.1 => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}
