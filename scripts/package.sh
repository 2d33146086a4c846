#!/bin/sh
# Builds the Debian packages from this checkout with cargo-deb (installed
# once into $CARGO_HOME/bin at the pinned version; about 5 minutes on 2
# cores the first time):
#   scripts/package.sh [ramdir] [cargo-deb args]
#       target/debian/ramdir_<version>-1_<arch>.deb: the daemon, the Postfix
#       plugin, the Lua bridge, the unit, the man pages, the Nagios check;
#   scripts/package.sh dovecot [cargo-deb args]
#       dovecot-ramdir_<version>-1+deb12_<arch>.deb: libauthdb_ramdir.so for
#       Dovecot 2.3 (this host's headers), and, when the Debian 13 root is
#       there (scripts/trixie-root.sh), dovecot-ramdir_<version>-1+deb13
#       for its Dovecot 2.4 (scripts/build-dovecot24-module.sh; without
#       --output it goes to target/dovecot-2.4/debian/).
# Extra arguments go to cargo-deb (e.g. --deb-revision 0 --output DIR).
set -eu
cd "$(dirname "$0")/.."

what=ramdir
case "${1:-}" in
ramdir | dovecot) what=$1; shift ;;
esac

CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -qF "$CARGO_DEB_VERSION"; then
    echo "== installing cargo-deb $CARGO_DEB_VERSION (once)"
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi

case $what in
ramdir)
    # The daemon and the Postfix plugin; cargo-deb packages both (and
    # strips them), without building anything itself.
    cargo build --release --locked -p ramdir -p postfix-ramdir
    cargo deb -p ramdir --no-build --strip --locked "$@"
    ;;
dovecot)
    cargo build --release --locked -p dovecot-ramdir
    cargo deb -p dovecot-ramdir --no-build --strip --locked "$@"
    TRIXIE=${RAMDIR_TRIXIE_ROOT:-/var/tmp/ramdir-trixie}
    if [ -f "$TRIXIE/usr/include/dovecot/config.h" ]; then
        ./scripts/build-dovecot24-module.sh --release --locked
        # (its own target dir: cargo-deb takes the module from target/release/
        # of the target dir it is given)
        CARGO_TARGET_DIR=target/dovecot-2.4 \
            cargo deb -p dovecot-ramdir --variant dovecot24 --no-build --strip --locked "$@"
    else
        echo "package.sh: no Debian 13 root at $TRIXIE: no package for Dovecot 2.4" >&2
    fi
    ;;
esac
