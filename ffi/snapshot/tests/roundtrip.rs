//! The reader answers every key exactly as the in-memory directory does
//! (the socketmap's rules), through bases and deltas, and fails temporarily
//! (never "not found") on anything wrong with the files.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ramdir_core::maps::{self, Outcome, Table};
use ramdir_core::testing::sample_directory as directory;
use ramdir_core::{Directory, UserSpec};
use ramdir_snapshot::format::{CONTROL_WORD, FileKind, STATE_OK, file_name};
use ramdir_snapshot::{Error, Limits, Publisher, Reader};

const KEYS: &[&str] = &[
    "example.org",
    "EXAMPLE.ORG",
    "example.org.",
    "empty.test",
    "catch.test",
    "alias.test",
    "other.test",
    "[1.2.3.4]",
    "*",
    "",
    "alice@example.org",
    "Alice@EXAMPLE.org",
    "alice+news@example.org",
    "ALICE+News@Example.Org.",
    "bob@example.org",
    "bob+x@example.org",
    "info@example.org",
    "info+tag@example.org",
    "team@example.org",
    "copy@example.org",
    "loop1@example.org",
    "half@example.org",
    "nobody@example.org",
    "anything@catch.test",
    "real@catch.test",
    "real+x@catch.test",
    "x+y@catch.test",
    "bob@alias.test",
    "nobody@alias.test",
    "alice+z@alias.test",
    "tagged+x@example.org",
    "tagged+y@example.org",
    "boss@example.org",
    "someone@example.org",
    "ext@remote.test",
    "@example.org",
    "\"\"@example.org",
    "\"quoted\"@example.org",
    "alice@[1.2.3.4]",
    "a@b@example.org",
    "alice@example.org ",
    "élise@example.org",
];

fn expected(d: &Directory, table: Table, key: &str) -> Result<Option<String>, ()> {
    match maps::lookup(d, table, key) {
        Outcome::Found(v) => Ok(Outcome::value(&v)),
        Outcome::NotFound => Ok(None),
        Outcome::Trouble(_) => Err(()),
    }
}

fn compare(d: &Directory, r: &mut Reader) {
    for table in Table::ALL {
        for key in KEYS {
            let want = expected(d, table, key);
            let got = match r.lookup(table, key) {
                Ok(h) => Ok(h.map(|h| h.as_str().to_string())),
                Err(Error::Lookup(_)) => Err(()),
                Err(e) => panic!("{table} {key:?}: {e}"),
            };
            assert_eq!(got, want, "{table} {key:?}");
        }
    }
}

fn publisher(path: &std::path::Path) -> Publisher {
    Publisher::open(path, 0o640, Limits::default()).unwrap()
}

#[test]
fn bases_and_deltas_answer_like_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = publisher(tmp.path());
    let mut r = Reader::open(tmp.path()).unwrap();
    assert!(matches!(
        r.lookup(Table::Mailboxes, "a@b"),
        Err(Error::NotPublished)
    ));

    let d = Arc::new(directory());
    let first = p.publish(&d).unwrap();
    assert_eq!(first.kind, FileKind::Base);
    compare(&d, &mut r);

    // Incremental edits become small deltas against the same base.
    let mut next = Directory::clone(&d);
    next.insert_user(&UserSpec {
        login: "dave@example.org".into(),
        enabled: true,
        ..Default::default()
    });
    next.remove_user("carol@example.org");
    next.set_alias("info@example.org", vec!["bob@example.org".into()]);
    next.remove_alias("@catch.test");
    next.add_domain("new.test");
    let next = Arc::new(next);
    let second = p.publish(&next).unwrap();
    assert_eq!(second.kind, FileKind::Delta);
    assert!(second.bytes < 2048, "{second:?}");
    compare(&next, &mut r);
    assert_eq!(
        r.lookup(Table::Mailboxes, "dave@example.org")
            .unwrap()
            .unwrap()
            .as_str(),
        "dave@example.org"
    );
    assert_eq!(
        r.lookup(Table::Mailboxes, "carol@example.org").unwrap(),
        None
    );

    // A later edit: the delta is cumulative since the base.
    let mut third = Directory::clone(&next);
    third.remove_user("dave@example.org");
    let third = Arc::new(third);
    assert_eq!(p.publish(&third).unwrap().kind, FileKind::Delta);
    compare(&third, &mut r);

    // A reload built aside shares nothing: a new base.
    let rebuilt = Arc::new(directory());
    assert_eq!(p.publish(&rebuilt).unwrap().kind, FileKind::Base);
    compare(&rebuilt, &mut r);

    // No password reaches the files.
    for e in std::fs::read_dir(tmp.path()).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        assert!(!bytes.windows(6).any(|w| w == b"secret"));
    }
}

