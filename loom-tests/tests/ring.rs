#![cfg(loom)]
//! loom model of the dirty rings (`softdirty::ring`, issue 17) on the production code: a
//! writer whose ring holds one entry marks two pages (the second push finds the ring full
//! unless the harvest emptied it first) while the harvester collects; a last harvest
//! follows. Every page must have been reported, and the bitmap must end clean: a full
//! ring or a reset racing a write loses nothing. Broken twin: `ring_no_overflow` (a push
//! onto a full ring dropped without the overflow flag).

use loom::sync::Arc;
use loom::thread;
use softdirty::bitmap::PageBitmap;
use softdirty::mm::{AddressSpace, Placement, Sharing};
use softdirty::mode::Mode;
use softdirty::prot::Prot;
use softdirty::ring::{DirtyRings, SpaceRings};
use softdirty_loom_tests::{check, check_epoch};

const PAGE: u64 = 4096;

#[test]
fn overflow_vs_harvest() {
    check("overflow_vs_harvest", 3, || {
        let bits = Arc::new(PageBitmap::new(128, false));
        let rings = Arc::new(DirtyRings::new(Arc::clone(&bits)));
        let w = rings.writer(1);
        let t = thread::spawn(move || (w.mark(0, 1).unwrap(), w.mark(64, 1).unwrap()));
        let mut seen = Vec::new();
        let h1 = rings.harvest(|f, n| seen.extend(f..f + n));
        let marks = t.join().unwrap();
        let h2 = rings.harvest(|f, n| seen.extend(f..f + n));
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(
            seen,
            vec![0, 64],
            "a page was lost: reported {seen:?} ({h1:?}, {h2:?}, marks {marks:?}, dirtied {:?}, bits {:?} {:?})",
            rings.pages_dirtied(),
            bits.page(0),
            bits.page(64)
        );
        assert!(
            bits.page(0).clean == 1 && bits.page(64).clean == 1,
            "left dirty"
        );
    });
}

/// Rings over an address space (`SpaceRings`): a page written through a ring writer (its
/// entry names address `a`) ∥ an mremap that moves it to `b` while the harvester
/// collects; a last harvest follows. The page must be reported by one of the two
/// harvests, wherever it was: the move is not a write, so the harvest must learn of it
/// from the space's `indirect_changes` count and scan everything. Broken twin:
/// `ring_ignores_moves` (the count is never bumped: the harvest trusts the entry, whose
/// address the page has left).
#[test]
fn space_ring_vs_mremap() {
    check_epoch("space_ring_vs_mremap", 2, || {
        let mm = Arc::new(AddressSpace::new(Mode::Precise));
        let a = mm
            .mmap(0, PAGE, Prot::RW, Sharing::Private, Placement::Hint)
            .unwrap();
        let b = mm
            .mmap(0, PAGE, Prot::RW, Sharing::Private, Placement::Hint)
            .unwrap();
        mm.munmap(b, PAGE).unwrap();
        let rings = SpaceRings::new(mm.clone()).unwrap();
        let w = rings.writer(4);
        rings.harvest().commit(); // the first harvest scans everything
        w.write(a, 1).unwrap();
        let t = {
            let mm = mm.clone();
            thread::spawn(move || mm.mremap(a, PAGE, PAGE, true, Some(b)))
        };
        let h1 = rings.harvest();
        let r1 = h1.address_ranges();
        h1.commit();
        assert_eq!(t.join().unwrap(), Ok(b));
        let h2 = rings.harvest();
        let r2 = h2.address_ranges();
        h2.commit();
        let seen = |r: &[(u64, u64)]| {
            r.iter()
                .any(|&(s, e)| (s..e).contains(&a) || (s..e).contains(&b))
        };
        assert!(
            seen(&r1) || seen(&r2),
            "the moved page was lost: the harvests reported {r1:x?} and {r2:x?}"
        );
    });
}
