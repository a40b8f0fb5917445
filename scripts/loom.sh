#!/usr/bin/env bash
# Runs the loom models of loom-tests/ (see loom-tests/README.md).
#
#   scripts/loom.sh            every model, at its bound; must pass
#   scripts/loom.sh broken     every broken twin: runs the model meant to catch NAME
#                              with SOFTDIRTY_TWIN=NAME (a loom build turns the twin on
#                              at run time, src/twins.rs) and checks that it fails
#   scripts/loom.sh broken NAME ...   only these twins
#
# Environment: LOOM_MAX_PREEMPTIONS (unset by default: every model runs at the bound
# coded in it, see loom-tests/README.md; set, it overrides those bounds, except that the
# epoch models cap it at SOFTDIRTY_LOOM_EPOCH_BOUND, default 2), and any other LOOM_*
# variable loom reads.
set -euo pipefail
cd "$(dirname "$0")/.."

# RUSTC_WORKSPACE_WRAPPER mode (scripts/stress-twins.sh, whose release builds have no
# run-time twins): cargo calls us as `loom.sh rustc ARGS...` for workspace crates; add the
# broken-twin cfg to the softdirty library only, so a twin rebuilds one crate instead of
# the whole dependency graph.
if [[ "${SOFTDIRTY_LOOM_WRAP:-}" == 1 && $# -gt 0 && "$1" != broken ]]; then
    rustc="$1"
    shift
    if [[ -n "${SOFTDIRTY_BROKEN:-}" && " $* " == *" --crate-name softdirty "* ]]; then
        exec "$rustc" "$@" --cfg "softdirty_broken=\"$SOFTDIRTY_BROKEN\""
    fi
    exec "$rustc" "$@"
fi

export RUSTFLAGS="--cfg loom --cfg crossbeam_loom -C debug-assertions=on"
# Passed through only if the user set it: loom's Builder reads it and the models then
# use it instead of their coded bound.
if [[ -n "${LOOM_MAX_PREEMPTIONS:-}" ]]; then
    export LOOM_MAX_PREEMPTIONS
fi
export RUST_BACKTRACE=0

# Builds the models (target/loom) once, before they run; on failure prints why.
build_models() {
    local log
    if ! log=$(CARGO_TARGET_DIR=target/loom cargo test --release -p softdirty-loom-tests \
        --no-run 2>&1); then
        echo "ERROR: the loom models do not build:"
        tail -20 <<<"$log"
        return 1
    fi
}

# The heaviest model, run in a process of its own beside the others (2 cores: each
# process keeps one busy; threads of one process were slower, their allocations
# contending: 703 s against 497 s for the bitmap models).
HEAVY_BIN=bitmap_protocol HEAVY_MODEL=split_vs_write

run_models() {
    local st heavy_st heavy_log filter='^(loom-model|test |test result|running|error|thread .* panicked)|FAILED'
    build_models || return 1
    heavy_log=$(mktemp)
    CARGO_TARGET_DIR=target/loom cargo test --release -p softdirty-loom-tests \
        --test "$HEAVY_BIN" -- --exact "$HEAVY_MODEL" --nocapture --test-threads=1 \
        >"$heavy_log" 2>&1 &
    local heavy=$!
    set +e
    # --exact: --skip then drops this model only (not mprotect_split_vs_write).
    CARGO_TARGET_DIR=target/loom cargo test --release -p softdirty-loom-tests -- \
        --nocapture --test-threads=1 --exact --skip "$HEAVY_MODEL" 2>&1 | grep -E "$filter"
    st=${PIPESTATUS[0]}
    wait "$heavy"
    heavy_st=$?
    set -e
    echo "(in a process of its own, beside the above: $HEAVY_BIN::$HEAVY_MODEL)"
    grep -E "$filter" "$heavy_log" || true
    rm -f "$heavy_log"
    [[ $st -eq 0 && $heavy_st -eq 0 ]]
}

# twin -> "test-binary:model" that must fail when softdirty is built with the twin: the
# table of src/twins.rs, the one list of the twins.
declare -A TWINS=()
while read -r name model; do
    TWINS[$name]=$model
done < <(sed -nE 's/^ *[A-Z_]+ = "([a-z_]+)" => "([a-z_]+:[a-z_]+)";$/\1 \2/p' src/twins.rs)
if [[ ${#TWINS[@]} -lt 10 ]]; then
    echo "scripts/loom.sh: found only ${#TWINS[@]} twins in src/twins.rs" >&2
    exit 1
fi

run_broken() {
    local names=("$@") failed=0
    if [[ ${#names[@]} -eq 0 ]]; then
        mapfile -t names < <(printf '%s\n' "${!TWINS[@]}" | sort)
    fi
    # One build, the models' own (target/loom): a loom build reads the twin to turn on
    # from SOFTDIRTY_TWIN (src/twins.rs), so no twin needs a rebuild.
    build_models || return 1
    for name in "${names[@]}"; do
        local spec="${TWINS[$name]:?unknown twin $name}"
        local bin="${spec%%:*}" model="${spec#*:}"
        local t0=$SECONDS out
        if out=$(SOFTDIRTY_TWIN="$name" CARGO_TARGET_DIR=target/loom \
            cargo test --release -p softdirty-loom-tests --test "$bin" -- \
            --exact "$model" --test-threads=1 2>&1); then
            echo "NOT REJECTED: twin $name passed $bin::$model"
            failed=1
        elif grep -q "panicked" <<<"$out"; then
            echo "rejected: twin $name fails $bin::$model ($((SECONDS - t0)) s): $(grep -m1 -A1 panicked <<<"$out" | tail -1)"
        else
            echo "ERROR: twin $name did not build or run:"
            tail -20 <<<"$out"
            failed=1
        fi
    done
    return $failed
}

case "${1:-}" in
    broken) shift; run_broken "$@" ;;
    "") run_models ;;
    *) echo "usage: $0 [broken [NAME...]]" >&2; exit 2 ;;
esac
