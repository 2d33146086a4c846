//! ramdir-snapshot: the files through which ramdir hands its Postfix lookup
//! tables to in-process readers (`postfix-ramdir.so`), with no socket and no
//! system call per lookup.
//!
//! A map directory (e.g. `/run/ramdir/postfix`) holds:
//! - `control`: one page whose control word (`generation << 8 | state`) a
//!   reader loads once per lookup ([`format::CONTROL_WORD`]);
//! - `snap-<generation>`: immutable table files, each either a *base* (the
//!   whole directory) or a *delta* against a base ([`mod@format`]).
//!
//! The files carry exactly what the socketmap tables read (user logins,
//! alias targets, sender logins, domains) and the lookup settings; never a
//! password, hash or any other user field. The lookup rules are not copied
//! here: the reader implements [`ramdir_core::lookup::Entries`] and runs
//! the same [`ramdir_core::maps::lookup`] as the socketmap.
//!
//! - [`mod@format`]: the layout and the pure, bounds-checked code that reads it;
//! - [`mod@write`]: the daemon's [`write::Publisher`];
//! - [`mod@read`]: the plugin's [`read::Reader`];
//! - `map`: the `mmap`/`openat` calls, the crate's only `unsafe`.
#![allow(unsafe_code)]

pub mod format;
mod map;
pub mod read;
pub mod write;

pub use read::{AuthAnswer, Error, Hit, Reader};
pub use write::{Content, Limits, Published, Publisher, RecordsFn};
