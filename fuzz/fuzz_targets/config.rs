//! `ramdir.toml` (`ramdir::config::Config::parse`): TOML read strictly by
//! serde, then every value validated (sizes, quota rules, socket modes,
//! durations, paths).
//!
//! No reference parser exists for the validation; checked: no panic, the
//! same text parses the same way twice, and an error's line number lies
//! within the text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use ramdir::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/ramdir/ramdir.toml");
    let a = Config::parse(path, text);
    let b = Config::parse(path, text);
    match (&a, &b) {
        (Ok(x), Ok(y)) => assert_eq!(format!("{x:?}"), format!("{y:?}")),
        (Err(x), Err(y)) => {
            assert_eq!(x.to_string(), y.to_string());
            if let Some(l) = x.line {
                assert!(l >= 1 && l <= text.lines().count() + 1, "line {l}: {x}");
            }
        }
        _ => panic!("parsed differently twice"),
    }
});
