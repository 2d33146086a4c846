//! Socketmap service: request + directory snapshot → reply. Pure.
//!
//! Tables (the name after the last `:` of `socketmap:unix:…:<name>`):
//!
//! The tables and their rules are [`ramdir_core::maps`] (shared with the
//! in-process Postfix plugin); this module puts them in socketmap words.
//!
//! This module is the one place where outcomes become answers
//! ([`to_reply`]): found → `OK value` (never an empty value), not ours or
//! garbage → `NOTFOUND`, a directory error (alias loop, expansion too large,
//! an address claimed by two entries) or an unknown table → `TEMP`, so
//! Postfix defers and never bounces.

use ramdir_core::Directory;
use ramdir_core::fallback::KeyKind;

use super::codec::{MAX_QUERY, MAX_REPLY, Reply, Request};

pub use ramdir_core::maps::{Outcome, Table};

/// Look `key` up in `table` (the shared rules of [`ramdir_core::maps`];
/// a key longer than Postfix ever sends is "not found").
pub fn lookup(dir: &Directory, table: Table, key: &str) -> Outcome {
    if key.len() > MAX_QUERY {
        return Outcome::NotFound;
    }
    ramdir_core::maps::lookup(dir, table, key)
}

/// The one mapping from outcomes to socketmap replies.
pub fn to_reply(outcome: Outcome) -> Reply {
    match outcome {
        Outcome::Found(values) => {
            let Some(data) = Outcome::value(&values) else {
                return Reply::NotFound;
            };
            // "OK " plus the data must fit Postfix's reply limit.
            if data.len() + 3 > MAX_REPLY {
                return Reply::Temp(format!("result longer than {MAX_REPLY} bytes"));
            }
            Reply::Ok(data)
        }
        Outcome::NotFound => Reply::NotFound,
        Outcome::Trouble(reason) => Reply::Temp(reason),
    }
}

/// Answer one request from one snapshot.
pub fn answer(dir: &Directory, req: &Request) -> Reply {
    answer_parts(dir, &req.map, &req.key)
}

/// An answer that may borrow from the snapshot (so the common hit is
/// encoded without allocating).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<'d> {
    /// `OK <login>`, the login borrowed from the directory.
    Login(&'d str),
    /// Any other reply.
    Reply(Reply),
}

impl Answer<'_> {
    /// As an owned reply.
    pub fn into_reply(self) -> Reply {
        match self {
            Answer::Login(l) => Reply::Ok(l.to_string()),
            Answer::Reply(r) => r,
        }
    }
}

/// Answer a request given as map name and key bytes, borrowing from `dir`
/// where it can.
pub fn decide<'d>(dir: &'d Directory, map: &[u8], key: &[u8]) -> Answer<'d> {
    if map == Table::Mailboxes.name().as_bytes()
        && key.len() <= MAX_QUERY
        && let Ok(k) = std::str::from_utf8(key)
    {
        return match dir.mailbox_login(k) {
            Ok(Some(login)) => Answer::Login(login),
            Ok(None) => Answer::Reply(Reply::NotFound),
            Err(e) => Answer::Reply(to_reply(Outcome::Trouble(e.to_string()))),
        };
    }
    Answer::Reply(answer_parts(dir, map, key))
}

/// Answer a request given as map name and key bytes.
pub fn answer_parts(dir: &Directory, map: &[u8], key: &[u8]) -> Reply {
    let Some(table) = Table::from_name(map) else {
        // A misspelt table in main.cf: defer (and Postfix logs the reason)
        // rather than declare every address unknown.
        let name = String::from_utf8_lossy(map);
        return Reply::Temp(format!("unknown table {:?}", truncate(&name, 100)));
    };
    let Ok(key) = std::str::from_utf8(key) else {
        return Reply::NotFound;
    };
    to_reply(lookup(dir, table, key))
}

/// A "not found" from a snapshot that is not authoritative may be wrong
/// (an LDAP source still loading, or its sync lost): the key to ask the
/// source about, if any.
pub fn source_question(dir: &Directory, req: &Request, reply: &Reply) -> Option<(KeyKind, String)> {
    source_question_parts(dir, &req.map, &req.key, reply)
}

/// [`source_question`] for a request given as map name and key bytes.
pub fn source_question_parts(
    dir: &Directory,
    map: &[u8],
    key: &[u8],
    reply: &Reply,
) -> Option<(KeyKind, String)> {
    if dir.authoritative() || *reply != Reply::NotFound {
        return None;
    }
    let table = Table::from_name(map)?;
    let key = std::str::from_utf8(key).ok()?;
    ramdir_core::maps::source_key(dir, table, key)
}

/// The reply when the source could not settle a miss: temporary, so
/// Postfix defers instead of rejecting a user who may exist.
pub fn source_unavailable(dir: &Directory, error: Option<&str>) -> Reply {
    match (error, dir.meta().note.as_deref()) {
        (Some(e), _) => Reply::Temp(format!(
            "directory source unavailable: {}",
            truncate(e, 150)
        )),
        (None, Some(note)) => Reply::Temp(format!(
            "directory not authoritative: {}",
            truncate(note, 150)
        )),
        (None, None) => Reply::Temp("directory not authoritative".into()),
    }
}

