//! The Postfix policy delegation protocol for the load tool, with the
//! project's codec (`ramdir_postfix::policy::codec`):
//!
//! - [`PolicyAnswer`]: the `policy-ceiling` server's protocol, reading each
//!   request in place with `PolicyRequest::parse` (as ramdir's server) and answering `action=DUNNO`
//!   with `Action::encode`.
//! - [`PolicyTarget`]: the `policy` load client. Each request is what
//!   Postfix 3.7's smtpd sends at RCPT time (all 29 attributes, in
//!   Postfix's order, see [`rcpt_request`]), encoded once up front with
//!   `PolicyRequest::encode`. Only the `instance` differs between sends:
//!   it is patched in place, a new one every `rcpts_per_mail` requests of
//!   a connection, as one smtpd process starts a new mail transaction.
//!   Replies are read with `Action::decode`.

use std::path::PathBuf;

use bytes::{Buf, BytesMut};
use ramdir_postfix::policy::codec::{Action, Attr, PolicyRequest};

use crate::ceiling::Answer;
use crate::client::{Kind, Outcome, Stream, Target, connect_hello, read_reply};
use crate::keys::{KeyPattern, KeySet, XorShift};

/// Hex digits of the part of `instance` that changes per transaction.
const SEQ_DIGITS: usize = 16;

