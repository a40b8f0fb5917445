#!/usr/bin/env bash
# Runs tests/stress.rs against the broken twins of the core (src/twins.rs, built
# with --cfg softdirty_broken="NAME") and requires it to FAIL on each: the stress stops at
# the first round with a lost or spurious report, so a twin it can see fails in seconds.
#
#   scripts/stress-twins.sh            the twins the stress catches (CAUGHT below); each
#                                      must fail within SOFTDIRTY_TWIN_TIMEOUT (180 s)
#   scripts/stress-twins.sh NAME ...   only these twins (any name softdirty_broken knows)
#   scripts/stress-twins.sh survey     every twin of src/twins.rs: report, never fail
#
# First it runs the stress without a twin, which must pass. The stress is strict
# (SOFTDIRTY_STRESS_ALLOW unset) unless the caller sets it. The twins build
# in the ordinary target dir, with test-all.sh's features, and rebuild only the softdirty
# crate and the stress binary (scripts/loom.sh's RUSTC_WORKSPACE_WRAPPER mode adds the
# cfg to softdirty alone); the crate root is touched at the end so that the next ordinary
# build rebuilds softdirty without the twin.
set -euo pipefail
cd "$(dirname "$0")/.."

# Twins the stress catches on x86-64 (2 cores), with the round of detection seen
# (a round is ~10-30 ms):
#   no_drain             round 0, 3 of 3 (region A: a write to a VMA that mprotect replaced is
#                        dropped: LOST, and its page absent)
#   no_recheck           rounds 3, 11 and 31 (region B: a write that hit a sealed, drained
#                        bitmap returns Ok but is gone: absent, not reported)
#   blind_harvest        rounds 0, 3 and 11 (region A: LOST, present but never reported);
#                        round 56 (17 s) on CI's machine, round 576 (32 s) under load here: hence the 180 s timeout
#   no_defer             within 3 s (use after free: SIGSEGV)
# Not caught (survey): relaxed_fault, relaxed_harvest_store (orderings x86-64 does not
# reorder), no_cas_recheck, harvest_precheck, clear_summary_last, copy_clean_first (windows
# of a few instructions), no_drain_rule (precise moves make every moved page dirty, so the
# rule the twin drops is invisible). no_reclaim (a leak) fails only by exhausting the
# model's chunk limit (a write gets ENOMEM after ~17 s under load), or not at all.
# mark_no_fence and no_heavy_barrier are run through tests/litmus.rs (the store-buffering
# shapes), not the stress. no_heavy_barrier (light writers, no membarrier in the harvest)
# showed 1,989 lost writes in 250,000 iterations of the light shape in its first run here;
# loom cannot model membarrier, so the litmus is its only check.
# Store buffering is a timing outcome of the hardware: here (2 cores) runs of 2,000,000
# iterations showed 1 to 2,070 lost writes per shape; on CI's machine (stop 23) one run
# showed none.
# So the litmus is rerun until it reports a lost write or LITMUS_BUDGET seconds (90) pass,
# and a twin it never sees is reported NOT OBSERVED without failing: the property's gate
# is loom, whose data_ordering models reject this twin on every run (scripts/loom.sh).
# writer_no_revalidate (a writer handle's hint trusted without its index test) was caught
# at round 420 (20 s) until writer handles began to repin at their first store after any
# retirement (epoch::retired): the stale hint is now dropped before its next use unless a
# publish lands inside one store, and CI's run of 180 s no longer caught it. loom's
# writer_hint_vs_remap rejects it.
# hot_word_no_revalidate (a writer handle's hot word trusted after a remap): not caught in
# 120 s (its writers store to each page once per round, so a stale hot word is rarely
# reused); loom's writer_hot_word_vs_remap rejects it.
# Seen but not caught reliably (windows of a few instructions; the loom models reject
# them): zap_no_seq (region L: a page present but not soft-dirty after a DONTNEED race;
# caught within 10 s on the development machine, not within 60 s on CI's),
# retry_via_index (region B: a write returns EFAULT while the drain carried it),
# no_anon_freeze (region A: the fork child lacks a page written before the fork).
CAUGHT=(no_drain no_recheck blind_harvest no_defer mark_no_fence no_heavy_barrier)
# every twin, from src/twins.rs (the one list)
mapfile -t ALL < <(sed -nE 's/^ *[A-Z_]+ = "([a-z_]+)" => .*/\1/p' src/twins.rs)

