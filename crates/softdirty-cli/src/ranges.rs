//! Sorted, disjoint page ranges as a harvest returns them, and the set arithmetic the
//! migration (`run`) and the comparison (`compare`) do on them: page counts, difference,
//! intersection, clipping, union.

use crate::workload::PAGE;

/// Sorted, disjoint `(start, end)` address ranges.
pub(crate) type Ranges = Vec<(u64, u64)>;

/// Pages in sorted ranges.
pub(crate) fn pages(r: &[(u64, u64)]) -> u64 {
    r.iter().map(|(s, e)| (e - s) / PAGE).sum()
}

/// `a` without `b` (both sorted, disjoint ranges).
pub(crate) fn difference(a: &[(u64, u64)], b: &[(u64, u64)]) -> Ranges {
    let mut out = Vec::new();
    let mut j = 0;
    for &(s, e) in a {
        let mut cur = s;
        while j < b.len() && b[j].1 <= cur {
            j += 1;
        }
        let mut k = j;
        while cur < e && k < b.len() && b[k].0 < e {
            if b[k].0 > cur {
                out.push((cur, b[k].0));
            }
            cur = cur.max(b[k].1);
            k += 1;
        }
        if cur < e {
            out.push((cur, e));
        }
    }
    out
}

/// Pages of `a` not in `b` (both sorted, disjoint ranges).
pub(crate) fn minus(a: &[(u64, u64)], b: &[(u64, u64)]) -> u64 {
    pages(&difference(a, b))
}

/// `a` clipped to `[s, e)`.
pub(crate) fn clip(a: &[(u64, u64)], s: u64, e: u64) -> Ranges {
    a.iter()
        .filter(|r| r.0 < e && s < r.1)
        .map(|r| (r.0.max(s), r.1.min(e)))
        .collect()
}

/// Pages of `a` inside `b`.
pub(crate) fn within(a: &[(u64, u64)], b: &[(u64, u64)]) -> u64 {
    pages(a) - minus(a, b)
}

/// Union of sorted range lists.
pub(crate) fn union(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE;

    #[test]
    fn set_arithmetic_counts_pages() {
        let a = [(0, 4 * P), (8 * P, 10 * P)];
        let b = [(2 * P, 9 * P)];
        assert_eq!(pages(&a), 6);
        assert_eq!(within(&a, &b), 3);
        assert_eq!(difference(&a, &b), vec![(0, 2 * P), (9 * P, 10 * P)]);
        assert_eq!(minus(&a, &b), 3);
        assert_eq!(clip(&a, 3 * P, 9 * P), vec![(3 * P, 4 * P), (8 * P, 9 * P)]);
        assert_eq!(union(&a, &b), vec![(0, 10 * P)]);
    }
}

/// `a` rounded up to a page boundary (saturating at the last page).
pub(crate) fn page_up(a: u64) -> u64 {
    a.saturating_add(PAGE - 1) & !(PAGE - 1)
}
