//! A private OpenLDAP `slapd` (Debian's 2.5) run from the stack directory,
//! the LDAP source ramdir syncs from, and the tools the tests change it
//! with.
//!
//! How slapd is run follows `docs/stack-notes.md` section 2:
//! - `<stack>/ld/slapd.conf` (the old `slapd.conf` format; no `cn=config`),
//!   with the stock `core`, `cosine`, `inetorgperson` and `misc` schemas
//!   plus ramdir's private `mailaccount.schema`, which is included here
//!   from `docs/ldap/mailaccount.schema` so the tests run the shipped file;
//! - one `mdb` database for `dc=example,dc=org` in `<stack>/ld/db`, with
//!   the `syncprov` overlay (checkpoint and session log) and `eq` indexes on
//!   `entryCSN`/`entryUUID` (needed by syncprov) and on the mail attributes;
//! - `limits dn.exact="cn=mailsvc,…" size=unlimited time=unlimited` for
//!   ramdir's bind identity: without it the global `sizelimit 1000` ends a
//!   sync refresh of more than 1000 entries (trap 12);
//! - ACLs: `userPassword` readable by `cn=mailsvc` only (and usable for
//!   binds), everything else readable;
//! - `authz-regexp` mapping root over `ldapi://` to the rootdn, with `.`
//!   instead of `\+` (trap 13);
//! - data loaded with `slapadd -q -w` (`-q`: 35× faster, trap 14; `-w`:
//!   writes the suffix's `contextCSN`, which ramdir starts its sync from);
//! - slapd in the foreground (`-d stats`, so our child is slapd itself and
//!   its stderr is the `stats` log: connections, binds and every `SRCH`),
//!   listening on `ldap://127.0.0.1:<free port>/` and on
//!   `ldapi://<stack>/ld/ldapi` (a short path: sun_path is 107 bytes, trap
//!   18);
//! - stopped with SIGTERM and reaped by us (we are its parent, so the late
//!   orphan reaping of trap 15 does not apply).
//!
//! Changes are made with the `ldapmodify`/`ldapadd`/`ldapdelete`/
//! `ldapmodrdn` command-line tools (package `ldap-utils`) bound as the
//! rootdn over `ldapi://`, i.e. the way an administrator would.
//!
//! Test data: [`users_ldif`] makes `N` entries `uid=userNNNNNN` with `mail`
//! `userNNNNNN@example.org`, one alias `aliasNNNNNN@example.org`
//! (`mailLocalAddress`), `mailQuotaBytes`, `mailEnabled: TRUE` and an
//! `{SSHA}` `userPassword` of `pw-userNNNNNN`. The entries carry no
//! `uidNumber` (that needs `posixAccount`); ramdir's `default_uid` gives
//! one.
//!
//! [`RamdirStats`] reads ramdir's `[stats]` socket (sync phase, counters,
//! whether the directory is authoritative), so tests can count full loads,
//! applied changes and fallback searches.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::{StackDir, WAIT, process_alive, require_root, set_mode, write_atomic};

/// The naming context.
pub const SUFFIX: &str = "dc=example,dc=org";
/// Where the mail entries live (ramdir's `base`).
pub const PEOPLE: &str = "ou=people,dc=example,dc=org";
/// The mail domain of the generated entries.
pub const DOMAIN: &str = "example.org";
/// The rootdn (the tools bind as it).
pub const ROOT_DN: &str = "cn=admin,dc=example,dc=org";
/// The rootdn's password (cleartext `rootpw`; a test instance only).
pub const ROOT_PW: &str = "admin-secret";
/// ramdir's bind identity: may read `userPassword`, has no size limit.
pub const SVC_DN: &str = "cn=mailsvc,dc=example,dc=org";
/// The service account's password. Distinctive, so tests can check that
/// it never shows up in ramdir's log.
pub const SVC_PW: &str = "svc-Pa55-never-logged";

/// ramdir's private schema, exactly as shipped in `docs/ldap/`.
pub const MAILACCOUNT_SCHEMA: &str = include_str!("../../docs/ldap/mailaccount.schema");

