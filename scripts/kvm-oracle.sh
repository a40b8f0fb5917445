#!/bin/bash
# scripts/kvm-oracle.sh - legacy mode against a real soft-dirty kernel, under qemu.
#
# Boots Debian's Linux 6.12 (CONFIG_MEM_SOFT_DIRTY=y) with ../shared/tools/kvm-oracle
# and, inside it, runs the static `softdirty` binary twice:
#   boot 1: `softdirty replay --backend kernel=softdirty` over every legacy-mode trace of
#           the test suite (tests/traces/ and ../shared/traces/ files whose `mode` header
#           is `legacy`), all in one process; every one must exit 0;
#   boot 2: `softdirty fuzz --against kernel --mode legacy --cases N --ops M` (the model's
#           legacy mode against the kernel's real soft-dirty bits, step by step).
#
# When the oracle cannot be set up (no network, no apt, not Debian, not root and packages
# missing, ...) it prints one `kvm-oracle: skipped: WHY` line and exits 0.
# Exit status otherwise: 0 when both boots passed, 1 when either failed.
#
# Knobs (environment): KVM_ORACLE_DIR (default ../shared/tools/kvm-oracle),
# FUZZ_CASES (default 300), FUZZ_OPS (default 100), FUZZ_SEED (default 1), FUZZ_EXTRA
# (more `softdirty fuzz` arguments, e.g. --mremap-single-page),
# TIMEOUT (seconds for each boot, default 240), KVM_ORACLE_CACHE (the oracle's cache).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ORACLE=${KVM_ORACLE_DIR:-$ROOT/../shared/tools/kvm-oracle}
FUZZ_CASES=${FUZZ_CASES:-300}
FUZZ_OPS=${FUZZ_OPS:-100}
FUZZ_SEED=${FUZZ_SEED:-1}
FUZZ_EXTRA=${FUZZ_EXTRA:-}
export TIMEOUT=${TIMEOUT:-240}
t0=$(date +%s.%N)
say() { echo "kvm-oracle: $*"; }
skip() { say "skipped: $*"; exit 0; }
elapsed() { echo "$(date +%s.%N) $t0" | awk '{printf "%.1f", $1 - $2}'; }

# ---- 1. the oracle: qemu, the 6.12 kernel -----------------------------------------------
[ -x "$ORACLE/setup.sh" ] && [ -x "$ORACLE/run-in-vm.sh" ] \
    || skip "no kvm-oracle harness at $ORACLE"
[ "$(uname -m)" = x86_64 ] || skip "the oracle needs an x86_64 host (this is $(uname -m))"
if ! setup_log=$("$ORACLE/setup.sh" 2>&1); then
    why=$(printf '%s\n' "$setup_log" | grep -m1 'ERROR' || printf '%s\n' "$setup_log" | tail -1)
    printf '%s\n' "$setup_log" | tail -5 | sed 's/^/    /'
    skip "the oracle's setup.sh failed: ${why:-unknown reason}"
fi
say "$(printf '%s\n' "$setup_log" | grep -m1 'host tools OK' || echo 'setup OK')"

# ---- 2. softdirty, static ---------------------------------------------------------------
TARGET=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR="$ROOT/target/static"
if ! RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --target $TARGET; then
    say "FAILED: the static build of softdirty"
    exit 1
fi
BIN=$CARGO_TARGET_DIR/$TARGET/release/softdirty
# The release profile keeps debug info (20 MB); the guest gets a stripped copy, which
# makes the initramfs, and so each boot, smaller.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kvm-oracle.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
if command -v strip >/dev/null && strip -o "$WORK/softdirty" "$BIN" 2>/dev/null; then
    BIN=$WORK/softdirty
fi
say "static binary $BIN ($(elapsed) s)"

# ---- 3. the legacy traces ---------------------------------------------------------------
# A trace's mode is its first `mode` line before any other command (comments and blank
# lines skipped), as the trace format's header says.
is_legacy() {
    awk '/^[[:space:]]*(#|$)/ { next }
         $1 == "mode" { found = ($2 == "legacy"); exit }
         { exit }
         END { exit !found }' "$1"
}
traces=()
for f in tests/traces/*.trace ../shared/traces/*.trace; do
    [ -f "$f" ] && is_legacy "$f" && traces+=("$f")
done
[ ${#traces[@]} -gt 0 ] || { say "FAILED: no legacy trace found"; exit 1; }
# Each file goes in as /data/BASENAME: base names must be distinct.
dups=$(for f in "${traces[@]}"; do basename "$f"; done | sort | uniq -d)
[ -z "$dups" ] || { say "FAILED: two legacy traces share a base name: $dups"; exit 1; }
fargs=() gargs=()
for f in "${traces[@]}"; do
    fargs+=(-f "$f")
    gargs+=("/data/$(basename "$f")")
done
say "boot 1: replaying ${#traces[@]} legacy traces with --backend kernel=softdirty"
b1=$(date +%s.%N)
"$ORACLE/run-in-vm.sh" "${fargs[@]}" "$BIN" replay --backend kernel=softdirty "${gargs[@]}"
rc1=$?
say "boot 1: exit $rc1 ($(echo "$(date +%s.%N) $b1" | awk '{printf "%.1f", $1 - $2}') s)"

# ---- 4. the legacy fuzz -----------------------------------------------------------------
say "boot 2: fuzz --against kernel --mode legacy --cases $FUZZ_CASES --ops $FUZZ_OPS --seed $FUZZ_SEED $FUZZ_EXTRA"
b2=$(date +%s.%N)
"$ORACLE/run-in-vm.sh" "$BIN" fuzz --against kernel --mode legacy \
    --cases "$FUZZ_CASES" --ops "$FUZZ_OPS" --seed "$FUZZ_SEED" --out /tmp/fuzz-failure.trace \
    $FUZZ_EXTRA
rc2=$?
say "boot 2: exit $rc2 ($(echo "$(date +%s.%N) $b2" | awk '{printf "%.1f", $1 - $2}') s)"

if [ $rc1 -eq 0 ] && [ $rc2 -eq 0 ]; then
    say "PASSED: ${#traces[@]} legacy traces and $FUZZ_CASES fuzz cases agree with Linux 6.12's soft-dirty ($(elapsed) s)"
    exit 0
fi
say "FAILED: replay exit $rc1, fuzz exit $rc2 ($(elapsed) s)"
exit 1
