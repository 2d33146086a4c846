#!/usr/bin/env bash
# ramdir Dovecot auth benchmark: userdb lookups per second through
# Dovecot's own auth-userdb socket (the auth-master protocol LMTP speaks),
# with ramdir behind Dovecot against Dovecot reading the same users from a
# passwd-file itself. Four stacks, one run, one markdown report:
#
#   2.4 lua   Dovecot 2.4 (Debian 13 root) + contrib/dovecot/ramdir-auth.lua + ramdir
#             (lua24: in auth-workers, Dovecot's default; lua24inproc: in the
#             auth process, use_worker = no)
#   2.4 file  Dovecot 2.4 (Debian 13 root) + passwd-file
#   2.3 dict  Dovecot 2.3 (this Debian 12 host) + dict driver (proxy) + ramdir
#   2.3 file  Dovecot 2.3 (this Debian 12 host) + passwd-file
#   2.4 mod   Dovecot 2.4 (Debian 13 root) + libauthdb_ramdir.so (mod24)
#   2.3 mod   Dovecot 2.3 (this Debian 12 host) + libauthdb_ramdir.so (mod23)
#             (each module reads the [dovecot_map] files of a ramdir of its
#             own, whose files have that Dovecot's group; the module is
#             installed in the auth module directory for the run and removed)
#
# Same users everywhere, auth cache off (auth_cache_size = 0) everywhere.
# See docs/benchmarks.md ("Dovecot auth") for what it measures.
#
# Usage: bench/auth.sh [--out FILE]      (as root: chroot and bind mounts)
#
# Environment (defaults in brackets):
#   USERS [100000]       users in the generated passwd-file
#   DOMAINS [1000]       domains they are spread over
#   DURATION [10]        measured seconds per run
#   WARMUP [2]           unmeasured seconds of load before each run
#   ROUNDS [3]           runs per (stack, connections); the median is reported
#   CONNS [1 16]         connection counts (the last one is the goal's)
#   STACKS ["mod24 lua24 lua24inproc file24 mod23 dict23 file23"]  which stacks to run
#   CLIENT_THREADS [nproc]  load client OS threads (capped at the connection count)
#   AUTH_WORKERS []      if set: at most this many auth-workers on every stack (2.4:
#                        service auth-worker { process_limit }; 2.3: auth_worker_max_count too)
#   DICT_IDLE_MSECS [60000]  2.3 dict driver: proxy:idle_msecs (0: reconnect per lookup)
#   NOISE_MAX [0.10]     a run during which other processes used more CPU cores than
#   RETRIES [2]          this is repeated, at most RETRIES times (the quietest is kept)
#   PROFILE [0]          1: also `perf record -a` under the last load of each stack
#   SKIP_BUILD [0]       1: use the existing target/release binaries
#   KEEP_TMP [0]         1: keep the temp dir (configs, logs, raw JSON)
#   PLAIN [1]            1: also PLAIN logins per second through the auth-client
#                        socket (what imap-login sends; every user's password is
#                        {PLAIN}<address>, so the passdb lookup is what is measured)
#   RAMDIR_TRIXIE_ROOT [/var/tmp/ramdir-trixie]  the Debian 13 root
#                        (scripts/trixie-root.sh builds it when it is missing)
#
# Unix sockets only; everything lives in a temp dir (bind-mounted at the
# same path inside the root) removed on exit, and every process started
# here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
parse_args "$@"

USERS=${USERS:-100000}
DOMAINS=${DOMAINS:-1000}
STACKS=${STACKS:-mod24 lua24 lua24inproc file24 mod23 dict23 file23}
AUTH_WORKERS=${AUTH_WORKERS:-}
DICT_IDLE_MSECS=${DICT_IDLE_MSECS:-60000}
PLAIN=${PLAIN:-1}
TRIXIE=${RAMDIR_TRIXIE_ROOT:-/var/tmp/ramdir-trixie}
bench_env
USER_PATTERN='user%07d@domain%d.test'

