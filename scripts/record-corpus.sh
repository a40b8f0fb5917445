#!/usr/bin/env bash
# Records the corpus of real programs with `softdirty record` and answers the seed's
# question on them (docs/real-programs.md): for each program, its recording must replay
# with status 0 in all five modes; then `softdirty compare` gives false positives and
# negatives per mode and cause, VMA counts and tracking memory; the program's wall time
# is measured with and without the recorder, alternating, in the same run.
#
#   scripts/record-corpus.sh [OUT_DIR]        (default target/corpus)
#
# Environment: RUNS (timed runs per side, default 3; the medians are reported),
# INTERVAL (ms between harvest points, default 10), ONLY (space-separated program names).
# Prints the markdown table of docs/real-programs.md; OUT_DIR keeps the traces
# (NAME.trace), the compare reports (NAME.json) and summary.json. Programs missing from
# this machine are skipped with a message. Exit status 1 if a recording fails or does
# not replay with status 0 in every mode.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-target/corpus}"
RUNS="${RUNS:-3}"
INTERVAL="${INTERVAL:-10}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cargo build --release -q -p softdirty-cli
SD="$PWD/target/release/softdirty"

cc -O2 -pthread -o "$OUT/arenas" tests/programs/arenas.c
cat >"$OUT/Alloc.java" <<'EOF'
import java.util.*;
public class Alloc {
  public static void main(String[] a) {
    List<int[]> l = new ArrayList<>();
    long s = 0;
    for (int i = 0; i < 200000; i++) {
      int[] x = new int[64 + i % 512]; x[0] = i; s += x[0];
      if (i % 3 == 0) l.add(x);
      if (l.size() > 5000) l.clear();
    }
    System.out.println(s);
  }
}
EOF
cat >"$OUT/load.sql" <<'EOF'
create table t(a integer primary key, b text, c blob);
with recursive n(i) as (select 1 union all select i+1 from n where i<50000)
  insert into t select i, printf('row %d', i), randomblob(200) from n;
create index tb on t(b);
select count(*), sum(length(c)) from t where b like 'row 1%';
delete from t where a % 3 = 0;
vacuum;
select count(*) from t;
EOF
PY="$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || true)"

