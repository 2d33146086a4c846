//! The in-process map: `postfix-ramdir.so` loaded by a private Postfix.
//!
//! [`MapStack`] is [`crate::Stack`] with the plugin installed: ramdir runs
//! with both its socketmap (the reference answers) and `[postfix_map]`
//! (snapshot files under `<stack>/map`), and `main.cf` names the `ramdir:`
//! tables. Postfix only loads a plugin listed in `$meta_directory/
//! dynamicmaps.cf(.d)` whose files are owned by root and not group- or
//! world-writable, so each stack gets a private, root-owned
//! `meta_directory` (`<stack>/pf/meta`) holding the shipped
//! `dynamicmaps.cf.d/ramdir` and a root-owned 0755 copy of the built
//! `.so`; nothing outside the stack directory is touched.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::postfix::{SOCKETMAP_REL, age_config};
use crate::ramdir::write_config;
use crate::{DirectoryContent, DirectoryFiles, Flavor, Postfix, Ramdir, StackDir, write_atomic};

/// The plugin as cargo builds it (`crate-type = ["cdylib"]` of
/// `ffi/postfix`), next to the test binaries: `target/<profile>/`.
pub fn plugin_so() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join("libpostfix_ramdir.so");
    if !p.is_file() {
        panic!(
            "{} not found: run `cargo build -p postfix-ramdir` first (same profile as the tests)",
            p.display()
        );
    }
    p
}

/// The registration files shipped with the plugin (`ffi/postfix/etc`).
fn shipped(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ffi/postfix/etc")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// A private `meta_directory` with the plugin registered.
#[derive(Debug, Clone)]
pub struct Meta {
    /// The directory (`meta_directory` in `main.cf`).
    pub dir: PathBuf,
    /// The installed `.so` (root, 0755).
    pub so: PathBuf,
    /// `dynamicmaps.cf.d/ramdir`.
    pub cf: PathBuf,
}

/// Install the plugin under `<stack>/pf/meta`, as the package would under
/// `/etc/postfix` and `/usr/lib/postfix`: the shipped one-line
/// `dynamicmaps.cf.d/ramdir` (with the `.so` named by its absolute path,
/// since `shlib_directory` stays Debian's), and the `.so` installed root-owned
/// 0755 (a plain copy would inherit a umask that Postfix may refuse).
pub fn install_plugin(stack: &StackDir) -> Meta {
    let dir = stack.join("pf/meta");
    std::fs::create_dir_all(dir.join("dynamicmaps.cf.d"))
        .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    crate::set_mode(&dir, 0o755);
    // `postfix check` (run by `postfix start`) reads the file list here.
    let files = stack
        .flavor()
        .host_path(Path::new("/etc/postfix/postfix-files"));
    std::fs::copy(&files, dir.join("postfix-files"))
        .unwrap_or_else(|e| panic!("copy {}: {e}", files.display()));
    write_atomic(
        &dir.join("dynamicmaps.cf"),
        "# dict-type\tso-name (pathname)\tdict-function\tmkmap-function\n",
    );
    let so = dir.join("postfix-ramdir.so");
    std::fs::copy(plugin_so(), &so).unwrap_or_else(|e| panic!("copy the plugin: {e}"));
    nix::unistd::chown(&so, Some(0.into()), Some(0.into())).expect("chown the plugin");
    crate::set_mode(&so, 0o755);
    let cf = dir.join("dynamicmaps.cf.d/ramdir");
    let line = shipped("dynamicmaps.cf.d/ramdir")
        .replace("\tpostfix-ramdir.so\t", &format!("\t{}\t", so.display()));
    assert!(
        line.contains(&so.display().to_string()),
        "shipped line: {line}"
    );
    write_atomic(&cf, &line);
    for f in [&cf, &dir.join("dynamicmaps.cf")] {
        crate::set_mode(f, 0o644);
    }
    Meta { dir, so, cf }
}

/// The `main.cf` lines of docs/postfix-map.md for a map directory.
pub fn main_cf(map_dir: &Path) -> String {
    let m = map_dir.display();
    format!(
        "virtual_mailbox_domains = ramdir:{m}/domains\n\
         virtual_mailbox_maps = ramdir:{m}/mailboxes\n\
         virtual_alias_maps = ramdir:{m}/aliases\n\
         smtpd_sender_login_maps = ramdir:{m}/senders\n"
    )
}

/// What one `postmap -q` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Exit 0 and this value.
    Found(String),
    /// Exit 1, no output, no error.
    NotFound,
    /// Any error (a temporary lookup failure is `fatal: … lookup error` /
    /// `query error`).
    Failed(String),
}

