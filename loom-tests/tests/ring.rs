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
use softdirty::ring::DirtyRings;
use softdirty_loom_tests::check;

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
