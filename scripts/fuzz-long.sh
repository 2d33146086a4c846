#!/bin/bash
# Long fuzz runs by hand (docs/reliability.md, "Long runs"): every target
# (or those named) until it has had FUZZ_CPU_SECS seconds of CPU (default
# 1800: the issue's 30 minutes), FUZZ_JOBS targets at a time (default 2,
# one per core). The budget is CPU time, not wall time, so a run on a
# shared machine still gives each target its 30 minutes of fuzzing.
#
# Resumable: a run can be stopped (Ctrl-C, SIGTERM) and started again; each
# target resumes from its corpus (fuzz/corpus/<target>, started from the
# committed seeds and kept inputs; scripts/fuzz-keep.sh keeps it small in
# the repository afterwards) and its CPU time,
# executions and findings add up in fuzz/long/<target>.state. That is also
# how a benchmark gets a quiet machine in the middle of a long run: stop
# this script, benchmark, start it again. (Stopping the fuzzers with
# SIGSTOP instead would make libFuzzer report a false hang on resume: its
# per-input timeout is wall time.)
#
# The fuzzers run at nice FUZZ_NICE (default 19): they take only the CPU
# nothing else wants, so a benchmark or a build beside them is barely
# disturbed (a benchmark still reports the CPU they took), and their CPU
# budget is the same, only spread over more wall time.
#
# Needs the binaries of one scripts/fuzz-smoke.sh run (or FUZZ_BIN=dir).
# Prints one table row per target for docs/reliability.md at the end.
#
# Usage: scripts/fuzz-long.sh [target...]
set -u
cd "$(dirname "$0")/../fuzz"
BUDGET=${FUZZ_CPU_SECS:-1800}
JOBS=${FUZZ_JOBS:-2}
NICE=${FUZZ_NICE:-19}
BIN=${FUZZ_BIN:-target/x86_64-unknown-linux-gnu/release}
# How often the CPU time is read: the overshoot is at most this.
POLL_SECS=5
TICKS=$(getconf CLK_TCK)
mkdir -p long corpus artifacts
targets=${*:-$(ls fuzz_targets | sed 's/\.rs$//')}

# state file: cpu_secs execs crashes segments
read_state() {
    if [ -f "long/$1.state" ]; then cat "long/$1.state"; else echo "0 0 0 0"; fi
}

cpu_of() { # utime+stime of a pid in seconds, or nothing once it is gone
    awk -v t="$TICKS" '{ printf "%d", ($14 + $15) / t }' "/proc/$1/stat" 2>/dev/null
}

run_one() {
    local t=$1
    # Ctrl-C reaches the fuzzers themselves (same process group), and
    # `pkill -f fuzz-long.sh` these subshells too (same command line); this
    # loop must live on to record what they did.
    trap '' INT TERM
    read -r cpu execs crashes segs < <(read_state "$t")
    if [ "$cpu" -ge "$BUDGET" ]; then return; fi
    mkdir -p "corpus/$t" "artifacts/$t" "kept/$t"
    local log="long/$t.$((segs + 1)).log" work
    work=$(mktemp -d)
    # Targets that write files do so under TMPDIR.
    TMPDIR=$work nice -n "$NICE" "$BIN/$t" "corpus/$t" "seeds/$t" "kept/$t" -use_value_profile=1 -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="artifacts/$t/" -print_final_stats=1 \
        >"$log" 2>&1 &
    local pid=$! used=0 now
    echo "$pid" >"long/$t.pid"
    while kill -0 "$pid" 2>/dev/null; do
        now=$(cpu_of "$pid")
        [ -n "$now" ] && used=$now
        if [ $((cpu + used)) -ge "$BUDGET" ] || [ -f long/STOP ]; then
            kill -INT "$pid" 2>/dev/null
        fi
        sleep "$POLL_SECS"
    done
    wait "$pid"
    local rc=$?
    rm -rf "$work" "long/$t.pid"
    local n
    n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    n=${n:-$(grep -Eo '^#[0-9]+' "$log" | tail -n 1 | tr -d '#')}
    local found
    found=$(find "artifacts/$t" -type f | wc -l)
    echo "$((cpu + used)) $((execs + ${n:-0})) $found $((segs + 1))" >"long/$t.state"
    # libFuzzer exits 0 when interrupted; anything else is a finding (crash,
    # failed check, timeout, out of memory): keep the log, say so, go on.
    if [ "$rc" -ne 0 ] && ! grep -q 'run interrupted' "$log"; then
        echo "fuzz $t: FINDING (exit $rc), see fuzz/$log and fuzz/artifacts/$t/" >&2
        echo "$BUDGET $((execs + ${n:-0})) $found $((segs + 1))" >"long/$t.state"
    fi
}

stop() {
    touch long/STOP
    wait
    rm -f long/STOP
    exit 130
}
trap stop INT TERM
rm -f long/STOP

running=0
for t in $targets; do
    # A stop (the STOP file, or the trap above) ends the launching too.
    [ -f long/STOP ] && break
    [ -x "$BIN/$t" ] || { echo "no $BIN/$t: run scripts/fuzz-smoke.sh first" >&2; exit 2; }
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$JOBS" ]; then
        wait -n
        running=$((running - 1))
    fi
done
wait

echo "| target | CPU s | executions | cov / ft (last) | corpus files | findings | segments |"
echo "|---|---:|---:|---|---:|---:|---:|"
for t in $targets; do
    read -r cpu execs crashes segs < <(read_state "$t")
    last=$(ls -t long/"$t".*.log 2>/dev/null | head -n 1)
    cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$last" 2>/dev/null | tail -n 1 |
        sed 's/cov: \([0-9]*\) ft: \([0-9]*\)/\1 \/ \2/')
    files=$(find "corpus/$t" -type f 2>/dev/null | wc -l)
    echo "| $t | $cpu | $execs | ${cov:-?} | $files | $crashes | $segs |"
done
