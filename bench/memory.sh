#!/bin/bash
# Memory and load time of a large passwd-file directory (issue 14, item 3).
#
# Generates USERS users shaped like a real passwd-file (`ramdir-load
# gen-passwd --real`: {SHA512-CRYPT} hashes of 106 characters as `doveadm pw
# -s SHA512-CRYPT` makes them, a per-user home the template derives, and
# `userdb_quota_rule=*:storage=10G`, the default, on every user), starts
# `ramdir serve` on it with `home_template = "/var/vmail/%d/%n"`, and
# reports for each start: the load time (exec until the socketmap answers),
# ramdir's own `elapsed_ms`, the CPU time ramdir used until it answered
# (user+system; less disturbed than the wall clock by other processes on a
# busy machine), VmRSS/VmHWM 1 s after the load, and the machine's load
# average, then the medians.
#
#   bench/memory.sh                       # 1,000,000 users, 3 starts
#   USERS=10000000 LOAD_RUNS=1 bench/memory.sh   # 10 million (about 1.6 GB of file)
#   BASELINE=/tmp/old-ramdir bench/memory.sh     # A/B: old and new binaries
#                                                # alternating (ABBA...), same file
#
# Settings (environment): USERS (1000000), DOMAINS (1000), LOAD_RUNS (3
# starts of each binary), TMPBASE (/var/tmp: the file is large), RAMDIR /
# LOAD (binaries; default target/release), BASELINE (a second ramdir binary
# to compare, optional), PASSWD (an existing file to load instead of
# generating one; it is not removed), SKIP_BUILD=1. Everything else lives
# in a temp dir removed on exit; the ramdir started here is stopped on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
# A ramdir holding 10M users takes longer than 5 s to stop.
STOP_TENTHS=300

USERS=${USERS:-1000000}
DOMAINS=${DOMAINS:-1000}
LOAD_RUNS=${LOAD_RUNS:-3}
TMPBASE=${TMPBASE:-/var/tmp}
RAMDIR=${RAMDIR:-$ROOT/target/release/ramdir}
LOAD=${LOAD:-$ROOT/target/release/ramdir-load}
BASELINE=${BASELINE:-}

if [ -z "${SKIP_BUILD:-}" ]; then
    log "building release binaries"
    (cd "$ROOT" && CARGO_INCREMENTAL=0 cargo build --release -p ramdir -p ramdir-bench >&2)
fi
TMP=$(mktemp -d "$TMPBASE/ramdir-memory.XXXXXX")
RAMDIR_PID=
cleanup() { stop "$RAMDIR_PID"; rm -rf "$TMP"; }
trap cleanup EXIT

if [ -n "${PASSWD:-}" ]; then
    FILE=$PASSWD
    USERS=$(wc -l <"$FILE")
else
    FILE=$TMP/users.passwd
    log "generating $USERS users over $DOMAINS domains (--real)"
    "$LOAD" gen-passwd --real --users "$USERS" --domains "$DOMAINS" --out "$FILE" >&2
    sync
fi
cat >"$TMP/ramdir.toml" <<CONF
[directory]
passwd_files = ["$FILE"]
home_template = "/var/vmail/%d/%n"

[socketmap]
listen = "unix:$TMP/ramdir.sock"
mode = "0666"
CONF

TCK=$(getconf CLK_TCK)
# One start of binary $2 (label $1): appends a row to $TMP/rows.
start() { # label binary
    local t0 t ms cpu la rss hwm
    la=$(cut -d' ' -f1 /proc/loadavg)
    t0=$(date +%s%N)
    "$2" serve --allow-root --config "$TMP/ramdir.toml" 2>"$TMP/ramdir.log" &
    RAMDIR_PID=$!
    t=$("$LOAD" wait --socket "$TMP/ramdir.sock" --timeout 900 --since-unix-ns "$t0") \
        || { cat "$TMP/ramdir.log" >&2; die "ramdir did not answer"; }
    cpu=$(calc "$(awk '{print $14 + $15}' "/proc/$RAMDIR_PID/stat") / $TCK")
    ms=$(grep -o 'elapsed_ms=[0-9]*' "$TMP/ramdir.log" | head -1 | cut -d= -f2 || true)
    sleep 1
    read -r rss hwm < <("$LOAD" rss --pid "$RAMDIR_PID" --json | jq -r '"\(.vm_rss_kib) \(.vm_hwm_kib)"')
    "$LOAD" wait --socket "$TMP/ramdir.sock" --timeout 5 >/dev/null || die "ramdir stopped answering"
    la="$la→$(cut -d' ' -f1 /proc/loadavg)"
    log "$1: answers after $t s (its log: loaded in ${ms:-?} ms; CPU $cpu s; RSS $((rss / 1000)) MiB-ish; load average $la)"
    echo "$1 $t $cpu ${ms:-0} $(calc "$rss * 1024 / 1000000" | xargs printf %.0f) $(calc "$hwm * 1024 / 1000000" | xargs printf %.0f) $la" >>"$TMP/rows"
    stop "$RAMDIR_PID"
    wait "$RAMDIR_PID" 2>/dev/null || true
    RAMDIR_PID=
}

: >"$TMP/rows"
for i in $(seq "$LOAD_RUNS"); do
    if [ -n "$BASELINE" ]; then
        # ABBA: neither binary always runs first.
        if [ $((i % 2)) = 1 ]; then start new "$RAMDIR"; start baseline "$BASELINE"
        else start baseline "$BASELINE"; start new "$RAMDIR"; fi
    else
        start new "$RAMDIR"
    fi
done

median_of() { # label column
    awk -v l="$1" -v c="$2" '$1 == l { print $c }' "$TMP/rows" | sort -g \
        | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}
FILE_MB=$(calc "$(stat -c %s "$FILE") / 1000000" | xargs printf %.0f)
echo "users: $USERS; file: $FILE_MB MB; CPUs: $(nproc); $(date -u +%FT%TZ)"
echo
echo "| binary | load s (wall) | ramdir CPU s (user+sys) | elapsed_ms (its log) | VmRSS MB | VmHWM MB | load average (start→end) |"
echo "|---|---|---|---|---|---|---|"
awk '{ printf "| %s | %.2f | %.2f | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7 }' "$TMP/rows"
for l in new baseline; do
    grep -q "^$l " "$TMP/rows" || continue
    printf '| **%s, median** | **%.2f** | **%.2f** | %s | **%s** | %s | |\n' "$l" \
        "$(median_of "$l" 2)" "$(median_of "$l" 3)" "$(median_of "$l" 4)" \
        "$(median_of "$l" 5)" "$(median_of "$l" 6)"
done
