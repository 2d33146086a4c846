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
