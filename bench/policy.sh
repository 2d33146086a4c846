#!/usr/bin/env bash
# ramdir SMTP-time quota benchmark: ramdir's [policy] service against
# Dovecot's own quota-status service and against a constant-reply policy
# server ("policy ceiling", action=DUNNO, built from the same parts as
# ramdir: tokio and the project's policy codec). All three get the same
# RCPT-time requests as Postfix 3.7 sends them. One run, one markdown
# report. See docs/benchmarks.md ("SMTP-time quota") for what it measures.
#
# The setup, all in one temp dir:
# - ramdir with [directory] (a generated passwd-file), [dict], [quota] and
#   [policy]; every user's usage counters are set through the quota dict
#   first (`ramdir-load quota-fill`, uniform 0–200 MB, so users with small
#   limits are over quota), so both checkers see the same usage;
# - Dovecot 2.3 (as in stack-notes section 4) running only quota-status
#   (`executable = quota-status -p postfix`, `client_limit = 1`, a unix
#   listener with mode 0666), with passdb/userdb `driver = dict` on ramdir's
#   auth dict and `quota = dict:User quota::proxy:…:quota` on ramdir's quota
#   dict: the limits and the usage quota-status sees are ramdir's. Homes
#   are under the temp dir (userdb `override_fields`), and every user's
#   Maildir is created before the runs, as on a live server.
#
# Usage: bench/policy.sh [--out FILE]
#
# Environment (defaults in brackets):
#   USERS [100000]       users (recipients are drawn from all of them)
#   DOMAINS [1000]       domains they are spread over
#   DURATION [10]        measured seconds per run
#   WARMUP [2]           unmeasured seconds of load before each run
#   ROUNDS [3]           runs per (server, connections); the median is reported
#   CONNS [1 16]         connection counts (first = latency, last = throughput)
#   CLIENT_THREADS [nproc]  load client OS threads (capped at the connection count)
#   RCPTS_PER_MAIL [2]   requests per `instance` (mail transaction) on a connection
#   LAT_PIN [1]          1: pin ramdir/ceiling and the client to CPU LAT_CPU [0] for the
#                        lowest connection count (quota-status, a process chain, is not pinned)
#   NOISE_MAX [0.10]     a run during which other processes used more CPU cores than
#   RETRIES [2]          this is repeated, at most RETRIES times (the quietest is kept)
#   PROFILE [0]          1: also `perf record` ramdir under the last load
#   SKIP_BUILD [0]       1: use the existing target/release binaries
#   KEEP_TMP [0]         1: keep the temp dir
#
# Needs root (Dovecot), dovecot-core 2.3, jq, bc, taskset. Unix sockets
# only; everything started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
parse_args "$@"

USERS=${USERS:-100000}
DOMAINS=${DOMAINS:-1000}
RCPTS_PER_MAIL=${RCPTS_PER_MAIL:-2}
bench_env
MAX_USAGE=200000000
PATTERN='user%07d@domain%d.test'
# Dovecot's processes doing quota-status's work (comm names); ramdir's
# dict work for them is counted through ramdir's pid.
DOVECOT_COMMS=quota-status,auth,dovecot,log,config,anvil,stats

GOAL_CEIL_RATIO=0.90   # ramdir/ceiling throughput at the highest connection count, at least
GOAL_QS_RATIO=100      # ramdir/quota-status throughput at the highest connection count, at least


[ "$(id -u)" = 0 ] || die "run as root (Dovecot is started from a temp dir)"
for t in jq bc taskset /usr/sbin/dovecot /usr/lib/dovecot/quota-status; do
    command -v "$t" >/dev/null || [ -x "$t" ] || die "$t is missing (dovecot-core, jq, bc, util-linux)"
done
getent passwd dovecot >/dev/null && getent passwd dovenull >/dev/null || die "users dovecot/dovenull missing (install dovecot-core)"

# Short: Dovecot's base_dir sockets must fit in sun_path (107 bytes).
TMP=$(mktemp -d /tmp/rdpol.XXXXXX)
chmod 755 "$TMP"
RAMDIR_PID=""
CEIL_PID=""
PERF_PID=""
DV=$TMP/dv

