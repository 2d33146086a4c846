//! The milter's logic without I/O: what is read from the MTA's events, what
//! is counted per message, and the one mapping from a quota [`Verdict`] to a
//! milter answer.
//!
//! Sizes follow RFC 1870 (the `SIZE=` extension): the message as SMTP
//! carries it, CRLF line endings included. That is what a client declares
//! with `SIZE=` at MAIL, so the RCPT-time and the end-of-message checks use
//! the same measure. See [`Message::counted_size`] for how it compares with
//! what Dovecot stores.

use std::ffi::{CStr, CString};

use ramdir_core::check::Verdict;

/// Recipients of one message that are remembered for the end-of-message
/// check. Postfix's `smtpd_recipient_limit` defaults to 1000; past this
/// bound the milter stops remembering and lets the message through at end of
/// message (each recipient was still checked at RCPT, and Dovecot's LMTP
/// enforces the quota at delivery), so a huge recipient list cannot grow a
/// connection's memory without bound.
pub const MAX_TRACKED_RECIPIENTS: usize = 1000;

/// The `SIZE=` value from MAIL's ESMTP parameters (`args[0]` is the sender,
/// the parameters follow as separate strings, as Postfix's `milter_argv()`
/// passes them).
///
/// The keyword is case-insensitive (RFC 5321 section 2.4). Absent, empty or
/// not a decimal number gives 0, "unknown", which the quota check counts as
/// 1 byte, as Dovecot's quota-status does. A number too large for `u64`
/// saturates: the client claims an enormous message, and it is refused
/// wherever any limit applies.
pub fn size_param(args: &[CString]) -> u64 {
    for arg in args.iter().skip(1) {
        let b = arg.as_bytes();
        let Some((key, value)) = b.split_at_checked(5) else {
            continue;
        };
        if !key.eq_ignore_ascii_case(b"SIZE=") {
            continue;
        }
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
            return 0;
        }
        return value.iter().fold(0u64, |n, d| {
            n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        });
    }
    0
}

/// The address of a RCPT (`args[0]`, `<user@domain>` as the client wrote
/// it): angle brackets and an RFC 5321 source route (`<@relay:user@domain>`)
/// are removed. Invalid UTF-8 is replaced, which can only make the address
/// not ours (the directory holds UTF-8 keys).
pub fn recipient(arg: &CStr) -> String {
    let s = String::from_utf8_lossy(arg.to_bytes());
    let s = s.trim();
    let s = s.strip_prefix('<').unwrap_or(s);
    let s = s.strip_suffix('>').unwrap_or(s);
    // A source route is `@host,@host:` before the mailbox; `:` cannot occur
    // unquoted in a mailbox otherwise.
    let s = match s.strip_prefix('@') {
        Some(route) => route.split_once(':').map_or(s, |(_, mailbox)| mailbox),
        None => s,
    };
    s.to_string()
}

/// Bytes one header field takes in the message: `name ":" value CRLF`.
///
/// With `leading_space` (the `HDR_LEADSPC` protocol option) the value is
/// exactly what followed the colon. Without it the MTA strips the space
/// after the colon, so one is added back, as nearly every header has one.
/// A folded value carries its line breaks; a bare LF counts as CRLF.
pub fn header_size(name: &[u8], value: &[u8], leading_space: bool) -> u64 {
    let bare_lf = value
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' && (i == 0 || value[i - 1] != b'\r'))
        .count();
    let space = usize::from(!leading_space);
    (name.len() + 1 + space + value.len() + bare_lf + 2) as u64
}

/// What the milter answers, decided in this one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Let the recipient or message through (`continue`; never `accept`,
    /// which would end the milter's events for the whole message, G18).
    Continue,
    /// Refuse with the configured over-quota reply.
    OverQuota,
    /// The check could not be made: tempfail. Never `continue`: an unknown
    /// state is not a yes (style.md, "a temporary failure is never not
    /// found").
    Tempfail,
}

/// Map a quota verdict to the answer.
pub fn answer(verdict: &Verdict) -> Answer {
    match verdict {
        Verdict::Accept | Verdict::NotOurs => Answer::Continue,
        Verdict::OverQuota { .. } => Answer::OverQuota,
        // Usage that may be old never refuses permanently.
        Verdict::OverQuotaStale { .. } | Verdict::Trouble(_) => Answer::Tempfail,
    }
}

