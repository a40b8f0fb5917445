//! Figures on real memory: the kernel's userfaultfd WP-async tracking next to the model's
//! simulated fault and harvest, same sizes and densities, in one run.
//!
//! Kernel side (raw syscalls, `softdirty::kernel::uapi` structs): a 1 GiB anonymous
//! mapping, fully populated, registered with a userfaultfd (`UFFD_FEATURE_WP_ASYNC |
//! WP_UNPOPULATED`, mode WP). Model side: an [`AddressSpace`] in `precise` mode (what the
//! uffd flavour reproduces) with one 1 GiB VMA, every page written.
//!
//! | group | kernel | model |
//! |---|---|---|
//! | `first_write` (per page) | a store to a write-protected page (an async WP fault) | `AddressSpace::write` of one clean page after `clear_refs 4` |
//! | `scan/D` (1 GiB) | `PAGEMAP_SCAN`, `PAGE_IS_WRITTEN`, no flags | `AddressSpace::get_dirty_log` |
//! | `scan_protect/D` (1 GiB) | `PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING` | `AddressSpace::scan_and_clear` |
//!
//! `D` is the share of pages written since the last protect: `0.1%` (every 1,000th
//! page), `10%` (every 10th), `100%`. Before each timed scan-and-protect the pages are
//! dirtied again untimed (kernel: `UFFDIO_WRITEPROTECT` mode 0 on each of them, which
//! leaves it as a written page does; model: `write`).
//!
//! Skips (prints why, returns) when userfaultfd WP-async or PAGEMAP_SCAN is unavailable.
//!
//! ```text
//! CARGO_TARGET_DIR=... cargo bench --bench kernel -- --warm-up-time 1 --measurement-time 3
//! ```

// `criterion_group!` generates an undocumented function.
#![allow(missing_docs)]

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use softdirty::kernel::uapi::*;
use softdirty::mm::{AddressSpace, Placement, Sharing};
use softdirty::mode::Mode;
use softdirty::prot::Prot;

const PAGE: u64 = 4096;
/// 1 GiB.
const LEN: u64 = 1 << 30;
const PAGES: u64 = LEN / PAGE;
/// The densities: (label, stride in pages).
const DENSITIES: [(&str, u64); 3] = [("0.1%", 1000), ("10%", 10), ("100%", 1)];
/// Pages per untimed re-protect in `first_write`.
const CHUNK: u64 = 16384;

/// The kernel side: a populated 1 GiB mapping registered for async write-protect.
struct Real {
    base: *mut u8,
    uffd: OwnedFd,
    pagemap: File,
    regions: Vec<PageRegion>,
}

