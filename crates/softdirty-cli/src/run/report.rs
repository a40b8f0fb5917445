//! The report of `softdirty run` (what `--json` writes): a [`Round`] per harvest, a
//! [`ModeReport`] per mode, the [`Config`] and the whole [`RunReport`].

use softdirty::mode::Mode;

use super::{HarvestSel, ModeSel};
use crate::workload;

/// One row of a mode's table: one harvest and the sending that follows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Round {
    /// 0 is the bulk copy; the stop-and-copy row is numbered after the last round.
    pub round: u32,
    /// `bulk`, `live` or `stop`
    pub phase: String,
    /// pages the harvest reported dirty (bulk: every mapped page)
    pub dirty_pages: u64,
    /// pages sent in this round (the last live round's are sent in the stop-and-copy)
    pub pages_sent: u64,
    /// microseconds the harvest took (scan-and-clear; legacy: plus clear_refs, vCPUs
    /// frozen)
    pub harvest_us: u64,
    /// vCPU writes per real second while this round's pages were being sent
    pub writes_per_s: f64,
    /// simulated write faults (clean → soft-dirty stores) during the round
    pub faults: u64,
    /// legacy only: pages this harvest reported that precise, at the same cut, did not
    pub false_positive_pages: Option<u64>,
    /// legacy only: pages precise reported at the same cut that legacy did not
    pub false_negative_pages: Option<u64>,
    /// simulated seconds of link time this round
    pub sim_s: f64,
    /// the round's transfer failed (`--drop-round-probability`): its harvest was aborted
    /// after its link time, so its pages were given back
    pub aborted: bool,
    /// `--harvest ring`: the harvest scanned everything (a ring overflowed, or the layout
    /// changed since the last harvest) rather than only what the rings named
    pub ring_full_scan: Option<bool>,
}

/// What the dirty rings did in one mode's run (`--harvest ring`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RingReport {
    /// entries per vCPU ring
    pub size: usize,
    /// harvests that collected only the rings' entries
    pub ring_harvests: u32,
    /// harvests that scanned everything (overflow, layout change, the first one)
    pub full_harvests: u32,
    /// ring entries collected
    pub entries: u64,
    /// writes that found their ring at its soft limit (KVM's dirty-ring-full exit)
    pub soft_full_writes: u64,
    /// pages each vCPU turned soft-dirty (its ring's count)
    pub vcpu_dirtied_pages: Vec<u64>,
    /// each vCPU's dirty rate, pages per simulated second
    pub vcpu_dirty_rate: Vec<f64>,
}

/// One mode's migration.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModeReport {
    /// `precise` or `legacy`
    pub mode: Mode,
    /// the rows
    pub rounds: Vec<Round>,
    /// the dirty set went below the threshold before `--rounds` and `--duration` ran out
    pub converged: bool,
    /// live pre-copy rounds run (after the bulk copy)
    pub live_rounds: u32,
    /// pages sent with the guest stopped
    pub stop_and_copy_pages: u64,
    /// the stop-and-copy's link time, milliseconds
    pub downtime_ms: f64,
    /// every page sent: bulk, live rounds and stop-and-copy
    pub pages_sent_total: u64,
    /// pages sent while the guest ran (bulk and live rounds)
    pub pages_sent_live: u64,
    /// distinct pages the vCPUs wrote (successfully) in the fixed mappings during the
    /// rounds (the churned arenas are not counted: their pages come and go)
    pub written_pages: u64,
    /// pages of the fixed mappings sent after the bulk copy (live rounds and
    /// stop-and-copy); never less than `written_pages`
    pub written_pages_sent: u64,
    /// vCPU writes performed
    pub writes: u64,
    /// writes that failed with EFAULT (raced an munmap or a guard page)
    pub write_efaults: u64,
    /// churn operations performed / failed
    pub churn_ops: u64,
    /// churn operations that failed (planned on a range another op changed)
    pub churn_errors: u64,
    /// simulated write faults in all
    pub faults: u64,
    /// legacy: false positives over every harvest, stop-and-copy included
    pub false_positive_pages: Option<u64>,
    /// legacy: false negatives over every harvest
    pub false_negative_pages: Option<u64>,
    /// simulated seconds of the migration
    pub sim_s: f64,
    /// real seconds of the mode's run
    pub wall_s: f64,
    /// how this mode harvested (legacy: always `bitmap`)
    pub harvest: HarvestSel,
    /// live rounds whose transfer failed and whose harvest was aborted
    pub aborted_rounds: u32,
    /// pages the aborted harvests made soft-dirty again
    pub pages_given_back: u64,
    /// writable pages of the fixed mappings whose content at the destination differs
    /// from the source's after the stop-and-copy: lost writes (0 unless tracking lost a
    /// write)
    pub destination_stale_pages: u64,
    /// `--harvest ring`: what the rings did
    pub ring: Option<RingReport>,
}

/// The configuration a report was made with.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Config {
    /// guest bytes
    pub mem: u64,
    /// vCPUs
    pub vcpus: usize,
    /// workload
    pub workload: String,
    /// maximum rounds
    pub rounds: u32,
    /// link bytes per simulated second
    pub bandwidth: u64,
    /// seed
    pub seed: u64,
    /// modes
    pub mode: ModeSel,
    /// real-time budget per mode, seconds
    pub duration: f64,
    /// writes per simulated second per vCPU
    pub dirty_rate: u64,
    /// convergence threshold, ms of link time
    pub downtime_ms: u64,
    /// the threshold in pages
    pub threshold_pages: u64,
    /// zipf exponent
    pub zipf_s: f64,
    /// churn operations per simulated second
    pub churn_rate: f64,
    /// the mappings the run starts with (churned arenas not listed)
    pub layout: Vec<workload::Mapping>,
    /// pages mapped at the start (arenas included)
    pub mapped_pages: u64,
    /// how the rounds harvest
    pub harvest: HarvestSel,
    /// entries per vCPU ring (`--harvest ring`)
    pub ring_size: Option<usize>,
    /// probability that a live round's transfer fails
    pub drop_round_probability: f64,
}

/// The whole report of `softdirty run`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RunReport {
    /// the options
    pub config: Config,
    /// one entry per simulated mode, precise first
    pub modes: Vec<ModeReport>,
    /// with both modes: legacy's total pages sent minus precise's
    pub legacy_extra_pages: Option<i64>,
    /// real seconds in all
    pub wall_s: f64,
}
