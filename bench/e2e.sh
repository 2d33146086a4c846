#!/usr/bin/env bash
# ramdir end-to-end mail benchmark (issue 14): real Postfix → LMTP → real
# Dovecot (the host's 2.3), mail injected with Postfix's own smtp-source,
# the same run for each directory setup (`ramdir-load e2e`,
# bench/src/e2e.rs, describes them):
#
#   a      ramdir (synced from slapd): Postfix socketmap, Dovecot dict
#          passdb/userdb and quota (docs/dovecot.md)
#   a-mq   as a, Dovecot's own maildir quota (as c and d)
#   b      as a, Postfix tables in-process (postfix-ramdir.so)
#   b-mod  ramdir in-process on both sides: as b for Postfix, Dovecot's
#          auth module (libauthdb_ramdir.so), Dovecot's own maildir quota
#   c      hash: tables (postmap) + Dovecot passwd-file (c-cdb: cdb:)
#   d      ldap: tables + Dovecot ldap passdb/userdb against slapd
#
# Reports messages/s (and the ratios to c and d), the CPU seconds per
# 1,000 messages of each process name (smtpd, cleanup, trivial-rewrite,
# qmgr, Postfix's lmtp, Dovecot's lmtp and auth, slapd, ramdir, …) and
# slapd's searches per message. See docs/benchmarks.md ("End to end").
#
# Usage: bench/e2e.sh [--out FILE]      (as root: Postfix, Dovecot, slapd)
#
# Environment (defaults in brackets):
#   USERS [100000]       users in every setup's directory
#   MESSAGES [10000]     messages per setup and round (at most USERS)
#   SESSIONS [10]        parallel SMTP sessions (smtp-source -s)
#   SIZE [2000]          message body bytes (smtp-source -l)
#   SETUPS [a a-mq b c d]  which setups, in this order in round 1
#   ROUNDS [1]           rounds; the setups' order turns each round, the
#                        median of each setup is reported
#   PREFILL [0]          1: deliver once to every measured recipient first
#                        (unmeasured): the measured run then goes to mailboxes
#                        that exist, as on a host in service
#   SKIP_BUILD [0]       1: use the existing target/release binaries
#
# Everything runs from temp dirs on loopback and Unix sockets and is
# stopped when each setup ends (the integration harness's guards).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
parse_args "$@"

USERS=${USERS:-100000}
MESSAGES=${MESSAGES:-10000}
SESSIONS=${SESSIONS:-10}
SIZE=${SIZE:-2000}
SETUPS=${SETUPS:-a a-mq b c d}
ROUNDS=${ROUNDS:-1}
PREFILL=${PREFILL:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
EXTRA=()
[ "$PREFILL" = 1 ] && EXTRA+=(--prefill)

[ "$(id -u)" = 0 ] || die "run as root (Postfix, Dovecot and slapd run from temp dirs)"
for t in jq smtp-source postmap slapd dovecot; do
    command -v "$t" >/dev/null || [ -x "/usr/sbin/$t" ] || die "$t is missing: run scripts/install-test-deps.sh"
done
for p in postfix-cdb postfix-ldap dovecot-ldap; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || die "$p is missing: run scripts/install-test-deps.sh"
done

LOADAVG0=$(cut -d' ' -f1-3 /proc/loadavg)
build_release -p postfix-ramdir -p dovecot-ramdir
TMP=$(mktemp -d /tmp/ramdir-e2e.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

read -r -a ORDER <<<"$SETUPS"
for r in $(seq "$ROUNDS"); do
    setups=()
    for i in "${!ORDER[@]}"; do setups+=("${ORDER[$(( (i + r - 1) % ${#ORDER[@]} ))]}"); done
    log "round $r/$ROUNDS: ${setups[*]}"
    RAMDIR_BIN=$RAMDIR "$LOAD" e2e --setups "$(IFS=,; echo "${setups[*]}")" --users "$USERS" \
        --messages "$MESSAGES" --sessions "$SESSIONS" --size "$SIZE" --json "$TMP/r$r.json" \
        "${EXTRA[@]}" >"$TMP/r$r.md"
    cat "$TMP/r$r.md" >&2
done

report() {
    echo "### End to end, $(date -u +%Y-%m-%d), ramdir $REV"
    echo
    echo "- $USERS users, $MESSAGES messages of $SIZE bytes per setup and round, $SESSIONS SMTP sessions; $ROUNDS round(s), median per setup"
    echo "- machine: $(nproc) cores, load average at start $LOADAVG0, at end $(cut -d' ' -f1-3 /proc/loadavg) (the stack's own processes count in it: 10 SMTP sessions, their deliveries and fsyncs)"
    echo
    # Medians over the rounds of each setup.
    jq -s -r --arg setups "$SETUPS" '
      add | group_by(.setup) | map({setup: .[0].setup,
        rate: (map(.rate) | sort | .[(length - 1) / 2 | floor]),
        msgs: .[0].messages, not_sent: (map(.not_sent) | add),
        searches: (map(.slapd_searches) | if .[0] == null then null else (sort | .[(length - 1) / 2 | floor]) end),
        cpu: (map(.cpu_s) | .[(length - 1) / 2 | floor])}) as $m
      | ($m | map({(.setup): .}) | add) as $by
      | ($setups | split(" ")) as $order
      | "| setup | messages/s | × (c) | × (d) | slapd searches per message | not sent |",
        "|---|---|---|---|---|---|",
        ($order[] | $by[.] | select(. != null) |
          "| \(.setup) | \(.rate | floor) | \(if $by.c then (.rate / $by.c.rate * 100 | floor) / 100 else "—" end) | \(if $by.d then (.rate / $by.d.rate * 100 | floor) / 100 else "—" end) | \(if .searches == null then "no slapd" else (.searches / .msgs * 100 | floor) / 100 end) | \(.not_sent) |"),
        "",
        "CPU seconds per 1,000 messages (median round):",
        "",
        (["postfix/smtpd","postfix/cleanup","postfix/trivial-rewrite","postfix/qmgr","postfix/lmtp","dovecot/lmtp","dovecot/auth","slapd","ramdir"]) as $cols
        | ("| setup | " + ($cols | join(" | ")) + " | all (without the load) |"),
          ("|---|" + ($cols | map("---|") | join(""))  + "---|"),
          ($order[] | $by[.] | select(. != null) | . as $s |
            "| \(.setup) | " + ($cols | map(($s.cpu[.] // null) | if . == null then "—" else (. * 1000 / $s.msgs * 100 | floor) / 100 | tostring end) | join(" | ")) + " | \(([$s.cpu | to_entries[] | select(.key | startswith("smtp-source") | not) | .value] | add) * 1000 / $s.msgs * 100 | floor / 100) |")
    ' "$TMP"/r*.json
    echo
    echo "Command: \`USERS=$USERS MESSAGES=$MESSAGES SESSIONS=$SESSIONS SIZE=$SIZE SETUPS=\"$SETUPS\" ROUNDS=$ROUNDS PREFILL=$PREFILL bench/e2e.sh\`"
}
if [ -n "$OUT" ]; then report >"$OUT"; log "report: $OUT"; else report; fi
