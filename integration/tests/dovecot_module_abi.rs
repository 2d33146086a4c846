//! A `libauthdb_ramdir.so` built for another Dovecot ABI is refused by
//! Dovecot's auth process at load with a log line naming the module (the
//! auth process then does not start, so logins fail temporarily; nothing is
//! "unknown"): the 2.4 build in Debian 12's Dovecot 2.3, and the 2.3 build
//! in Debian 13's Dovecot 2.4. Between 2.3 and 2.4 the interfaces differ,
//! so `dlopen(RTLD_NOW)` already fails on a symbol the other version does
//! not export, before Dovecot compares `authdb_ramdir_version` with its
//! ABI. A test binary of its own: it installs the wrong module where the
//! other module tests install the right one.
//!
//! Needs root, the packages from `scripts/install-test-deps.sh`, and both
//! builds (`cargo build -p dovecot-ramdir`, `scripts/build-dovecot24-module.sh`).

use ramdir_integration::dovecot::{Dovecot, ModuleInstall, module_so, require_dovecot_on};
use ramdir_integration::{Flavor, StackDir, WAIT, wait_for};

fn refused(flavor: Flavor, other: Flavor, expect_in_log: &str) {
    require_dovecot_on(flavor);
    let dir = StackDir::for_flavor(flavor);
    let map = dir.join("run/dovecot-map");
    let _module = ModuleInstall::file(flavor, &module_so(other));
    let mut dovecot = Dovecot::prepare_with(&dir, &dir.join("run/dict.sock"), "", Some(&map));
    dovecot.start();
    let line = wait_for(WAIT, "Dovecot's refusal of the module", || {
        dovecot.log_text().lines().find_map(|l| {
            (l.contains("Couldn't load required plugin")
                && l.contains("libauthdb_ramdir.so")
                && l.contains(expect_in_log))
            .then(|| l.to_string())
        })
    });
    eprintln!(
        "{} refuses the {} module: {line}",
        flavor.name(),
        other.name()
    );
    dovecot.stop();
}

#[test]
fn dovecot_23_refuses_the_24_module() {
    refused(Flavor::Debian12, Flavor::Debian13, "undefined symbol");
}

#[test]
fn dovecot_24_refuses_the_23_module() {
    refused(Flavor::Debian13, Flavor::Debian12, "undefined symbol");
}
