//! `ldap-search`: equality searches on an LDAP server, as Postfix's
//! `ldap_table(5)` or Dovecot's LDAP userdb would send them, one search in
//! flight per connection, through the `ldap3` crate ramdir syncs with.
//! Each connection binds once (simple bind, or anonymous), then searches
//! `filter_pattern` rendered for a random item under `base` (subtree).
//! An entry found counts as OK, none as not found, an error result as
//! temp.
//!
//! And `gen-ldif`: the entries such a server is loaded with, in the shape
//! of the integration harness (`integration/src/slapd.rs`), numbered and
//! addressed like `gen-passwd`'s users so the same keys find them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use ldap3::{Ldap, LdapConnAsync, Scope};

use crate::client::{Kind, Outcome, Target};
use crate::genpasswd::push_ssha;
use crate::keys::{KeyPattern, XorShift};

/// What to search.
#[derive(Debug, Clone)]
pub struct LdapTarget {
    /// `ldap://…` or `ldapi://…`.
    pub url: String,
    /// Bind DN and password (none: anonymous).
    pub bind: Option<(String, String)>,
    /// Search base.
    pub base: String,
    /// Filter pattern (as gen-passwd's --pattern): `(mail=user%07d@domain%d.test)`.
    pub filter: KeyPattern,
    /// Domains of the pattern.
    pub domains: u64,
    /// Items `0..count`.
    pub count: u64,
    /// Attributes to return.
    pub attrs: Vec<String>,
}

impl Target for LdapTarget {
    type Conn = Ldap;

    fn len(&self) -> usize {
        self.count as usize
    }

    fn kind(&self) -> Kind {
        Kind {
            map: "ldap".into(),
            what: format!(
                "LDAP search {} (attributes {})",
                self.filter.render_string(0, self.domains),
                self.attrs.join(",")
            ),
            labels: ["found", "no entry", "error result", "other"],
        }
    }

    async fn connect(&self, _id: usize) -> Result<Ldap, String> {
        let (conn, mut ldap) = LdapConnAsync::new(&self.url)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.url))?;
        ldap3::drive!(conn);
        if let Some((dn, pw)) = &self.bind {
            ldap.simple_bind(dn, pw)
                .await
                .and_then(|r| r.success())
                .map_err(|e| format!("bind as {dn}: {e}"))?;
        }
        Ok(ldap)
    }

    async fn call(&self, ldap: &mut Ldap, i: usize) -> Result<Outcome, String> {
        let filter = self.filter.render_string(i as u64, self.domains);
        let r = ldap
            .search(&self.base, Scope::Subtree, &filter, &self.attrs)
            .await
            .map_err(|e| format!("search: {e}"))?;
        Ok(if r.1.rc != 0 {
            Outcome::Temp
        } else if r.0.is_empty() {
            Outcome::NotFound
        } else {
            Outcome::Ok
        })
    }
}

/// What `gen-ldif` writes.
#[derive(Debug, Clone)]
pub struct LdifOptions {
    /// Entries (users `0..users`).
    pub users: u64,
    /// Domains (`i % domains`).
    pub domains: u64,
    /// Address pattern (`mail`).
    pub pattern: KeyPattern,
    /// Parent of the entries.
    pub base: String,
    /// Also give every entry an alias `alias…` (`mailLocalAddress`).
    pub aliases: bool,
    /// First item number (to write entries to add later).
    pub first: u64,
    /// Seed of the password hashes.
    pub seed: u64,
}

/// The DN of user `i` under `base`: `uid=u<i>,<base>`.
pub fn user_dn(i: u64, base: &str) -> String {
    format!("uid=u{i},{base}")
}

/// Append user `i`'s entry (ends with a blank line).
pub fn push_entry(o: &LdifOptions, i: u64, rng: &mut XorShift, out: &mut Vec<u8>) {
    let mail = o.pattern.render_string(i, o.domains);
    let (local, domain) = mail.rsplit_once('@').unwrap_or((&mail, ""));
    let digits = &local[local
        .find(|c: char| c.is_ascii_digit())
        .unwrap_or(local.len())..];
    let quota: u64 = [100u64, 250, 500, 1024, 2048, 5120][rng.below(6) as usize] << 20;
    out.extend_from_slice(
        format!(
            "dn: {dn}\nobjectClass: inetOrgPerson\nobjectClass: inetLocalMailRecipient\n\
             objectClass: mailAccount\nuid: u{i}\ncn: User {i}\nsn: {i}\nmail: {mail}\n",
            dn = user_dn(i, &o.base)
        )
        .as_bytes(),
    );
    if o.aliases {
        out.extend_from_slice(format!("mailLocalAddress: alias{digits}@{domain}\n").as_bytes());
    }
    out.extend_from_slice(
        format!("mailQuotaBytes: {quota}\nmailEnabled: TRUE\nuserPassword: ").as_bytes(),
    );
    push_ssha(rng, out);
    out.extend_from_slice(b"\n\n");
}

/// Write the entries of users `first..first + users` to `out`.
pub fn gen_ldif(o: &LdifOptions, out: &Path) -> std::io::Result<()> {
    let started = Instant::now();
    let mut w = BufWriter::with_capacity(1 << 20, File::create(out)?);
    let mut rng = XorShift::new(o.seed, 1);
    let mut buf = Vec::with_capacity(512);
    let mut bytes = 0u64;
    for i in o.first..o.first + o.users {
        buf.clear();
        push_entry(o, i, &mut rng, &mut buf);
        w.write_all(&buf)?;
        bytes += buf.len() as u64;
    }
    w.flush()?;
    println!(
        "wrote {} entries to {} ({:.1} MB) in {:.2} s",
        o.users,
        out.display(),
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_look_like_the_harness_ones() {
        let o = LdifOptions {
            users: 1,
            domains: 100,
            pattern: KeyPattern::parse("user%07d@domain%d.test").unwrap(),
            base: "ou=people,dc=example,dc=org".into(),
            aliases: true,
            first: 0,
            seed: 1,
        };
        let mut out = Vec::new();
        push_entry(&o, 1234, &mut XorShift::new(1, 1), &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "dn: uid=u1234,ou=people,dc=example,dc=org");
        assert!(lines.contains(&"mail: user0001234@domain34.test"));
        assert!(lines.contains(&"mailLocalAddress: alias0001234@domain34.test"));
        assert!(lines.contains(&"mailEnabled: TRUE"));
        let q = lines
            .iter()
            .find_map(|l| l.strip_prefix("mailQuotaBytes: "))
            .unwrap();
        assert!(q.parse::<u64>().unwrap() >= 100 << 20);
        let pw = lines
            .iter()
            .find_map(|l| l.strip_prefix("userPassword: "))
            .unwrap();
        assert!(pw.starts_with("{SSHA}") && pw.len() == 38, "{pw}");
        assert!(text.ends_with("\n\n"));
        assert_eq!(
            LdapTarget {
                url: "ldap://x".into(),
                bind: None,
                base: "b".into(),
                filter: KeyPattern::parse("(mail=user%07d@domain%d.test)").unwrap(),
                domains: 100,
                count: 5,
                attrs: vec!["mail".into()],
            }
            .filter
            .render_string(1234, 100),
            "(mail=user0001234@domain34.test)"
        );
    }
}