/// Knobs for [`MapStack::start`].
#[derive(Debug, Clone, Default)]
pub struct MapStackOptions {
    /// Which Debian's Postfix loads the plugin (the stack's paths are the
    /// same inside the Debian 13 root, so the `.so` path is too).
    pub flavor: Flavor,
    /// smtpd, cleanup and trivial-rewrite chrooted into the spool, as in
    /// Debian's default `master.cf`.
    pub chroot: bool,
    /// Lines added to `[postfix_map]`.
    pub postfix_map_extra: String,
    /// Sections appended to ramdir's configuration (e.g. `[ldap]`).
    pub ramdir_extra: String,
}

/// A private Postfix whose directory tables are `ramdir:` tables, with
/// ramdir serving them (and its socketmap, for comparison).
///
/// Dropping it stops Postfix, then ramdir, then removes the directory.
#[derive(Debug)]
pub struct MapStack {
    /// The Postfix instance (started).
    pub postfix: Postfix,
    /// The ramdir process.
    pub ramdir: Ramdir,
    /// The directory files ramdir serves.
    pub files: DirectoryFiles,
    /// `[postfix_map] directory`.
    pub map_dir: PathBuf,
    /// The plugin's registration.
    pub meta: Meta,
    /// ramdir's configuration file.
    pub config: PathBuf,
    /// [`MapStackOptions::ramdir_extra`], kept for [`MapStack::rewrite_config`].
    pub ramdir_extra: String,
    /// An LDAP server ramdir reads, if the test started one (stopped
    /// before the directory is removed).
    pub slapd: Option<crate::slapd::Slapd>,
    /// Holds everything; dropped last.
    pub dir: StackDir,
}

impl MapStack {
    /// Write the files, install the plugin, start ramdir and Postfix.
    pub fn start(content: &DirectoryContent, opts: &MapStackOptions) -> MapStack {
        MapStack::start_in(StackDir::for_flavor(opts.flavor), None, content, opts)
    }

    /// [`MapStack::start`] in a stack directory the caller made (to start
    /// `slapd` in it first; `opts.ramdir_extra` then names it).
    pub fn start_in(
        dir: StackDir,
        slapd: Option<crate::slapd::Slapd>,
        content: &DirectoryContent,
        opts: &MapStackOptions,
    ) -> MapStack {
        let files = DirectoryFiles::write(&dir.join("data"), content);
        let meta = install_plugin(&dir);
        let map_dir = dir.join("map");
        let extra = format!(
            "meta_directory = {}\n{}",
            meta.dir.display(),
            main_cf(&map_dir)
        );
        let mut postfix = Postfix::prepare(&dir, &extra);
        drop_socketmap_tables(postfix.etc());
        if opts.chroot {
            chroot_services(postfix.etc());
        }
        let config = dir.join("ramdir.toml");
        let extra = format!("{}\n{}", opts.postfix_map_extra, opts.ramdir_extra);
        write_map_config(&config, &files, &postfix, &map_dir, &meta, &extra);
        let ramdir = Ramdir::start(&config, &postfix.socketmap_path(), &dir.join("ramdir.log"));
        postfix.start();
        MapStack {
            postfix,
            ramdir,
            files,
            map_dir,
            meta,
            config,
            ramdir_extra: opts.ramdir_extra.clone(),
            slapd,
            dir,
        }
    }

