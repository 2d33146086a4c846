//! Every daemon's log, kept after the run, and the check that no secret
//! of the test fixtures is in any of them (docs/reliability.md,
//! "Secrets in logs").
//!
//! [`StackDir`](crate::StackDir) copies every log of its stack (ramdir's
//! stderr, Postfix's maillog, Dovecot's and slapd's logs: the files
//! `dump_logs` shows on a failure) into [`archive_dir`] when it is dropped,
//! failed test or not. After `cargo test`, `scripts/test` runs the
//! `check-test-logs` binary, which collects the secrets from the fixtures'
//! sources ([`fixture_secrets`]) and fails on any log line holding one
//! ([`scan`]), or a password-scheme-prefixed value (`{SSHA}…`, `{PLAIN}…`:
//! a hash or password whatever the fixture), or a generated LDAP user's
//! password (`pw-user` and six digits).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Fixture secrets shorter than this are not looked for: `x` or `pw`
/// would match ordinary words; the fixtures that matter use longer,
/// distinctive passwords (`alice-pw`, `svc-Pa55-never-logged`).
pub const MIN_SECRET_LEN: usize = 6;

/// The schemes whose prefix marks a password or hash (Dovecot's and
/// OpenLDAP's spellings as the fixtures use them).
const SCHEMES: [&str; 8] = [
    "{PLAIN}",
    "{SSHA}",
    "{SHA}",
    "{SHA512-CRYPT}",
    "{SHA256-CRYPT}",
    "{CRYPT}",
    "{BLF-CRYPT}",
    "{ARGON2ID}",
];

/// Where logs are kept: `$RAMDIR_TEST_LOG_DIR`, else `target/test-logs`
/// next to the ramdir binary's profile directory.
pub fn archive_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RAMDIR_TEST_LOG_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.pop();
    dir.join("test-logs")
}

/// Copy every log file under `stack` into [`archive_dir`], named after the
/// test process, the stack and the file's place in it. Best effort: a copy
/// that fails is reported, never a reason to fail a test's cleanup.
pub fn archive(stack: &Path) {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let mut logs = Vec::new();
    crate::collect_logs(stack, 0, &mut logs);
    if logs.is_empty() {
        return;
    }
    let dir = archive_dir();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!(
            "ramdir-integration: cannot keep logs in {}: {e}",
            dir.display()
        );
        return;
    }
    let stack_name = stack
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for p in logs {
        let rel = p.strip_prefix(stack).unwrap_or(&p);
        let flat = rel.to_string_lossy().replace('/', "_");
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let to = dir.join(format!("{stack_name}-{n}-{flat}"));
        if let Err(e) = std::fs::copy(&p, &to) {
            eprintln!(
                "ramdir-integration: cannot keep {} as {}: {e}",
                p.display(),
                to.display()
            );
        }
    }
}

/// The secrets written in the fixtures' sources under `root` (the
/// workspace): passwords and hashes after a scheme prefix in passwd-file
/// lines and LDIF (`{PLAIN}alice-pw`, `{SSHA}…`), and the LDAP bind
/// passwords (`const …PW: &str = "…"`). Sorted, deduplicated, at least
/// [`MIN_SECRET_LEN`] long.
pub fn fixture_secrets(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for d in ["integration/src", "integration/tests", "ramdir/tests"] {
        if let Ok(rd) = std::fs::read_dir(root.join(d)) {
            files.extend(
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "rs")),
            );
        }
    }
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        out.extend(secrets_in_source(&text));
    }
    out.sort();
    out.dedup();
    out
}

/// The secrets in one source text (see [`fixture_secrets`]).
pub fn secrets_in_source(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for scheme in SCHEMES {
        let mut rest = text;
        while let Some(i) = rest.find(scheme) {
            rest = &rest[i + scheme.len()..];
            let end = rest
                .find(|c: char| {
                    c == ':'
                        || c == '"'
                        || c == '\\'
                        || c == ','
                        || c == ')'
                        || c == '`'
                        || c == '\''
                        || c == '{'
                        || c == '}'
                        || c == '<'
                        || c.is_whitespace()
                })
                .unwrap_or(rest.len());
            out.push(rest[..end].to_string());
        }
    }
    for line in text.lines() {
        let l = line.trim();
        if let Some(r) = l
            .strip_prefix("pub const ")
            .or_else(|| l.strip_prefix("const "))
            && let Some((name, value)) = r.split_once(": &str = \"")
            && (name.ends_with("_PW") || name.ends_with("PASSWORD"))
            && let Some(v) = value.strip_suffix("\";")
        {
            out.push(v.to_string());
        }
    }
    out.retain(|s| s.len() >= MIN_SECRET_LEN);
    out
}

