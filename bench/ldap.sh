#!/usr/bin/env bash
# ramdir LDAP benchmark, against OpenLDAP's own tools and server in the same
# run. One run, one markdown report. See docs/benchmarks.md ("LDAP").
#
# (a) Initial load: ramdir's full load of ENTRIES entries (its log line
#     `LDAP full load done … elapsed_ms`) against `ldapsearch` reading the
#     same entries, attributes, filter and page size over the same
#     transport, alternating; and ramdir's memory after the load.
# (b) Change propagation: CHANGES changes made with the ldap-utils tools,
#     alternating `ldapadd` of a new entry (watched on the socketmap:
#     `mailboxes <new address>` turns OK) and `ldapmodify` of an entry's
#     mailQuotaBytes (watched on the dict: the userdb answer shows the new
#     `storage=<n>B`), each timed by `ramdir-load watch` (one persistent
#     connection, a probe every 100 µs) from just before the tool starts
#     and from its exit.
# (c) Lookups: socketmap lookups/s from ramdir (loaded from LDAP) against
#     equality searches/s `(mail=<address>)` on slapd (`ramdir-load
#     ldap-search`, ldap3, bound as the service account), both at CONNS
#     connections with one request in flight each, alternating.
#
# slapd is set up as the integration harness does (integration/src/slapd.rs:
# mdb, syncprov, eq indexes, `limits` for the service account), with
# maxsize 4 GB (more for over 1.5M entries: about 1.1 kB each, twice
# over), loaded with `slapadd -q -w`.
#
# Usage: bench/ldap.sh [--out FILE]
#
# Environment (defaults in brackets):
#   ENTRIES [1000000]    LDAP entries (users, each with one alias)
#   DOMAINS [1000]       mail domains they are spread over
#   TRANSPORT [ldapi]    ldapi (Unix socket) or ldap (ldap://127.0.0.1:port) for ramdir,
#                        ldapsearch and ldap-search alike
#   LOAD_ROUNDS [3]      ramdir full loads and ldapsearch runs (alternating); medians reported
#   CHANGES [200]        changes for (b), half adds, half quota modifies
#   CONNS [16]           connections for (c)
#   DURATION [10]        measured seconds per (c) run
#   WARMUP [2]           unmeasured seconds of load before each (c) run
#   ROUNDS [3]           (c) runs per server; the median is reported
#   CLIENT_THREADS [nproc]  load client OS threads
#   NOISE_MAX [0.10]     a (c) run during which other processes used more CPU cores than
#   RETRIES [2]          this is repeated, at most RETRIES times (the quietest is kept)
#   PROFILE [0]          1: `perf record` ramdir's last full load and add the top symbols
#   SKIP_BUILD [0]       1: use the existing target/release binaries
#   KEEP_TMP [0]         1: keep the temp dir
#
# Needs root, slapd 2.5 and ldap-utils (scripts/install-test-deps.sh), jq,
# bc. Unix sockets and loopback only; everything started here is stopped
# on exit and the temp dir (several GB for 1M entries) is removed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
# slapd and a ramdir holding 1M entries take longer than 5 s to stop.
STOP_TENTHS=300
parse_args "$@"

ENTRIES=${ENTRIES:-1000000}
DOMAINS=${DOMAINS:-1000}
TRANSPORT=${TRANSPORT:-ldapi}
LOAD_ROUNDS=${LOAD_ROUNDS:-3}
CHANGES=${CHANGES:-200}
CONNS=${CONNS:-16}
bench_env

SUFFIX="dc=example,dc=org"
PEOPLE="ou=people,$SUFFIX"
ROOT_DN="cn=admin,$SUFFIX"
ROOT_PW="admin-secret"
SVC_DN="cn=mailsvc,$SUFFIX"
SVC_PW="svc-bench-secret"
PATTERN='user%07d@domain%d.test'
# What ramdir's default mapping reads (ldap/src/mapping.rs `attributes`).
ATTRS="mail mailLocalAddress userPassword mailQuotaBytes mailEnabled uidNumber gidNumber homeDirectory entryUUID"
PAGE=1000