    /// Rewrite ramdir's configuration with other `[postfix_map]` lines
    /// (takes effect at its next start).
    pub fn rewrite_config(&self, postfix_map_extra: &str) {
        write_map_config(
            &self.config,
            &self.files,
            &self.postfix,
            &self.map_dir,
            &self.meta,
            &format!("{postfix_map_extra}\n{}", self.ramdir_extra),
        );
    }

    /// `ramdir:<map_dir>/<table>`.
    pub fn ramdir_map(&self, table: &str) -> String {
        format!("ramdir:{}/{table}", self.map_dir.display())
    }

    /// The socketmap table ramdir serves under the same name.
    pub fn socketmap_map(table: &str) -> String {
        format!("socketmap:unix:{SOCKETMAP_REL}:{table}")
    }

    /// `postmap -c ETC -q KEY MAP` of the stack's flavor, run from the
    /// spool (the socketmap path is relative to it).
    pub fn postmap(&self, map: &str, key: &str) -> Answer {
        let out = self
            .postfix
            .command_in_spool("/usr/sbin/postmap")
            .arg("-c")
            .arg(self.postfix.etc())
            .args(["-q", key, map])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run postmap: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        match out.status.code() {
            Some(0) if stderr.is_empty() => Answer::Found(stdout.trim_end_matches('\n').into()),
            Some(1) if stdout.is_empty() && stderr.is_empty() => Answer::NotFound,
            _ => Answer::Failed(format!("{}: {stdout}{stderr}", out.status)),
        }
    }

    /// `postconf -c ETC -m`: the lookup table types this Postfix knows.
    pub fn postconf_m(&self) -> Vec<String> {
        let out = self
            .postfix
            .tool("postconf")
            .arg("-m")
            .output()
            .unwrap_or_else(|e| panic!("run postconf: {e}"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn write_map_config(
    path: &Path,
    files: &DirectoryFiles,
    postfix: &Postfix,
    map_dir: &Path,
    meta: &Meta,
    extra: &str,
) {
    write_config(path, files, &postfix.socketmap_path(), "");
    let mut text = std::fs::read_to_string(path).expect("read ramdir.toml");
    // By number: the Debian 13 root's postfix group is not the host's.
    let (_, gid) = postfix.flavor().user("postfix");
    text.push_str(&format!(
        "\n[postfix_map]\ndirectory = \"{}\"\ngroup = \"{gid}\"\n\
         postfix_config_directory = \"{}\"\n{extra}",
        map_dir.display(),
        meta.dir.display()
    ));
    write_atomic(path, &text);
}

/// Remove the harness's socketmap lines for the tables `main_cf` sets
/// (Postfix warns about every overridden entry, on every command), for a
/// stack whose tables are something else (`bench/src/e2e.rs`'s setups).
pub fn drop_socketmap_tables(etc: &Path) {
    let path = etc.join("main.cf");
    let text = std::fs::read_to_string(&path).expect("read main.cf");
    let out: String = text
        .lines()
        .filter(|l| !l.contains("= socketmap:"))
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(&path, &out);
    age_config(etc);
}

/// Set `chroot = y` for smtpd, cleanup and rewrite in `master.cf`, as
/// Debian ships them.
fn chroot_services(etc: &Path) {
    let path = etc.join("master.cf");
    let text = std::fs::read_to_string(&path).expect("read master.cf");
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let chroot = f.len() >= 8
                && ["smtpd", "cleanup", "trivial-rewrite"].contains(&f[7])
                && f[4] == "n";
            if chroot {
                let mut f = f.clone();
                f[4] = "y";
                f.join(" ")
            } else {
                l.to_string()
            }
        })
        .collect();
    write_atomic(&path, &(out.join("\n") + "\n"));
    age_config(etc);
}

/// Make a file group-writable (to show Postfix refusing it) or not.
pub fn set_group_writable(path: &Path, on: bool) {
    let mode = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode();
    crate::set_mode(path, if on { mode | 0o020 } else { mode & !0o020 } & 0o7777);
}
