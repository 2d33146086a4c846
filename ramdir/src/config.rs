//! `ramdir.toml`: the daemon's configuration (documented in
//! `docs/configuration.md`).
//!
//! Read in two phases, as spf-milter and ripgrep do: serde reads the raw
//! file strictly (an unknown section or key is an error with its line
//! number), then `Config::from_raw` validates values (sizes, rules, socket
//! modes), again reporting the line. Relative paths are taken relative to
//! the configuration file's directory. A section that is absent turns its
//! listener or source off.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ramdir_core::Settings;
use ramdir_core::address::Normalizer;
use ramdir_core::files::FileSources;
use ramdir_core::quota::{QuotaRule, parse_main_rule};
use serde::Deserialize;
use toml::Spanned;

/// Default configuration file, as the Debian package installs it.
pub const DEFAULT_CONFIG: &str = "/etc/ramdir/ramdir.toml";

/// Default socket mode: Postfix's daemons run as `postfix`, so the socket
/// must be group-accessible at least (`0660` with group `postfix`).
const DEFAULT_MODE: u32 = 0o660;

/// A configuration error, with the line it concerns when known.
#[derive(Debug)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.path.display(), l, self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    directory: Option<RawDirectory>,
    socketmap: Option<RawListener>,
    dict: Option<RawDict>,
    quota: Option<RawQuota>,
    policy: Option<RawListener>,
    milter: Option<RawListener>,
    ldap: Option<RawLdap>,
    stats: Option<RawStats>,
    postfix_map: Option<RawPostfixMap>,
    dovecot_map: Option<RawDovecotMap>,
    metrics: Option<RawMetrics>,
    server: Option<RawServer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    user: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDovecotMap {
    directory: Spanned<PathBuf>,
    mode: Option<Spanned<String>>,
    group: Option<String>,
    on_stop: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostfixMap {
    directory: Spanned<PathBuf>,
    mode: Option<Spanned<String>>,
    group: Option<String>,
    on_stop: Option<Spanned<String>>,
    postfix_config_directory: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStats {
    listen: Spanned<String>,
    mode: Option<Spanned<String>>,
    owner: Option<String>,
    group: Option<String>,
}

/// `[ldap] url`: one provider, several separated by whitespace (as
/// OpenLDAP's `ldap.conf` `URI`), or a list; the sync fails over in order.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawUrls {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLdap {
    url: Spanned<RawUrls>,
    base: String,
    filter: Option<String>,
    scope: Option<Spanned<String>>,
    bind_dn: Option<String>,
    bind_password_file: Option<Spanned<PathBuf>>,
    sasl_external: Option<bool>,
    starttls: Option<bool>,
    page_size: Option<Spanned<i32>>,
    sync: Option<bool>,
    state_dir: Option<PathBuf>,
    sync_lost_after_secs: Option<u64>,
    fallback: Option<bool>,
    negative_ttl_secs: Option<u64>,
    fallback_concurrency: Option<Spanned<usize>>,
    timeout_secs: Option<Spanned<u64>>,
    mapping: Option<RawMapping>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    address: Option<String>,
    aliases: Option<Vec<String>>,
    password: Option<String>,
    #[serde(alias = "quota_storage_size")]
    quota: Option<String>,
    quota_message_count: Option<String>,
    quota_rule: Option<String>,
    enabled: Option<String>,
    uid: Option<String>,
    gid: Option<String>,
    home: Option<String>,
    mail: Option<String>,
    default_uid: Option<u32>,
    default_gid: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDict {
    listen: Spanned<String>,
    mode: Option<Spanned<String>>,
    owner: Option<String>,
    group: Option<String>,
    max_connections: Option<Spanned<usize>>,
    idle_timeout_secs: Option<Spanned<u64>>,
    auth_dict: Option<String>,
    quota_dict: Option<String>,
    alias_logins: Option<bool>,
    disabled_userdb: Option<bool>,
    quota_namespace: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuota {
    store: Spanned<PathBuf>,
    grace: Option<Spanned<String>>,
    over_quota_reply: Option<Spanned<String>>,
    shared: Option<Spanned<String>>,
    host_id: Option<Spanned<String>>,
    shared_prefix: Option<Spanned<String>>,
    stale_after_secs: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirectory {
    #[serde(default)]
    passwd_files: Vec<PathBuf>,
    #[serde(default)]
    alias_files: Vec<PathBuf>,
    #[serde(default)]
    domain_files: Vec<PathBuf>,
    #[serde(default)]
    sender_login_files: Vec<PathBuf>,
    recipient_delimiter: Option<String>,
    fold_local_part: Option<bool>,
    propagate_extension: Option<bool>,
    implicit_sender_logins: Option<bool>,
    home_template: Option<String>,
    default_quota: Option<Spanned<String>>,
    quota_rules: Option<Vec<Spanned<String>>>,
    watch_files: Option<bool>,
}

/// The keys every listener section shares (`[socketmap]`, `[policy]` and
/// `[milter]` are exactly this; `[dict]` and `[stats]` are turned into it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    listen: Spanned<String>,
    mode: Option<Spanned<String>>,
    owner: Option<String>,
    group: Option<String>,
    max_connections: Option<Spanned<usize>>,
    idle_timeout_secs: Option<Spanned<u64>>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where it was read from.
    pub path: PathBuf,
    /// The directory's sources and lookup settings.
    pub directory: DirectoryConfig,
    /// The socketmap listener, if enabled.
    pub socketmap: Option<ListenerConfig>,
    /// The Dovecot dict listener, if enabled.
    pub dict: Option<DictConfig>,
    /// The quota usage store, if enabled.
    pub quota: Option<QuotaConfig>,
    /// The Postfix policy listener (SMTP-time quota), if enabled.
    pub policy: Option<ListenerConfig>,
    /// The quota milter listener, if enabled.
    pub milter: Option<ListenerConfig>,
    /// The LDAP source, if enabled.
    pub ldap: Option<ramdir_ldap::settings::Settings>,
    /// The stats socket, if enabled.
    pub stats: Option<ListenerConfig>,
    /// The snapshot files for `postfix-ramdir.so`, if enabled.
    pub postfix_map: Option<PostfixMapConfig>,
    /// The snapshot files for `libauthdb_ramdir.so`, if enabled.
    pub dovecot_map: Option<DovecotMapConfig>,
    /// The Prometheus endpoint, if enabled.
    pub metrics: Option<MetricsConfig>,
    /// `[server]`: the process itself.
    pub server: ServerConfig,
}

/// `[server]`: how the process runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerConfig {
    /// Started as root, switch to this user (and its groups) once the
    /// sockets are bound and the quota store is open.
    pub user: Option<String>,
}

/// `[metrics]`'s address when `listen` is not set: loopback only.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9156";

/// `[dovecot_map]`: where ramdir publishes passdb and userdb answers for
/// the in-process Dovecot auth module (docs/dovecot-module.md). The auth
/// behaviour (`alias_logins`, `disabled_userdb`, `quota_namespace`) is
/// `[dict]`'s when that section is present, else its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DovecotMapConfig {
    /// The map directory (`args` / `ramdir_path` in dovecot.conf).
    pub directory: PathBuf,
    /// Mode of the files (default 0640: Dovecot reads them through `group`;
    /// never world-readable, they hold password hashes).
    pub mode: u32,
    /// Group of the directory and its files (`dovecot`, never `postfix`).
    pub group: Option<String>,
    /// Mark the files unavailable (Dovecot tempfails) when ramdir stops.
    pub unavailable_on_stop: bool,
}

/// `[metrics]`: where `GET /metrics` is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// TCP address (`127.0.0.1:9156`).
    pub listen: std::net::SocketAddr,
}

