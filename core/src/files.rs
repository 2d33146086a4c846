//! File sources: the operator's existing text files.
//!
//! - Dovecot **passwd-file** (`src/auth/db-passwd-file.c`):
//!   `user:password:uid:gid:gecos:home:shell:extra_fields`; the extra fields
//!   are space-separated `key=value` pairs and may contain `:` (everything
//!   after the seventh `:` is joined back, as Dovecot does). Recognised
//!   extras: the user's limit in either Dovecot spelling
//!   (`userdb_quota_rule`, 2.3; `userdb_quota_storage_size` and
//!   `userdb_quota_message_count`, 2.4), folder rules in either spelling
//!   (`userdb_quota_rule2…`; `userdb_namespace/<ns>/mailbox/<box>/quota_*`),
//!   the user's own delivery grace (`userdb_quota_storage_grace`, 2.4, or
//!   `userdb_quota_grace`, 2.3; a size), `userdb_mail`, `userdb_uid`,
//!   `userdb_gid`, `userdb_home`, and `nologin`
//!   (the user may not log in but still receives mail). Two quota fields
//!   that disagree make the line an error ([`QuotaFields`]). Other extras
//!   are kept and handed to Dovecot as they are.
//! - Postfix **map sources** as for `postmap(1)`: `key value`, `#` comments,
//!   a line that starts with whitespace continues the previous one. Aliases
//!   (`address target, target…`, `@domain target` for a catch-all), domains
//!   (`domain [anything]`) and sender logins (`address login, login…`).
//!
//! A bad line is an error naming the file and line, and the whole load fails:
//! on reload the caller keeps serving the previous snapshot.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::directory::Directory;
use crate::model::{PackedUser, Settings, UserSpec};
use crate::quota::{QuotaFields, split_v24_folder_key};

/// Longest line read from a source file. Real lines are far shorter; the
/// bound only stops a corrupt file (no newlines) from eating memory.
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// The files a directory is built from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileSources {
    /// Dovecot passwd-files.
    pub passwd_files: Vec<PathBuf>,
    /// Postfix map sources for aliases.
    pub alias_files: Vec<PathBuf>,
    /// Postfix map sources for domains.
    pub domain_files: Vec<PathBuf>,
    /// Postfix map sources for sender logins.
    pub sender_login_files: Vec<PathBuf>,
}

impl FileSources {
    /// Every file, for change watching.
    pub fn all(&self) -> impl Iterator<Item = &Path> {
        self.passwd_files
            .iter()
            .chain(&self.alias_files)
            .chain(&self.domain_files)
            .chain(&self.sender_login_files)
            .map(PathBuf::as_path)
    }
}

/// What went wrong, with where.
#[derive(Debug)]
pub struct LoadError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line number, when a line is at fault.
    pub line: Option<usize>,
    /// What is wrong.
    pub kind: LoadErrorKind,
}

/// The kinds of load error.
#[derive(Debug)]
pub enum LoadErrorKind {
    /// Reading the file failed.
    Io(io::Error),
    /// A line cannot be used.
    Syntax(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: ", self.path.display(), l)?,
            None => write!(f, "{}: ", self.path.display())?,
        }
        match &self.kind {
            LoadErrorKind::Io(e) => write!(f, "{e}"),
            LoadErrorKind::Syntax(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            LoadErrorKind::Io(e) => Some(e),
            LoadErrorKind::Syntax(_) => None,
        }
    }
}

