//! LDAP search result entries read in place (`ramdir_ldap::ber` through
//! `Resolved::view_ber`, the full load's reader), then mapped to users and
//! aliases.
//!
//! Reference: ldap3's own BER parser (`lber::parse_tag`) and the tree
//! reader `Resolved::view`, which the live sync uses. Whatever the in-place
//! reader accepts, the reference reads alike; whatever the reference
//! accepts (tags below 31, which is all LDAP uses), re-encoded by ldap3,
//! the in-place reader reads alike.
#![no_main]

use std::sync::OnceLock;

use bytes::BytesMut;
use ldap3::asn1::{PL, StructureTag, parse_tag, write};
use libfuzzer_sys::fuzz_target;
use ramdir_core::address::Normalizer;
use ramdir_ldap::mapping::{Mapping, Resolved};

fn resolved() -> &'static Resolved {
    static R: OnceLock<Resolved> = OnceLock::new();
    R.get_or_init(|| {
        Mapping {
            quota_message_count: Some("mailQuotaMessages".into()),
            quota_rule: Some("mailQuotaRule".into()),
            ..Mapping::default()
        }
        .resolve()
    })
}

/// Whether every tag in the tree has a one-byte identifier.
fn small_ids(t: &StructureTag) -> bool {
    t.id < 31
        && match &t.payload {
            PL::P(_) => true,
            PL::C(inner) => inner.iter().all(small_ids),
        }
}

fuzz_target!(|data: &[u8]| {
    let r = resolved();
    let n = Normalizer::default();
    let fast = r.view_ber(data);
    let reference = parse_tag(data).ok().map(|(_, tag)| tag);
    if let Ok(v) = &fast {
        let tag = reference
            .as_ref()
            .expect("ldap3 reads an entry ramdir reads");
        let slow = r.view(tag).expect("the tree reader reads it too");
        assert_eq!(v, &slow);
        let _ = r.entry_uuid(v).and_then(ramdir_ldap::index::parse_uuid);
        let _ = r.map(v, &n);
    }
    if let Some(tag) = reference.filter(small_ids)
        && let Ok(slow) = r.view(&tag)
    {
        let mut enc = BytesMut::new();
        write::encode_into(&mut enc, tag.clone()).expect("ldap3 encodes its own tree");
        let again = r.view_ber(&enc).expect("ramdir reads what ldap3 encodes");
        assert_eq!(again, slow);
    }
});