GOAL_RATIO_24=0.80   # 2.4: lua→ramdir / passwd-file lookups/s at the highest connection count, at least

[ "$(id -u)" = 0 ] || die "must run as root (chroot into the Debian 13 root, bind mounts)"
command -v jq >/dev/null || die "jq is needed (apt-get install jq)"
command -v bc >/dev/null || die "bc is needed (apt-get install bc)"
command -v dovecot >/dev/null || die "Dovecot 2.3 is needed on the host (apt-get install dovecot-core)"
if [ ! -f "$TRIXIE/.ramdir-stamp" ]; then
    [ -x "$ROOT/scripts/trixie-root.sh" ] || die "no Debian 13 root at $TRIXIE"
    log "building the Debian 13 root ($ROOT/scripts/trixie-root.sh)"
    RAMDIR_TRIXIE_ROOT=$TRIXIE "$ROOT/scripts/trixie-root.sh" >&2
fi
for f in usr/sbin/dovecot usr/lib/dovecot/modules/auth/libauthdb_lua.so; do
    [ -e "$TRIXIE/$f" ] || die "$TRIXIE has no /$f"
done

TMP=$(mktemp -d /tmp/ramdir-auth-bench.XXXXXX)
chmod 755 "$TMP"
MNT=$TRIXIE$TMP
RAMDIR_PID=""
PERF_PID=""
declare -A DOVECOT_PID
declare -A MAP_PID
MODULES=()

