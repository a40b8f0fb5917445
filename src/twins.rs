//! The broken twins, all in one place: each is off in every real build and on only when
//! the crate is built with `--cfg softdirty_broken="NAME"` (by `scripts/stress-twins.sh`)
//! or, in a loom build, when the environment variable `SOFTDIRTY_TWIN` names it (by
//! `scripts/loom.sh broken`, which so checks every twin with the one build of the models
//! instead of a rebuild per twin). On, it restores one bug (in most cases the code before
//! a fix) at the one site that reads it, and the loom model named beside it
//! (`test-binary:model` in `loom-tests/tests/`) must then fail: `scripts/loom.sh` reads its
//! twin → model table from this file.
//!
//! The sites read a twin with a plain `if twins::NAME.on()`, so both versions type-check
//! in every build and no twin rots; in a real build `on` is a constant `false` and the
//! twin's branch is dead code the compiler removes. No other file may test
//! `softdirty_broken` (a unit test below checks it).

/// One broken twin's switch (module docs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Twin {
    /// Its name, as `softdirty_broken` and `SOFTDIRTY_TWIN` spell it.
    #[cfg_attr(not(all(loom, feature = "loom")), allow(dead_code))]
    name: &'static str,
    /// Built in: `--cfg softdirty_broken="NAME"`.
    built: bool,
}

impl Twin {
    /// Is this twin on?
    #[inline(always)]
    pub(crate) fn on(self) -> bool {
        #[cfg(all(loom, feature = "loom"))]
        {
            self.built || chosen().is_some_and(|n| n == self.name)
        }
        #[cfg(not(all(loom, feature = "loom")))]
        {
            self.built
        }
    }
}