cleanup() {
    local rc=$?
    stop "$PERF_PID"
    if [ -f "$DV/run/master.pid" ]; then stop "$(cat "$DV/run/master.pid")"; fi
    stop "$CEIL_PID"
    stop "$RAMDIR_PID"
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
"$LOAD" gen-passwd --users "$USERS" --domains "$DOMAINS" --pattern "$PATTERN" --out "$TMP/users.passwd" >&2

cat >"$TMP/ramdir.toml" <<EOF
[directory]
passwd_files = ["$TMP/users.passwd"]

[dict]
listen = "unix:$TMP/dict.sock"
mode = "0666"

[quota]
store = "$TMP/quota/quota.redb"

[policy]
listen = "unix:$TMP/policy.sock"
mode = "0666"
EOF

policy_ready() { # socket
    load_ready 300 policy "$1" --key-pattern "$PATTERN" --key-domains "$DOMAINS"
}

log "starting ramdir"
"$RAMDIR" serve --allow-root --config "$TMP/ramdir.toml" 2>"$TMP/ramdir.log" &
RAMDIR_PID=$!
policy_ready "$TMP/policy.sock" || { cat "$TMP/ramdir.log" >&2; die "ramdir's policy service did not answer"; }

log "setting every user's usage (uniform 0–$MAX_USAGE bytes) through the quota dict"
"$LOAD" quota-fill --socket "$TMP/dict.sock" --key-pattern "$PATTERN" --key-count "$USERS" \
    --key-domains "$DOMAINS" --max-bytes "$MAX_USAGE" >&2

# --- Dovecot: quota-status only ------------------------------------------------
mkdir -p "$DV/run" "$DV/state" "$DV/mail"
log "creating $USERS Maildirs (as on a live server)"
( cd "$DV/mail" && awk -v n="$USERS" -v d="$DOMAINS" 'BEGIN {
    for (i = 0; i < n; i++) { u = sprintf("domain%d.test/user%07d/Maildir", i % d, i); print u "/cur"; print u "/new"; print u "/tmp" } }' \
    | xargs mkdir -p )
chown -R 5000:5000 "$DV/mail"
cat >"$DV/auth.conf.ext" <<EOF
uri = proxy:idle_msecs=10000:$TMP/dict.sock:auth
password_key = passdb/%u
user_key = userdb/%u
iterate_disable = yes
default_pass_scheme = SSHA
EOF
cat >"$DV/dovecot.conf" <<EOF
# quota-status only (stack-notes section 4), on ramdir's dicts.
instance_name = rdpol-$$
base_dir = $DV/run
state_dir = $DV/state
protocols = none
log_path = $DV/dovecot.log
ssl = no
auth_username_format = %Lu
auth_cache_size = 0
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
mail_uid = 5000
mail_gid = 5000
first_valid_uid = 5000
last_valid_uid = 5000
first_valid_gid = 5000
mail_location = maildir:~/Maildir
mail_plugins = quota
passdb {
  driver = dict
  args = $DV/auth.conf.ext
}
userdb {
  driver = dict
  args = $DV/auth.conf.ext
  # ramdir's homes are /var/vmail/…; keep the mail in the temp dir.
  override_fields = home=$DV/mail/%d/%n
}
plugin {
  # Usage from ramdir's quota dict; limits from ramdir's userdb quota_rule.
  quota = dict:User quota::proxy:idle_msecs=10000:$TMP/dict.sock:quota
  quota_grace = 10%%
  quota_status_success = DUNNO
  quota_status_nouser = DUNNO
  quota_status_overquota = "552 5.2.2 Mailbox is full"
}
service quota-status {
  executable = quota-status -p postfix
  client_limit = 1
  unix_listener quota-status {
    mode = 0666
  }
}
EOF
log "starting Dovecot (quota-status)"
/usr/sbin/dovecot -c "$DV/dovecot.conf" </dev/null >/dev/null 2>>"$DV/dovecot.stderr" \
    || { cat "$DV/dovecot.stderr" >&2; die "dovecot did not start"; }
QS_SOCK=$DV/run/quota-status
policy_ready "$QS_SOCK" || { cat "$DV/dovecot.stderr" "$DV/dovecot.log" >&2; die "quota-status did not answer"; }

log "starting the policy ceiling"
"$LOAD" policy-ceiling --socket "$TMP/ceiling.sock" 2>"$TMP/ceiling.log" &
CEIL_PID=$!
policy_ready "$TMP/ceiling.sock" || die "policy ceiling did not answer"

mkdir -p "$TMP/runs"
CLOW=${CONNS%% *}
CHIGH=${CONNS##* }
# The log line of each run (a jq string over its JSON).
SUMMARY='"\(.connections) conn: \(.rps|floor) req/s, p50 \(.latency_us.p50) µs, p99 \(.latency_us.p99) µs, server \(.server_cpu_us_per_req) µs CPU/req, DUNNO \(.replies.ok) reject \(.replies.notfound) defer \(.replies.temp) other \(.replies.other)"'
run_one() { # server conns round
    local name=$1 c=$2 r=$3 sock pids=() mask=() pin=() cpu=() p
    case "$name" in
        ramdir) sock=$TMP/policy.sock pids=("$RAMDIR_PID") cpu=(--server-pid "$RAMDIR_PID") ;;
        ceiling) sock=$TMP/ceiling.sock pids=("$CEIL_PID") cpu=(--server-pid "$CEIL_PID") ;;
        # Dovecot's processes plus ramdir, which answers its dict lookups.
        quota-status) sock=$QS_SOCK cpu=(--server-pid "$RAMDIR_PID" --server-comm "$DOVECOT_COMMS") ;;
    esac
    if [ "$LAT_PIN" = 1 ] && [ "$c" = "$CLOW" ] && [ "${#pids[@]}" -gt 0 ]; then
        for p in "${pids[@]}"; do
            mask+=("$(taskset -p "$p" | awk '{print $NF}')")
            taskset -a -p -c "$LAT_CPU" "$p" >/dev/null
        done
        pin=(taskset -c "$LAT_CPU")
    fi
    best_run "$name-c$c-r$r" "$SUMMARY + \" [$name]\"" \
        "${pin[@]}" "$LOAD" policy --socket "$sock" --connections "$c" --threads "$CLIENT_THREADS" \
            --duration "$DURATION" --warmup "$WARMUP" --key-pattern "$PATTERN" \
            --key-count "$USERS" --key-domains "$DOMAINS" --rcpts-per-mail "$RCPTS_PER_MAIL" \
            --seed "$r" "${cpu[@]}" --json
    local k=0
    for p in "${pids[@]}"; do
        [ "${#mask[@]}" -gt "$k" ] && taskset -a -p "${mask[$k]}" "$p" >/dev/null
        k=$((k + 1))
    done
    return 0
}