/// Build a directory from files.
pub fn load(sources: &FileSources, settings: Settings) -> Result<Directory, LoadError> {
    let mut dir = Directory::new(settings);
    // Size the tables once, from the line counts (an upper bound: comments
    // and blank lines are counted too). Grown by doubling instead, each
    // table would leave its outgrown copies behind as holes in the heap:
    // about 130 MB of a million-user directory's RSS.
    let lines = |files: &[PathBuf]| -> Result<usize, LoadError> {
        files.iter().map(|p| count_lines(p)).sum()
    };
    dir.reserve(lines(&sources.passwd_files)?, lines(&sources.alias_files)?);
    for p in &sources.domain_files {
        read_map(p, |line, key, _value| {
            let d = dir
                .settings()
                .normalizer
                .domain(key)
                .ok_or_else(|| syntax(p, line, format!("{key:?} is not a domain name")))?;
            dir.add_domain(&d);
            Ok(())
        })?;
    }
    // Duplicates are found through the directory itself: a side table of
    // every login would cost about 100 MB at a million users. Only on the
    // (rare) error path are the files read again to say where the first one is.
    for p in &sources.passwd_files {
        load_passwd_file(&mut dir, p, &sources.passwd_files)?;
    }
    for p in &sources.alias_files {
        read_map(p, |line, key, value| {
            let key = map_key(&dir, key)
                .ok_or_else(|| syntax(p, line, format!("{key:?} is not an address or @domain")))?;
            let value = value.ok_or_else(|| syntax(p, line, format!("{key} has no target")))?;
            let targets: Vec<String> = split_list(value).map(str::to_string).collect();
            if targets.is_empty() {
                return Err(syntax(p, line, format!("{key} has no target")));
            }
            if dir.alias(&key).is_some() {
                return Err(syntax(p, line, format!("duplicate alias {key}")));
            }
            dir.set_alias(&key, targets);
            Ok(())
        })?;
    }
    for p in &sources.sender_login_files {
        read_map(p, |line, key, value| {
            let key = map_key(&dir, key)
                .ok_or_else(|| syntax(p, line, format!("{key:?} is not an address or @domain")))?;
            let value = value.ok_or_else(|| syntax(p, line, format!("{key} has no login")))?;
            let logins: Vec<String> = split_list(value).map(str::to_string).collect();
            dir.set_sender_logins(&key, logins);
            Ok(())
        })?;
    }
    dir.shrink_to_fit();
    let n = sources.all().count();
    dir.set_source(&format!("{n} file{}", if n == 1 { "" } else { "s" }));
    Ok(dir)
}

/// Lines that two threads share: one thread parses and packs a block's
/// first half while another does the second, and the loading thread then
/// inserts both halves in file order. The first error in file order is
/// the one returned, as if one thread had read the file line by line:
/// a half's users up to its first bad line are inserted before its error
/// is returned, and the second half only counts once the first is clean.
fn load_passwd_file(dir: &mut Directory, p: &Path, all: &[PathBuf]) -> Result<(), LoadError> {
    read_blocks(p, |first_line, block| {
        let settings = dir.settings();
        let (a, b) = split_block(block);
        let b_first_line = first_line + memchr::memchr_iter(b'\n', a).count();
        let (a, b) = if a.is_empty() || b.is_empty() {
            (parse_passwd_block(p, first_line, block, settings), None)
        } else {
            std::thread::scope(|s| {
                let b = s.spawn(|| parse_passwd_block(p, b_first_line, b, settings));
                let a = parse_passwd_block(p, first_line, a, settings);
                (a, Some(b.join().expect("a passwd-file parser panicked")))
            })
        };
        for half in std::iter::once(a).chain(b) {
            for (line, login, packed) in half.users {
                let login = &half.logins[login];
                // The load fails on a duplicate, so the directory it has
                // just overwritten the first definition in is thrown away.
                if !dir.insert_new_packed(login, packed) {
                    let first = first_definition(all, dir.settings(), login)
                        .map(|(f, l)| format!(", first at {}:{l}", f.display()))
                        .unwrap_or_default();
                    return Err(syntax(p, line, format!("duplicate user {login}{first}")));
                }
            }
            if let Some(e) = half.error {
                return Err(e);
            }
        }
        Ok(())
    })
}

/// One half-block of a passwd-file, parsed and packed.
struct ParsedBlock {
    /// The logins, one after another (one buffer, not a `String` each).
    logins: String,
    /// Line number, login (a range of `logins`) and packed user, in order.
    users: Vec<(usize, std::ops::Range<usize>, PackedUser)>,
    /// The first bad line, after which nothing was parsed.
    error: Option<LoadError>,
}

fn parse_passwd_block(
    path: &Path,
    first_line: usize,
    block: &[u8],
    settings: &Settings,
) -> ParsedBlock {
    let mut out = ParsedBlock {
        logins: String::with_capacity(block.len() / 4),
        users: Vec::with_capacity(block.len() / 64),
        error: None,
    };
    let mut spec = UserSpec::default();
    let r = for_each_line(path, first_line, block, |line, text| {
        parse_passwd_line_into(text, settings, &mut spec).map_err(|m| syntax(path, line, m))?;
        let start = out.logins.len();
        out.logins.push_str(&spec.login);
        out.users.push((
            line,
            start..out.logins.len(),
            PackedUser::pack(&spec, settings),
        ));
        Ok(())
    });
    out.error = r.err();
    out
}

