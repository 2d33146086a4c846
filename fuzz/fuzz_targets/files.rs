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

use libfuzzer_sys::fuzz_target;
use ramdir_core::files::{load, parse_passwd_line};
use ramdir_core::maps::{self, Table};
use ramdir_fuzz::{pieces, settings, temp_dir, write_sources};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let parts = pieces(rest, 0xff, 4);
    let sources = write_sources(temp_dir("files"), &parts);
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
