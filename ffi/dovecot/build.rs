//! Generates the Dovecot declarations the module uses with bindgen, from
//! the installed `dovecot-dev` headers (allowlisted: only the auth
//! interfaces and the functions called), and tells the crate which Dovecot
//! ABI it is built for.
//!
//! `DOVECOT_INCLUDE` names the header directory (default
//! `/usr/include/dovecot`; for Dovecot 2.4 on a Debian 12 build host, the
//! one inside the Debian 13 root: `/var/tmp/ramdir-trixie/usr/include/dovecot`).
//! The version comes from its `config.h` (`DOVECOT_ABI_VERSION`): 2.3 and
//! 2.4 differ in the interfaces, so the crate compiles the matching code
//! (`cfg(dovecot_abi = "2.3")` / `"2.4"`).

use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-env-changed=DOVECOT_INCLUDE");
    println!("cargo::rustc-check-cfg=cfg(dovecot_abi, values(\"2.3\", \"2.4\"))");
    let include =
        std::env::var("DOVECOT_INCLUDE").unwrap_or_else(|_| "/usr/include/dovecot".into());
    let config_h = PathBuf::from(&include).join("config.h");
    println!("cargo::rerun-if-changed={}", config_h.display());
    let config = match std::fs::read_to_string(&config_h) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "error: {}: {e}\n\
                 libauthdb_ramdir.so is built against Dovecot's headers: install them \
                 (Debian: apt-get install dovecot-dev libclang-dev, as scripts/install-test-deps.sh \
                 does) or set DOVECOT_INCLUDE to a directory holding them",
                config_h.display()
            );
            std::process::exit(1);
        }
    };
    let abi = config
        .lines()
        .find_map(|l| l.strip_prefix("#define DOVECOT_ABI_VERSION "))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap_or_else(|| {
            eprintln!("error: {}: no DOVECOT_ABI_VERSION", config_h.display());
            std::process::exit(1);
        });
    let series = if abi.starts_with("2.3.") {
        "2.3"
    } else if abi.starts_with("2.4.") {
        "2.4"
    } else {
        eprintln!("error: Dovecot ABI {abi}: only 2.3 and 2.4 are supported");
        std::process::exit(1);
    };
    println!("cargo::rustc-cfg=dovecot_abi=\"{series}\"");
    println!("cargo::rustc-env=RAMDIR_DOVECOT_ABI={abi}");

    let header = "#include \"lib.h\"\n#include \"auth-common.h\"\n#include \"auth-request.h\"\n\
                  #include \"passdb.h\"\n#include \"userdb.h\"\n";
    let bindings = bindgen::Builder::default()
        .header_contents("ramdir-dovecot.h", header)
        .clang_arg(format!("-I{include}"))
        .clang_arg("-DHAVE_CONFIG_H")
        .allowlist_type("passdb_module_interface|userdb_module_interface|passdb_module|userdb_module|userdb_iterate_context|auth_request")
        .allowlist_function("passdb_register_module|passdb_unregister_module|userdb_register_module|userdb_unregister_module|auth_request_set_field|auth_request_set_userdb_field|auth_request_password_verify|passdb_handle_credentials|auth_request_log_error|auth_request_log_unknown_user|auth_request_db_log_unknown_user|auth_request_db_password_verify|auth_request_log_info|auth_request_log_debug|e_error")
        .allowlist_var("auth_default_subsystems|PASSDB_RESULT_.*|USERDB_RESULT_.*")
        .layout_tests(false)
        .derive_debug(false)
        .generate_comments(false)
        .generate()
        .unwrap_or_else(|e| {
            eprintln!("error: bindgen on {include}: {e} (is libclang-dev installed?)");
            std::process::exit(1);
        });
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("dovecot.rs");
    // Edition 2024 wants `unsafe extern` blocks (bindgen 0.70 predates it).
    let text = bindings
        .to_string()
        .replace("extern \"C\" {", "unsafe extern \"C\" {");
    std::fs::write(&out, text).expect("writing bindings");
}
