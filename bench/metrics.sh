#!/usr/bin/env bash
# What [metrics] costs: socketmap throughput at 16 connections with the
# Prometheus endpoint on (and scraped every second) against off, in the same
# run, and how long a scrape takes with a large directory. One markdown
# report on stdout. Run by hand (not in CI); see docs/benchmarks.md.
#
# Usage: bench/metrics.sh
#
# Environment (defaults in brackets):
#   USERS [1000000]   users in the generated passwd-file
#   DOMAINS [1000]    domains they are spread over
#   CONNS [16]        socketmap connections of the load
#   DURATION [10]     measured seconds per run
#   WARMUP [2]        unmeasured seconds before each run
#   ROUNDS [3]        runs per setting, alternating; the median is reported
#   SCRAPES [50]      timed scrapes
#   PORT [19156]      the [metrics] port on 127.0.0.1
#   SKIP_BUILD [0]    1: use the existing target/release binaries
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
USERS=${USERS:-1000000}
DOMAINS=${DOMAINS:-1000}
CONNS=${CONNS:-16}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}
SCRAPES=${SCRAPES:-50}
PORT=${PORT:-19156}
SKIP_BUILD=${SKIP_BUILD:-0}
GOAL_RATIO=0.97   # throughput metrics on / off, at least
GOAL_SCRAPE_MS=10 # a scrape, at most (median)

for t in jq curl bc; do command -v "$t" >/dev/null || die "needs $t"; done
build_release --locked
TMP=$(mktemp -d /tmp/ramdir-bench-metrics.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do stop "$p"; done
    rm -rf "$TMP"
}
trap cleanup EXIT

log "generating $USERS users"
"$LOAD" gen-passwd --users "$USERS" --domains "$DOMAINS" --out "$TMP/users.passwd" >&2
for s in off on; do
    {
        printf '[directory]\npasswd_files = ["%s"]\nwatch_files = false\n' "$TMP/users.passwd"
        printf '[socketmap]\nlisten = "unix:%s/%s.sock"\nmode = "0666"\n' "$TMP" "$s"
        [ "$s" = on ] && printf '[metrics]\nlisten = "127.0.0.1:%s"\n' "$PORT"
    } >"$TMP/$s.toml"
    "$RAMDIR" serve --allow-root --config "$TMP/$s.toml" 2>"$TMP/$s.log" &
    PIDS+=($!)
    eval "PID_$s=$!"
    "$LOAD" wait --socket "$TMP/$s.sock" --timeout 600 >/dev/null || die "ramdir ($s) did not answer"
done

# A scraper at 1 Hz against the "on" instance during its runs.
scraper() { while :; do curl -fsS -o /dev/null "http://127.0.0.1:$PORT/metrics" 2>/dev/null || true; sleep 1; done; }
scraper &
PIDS+=($!)

mkdir -p "$TMP/runs"
for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order="off on"; else order="on off"; fi
    for s in $order; do
        pid_var=PID_$s
        "$LOAD" socketmap --socket "$TMP/$s.sock" --connections "$CONNS" \
            --duration "$DURATION" --warmup "$WARMUP" --map mailboxes \
            --key-count "$USERS" --key-domains "$DOMAINS" --seed "$r" \
            --server-pid "${!pid_var}" --json >"$TMP/runs/$s-$r.json"
        log "round $r metrics $s: $(jq -r '.rps|floor' "$TMP/runs/$s-$r.json") req/s"
    done
done
RPS_OFF=$(median "$TMP/runs/off-*.json" '.rps')
RPS_ON=$(median "$TMP/runs/on-*.json" '.rps')
RATIO=$(calc "$RPS_ON / $RPS_OFF")
# Each round's on/off pair ran back to back: the median of the pairs'
# ratios is less exposed to load that comes and goes on a shared machine.
PAIRED=$(for r in $(seq "$ROUNDS"); do
    calc "$(jq .rps "$TMP/runs/on-$r.json") / $(jq .rps "$TMP/runs/off-$r.json")"
done | sort -g | sed -n "$(( (ROUNDS + 1) / 2 ))p")

times=()
for _ in $(seq "$SCRAPES"); do
    times+=("$(curl -fsS -o /dev/null -w '%{time_total}' "http://127.0.0.1:$PORT/metrics")")
done
SCRAPE_MED=$(printf '%s\n' "${times[@]}" | sort -g | sed -n "$(( (SCRAPES + 1) / 2 ))p")
SCRAPE_MAX=$(printf '%s\n' "${times[@]}" | sort -g | tail -n 1)
SCRAPE_MS=$(calc "$SCRAPE_MED * 1000")

echo "## ramdir [metrics] cost ($(date -u +%F), $(nproc) CPUs, $USERS users)"
echo
echo "| measure | goal | result | met |"
echo "|---|---|---|---|"
echo "| socketmap throughput at $CONNS connections, metrics on (scraped 1/s) / off | ≥ $GOAL_RATIO | $(fmt "$RATIO" 3) ($(fmt "$RPS_ON") / $(fmt "$RPS_OFF") req/s, median of $ROUNDS) | $( [ "$(calc "$RATIO >= $GOAL_RATIO")" = 1 ] && echo yes || echo no) |"
echo "| the same, median of the rounds' paired ratios | ≥ $GOAL_RATIO | $(fmt "$PAIRED" 3) | $( [ "$(calc "$PAIRED >= $GOAL_RATIO")" = 1 ] && echo yes || echo no) |"
echo "| one scrape (curl time_total), median of $SCRAPES | ≤ $GOAL_SCRAPE_MS ms | $(fmt "$SCRAPE_MS" 2) ms (max $(fmt "$(calc "$SCRAPE_MAX * 1000")" 2) ms) | $( [ "$(calc "$SCRAPE_MS <= $GOAL_SCRAPE_MS")" = 1 ] && echo yes || echo no) |"