cleanup() {
    local rc=$? s
    stop "$PERF_PID"
    for s in "${!DOVECOT_PID[@]}"; do stop "${DOVECOT_PID[$s]}"; done
    stop "$RAMDIR_PID"
    for s in "${!MAP_PID[@]}"; do stop "${MAP_PID[$s]}"; done
    wait 2>/dev/null || true
    for s in "${MODULES[@]}"; do rm -f "$s"; done
    if mountpoint -q "$MNT" 2>/dev/null; then umount "$MNT" || umount -l "$MNT"; fi
    rmdir "$MNT" 2>/dev/null || true
    if [ "$KEEP_TMP" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

LOADAVG0=$(cut -d' ' -f1-3 /proc/loadavg)
build_release -p dovecot-ramdir
if [ "$SKIP_BUILD" != 1 ]; then
    log "building the 2.4 module (scripts/build-dovecot24-module.sh --release)"
    "$ROOT/scripts/build-dovecot24-module.sh" --release >&2
fi
V23=$(dovecot --version)
V24=$(chroot "$TRIXIE" dovecot --version)

# The same directory at the same path on both sides.
mkdir -p "$MNT"
mount --bind "$TMP" "$MNT"

log "generating $USERS users over $DOMAINS domains"
# {PLAIN}<address> passwords: the login runs check the cheapest scheme, so
# what is measured is the passdb lookup, not the hash.
"$LOAD" gen-passwd --users "$USERS" --domains "$DOMAINS" --alias-every 0 --plain-passwords \
    --out "$TMP/users.passwd" >&2
chmod 644 "$TMP/users.passwd"
install -m 0644 "$ROOT/contrib/dovecot/ramdir-auth.lua" "$TMP/ramdir-auth.lua"

cat >"$TMP/ramdir.toml" <<EOF
[directory]
passwd_files = ["$TMP/users.passwd"]

[dict]
listen = "unix:$TMP/dict.sock"
mode = "0666"
EOF

# --- Dovecot configs ----------------------------------------------------------

workers() { # the auth-worker limit, when AUTH_WORKERS is set: 2.4 reads the
    # service's process_limit; 2.3 uses auth_worker_max_count and drops
    # requests beyond a smaller process_limit (so both are set there)
    [ -n "$AUTH_WORKERS" ] || return 0
    [ "$1" = 23 ] && printf 'auth_worker_max_count = %s\n' "$AUTH_WORKERS"
    printf 'service auth-worker {\n  process_limit = %s\n}\n' "$AUTH_WORKERS"
}

conf24() { # stack passdb-userdb-block
    local d=$TMP/$1
    mkdir -p "$d/run" "$d/state"
    cat >"$d/dovecot.conf" <<EOF
dovecot_config_version = 2.4.1
dovecot_storage_version = 2.4.1
protocols =
base_dir = $d/run
state_dir = $d/state
log_path = $d/dovecot.log
ssl = no
auth_cache_size = 0
$2
$(workers 24)
EOF
}

conf23() { # stack passdb-userdb-block
    local d=$TMP/$1
    mkdir -p "$d/run" "$d/state"
    cat >"$d/dovecot.conf" <<EOF
protocols =
base_dir = $d/run
state_dir = $d/state
log_path = $d/dovecot.log
ssl = no
auth_cache_size = 0
$2
$(workers 23)
EOF
}

conf24 lua24 "passdb ramdir {
  driver = lua
  lua_file = $TMP/ramdir-auth.lua
  lua_settings {
    socket = $TMP/dict.sock
    dict = auth
  }
}
userdb ramdir {
  driver = lua
  lua_file = $TMP/ramdir-auth.lua
  lua_settings {
    socket = $TMP/dict.sock
    dict = auth
  }
}"
# The same bridge run in the auth process itself instead of auth-workers:
# no worker hop, but every lookup blocks the (single) auth process.
conf24 lua24inproc "passdb ramdir {
  driver = lua
  use_worker = no
  lua_file = $TMP/ramdir-auth.lua
  lua_settings {
    socket = $TMP/dict.sock
    dict = auth
  }
}
userdb ramdir {
  driver = lua
  use_worker = no
  lua_file = $TMP/ramdir-auth.lua
  lua_settings {
    socket = $TMP/dict.sock
    dict = auth
  }
}"
conf24 mod24 "import_environment {
  RAMDIR_DOVECOT_MAP = $TMP/map24
}
passdb ramdir {
  driver = ramdir
}
userdb ramdir {
  driver = ramdir
}"
conf23 mod23 "passdb {
  driver = ramdir
  args = $TMP/map23
}
userdb {
  driver = ramdir
  args = $TMP/map23
}"
conf24 file24 "passdb passwd-file {
  passwd_file_path = $TMP/users.passwd
  default_password_scheme = SSHA
}
userdb passwd-file {
  passwd_file_path = $TMP/users.passwd
}"
cat >"$TMP/dict-auth.conf.ext" <<EOF
uri = proxy:idle_msecs=$DICT_IDLE_MSECS:$TMP/dict.sock:auth
password_key = passdb/%u
user_key = userdb/%u
iterate_disable = no
iterate_prefix = userdb/
default_pass_scheme = SSHA
EOF
conf23 dict23 "passdb {
  driver = dict
  args = $TMP/dict-auth.conf.ext
}
userdb {
  driver = dict
  args = $TMP/dict-auth.conf.ext
}"
conf23 file23 "passdb {
  driver = passwd-file
  args = scheme=SSHA $TMP/users.passwd
}
userdb {
  driver = passwd-file
  args = $TMP/users.passwd
}"

# --- start ----------------------------------------------------------------------