SERVERS="ramdir quota-status ceiling"
for r in $(seq "$ROUNDS"); do
    # Rotate the order every round (and reverse it on even rounds) so slow
    # drift hits all three alike.
    case $((r % 3)) in
        1) order="ramdir quota-status ceiling" ;;
        2) order="ceiling ramdir quota-status" ;;
        0) order="quota-status ceiling ramdir" ;;
    esac
    if [ $((r % 2)) = 0 ]; then order=$(echo "$order" | tr ' ' '\n' | tac | paste -sd' '); fi
    for c in $CONNS; do
        for s in $order; do
            log "round $r/$ROUNDS: $s, $c connection(s)"
            run_one "$s" "$c" "$r"
        done
    done
done
QS_PROCS=$(pgrep -c -f "^dovecot-rdpol-$$/quota-status" || true)

profile_under "$CHIGH connections" "$LOAD" policy --socket "$TMP/policy.sock" --connections "$CHIGH" \
    --threads "$CLIENT_THREADS" --duration "$DURATION" --warmup 0 --key-pattern "$PATTERN" \
    --key-count "$USERS" --key-domains "$DOMAINS" --rcpts-per-mail "$RCPTS_PER_MAIL"
DV_TROUBLE=$(grep -cE ' (Error|Fatal|Panic): ' "$DV/dovecot.log" 2>/dev/null || true)

# --- report -----------------------------------------------------------------

run_medians "$SERVERS" "$CONNS"
declare -A DUNNO REFUSED TOTAL
for s in $SERVERS; do
    for c in $CONNS; do
        f="$TMP/runs/$s-c$c-r*.json"
        DUNNO[$s$c]=$(jq -s 'map(.replies.ok) | add' $f)
        REFUSED[$s$c]=$(jq -s 'map(.replies.notfound + .replies.temp) | add' $f)
        TOTAL[$s$c]=$(jq -s 'map(.requests) | add' $f)
    done
done
CEIL_RATIO=$(calc "${RPS[ramdir$CHIGH]} / ${RPS[ceiling$CHIGH]}")
QS_RATIO=$(calc "${RPS[ramdir$CHIGH]} / ${RPS[quota-status$CHIGH]}")
QS_RATIO_LOW=$(calc "${RPS[ramdir$CLOW]} / ${RPS[quota-status$CLOW]}")
CPU_QS=$(calc "${SCPU[quota-status$CHIGH]} / ${SCPU[ramdir$CHIGH]}")
CPU_CEIL=$(calc "${SCPU[ramdir$CHIGH]} / ${SCPU[ceiling$CHIGH]}")
OTHER_MAX=$(jq -s "map(.other_cpu_s / .seconds) | max" "$TMP"/runs/[rqc]*-r*.json)
pct() { calc "100 * $1 / $2" | xargs printf '%.1f'; }