NAMES=(python node java gcc sqlite arenas python10)
# cmd_for NAME: sets WHAT and CMD (the program's argument vector)
cmd_for() {
    case $1 in
    python)
        WHAT="CPython 3: 200,000 dict entries and 20,000 1 KB bytes objects"
        CMD=("$PY" -c 'd={}
l=[bytes(1000) for _ in range(20000)]
for i in range(200000): d[i]=str(i)*3
print(len(d), len(l))') ;;
    node)
        WHAT="Node.js: 300,000 objects in an array (V8's JIT toggles code-page protections)"
        CMD=(node -e 'let a=[];for(let i=0;i<300000;i++)a.push({i,s:String(i)});console.log(a.length)') ;;
    java)
        WHAT="OpenJDK: a single-file program allocating 200,000 int arrays (-Xmx256m)"
        CMD=(java -Xmx256m "$OUT/Alloc.java") ;;
    gcc)
        WHAT="gcc -O2 -c of tests/programs/arenas.c (the driver, cc1 and as)"
        CMD=(gcc -O2 -c "$PWD/tests/programs/arenas.c" -o "$OUT/arenas.o") ;;
    sqlite)
        WHAT="sqlite3: 50,000 rows, an index, a delete and a vacuum, on a file"
        CMD=(sqlite3 "$OUT/load.db" ".read $OUT/load.sql") ;;
    arenas)
        WHAT="a C program: 4 threads of glibc malloc (thread arenas), a brk heap, a fork"
        CMD=("$OUT/arenas" 4 200) ;;
    python10)
        WHAT="CPython 3 for 10 seconds: lists of 2,000 strings made and dropped (the replay-time check)"
        CMD=("$PY" -c 'import time
t0=time.time(); n=0; keep=[]
while time.time()-t0 < 10:
    keep.append([str(i) for i in range(2000)])
    if len(keep) > 300: keep = keep[150:]
    n += 1
print(n)') ;;
    esac
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
now() { date +%s.%N; }

failed=0
: >"$OUT/rows.tsv"
for name in "${NAMES[@]}"; do
    if [[ -n "${ONLY:-}" && " $ONLY " != *" $name "* ]]; then continue; fi
    cmd_for "$name"
    argv=("${CMD[@]}")
    what="$WHAT"
    if [[ -z "${argv[0]}" ]] || ! command -v "${argv[0]}" >/dev/null 2>&1; then
        echo "record-corpus: $name: ${argv[0]:-its interpreter} is not installed here: skipped" >&2
        continue
    fi
    plain=() recorded=()
    for ((r = 0; r < RUNS; r++)); do
        rm -f "$OUT/load.db"
        t0=$(now)
        "${argv[@]}" >/dev/null 2>&1
        plain+=("$(echo "$(now) - $t0" | bc)")
        rm -f "$OUT/load.db"
        t0=$(now)
        if ! "$SD" record --interval "$INTERVAL" --out "$OUT/$name.trace" -- "${argv[@]}" \
            >/dev/null 2>"$OUT/$name.record.log"; then
            echo "record-corpus: $name: recording failed: $(tail -1 "$OUT/$name.record.log")" >&2
            failed=1
            continue 2
        fi
        recorded+=("$(echo "$(now) - $t0" | bc)")
    done
    pm=$(printf '%s\n' "${plain[@]}" | median)
    rm_=$(printf '%s\n' "${recorded[@]}" | median)
    for m in legacy precise nomerge regions sticky; do
        if ! "$SD" replay --mode "$m" "$OUT/$name.trace" >/dev/null 2>"$OUT/$name.replay.$m.log"; then
            echo "record-corpus: $name: does not replay in $m mode: $(grep -m3 error "$OUT/$name.replay.$m.log")" >&2
            failed=1
        fi
    done
    t0=$(now)
    "$SD" replay --mode precise "$OUT/$name.trace" >/dev/null 2>&1 || true
    replay_s=$(echo "$(now) - $t0" | bc)
    "$SD" compare --workload "trace:$OUT/$name.trace" --json >"$OUT/$name.json" 2>/dev/null
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$what" "$pm" "$rm_" "$replay_s" >>"$OUT/rows.tsv"
    echo "record-corpus: $name: plain ${pm} s, recorded ${rm_} s, replay ${replay_s} s" >&2
done

python3 - "$OUT" <<'EOF'
import json, re, sys, os
out = sys.argv[1]
rows = [l.rstrip("\n").split("\t") for l in open(os.path.join(out, "rows.tsv"))]
summary = []
print("| program | spaces | peak VMAs: kernel / legacy / nomerge | mmap / mprotect / mremap / munmap / madvise / brk | pages written | harvests | wall time plain / recorded (median) | replay (precise) |")
print("|---|---|---|---|---|---|---|---|")
detail = []
for name, what, plain, rec, replay in rows:
    head = open(os.path.join(out, name + ".trace")).read(4000)
    calls = dict((k, int(v)) for k, v in re.findall(r"(\w+) (\d+)", re.search(r"calls: ([^;]*);", head).group(1)))
    spaces = int(re.search(r"# spaces: (\d+)", head).group(1))
    written = int(re.search(r"pages written: (\d+)", head).group(1))
    kvmas = int(re.search(r"peak VMAs in the kernel at a harvest point: (\d+)", head).group(1))
    rep = json.load(open(os.path.join(out, name + ".json")))["workloads"][0]
    modes = {m["mode"]: m for m in rep["modes"]}
    c = lambda k: calls.get(k, 0)
    print(f"| {name} | {spaces} | {kvmas} / {modes['legacy']['peak_vmas']} / {modes['nomerge']['peak_vmas']} | {c('mmap')} / {c('mprotect')} / {c('mremap')} / {c('munmap')} / {c('madvise')} / {c('brk')} | {written} | {rep['harvests']} | {float(plain):.2f} / {float(rec):.2f} s ({float(rec)/max(float(plain),1e-9):.1f}x) | {float(replay):.1f} s |")
    summary.append({"program": name, "what": what, "spaces": spaces, "calls": calls,
                    "pages_written": written, "plain_s": float(plain), "recorded_s": float(rec),
                    "replay_s": float(replay), "compare": rep})
    detail.append((name, modes))
print()
print("| program | mode | false+ (merge / brk / mremap move / shared / dontneed / mremap grow / other) | false- (merge / brk / mremap move / shared / dontneed / mremap grow / other) | reported | peak VMAs | tracking bytes (peak) |")
print("|---|---|---|---|---|---|---|")
for name, modes in detail:
    for m in ["legacy", "sticky", "nomerge", "regions", "precise"]:
        x = modes[m]
        fp, fn = x["false_positive_causes"], x["false_negative_causes"]
        f = lambda d: " / ".join(str(d[k]) for k in ["merge", "brk", "mremap_move", "shared", "dontneed", "mremap_grow", "other"])
        print(f"| {name} | {m} | {x['false_positives']} ({f(fp)}) | {x['false_negatives']} ({f(fn)}) | {x['reported']} | {x['peak_vmas']} | {x['peak_tracking_bytes']} |")
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
EOF
# the chart of docs/real-programs.md: every recording in one compare
ws=$(cut -f1 "$OUT/rows.tsv" | sed "s|^|trace:$OUT/|; s|\$|.trace|" | paste -sd,)
[ -z "$ws" ] || "$SD" compare --workload "$ws" --plot "$OUT/real-programs.svg" >/dev/null 2>&1 \
    || echo "record-corpus: compare --plot failed" >&2
exit $failed
