#!/bin/bash
# scripts/kvm-oracle.sh - legacy mode against a real soft-dirty kernel, under qemu.
#
# Boots Debian's Linux 6.12 (CONFIG_MEM_SOFT_DIRTY=y) with ../shared/tools/kvm-oracle
# and, inside it, runs `softdirty` twice:
#   boot 1: `softdirty replay --backend kernel=softdirty` over every legacy-mode trace of
#           the test suite (tests/traces/, its v2/ traces the kernel backend can run, and
#           ../shared/traces/ files whose `mode` header
#           is `legacy`), all in one process; every one must exit 0;
#   boot 2: `softdirty fuzz --against kernel --mode legacy --cases N --ops M` (the model's
#           legacy mode against the kernel's real soft-dirty bits, step by step; the fuzzer
#           sees Linux 6.12 and leaves out its by-design divergences, see src/fuzz.rs);
#           with FUZZ_BOOTS=K the cases are split into K boots of consecutive seeds;
#   boots 3-4: `softdirty record --source softdirty --verify legacy` of two real programs
#           built here static from tests/programs/ (ledger.c: mprotect, mremap, a fork
#           child, four threads, dontneed; arenas.c: glibc malloc thread arenas, a brk
#           heap, a fork): the recorder reads the kernel's soft-dirty at every layout call
#           and writes its answers into the trace as `expect softdirty` lines, and the
#           trace must replay with status 0 in legacy mode (every answer of the kernel
#           holds on the model).
#
# The guest has no shared libraries. By default it gets the ordinary release build
# (KVM_ORACLE_BIN, or else `cargo build --release --bin softdirty`), stripped, with the
# libraries `ldd` names, and runs it through the dynamic loader, which is itself a
# static-pie executable: `ld-linux-x86-64.so.2 --library-path /data/lib /data/softdirty`.
# That spares CI a second build of every dependency with crt-static (~2.5 min on 2 cores).
# KVM_ORACLE_STATIC=1 builds and runs a static binary instead (target/static).
#
# When the oracle cannot be set up (no network, no apt, not Debian, not root and packages
# missing, setup.sh over SETUP_TIMEOUT, ...), or the VM never runs the program (the
# harness's exit 125), it prints a `kvm-oracle: skipped: WHY` line and exits 0.
# Exit status otherwise: 0 when every boot passed, 1 when one failed (a disagreement, a
# failed trace, a build failure, a crash or a timeout).
#
# Knobs (environment): KVM_ORACLE_DIR (default ../shared/tools/kvm-oracle),
# FUZZ_CASES (default 300), FUZZ_OPS (default 100), FUZZ_SEED (default 1), FUZZ_BOOTS
# (default 1; the guest runs about 5 cases of 100 operations a second under TCG),
# FUZZ_SECONDS (the fuzzer starts no case after this many seconds in a boot; default none),
# FUZZ_EXTRA (more `softdirty fuzz` arguments), KVM_ORACLE_BIN, KVM_ORACLE_STATIC,
# TIMEOUT (seconds for each boot, default 240), SETUP_TIMEOUT (seconds for setup.sh,
# default 300), KVM_ORACLE_CACHE (the oracle's cache), KVM_ORACLE_ONLY=record (only
# boots 3-4).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ORACLE=${KVM_ORACLE_DIR:-$ROOT/../shared/tools/kvm-oracle}
FUZZ_CASES=${FUZZ_CASES:-300}
FUZZ_OPS=${FUZZ_OPS:-100}
FUZZ_SEED=${FUZZ_SEED:-1}
FUZZ_BOOTS=${FUZZ_BOOTS:-1}
FUZZ_SECONDS=${FUZZ_SECONDS:-}
FUZZ_EXTRA=${FUZZ_EXTRA:-}
export TIMEOUT=${TIMEOUT:-240}
SETUP_TIMEOUT=${SETUP_TIMEOUT:-300}
for v in FUZZ_CASES FUZZ_OPS FUZZ_BOOTS TIMEOUT SETUP_TIMEOUT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "kvm-oracle: FAILED: $v=${!v} is not a positive number"; exit 1; }
done
[ -z "$FUZZ_SECONDS" ] || [[ $FUZZ_SECONDS =~ ^[1-9][0-9]*$ ]] \
    || { echo "kvm-oracle: FAILED: FUZZ_SECONDS=$FUZZ_SECONDS is not a positive number"; exit 1; }
t0=$(date +%s.%N)
say() { echo "kvm-oracle: $*"; }
skip() { say "skipped: $*"; exit 0; }
since() { echo "$(date +%s.%N) $1" | awk '{printf "%.1f", $1 - $2}'; }
elapsed() { since "$t0"; }