#[test]
fn ambiguous_addresses_are_temporary_in_bases_and_deltas() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = publisher(tmp.path());
    let mut r = Reader::open(tmp.path()).unwrap();
    let temporary = |r: &mut Reader, table: Table, key: &str| {
        matches!(r.lookup(table, key), Err(Error::Lookup(_)))
    };

    // In a base: the address, its +ext form and an alias leading to it.
    let mut d = directory();
    d.set_ambiguous("dup@example.org", 2);
    d.set_alias("todup@example.org", vec!["dup@example.org".into()]);
    let d = Arc::new(d);
    assert_eq!(p.publish(&d).unwrap().kind, FileKind::Base);
    compare(&d, &mut r);
    for (table, key) in [
        (Table::Mailboxes, "dup@example.org"),
        (Table::Mailboxes, "DUP+x@example.org"),
        (Table::Aliases, "dup@example.org"),
        (Table::Aliases, "todup@example.org"),
        (Table::Senders, "dup@example.org"),
    ] {
        assert!(temporary(&mut r, table, key), "{table} {key}");
    }

    // Healed in a delta: the remaining claim is served again.
    let mut healed = Directory::clone(&d);
    healed.clear_ambiguous("dup@example.org");
    healed.insert_user(&UserSpec {
        login: "dup@example.org".into(),
        enabled: true,
        ..Default::default()
    });
    let healed = Arc::new(healed);
    assert_eq!(p.publish(&healed).unwrap().kind, FileKind::Delta);
    compare(&healed, &mut r);
    assert_eq!(
        r.lookup(Table::Mailboxes, "dup@example.org")
            .unwrap()
            .unwrap()
            .as_str(),
        "dup@example.org"
    );

    // Contested again in a delta: temporary again, never "not found".
    let mut again = Directory::clone(&healed);
    again.set_ambiguous("bob@example.org", 3);
    let again = Arc::new(again);
    assert_eq!(p.publish(&again).unwrap().kind, FileKind::Delta);
    compare(&again, &mut r);
    assert!(temporary(&mut r, Table::Mailboxes, "bob@example.org"));
    assert!(temporary(&mut r, Table::Aliases, "team@example.org"));
}

#[test]
fn a_large_change_set_becomes_a_base() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = Limits {
        delta_max_entries: 10,
        ..Limits::default()
    };
    let mut p = Publisher::open(tmp.path(), 0o640, limits).unwrap();
    let d = Arc::new(directory());
    p.publish(&d).unwrap();
    let mut next = Directory::clone(&d);
    for i in 0..20 {
        next.set_alias(&format!("a{i}@example.org"), vec!["bob@example.org".into()]);
    }
    let next = Arc::new(next);
    assert_eq!(p.publish(&next).unwrap().kind, FileKind::Base);
    let mut r = Reader::open(tmp.path()).unwrap();
    compare(&next, &mut r);
}

