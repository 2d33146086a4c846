#!/bin/sh
# Builds libauthdb_ramdir.so for Dovecot 2.4 (Debian 13) on a Debian 12
# host: bindgen reads the 2.4 headers of the Debian 13 root
# (scripts/trixie-root.sh installs dovecot-dev there), the compiler and
# linker are the host's, so the module needs no newer glibc than
# Debian 12's 2.36 (Debian 13 has 2.41, which runs it). Output:
# target/dovecot-2.4/<profile>/libauthdb_ramdir.so (its own target dir: the
# 2.3 build in target/<profile>/ is untouched). Pass cargo options, e.g.
# --release.
set -eu
cd "$(dirname "$0")/.."
ROOT=${RAMDIR_TRIXIE_ROOT:-/var/tmp/ramdir-trixie}
[ -f "$ROOT/usr/include/dovecot/config.h" ] || {
    echo "build-dovecot24-module: no Dovecot 2.4 headers in $ROOT (run scripts/trixie-root.sh)" >&2
    exit 1
}
DOVECOT_INCLUDE="$ROOT/usr/include/dovecot" exec cargo build -p dovecot-ramdir \
    --target-dir target/dovecot-2.4 "$@"