/// What the milter knows about the message in progress. A new one starts
/// at every MAIL, and abort and end of message drop it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// `SIZE=` from MAIL; 0 when unknown.
    pub declared_size: u64,
    /// Recipients let through at RCPT, as the client wrote them (without
    /// brackets), for the end-of-message check.
    pub recipients: Vec<String>,
    /// The end-of-message check can no longer refuse the message: a
    /// recipient is not ours (the message goes there whatever the quota),
    /// or there were more than [`MAX_TRACKED_RECIPIENTS`]. The body is then
    /// skipped when the MTA allows it.
    pub settled: bool,
    header_bytes: u64,
    body_bytes: u64,
}

impl Message {
    /// A message whose MAIL carried these ESMTP arguments.
    pub fn new(mail_args: &[CString]) -> Message {
        Message {
            declared_size: size_param(mail_args),
            ..Message::default()
        }
    }

    /// Remember a recipient that was let through with `verdict`.
    pub fn let_through(&mut self, rcpt: String, verdict: &Verdict) {
        if self.settled {
            return;
        }
        // `check_message` accepts any message with a recipient that is not
        // ours, and refuses only when every recipient is over quota.
        if *verdict == Verdict::NotOurs || self.recipients.len() >= MAX_TRACKED_RECIPIENTS {
            self.settled = true;
            self.recipients = Vec::new();
            return;
        }
        self.recipients.push(rcpt);
    }

    /// Count one header field (see [`header_size`]).
    pub fn add_header(&mut self, name: &[u8], value: &[u8], leading_space: bool) {
        self.header_bytes =
            self.header_bytes
                .saturating_add(header_size(name, value, leading_space));
    }

    /// Count one body chunk, as received.
    pub fn add_body(&mut self, chunk: &[u8]) {
        self.body_bytes = self.body_bytes.saturating_add(chunk.len() as u64);
    }