/// Split a block of whole lines in two near its middle, after a newline.
fn split_block(block: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(b'\n', &block[block.len() / 2..]) {
        Some(i) => block.split_at(block.len() / 2 + i + 1),
        None => (block, &[]),
    }
}

/// Where `login` is first defined in the passwd-files (for the duplicate
/// error message).
fn first_definition<'a>(
    files: &'a [PathBuf],
    settings: &Settings,
    login: &str,
) -> Option<(&'a Path, usize)> {
    for f in files {
        let mut found = None;
        let _ = read_lines(f, |line, text| {
            if parse_passwd_line(text, settings).is_ok_and(|s| s.login == login) {
                found = Some(line);
                // Stop reading: any error ends the scan.
                return Err(syntax(f, line, String::new()));
            }
            Ok(())
        });
        if let Some(l) = found {
            return Some((f, l));
        }
    }
    None
}

fn syntax(path: &Path, line: usize, msg: String) -> LoadError {
    LoadError {
        path: path.to_path_buf(),
        line: Some(line),
        kind: LoadErrorKind::Syntax(msg),
    }
}

/// A map key: an address (folded, extension kept) or `@domain`.
fn map_key(dir: &Directory, key: &str) -> Option<String> {
    let n = &dir.settings().normalizer;
    if let Some(d) = key.strip_prefix('@') {
        return n.domain(d).map(|d| format!("@{d}"));
    }
    n.address(key).map(|a| a.full())
}

/// Split a Postfix list value: commas and/or whitespace.
fn split_list(v: &str) -> impl Iterator<Item = &str> {
    v.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
}

/// Lines in a file (newlines, plus a last line without one), counted in
/// blocks without decoding anything.
fn count_lines(path: &Path) -> Result<usize, LoadError> {
    let io_err = |e| LoadError {
        path: path.to_path_buf(),
        line: None,
        kind: LoadErrorKind::Io(e),
    };
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let mut buf = vec![0u8; 1 << 16];
    let (mut n, mut last) = (0, b'\n');
    loop {
        let got = file.read(&mut buf).map_err(io_err)?;
        if got == 0 {
            return Ok(n + usize::from(last != b'\n'));
        }
        n += memchr::memchr_iter(b'\n', &buf[..got]).count();
        last = buf[got - 1];
    }
}

/// Bytes read from a source file at a time: many lines per read (and per
/// thread, for passwd-files), and always more than the longest line.
const READ_BLOCK: usize = 1 << 20;
const _: () = assert!(READ_BLOCK > MAX_LINE_LEN + 1);

/// Call `f(line_number, line)` for each line, with `#` comment lines and
/// blank lines skipped. The file is read a block at a time so a
/// million-user file never sits in memory whole.
fn read_lines(
    path: &Path,
    mut f: impl FnMut(usize, &str) -> Result<(), LoadError>,
) -> Result<(), LoadError> {
    read_blocks(path, |first_line, block| {
        for_each_line(path, first_line, block, &mut f)
    })
}

