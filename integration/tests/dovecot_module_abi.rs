//! A `libauthdb_ramdir.so` built for another Dovecot ABI is refused by
//! Dovecot's auth process at load with a log line naming the module (the
//! auth process then does not start, so logins fail temporarily; nothing is
//! "unknown"): the 2.4 build in Debian 12's Dovecot 2.3, and the 2.3 build
//! in Debian 13's Dovecot 2.4. Between 2.3 and 2.4 the interfaces differ,
//! so `dlopen(RTLD_NOW)` already fails on a symbol the other version does
//! not export, before Dovecot compares `authdb_ramdir_version` with its
//! ABI. Within one series the symbols resolve, and Dovecot's module loader
//! refuses the module on `authdb_ramdir_version` alone ("Module is for
//! different ABI version"): shown with the module built for this Dovecot
//! whose version string is rewritten, bytes for bytes, to the neighbouring
//! ABI of the series (`2.3.ABIv19(…)` → `2.3.ABIv18(…)`, `2.4.ABIv1` →
//! `2.4.ABIv2`), which is what a build against the headers of another
//! release of the series exports (the string comes from their `config.h`,
//! `ffi/dovecot/build.rs`); rebuilding the crate against headers that
//! are not installed here is not possible. A test binary of its own: it
//! installs the wrong module where the other module tests install the
//! right one.
//!
//! Needs root, the packages from `scripts/install-test-deps.sh`, and both
//! builds (`cargo build -p dovecot-ramdir`, `scripts/build-dovecot24-module.sh`).

use std::path::Path;

use ramdir_integration::dovecot::{Dovecot, ModuleInstall, module_so, require_dovecot_on};
use ramdir_integration::{Flavor, StackDir, WAIT, wait_for};

fn refused(flavor: Flavor, other: Flavor, expect_in_log: &str) {
    refused_module(flavor, &module_so(other), other.name(), expect_in_log);
}

/// One refusal test at a time: each installs its own `.so` as the one
/// module file of its Dovecot, and [`ModuleInstall`] shares an installed
/// file between the stacks of a process instead of replacing it.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn refused_module(flavor: Flavor, so: &Path, what: &str, expect_in_log: &str) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    require_dovecot_on(flavor);
    let dir = StackDir::for_flavor(flavor);
    let map = dir.join("run/dovecot-map");
    let _module = ModuleInstall::file(flavor, so);
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
    eprintln!("{} refuses the {what} module: {line}", flavor.name());
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

/// `flavor`'s own module with every occurrence of its ABI string `from`
/// replaced by `to` (same length), written to a file of the stack's.
fn module_claiming(flavor: Flavor, from: &str, to: &str) -> (StackDir, std::path::PathBuf) {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(module_so(flavor)).expect("read the module");
    let (from, to) = (from.as_bytes(), to.as_bytes());
    let mut n = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            n += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(
        n > 0,
        "the module holds no {:?}",
        String::from_utf8_lossy(from)
    );
    let dir = StackDir::for_flavor(flavor);
    let so = dir.join("libauthdb_ramdir.so");
    std::fs::write(&so, bytes).expect("write the rewritten module");
    (dir, so)
}

#[test]
fn dovecot_23_refuses_a_module_of_another_23_abi() {
    let (_dir, so) = module_claiming(Flavor::Debian12, "2.3.ABIv19(", "2.3.ABIv18(");
    refused_module(
        Flavor::Debian12,
        &so,
        "2.3.ABIv18",
        "Module is for different ABI version 2.3.ABIv18",
    );
}

#[test]
fn dovecot_24_refuses_a_module_of_another_24_abi() {
    let (_dir, so) = module_claiming(Flavor::Debian13, "2.4.ABIv1\0", "2.4.ABIv2\0");
    refused_module(
        Flavor::Debian13,
        &so,
        "2.4.ABIv2",
        "Module is for different ABI version 2.4.ABIv2",
    );
}
