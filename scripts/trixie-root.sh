#!/bin/sh
# Builds (once per machine) the Debian 13 "trixie" root in which the
# integration tests run Postfix 3.10 and Dovecot 2.4 next to the host's
# Debian 12 Postfix 3.7 and Dovecot 2.3 (docs/notes: debian13.md).
#
# The root is cached at $RAMDIR_TRIXIE_ROOT (default /var/tmp/ramdir-trixie)
# and keyed by a stamp file, $ROOT/.ramdir-stamp, holding this script's
# version, the suite and the package list. A root whose stamp differs (or
# that has none: an interrupted build) is rebuilt from scratch. The build
# happens in $ROOT.build and is renamed into place only once complete, with
# the stamp written last, so a reader that sees the stamp sees a whole root.
#
# Any failure exits non-zero: the suite must not run (or skip) without it.
set -eu

ROOT=${RAMDIR_TRIXIE_ROOT:-/var/tmp/ramdir-trixie}
MIRROR=http://deb.debian.org/debian
SECURITY=http://deb.debian.org/debian-security
# What the integration tests run inside the root (Lua bridge needs
# dovecot-auth-lua, lua-socket, lua-cjson; swaks sends test mail; dovecot-dev
# gives the 2.4 headers libauthdb_ramdir.so is built against).
PKGS="postfix dovecot-core dovecot-imapd dovecot-lmtpd dovecot-auth-lua lua-socket lua-cjson swaks dovecot-dev"
# The mail user of the tests' Dovecot (mail_uid/mail_gid).
VMAIL_ID=5000
# Bump when the build steps change in a way the package list does not show.
VERSION=1

STAMP_TEXT="ramdir trixie root v$VERSION
suite: trixie trixie-updates trixie-security
packages: $PKGS
vmail: $VMAIL_ID:$VMAIL_ID"

die() {
    echo "trixie-root: $*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot, mount)"

stamp_ok() {
    [ -f "$ROOT/.ramdir-stamp" ] && [ "$(cat "$ROOT/.ramdir-stamp")" = "$STAMP_TEXT" ]
}

# Mount points below a directory (from the kernel's table, so a stale bind
# mount left by a killed test is seen too).
mounts_under() {
    awk -v d="$1" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts
}

# Removes a directory tree, but never through a mount point: unmounts what
# it can first, refuses if something stays mounted.
remove_tree() {
    dir=$1
    [ -e "$dir" ] || return 0
    for m in $(mounts_under "$dir" | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" || die "cannot unmount $m"
    done
    [ -z "$(mounts_under "$dir")" ] || die "still mounted under $dir"
    rm -rf --one-file-system "$dir"
}

# One builder at a time; a second caller waits and then finds the stamp.
mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
flock 9

if stamp_ok; then
    exit 0
fi

command -v debootstrap >/dev/null 2>&1 || die "debootstrap is not installed (scripts/install-test-deps.sh installs it)"

BUILD="$ROOT.build"
started=$(date +%s)
echo "trixie-root: building $ROOT (debootstrap trixie; 35-90 s and about 350 MB, once per machine)"
remove_tree "$BUILD"

cleanup() {
    if mountpoint -q "$BUILD/proc" 2>/dev/null; then umount "$BUILD/proc" || umount -l "$BUILD/proc"; fi
}
trap cleanup EXIT INT TERM

debootstrap --variant=minbase trixie "$BUILD" "$MIRROR" >"$ROOT.build.log" 2>&1 ||
    { tail -n 30 "$ROOT.build.log" >&2; die "debootstrap failed (log: $ROOT.build.log)"; }

cat >"$BUILD/etc/apt/sources.list" <<EOF
deb $MIRROR trixie main
deb $MIRROR trixie-updates main
deb $SECURITY trixie-security main
EOF

# No package may start a daemon inside the root.
printf '#!/bin/sh\nexit 101\n' >"$BUILD/usr/sbin/policy-rc.d"
chmod 755 "$BUILD/usr/sbin/policy-rc.d"

mount -t proc proc "$BUILD/proc"
echo "postfix postfix/main_mailer_type select No configuration" | chroot "$BUILD" debconf-set-selections
chroot "$BUILD" apt-get update -qq >>"$ROOT.build.log" 2>&1 ||
    { tail -n 30 "$ROOT.build.log" >&2; die "apt-get update failed in the root"; }
chroot "$BUILD" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    $PKGS >>"$ROOT.build.log" 2>&1 ||
    { tail -n 30 "$ROOT.build.log" >&2; die "apt-get install failed in the root"; }
chroot "$BUILD" apt-get clean
chroot "$BUILD" groupadd -g "$VMAIL_ID" vmail
chroot "$BUILD" useradd -u "$VMAIL_ID" -g "$VMAIL_ID" -M -d /nonexistent -s /usr/sbin/nologin vmail
umount "$BUILD/proc"
trap - EXIT INT TERM

# Check what the tests rely on before declaring the root good.
for f in /usr/sbin/postfix /usr/sbin/postmap /usr/sbin/postconf /usr/sbin/dovecot /usr/bin/doveadm \
    /usr/bin/swaks /usr/lib/dovecot/lmtp; do
    [ -x "$BUILD$f" ] || die "missing $f in the built root"
done
chroot "$BUILD" dovecot --version >/dev/null || die "dovecot does not run in the built root"

# Stamp last, atomically, then swap the whole root into place.
printf '%s\n' "$STAMP_TEXT" >"$BUILD/.ramdir-stamp.tmp"
mv "$BUILD/.ramdir-stamp.tmp" "$BUILD/.ramdir-stamp"
remove_tree "$ROOT"
mv "$BUILD" "$ROOT"
echo "trixie-root: built $ROOT in $(($(date +%s) - started)) s, $(du -sxh "$ROOT" | cut -f1)"
