#!/bin/sh
# Keep what the long fuzz runs learnt, small, in the repository
# (docs/reliability.md, "Long runs"): for each target (default: every
# target), merge its committed seeds, its kept corpus and its working
# corpus (fuzz/corpus/<target>, which stays out of git) into the smallest
# set of inputs that still reaches every coverage edge any of them reaches
# (libFuzzer's `-merge=1` with `-use_counters=0`: edges only, not hit
# counts or compared values, so one input per newly reached edge at most),
# and write it to fuzz/kept/<target> without the inputs that are seeds
# already. scripts/fuzz-smoke.sh and scripts/fuzz-long.sh start from
# seeds and kept alike.
#
# Needs the binaries of one scripts/fuzz-smoke.sh run (or FUZZ_BIN=dir).
#
# Usage: scripts/fuzz-keep.sh [target...]
set -eu
cd "$(dirname "$0")/../fuzz"
BIN=${FUZZ_BIN:-target/x86_64-unknown-linux-gnu/release}
targets=${*:-$(ls fuzz_targets | sed 's/\.rs$//')}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
for t in $targets; do
    [ -x "$BIN/$t" ] || { echo "no $BIN/$t: run scripts/fuzz-smoke.sh first" >&2; exit 2; }
    mkdir -p "$work/$t/out" "kept/$t" "corpus/$t"
    # Targets that write files do so under TMPDIR.
    TMPDIR="$work/$t" "$BIN/$t" -merge=1 -use_counters=0 -timeout=10 -rss_limit_mb=2048 \
        "$work/$t/out" "seeds/$t" "kept/$t" "corpus/$t" >"$work/$t/log" 2>&1 || {
        tail -n 20 "$work/$t/log" >&2
        echo "fuzz-keep $t: merge failed" >&2
        exit 1
    }
    # The merge names inputs by their SHA-1; drop those that are seeds.
    for s in "seeds/$t"/*; do
        rm -f "$work/$t/out/$(sha1sum <"$s" | cut -d' ' -f1)"
    done
    rm -rf "kept/$t"
    mv "$work/$t/out" "kept/$t"
    echo "fuzz-keep $t: $(ls "kept/$t" | wc -l) inputs," \
        "$(du -sb "kept/$t" | cut -f1) bytes;" \
        "$(grep -o '[0-9]* new coverage edges' "$work/$t/log" | tail -n 1) from $(ls "corpus/$t" | wc -l) corpus files"
done
