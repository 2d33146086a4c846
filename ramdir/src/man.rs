//! The man pages, generated from their one source of truth each and kept
//! in the tree (`debian/ramdir.8`, `debian/ramdir.toml.5`) so the package
//! build needs no extra step. The tests here fail when a checked-in page
//! differs from what its source gives (`RAMDIR_BLESS_MAN=1 cargo test -p
//! ramdir man` rewrites them):
//! - ramdir(8) comes from the clap definitions in `main.rs` (clap_mangen's
//!   title, name, synopsis, description and options, a section per
//!   command), plus the hand-written FILES, SIGNALS, EXIT STATUS and SEE
//!   ALSO below;
//! - ramdir.toml(5) comes from `docs/configuration.md` and the `[ldap]`
//!   sections of `docs/ldap.md`, turned into roff; a further test checks
//!   that every section and key the parser accepts is documented there.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::CommandFactory;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// Roff-escape running text.
fn esc(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

/// Markdown inline markup to roff: `code` and **bold** in bold, links as
/// their text.
fn inline(md: &str) -> String {
    let mut out = String::new();
    let mut rest = md;
    while let Some(c) = rest.chars().next() {
        if c == '`' {
            if let Some(end) = rest[1..].find('`') {
                write!(out, "\\fB{}\\fR", esc(&rest[1..1 + end])).unwrap();
                rest = &rest[end + 2..];
                continue;
            }
        } else if let Some(r) = rest.strip_prefix("**")
            && let Some(end) = r.find("**")
        {
            write!(out, "\\fB{}\\fR", inline(&r[..end])).unwrap();
            rest = &r[end + 2..];
            continue;
        } else if c == '['
            && let Some(close) = rest.find("](")
            && let Some(paren) = rest[close..].find(')')
        {
            out.push_str(&inline(&rest[1..close]));
            rest = &rest[close + paren + 1..];
            continue;
        }
        out.push_str(&esc(&c.to_string()));
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn md_cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    // Split on `|` outside code spans.
    let (mut cells, mut cur, mut code) = (Vec::new(), String::new(), false);
    for c in inner.chars() {
        match c {
            '`' => {
                code = !code;
                cur.push(c);
            }
            '|' if !code => cells.push(std::mem::take(&mut cur).trim().to_string()),
            c => cur.push(c),
        }
    }
    cells.push(cur.trim().to_string());
    cells
}

/// Markdown (headings, paragraphs, lists, tables, code blocks) to roff.
/// `## ` headings become `.SH`, `### ` `.SS`; a table row becomes a `.TP`
/// entry: the key in bold, its default, then the meaning.
fn md_to_roff(md: &str, out: &mut String) {
    let mut in_code = false;
    let mut para = false;
    for line in md.lines() {
        if line.starts_with("```") {
            if in_code {
                out.push_str(".fi\n.RE\n");
            } else {
                out.push_str(".PP\n.RS 4\n.nf\n");
            }
            in_code = !in_code;
            para = false;
            continue;
        }
        if in_code {
            writeln!(out, "{}", esc(line)).unwrap();
            continue;
        }
        if let Some(h) = line.strip_prefix("### ") {
            writeln!(out, ".SS \"{}\"", inline(h).replace('"', "")).unwrap();
            para = false;
        } else if let Some(h) = line.strip_prefix("## ") {
            writeln!(out, ".SH \"{}\"", inline(h).replace('"', "")).unwrap();
            para = false;
        } else if line.starts_with('|') {
            let cells = md_cells(line);
            if cells
                .iter()
                .all(|c| c.chars().all(|c| c == '-' || c == ':'))
            {
                continue;
            }
            if matches!(cells.first().map(String::as_str), Some("key")) {
                continue; // the header row
            }
            let rest: Vec<String> = cells[1..].iter().map(|c| inline(c)).collect();
            writeln!(out, ".TP\n{}", inline(&cells[0])).unwrap();
            match rest.as_slice() {
                [default, meaning] => writeln!(out, "(default: {default}) {meaning}").unwrap(),
                other => writeln!(out, "{}", other.join(" ")).unwrap(),
            }
            para = false;
        } else if line.trim().is_empty() {
            para = false;
        } else if let Some(item) = line.strip_prefix("- ") {
            writeln!(out, ".IP \\(bu 2\n{}", inline(item)).unwrap();
            para = true;
        } else {
            if !para {
                out.push_str(".PP\n");
                para = true;
            }
            writeln!(out, "{}", inline(line.trim_start())).unwrap();
        }
    }
}

/// The sections of `docs/ldap.md` that describe configuration keys.
fn ldap_sections(md: &str) -> String {
    let mut out = String::new();
    let mut keep = false;
    for line in md.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            keep = h.starts_with("`[ldap");
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

const TOML_HEAD: &str = r#".TH RAMDIR.TOML 5 "" "ramdir" "File Formats Manual"
.SH NAME
ramdir.toml \- configuration file of ramdir(8)
.SH SYNOPSIS
\fB/etc/ramdir/ramdir.toml\fR
"#;

const TOML_TAIL: &str = r#".SH FILES
.TP
\fB/etc/ramdir/ramdir.toml\fR
The configuration as the Debian package installs it (only \fB[stats]\fR on).
.TP
\fB/usr/share/doc/ramdir/README.Debian\fR
The Debian layout, with the matching \fBmain.cf\fR and \fBdovecot.conf\fR lines.
.SH SEE ALSO
\fBramdir\fR(8), \fBpostconf\fR(5), \fBsocketmap_table\fR(5), \fBdoveconf\fR(1)
"#;

/// ramdir.toml(5).
pub fn toml_page() -> String {
    let conf = std::fs::read_to_string(repo("docs/configuration.md")).unwrap();
    let ldap = std::fs::read_to_string(repo("docs/ldap.md")).unwrap();
    // The first line is the Markdown title; the intro becomes DESCRIPTION.
    let body = conf.split_once('\n').map_or("", |(_, b)| b);
    let mut out = String::from(TOML_HEAD);
    out.push_str(".SH DESCRIPTION\n");
    md_to_roff(body, &mut out);
    md_to_roff(&ldap_sections(&ldap), &mut out);
    out.push_str(TOML_TAIL);
    out
}

const RAMDIR_TAIL: &str = r#".SH FILES
.TP
\fB/etc/ramdir/ramdir.toml\fR
The configuration (\fBramdir.toml\fR(5)).
.TP
\fB/var/spool/postfix/ramdir/\fR
Sockets for Postfix's (chrooted) daemons: \fBmain.cf\fR names them
\fBunix:ramdir/\fR\fIname\fR, relative to the queue directory.
.TP
\fB/run/ramdir/\fR
The dict and stats sockets.
.TP
\fB/var/lib/ramdir/\fR
The quota usage store and the LDAP warm-start snapshot.
.SH SIGNALS
.TP
\fBSIGHUP\fR
Reload the configuration's directory part and every source file; on any
error the previous directory keeps serving. Listener, quota store and LDAP
settings need a restart.
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop accepting, let connections finish their current request, write the
LDAP snapshot, remove the sockets, exit 0.
.SH EXIT STATUS
.TP
\fB0\fR
Success; for \fBquery\fR: found; for \fBcheck\fR: OK.
.TP
\fB1\fR
\fBquery\fR: not found; \fBcheck\fR: WARNING.
.TP
\fB2\fR
An error (bad configuration, a socket that cannot be created); \fBcheck\fR:
CRITICAL, also when ramdir is not running.
.TP
\fB3\fR
\fBcheck\fR: UNKNOWN (timeout, bad arguments, \fB\-h\fR, \fB\-V\fR).
.TP
\fB75\fR
\fBquery\fR: temporary failure (Postfix would defer).
.SH SEE ALSO
\fBramdir.toml\fR(5), \fBpostconf\fR(5), \fBsocketmap_table\fR(5),
\fBpostmap\fR(1), \fBdoveconf\fR(1), \fBsystemd.service\fR(5)
"#;

/// ramdir(8).
pub fn ramdir_page() -> String {
    let cmd = crate::Cli::command();
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Manager's Manual")
        .source(format!("ramdir {}", env!("CARGO_PKG_VERSION")));
    let mut buf: Vec<u8> = Vec::new();
    man.render_title(&mut buf).unwrap();
    man.render_name_section(&mut buf).unwrap();
    man.render_synopsis_section(&mut buf).unwrap();
    man.render_description_section(&mut buf).unwrap();
    man.render_options_section(&mut buf).unwrap();
    let mut out = String::from_utf8(buf).unwrap();
    out.push_str(".SH COMMANDS\n");
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        let mut usage = sub.clone().bin_name(format!("ramdir {}", sub.get_name()));
        let usage = usage.render_usage().to_string();
        let usage = usage.trim_start_matches("Usage: ");
        writeln!(out, ".SS \"{}\"", esc(usage)).unwrap();
        let about = sub
            .get_long_about()
            .or(sub.get_about())
            .map(|a| a.to_string())
            .unwrap_or_default();
        writeln!(out, "{}", esc(&about)).unwrap();
        for arg in sub.get_arguments() {
            if arg.is_hide_set() || arg.is_global_set() {
                continue;
            }
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let mut names = Vec::new();
            if let Some(s) = arg.get_short() {
                names.push(format!("\\fB\\-{s}\\fR"));
            }
            if let Some(l) = arg.get_long() {
                names.push(format!("\\fB\\-\\-{}\\fR", esc(l)));
            }
            let value = arg
                .get_value_names()
                .and_then(|v| v.first().map(|v| v.to_string()))
                .unwrap_or_else(|| id.to_uppercase());
            let takes_value = arg.get_action().takes_values();
            let head = if names.is_empty() {
                format!("\\fI{}\\fR", esc(&value))
            } else if takes_value {
                format!("{} \\fI{}\\fR", names.join(", "), esc(&value))
            } else {
                names.join(", ")
            };
            let mut help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|d| d.to_string_lossy().into_owned())
                .collect();
            if takes_value && !defaults.is_empty() {
                help.push_str(&format!(" [default: {}]", defaults.join(", ")));
            }
            writeln!(out, ".TP\n{head}\n{}", esc(&help)).unwrap();
        }
    }
    out.push_str(RAMDIR_TAIL);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, text: &str) {
        let path = repo(&format!("debian/{name}"));
        if std::env::var_os("RAMDIR_BLESS_MAN").is_some() {
            std::fs::write(&path, text).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == text,
            "debian/{name} is out of date with its source; \
             regenerate: RAMDIR_BLESS_MAN=1 cargo test -p ramdir man"
        );
    }

    #[test]
    fn ramdir_8_is_current() {
        let page = ramdir_page();
        for s in [
            ".SH NAME",
            ".SH SYNOPSIS",
            ".SH OPTIONS",
            ".SH COMMANDS",
            ".SH FILES",
            ".SH SIGNALS",
            ".SH EXIT STATUS",
            ".SH SEE ALSO",
            "ramdir check",
            "\\fB\\-\\-min\\-users\\fR",
        ] {
            assert!(page.contains(s), "ramdir.8 lacks {s:?}");
        }
        check("ramdir.8", &page);
    }

    #[test]
    fn ramdir_toml_5_is_current() {
        check("ramdir.toml.5", &toml_page());
    }

    /// The keys the parser accepts in a section, from serde's "expected one
    /// of" list for an unknown key.
    fn accepted(toml_text: &str) -> Vec<String> {
        let e = crate::config::Config::parse(std::path::Path::new("/x.toml"), toml_text)
            .unwrap_err()
            .message;
        let list = e
            .split_once("expected one of ")
            .or_else(|| e.split_once("expected "))
            .map_or("", |(_, l)| l);
        list.split(", ")
            .map(|k| k.trim().trim_matches('`').to_string())
            .filter(|k| !k.is_empty())
            .collect()
    }

    #[test]
    fn every_section_and_key_is_documented() {
        let page = toml_page();
        let sections = accepted("[zz_unknown]\n");
        assert!(sections.len() >= 9, "{sections:?}");
        for section in &sections {
            let heading = format!(".SH \"\\fB[{}]\\fR", esc(section));
            assert!(
                page.contains(&heading),
                "ramdir.toml.5 has no section {heading}"
            );
            let keys = accepted(&format!("[{section}]\nzz_unknown = 1\n"));
            assert!(!keys.is_empty(), "{section}");
            // `mapping` is the `[ldap.mapping]` table, checked below.
            for key in keys.into_iter().filter(|k| k != "mapping") {
                let k = format!("\\fB{}\\fR", esc(&key));
                assert!(
                    page.contains(&k),
                    "ramdir.toml.5: [{section}] {key} is not documented"
                );
            }
        }
        for key in accepted("[ldap.mapping]\nzz_unknown = 1\n") {
            let k = format!("\\fB{}\\fR", esc(&key));
            assert!(
                page.contains(&k),
                "ramdir.toml.5: [ldap.mapping] {key} is not documented"
            );
        }
    }
}
