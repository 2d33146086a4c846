#!/usr/bin/env bash
# The connection layer's model, measured: socketmap, dict and policy
# throughput, latency and CPU time per request of ramdir (this tree: a tokio
# task per connection) and optionally an older binary (OLD_RAMDIR, named
# OLD_NAME; e.g. the blocking thread-per-connection model of commit
# e05eaa0, to reproduce the model comparison), against two constant-reply
# servers built from the same codecs: tokio task per
# connection (`ramdir-load … ceiling`) and a blocking thread per connection
# (`… ceiling --blocking`), at several connection counts, in one run; then
# dict connection churn (connect, H, one L, close) on each. One markdown
# report on stdout; see docs/benchmarks.md ("The connection layer").
#
# Usage: bench/conn.sh
#
# Environment (defaults in brackets):
#   USERS [100000]        users in the generated passwd-file
#   DOMAINS [100]         domains they are spread over
#   CONNS [16 100 500]    connection counts
#   PROTOCOLS [socketmap dict policy]
#   DURATION [5]          measured seconds per run
#   WARMUP [1]            unmeasured seconds before each run
#   ROUNDS [2]            rounds; the order of the servers rotates each round; median reported
#   OLD_RAMDIR []         an older ramdir binary to measure in the same run ("before")
#   OLD_NAME [old]        its name in the report (e.g. "thread")
#   CHURN [4]             seconds of dict connection churn per server and round (0: none)
#   CLIENT_THREADS [nproc]
#   SKIP_BUILD [0]        1: use the existing target/release binaries
#
# Only Unix sockets in a temp dir (removed on exit); every process started
# here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
USERS=${USERS:-100000}
DOMAINS=${DOMAINS:-100}
CONNS=${CONNS:-16 100 500}
PROTOCOLS=${PROTOCOLS:-socketmap dict policy}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
ROUNDS=${ROUNDS:-2}
OLD_RAMDIR=${OLD_RAMDIR:-}
CLIENT_THREADS=${CLIENT_THREADS:-$(nproc)}
SKIP_BUILD=${SKIP_BUILD:-0}
OLD_NAME=${OLD_NAME:-old}
CHURN=${CHURN:-4}
PATTERN='user%07d@domain%d.test'
GOAL_16=0.85 # ramdir / blocking ceiling at 16 connections, at least

for t in jq bc; do command -v "$t" >/dev/null || die "needs $t"; done
[ "$SKIP_BUILD" = 1 ] || (cd "$ROOT" && cargo build --release --locked -p ramdir -p ramdir-bench >&2)
RAMDIR=$ROOT/target/release/ramdir
LOAD=$ROOT/target/release/ramdir-load
TMP=$(mktemp -d /tmp/ramdir-bench-conn.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do stop "$p"; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
LOADAVG0=$(cut -d' ' -f1-3 /proc/loadavg)
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || REV="$REV (with uncommitted changes)"

log "generating $USERS users"
"$LOAD" gen-passwd --users "$USERS" --domains "$DOMAINS" --out "$TMP/users.passwd" >&2

# Every listener a load targets, for one ramdir instance.
start_ramdir() { # name binary
    local name=$1 bin=$2 d=$TMP/$1
    mkdir -p "$d"
    cat >"$d/ramdir.toml" <<EOF
[directory]
passwd_files = ["$TMP/users.passwd"]
watch_files = false

[socketmap]
listen = "unix:$d/socketmap.sock"
mode = "0666"
max_connections = 4096

[dict]
listen = "unix:$d/dict.sock"
mode = "0666"
max_connections = 4096

[quota]
store = "$d/quota.redb"

[policy]
listen = "unix:$d/policy.sock"
mode = "0666"
max_connections = 4096
EOF
    # Binaries from before the root check (#13) do not know --allow-root.
    local root=()
    "$bin" serve --help 2>/dev/null | grep -q -- --allow-root && root=(--allow-root)
    "$bin" serve "${root[@]}" --config "$d/ramdir.toml" 2>"$d/ramdir.log" &
    PIDS+=($!)
    eval "PID_$name=$!"
    "$LOAD" wait --socket "$d/socketmap.sock" --timeout 300 >/dev/null || { cat "$d/ramdir.log" >&2; die "$name did not answer"; }
}

SERVERS="ramdir"
start_ramdir ramdir "$RAMDIR"
if [ -n "$OLD_RAMDIR" ]; then
    start_ramdir "$OLD_NAME" "$OLD_RAMDIR"
    SERVERS="$SERVERS $OLD_NAME"
fi
for model in tokio blocking; do
    flag=()
    [ "$model" = blocking ] && flag=(--blocking)
    d=$TMP/$model
    mkdir -p "$d"
    "$LOAD" ceiling --socket "$d/socketmap.sock" "${flag[@]}" 2>"$d/sm.log" &
    PIDS+=($!); eval "PIDSM_$model=$!"
    "$LOAD" dict-ceiling --socket "$d/dict.sock" "${flag[@]}" 2>"$d/dict.log" &
    PIDS+=($!); eval "PIDDICT_$model=$!"
    "$LOAD" policy-ceiling --socket "$d/policy.sock" "${flag[@]}" 2>"$d/policy.log" &
    PIDS+=($!); eval "PIDPOLICY_$model=$!"
    "$LOAD" wait --socket "$d/socketmap.sock" --timeout 30 >/dev/null || die "$model ceiling did not answer"
    SERVERS="$SERVERS $model"
done
sleep 1

server_pid() { # server protocol
    case "$1" in
        tokio|blocking) local p; p=$(echo "$2" | tr a-z A-Z); p=${p/SOCKETMAP/SM}; local v=PID${p}_$1; echo "${!v}" ;;
        *) local v=PID_$1; echo "${!v}" ;;
    esac
}