/// `[postfix_map]`: where ramdir publishes its tables for the in-process
/// Postfix plugin (docs/postfix-map.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostfixMapConfig {
    /// The map directory (`ramdir:<directory>/<table>` in main.cf).
    pub directory: PathBuf,
    /// Mode of the files (default 0640: Postfix reads them through `group`).
    pub mode: u32,
    /// Group of the directory and its files (e.g. `postfix`); the directory
    /// gets the set-group-ID bit so new files inherit it.
    pub group: Option<String>,
    /// Mark the tables unavailable (Postfix defers) when ramdir stops,
    /// instead of letting the last generation answer (the default).
    pub unavailable_on_stop: bool,
    /// Postfix's `meta_directory`, where `check-config` looks for the
    /// plugin's `dynamicmaps.cf.d/ramdir` entry (default `/etc/postfix`).
    pub postfix_config_directory: PathBuf,
}

/// `[dict]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DictConfig {
    /// The socket.
    pub listener: ListenerConfig,
    /// Dict names and auth behaviour.
    pub settings: ramdir_dovecot::service::Settings,
}

/// `[quota]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaConfig {
    /// Path of the durable usage store.
    pub store: PathBuf,
    /// Dovecot's `quota_grace`, mirrored by the SMTP-time checks.
    pub grace: Grace,
    /// Reply for over-quota recipients (policy and milter).
    pub over_quota_reply: String,
    /// Usage shared with other hosts through Redis, if on.
    pub shared: Option<SharedConfig>,
}

/// `[quota] shared` and the keys that go with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedConfig {
    /// The Redis URL (`redis://host:port/db`, `unix:///path`).
    pub url: String,
    /// This host's id: names the owner of the usage it publishes.
    pub host_id: String,
    /// Prefix of every Redis key.
    pub prefix: String,
    /// How long without hearing from Redis before other hosts' usage is
    /// stale (over-quota then only defers).
    pub stale_after: std::time::Duration,
}

/// Default `[quota] stale_after_secs`.
pub const DEFAULT_STALE_AFTER_SECS: u64 = 30;

/// Default `[quota] shared_prefix`.
pub const DEFAULT_SHARED_PREFIX: &str = "ramdir:";

/// This machine's host name (`/proc/sys/kernel/hostname`), the default
/// host id.
fn system_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

pub use ramdir_core::check::Grace;

/// `[directory]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectoryConfig {
    /// Files to load.
    pub sources: FileSources,
    /// Lookup settings.
    pub settings: Settings,
    /// Reload when a source file changes (default on).
    pub watch_files: bool,
}

