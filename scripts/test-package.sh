#!/bin/bash
# The Debian package, tested for real on this (disposable, Debian 12) machine:
#  1. builds the .deb from this checkout (scripts/package.sh), twice: the
#     "previous" package (revision 0) and this one (revision 1), from the
#     same binaries, to test an upgrade;
#  2. checks its contents (dpkg -c / dpkg -e: files, modes, conffiles,
#     maintainer scripts), lintian (no error), systemd-analyze verify (no
#     output at all) and systemd-analyze security --offline (<= 2.0);
#  3. installs the previous package with dpkg -i (user, directories, modes),
#     starts the daemon the way ramdir.service does (as user ramdir, the
#     unit's ExecStart and UMask; systemd is not PID 1 here), and drives
#     Debian's own Postfix (the system instance, /etc/postfix, chrooted
#     smtpd) configured with README.Debian's lines: SMTP 250/550/452 through
#     the socketmap, policy and milter sockets in /var/spool/postfix/ramdir/,
#     and `postfix check` silent;
#  4. upgrades to this package: the edited conffile and the quota store are
#     kept, the daemon serves again;
#     check_ramdir as user nagios (OK, CRITICAL, UNKNOWN, LDAP outage);
#     [metrics] linted by promtool and scraped by Debian's prometheus;
#  5. the Dovecot auth module package dovecot-ramdir: contents, lintian,
#     Depends (the ABI of the headers it was built against); the Debian 12
#     build installed with dpkg -i next to ramdir, Debian's own Dovecot 2.3
#     (the system instance, /etc/dovecot) configured with README.Debian's
#     lines, started and stopped by this script: doveadm auth test right,
#     wrong and unknown, doveadm auth lookup, doveadm user; the Debian 13
#     build installed with ramdir in the Debian 13 root (dpkg -i in the
#     chroot), its Dovecot 2.4 configured with README.Debian's 2.4 lines,
#     the same checks; both purged;
#  6. purges ramdir: no file, directory, user or group of ramdir's is left.
# Whatever happens, the trap stops the daemons and Postfix and Dovecot it
# started, restores /etc/postfix/main.cf and Dovecot's 10-auth.conf (host
# and root) and purges the packages.
#
# It changes the system (a package, a user, Postfix's main.cf for the
# duration): run it as root on a test machine. `./scripts/test` runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
[ "$(id -u)" -eq 0 ] || { echo "test-package.sh: must run as root (it installs the package)" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
WORK=$(mktemp -d /tmp/ramdir-package-test.XXXXXX)
chmod 755 "$WORK"
LOG="$WORK/ramdir.log"
DAEMON_PID=""
POSTFIX_STARTED=""
MAINCF_SAVED=""
CREATED_NAGIOS=""
PROM_PID=""
DOVECOT_STARTED=""
DOVECOT_SAVED=""
ROOT_DOVECOT_STARTED=""
ROOT_DOVECOT_SAVED=""
ROOT_DAEMON_PID=""
ROOT_INSTALLED=""
TRIXIE=${RAMDIR_TRIXIE_ROOT:-/var/tmp/ramdir-trixie}
METRICS_PORT=9156
PROM_PORT=9157
FAILED=0

say() { echo "-- $*"; }
fail() { echo "FAIL: $*" >&2; FAILED=1; exit 1; }

# dpkg takes no lock timeout: retry while another dpkg/apt runs.
dpkg_retry() {
    local i
    for i in $(seq 1 60); do
        if dpkg "$@" 2>"$WORK/dpkg.err"; then cat "$WORK/dpkg.err" >&2; return 0; fi
        if grep -q "lock" "$WORK/dpkg.err"; then sleep 2; continue; fi
        cat "$WORK/dpkg.err" >&2
        return 1
    done
    return 1
}

stop_daemon() {
    if [ -n "$DAEMON_PID" ]; then
        kill -TERM "$DAEMON_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$DAEMON_PID" 2>/dev/null || true
        wait "$DAEMON_PID" 2>/dev/null || true
        DAEMON_PID=""
    fi
}

# Stop the Dovecot master whose pid file is $1 (and wait for it).
stop_dovecot() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

# Put back Dovecot's 10-auth.conf under $1 (/ or the root) and remove the
# files this script added.
restore_dovecot_conf() {
    cp -p "$2" "$1/etc/dovecot/conf.d/10-auth.conf"
    rm -f "$1/etc/dovecot/conf.d/auth-ramdir.conf.ext" "$1/etc/dovecot/conf.d/99-ramdir-package-test.conf" \
        "$1/var/log/dovecot-ramdir-test.log"
}

cleanup() {
    local rc=$?
    if [ -n "$PROM_PID" ]; then kill "$PROM_PID" 2>/dev/null || true; wait "$PROM_PID" 2>/dev/null || true; fi
    if [ $rc -ne 0 ] || [ $FAILED -ne 0 ]; then
        for l in /var/log/dovecot-ramdir-test.log "$TRIXIE/var/log/dovecot-ramdir-test.log"; do
            [ -f "$l" ] && { echo "== $l:" >&2; tail -n 30 "$l" >&2; }
        done
    fi
    if [ -n "$DOVECOT_STARTED" ]; then stop_dovecot /run/dovecot/master.pid; fi
    if [ -n "$DOVECOT_SAVED" ]; then restore_dovecot_conf "" "$WORK/10-auth.conf.orig"; fi
    if [ -n "$ROOT_DOVECOT_STARTED" ]; then stop_dovecot "$TRIXIE/run/dovecot/master.pid"; fi
    if [ -n "$ROOT_DOVECOT_SAVED" ]; then restore_dovecot_conf "$TRIXIE" "$WORK/10-auth.conf.root"; fi
    if [ -n "$ROOT_DAEMON_PID" ]; then
        kill -TERM "$ROOT_DAEMON_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$ROOT_DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$ROOT_DAEMON_PID" 2>/dev/null || true
        wait "$ROOT_DAEMON_PID" 2>/dev/null || true
    fi
    if [ -n "$ROOT_INSTALLED" ]; then
        rm -f "$TRIXIE/etc/ramdir/users.passwd" "$TRIXIE/etc/ramdir/aliases" "$TRIXIE/etc/ramdir/domains"
        chroot "$TRIXIE" dpkg --purge dovecot-ramdir ramdir >/dev/null 2>&1 || true
        rm -f "$TRIXIE"/tmp/ramdir_*.deb "$TRIXIE"/tmp/dovecot-ramdir_*.deb
    fi
    stop_daemon
    if [ -n "$POSTFIX_STARTED" ]; then
        postsuper -d ALL >/dev/null 2>&1 || true
        postfix stop >/dev/null 2>&1 || true
    fi
    if [ -n "$MAINCF_SAVED" ]; then
        if [ -e "$WORK/main.cf.orig" ]; then cp -p "$WORK/main.cf.orig" /etc/postfix/main.cf; else rm -f /etc/postfix/main.cf; fi
    fi
    rm -f /etc/ramdir/users.passwd /etc/ramdir/aliases /etc/ramdir/domains
    if dpkg-query -W -f='${Status}' dovecot-ramdir 2>/dev/null | grep -q "installed\|config-files\|half"; then
        dpkg_retry --purge dovecot-ramdir >/dev/null || true
    fi
    if dpkg-query -W -f='${Status}' ramdir 2>/dev/null | grep -q "installed\|config-files\|half"; then
        dpkg_retry --purge ramdir >/dev/null || true
    fi
    if [ $rc -ne 0 ] || [ $FAILED -ne 0 ]; then
        echo "== package test FAILED; ramdir log:" >&2
        tail -n 50 "$LOG" 2>/dev/null >&2 || true
        tail -n 30 /var/log/postfix-ramdir-test.log 2>/dev/null >&2 || true
    fi
    if [ -n "$CREATED_NAGIOS" ]; then
        deluser --quiet --system nagios >/dev/null 2>&1 || true
        delgroup --quiet --system nagios >/dev/null 2>&1 || true
    fi
    rm -f /var/log/postfix-ramdir-test.log
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT INT TERM

# --- tools the test needs (Debian packages; no daemon is started) --------
need=""
for p in lintian systemd prometheus curl man-db binutils; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need="$need $p"
done
if [ -n "$need" ]; then
    say "installing$need"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 $need >/dev/null
fi

# A leftover from an interrupted run would make the "fresh install" a lie.
if dpkg-query -W dovecot-ramdir >/dev/null 2>&1; then dpkg_retry --purge dovecot-ramdir >/dev/null; fi
if dpkg-query -W ramdir >/dev/null 2>&1; then dpkg_retry --purge ramdir >/dev/null; fi
[ -f "$TRIXIE/usr/include/dovecot/config.h" ] || fail "no Debian 13 root at $TRIXIE (scripts/trixie-root.sh): the Dovecot 2.4 package cannot be built or tested"
if chroot "$TRIXIE" dpkg-query -W dovecot-ramdir >/dev/null 2>&1; then chroot "$TRIXIE" dpkg --purge dovecot-ramdir >/dev/null; fi
if chroot "$TRIXIE" dpkg-query -W ramdir >/dev/null 2>&1; then chroot "$TRIXIE" dpkg --purge ramdir >/dev/null; fi

# --- 1. build -------------------------------------------------------------
say "building the packages"
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
./scripts/package.sh --deb-version "$VERSION-0" --output "$WORK/prev/" >/dev/null
./scripts/package.sh --output "$WORK/cur/" >/dev/null
PREV=$(ls "$WORK"/prev/ramdir_*.deb)
DEB=$(ls "$WORK"/cur/ramdir_*.deb)
./scripts/package.sh dovecot --output "$WORK/dovecot/" >/dev/null
MOD23=$(ls "$WORK"/dovecot/dovecot-ramdir_*+deb12_*.deb)
MOD24=$(ls "$WORK"/dovecot/dovecot-ramdir_*+deb13_*.deb)
say "built $(basename "$PREV"), $(basename "$DEB"), $(basename "$MOD23") and $(basename "$MOD24")"

# --- 2. contents, lintian, units ------------------------------------------
say "dpkg -c / dpkg -e"
dpkg -c "$DEB" | awk '{print $1, $2, $6}' >"$WORK/contents"
expect_file() { # mode owner path
    grep -qxF -e "$1 $2 ./$3" "$WORK/contents" || { cat "$WORK/contents" >&2; fail "package lacks $1 $2 $3"; }
}
expect_file -rwxr-xr-x 0/0 usr/sbin/ramdir
expect_file -rwxr-xr-x 0/0 usr/lib/postfix/postfix-ramdir.so
expect_file -rw-r--r-- 0/0 etc/postfix/dynamicmaps.cf.d/ramdir
expect_file -rw-r--r-- 0/0 etc/postfix/postfix-files.d/ramdir.files
expect_file -rw-r--r-- 0/0 etc/ramdir/ramdir.toml
expect_file -rw-r--r-- 0/0 usr/share/ramdir/ramdir-auth.lua
expect_file -rw-r--r-- 0/0 usr/lib/tmpfiles.d/ramdir.conf
expect_file -rw-r--r-- 0/0 usr/share/doc/ramdir/README.Debian
expect_file -rw-r--r-- 0/0 usr/share/doc/ramdir/copyright
expect_file -rw-r--r-- 0/0 usr/share/doc/ramdir/changelog.Debian.gz
expect_file -rwxr-xr-x 0/0 usr/lib/nagios/plugins/check_ramdir
grep -q "usr/share/man/man8/ramdir.8" "$WORK/contents" || fail "no ramdir(8)"
grep -q "usr/share/man/man5/ramdir.toml.5" "$WORK/contents" || fail "no ramdir.toml(5)"
expect_file -rw-r--r-- 0/0 etc/nagios-plugins/config/ramdir.cfg
expect_file -rw-r--r-- 0/0 usr/share/doc/ramdir/examples/ramdir.socket
UNIT_PATH=$(awk '$3 ~ /lib\/systemd\/system\/ramdir.service$/ { sub(/^\.\//, "", $3); print $3 }' "$WORK/contents" | head -n 1)
[ -n "$UNIT_PATH" ] || fail "no ramdir.service in the package"
mkdir "$WORK/ctl"
dpkg -e "$DEB" "$WORK/ctl"
for f in /etc/ramdir/ramdir.toml /etc/postfix/dynamicmaps.cf.d/ramdir /etc/postfix/postfix-files.d/ramdir.files; do
    grep -qxF "$f" "$WORK/ctl/conffiles" || fail "$f is not a conffile"
done
grep -q "adduser --quiet --system --group" "$WORK/ctl/postinst" || fail "postinst does not create the user"
grep -q "install -d -o \"\$2\" -g \"\$3\"" "$WORK/ctl/postinst" || fail "postinst does not create the directories"
grep -q "_dh_action=restart" "$WORK/ctl/postinst" || fail "postinst does not restart the unit on upgrade"
grep -q "rm -rf /var/lib/ramdir /var/spool/postfix/ramdir" "$WORK/ctl/postrm" || fail "postrm purge does not remove the state"
grep -q "deluser" "$WORK/ctl/postrm" || fail "postrm purge does not remove the user"
grep -q "^Depends:.*adduser" "$WORK/ctl/control" || fail "no Depends: adduser"
# The upgrade restarts the service once: prerm does not stop it on upgrade.
if grep -q "deb-systemd-invoke stop" "$WORK/ctl/prerm" 2>/dev/null; then
    grep -B2 "deb-systemd-invoke stop" "$WORK/ctl/prerm" | grep -qF '"$1" = remove' || fail "prerm stops the unit on upgrade too"
fi
mkdir "$WORK/x"
dpkg -x "$DEB" "$WORK/x"
for b in usr/sbin/ramdir usr/lib/postfix/postfix-ramdir.so; do
    ! readelf -S "$WORK/x/$b" | grep -q '\.symtab' || fail "$b is not stripped"
done

say "man --warnings"
for m in "$WORK"/x/usr/share/man/man*/*; do
    w=$(LC_ALL=C.UTF-8 MANROFFSEQ='' MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z "$m" 2>&1 >/dev/null)
    [ -z "$w" ] || fail "man --warnings $m: $w"
done

say "lintian"
# Warnings kept: initial-upload-closes-no-bugs (this package is not
# uploaded to Debian, so its changelog closes no ITP bug).
lintian --fail-on error --tag-display-limit 0 "$DEB" | tee "$WORK/lintian" || fail "lintian reports errors"

say "systemd-analyze verify"
UNIT="$WORK/unit/ramdir.service"
mkdir -p "$WORK/unit"
sed -e "s#/usr/sbin/ramdir#$WORK/x/usr/sbin/ramdir#g" "$WORK/x/$UNIT_PATH" >"$UNIT"
(cd "$WORK/unit" && MANPATH="$WORK/x/usr/share/man" SYSTEMD_LOG_COLOR=0 systemd-analyze verify ./ramdir.service) >"$WORK/verify" 2>&1 || true
if [ -s "$WORK/verify" ]; then cat "$WORK/verify" >&2; fail "systemd-analyze verify printed something"; fi
# The socket-activation example, with the service it starts.
cp "$WORK/x/usr/share/doc/ramdir/examples/ramdir.socket" "$WORK/unit/"
(cd "$WORK/unit" && MANPATH="$WORK/x/usr/share/man" SYSTEMD_LOG_COLOR=0 systemd-analyze verify ./ramdir.socket ./ramdir.service) >"$WORK/verify" 2>&1 || true
if [ -s "$WORK/verify" ]; then cat "$WORK/verify" >&2; fail "systemd-analyze verify ramdir.socket printed something"; fi

say "systemd-analyze security --offline=true"
systemd-analyze security --offline=true --threshold=20 "$UNIT" >"$WORK/security" 2>&1 || { cat "$WORK/security" >&2; fail "exposure above 2.0"; }
tail -n 1 "$WORK/security"

say "dovecot-ramdir: dpkg -c / dpkg -e, Depends, lintian"
# $1 the package, $2 the root whose Dovecot it is for ("" or the Debian 13
# root): the module where Dovecot loads auth modules, stripped, exporting
# what Dovecot's module loader looks for; Depends on the ABI the headers it
# was built against name (as dovecot-core of that root provides it), on a
# dovecot-core that root satisfies, and on the ramdir of this version.
check_module_deb() {
    local deb=$1 root=$2 abi depends installed
    dpkg -c "$deb" | awk '{print $1, $2, $6}' >"$WORK/mcontents"
    for f in "-rw-r--r-- 0/0 ./usr/lib/dovecot/modules/auth/libauthdb_ramdir.so" \
        "-rw-r--r-- 0/0 ./usr/share/doc/dovecot-ramdir/copyright" \
        "-rw-r--r-- 0/0 ./usr/share/doc/dovecot-ramdir/changelog.Debian.gz"; do
        grep -qxF -e "$f" "$WORK/mcontents" || { cat "$WORK/mcontents" >&2; fail "$(basename "$deb") lacks $f"; }
    done
    rm -rf "$WORK/mx"
    mkdir "$WORK/mx"
    dpkg -x "$deb" "$WORK/mx"
    ! readelf -S "$WORK/mx/usr/lib/dovecot/modules/auth/libauthdb_ramdir.so" | grep -q '\.symtab' || fail "$deb: module not stripped"
    nm -D --defined-only "$WORK/mx/usr/lib/dovecot/modules/auth/libauthdb_ramdir.so" | awk '{print $3}' >"$WORK/msyms"
    for s in authdb_ramdir_init authdb_ramdir_deinit authdb_ramdir_version; do
        grep -qx "$s" "$WORK/msyms" || fail "$deb: module does not export $s"
    done
    depends=$(dpkg-deb -f "$deb" Depends)
    echo "   $(basename "$deb"): Depends: $depends"
    abi="dovecot-abi-$(cat "$root/usr/share/dovecot/dovecot-abi")"
    chroot "${root:-/}" dpkg-query -W -f='${Provides}\n' dovecot-core | tr ',' '\n' | sed 's/^ *//; s/ .*//' | grep -qxF "$abi" \
        || fail "dovecot-core in ${root:-/} does not provide $abi"
    echo "$depends" | tr ',' '\n' | sed 's/^ *//' >"$WORK/mdeps"
    grep -qxF "$abi" "$WORK/mdeps" || fail "$deb does not depend on $abi (the ABI of the headers it was built against)"
    grep -qxF "ramdir (>= $VERSION)" "$WORK/mdeps" || fail "$deb does not depend on ramdir (>= $VERSION)"
    grep -qF "ramdir (<< " "$WORK/mdeps" || fail "$deb does not depend on ramdir (<< the next version)"
    installed=$(chroot "${root:-/}" dpkg-query -W -f='${Version}' dovecot-core)
    min=$(sed -n 's/^dovecot-core (>= \(.*\))$/\1/p' "$WORK/mdeps")
    [ -n "$min" ] || fail "$deb has no versioned Depends on dovecot-core"
    dpkg --compare-versions "$installed" ge "$min" || fail "$deb wants dovecot-core >= $min, ${root:-/} has $installed"
    rm -rf "$WORK/mctl"
    dpkg -e "$deb" "$WORK/mctl"
    grep -q "adduser --quiet ramdir dovecot" "$WORK/mctl/postinst" || fail "$deb: postinst does not add ramdir to group dovecot"
    grep -q "deluser --quiet ramdir dovecot" "$WORK/mctl/postrm" || fail "$deb: postrm does not take ramdir out of group dovecot"
    grep -qxF "adduser" "$WORK/mdeps" || fail "$deb: no Depends: adduser"
    # Warning kept: initial-upload-closes-no-bugs (as for ramdir).
    lintian --fail-on error --tag-display-limit 0 "$deb" || fail "lintian reports errors on $deb"
}
check_module_deb "$MOD23" ""
check_module_deb "$MOD24" "$TRIXIE"

# --- 3. install for real ----------------------------------------------------
find /etc /usr /var /run -xdev \( -path /var/tmp -o -path /var/cache \) -prune -o -path '*ramdir*' -print 2>/dev/null | { grep -v "^$WORK" || true; } | sort >"$WORK/before"
say "dpkg -i $(basename "$PREV") (fresh install)"
dpkg_retry -i "$PREV" >/dev/null
getent passwd ramdir | grep -q ":/var/lib/ramdir:/usr/sbin/nologin$" || fail "user ramdir: $(getent passwd ramdir)"
getent group ramdir >/dev/null || fail "no group ramdir"
[ "$(stat -c '%U:%G %a' /var/lib/ramdir)" = "ramdir:ramdir 750" ] || fail "/var/lib/ramdir: $(stat -c '%U:%G %a' /var/lib/ramdir)"
[ "$(stat -c '%U:%G %a' /var/spool/postfix/ramdir)" = "ramdir:postfix 750" ] || fail "/var/spool/postfix/ramdir: $(stat -c '%U:%G %a' /var/spool/postfix/ramdir)"
[ "$(stat -c '%U:%G %a' /etc/ramdir/ramdir.toml)" = "root:root 644" ] || fail "/etc/ramdir/ramdir.toml mode"
[ "$(stat -c '%U:%G %a' /usr/lib/postfix/postfix-ramdir.so)" = "root:root 755" ] || fail "postfix-ramdir.so mode"
# The shipped configuration is valid and starts (stats only).
setpriv --reuid=ramdir --regid=ramdir --init-groups ramdir check-config >/dev/null || fail "shipped config does not check"

UNIT_INSTALLED=/$UNIT_PATH
[ -f "$UNIT_INSTALLED" ] || UNIT_INSTALLED=/lib/systemd/system/ramdir.service
EXECSTART=$(sed -n 's/^ExecStart=//p' "$UNIT_INSTALLED")
UNIT_UMASK=$(sed -n 's/^UMask=//p' "$UNIT_INSTALLED")
[ -n "$EXECSTART" ] && [ -n "$UNIT_UMASK" ] || fail "cannot read ExecStart/UMask from $UNIT_INSTALLED"

# Start the daemon as ramdir.service would: RuntimeDirectory=ramdir (0755),
# User=/Group=ramdir, UMask, NoNewPrivileges, no capabilities.
start_daemon() {
    install -d -o ramdir -g ramdir -m 0755 /run/ramdir
    # shellcheck disable=SC2086
    (umask "$UNIT_UMASK"; exec setpriv --reuid=ramdir --regid=ramdir --init-groups \
        --no-new-privs --inh-caps=-all --bounding-set=-all $EXECSTART) >>"$LOG" 2>&1 &
    DAEMON_PID=$!
    local want
    for want in "$@"; do
        for _ in $(seq 1 300); do
            [ -S "$want" ] && break
            kill -0 "$DAEMON_PID" 2>/dev/null || fail "ramdir exited at start"
            sleep 0.1
        done
        [ -S "$want" ] || fail "ramdir did not create $want"
    done
    [ "$(stat -c %U /proc/$DAEMON_PID)" = ramdir ] || fail "daemon does not run as ramdir"
}

say "shipped configuration: stats only"
start_daemon /run/ramdir/stats.sock
ramdir stats >/dev/null || fail "ramdir stats"
stop_daemon
[ ! -e /run/ramdir/stats.sock ] || fail "stats socket left behind"

# The operator's edit: README.Debian's ramdir.toml, with the directory files.
readme_block() { # the indented block after the heading line $1
    awk -v h="$1" '
        $0 == h { on = 1; getline; next }
        on && /^[^ ]/ && NF { if (seen) exit }
        on && /^  / { seen = 1; sub(/^  /, ""); print; next }
        on && seen && !NF { print }' /usr/share/doc/ramdir/README.Debian
}
# The first indented block after the line ending in $2, in the section $1.
readme_block_after() {
    awk -v h="$1" -v l="$2" '
        $0 == h { sec = 1; next }
        sec && !on && length($0) >= length(l) && substr($0, length($0) - length(l) + 1) == l { on = 1; next }
        on && /^  / { seen = 1; sub(/^  /, ""); print; next }
        on && seen && !NF { print; next }
        on && seen { exit }' /usr/share/doc/ramdir/README.Debian
}
readme_block "Postfix: /etc/ramdir/ramdir.toml" >"$WORK/ramdir.toml"
grep -q '^\[socketmap\]' "$WORK/ramdir.toml" || fail "README.Debian's ramdir.toml block not found"
cp "$WORK/ramdir.toml" /etc/ramdir/ramdir.toml
cat >/etc/ramdir/users.passwd <<'EOF'
alice@example.org:{PLAIN}secret:5000:5000::/var/vmail/example.org/alice::
small@example.org:{PLAIN}secret:5000:5000::/var/vmail/example.org/small::userdb_quota_rule=*:storage=1K
EOF
printf 'info@example.org alice@example.org\n' >/etc/ramdir/aliases
printf 'example.org OK\n' >/etc/ramdir/domains
# Prometheus metrics, opted in.
printf '\n[metrics]\nlisten = "127.0.0.1:%s"\n' "$METRICS_PORT" >>/etc/ramdir/ramdir.toml
setpriv --reuid=ramdir --regid=ramdir --init-groups ramdir check-config >/dev/null || fail "README.Debian's config does not check"

# Debian's own Postfix, system instance, with README.Debian's main.cf lines.
[ -e /etc/postfix/main.cf ] && cp -p /etc/postfix/main.cf "$WORK/main.cf.orig"
MAINCF_SAVED=1
{
    cat <<'EOF'
# ramdir package test (scripts/test-package.sh); restored afterwards.
compatibility_level = 3.6
myhostname = mx.ramdir-test.invalid
mydestination =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 192.0.2.1/32
maillog_file = /var/log/postfix-ramdir-test.log
EOF
    readme_block "Postfix: /etc/postfix/main.cf"
} >/etc/postfix/main.cf
grep -q "unix:ramdir/socketmap" /etc/postfix/main.cf || fail "README.Debian's main.cf block not found"
# Debian's master.cf runs smtpd chrooted (the 5th field is y or -, whose
# Debian default is y).
awk '$1 == "smtp" && $2 == "inet" { print $5 }' /etc/postfix/master.cf | grep -qx 'y\|-' || fail "smtpd is not chrooted in master.cf"
if ss -ltn | awk '{print $4}' | grep -qx '127.0.0.1:25\|0.0.0.0:25\|\*:25'; then fail "port 25 is busy"; fi

say "ramdir as the unit starts it, Postfix with README.Debian's main.cf"
start_daemon /var/spool/postfix/ramdir/socketmap /var/spool/postfix/ramdir/policy /var/spool/postfix/ramdir/milter
for s in socketmap policy milter; do
    [ "$(stat -c '%U %a' /var/spool/postfix/ramdir/$s)" = "ramdir 666" ] || fail "socket $s: $(stat -c '%U %a' /var/spool/postfix/ramdir/$s)"
done
out=$(postfix check 2>&1) || fail "postfix check failed: $out"
[ -z "$out" ] || fail "postfix check is not silent: $out"
/usr/lib/postfix/configure-instance.sh - >/dev/null 2>&1 || true
postfix start >/dev/null 2>&1 || fail "postfix start"
POSTFIX_STARTED=1
for _ in $(seq 1 100); do ss -ltn | grep -q '127.0.0.1:25 ' && break; sleep 0.1; done

# One SMTP session; prints each reply's last line (code and text).
smtp() {
    local line
    exec 3<>/dev/tcp/127.0.0.1/25
    reply() {
        while IFS= read -r -t 60 line <&3; do
            line=${line%$'\r'}
            case "$line" in [0-9][0-9][0-9]-*) continue ;; esac
            echo "$line"
            return
        done
        echo "TIMEOUT"
    }
    reply
    for c in "$@"; do printf '%s\r\n' "$c" >&3; reply; done
    exec 3<&- 3>&-
}
say "SMTP through the chrooted smtpd"
smtp "EHLO client.test" "MAIL FROM:<sender@outside.test> SIZE=100" "RCPT TO:<alice@example.org>" \
    "RCPT TO:<info@example.org>" "RCPT TO:<nobody@example.org>" "RSET" \
    "MAIL FROM:<sender@outside.test> SIZE=100000" "RCPT TO:<small@example.org>" "QUIT" >"$WORK/smtp"
