//! `scan ... clear` on the soft-dirty flavour, emulated exactly where that is possible.
//!
//! The trace's `clear` is the model's get-and-clear of soft-dirty on the pages the scan
//! reports. A kernel with CONFIG_MEM_SOFT_DIRTY has no such call: PAGEMAP_SCAN's
//! `PM_SCAN_WP_MATCHING` acts only on memory registered with userfaultfd (it skips every
//! other VMA: no regions, nothing cleared), and `clear_refs 4` clears the whole process.
//! So the backend scans without `PM_SCAN_WP_MATCHING` (the regions the trace asked for),
//! notes which other pages of the trace's mappings are soft-dirty, writes
//! `/proc/self/clear_refs`, and dirties each of those pages again with a store of the byte
//! it holds. [`plan`] decides whether that is exact, and which pages to store to; where it
//! is not exact the backend does not clear, and the replay reports the scan, and every
//! soft-dirty observation until the next `clear_refs 4`, as skipped with the reason.
//!
//! Memory the trace did not map (the replaying process's heap, stacks, libraries) loses
//! its soft-dirty bits, as with a `clear_refs 4` in the trace: the trace does not model it,
//! and the backend never stores to it.

/// Sorted, disjoint, page-aligned address runs `[start, end)`.
pub type Runs = Vec<(u64, u64)>;

/// One VMA of the trace's mappings, as the emulation sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackedVma {
    /// first address
    pub start: u64,
    /// end address (exclusive)
    pub end: u64,
    /// mapped with `PROT_WRITE`
    pub writable: bool,
    /// `VM_SOFTDIRTY` is set (`sd` in its smaps `VmFlags`)
    pub vm_softdirty: bool,
}

/// The trace's mappings just before the clear.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Before {
    /// the VMAs of the trace's mappings, in address order
    pub vmas: Vec<TrackedVma>,
    /// their soft-dirty pages (pagemap bit 55)
    pub soft_dirty: Runs,
    /// their present pages
    pub present: Runs,
    /// their pages mapping the shared zero page (`PAGE_IS_PFNZERO`)
    pub zero_pfn: Runs,
}

