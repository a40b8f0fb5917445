//! Integration tests of `softdirty compare`: the JSON report, its columns, and the
//! properties the comparison must show.

use std::process::Command;

fn compare(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_softdirty"))
        .arg("compare")
        .args(args)
        .output()
        .expect("run softdirty compare");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

fn row<'a>(w: &'a serde_json::Value, mode: &str) -> &'a serde_json::Value {
    w["modes"]
        .as_array()
        .expect("modes")
        .iter()
        .find(|m| m["mode"] == mode)
        .unwrap_or_else(|| panic!("mode {mode} missing"))
}

fn workload<'a>(r: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    r["workloads"]
        .as_array()
        .expect("workloads")
        .iter()
        .find(|w| w["workload"] == name)
        .unwrap_or_else(|| panic!("workload {name} missing"))
}

#[test]
fn json_has_every_workload_mode_and_column() {
    let r = compare(&["--json", "--seed", "3"]);
    assert_eq!(r["seed"], 3);
    for name in ["seed", "hildenbrand", "arena", "jit", "heap", "cprogram"] {
        let w = workload(&r, name);
        assert!(w["harvests"].as_u64().unwrap() > 0);
        for mode in ["precise", "legacy", "sticky", "nomerge", "regions"] {
            let m = row(w, mode);
            for col in [
                "false_positives",
                "false_negatives",
                "reported",
                "peak_vmas",
                "final_vmas",
                "peak_tracking_bytes",
                "errors",
                "divergences",
            ] {
                assert!(m[col].is_u64(), "{name}/{mode}: {col} missing");
            }
            // Every false positive and negative has one cause.
            for (col, causes) in [
                ("false_positives", "false_positive_causes"),
                ("false_negatives", "false_negative_causes"),
            ] {
                let c = &m[causes];
                let sum: u64 = [
                    "merge",
                    "brk",
                    "mremap_move",
                    "shared",
                    "dontneed",
                    "mremap_grow",
                    "other",
                ]
                .iter()
                .map(|k| {
                    c[k].as_u64()
                        .unwrap_or_else(|| panic!("{name}/{mode}: {causes}.{k}"))
                })
                .sum();
                assert_eq!(m[col].as_u64(), Some(sum), "{name}/{mode}: {causes}");
            }
            // The same operations succeed and fail, at the same addresses, in every mode.
            assert_eq!(m["divergences"], 0, "{name}/{mode}");
            let c = &m["costs"];
            for col in ["clear_refs_ns", "write_fault_ns", "harvest_ns"] {
                assert!(c[col].is_u64(), "{name}/{mode}: {col} missing");
            }
            // The heap grows by brk: it has no mmap step (the column is null there).
            assert_eq!(c["mmap_ns"].is_u64(), name != "heap", "{name}/{mode}");
            assert!(c.get("mprotect_ns").is_some());
        }
        let p = row(w, "precise");
        assert_eq!(p["false_positives"], 0, "{name}");
        assert_eq!(p["false_negatives"], 0, "{name}");
    }
    assert!(row(workload(&r, "arena"), "legacy")["costs"]["mprotect_ns"].is_u64());
}

#[test]
fn legacy_pays_false_positives_on_the_seed_pattern() {
    let r = compare(&["--json", "--workload", "seed"]);
    let w = workload(&r, "seed");
    assert!(row(w, "legacy")["false_positives"].as_u64().unwrap() > 0);
    assert!(row(w, "sticky")["false_positives"].as_u64().unwrap() > 0);
    assert_eq!(row(w, "nomerge")["false_positives"], 0);
}

/// The heap workload (brk growth after each harvest): legacy and sticky report the whole
/// heap every round (do_brk_flags' VM_SOFTDIRTY), the designs that track pages do not.
#[test]
fn legacy_reports_the_whole_heap_at_every_brk_growth() {
    let r = compare(&["--json", "--workload", "heap"]);
    let w = workload(&r, "heap");
    let fp = |m| row(w, m)["false_positives"].as_u64().unwrap();
    assert!(fp("legacy") > 10 * row(w, "precise")["reported"].as_u64().unwrap());
    assert_eq!(fp("legacy"), fp("sticky"));
    for m in ["precise", "nomerge", "regions"] {
        assert_eq!(fp(m), 0, "{m}");
        assert_eq!(row(w, m)["false_negatives"], 0, "{m}");
    }
}

