# Helpers shared by the bench/*.sh scripts. Sourced, not run: each script
# sources it right after it found the repository root.

# Arithmetic with six decimals (bc).
calc() { echo "scale=6; $*" | bc -l; }
# A number with $2 decimals (default 0).
fmt() { printf "%.${2:-0}f" "$1"; }
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The median of jq expression $2 over the JSON run files matching glob $1.
median() { # file-glob jq-expr
    jq -s "map($2) | sort | .[(length - 1) / 2 | floor]" $1
}
# "met" when the bc condition $1 holds, else "**NOT met**".
yesno() { if [ "$(calc "$1")" = 1 ]; then echo "met"; else echo "**NOT met**"; fi; }

# Stop process $1: SIGTERM, then SIGKILL after STOP_TENTHS tenths of a
# second (default 50; a script whose server takes longer to stop sets it).
# A zombie (stat Z) counts as stopped: PID 1 reaps late on these machines.
stop() { # pid
    local pid=$1
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq "${STOP_TENTHS:-50}"); do
        case "$(ps -o stat= -p "$pid" 2>/dev/null)" in ''|Z*) return 0 ;; esac
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# The command line every bench script takes: `--out FILE` (the markdown
# report; OUT is left empty for stdout) and `-h`/`--help` (the script's
# opening comment). Called as `parse_args "$@"`.
parse_args() {
    OUT=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --out) OUT=$2; shift 2 ;;
            -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
            *) echo "unknown argument: $1" >&2; exit 2 ;;
        esac
    done
}

# The knobs every load script shares (its opening comment lists them); a
# script sets its own (USERS, ...) and may preset any of these first.
bench_env() {
    DURATION=${DURATION:-10}
    WARMUP=${WARMUP:-2}
    ROUNDS=${ROUNDS:-3}
    CONNS=${CONNS:-1 16}
    CLIENT_THREADS=${CLIENT_THREADS:-$(nproc)}
    PROFILE=${PROFILE:-0}
    LAT_PIN=${LAT_PIN:-1}
    LAT_CPU=${LAT_CPU:-0}
    NOISE_MAX=${NOISE_MAX:-0.10}
    RETRIES=${RETRIES:-2}
    SKIP_BUILD=${SKIP_BUILD:-0}
    KEEP_TMP=${KEEP_TMP:-0}
    DISCARDED=0
}

# Build the daemon and the load tool in release (unless SKIP_BUILD=1),
# plus any further `-p PACKAGE` given, and set RAMDIR, LOAD and REV (the
# code under test: the tree at start, as others may commit during a run).
build_release() { # [cargo build args...]
    cd "$ROOT"
    if [ "${SKIP_BUILD:-0}" != 1 ]; then
        log "building release (cargo build --release -p ramdir -p ramdir-bench $*)"
        cargo build --release -p ramdir -p ramdir-bench "$@" >&2
    fi
    RAMDIR=$ROOT/target/release/ramdir
    LOAD=$ROOT/target/release/ramdir-load
    [ -x "$RAMDIR" ] && [ -x "$LOAD" ] || die "release binaries missing"
    REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || REV="$REV (with uncommitted changes)"
    if [ "${SKIP_BUILD:-0}" = 1 ]; then REV="$REV; binaries built $(date -u -r "$RAMDIR" +%Y-%m-%dT%H:%MZ)"; fi
}

# One measured run of `ramdir-load … --json` kept as $TMP/runs/NAME.json:
# CMD runs (its JSON on stdout), repeated at most RETRIES times while
# other processes used more than NOISE_MAX CPU cores; the quietest try is
# kept and DISCARDED counts the repeats. SUMMARY is a jq string for the
# log line.
best_run() { # name summary cmd...
    local name=$1 summary=$2 attempt noise best="" best_noise="" f
    shift 2
    mkdir -p "$TMP/runs"
    for attempt in $(seq 0 "$RETRIES"); do
        f="$TMP/runs/try-$name-$attempt.json"
        "$@" >"$f"
        noise=$(jq '.other_cpu_s / .seconds' "$f")
        log "$(jq -r "$summary" "$f"), other processes $(fmt "$noise" 2) cores"
        if [ -z "$best" ] || [ "$(calc "$noise < $best_noise")" = 1 ]; then best=$f best_noise=$noise; fi
        [ "$(calc "$noise <= $NOISE_MAX")" = 1 ] && break
        if [ "$attempt" -lt "$RETRIES" ]; then
            log "noisy (other processes > $NOISE_MAX cores); repeating"
            DISCARDED=$((DISCARDED + 1))
        fi
    done
    cp "$best" "$TMP/runs/$name.json"
}

# Wait (up to TENTHS tenths of a second) until `ramdir-load SUBCOMMAND`
# gets one answer from SOCKET; the further arguments pick the key (as in
# the measured runs). A server's readiness is its first real answer.
load_ready() { # tenths subcommand socket [load args...]
    local tenths=$1 sub=$2 socket=$3 i
    shift 3
    for i in $(seq "$tenths"); do
        if [ -S "$socket" ] && "$LOAD" "$sub" --socket "$socket" --duration 0.01 --warmup 0 \
            --max-requests 1 --key-count 1 "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# PROFILE=1: `perf record` ramdir (RAMDIR_PID) while CMD runs, and set
# PROFILE_TXT to the top 25 symbols; else PROFILE_TXT is empty.
profile_under() { # what cmd...
    PROFILE_TXT=""
    [ "$PROFILE" = 1 ] || return 0
    command -v perf >/dev/null || { log "perf not installed; no profile"; return 0; }
    log "profiling ramdir under $1"
    shift
    perf record -F 999 -o "$TMP/perf.data" -p "$RAMDIR_PID" 2>"$TMP/perf.log" &
    PERF_PID=$!
    sleep 0.5
    "$@" >/dev/null
    kill -INT "$PERF_PID"; wait "$PERF_PID" || true; PERF_PID=""
    PROFILE_TXT=$(perf_top "$TMP/perf.data" symbol 25)
}

# The top N lines of a perf report, sorted by SORT (`symbol`, `dso,symbol`).
perf_top() { # perf.data sort n
    perf report -i "$1" --no-children --sort "$2" --stdio 2>/dev/null \
        | grep -E '^ +[0-9]' | head -"$3" | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//' || true
}

# The medians of every measured run ($TMP/runs/SERVER-cC-r*.json) per
# server and connection count, into the global arrays RPS, P50, P99, P999
# and SCPU (server CPU µs per request), keyed "$server$conns".
run_medians() { # "servers" "conns"
    local s c f
    declare -gA RPS P50 P99 P999 SCPU
    for s in $1; do
        for c in $2; do
            f="$TMP/runs/$s-c$c-r*.json"
            RPS[$s$c]=$(median "$f" .rps)
            P50[$s$c]=$(median "$f" .latency_us.p50)
            P99[$s$c]=$(median "$f" .latency_us.p99)
            P999[$s$c]=$(median "$f" .latency_us.p999)
            SCPU[$s$c]=$(median "$f" .server_cpu_us_per_req)
        done
    done
}