/// The stock schemas the instance loads (Debian's `/etc/ldap/schema`).
const STOCK_SCHEMAS: [&str; 4] = ["core", "cosine", "inetorgperson", "misc"];

/// What a slapd instance needs on this machine.
const REQUIRED: [&str; 10] = [
    "/usr/sbin/slapd",
    "/usr/sbin/slapadd",
    "/usr/sbin/slapmodify",
    "/usr/bin/ldapsearch",
    "/usr/bin/ldapmodify",
    "/usr/bin/ldapadd",
    "/usr/bin/ldapdelete",
    "/usr/bin/ldapmodrdn",
    "/usr/lib/ldap/back_mdb.so",
    "/usr/lib/ldap/syncprov.so",
];

/// Panic, saying how to fix it, unless slapd (with back_mdb and syncprov),
/// the LDAP tools and Debian's schema files are installed and we are root.
pub fn require_slapd() {
    require_root();
    for p in REQUIRED {
        if !Path::new(p).exists() {
            panic!(
                "{p} is missing: the LDAP tests need OpenLDAP's slapd and ldap-utils; \
                 run scripts/install-test-deps.sh (as root) first"
            );
        }
    }
    for s in STOCK_SCHEMAS {
        let p = format!("/etc/ldap/schema/{s}.schema");
        if !Path::new(&p).exists() {
            panic!("{p} is missing: reinstall slapd (scripts/install-test-deps.sh)");
        }
    }
}

// ---------------------------------------------------------------------------
// Test data

/// The DN of generated user `i`.
pub fn user_dn(i: usize) -> String {
    format!("uid=user{i:06},{PEOPLE}")
}

/// The mail address of generated user `i`.
pub fn user_mail(i: usize) -> String {
    format!("user{i:06}@{DOMAIN}")
}

/// The alias (`mailLocalAddress`) of generated user `i`.
pub fn alias_mail(i: usize) -> String {
    format!("alias{i:06}@{DOMAIN}")
}

/// The password of generated user `i`.
pub fn user_password(i: usize) -> String {
    format!("pw-user{i:06}")
}

/// The `mailQuotaBytes` of every generated user: 1 GiB.
pub const USER_QUOTA: u64 = 1 << 30;

/// The suffix entry, `ou=people` and the service account.
pub fn base_ldif() -> String {
    format!(
        "dn: {SUFFIX}\n\
         objectClass: dcObject\n\
         objectClass: organization\n\
         dc: example\n\
         o: Example\n\
         \n\
         dn: {PEOPLE}\n\
         objectClass: organizationalUnit\n\
         ou: people\n\
         \n\
         dn: {SVC_DN}\n\
         objectClass: organizationalRole\n\
         objectClass: simpleSecurityObject\n\
         cn: mailsvc\n\
         description: ramdir's bind identity\n\
         userPassword: {}\n\
         \n",
        ssha(SVC_PW, b"mailsvc!")
    )
}

/// One generated user entry (ends with a blank line).
pub fn user_ldif(i: usize) -> String {
    let salt = (i as u64).to_be_bytes();
    format!(
        "dn: {dn}\n\
         objectClass: inetOrgPerson\n\
         objectClass: inetLocalMailRecipient\n\
         objectClass: mailAccount\n\
         uid: user{i:06}\n\
         cn: User {i:06}\n\
         sn: {i:06}\n\
         mail: {mail}\n\
         mailLocalAddress: {alias}\n\
         mailQuotaBytes: {USER_QUOTA}\n\
         mailEnabled: TRUE\n\
         userPassword: {pw}\n\
         \n",
        dn = user_dn(i),
        mail = user_mail(i),
        alias = alias_mail(i),
        pw = ssha(&user_password(i), &salt),
    )
}

/// [`base_ldif`] and users `1..=n`.
pub fn users_ldif(n: usize) -> String {
    let mut s = base_ldif();
    s.reserve(n * 400);
    for i in 1..=n {
        s.push_str(&user_ldif(i));
    }
    s
}

