#!/usr/bin/env bash
# ramdir Dovecot dict benchmark: ramdir's [dict] listener answering userdb
# lookups against a constant-reply dict server ("dict ceiling") built from
# the same parts (tokio, the project's dict codec). One run, one markdown
# report. See docs/benchmarks.md ("Dovecot dict") for what it measures.
#
# Usage: bench/dict.sh [--out FILE]
#
# Environment (defaults in brackets):
#   USERS [1000000]      users in the generated passwd-file
#   DOMAINS [1000]       domains they are spread over
#   DURATION [10]        measured seconds per run
#   WARMUP [2]           unmeasured seconds of load before each run
#   ROUNDS [3]           runs per (server, connections); the median is reported
#   CONNS [1 16]         connection counts (first = latency, last = throughput)
#   CLIENT_THREADS [nproc]  load client OS threads (capped at the connection count)
#   LAT_PIN [1]          1: pin server and client to CPU LAT_CPU [0] for the lowest
#                        connection count (as bench/socketmap.sh)
#   NOISE_MAX [0.10]     a run during which other processes used more CPU cores than
#   RETRIES [2]          this is repeated, at most RETRIES times (the quietest is kept)
#   PROFILE [0]          1: also `perf record` ramdir under the last load
#   SKIP_BUILD [0]       1: use the existing target/release binaries
#   KEEP_TMP [0]         1: keep the temp dir (data, logs, raw JSON)
#
# Unix sockets only; everything lives in a temp dir removed on exit, and
# every process started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
parse_args "$@"

USERS=${USERS:-1000000}
DOMAINS=${DOMAINS:-1000}
bench_env
KEY_PATTERN='shared/userdb/user%07d@domain%d.test'

GOAL_TPUT_RATIO=0.90   # ramdir/ceiling throughput at the highest connection count, at least


command -v jq >/dev/null || die "jq is needed (apt-get install jq)"
command -v bc >/dev/null || die "bc is needed (apt-get install bc)"

TMP=$(mktemp -d /tmp/ramdir-dict-bench.XXXXXX)
RAMDIR_PID=""
CEIL_PID=""
PERF_PID=""

