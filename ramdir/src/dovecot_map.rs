//! `[dovecot_map]`: publishing what passdb and userdb answer as snapshot
//! files for the in-process Dovecot auth module (`libauthdb_ramdir.so`,
//! `ffi/dovecot`).
//!
//! The files are a map directory of their own, beside the Postfix one and
//! never readable by Postfix: they hold password hashes. Each generation
//! holds, per login, the passdb fields (enabled users only), the userdb
//! fields in Dovecot 2.3's and in 2.4's quota names (so one set of files
//! serves either version, and an upgrade needs no change here), the
//! addresses that may log in as a login (`alias_logins`) and the addresses
//! several entries claim. The answers are the auth dict's own
//! ([`ramdir_dovecot::service::auth_answer`]), so the dict and the module
//! never disagree. Publication (thread, interval, control word, grace) is
//! [`crate::postfix_map::start_publisher`]'s; every generation is a base.

use std::sync::Arc;

use ramdir_core::{Directory, DirectoryHandle};
use ramdir_dovecot::service::{Settings, Spelling, auth_answer};
use ramdir_snapshot::format::{Builder, Kind};
use ramdir_snapshot::{Content, RecordsFn};

use crate::config::DovecotMapConfig;
use crate::postfix_map::{Map, Running, start_publisher};
use crate::serve::CmdError;

/// Flatten the auth dict's JSON object into `name, value, …` items.
fn flatten(json: &str, out: &mut Vec<String>) -> bool {
    out.clear();
    let Ok(map) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json) else {
        return false;
    };
    for (k, v) in map {
        let v = match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        out.push(k);
        out.push(v);
    }
    true
}

/// Every record of one generation (see the module doc).
pub fn records(dir: &Directory, settings: &Settings, b: &mut Builder) {
    let mut buf = String::new();
    let mut items = Vec::new();
    let kinds = [
        (Kind::Passdb, true, Spelling::V23),
        (Kind::Userdb23, false, Spelling::V23),
        (Kind::Userdb24, false, Spelling::V24),
    ];
    for login in dir.logins() {
        for (kind, passdb, spelling) in kinds {
            match auth_answer(dir, login, settings, passdb, spelling, &mut buf) {
                Ok(Some(json)) => {
                    if flatten(&json, &mut items) {
                        b.add(kind, login, false, items.iter().map(String::as_str));
                    }
                    buf = json;
                }
                Ok(None) => {}
                // The login's own entry cannot fail to resolve; an error
                // here leaves the login out, which the ambiguity records
                // below turn into a failure when it is claimed twice.
                Err(e) => tracing::warn!(login, error = %e, "dovecot map: login left out"),
            }
        }
    }
    if settings.alias_logins {
        for (key, _) in dir.alias_entries() {
            if key.starts_with('@') {
                continue;
            }
            if let Ok(Some(json)) = auth_answer(dir, key, settings, false, Spelling::V23, &mut buf)
                && flatten(&json, &mut items)
                && let Some(i) = items.iter().step_by(2).position(|k| k == "user")
            {
                b.add(Kind::LoginAlias, key, false, [items[2 * i + 1].as_str()]);
            }
        }
    }
    for k in dir.ambiguous_keys() {
        let claims = dir.ambiguous_claims(k).unwrap_or(2).to_string();
        b.add(Kind::Ambiguous, k, false, [claims.as_str()]);
    }
}