cat "$WORK/smtp"
mapfile -t R <"$WORK/smtp"
case "${R[0]}" in 220*) ;; *) fail "banner: ${R[0]} (milter or smtpd failure?)" ;; esac
case "${R[2]}" in 250*) ;; *) fail "MAIL: ${R[2]}" ;; esac
case "${R[3]}" in "250 2.1.5"*) ;; *) fail "alice (socketmap found): ${R[3]}" ;; esac
case "${R[4]}" in "250 2.1.5"*) ;; *) fail "info alias (socketmap): ${R[4]}" ;; esac
case "${R[5]}" in "550 5.1.1"*) ;; *) fail "nobody (socketmap NOTFOUND): ${R[5]}" ;; esac
case "${R[8]}" in "452 4.2.2"*) ;; *) fail "small over quota (policy): ${R[8]}" ;; esac
# The milter was consulted (default_action=tempfail would have refused the
# session otherwise) and nothing went wrong on the way.
if grep -E "warning|error|fatal" /var/log/postfix-ramdir-test.log | grep -Ei "ramdir|milter|socketmap|policy"; then
    fail "Postfix logged problems reaching ramdir"
fi
# Nagios: the installed check_ramdir, run as user nagios (as NRPE runs it).
say "check_ramdir as user nagios"
if ! getent passwd nagios >/dev/null; then
    adduser --quiet --system --group --no-create-home nagios
    CREATED_NAGIOS=1