# ---- 1. the oracle: qemu, the 6.12 kernel -----------------------------------------------
[ -x "$ORACLE/setup.sh" ] && [ -x "$ORACLE/run-in-vm.sh" ] \
    || skip "no kvm-oracle harness at $ORACLE"
[ "$(uname -m)" = x86_64 ] || skip "the oracle needs an x86_64 host (this is $(uname -m))"
if ! setup_log=$(timeout -k 10 "$SETUP_TIMEOUT" "$ORACLE/setup.sh" 2>&1); then
    why=$(printf '%s\n' "$setup_log" | grep -m1 'ERROR' || printf '%s\n' "$setup_log" | tail -1)
    printf '%s\n' "$setup_log" | tail -5 | sed 's/^/    /'
    skip "the oracle's setup.sh failed or took over ${SETUP_TIMEOUT}s: ${why:-unknown reason}"
fi
say "$(printf '%s\n' "$setup_log" | grep -m1 'host tools OK' || echo 'setup OK') ($(elapsed) s)"

# ---- 2. softdirty for the guest ---------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kvm-oracle.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# The release profile keeps debug info (20 MB); the guest gets a stripped copy, which
# makes the initramfs, and so each boot, smaller.
strip_into() { # BIN DEST
    if ! { command -v strip >/dev/null && strip -o "$2" "$1" 2>/dev/null; }; then cp "$1" "$2"; fi
}
GUEST_FILES=()
if [ "${KVM_ORACLE_STATIC:-0}" = 1 ]; then
    TARGET=x86_64-unknown-linux-gnu
    if ! CARGO_TARGET_DIR="$ROOT/target/static" RUSTFLAGS="-C target-feature=+crt-static" \
            cargo build -q --release --target $TARGET --bin softdirty; then
        say "FAILED: the static build of softdirty"
        exit 1
    fi
    strip_into "$ROOT/target/static/$TARGET/release/softdirty" "$WORK/softdirty"
    RUN=("$WORK/softdirty")
    say "static binary ($(elapsed) s)"