impl Real {
    fn new() -> Result<Real, String> {
        let base_flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: userfaultfd takes one integer argument and touches no memory of ours.
        let mut fd = unsafe { libc::syscall(libc::SYS_userfaultfd, base_flags) };
        if fd < 0 {
            // SAFETY: as above.
            fd = unsafe { libc::syscall(libc::SYS_userfaultfd, base_flags | UFFD_USER_MODE_ONLY) };
        }
        if fd < 0 {
            return Err(format!(
                "userfaultfd: {} (needs root, vm.unprivileged_userfaultfd=1 or UFFD_USER_MODE_ONLY)",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: the syscall just returned this fd, which nothing else owns.
        let uffd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes one `struct uffdio_api` (`UffdioApi`, layout
        // checked in uapi.rs), which lives across the call.
        if unsafe {
            libc::ioctl(
                uffd.as_raw_fd(),
                UFFDIO_API as _,
                &mut api as *mut UffdioApi,
            )
        } != 0
        {
            return Err(format!(
                "UFFDIO_API with WP_ASYNC|WP_UNPOPULATED: {} (needs Linux 6.7+)",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a fresh anonymous private mapping at an address the kernel picks; no
        // existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap 1 GiB: {}", std::io::Error::last_os_error()));
        }
        // 4 KiB pages only: the figures are per base page.
        // SAFETY: madvise on the mapping just made; it changes no contents.
        unsafe { libc::madvise(p, LEN as usize, libc::MADV_NOHUGEPAGE) };
        let pagemap = File::open("/proc/self/pagemap").map_err(|e| format!("pagemap: {e}"))?;
        let mut real = Real {
            base: p.cast(),
            uffd,
            pagemap,
            regions: vec![PageRegion::default(); PAGES as usize + 1],
        };
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: p as u64,
                len: LEN,
            },
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes one `struct uffdio_register`
        // (`UffdioRegister`), which lives across the call; the range is our mapping.
        if unsafe {
            libc::ioctl(
                real.uffd.as_raw_fd(),
                UFFDIO_REGISTER as _,
                &mut reg as *mut UffdioRegister,
            )
        } != 0
        {
            return Err(format!(
                "UFFDIO_REGISTER WP: {}",
                std::io::Error::last_os_error()
            ));
        }
        // Populate every page, so that every figure is about present pages.
        for i in 0..PAGES {
            real.touch(i);
        }
        real.scan(true).map_err(|e| format!("PAGEMAP_SCAN: {e}"))?;
        Ok(real)
    }

    fn addr(&self, page: u64) -> u64 {
        self.base as u64 + page * PAGE
    }

    /// A store to `page` (an async WP fault when the page is protected).
    fn touch(&self, page: u64) {
        // SAFETY: page < PAGES, inside our read-write mapping; nothing else references it.
        unsafe { std::ptr::write_volatile(self.base.add((page * PAGE) as usize), 1) };
    }

    /// UFFDIO_WRITEPROTECT `[page, page + n)`: `wp` protects, `!wp` un-protects (the page
    /// then reports written, as after a store).
    fn writeprotect(&self, page: u64, n: u64, wp: bool) {
        let mut arg = UffdioWriteprotect {
            range: UffdioRange {
                start: self.addr(page),
                len: n * PAGE,
            },
            mode: if wp { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 },
        };
        // SAFETY: UFFDIO_WRITEPROTECT reads one `struct uffdio_writeprotect`
        // (`UffdioWriteprotect`), alive across the call; the range is registered memory.
        let r = unsafe {
            libc::ioctl(
                self.uffd.as_raw_fd(),
                UFFDIO_WRITEPROTECT as _,
                &mut arg as *mut UffdioWriteprotect,
            )
        };
        assert_eq!(
            r,
            0,
            "UFFDIO_WRITEPROTECT: {}",
            std::io::Error::last_os_error()
        );
    }

    /// PAGEMAP_SCAN over the whole GiB for written pages (`protect`: and write-protect
    /// them, PM_SCAN_WP_MATCHING); returns the number of written pages.
    fn scan(&mut self, protect: bool) -> std::io::Result<u64> {
        let end = self.addr(PAGES);
        let mut start = self.addr(0);
        let mut pages = 0;
        while start < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags: if protect {
                    PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC
                } else {
                    0
                },
                start,
                end,
                vec: self.regions.as_mut_ptr() as u64,
                vec_len: self.regions.len() as u64,
                category_mask: PAGE_IS_WRITTEN,
                return_mask: PAGE_IS_WRITTEN,
                ..PmScanArg::default()
            };
            // SAFETY: PAGEMAP_SCAN reads and updates one `struct pm_scan_arg` (`PmScanArg`,
            // alive across the call) and writes at most `vec_len` `struct page_region`s
            // into `regions`, which holds that many.
            let n = unsafe {
                libc::ioctl(
                    self.pagemap.as_raw_fd(),
                    PAGEMAP_SCAN as _,
                    &mut arg as *mut PmScanArg,
                )
            };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            pages += self.regions[..n as usize]
                .iter()
                .map(|r| (r.end - r.start) / PAGE)
                .sum::<u64>();
            start = arg.walk_end;
        }
        Ok(pages)
    }
}

impl Drop for Real {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of this size; nothing references it anymore.
        unsafe { libc::munmap(self.base.cast(), LEN as usize) };
    }
}

/// The model side: one written 1 GiB VMA in precise mode.
fn model() -> (AddressSpace, u64) {
    let mm = AddressSpace::new(Mode::Precise);
    let a = mm
        .mmap(0, LEN, Prot::RW, Sharing::Private, Placement::Hint)
        .expect("model mmap 1 GiB");
    mm.write(a, LEN).expect("model write");
    (mm, a)
}

fn dirty_real(real: &Real, stride: u64) {
    if stride == 1 {
        real.writeprotect(0, PAGES, false);
    } else {
        (0..PAGES)
            .step_by(stride as usize)
            .for_each(|p| real.writeprotect(p, 1, false));
    }
}

fn dirty_model(mm: &AddressSpace, a: u64, stride: u64) {
    if stride == 1 {
        mm.write(a, LEN).expect("model write");
    } else {
        (0..PAGES)
            .step_by(stride as usize)
            .for_each(|p| mm.write(a + p * PAGE, 1).expect("model write"));
    }
}

fn kernel(c: &mut Criterion) {
    let mut real = match Real::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench kernel: skipped: {e}");
            return;
        }
    };
    let (mm, a) = model();

