//! The Postfix map plugin's reader (`ramdir_snapshot::Reader`): the map
//! directory's control page and table files, mapped and looked up as the
//! plugin does inside Postfix.
//!
//! First byte bit 7 clear: differential. The rest is a directory in the
//! `files` target's form (four files separated by 0xff; the first byte
//! picks the settings), loaded with `ramdir_core::files::load` and
//! published with the daemon's `Publisher`, then edits to it (a fifth
//! piece: lines such as `+a key target…`, `-u login`, `+d domain`; a blank
//! line publishes the edits so far), each batch published as the daemon
//! publishes changes (a delta on the base while it is small). Reference:
//! after each publication, every key of the input, plus variants (case,
//! extension, catch-all), looked up through one long-lived reader answers
//! as `ramdir_core::maps::lookup` on the directory itself.
//!
//! Bit 7 set: hostile. The rest is a control word (8 bytes) and two table
//! files (`snap-1`, `snap-2`), separated by 0xff 0xff 0xfe; with bit 6 set
//! the files' headers are repaired (magic, version, generation, length,
//! checksum). Lookups must answer or fail, never panic or loop.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use ramdir_core::files::load;
use ramdir_core::maps::{self, Outcome, Table};
use ramdir_core::{Directory, Settings};
use ramdir_fuzz::{pieces, settings, temp_dir, write_sources};
use ramdir_snapshot::format::{CONTROL_LEN, CONTROL_MAGIC, HEADER_LEN, MAGIC, VERSION, checksum};
use ramdir_snapshot::{Limits, Publisher, Reader};

const TABLES: [Table; 4] = [
    Table::Domains,
    Table::Mailboxes,
    Table::Aliases,
    Table::Senders,
];

/// A fresh, empty directory under the root.
fn fresh(name: &str) -> PathBuf {
    let d = temp_dir("snap").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    d
}

fn directory(src: &Path, parts: &[&[u8]], s: &Settings) -> Option<Directory> {
    load(&write_sources(src, parts), s.clone()).ok()
}

/// Keys to look up: every word of the sources, and variants of each.
fn keys(parts: &[&[u8]]) -> Vec<String> {
    let mut out = Vec::new();
    for p in parts {
        let text = String::from_utf8_lossy(p);
        for w in text.split(|c: char| c.is_whitespace() || c == ':' || c == ',') {
            if w.is_empty() || out.len() > 64 {
                continue;
            }
            out.push(w.to_string());
            out.push(w.to_uppercase());
            if let Some((l, d)) = w.split_once('@') {
                out.push(format!("{l}+x@{d}"));
                out.push(format!("@{d}"));
                out.push(format!("nobody@{d}"));
            }
        }
    }
    out.push(String::new());
    out
}

fn check(reader: &mut Reader, dir: &Directory, keys: &[String]) {
    for k in keys {
        for t in TABLES {
            let want = maps::lookup(dir, t, k);
            let got = reader.lookup(t, k);
            match (&want, &got) {
                (Outcome::Found(v), Ok(Some(h))) => {
                    assert_eq!(
                        Some(h.as_str().to_string()),
                        Outcome::value(v),
                        "{t:?} {k:?}"
                    )
                }
                // A miss in a directory that is not authoritative fails
                // temporarily (the reader's rule, as the socketmap's).
                (Outcome::NotFound, Err(ramdir_snapshot::Error::NotAuthoritative))
                    if !dir.authoritative() && maps::source_key(dir, t, k).is_some() => {}
                (Outcome::NotFound, Ok(None)) | (Outcome::Trouble(_), Err(_)) => {}
                _ => panic!("{t:?} {k:?}: directory {want:?}, reader {got:?}"),
            }
        }
    }
}

/// A map key as the loader makes it: an address (folded) or `@domain`.
fn key(s: &Settings, k: &str) -> Option<String> {
    match k.strip_prefix('@') {
        Some(d) => s.normalizer.domain(d).map(|d| format!("@{d}")),
        None => s.normalizer.address(k).map(|a| a.full()),
    }
}