fi
check() { # expected-exit args...
    local want=$1 rc=0
    shift
    setpriv --reuid=nagios --regid=nagios --init-groups /usr/lib/nagios/plugins/check_ramdir "$@" >"$WORK/check" 2>&1 || rc=$?
    echo "   [exit $rc] $(cat "$WORK/check")"
    [ "$rc" -eq "$want" ] || fail "check_ramdir $*: exit $rc, want $want"
    [ "$(wc -l <"$WORK/check")" -eq 1 ] || fail "check_ramdir $*: not one line"
}
check 0 --min-users 1 -w 600 -c 1800
grep -q "^RAMDIR OK - 2 users, 1 aliases, generation [0-9]* | users=2;;1:;0 .*temp=[0-9]*c" "$WORK/check" || fail "OK line"
check 2 --min-users 3
grep -q "^RAMDIR CRITICAL - 2 users, fewer than 3" "$WORK/check" || fail "min-users line"
kill -STOP "$DAEMON_PID"
check 3 -t 1
kill -CONT "$DAEMON_PID"
grep -q "^RAMDIR UNKNOWN - .*1s" "$WORK/check" || fail "timeout line"
rc=0; setpriv --reuid=nagios --regid=nagios --init-groups /usr/lib/nagios/plugins/check_ramdir -h >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 3 ] || fail "check_ramdir -h: exit $rc, want 3"
rc=0; setpriv --reuid=nagios --regid=nagios --init-groups /usr/lib/nagios/plugins/check_ramdir --warning nonsense >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 3 ] || fail "check_ramdir --warning nonsense: exit $rc, want 3"