/// Open the map directory, publish at once, and start the publisher.
pub fn start(
    cfg: &DovecotMapConfig,
    settings: Settings,
    handle: Arc<DirectoryHandle>,
) -> Result<Running, CmdError> {
    let build: RecordsFn =
        Box::new(move |dir: &Directory, b: &mut Builder| records(dir, &settings, b));
    start_publisher(
        Map {
            name: "dovecot",
            section: "[dovecot_map]",
            directory: &cfg.directory,
            group: cfg.group.as_deref(),
            mode: cfg.mode,
            unavailable_on_stop: cfg.unavailable_on_stop,
        },
        Content::Records(build),
        handle,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramdir_core::{Settings as DirSettings, UserSpec};
    use ramdir_snapshot::{Error, Limits, Publisher, Reader};

    fn directory() -> Directory {
        let mut d = Directory::new(DirSettings::default());
        for (login, enabled) in [("alice@example.org", true), ("dis@example.org", false)] {
            d.insert_user(&UserSpec {
                login: login.into(),
                enabled,
                password: Some("{PLAIN}secret".into()),
                uid: Some(5000),
                gid: Some(5000),
                ..Default::default()
            });
        }
        d.set_alias("info@example.org", vec!["alice@example.org".into()]);
        d
    }

    fn published(settings: Settings) -> (tempfile::TempDir, Reader) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let build: RecordsFn =
            Box::new(move |dir: &Directory, b: &mut Builder| records(dir, &settings, b));
        let mut p = Publisher::open_with(
            tmp.path(),
            0o640,
            Limits::default(),
            Content::Records(build),
        )
        .expect("publisher");
        p.publish(&Arc::new(directory())).expect("publish");
        let r = Reader::open(tmp.path()).expect("reader");
        (tmp, r)
    }

    fn field<'a>(a: &'a ramdir_snapshot::AuthAnswer, k: &str) -> Option<&'a str> {
        a.fields
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_module_reads_what_the_auth_dict_answers() {
        let (_tmp, mut r) = published(Settings {
            alias_logins: true,
            ..Settings::default()
        });
        let a = r
            .auth_lookup(Kind::Passdb, "alice@example.org")
            .expect("ok")
            .expect("alice");
        assert_eq!(a.user, None);
        assert_eq!(field(&a, "password"), Some("{PLAIN}secret"));
        // Another case, and an alias allowed to log in: the login comes back.
        for name in ["Alice@Example.ORG", "info@example.org"] {
            let a = r.auth_lookup(Kind::Passdb, name).expect("ok").expect(name);
            assert_eq!(a.user.as_deref(), Some("alice@example.org"), "{name}");
        }
        // Disabled: no passdb, but a userdb (disabled_userdb).
        assert!(
            r.auth_lookup(Kind::Passdb, "dis@example.org")
                .expect("ok")
                .is_none()
        );
        assert!(
            r.auth_lookup(Kind::Userdb23, "dis@example.org")
                .expect("ok")
                .is_some()
        );
        assert!(
            r.auth_lookup(Kind::Passdb, "nobody@example.org")
                .expect("ok")
                .is_none()
        );
        // Each version's quota names.
        let u23 = r
            .auth_lookup(Kind::Userdb23, "alice@example.org")
            .expect("ok")
            .expect("u");
        assert_eq!(field(&u23, "uid"), Some("5000"));
        assert!(field(&u23, "quota_rule").is_some() && field(&u23, "quota_storage_size").is_none());
        let u24 = r
            .auth_lookup(Kind::Userdb24, "alice@example.org")
            .expect("ok")
            .expect("u");
        assert!(field(&u24, "quota_storage_size").is_some() && field(&u24, "quota_rule").is_none());
        // Userdb holds no password.
        assert!(field(&u23, "password").is_none() && field(&u24, "password").is_none());
        let mut users = r.auth_users(Kind::Userdb23).expect("users");
        users.sort();
        assert_eq!(users, ["alice@example.org", "dis@example.org"]);
    }

    #[test]
    fn without_alias_logins_an_alias_is_unknown_and_ambiguity_fails() {
        let (_tmp, mut r) = published(Settings::default());
        assert!(
            r.auth_lookup(Kind::Passdb, "info@example.org")
                .expect("ok")
                .is_none()
        );
        let mut d = directory();
        d.insert_user(&UserSpec {
            login: "twice@example.org".into(),
            enabled: true,
            ..Default::default()
        });
        d.set_alias("twice@example.org", vec!["alice@example.org".into()]);
        let tmp = tempfile::tempdir().expect("tempdir");
        let build: RecordsFn =
            Box::new(|dir: &Directory, b: &mut Builder| records(dir, &Settings::default(), b));
        let mut p = Publisher::open_with(
            tmp.path(),
            0o640,
            Limits::default(),
            Content::Records(build),
        )
        .expect("publisher");
        p.publish(&Arc::new(d)).expect("publish");
        let mut r = Reader::open(tmp.path()).expect("reader");
        if r.auth_lookup(Kind::Passdb, "alice@example.org").is_err() {
            panic!("alice is not ambiguous");
        }
        // Whatever the directory decided for a doubly claimed name, the
        // module never answers "unknown" for a claimed address it cannot
        // resolve: it is either found or an error.
        match r.auth_lookup(Kind::Passdb, "twice@example.org") {
            Ok(Some(_)) | Err(Error::Lookup(_)) => {}
            other => panic!("twice@example.org: {other:?}"),
        }
    }
}
