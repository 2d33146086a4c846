//! `gen-passwd`: a synthetic Dovecot passwd-file (and Postfix alias map
//! source) of any size, shaped like a real one.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use crate::keys::{KeyPattern, XorShift};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// Number of users.
    pub users: u64,
    /// Number of domains the users are spread over (`i % domains`).
    pub domains: u64,
    /// Address pattern (see [`KeyPattern`]).
    pub pattern: KeyPattern,
    /// Every n-th user gets a `userdb_quota_rule` (0 = none).
    pub quota_every: u64,
    /// Every n-th user gets an alias (0 = none).
    pub alias_every: u64,
    /// Seed for the password hashes.
    pub seed: u64,
    /// Passwords `{PLAIN}<address>` instead of random `{SSHA}` hashes: a
    /// login load (`auth --plain`) can then log every user in.
    pub plain_passwords: bool,
    /// `{SHA512-CRYPT}` hashes and the default limit as a quota rule on
    /// every user (see [`push_sha512_crypt`]).
    pub real: bool,
}

/// What was written.
#[derive(Debug, Default)]
pub struct GenReport {
    /// Users written.
    pub users: u64,
    /// Users with a quota rule.
    pub with_quota: u64,
    /// Aliases written.
    pub aliases: u64,
    /// Bytes of the passwd-file.
    pub passwd_bytes: u64,
    /// Bytes of the alias file.
    pub alias_bytes: u64,
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// `{SSHA}` + base64 of 24 pseudo-random bytes (a 20-byte SHA-1 digest and
/// a 4-byte salt, as `doveadm pw -s SSHA` makes): 32 characters, no padding.
pub fn push_ssha(rng: &mut XorShift, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{SSHA}");
    let mut raw = [0u8; 24];
    for chunk in raw.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    for c in raw.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        for shift in [18, 12, 6, 0] {
            out.push(B64[((n >> shift) & 63) as usize]);
        }
    }
}

/// crypt(3)'s base64 alphabet.
const CRYPT64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `{SHA512-CRYPT}$6$<16 salt characters>$<86 hash characters>`: the shape
/// (and length: 106 characters after the scheme) `doveadm pw -s
/// SHA512-CRYPT` makes, with pseudo-random characters.
pub fn push_sha512_crypt(rng: &mut XorShift, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{SHA512-CRYPT}$6$");
    let mut push = |n: usize, out: &mut Vec<u8>| {
        for _ in 0..n {
            out.push(CRYPT64[rng.below(64) as usize]);
        }
    };
    push(16, out);
    out.push(b'$');
    push(86, out);
}

/// Write the passwd-file (and, with `aliases`, the alias file). Lines look
/// like `user0000042@domain2.test:{SSHA}…:5000:5000::/var/vmail/domain2.test/user0000042::`
/// with `userdb_quota_rule=*:storage=<N>M` on every `quota_every`-th user,
/// and aliases like `alias0000042@domain2.test user0000042@domain2.test`.
pub fn generate(
    opts: &GenOptions,
    out: &Path,
    aliases: Option<&Path>,
) -> std::io::Result<GenReport> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(out)?);
    let mut aw = match aliases {
        Some(p) => Some(BufWriter::with_capacity(1 << 20, File::create(p)?)),
        None => None,
    };
    let mut rng = XorShift::new(opts.seed, 0);
    let mut line = Vec::with_capacity(256);
    let mut addr = Vec::with_capacity(64);
    let mut report = GenReport::default();
    let quota_sizes = [100u64, 250, 500, 1024, 2048, 5120];
    for i in 0..opts.users {
        addr.clear();
        opts.pattern.render_into(i, opts.domains, &mut addr);
        let at = addr.iter().rposition(|&b| b == b'@').ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the pattern must produce user@domain addresses",
            )
        })?;
        let (local, domain) = (&addr[..at], &addr[at + 1..]);
        line.clear();
        line.extend_from_slice(&addr);
        line.push(b':');
        if opts.plain_passwords {
            line.extend_from_slice(b"{PLAIN}");
            line.extend_from_slice(&addr);
        } else if opts.real {
            push_sha512_crypt(&mut rng, &mut line);
        } else {
            push_ssha(&mut rng, &mut line);
        }
        line.extend_from_slice(b":5000:5000::/var/vmail/");
        line.extend_from_slice(domain);
        line.push(b'/');
        line.extend_from_slice(local);
        line.extend_from_slice(b"::");
        if opts.real {
            line.extend_from_slice(b"userdb_quota_rule=*:storage=10G");
            report.with_quota += 1;
        } else if opts.quota_every > 0 && i % opts.quota_every == 0 {
            let mb = quota_sizes[(rng.below(quota_sizes.len() as u64)) as usize];
            line.extend_from_slice(format!("userdb_quota_rule=*:storage={mb}M").as_bytes());
            report.with_quota += 1;
        }
        line.push(b'\n');
        w.write_all(&line)?;
        report.passwd_bytes += line.len() as u64;
        report.users += 1;
        if let Some(aw) = aw.as_mut()
            && opts.alias_every > 0
            && i % opts.alias_every == 0
        {
            line.clear();
            line.extend_from_slice(b"alias");
            line.extend_from_slice(
                &local[local.iter().take_while(|b| !b.is_ascii_digit()).count()..],
            );
            line.push(b'@');
            line.extend_from_slice(domain);
            line.push(b' ');
            line.extend_from_slice(&addr);
            line.push(b'\n');
            aw.write_all(&line)?;
            report.alias_bytes += line.len() as u64;
            report.aliases += 1;
        }
    }
    w.flush()?;
    if let Some(mut aw) = aw {
        aw.flush()?;
    }
    Ok(report)
}

