//! What the quota milter parses itself (indymilter parses the milter wire):
//! MAIL's `SIZE=` parameter, the RCPT address, header and body sizes
//! (`ramdir_milter::service`), and the over-quota reply of its
//! configuration (`OverQuotaReply`).
//!
//! References: `SIZE=` against `u64` parsing (saturating); a header's size
//! against the header rewritten with CRLF line ends; the body counted in
//! any chunks against its length; a parsed reply's text parses back to the
//! same reply. The recipient reading has no reference: no panic.
#![no_main]

use std::ffi::{CStr, CString};

use libfuzzer_sys::fuzz_target;
use ramdir_fuzz::pieces;
use ramdir_milter::OverQuotaReply;
use ramdir_milter::service::{Message, header_size, recipient, size_param};

/// The reference `SIZE=` reading.
fn size_ref(args: &[CString]) -> u64 {
    for a in args.iter().skip(1) {
        let b = a.as_bytes();
        if b.len() < 5 || !b[..5].eq_ignore_ascii_case(b"SIZE=") {
            continue;
        }
        let v = &b[5..];
        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
            return 0;
        }
        return std::str::from_utf8(v).unwrap().parse().unwrap_or(u64::MAX);
    }
    0
}

/// The reference header size: `name ":" [" "] value CRLF` with every
/// bare LF of the value made CRLF.
fn header_ref(name: &[u8], value: &[u8], leading_space: bool) -> u64 {
    let mut v = Vec::new();
    let mut prev = 0u8;
    for &c in value {
        if c == b'\n' && prev != b'\r' {
            v.push(b'\r');
        }
        v.push(c);
        prev = c;
    }
    (name.len() + 1 + usize::from(!leading_space) + v.len() + 2) as u64
}

fuzz_target!(|data: &[u8]| {
    let Some(&first) = data.first() else {
        return;
    };
    let parts = pieces(data, 0xff, 3);
    let args: Vec<CString> = parts[0]
        .split(|&b| b == 0)
        .map(|a| CString::new(a).unwrap())
        .collect();
    assert_eq!(size_param(&args), size_ref(&args));
    assert_eq!(Message::new(&args).declared_size, size_ref(&args));

    for a in &args {
        let r = recipient(a);
        let _ = recipient(&CString::new(r).unwrap_or_default());
    }
    let _ = recipient(CStr::from_bytes_until_nul(b"\0").unwrap());

    let hv = parts.get(1).copied().unwrap_or(b"");
    let (name, value) = hv.split_at(hv.iter().position(|&b| b == b':').unwrap_or(0));
    for ls in [false, true] {
        assert_eq!(header_size(name, value, ls), header_ref(name, value, ls));
    }

    let body = parts.get(2).copied().unwrap_or(b"");
    let mut whole = Message::default();
    whole.add_header(name, value, false);
    whole.add_body(body);
    let mut split = Message::default();
    split.add_header(name, value, false);
    for c in body.chunks(usize::from(first % 16) + 1) {
        split.add_body(c);
    }
    assert_eq!(whole.counted_size(), split.counted_size());
    assert_eq!(
        whole.counted_size(),
        header_ref(name, value, false) + 2 + body.len() as u64
    );

    let text = String::from_utf8_lossy(data);
    if let Ok(r) = text.parse::<OverQuotaReply>() {
        r.validate().expect("a parsed reply is valid");
        let again: OverQuotaReply = r.to_string().parse().expect("its text parses");
        assert_eq!(again, r);
    }
});
