//! `stack-then-fail <debian12|debian13>`: the body of a failing test, run
//! as a child process by `tests/harness_cleanup.rs`. Starts everything the
//! harness offers in one stack directory — Postfix, Dovecot and ramdir
//! (a [`MailStack`] with Postfix in front), slapd and redis-server — prints
//! `ready` and reads a line from stdin: `panic` makes it fail as a test
//! does (a panic that unwinds through the harness's guards); the parent
//! may instead kill it (SIGKILL), when no guard runs at all.

use std::io::{BufRead, Write};

use ramdir_integration::dovecot::{MailStack, MailStackOptions};
use ramdir_integration::redis::Redis;
use ramdir_integration::slapd::{Slapd, users_ldif};
use ramdir_integration::{DirectoryContent, Flavor};

const USERS: &str = "alice@example.org:{PLAIN}alice-pw:5000:5000::::\n";

fn main() {
    let flavor = match std::env::args().nth(1).as_deref() {
        Some("debian12") => Flavor::Debian12,
        Some("debian13") => Flavor::Debian13,
        other => panic!("usage: stack-then-fail <debian12|debian13> (got {other:?})"),
    };
    let content = DirectoryContent {
        users: USERS.into(),
        aliases: "info@example.org alice@example.org\n".into(),
        domains: "example.org\n".into(),
        senders: String::new(),
    };
    let stack = MailStack::start(
        &content,
        &MailStackOptions {
            postfix: true,
            flavor,
            ..Default::default()
        },
    );
    let slapd = Slapd::start(&stack.dir, &users_ldif(1));
    let redis = Redis::start(&stack.dir.join("redis"));
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").expect("write to the parent");
    out.flush().expect("write to the parent");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .expect("read from the parent");
    if line.trim() == "panic" {
        panic!("forced failure with the whole stack running");
    }
    drop((redis, slapd, stack));
}