/// The twin `SOFTDIRTY_TWIN` names, read once (a std `OnceLock`, outside loom's model).
#[cfg(all(loom, feature = "loom"))]
fn chosen() -> Option<&'static str> {
    static CHOSEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    CHOSEN
        .get_or_init(|| {
            std::env::var("SOFTDIRTY_TWIN")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .as_deref()
}

macro_rules! twins {
    ($( $(#[$doc:meta])* $konst:ident = $name:tt => $model:tt; )*) => {
        $(
            $(#[$doc])*
            pub(crate) const $konst: Twin = Twin { name: $name, built: cfg!(softdirty_broken = $name) };
        )*

        /// Every twin: its name and the `test-binary:model` that must reject it.
        #[cfg(test)]
        pub(crate) const ALL: &[(&str, &str, &str)] = &[ $( (stringify!($konst), $name, $model), )* ];
    };
}

twins! {
    /// bitmap/fault.rs `fault_rmw`: fault RMWs `Relaxed` instead of `AcqRel`, so a fault after
    /// the drain does not see the seal.
    RELAXED_FAULT = "relaxed_fault" => "bitmap_protocol:split_vs_write";
    /// bitmap/fault.rs `finish_fault`: no `sealed` re-check after the RMWs.
    NO_RECHECK = "no_recheck" => "bitmap_protocol:split_vs_write";
    /// bitmap/drain.rs `seal_and_drain`: seal without carrying late faults over.
    NO_DRAIN = "no_drain" => "bitmap_protocol:merge_vs_write";
    /// bitmap/drain.rs `seal_and_drain`: the drain ignores `DrainRule::DirtyPopulated`.
    NO_DRAIN_RULE = "no_drain_rule" => "bitmap_protocol:mremap_vs_faults";
    /// bitmap/drain.rs `seal_and_drain`: the drain reads each top entry of the directory
    /// with a plain load instead of a value-preserving RMW, so a fault whose
    /// leaf-installing CAS comes after it does not see the seal.
    NO_TOP_RMW = "no_top_rmw" => "bitmap_protocol:split_vs_first_write_to_untouched_chunk";
    /// bitmap/harvest.rs `harvest`: get-and-clear as a load, then a store.
    BLIND_HARVEST = "blind_harvest" => "bitmap_protocol:two_writers_one_word_vs_harvest";
    /// bitmap/harvest.rs `harvest`: the original relaxed "nothing dirty" shortcut on a word whose
    /// summary bit was taken.
    HARVEST_PRECHECK = "harvest_precheck" => "bitmap_protocol:harvest_vs_write";
    /// bitmap/harvest.rs `harvest_store`: the plain store that takes a fully dirty word is
    /// `Relaxed` instead of `Release`.
    RELAXED_HARVEST_STORE = "relaxed_harvest_store" => "bitmap_protocol:harvest_full_word_vs_write";
    /// bitmap/harvest.rs `clear_all`: clear the words, then the summary.
    CLEAR_SUMMARY_LAST = "clear_summary_last" => "bitmap_protocol:clear_refs_vs_write";
    /// bitmap/query.rs `window`: a copy reads `clean` before `populated`/`backed`.
    COPY_CLEAN_FIRST = "copy_clean_first" => "bitmap_protocol:fork_vs_write";
    /// bitmap/fault.rs `FaultState::start`, `finish_fault`: faults neither read nor
    /// re-check the zap generation.
    ZAP_NO_SEQ = "zap_no_seq" => "address_space:dontneed_vs_write_legacy";
    /// bitmap/fault.rs `FaultState::before_rmw`: the code before the fix, which read the
    /// zap generation before the first RMW instead of before the first test load, so a
    /// test that skipped an RMW on a pre-zap load went unchecked.
    ZAP_GEN_LATE = "zap_gen_late" => "address_space:dontneed_vs_write_to_dirty_page_legacy";
    /// bitmap/fault.rs `forward`: a sealed fault retries through the index instead of
    /// forwarding.
    RETRY_VIA_INDEX = "retry_via_index" => "address_space:write_vs_mremap_move";
    /// mm/commit.rs `Layout::build`: a VMA grown in place sets its new pages' state with a
    /// load and a store per word instead of an RMW, losing a racing write to the old VMA's
    /// pages of a shared word.
    GROW_STORE = "grow_store" => "address_space:write_vs_mmap_grow_in_place";
    /// vma.rs `freeze_anon`: a structural operation reads the anon_vma without freezing
    /// the cell.
    NO_ANON_FREEZE = "no_anon_freeze" => "address_space:first_write_vs_whole_mprotect_then_fork";
    /// mm/commit.rs `publish`: the old index is freed at once, under pinned readers.
    NO_DEFER = "no_defer" => "reclamation:reclamation_no_uaf_no_leak";
    /// mm/commit.rs `publish`: the old index is never freed.
    NO_RECLAIM = "no_reclaim" => "reclamation:reclamation_no_uaf_no_leak";
    /// mm/mod.rs `with_index`: the reader does not pin.
    NO_PIN = "no_pin" => "reclamation:reclamation_no_uaf_no_leak";
    /// barrier.rs `mark_fence`: no `SeqCst` fence at the start of a dirtying mark.
    MARK_NO_FENCE = "mark_no_fence" => "data_ordering:producer_mark_vs_harvest";
    /// barrier.rs `heavy_needed`: no `SeqCst` fence between a get-and-clear and handing its
    /// runs to the sink.
    HARVEST_NO_FENCE = "harvest_no_fence" => "data_ordering:producer_mark_vs_harvest";
    /// bitmap/harvest.rs `clear_lock`: clean-making operations skip the bitmap's clear lock.
    NO_CLEAR_LOCK = "no_clear_lock" => "data_ordering:two_owners_harvest_vs_put_back";
    /// dirtylog.rs `redirty`: an aborted harvest restores the range as the harvest found
    /// it, cleaning the pages it did not take, whatever was written to them since.
    RESTORE_SNAPSHOT = "restore_snapshot" => "address_space:harvest_abort_vs_write";
    /// ring.rs `RingWriter::mark`: a push onto a full ring is dropped without setting the
    /// overflow flag.
    RING_NO_OVERFLOW = "ring_no_overflow" => "ring:overflow_vs_harvest";
    /// mm/mod.rs `note_indirect`: a change that moves or dirties pages without a write
    /// (an mremap move here) is not counted, so a ring harvest trusts entries that name
    /// addresses the pages have left.
    RING_IGNORES_MOVES = "ring_ignores_moves" => "ring:space_ring_vs_mremap";
    /// mm/fault.rs `VmaHint::get`: a writer handle trusts its cached VMA without checking
    /// that the index it came from is still the published one.
    WRITER_NO_REVALIDATE = "writer_no_revalidate" => "address_space:writer_hint_vs_remap";
    /// writer.rs `Writer::write`, mm/fault.rs `store_hot`: a writer handle's hot word
    /// answers stores without checking that nothing was retired since its pin and that the
    /// index is still the word's.
    HOT_WORD_NO_REVALIDATE = "hot_word_no_revalidate" => "address_space:writer_hot_word_vs_remap";
    /// bitmap/fault.rs `settle_summary`: after a fault made a whole word dirty with a
    /// plain store, its summary RMW still waits on a test that may read a stale bit.
    PLAIN_STORE_SUMMARY_TEST = "plain_store_summary_test" => "bitmap_protocol:whole_word_write_vs_harvest";
    /// bitmap/drain.rs `drain_slot`: no summary RMW before the drain reads a chunk's
    /// words, so a fault's plain whole-word store after them misses the seal.
    DRAIN_NO_SUMMARY_RMW = "drain_no_summary_rmw" => "bitmap_protocol:whole_word_write_vs_split";
    /// bitmap/zap.rs `update_range`: no summary RMW before a zap rewrites a chunk's words,
    /// so a fault's plain whole-word store after them misses the zap generation.
    REWRITE_NO_SUMMARY_RMW = "rewrite_no_summary_rmw" => "bitmap_protocol:whole_word_write_vs_zap";
    /// barrier.rs `heavy_needed`: harvests never call `membarrier`, though light writers
    /// (writer handles) mark without a fence. loom cannot model `membarrier` (a loom build
    /// has no light writers): the hardware litmus `tests/litmus.rs` is its check.
    NO_HEAVY_BARRIER = "no_heavy_barrier" => "hw/litmus:store_buffering_marks_lose_no_write";
}

#[cfg(test)]
mod tests {
    use super::ALL;

    fn sources(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push((
                    p.display().to_string(),
                    std::fs::read_to_string(&p).unwrap(),
                ));
            }
        }
    }

    /// Every twin is read at a site, no file but this one tests the cfg, and every model
    /// named exists in loom-tests.
    #[test]
    fn every_twin_is_used_and_listed_here_only() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        sources(&root.join("src"), &mut files);
        assert!(files.len() > 10);
        for (path, text) in &files {
            if !path.ends_with("twins.rs") {
                assert!(
                    !text.contains(&["softdirty", "_broken"].concat()),
                    "{path} tests the twin cfg itself: use a constant of src/twins.rs"
                );
            }
        }
        for (konst, name, model) in ALL {
            let used = files
                .iter()
                .any(|(p, t)| !p.ends_with("twins.rs") && t.contains(&format!("twins::{konst}")));
            assert!(used, "twin {name} ({konst}) is read nowhere");
            let (bin, model) = model.split_once(':').unwrap();
            // `hw/TEST:FN`: a hardware test of the crate (tests/TEST.rs), for what loom
            // cannot model; scripts/loom.sh skips it, scripts/stress-twins.sh runs it.
            let file = match bin.strip_prefix("hw/") {
                Some(t) => format!("tests/{t}.rs"),
                None => format!("loom-tests/tests/{bin}.rs"),
            };
            let tests = std::fs::read_to_string(root.join(&file)).unwrap_or_default();
            assert!(
                tests.contains(&format!("fn {model}()")),
                "twin {name}: no model {model} in {file}"
            );
        }
    }
}
