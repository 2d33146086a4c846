#!/bin/bash
# Memory and load time of a large passwd-file directory (issue 14, item 3).
#
# Generates USERS users shaped like a real passwd-file (`ramdir-load
# gen-passwd --real`: {SHA512-CRYPT} hashes of 106 characters as `doveadm pw
# -s SHA512-CRYPT` makes them, a per-user home the template derives, and
# `userdb_quota_rule=*:storage=10G`, the default, on every user), starts
# `ramdir serve` on it with `home_template = "/var/vmail/%d/%n"`, and
# reports the load time (exec until the socketmap answers; median of
# LOAD_RUNS starts), ramdir's own `elapsed_ms`, and VmRSS/VmHWM 1 s after
# the load.
#
#   bench/memory.sh                       # 1,000,000 users
#   USERS=10000000 bench/memory.sh        # 10 million (about 1.6 GB of file)
#
# Settings (environment): USERS (1000000), DOMAINS (1000), LOAD_RUNS (3),
# TMPBASE (/var/tmp: the file is large), RAMDIR / LOAD (binaries; default
# target/release), SKIP_BUILD=1. Everything lives in a temp dir removed on
# exit; the ramdir started here is stopped on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"

USERS=${USERS:-1000000}
DOMAINS=${DOMAINS:-1000}
LOAD_RUNS=${LOAD_RUNS:-3}
TMPBASE=${TMPBASE:-/var/tmp}
RAMDIR=${RAMDIR:-$ROOT/target/release/ramdir}
LOAD=${LOAD:-$ROOT/target/release/ramdir-load}

if [ -z "${SKIP_BUILD:-}" ]; then
    log "building release binaries"
    (cd "$ROOT" && CARGO_INCREMENTAL=0 cargo build --release -p ramdir --bins >&2)
fi
TMP=$(mktemp -d "$TMPBASE/ramdir-memory.XXXXXX")
RAMDIR_PID=
cleanup() { stop "$RAMDIR_PID"; rm -rf "$TMP"; }
trap cleanup EXIT

log "generating $USERS users over $DOMAINS domains (--real)"
"$LOAD" gen-passwd --real --users "$USERS" --domains "$DOMAINS" --out "$TMP/users.passwd" >&2
sync
cat >"$TMP/ramdir.toml" <<CONF
[directory]
passwd_files = ["$TMP/users.passwd"]
home_template = "/var/vmail/%d/%n"

[socketmap]
listen = "unix:$TMP/ramdir.sock"
mode = "0666"
CONF

TIMES=()
for i in $(seq "$LOAD_RUNS"); do
    T0=$(date +%s%N)
    "$RAMDIR" serve --allow-root --config "$TMP/ramdir.toml" 2>"$TMP/ramdir.log" &
    RAMDIR_PID=$!
    t=$("$LOAD" wait --socket "$TMP/ramdir.sock" --timeout 600 --since-unix-ns "$T0") \
        || { cat "$TMP/ramdir.log" >&2; die "ramdir did not answer"; }
    ms=$(grep -o 'elapsed_ms=[0-9]*' "$TMP/ramdir.log" | head -1 | cut -d= -f2 || true)
    log "start $i: answers after $t s (its log: loaded in ${ms:-?} ms)"
    TIMES+=("$t")
    if [ "$i" -lt "$LOAD_RUNS" ]; then
        stop "$RAMDIR_PID"
        wait "$RAMDIR_PID" 2>/dev/null || true
    fi
done
LOAD_S=$(printf '%s\n' "${TIMES[@]}" | sort -g | sed -n "$(( (LOAD_RUNS + 1) / 2 ))p")
sleep 1
read -r RSS HWM < <("$LOAD" rss --pid "$RAMDIR_PID" --json | jq -r '"\(.vm_rss_kib) \(.vm_hwm_kib)"')
probe=$("$LOAD" wait --socket "$TMP/ramdir.sock" --timeout 5 >/dev/null && echo ok)
cat <<REPORT
| users | file MB | load s (median of $LOAD_RUNS) | ramdir elapsed_ms (last) | VmRSS MB | VmHWM MB |
|---|---|---|---|---|---|
| $USERS | $(calc "$(stat -c %s "$TMP/users.passwd") / 1000000" | xargs printf %.0f) | $LOAD_S | ${ms:-?} | $(calc "$RSS * 1024 / 1000000" | xargs printf %.0f) | $(calc "$HWM * 1024 / 1000000" | xargs printf %.0f) |
REPORT
[ "$probe" = ok ] || die "ramdir stopped answering"