/// The policy ceiling's protocol: `action=DUNNO` to every request. Holds
/// the connection's attribute vector, reused as ramdir's server does.
#[derive(Debug, Clone, Default)]
pub struct PolicyAnswer(Vec<Attr<'static>>);

impl Answer for PolicyAnswer {
    // As ramdir's policy server (`postfix-policy/src/policy/server.rs`).
    const READ_BUF: usize = 1024;
    const WRITE_BUF: usize = 128;

    fn step(&mut self, buf: &mut BytesMut, out: &mut BytesMut) -> Result<bool, ()> {
        // Parsed in place, as ramdir's server does.
        match PolicyRequest::parse_into(buf, std::mem::take(&mut self.0)) {
            Ok(Some((req, used))) => {
                std::hint::black_box(&req);
                Action::Dunno.encode(out);
                self.0 = req.recycle();
                buf.advance(used);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(_) => Err(()),
        }
    }
}

/// How an action counts: `DUNNO` is the normal answer, a `5NN`/`REJECT`
/// a refusal, a `4NN`/`DEFER…` a deferral.
pub fn classify(action: &str) -> Outcome {
    let word = action.split(' ').next().unwrap_or("");
    match word.as_bytes().first() {
        _ if word.eq_ignore_ascii_case("DUNNO") => Outcome::Ok,
        Some(b'5') => Outcome::NotFound,
        Some(b'4') => Outcome::Temp,
        _ if word.eq_ignore_ascii_case("REJECT") => Outcome::NotFound,
        _ if word.len() >= 5 && word[..5].eq_ignore_ascii_case("DEFER") => Outcome::Temp,
        _ => Outcome::Other,
    }
}

/// The RCPT-time request Postfix 3.7 sends for `recipient`, with every
/// attribute `check_policy_service()` sends, in its order
/// (protocols.md 2.2). Client, sender and `size` vary with `rng`; the
/// `instance` is `pid.sec.usec.` plus [`SEQ_DIGITS`] zero digits, which
/// the client overwrites per transaction. `queue_id` is empty, as at a
/// transaction's first RCPT.
pub fn rcpt_request(recipient: &str, rng: &mut XorShift) -> PolicyRequest<'static> {
    let n = rng.below(50_000);
    let host = format!("mx{}.sender{n}.example", rng.below(4));
    let pid = 0x1000 + rng.below(0xf000);
    let sec = 0x6740_0000 + rng.below(0x10_0000);
    let usec = rng.below(1_000_000);
    // Log-uniform from 1 KB to 16 MB: many small messages, a few large.
    let size = (1024.0 * 2f64.powf(rng.below(14_000) as f64 / 1000.0)) as u64;
    let attrs: [(&str, String); 29] = [
        ("request", "smtpd_access_policy".into()),
        ("protocol_state", "RCPT".into()),
        ("protocol_name", "ESMTP".into()),
        (
            "client_address",
            format!("198.51.{}.{}", n % 250, 1 + n / 250 % 250),
        ),
        ("client_name", host.clone()),
        ("client_port", (1024 + rng.below(60_000)).to_string()),
        ("reverse_client_name", host.clone()),
        ("server_address", "192.0.2.25".into()),
        ("server_port", "25".into()),
        ("helo_name", host),
        ("sender", format!("list-{n}@sender{n}.example")),
        ("recipient", recipient.into()),
        ("recipient_count", "0".into()),
        ("queue_id", String::new()),
        (
            "instance",
            format!("{pid:x}.{sec:x}.{usec:x}.{}", "0".repeat(SEQ_DIGITS)),
        ),
        ("size", size.to_string()),
        ("etrn_domain", String::new()),
        ("stress", String::new()),
        ("sasl_method", String::new()),
        ("sasl_username", String::new()),
        ("sasl_sender", String::new()),
        ("ccert_subject", String::new()),
        ("ccert_issuer", String::new()),
        ("ccert_fingerprint", String::new()),
        ("ccert_pubkey_fingerprint", String::new()),
        ("encryption_protocol", "TLSv1.3".into()),
        ("encryption_cipher", "TLS_AES_256_GCM_SHA384".into()),
        ("encryption_keysize", "256".into()),
        ("policy_context", String::new()),
    ];
    PolicyRequest {
        attrs: attrs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect(),
    }
}

/// Where the varying digits of `instance` are in an encoded request.
fn seq_offset(encoded: &[u8]) -> Option<usize> {
    let at = encoded.windows(10).position(|w| w == b"\ninstance=")? + 10;
    let end = at + encoded[at..].iter().position(|&b| b == b'\n')?;
    end.checked_sub(SEQ_DIGITS).filter(|&s| s >= at)
}

/// Write `v` as [`SEQ_DIGITS`] lower-case hex digits into `out`.
fn put_hex(out: &mut [u8], v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (k, b) in out.iter_mut().rev().enumerate() {
        *b = HEX[((v >> (4 * k)) & 15) as usize];
    }
}

/// The `policy` load: RCPT requests for a set of recipients.
pub struct PolicyTarget {
    /// The server's socket.
    pub socket: PathBuf,
    /// Encoded requests, one per recipient.
    pub reqs: KeySet,
    /// Where each request's transaction digits are.
    pub seq_at: Vec<u32>,
    /// Requests per transaction (`instance`) on a connection.
    pub rcpts_per_mail: u64,
}

impl PolicyTarget {
    /// Requests for items `0..count` of `pattern` (the recipients).
    pub fn new(
        socket: PathBuf,
        pattern: &KeyPattern,
        domains: u64,
        count: u64,
        rcpts_per_mail: u64,
        seed: u64,
    ) -> Result<PolicyTarget, String> {
        let mut rng = XorShift::new(seed, u64::MAX);
        let reqs = KeySet::build(pattern, domains, count, 720, |rcpt, buf| {
            rcpt_request(rcpt, &mut rng).encode(buf);
        });
        let seq_at = (0..reqs.len())
            .map(|i| {
                seq_offset(reqs.request(i))
                    .map(|o| o as u32)
                    .ok_or_else(|| "request without instance".to_string())
            })
            .collect::<Result<_, _>>()?;
        Ok(PolicyTarget {
            socket,
            reqs,
            seq_at,
            rcpts_per_mail: rcpts_per_mail.max(1),
        })
    }

    /// Request `i` as sent in the `n`-th request of connection `conn`.
    pub fn render(&self, i: usize, conn: usize, n: u64, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(self.reqs.request(i));
        let at = self.seq_at[i] as usize;
        let tx = ((conn as u64) << 40) | (n / self.rcpts_per_mail);
        put_hex(&mut out[at..at + SEQ_DIGITS], tx);
    }
}

/// One policy connection.
pub struct PolicyConn {
    stream: Stream,
    buf: BytesMut,
    out: Vec<u8>,
    id: usize,
    sent: u64,
}

impl Target for PolicyTarget {
    type Conn = PolicyConn;

    fn len(&self) -> usize {
        self.reqs.len()
    }

    fn kind(&self) -> Kind {
        Kind {
            map: "policy".into(),
            what: format!(
                "policy RCPT requests ({} per instance)",
                self.rcpts_per_mail
            ),
            labels: ["DUNNO", "5NN/REJECT", "4NN/DEFER", "other"],
        }
    }

    async fn connect(&self, id: usize) -> Result<Self::Conn, String> {
        let (stream, buf) = connect_hello(&self.socket, b"").await?;
        Ok(PolicyConn {
            stream,
            buf,
            out: Vec::with_capacity(1024),
            id,
            sent: 0,
        })
    }

    async fn call(&self, c: &mut Self::Conn, i: usize) -> Result<Outcome, String> {
        self.render(i, c.id, c.sent, &mut c.out);
        c.sent += 1;
        c.stream
            .write_all(&c.out)
            .await
            .map_err(|e| format!("write: {e}"))?;
        read_reply(&mut c.stream, &mut c.buf, |b| match Action::decode(b) {
            Ok(Some(a)) => Ok(Some(classify(&a))),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("bad reply: {e}")),
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_postfix_attributes_and_fresh_instances() {
        let p = KeyPattern::parse("user%07d@domain%d.test").unwrap();
        let t = PolicyTarget::new(PathBuf::from("/x"), &p, 10, 4, 2, 1).unwrap();
        let mut out = Vec::new();
        let decode = |out: &[u8]| {
            let mut b = BytesMut::from(out);
            let r = PolicyRequest::decode(&mut b).unwrap().unwrap();
            assert!(b.is_empty());
            r
        };
        t.render(3, 5, 0, &mut out);
        let r = decode(&out);
        assert_eq!(r.attrs.len(), 29);
        assert_eq!(r.attrs[0], ("request".into(), "smtpd_access_policy".into()));
        assert_eq!(r.get("protocol_state"), Some("RCPT"));
        assert_eq!(r.get("recipient"), Some("user0000003@domain3.test"));
        assert_eq!(r.attrs.last().unwrap().0, "policy_context");
        let size: u64 = r.get("size").unwrap().parse().unwrap();
        assert!((1024..=16 << 20).contains(&size), "{size}");
        let inst = |out: &[u8]| decode(out).get("instance").unwrap().to_string();
        let first = inst(&out);
        assert!(first.ends_with(".0000050000000000"), "{first}");
        // Two recipients per transaction, then a new instance; another
        // connection never shares one.
        t.render(3, 5, 1, &mut out);
        assert_eq!(inst(&out), first);
        t.render(3, 5, 2, &mut out);
        assert!(inst(&out).ends_with(".0000050000000001"));
        t.render(3, 6, 0, &mut out);
        assert_ne!(inst(&out), first);
    }

    #[test]
    fn actions_are_classified() {
        assert_eq!(classify("DUNNO"), Outcome::Ok);
        assert_eq!(classify("dunno"), Outcome::Ok);
        assert_eq!(classify("552 5.2.2 Mailbox is full"), Outcome::NotFound);
        assert_eq!(classify("REJECT Unknown user"), Outcome::NotFound);
        assert_eq!(classify("452 4.2.2 Mailbox full"), Outcome::Temp);
        assert_eq!(classify("DEFER_IF_PERMIT x"), Outcome::Temp);
        assert_eq!(classify("OK"), Outcome::Other);
        assert_eq!(classify(""), Outcome::Other);
    }

    #[test]
    fn ceiling_answers_dunno_per_request() {
        let p = KeyPattern::parse("u%d@d.test").unwrap();
        let t = PolicyTarget::new(PathBuf::from("/x"), &p, 1, 2, 1, 1).unwrap();
        let mut buf = BytesMut::from(t.reqs.request(0));
        buf.extend_from_slice(&t.reqs.request(1)[..10]);
        let mut out = BytesMut::new();
        let mut answer = PolicyAnswer::default();
        assert_eq!(answer.step(&mut buf, &mut out), Ok(true));
        assert_eq!(&out[..], b"action=DUNNO\n\n");
        assert_eq!(answer.step(&mut buf, &mut out), Ok(false));
        let mut h = [0u8; SEQ_DIGITS];
        put_hex(&mut h, 0xabc);
        assert_eq!(&h, b"0000000000000abc");
    }
}
