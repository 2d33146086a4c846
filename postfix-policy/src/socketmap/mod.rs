//! Postfix socketmap protocol (`socketmap_table(5)`; the truth is Postfix
//! `src/util/dict_sockmap.c` and `src/util/netstring.c`).
//!
//! ```text
//! request:  netstring("<map name> <key>")
//! reply:    netstring("OK <data>" | "NOTFOUND " | "TEMP <reason>"
//!                     | "TIMEOUT <reason>" | "PERM <reason>")
//! ```
//! One request, one reply, strictly in turn, on a connection Postfix keeps
//! open (idle close after 10 s, closed anyway after 100 s).

pub mod codec;
pub mod server;
pub mod service;
