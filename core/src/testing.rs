//! Test fixtures shared by the crates that answer Postfix's tables from a
//! [`Directory`] (the socketmap service and the snapshot reader's
//! round-trip tests), so that both exercise the same rules. Compiled for
//! tests and with the `testing` feature only (dev-dependencies).

use crate::{Directory, Settings, UserSpec};

/// A small directory exercising every table rule: users (with a
/// password, which no table may show), an empty domain, a catch-all, a
/// domain alias, alias chains with an external target, a self-copy, a
/// loop and a half loop, a tagged alias, and sender logins for an address
/// and a domain.
#[must_use]
pub fn sample_directory() -> Directory {
    let mut d = Directory::new(Settings::default());
    for login in [
        "alice@example.org",
        "bob@example.org",
        "carol@example.org",
        "real@catch.test",
    ] {
        d.insert_user(&UserSpec {
            login: login.into(),
            enabled: true,
            password: Some("{PLAIN}secret".into()),
            ..Default::default()
        });
    }
    d.add_domain("empty.test");
    let alias = |d: &mut Directory, k: &str, t: &[&str]| {
        d.set_alias(k, t.iter().map(|s| s.to_string()).collect());
    };
    alias(&mut d, "info@example.org", &["alice@example.org"]);
    alias(
        &mut d,
        "team@example.org",
        &["info@example.org", "bob@example.org", "ext@remote.test"],
    );
    alias(
        &mut d,
        "copy@example.org",
        &["copy@example.org", "carol@example.org"],
    );
    alias(
        &mut d,
        "alice@example.org",
        &["alice@example.org", "archive@remote.test"],
    );
    alias(&mut d, "loop1@example.org", &["loop2@example.org"]);
    alias(&mut d, "loop2@example.org", &["loop1@example.org"]);
    alias(
        &mut d,
        "half@example.org",
        &["loop1@example.org", "bob@example.org"],
    );
    alias(&mut d, "@catch.test", &["bob@example.org"]);
    alias(&mut d, "@alias.test", &["@example.org"]);
    alias(&mut d, "tagged+x@example.org", &["carol@example.org"]);
    d.set_sender_logins("boss@example.org", vec!["alice@example.org".into()]);
    d.set_sender_logins("@example.org", vec!["admin@example.org".into()]);
    d
}
