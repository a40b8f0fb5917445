//! The command line has no surprises (issue 13): impossible or ignored options are refused
//! with exit status 2 before any work, `-` is stdout wherever an output path is taken,
//! output paths are checked before the work, and no argument vector makes it panic.
//!
//! Every test is short: tiny guests, one or two rounds, fractions of a second.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use proptest::prelude::*;

/// What a run of the binary gave.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// peak resident set of the child (`wait4`'s `ru_maxrss`)
    max_rss_kib: i64,
}

impl Out {
    fn ctx(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.stdout.chars().take(2000).collect::<String>(),
            self.stderr
        )
    }
}

/// Runs the binary with `args` in `dir` (a scratch directory: relative outputs land
/// there); kills it after 30 s (a hang guard only, never an assertion on time).
// The child is reaped by `wait4` (for its peak RSS), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
fn sd_in(dir: &Path, args: &[&str]) -> Out {
    let mut child = Command::new(env!("CARGO_BIN_EXE_softdirty"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn softdirty");
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let ro = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let re = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    // A hang is killed after 120 s and then fails the signal assertion below (a debug
    // build on a loaded 2-core machine, beside the other test binaries, took over 30 s).
    let (raw, max_rss_kib) = common::wait_with_rusage(child.id(), Duration::from_secs(120));
    use std::os::unix::process::ExitStatusExt;
    let status = std::process::ExitStatus::from_raw(raw);
    let stdout = String::from_utf8_lossy(&ro.join().expect("stdout reader")).into_owned();
    let stderr = String::from_utf8_lossy(&re.join().expect("stderr reader")).into_owned();
    assert!(
        status.signal().is_none(),
        "softdirty {args:?} died of signal {:?}\n{stderr}",
        status.signal()
    );
    assert!(
        !stderr.contains("panicked"),
        "softdirty {args:?} panicked:\n{stderr}"
    );
    Out {
        code: status.code(),
        stdout,
        stderr,
        max_rss_kib,
    }
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("softdirty-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

fn sd(args: &[&str]) -> Out {
    sd_in(&std::env::temp_dir(), args)
}

/// A short `run`: a tiny guest, one precise round.
const SHORT: [&str; 9] = [
    "run",
    "--mem",
    "1M",
    "--rounds",
    "1",
    "--duration",
    "0.2",
    "--mode",
    "precise",
];

fn short<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = SHORT.to_vec();
    v.extend_from_slice(extra);
    v
}

// ------------------------------------------------------------------ 1. many vCPUs

#[test]
fn many_vcpus_run_and_too_many_are_refused() {
    // 512 vCPUs in a 64 MiB guest: the thread stacks shrink to fit (it used to wrap).
    let o = sd(&[
        "run",
        "--vcpus",
        "512",
        "--mem",
        "64M",
        "--rounds",
        "1",
        "--duration",
        "0.2",
        "--mode",
        "precise",
        "--quiet",
    ]);
    assert_eq!(o.code, Some(0), "{}", o.ctx());
    let o = sd(&short(&["--vcpus", "2000"]));
    assert_eq!(o.code, Some(2), "{}", o.ctx());
    assert!(o.stderr.contains("1024"), "{}", o.ctx());
    // More vCPUs than pages.
    let o = sd(&short(&["--vcpus", "300"]));
    assert_eq!(o.code, Some(2), "{}", o.ctx());
    assert!(o.stderr.contains("every vCPU needs a page"), "{}", o.ctx());
}

// ------------------------------------------------------------------ 2. --mem limit

#[test]
fn absurd_dirty_rates_are_refused_and_large_ones_do_not_overflow() {
    let o = sd(&[
        "run",
        "--mem",
        "256K",
        "--rounds",
        "1",
        "--duration",
        "0.1",
        "--dirty-rate",
        "18446744073709551615",
    ]);
    assert_eq!(o.code, Some(2), "{}", o.ctx());
    assert!(
        o.stderr.contains("--dirty-rate") && o.stderr.contains("at most"),
        "{}",
        o.ctx()
    );
    assert!(o.stdout.is_empty(), "work started: {}", o.ctx());
    // The largest allowed rate with many vCPUs runs (the quota arithmetic is capped and
    // saturating).
    let o = sd(&[
        "run",
        "--mem",
        "4M",
        "--vcpus",
        "64",
        "--rounds",
        "1",
        "--duration",
        "0.2",
        "--dirty-rate",
        "1000000000000",
        "--quiet",
    ]);
    assert_eq!(o.code, Some(0), "{}", o.ctx());
}

#[test]
fn too_much_memory_is_refused_with_the_limit() {
    for mem in ["2T", "1984G4K", "16T"] {
        let o = sd(&["run", "--mem", mem, "--rounds", "1", "--duration", "0.2"]);
        if mem == "1984G4K" {
            // Not a size: refused by the parser.
            assert_eq!(o.code, Some(2), "{}", o.ctx());
            continue;
        }
        assert_eq!(o.code, Some(2), "{}", o.ctx());
        assert!(o.stderr.contains("at most 1984 GiB"), "{}", o.ctx());
        assert!(o.stderr.contains("4-level paging"), "{}", o.ctx());
        assert!(!o.stderr.contains("Mmap"), "a Debug dump: {}", o.ctx());
        assert!(o.stdout.is_empty(), "work started: {}", o.ctx());
    }
    let help = sd(&["run", "--help"]);
    assert!(help.stdout.contains("at most 1984G"), "{}", help.ctx());
}

// ------------------------------------------------------------------ 3. `-` is stdout

#[test]
fn dash_is_stdout_for_every_output_path() {
    let dir = scratch("dash");
    let o = sd_in(&dir, &short(&["--plot", "-"]));
    assert_eq!(o.code, Some(0), "{}", o.ctx());
    assert!(o.stdout.starts_with("<svg"), "{}", o.ctx());
    assert!(o.stdout.trim_end().ends_with("</svg>"), "{}", o.ctx());
    assert!(!dir.join("-").exists(), "a file named `-` was written");

    let o = sd_in(&dir, &short(&["--json", "-", "--quiet"]));
    assert_eq!(o.code, Some(0), "{}", o.ctx());
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("JSON on stdout");
    assert!(v["modes"].is_array());

    let o = sd_in(&dir, &short(&["--json", "-", "--plot", "-"]));
    assert_eq!(o.code, Some(2), "{}", o.ctx());
    assert!(o.stdout.is_empty(), "{}", o.ctx());

    let o = sd_in(&dir, &["compare", "--workload", "seed", "--plot", "-"]);
    assert_eq!(o.code, Some(0), "{}", o.ctx());
    assert!(o.stdout.starts_with("<svg"), "{}", o.ctx());
    assert!(!dir.join("-").exists(), "a file named `-` was written");

    let o = sd_in(
        &dir,
        &["compare", "--workload", "seed", "--json", "--plot", "-"],
    );
    assert_eq!(o.code, Some(2), "{}", o.ctx());
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ 4. SVG only

#[test]
fn a_plot_must_be_named_svg() {
    let dir = scratch("png");
    for cmd in [
        short(&["--plot", "x.png"]),
        vec!["compare", "--plot", "x.png"],
    ] {
        let o = sd_in(&dir, &cmd);
        assert_eq!(o.code, Some(2), "{}", o.ctx());
        assert!(o.stderr.contains("SVG"), "{}", o.ctx());
        assert!(!dir.join("x.png").exists());
    }
    // Any case of the extension is fine.
    let o = sd_in(&dir, &short(&["--plot", "x.SVG", "--quiet"]));
    assert_eq!(o.code, Some(0), "{}", o.ctx());
    assert!(std::fs::read_to_string(dir.join("x.SVG"))
        .unwrap()
        .starts_with("<svg"));
    for sub in ["run", "compare"] {
        let h = sd(&[sub, "--help"]);
        assert!(h.stdout.contains("must end in .svg"), "{}", h.ctx());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ 5. ignored flags

#[test]
fn flags_ignored_in_combination_are_refused() {
    for extra in [
        &["--mode", "precise"][..],
        &["--plot", "s.svg"],
        &["--rounds", "3"],
        &["--vcpus", "4"],
        &["--duration", "1"],
        &["--bandwidth", "1G"],
        &["--dirty-rate", "5"],
        &["--downtime-ms", "5"],
        &["--churn-rate", "5"],
    ] {
        let mut args = vec!["run", "--scaling", "--mem", "1M", "--scaling-secs", "0.01"];
        args.extend_from_slice(extra);
        let o = sd(&args);
        assert_eq!(o.code, Some(2), "{extra:?}: {}", o.ctx());
        assert!(o.stderr.contains("--scaling"), "{}", o.ctx());
        assert!(o.stdout.is_empty(), "{}", o.ctx());
    }
    let o = sd(&short(&["--scaling-secs", "2"]));
    assert_eq!(o.code, Some(2), "{}", o.ctx());
    assert!(o.stderr.contains("only used with --scaling"), "{}", o.ctx());
    let o = sd(&[
        "run",
        "--scaling",
        "--workload",
        "trace:x.trace",
        "--scaling-secs",
        "0.01",
    ]);
    assert_eq!(o.code, Some(2), "{}", o.ctx());
    assert!(o.stderr.contains("trace:FILE"), "{}", o.ctx());
    // compare: --scale does not scale a trace.
    let o = sd(&["compare", "--scale", "3", "--workload", "trace:x.trace"]);
    assert_eq!(o.code, Some(2), "{}", o.ctx());
    assert!(o.stderr.contains("--scale 3 has no effect"), "{}", o.ctx());
    // run: --mem does not size a trace's guest.
    let dir = scratch("mem-with-trace");
    let t = trace(&dir, "t.trace", "mmap 0x10_0000_0000 1M rw\n");
    let w = format!("trace:{t}");
    let o = sd(&["run", "--workload", &w, "--mem", "64M", "--duration", "0.1"]);
    assert_eq!(o.code, Some(2), "{}", o.ctx());
    assert!(
        o.stderr.contains("--mem") && o.stderr.contains("does not apply"),
        "{}",
        o.ctx()
    );
    assert!(o.stdout.is_empty(), "{}", o.ctx());
    let _ = std::fs::remove_dir_all(&dir);
}

/// fuzz: vacuous or impossible counts and budgets are refused before any case, and a
/// case size that would not fit in memory is refused, not aborted on.
#[test]
fn fuzz_counts_are_checked() {
    for (flag, v) in [
        ("--ops", "0"),
        ("--ops", "10000000000"),
        ("--cases", "0"),
        ("--max-seconds", "nan"),
        ("--max-seconds", "0"),
        ("--max-seconds", "inf"),
    ] {
        let o = sd(&["fuzz", "--against", "reference", flag, v]);
        assert_eq!(o.code, Some(2), "{flag} {v}: {}", o.ctx());
        assert!(o.stderr.contains(flag), "{flag} {v}: {}", o.ctx());
        assert!(o.stdout.is_empty(), "{}", o.ctx());
    }
}

// ------------------------------------------------------------------ 6. paths first

#[test]
fn unwritable_outputs_fail_before_the_work() {
    let dir = scratch("unwritable");
    let bad = dir.join("no-such-dir").join("out.json");
    let bad = bad.to_str().unwrap();
    let bad_svg = dir.join("no-such-dir").join("out.svg");
    let bad_svg = bad_svg.to_str().unwrap();
    // Many rounds and a long budget: the error must come before them (no tables).
    let base = [
        "run",
        "--mem",
        "1M",
        "--rounds",
        "1000",
        "--duration",
        "20",
        "--mode",
        "precise",
    ];
    for (flag, p) in [("--json", bad), ("--plot", bad_svg)] {
        let mut args = base.to_vec();
        args.extend([flag, p]);
        let o = sd(&args);
        assert_eq!(o.code, Some(2), "{}", o.ctx());
        assert!(o.stderr.contains("cannot write"), "{}", o.ctx());
        assert!(o.stdout.is_empty(), "the simulation ran: {}", o.ctx());
    }
    let o = sd(&["compare", "--scale", "10000", "--plot", bad_svg]);
    assert_eq!(o.code, Some(2), "{}", o.ctx());
    assert!(o.stderr.contains("cannot write"), "{}", o.ctx());
    assert!(o.stdout.is_empty(), "{}", o.ctx());
    // fuzz writes --out only on a failure: it is checked before the first case.
    let bad_trace = dir.join("no-such-dir").join("f.trace");
    let o = sd(&[
        "fuzz",
        "--against",
        "reference",
        "--cases",
        "1000000",
        "--out",
        bad_trace.to_str().unwrap(),
    ]);
    assert_eq!(o.code, Some(2), "{}", o.ctx());
    assert!(o.stderr.contains("cannot write"), "{}", o.ctx());
    assert!(o.stdout.is_empty(), "{}", o.ctx());
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ 7. --scale

#[test]
fn compare_scale_is_checked_and_quiet_off_a_terminal() {
    for s in ["0", "10001", "-1"] {
        let o = sd(&["compare", "--scale", s]);
        assert_eq!(o.code, Some(2), "{s}: {}", o.ctx());
        if s != "-1" {
            assert!(o.stderr.contains("not in 1..=10000"), "{}", o.ctx());
        }
    }
    // stderr is a pipe here: no progress bar on it.
    let o = sd(&["compare", "--workload", "seed", "--scale", "2"]);
    assert_eq!(o.code, Some(0), "{}", o.ctx());
    assert!(o.stderr.is_empty(), "{}", o.ctx());
    assert!(o.stdout.contains("workload seed"), "{}", o.ctx());
}

// ------------------------------------------------------------------ 8. bench --filter

#[test]
fn bench_filter_that_matches_nothing_is_an_error() {
    let o = sd(&["bench", "--filter", "nomatch", "--quick"]);
    assert_eq!(o.code, Some(2), "{}", o.ctx());
    assert!(o.stderr.contains("no benchmark matches"), "{}", o.ctx());
    assert!(o.stderr.contains("mark256/redirty"), "{}", o.ctx());
    assert!(o.stdout.is_empty(), "{}", o.ctx());
}

// ------------------------------------------------------------------ 9. help texts

#[test]
fn one_default_command_and_demo_covers_every_mode() {
    let h = sd(&["--help"]);
    assert_eq!(h.code, Some(0));
    let defaults: Vec<&str> = h.stdout.lines().filter(|l| l.contains("default")).collect();
    assert_eq!(defaults.len(), 1, "{}", h.ctx());
    assert!(defaults[0].trim_start().starts_with("run"), "{}", h.ctx());
    let d = sd(&["demo"]);
    assert_eq!(d.code, Some(0), "{}", d.ctx());
    for m in ["legacy", "sticky", "nomerge", "precise", "regions"] {
        assert!(
            d.stdout.lines().any(|l| l.starts_with(m)),
            "{m}: {}",
            d.ctx()
        );
    }
    let dh = sd(&["demo", "--help"]);
    assert!(dh.stdout.contains("regions"), "{}", dh.ctx());
}

// ------------------------------------------------------------------ 10 and 11. replay

/// Writes `text` as a trace file in `dir`.
fn trace(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn a_legacy_trace_on_uffd_says_that_flavour_is_precise() {
    let dir = scratch("uffd-legacy");
    let t = trace(
        &dir,
        "l.trace",
        "mode legacy\nmmap 0x20_0000_0000 4p rw noreplace\nwrite 0x20_0000_0000\n\
         expect softdirty 0x20_0000_0000 1p all\n",
    );
    let o = sd(&["replay", "--backend", "kernel=uffd", &t]);
    if o.code == Some(3) {
        eprintln!("skipped: the uffd flavour cannot run here: {}", o.stderr);
        return;
    }
    assert!(
        o.stderr.contains("uffd flavour reproduces `precise`"),
        "{}",
        o.ctx()
    );
    assert!(o.stderr.contains("`legacy`"), "{}", o.ctx());
    // A precise trace on uffd: no warning.
    let t = trace(
        &dir,
        "p.trace",
        "mode precise\nmmap 0x20_0000_0000 4p rw noreplace\nwrite 0x20_0000_0000\n",
    );
    let o = sd(&["replay", "--backend", "kernel=uffd", &t]);
    assert_eq!(o.code, Some(0), "{}", o.ctx());
    assert!(!o.stderr.contains("warning"), "{}", o.ctx());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_skip_reason_is_printed_once() {
    let dir = scratch("skip-once");
    let t = trace(
        &dir,
        "f.trace",
        "mode precise\nmmap 0x20_0000_0000 4p rw noreplace\n\
         write 0x20_0000_0000\nexpect faults 1\n\
         write 0x20_0000_1000\nexpect faults 1\n\
         write 0x20_0000_2000\nexpect faults 1\n",
    );
    let o = sd(&["replay", "--backend", "kernel=uffd", &t]);
    if o.code == Some(3) {
        eprintln!("skipped: the uffd flavour cannot run here: {}", o.stderr);
        return;
    }
    assert_eq!(o.code, Some(0), "{}", o.ctx());
    assert_eq!(
        o.stderr
            .matches("does not count simulated write faults")
            .count(),
        1,
        "{}",
        o.ctx()
    );
    assert!(
        o.stderr
            .contains("3 skipped: expect faults (lines 4, 6, 8)"),
        "{}",
        o.ctx()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ 12. compare --plot

/// The text of every `<text>` element of an SVG document.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = t.split_once('>')?.1;
            Some(body.split("</text>").next()?.trim().to_string())
        })
        .collect()
}

#[test]
fn compare_plot_has_distinct_colours_labels_and_integer_counts() {
    let o = sd(&["compare", "--plot", "-"]);
    assert_eq!(o.code, Some(0), "{}", o.ctx());
    let svg = &o.stdout;
    let texts = svg_texts(svg);
    for w in ["seed", "hildenbrand", "arena", "jit"] {
        // Once per panel.
        assert_eq!(
            texts.iter().filter(|t| *t == w).count(),
            4,
            "{w}: {texts:?}"
        );
    }
    for label in ["workload", "pages", "VMAs", "bytes"] {
        assert!(texts.iter().any(|t| t == label), "{label}: {texts:?}");
    }
    for t in &texts {
        assert!(
            !(t.ends_with(".0") && t[..t.len() - 2].parse::<u64>().is_ok()),
            "a count printed as a float: {t}"
        );
    }
    // The legend's five entries and their swatches: one colour per mode.
    let mut colours: Vec<&str> = svg
        .split("fill=\"#")
        .skip(1)
        .map(|s| &s[..6])
        .filter(|c| *c != "FFFFFF" && *c != "000000")
        .collect();
    colours.sort_unstable();
    colours.dedup();
    assert!(colours.len() >= 5, "{colours:?}");
}

// ------------------------------------------------------------------ 13. run --plot

#[test]
fn run_plot_last_point_is_the_stop_and_copy_set() {
    let dir = scratch("stop-point");
    let o = sd_in(
        &dir,
        &short(&["--json", "r.json", "--plot", "r.svg", "--quiet"]),
    );
    assert_eq!(o.code, Some(0), "{}", o.ctx());
    let svg = std::fs::read_to_string(dir.join("r.svg")).unwrap();
    assert!(
        svg_texts(&svg)
            .iter()
            .any(|t| t.contains("last = stop-and-copy set")),
        "{svg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ no panics

/// A value for a flag: valid-looking, hostile or empty.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("1".to_string()),
        Just("2".to_string()),
        Just(String::new()),
        Just("-".to_string()),
        Just("18446744073709551615".to_string()),
        Just("18446744073709551616".to_string()),
        Just("99999999999999999999999".to_string()),
        Just("4294967296".to_string()),
        Just("1e308".to_string()),
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("-0.5".to_string()),
        Just("16T".to_string()),
        Just("1p".to_string()),
        Just("x.svg".to_string()),
        Just("x.png".to_string()),
        Just("/no-such-dir/x".to_string()),
        Just("trace:/no-such-file".to_string()),
        Just("precise".to_string()),
        Just("legacy".to_string()),
        Just("kernel=uffd".to_string()),
        Just("zipf".to_string()),
        "[a-z]{1,6}",
    ]
}

/// Flags of each subcommand, with whether they take a value. The bounded base arguments
/// (tiny guest, one round, short budget) come first; a random flag that repeats one of
/// them is a usage error, which is fine.
const RUN_FLAGS: &[(&str, bool)] = &[
    ("--vcpus", true),
    ("--workload", true),
    ("--bandwidth", true),
    ("--seed", true),
    ("--mode", true),
    ("--dirty-rate", true),
    ("--downtime-ms", true),
    ("--zipf-s", true),
    ("--churn-rate", true),
    ("--json", true),
    ("--plot", true),
    ("--quiet", false),
    ("--scaling", false),
    ("--scaling-secs", true),
    ("--mem", true),
    ("--rounds", true),
];
const COMPARE_FLAGS: &[(&str, bool)] = &[
    ("--seed", true),
    ("--scale", true),
    ("--json", false),
    ("--plot", true),
    ("--workload", true),
];
const BENCH_FLAGS: &[(&str, bool)] = &[("--quick", false), ("--json", false), ("--filter", true)];
const REPLAY_FLAGS: &[(&str, bool)] = &[
    ("--mode", true),
    ("--allow-errors", false),
    ("--backend", true),
];

fn argv() -> impl Strategy<Value = Vec<String>> {
    (
        0usize..4,
        prop::collection::vec((any::<prop::sample::Index>(), value(), any::<bool>()), 0..5),
    )
        .prop_map(|(sub, picks)| {
            let (base, flags): (Vec<&str>, &[(&str, bool)]) = match sub {
                0 => (
                    vec!["run", "--mem", "256K", "--rounds", "1", "--duration", "0.1"],
                    RUN_FLAGS,
                ),
                // One small workload; another --workload is a repeat (a usage error).
                1 => (vec!["compare", "--workload", "seed"], COMPARE_FLAGS),
                // Never the benchmarks themselves: a filter no case matches.
                2 => (vec!["bench", "--filter", "zz-no-such-case"], BENCH_FLAGS),
                _ => (vec!["replay"], REPLAY_FLAGS),
            };
            let mut v: Vec<String> = base.iter().map(|s| s.to_string()).collect();
            for (ix, val, positional) in picks {
                let (flag, takes) = flags[ix.index(flags.len())];
                v.push(flag.to_string());
                if takes {
                    v.push(val.clone());
                }
                if positional && sub == 3 {
                    v.push(val); // a trace file name for replay
                }
            }
            v
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Each case spawns the binary: its own knob, not PROPTEST_CASES (CI sets that to
        // 10,000 for the model proptests, which would be hours of process spawns here).
        cases: std::env::var("SOFTDIRTY_CLI_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_argument_vector_panics(args in argv()) {
        let dir = scratch("fuzz-args");
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        // sd_in asserts no panic message and no death by signal.
        let o = sd_in(&dir, &a);
        // 3 is replay's "backend unavailable" (a kernel flavour this machine lacks).
        let replay_unavailable = a[0] == "replay"
            && o.code == Some(3)
            && o.stderr.contains("cannot run here");
        prop_assert!(
            matches!(o.code, Some(0..=2)) || replay_unavailable,
            "softdirty {args:?}: {}",
            o.ctx()
        );
        // Bounded memory: the base arguments pin a 256 KiB guest; no flag may make the
        // tool allocate beyond what it touches.
        prop_assert!(
            o.max_rss_kib < 256 * 1024,
            "softdirty {args:?}: peak RSS {} KiB",
            o.max_rss_kib
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

// ------------------------------------------------------ aborted rounds and dirty rings

/// `--drop-round-probability`: rounds whose transfer fails are aborted, their pages given
/// back, and the destination still equals the source at the end (the run's own ledger:
/// a version per page, copied when a harvest that reported it is committed), with the
/// bitmap harvest and with dirty rings, in both modes. A harvest whose abort loses pages
/// (the twin `restore_snapshot`) leaves stale pages here.
#[test]
fn aborted_rounds_lose_nothing_with_bitmaps_and_rings() {
    for harvest in ["bitmap", "ring"] {
        let mut args = vec![
            "run",
            "--mem",
            "64M",
            "--duration",
            "1",
            "--rounds",
            "12",
            "--downtime-ms",
            "1",
            "--drop-round-probability",
            "0.5",
            "--harvest",
            harvest,
            "--json",
            "-",
        ];
        if harvest == "ring" {
            args.extend(["--ring-size", "256"]);
        }
        let o = sd(&args);
        assert_eq!(o.code, Some(0), "{}", o.ctx());
        let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("JSON on stdout");
        let mut aborted = 0;
        for m in v["modes"].as_array().unwrap() {
            let mode = m["mode"].as_str().unwrap();
            assert_eq!(
                m["destination_stale_pages"],
                0,
                "{harvest}/{mode}: writes lost: {}",
                o.ctx()
            );
            aborted += m["aborted_rounds"].as_u64().unwrap();
            let ring = harvest == "ring" && mode == "precise";
            assert_eq!(m["harvest"], if ring { "ring" } else { "bitmap" });
            assert_eq!(m["ring"].is_object(), ring, "{mode}");
            if ring {
                let r = &m["ring"];
                assert!(r["entries"].as_u64().unwrap() > 0, "{r}");
                assert_eq!(r["vcpu_dirtied_pages"].as_array().unwrap().len(), 2);
            }
        }
        assert!(aborted > 0, "{harvest}: no round was aborted: {}", o.ctx());
    }
    // The table says it too.
    let o = sd(&[
        "run",
        "--mem",
        "1M",
        "--duration",
        "0.2",
        "--drop-round-probability",
        "0.5",
    ]);
    assert_eq!(o.code, Some(0), "{}", o.ctx());
    assert!(
        o.stdout.contains("0 stale pages (equals the source"),
        "{}",
        o.ctx()
    );
}

#[test]
fn ring_and_drop_options_are_checked() {
    for (extra, msg) in [
        (&["--drop-round-probability", "1.5"][..], "between 0 and 1"),
        (&["--drop-round-probability", "NaN"][..], "between 0 and 1"),
        (&["--ring-size", "64"][..], "only used with --harvest ring"),
        (
            &["--harvest", "ring", "--ring-size", "0"][..],
            "KVM's limit",
        ),
        (
            &["--harvest", "ring", "--ring-size", "65537"][..],
            "KVM's limit",
        ),
    ] {
        let o = sd(&short(extra));
        assert_eq!(o.code, Some(2), "{extra:?}: {}", o.ctx());
        assert!(o.stderr.contains(msg), "{extra:?}: {}", o.ctx());
        assert!(o.stdout.is_empty(), "work started: {}", o.ctx());
    }
    let o = sd(&["run", "--scaling", "--harvest", "ring"]);
    assert_eq!(o.code, Some(2), "{}", o.ctx());
}
