//! `softdirty replay` on hostile input (issue 13, "bounded input"): endless devices, an
//! endless line on a pipe, invalid bytes early in a big file. Each must fail at once with
//! exit status 2 and `FILE:LINE:COL`, in little memory: the child's peak RSS is read from
//! `wait4`. The 60-second kill is only a guard against a hang, never a timing assertion.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The peak RSS a rejected input may cost.
const MAX_RSS_KIB: i64 = 16 * 1024;
/// Only a guard against a hang.
const KILL_AFTER: Duration = Duration::from_secs(60);

struct Outcome {
    /// the exit status, or `None` if killed by a signal
    status: Option<i32>,
    stderr: String,
    max_rss_kib: i64,
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("softdirty-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs `softdirty replay ARG` with `stdin`, feeding it with `feed` (in a thread) if
/// given; waits with `wait4` for its status and peak RSS.
fn replay(
    arg: &str,
    stdin: Stdio,
    feed: Option<Box<dyn FnOnce(std::process::ChildStdin) + Send>>,
) -> Outcome {
    let err_path = tmp(&format!("stderr-{}", arg.replace('/', "_")));
    let child = Command::new(env!("CARGO_BIN_EXE_softdirty"))
        .args(["replay", arg])
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let mut child = child;
    let feeder = match (feed, child.stdin.take()) {
        (Some(f), Some(w)) => Some(std::thread::spawn(move || f(w))),
        _ => None,
    };
    let (status, max_rss_kib) = common::wait_with_rusage(child.id(), KILL_AFTER);
    if let Some(t) = feeder {
        t.join().unwrap();
    }
    let mut stderr = String::new();
    File::open(&err_path)
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let _ = std::fs::remove_file(&err_path);
    Outcome {
        status: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        stderr,
        max_rss_kib,
    }
}

/// Exit status 2, one `NAME:LINE:COL: message` on stderr, a small peak RSS.
#[track_caller]
fn assert_rejected(o: &Outcome, name: &str, line: usize, msg: &str) {
    assert_eq!(o.status, Some(2), "stderr: {}", o.stderr);
    let prefix = format!("{name}:{line}:");
    let first = o.stderr.lines().next().unwrap_or_default();
    let rest = first.strip_prefix(&prefix).unwrap_or_else(|| {
        panic!("expected {prefix}COL: ..., got {:?}", o.stderr);
    });
    let (col, text) = rest.split_once(": ").unwrap_or(("", ""));
    assert!(col.parse::<usize>().is_ok_and(|c| c >= 1), "{first}");
    assert!(text.contains(msg), "{first} does not contain {msg:?}");
    assert!(
        o.max_rss_kib < MAX_RSS_KIB,
        "peak RSS {} KiB (limit {MAX_RSS_KIB} KiB)",
        o.max_rss_kib
    );
}

#[test]
fn dev_zero_is_a_control_byte_at_1_1() {
    let o = replay("/dev/zero", Stdio::null(), None);
    assert_rejected(&o, "/dev/zero", 1, "control byte 0x00");
    assert!(o.stderr.starts_with("/dev/zero:1:1: "), "{}", o.stderr);
}

#[test]
fn dev_urandom_fails_on_its_first_line() {
    let o = replay("/dev/urandom", Stdio::null(), None);
    // Random bytes: an invalid sequence, a control byte or (hardly) a malformed command
    // on line 1, or a later line if the first bytes happen to be a newline.
    assert_eq!(o.status, Some(2), "stderr: {}", o.stderr);
    assert!(o.stderr.starts_with("/dev/urandom:"), "{}", o.stderr);
    assert_rejected(&o, "/dev/urandom", line_of(&o.stderr), "");
}

/// The line number of a `NAME:LINE:COL: ...` message.
fn line_of(stderr: &str) -> usize {
    stderr
        .split(':')
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or(0)
}

#[test]
fn an_endless_line_on_a_pipe_is_too_long() {
    let feed = |mut w: std::process::ChildStdin| {
        let chunk = vec![b'#'; 1 << 20];
        // 10 GB without a newline, or until the reader is gone (EPIPE: Rust ignores
        // SIGPIPE, so the write fails instead).
        for _ in 0..10 * 1024 {
            if w.write_all(&chunk).is_err() {
                return;
            }
        }
    };
    let o = replay("/dev/stdin", Stdio::piped(), Some(Box::new(feed)));
    assert_rejected(&o, "/dev/stdin", 1, "line too long");
    assert!(o.stderr.starts_with("/dev/stdin:1:65537: "), "{}", o.stderr);
}

/// A file of `valid` lines, then `bad` as line `valid + 1`, then 32 MiB of valid lines
/// that must never be read.
fn file_with_bad_line(name: &str, bad: &[u8]) -> PathBuf {
    let p = tmp(name);
    let mut f = std::io::BufWriter::new(File::create(&p).unwrap());
    f.write_all(b"mmap $a 4p rw\nwrite $a+1p\n").unwrap();
    f.write_all(bad).unwrap();
    f.write_all(b"\n").unwrap();
    let line = b"write $a+2p 1p\n";
    for _ in 0..(32 << 20) / line.len() {
        f.write_all(line).unwrap();
    }
    f.flush().unwrap();
    p
}

#[test]
fn invalid_utf8_on_line_3_stops_there() {
    let p = file_with_bad_line("utf8.trace", b"write $a \xff\xfe");
    let name = p.display().to_string();
    let o = replay(&name, Stdio::null(), None);
    assert_rejected(&o, &name, 3, "UTF-8");
    assert!(
        o.stderr.starts_with(&format!("{name}:3:10: ")),
        "{}",
        o.stderr
    );
    let _ = std::fs::remove_file(&p);
}

#[test]
fn a_nul_byte_is_malformed_even_in_a_comment() {
    let p = file_with_bad_line("nul.trace", b"write $a # \0");
    let name = p.display().to_string();
    let o = replay(&name, Stdio::null(), None);
    assert_rejected(&o, &name, 3, "control byte 0x00");
    assert!(
        o.stderr.starts_with(&format!("{name}:3:12: ")),
        "{}",
        o.stderr
    );
    let _ = std::fs::remove_file(&p);
}

/// `softdirty replay -` reads standard input: the same output and status as the file,
/// and the same diagnostics with `-` for the file's name.
#[test]
fn stdin_replays_as_the_file_does() {
    let dirs = [
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/traces"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/traces"),
    ];
    let mut seen = 0;
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "trace"))
            .collect();
        files.sort();
        for f in files {
            let by_name = Command::new(env!("CARGO_BIN_EXE_softdirty"))
                .arg("replay")
                .arg(&f)
                .output()
                .unwrap();
            let by_stdin = Command::new(env!("CARGO_BIN_EXE_softdirty"))
                .args(["replay", "-"])
                .stdin(File::open(&f).unwrap())
                .output()
                .unwrap();
            let name = f.display().to_string();
            assert_eq!(by_stdin.status.code(), by_name.status.code(), "{name}");
            assert_eq!(by_stdin.stdout, by_name.stdout, "{name}");
            let want = String::from_utf8_lossy(&by_name.stderr).replace(&name, "-");
            assert_eq!(String::from_utf8_lossy(&by_stdin.stderr), want, "{name}");
            seen += 1;
        }
    }
    assert!(seen >= 4, "only {seen} traces found");
}

/// `run` and `compare` stream their `trace:FILE` too: `/dev/zero` fails them at once.
#[test]
fn run_and_compare_reject_dev_zero_at_once() {
    for args in [
        &["run", "--quiet", "--workload", "trace:/dev/zero"][..],
        &["compare", "--workload", "trace:/dev/zero"][..],
    ] {
        let child = Command::new(env!("CARGO_BIN_EXE_softdirty"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = child;
        let mut stderr = String::new();
        let (status, max_rss_kib) = common::wait_with_rusage(child.id(), KILL_AFTER);
        if let Some(mut e) = child.stderr.take() {
            e.read_to_string(&mut stderr).unwrap();
        }
        let o = Outcome {
            status: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
            stderr: stderr
                .split_once("/dev/zero")
                .map(|(_, rest)| format!("/dev/zero{rest}"))
                .unwrap_or(stderr.clone()),
            max_rss_kib,
        };
        assert_rejected(&o, "/dev/zero", 1, "control byte 0x00");
    }
}