/// A listener's section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Socket path (from `listen = "unix:/path"`).
    pub path: PathBuf,
    /// Socket file mode.
    pub mode: u32,
    /// Socket owner (user name or number).
    pub owner: Option<String>,
    /// Socket group (group name or number).
    pub group: Option<String>,
    /// Concurrent connections.
    pub max_connections: usize,
    /// Idle connection timeout.
    pub idle_timeout: Duration,
}

impl Config {
    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Validate configuration text (`path` names it and anchors relative paths).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)),
            message: e.message().to_string(),
        })?;
        Config::from_raw(path, text, raw)
    }

    fn from_raw(path: &Path, text: &str, raw: RawConfig) -> Result<Config, ConfigError> {
        let err = |span: std::ops::Range<usize>, message: String| ConfigError {
            path: path.to_path_buf(),
            line: Some(line_of(text, span.start)),
            message,
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let rd = raw.directory.unwrap_or(RawDirectory {
            passwd_files: vec![],
            alias_files: vec![],
            domain_files: vec![],
            sender_login_files: vec![],
            recipient_delimiter: None,
            fold_local_part: None,
            propagate_extension: None,
            implicit_sender_logins: None,
            home_template: None,
            default_quota: None,
            quota_rules: None,
            watch_files: None,
        });
        let mut settings = Settings {
            normalizer: Normalizer {
                recipient_delimiter: rd.recipient_delimiter.unwrap_or_else(|| "+".into()),
                fold_local_part: rd.fold_local_part.unwrap_or(true),
            },
            ..Settings::default()
        };
        if let Some(v) = rd.propagate_extension {
            settings.propagate_extension = v;
        }
        if let Some(v) = rd.implicit_sender_logins {
            settings.implicit_sender_logins = v;
        }
        settings.home_template = rd.home_template;
        if let Some(q) = rd.default_quota {
            settings.default_quota =
                parse_main_rule(q.get_ref()).map_err(|e| err(q.span(), e.to_string()))?;
        }
        if let Some(rules) = rd.quota_rules {
            settings.quota_rules = rules
                .iter()
                .map(|r| QuotaRule::parse(r.get_ref()).map_err(|e| err(r.span(), e.to_string())))
                .collect::<Result<_, _>>()?;
        }
        let sources = FileSources {
            passwd_files: rd.passwd_files.into_iter().map(abs).collect(),
            alias_files: rd.alias_files.into_iter().map(abs).collect(),
            domain_files: rd.domain_files.into_iter().map(abs).collect(),
            sender_login_files: rd.sender_login_files.into_iter().map(abs).collect(),
        };
        let listener = |l: RawListener, max_default: usize, idle_default: Duration| {
            let listen = l.listen.get_ref();
            let Some(p) = listen.strip_prefix("unix:") else {
                return Err(err(
                    l.listen.span(),
                    format!("listen = {listen:?}: only unix:/path sockets are supported"),
                ));
            };
            if p.is_empty() {
                return Err(err(l.listen.span(), "listen: empty socket path".into()));
            }
            let mode = match &l.mode {
                None => DEFAULT_MODE,
                Some(m) => u32::from_str_radix(m.get_ref().trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| err(m.span(), format!("mode {:?} is not octal", m.get_ref())))?,
            };
            let max_connections = match &l.max_connections {
                Some(n) if *n.get_ref() == 0 => {
                    return Err(err(n.span(), "max_connections must be at least 1".into()));
                }
                Some(n) => *n.get_ref(),
                None => max_default,
            };
            let idle_timeout = match &l.idle_timeout_secs {
                Some(n) if *n.get_ref() == 0 => {
                    return Err(err(n.span(), "idle_timeout_secs must be at least 1".into()));
                }
                Some(n) => Duration::from_secs(*n.get_ref()),
                None => idle_default,
            };
            Ok(ListenerConfig {
                path: abs(PathBuf::from(p)),
                mode,
                owner: l.owner,
                group: l.group,
                max_connections,
                idle_timeout,
            })
        };
        let socketmap = match raw.socketmap {
            None => None,
            Some(l) => Some(listener(
                l,
                ramdir_postfix::socketmap::server::DEFAULT_MAX_CONNECTIONS,
                ramdir_postfix::socketmap::server::IDLE_TIMEOUT,
            )?),
        };
        let policy = match raw.policy {
            None => None,
            Some(l) => Some(listener(
                l,
                ramdir_postfix::policy::server::DEFAULT_MAX_CONNECTIONS,
                ramdir_postfix::policy::server::IDLE_TIMEOUT,
            )?),
        };
        let milter = match raw.milter {
            None => None,
            Some(l) => Some(listener(
                l,
                ramdir_milter::DEFAULT_MAX_CONNECTIONS,
                // The milter's connection timeout is indymilter's own.
                Duration::from_secs(7210),
            )?),
        };
        let stats = match raw.stats {
            None => None,
            Some(l) => Some(listener(
                RawListener {
                    listen: l.listen,
                    mode: l.mode,
                    owner: l.owner,
                    group: l.group,
                    max_connections: None,
                    idle_timeout_secs: None,
                },
                16,
                Duration::from_secs(10),
            )?),
        };
        let ldap = match raw.ldap {
            None => None,
            Some(l) => {
                use ramdir_ldap::settings::{Bind, Scope, Settings as L};
                let urls: Vec<&str> = match l.url.get_ref() {
                    RawUrls::One(u) => u.split_whitespace().collect(),
                    RawUrls::Many(v) => v.iter().flat_map(|u| u.split_whitespace()).collect(),
                };
                if urls.is_empty() {
                    return Err(err(l.url.span(), "url: no LDAP URL given".into()));
                }
                for url in &urls {
                    if !["ldap://", "ldaps://", "ldapi://"]
                        .iter()
                        .any(|p| url.starts_with(p))
                    {
                        return Err(err(
                            l.url.span(),
                            format!("url {url:?}: want ldap://, ldaps:// or ldapi://"),
                        ));
                    }
                }
                let mut st = L::new(&urls.join(" "), &l.base);
                if let Some(f) = l.filter {
                    st.filter = f;
                }
                if let Some(sc) = &l.scope {
                    st.scope = match sc.get_ref().as_str() {
                        "base" => Scope::Base,
                        "one" => Scope::One,
                        "sub" => Scope::Sub,
                        other => {
                            return Err(err(
                                sc.span(),
                                format!("scope {other:?}: want base, one or sub"),
                            ));
                        }
                    };
                }
                st.bind = match (
                    l.bind_dn,
                    l.bind_password_file,
                    l.sasl_external.unwrap_or(false),
                ) {
                    (None, None, false) => Bind::Anonymous,
                    (None, None, true) => Bind::SaslExternal,
                    (Some(dn), Some(pf), false) => Bind::Simple {
                        dn,
                        password_file: abs(pf.into_inner()),
                    },
                    (Some(_), None, _) => {
                        return Err(err(0..0, "bind_dn needs bind_password_file".into()));
                    }
                    (None, Some(pf), _) => {
                        return Err(err(pf.span(), "bind_password_file needs bind_dn".into()));
                    }
                    (Some(_), Some(pf), true) => {
                        return Err(err(
                            pf.span(),
                            "choose simple bind or sasl_external, not both".into(),
                        ));
                    }
                };
                st.starttls = l.starttls.unwrap_or(false);
                if let Some(p) = &l.page_size {
                    if *p.get_ref() < 1 {
                        return Err(err(p.span(), "page_size must be at least 1".into()));
                    }
                    st.page_size = *p.get_ref();
                }
                st.sync = l.sync.unwrap_or(true);
                st.state_dir = l.state_dir.map(abs);
                if let Some(v) = l.sync_lost_after_secs {
                    st.sync_lost_after = Duration::from_secs(v);
                }
                st.fallback = l.fallback.unwrap_or(true);
                if let Some(v) = l.negative_ttl_secs {
                    st.negative_ttl = Duration::from_secs(v);
                }
                if let Some(v) = &l.fallback_concurrency {
                    if *v.get_ref() == 0 {
                        return Err(err(
                            v.span(),
                            "fallback_concurrency must be at least 1".into(),
                        ));
                    }
                    st.fallback_concurrency = *v.get_ref();
                }
                if let Some(v) = &l.timeout_secs {
                    if *v.get_ref() == 0 {
                        return Err(err(v.span(), "timeout_secs must be at least 1".into()));
                    }
                    st.timeout = Duration::from_secs(*v.get_ref());
                }
                if let Some(m) = l.mapping {
                    let opt = |v: Option<String>, d: Option<String>| match v {
                        Some(s) if s.is_empty() => None,
                        Some(s) => Some(s),
                        None => d,
                    };
                    let d = st.mapping.clone();
                    st.mapping = ramdir_ldap::mapping::Mapping {
                        address: m.address.unwrap_or(d.address),
                        aliases: m.aliases.unwrap_or(d.aliases),
                        password: opt(m.password, d.password),
                        quota: opt(m.quota, d.quota),
                        quota_message_count: opt(m.quota_message_count, d.quota_message_count),
                        quota_rule: opt(m.quota_rule, d.quota_rule),
                        enabled: opt(m.enabled, d.enabled),
                        uid: opt(m.uid, d.uid),
                        gid: opt(m.gid, d.gid),
                        home: opt(m.home, d.home),
                        mail: opt(m.mail, d.mail),
                        default_uid: m.default_uid,
                        default_gid: m.default_gid,
                        default_quota: d.default_quota,
                    };
                }
                st.mapping.default_quota = settings.default_quota;
                Some(st)
            }
        };
        let quota = match raw.quota {
            None => None,
            Some(q) => {
                let grace = match &q.grace {
                    None => Grace::Percent(10),
                    Some(g) => parse_grace(g.get_ref()).ok_or_else(|| {
                        err(
                            g.span(),
                            format!(
                                "grace {:?}: want a percentage (10%) or a size (100M)",
                                g.get_ref()
                            ),
                        )
                    })?,
                };
                let over_quota_reply = match &q.over_quota_reply {
                    None => ramdir_postfix::policy::service::DEFAULT_OVER_QUOTA.to_string(),
                    Some(r) if ramdir_postfix::policy::service::valid_reply(r.get_ref()) => {
                        r.get_ref().clone()
                    }
                    Some(r) => {
                        return Err(err(
                            r.span(),
                            format!(
                                "over_quota_reply {:?}: want \"4NN 4.N.N text\" or \"5NN 5.N.N text\"",
                                r.get_ref()
                            ),
                        ));
                    }
                };
                let shared = match &q.shared {
                    None => {
                        for (name, set) in [
                            ("host_id", q.host_id.as_ref().map(|s| s.span())),
                            ("shared_prefix", q.shared_prefix.as_ref().map(|s| s.span())),
                            (
                                "stale_after_secs",
                                q.stale_after_secs.as_ref().map(|s| s.span()),
                            ),
                        ] {
                            if let Some(span) = set {
                                return Err(err(
                                    span,
                                    format!("{name} needs shared = \"redis://…\""),
                                ));
                            }
                        }
                        None
                    }
                    Some(url) => {
                        let u = url.get_ref();
                        if !(u.starts_with("redis://")
                            || u.starts_with("unix://")
                            || u.starts_with("redis+unix://"))
                        {
                            return Err(err(
                                url.span(),
                                format!("shared {u:?}: want redis://host:port/db or unix:///path"),
                            ));
                        }
                        let host_id = match &q.host_id {
                            Some(h) => h.get_ref().clone(),
                            None => system_hostname().ok_or_else(|| {
                                err(
                                    url.span(),
                                    "shared: set host_id (no host name found)".into(),
                                )
                            })?,
                        };
                        if host_id.is_empty() || host_id.chars().any(|c| c.is_whitespace()) {
                            return Err(err(
                                q.host_id.as_ref().map_or(url.span(), |h| h.span()),
                                format!("host_id {host_id:?}: want a name without spaces"),
                            ));
                        }
                        let stale = q
                            .stale_after_secs
                            .as_ref()
                            .map_or(DEFAULT_STALE_AFTER_SECS, |s| *s.get_ref());
                        if stale == 0 {
                            let span = q.stale_after_secs.as_ref().map_or(url.span(), |s| s.span());
                            return Err(err(span, "stale_after_secs: want at least 1".into()));
                        }
                        Some(SharedConfig {
                            url: u.clone(),
                            host_id,
                            prefix: q.shared_prefix.as_ref().map_or_else(
                                || DEFAULT_SHARED_PREFIX.into(),
                                |p| p.get_ref().clone(),
                            ),
                            stale_after: std::time::Duration::from_secs(stale),
                        })
                    }
                };
                Some(QuotaConfig {
                    store: abs(q.store.into_inner()),
                    grace,
                    over_quota_reply,
                    shared,
                })
            }
        };
        let dict = match raw.dict {
            None => None,
            Some(d) => {
                let defaults = ramdir_dovecot::service::Settings::default();
                let quota_namespace = match d.quota_namespace {
                    None => defaults.quota_namespace,
                    Some(n) if !ramdir_core::quota::v24_name_ok(n.get_ref()) => {
                        return Err(err(
                            n.span(),
                            format!(
                                "quota_namespace {:?}: want a namespace name without '/' or '='",
                                n.get_ref()
                            ),
                        ));
                    }
                    Some(n) => n.into_inner(),
                };
                let settings = ramdir_dovecot::service::Settings {
                    quota_namespace,
                    auth_dict: d.auth_dict.unwrap_or(defaults.auth_dict),
                    quota_dict: d.quota_dict.unwrap_or(defaults.quota_dict),
                    alias_logins: d.alias_logins.unwrap_or(defaults.alias_logins),
                    disabled_userdb: d.disabled_userdb.unwrap_or(defaults.disabled_userdb),
                };
                let listener = listener(
                    RawListener {
                        listen: d.listen,
                        mode: d.mode,
                        owner: d.owner,
                        group: d.group,
                        max_connections: d.max_connections,
                        idle_timeout_secs: d.idle_timeout_secs,
                    },
                    ramdir_dovecot::server::DEFAULT_MAX_CONNECTIONS,
                    ramdir_dovecot::server::IDLE_TIMEOUT,
                )?;
                Some(DictConfig { listener, settings })
            }
        };
        let dovecot_map = match raw.dovecot_map {
            None => None,
            Some(m) => {
                let mode = map_mode(
                    &m.mode,
                    0o027,
                    "not group-writable, nothing for others (the files hold password hashes)",
                )
                .map_err(|(span, msg)| err(span, msg))?;
                let unavailable_on_stop =
                    map_on_stop(&m.on_stop).map_err(|(span, msg)| err(span, msg))?;
                Some(DovecotMapConfig {
                    directory: abs(m.directory.into_inner()),
                    mode,
                    group: m.group,
                    unavailable_on_stop,
                })
            }
        };
        let postfix_map = match raw.postfix_map {
            None => None,
            Some(m) => {
                let mode = map_mode(&m.mode, 0o022, "not group- or world-writable")
                    .map_err(|(span, msg)| err(span, msg))?;
                let unavailable_on_stop =
                    map_on_stop(&m.on_stop).map_err(|(span, msg)| err(span, msg))?;
                Some(PostfixMapConfig {
                    directory: abs(m.directory.into_inner()),
                    mode,
                    group: m.group,
                    unavailable_on_stop,
                    postfix_config_directory: m
                        .postfix_config_directory
                        .map(abs)
                        .unwrap_or_else(|| PathBuf::from("/etc/postfix")),
                })
            }
        };
        let metrics = match raw.metrics {
            None => None,
            Some(m) => {
                let listen = match &m.listen {
                    None => DEFAULT_METRICS_LISTEN.parse().expect("valid default"),
                    Some(l) => parse_tcp_listen(l.get_ref()).ok_or_else(|| {
                        err(
                            l.span(),
                            format!(
                                "listen = {:?}: want a port (loopback: \"9156\") or an \
                                 address and port, e.g. \"127.0.0.1:9156\"",
                                l.get_ref()
                            ),
                        )
                    })?,
                };
                Some(MetricsConfig { listen })
            }
        };
        let server = match raw.server {
            None => ServerConfig::default(),
            Some(s) => ServerConfig {
                user: match s.user {
                    Some(u) if u.get_ref().is_empty() => {
                        return Err(err(u.span(), "user: empty name".into()));
                    }
                    u => u.map(Spanned::into_inner),
                },
            },
        };
        for (section, on) in [
            ("[policy]", policy.is_some()),
            ("[milter]", milter.is_some()),
        ] {
            if on && quota.is_none() {
                let line = text.find(section).map(|o| line_of(text, o));
                return Err(ConfigError {
                    path: path.to_path_buf(),
                    line,
                    message: format!("{section} needs a [quota] store to read usage from"),
                });
            }
        }
        Ok(Config {
            path: path.to_path_buf(),
            directory: DirectoryConfig {
                sources,
                settings,
                watch_files: rd.watch_files.unwrap_or(true),
            },
            socketmap,
            dict,
            quota,
            policy,
            milter,
            ldap,
            stats,
            postfix_map,
            dovecot_map,
            metrics,
            server,
        })
    }
}

