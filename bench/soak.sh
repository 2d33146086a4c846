#!/usr/bin/env bash
# ramdir soak (issue 13): N minutes of 500 concurrent connections spread
# over the socketmap, policy, dict (userdb/passdb lookups, iterations,
# quota transactions) and milter listeners of one ramdir, while its alias
# file is rewritten every 10 s and an LDAP entry changes every second on a
# real slapd. Every answer is checked against the directory as it was
# around the request (`ramdir-load soak`, bench/src/soak.rs, says how).
# Reports protocol errors, wrong and temporary answers (all must be 0),
# ramdir's RSS, malloc heap (resident, and in use per its stats) and open
# fds each minute with their slopes over the run and over its last 20
# minutes, and the p99 latency of each protocol per minute. See
# docs/reliability.md ("Soak").
#
# Usage: bench/soak.sh [--out FILE.md]   (as root: slapd runs from a temp dir;
#                                        the JSON report goes beside FILE.md)
#
# Environment (defaults in brackets):
#   MINUTES [30]         length of the load
#   CONNECTIONS [500]    concurrent connections over all listeners
#   USERS [2000]         LDAP entries
#   SAMPLE_SECS [60]     sampling window (RSS, fds, p99)
#   SKIP_BUILD [0]       1: use the existing target/release binaries
#
# slapd and ramdir are started by `ramdir-load soak` with the integration
# harness and stopped when it ends, whatever the outcome.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
parse_args "$@"

MINUTES=${MINUTES:-30}
CONNECTIONS=${CONNECTIONS:-500}
USERS=${USERS:-2000}
SAMPLE_SECS=${SAMPLE_SECS:-60}
SKIP_BUILD=${SKIP_BUILD:-0}

[ "$(id -u)" = 0 ] || die "run as root (slapd and ramdir run from a temp dir)"
command -v jq >/dev/null || die "jq is needed (apt-get install jq)"

LOADAVG0=$(cut -d' ' -f1-3 /proc/loadavg)
build_release
JSON=$(mktemp /tmp/ramdir-soak.XXXXXX.json)
trap 'rm -f "$JSON"' EXIT

log "soak: $MINUTES min, $CONNECTIONS connections, $USERS LDAP users (load average at start: $LOADAVG0)"
RC=0
RAMDIR_BIN=$RAMDIR "$LOAD" soak --secs $((MINUTES * 60)) --connections "$CONNECTIONS" \
    --users "$USERS" --sample-secs "$SAMPLE_SECS" --json "$JSON" >"$JSON.txt" || RC=$?
cat "$JSON.txt" >&2

report() {
    echo "### Soak, $(date -u +%Y-%m-%d), ramdir $REV"
    echo
    echo "- $(jq -r '"\(.seconds / 60) min, \(.connections) connections, \(.users) LDAP users, \(.file_generations) alias-file generations, \(.ldap_changes) LDAP changes; ramdir alive at the end: \(.alive)"' "$JSON")"
    echo "- machine: $(nproc) cores, load average at start $LOADAVG0, at end $(cut -d' ' -f1-3 /proc/loadavg) (other work was running)"
    echo
    echo "| protocol | connections | requests | protocol errors | wrong | temporary | p99 per minute (ms), first → last | worst minute p99 (ms) |"
    echo "|---|---|---|---|---|---|---|---|"
    jq -r '.protocols | to_entries[] | "| \(.key) | \(.value.connections) | \(.value.requests) | \(.value.protocol_errors) | \(.value.wrong) | \(.value.temporary) | \(.value.p99_us | map(. / 1000 | floor) | join(" ")) | \(.value.p99_us | max / 1000 | floor) |"' "$JSON"
    echo
    echo "- ramdir RSS: $(jq -r '"\(.samples[1].rss_kib) KiB after the first minute → \(.samples[-1].rss_kib) KiB at the end; slope \(.rss_slope_kib_per_min) KiB/min over the run"' "$JSON")"
    echo "- from $(jq -r '.tail_from_secs / 60' "$JSON") min to the end: $(jq -r '"slopes RSS \(.tail_rss_slope_kib_per_min) KiB/min, malloc heap RSS \(.tail_heap_slope_kib_per_min) KiB/min, heap in use \(.tail_in_use_slope_kib_per_min) KiB/min, open fds \(.tail_fd_slope_per_min)/min"' "$JSON")"
    echo "- ramdir open fds: $(jq -r '"\(.samples[1].fds) → \(.samples[-1].fds); slope \(.fd_slope_per_min)/min; \(.after.fds) after every connection closed"' "$JSON")"
    echo
    echo "| minute | RSS (KiB) | malloc heap RSS (KiB) | heap in use (KiB) | open fds |"
    echo "|---|---|---|---|---|"
    jq -r '.samples[] | "| \(.secs / 60 | round) | \(.rss_kib) | \(.heap_kib) | \(.in_use_kib) | \(.fds) |"' "$JSON"
    echo "- exit status of \`ramdir-load soak\`: $RC (0: no protocol error, wrong or temporary answer)"
}
if [ -n "$OUT" ]; then
    # The JSON beside the report: the per-minute figures the report sums up.
    cp "$JSON" "${OUT%.md}.json"
    report >"$OUT"
    log "report: $OUT (JSON: ${OUT%.md}.json)"
else
    report
fi
rm -f "$JSON.txt"
exit "$RC"
