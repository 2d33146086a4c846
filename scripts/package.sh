#!/bin/sh
# Builds the Debian package target/debian/ramdir_<version>_<arch>.deb from
# this checkout with cargo-deb (installed once into $CARGO_HOME/bin at the
# pinned version; about 5 minutes on 2 cores the first time). Extra
# arguments go to cargo-deb (e.g. --deb-revision 0 --output DIR).
set -eu
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -qF "$CARGO_DEB_VERSION"; then
    echo "== installing cargo-deb $CARGO_DEB_VERSION (once)"
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi
# The daemon and the Postfix plugin; cargo-deb packages both (and strips
# them), without building anything itself.
cargo build --release --locked -p ramdir -p postfix-ramdir
cargo deb -p ramdir --no-build --strip --locked "$@"