/// A C program's memory in two processes: legacy's false positives come from brk, and
/// the ring the fork child writes is a false negative in the parent ("shared") in every
/// design that sees only page tables; precise has neither.
#[test]
fn the_c_program_shows_brk_false_positives_and_shared_false_negatives() {
    let r = compare(&["--json", "--workload", "cprogram"]);
    let w = workload(&r, "cprogram");
    let fpc = |m: &str, k: &str| row(w, m)["false_positive_causes"][k].as_u64().unwrap();
    let fnc = |m: &str, k: &str| row(w, m)["false_negative_causes"][k].as_u64().unwrap();
    assert!(fpc("legacy", "brk") > 0);
    assert_eq!(fpc("legacy", "merge"), 0);
    assert_eq!(fpc("nomerge", "brk"), 0);
    for m in ["legacy", "sticky", "nomerge", "regions"] {
        assert!(fnc(m, "shared") > 0, "{m}");
    }
    assert_eq!(row(w, "precise")["errors"], 0);
    // The mprotect merges of the arena and the JIT are blamed on merges.
    let r = compare(&["--json", "--workload", "jit,arena"]);
    assert!(
        row(workload(&r, "jit"), "legacy")["false_positive_causes"]["merge"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(
        row(workload(&r, "arena"), "legacy")["false_negative_causes"]["merge"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[test]
fn nomerge_pays_vmas_on_the_hildenbrand_pattern() {
    let r = compare(&["--json", "--workload", "hildenbrand"]);
    let w = workload(&r, "hildenbrand");
    let vmas = |m| row(w, m)["peak_vmas"].as_u64().unwrap();
    assert!(vmas("nomerge") >= vmas("legacy"));
    assert!(vmas("nomerge") > 100 * vmas("precise"));
    assert!(row(w, "legacy")["false_positives"].as_u64().unwrap() > 0);
}

#[test]
fn regions_is_precise_on_mmap_merges_and_over_reports_on_mprotect_merges() {
    let r = compare(&["--json", "--workload", "seed,hildenbrand,jit"]);
    for name in ["seed", "hildenbrand"] {
        let w = workload(&r, name);
        let m = row(w, "regions");
        assert_eq!(m["false_positives"], 0, "{name}");
        assert_eq!(m["false_negatives"], 0, "{name}");
        // The lists cost memory the flag designs do not spend.
        let bytes = |mode| row(w, mode)["peak_tracking_bytes"].as_u64().unwrap();
        assert!(bytes("regions") > bytes("legacy"), "{name}");
    }
    // The JIT's mprotect merges free the absorbed VMAs' lists (the patch adjusts none).
    let w = workload(&r, "jit");
    let fp = |mode| row(w, mode)["false_positives"].as_u64().unwrap();
    assert!(fp("regions") > 0);
    assert!(fp("regions") > fp("legacy"));
}

#[test]
fn trace_workload_and_plot() {
    let trace = concat!(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../.."),
        "/tests/traces/selftest-merge-mprotect.legacy.trace"
    );
    let r = compare(&["--json", "--workload", &format!("trace:{trace}")]);
    let w = &r["workloads"][0];
    assert!(w["steps"].as_u64().unwrap() > 0);
    assert_eq!(row(w, "precise")["false_negatives"], 0);

    let svg = std::env::temp_dir().join(format!("softdirty-compare-{}.svg", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_softdirty"))
        .args(["compare", "--workload", "seed,jit", "--plot"])
        .arg(&svg)
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("false+") && text.contains("peak VMAs") && text.contains("harvest ns"));
    let s = std::fs::read_to_string(&svg).expect("svg written");
    assert!(s.contains("<svg") && s.contains("nomerge"));
    let _ = std::fs::remove_file(&svg);
}

#[test]
fn unknown_workload_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_softdirty"))
        .args(["compare", "--workload", "nope"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}