    /// The message size used at end of message: the header fields, the
    /// empty line that ends them, and the body, in SMTP (CRLF) form.
    ///
    /// Dovecot stores a little differently: with maildir (the default
    /// `mail_save_crlf = no`) lines end in LF, one byte fewer per line, and
    /// delivery adds `Return-Path:`/`Delivered-To:` (and Postfix its
    /// `Received:`), a few hundred bytes more. Both differences are small
    /// against `quota_grace` (10% of the limit by default), and they pull in
    /// opposite directions; counting as SMTP does keeps the end-of-message
    /// check consistent with the `SIZE=` checked at RCPT.
    pub fn counted_size(&self) -> u64 {
        self.header_bytes
            .saturating_add(2)
            .saturating_add(self.body_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<CString> {
        a.iter().map(|s| CString::new(*s).unwrap()).collect()
    }

    #[test]
    fn size_param_is_read_case_insensitively_and_garbage_means_unknown() {
        let cases: &[(&[&str], u64)] = &[
            (&["<a@x.org>", "SIZE=123"], 123),
            (&["<a@x.org>", "size=123"], 123),
            (&["<a@x.org>", "Size=0"], 0),
            (
                &["<a@x.org>", "BODY=8BITMIME", "SIZE=4096", "SMTPUTF8"],
                4096,
            ),
            (&["<a@x.org>"], 0),
            (&["<>"], 0),
            (&["<a@x.org>", "BODY=8BITMIME"], 0),
            (&["<a@x.org>", "SIZE="], 0),
            (&["<a@x.org>", "SIZE=12k"], 0),
            (&["<a@x.org>", "SIZE=-5"], 0),
            (&["<a@x.org>", "SIZE= 5"], 0),
            (&["<a@x.org>", "SIZE=0x10"], 0),
            (&["<a@x.org>", "SIZE"], 0),
            (&["<a@x.org>", "SIZEX=5"], 0),
            (&["<a@x.org>", "XSIZE=5"], 0),
            (&["<a@x.org>", "SIZE=99999999999999999999999"], u64::MAX),
            (&["<a@x.org>", "SIZE=00042"], 42),
            // The sender itself is never a parameter.
            (&["SIZE=5"], 0),
            // The first SIZE= wins.
            (&["<a@x.org>", "SIZE=1", "SIZE=2"], 1),
        ];
        for (a, want) in cases {
            assert_eq!(size_param(&args(a)), *want, "{a:?}");
        }
        assert_eq!(size_param(&[]), 0);
        // Non-UTF-8 bytes are just garbage.
        let odd = vec![
            CString::new("<a@x.org>").unwrap(),
            CString::new(b"SIZE=\xff1".to_vec()).unwrap(),
        ];
        assert_eq!(size_param(&odd), 0);
    }

    #[test]
    fn recipient_loses_brackets_and_source_route() {
        let cases = [
            ("<user@x.org>", "user@x.org"),
            ("user@x.org", "user@x.org"),
            (" <User+tag@X.org> ", "User+tag@X.org"),
            ("<@relay.test:user@x.org>", "user@x.org"),
            ("<@a.test,@b.test:user@x.org>", "user@x.org"),
            ("<postmaster>", "postmaster"),
            ("<>", ""),
            ("<", ""),
            ("<@broken-route>", "@broken-route"),
            ("<\"odd:local\"@x.org>", "\"odd:local\"@x.org"),
        ];
        for (arg, want) in cases {
            assert_eq!(recipient(&CString::new(arg).unwrap()), want, "{arg:?}");
        }
        let bad = CString::new(b"<us\xffer@x.org>".to_vec()).unwrap();
        assert_eq!(recipient(&bad), "us\u{fffd}er@x.org");
    }

    #[test]
    fn header_size_counts_the_field_as_it_was_on_the_wire() {
        // "Subject: hello\r\n" is 16 bytes either way.
        assert_eq!(header_size(b"Subject", b"hello", false), 16);
        assert_eq!(header_size(b"Subject", b" hello", true), 16);
        // Folded: "To: a,\r\n\tb\r\n" is 12 bytes; a bare LF counts as CRLF.
        assert_eq!(header_size(b"To", b"a,\r\n\tb", false), 12);
        assert_eq!(header_size(b"To", b"a,\n\tb", false), 12);
        assert_eq!(header_size(b"To", b"\n\tb", false), 10);
        assert_eq!(header_size(b"X", b"", true), 4);
    }

    #[test]
    fn answers_map_verdicts_in_one_place() {
        assert_eq!(answer(&Verdict::Accept), Answer::Continue);
        assert_eq!(answer(&Verdict::NotOurs), Answer::Continue);
        assert_eq!(
            answer(&Verdict::OverQuota {
                mailboxes: vec!["a@x.org".into()]
            }),
            Answer::OverQuota
        );
        assert_eq!(answer(&Verdict::Trouble("disk".into())), Answer::Tempfail);
        assert_eq!(
            answer(&Verdict::OverQuotaStale {
                mailboxes: vec!["a@x.org".into()]
            }),
            Answer::Tempfail
        );
    }

    #[test]
    fn message_counts_headers_separator_and_body() {
        let mut m = Message::new(&args(&["<a@x.org>", "SIZE=77"]));
        assert_eq!(m.declared_size, 77);
        assert_eq!(m.counted_size(), 2);
        m.add_header(b"Subject", b"hello", false);
        m.add_body(b"line\r\n");
        m.add_body(b"");
        assert_eq!(m.counted_size(), 16 + 2 + 6);
    }

    #[test]
    fn a_recipient_that_is_not_ours_settles_the_message() {
        let mut m = Message::default();
        m.let_through("a@x.org".into(), &Verdict::Accept);
        assert!(!m.settled);
        assert_eq!(m.recipients, ["a@x.org"]);
        m.let_through("b@remote.test".into(), &Verdict::NotOurs);
        assert!(m.settled);
        assert!(m.recipients.is_empty());
        m.let_through("c@x.org".into(), &Verdict::Accept);
        assert!(m.settled && m.recipients.is_empty());
    }

    #[test]
    fn too_many_recipients_settle_the_message() {
        let mut m = Message::default();
        for i in 0..MAX_TRACKED_RECIPIENTS {
            m.let_through(format!("u{i}@x.org"), &Verdict::Accept);
        }
        assert!(!m.settled);
        assert_eq!(m.recipients.len(), MAX_TRACKED_RECIPIENTS);
        m.let_through("one-more@x.org".into(), &Verdict::Accept);
        assert!(m.settled);
        assert!(m.recipients.is_empty());
    }
}