report() {
    echo "### policy benchmark, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(free -g | awk '/^Mem:/ {print $2}') GB RAM, Linux $(uname -r); $(/usr/sbin/dovecot --version | cut -d' ' -f1 | sed 's/^/Dovecot /')"
    echo "- ramdir revision: $REV"
    echo "- directory: $USERS users over $DOMAINS domains (passwd-file; every 3rd user a limit of 100 MB–5 GB, the others 10 GB); usage of every user set through the quota dict, uniform 0–$((MAX_USAGE / 1000000)) MB"
    echo "- requests: Postfix 3.7's 29 RCPT-time attributes, \`protocol_state=RCPT\`, recipients uniformly random over all users, \`size\` log-uniform 1 KB–16 MB, a new \`instance\` every $RCPTS_PER_MAIL requests of a connection; ${DURATION} s measured after ${WARMUP} s warm-up; $ROUNDS rounds, server order rotated every round, median reported; client: $CLIENT_THREADS thread(s)"
    echo "- quota-status: Dovecot's \`quota-status -p postfix\`, \`client_limit = 1\` (one process per connection: $QS_PROCS processes at the end), userdb \`driver = dict\` on ramdir's auth dict (\`auth_cache_size = 0\`, Dovecot's default), \`quota = dict:…:proxy:idle_msecs=10000:…:quota\` on ramdir's quota dict; its server CPU is Dovecot's processes plus ramdir's (which answers its dict lookups); Dovecot log errors: ${DV_TROUBLE:-0}"
    if [ "$LAT_PIN" = 1 ]; then
        echo "- the $CLOW-connection runs pin ramdir's / the ceiling's threads and the client to CPU $LAT_CPU; quota-status (a chain of processes) and the $CHIGH-connection runs are not pinned"
    fi
    echo "- runs repeated because other processes used more than $NOISE_MAX cores: $DISCARDED"
    echo
    echo "| connections | server | requests/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/request | refused (reject or defer) |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|"
    for c in $CONNS; do
        for s in $SERVERS; do
            echo "| $c | $s | $(fmt "${RPS[$s$c]}") | $(fmt "${P50[$s$c]}" 1) | $(fmt "${P99[$s$c]}" 1) | $(fmt "${P999[$s$c]}" 1) | $(fmt "${SCPU[$s$c]}" 2) | $(pct "${REFUSED[$s$c]}" "${TOTAL[$s$c]}") % |"
        done
    done
    echo
    echo "| goal | target | measured | |"
    echo "|---|---|---:|---|"
    echo "| throughput ramdir/ceiling at $CHIGH connections | ≥ $GOAL_CEIL_RATIO | $(fmt "$CEIL_RATIO" 3) | $(yesno "$CEIL_RATIO >= $GOAL_CEIL_RATIO") |"
    echo "| throughput ramdir/quota-status at $CHIGH connections | ≥ $GOAL_QS_RATIO | $(fmt "$QS_RATIO" 0) | $(yesno "$QS_RATIO >= $GOAL_QS_RATIO") |"
    echo
    echo "Also measured (no goal):"
    echo
    echo "- throughput ramdir/quota-status at $CLOW connection(s): $(fmt "$QS_RATIO_LOW" 0)×"
    echo "- server CPU per request at $CHIGH connections: quota-status needs $(fmt "$CPU_QS" 0)× ramdir's; ramdir needs $(fmt "$CPU_CEIL" 2)× the ceiling's"
    echo "- refused share: ramdir refuses with 452 (its default), quota-status with 552 (as configured); the shares should agree, since both apply Dovecot's rule to the same limits and usage"
    if [ "$(calc "$OTHER_MAX > $NOISE_MAX")" = 1 ]; then
        echo "- **warning: other processes took more than $NOISE_MAX CPU cores during a measured window; these figures are disturbed**"
    fi
    echo "- noise: other processes used at most $(fmt "$OTHER_MAX" 2) CPU cores during any measured window (load average at start: $LOADAVG0)"
    if [ -n "$PROFILE_TXT" ]; then
        echo
        echo "perf profile of ramdir's policy service at $CHIGH connections (self time, top symbols):"
        echo
        echo '```'
        echo "$PROFILE_TXT"
        echo '```'
    fi
}

if [ -n "$OUT" ]; then report | tee "$OUT"; else report; fi