else
    BIN=${KVM_ORACLE_BIN:-}
    if [ -z "$BIN" ]; then
        cargo build -q --release --bin softdirty || { say "FAILED: the build of softdirty"; exit 1; }
        BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/softdirty
    fi
    [ -x "$BIN" ] || { say "FAILED: no executable $BIN"; exit 1; }
    mkdir "$WORK/guest" "$WORK/guest/lib"
    strip_into "$BIN" "$WORK/guest/softdirty"
    interp="" static=0
    file_desc=$(LC_ALL=C ldd "$BIN" 2>&1) || true
    case $file_desc in *"not a dynamic executable"*|*"statically linked"*) static=1 ;; esac
    while read -r line; do
        case $line in
            *"=> /"*) lib=${line#*=> }; lib=${lib%% (*}
                      cp -L "$lib" "$WORK/guest/lib/" || { say "FAILED: copying $lib"; exit 1; } ;;
            /*) interp=${line%% (*} ;;
        esac
    done <<< "$file_desc"
    if [ $static = 1 ]; then
        RUN=("$WORK/guest/softdirty")
        say "$BIN, static ($(elapsed) s)"
    else
        [ -n "$interp" ] && [ -f "$interp" ] \
            || { say "FAILED: ldd found no dynamic loader for $BIN (KVM_ORACLE_STATIC=1 builds a static one)"; exit 1; }
        GUEST_FILES=(-f "$WORK/guest/lib" -f "$WORK/guest/softdirty")
        RUN=("$interp" --library-path /data/lib /data/softdirty)
        say "$BIN with $(ls "$WORK/guest/lib" | tr '\n' ' ')through $interp ($(elapsed) s)"
    fi
fi

# A boot's result: 0 passed, 1 failed, 2 skipped (the VM never ran the program).
boot_result() { # NAME RC
    case $2 in
        0) return 0 ;;
        125) say "skipped: $1: the harness could not run the VM or the program (exit 125, above)"
             return 2 ;;
        *) return 1 ;;
    esac
}

# ---- 3. the legacy traces ---------------------------------------------------------------
# A trace's mode is its first `mode` line before any other command (comments and blank
# lines skipped), as the trace format's header says.
is_legacy() {
    awk '/^[[:space:]]*(#|$)/ { next }
         $1 == "mode" { found = ($2 == "legacy"); exit }
         { exit }
         END { exit !found }' "$1"
}
# Trace v2: everything but guard regions (6.12 predates them).
kernel_runnable() {
    ! grep -qE '[[:space:]]guard_(install|remove)([[:space:]]|$)' "$1"
}
traces=()
for f in tests/traces/*.trace ../shared/traces/*.trace; do
    [ -f "$f" ] && is_legacy "$f" && traces+=("$f")
done
for f in tests/traces/v2/*.trace ../shared/traces/v2/*.trace; do
    [ -f "$f" ] && is_legacy "$f" && kernel_runnable "$f" && traces+=("$f")
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
r1=0
if [ "${KVM_ORACLE_ONLY:-}" != record ]; then
    say "boot 1: replaying ${#traces[@]} legacy traces with --backend kernel=softdirty"
    b1=$(date +%s.%N)
    "$ORACLE/run-in-vm.sh" "${GUEST_FILES[@]+"${GUEST_FILES[@]}"}" "${fargs[@]}" \
        "${RUN[@]}" replay --backend kernel=softdirty "${gargs[@]}"
    rc1=$?
    say "boot 1: exit $rc1 ($(since "$b1") s)"
    boot_result "boot 1" $rc1; r1=$?
fi

# ---- 4. the legacy fuzz, FUZZ_BOOTS batches of consecutive seeds ---------------------------
r2=0
[ "${KVM_ORACLE_ONLY:-}" != record ] || FUZZ_CASES=0
per=$(( (FUZZ_CASES + FUZZ_BOOTS - 1) / FUZZ_BOOTS ))
seed=$FUZZ_SEED left=$FUZZ_CASES boot=2
budget=()
[ -z "$FUZZ_SECONDS" ] || budget=(--max-seconds "$FUZZ_SECONDS")
[ "${KVM_ORACLE_ONLY:-}" != record ] || left=0
while [ "$left" -gt 0 ]; do
    n=$(( left < per ? left : per ))
    say "boot $boot: fuzz --against kernel --mode legacy --cases $n --ops $FUZZ_OPS --seed $seed ${budget[*]+${budget[*]}} $FUZZ_EXTRA"
    b2=$(date +%s.%N)
    # shellcheck disable=SC2086
    "$ORACLE/run-in-vm.sh" "${GUEST_FILES[@]+"${GUEST_FILES[@]}"}" "${RUN[@]}" \
        fuzz --against kernel --mode legacy --cases "$n" --ops "$FUZZ_OPS" --seed "$seed" \
        --out /tmp/fuzz-failure.trace "${budget[@]+"${budget[@]}"}" $FUZZ_EXTRA
    rc=$?
    say "boot $boot: exit $rc ($(since "$b2") s)"
    boot_result "boot $boot" $rc; r=$?
    [ $r -eq 0 ] || { r2=$r; break; }
    seed=$((seed + n)) left=$((left - n)) boot=$((boot + 1))
done

# ---- 5. recordings of real programs, checked against the kernel's own answers -------------
r3=0 recorded=0
for prog in "ledger /tmp/ledger.txt" "arenas 2 20"; do
    set -- $prog
    name=$1
    shift
    if ! cc -O1 -static -pthread -o "$WORK/$name" "tests/programs/$name.c" 2>"$WORK/$name.cc.log"; then
        say "FAILED: cc -static tests/programs/$name.c: $(tail -1 "$WORK/$name.cc.log")"
        r3=1
        break
    fi
    say "boot $boot: record --source softdirty --verify legacy -- $name $*"
    b3=$(date +%s.%N)
    "$ORACLE/run-in-vm.sh" "${GUEST_FILES[@]+"${GUEST_FILES[@]}"}" -f "$WORK/$name" "${RUN[@]}" \
        record --source softdirty --verify "${RECORD_VERIFY:-legacy}" --interval 20 --out "/tmp/$name.trace" \
        -- "/data/$name" "$@"
    rc=$?
    say "boot $boot: exit $rc ($(since "$b3") s)"
    boot_result "boot $boot" $rc; r=$?
    boot=$((boot + 1))
    [ $r -eq 0 ] || { r3=$r; break; }
    recorded=$((recorded + 1))
done
[ "$r2" -ne 0 ] || r2=$r3

if [ $r1 -eq 1 ] || [ $r2 -eq 1 ]; then
    say "FAILED: a boot failed (above) ($(elapsed) s)"
    exit 1
fi
if [ $r1 -eq 2 ] || [ $r2 -eq 2 ]; then
    skip "a boot did not run (above); nothing disagreed ($(elapsed) s)"
fi
[ "${KVM_ORACLE_ONLY:-}" != record ] || { say "PASSED: $recorded recorded programs agree with Linux 6.12's soft-dirty ($(elapsed) s)"; exit 0; }
say "PASSED: ${#traces[@]} legacy traces, the fuzz cases of $FUZZ_OPS operations from seed $FUZZ_SEED (counts above) and $recorded recorded programs agree with Linux 6.12's soft-dirty ($(elapsed) s)"
exit 0