postfix stop >/dev/null 2>&1 || true
POSTFIX_STARTED=""

# Prometheus: promtool lints the document; Debian's prometheus scrapes it
# and a PromQL query sees the socketmap requests Postfix just made (Postfix
# has closed its connections, so every request is counted).
say "Prometheus"
curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" >"$WORK/metrics" || fail "GET /metrics"
promtool check metrics <"$WORK/metrics" || fail "promtool check metrics"
cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: ramdir
    static_configs:
      - targets: ["127.0.0.1:$METRICS_PORT"]
EOF
promtool check config "$WORK/prometheus.yml" >/dev/null || fail "prometheus.yml"
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
PROM_PID=$!
value=""
for _ in $(seq 1 120); do
    value=$(curl -fsS "http://127.0.0.1:$PROM_PORT/api/v1/query" \
        --data-urlencode 'query=ramdir_requests_total{listener="socketmap",job="ramdir"}' 2>/dev/null \
        | grep -o '"value":\[[0-9.]*,"[0-9]*"\]' | grep -o '"[0-9]*"\]' | tr -d '"]') || true
    [ -n "$value" ] && break
    sleep 0.5
done
echo "   PromQL ramdir_requests_total{listener=\"socketmap\"} = ${value:-none}"
[ -n "$value" ] && [ "$value" -gt 0 ] || { tail -n 20 "$WORK/prometheus.log" >&2; fail "Prometheus did not get the request counter"; }
kill "$PROM_PID"; wait "$PROM_PID" 2>/dev/null || true; PROM_PID=""
stop_daemon
for s in socketmap policy milter; do [ ! -e /var/spool/postfix/ramdir/$s ] || fail "socket $s left behind"; done
check 2
grep -q "^RAMDIR CRITICAL - ramdir is not running" "$WORK/check" || fail "stopped line"

