//! Helpers shared by the fuzz targets in `fuzz_targets/`.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::BytesMut;
use ramdir_core::Settings;
use ramdir_core::files::FileSources;

/// Inputs up to this length are also fed one byte at a time (every byte a
/// split point); longer ones are fed in chunks whose sizes come from the
/// input, so a target's cost stays linear in the input's length.
pub const BYTEWISE_MAX: usize = 512;

/// Chunk sizes to feed `data` in: all ones for a short input, else sizes of
/// 1 to 64 bytes drawn from the input itself (deterministic).
pub fn chunks(data: &[u8]) -> Vec<usize> {
    if data.len() <= BYTEWISE_MAX {
        return vec![1; data.len()];
    }
    let mut out = Vec::new();
    let mut left = data.len();
    let mut i = 0;
    while left > 0 {
        let n = (usize::from(data[i % data.len()]) % 64 + 1).min(left);
        out.push(n);
        left -= n;
        i += 7;
    }
    out
}

/// What decoding an input gave: the messages, the error that stopped it
/// (if any) and how many bytes were left unread.
pub type Decoded<T, E> = (Vec<T>, Option<E>, usize);

/// Decode `data` in one buffer with `drain`, which takes messages off the
/// buffer until it needs more data (`None`) or fails (`Some(error)`).
pub fn whole<T, E>(
    data: &[u8],
    mut drain: impl FnMut(&mut BytesMut, &mut Vec<T>) -> Option<E>,
) -> Decoded<T, E> {
    let mut buf = BytesMut::from(data);
    let mut out = Vec::new();
    let err = drain(&mut buf, &mut out);
    (out, err, buf.len())
}

/// Decode `data` with `drain` as it would arrive over a socket: fed in
/// [`chunks`] (every byte a split point for short inputs), draining after
/// each. Must equal [`whole`]; the codecs' split-at-every-byte reference.
pub fn split<T, E>(
    data: &[u8],
    mut drain: impl FnMut(&mut BytesMut, &mut Vec<T>) -> Option<E>,
) -> Decoded<T, E> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    for n in chunks(data) {
        buf.extend_from_slice(&data[pos..pos + n]);
        pos += n;
        if let Some(e) = drain(&mut buf, &mut out) {
            // The rest was never read by the server: count it as left over.
            return (out, Some(e), buf.len() + data.len() - pos);
        }
    }
    (out, None, buf.len())
}

thread_local! {
    static EXPECTED: Cell<bool> = const { Cell::new(false) };
}

/// Run `f`, in which a panic is expected and caught by the code under
/// test (ldap3's control parsers panic on malformed input, and ramdir
/// wraps them in `catch_unwind`). libfuzzer-sys installs a panic hook that
/// aborts at once; inside `f` that hook is silenced, everywhere else a
/// panic still aborts and is reported as a crash.
pub fn expecting_panics<R>(f: impl FnOnce() -> R) -> R {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !EXPECTED.with(Cell::get) {
                abort(info);
            }
        }));
    });
    EXPECTED.with(|e| e.set(true));
    let r = f();
    EXPECTED.with(|e| e.set(false));
    r
}

/// Split `data` into at most `n` pieces at the byte `sep` (the last piece
/// keeps any further separators).
pub fn pieces(data: &[u8], sep: u8, n: usize) -> Vec<&[u8]> {
    data.splitn(n, |&b| b == sep).collect()
}

/// This process's directory for the files a target writes,
/// `$TMPDIR/ramdir-fuzz-<name>-<pid>` (the name of the first call; a
/// fuzz binary is one target), made on first use.
pub fn temp_dir(name: &str) -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("ramdir-fuzz-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    })
}

/// Directory settings picked by the bits of one input byte: the recipient
/// delimiter (none, `+`, `+-`, a multi-byte one), case folding, extension
/// propagation, implicit sender logins.
pub fn settings(b: u8) -> Settings {
    let mut s = Settings::default();
    s.normalizer.recipient_delimiter = match b & 3 {
        0 => String::new(),
        1 => "+".into(),
        2 => "+-".into(),
        _ => "ä.".into(),
    };
    s.normalizer.fold_local_part = b & 4 != 0;
    s.propagate_extension = b & 8 != 0;
    s.implicit_sender_logins = b & 16 != 0;
    s
}

/// Write the file sources (domains, passwd-file, aliases, sender logins:
/// `parts` in that order, missing ones empty) into `dir`, and name them as
/// ramdir's `[directory]` would.
pub fn write_sources(dir: &Path, parts: &[&[u8]]) -> FileSources {
    let names = ["domains", "passwd", "aliases", "senders"];
    let p: Vec<PathBuf> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let f = dir.join(n);
            std::fs::write(&f, parts.get(i).copied().unwrap_or(b"")).expect("write");
            f
        })
        .collect();
    FileSources {
        domain_files: vec![p[0].clone()],
        passwd_files: vec![p[1].clone()],
        alias_files: vec![p[2].clone()],
        sender_login_files: vec![p[3].clone()],
    }
}
