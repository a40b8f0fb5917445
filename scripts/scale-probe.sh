#!/usr/bin/env bash
# scripts/scale-probe.sh - issue 13's scale scenarios as traces, timed with the release
# binary (wall time and peak RSS). A probe for the O(log V) index and the sparse
# directory, not a test: nothing here fails on slowness.
#
#   bash scripts/scale-probe.sh [N ...]   every-other-page mprotect traces of N mprotects
#                                         and every-other-page munmap traces of N munmaps
#                                         (default 1000 10000 30000), N * 10 one-page mmaps
#                                         each merged onto the previous one, then FORKS
#                                         forks of a 126 TiB mapping with 8 written pages
#                                         (FORKS=1000)
#
# Output: one line per trace, "NAME: wall=S s maxrss=K KiB". Traces go to
# ${TMPDIR:-/tmp}/softdirty-scale-probe/.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${SOFTDIRTY_BIN:-target/release/softdirty}"
[[ -x $bin ]] || cargo build --release -p softdirty-cli --bin softdirty
dir="${TMPDIR:-/tmp}/softdirty-scale-probe"
mkdir -p "$dir"
sizes=("$@")
[[ ${#sizes[@]} -gt 0 ]] || sizes=(1000 10000 30000)
forks="${FORKS:-1000}"

run() {
    /usr/bin/time -o "$dir/time.txt" -f "$(basename "$1" .trace): wall=%e s maxrss=%M KiB rc=%x" \
        "$bin" replay "$1" >/dev/null 2>"$dir/replay.err" || true
    cat "$dir/time.txt"
}

for n in "${sizes[@]}"; do
    t="$dir/mprotect-every-other-page-$n.trace"
    awk -v n="$n" 'BEGIN {
        print "mode precise"
        printf "mmap $a %dp rw\n", 2 * n
        for (i = 0; i < n; i++) printf "mprotect $a+%dp 1p r\n", 2 * i
        printf "expect vmas $a %dp %d\n", 2 * n, 2 * n
    }' >"$t"
    run "$t"
done

for n in "${sizes[@]}"; do
    t="$dir/munmap-every-other-page-$n.trace"
    awk -v n="$n" 'BEGIN {
        print "mode precise"
        printf "mmap $a %dp rw\n", 2 * n
        for (i = 0; i < n; i++) printf "munmap $a+%dp 1p\n", 2 * i
        printf "expect vmas $a %dp %d\n", 2 * n, n
    }' >"$t"
    run "$t"
done

for n in "${sizes[@]}"; do
    m=$((n * 10))
    t="$dir/merging-mmaps-$m.trace"
    awk -v n="$m" 'BEGIN {
        print "mode precise"
        print "mmap $a 1p rw"
        for (i = 1; i < n; i++) printf "mmap $a+%dp 1p rw fixed\n", i
        printf "expect vmas $a %dp 1\n", n
    }' >"$t"
    run "$t"
done

t="$dir/fork-$forks-of-126T.trace"
awk -v f="$forks" 'BEGIN {
    print "mode precise"
    print "mmap $a 126T rw"
    for (i = 0; i < 8; i++) printf "write $a+%dp\n", i * 1000003
    print "clear_refs 4"
    for (i = 0; i < f; i++) printf "fork c%d\n", i
}' >"$t"
run "$t"
