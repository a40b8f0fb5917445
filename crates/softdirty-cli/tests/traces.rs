//! Every example trace replays with status 0: the shared ones (the public contract's
//! examples) and the project's own (`tests/traces/`, kernel selftests and oracle probes
//! written down as traces). Also: the exit statuses of the contract.

use std::path::{Path, PathBuf};
use std::process::Command;

use softdirty_trace::{parse, replay};

fn traces_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "trace"))
        .collect();
    v.sort();
    v
}

fn replay_file(p: &Path) -> (i32, String) {
    let text = std::fs::read(p).unwrap();
    let trace = parse::parse_bytes(&text).unwrap_or_else(|e| panic!("{}:{e}", p.display()));
    let mut out = Vec::new();
    let mut diag = Vec::new();
    let s = replay::replay(
        &trace,
        &p.display().to_string(),
        &replay::Options::default(),
        &mut out,
        &mut diag,
    );
    (
        s.exit_status(false),
        String::from_utf8_lossy(&diag).into_owned(),
    )
}

fn check_dir(dir: &Path, at_least: usize) {
    let files = traces_in(dir);
    assert!(
        files.len() >= at_least,
        "expected at least {at_least} traces in {}",
        dir.display()
    );
    for f in files {
        let (status, diag) = replay_file(&f);
        assert_eq!(status, 0, "{} failed:\n{diag}", f.display());
    }
}

#[test]
fn shared_example_traces_replay_cleanly() {
    check_dir(
        &Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("../shared/traces"),
        4,
    );
}

#[test]
fn project_traces_replay_cleanly() {
    check_dir(
        &Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("tests/traces"),
        15,
    );
}

/// Trace v2 (issue 14): the project's v2 traces and every shared v2 example.
#[test]
fn v2_traces_replay_cleanly() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    check_dir(&root.join("tests/traces/v2"), 6);
    check_dir(&root.join("../shared/traces/v2"), 4);
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_softdirty"))
}

fn tmp_trace(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("softdirty-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn binary_exit_statuses_follow_the_contract() {
    let shared = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .join("../shared/traces/quickstart.trace");
    let ok = bin().arg("replay").arg(&shared).output().unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("walk_end "));

    let failing = tmp_trace(
        "fail.trace",
        "mmap 0x20_0000_0000 4p rw noreplace\nexpect softdirty 0x20_0000_0000 4p none\n",
    );
    let out = bin().arg("replay").arg(&failing).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":2: expectation failed"), "{err}");

    let unexpected = tmp_trace("unexpected.trace", "write 0x20_0000_0000\n");
    let out = bin().arg("replay").arg(&unexpected).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = bin()
        .arg("replay")
        .arg(&unexpected)
        .arg("--allow-errors")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: unexpected EFAULT"));

    let malformed = tmp_trace(
        "bad.trace",
        "mmap 0x20_0000_0000 4p rw\nwrite 0x20_0000_0000\nmunmap 0x20_0000_0000 4q\n",
    );
    let out = bin().arg("replay").arg(&malformed).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("{}:3:", malformed.display())),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing runs before the whole file parsed"
    );

    // The mode header overrides --mode.
    let legacy = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .join("../shared/traces/seed-merge-bug.legacy.trace");
    let out = bin()
        .arg("replay")
        .arg(&legacy)
        .args(["--mode", "precise"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}