cleanup() {
    local rc=$?
    stop "$PERF_PID"
    stop "$RAMDIR_PID"
    stop "$CEIL_PID"
    wait 2>/dev/null || true
    if [ "$KEEP_TMP" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

LOADAVG0=$(cut -d' ' -f1-3 /proc/loadavg)
build_release

log "generating $USERS users over $DOMAINS domains"
"$LOAD" gen-passwd --users "$USERS" --domains "$DOMAINS" --out "$TMP/users.passwd" >&2
sync

cat >"$TMP/ramdir.toml" <<EOF
[directory]
passwd_files = ["$TMP/users.passwd"]

[dict]
listen = "unix:$TMP/dict.sock"
mode = "0666"
EOF

# A dict probe that ramdir and the ceiling both answer: hello, then one
# lookup, through the load client itself.
dict_ready() { # socket
    load_ready 600 dict "$1" --key-pattern "$KEY_PATTERN" --key-domains "$DOMAINS"
}

log "starting ramdir"
T0=$(date +%s%N)
"$RAMDIR" serve --allow-root --config "$TMP/ramdir.toml" 2>"$TMP/ramdir.log" &
RAMDIR_PID=$!
dict_ready "$TMP/dict.sock" || { cat "$TMP/ramdir.log" >&2; die "ramdir's dict did not answer"; }
log "ramdir answers after $(calc "($(date +%s%N) - $T0) / 1000000000" | xargs printf '%.2f') s"

log "starting the dict ceiling"
"$LOAD" dict-ceiling --socket "$TMP/ceiling.sock" 2>"$TMP/ceiling.log" &
CEIL_PID=$!
dict_ready "$TMP/ceiling.sock" || die "dict ceiling did not answer"

# Both servers must answer a userdb lookup of the same size: check one.
REPLY_RAMDIR=$(printf 'H3\t2\t0\t\tauth\nLshared/userdb/user0000003@domain3.test\tuser0000003@domain3.test\n' \
    | timeout 2 nc -U -q 1 "$TMP/dict.sock" 2>/dev/null | head -1 || true)
REPLY_CEIL=$(printf 'H3\t2\t0\t\tauth\nLshared/userdb/user0000003@domain3.test\tuser0000003@domain3.test\n' \
    | timeout 2 nc -U -q 1 "$TMP/ceiling.sock" 2>/dev/null | head -1 || true)

mkdir -p "$TMP/runs"
CLOW=${CONNS%% *}
CHIGH=${CONNS##* }
# The log line of each run (a jq string over its JSON).
SUMMARY='"\(.connections) conn \(.socket|split("/")|last): \(.rps|floor) req/s, p50 \(.latency_us.p50) µs, p99 \(.latency_us.p99) µs, server \(.server_cpu_us_per_req) µs CPU/req, O \(.replies.ok) N \(.replies.notfound)"'
run_one() { # server conns round
    local name=$1 c=$2 r=$3 sock pid mask="" pin=()
    if [ "$name" = ramdir ]; then sock=$TMP/dict.sock pid=$RAMDIR_PID; else sock=$TMP/ceiling.sock pid=$CEIL_PID; fi
    if [ "$LAT_PIN" = 1 ] && [ "$c" = "$CLOW" ]; then
        mask=$(taskset -p "$pid" | awk '{print $NF}')
        taskset -a -p -c "$LAT_CPU" "$pid" >/dev/null
        pin=(taskset -c "$LAT_CPU")
    fi
    best_run "$name-c$c-r$r" "$SUMMARY" \
        "${pin[@]}" "$LOAD" dict --socket "$sock" --connections "$c" --threads "$CLIENT_THREADS" \
            --duration "$DURATION" --warmup "$WARMUP" --dict auth --key-pattern "$KEY_PATTERN" \
            --key-count "$USERS" --key-domains "$DOMAINS" --seed "$r" \
            --server-pid "$pid" --json
    [ -n "$mask" ] && taskset -a -p "$mask" "$pid" >/dev/null
    return 0
}

# ABBA: the order flips every round so slow drift hits both alike.
for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order="ramdir ceiling"; else order="ceiling ramdir"; fi
    for c in $CONNS; do
        for s in $order; do
            log "round $r/$ROUNDS: $s, $c connection(s)"
            run_one "$s" "$c" "$r"
        done
    done
done

profile_under "$CHIGH connections" "$LOAD" dict --socket "$TMP/dict.sock" --connections "$CHIGH" \
    --threads "$CLIENT_THREADS" --duration "$DURATION" --warmup 0 --key-pattern "$KEY_PATTERN" \
    --key-count "$USERS" --key-domains "$DOMAINS"

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
OTHER_MAX=$(jq -s "map(.other_cpu_s / .seconds) | max" "$TMP"/runs/[rc]*.json)
SPREAD=$(for s in ramdir ceiling; do
    jq -rs --arg s "$s" 'map(.rps | floor) | sort | "\($s) \(.[0])–\(.[-1])"' "$TMP"/runs/$s-c$CHIGH-r*.json
done | paste -sd';' | sed 's/;/; /')

report() {
    echo "### dict benchmark, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(free -g | awk '/^Mem:/ {print $2}') GB RAM, Linux $(uname -r)"
    echo "- ramdir revision: $REV"
    echo "- directory: $USERS users over $DOMAINS domains (passwd-file)"
    echo "- load: dict \`auth\`, \`H\` once per connection then one \`L $KEY_PATTERN\` at a time, keys uniformly random over all users; ${DURATION} s measured after ${WARMUP} s warm-up; $ROUNDS rounds alternating ramdir/ceiling (ABBA), median reported; client: $CLIENT_THREADS thread(s)"
    if [ "$LAT_PIN" = 1 ]; then
        echo "- the $CLOW-connection runs pin the server's threads and the client to CPU $LAT_CPU; the others are not pinned"
    fi
    echo "- reply sizes: ramdir $(printf %s "$REPLY_RAMDIR" | wc -c) bytes, ceiling $(printf %s "$REPLY_CEIL" | wc -c) bytes (\`user0000003\`)"
    echo "- runs repeated because other processes used more than $NOISE_MAX cores: $DISCARDED"
    echo
    echo "| connections | server | lookups/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/lookup |"
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
    echo
    echo "Also measured (no goal):"
    echo
    echo "- p50 latency ramdir/ceiling at $CLOW connection(s): $(fmt "$P50_RATIO" 3)"
    echo "- server CPU per lookup ramdir/ceiling at $CHIGH connections: $(fmt "$CPU_RATIO" 2)×"
    echo "- spread of lookups/s over the rounds at $CHIGH connections: $SPREAD"
    echo "- replies from ramdir at $CHIGH connections: ${OK[ramdir$CHIGH]} O, ${NF[ramdir$CHIGH]} other (every key is a user, so all should be O)"
    if [ "$(calc "$OTHER_MAX > $NOISE_MAX")" = 1 ]; then
        echo "- **warning: other processes took more than $NOISE_MAX CPU cores during a measured window; these figures are disturbed**"
    fi
    echo "- noise: other processes used at most $(fmt "$OTHER_MAX" 2) CPU cores during any measured window (load average at start: $LOADAVG0)"
    if [ -n "$PROFILE_TXT" ]; then
        echo
        echo "perf profile of ramdir at $CHIGH connections (self time, top symbols):"
        echo
        echo '```'
        echo "$PROFILE_TXT"
        echo '```'
    fi
}

if [ -n "$OUT" ]; then report | tee "$OUT"; else report; fi
if [ "${NF[ramdir$CHIGH]}" != 0 ]; then
    log "warning: ramdir answered something other than O ${NF[ramdir$CHIGH]} times"
fi