auth_ready() { # socket
    local i
    for i in $(seq 300); do
        if [ -S "$1" ] && "$LOAD" auth --socket "$1" --duration 0.01 --warmup 0 --max-requests 1 \
            --key-pattern "$USER_PATTERN" --key-count 1 --key-domains "$DOMAINS" --json 2>/dev/null \
            | jq -e '.replies.ok == 1' >/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

log "starting ramdir"
"$RAMDIR" serve --allow-root --config "$TMP/ramdir.toml" 2>"$TMP/ramdir.log" &
RAMDIR_PID=$!
for _ in $(seq 600); do [ -S "$TMP/dict.sock" ] && break; sleep 0.1; done
[ -S "$TMP/dict.sock" ] || { cat "$TMP/ramdir.log" >&2; die "ramdir did not listen"; }

# The module stacks: a ramdir publishing [dovecot_map] files with that
# Dovecot's group (the host's and the root's dovecot gids differ), and the
# module of that Dovecot's ABI in its auth module directory.
start_map() { # stack gid module-so module-dir
    local s=$1
    cat >"$TMP/ramdir-$s.toml" <<EOF
[directory]
passwd_files = ["$TMP/users.passwd"]

[dovecot_map]
directory = "$TMP/map${s#mod}"
group = "$2"
EOF
    "$RAMDIR" serve --allow-root --config "$TMP/ramdir-$s.toml" 2>"$TMP/ramdir-$s.log" &
    MAP_PID[$s]=$!
    for _ in $(seq 600); do [ -e "$TMP/map${s#mod}/control" ] && break; sleep 0.1; done
    [ -e "$TMP/map${s#mod}/control" ] || { cat "$TMP/ramdir-$s.log" >&2; die "ramdir ($s) did not publish"; }
    [ -f "$3" ] || die "no module $3"
    install -m 0644 "$3" "$4/libauthdb_ramdir.so"
    MODULES+=("$4/libauthdb_ramdir.so")
}
for s in $STACKS; do
    case "$s" in
        mod24) start_map mod24 "$(chroot "$TRIXIE" id -g dovecot)" \
            "$ROOT/target/dovecot-2.4/release/libauthdb_ramdir.so" "$TRIXIE/usr/lib/dovecot/modules/auth" ;;
        mod23) start_map mod23 "$(id -g dovecot)" \
            "$ROOT/target/release/libauthdb_ramdir.so" /usr/lib/dovecot/modules/auth ;;
    esac
done

for s in $STACKS; do
    case "$s" in
        mod24|lua24|lua24inproc|file24) cmd=(chroot "$TRIXIE" dovecot -F -c "$TMP/$s/dovecot.conf") ;;
        mod23|dict23|file23) cmd=(dovecot -F -c "$TMP/$s/dovecot.conf") ;;
        *) die "unknown stack $s" ;;
    esac
    log "starting Dovecot ($s)"
    setsid "${cmd[@]}" >"$TMP/$s/stdout" 2>&1 &
    DOVECOT_PID[$s]=$!
    auth_ready "$TMP/$s/run/auth-userdb" || {
        cat "$TMP/$s/stdout" "$TMP/$s/dovecot.log" >&2 2>/dev/null || true
        die "Dovecot ($s) does not answer userdb lookups"
    }
done

# --- runs -----------------------------------------------------------------------

