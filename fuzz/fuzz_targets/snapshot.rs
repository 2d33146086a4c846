//! The Postfix map plugin's table files (`ramdir_snapshot::format`),
//! treated as hostile: `TableFile::parse` (the header), `delimiter` and
//! `find` over arbitrary bytes.
//!
//! The first byte picks the mode. Even: the rest is a list of records
//! (kind, removed flag, key, values), built into a file with the daemon's
//! `Builder`; reference: every record is found again, the first of equal
//! keys winning, with its values and flag. Odd: the rest is a table file;
//! with bit 1 set its header is repaired (magic, version, length,
//! checksum) so that the fuzzer reaches the slots and records behind it;
//! every key named in the file is looked up (no panic, no endless probe).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ramdir_fuzz::pieces;
use ramdir_snapshot::format::{
    Builder, FileKind, HEADER_LEN, Kind, MAGIC, TableFile, VERSION, checksum,
};

const KINDS: [Kind; 5] = [
    Kind::User,
    Kind::Alias,
    Kind::Sender,
    Kind::Domain,
    Kind::Ambiguous,
];

fn built(data: &[u8]) {
    let mut b = Builder::with_capacity(0, 0);
    let mut want: Vec<(Kind, String, bool, String)> = Vec::new();
    for rec in data.split(|&c| c == b'\n') {
        let Some((&k, rest)) = rec.split_first() else {
            continue;
        };
        let kind = KINDS[usize::from(k % 5)];
        let removed = k & 8 != 0;
        let text = String::from_utf8_lossy(rest);
        let mut it = text.split('\t');
        let key = it.next().unwrap_or("");
        let values: Vec<&str> = it.collect();
        assert!(b.add(kind, key, removed, values.iter().copied()));
        if !want.iter().any(|(k, s, ..)| *k == kind && s == key) {
            let v: Vec<String> = values.iter().map(|v| v.replace('\0', "")).collect();
            want.push((kind, key.to_string(), removed, v.join("\0")));
        }
    }
    let delim = if data.len().is_multiple_of(2) {
        "+"
    } else {
        ""
    };
    let file = b.finish(FileKind::Base, 7, 7, 1, delim);
    let t = TableFile::parse(&file).expect("the builder's file parses");
    assert_eq!(t.delimiter().unwrap(), delim);
    for (kind, key, removed, value) in &want {
        let r = t.find(*kind, key).unwrap().expect("every record is found");
        assert_eq!(r.key, key);
        assert_eq!(r.removed, *removed);
        assert_eq!(r.value, value);
        assert_eq!(r.key_nul, [key.as_bytes(), b"\0"].concat());
    }
}

fn hostile(data: &[u8], repair: bool) {
    let mut file = data.to_vec();
    if repair && file.len() >= HEADER_LEN {
        file[0..8].copy_from_slice(&MAGIC);
        file[8..12].copy_from_slice(&VERSION.to_le_bytes());
        let len = file.len() as u64;
        file[32..40].copy_from_slice(&len.to_le_bytes());
        let sum = checksum(&file[..120]);
        file[120..128].copy_from_slice(&sum.to_le_bytes());
    }
    let Ok(t) = TableFile::parse(&file) else {
        return;
    };
    let _ = t.delimiter();
    // Keys: the file's own NUL-separated strings, as records hold them.
    for key in pieces(&file[HEADER_LEN..], 0, 64) {
        let key = String::from_utf8_lossy(key);
        for kind in KINDS {
            if let Ok(Some(r)) = t.find(kind, &key) {
                assert_eq!(r.key, key);
                assert_eq!(r.key_nul.last(), Some(&0));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        built(rest);
    } else {
        hostile(rest, mode & 2 != 0);
    }
});
