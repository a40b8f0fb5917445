//! `softdirty record` on the real kernel: a program that keeps a ledger of its own stores
//! is recorded, and the trace's `write` lines must be exactly the ledger's pages, phase
//! by phase and space by space (no store lost, none invented); every recording replays
//! with status 0 in all five modes; bad use fails clearly and leaves no file; a killed
//! program leaves a valid trace that says it was cut.
//!
//! Skips, with the recorder's own message, where the kernel or the permissions do not
//! allow recording (exit status 3), and where no C compiler (`cc`) builds the test
//! programs of `tests/programs/`.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MODES: [&str; 5] = ["legacy", "precise", "nomerge", "regions", "sticky"];
const P: u64 = 4096;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_softdirty")
}

/// A fresh directory for one test.
fn dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("record")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Builds `tests/programs/NAME.c` into `d`; `None` (after saying why) without `cc`.
fn build(d: &Path, name: &str) -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/programs/{name}.c"));
    let exe = d.join(name);
    match Command::new("cc")
        .args(["-O1", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
    {
        Ok(o) if o.status.success() => Some(exe),
        Ok(o) => panic!(
            "cc {} failed: {}",
            src.display(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            eprintln!("SKIPPED: no C compiler (cc: {e})");
            None
        }
    }
}

/// `softdirty record --out OUT ARGS...`; `None` (after saying why) where the kernel does
/// not allow recording.
fn record(out: &Path, args: &[&str]) -> Option<Output> {
    let o = Command::new(bin())
        .arg("record")
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .unwrap();
    if o.status.code() == Some(3) {
        eprintln!(
            "SKIPPED: recording unavailable: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        return None;
    }
    Some(o)
}

fn replays_in_every_mode(trace: &Path) {
    for m in MODES {
        let o = Command::new(bin())
            .args(["replay", "--mode", m])
            .arg(trace)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success(),
            "{} does not replay in {m} mode: {}",
            trace.display(),
            err.lines().take(8).collect::<Vec<_>>().join("\n")
        );
    }
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

/// The pages the trace's `write` commands cover inside `regions`, by (segment, space): a
/// segment ends at each marker mapping (a one-page read-only mmap at MARK + k pages:
/// segment k is what came before marker k). The trace is read by the trace language.
fn writes_by_segment(
    trace: &str,
    regions: &[(u64, u64)],
) -> BTreeMap<(u64, String), BTreeSet<u64>> {
    use softdirty::backend::{Command, Op};
    use softdirty_trace::lower::{lower, Action, Bindings};
    const MARK: u64 = 0x5a00_0000_0000;
    let t = softdirty_trace::parse::parse(trace).unwrap();
    let names = Bindings::new();
    let mut out: BTreeMap<(u64, String), BTreeSet<u64>> = BTreeMap::new();
    let (mut seg, mut space) = (0u64, "main".to_string());
    for c in &t.commands {
        let Ok(Action::Perform { cmd, .. }) = lower(&c.node, &names) else {
            continue;
        };
        match cmd {
            Command::Space(name) => space = name,
            Command::Op(Op::Mmap { addr, len: P, .. }) if addr >> 40 == MARK >> 40 => {
                seg = (addr - MARK) / P + 1;
            }
            Command::Write { addr, len } => {
                for p in (addr..addr + len).step_by(P as usize) {
                    if regions.iter().any(|&(s, e)| (s..e).contains(&p)) {
                        out.entry((seg, space.clone())).or_default().insert(p);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Every store of the ledger program, and nothing else, in the segment and space where
/// it happened: stores before an mprotect that takes write permission away, around an
/// mremap move, in a fork child, from four threads, and none for loads after a dontneed.
#[test]
fn the_trace_holds_exactly_the_programs_stores() {
    let d = dir("ledger");
    let Some(exe) = build(&d, "ledger") else {
        return;
    };
    let (trace, ledger) = (d.join("ledger.trace"), d.join("ledger.txt"));
    let Some(o) = record(
        &trace,
        &["--", exe.to_str().unwrap(), ledger.to_str().unwrap()],
    ) else {
        return;
    };
    assert!(
        o.status.success(),
        "record failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = std::fs::read_to_string(&trace).unwrap();
    assert!(text.contains("# ended: exit status 0"), "{text:.2000}");
    let mut want: BTreeMap<(u64, String), BTreeSet<u64>> = BTreeMap::new();
    for l in std::fs::read_to_string(&ledger).unwrap().lines() {
        let mut t = l.split_ascii_whitespace();
        let phase: u64 = t.next().unwrap().parse().unwrap();
        let space = t.next().unwrap().to_string();
        let set = want.entry((phase, space)).or_default();
        set.extend(t.map(hex));
    }
    want.retain(|_, v| !v.is_empty());
    assert_eq!(
        want.len(),
        6,
        "the ledger has six phases with stores: {want:?}"
    );
    let regions = [
        (0x5000_0000_0000, 0x5000_0000_0000 + 64 * P),
        (0x5100_0000_0000, 0x5100_0000_0000 + 64 * P),
        (0x5200_0000_0000, 0x5200_0000_0000 + 128 * P),
    ];
    let got = writes_by_segment(&text, &regions);
    for (k, pages) in &want {
        let g = got.get(k).cloned().unwrap_or_default();
        let lost: Vec<_> = pages.difference(&g).map(|p| format!("{p:#x}")).collect();
        let invented: Vec<_> = g.difference(pages).map(|p| format!("{p:#x}")).collect();
        assert!(
            lost.is_empty() && invented.is_empty(),
            "phase {} in space {}: lost {lost:?}, invented {invented:?}",
            k.0,
            k.1
        );
    }
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(k)).collect();
    assert!(
        extra.is_empty(),
        "writes where the ledger has none: {extra:?}"
    );
    replays_in_every_mode(&trace);
}

#[test]
fn a_missing_program_is_bad_use_and_leaves_no_file() {
    let d = dir("missing");
    let out = d.join("x.trace");
    let Some(o) = record(&out, &["--", "/nonexistent/softdirty-no-such-program"]) else {
        return;
    };
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such program"));
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0, "a file was left");
    let o = record(&out, &["--", "softdirty-no-such-program-in-path"]).unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("in PATH"));
}

#[test]
fn an_unwritable_out_fails_before_the_program_runs() {
    let d = dir("unwritable");
    let marker = d.join("ran");
    let o = record(
        Path::new("/nonexistent-dir/x.trace"),
        &["--", "sh", "-c", &format!("touch {}", marker.display())],
    )
    .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--out"));
    assert!(!marker.exists(), "the program ran");
}

#[test]
fn a_killed_program_leaves_a_valid_trace_that_says_it_was_cut() {
    let d = dir("killed");
    let out = d.join("k.trace");
    let Some(o) = record(&out, &["--", "sh", "-c", "kill -9 $$"]) else {
        return;
    };
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.contains("# cut: killed by signal 9"),
        "{}",
        &text[..text.len().min(1500)]
    );
    replays_in_every_mode(&out);
    let out = d.join("m.trace");
    let t0 = std::time::Instant::now();
    let o = record(&out, &["--max-seconds", "1", "--", "sleep", "30"]).unwrap();
    assert!(o.status.success());
    assert!(t0.elapsed().as_secs() < 20, "--max-seconds did not stop it");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("# cut: stopped after --max-seconds 1"));
    replays_in_every_mode(&out);
}

/// A shell pipeline: forks, execs and a pipe, as the spaces `main`, `c1`, `e1`, ...; the
/// recording replays in every mode.
#[test]
fn forks_and_execs_become_spaces_that_replay() {
    let d = dir("shell");
    let out = d.join("sh.trace");
    let Some(o) = record(
        &out,
        &[
            "--",
            "sh",
            "-c",
            "ls / > /dev/null; echo x | cat > /dev/null",
        ],
    ) else {
        return;
    };
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&out).unwrap();
    let forks = text.lines().filter(|l| l.starts_with("fork ")).count();
    let execs = text.lines().filter(|l| l.starts_with("space e")).count();
    assert!(
        forks >= 2 && execs >= 2,
        "{forks} forks, {execs} exec'd spaces"
    );
    replays_in_every_mode(&out);
}

/// Asking for soft-dirty on a kernel without it is exit status 3, with the remedy, and
/// leaves no file (where the kernel has soft-dirty, the recording is made instead).
#[test]
fn a_missing_kernel_feature_is_named_and_leaves_no_file() {
    let d = dir("feature");
    let out = d.join("x.trace");
    let o = Command::new(bin())
        .args(["record", "--source", "softdirty", "--out"])
        .arg(&out)
        .args(["--", "true"])
        .output()
        .unwrap();
    if o.status.success() {
        eprintln!("SKIPPED: this kernel has soft-dirty");
        return;
    }
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("CONFIG_MEM_SOFT_DIRTY") && err.contains("--source uffd"),
        "{err}"
    );
    assert!(!out.exists());
}
