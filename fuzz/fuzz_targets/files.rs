//! The file sources (`ramdir_core::files::load`): Dovecot passwd-files and
//! Postfix map sources (domains, aliases, sender logins), as operators
//! write them (continuation lines, comments, lists).
//!
//! The input is four files separated by 0xff (a byte that is never UTF-8):
//! domains, passwd, aliases, sender logins; its first byte picks the
//! settings (delimiter, folding, extension rules). They are written to a
//! directory under `$TMPDIR` and loaded as the daemon loads them.
//!
//! Reference: `parse_passwd_line`, applied to every line the loader reads
//! (not blank, not a comment): when the load succeeds, every login it
//! parses is a user of the directory, and there are no others. Every key of
//! the map sources is then looked up in every table (no panic).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ramdir_core::Settings;
use ramdir_core::files::{FileSources, load, parse_passwd_line};
use ramdir_core::maps::{self, Table};
use ramdir_fuzz::pieces;

fn dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("ramdir-fuzz-files-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    })
}

fn settings(b: u8) -> Settings {
    let mut s = Settings::default();
    s.normalizer.recipient_delimiter = match b & 3 {
        0 => String::new(),
        1 => "+".into(),
        2 => "+-".into(),
        _ => "ä.".into(),
    };
    s.normalizer.fold_local_part = b & 4 != 0;
    s.propagate_extension = b & 8 != 0;
    s.implicit_sender_logins = b & 16 != 0;
    s
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let parts = pieces(rest, 0xff, 4);
    let names = ["domains", "passwd", "aliases", "senders"];
    let mut paths = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let p = dir().join(name);
        std::fs::write(&p, parts.get(i).copied().unwrap_or(b"")).expect("write");
        paths.push(p);
    }
    let sources = FileSources {
        domain_files: vec![paths[0].clone()],
        passwd_files: vec![paths[1].clone()],
        alias_files: vec![paths[2].clone()],
        sender_login_files: vec![paths[3].clone()],
    };
    let s = settings(first);
    let Ok(d) = load(&sources, s.clone()) else {
        return;
    };
    let passwd = parts.get(1).copied().unwrap_or(b"");
    let text = std::str::from_utf8(passwd).expect("a loaded file is UTF-8");
    let mut logins = Vec::new();
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let spec = parse_passwd_line(line, &s).expect("a loaded line parses");
        assert!(d.has_user(&spec.login), "{:?} was loaded", spec.login);
        logins.push(spec.login);
    }
    logins.sort();
    logins.dedup();
    assert_eq!(d.counts().users, logins.len(), "no other users");
    for part in parts.iter().skip(2) {
        for key in String::from_utf8_lossy(part).split_whitespace() {
            for t in [
                Table::Domains,
                Table::Mailboxes,
                Table::Aliases,
                Table::Senders,
            ] {
                let _ = maps::lookup(&d, t, key);
            }
        }
    }
});
