#!/usr/bin/env bash
# Runs every test of the project: the workspace's unit, integration, property and doc
# tests (10,000 proptest cases per property unless PROPTEST_CASES says otherwise), the
# shared and project traces, the stress test, then the loom models and their broken twins.
set -euo pipefail
cd "$(dirname "$0")/.."

export PROPTEST_CASES="${PROPTEST_CASES:-10000}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== build (release, all targets, feature vm-memory)"
cargo build --release --workspace --all-targets --features vm-memory

echo "== tests (release, PROPTEST_CASES=$PROPTEST_CASES)"
cargo test --release --workspace --features vm-memory

echo "== example: a VMM migrating guest memory through vm-memory over softdirty's bitmap"
cargo run --release -q --features vm-memory --example vmm_migration

echo "== loom models (loom-tests/README.md)"
bash scripts/loom.sh

echo "== loom broken twins: each must make its model fail"
bash scripts/loom.sh broken
