//! The options of `softdirty run` ([`RunArgs`], [`ModeSel`]), the size parser and the
//! check of their combination ([`validate`]).

use std::path::PathBuf;

use crate::workload::{Workload, MAX_GUEST_MEM, PAGE};

/// Which modes `softdirty run` simulates.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeSel {
    /// precise tracking only
    Precise,
    /// legacy (Linux ≤ 6.18.36) tracking only, with measured false positives
    Legacy,
    /// both, on the same seeded workload
    Both,
}

/// How `softdirty run` harvests.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HarvestSel {
    /// get-and-clear scans of every mapped span (`AddressSpace::begin_harvest`)
    Bitmap,
    /// each vCPU's dirty ring (`softdirty::ring::SpaceRings`); precise only
    Ring,
}

/// The largest `--ring-size`: KVM's limit on a dirty ring's entries.
pub const MAX_RING_SIZE: usize = 65536;

/// Options of `softdirty run`. The defaults are the default scenario.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Sizes take K, M, G, T suffixes (binary) or p (pages). \
Tables go to stdout, the progress bar to stderr (only on a terminal). \
`--json -` prints the report as JSON on stdout instead of the tables, `--plot -` the SVG \
chart (not both). Output files are opened before the simulation starts.")]
pub struct RunArgs {
    /// Guest memory: the size of the simulated address space's mappings (default 4G, at
    /// most 1984G, what the default layout fits in the 128 TiB user address space of
    /// x86-64 with 4-level paging). Not with --workload trace:FILE, whose mappings are the
    /// guest's memory.
    #[arg(long, value_parser = parse_size)]
    pub mem: Option<u64>,
    /// vCPU writer threads (1 to 1024, at most one per guest page; the thread stacks
    /// shrink to fit many vCPUs in a small guest).
    #[arg(long, default_value_t = 2)]
    pub vcpus: usize,
    /// Access pattern: uniform, zipf, sequential, churn or trace:FILE (a trace's
    /// mappings as the layout).
    #[arg(long, default_value = "zipf", value_parser = parse_workload)]
    pub workload: Workload,
    /// Maximum pre-copy rounds after the bulk copy.
    #[arg(long, default_value_t = 20)]
    pub rounds: u32,
    /// Link bandwidth, bytes per simulated second.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub bandwidth: u64,
    /// Seed of every generator (layout, writers, churn).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Tracking mode(s) to simulate.
    #[arg(long, value_enum, default_value_t = ModeSel::Both)]
    pub mode: ModeSel,
    /// Real-time budget of each mode's rounds, in seconds: when it runs out the guest is
    /// stopped at the next harvest.
    #[arg(long, default_value_t = 12.0)]
    pub duration: f64,
    /// Writes per simulated second per vCPU (one page each).
    #[arg(long, default_value_t = 200_000)]
    pub dirty_rate: u64,
    /// Stop the guest when the dirty set can be sent in this many milliseconds.
    #[arg(long, default_value_t = 100)]
    pub downtime_ms: u64,
    /// Zipf exponent of the zipf, churn and trace workloads.
    #[arg(long, default_value_t = 1.0)]
    pub zipf_s: f64,
    /// Layout changes per simulated second (default 200; 4000 with `--workload churn`).
    #[arg(long)]
    pub churn_rate: Option<f64>,
    /// Write the whole report as JSON to FILE (`-`: stdout, instead of the tables).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw dirty pages per round for each mode as an SVG line chart to FILE.svg (the
    /// name must end in .svg; `-`: stdout, instead of the tables).
    #[arg(long, value_name = "FILE.svg", value_parser = crate::outpath::parse_svg_path)]
    pub plot: Option<PathBuf>,
    /// No progress bar and no tables (errors only).
    #[arg(long, short)]
    pub quiet: bool,
    /// Measure write throughput at 1, 2, 4, ... threads up to the core count, next to a
    /// trivially parallel loop, instead of migrating. Uses --mem, --workload (not
    /// trace:FILE), --zipf-s, --seed, --scaling-secs, --json and --quiet; the migration's
    /// options (--vcpus, --mode, --rounds, --plot, ...) are refused with it.
    #[arg(long, conflicts_with_all = [
        "vcpus", "mode", "rounds", "plot", "bandwidth", "duration", "dirty_rate",
        "downtime_ms", "churn_rate", "harvest", "ring_size", "drop_round_probability",
    ])]
    pub scaling: bool,
    /// Seconds per thread count for `--scaling` (only with it; default 1).
    #[arg(long)]
    pub scaling_secs: Option<f64>,
    /// How the rounds harvest: `bitmap` scans every mapped span (get-and-clear), `ring`
    /// collects each vCPU's dirty ring and scans only what the rings name (a full scan
    /// after a ring overflows or the layout changes). `ring` applies to precise; legacy's
    /// VM_SOFTDIRTY reports pages no write named, so legacy always harvests the bitmap.
    #[arg(long, value_enum, default_value_t = HarvestSel::Bitmap)]
    pub harvest: HarvestSel,
    /// Entries of each vCPU's dirty ring with `--harvest ring` (1 to 65536, KVM's limit;
    /// default 4096).
    #[arg(long)]
    pub ring_size: Option<usize>,
    /// Probability (0 to 1) that a live round's transfer fails: the round's harvest is
    /// aborted after its link time, so its pages report dirty again, merged with what the
    /// vCPUs wrote meanwhile. The report's `destination_stale_pages` shows that nothing
    /// was lost.
    #[arg(long, default_value_t = 0.0)]
    pub drop_round_probability: f64,
}