    // ---- first write to a protected page, per page -------------------------------------
    let mut g = c.benchmark_group("first_write");
    g.bench_function("kernel", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let n = (iters - done).min(CHUNK);
                real.writeprotect(0, n, true);
                let t = Instant::now();
                (0..n).for_each(|p| real.touch(p));
                total += t.elapsed();
                done += n;
            }
            total
        })
    });
    g.bench_function("model", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let n = (iters - done).min(CHUNK);
                mm.clear_refs(4).expect("clear_refs");
                let t = Instant::now();
                (0..n).for_each(|p| mm.write(a + p * PAGE, 1).expect("model write"));
                total += t.elapsed();
                done += n;
            }
            total
        })
    });
    g.finish();

    // ---- scan-only and scan-and-protect over 1 GiB -------------------------------------
    for (label, stride) in DENSITIES {
        let expect = PAGES.div_ceil(stride);

        let mut g = c.benchmark_group(format!("scan/{label}"));
        g.sample_size(10);
        real.writeprotect(0, PAGES, true);
        dirty_real(&real, stride);
        let found = real.scan(false).expect("PAGEMAP_SCAN");
        if found != expect {
            eprintln!("scan/{label}: the kernel reports {found} written pages, {expect} expected");
        }
        g.bench_function("kernel", |b| {
            b.iter(|| real.scan(false).expect("PAGEMAP_SCAN"))
        });
        mm.clear_refs(4).expect("clear_refs");
        dirty_model(&mm, a, stride);
        let pages: u64 = mm
            .get_dirty_log(a, LEN)
            .expect("get_dirty_log")
            .runs()
            .iter()
            .map(|r| r.1)
            .sum();
        assert_eq!(pages, expect);
        g.bench_function("model", |b| {
            b.iter(|| mm.get_dirty_log(a, LEN).expect("get_dirty_log"))
        });
        g.finish();

        let mut g = c.benchmark_group(format!("scan_protect/{label}"));
        g.sample_size(10);
        g.bench_function("kernel", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    dirty_real(&real, stride);
                    let t = Instant::now();
                    let n = real.scan(true).expect("PAGEMAP_SCAN");
                    total += t.elapsed();
                    criterion::black_box(n);
                }
                total
            })
        });
        g.bench_function("model", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    dirty_model(&mm, a, stride);
                    let t = Instant::now();
                    let log = mm.scan_and_clear(a, LEN).expect("scan_and_clear");
                    total += t.elapsed();
                    criterion::black_box(log);
                }
                total
            })
        });
        g.finish();
    }
}

criterion_group!(benches, kernel);
criterion_main!(benches);
