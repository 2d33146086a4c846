#!/usr/bin/env bash
# ramdir's in-process Postfix map (postfix-ramdir.so) against Postfix's own
# table types and ramdir's socketmap, in one run: `postmap -q -` over the
# same keys for ramdir:, cdb:, lmdb:, hash: (all built from the same data)
# and socketmap:; plus the daemon's cost of publishing a single-entry change
# and the size of the snapshot files. One markdown report; docs/benchmarks.md
# says what it measures and why.
#
# Usage: bench/postfix-map.sh [--out FILE]
#
# Environment (defaults in brackets):
#   USERS [1000000]    users in the generated passwd-file
#   DOMAINS [1000]     domains they are spread over
#   ALIAS_EVERY [10]   every n-th user also gets an alias
#   KEYS [1000000]     lookups per run, drawn uniformly (with replacement) from the users
#   ROUNDS [5]         runs per table type, interleaved; the median is reported
#   CHANGES [200]      single-entry changes published for the cost figures
#   SKIP_BUILD [0]     1: use the existing target/release binaries
#   KEEP_TMP [0]       1: keep the temp dir
#
# Needs root (the plugin must be root-owned for Postfix to load it) and
# installs postfix-cdb and postfix-lmdb if missing. Nothing outside the temp
# dir is configured: postmap runs with a private config dir (-c) whose
# meta_directory registers the plugin. Every process started here is
# stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

USERS=${USERS:-1000000}
DOMAINS=${DOMAINS:-1000}
ALIAS_EVERY=${ALIAS_EVERY:-10}
KEYS=${KEYS:-1000000}
ROUNDS=${ROUNDS:-5}
CHANGES=${CHANGES:-200}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}

# Goals (docs/benchmarks.md).
GOAL_VS_CDB=1.2
GOAL_VS_SOCKETMAP=10
GOAL_CHANGE_CPU_MS=10
GOAL_CHANGE_BYTES=1000000
GOAL_CACHE_MB=150

[ "$(id -u)" -eq 0 ] || die "run as root: Postfix loads the plugin only when it is owned by root"
for p in postfix postfix-cdb postfix-lmdb; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        log "installing $p"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >&2
    fi
done
for t in postmap awk jq bc; do command -v "$t" >/dev/null || die "$t missing"; done