GOAL_LOAD_RATIO=1.3    # ramdir full load / ldapsearch, at most
GOAL_P99_MS=1000       # change propagation p99 (from the tool's exit), at most

now_ns() { date +%s%N; }
# CPU seconds: the machine's busy time, and one process's user+system.
busy_s() { awk '/^cpu / { print ($2 + $3 + $4 + $7 + $8 + $9) / 100 }' /proc/stat; }
pid_cpu_s() { awk '{ print ($14 + $15) / 100 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

[ "$(id -u)" = 0 ] || die "run as root (slapd is started from a temp dir)"
for t in /usr/sbin/slapd /usr/sbin/slapadd /usr/sbin/slappasswd /usr/bin/ldapsearch /usr/bin/ldapmodify \
    /usr/bin/ldapadd /usr/lib/ldap/back_mdb.so /usr/lib/ldap/syncprov.so /usr/bin/time; do
    [ -e "$t" ] || die "$t is missing (scripts/install-test-deps.sh installs slapd and ldap-utils)"
done
command -v jq >/dev/null && command -v bc >/dev/null || die "jq and bc are needed"
if [ "$PROFILE" = 1 ] && ! command -v perf >/dev/null; then log "perf not installed; no profile"; PROFILE=0; fi

# Short: the ldapi socket path must fit in sun_path (107 bytes).
TMP=$(mktemp -d /tmp/rdldap.XXXXXX)
chmod 755 "$TMP"
LD=$TMP/ld
SLAPD_PID=""
RAMDIR_PID=""
PERF_PID=""
PROFILE_TXT=""

cleanup() {
    local rc=$?
    stop "$PERF_PID"
    stop "$RAMDIR_PID"
    stop "$SLAPD_PID"
    wait 2>/dev/null || true
    if [ "$KEEP_TMP" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

LOADAVG0=$(cut -d' ' -f1-3 /proc/loadavg)
build_release

# --- slapd ------------------------------------------------------------------
mkdir -p "$LD/db"
cp "$ROOT/docs/ldap/mailaccount.schema" "$LD/mailaccount.schema"
PORT=$(( 20000 + RANDOM % 30000 ))
while ss -ltn "sport = :$PORT" 2>/dev/null | grep -q LISTEN; do PORT=$(( 20000 + RANDOM % 30000 )); done
LDAPI="ldapi://${LD//\//%2F}%2Fldapi"
if [ "$TRANSPORT" = ldapi ]; then URL=$LDAPI; else URL="ldap://127.0.0.1:$PORT"; fi
# mdb's map size: the 1M-entry database is 1,054 MB; room for twice that
# per entry, and never less than 4 GB.
MDB_MAXSIZE=$(( ENTRIES * 2200 > 4294967296 ? ENTRIES * 2200 : 4294967296 ))
cat >"$LD/slapd.conf" <<EOF
# As integration/src/slapd.rs, with a larger maxsize and no logging.
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/misc.schema
include $LD/mailaccount.schema
pidfile $LD/slapd.pid
argsfile $LD/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload syncprov
loglevel 0
sizelimit 1000
authz-regexp "gidNumber=0.uidNumber=0,cn=peercred,cn=external,cn=auth" "$ROOT_DN"

database mdb
suffix "$SUFFIX"
rootdn "$ROOT_DN"
rootpw $ROOT_PW
directory $LD/db
maxsize $MDB_MAXSIZE
index objectClass eq
index uid,mail,mailLocalAddress eq
index entryCSN,entryUUID eq
limits dn.exact="$SVC_DN" size=unlimited time=unlimited
access to attrs=userPassword
	by anonymous auth
	by dn.exact="$SVC_DN" read
	by * none
access to * by * read
overlay syncprov
syncprov-checkpoint 100 10
syncprov-sessionlog 10000
EOF
cat >"$TMP/base.ldif" <<EOF
dn: $SUFFIX
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: $PEOPLE
objectClass: organizationalUnit
ou: people

dn: $SVC_DN
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: mailsvc
description: ramdir's bind identity
userPassword: $(/usr/sbin/slappasswd -h '{SSHA}' -s "$SVC_PW")

EOF
printf '%s' "$SVC_PW" >"$TMP/svc.secret"   # no newline: ldapsearch -y sends the whole file
chmod 600 "$TMP/svc.secret"

log "generating $ENTRIES entries over $DOMAINS domains"
"$LOAD" gen-ldif --users "$ENTRIES" --domains "$DOMAINS" --pattern "$PATTERN" --base "$PEOPLE" \
    --out "$TMP/users.ldif" >&2
LDIF_MB=$(( $(stat -c %s "$TMP/users.ldif") / 1000000 ))
log "slapadd -q -w ($LDIF_MB MB of LDIF)"
T0=$(now_ns)
/usr/sbin/slapadd -q -f "$LD/slapd.conf" -l "$TMP/base.ldif" >&2
/usr/sbin/slapadd -q -w -f "$LD/slapd.conf" -l "$TMP/users.ldif" >&2
SLAPADD_S=$(calc "($(now_ns) - $T0) / 1000000000")
rm -f "$TMP/users.ldif"
sync
DB_MB=$(( $(du -sk "$LD/db" | cut -f1) / 1000 ))
log "slapadd took $(fmt "$SLAPADD_S" 1) s; database $DB_MB MB"

/usr/sbin/slapd -d 0 -f "$LD/slapd.conf" -h "ldap://127.0.0.1:$PORT/ $LDAPI" 2>"$LD/slapd.log" &
SLAPD_PID=$!
for i in $(seq 200); do
    ldapsearch -x -H "$LDAPI" -b "" -s base namingContexts >/dev/null 2>&1 && break
    [ "$i" = 200 ] && { cat "$LD/slapd.log" >&2; die "slapd did not answer"; }
    sleep 0.05
done

LDAPSEARCH=(ldapsearch -x -H "$URL" -D "$SVC_DN" -y "$TMP/svc.secret" -b "$PEOPLE"
    -E "pr=$PAGE/noprompt" '(mail=*)')
# shellcheck disable=SC2206
LDAPSEARCH+=($ATTRS)

log "warm-up ldapsearch (untimed; also checks the entry count)"
NUM=$("${LDAPSEARCH[@]}" | tail -n 5 | awk '/^# numEntries:/ { print $3 }')
[ "$NUM" = "$ENTRIES" ] || die "ldapsearch returned ${NUM:-?} entries, not $ENTRIES"

# --- ramdir -------------------------------------------------------------------
write_config() { # state dir
    cat >"$TMP/ramdir.toml" <<EOF
[socketmap]
listen = "unix:$TMP/sm.sock"
mode = "0666"

[dict]
listen = "unix:$TMP/dict.sock"
mode = "0666"

[stats]
listen = "unix:$TMP/stats.sock"

[ldap]
url = "$URL"
base = "$PEOPLE"
bind_dn = "$SVC_DN"
bind_password_file = "$TMP/svc.secret"
state_dir = "$1"
page_size = $PAGE

[ldap.mapping]
default_uid = 5000
default_gid = 5000
EOF
}

# Start ramdir with an empty state dir (so it does a full load) and wait
# until it is in sync. Sets RAMDIR_PID and R_WALL (s), R_MS (its log's
# elapsed_ms), R_OTHER (cores used by other processes meanwhile).
ramdir_load() { # round
    local r=$1 t0 busy0 sc0 phase="" i st loaded
    rm -rf "$TMP/state"
    mkdir -p "$TMP/state"
    chmod 700 "$TMP/state"
    write_config "$TMP/state"
    busy0=$(busy_s)
    sc0=$(pid_cpu_s "$SLAPD_PID")
    t0=$(now_ns)
    "$RAMDIR" serve --allow-root --config "$TMP/ramdir.toml" 2>"$TMP/ramdir-$r.log" &
    RAMDIR_PID=$!
    if [ "$r" = last ] && [ "$PROFILE" = 1 ]; then
        perf record -F 999 -o "$TMP/perf.data" -p "$RAMDIR_PID" 2>"$TMP/perf.log" &
        PERF_PID=$!
    fi
    # Poll the log (cheap) until the load is done, then the stats socket.
    for i in $(seq 3000); do
        grep -q 'LDAP full load done' "$TMP/ramdir-$r.log" && break
        kill -0 "$RAMDIR_PID" 2>/dev/null || { cat "$TMP/ramdir-$r.log" >&2; die "ramdir exited"; }
        sleep 0.1
    done
    for i in $(seq 3000); do
        st=$("$RAMDIR" stats --config "$TMP/ramdir.toml" 2>/dev/null || true)
        phase=$(jq -r '.ldap.phase // empty' <<<"$st" 2>/dev/null || true)
        [ "$phase" = "in sync" ] && break
        kill -0 "$RAMDIR_PID" 2>/dev/null || { cat "$TMP/ramdir-$r.log" >&2; die "ramdir exited"; }
        sleep 0.1
    done
    [ "$phase" = "in sync" ] || { tail "$TMP/ramdir-$r.log" >&2; die "ramdir not in sync after 300 s (phase: $phase)"; }
    R_WALL=$(calc "($(now_ns) - $t0) / 1000000000")
    R_CPU=$(pid_cpu_s "$RAMDIR_PID")
    R_SLAPD=$(calc "$(pid_cpu_s "$SLAPD_PID") - $sc0")
    R_OTHER=$(calc "($(busy_s) - $busy0 - $R_SLAPD - $R_CPU) / $R_WALL")
    if [ -n "$PERF_PID" ]; then
        kill -INT "$PERF_PID"; wait "$PERF_PID" || true; PERF_PID=""
        PROFILE_TXT=$(perf_top "$TMP/perf.data" dso,symbol 30)
    fi
    R_MS=$(grep -o 'LDAP full load done.*' "$TMP/ramdir-$r.log" | grep -o 'elapsed_ms=[0-9]*' | head -1 | cut -d= -f2)
    [ -n "$R_MS" ] || die "no 'LDAP full load done' line in ramdir's log"
    loaded=$(jq -r '.ldap.entries_loaded' <<<"$st")
    [ "$loaded" = "$ENTRIES" ] || die "ramdir loaded $loaded entries, not $ENTRIES"
}

# One timed ldapsearch. Sets L_WALL (s), L_CPU (its own CPU s), L_OTHER.
ldapsearch_once() {
    local busy0 sc0 out u s
    busy0=$(busy_s)
    sc0=$(pid_cpu_s "$SLAPD_PID")
    out=$( { /usr/bin/time -f '%e %U %S' "${LDAPSEARCH[@]}" >/dev/null; } 2>&1 | tail -n 1)
    read -r L_WALL u s <<<"$out"
    L_CPU=$(calc "$u + $s")
    L_SLAPD=$(calc "$(pid_cpu_s "$SLAPD_PID") - $sc0")
    L_OTHER=$(calc "($(busy_s) - $busy0 - $L_SLAPD - $L_CPU) / $L_WALL")
}

# --- (a) initial load -----------------------------------------------------------
# Each measurement is repeated (at most RETRIES times) while other
# processes used more than NOISE_MAX cores; the quietest attempt is kept.
declare -a RD_WALL RD_MS RD_OTHER RD_CPU RD_SLAPD LS_WALL LS_CPU LS_OTHER LS_SLAPD
A_DISCARDED=0
for r in $(seq "$LOAD_ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order="ldapsearch ramdir"; else order="ramdir ldapsearch"; fi
    for s in $order; do
        best=""
        for attempt in $(seq 0 "$RETRIES"); do
            if [ "$s" = ldapsearch ]; then
                ldapsearch_once
                cur="$L_WALL $L_CPU $L_OTHER $L_SLAPD" noise=$L_OTHER
                log "round $r: ldapsearch of $ENTRIES entries: $(fmt "$L_WALL" 2) s (CPU: ldapsearch $(fmt "$L_CPU" 2) s, slapd $(fmt "$L_SLAPD" 2) s), other processes $(fmt "$L_OTHER" 2) cores"
            else
                ramdir_load "$r"
                cur="$R_WALL $R_MS $R_OTHER $R_CPU $R_SLAPD" noise=$R_OTHER
                log "round $r: ramdir full load $R_MS ms (start → in sync $(fmt "$R_WALL" 2) s; CPU: ramdir $(fmt "$R_CPU" 2) s, slapd $(fmt "$R_SLAPD" 2) s), other processes $(fmt "$R_OTHER" 2) cores"
                if [ "$r" = 1 ] && [ -z "${RSS_KIB:-}" ]; then
                    sleep 1
                    read -r RSS_KIB HWM_KIB < <("$LOAD" rss --pid "$RAMDIR_PID" --json | jq -r '"\(.vm_rss_kib) \(.vm_hwm_kib)"')
                    log "ramdir: VmRSS $((RSS_KIB / 1024)) MiB, VmHWM $((HWM_KIB / 1024)) MiB"
                fi
                # Stopped between loads (it writes its snapshot on the way out).
                stop "$RAMDIR_PID"; wait "$RAMDIR_PID" 2>/dev/null || true; RAMDIR_PID=""
            fi
            if [ -z "$best" ] || [ "$(calc "$noise < $best_noise")" = 1 ]; then best=$cur best_noise=$noise; fi
            [ "$(calc "$noise <= $NOISE_MAX")" = 1 ] && break
            if [ "$attempt" -lt "$RETRIES" ]; then
                log "noisy (other processes > $NOISE_MAX cores); repeating"
                A_DISCARDED=$((A_DISCARDED + 1))
            fi
        done
        if [ "$s" = ldapsearch ]; then
            read -r w c o sl <<<"$best"
            LS_WALL+=("$w") LS_CPU+=("$c") LS_OTHER+=("$o") LS_SLAPD+=("$sl")
        else
            read -r w ms o c sl <<<"$best"
            RD_WALL+=("$w") RD_MS+=("$ms") RD_OTHER+=("$o") RD_CPU+=("$c") RD_SLAPD+=("$sl")
        fi
    done
done
ramdir_load last
log "ramdir started again for (b) and (c): full load $R_MS ms"
sleep 1
read -r RSS_L0_KIB _ < <("$LOAD" rss --pid "$RAMDIR_PID" --json | jq -r '"\(.vm_rss_kib) \(.vm_hwm_kib)"')
# Let the first warm-start snapshot be written before timing changes.
for i in $(seq 600); do [ -s "$TMP/state/ldap.snapshot" ] && break; sleep 0.1; done
sleep 2
read -r RSS_L1_KIB HWM_L1_KIB < <("$LOAD" rss --pid "$RAMDIR_PID" --json | jq -r '"\(.vm_rss_kib) \(.vm_hwm_kib)"')
SNAP_MB=$(( $(stat -c %s "$TMP/state/ldap.snapshot" 2>/dev/null || echo 0) / 1000000 ))
log "ramdir: VmRSS $((RSS_L0_KIB / 1024)) MiB after the load, $((RSS_L1_KIB / 1024)) MiB after its first snapshot ($SNAP_MB MB; VmHWM $((HWM_L1_KIB / 1024)) MiB)"

# --- (b) change propagation --------------------------------------------------
log "(b) $CHANGES changes, each watched until ramdir shows it"
mkdir -p "$TMP/changes"
: >"$TMP/changes.jsonl"
for k in $(seq 1 "$CHANGES"); do
    f=$TMP/changes/$k.ldif
    if [ $((k % 2)) = 1 ]; then
        i=$((ENTRIES + k))
        addr=$(printf "user%07d@domain%d.test" "$i" $((i % DOMAINS)))
        cat >"$f" <<EOF
dn: uid=u$i,$PEOPLE
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
objectClass: mailAccount
uid: u$i
cn: User $i
sn: $i
mail: $addr
mailQuotaBytes: 1073741824
mailEnabled: TRUE
userPassword: {SSHA}bench-not-a-real-hash-0123456789ab

EOF
        "$LOAD" watch --socket "$TMP/sm.sock" --map mailboxes --key "$addr" --timeout 30 \
            -- ldapadd -x -H "$URL" -D "$ROOT_DN" -w "$ROOT_PW" -f "$f" \
            | jq -c '. + {kind: "add"}' >>"$TMP/changes.jsonl"
    else
        i=$(( (k * 7919) % ENTRIES ))
        addr=$(printf "user%07d@domain%d.test" "$i" $((i % DOMAINS)))
        q=$((2000000000 + k))
        printf 'dn: uid=u%d,%s\nchangetype: modify\nreplace: mailQuotaBytes\nmailQuotaBytes: %d\n' \
            "$i" "$PEOPLE" "$q" >"$f"
        "$LOAD" watch --socket "$TMP/dict.sock" --dict auth --key "shared/userdb/$addr" \
            --expect "storage=${q}B" --timeout 30 \
            -- ldapmodify -x -H "$URL" -D "$ROOT_DN" -w "$ROOT_PW" -f "$f" \
            | jq -c '. + {kind: "modify"}' >>"$TMP/changes.jsonl"
    fi
done
pctl() { # jsonl-filter field q
    jq -s "map(select($1) | .$2) | sort | .[((length * $3) | ceil) - 1]" "$TMP/changes.jsonl"
}
declare -A CH
for kind in all add modify; do
    if [ "$kind" = all ]; then sel=true; else sel=".kind == \"$kind\""; fi
    for field in from_return_ms from_start_ms command_ms; do
        CH[$kind-$field-50]=$(pctl "$sel" "$field" 0.5)
        CH[$kind-$field-99]=$(pctl "$sel" "$field" 0.99)
        CH[$kind-$field-max]=$(pctl "$sel" "$field" 1)
    done
    CH[$kind-n]=$(jq -s "map(select($sel)) | length" "$TMP/changes.jsonl")
done
CH_BEFORE_RETURN=$(jq -s 'map(select(.from_return_ms < 0)) | length' "$TMP/changes.jsonl")
log "(b) p50 $(fmt "${CH[all-from_return_ms-50]}" 2) ms, p99 $(fmt "${CH[all-from_return_ms-99]}" 2) ms after the tool's exit"

# --- (c) lookups --------------------------------------------------------------
mkdir -p "$TMP/runs"
# The log line of each run (a jq string over its JSON).
SUMMARY='"\(.connections) conn: \(.rps|floor) req/s, p50 \(.latency_us.p50) µs, p99 \(.latency_us.p99) µs, server \(.server_cpu_us_per_req) µs CPU/req, found \(.replies.ok) other \(.replies.notfound + .replies.temp + .replies.other)"'
lookups() { # server round: one run of the load tool, its JSON on stdout
    local name=$1 r=$2
    if [ "$name" = ramdir ]; then
        "$LOAD" socketmap --socket "$TMP/sm.sock" --connections "$CONNS" --threads "$CLIENT_THREADS" \
            --duration "$DURATION" --warmup "$WARMUP" --map mailboxes --key-pattern "$PATTERN" \
            --key-count "$ENTRIES" --key-domains "$DOMAINS" --seed "$r" \
            --server-pid "$RAMDIR_PID" --json
    else
        "$LOAD" ldap-search --url "$URL" --bind-dn "$SVC_DN" --bind-password-file "$TMP/svc.secret" \
            --base "$PEOPLE" --filter-pattern "(mail=$PATTERN)" --attrs mail \
            --connections "$CONNS" --threads "$CLIENT_THREADS" --duration "$DURATION" --warmup "$WARMUP" \
            --key-count "$ENTRIES" --key-domains "$DOMAINS" --seed "$r" \
            --server-pid "$SLAPD_PID" --json
    fi
}
run_one() { # server round
    local name=$1 r=$2
    best_run "$name-r$r" "$SUMMARY + \" [$name]\"" lookups "$name" "$r"
}
for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order="ramdir slapd"; else order="slapd ramdir"; fi
    for s in $order; do
        log "(c) round $r/$ROUNDS: $s"
        run_one "$s" "$r"
    done
done
read -r RSS2_KIB HWM2_KIB < <("$LOAD" rss --pid "$RAMDIR_PID" --json | jq -r '"\(.vm_rss_kib) \(.vm_hwm_kib)"')
STATS=$("$RAMDIR" stats --config "$TMP/ramdir.toml")

# --- report -----------------------------------------------------------------
med() { printf '%s\n' "$@" | sort -g | sed -n "$(( ($# + 1) / 2 ))p"; }
RD_S=$(calc "$(med "${RD_MS[@]}") / 1000")
LS_S=$(med "${LS_WALL[@]}")
LOAD_RATIO=$(calc "$RD_S / $LS_S")
declare -A RPS P50 P99 SCPU OKS ALL
for s in ramdir slapd; do
    f="$TMP/runs/$s-r*.json"
    RPS[$s]=$(median "$f" .rps)
    P50[$s]=$(median "$f" .latency_us.p50)
    P99[$s]=$(median "$f" .latency_us.p99)
    SCPU[$s]=$(median "$f" .server_cpu_us_per_req)
    OKS[$s]=$(jq -s 'map(.replies.ok) | add' $f)
    ALL[$s]=$(jq -s 'map(.requests) | add' $f)
done
C_RATIO=$(calc "${RPS[ramdir]} / ${RPS[slapd]}")
OTHER_MAX=$(printf '%s\n' "${RD_OTHER[@]}" "${LS_OTHER[@]}" "$(jq -s 'map(.other_cpu_s / .seconds) | max' "$TMP"/runs/[rs]*-r*.json)" | sort -g | tail -1)
mb() { calc "$1 * 1024 / 1000000" | xargs printf '%.0f'; }

report() {
    echo "### LDAP benchmark, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(free -g | awk '/^Mem:/ {print $2}') GB RAM, Linux $(uname -r); $(/usr/sbin/slapd -VV 2>&1 | grep -o 'slapd [0-9.+a-z~-]*' | head -1)"
    echo "- ramdir revision: $REV"
    echo "- directory: $ENTRIES entries (inetOrgPerson + inetLocalMailRecipient + mailAccount: mail, one mailLocalAddress, mailQuotaBytes, mailEnabled, userPassword) over $DOMAINS domains; LDIF $LDIF_MB MB; \`slapadd -q -w\` $(fmt "$SLAPADD_S" 1) s; mdb $DB_MB MB"
    echo "- transport: $TRANSPORT ($URL) for ramdir, ldapsearch, ldapadd/ldapmodify and ldap-search alike; page size $PAGE"
    echo
    echo "**(a) Initial load** ($LOAD_ROUNDS of each, alternating; medians)"
    echo
    echo "| | seconds | each run | |"
    echo "|---|---:|---|---|"
    echo "| ramdir full load (\`LDAP full load done … elapsed_ms\`) | $(fmt "$RD_S" 2) | $(printf '%s ' "${RD_MS[@]}")ms | paged search + mapping + building the directory |"
    echo "| ramdir process start → \`in sync\` | $(fmt "$(med "${RD_WALL[@]}")" 2) | $(for w in "${RD_WALL[@]}"; do fmt "$w" 2; printf ' '; done)s | CPU over that time: ramdir $(for c in "${RD_CPU[@]}"; do fmt "$c" 2; printf ' '; done)s, slapd $(for c in "${RD_SLAPD[@]}"; do fmt "$c" 2; printf ' '; done)s |"
    echo "| \`ldapsearch -E pr=$PAGE/noprompt '(mail=*)' <ramdir's $(wc -w <<<"$ATTRS") attributes> > /dev/null\` | $(fmt "$LS_S" 2) | $(for w in "${LS_WALL[@]}"; do fmt "$w" 2; printf ' '; done)s | CPU: ldapsearch $(for c in "${LS_CPU[@]}"; do fmt "$c" 2; printf ' '; done)s, slapd $(for c in "${LS_SLAPD[@]}"; do fmt "$c" 2; printf ' '; done)s |"
    echo
    echo "ramdir's memory (MB = 10^6 bytes): VmRSS $(mb "$RSS_KIB") MB 1 s after the first load (VmHWM $(mb "$HWM_KIB") MB). The instance kept for (b) and (c): $(mb "$RSS_L0_KIB") MB after its load, $(mb "$RSS_L1_KIB") MB once its first warm-start snapshot ($SNAP_MB MB) was written (VmHWM $(mb "$HWM_L1_KIB") MB), $(mb "$RSS2_KIB") MB after (b) and (c) (VmHWM $(mb "$HWM2_KIB") MB)."
    echo
    echo "**(b) Change propagation** ($CHANGES changes; ms)"
    echo
    echo "| changes | n | from the tool's exit p50 | p99 | max | from the tool's start p50 | p99 | the tool itself p50 |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for kind in add modify all; do
        case $kind in add) label="\`ldapadd\` → socketmap OK" ;; modify) label="\`ldapmodify\` mailQuotaBytes → dict userdb" ;; all) label="all" ;; esac
        echo "| $label | ${CH[$kind-n]} | $(fmt "${CH[$kind-from_return_ms-50]}" 2) | $(fmt "${CH[$kind-from_return_ms-99]}" 2) | $(fmt "${CH[$kind-from_return_ms-max]}" 2) | $(fmt "${CH[$kind-from_start_ms-50]}" 2) | $(fmt "${CH[$kind-from_start_ms-99]}" 2) | $(fmt "${CH[$kind-command_ms-50]}" 2) |"
    done
    echo
    echo "Changes visible before the tool had exited (negative times): $CH_BEFORE_RETURN of $CHANGES."
    echo
    echo "**(c) Lookups at $CONNS connections** (one request in flight per connection; $ROUNDS rounds alternating; ${DURATION} s measured after ${WARMUP} s; medians)"
    echo
    echo "| server | lookups/s | p50 µs | p99 µs | server CPU µs/lookup | found |"
    echo "|---|---:|---:|---:|---:|---:|"
    echo "| ramdir socketmap \`mailboxes\` | $(fmt "${RPS[ramdir]}") | $(fmt "${P50[ramdir]}" 1) | $(fmt "${P99[ramdir]}" 1) | $(fmt "${SCPU[ramdir]}" 2) | ${OKS[ramdir]} of ${ALL[ramdir]} |"
    echo "| slapd \`(mail=<address>)\`, attribute mail | $(fmt "${RPS[slapd]}") | $(fmt "${P50[slapd]}" 1) | $(fmt "${P99[slapd]}" 1) | $(fmt "${SCPU[slapd]}" 2) | ${OKS[slapd]} of ${ALL[slapd]} |"
    echo
    echo "| goal | target | measured | |"
    echo "|---|---|---:|---|"
    echo "| full load, ramdir / ldapsearch | ≤ $GOAL_LOAD_RATIO | $(fmt "$LOAD_RATIO" 2) | $(yesno "$LOAD_RATIO <= $GOAL_LOAD_RATIO") |"
    echo "| change propagation p99, from the tool's exit | ≤ $GOAL_P99_MS ms | $(fmt "${CH[all-from_return_ms-99]}" 2) ms | $(yesno "${CH[all-from_return_ms-99]} <= $GOAL_P99_MS") |"
    echo
    echo "Also measured (no goal): ramdir socketmap lookups / slapd searches at $CONNS connections: $(fmt "$C_RATIO" 1)×; runs repeated for noise: (a) $A_DISCARDED, (c) $DISCARDED; ramdir at the end: $(jq -c '{phase: .ldap.phase, entries: .ldap.entries, full_loads: .ldap.full_loads, changes_applied: .ldap.changes_applied, authoritative: .directory.authoritative}' <<<"$STATS")."
    if [ -n "$PROFILE_TXT" ]; then
        echo
        echo "perf profile of ramdir's last full load (self time, top symbols):"
        echo
        echo '```'
        echo "$PROFILE_TXT"
        echo '```'
        echo
    fi
    if [ "$(calc "$OTHER_MAX > $NOISE_MAX")" = 1 ]; then
        echo "**Warning: other processes took up to $(fmt "$OTHER_MAX" 2) CPU cores during a timed window; these figures are disturbed.**"
    else
        echo "Noise: other processes used at most $(fmt "$OTHER_MAX" 2) CPU cores during any timed window (load average at start: $LOADAVG0)."
    fi
}

if [ -n "$OUT" ]; then report | tee "$OUT"; else report; fi
