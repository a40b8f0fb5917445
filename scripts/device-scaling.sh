#!/bin/bash
# scripts/device-scaling.sh - the multi-thread scaling runs for a larger machine.
#
#   bash scripts/device-scaling.sh build    # here: static binaries into devcarry/
#   bash devcarry/run.sh                    # there (devcarry/ travels with the tree)
#
# `build` makes static (crt-static) builds of the `softdirty` binary and of the
# `write_path` criterion bench, so that they run on a machine without a Rust toolchain,
# and writes devcarry/run.sh, which runs: `softdirty run --scaling` (1, 2, 4, ... threads
# up to the core count, next to a trivially parallel loop), the write-path bench at
# 1-16 threads, the parallel harvest against the sequential one, and `softdirty bench
# --quick`. README's 16-core tables come from this (docs/measurements/).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
[ "${1:-}" = build ] || { sed -n '2,13p' "$0"; exit 2; }
T=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/static}
export RUSTFLAGS="-C target-feature=+crt-static"
cargo build --release --target $T --bin softdirty
bench=$(cargo bench --no-run --target $T --bench write_path --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*write_path[^"]*\)".*/\1/p' | tail -1)
mkdir -p devcarry
grep -qx '/devcarry/' .git/info/exclude 2>/dev/null || echo '/devcarry/' >> .git/info/exclude
strip -o devcarry/softdirty "$CARGO_TARGET_DIR/$T/release/softdirty"
strip -o devcarry/write_path "$bench"
cat > devcarry/run.sh <<'RUN'
#!/bin/bash
set -u
cd "$(dirname "$0")"
nproc; lscpu | grep -E "Model name|^CPU\(s\)|Thread|NUMA node\(s\)"
echo "== softdirty run --scaling"
./softdirty run --scaling --scaling-secs 2 2>&1 | tail -12
echo "== write_path bench"
SOFTDIRTY_BENCH_THREADS=1,2,4,8,16 ./write_path --bench --warm-up-time 1 --measurement-time 2 --noplot 2>&1 | grep -E "^write_path|time:"
echo "== softdirty bench --filter par (parallel harvest vs sequential)"
./softdirty bench --filter par 2>&1 | tail -8
echo "== softdirty bench --quick"
./softdirty bench --quick 2>&1 | tail -20
RUN
chmod +x devcarry/run.sh
echo "devcarry/ ready: run 'bash devcarry/run.sh' on the larger machine"
