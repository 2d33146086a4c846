//! ramdir-dovecot: the Dovecot dict proxy server.
//!
//! Dovecot reaches ramdir through its `proxy:` dict client
//! (`src/lib-dict/dict-client.c` in Dovecot 2.3.19, the truth for this
//! crate). Two dicts are served on one socket, told apart by the dict name in
//! the client's hello:
//! - the **auth** dict (`passdb/<user>`, `userdb/<user>`, iteration of
//!   `userdb/`) for `passdb { driver = dict }` and `userdb { driver = dict }`;
//! - the **quota** dict (`priv/quota/storage`, `priv/quota/messages`) for
//!   `quota = dict:…:proxy:…:quota` or `quota_clone_dict`.
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
