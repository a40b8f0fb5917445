//! `softdirty run`: the default scenario in a short configuration, its invariants, and
//! the command line (JSON report, refused options).

use std::process::Command;

use softdirty::mode::Mode;
use softdirty_cli::run::{simulate, ModeSel, RunArgs, RunReport};
use softdirty_cli::workload::Workload;

fn short(mode: ModeSel, workload: Workload, seed: u64) -> RunArgs {
    RunArgs {
        mem: Some(64 << 20),
        rounds: 8,
        duration: 2.0,
        mode,
        workload,
        seed,
        dirty_rate: 50_000,
        ..RunArgs::default()
    }
}

fn check_invariants(r: &RunReport) {
    for m in &r.modes {
        // Every page written during the rounds was sent, live or in the stop-and-copy:
        // pages sent >= pages written - the final dirty set.
        assert!(
            m.written_pages_sent >= m.written_pages,
            "{}: {} written pages, only {} of them sent",
            m.mode,
            m.written_pages,
            m.written_pages_sent
        );
        assert!(m.pages_sent_live + m.stop_and_copy_pages == m.pages_sent_total);
        assert!(m.pages_sent_live >= m.written_pages.saturating_sub(m.stop_and_copy_pages));
        assert!(m.writes > 0, "{}: the vCPUs never wrote", m.mode);
        let rows = &m.rounds;
        assert_eq!(rows.first().unwrap().phase, "bulk");
        assert_eq!(rows.last().unwrap().phase, "stop");
        assert_eq!(rows.last().unwrap().pages_sent, m.stop_and_copy_pages);
        assert_eq!(
            rows.iter().map(|x| x.pages_sent).sum::<u64>(),
            m.pages_sent_total
        );
        assert_eq!(m.false_positive_pages.is_some(), m.mode == Mode::Legacy);
    }
}

#[test]
fn default_scenario_short_keeps_its_invariants() {
    let r = simulate(&short(ModeSel::Both, Workload::Zipf, 1)).expect("runs");
    assert_eq!(r.modes.len(), 2);
    assert_eq!(r.modes[0].mode, Mode::Precise);
    assert_eq!(r.modes[1].mode, Mode::Legacy);
    check_invariants(&r);
}

/// The claim. Two caveats, measured (see the report's false negatives): precise
/// also reports pages legacy misses (the unpopulated pages of an mremap destination, the
/// dirtiness legacy's mprotect merges lose), and the two modes run separate timelines,
/// whose totals differ by ~0.2% run to run. So the claim holds where the seed's false
/// positives outweigh both, as with these seeds (false positives ~1000 pages, false
/// negatives ~0, noise ~150), not for every seed.
#[test]
fn precise_never_sends_more_than_legacy_on_the_same_seed() {
    for seed in [2, 4] {
        let args = RunArgs {
            mem: Some(256 << 20),
            dirty_rate: 20_000,
            downtime_ms: 5,
            churn_rate: Some(100.0),
            ..short(ModeSel::Both, Workload::Zipf, seed)
        };
        let r = simulate(&args).expect("runs");
        check_invariants(&r);
        let (p, l) = (&r.modes[0], &r.modes[1]);
        let (fp, fneg) = (
            l.false_positive_pages.unwrap(),
            l.false_negative_pages.unwrap(),
        );
        assert!(
            fp > fneg,
            "seed {seed}: {fp} false positives, {fneg} false negatives"
        );
        assert!(
            p.pages_sent_total <= l.pages_sent_total,
            "seed {seed}: precise sent {}, legacy {}",
            p.pages_sent_total,
            l.pages_sent_total
        );
    }
}

#[test]
fn other_workloads_run() {
    for w in [Workload::Uniform, Workload::Sequential] {
        let r = simulate(&short(ModeSel::Precise, w, 5)).expect("runs");
        check_invariants(&r);
    }
}