mkdir -p "$TMP/runs"
run_one() { # server protocol conns round
    local s=$1 proto=$2 c=$3 r=$4 sock=$TMP/$1/$2.sock pid f
    pid=$(server_pid "$s" "$proto")
    f=$TMP/runs/$proto-$s-c$c-r$r.json
    local common=(--socket "$sock" --connections "$c" --threads "$CLIENT_THREADS" --duration "$DURATION"
        --warmup "$WARMUP" --key-count "$USERS" --key-domains "$DOMAINS" --seed "$r" --server-pid "$pid" --json)
    case "$proto" in
        socketmap) "$LOAD" socketmap "${common[@]}" --map mailboxes >"$f" ;;
        dict) "$LOAD" dict "${common[@]}" --dict auth --key-pattern "shared/userdb/$PATTERN" >"$f" ;;
        policy) "$LOAD" policy "${common[@]}" --key-pattern "$PATTERN" --rcpts-per-mail 2 >"$f" ;;
    esac
    log "$proto $s c=$c r=$r: $(jq -r '"\(.rps|floor) req/s, p50 \(.latency_us.p50) µs, p99 \(.latency_us.p99) µs, server \(.server_cpu_us_per_req) µs/req, client \(.client_cpu_us_per_req) µs/req, ok \(.replies.ok) notfound \(.replies.notfound) temp \(.replies.temp) other \(.replies.other) stalled \(.stalled // 0)"' "$f"), others $(fmt "$(jq '.other_cpu_s / .seconds' "$f")" 2) cores"
}

churn_one() { # server round
    local s=$1 r=$2 f=$TMP/runs/churn-$1-r$2.json
    "$LOAD" dict-churn --socket "$TMP/$s/dict.sock" --threads "$CLIENT_THREADS" --duration "$CHURN" \
        --key-pattern "shared/userdb/$PATTERN" --key-count "$USERS" --key-domains "$DOMAINS" \
        --server-pid "$(server_pid "$s" dict)" >"$f"
    log "dict churn $s r=$r: $(jq -r '"\(.per_s|floor) connections/s, server \(.server_cpu_us_per_conn) µs/conn, client \(.client_cpu_us_per_conn) µs/conn, failed \(.failed)"' "$f")"
}

# Rotate the order every round so that drift hits every server alike.
set -- $SERVERS
N=$#
for r in $(seq "$ROUNDS"); do
    order=()
    for i in $(seq 0 $((N - 1))); do
        j=$(( (i + r - 1) % N + 1 ))
        order+=("${!j}")
    done
    for proto in $PROTOCOLS; do
        for c in $CONNS; do
            for s in "${order[@]}"; do run_one "$s" "$proto" "$c" "$r"; done
        done
    done
    if [ "$CHURN" != 0 ]; then
        for s in "${order[@]}"; do churn_one "$s" "$r"; done
    fi
done

echo "## connection layer: ramdir against tokio and blocking constant-reply servers ($(date -u +%FT%H:%MZ))"
echo
echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); load average at start $LOADAVG0 (shared with other builds: figures are ratios within one run)"
echo "- ramdir revision: $REV (a tokio task per connection)${OLD_RAMDIR:+; $OLD_NAME: $OLD_RAMDIR}"
echo "- servers: $SERVERS (tokio/blocking: the constant-reply ceilings, a task / a thread per connection)"
echo "- $USERS users; ${DURATION} s measured after ${WARMUP} s warm-up; $ROUNDS rounds, server order rotated; median; client $CLIENT_THREADS threads"
echo
echo "| protocol | connections | server | requests/s | / blocking ceiling | p50 µs | p99 µs | server CPU µs/req | client CPU µs/req | other cores | non-OK replies |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for proto in $PROTOCOLS; do
    for c in $CONNS; do
        base=$(median "$TMP/runs/$proto-blocking-c$c-r*.json" .rps)
        for s in $SERVERS; do
            f="$TMP/runs/$proto-$s-c$c-r*.json"
            rps=$(median "$f" .rps)
            bad=$(jq -s 'map(.replies.temp + .replies.other + (.stalled // 0)) | add' $f)
            echo "| $proto | $c | $s | $(fmt "$rps") | $(fmt "$(calc "$rps / $base")" 3) | $(fmt "$(median "$f" .latency_us.p50)" 1) | $(fmt "$(median "$f" .latency_us.p99)" 1) | $(fmt "$(median "$f" .server_cpu_us_per_req)" 2) | $(fmt "$(median "$f" .client_cpu_us_per_req)" 2) | $(fmt "$(median "$f" '(.other_cpu_s / .seconds)')" 2) | $bad |"
        done
    done
done
if [ "$CHURN" != 0 ]; then
    echo
    echo "Dict connection churn ($CLIENT_THREADS client threads, each: connect, H, one L, close; ${CHURN} s per server and round; median):"
    echo
    echo "| server | connections/s | server CPU µs/connection | client CPU µs/connection | failed |"
    echo "|---|---:|---:|---:|---:|"
    for s in $SERVERS; do
        f="$TMP/runs/churn-$s-r*.json"
        echo "| $s | $(fmt "$(median "$f" .per_s)") | $(fmt "$(median "$f" .server_cpu_us_per_conn)" 2) | $(fmt "$(median "$f" .client_cpu_us_per_conn)" 2) | $(jq -s 'map(.failed) | add' $f) |"
    done
fi
echo
echo "Goal: ramdir / blocking ceiling ≥ $GOAL_16 at 16 connections, no loss at 500, never below the old binary. On a busy machine compare the CPU µs per request (robust to contention), not the throughput ratios (a server with many runnable threads takes a larger share of a contended machine)."
