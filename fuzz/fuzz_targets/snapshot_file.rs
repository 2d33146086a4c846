//! A snapshot table file is read inside Postfix's processes: any bytes must
//! give a clean answer or a `FormatError`, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ramdir_snapshot::format::{Kind, TableFile};

fuzz_target!(|data: &[u8]| {
    let Ok(t) = TableFile::parse(data) else {
        return;
    };
    let _ = t.delimiter();
    for kind in [
        Kind::User,
        Kind::Alias,
        Kind::Sender,
        Kind::Domain,
        Kind::Ambiguous,
    ] {
        for key in ["alice@example.org", "@example.org", "example.org", "", "x"] {
            if let Ok(Some(r)) = t.find(kind, key) {
                assert_eq!(r.key, key);
                assert_eq!(r.key_nul.last(), Some(&0));
            }
        }
    }
});