say "LDAP outage (LDAP on a closed port)"
cp /etc/ramdir/ramdir.toml "$WORK/ramdir.toml.edited"
printf '\n[ldap]\nurl = "ldap://127.0.0.1:9"\nbase = "dc=example,dc=org"\ntimeout_secs = 1\n' >>/etc/ramdir/ramdir.toml
start_daemon /var/spool/postfix/ramdir/socketmap /run/ramdir/stats.sock
sleep 2
check 1 -w 3600 -c 7200
grep -q "^RAMDIR WARNING - not authoritative.*LDAP disconnected.*ldap_lag=[0-9]*s;3600;7200;0" "$WORK/check" || fail "LDAP outage line"
check 2 -w 0 -c 0
stop_daemon
cp "$WORK/ramdir.toml.edited" /etc/ramdir/ramdir.toml
[ -f /var/lib/ramdir/quota.redb ] || fail "no quota store in /var/lib/ramdir"
STORE_SUM=$(md5sum </var/lib/ramdir/quota.redb)
CONF_SUM=$(md5sum </etc/ramdir/ramdir.toml)

# --- 4. upgrade -------------------------------------------------------------
say "upgrade: dpkg -i $(basename "$DEB")"
dpkg_retry -i "$DEB" >/dev/null
[ "$(dpkg-query -W -f='${Version}' ramdir)" = "$(dpkg-deb -f "$DEB" Version)" ] || fail "not upgraded"
[ "$(md5sum </etc/ramdir/ramdir.toml)" = "$CONF_SUM" ] || fail "upgrade changed the edited conffile"
[ "$(md5sum </var/lib/ramdir/quota.redb)" = "$STORE_SUM" ] || fail "upgrade changed the quota store"
[ "$(stat -c '%U:%G %a' /var/spool/postfix/ramdir)" = "ramdir:postfix 750" ] || fail "upgrade changed the socket directory"
start_daemon /var/spool/postfix/ramdir/socketmap
(cd /var/spool/postfix && postmap -q alice@example.org socketmap:unix:ramdir/socketmap:mailboxes) | grep -q . \
    || fail "after the upgrade: postmap -q through the socketmap"