export RUSTC_WORKSPACE_WRAPPER="$PWD/scripts/loom.sh" SOFTDIRTY_LOOM_WRAP=1
export SOFTDIRTY_STRESS_ALLOW="${SOFTDIRTY_STRESS_ALLOW-}"
twin_rounds="${SOFTDIRTY_TWIN_ROUNDS:-20000}"
timeout_s="${SOFTDIRTY_TWIN_TIMEOUT:-180}"
litmus_budget="${LITMUS_BUDGET:-90}"

survey=0
names=("$@")
if [[ ${#names[@]} -eq 0 ]]; then
    names=("${CAUGHT[@]}")
elif [[ "${names[0]}" == survey ]]; then
    survey=1
    names=("${ALL[@]}")
fi

# build NAME: rebuilds softdirty (and the stress binary) with twin NAME ("" for none).
# The cfg is invisible to cargo's fingerprint: touch the crate root.
build() {
    touch src/lib.rs
    local log
    if ! log=$(SOFTDIRTY_BROKEN="$1" cargo build --release -p softdirty --features vm-memory --test stress \
        --test litmus 2>&1); then
        echo "ERROR: the stress does not build with twin '${1:-none}':"
        tail -20 <<<"$log"
        touch src/lib.rs
        exit 1
    fi
}

# run [TEST [ROUNDS]]: runs the stress (or TEST); sets $out, $rc and $secs.
run() {
    local t0=$SECONDS test="${1:-stress}"
    set +e
    out=$(SOFTDIRTY_STRESS_ROUNDS="${2:-${SOFTDIRTY_STRESS_ROUNDS:-300}}" timeout "$timeout_s" \
        cargo test --release -q -p softdirty --features vm-memory --test "$test" -- --nocapture 2>&1)
    rc=$?
    set -e
    secs=$((SECONDS - t0))
}

echo "stress-twins: baseline (no twin) must pass"
build ""
run
if [[ $rc -ne 0 ]]; then
    echo "ERROR: the stress fails without a twin (rc $rc):"
    grep -E -m5 "violations after|^round|panicked at|^fork" <<<"$out" | cut -c1-600
    touch src/lib.rs
    exit 1
fi
grep -E '^stress: ' <<<"$out" || true

failed=0
for name in "${names[@]}"; do
    build "$name"
    case "$name" in
        mark_no_fence | harvest_no_fence | no_heavy_barrier)
            # Only the shape the twin breaks.
            if [[ $name == no_heavy_barrier ]]; then
                export SOFTDIRTY_LITMUS_ONLY="light writer"
            else
                export SOFTDIRTY_LITMUS_ONLY="softdirty core ("
            fi
            t_litmus=$SECONDS runs=0
            while :; do
                run litmus
                runs=$((runs + 1))
                [[ $rc -eq 0 && $((SECONDS - t_litmus)) -lt $litmus_budget ]] || break
            done
            secs=$((SECONDS - t_litmus))
            unset SOFTDIRTY_LITMUS_ONLY
            if [[ $rc -eq 0 ]]; then
                echo "NOT OBSERVED: twin $name lost no write in $runs litmus runs (${secs} s):" \
                    "this hardware did not show store buffering; loom rejects the twin"
                continue
            fi
            ;;
        *) run stress "$twin_rounds" ;;
    esac
    first=$(grep -E -m1 '^round [0-9]+, region|^fork |helper thread failed|SIGSEGV|signal|: [1-9][0-9]* lost writes' <<<"$out" |
        cut -c1-300 || true)
    if [[ $rc -eq 0 ]]; then
        echo "NOT CAUGHT: twin $name passed the stress (${secs} s)"
        [[ $survey -eq 1 ]] || failed=1
    elif [[ $rc -eq 124 ]]; then
        echo "NOT CAUGHT: twin $name still running after ${timeout_s} s"
        [[ $survey -eq 1 ]] || failed=1
    elif grep -qE 'violations after|panicked at|SIGSEGV|signal' <<<"$out"; then
        echo "caught: twin $name fails the stress after ${secs} s (rc $rc): $first"
    else
        echo "ERROR: twin $name did not build or run (rc $rc):"
        tail -20 <<<"$out"
        failed=1
    fi
done
touch src/lib.rs
exit $failed