mkdir -p "$TMP/runs"
CHIGH=${CONNS##* }
# The log line of each run (a jq string over its JSON).
SUMMARY='"\(.connections) conn: \(.rps|floor) lookups/s, p50 \(.latency_us.p50) µs, p99 \(.latency_us.p99) µs, server \(.server_cpu_us_per_req) µs CPU/lookup, USER \(.replies.ok) other \(.replies.notfound + .replies.temp + .replies.other)"'
run_one() { # stack conns round [plain]
    local s=$1 c=$2 r=$3 m=${4:-} sock=auth-userdb args=()
    if [ -n "$m" ]; then sock=auth-client args=(--plain --service imap); fi
    best_run "$m$s-c$c-r$r" "$SUMMARY" \
        "$LOAD" auth --socket "$TMP/$s/run/$sock" "${args[@]}" --connections "$c" --threads "$CLIENT_THREADS" \
            --duration "$DURATION" --warmup "$WARMUP" --key-pattern "$USER_PATTERN" \
            --key-count "$USERS" --key-domains "$DOMAINS" --seed "$r" \
            --server-children "${DOVECOT_PID[$s]}" --server-pid "${MAP_PID[$s]:-$RAMDIR_PID}" --json
}

# The stacks' order turns every round, so slow drift hits all alike.
read -r -a ORDER <<<"$STACKS"
for r in $(seq "$ROUNDS"); do
    for c in $CONNS; do
        for i in "${!ORDER[@]}"; do
            s=${ORDER[$(( (i + r - 1) % ${#ORDER[@]} ))]}
            log "round $r/$ROUNDS: $s, $c connection(s), userdb lookups"
            run_one "$s" "$c" "$r"
            if [ "$PLAIN" = 1 ]; then
                log "round $r/$ROUNDS: $s, $c connection(s), PLAIN logins"
                run_one "$s" "$c" "$r" plain
            fi
        done
    done
done

# One reply of each stack for the report (user0000003 has a quota rule).
reply_of() { # stack
    # The input stays open until the answer is in: Dovecot drops a
    # request whose client has shut its side down.
    { printf 'VERSION\t1\t0\nUSER\t1\tuser0000003@domain3.test\tservice=lmtp\n'; sleep 2; } \
        | timeout 5 nc -U -q 1 "$TMP/$1/run/auth-userdb" 2>/dev/null | grep '^USER' | head -1 || true
}
declare -A REPLY
for s in $STACKS; do REPLY[$s]=$(reply_of "$s"); done

declare -A PROFILE_TXT
if [ "$PROFILE" = 1 ]; then
    if command -v perf >/dev/null; then
        for s in $STACKS; do
            log "profiling the whole machine under $s, $CHIGH connections"
            perf record -a -g -F 499 -o "$TMP/perf-$s.data" 2>"$TMP/perf-$s.log" &
            PERF_PID=$!
            sleep 0.5
            "$LOAD" auth --socket "$TMP/$s/run/auth-userdb" --connections "$CHIGH" --threads "$CLIENT_THREADS" \
                --duration "$DURATION" --warmup 0 --key-pattern "$USER_PATTERN" --key-count "$USERS" \
                --key-domains "$DOMAINS" >/dev/null
            kill -INT "$PERF_PID"; wait "$PERF_PID" || true; PERF_PID=""
            PROFILE_TXT[$s]=$(perf report -i "$TMP/perf-$s.data" --no-children --sort comm,dso --stdio 2>/dev/null \
                | grep -E '^ +[0-9]' | head -15 | sed -E 's/[[:space:]]+$//' || true)
        done
    else
        log "perf not installed; no profile"
    fi
fi

# --- report -----------------------------------------------------------------------

declare -A RPS P50 P99 SCPU OK NOK
for s in $STACKS; do
    [ "$PLAIN" = 1 ] || continue
    for c in $CONNS; do
        f="$TMP/runs/plain$s-c$c-r*.json"
        RPS[plain$s$c]=$(median "$f" .rps)
        P50[plain$s$c]=$(median "$f" .latency_us.p50)
        P99[plain$s$c]=$(median "$f" .latency_us.p99)
        SCPU[plain$s$c]=$(median "$f" .server_cpu_us_per_req)
        OK[plain$s$c]=$(jq -s 'map(.replies.ok) | add' $f)
        NOK[plain$s$c]=$(jq -s 'map(.replies.notfound + .replies.temp + .replies.other) | add' $f)
    done
done
for s in $STACKS; do
    for c in $CONNS; do
        f="$TMP/runs/$s-c$c-r*.json"
        RPS[$s$c]=$(median "$f" .rps)
        P50[$s$c]=$(median "$f" .latency_us.p50)
        P99[$s$c]=$(median "$f" .latency_us.p99)
        SCPU[$s$c]=$(median "$f" .server_cpu_us_per_req)
        OK[$s$c]=$(jq -s 'map(.replies.ok) | add' $f)
        NOK[$s$c]=$(jq -s 'map(.replies.notfound + .replies.temp + .replies.other) | add' $f)
    done
done
has() { case " $STACKS " in *" $1 "*) return 0 ;; esac; return 1; }
OTHER_MAX=$(jq -s "map(.other_cpu_s / .seconds) | max" "$TMP"/runs/[a-z]*-c*-r*.json)

label() {
    case "$1" in
        mod24) echo "2.4 module (libauthdb_ramdir.so)" ;;
        mod23) echo "2.3 module (libauthdb_ramdir.so)" ;;
        lua24) echo "2.4 Lua → ramdir" ;;
        lua24inproc) echo "2.4 Lua → ramdir, in the auth process" ;;
        file24) echo "2.4 passwd-file" ;;
        dict23) echo "2.3 dict → ramdir" ;;
        file23) echo "2.3 passwd-file" ;;
    esac
}