stop_daemon

# --- 5. the Dovecot auth module ------------------------------------------
# Configure the Dovecot under $1 ("" or the Debian 13 root) with the lines
# of README.Debian's section $2: its 10-auth.conf includes
# auth-ramdir.conf.ext in place of auth-system.conf.ext, and that file is
# README.Debian's. The test's own additions (loopback only, a log file of
# its own) go to a conf.d file removed afterwards.
configure_dovecot() {
    local root=$1 section=$2 include
    include=$(readme_block_after "$section" '"!include auth-system.conf.ext":' | sed '/^$/d')
    [ "$include" = "!include auth-ramdir.conf.ext" ] || fail "README.Debian's 10-auth.conf line in $section: $include"
    grep -qx '!include auth-system.conf.ext' "$root/etc/dovecot/conf.d/10-auth.conf" || fail "$root/etc/dovecot/conf.d/10-auth.conf has no auth-system include"
    sed -i "s|^!include auth-system.conf.ext\$|$include|" "$root/etc/dovecot/conf.d/10-auth.conf"
    readme_block_after "$section" "/etc/dovecot/conf.d/auth-ramdir.conf.ext:" >"$root/etc/dovecot/conf.d/auth-ramdir.conf.ext"
    grep -q "driver = ramdir" "$root/etc/dovecot/conf.d/auth-ramdir.conf.ext" || fail "README.Debian's auth-ramdir.conf.ext in $section"
    cat >"$root/etc/dovecot/conf.d/99-ramdir-package-test.conf" <<'EOF'
# scripts/test-package.sh: loopback only, a log of its own (removed afterwards).
listen = 127.0.0.1
log_path = /var/log/dovecot-ramdir-test.log
EOF
}

