#!/bin/sh
# Installs what ramdir's real-peer tests need: the Debian 12 packages Postfix
# (socketmap/policy/milter peer), Dovecot (dict peer), slapd (LDAP source) and
# miltertest, redis-server (shared quota usage), prometheus (promtool lints
# the [metrics] document), dovecot-dev and libclang-dev
# (bindgen for libauthdb_ramdir.so),
# postfix-cdb, postfix-ldap and dovecot-ldap (the operator's own setups that
# bench/e2e.sh and bench/postfix-map.sh compare ramdir with),
# stress-ng (the unrelated CPU load of scripts/test-under-load.sh),
# then the Debian 13 root with Postfix 3.10 and Dovecot 2.4
# (scripts/trixie-root.sh; built once, cached). Idempotent and quiet; safe to
# run on a developer machine because no package is allowed to start a daemon
# (policy-rc.d) and Postfix/slapd are installed without any system
# configuration.
set -eu
export DEBIAN_FRONTEND=noninteractive

PKGS="redis-server prometheus postfix dovecot-core dovecot-imapd dovecot-lmtpd slapd ldap-utils miltertest swaks netcat-openbsd procps util-linux debootstrap dovecot-dev libclang-dev postfix-cdb postfix-ldap dovecot-ldap stress-ng"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# The Debian 13 root (Postfix 3.10, Dovecot 2.4) the tests also run;
# RAMDIR_TRIXIE_ROOT survives sudo.
trixie_root() {
    $SUDO env RAMDIR_TRIXIE_ROOT="${RAMDIR_TRIXIE_ROOT:-/var/tmp/ramdir-trixie}" \
        "$(dirname "$0")/trixie-root.sh"
}

if [ -z "$missing" ]; then
    trixie_root
    exit 0
fi

# Never let a package start its daemon: the tests run their own instances.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
fi

$SUDO debconf-set-selections <<'SEL'
postfix postfix/main_mailer_type select No configuration
postfix postfix/mailname string localhost
slapd slapd/no_configuration boolean true
SEL

$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold $missing
trixie_root