/// Apply one edit line to `d`; lines that do not parse are skipped.
fn edit(d: &mut Directory, s: &Settings, line: &str) {
    // The directory's sources never hold a NUL (the file loader refuses
    // it, LDAP addresses are normalised), and the snapshot drops it.
    if line.contains('\0') {
        return;
    }
    let (op, rest) = line.split_at_checked(2).unwrap_or((line, ""));
    let mut words = rest.split_whitespace();
    let first = words.next().unwrap_or("");
    let list = || words.clone().map(str::to_string).collect::<Vec<_>>();
    match op {
        "+u" => {
            if let Ok(spec) = ramdir_core::files::parse_passwd_line(rest, s) {
                d.insert_user(&spec);
            }
        }
        "-u" => {
            if let Some(k) = key(s, first) {
                d.remove_user(&k);
            }
        }
        "+a" | "+s" => {
            if let Some(k) = key(s, first) {
                if op == "+a" {
                    d.set_alias(&k, list());
                } else {
                    d.set_sender_logins(&k, list());
                }
            }
        }
        "-a" | "-s" | "-x" => {
            if let Some(k) = key(s, first) {
                match op {
                    "-a" => d.remove_alias(&k),
                    "-s" => d.remove_sender_logins(&k),
                    _ => d.clear_ambiguous(&k),
                };
            }
        }
        "+x" => {
            if let Some(k) = key(s, first) {
                d.set_ambiguous(&k, words.next().and_then(|n| n.parse().ok()).unwrap_or(2));
            }
        }
        "+d" | "-d" => {
            if let Some(dom) = s.normalizer.domain(first) {
                if op == "+d" {
                    d.add_domain(&dom);
                } else {
                    d.remove_domain(&dom);
                }
            }
        }
        "!a" => d.set_authoritative(false, Some("fuzz")),
        _ => {}
    }
}

fn differential(first: u8, data: &[u8]) {
    let parts = pieces(data, 0xff, 5);
    let s = settings(first);
    let maps_dir = fresh("maps");
    let src = fresh("src");
    let mut publisher = Publisher::open(&maps_dir, 0o600, Limits::default()).expect("publisher");
    let mut reader = Reader::open(&maps_dir).expect("reader");
    let keys = keys(&parts);
    let Some(dir) = directory(&src, &parts[..parts.len().min(4)], &s) else {
        return;
    };
    let mut dir = Arc::new(dir);
    publisher.publish(&dir).expect("publish");
    check(&mut reader, &dir, &keys);
    let Some(edits) = parts.get(4) else {
        return;
    };
    let edits = String::from_utf8_lossy(edits);
    for batch in edits.split("\n\n").take(4) {
        let mut next = (*dir).clone();
        for line in batch.lines() {
            edit(&mut next, &s, line);
        }
        dir = Arc::new(next);
        publisher.publish(&dir).expect("publish");
        check(&mut reader, &dir, &keys);
    }
}

fn repair(file: &mut [u8], generation: u64) {
    if file.len() < HEADER_LEN {
        return;
    }
    file[0..8].copy_from_slice(&MAGIC);
    file[8..12].copy_from_slice(&VERSION.to_le_bytes());
    file[16..24].copy_from_slice(&generation.to_le_bytes());
    let len = file.len() as u64;
    file[32..40].copy_from_slice(&len.to_le_bytes());
    let sum = checksum(&file[..120]);
    file[120..128].copy_from_slice(&sum.to_le_bytes());
}

fn hostile(flags: u8, data: &[u8]) {
    let d = fresh("hostile");
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut rest = data;
    while parts.len() < 2 {
        match rest.windows(3).position(|w| w == [0xff, 0xff, 0xfe]) {
            Some(i) => {
                parts.push(rest[..i].to_vec());
                rest = &rest[i + 3..];
            }
            None => break,
        }
    }
    parts.push(rest.to_vec());
    let mut control = vec![0u8; CONTROL_LEN];
    control[..8].copy_from_slice(&CONTROL_MAGIC);
    let word = parts[0].get(..8).map_or(2 << 8, |w| {
        u64::from_le_bytes(w.try_into().unwrap()) % (4 << 8)
    });
    control[16..24].copy_from_slice(&word.to_le_bytes());
    std::fs::write(d.join("control"), &control).expect("write");
    for (i, f) in parts.iter_mut().skip(1).enumerate() {
        let generation = i as u64 + 1;
        if flags & 0x40 != 0 {
            repair(f, generation);
        }
        std::fs::write(d.join(format!("snap-{generation:016x}")), &f).expect("write");
    }
    let mut reader = Reader::open(&d).expect("reader");
    let mut keys: Vec<String> = Vec::new();
    for p in &parts {
        for k in p.split(|&b| b == 0).take(32) {
            keys.push(String::from_utf8_lossy(k).into_owned());
        }
    }
    for k in &keys {
        for t in TABLES {
            if let Ok(Some(h)) = reader.lookup(t, k) {
                let _ = h.as_str();
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    if first & 0x80 == 0 {
        differential(first, rest);
    } else {
        hostile(first, rest);
    }
});
