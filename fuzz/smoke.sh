#!/bin/sh
# Build every fuzz target with libFuzzer's coverage instrumentation (stable
# Rust, no sanitizer: the same compile cargo-fuzz runs) and fuzz each for
# FUZZ_SECS seconds from its committed seeds. Exit 1 on any finding.
set -eu
cd "$(dirname "$0")"
SECS=${FUZZ_SECS:-30}
T=x86_64-unknown-linux-gnu
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions"
cargo build --release --locked --target $T --bins
fail=0
for f in fuzz_targets/*.rs; do
  t=$(basename "$f" .rs); work=$(mktemp -d); mkdir -p "seeds/$t"
  # new units go to the temp dir (first arg); committed seeds stay read-only
  if target/$T/release/$t "$work" "seeds/$t" -seed=1 -max_total_time="$SECS" \
       -use_value_profile=1 -artifact_prefix="$work/" > "$work/log" 2>&1; then
    echo "fuzz $t: clean ($(grep -Eo '^#[0-9]+' "$work/log" | tail -n 1 | tr -d '#') execs)"
  else tail -n 30 "$work/log"; echo "fuzz $t: FAILED"; fail=1; fi
  rm -rf "$work"
done
exit $fail