/// Read `path` in blocks of whole lines, calling `f(number of the block's
/// first line, block)`; every block but the file's last ends with a
/// newline. A line that does not fit in a block is longer than
/// [`MAX_LINE_LEN`]: the error is returned once the lines before it are
/// done, as [`for_each_line`] would return it.
fn read_blocks(
    path: &Path,
    mut f: impl FnMut(usize, &[u8]) -> Result<(), LoadError>,
) -> Result<(), LoadError> {
    let io_err = |e| LoadError {
        path: path.to_path_buf(),
        line: None,
        kind: LoadErrorKind::Io(e),
    };
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let mut buf = vec![0u8; READ_BLOCK];
    let (mut have, mut line, mut eof) = (0, 1, false);
    loop {
        while !eof && have < buf.len() {
            match file.read(&mut buf[have..]) {
                Ok(0) => eof = true,
                Ok(n) => have += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        if have == 0 {
            return Ok(());
        }
        let end = match memchr::memrchr(b'\n', &buf[..have]) {
            _ if eof => have,
            Some(i) => i + 1,
            None => return Err(too_long(path, line)),
        };
        f(line, &buf[..end])?;
        line += memchr::memchr_iter(b'\n', &buf[..end]).count();
        buf.copy_within(end..have, 0);
        have -= end;
    }
}

fn too_long(path: &Path, line: usize) -> LoadError {
    syntax(path, line, format!("line longer than {MAX_LINE_LEN} bytes"))
}

/// Call `f(line_number, line)` for each line of `block` (whole lines, the
/// first numbered `first_line`), with `#` comment lines and blank lines
/// skipped. A line is at most [`MAX_LINE_LEN`] bytes with its newline,
/// valid UTF-8 and free of NUL bytes; the first that is not is an error.
fn for_each_line(
    path: &Path,
    first_line: usize,
    block: &[u8],
    mut f: impl FnMut(usize, &str) -> Result<(), LoadError>,
) -> Result<(), LoadError> {
    // Postfix reads its tables as C strings, and the plugin's snapshot
    // separates list items with NUL: a NUL would make the socketmap and
    // the plugin answer differently (found by fuzzing). Looked for per
    // line only in a block that has one.
    let has_nul = memchr::memchr(0, block).is_some();
    let mut rest = block;
    let mut line = first_line;
    while !rest.is_empty() {
        let raw = match memchr::memchr(b'\n', rest) {
            Some(i) => &rest[..=i],
            None => rest,
        };
        rest = &rest[raw.len()..];
        if raw.len() > MAX_LINE_LEN {
            return Err(too_long(path, line));
        }
        let text = std::str::from_utf8(raw)
            .map_err(|_| syntax(path, line, "line is not valid UTF-8".into()))?;
        if has_nul && text.contains('\0') {
            return Err(syntax(path, line, "line contains a NUL byte".into()));
        }
        let text = text.trim_end_matches(['\n', '\r']);
        let t = text.trim_start();
        if !(t.is_empty() || t.starts_with('#')) {
            f(line, text)?;
        }
        line += 1;
    }
    Ok(())
}

/// Read a postmap source: logical lines (continuations joined), then
/// `f(first_line_number, key, value)`.
fn read_map(
    path: &Path,
    mut f: impl FnMut(usize, &str, Option<&str>) -> Result<(), LoadError>,
) -> Result<(), LoadError> {
    let mut pending: Option<(usize, String)> = None;
    let mut flush = |p: Option<(usize, String)>| -> Result<(), LoadError> {
        if let Some((l, text)) = p {
            let text = text.trim();
            let (key, value) = match text.split_once(char::is_whitespace) {
                Some((k, v)) => (k, Some(v.trim()).filter(|v| !v.is_empty())),
                None => (text, None),
            };
            f(l, key, value)?;
        }
        Ok(())
    };
    read_lines(path, |line, text| {
        if text.starts_with(char::is_whitespace) {
            match pending.as_mut() {
                Some((_, acc)) => {
                    acc.push(' ');
                    acc.push_str(text.trim());
                    return Ok(());
                }
                None => {
                    return Err(syntax(
                        path,
                        line,
                        "continuation line with nothing to continue".into(),
                    ));
                }
            }
        }
        flush(pending.replace((line, text.to_string())))
    })?;
    flush(pending.take())
}

/// Parse one passwd-file line into a user.
pub fn parse_passwd_line(line: &str, settings: &Settings) -> Result<UserSpec, String> {
    let mut spec = UserSpec::default();
    parse_passwd_line_into(line, settings, &mut spec)?;
    Ok(spec)
}

/// Set an optional string, reusing the buffer it already holds.
fn set_opt(slot: &mut Option<String>, v: Option<&str>) {
    match (slot.as_mut(), v) {
        (Some(s), Some(v)) => {
            s.clear();
            s.push_str(v);
        }
        (_, v) => *slot = v.map(str::to_string),
    }
}

/// [`parse_passwd_line`] into `spec`, every field of it replaced, its
/// string buffers reused: a load parses a million lines, and a fresh
/// `UserSpec` per line cost an allocation and a free per field.
pub fn parse_passwd_line_into(
    line: &str,
    settings: &Settings,
    spec: &mut UserSpec,
) -> Result<(), String> {
    let mut parts = line.splitn(8, ':');
    let user = parts.next().unwrap_or("");
    let password = parts.next().unwrap_or("");
    let uid = parts.next().unwrap_or("");
    let gid = parts.next().unwrap_or("");
    let _gecos = parts.next();
    let home = parts.next().unwrap_or("");
    let _shell = parts.next();
    let extra = parts.next().unwrap_or("");

    // The login is stored as written (folded); a login that contains the
    // delimiter stays reachable by its full key. A login already in its
    // normal form (nearly all of them) is copied as it is: `address`
    // would give it back unchanged (`Normalizer::is_normal_form`).
    spec.login.clear();
    if settings.normalizer.is_normal_form(user) {
        spec.login.push_str(user);
    } else {
        let addr = settings
            .normalizer
            .address(user)
            .ok_or_else(|| format!("user {user:?} is not an address (user@domain)"))?;
        spec.login = addr.full();
    }
    let num = |what: &str, v: &str| -> Result<Option<u32>, String> {
        if v.is_empty() {
            return Ok(None);
        }
        v.parse()
            .map(Some)
            .map_err(|_| format!("{what} {v:?} is not a number"))
    };
    set_opt(&mut spec.password, Some(password).filter(|p| !p.is_empty()));
    spec.uid = num("uid", uid)?;
    spec.gid = num("gid", gid)?;
    set_opt(&mut spec.home, Some(home).filter(|h| !h.is_empty()));
    spec.mail = None;
    spec.quota = None;
    spec.quota_grace = None;
    spec.quota_rules.clear();
    spec.enabled = true;
    spec.extra.clear();
    spec.origin = None;
    let mut quota = QuotaFields::new();
    for field in extra.split_whitespace() {
        let (k, v) = field.split_once('=').unwrap_or((field, ""));
        // A userdb field may be written without its `userdb_` prefix here
        // (as ramdir has always read `quota_rule`); both name one setting.
        let setting = k.strip_prefix("userdb_").unwrap_or(k);
        match (k, setting) {
            ("nologin", _) => spec.enabled = false,
            (_, "quota_rule") => quota.main_rule(k, v)?,
            (_, "quota_storage_size") => quota.storage_size(k, v)?,
            (_, "quota_message_count") => quota.message_count(k, v)?,
            (_, "quota_storage_grace" | "quota_grace") => quota.grace(k, v)?,
            ("userdb_mail", _) => set_opt(&mut spec.mail, Some(v)),
            ("userdb_home", _) => set_opt(&mut spec.home, Some(v)),
            ("userdb_uid", _) => spec.uid = num("userdb_uid", v)?,
            ("userdb_gid", _) => spec.gid = num("userdb_gid", v)?,
            _ if k.starts_with("userdb_quota_rule") => {
                let n: u32 = k["userdb_quota_rule".len()..]
                    .parse()
                    .map_err(|_| format!("unknown field {k}"))?;
                quota.folder_rule(n, k, v)?;
            }
            _ => {
                let ours = match split_v24_folder_key(setting) {
                    Some((_ns, mailbox, name)) => quota.folder_setting(mailbox, name, k, v)?,
                    None => false,
                };
                if !ours {
                    spec.extra.push((k.to_string(), v.to_string()));
                }
            }
        }
    }
    spec.quota_grace = quota.own_grace();
    (spec.quota, spec.quota_rules) = quota.finish(settings.default_quota);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::QuotaLimit;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn lines_are_counted_with_or_without_a_last_newline() {
        let dir = tempfile::tempdir().unwrap();
        for (text, n) in [("", 0), ("a", 1), ("a\n", 1), ("a\n\nb", 3), ("\n\n", 2)] {
            assert_eq!(
                count_lines(&write(dir.path(), "f", text)).unwrap(),
                n,
                "{text:?}"
            );
        }
        let big = "x\n".repeat(100_000);
        assert_eq!(count_lines(&write(dir.path(), "g", &big)).unwrap(), 100_000);
    }

    #[test]
    fn passwd_line_with_extras() {
        let s = Settings::default();
        let u = parse_passwd_line(
            "Jane@Example.org:{SHA512-CRYPT}$6$x:5000:5000::/var/vmail/jane::userdb_quota_rule=*:storage=1G userdb_quota_rule2=Trash:storage=+100M userdb_mail=maildir:~/M nologin userdb_foo=bar",
            &s,
        )
        .unwrap();
        assert_eq!(u.login, "jane@example.org");
        assert_eq!(u.password.as_deref(), Some("{SHA512-CRYPT}$6$x"));
        assert_eq!((u.uid, u.gid), (Some(5000), Some(5000)));
        assert_eq!(u.home.as_deref(), Some("/var/vmail/jane"));
        assert_eq!(
            u.quota,
            Some(QuotaLimit {
                storage: Some(1 << 30),
                messages: None
            })
        );
        assert_eq!(u.quota_rules[0].to_dovecot(), "Trash:storage=+104857600B");
        assert_eq!(u.mail.as_deref(), Some("maildir:~/M"));
        assert!(!u.enabled);
        assert_eq!(u.extra, [("userdb_foo".to_string(), "bar".to_string())]);
    }

    #[test]
    fn passwd_line_takes_the_24_spelling_and_keeps_it_out_of_extras() {
        let s = Settings::default();
        let u = parse_passwd_line(
            "a@x.org:{PLAIN}a::::::userdb_quota_storage_size=2M userdb_quota_message_count=100 userdb_namespace/inbox/mailbox/Trash/quota_storage_extra=1M userdb_namespace/inbox/mailbox/Trash/special_use=\\Trash userdb_foo=bar",
            &s,
        )
        .unwrap();
        assert_eq!(
            u.quota,
            Some(QuotaLimit {
                storage: Some(2 << 20),
                messages: Some(100)
            })
        );
        assert_eq!(u.quota_rules.len(), 1);
        assert_eq!(u.quota_rules[0].to_dovecot(), "Trash:storage=+1048576B");
        assert_eq!(
            u.extra,
            [
                (
                    "userdb_namespace/inbox/mailbox/Trash/special_use".to_string(),
                    "\\Trash".to_string()
                ),
                ("userdb_foo".to_string(), "bar".to_string())
            ]
        );
        let u = parse_passwd_line("g@x.org:::::::userdb_quota_storage_grace=1M", &s).unwrap();
        assert_eq!((u.quota, u.quota_grace), (None, Some(1 << 20)));
        assert!(u.extra.is_empty());
        // Only the message count: the storage limit stays the default's.
        let u = parse_passwd_line("b@x.org:::::::userdb_quota_message_count=5", &s).unwrap();
        assert_eq!(
            u.quota,
            Some(QuotaLimit {
                storage: Some(10 << 30),
                messages: Some(5)
            })
        );
        // Unlimited, 2.4's way.
        let u = parse_passwd_line("c@x.org:::::::userdb_quota_storage_size=0", &s).unwrap();
        assert_eq!(u.quota, Some(QuotaLimit::default()));
        // Both spellings agreeing.
        let u = parse_passwd_line(
            "d@x.org:::::::userdb_quota_rule=*:storage=2M userdb_quota_storage_size=2048K",
            &s,
        )
        .unwrap();
        assert_eq!(u.quota.unwrap().storage, Some(2 << 20));
    }

    #[test]
    fn passwd_line_errors_say_why() {
        let s = Settings::default();
        for (line, want) in [
            ("nodomain:{PLAIN}x", "not an address"),
            ("a@x.org:{PLAIN}x:abc", "uid"),
            ("a@x.org:{PLAIN}x::::::userdb_quota_rule=lots", "bad size"),
            (
                "a@x.org:{PLAIN}x::::::userdb_quota_storage_size=2M userdb_quota_rule=*:storage=1G",
                "userdb_quota_rule=*:storage=1G conflicts with userdb_quota_storage_size=2M",
            ),
            (
                "a@x.org:{PLAIN}x::::::userdb_quota_rule2=Trash:storage=+1M userdb_namespace/inbox/mailbox/Trash/quota_storage_extra=2M",
                "storage limit of folder Trash",
            ),
            (
                "a@x.org:{PLAIN}x::::::userdb_quota_message_count=many",
                "bad message count",
            ),
        ] {
            let e = parse_passwd_line(line, &s).unwrap_err();
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn load_builds_directory_and_reports_bad_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let sources = FileSources {
            passwd_files: vec![write(
                d,
                "users",
                "# users\na@x.org:{PLAIN}a:5000:5000::/h/a::\n\nb@x.org:{PLAIN}b\n",
            )],
            alias_files: vec![write(
                d,
                "aliases",
                "info@x.org a@x.org,\n  b@x.org\n@y.org a@x.org\n",
            )],
            domain_files: vec![write(d, "domains", "z.org OK\nw.org\n")],
            sender_login_files: vec![write(d, "senders", "boss@x.org a@x.org b@x.org\n")],
        };
        let dir = load(&sources, Settings::default()).unwrap();
        assert_eq!(dir.counts().users, 2);
        assert_eq!(dir.alias("info@x.org").unwrap().len(), 2);
        assert!(dir.has_domain("z.org") && dir.has_domain("w.org") && dir.has_domain("y.org"));
        assert_eq!(dir.sender_logins("boss@x.org").unwrap().len(), 2);

        let bad = FileSources {
            alias_files: vec![write(d, "bad", "ok@x.org a@x.org\nnoval@x.org\n")],
            ..FileSources::default()
        };
        let e = load(&bad, Settings::default()).unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(
            e.to_string().contains("bad:2: noval@x.org has no target"),
            "{e}"
        );

        let dup = FileSources {
            passwd_files: vec![write(d, "dup", "a@x.org:x\nA@X.org:y\n")],
            ..FileSources::default()
        };
        let e = load(&dup, Settings::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("dup:2: duplicate user a@x.org, first at"),
            "{e}"
        );

        let missing = FileSources {
            passwd_files: vec![d.join("nope")],
            ..FileSources::default()
        };
        let e = load(&missing, Settings::default()).unwrap_err();
        assert!(matches!(e.kind, LoadErrorKind::Io(_)) && e.line.is_none());
    }

    /// Found by fuzzing (`fuzz/fuzz_targets/snapshot_reader.rs`): an alias
    /// target with NUL bytes was loaded, and the socketmap answered it
    /// with the NULs while the plugin's snapshot dropped them.
    #[test]
    fn fuzz_regression_nul_in_a_line_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let p = write(
            tmp.path(),
            "a",
            "# ok\n@example.net dave@exam\x01\0\0\x1anet\n",
        );
        let e = load(
            &FileSources {
                alias_files: vec![p.clone()],
                ..Default::default()
            },
            Settings::default(),
        )
        .unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.to_string().contains("NUL"), "{e}");
        let p = write(tmp.path(), "u", "a@x.org:{PLAIN}a\0b\n");
        let e = load(
            &FileSources {
                passwd_files: vec![p],
                ..Default::default()
            },
            Settings::default(),
        )
        .unwrap_err();
        assert_eq!(e.line, Some(1));
    }

    /// Lines across read blocks and across the two halves a block is
    /// parsed in: every user loaded, and each error is the first in file
    /// order, at its own line, whichever half or block it falls in.
    #[test]
    fn a_file_of_many_blocks_loads_whole_and_errors_name_their_line() {
        let tmp = tempfile::tempdir().unwrap();
        let n = 3 * READ_BLOCK / 60;
        let line = |i: usize| {
            format!(
                "user{i:07}@domain{}.test:{{PLAIN}}x:5000:5000::/h::\n",
                i % 7
            )
        };
        let mut text: String = (0..n).map(line).collect();
        let p = write(tmp.path(), "big", &text);
        let sources = FileSources {
            passwd_files: vec![p],
            ..Default::default()
        };
        assert_eq!(count_lines(&sources.passwd_files[0]).unwrap(), n);
        let dir = load(&sources, Settings::default()).unwrap();
        assert_eq!(dir.counts().users, n);
        assert_eq!(dir.counts().domains, 7);
        for i in [0, 1, n / 2, n - 1] {
            let login = format!("user{i:07}@domain{}.test", i % 7);
            assert_eq!(dir.user(&login).unwrap().password, Some("{PLAIN}x"));
        }

        // A bad line late in the file, and a duplicate before it: the
        // duplicate is the error (it comes first), then the bad line.
        let bad_at = n - 3;
        let dup_at = n / 2 + 5;
        let mut lines: Vec<String> = (0..n).map(line).collect();
        lines[bad_at - 1] = "no address here\n".into();
        lines[dup_at - 1] = line(3);
        text = lines.concat();
        std::fs::write(&sources.passwd_files[0], &text).unwrap();
        let e = load(&sources, Settings::default()).unwrap_err();
        assert_eq!(e.line, Some(dup_at), "{e}");
        assert!(e.to_string().contains(":4"), "first definition: {e}");
        lines[dup_at - 1] = line(dup_at - 1);
        std::fs::write(&sources.passwd_files[0], lines.concat()).unwrap();
        let e = load(&sources, Settings::default()).unwrap_err();
        assert_eq!(e.line, Some(bad_at), "{e}");
        assert!(e.to_string().contains("not an address"), "{e}");
    }

    #[test]
    fn line_length_limit_counts_the_newline() {
        let tmp = tempfile::tempdir().unwrap();
        let load_one = |text: String| {
            let p = write(tmp.path(), "a", &text);
            load(
                &FileSources {
                    alias_files: vec![p],
                    ..Default::default()
                },
                Settings::default(),
            )
        };
        let fill = |len: usize| format!("a@x.org {}", "b".repeat(len - 8));
        // MAX_LINE_LEN bytes with the newline: fine, alone or after others.
        assert!(load_one(format!("{}\n", fill(MAX_LINE_LEN - 1))).is_ok());
        assert!(load_one(fill(MAX_LINE_LEN)).is_ok());
        // One more is too long, with or without a newline, at any line.
        for text in [
            format!("{}\n", fill(MAX_LINE_LEN)),
            fill(MAX_LINE_LEN + 1),
            format!("# c\n\n{}", "b".repeat(3 * READ_BLOCK)),
        ] {
            let e = load_one(text.clone()).unwrap_err();
            assert!(e.to_string().contains("longer than"), "{e}");
            assert_eq!(e.line, Some(if text.starts_with('#') { 3 } else { 1 }));
        }
    }

    /// The line-by-line reader this one replaced (`BufRead::read_until`
    /// per line), as the reference for [`read_lines`].
    fn read_lines_one_by_one(path: &Path, bytes: &[u8]) -> Result<Vec<(usize, String)>, String> {
        let mut r = io::BufReader::new(bytes);
        let (mut buf, mut line, mut out) = (Vec::new(), 0, Vec::new());
        loop {
            buf.clear();
            let n = io::BufRead::read_until(
                &mut Read::take(&mut r, MAX_LINE_LEN as u64 + 1),
                b'\n',
                &mut buf,
            )
            .unwrap();
            if n == 0 {
                return Ok(out);
            }
            line += 1;
            if buf.len() > MAX_LINE_LEN {
                return Err(too_long(path, line).to_string());
            }
            let text = std::str::from_utf8(&buf)
                .map_err(|_| syntax(path, line, "line is not valid UTF-8".into()).to_string())?;
            if text.contains('\0') {
                return Err(syntax(path, line, "line contains a NUL byte".into()).to_string());
            }
            let text = text.trim_end_matches(['\n', '\r']);
            let t = text.trim_start();
            if !(t.is_empty() || t.starts_with('#')) {
                out.push((line, text.to_string()));
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn read_lines_gives_what_reading_line_by_line_gave(
            pieces in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(b"\n".to_vec()),
                    proptest::strategy::Just(b"\r".to_vec()),
                    proptest::strategy::Just(b"# ".to_vec()),
                    proptest::strategy::Just(b" ".to_vec()),
                    proptest::strategy::Just(b"\0".to_vec()),
                    proptest::strategy::Just(vec![0xc3]),
                    proptest::strategy::Just("é".as_bytes().to_vec()),
                    proptest::strategy::Just(b"a@x.org:{PLAIN}p".to_vec()),
                    proptest::strategy::Just(vec![b'z'; MAX_LINE_LEN / 2]),
                ],
                0..40,
            )
        ) {
            let bytes = pieces.concat();
            let tmp = tempfile::tempdir().unwrap();
            let p = tmp.path().join("f");
            std::fs::write(&p, &bytes).unwrap();
            let mut got = Vec::new();
            let r = read_lines(&p, |line, text| {
                got.push((line, text.to_string()));
                Ok(())
            });
            let want = read_lines_one_by_one(&p, &bytes);
            match want {
                Ok(w) => {
                    proptest::prop_assert!(r.is_ok());
                    proptest::prop_assert_eq!(got, w);
                }
                Err(e) => proptest::prop_assert_eq!(r.unwrap_err().to_string(), e),
            }
        }
    }

    #[test]
    fn continuation_without_a_first_line_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let p = write(tmp.path(), "a", "  a@x.org b@x.org\n");
        let e = load(
            &FileSources {
                alias_files: vec![p],
                ..Default::default()
            },
            Settings::default(),
        )
        .unwrap_err();
        assert_eq!(e.line, Some(1));
    }
}
