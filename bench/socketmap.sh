#!/usr/bin/env bash
# ramdir socketmap benchmark: ramdir against a constant-reply "ceiling"
# server built from the same parts (tokio, the project's codec), plus
# ramdir's load time and memory with a large directory. One run, one
# markdown report. See docs/benchmarks.md for what it measures and why.
#
# Usage: bench/socketmap.sh [--out FILE]
#
# Environment (defaults in brackets):
#   USERS [1000000]      users in the generated passwd-file
#   DOMAINS [1000]       domains they are spread over
#   ALIAS_EVERY [10]     every n-th user also gets an alias
#   DURATION [10]        measured seconds per run
#   WARMUP [2]           unmeasured seconds of load before each run
#   ROUNDS [3]           runs per (server, connections); the median is reported
#   LOAD_RUNS [3]        ramdir starts timed for the load time; the median is reported
#   CONNS [1 16]         connection counts to measure (first = latency, last = throughput)
#   CLIENT_THREADS [nproc]  load client OS threads (capped at the connection count)
#   LAT_PIN [1]          1: for the lowest connection count (the latency runs) pin the
#                        server's threads and the client to one CPU, LAT_CPU [0]; see docs
#   NOISE_MAX [0.10]     a run during which other processes used more CPU cores than
#   RETRIES [2]          this is repeated, at most RETRIES times (the quietest attempt is kept)
#   PROFILE [0]          1: also `perf record` ramdir under the last load and add the top symbols
#   SKIP_BUILD [0]       1: use the existing target/release binaries
#   KEEP_TMP [0]         1: keep the temp dir (data, logs, raw JSON)
#
# Only Unix sockets are used; everything lives in a temp dir that is
# removed on exit, and every process started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
parse_args "$@"

USERS=${USERS:-1000000}
DOMAINS=${DOMAINS:-1000}
ALIAS_EVERY=${ALIAS_EVERY:-10}
LOAD_RUNS=${LOAD_RUNS:-3}
bench_env

# Goals (docs/benchmarks.md).
GOAL_TPUT_RATIO=0.90   # ramdir/ceiling throughput at the highest connection count, at least
GOAL_P50_RATIO=1.2     # ramdir/ceiling p50 latency at the lowest connection count, at most
GOAL_LOAD_S=3          # seconds from process start to the first answer, at most
GOAL_RSS_MB=300        # resident memory after loading, at most (MB = 10^6 bytes)


command -v jq >/dev/null || die "jq is needed (apt-get install jq)"

TMP=$(mktemp -d /tmp/ramdir-bench.XXXXXX)
RAMDIR_PID=""
CEIL_PID=""
PERF_PID=""

