//! Policy delegation attributes (`ramdir_postfix::policy::codec`).
//!
//! References: the whole input decodes as the input fed in pieces (every
//! byte a split point for short inputs): a request still arriving is read
//! line by line, a complete one by the fast path, so this compares the two
//! readings; every decoded request encodes to bytes that parse to the same
//! attributes and take exactly those bytes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ramdir_fuzz::{split, whole};
use ramdir_postfix::policy::codec::{CodecError, PolicyRequest};

fn drain(buf: &mut BytesMut, out: &mut Vec<PolicyRequest<'static>>) -> Option<CodecError> {
    loop {
        match PolicyRequest::decode(buf) {
            Ok(Some(m)) => out.push(m),
            Ok(None) => return None,
            Err(e) => return Some(e),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let w = whole(data, drain);
    let s = split(data, drain);
    assert_eq!(w, s, "whole and split differ");
    for r in &w.0 {
        let mut b = BytesMut::new();
        r.encode(&mut b);
        let (again, used) = PolicyRequest::parse(&b)
            .expect("re-encoded request parses")
            .expect("re-encoded request is complete");
        assert_eq!(&again, r);
        assert_eq!(used, b.len());
    }
});