#[test]
fn trace_workload_uses_the_trace_layout() {
    let dir = std::env::temp_dir().join(format!("softdirty-run-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("layout.trace");
    std::fs::write(
        &f,
        "mmap 0x10_0000_0000 16M rw noreplace\nmmap $h 4M rw\nmprotect $h 4K none\n\
         write 0x10_0000_0000 1M\nmremap $h 4M 8M maymove => $g\n",
    )
    .unwrap();
    let args = RunArgs {
        mem: None,
        workload: Workload::Trace(f.clone()),
        ..short(ModeSel::Both, Workload::Zipf, 1)
    };
    let r = simulate(&args).expect("runs");
    check_invariants(&r);
    assert!(r.config.layout.iter().any(|m| m.start == 0x10_0000_0000));
    // The guest is the trace's mappings, not --mem's default.
    assert_eq!(r.config.mem, r.config.mapped_pages * 4096);
    assert!(
        r.config.mem >= 16 << 20 && r.config.mem < 64 << 20,
        "{}",
        r.config.mem
    );
    // --mem with a trace is refused, not ignored.
    let with_mem = RunArgs {
        mem: Some(64 << 20),
        ..args
    };
    let e = simulate(&with_mem).expect_err("--mem with a trace");
    assert!(e.to_string().contains("does not apply"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn impossible_combinations_are_refused_not_panicked() {
    for a in [
        RunArgs {
            mem: Some(0),
            ..RunArgs::default()
        },
        RunArgs {
            vcpus: 0,
            ..RunArgs::default()
        },
        RunArgs {
            mem: Some(8 * 4096),
            vcpus: 9,
            ..RunArgs::default()
        },
        RunArgs {
            bandwidth: 0,
            ..RunArgs::default()
        },
    ] {
        assert!(simulate(&a).is_err(), "{a:?} accepted");
    }
}

const COLUMNS: [&str; 10] = [
    "round",
    "phase",
    "dirty_pages",
    "pages_sent",
    "harvest_us",
    "writes_per_s",
    "faults",
    "false_positive_pages",
    "false_negative_pages",
    "sim_s",
];

#[test]
fn cli_json_parses_and_carries_every_column() {
    let out = Command::new(env!("CARGO_BIN_EXE_softdirty"))
        .args([
            "run",
            "--mem",
            "32M",
            "--rounds",
            "5",
            "--duration",
            "2",
            "--dirty-rate",
            "50000",
            "--json",
            "-",
        ])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let modes = v["modes"].as_array().expect("modes");
    assert_eq!(modes.len(), 2);
    for m in modes {
        for key in [
            "stop_and_copy_pages",
            "pages_sent_total",
            "written_pages",
            "converged",
        ] {
            assert!(m.get(key).is_some(), "mode lacks {key}");
        }
        let rows = m["rounds"].as_array().expect("rounds");
        assert!(rows.len() >= 2);
        for row in rows {
            for c in COLUMNS {
                assert!(row.get(c).is_some(), "row lacks {c}: {row}");
            }
        }
    }
    assert!(modes[1]["rounds"][1]["false_positive_pages"].is_u64());
    assert!(v["config"]["layout"]
        .as_array()
        .is_some_and(|l| !l.is_empty()));
}

#[test]
fn cli_refuses_bad_options_with_status_2() {
    for args in [
        &["run", "--mem", "0"][..],
        &["run", "--vcpus", "0"],
        &["run", "--mem", "16K", "--vcpus", "8"],
        &["run", "--bandwidth", "0"],
        &["run", "--workload", "bogus"],
        &["run", "--mode", "sideways"],
        &["run", "--mem", "lots"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_softdirty"))
            .args(args)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn cli_plot_writes_an_svg() {
    let dir = std::env::temp_dir().join(format!("softdirty-plot-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("rounds.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_softdirty"))
        .args([
            "run",
            "--mem",
            "32M",
            "--rounds",
            "4",
            "--duration",
            "1",
            "--quiet",
            "--plot",
        ])
        .arg(&svg)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "--quiet printed something");
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.starts_with("<svg") && s.contains("precise") && s.contains("legacy"));
    let _ = std::fs::remove_dir_all(&dir);
}