cleanup() {
    local rc=$?
    stop "$PERF_PID"
    stop "$RAMDIR_PID"
    stop "$CEIL_PID"
    wait 2>/dev/null || true
    if [ "$KEEP_TMP" = 1 ]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

LOADAVG0=$(cut -d' ' -f1-3 /proc/loadavg)
build_release

log "generating $USERS users over $DOMAINS domains"
"$LOAD" gen-passwd --users "$USERS" --domains "$DOMAINS" --alias-every "$ALIAS_EVERY" \
    --out "$TMP/users.passwd" --aliases "$TMP/aliases" >&2
# Let the fresh files reach the disk now, not while ramdir is being timed.
sync

cat >"$TMP/ramdir.toml" <<EOF
[directory]
passwd_files = ["$TMP/users.passwd"]
alias_files = ["$TMP/aliases"]

[socketmap]
listen = "unix:$TMP/ramdir.sock"
mode = "0666"
EOF

# Load time: wall clock from just before exec until the socket answers a
# request (the probe key is not a user, so this is a full lookup). Timed
# over LOAD_RUNS starts; the last instance stays up for the load runs.
LOAD_TIMES=()
LOGGED_TIMES=()
for i in $(seq "$LOAD_RUNS"); do
    log "starting ramdir ($i/$LOAD_RUNS)"
    T0=$(date +%s%N)
    "$RAMDIR" serve --allow-root --config "$TMP/ramdir.toml" 2>"$TMP/ramdir.log" &
    RAMDIR_PID=$!
    t=$("$LOAD" wait --socket "$TMP/ramdir.sock" --timeout 300 --since-unix-ns "$T0") \
        || { cat "$TMP/ramdir.log" >&2; die "ramdir did not answer"; }
    ms=$(grep -o 'elapsed_ms=[0-9]*' "$TMP/ramdir.log" | head -1 | cut -d= -f2 || true)
    LOAD_TIMES+=("$t")
    LOGGED_TIMES+=("${ms:-?}")
    log "ramdir answers after $t s (its log: directory loaded in ${ms:-?} ms)"
    if [ "$i" -lt "$LOAD_RUNS" ]; then
        stop "$RAMDIR_PID"
        wait "$RAMDIR_PID" 2>/dev/null || true
    fi
done
LOAD_S=$(printf '%s\n' "${LOAD_TIMES[@]}" | sort -g | sed -n "$(( (LOAD_RUNS + 1) / 2 ))p")
sleep 1
read -r RSS0_KIB HWM0_KIB < <("$LOAD" rss --pid "$RAMDIR_PID" --json | jq -r '"\(.vm_rss_kib) \(.vm_hwm_kib)"')

log "starting the ceiling server"
"$LOAD" ceiling --socket "$TMP/ceiling.sock" 2>"$TMP/ceiling.log" &
CEIL_PID=$!
"$LOAD" wait --socket "$TMP/ceiling.sock" --timeout 30 >/dev/null || die "ceiling did not answer"

mkdir -p "$TMP/runs"
CLOW=${CONNS%% *}
CHIGH=${CONNS##* }
# The log line of each run (a jq string over its JSON).
SUMMARY='"\(.connections) conn \(.socket|split("/")|last): \(.rps|floor) req/s, p50 \(.latency_us.p50) µs, p99 \(.latency_us.p99) µs, server \(.server_cpu_us_per_req) µs CPU/req, OK \(.replies.ok) NOTFOUND \(.replies.notfound)"'
run_one() { # server conns round
    local name=$1 c=$2 r=$3 sock pid mask="" pin=()
    if [ "$name" = ramdir ]; then sock=$TMP/ramdir.sock pid=$RAMDIR_PID; else sock=$TMP/ceiling.sock pid=$CEIL_PID; fi
    if [ "$LAT_PIN" = 1 ] && [ "$c" = "$CLOW" ]; then
        mask=$(taskset -p "$pid" | awk '{print $NF}')
        taskset -a -p -c "$LAT_CPU" "$pid" >/dev/null
        pin=(taskset -c "$LAT_CPU")
    fi
    best_run "$name-c$c-r$r" "$SUMMARY" \
        "${pin[@]}" "$LOAD" socketmap --socket "$sock" --connections "$c" --threads "$CLIENT_THREADS" \
            --duration "$DURATION" --warmup "$WARMUP" --map mailboxes \
            --key-count "$USERS" --key-domains "$DOMAINS" --seed "$r" \
            --server-pid "$pid" --json
    [ -n "$mask" ] && taskset -a -p "$mask" "$pid" >/dev/null
    return 0
}

# Alternate the order every round (ABBA) so slow drift hits both alike.
for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order="ramdir ceiling"; else order="ceiling ramdir"; fi
    for c in $CONNS; do
        for s in $order; do
            log "round $r/$ROUNDS: $s, $c connection(s)"
            run_one "$s" "$c" "$r"
        done
    done
done

read -r RSS1_KIB HWM1_KIB < <("$LOAD" rss --pid "$RAMDIR_PID" --json | jq -r '"\(.vm_rss_kib) \(.vm_hwm_kib)"')

CMAX=${CONNS##* }
profile_under "$CMAX connections" "$LOAD" socketmap --socket "$TMP/ramdir.sock" --connections "$CMAX" \
    --threads "$CLIENT_THREADS" --duration "$DURATION" --warmup 0 --key-count "$USERS" \
    --key-domains "$DOMAINS"

# --- report -----------------------------------------------------------------

run_medians "ramdir ceiling" "$CONNS"
declare -A OK NF
for s in ramdir ceiling; do
    for c in $CONNS; do
        f="$TMP/runs/$s-c$c-r*.json"
        OK[$s$c]=$(jq -s 'map(.replies.ok) | add' $f)
        NF[$s$c]=$(jq -s 'map(.replies.notfound + .replies.temp + .replies.other) | add' $f)
    done
done
TPUT_RATIO=$(calc "${RPS[ramdir$CHIGH]} / ${RPS[ceiling$CHIGH]}")
P50_RATIO=$(calc "${P50[ramdir$CLOW]} / ${P50[ceiling$CLOW]}")
CPU_RATIO=$(calc "${SCPU[ramdir$CHIGH]} / ${SCPU[ceiling$CHIGH]}")
RSS0_MB=$(calc "$RSS0_KIB * 1024 / 1000000")
HWM1_MB=$(calc "$HWM1_KIB * 1024 / 1000000")
RSS1_MB=$(calc "$RSS1_KIB * 1024 / 1000000")
OTHER_MAX=$(jq -s "map(.other_cpu_s / .seconds) | max" "$TMP"/runs/[rc]*.json)
report() {
    echo "## socketmap benchmark, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(free -g | awk '/^Mem:/ {print $2}') GB RAM, Linux $(uname -r)"
    echo "- ramdir revision: $REV"
    echo "- directory: $USERS users over $DOMAINS domains, $(wc -l <"$TMP/aliases") aliases; passwd-file $(( $(stat -c %s "$TMP/users.passwd") / 1000000 )) MB"
    if [ "$LAT_PIN" = 1 ]; then
        echo "- the $CLOW-connection (latency) runs pin the server's threads and the client to CPU $LAT_CPU; the other runs are not pinned"
    fi
    echo "- runs repeated because other processes used more than $NOISE_MAX cores: $DISCARDED"
    echo "- load: map \`mailboxes\`, keys uniformly random over all $USERS users; ${DURATION} s measured after ${WARMUP} s warm-up; $ROUNDS rounds alternating ramdir/ceiling, median reported; client: $CLIENT_THREADS thread(s) (capped at the connection count)"
    echo
    echo "| connections | server | requests/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/request |"
    echo "|---:|---|---:|---:|---:|---:|---:|"
    for c in $CONNS; do
        for s in ramdir ceiling; do
            echo "| $c | $s | $(fmt "${RPS[$s$c]}") | $(fmt "${P50[$s$c]}" 1) | $(fmt "${P99[$s$c]}" 1) | $(fmt "${P999[$s$c]}" 1) | $(fmt "${SCPU[$s$c]}" 2) |"
        done
    done
    echo
    echo "| goal | target | measured | |"
    echo "|---|---|---:|---|"
    echo "| throughput ramdir/ceiling at $CHIGH connections | ≥ $GOAL_TPUT_RATIO | $(fmt "$TPUT_RATIO" 3) | $(yesno "$TPUT_RATIO >= $GOAL_TPUT_RATIO") |"
    echo "| p50 latency ramdir/ceiling at $CLOW connection(s) | ≤ $GOAL_P50_RATIO | $(fmt "$P50_RATIO" 3) | $(yesno "$P50_RATIO <= $GOAL_P50_RATIO") |"
    echo "| load time (process start → first answer) | ≤ $GOAL_LOAD_S s | $LOAD_S s | $(yesno "$LOAD_S <= $GOAL_LOAD_S") |"
    echo "| RSS after load (VmRSS) | ≤ $GOAL_RSS_MB MB | $(fmt "$RSS0_MB") MB | $(yesno "$RSS0_MB <= $GOAL_RSS_MB") |"
    echo
    echo "Also measured (no goal):"
    echo
    echo "- load time, each start: ${LOAD_TIMES[*]} s (median reported); as ramdir logs it (\`directory loaded … elapsed_ms\`): ${LOGGED_TIMES[*]} ms"
    echo "- memory: VmRSS $(fmt "$RSS0_MB") MB after load, $(fmt "$RSS1_MB") MB after the runs; peak VmHWM $(fmt "$HWM1_MB") MB"
    echo "- server CPU per request, ramdir/ceiling at $CHIGH connections: $(fmt "$CPU_RATIO" 2)× (does not depend on how the CPUs are shared with the client)"
    if [ "$(calc "$OTHER_MAX > 0.10")" = 1 ]; then
        echo "- **warning: other processes took more than 0.1 CPU core during a measured window; these figures are disturbed, rerun on a quiet machine**"
    fi
    echo "- noise: other processes used at most $(fmt "$OTHER_MAX" 2) CPU cores during any measured window (load average at start: $LOADAVG0)"
    echo "- replies from ramdir: ${OK[ramdir$CHIGH]} OK, ${NF[ramdir$CHIGH]} other at $CHIGH connections (every key is a user, so all should be OK)"
    if [ -n "$PROFILE_TXT" ]; then
        echo
        echo "perf profile of ramdir at $CHIGH connections (self time, top symbols):"
        echo
        echo '```'
        echo "$PROFILE_TXT"
        echo '```'
    fi
}

if [ -n "$OUT" ]; then
    report | tee "$OUT"
else
    report
fi
if [ "${NF[ramdir$CHIGH]}" != 0 ]; then
    log "warning: ramdir answered something other than OK ${NF[ramdir$CHIGH]} times"
fi
