//! ramdir-dovecot: the Dovecot dict proxy server.
//!
//! Dovecot reaches ramdir through its `proxy` dict client: protocol 3 in
//! Dovecot 2.3 (`src/lib-dict/dict-client.c` in 2.3.19), protocol 4 in
//! Dovecot 2.4 (`src/lib-dict-extra/dict-client.c` in 2.4.1), and ramdir's
//! Lua passdb/userdb bridge for 2.4 speaks protocol 4 too. Two dicts are
//! served on one socket, told apart by the dict name in the client's hello:
//! - the **auth** dict (`passdb/<user>`, `userdb/<user>`, iteration of
//!   `userdb/`) for 2.3's `passdb { driver = dict }` and
//!   `userdb { driver = dict }`, or 2.4's Lua bridge; userdb answers spell
//!   the limits for the version the hello announces
//!   ([`service::Spelling`]);
//! - the **quota** dict (`priv/quota/storage`, `priv/quota/messages`) for
//!   2.3's `quota = dict:…:proxy:…:quota`, or `quota_clone` (2.3's
//!   `quota_clone_dict`, 2.4's `quota_clone { dict proxy { … } }`).
//!
//! Layout as in every ramdir protocol crate: [`codec`] (pure bytes ↔
//! commands and replies), [`service`] (pure: command + directory snapshot →
//! reply; the one place outcomes become `O`/`N`/`F`), [`server`] (I/O).
//!
//! # Logging policy
//! `info` for the listener, `warn` for clients that break the protocol (the
//! connection is closed), `debug`/`trace` per command. Password hashes and
//! JSON values are never logged.

pub mod codec;
pub mod server;
pub mod service;