impl Default for RunArgs {
    /// The default scenario: exactly what `softdirty run` with no option parses to.
    fn default() -> RunArgs {
        use clap::{Args, FromArgMatches};
        let cmd = RunArgs::augment_args(clap::Command::new("run"));
        let m = cmd
            .try_get_matches_from(["run"])
            .expect("the defaults parse");
        RunArgs::from_arg_matches(&m).expect("the defaults parse")
    }
}

/// Parses a size: a number with an optional K, M, G, T (binary) or p (pages) suffix, and
/// an optional `/s` or `B`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let t = t.strip_suffix('i').unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        Some('t' | 'T') => (&t[..t.len() - 1], 1 << 40),
        Some('p') => (&t[..t.len() - 1], PAGE),
        _ => (t, 1),
    };
    let num = num.replace('_', "");
    let v: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 4096, 64M, 4G, 256p)"))?;
    v.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

fn parse_workload(s: &str) -> Result<Workload, String> {
    s.parse()
}

/// The largest `--dirty-rate` (writes per simulated second per vCPU): 10^12, a thousand
/// times what any memory bus does, and far from the overflows of the quota arithmetic.
pub const MAX_DIRTY_RATE: u64 = 1_000_000_000_000;

/// `--mem`'s default: 4 GiB.
pub const DEFAULT_MEM: u64 = 4 << 30;

impl RunArgs {
    /// `--mem`, or its default.
    pub fn mem(&self) -> u64 {
        self.mem.unwrap_or(DEFAULT_MEM)
    }

    /// `--ring-size`, or its default.
    pub fn ring_size(&self) -> usize {
        self.ring_size.unwrap_or(4096)
    }
}

/// Checks the combination of options; the message says what is wrong.
pub fn validate(a: &RunArgs) -> Result<(), String> {
    if let (Workload::Trace(_), Some(m)) = (&a.workload, a.mem) {
        return Err(format!(
            "--mem {m} does not apply to --workload trace:FILE: the trace's mappings are the \
             guest's memory"
        ));
    }
    let pages = a.mem() / PAGE;
    if pages == 0 {
        return Err(format!(
            "--mem {} is less than one page: the guest needs at least 4096 bytes",
            a.mem()
        ));
    }
    if !matches!(a.workload, Workload::Trace(_)) && a.mem() > MAX_GUEST_MEM {
        return Err(format!(
            "--mem {}: at most {} GiB ({MAX_GUEST_MEM} bytes): the guest's RAM region must fit \
             between 0x7e00_0000_0000 and the thread stacks at 0x7ff0_0000_0000 in the 128 TiB \
             user address space of x86-64 with 4-level paging",
            a.mem(),
            MAX_GUEST_MEM >> 30
        ));
    }
    if a.scaling && matches!(a.workload, Workload::Trace(_)) {
        return Err(
            "--scaling measures the default guest layout: --workload trace:FILE cannot be used with it"
                .into(),
        );
    }
    if let (Some(j), Some(p)) = (&a.json, &a.plot) {
        if crate::outpath::is_stdout(j) && crate::outpath::is_stdout(p) {
            return Err(
                "--json - and --plot - would both write to stdout: name a file for one".into(),
            );
        }
    }
    if a.vcpus == 0 {
        return Err("--vcpus 0: at least one vCPU is needed to write".into());
    }
    if a.vcpus > 1024 {
        return Err(format!(
            "--vcpus {} is more than the 1024 supported",
            a.vcpus
        ));
    }
    if !matches!(a.workload, Workload::Trace(_)) && a.vcpus as u64 > pages {
        return Err(format!(
            "--vcpus {} is more than the guest's {pages} pages (--mem {}): every vCPU needs a page",
            a.vcpus,
            a.mem()
        ));
    }
    if a.bandwidth < PAGE {
        return Err(format!(
            "--bandwidth {} is less than one page per second: nothing could be sent",
            a.bandwidth
        ));
    }
    if !(a.duration > 0.0 && a.duration.is_finite()) {
        return Err(format!(
            "--duration {} must be a positive number of seconds",
            a.duration
        ));
    }
    if a.dirty_rate == 0 {
        return Err("--dirty-rate 0: the vCPUs would never write".into());
    }
    if a.dirty_rate > MAX_DIRTY_RATE {
        return Err(format!(
            "--dirty-rate {}: at most {MAX_DIRTY_RATE} writes per simulated second per vCPU \
             (4 PB/s of 4 KiB pages)",
            a.dirty_rate
        ));
    }
    if !(a.zipf_s > 0.0 && a.zipf_s.is_finite()) {
        return Err(format!("--zipf-s {} must be positive", a.zipf_s));
    }
    if let Some(c) = a.churn_rate {
        if !(c >= 0.0 && c.is_finite()) {
            return Err(format!("--churn-rate {c} must be zero or positive"));
        }
    }
    if !(0.0..=1.0).contains(&a.drop_round_probability) {
        return Err(format!(
            "--drop-round-probability {} must be between 0 and 1",
            a.drop_round_probability
        ));
    }
    if let Some(n) = a.ring_size {
        if a.harvest != HarvestSel::Ring {
            return Err("--ring-size is only used with --harvest ring".into());
        }
        if n == 0 || n > MAX_RING_SIZE {
            return Err(format!(
                "--ring-size {n} must be between 1 and {MAX_RING_SIZE} entries (KVM's limit)"
            ));
        }
    }
    if let Some(secs) = a.scaling_secs {
        if !a.scaling {
            return Err("--scaling-secs is only used with --scaling".into());
        }
        if !(secs > 0.0 && secs.is_finite()) {
            return Err(format!("--scaling-secs {secs} must be positive"));
        }
    }
    Ok(())
}