/// Run `gen-passwd` and print what was written.
pub fn run(opts: &GenOptions, out: &Path, aliases: Option<&Path>) -> std::io::Result<()> {
    let started = Instant::now();
    let r = generate(opts, out, aliases)?;
    println!(
        "wrote {} users over {} domains ({} with a quota rule) to {} ({:.1} MB)",
        r.users,
        opts.domains.min(opts.users),
        r.with_quota,
        out.display(),
        r.passwd_bytes as f64 / 1e6
    );
    if let Some(a) = aliases {
        println!(
            "wrote {} aliases to {} ({:.1} MB)",
            r.aliases,
            a.display(),
            r.alias_bytes as f64 / 1e6
        );
    }
    println!("took {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DEFAULT_PATTERN;

    #[test]
    fn lines_are_dovecot_passwd_file_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (pw, al) = (dir.path().join("users"), dir.path().join("aliases"));
        let opts = GenOptions {
            users: 10,
            domains: 3,
            pattern: KeyPattern::parse(DEFAULT_PATTERN).unwrap(),
            quota_every: 4,
            alias_every: 5,
            seed: 1,
            plain_passwords: false,
            real: false,
        };
        let real = dir.path().join("real");
        let r = generate(
            &GenOptions {
                real: true,
                ..opts.clone()
            },
            &real,
            None,
        )
        .unwrap();
        assert_eq!(r.with_quota, 10);
        for line in std::fs::read_to_string(&real).unwrap().lines() {
            let f: Vec<&str> = line.split(':').collect();
            let hash = f[1].strip_prefix("{SHA512-CRYPT}").unwrap();
            assert_eq!(hash.len(), 106, "{hash}");
            assert!(
                hash.starts_with("$6$") && hash.as_bytes()[19] == b'$',
                "{hash}"
            );
            assert!(
                line.ends_with("::userdb_quota_rule=*:storage=10G"),
                "{line}"
            );
        }
        let r = generate(&opts, &pw, Some(&al)).unwrap();
        assert_eq!((r.users, r.with_quota, r.aliases), (10, 3, 2));
        let text = std::fs::read_to_string(&pw).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 10);
        let f: Vec<&str> = lines[5].split(':').collect();
        assert_eq!(f[0], "user0000005@domain2.test");
        assert!(
            f[1].starts_with("{SSHA}") && f[1].len() == 6 + 32,
            "{}",
            f[1]
        );
        assert_eq!(
            &f[2..8],
            [
                "5000",
                "5000",
                "",
                "/var/vmail/domain2.test/user0000005",
                "",
                ""
            ]
        );
        assert!(lines[4].ends_with("M"), "{}", lines[4]);
        assert!(lines[4].contains("::userdb_quota_rule=*:storage="));
        let aliases = std::fs::read_to_string(&al).unwrap();
        assert_eq!(
            aliases,
            "alias0000000@domain0.test user0000000@domain0.test\n\
             alias0000005@domain2.test user0000005@domain2.test\n"
        );
        // ramdir's own loader accepts both files.
        let dir = ramdir_core::files::load(
            &ramdir_core::files::FileSources {
                passwd_files: vec![pw],
                alias_files: vec![al],
                ..Default::default()
            },
            ramdir_core::Settings::default(),
        )
        .unwrap();
        assert_eq!(dir.counts().users, 10);
        assert_eq!(dir.counts().aliases, 2);
    }
}
