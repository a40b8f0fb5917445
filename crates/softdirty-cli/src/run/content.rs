//! The guest's memory content and the destination's copy of it, so that a run can check
//! what migration is for: when it ends, the destination holds what the source holds.
//!
//! A page's content is a version number that each vCPU store changes ([`Content::store`],
//! before the store is marked, as the data-ordering contract asks); sending a page copies
//! its version to the destination ([`Destination::copy`]), which happens after the
//! harvest that reported it. A page whose last store was never followed by a harvest that
//! reported it and a copy ends with a stale version at the destination
//! ([`Destination::stale`]): a lost write. Only the fixed mappings' writable pages are
//! compared (the churned arenas come and go).
//!
//! Memory follows what is touched: versions live in chunks of [`CHUNK`] pages, made at a
//! chunk's first store (the source) or first copy (the destination).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Pages per chunk of versions.
pub(super) const CHUNK: u64 = 4096;

/// The source's content: a version per page, changed by every store.
pub(super) struct Content {
    chunks: Box<[OnceLock<Box<[AtomicU32]>>]>,
}

/// The destination's copy.
pub(super) struct Destination {
    chunks: Vec<Option<Box<[u32]>>>,
}

impl Content {
    /// `pages` pages, every version 0 (what the bulk copy sent).
    pub(super) fn new(pages: u64) -> Content {
        Content {
            chunks: (0..pages.div_ceil(CHUNK))
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// A store to page `i`: changes its version. Call before marking the page.
    pub(super) fn store(&self, i: u64) {
        let c = self.chunks[(i / CHUNK) as usize]
            .get_or_init(|| (0..CHUNK).map(|_| AtomicU32::new(0)).collect());
        let v = &c[(i % CHUNK) as usize];
        // Relaxed: the data of the data-ordering contract. The mark that follows has the
        // fence that orders this store before the page's dirty bit, and the harvest's
        // fence orders its get-and-clear before the copy's load. A load and a store, not
        // an RMW: two vCPUs storing at once leave one of their versions, and both mark.
        v.store(v.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }

    fn load(&self, i: u64) -> u32 {
        self.chunks[(i / CHUNK) as usize]
            .get()
            // Relaxed: see `store`.
            .map_or(0, |c| c[(i % CHUNK) as usize].load(Ordering::Relaxed))
    }
}

impl Destination {
    pub(super) fn new(pages: u64) -> Destination {
        Destination {
            chunks: (0..pages.div_ceil(CHUNK)).map(|_| None).collect(),
        }
    }

    /// Sends pages `range` of `src`: copies their versions.
    pub(super) fn copy(&mut self, src: &Content, range: std::ops::Range<u64>) {
        for i in range {
            let v = src.load(i);
            let c = &mut self.chunks[(i / CHUNK) as usize];
            if v == 0 && c.is_none() {
                continue;
            }
            c.get_or_insert_with(|| vec![0; CHUNK as usize].into_boxed_slice())
                [(i % CHUNK) as usize] = v;
        }
    }

    /// Pages whose version here differs from `src`'s (call with the writers stopped).
    pub(super) fn stale(&self, src: &Content) -> u64 {
        let mut n = 0;
        for (k, d) in self.chunks.iter().enumerate() {
            if d.is_none() && src.chunks[k].get().is_none() {
                continue; // never stored to, never sent: both all 0
            }
            for j in 0..CHUNK {
                let here = d.as_ref().map_or(0, |c| c[j as usize]);
                n += u64::from(here != src.load(k as u64 * CHUNK + j));
            }
        }
        n
    }
}
