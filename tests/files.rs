//! Files (trace v2) through the library API: a tracker's file table shared by its spaces,
//! truncation reaching every mapping, `write(2)`'s limits, and memory that follows what
//! is touched, not the size of a file.

use softdirty::file::{FileKind, MAX_RW_COUNT};
use softdirty::mm::MapOpts;
use softdirty::{Errno, Mode, Placement, Prot, Sharing, Tracker};

const PAGE: u64 = 4096;
const TIB: u64 = 1 << 40;

fn map_file(
    t: &Tracker,
    space: &str,
    addr: u64,
    len: u64,
    sharing: Sharing,
    name: &str,
    offset: u64,
) -> Result<u64, Errno> {
    let f = t.files().lookup(name).expect("file created");
    t.space(space).mmap_with(
        addr,
        len,
        Prot::RW,
        sharing,
        Placement::Fixed,
        MapOpts {
            file: Some((f, offset)),
            ..MapOpts::default()
        },
    )
}

/// A terabyte file mapping costs what a terabyte of anonymous memory costs, and so does
/// growing the file under it after a clear (precise dirties every new page with the
/// directory's tags, allocating no chunk).
#[test]
fn a_terabyte_file_costs_its_directory() {
    let t = Tracker::new(Mode::Precise);
    t.file("big", FileKind::Memfd, 0).unwrap();
    let a = 0x100_0000_0000;
    map_file(&t, "main", a, TIB, Sharing::Shared, "big", 0).unwrap();
    let mm = t.space("main");
    mm.clear_refs(4).unwrap();
    assert_eq!(
        mm.write(a, 1),
        Err(Errno::EFAULT),
        "past the end of an empty file"
    );
    let f = t.files().lookup("big").unwrap();
    t.set_file_size(f, TIB).unwrap();
    assert_eq!(mm.softdirty_runs(a, TIB), vec![0..TIB / PAGE]);
    mm.write(a + TIB / 2, 1).unwrap();
    assert_eq!(
        t.accounting().live_chunks(),
        1,
        "one chunk: the page written"
    );
    assert!(
        mm.tracking_bytes() < 1 << 20,
        "{} bytes of tracking for a 1 TiB file mapping",
        mm.tracking_bytes()
    );
    // Shrinking back zaps the whole terabyte without materializing it either.
    t.set_file_size(f, 0).unwrap();
    assert_eq!(mm.present_runs(a, TIB), vec![]);
    assert_eq!(t.accounting().live_chunks(), 1);
}

/// Truncation reaches every mapping of the file in every space, private copies included;
/// growing it back makes the pages reachable again.
#[test]
fn truncation_reaches_every_space_and_private_copies() {
    for mode in [Mode::Legacy, Mode::Precise] {
        let t = Tracker::new(mode);
        t.file("data", FileKind::Regular, 8 * PAGE).unwrap();
        let (s, p) = (0x20_0000_0000, 0x20_0010_0000);
        map_file(&t, "main", s, 8 * PAGE, Sharing::Shared, "data", 0).unwrap();
        map_file(&t, "main", p, 8 * PAGE, Sharing::Private, "data", 0).unwrap();
        let main = t.space("main");
        main.write(s, 8 * PAGE).unwrap();
        main.write(p, 8 * PAGE).unwrap();
        let child = t.fork("main", "child").unwrap();
        main.clear_refs(4).unwrap();
        child.clear_refs(4).unwrap();
        let f = t.files().lookup("data").unwrap();
        t.set_file_size(f, 3 * PAGE + 1).unwrap();
        for sp in [&main, &child] {
            // Pages 0..3 and the partial page 3 stay; 4..8 are gone, private copies too.
            assert_eq!(sp.write(s + 4 * PAGE, 1), Err(Errno::EFAULT), "{mode}");
            assert_eq!(sp.write(p + 5 * PAGE, 1), Err(Errno::EFAULT), "{mode}");
            let dirty = sp.softdirty_runs(p, 8 * PAGE);
            if mode == Mode::Precise {
                // The cut pages were zeroed; the partial page's tail too (shared view).
                assert_eq!(sp.softdirty_runs(s, 8 * PAGE), vec![3..8], "{mode}");
                // The private copy of page 3 keeps its content.
                assert_eq!(dirty, vec![4..8], "{mode}");
            } else {
                assert_eq!(dirty, vec![], "{mode}");
            }
        }
        assert_eq!(main.present_runs(p, 8 * PAGE), vec![0..4], "{mode}");
        t.set_file_size(f, 8 * PAGE).unwrap();
        child.write(s + 7 * PAGE, 1).unwrap();
    }
}

/// `write(2)`: one call transfers at most MAX_RW_COUNT bytes, extends the file, and
/// refuses positions beyond `i64::MAX`; in precise it reaches every view of its pages.
#[test]
fn fwrite_limits_and_views() {
    let t = Tracker::new(Mode::Precise);
    let f = t.file("log", FileKind::Regular, 0).unwrap();
    assert_eq!(t.fwrite(f, 0, u64::MAX >> 1), Ok(MAX_RW_COUNT));
    assert_eq!(t.files().size(f), Some(MAX_RW_COUNT));
    assert_eq!(t.fwrite(f, 1 << 63, 1), Err(Errno::EINVAL));
    assert_eq!(t.fwrite(f, i64::MAX as u64, 1), Err(Errno::EINVAL));
    assert_eq!(t.fwrite(f, 5, 0), Ok(0));
    let a = 0x30_0000_0000;
    map_file(&t, "main", a, 4 * PAGE, Sharing::Private, "log", 0).unwrap();
    let mm = t.space("main");
    mm.write(a, 1).unwrap(); // a private copy of page 0
    mm.clear_refs(4).unwrap();
    t.fwrite(f, 0, 2 * PAGE).unwrap();
    // Page 0 is a private copy: the write to the file does not show there.
    assert_eq!(mm.softdirty_runs(a, 4 * PAGE), vec![1..2]);
    assert_eq!(t.file("log", FileKind::Memfd, 0), Err(Errno::EINVAL));
}