#[test]
fn unavailable_and_not_authoritative_are_temporary() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = publisher(tmp.path());
    let mut d = directory();
    d.set_authoritative(false, Some("ldap loading"));
    let d = Arc::new(d);
    p.publish(&d).unwrap();
    let mut r = Reader::open(tmp.path()).unwrap();
    // Hits still answer; an address miss cannot be trusted; garbage is
    // still "not found" (as the socketmap does).
    assert!(
        r.lookup(Table::Mailboxes, "alice@example.org")
            .unwrap()
            .is_some()
    );
    assert!(matches!(
        r.lookup(Table::Mailboxes, "nobody@example.org"),
        Err(Error::NotAuthoritative)
    ));
    assert_eq!(r.lookup(Table::Mailboxes, "no-at-sign").unwrap(), None);

    p.mark_unavailable();
    assert!(matches!(
        r.lookup(Table::Mailboxes, "alice@example.org"),
        Err(Error::Unavailable)
    ));
    let mut d2 = Directory::clone(&d);
    d2.set_authoritative(true, None);
    p.publish(&Arc::new(d2)).unwrap();
    assert_eq!(
        r.lookup(Table::Mailboxes, "nobody@example.org").unwrap(),
        None
    );
}

/// Publish a hand-made generation: what a corrupt or truncated file looks
/// like to a reader.
fn announce(dir: &std::path::Path, generation: u64, bytes: &[u8]) {
    std::fs::write(dir.join(file_name(generation)), bytes).unwrap();
    let control = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("control"))
        .unwrap();
    control
        .write_all_at(
            &(generation << 8 | STATE_OK).to_le_bytes(),
            CONTROL_WORD as u64,
        )
        .unwrap();
}

#[test]
fn damaged_files_fail_temporarily() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = publisher(tmp.path());
    let d = Arc::new(directory());
    let g = p.publish(&d).unwrap().generation;
    let good = std::fs::read(tmp.path().join(file_name(g))).unwrap();
    let mut r = Reader::open(tmp.path()).unwrap();
    assert!(
        r.lookup(Table::Mailboxes, "alice@example.org")
            .unwrap()
            .is_some()
    );

    let mut next = g;
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("header only", good[..100].to_vec()),
    ];
    let mut flipped = good.clone();
    flipped[30] ^= 0x40;
    cases.push(("checksum", flipped));
    let mut garbage_slots = good.clone();
    for b in &mut garbage_slots[128..400] {
        *b = 0xff;
    }
    cases.push(("slots", garbage_slots));
    for (what, bytes) in cases {
        next += 1;
        // The file's own header names another generation unless rewritten,
        // which is itself an error: all of these must fail.
        announce(tmp.path(), next, &bytes);
        for key in ["alice@example.org", "nobody@example.org"] {
            match r.lookup(Table::Mailboxes, key) {
                Err(Error::Format(..) | Error::Io(..)) => {}
                other => panic!("{what}: {key}: {other:?}"),
            }
        }
    }
    // A missing generation.
    announce(tmp.path(), next + 1, &good);
    std::fs::remove_file(tmp.path().join(file_name(next + 1))).unwrap();
    assert!(matches!(
        r.lookup(Table::Mailboxes, "alice@example.org"),
        Err(Error::Io(..))
    ));
}

#[test]
fn replaced_files_are_removed_after_the_grace_period() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = publisher(tmp.path());
    let d = Arc::new(directory());
    let g1 = p.publish(&d).unwrap().generation;
    let g2 = p.publish(&Arc::new(directory())).unwrap().generation;
    let snaps = || {
        std::fs::read_dir(tmp.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_str()
                    .unwrap()
                    .starts_with("snap-")
            })
            .count()
    };
    assert_eq!(snaps(), 2);
    assert_eq!(p.collect(Instant::now()), 0);
    assert_eq!(p.collect(Instant::now() + Duration::from_secs(6)), 1);
    assert!(!tmp.path().join(file_name(g1)).exists());
    assert!(tmp.path().join(file_name(g2)).exists());

    // A restarted daemon keeps serving the published generation until its
    // first publication, and continues the numbering.
    drop(p);
    let mut p = publisher(tmp.path());
    assert_eq!(p.generation(), g2);
    let mut r = Reader::open(tmp.path()).unwrap();
    assert!(
        r.lookup(Table::Mailboxes, "alice@example.org")
            .unwrap()
            .is_some()
    );
    assert_eq!(p.publish(&d).unwrap().generation, g2 + 1);
}