TMP=$(mktemp -d /tmp/ramdir-pmap-bench.XXXXXX)
chmod 755 "$TMP"
RAMDIR_PID=""
cleanup() {
    stop "$RAMDIR_PID"
    if [ "$KEEP_TMP" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

build_release -p postfix-ramdir
if [ "$SKIP_BUILD" != 1 ]; then
    cargo build --release -p ramdir-snapshot --example publish_cost >&2
fi
SO=$ROOT/target/release/libpostfix_ramdir.so
COST=$ROOT/target/release/examples/publish_cost
for f in "$RAMDIR" "$LOAD" "$SO" "$COST"; do [ -e "$f" ] || die "$f missing"; done

log "generating $USERS users over $DOMAINS domains"
"$LOAD" gen-passwd --users "$USERS" --domains "$DOMAINS" --alias-every "$ALIAS_EVERY" \
    --out "$TMP/users.passwd" --aliases "$TMP/aliases" >&2
grep -v '^#' "$TMP/users.passwd" | cut -d: -f1 >"$TMP/logins"
log "drawing $KEYS keys"
# awk's rand() with a fixed seed: the same keys for every table and run.
awk -v n="$KEYS" 'BEGIN { srand(20261206) } { k[NR] = $0 }
    END { for (i = 0; i < n; i++) print k[int(rand() * NR) + 1] }' "$TMP/logins" >"$TMP/keys"
log "$(sort -u "$TMP/keys" | wc -l) distinct keys"

# A private Postfix config dir that registers the plugin next to the
# system's dynamic maps (cdb, lmdb).
CONF=$TMP/conf
mkdir -p "$CONF/dynamicmaps.cf.d"
install -o root -g root -m 0755 "$SO" "$CONF/postfix-ramdir.so"
cp /etc/postfix/dynamicmaps.cf "$CONF/dynamicmaps.cf"
sed "s|\tpostfix-ramdir.so\t|\t$CONF/postfix-ramdir.so\t|" \
    "$ROOT/ffi/postfix/etc/dynamicmaps.cf.d/ramdir" >"$CONF/dynamicmaps.cf.d/ramdir"
chmod 644 "$CONF/dynamicmaps.cf" "$CONF/dynamicmaps.cf.d/ramdir"
printf 'compatibility_level = 3.6\nmeta_directory = %s\n' "$CONF" >"$CONF/main.cf"
touch -d '1 minute ago' "$CONF/main.cf"
postconf -c "$CONF" -m | grep -qx ramdir || die "postconf -m does not list ramdir"

# Postfix's own tables, from the same data: the mailboxes table (login → login).
awk '{ print $1 "\t" $1 }' "$TMP/logins" >"$TMP/mailboxes"
for t in cdb lmdb hash; do
    cp "$TMP/mailboxes" "$TMP/mailboxes.$t"
    log "postmap $t:"
    postmap -c "$CONF" "$t:$TMP/mailboxes.$t"
done

cat >"$TMP/ramdir.toml" <<EOF
[directory]
passwd_files = ["$TMP/users.passwd"]
alias_files = ["$TMP/aliases"]
watch_files = false

[socketmap]
listen = "unix:$TMP/ramdir.sock"
mode = "0666"

[postfix_map]
directory = "$TMP/map"
EOF
log "starting ramdir"
"$RAMDIR" serve --allow-root --config "$TMP/ramdir.toml" 2>"$TMP/ramdir.log" &
RAMDIR_PID=$!
"$LOAD" wait --socket "$TMP/ramdir.sock" --timeout 300 >/dev/null \
    || { cat "$TMP/ramdir.log" >&2; die "ramdir did not answer"; }
for _ in $(seq 600); do grep -q "postfix map published" "$TMP/ramdir.log" && break; sleep 0.1; done
grep -q "postfix map published" "$TMP/ramdir.log" || die "no snapshot published"
MAP_BYTES=$(du -b -c "$TMP"/map/* | tail -1 | cut -f1)

declare -A MAP=(
    [ramdir]="ramdir:$TMP/map/mailboxes"
    [cdb]="cdb:$TMP/mailboxes.cdb"
    [lmdb]="lmdb:$TMP/mailboxes.lmdb"
    [hash]="hash:$TMP/mailboxes.hash"
    [socketmap]="socketmap:unix:$TMP/ramdir.sock:mailboxes"
)
TYPES="ramdir cdb lmdb hash socketmap"
TIMEFORMAT='%3R %3U %3S'
# One unmeasured pass per type: every key must be found, and the page
# cache is warm for all of them alike.
for t in $TYPES; do
    n=$(postmap -c "$CONF" -q - "${MAP[$t]}" <"$TMP/keys" | wc -l)
    [ "$n" = "$KEYS" ] || die "$t: $n of $KEYS keys found"
    log "$t: all $KEYS keys found"
done
# Each run is timed in wall clock and in postmap's own CPU time (user +
# system): on a shared machine the CPU time is the steadier figure, and for a
# single-threaded postmap that is not waiting on anything they agree when the
# machine is idle. The socketmap run also waits on ramdir (another process),
# so for it only the wall clock means anything; its CPU rate is not used.
for r in $(seq "$ROUNDS"); do
    for t in $TYPES; do
        # bash's own `time`: millisecond resolution (GNU time has 10 ms).
        { time postmap -c "$CONF" -q - "${MAP[$t]}" <"$TMP/keys" >/dev/null 2>"$TMP/postmap.err"; } 2>"$TMP/time"
        read -r wall user sys <"$TMP/time"
        rate=$(calc "$KEYS / $wall")
        cpu_rate=$(calc "$KEYS / ($user + $sys)")
        echo "{\"type\":\"$t\",\"round\":$r,\"rate\":$rate,\"cpu_rate\":$cpu_rate}" >"$TMP/run-$t-$r.json"
        log "round $r: $t $(fmt "$rate") lookups/s wall, $(fmt "$cpu_rate") per CPU-second"
    done
done
declare -A RATE CPU_RATE
for t in $TYPES; do
    RATE[$t]=$(median "$TMP/run-$t-*.json" .rate)
    CPU_RATE[$t]=$(median "$TMP/run-$t-*.json" .cpu_rate)
done
stop "$RAMDIR_PID"; RAMDIR_PID=""

log "publishing cost: $CHANGES single-entry changes at $USERS users"
"$COST" "$TMP/cost" "$USERS" "$DOMAINS" "$CHANGES" >"$TMP/cost.txt"
val() { grep "^$1=" "$TMP/cost.txt" | cut -d= -f2; }

VS_CDB=$(calc "${CPU_RATE[ramdir]} / ${CPU_RATE[cdb]}")
VS_CDB_WALL=$(calc "${RATE[ramdir]} / ${RATE[cdb]}")
VS_SM=$(calc "${RATE[ramdir]} / ${RATE[socketmap]}")
CACHE_MB=$(calc "$MAP_BYTES / 1000000")
report() {
    echo "### postfix-ramdir.so: \`postmap -q -\` over $KEYS keys ($(date -u +%Y-%m-%d), $(nproc) cores)"
    echo
    echo "- directory: $USERS users over $DOMAINS domains, $(wc -l <"$TMP/aliases") aliases; keys drawn uniformly with replacement from the users (all found); $ROUNDS rounds interleaved, median reported"
    echo "- Postfix $(postconf -d -h mail_version), tables cdb/lmdb/hash built by postmap from the same login list; ramdir: and socketmap: served by one ramdir"
    echo
    echo "| table | lookups/s (wall) | ramdir: × faster (wall) | lookups per postmap CPU-second | ramdir: × faster (CPU) |"
    echo "|---|---|---|---|---|"
    for t in $TYPES; do
        if [ "$t" = socketmap ]; then cpu="(waits on ramdir)"; x="–"; else
            cpu=$(fmt "${CPU_RATE[$t]}"); x=$(fmt "$(calc "${CPU_RATE[ramdir]} / ${CPU_RATE[$t]}")" 2); fi
        echo "| \`$t:\` | $(fmt "${RATE[$t]}") | $(fmt "$(calc "${RATE[ramdir]} / ${RATE[$t]}")" 2) | $cpu | $x |"
    done
    echo
    echo "| goal | target | measured | |"
    echo "|---|---|---|---|"
    echo "| ramdir: vs cdb: (CPU) | ≥ $GOAL_VS_CDB × | $(fmt "$VS_CDB" 2) × (wall: $(fmt "$VS_CDB_WALL" 2) ×) | $(yesno "$VS_CDB >= $GOAL_VS_CDB") |"
    echo "| ramdir: vs socketmap: | ≥ $GOAL_VS_SOCKETMAP × | $(fmt "$VS_SM" 1) × | $(yesno "$VS_SM >= $GOAL_VS_SOCKETMAP") |"
    echo "| publish one change at $USERS users: daemon CPU | ≤ $GOAL_CHANGE_CPU_MS ms | median $(val change_cpu_ms_median) ms, max $(val change_cpu_ms_max) ms | $(yesno "$(val change_cpu_ms_max) <= $GOAL_CHANGE_CPU_MS") |"
    echo "| publish one change: bytes written | ≤ 1 MB | median $(val change_bytes_median), max $(val change_bytes_max) (a delta never exceeds $(val delta_max_bytes)) | $(yesno "$(val change_bytes_max) <= $GOAL_CHANGE_BYTES") |"
    echo "| snapshot files (page cache) at $USERS users | ≤ $GOAL_CACHE_MB MB | $(fmt "$CACHE_MB" 1) MB | $(yesno "$CACHE_MB <= $GOAL_CACHE_MB") |"
    echo
    echo "- a new base (written when the changes since the last base exceed $(val delta_max_entries) entries or $(val delta_max_bytes) bytes, or after a reload): $(val base_bytes) bytes, $(val base_cpu_ms) ms CPU; $(val change_bases) of $CHANGES changes needed one"
}
if [ -n "$OUT" ]; then report | tee "$OUT"; else report; fi
