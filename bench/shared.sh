#!/usr/bin/env bash
# ramdir shared quota usage benchmark (`[quota] shared` on Redis): the
# propagation time from a quota dict commit on the "store" ramdir to the
# "MX" ramdir's policy service seeing it (p50/p99), and the store's dict
# commit throughput with publishing on against the same ramdir without it
# (ABBA rounds, median). One real redis-server on 127.0.0.1, three ramdirs
# on Unix sockets, all in a temp dir and stopped on exit (the integration
# harness's `shared-bench`). See docs/benchmarks.md ("Shared usage on
# Redis").
#
# Usage: bench/shared.sh [--out FILE] [shared-bench options]
#   shared-bench options: --samples N [500] --duration SECS [5]
#                         --conns N [8] --rounds N [3]
#
# Environment: SKIP_BUILD [0]  1: use the existing target/release binaries
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
OUT=""
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
command -v redis-server >/dev/null || die "redis-server is needed (scripts/install-test-deps.sh)"

cd "$ROOT"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building release (ramdir, shared-bench)"
    cargo build --release -p ramdir --bin ramdir >&2
    cargo build --release -p ramdir-integration --bin shared-bench >&2
fi
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || REV="$REV (with uncommitted changes)"
LOADAVG0=$(cut -d' ' -f1-3 /proc/loadavg)

report() {
    echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), Linux $(uname -r); load average at start: $LOADAVG0"
    echo "- ramdir revision: $REV"
    RAMDIR_BIN="$ROOT/target/release/ramdir" "$ROOT/target/release/shared-bench" "${ARGS[@]}"
}
if [ -n "$OUT" ]; then report | tee "$OUT"; else report; fi
