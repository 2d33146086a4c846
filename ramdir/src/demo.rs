//! The embedded demo directory for `ramdir serve --demo`: a few users,
//! aliases, a catch-all and an alias domain, written to a local folder so a
//! newcomer sees ramdir answer without writing any file.

use std::path::{Path, PathBuf};

const FILES: [(&str, &str); 5] = [
    ("ramdir.toml", include_str!("../demo/ramdir.toml")),
    ("users.passwd", include_str!("../demo/users.passwd")),
    ("aliases", include_str!("../demo/aliases")),
    ("domains", include_str!("../demo/domains")),
    ("senders", include_str!("../demo/senders")),
];

/// Write the demo files into `dir` (existing files are left as they are, so
/// a newcomer can edit them and watch ramdir reload) and return the path of
/// its configuration.
pub fn prepare(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("run"))?;
    for (name, text) in FILES {
        let p = dir.join(name);
        if !p.exists() {
            std::fs::write(&p, text)?;
        }
    }
    std::path::absolute(dir.join("ramdir.toml"))
}

/// What to try once the demo runs.
pub fn hints(dir: &Path) -> String {
    let sock = dir.join("run/socketmap.sock");
    let s = sock.display();
    format!(
        "ramdir demo is serving the socketmap on {s},\n\
         the policy service on {p} and the Dovecot dict on {d}\n\
         try, in another terminal:\n  \
         ramdir query --socket {s} mailboxes alice+news@Example.ORG\n  \
         ramdir query --socket {s} aliases team@example.org\n  \
         ramdir query --socket {s} aliases anyone@example.net\n  \
         ramdir explain --config {cfg} carol@example.com\n  \
         ramdir query --config {cfg} userdb carol@example.org\n  \
         printf 'request=smtpd_access_policy\\nprotocol_state=RCPT\\nrecipient=team@example.org\\nsize=1000\\n\\n' | nc -U -q1 {p}\n\
         edit {dir}/aliases and ramdir reloads it; Ctrl-C stops.",
        cfg = dir.join("ramdir.toml").display(),
        p = dir.join("run/policy.sock").display(),
        d = dir.join("run/dict.sock").display(),
        dir = dir.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_files_load_and_answer() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg_path = prepare(tmp.path()).unwrap();
        let cfg = crate::config::Config::load(&cfg_path).unwrap();
        let dir = crate::serve::load_directory(&cfg).unwrap();
        assert_eq!(dir.counts().users, 4);
        let team = dir.lookup_alias("team@example.org").unwrap().unwrap();
        assert_eq!(team, ["alice@example.org", "bob@example.org"]);
        assert_eq!(
            dir.lookup_alias("x@example.net").unwrap().unwrap(),
            ["dave@example.net"]
        );
        assert_eq!(
            dir.lookup_alias("carol@example.com").unwrap().unwrap(),
            ["carol@example.org"]
        );
        assert!(cfg.socketmap.unwrap().path.ends_with("run/socketmap.sock"));
    }
}
