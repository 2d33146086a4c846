//! Pieces for tests that run ramdir as several "hosts" sharing quota usage
//! through Redis (`[quota] shared`, docs/shared-usage.md): the `[quota]`
//! keys of one host, Redis's copy of a user's usage, the store host's
//! committed usage as Dovecot reads it, and the policy request Postfix's
//! smtpd sends at RCPT time. Used by `tests/shared_usage.rs` and
//! `tests/two_hosts.rs`.
//!
//! The truth for the Redis layout (`<prefix>u:<user>` hash with `b`, `m`,
//! `v`, `h`) is ramdir's publisher (`ramdir/src/shared.rs`); for the policy
//! request, Postfix's `smtpd_check.c` (`check_policy_service`) and
//! SMTPD_POLICY_README.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::dovecot::{DictClient, Usage};
use crate::redis::Redis;

/// The `[quota]` keys that turn shared usage on for the host `host_id`
/// (other hosts' usage is stale after `stale_after_secs` without Redis).
pub fn shared_quota_keys(redis: &Redis, host_id: &str, stale_after_secs: u64) -> String {
    format!(
        "shared = {:?}\nhost_id = {host_id:?}\nstale_after_secs = {stale_after_secs}\n",
        redis.url()
    )
}

/// Redis's copy of `user`'s usage under the default prefix `ramdir:`:
/// (bytes, messages, owning host); `None` while any field is missing.
pub fn in_redis(redis: &Redis, user: &str) -> Option<(i64, i64, String)> {
    let h = redis.hgetall(&format!("ramdir:u:{user}"));
    let get = |k: &str| h.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
    Some((get("b")?.parse().ok()?, get("m")?.parse().ok()?, get("h")?))
}

/// Wait (up to `cap`) until Redis holds exactly `committed()` for `user`,
/// owned by `owner`: the owner has published its last commit. `what` names
/// the moment in the failure message.
pub fn wait_redis_equals(
    redis: &Redis,
    user: &str,
    owner: &str,
    cap: Duration,
    what: &str,
    committed: impl Fn() -> Usage,
) {
    let start = Instant::now();
    loop {
        let u = committed();
        let want = (
            u.storage.unwrap_or(-1),
            u.messages.unwrap_or(-1),
            owner.to_string(),
        );
        let got = in_redis(redis, user);
        if got.as_ref() == Some(&want) {
            return;
        }
        assert!(
            start.elapsed() < cap,
            "{what}: Redis holds {got:?} for {user}, the owner {want:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `user`'s counters as Dovecot reads them from the ramdir whose quota dict
/// listens on `dict_socket` (`L priv/quota/{storage,messages}`): on the
/// owning host, the committed (redb) values.
pub fn dict_usage(dict_socket: &Path, user: &str) -> Usage {
    let mut d = DictClient::connect(dict_socket, "quota")
        .unwrap_or_else(|e| panic!("connect {}: {e}", dict_socket.display()));
    let mut get = |key: &str| -> Option<i64> {
        let r = d
            .lookup(key, user)
            .unwrap_or_else(|e| panic!("dict lookup {key} for {user}: {e}"));
        match r.strip_prefix('O') {
            Some(v) => Some(
                v.parse()
                    .unwrap_or_else(|_| panic!("dict lookup {key}: {r:?}")),
            ),
            None if r == "N" => None,
            None => panic!("dict lookup {key} for {user}: {r:?}"),
        }
    };
    Usage {
        storage: get("priv/quota/storage"),
        messages: get("priv/quota/messages"),
    }
}

/// Ask the policy service on `socket` about `RCPT TO:<rcpt>` of a
/// 1,000-byte message, as Postfix's smtpd does (one request on a fresh
/// connection); the `action=` value.
pub fn policy_action(socket: &Path, rcpt: &str) -> String {
    let mut s =
        UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set read timeout");
    write!(
        s,
        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n\
         instance=1.{rcpt}\nsender=someone@outside.test\nrecipient={rcpt}\nsize=1000\n\n"
    )
    .expect("write policy request");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("policy reply");
    line.trim_end()
        .strip_prefix("action=")
        .unwrap_or_else(|| panic!("policy reply {line:?}"))
        .to_string()
}