/// A TCP listen address: `port` alone means loopback (`127.0.0.1:port`),
/// as a listener is reachable from other hosts only when asked for.
/// A snapshot directory's `mode` (`[dovecot_map]`, `[postfix_map]`):
/// octal, 0640 when unset, with none of the `forbidden` bits (`why` says
/// which in the error).
fn map_mode(
    v: &Option<Spanned<String>>,
    forbidden: u32,
    why: &str,
) -> Result<u32, (std::ops::Range<usize>, String)> {
    let Some(v) = v else {
        return Ok(0o640);
    };
    u32::from_str_radix(v.get_ref().trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777 && m & forbidden == 0)
        .ok_or_else(|| {
            (
                v.span(),
                format!("mode {:?}: want octal, {why}", v.get_ref()),
            )
        })
}

/// A snapshot directory's `on_stop`: `"keep"` (the default, false) or
/// `"unavailable"` (true).
fn map_on_stop(v: &Option<Spanned<String>>) -> Result<bool, (std::ops::Range<usize>, String)> {
    match v.as_ref().map(|v| (v, v.get_ref().as_str())) {
        None | Some((_, "keep")) => Ok(false),
        Some((_, "unavailable")) => Ok(true),
        Some((v, other)) => Err((
            v.span(),
            format!("on_stop {other:?}: want \"keep\" or \"unavailable\""),
        )),
    }
}

