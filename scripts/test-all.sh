#!/usr/bin/env bash
# Runs every test of the project: the workspace's unit, integration, property and doc
# tests (10,000 proptest cases per property unless PROPTEST_CASES says otherwise), the
# shared and project traces, the stress test and the store-buffering litmus
# (tests/litmus.rs), the stress against the broken twins it can see
# (scripts/stress-twins.sh), the loom models and their broken twins, then
# legacy mode against a real soft-dirty kernel (Linux 6.12 under qemu,
# scripts/kvm-oracle.sh): it installs what it needs where it can (root, apt), and skips
# with a message where it cannot; SOFTDIRTY_KVM_ORACLE=0 leaves it out.
set -euo pipefail
cd "$(dirname "$0")/.."

export PROPTEST_CASES="${PROPTEST_CASES:-10000}"
# Each phase's heading says how long the script has run (the CI budget is 20 minutes).
phase() { echo "== $* (at $((SECONDS / 60)) min $((SECONDS % 60)) s)"; }
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

phase "build (release, all targets, feature vm-memory)"
cargo build --release --workspace --all-targets --features softdirty/vm-memory

phase "tests (release, PROPTEST_CASES=$PROPTEST_CASES)"
# (tests/kvm_oracle.rs runs the oracle only with SOFTDIRTY_KVM_ORACLE=1; it runs below.)
# The stress (tests/stress.rs) at 10^7 writes, half of them through writer handles.
env -u SOFTDIRTY_KVM_ORACLE SOFTDIRTY_STRESS_WRITES="${SOFTDIRTY_STRESS_WRITES:-10000000}" \
    cargo test --release --workspace --features softdirty/vm-memory

phase "rustdoc: every intra-doc link resolves (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --features softdirty/vm-memory -q

phase "stress against the broken twins: each twin it can see must make it fail"
# (tests/stress.rs and tests/litmus.rs ran above, with the other integration tests.)
bash scripts/stress-twins.sh

phase "example: a VMM migrating guest memory through vm-memory over softdirty's bitmap"
cargo run --release -q -p softdirty --features vm-memory --example vmm_migration

phase "loom models (loom-tests/README.md)"
bash scripts/loom.sh

phase "loom broken twins: each must make its model fail"
bash scripts/loom.sh broken

phase "legacy mode against Linux 6.12's soft-dirty under qemu (scripts/kvm-oracle.sh)"
if [ "${SOFTDIRTY_KVM_ORACLE:-}" = 0 ]; then
    echo "kvm-oracle: skipped: SOFTDIRTY_KVM_ORACLE=0"
else
    # The release binary built above runs in the guest (no second, static build); the fuzz
    # stops starting cases after FUZZ_SECONDS, so that a slow machine stays in budget.
    KVM_ORACLE_BIN="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/softdirty" \
        FUZZ_CASES="${FUZZ_CASES:-300}" FUZZ_SECONDS="${FUZZ_SECONDS:-120}" \
        SETUP_TIMEOUT="${SETUP_TIMEOUT:-180}" bash scripts/kvm-oracle.sh
fi
phase "done"