# doveadm (in $1: "" or the root) through the module: right, wrong and
# unknown passwords, the credentials lookup, userdb and its iteration.
check_doveadm() {
    local root=$1 out rc
    da() { if [ -n "$root" ]; then chroot "$root" doveadm "$@"; else doveadm "$@"; fi; }
    out=$(da auth test alice@example.org secret 2>&1) || fail "doveadm auth test right password: $out"
    echo "$out" | grep -q "auth succeeded" || fail "right password: $out"
    echo "   auth test alice@example.org (right): $(echo "$out" | head -n 1)"
    rc=0; out=$(da auth test nobody@example.org secret 2>&1) || rc=$?
    [ $rc -ne 0 ] && echo "$out" | grep -q "auth failed" && ! echo "$out" | grep -qi "temp_fail\|internal" || fail "unknown user: $out"
    out=$(da auth lookup alice@example.org 2>&1) || fail "doveadm auth lookup: $out"
    echo "$out" | grep -q "passdb: alice@example.org" || fail "doveadm auth lookup (passdb credentials): $out"
    echo "   auth lookup alice@example.org: $(echo "$out" | tr -s ' \n' ' ')"
    out=$(da user alice@example.org 2>&1) || fail "doveadm user: $out"
    echo "$out" | grep -Eq "^[[:space:]]*uid[[:space:]]+5000$" || fail "doveadm user uid: $out"
    echo "$out" | grep -Eq "^[[:space:]]*home[[:space:]]+/var/vmail/example.org/alice$" || fail "doveadm user home: $out"
    echo "   doveadm user alice@example.org: $(echo "$out" | tr -s ' \n' ' ')"
    out=$(da user small@example.org 2>&1) || fail "doveadm user small: $out"
    echo "$out" | grep -Eq "quota_rule[[:space:]]+\*:storage=1024B|quota_storage_size[[:space:]]+1024B" || fail "doveadm user small quota: $out"
    out=$(da user '*' 2>&1 | sort | tr '\n' ' ') || true
    [ "$out" = "alice@example.org small@example.org " ] || fail "doveadm user '*': $out"
    # Last: a failed login (Dovecot delays its answer by auth_failure_delay).
    rc=0; out=$(da auth test alice@example.org wrong 2>&1) || rc=$?
    [ $rc -ne 0 ] && echo "$out" | grep -q "auth failed" && ! echo "$out" | grep -qi "temp_fail\|internal" || fail "wrong password: $out"
    echo "   auth test alice@example.org (wrong): $(echo "$out" | head -n 1)"
}

# Wait for file $1 (the map's control file, a socket) to appear.
wait_file() {
    for _ in $(seq 1 300); do [ -e "$1" ] && return 0; sleep 0.1; done
    fail "$1 did not appear"
}

for port in 143 993; do
    if ss -ltn | awk '{print $4}' | grep -qx "127.0.0.1:$port\|0.0.0.0:$port\|\*:$port\|\[::\]:$port"; then fail "port $port is busy"; fi
done
[ ! -e /run/dovecot/master.pid ] || ! kill -0 "$(cat /run/dovecot/master.pid)" 2>/dev/null || fail "Debian's Dovecot is already running"

