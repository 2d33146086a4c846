#!/bin/sh
# Bounded smoke run of every fuzz target in fuzz/ (docs/reliability.md,
# "Fuzzing"): one build of all targets with libFuzzer's coverage flags on
# stable Rust (what `cargo fuzz build -s none` does, without installing
# cargo-fuzz), then each target for FUZZ_SECS seconds (default 10) from its
# committed seeds and kept corpus (fuzz/kept, scripts/fuzz-keep.sh), with a
# fixed seed. A crash, a failed check or a hang
# fails the run; the log shows the input (`Base64:`).
#
# Usage: scripts/fuzz-smoke.sh [target...]   (default: every target)
set -eu
cd "$(dirname "$0")/../fuzz"
SECS=${FUZZ_SECS:-10}
T=x86_64-unknown-linux-gnu
# `--cfg fuzzing` and debug assertions as cargo-fuzz sets them; `--target`
# keeps the flags off build scripts (they would not link).
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions"
# The fuzz crate is outside the main workspace: `cargo fmt --all` at the top
# does not see it.
cargo fmt --check
start=$(date +%s)
cargo build --release --locked --target $T --bins
echo "fuzz: built in $(($(date +%s) - start)) s"
targets=${*:-$(ls fuzz_targets | sed 's/\.rs$//')}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
fail=0
for t in $targets; do
    mkdir -p "$work/$t/corpus"
    # New inputs go to the temporary corpus (first directory); the committed
    # seeds and kept inputs are read only. Targets that write files do so
    # under TMPDIR.
    kept=""
    [ -d "kept/$t" ] && kept="kept/$t"
    # shellcheck disable=SC2086 # $kept: one directory or nothing
    if TMPDIR="$work/$t" "target/$T/release/$t" "$work/$t/corpus" "seeds/$t" $kept \
        -seed=1 -max_total_time="$SECS" -timeout=10 -rss_limit_mb=1024 \
        -use_value_profile=1 -artifact_prefix="$work/$t/" >"$work/$t/log" 2>&1; then
        echo "fuzz $t: clean ($(grep -Eo '^#[0-9]+' "$work/$t/log" | tail -n 1 | tr -d '#') execs in ${SECS} s)"
    else
        tail -n 40 "$work/$t/log"
        echo "fuzz $t: FAILED (input above as Base64; replay: fuzz/target/$T/release/$t FILE)"
        fail=1
    fi
done
echo "fuzz: total $(($(date +%s) - start)) s"
exit $fail