/// Sorts and merges runs (dropping empty ones).
pub fn normalize(v: &[(u64, u64)]) -> Runs {
    let mut v: Runs = v.iter().copied().filter(|(a, b)| a < b).collect();
    v.sort_unstable();
    let mut out: Runs = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(l) if a <= l.1 => l.1 = l.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// `a ∩ b`.
pub fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Runs {
    let (a, b) = (normalize(a), normalize(b));
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (s, e) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        if s < e {
            out.push((s, e));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// `a ∖ b`.
pub fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Runs {
    let b = normalize(b);
    let mut out = Vec::new();
    for (s, e) in normalize(a) {
        let mut cur = s;
        for &(bs, be) in b.iter().filter(|(bs, be)| *bs < e && *be > s) {
            if bs > cur {
                out.push((cur, bs));
            }
            cur = cur.max(be);
        }
        if cur < e {
            out.push((cur, e));
        }
    }
    out
}

/// Whether clearing soft-dirty on exactly the pages `cleared` (the regions the scan
/// reported) can be emulated with `clear_refs 4` and stores, for the trace's mappings in
/// the state `before`. `Ok`: the runs of pages to store to after `clear_refs 4` (every
/// soft-dirty page of the trace's mappings that the scan did not report); `Err`: why the
/// emulation would not be exact.
pub fn plan(before: &Before, cleared: &[(u64, u64)]) -> Result<Runs, String> {
    let owned = normalize(
        &before
            .vmas
            .iter()
            .map(|v| (v.start, v.end))
            .collect::<Vec<_>>(),
    );
    if let Some(&(s, e)) = subtract(cleared, &owned).first() {
        return Err(format!(
            "the scan reports {s:#x}-{e:#x}, memory the trace did not map, where the backend \
             does not store"
        ));
    }
    if let Some(v) = before.vmas.iter().find(|v| v.vm_softdirty) {
        return Err(format!(
            "the VMA {:#x}-{:#x} has VM_SOFTDIRTY, which clear_refs clears and no store sets \
             again",
            v.start, v.end
        ));
    }
    let keep = subtract(&before.soft_dirty, cleared);
    if let Some(&(s, _)) = subtract(&keep, &before.present).first() {
        return Err(format!(
            "the soft-dirty page {s:#x}, which the scan does not report, is not present: a \
             store would fault it in"
        ));
    }
    let writable: Runs = before
        .vmas
        .iter()
        .filter(|v| v.writable)
        .map(|v| (v.start, v.end))
        .collect();
    if let Some(&(s, _)) = subtract(&keep, &writable).first() {
        return Err(format!(
            "the soft-dirty page {s:#x}, which the scan does not report, is in a VMA without \
             PROT_WRITE: no store can dirty it again"
        ));
    }
    if let Some(&(s, _)) = intersect(&keep, &before.zero_pfn).first() {
        return Err(format!(
            "the soft-dirty page {s:#x}, which the scan does not report, maps the zero page: a \
             store would replace it"
        ));
    }
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 4096;
    const B: u64 = 0x50_0000_0000;

    fn p(n: u64) -> u64 {
        B + n * P
    }
    fn r(a: u64, b: u64) -> (u64, u64) {
        (p(a), p(b))
    }
    fn vma(a: u64, b: u64, writable: bool) -> TrackedVma {
        TrackedVma {
            start: p(a),
            end: p(b),
            writable,
            vm_softdirty: false,
        }
    }

    #[test]
    fn run_arithmetic() {
        assert_eq!(
            normalize(&[r(4, 6), r(0, 2), r(1, 3), r(3, 3)]),
            vec![r(0, 3), r(4, 6)]
        );
        assert_eq!(
            intersect(&[r(0, 4), r(6, 9)], &[r(2, 7)]),
            vec![r(2, 4), r(6, 7)]
        );
        assert_eq!(
            subtract(&[r(0, 10)], &[r(2, 3), r(5, 7)]),
            vec![r(0, 2), r(3, 5), r(7, 10)]
        );
        assert_eq!(subtract(&[r(0, 2)], &[r(0, 4)]), vec![]);
    }

    /// Pages 0..8 rw, 8..12 rw, all written then partly cleared.
    fn written() -> Before {
        Before {
            vmas: vec![vma(0, 8, true), vma(8, 12, true)],
            soft_dirty: vec![r(0, 3), r(5, 10)],
            present: vec![r(0, 12)],
            zero_pfn: vec![],
        }
    }

    #[test]
    fn plans_the_pages_to_dirty_again() {
        // The scan reports 2..6: pages 0, 1 and 6..10 stay soft-dirty.
        assert_eq!(plan(&written(), &[r(2, 6)]), Ok(vec![r(0, 2), r(6, 10)]));
        // Reported pages that are not soft-dirty change nothing.
        assert_eq!(plan(&written(), &[r(3, 5)]), Ok(vec![r(0, 3), r(5, 10)]));
        // Everything reported: nothing to store to.
        assert_eq!(plan(&written(), &[r(0, 12)]), Ok(vec![]));
        assert_eq!(plan(&Before::default(), &[]), Ok(vec![]));
    }

    #[test]
    fn refuses_what_a_store_cannot_restore() {
        // A kept soft-dirty page in a read-only or PROT_NONE VMA.
        let mut b = written();
        b.vmas[1].writable = false;
        let e = plan(&b, &[r(0, 8)]).unwrap_err();
        assert!(
            e.contains(&format!("{:#x}", p(8))) && e.contains("PROT_WRITE"),
            "{e}"
        );
        assert!(
            plan(&b, &[r(0, 12)]).is_ok(),
            "all of it reported: nothing to store"
        );
        // A kept soft-dirty page that is not present.
        let mut b = written();
        b.present = vec![r(0, 6), r(7, 12)];
        let e = plan(&b, &[r(0, 3)]).unwrap_err();
        assert!(
            e.contains(&format!("{:#x}", p(6))) && e.contains("not present"),
            "{e}"
        );
        assert!(plan(&b, &[r(6, 7)]).is_ok());
        // A kept soft-dirty page mapping the zero page.
        let mut b = written();
        b.zero_pfn = vec![r(9, 10)];
        assert!(plan(&b, &[r(0, 3)]).unwrap_err().contains("zero page"));
        assert!(plan(&b, &[r(9, 10)]).is_ok());
        // VM_SOFTDIRTY on any of the trace's VMAs.
        let mut b = written();
        b.vmas[1].vm_softdirty = true;
        assert!(plan(&b, &[r(0, 12)]).unwrap_err().contains("VM_SOFTDIRTY"));
        // A reported region outside the trace's mappings.
        let e = plan(&written(), &[r(10, 14)]).unwrap_err();
        assert!(
            e.contains(&format!("{:#x}", p(12))) && e.contains("did not map"),
            "{e}"
        );
    }
}