/// `{SSHA}` of `password` with `salt`, as `slappasswd -h {SSHA}` makes it
/// (base64 of SHA-1(password ‖ salt) ‖ salt). slapd checks it on binds and
/// Dovecot on logins.
pub fn ssha(password: &str, salt: &[u8]) -> String {
    let mut input = password.as_bytes().to_vec();
    input.extend_from_slice(salt);
    let mut raw = sha1(&input).to_vec();
    raw.extend_from_slice(salt);
    format!("{{SSHA}}{}", base64(&raw))
}

/// SHA-1 (FIPS 180-4). Only for test password hashes; the integration
/// crate has no hashing dependency.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (wi, word) in w.iter_mut().zip(block.chunks_exact(4)) {
            *wi = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for t in 16..80 {
            w[t] = (w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (t, wt) in w.iter().enumerate() {
            let (f, k) = match t {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let tmp = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wt);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = tmp;
        }
        for (hi, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hi = hi.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (o, v) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&v.to_be_bytes());
    }
    out
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The instance

/// A slapd instance under `<stack>/ld`. Stopped on drop.
#[derive(Debug)]
pub struct Slapd {
    root: PathBuf,
    conf: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Slapd {
    /// Write the configuration and schema, `slapadd -q -w` the `ldif`
    /// (which must hold the suffix entry, e.g. from [`users_ldif`]), start
    /// slapd and wait (up to [`WAIT`]) until it answers over `ldapi://`.
    pub fn start(stack: &StackDir, ldif: &str) -> Slapd {
        let mut s = Slapd::prepare(stack, "ld", free_port(), "", "");
        s.slapadd(ldif, None);
        s.start_again();
        s
    }

    /// Two N-way multi-providers (`serverID` 1 and 2, `multiprovider on`,
    /// each a `refreshAndPersist` syncrepl consumer of the other, bound as
    /// the rootdn) in `<stack>/ld` and `<stack>/ld2`, as
    /// `docs/notes/scale-out.md` §5 describes. `ldif` is `slapadd -S 1 -w`ed
    /// into the first; its `slapcat` (same entryUUIDs and entryCSNs) into
    /// the second, so both start with the same data and `contextCSN` and
    /// neither has to pull the other's whole database.
    pub fn start_multi_provider(stack: &StackDir, ldif: &str) -> [Slapd; 2] {
        let ports = [free_port(), free_port()];
        assert_ne!(ports[0], ports[1], "two free ports");
        let [mut a, mut b] = [0usize, 1].map(|i| {
            let other = ports[1 - i];
            Slapd::prepare(
                stack,
                if i == 0 { "ld" } else { "ld2" },
                ports[i],
                &format!("serverID {}\n", i + 1),
                &format!(
                    "syncrepl rid=00{other_sid} provider=ldap://127.0.0.1:{other}\n\
                     \tbindmethod=simple binddn=\"{ROOT_DN}\" credentials={ROOT_PW}\n\
                     \tsearchbase=\"{SUFFIX}\" type=refreshAndPersist retry=\"1 +\" timeout=3\n\
                     multiprovider on\n",
                    other_sid = 2 - i,
                ),
            )
        });
        a.slapadd(ldif, Some(1));
        let out = Command::new("/usr/sbin/slapcat")
            .arg("-f")
            .arg(&a.conf)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run slapcat: {e}"));
        assert!(
            out.status.success(),
            "slapcat -f {} failed: {}",
            a.conf.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        b.slapadd(&String::from_utf8_lossy(&out.stdout), Some(1));
        a.start_again();
        b.start_again();
        [a, b]
    }

    /// Write the configuration and schema of an instance in `<stack>/<name>`
    /// listening on `port`; `global` and `database` are added to the
    /// global and the database section.
    fn prepare(stack: &StackDir, name: &str, port: u16, global: &str, database: &str) -> Slapd {
        require_slapd();
        sweep_stale_slapds();
        let root = stack.join(name);
        let db = root.join("db");
        std::fs::create_dir_all(&db).unwrap_or_else(|e| panic!("mkdir {}: {e}", db.display()));
        set_mode(&root, 0o755);
        let schema = root.join("mailaccount.schema");
        write_atomic(&schema, MAILACCOUNT_SCHEMA);
        let conf = root.join("slapd.conf");
        write_atomic(&conf, &slapd_conf(&root, &schema, global, database));
        Slapd {
            root,
            conf,
            port,
            child: None,
        }
    }

    /// Load `ldif` into the (stopped) database with `slapadd -q -w`, with
    /// `-S sid` when given.
    fn slapadd(&self, ldif: &str, sid: Option<u32>) {
        let path = self.root.join("load.ldif");
        write_atomic(&path, ldif);
        let started = Instant::now();
        let mut cmd = Command::new("/usr/sbin/slapadd");
        if let Some(sid) = sid {
            cmd.arg("-S").arg(sid.to_string());
        }
        let out = cmd
            .arg("-q")
            .arg("-w")
            .arg("-f")
            .arg(&self.conf)
            .arg("-l")
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run slapadd: {e}"));
        assert!(
            out.status.success(),
            "slapadd -q -w -f {} -l {} failed ({}): {}{}",
            self.conf.display(),
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "slapd harness: slapadd of {} entries took {} ms",
            ldif.matches("\ndn: ").count() + usize::from(ldif.starts_with("dn: ")),
            started.elapsed().as_millis()
        );
    }

    /// Apply change records (`dn:` + `changetype:` LDIF) to the **stopped**
    /// database with `slapmodify`: changes made while slapd is down, as a
    /// restore or an offline fix would make them. With `write_csn` (`-w`)
    /// the suffix's `contextCSN` moves forward to the changed entries'
    /// `entryCSN`, so syncprov serves them to consumers after the restart.
    ///
    /// Traps (slapmodify 2.5.13):
    /// - a `modify` gives the entry a **new `entryUUID`**: to a sync
    ///   consumer, an offline modify is a delete plus an add of a new
    ///   entry with the same DN and content;
    /// - with `-w` it dies of SIGSEGV on a `delete` record (after
    ///   deleting). Apply deletes without `-w` and follow them with a
    ///   change with `-w` (e.g. to the suffix entry): a delete alone leaves
    ///   `contextCSN` as it was, and a consumer whose cookie equals it is
    ///   told that nothing changed.
    pub fn slapmodify(&mut self, ldif: &str, write_csn: bool) {
        assert!(!self.is_running(), "slapmodify needs slapd stopped");
        let path = self.root.join("offline.ldif");
        write_atomic(&path, ldif);
        let mut cmd = Command::new("/usr/sbin/slapmodify");
        if write_csn {
            cmd.arg("-w");
        }
        let out = cmd
            .arg("-f")
            .arg(&self.conf)
            .arg("-l")
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run slapmodify: {e}"));
        assert!(
            out.status.success(),
            "slapmodify{} -f {} -l {} failed ({}): {}{}\ninput:\n{ldif}",
            if write_csn { " -w" } else { "" },
            self.conf.display(),
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start slapd (again, after [`stop`](Self::stop)) on the same port and
    /// database, and wait (up to [`WAIT`]) until it answers over `ldapi://`.
    /// Panics with its log if it exits or never answers.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "slapd is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log_path().display()));
        let child = Command::new("/usr/sbin/slapd")
            .arg("-d")
            .arg("stats")
            .arg("-f")
            .arg(&self.conf)
            .arg("-h")
            .arg(format!("{}/ {}", self.url(), self.ldapi_url()))
            .env(crate::leftovers::STACK_ENV, &self.root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn slapd: {e}"));
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "slapd exited with {status} at start; its log:\n{}",
                    tail(&self.log_text(), 30)
                );
            }
            let probe = self.tool(
                "ldapsearch",
                &["-LLL", "-b", "", "-s", "base", "namingContexts"],
                None,
            );
            if probe.status.success() {
                return;
            }
            if start.elapsed() > WAIT {
                panic!(
                    "slapd did not answer on {} within {WAIT:?}; its log:\n{}",
                    self.ldapi_url(),
                    tail(&self.log_text(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop slapd: SIGTERM, wait (up to [`WAIT`]) until it has exited, SIGKILL
    /// otherwise. It removes its ldapi socket and pid file itself.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kill slapd outright (SIGKILL, as a crash or the OOM killer would)
    /// and reap it. Its ldapi socket and pid file stay behind; mdb keeps
    /// every committed change.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Is slapd running?
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `ldap://127.0.0.1:<port>` (what ramdir is configured with).
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// `ldapi://` URL of the Unix socket `<stack>/ld/ldapi`, percent-encoded.
    pub fn ldapi_url(&self) -> String {
        format!(
            "ldapi://{}",
            percent_encode(&self.ldapi_path().display().to_string())
        )
    }

    /// The ldapi socket.
    pub fn ldapi_path(&self) -> PathBuf {
        self.root.join("ldapi")
    }

    /// `<stack>/ld`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `slapd.conf`.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// slapd's stderr (`-d stats`): connections, operations, results.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("slapd.log")
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// How many searches slapd has received (over all its runs) whose
    /// `SRCH base=… filter=…` log line contains `needle` (e.g. an address in
    /// a fallback filter).
    pub fn searches_matching(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(" SRCH base=") && l.contains(needle))
            .count()
    }

    /// Run an `ldap-utils` tool bound as the rootdn over ldapi, with `stdin`
    /// as its input.
    fn tool(&self, name: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(format!("/usr/bin/{name}"));
        cmd.args(["-x", "-H", &self.ldapi_url(), "-D", ROOT_DN, "-w", ROOT_PW])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("run {name}: {e}"));
        if let Some(text) = stdin {
            let mut w = child.stdin.take().expect("stdin piped");
            w.write_all(text.as_bytes())
                .unwrap_or_else(|e| panic!("write to {name}: {e}"));
        }
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("wait for {name}: {e}"))
    }

    fn tool_ok(&self, name: &str, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.tool(name, args, stdin);
        if !out.status.success() {
            panic!(
                "{name} {args:?} failed ({}): {}{}\ninput:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                stdin.unwrap_or("")
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ldapmodify` with this LDIF (`dn:`/`changetype:` records).
    pub fn ldapmodify(&self, ldif: &str) {
        self.tool_ok("ldapmodify", &[], Some(ldif));
    }

    /// `ldapadd` of these entries.
    pub fn ldapadd(&self, ldif: &str) {
        self.tool_ok("ldapadd", &[], Some(ldif));
    }

    /// `ldapdelete DN`.
    pub fn ldapdelete(&self, dn: &str) {
        self.tool_ok("ldapdelete", &[dn], None);
    }

    /// `ldapmodrdn -r DN NEWRDN` (the old RDN value is removed).
    pub fn ldapmodrdn(&self, dn: &str, new_rdn: &str) {
        self.tool_ok("ldapmodrdn", &["-r", dn, new_rdn], None);
    }

    /// Replace one attribute's values of `dn` (one `ldapmodify`).
    pub fn replace(&self, dn: &str, attr: &str, values: &[&str]) {
        let mut ldif = format!("dn: {dn}\nchangetype: modify\nreplace: {attr}\n");
        for v in values {
            ldif.push_str(&format!("{attr}: {v}\n"));
        }
        self.ldapmodify(&ldif);
    }

    /// Add a value to an attribute of `dn` (one `ldapmodify`).
    pub fn add_value(&self, dn: &str, attr: &str, value: &str) {
        self.ldapmodify(&format!(
            "dn: {dn}\nchangetype: modify\nadd: {attr}\n{attr}: {value}\n"
        ));
    }

    /// `ldapsearch -LLL` as the rootdn; its output.
    pub fn search(&self, base: &str, filter: &str, attrs: &[&str]) -> String {
        let mut args = vec!["-LLL", "-o", "ldif-wrap=no", "-b", base, filter];
        args.extend_from_slice(attrs);
        self.tool_ok("ldapsearch", &args, None)
    }

    /// `ldapwhoami` bound as `dn` with `password` over `ldap://`: does slapd
    /// accept the password (e.g. a generated `{SSHA}`)?
    pub fn bind_ok(&self, dn: &str, password: &str) -> bool {
        Command::new("/usr/bin/ldapwhoami")
            .args(["-x", "-H", &self.url(), "-D", dn, "-w", password])
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The `[ldap]` (and `[ldap.mapping]`) sections of a ramdir config for
    /// this instance: `url` ([`url`](Self::url) or
    /// [`ldapi_url`](Self::ldapi_url)), base `ou=people`, simple bind as
    /// [`SVC_DN`] with the password in `secret` (see [`write_secret`]),
    /// `default_uid`/`default_gid` 5000. `extra` is added to `[ldap]`
    /// (e.g. `sync_lost_after_secs = 1`).
    pub fn ramdir_section(&self, url: &str, secret: &Path, extra: &str) -> String {
        format!(
            "[ldap]\n\
             url = \"{url}\"\n\
             base = \"{PEOPLE}\"\n\
             bind_dn = \"{SVC_DN}\"\n\
             bind_password_file = \"{secret}\"\n\
             {extra}\n\
             \n\
             [ldap.mapping]\n\
             default_uid = 5000\n\
             default_gid = 5000\n",
            secret = secret.display(),
            extra = extra.trim_end(),
        )
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Write a bind password file: `password` and a newline, with `mode`
/// (0600 is what ramdir wants; a world-readable 0644 must be refused).
pub fn write_secret(path: &Path, password: &str, mode: u32) {
    write_atomic(path, &format!("{password}\n"));
    set_mode(path, mode);
}

fn slapd_conf(root: &Path, schema: &Path, global: &str, database: &str) -> String {
    let mut s = String::from("# Generated by ramdir-integration (a private test instance).\n");
    for name in STOCK_SCHEMAS {
        s.push_str(&format!("include /etc/ldap/schema/{name}.schema\n"));
    }
    s.push_str(&format!(
        "include {schema}\n\
         pidfile {root}/slapd.pid\n\
         argsfile {root}/slapd.args\n\
         modulepath /usr/lib/ldap\n\
         moduleload back_mdb\n\
         moduleload syncprov\n\
         sizelimit 1000\n\
         authz-regexp \"gidNumber=0.uidNumber=0,cn=peercred,cn=external,cn=auth\" \"{ROOT_DN}\"\n\
         {global}\
         \n\
         database mdb\n\
         suffix \"{SUFFIX}\"\n\
         rootdn \"{ROOT_DN}\"\n\
         rootpw {ROOT_PW}\n\
         directory {root}/db\n\
         maxsize 1073741824\n\
         index objectClass eq\n\
         index uid,mail,mailLocalAddress eq\n\
         index entryCSN,entryUUID eq\n\
         limits dn.exact=\"{SVC_DN}\" size=unlimited time=unlimited\n\
         access to attrs=userPassword\n\
         \tby anonymous auth\n\
         \tby dn.exact=\"{SVC_DN}\" read\n\
         \tby * none\n\
         access to * by * read\n\
         {database}\
         overlay syncprov\n\
         syncprov-checkpoint 100 10\n\
         syncprov-sessionlog 10000\n",
        schema = schema.display(),
        root = root.display(),
    ));
    s
}

/// Percent-encode a socket path for an `ldapi://` URL.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Stop slapds of stacks whose test process is gone (a run killed before
/// its `Drop`s ran), once per process. Only a slapd whose command line
/// names that stack's `slapd.conf` is signalled.
fn sweep_stale_slapds() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(rd) = std::fs::read_dir("/tmp") else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("rdi-")) else {
                continue;
            };
            let Some(owner) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            if owner == std::process::id() as i32 || process_alive(owner) {
                continue;
            }
            // `ld2`: the second of a multi-provider pair.
            for name in ["ld", "ld2"] {
                let root = e.path().join(name);
                let Some(pid) = std::fs::read_to_string(root.join("slapd.pid"))
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                else {
                    continue;
                };
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let conf = root.join("slapd.conf");
                let mine = String::from_utf8_lossy(&cmdline)
                    .split('\0')
                    .any(|a| Path::new(a) == conf);
                if mine && process_alive(pid) {
                    eprintln!(
                        "slapd harness: stopping leaked slapd {pid} of {}",
                        root.display()
                    );
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------
// ramdir's stats

/// One document from ramdir's `[stats]` socket (the JSON `ramdir stats`
/// prints), with accessors for the fields the LDAP tests need. The
/// integration crate has no JSON dependency: fields are found by their
/// (unique) key.
#[derive(Debug, Clone)]
pub struct RamdirStats {
    /// The document as received.
    pub raw: String,
}

impl RamdirStats {
    /// Read the document from the stats socket.
    pub fn fetch(socket: &Path) -> std::io::Result<RamdirStats> {
        let mut s = crate::connect_unix(socket)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        Ok(RamdirStats { raw })
    }

    /// [`fetch`](Self::fetch), panicking on failure.
    pub fn get(socket: &Path) -> RamdirStats {
        RamdirStats::fetch(socket)
            .unwrap_or_else(|e| panic!("read stats from {}: {e}", socket.display()))
    }

    /// The raw JSON value of `"key"` (a number, `true`, `null`, or a string
    /// with its escapes resolved); `None` when the key is absent.
    pub fn field(&self, key: &str) -> Option<String> {
        let pat = format!("\"{key}\":");
        let at = self.raw.find(&pat)? + pat.len();
        let rest = self.raw[at..].trim_start();
        if let Some(s) = rest.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = s.chars();
            while let Some(c) = chars.next() {
                match c {
                    '"' => return Some(out),
                    '\\' => match chars.next()? {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        other => out.push(other),
                    },
                    c => out.push(c),
                }
            }
            None
        } else {
            let end = rest.find([',', '}', '\n']).unwrap_or(rest.len());
            Some(rest[..end].trim().to_string())
        }
    }

    /// A numeric field; panics if it is absent or not a number.
    pub fn num(&self, key: &str) -> u64 {
        self.field(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("stats field {key:?} is not a number in {}", self.raw))
    }

    /// `directory.authoritative`.
    pub fn authoritative(&self) -> bool {
        match self.field("authoritative").as_deref() {
            Some("true") => true,
            Some("false") => false,
            other => panic!("stats: authoritative is {other:?} in {}", self.raw),
        }
    }

    /// `directory.note` (`None` when null).
    pub fn note(&self) -> Option<String> {
        self.field("note").filter(|n| n != "null")
    }

    /// `ldap.phase`.
    pub fn phase(&self) -> String {
        self.field("phase").unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_and_base64_match_the_standards() {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(hex(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        let long = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        assert_eq!(hex(&sha1(long)), "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        // 20-byte digest + 4-byte salt → 32 base64 characters.
        assert_eq!(ssha("secret", b"salt").len(), "{SSHA}".len() + 32);
    }

    #[test]
    fn stats_fields_are_found() {
        let s = RamdirStats {
            raw: r#"{"directory":{"authoritative":false,"note":"serving the \"warm\" LDAP snapshot"},"ldap":{"full_loads":1,"phase":"in sync","x":null}}"#.into(),
        };
        assert!(!s.authoritative());
        assert_eq!(
            s.note().as_deref(),
            Some("serving the \"warm\" LDAP snapshot")
        );
        assert_eq!(s.num("full_loads"), 1);
        assert_eq!(s.phase(), "in sync");
        assert_eq!(s.field("x").as_deref(), Some("null"));
        assert_eq!(s.field("nope"), None);
    }

    #[test]
    fn ldapi_paths_are_percent_encoded() {
        assert_eq!(
            percent_encode("/tmp/rdi-1-0/ld/ldapi"),
            "%2Ftmp%2Frdi-1-0%2Fld%2Fldapi"
        );
    }
}