fn parse_tcp_listen(s: &str) -> Option<std::net::SocketAddr> {
    if let Ok(port) = s.trim().parse::<u16>() {
        return Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().ok()
}

fn parse_grace(s: &str) -> Option<Grace> {
    if let Some(p) = s.trim().strip_suffix('%') {
        return p
            .trim()
            .parse()
            .ok()
            .filter(|p| *p <= 1000)
            .map(Grace::Percent);
    }
    ramdir_core::quota::parse_size(s).ok().map(Grace::Bytes)
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/ramdir/ramdir.toml"), text)
    }

    #[test]
    fn full_example_parses() {
        let c = parse(
            r#"
[directory]
passwd_files = ["users.passwd", "/abs/more.passwd"]
alias_files = ["aliases"]
domain_files = ["domains"]
sender_login_files = []
recipient_delimiter = "+-"
default_quota = "2G"
quota_rules = ["Trash:storage=+100M"]
home_template = "/var/vmail/%d/%n"
watch_files = false

[socketmap]
listen = "unix:/var/spool/postfix/private/ramdir-socketmap"
mode = "0660"
owner = "ramdir"
group = "postfix"
max_connections = 100
idle_timeout_secs = 300
"#,
        )
        .unwrap();
        assert_eq!(
            c.directory.sources.passwd_files[0],
            Path::new("/etc/ramdir/users.passwd")
        );
        assert_eq!(
            c.directory.sources.passwd_files[1],
            Path::new("/abs/more.passwd")
        );
        assert_eq!(c.directory.settings.default_quota.storage, Some(2 << 30));
        assert_eq!(c.directory.settings.normalizer.recipient_delimiter, "+-");
        assert!(!c.directory.watch_files);
        let l = c.socketmap.unwrap();
        assert_eq!(l.mode, 0o660);
        assert_eq!(l.group.as_deref(), Some("postfix"));
        assert_eq!(l.max_connections, 100);
        assert_eq!(l.idle_timeout, Duration::from_secs(300));
    }

    #[test]
    fn ldap_section() {
        let c = parse(
            "[ldap]\nurl = \"ldap://127.0.0.1:3389\"\nbase = \"ou=people,dc=example,dc=org\"\nbind_dn = \"cn=mailsvc,dc=example,dc=org\"\nbind_password_file = \"ldap.secret\"\nstate_dir = \"/var/lib/ramdir\"\nnegative_ttl_secs = 5\n[ldap.mapping]\naliases = [\"mailAlternateAddress\"]\nenabled = \"\"\ndefault_uid = 5000\nquota_storage_size = \"mailQuotaSize\"\nquota_message_count = \"mailQuotaCount\"\nquota_rule = \"mailQuota\"\n[directory]\ndefault_quota = \"1G\"\n",
        )
        .unwrap();
        let l = c.ldap.unwrap();
        assert_eq!(l.base, "ou=people,dc=example,dc=org");
        assert!(
            matches!(&l.bind, ramdir_ldap::settings::Bind::Simple { password_file, .. }
            if password_file == Path::new("/etc/ramdir/ldap.secret"))
        );
        assert_eq!(l.negative_ttl, Duration::from_secs(5));
        assert_eq!(l.mapping.aliases, ["mailAlternateAddress"]);
        assert_eq!(l.mapping.enabled, None);
        assert_eq!(l.mapping.address, "mail");
        assert_eq!(l.mapping.default_uid, Some(5000));
        assert_eq!(l.mapping.quota.as_deref(), Some("mailQuotaSize"));
        assert_eq!(
            l.mapping.quota_message_count.as_deref(),
            Some("mailQuotaCount")
        );
        assert_eq!(l.mapping.quota_rule.as_deref(), Some("mailQuota"));
        assert_eq!(l.mapping.default_quota.storage, Some(1 << 30));
        assert_eq!(l.urls().collect::<Vec<_>>(), ["ldap://127.0.0.1:3389"]);
        // Several providers: a list, or OpenLDAP's space-separated URI.
        for url in [
            "[\"ldap://a:389\", \"ldap://b:389\"]",
            "\"ldap://a:389  ldap://b:389\"",
        ] {
            let c = parse(&format!("[ldap]\nurl = {url}\nbase = \"dc=x\"\n")).unwrap();
            let l = c.ldap.unwrap();
            assert_eq!(
                l.urls().collect::<Vec<_>>(),
                ["ldap://a:389", "ldap://b:389"],
                "{url}"
            );
            assert_eq!(l.url_at(3), "ldap://b:389");
        }
        for (text, want) in [
            (
                "[ldap]\nurl = \"http://x\"\nbase = \"dc=x\"\n",
                "want ldap://",
            ),
            (
                "[ldap]\nurl = [\"ldap://a\", \"http://x\"]\nbase = \"dc=x\"\n",
                "want ldap://",
            ),
            ("[ldap]\nurl = []\nbase = \"dc=x\"\n", "no LDAP URL"),
            (
                "[ldap]\nurl = \"ldapi:///\"\nbase = \"dc=x\"\nscope = \"deep\"\n",
                "scope",
            ),
            (
                "[ldap]\nurl = \"ldapi:///\"\nbase = \"dc=x\"\nbind_password_file = \"/p\"\n",
                "needs bind_dn",
            ),
            (
                "[ldap]\nurl = \"ldapi:///\"\nbase = \"dc=x\"\n[ldap.mapping]\nmailAttr = \"x\"\n",
                "unknown field",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.message.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn dict_and_quota_sections() {
        let c = parse(
            "[dict]\nlisten = \"unix:/run/ramdir/dict.sock\"\nmode = \"0666\"\nauth_dict = \"a\"\nalias_logins = true\nquota_namespace = \"main\"\n\n[quota]\nstore = \"quota.redb\"\ngrace = \"5%\"\n",
        )
        .unwrap();
        let d = c.dict.unwrap();
        assert_eq!(d.listener.mode, 0o666);
        assert_eq!(d.settings.auth_dict, "a");
        assert_eq!(d.settings.quota_dict, "quota");
        assert_eq!(d.settings.quota_namespace, "main");
        assert!(d.settings.alias_logins && d.settings.disabled_userdb);
        let q = c.quota.unwrap();
        assert_eq!(q.store, Path::new("/etc/ramdir/quota.redb"));
        assert_eq!(q.grace, Grace::Percent(5));
        assert_eq!(parse_grace("100M"), Some(Grace::Bytes(100 << 20)));
        assert_eq!(q.shared, None, "off by default");
    }

    #[test]
    fn shared_usage_keys() {
        let q = |extra: &str| parse(&format!("[quota]\nstore = \"q.redb\"\n{extra}"));
        let c =
            q("shared = \"redis://127.0.0.1:6379/0\"\nhost_id = \"mx1\"\nstale_after_secs = 5\n")
                .unwrap();
        let sh = c.quota.unwrap().shared.unwrap();
        assert_eq!(sh.url, "redis://127.0.0.1:6379/0");
        assert_eq!(sh.host_id, "mx1");
        assert_eq!(sh.prefix, DEFAULT_SHARED_PREFIX);
        assert_eq!(sh.stale_after, std::time::Duration::from_secs(5));
        let c = q("shared = \"unix:///run/redis.sock\"\nshared_prefix = \"x:\"\n").unwrap();
        let sh = c.quota.unwrap().shared.unwrap();
        assert_eq!(sh.prefix, "x:");
        assert_eq!(
            sh.stale_after,
            std::time::Duration::from_secs(DEFAULT_STALE_AFTER_SECS)
        );
        assert!(!sh.host_id.is_empty(), "the host name by default");
        for (bad, want) in [
            ("shared = \"http://x\"\n", "want redis://"),
            ("host_id = \"a\"\n", "needs shared"),
            (
                "shared = \"redis://x\"\nhost_id = \"a b\"\n",
                "without spaces",
            ),
            (
                "shared = \"redis://x\"\nstale_after_secs = 0\n",
                "at least 1",
            ),
        ] {
            let e = q(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }

    /// The Debian package's conffile: valid as shipped ([stats] only), and
    /// every commented-out key in it is a real key with a valid example.
    #[test]
    fn debian_conffile_parses_as_shipped_and_uncommented() {
        let shipped = include_str!("../../debian/ramdir.toml");
        let c = parse(shipped).unwrap();
        assert!(c.socketmap.is_none() && c.dict.is_none() && c.ldap.is_none());
        let stats = c.stats.unwrap();
        assert_eq!(stats.path, Path::new("/run/ramdir/stats.sock"));
        let uncommented: String = shipped
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.starts_with('[')
                        || rest.split_once(" = ").is_some_and(|(k, _)| {
                            k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                        }) =>
                {
                    rest
                }
                _ => l,
            })
            .flat_map(|l| [l, "\n"])
            .collect();
        let c = parse(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        let sm = c.socketmap.unwrap();
        assert_eq!(sm.path, Path::new("/var/spool/postfix/ramdir/socketmap"));
        assert_eq!(sm.mode, 0o666);
        assert!(
            sm.group.is_none(),
            "an unprivileged ramdir cannot chgrp to postfix"
        );
        assert_eq!(
            c.policy.unwrap().path,
            Path::new("/var/spool/postfix/ramdir/policy")
        );
        assert_eq!(
            c.milter.unwrap().path,
            Path::new("/var/spool/postfix/ramdir/milter")
        );
        assert_eq!(c.dict.unwrap().listener.mode, 0o660);
        assert!(c.ldap.is_some() && c.quota.is_some() && c.postfix_map.is_some());
        assert_eq!(c.directory.sources.passwd_files.len(), 1);
    }

    #[test]
    fn metrics_section() {
        let c = parse("[metrics]\nlisten = \"127.0.0.1:9156\"\n").unwrap();
        assert_eq!(c.metrics.unwrap().listen, "127.0.0.1:9156".parse().unwrap());
        let e = parse("[metrics]\nlisten = \"unix:/x\"\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("address and port"), "{e}");
        // Loopback unless an address says otherwise.
        let c = parse("[metrics]\n").unwrap();
        assert_eq!(c.metrics.unwrap().listen, "127.0.0.1:9156".parse().unwrap());
        let c = parse("[metrics]\nlisten = \"9200\"\n").unwrap();
        assert_eq!(c.metrics.unwrap().listen, "127.0.0.1:9200".parse().unwrap());
        let c = parse("[metrics]\nlisten = \"[::]:9200\"\n").unwrap();
        assert_eq!(c.metrics.unwrap().listen, "[::]:9200".parse().unwrap());
        // No TCP listener unless configured.
        assert!(parse("").unwrap().metrics.is_none());
    }

    #[test]
    fn server_section() {
        assert_eq!(parse("").unwrap().server.user, None);
        let c = parse("[server]\nuser = \"ramdir\"\n").unwrap();
        assert_eq!(c.server.user.as_deref(), Some("ramdir"));
        let e = parse("[server]\nuser = \"\"\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(parse("[server]\ngroup = \"x\"\n").is_err());
    }

    #[test]
    fn empty_file_means_everything_off_with_defaults() {
        let c = parse("").unwrap();
        assert!(c.socketmap.is_none());
        assert_eq!(c.directory.settings, Settings::default());
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line, want) in [
            (
                "[directory]\npasswd_file = []\n",
                2,
                "unknown field `passwd_file`",
            ),
            (
                "[directory]\n\n[nosuch]\nx = 1\n",
                3,
                "unknown field `nosuch`",
            ),
            ("[directory]\ndefault_quota = \"lots\"\n", 2, "bad size"),
            (
                "[directory]\nquota_rules = [\n \"Trash:storage=+1G\",\n \"Trash\"]\n",
                4,
                "bad quota rule",
            ),
            (
                "[socketmap]\nlisten = \"inet:127.0.0.1:1\"\n",
                2,
                "only unix:",
            ),
            (
                "[socketmap]\nlisten = \"unix:/x\"\nmode = \"999\"\n",
                3,
                "not octal",
            ),
            (
                "[socketmap]\nmode = \"0660\"\n",
                1,
                "missing field `listen`",
            ),
            (
                "[socketmap]\nlisten = \"unix:/x\"\nmax_connections = 0\n",
                3,
                "at least 1",
            ),
            (
                "[dict]\nlisten = \"unix:/x\"\nquota_namespace = \"a/b\"\n",
                3,
                "without '/'",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, Some(line), "{text:?}: {e}");
            assert!(e.message.contains(want), "{text:?}: {e}");
        }
    }
}
