#!/bin/sh
# The real-peer suite with every CPU saturated by an unrelated load
# (docs/reliability.md "The suite under load"), run by hand: too slow for CI.
#
#   scripts/test-under-load.sh            # stress-ng --cpu <nproc>
#   LOAD_WORKERS=4 scripts/test-under-load.sh
#
# Installs what it needs (scripts/install-test-deps.sh, stress-ng included),
# builds everything the suite uses first (unloaded: the build is not what is
# tested), stops the daemons earlier killed runs left, then starts
# `stress-ng --cpu N` (N = number of CPUs, 100% load each) and runs
# `cargo test --workspace --locked` under it. stress-ng is stopped however
# the run ends (trap: failure, Ctrl-C). Then it checks that no daemon the
# suite started is left (Postfix, Dovecot, slapd, redis-server, ramdir:
# every process whose working directory, command line or RAMDIR_STACK
# names a stack directory /tmp/rdi-<test pid>-<n> of a test process that
# is gone), including those a later test's start-up sweep had to stop.
# Prints the wall time, the load average and the outcome; exit status 0
# only when the suite passed and nothing was left.
set -eu
cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== installing test dependencies (Debian packages, stress-ng)"
./scripts/install-test-deps.sh

workers="${LOAD_WORKERS:-$(nproc)}"

echo "== building (before the load)"
cargo build --workspace --locked
./scripts/build-dovecot24-module.sh --locked
cargo test --workspace --locked --no-run
cargo build --locked -p ramdir-integration --bin leftover-daemons
leftover=target/debug/leftover-daemons

echo "== stopping daemons of earlier test runs that were killed"
"$leftover" --sweep
# The harness keeps every daemon's log (and its sweep record) here.
rm -rf target/test-logs

stress_pid=""
sampler_pid=""
loadlog="$(mktemp /tmp/ramdir-load.XXXXXX)"
stop_load() {
    if [ -n "$stress_pid" ]; then
        kill "$stress_pid" 2>/dev/null || true
        wait "$stress_pid" 2>/dev/null || true
        stress_pid=""
    fi
    if [ -n "$sampler_pid" ]; then
        kill "$sampler_pid" 2>/dev/null || true
        wait "$sampler_pid" 2>/dev/null || true
        sampler_pid=""
    fi
}
trap 'stop_load; rm -f "$loadlog"' EXIT
trap 'stop_load; rm -f "$loadlog"; exit 130' INT TERM

echo "== stress-ng --cpu $workers (full load, unrelated to the suite)"
stress-ng --cpu "$workers" --cpu-load 100 --timeout 0 --quiet &
stress_pid=$!
# The 1-minute load average every 15 s, for the report.
(while :; do cut -d' ' -f1 /proc/loadavg >>"$loadlog"; sleep 15; done) &
sampler_pid=$!
# Let the load settle before the suite starts.
sleep 5

echo "== cargo test --workspace under load"
start=$(date +%s)
status=0
# Every test binary, also after a failure: the outcome of the whole suite.
cargo test --workspace --locked --no-fail-fast || status=$?
end=$(date +%s)
stop_load

echo "== left behind?"
left=0
if ! "$leftover" >/tmp/ramdir-leftovers.$$; then
    echo "daemons of this run still running (pid, stack, evidence, command):"
    cat /tmp/ramdir-leftovers.$$
    left=1
fi
rm -f /tmp/ramdir-leftovers.$$
if ! "$leftover" --swept >/tmp/ramdir-swept.$$; then
    echo "daemons a test left that a later test's start-up sweep stopped:"
    cat /tmp/ramdir-swept.$$
    left=1
fi
rm -f /tmp/ramdir-swept.$$

secs=$((end - start))
loads=$(sort -n "$loadlog" | tr '\n' ' ')
max=$(sort -n "$loadlog" | tail -n 1)
mean=$(awk '{ s += $1; n++ } END { if (n) printf "%.1f", s / n }' "$loadlog")
echo "== under load: $workers stress-ng CPU workers on $(nproc) CPUs"
echo "wall time: $((secs / 60)) min $((secs % 60)) s"
echo "1-minute load average: mean $mean, max $max (samples: $loads)"
if [ "$status" -eq 0 ]; then echo "suite: passed"; else echo "suite: FAILED (cargo test exit $status)"; fi
if [ "$left" -eq 0 ]; then echo "left behind: nothing"; else echo "left behind: see above"; fi
[ "$status" -eq 0 ] && [ "$left" -eq 0 ]