say "dovecot-ramdir for Dovecot 2.3: dpkg -i $(basename "$MOD23")"
dpkg_retry -i "$MOD23" >/dev/null
[ "$(stat -c '%U:%G %a' /usr/lib/dovecot/modules/auth/libauthdb_ramdir.so)" = "root:root 644" ] || fail "module mode"
id -nG ramdir | tr ' ' '\n' | grep -qx dovecot || fail "postinst did not add ramdir to group dovecot: $(id -nG ramdir)"
S23="Dovecot 2.3 (Debian 12): the auth module (package dovecot-ramdir)"
readme_block_after "$S23" "ramdir.toml:" >"$WORK/dovecot_map.toml"
grep -q '^\[dovecot_map\]' "$WORK/dovecot_map.toml" || fail "README.Debian's [dovecot_map] block not found"
{ echo; cat "$WORK/dovecot_map.toml"; } >>/etc/ramdir/ramdir.toml
setpriv --reuid=ramdir --regid=ramdir --init-groups ramdir check-config >/dev/null || fail "README.Debian's [dovecot_map] does not check"
cp -p /etc/dovecot/conf.d/10-auth.conf "$WORK/10-auth.conf.orig"
DOVECOT_SAVED=1
configure_dovecot "" "$S23"
start_daemon /var/spool/postfix/ramdir/socketmap
wait_file /run/ramdir/dovecot/control
[ "$(stat -c '%U:%G %a' /run/ramdir/dovecot)" = "ramdir:dovecot 2750" ] || fail "map directory: $(stat -c '%U:%G %a' /run/ramdir/dovecot)"
for f in /run/ramdir/dovecot/*; do
    [ "$(stat -c '%G %A' "$f")" = "dovecot -rw-r-----" ] || fail "$f: $(stat -c '%G %A' "$f")"
done
say "Debian's Dovecot 2.3 with README.Debian's lines"
out=$(doveconf -n 2>&1) || fail "doveconf -n: $out"
echo "$out" | grep -q "driver = ramdir" || fail "doveconf -n shows no driver = ramdir"
DOVECOT_STARTED=1
dovecot || fail "dovecot did not start"
wait_file /run/dovecot/auth-client
check_doveadm ""
# The module is what answered: loaded in this Dovecot's auth process.
AUTH_PID=$(pgrep -P "$(cat /run/dovecot/master.pid)" -x auth) || fail "no auth process"
grep -q "/usr/lib/dovecot/modules/auth/libauthdb_ramdir.so" "/proc/$AUTH_PID/maps" || fail "auth $AUTH_PID has not loaded the module"
if grep -E "Fatal|Panic|Error" /var/log/dovecot-ramdir-test.log; then fail "Dovecot logged errors"; fi
stop_dovecot /run/dovecot/master.pid
DOVECOT_STARTED=""
stop_daemon
restore_dovecot_conf "" "$WORK/10-auth.conf.orig"
DOVECOT_SAVED=""
say "dpkg --purge dovecot-ramdir"
dpkg_retry --purge dovecot-ramdir >/dev/null
[ ! -e /usr/lib/dovecot/modules/auth/libauthdb_ramdir.so ] || fail "purge left the module"
! id -nG ramdir | tr ' ' '\n' | grep -qx dovecot || fail "postrm left ramdir in group dovecot"

# Dovecot 2.4: the Debian 13 build, installed in the Debian 13 root with the
# ramdir it depends on (dpkg -i in the chroot), run there with README.Debian's
# 2.4 lines.
say "dovecot-ramdir for Dovecot 2.4: dpkg -i in the Debian 13 root"
cp "$DEB" "$MOD24" "$TRIXIE/tmp/"
ROOT_INSTALLED=1
chroot "$TRIXIE" dpkg -i "/tmp/$(basename "$DEB")" "/tmp/$(basename "$MOD24")" >"$WORK/root-dpkg.log" 2>&1 \
    || { cat "$WORK/root-dpkg.log" >&2; fail "dpkg -i in the Debian 13 root"; }
for p in ramdir dovecot-ramdir; do
    chroot "$TRIXIE" dpkg-query -W -f='${Status}' "$p" | grep -qx "install ok installed" || fail "$p not installed in the root"
done
chroot "$TRIXIE" id -nG ramdir | tr ' ' '\n' | grep -qx dovecot || fail "root: ramdir not in group dovecot"
S24="Dovecot 2.4 (Debian 13): the auth module (package dovecot-ramdir)"
{
    readme_block "Postfix: /etc/ramdir/ramdir.toml"
    echo
    readme_block_after "$S23" "ramdir.toml:"
} >"$TRIXIE/etc/ramdir/ramdir.toml"
cp /etc/ramdir/users.passwd /etc/ramdir/aliases /etc/ramdir/domains "$TRIXIE/etc/ramdir/"
cp -p "$TRIXIE/etc/dovecot/conf.d/10-auth.conf" "$WORK/10-auth.conf.root"
ROOT_DOVECOT_SAVED=1
configure_dovecot "$TRIXIE" "$S24"
install -d -o "$(chroot "$TRIXIE" id -u ramdir)" -g "$(chroot "$TRIXIE" id -g ramdir)" -m 0755 "$TRIXIE/run/ramdir"
# shellcheck disable=SC2086
(umask "$UNIT_UMASK"; exec chroot "$TRIXIE" setpriv --reuid=ramdir --regid=ramdir --init-groups \
    --no-new-privs --inh-caps=-all --bounding-set=-all $EXECSTART) >>"$LOG" 2>&1 &
ROOT_DAEMON_PID=$!
wait_file "$TRIXIE/run/ramdir/dovecot/control"
chroot "$TRIXIE" doveconf -n 2>&1 | grep -q "driver = ramdir" || fail "root: doveconf -n shows no driver = ramdir"
say "Debian 13's Dovecot 2.4 with README.Debian's lines"
ROOT_DOVECOT_STARTED=1
chroot "$TRIXIE" dovecot || fail "root: dovecot did not start"
wait_file "$TRIXIE/run/dovecot/auth-client"
check_doveadm "$TRIXIE"
AUTH_PID=$(pgrep -P "$(cat "$TRIXIE/run/dovecot/master.pid")" -x auth) || fail "root: no auth process"
grep -q "/usr/lib/dovecot/modules/auth/libauthdb_ramdir.so" "/proc/$AUTH_PID/maps" || fail "root: auth $AUTH_PID has not loaded the module"
if grep -E "Fatal|Panic|Error" "$TRIXIE/var/log/dovecot-ramdir-test.log"; then fail "root: Dovecot logged errors"; fi
stop_dovecot "$TRIXIE/run/dovecot/master.pid"
ROOT_DOVECOT_STARTED=""
kill -TERM "$ROOT_DAEMON_PID"; wait "$ROOT_DAEMON_PID" 2>/dev/null || true; ROOT_DAEMON_PID=""
restore_dovecot_conf "$TRIXIE" "$WORK/10-auth.conf.root"
ROOT_DOVECOT_SAVED=""
rm -f "$TRIXIE/etc/ramdir/users.passwd" "$TRIXIE/etc/ramdir/aliases" "$TRIXIE/etc/ramdir/domains"
chroot "$TRIXIE" dpkg --purge dovecot-ramdir ramdir >"$WORK/root-dpkg.log" 2>&1 \
    || { cat "$WORK/root-dpkg.log" >&2; fail "dpkg --purge in the Debian 13 root"; }
rm -f "$TRIXIE/tmp/$(basename "$DEB")" "$TRIXIE/tmp/$(basename "$MOD24")"
ROOT_INSTALLED=""
[ ! -e "$TRIXIE/usr/lib/dovecot/modules/auth/libauthdb_ramdir.so" ] || fail "root: purge left the module"
! chroot "$TRIXIE" getent passwd ramdir >/dev/null || fail "root: purge left the user"

# --- 6. purge ---------------------------------------------------------------
say "dpkg --purge ramdir"
rm -f /etc/ramdir/users.passwd /etc/ramdir/aliases /etc/ramdir/domains
if [ -e "$WORK/main.cf.orig" ]; then cp -p "$WORK/main.cf.orig" /etc/postfix/main.cf; else rm -f /etc/postfix/main.cf; fi
MAINCF_SAVED=""
rm -f /var/log/postfix-ramdir-test.log
dpkg_retry --purge ramdir >/dev/null
find /etc /usr /var /run -xdev \( -path /var/tmp -o -path /var/cache \) -prune -o -path '*ramdir*' -print 2>/dev/null | { grep -v "^$WORK" || true; } | sort >"$WORK/after"
# Anything new since before the install is left over (files that went away
# meanwhile are another process's business, and so is Dovecot's module
# directory, where the Dovecot module's own tests install
# libauthdb_ramdir.so; this package ships nothing there).
left=$(comm -13 "$WORK/before" "$WORK/after" | { grep -v '^/usr/lib/dovecot/modules/' || true; })
[ -z "$left" ] || fail "purge left files behind: $left"
! getent passwd ramdir >/dev/null || fail "purge left the user"
! getent group ramdir >/dev/null || fail "purge left the group"
say "package test passed"