/// One log line that holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The log file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What matched.
    pub what: String,
}

/// What in `line` is a secret: a fixture secret, a scheme-prefixed value,
/// a generated LDAP user's password.
pub fn secret_in_line(line: &str, secrets: &[String]) -> Option<String> {
    if let Some(s) = secrets.iter().find(|s| line.contains(s.as_str())) {
        return Some(format!("fixture secret {s:?}"));
    }
    for scheme in SCHEMES {
        if let Some(i) = line.find(scheme) {
            let after = &line[i + scheme.len()..];
            if after.chars().next().is_some_and(|c| !c.is_whitespace()) {
                return Some(format!("a {scheme} value"));
            }
        }
    }
    let mut rest = line;
    while let Some(i) = rest.find("pw-user") {
        let digits = &rest[i + 7..];
        if digits.len() >= 6 && digits.as_bytes()[..6].iter().all(u8::is_ascii_digit) {
            return Some(format!("generated password pw-user{}", &digits[..6]));
        }
        rest = &rest[i + 7..];
    }
    None
}

/// Every line of every file in `dir` that holds a secret, and the number
/// of files read.
pub fn scan(dir: &Path, secrets: &[String]) -> std::io::Result<(Vec<Finding>, usize)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f)?;
        let text = String::from_utf8_lossy(&bytes);
        for (n, line) in text.lines().enumerate() {
            if let Some(what) = secret_in_line(line, secrets) {
                out.push(Finding {
                    file: f.clone(),
                    line: n + 1,
                    what,
                });
            }
        }
    }
    Ok((out, files.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_collected_from_fixture_sources() {
        let src = "const USERS: &str = \"\\\nalice@example.org:{PLAIN}alice-pw:5000:5000::::\n\
                   bob@x:{SHA512-CRYPT}$6$saltsalt$abc/def.:1:1::\\n\";\n\
                   pub const SVC_PW: &str = \"svc-Pa55-never-logged\";\n\
                   x:{PLAIN}x:1:1\n";
        let s = secrets_in_source(src);
        assert!(s.contains(&"alice-pw".to_string()), "{s:?}");
        assert!(s.contains(&"$6$saltsalt$abc/def.".to_string()), "{s:?}");
        assert!(s.contains(&"svc-Pa55-never-logged".to_string()), "{s:?}");
        assert!(
            !s.contains(&"x".to_string()),
            "too short to look for: {s:?}"
        );
    }

    #[test]
    fn the_real_fixtures_have_secrets_to_look_for() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let s = fixture_secrets(&root);
        for want in ["alice-pw", "svc-Pa55-never-logged", "admin-secret"] {
            assert!(s.iter().any(|x| x == want), "{want} not collected: {s:?}");
        }
    }

    /// The check can fail: a planted line with each kind of secret is
    /// found, with its file and line; clean lines are not.
    #[test]
    fn a_planted_secret_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = vec!["alice-pw".to_string(), "svc-Pa55-never-logged".to_string()];
        std::fs::write(
            dir.path().join("ramdir.log"),
            "INFO directory loaded users=2\n\
             WARN bind failed dn=cn=mailsvc password=svc-Pa55-never-logged\n\
             INFO passdb reply for alice@example.org (hash hidden)\n\
             DEBUG entry userPassword={SSHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n\
             DEBUG auth alice@example.org alice-pw\n\
             DEBUG ldap user pw-user000042 bound\n\
             INFO password scheme {PLAIN} is allowed\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("clean.log"), "INFO nothing here\n").unwrap();
        let (found, files) = scan(dir.path(), &secrets).unwrap();
        assert_eq!(files, 2);
        let lines: Vec<usize> = found.iter().map(|f| f.line).collect();
        assert_eq!(lines, vec![2, 4, 5, 6], "{found:#?}");
        assert!(found.iter().all(|f| f.file.ends_with("ramdir.log")));
    }
}
