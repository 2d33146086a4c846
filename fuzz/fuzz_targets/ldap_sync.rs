//! RFC 4533 sync messages as ramdir's live sync reads them: the Sync Info
//! intermediate message (`source::sync_info`) and an entry's Sync State
//! control (`source::sync_state`). Both are ldap3 parsers, which panic on
//! malformed BER; ramdir runs them under `catch_unwind` and turns a panic
//! into a protocol error that ends the session.
//!
//! Checked: the input, read as a BER message by ldap3 (`parse_tag`, as the
//! connection reads every message), and as a control value, gives a value
//! or an error, never a panic that escapes; ldap3's BER reader itself must
//! not panic (it reads every message of the connection, outside
//! `catch_unwind`). No reference parser exists for these messages besides
//! ldap3's.
#![no_main]

use ldap3::ResultEntry;
use ldap3::asn1::parse_tag;
use ldap3::controls::RawControl;
use libfuzzer_sys::fuzz_target;
use ramdir_fuzz::expecting_panics;
use ramdir_ldap::source::{sync_info, sync_state};

const SYNC_STATE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.2";

fuzz_target!(|data: &[u8]| {
    if let Ok((_, tag)) = parse_tag(data) {
        let re = ResultEntry::new(tag);
        let _ = expecting_panics(|| sync_info(re));
    }
    let ctrl = RawControl {
        ctype: SYNC_STATE_OID.into(),
        crit: false,
        val: Some(data.to_vec()),
    };
    if let Ok(ss) = expecting_panics(|| sync_state(&ctrl)) {
        let _ = ramdir_ldap::index::Uuid::try_from(ss.entry_uuid.as_slice());
    }
});