/// Cut `s` to at most `max` bytes on a character boundary (for logs).
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramdir_core::UserSpec;

    use ramdir_core::testing::sample_directory as directory;

    fn ask(d: &Directory, table: &str, key: &str) -> Reply {
        answer(d, &Request::new(table, key))
    }

    fn ok(s: &str) -> Reply {
        Reply::Ok(s.into())
    }

    #[test]
    fn request_to_reply_table() {
        let d = directory();
        let cases: Vec<(&str, &str, Reply)> = vec![
            // domains
            ("domains", "example.org", ok("example.org")),
            ("domains", "EXAMPLE.ORG", ok("example.org")),
            ("domains", "example.org.", ok("example.org")),
            ("domains", "empty.test", ok("empty.test")),
            ("domains", "catch.test", ok("catch.test")),
            ("domains", "other.test", Reply::NotFound),
            ("domains", "[1.2.3.4]", Reply::NotFound),
            ("domains", "*", Reply::NotFound),
            ("domains", "", Reply::NotFound),
            // mailboxes
            ("mailboxes", "alice@example.org", ok("alice@example.org")),
            ("mailboxes", "Alice@EXAMPLE.org", ok("alice@example.org")),
            (
                "mailboxes",
                "alice+news@example.org",
                ok("alice@example.org"),
            ),
            ("mailboxes", "info@example.org", Reply::NotFound),
            ("mailboxes", "nobody@example.org", Reply::NotFound),
            ("mailboxes", "example.org", Reply::NotFound),
            ("mailboxes", "@example.org", Reply::NotFound),
            ("mailboxes", "\"\"@example.org", Reply::NotFound),
            ("mailboxes", "alice@[1.2.3.4]", Reply::NotFound),
            ("mailboxes", "*", Reply::NotFound),
            ("mailboxes", "", Reply::NotFound),
            // aliases: exact, alias of alias, remote, self-copy
            (
                "aliases",
                "info@example.org",
                ok("alice@example.org,archive@remote.test"),
            ),
            (
                "aliases",
                "team@example.org",
                ok("alice@example.org,archive@remote.test,bob@example.org,ext@remote.test"),
            ),
            // a self-reference that is not a mailbox is dropped
            ("aliases", "copy@example.org", ok("carol@example.org")),
            (
                "aliases",
                "INFO@Example.Org",
                ok("alice@example.org,archive@remote.test"),
            ),
            // extension re-appended to local targets only
            (
                "aliases",
                "info+x@example.org",
                ok("alice+x@example.org,archive@remote.test"),
            ),
            // an alias key with its own extension matches exactly
            ("aliases", "tagged+x@example.org", ok("carol@example.org")),
            // a mailbox with no alias: not an alias
            ("aliases", "bob@example.org", Reply::NotFound),
            ("aliases", "bob+x@example.org", Reply::NotFound),
            // an alias on a mailbox keeps the mailbox (self) and adds copies
            (
                "aliases",
                "alice@example.org",
                ok("alice@example.org,archive@remote.test"),
            ),
            // catch-all after mailbox
            ("aliases", "real@catch.test", Reply::NotFound),
            ("aliases", "anything@catch.test", ok("bob@example.org")),
            (
                "aliases",
                "any+thing@catch.test",
                ok("bob+thing@example.org"),
            ),
            // alias domain keeps the local part
            ("aliases", "carol@alias.test", ok("carol@example.org")),
            ("aliases", "carol+x@alias.test", ok("carol+x@example.org")),
            // …but a user the aliased domain lacks is unknown (r1: Postfix
            // would otherwise accept and then bounce).
            ("aliases", "nobody@alias.test", Reply::NotFound),
            // loops
            (
                "aliases",
                "loop1@example.org",
                Reply::Temp("alias loop at loop1@example.org".into()),
            ),
            ("aliases", "half@example.org", ok("bob@example.org")),
            // unknown and garbage
            ("aliases", "nobody@example.org", Reply::NotFound),
            ("aliases", "x@remote.test", Reply::NotFound),
            ("aliases", "example.org", Reply::NotFound),
            ("aliases", "[1.2.3.4]", Reply::NotFound),
            ("aliases", "\"\"", Reply::NotFound),
            ("aliases", "*", Reply::NotFound),
            // senders: explicit, implicit (self and alias owners), domain-wide
            ("senders", "boss@example.org", ok("alice@example.org")),
            (
                "senders",
                "alice@example.org",
                ok("admin@example.org,alice@example.org"),
            ),
            (
                "senders",
                "bob+x@example.org",
                ok("admin@example.org,bob@example.org"),
            ),
            (
                "senders",
                "info@example.org",
                ok("admin@example.org,alice@example.org"),
            ),
            ("senders", "real@catch.test", ok("real@catch.test")),
            ("senders", "anything@catch.test", Reply::NotFound),
            ("senders", "x@remote.test", Reply::NotFound),
            // tables
            (
                "nosuch",
                "alice@example.org",
                Reply::Temp("unknown table \"nosuch\"".into()),
            ),
        ];
        for (table, key, want) in cases {
            assert_eq!(ask(&d, table, key), want, "{table} {key:?}");
        }
    }

    #[test]
    fn copy_alias_to_itself_keeps_the_mailbox_when_it_is_one() {
        let mut d = directory();
        d.insert_user(&UserSpec {
            login: "copy@example.org".into(),
            ..Default::default()
        });
        assert_eq!(
            ask(&d, "aliases", "copy@example.org"),
            ok("copy@example.org,carol@example.org")
        );
    }

    #[test]
    fn misses_in_a_non_authoritative_snapshot_go_to_the_source() {
        let mut d = directory();
        let req = Request::new("mailboxes", "new@example.org");
        assert_eq!(
            source_question(&d, &req, &answer(&d, &req)),
            None,
            "authoritative: a miss is final"
        );
        d.set_authoritative(false, Some("LDAP initial load in progress"));
        assert_eq!(
            source_question(&d, &req, &answer(&d, &req)),
            Some((KeyKind::Address, "new@example.org".into()))
        );
        let dom = Request::new("domains", "New.Example");
        assert_eq!(
            source_question(&d, &dom, &answer(&d, &dom)),
            Some((KeyKind::Domain, "new.example".into()))
        );
        // Hits and garbage keys are never asked about.
        let hit = Request::new("mailboxes", "alice@example.org");
        assert_eq!(source_question(&d, &hit, &answer(&d, &hit)), None);
        let junk = Request::new("mailboxes", "[1.2.3.4]");
        assert_eq!(source_question(&d, &junk, &answer(&d, &junk)), None);
        assert_eq!(
            source_unavailable(&d, None),
            Reply::Temp("directory not authoritative: LDAP initial load in progress".into())
        );
    }

    #[test]
    fn an_ambiguous_address_is_temporary_in_every_table() {
        let mut d = directory();
        d.set_ambiguous("dup@example.org", 2);
        d.set_alias("todup@example.org", vec!["dup@example.org".into()]);
        let temp = Reply::Temp("dup@example.org is claimed by 2 directory entries".into());
        for (table, key) in [
            ("mailboxes", "dup@example.org"),
            ("mailboxes", "DUP@example.org"),
            ("mailboxes", "dup+x@example.org"),
            ("aliases", "dup@example.org"),
            ("aliases", "dup+x@example.org"),
            ("aliases", "todup@example.org"),
            ("senders", "dup@example.org"),
        ] {
            assert_eq!(ask(&d, table, key), temp, "{table} {key}");
        }
        assert_eq!(
            decide(&d, b"mailboxes", b"dup@example.org").into_reply(),
            temp,
            "the borrowed fast path too"
        );
        // Its domain stays ours; its neighbours are unaffected.
        assert_eq!(ask(&d, "domains", "example.org"), ok("example.org"));
        assert_eq!(
            ask(&d, "mailboxes", "bob@example.org"),
            ok("bob@example.org")
        );
        assert_eq!(ask(&d, "mailboxes", "nobody@example.org"), Reply::NotFound);
        d.clear_ambiguous("dup@example.org");
        assert_eq!(ask(&d, "mailboxes", "dup@example.org"), Reply::NotFound);
    }

    #[test]
    fn non_utf8_and_oversized_keys_are_not_found() {
        let d = directory();
        let req = Request {
            map: b"mailboxes".to_vec(),
            key: b"\xffa@example.org".to_vec(),
        };
        assert_eq!(answer(&d, &req), Reply::NotFound);
        let long = format!("{}@example.org", "a".repeat(MAX_QUERY));
        assert_eq!(ask(&d, "mailboxes", &long), Reply::NotFound);
    }

    #[test]
    fn outcome_mapping_never_gives_an_empty_ok() {
        assert_eq!(to_reply(Outcome::Found(vec![])), Reply::NotFound);
        assert_eq!(
            to_reply(Outcome::Found(vec![String::new()])),
            Reply::NotFound
        );
        assert_eq!(
            to_reply(Outcome::Trouble("x".into())),
            Reply::Temp("x".into())
        );
        let huge = vec!["a".repeat(MAX_REPLY)];
        assert!(matches!(to_reply(Outcome::Found(huge)), Reply::Temp(_)));
    }

    #[test]
    fn deep_and_wide_expansions_are_temporary_failures() {
        let mut d = directory();
        for i in 0..150 {
            d.set_alias(
                &format!("deep{i}@example.org"),
                vec![format!("deep{}@example.org", i + 1)],
            );
        }
        assert!(
            matches!(ask(&d, "aliases", "deep0@example.org"), Reply::Temp(r) if r.contains("deeper"))
        );
        let wide: Vec<String> = (0..1100).map(|i| format!("w{i}@remote.test")).collect();
        d.set_alias("wide@example.org", wide);
        assert!(
            matches!(ask(&d, "aliases", "wide@example.org"), Reply::Temp(r) if r.contains("more than"))
        );
    }
}