report() {
    echo "### auth benchmark, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(free -g | awk '/^Mem:/ {print $2}') GB RAM, Linux $(uname -r)"
    echo "- ramdir revision: $REV"
    echo "- Dovecot: $V24 (Debian 13 root), $V23 (host, Debian 12)"
    echo "- users: $USERS over $DOMAINS domains, one passwd-file read by ramdir and by both passwd-file stacks; auth_cache_size = 0 everywhere; auth-worker process_limit ${AUTH_WORKERS:-default}; 2.3 dict: \`proxy:idle_msecs=$DICT_IDLE_MSECS\`"
    echo "- load: Dovecot's auth-userdb socket, \`VERSION\` once per connection, then one \`USER\t1\t<user>\tservice=lmtp\` at a time, users uniformly random; ${DURATION} s measured after ${WARMUP} s warm-up; $ROUNDS rounds, the stacks' order turning each round, median reported; client: $CLIENT_THREADS thread(s), nothing pinned"
    echo "- server CPU: the stack's Dovecot master and its children (auth, auth-worker, …) plus ramdir (idle in the passwd-file stacks)"
    echo "- runs repeated because other processes used more than $NOISE_MAX cores: $DISCARDED"
    echo
    echo "| connections | stack | lookups/s | p50 µs | p99 µs | server CPU µs/lookup |"
    echo "|---:|---|---:|---:|---:|---:|"
    for c in $CONNS; do
        for s in $STACKS; do
            echo "| $c | $(label "$s") | $(fmt "${RPS[$s$c]}") | $(fmt "${P50[$s$c]}" 1) | $(fmt "${P99[$s$c]}" 1) | $(fmt "${SCPU[$s$c]}" 1) |"
        done
    done
    echo
    if [ "$PLAIN" = 1 ]; then
        echo "PLAIN logins through the auth-client socket (\`AUTH\t<id>\tPLAIN\tservice=imap\tsecured\tno-penalty\tresp=…\`, one at a time per connection, passwords \`{PLAIN}\`):"
        echo
        echo "| connections | stack | logins/s | p50 µs | p99 µs | server CPU µs/login | OK | other |"
        echo "|---:|---|---:|---:|---:|---:|---:|---:|"
        for c in $CONNS; do
            for s in $STACKS; do
                echo "| $c | $(label "$s") | $(fmt "${RPS[plain$s$c]}") | $(fmt "${P50[plain$s$c]}" 1) | $(fmt "${P99[plain$s$c]}" 1) | $(fmt "${SCPU[plain$s$c]}" 1) | ${OK[plain$s$c]} | ${NOK[plain$s$c]} |"
            done
        done
        echo
        for c in $CONNS; do
            if has mod24 && has file24 && has lua24; then
                echo "- PLAIN, 2.4 module / passwd-file at $c connection(s): $(fmt "$(calc "${RPS[plainmod24$c]} / ${RPS[plainfile24$c]}")" 3); module / Lua → ramdir: $(fmt "$(calc "${RPS[plainmod24$c]} / ${RPS[plainlua24$c]}")" 3)"
            fi
            if has mod23 && has file23 && has dict23; then
                echo "- PLAIN, 2.3 module / passwd-file at $c connection(s): $(fmt "$(calc "${RPS[plainmod23$c]} / ${RPS[plainfile23$c]}")" 3); module / dict → ramdir: $(fmt "$(calc "${RPS[plainmod23$c]} / ${RPS[plaindict23$c]}")" 3)"
            fi
        done
        echo
    fi
    if has lua24 && has file24; then
        local r24
        r24=$(calc "${RPS[lua24$CHIGH]} / ${RPS[file24$CHIGH]}")
        echo "| goal | target | measured | |"
        echo "|---|---|---:|---|"
        echo "| 2.4: Lua → ramdir / passwd-file at $CHIGH connections | ≥ $GOAL_RATIO_24 | $(fmt "$r24" 3) | $(yesno "$r24 >= $GOAL_RATIO_24") |"
        echo
    fi
    if has mod24 && has file24 && has lua24; then
        local m1 m2
        m1=$(calc "${RPS[mod24$CHIGH]} / ${RPS[file24$CHIGH]}")
        m2=$(calc "${RPS[mod24$CHIGH]} / ${RPS[lua24$CHIGH]}")
        echo "| goal | target | measured | |"
        echo "|---|---|---:|---|"
        echo "| 2.4: module / passwd-file at $CHIGH connections | ≥ 1.0 | $(fmt "$m1" 3) | $(yesno "$m1 >= 1.0") |"
        echo "| 2.4: module / Lua → ramdir at $CHIGH connections | ≥ 3.0 | $(fmt "$m2" 3) | $(yesno "$m2 >= 3.0") |"
        if has mod23 && has file23; then
            m1=$(calc "${RPS[mod23$CHIGH]} / ${RPS[file23$CHIGH]}")
            echo "| 2.3: module / passwd-file at $CHIGH connections | ≥ 1.0 | $(fmt "$m1" 3) | $(yesno "$m1 >= 1.0") |"
        fi
        echo
    fi
    echo "Also measured (no goal):"
    echo
    for c in $CONNS; do
        if has mod24 && has file24 && has lua24; then
            echo "- 2.4 module / passwd-file at $c connection(s): $(fmt "$(calc "${RPS[mod24$c]} / ${RPS[file24$c]}")" 3); module / Lua → ramdir: $(fmt "$(calc "${RPS[mod24$c]} / ${RPS[lua24$c]}")" 3)"
        fi
        if has mod23 && has file23 && has dict23; then
            echo "- 2.3 module / passwd-file at $c connection(s): $(fmt "$(calc "${RPS[mod23$c]} / ${RPS[file23$c]}")" 3); module / dict → ramdir: $(fmt "$(calc "${RPS[mod23$c]} / ${RPS[dict23$c]}")" 3)"
        fi
    done
    for c in $CONNS; do
        if has lua24 && has file24; then
            echo "- 2.4 Lua → ramdir / passwd-file at $c connection(s): $(fmt "$(calc "${RPS[lua24$c]} / ${RPS[file24$c]}")" 3)"
        fi
        if has lua24inproc && has file24; then
            echo "- 2.4 Lua → ramdir in the auth process / passwd-file at $c connection(s): $(fmt "$(calc "${RPS[lua24inproc$c]} / ${RPS[file24$c]}")" 3)"
        fi
        if has dict23 && has file23; then
            echo "- 2.3 dict → ramdir / passwd-file at $c connection(s): $(fmt "$(calc "${RPS[dict23$c]} / ${RPS[file23$c]}")" 3)"
        fi
    done
    for s in $STACKS; do
        echo "- $(label "$s"): ${OK[$s$CHIGH]} USER replies, ${NOK[$s$CHIGH]} others at $CHIGH connections (every user exists, so all should be USER); a reply: \`$(printf %s "${REPLY[$s]}" | cut -c1-400 | sed 's/\t/ /g')\`"
    done
    if [ "$(calc "$OTHER_MAX > $NOISE_MAX")" = 1 ]; then
        echo "- **warning: other processes took more than $NOISE_MAX CPU cores during a measured window; these figures are disturbed**"
    fi
    echo "- noise: other processes used at most $(fmt "$OTHER_MAX" 2) CPU cores during any measured window (load average at start: $LOADAVG0)"
    for s in "${!PROFILE_TXT[@]}"; do
        echo
        echo "perf profile, whole machine, $(label "$s") at $CHIGH connections (self time by command and object):"
        echo
        echo '```'
        echo "${PROFILE_TXT[$s]}"
        echo '```'
    done
}

if [ -n "$OUT" ]; then report | tee "$OUT"; else report; fi
for s in $STACKS; do
    [ "${NOK[$s$CHIGH]}" = 0 ] || log "warning: $(label "$s") answered something other than USER ${NOK[$s$CHIGH]} times"
done
