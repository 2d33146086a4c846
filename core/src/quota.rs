//! Quota limits and folder rules, in both spellings Dovecot has used:
//!
//! - **Dovecot 2.3** (`src/plugins/quota/quota.c`, `quota_rule`/`quota_rule2…`):
//!   `*:storage=10G`, `Trash:storage=+500M`, `*:messages=10000`, `INBOX:ignore`;
//! - **Dovecot 2.4** (`src/plugins/quota/quota-settings.c`, tag 2.4.1):
//!   `quota_storage_size`, `quota_message_count` (0 or `unlimited`: no limit)
//!   and, for one folder, the same settings inside its mailbox filter, written
//!   as a userdb field `namespace/<ns>/mailbox/<box>/<setting>`:
//!   `quota_storage_size`, `quota_storage_percentage`, `quota_storage_extra`,
//!   `quota_message_count`, `quota_message_percentage`, `quota_ignore`.
//!
//! Sizes use Dovecot's binary units: `B`, `k`/`K`, `M`, `G`, `T` (1024-based,
//! also `KiB`, `MB`, …); a bare number is bytes. A rule for a folder may be
//! relative to the user's `*` rule: `+500M`, `-1G` or `10%`.
//!
//! Sources may use either spelling ([`QuotaFields`] merges them and refuses
//! two that disagree); the dict renders the limit in the spelling of the
//! Dovecot that asks ([`QuotaRule::v24_settings`]).

use std::fmt;

/// Why a size or a rule could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaError {
    /// Not a number with an optional unit.
    BadSize(String),
    /// Not `<folder>:<limit>[:<limit>…]`.
    BadRule(String),
    /// Not a message count.
    BadCount(String),
}

impl fmt::Display for QuotaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuotaError::BadSize(s) => {
                write!(f, "bad size {s:?} (want e.g. 10G, 500M, 1024k, 100B)")
            }
            QuotaError::BadRule(s) => {
                write!(
                    f,
                    "bad quota rule {s:?} (want e.g. *:storage=10G or Trash:storage=+500M)"
                )
            }
            QuotaError::BadCount(s) => {
                write!(f, "bad message count {s:?} (want a number, 0 or unlimited)")
            }
        }
    }
}

impl std::error::Error for QuotaError {}

/// Parse a size such as `10G`, `500M`, `1024k`, `100B`, `2 MiB` or `12345`
/// into bytes, as Dovecot's `str_parse_get_size` reads it (units are
/// case-insensitive, an `i` and a `B` may follow the letter).
pub fn parse_size(s: &str) -> Result<u64, QuotaError> {
    let bad = || QuotaError::BadSize(s.to_string());
    let s_trim = s.trim();
    let digits_end = s_trim
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(s_trim.len());
    if digits_end == 0 {
        return Err(bad());
    }
    let n: u64 = s_trim[..digits_end].parse().map_err(|_| bad())?;
    let unit = s_trim[digits_end..].trim_start().to_ascii_uppercase();
    let (mult, rest): (u64, &str) = match unit.chars().next() {
        None => (1, ""),
        Some('B') => (1, &unit[1..]),
        Some('K') => (1 << 10, &unit[1..]),
        Some('M') => (1 << 20, &unit[1..]),
        Some('G') => (1 << 30, &unit[1..]),
        Some('T') => (1 << 40, &unit[1..]),
        Some(_) => return Err(bad()),
    };
    let rest = if mult > 1 {
        let r = rest.strip_prefix('I').unwrap_or(rest);
        r.strip_prefix('B').unwrap_or(r)
    } else {
        rest
    };
    if !rest.is_empty() {
        return Err(bad());
    }
    n.checked_mul(mult).ok_or_else(bad)
}

/// Whether a 2.4 setting value means "no limit" (`unlimited`, `infinite`;
/// Dovecot's `settings_value_is_unlimited`).
fn is_unlimited(s: &str) -> bool {
    matches!(s.trim(), "unlimited" | "infinite")
}

/// A 2.4 size limit (`quota_storage_size`): a size, with `0`, `unlimited`
/// and `infinite` meaning no limit (`None`).
pub fn parse_size_limit(s: &str) -> Result<Option<u64>, QuotaError> {
    if is_unlimited(s) {
        return Ok(None);
    }
    parse_size(s).map(|n| (n > 0).then_some(n))
}

/// A 2.4 count limit (`quota_message_count`, a Dovecot `UINT`): `0`,
/// `unlimited` and `infinite` mean no limit.
pub fn parse_count_limit(s: &str) -> Result<Option<u64>, QuotaError> {
    if is_unlimited(s) {
        return Ok(None);
    }
    s.trim()
        .parse::<u32>()
        .map(|n| (n > 0).then_some(u64::from(n)))
        .map_err(|_| QuotaError::BadCount(s.to_string()))
}

/// Render bytes the way Dovecot accepts them back (`…B` is exact).
pub fn format_bytes(n: u64) -> String {
    format!("{n}B")
}

/// A user's limits. `None` means unlimited for that resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuotaLimit {
    /// Bytes.
    pub storage: Option<u64>,
    /// Messages.
    pub messages: Option<u64>,
}

impl QuotaLimit {
    /// The `*:…` rule Dovecot gets as `quota_rule` (`*:storage=…B:messages=…`),
    /// or `None` when both are unlimited.
    pub fn to_rule(&self) -> Option<String> {
        let mut out = String::from("*");
        if let Some(s) = self.storage {
            out.push_str(&format!(":storage={}", format_bytes(s)));
        }
        if let Some(m) = self.messages {
            out.push_str(&format!(":messages={m}"));
        }
        (out.len() > 1).then_some(out)
    }
}

/// What the SMTP-time check needs of one user: the limit, and the user's
/// own delivery grace if the source gave one (`quota_storage_grace`, 2.4;
/// `quota_grace`, 2.3), which then replaces the configured grace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserQuota {
    /// The effective limit (own or default).
    pub limit: QuotaLimit,
    /// Own grace in bytes.
    pub grace: Option<u64>,
}

/// One limit inside a rule: absolute, relative to the `*` rule, or a
/// percentage of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleValue {
    /// An absolute number (bytes or messages).
    Absolute(u64),
    /// `+N` / `-N` relative to the user's `*` rule.
    Relative(i64),
    /// `N%` of the user's `*` rule.
    Percent(u32),
}

impl fmt::Display for RuleValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleValue::Absolute(n) => write!(f, "{n}"),
            RuleValue::Relative(n) if *n >= 0 => write!(f, "+{n}"),
            RuleValue::Relative(n) => write!(f, "{n}"),
            RuleValue::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// A folder rule such as `Trash:storage=+500M`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaRule {
    /// Folder name (`*` is the user's main rule, but that lives in
    /// [`QuotaLimit`], so folder rules name real folders).
    pub mailbox: String,
    /// Bytes limit, if the rule sets one.
    pub storage: Option<RuleValue>,
    /// Message limit, if the rule sets one.
    pub messages: Option<RuleValue>,
    /// `Folder:ignore`: the folder does not count.
    pub ignore: bool,
    /// The rule as Dovecot reads it, rendered once at parse time: every
    /// userdb answer carries the default rules, and formatting them per
    /// lookup showed up in the dict benchmark's profile.
    dovecot: String,
}

impl QuotaRule {
    /// Parse `Folder:storage=…[:messages=…]` or `Folder:ignore`.
    pub fn parse(s: &str) -> Result<QuotaRule, QuotaError> {
        let bad = || QuotaError::BadRule(s.to_string());
        let (mailbox, rest) = s.trim().split_once(':').ok_or_else(bad)?;
        if mailbox.is_empty() || rest.is_empty() {
            return Err(bad());
        }
        let mut rule = QuotaRule {
            mailbox: mailbox.to_string(),
            storage: None,
            messages: None,
            ignore: false,
            dovecot: String::new(),
        };
        for part in rest.split(':') {
            if part == "ignore" {
                rule.ignore = true;
                continue;
            }
            let (k, v) = part.split_once('=').ok_or_else(bad)?;
            match k {
                "storage" | "bytes" => {
                    rule.storage = Some(parse_rule_value(v, true).ok_or_else(bad)?)
                }
                "messages" => rule.messages = Some(parse_rule_value(v, false).ok_or_else(bad)?),
                _ => return Err(bad()),
            }
        }
        rule.dovecot = rule.render();
        Ok(rule)
    }

    /// The rule as Dovecot reads it, with sizes in exact bytes.
    pub fn to_dovecot(&self) -> String {
        self.dovecot.clone()
    }

    /// [`QuotaRule::to_dovecot`] without a copy.
    pub fn as_dovecot(&self) -> &str {
        &self.dovecot
    }

    fn render(&self) -> String {
        let mut out = self.mailbox.clone();
        if self.ignore {
            out.push_str(":ignore");
        }
        if let Some(v) = self.storage {
            match v {
                RuleValue::Percent(_) => out.push_str(&format!(":storage={v}")),
                _ => out.push_str(&format!(":storage={v}B")),
            }
        }
        if let Some(v) = self.messages {
            out.push_str(&format!(":messages={v}"));
        }
        out
    }

    /// The folder's effective byte limit given the user's main limit.
    pub fn storage_limit(&self, main: Option<u64>) -> Option<u64> {
        apply_rule(self.storage?, main)
    }

    /// A rule from its parts (what a 2.4 folder setting gives).
    pub fn from_parts(
        mailbox: &str,
        storage: Option<RuleValue>,
        messages: Option<RuleValue>,
        ignore: bool,
    ) -> QuotaRule {
        let mut rule = QuotaRule {
            mailbox: mailbox.to_string(),
            storage,
            messages,
            ignore,
            dovecot: String::new(),
        };
        rule.dovecot = rule.render();
        rule
    }

    /// The rule as Dovecot 2.4 settings of the folder's mailbox filter
    /// (`namespace/<ns>/mailbox/<box>/<name>=<value>`), handed to `f` in
    /// order, for a user whose main limit is `main`.
    ///
    /// 2.4 computes a folder's limit as the user's size times
    /// `quota_storage_percentage`, plus `quota_storage_extra`, unless the
    /// folder sets its own `quota_storage_size` (`quota_root_get_rule_limits`
    /// in `quota.c`). So `+N` is an extra, `N%` a percentage and `N` a size;
    /// what 2.4 cannot say (a negative extra, a relative message count) is
    /// sent as the absolute limit it makes for this user, and nothing when
    /// the user's limit is unlimited (then the folder is too, as in 2.3).
    pub fn v24_settings(&self, main: QuotaLimit, mut f: impl FnMut(&'static str, Setting)) {
        if self.ignore {
            // 2.4 zeroes every limit of an ignored folder.
            f("quota_ignore", Setting::Yes);
            return;
        }
        match self.storage {
            None => {}
            Some(RuleValue::Absolute(n)) => f("quota_storage_size", Setting::Bytes(n)),
            Some(RuleValue::Relative(d)) if d >= 0 => {
                f("quota_storage_extra", Setting::Bytes(d.unsigned_abs()))
            }
            Some(RuleValue::Relative(d)) => {
                if let Some(m) = main.storage {
                    // At least a byte: 0 would mean no limit.
                    let n = m.saturating_sub(d.unsigned_abs()).max(1);
                    f("quota_storage_size", Setting::Bytes(n));
                }
            }
            Some(RuleValue::Percent(p)) => f("quota_storage_percentage", Setting::Number(p.into())),
        }
        match self.messages {
            None => {}
            Some(RuleValue::Absolute(n)) => f("quota_message_count", Setting::Number(n)),
            Some(RuleValue::Relative(d)) => {
                if let Some(m) = main.messages {
                    let n = m.saturating_add_signed(d).max(1);
                    f("quota_message_count", Setting::Number(n));
                }
            }
            Some(RuleValue::Percent(p)) => f("quota_message_percentage", Setting::Number(p.into())),
        }
    }
}

/// A Dovecot 2.4 setting's value, as [`QuotaRule::v24_settings`] gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// A size, written `<n>B` (exact; `0B` is no limit).
    Bytes(u64),
    /// A number (a count or a percentage).
    Number(u64),
    /// The boolean `yes`.
    Yes,
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Setting::Bytes(n) => write!(f, "{n}B"),
            Setting::Number(n) => write!(f, "{n}"),
            Setting::Yes => f.write_str("yes"),
        }
    }
}

/// The userdb field that sets `setting` in mailbox `mailbox` of namespace
/// `namespace` (a Dovecot 2.4 settings override path), or `None` when the
/// names cannot be written in one.
///
/// The names go in as they are: Dovecot escapes an override's filter name
/// itself (`settings_override_filter_match` in
/// `src/lib-settings/settings.c`, 2.4.1), so `Deleted Messages` is written
/// with its space; checked against Dovecot 2.4.1, where the escaped form
/// (`Deleted\_Messages`) matched nothing. A `/` would split the path, and
/// a `=` would split the `key=value` field on its way to the mail process:
/// such a folder's rule cannot be given per user in 2.4 (configure it in
/// the namespace's `mailbox` section instead).
pub fn v24_folder_key(namespace: &str, mailbox: &str, setting: &str) -> Option<String> {
    if !v24_name_ok(namespace) || !v24_name_ok(mailbox) {
        return None;
    }
    Some(format!("namespace/{namespace}/mailbox/{mailbox}/{setting}"))
}

/// Whether a namespace or mailbox name can stand in a 2.4 override path.
pub fn v24_name_ok(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '='])
}

/// Split a 2.4 folder field `namespace/<ns>/mailbox/<box>/<setting>` into
/// its namespace, mailbox and setting name.
pub fn split_v24_folder_key(key: &str) -> Option<(&str, &str, &str)> {
    let rest = key.strip_prefix("namespace/")?;
    let (ns, rest) = rest.split_once("/mailbox/")?;
    let (mailbox, setting) = rest.rsplit_once('/')?;
    if !v24_name_ok(ns) || !v24_name_ok(mailbox) || setting.is_empty() {
        return None;
    }
    Some((ns, mailbox, setting))
}

fn apply_rule(v: RuleValue, main: Option<u64>) -> Option<u64> {
    match v {
        RuleValue::Absolute(n) => Some(n),
        RuleValue::Relative(d) => main.map(|m| m.saturating_add_signed(d)),
        RuleValue::Percent(p) => main.map(|m| m / 100 * u64::from(p)),
    }
}

fn parse_rule_value(v: &str, size: bool) -> Option<RuleValue> {
    if let Some(p) = v.strip_suffix('%') {
        // 0% would be an empty folder; Dovecot 2.4 refuses the user's
        // settings for it ("quota_storage_percentage must not be 0").
        return p.parse().ok().filter(|p| *p > 0).map(RuleValue::Percent);
    }
    let num = |s: &str| {
        if size {
            parse_size(s).ok()
        } else {
            s.parse::<u64>().ok()
        }
    };
    if let Some(r) = v.strip_prefix('+') {
        return i64::try_from(num(r)?).ok().map(RuleValue::Relative);
    }
    if let Some(r) = v.strip_prefix('-') {
        return i64::try_from(num(r)?).ok().map(|n| RuleValue::Relative(-n));
    }
    num(v).map(RuleValue::Absolute)
}

/// Parse a user's main rule (`*:storage=1G[:messages=N]`, or just a size
/// such as `1G`) into a limit. `storage=0` means unlimited, as in Dovecot;
/// a resource the rule does not name is unlimited (the user's rule
/// replaces the default one).
pub fn parse_main_rule(s: &str) -> Result<QuotaLimit, QuotaError> {
    let (storage, messages) = parse_main_rule_parts(s)?;
    Ok(QuotaLimit {
        storage: storage.flatten(),
        messages: messages.flatten(),
    })
}

/// [`parse_main_rule`], telling which resources the rule names:
/// `(storage, messages)`, each `None` when not named, `Some(None)` when
/// named unlimited.
#[allow(clippy::type_complexity)]
fn parse_main_rule_parts(
    s: &str,
) -> Result<(Option<Option<u64>>, Option<Option<u64>>), QuotaError> {
    let s = s.trim();
    if !s.contains(':') {
        let n = parse_size(s)?;
        return Ok((Some((n > 0).then_some(n)), None));
    }
    let rule = QuotaRule::parse(s)?;
    if rule.mailbox != "*" || rule.ignore {
        return Err(QuotaError::BadRule(s.to_string()));
    }
    let abs = |v: Option<RuleValue>| match v {
        None => Ok(None),
        Some(RuleValue::Absolute(0)) => Ok(Some(None)),
        Some(RuleValue::Absolute(n)) => Ok(Some(Some(n))),
        Some(_) => Err(QuotaError::BadRule(s.to_string())),
    };
    Ok((abs(rule.storage)?, abs(rule.messages)?))
}

/// One value a source gave, with the field that gave it (for messages).
#[derive(Debug, Clone)]
struct Given<T> {
    value: T,
    field: String,
}

/// Set `slot` to `value`, unless another field already set it to something
/// else: then a clear error naming both (never a silent pick).
fn give<T: PartialEq>(
    slot: &mut Option<Given<T>>,
    value: T,
    // Written out only when kept or in an error (a file load gives a
    // million main rules).
    field: &dyn std::fmt::Display,
    what: &str,
) -> Result<(), String> {
    match slot {
        Some(g) if g.value != value => Err(format!(
            "{field} conflicts with {}: both set {what} (Dovecot 2.3 reads one \
             spelling, 2.4 the other; give one, or the same value in both)",
            g.field
        )),
        Some(_) => Ok(()),
        None => {
            *slot = Some(Given {
                value,
                field: field.to_string(),
            });
            Ok(())
        }
    }
}

/// One folder's rule as gathered from a source's fields.
#[derive(Debug)]
struct Folder {
    mailbox: String,
    /// `N` of `quota_ruleN`, or `u32::MAX` for 2.4 settings (after them,
    /// in the order they came).
    order: u32,
    storage: Option<Given<RuleValue>>,
    messages: Option<Given<RuleValue>>,
    ignore: Option<Given<bool>>,
}

/// A user's quota fields from a source, in either Dovecot spelling, merged:
/// `quota_rule` and `quota_storage_size`/`quota_message_count` for the
/// limit, `quota_ruleN` and `namespace/…/mailbox/<box>/quota_*` for
/// folders. Two fields that set the same thing to different values are an
/// error. The spellings are consumed here, so they never also reach Dovecot
/// as raw extra fields.
#[derive(Debug, Default)]
pub struct QuotaFields {
    /// A 2.3 main rule was given: resources no field names are unlimited.
    rule: bool,
    storage: Option<Given<Option<u64>>>,
    messages: Option<Given<Option<u64>>>,
    grace: Option<Given<u64>>,
    folders: Vec<Folder>,
}

const STORAGE: &str = "the storage limit";
const MESSAGES: &str = "the message limit";

impl QuotaFields {
    /// Nothing given yet.
    pub fn new() -> QuotaFields {
        QuotaFields::default()
    }

    /// Whether any field was given.
    pub fn is_empty(&self) -> bool {
        !self.rule
            && self.storage.is_none()
            && self.messages.is_none()
            && self.grace.is_none()
            && self.folders.is_empty()
    }

    /// `quota_storage_grace` (2.4) or `quota_grace` (2.3): the user's own
    /// delivery grace. Only a size: 2.4 has no percentage, and a 2.3
    /// percentage could not be sent to 2.4.
    pub fn grace(&mut self, field: &str, value: &str) -> Result<(), String> {
        let f = format!("{field}={value}");
        if value.trim().ends_with('%') {
            return Err(format!(
                "{f}: a user's grace must be a size (Dovecot 2.4's quota_storage_grace has no percentage)"
            ));
        }
        let v = parse_size(value).map_err(|e| format!("{f}: {e}"))?;
        give(&mut self.grace, v, &f, "the delivery grace")
    }

    /// The user's own grace in bytes, if a field gave one.
    pub fn own_grace(&self) -> Option<u64> {
        self.grace.as_ref().map(|g| g.value)
    }

    /// `quota_rule` (2.3): `*:storage=…[:messages=…]` or a size.
    pub fn main_rule(&mut self, field: &str, value: &str) -> Result<(), String> {
        let (storage, messages) = parse_main_rule_parts(value).map_err(|e| e.to_string())?;
        self.rule = true;
        if let Some(v) = storage {
            give(
                &mut self.storage,
                v,
                &format_args!("{field}={value}"),
                STORAGE,
            )?;
        }
        if let Some(v) = messages {
            give(
                &mut self.messages,
                v,
                &format_args!("{field}={value}"),
                MESSAGES,
            )?;
        }
        Ok(())
    }

    /// `quota_storage_size` (2.4): a size; `0`/`unlimited` is no limit.
    pub fn storage_size(&mut self, field: &str, value: &str) -> Result<(), String> {
        let v = parse_size_limit(value).map_err(|e| e.to_string())?;
        give(
            &mut self.storage,
            v,
            &format_args!("{field}={value}"),
            STORAGE,
        )
    }

    /// `quota_message_count` (2.4): a count; `0`/`unlimited` is no limit.
    pub fn message_count(&mut self, field: &str, value: &str) -> Result<(), String> {
        let v = parse_count_limit(value).map_err(|e| e.to_string())?;
        give(
            &mut self.messages,
            v,
            &format_args!("{field}={value}"),
            MESSAGES,
        )
    }

    fn folder(&mut self, mailbox: &str, order: u32) -> &mut Folder {
        let i = match self.folders.iter().position(|f| f.mailbox == mailbox) {
            Some(i) => i,
            None => {
                self.folders.push(Folder {
                    mailbox: mailbox.to_string(),
                    order,
                    storage: None,
                    messages: None,
                    ignore: None,
                });
                self.folders.len() - 1
            }
        };
        let f = &mut self.folders[i];
        f.order = f.order.min(order);
        f
    }

    /// `quota_ruleN` (2.3, `N` ≥ 2): a folder rule such as
    /// `Trash:storage=+500M`.
    pub fn folder_rule(&mut self, n: u32, field: &str, value: &str) -> Result<(), String> {
        let r = QuotaRule::parse(value).map_err(|e| e.to_string())?;
        if r.mailbox == "*" {
            return Err(format!(
                "{field}={value}: a folder rule names a folder, not *"
            ));
        }
        let f = format!("{field}={value}");
        let what = |w: &str| format!("{w} of folder {}", r.mailbox);
        let folder = self.folder(&r.mailbox, n);
        if let Some(v) = r.storage {
            give(&mut folder.storage, v, &f, &what(STORAGE))?;
        }
        if let Some(v) = r.messages {
            give(&mut folder.messages, v, &f, &what(MESSAGES))?;
        }
        if r.ignore {
            give(&mut folder.ignore, true, &f, &what("quota_ignore"))?;
        }
        Ok(())
    }

    /// A 2.4 folder setting (`namespace/<ns>/mailbox/<box>/<setting>`,
    /// already split). `Ok(false)` when `setting` is not a quota setting
    /// (the field is then not ours: pass it on).
    pub fn folder_setting(
        &mut self,
        mailbox: &str,
        setting: &str,
        field: &str,
        value: &str,
    ) -> Result<bool, String> {
        let f = format!("{field}={value}");
        if mailbox.contains(':') || mailbox.trim() != mailbox {
            // ramdir keeps folder rules in 2.3's `Folder:…` form, which
            // cannot hold such a name.
            return Err(format!(
                "{f}: folder {mailbox:?} cannot have a quota rule (a name with ':' or outer spaces)"
            ));
        }
        let err = |e: QuotaError| format!("{f}: {e}");
        let percent = || {
            value
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{f}: want a percentage above 0"))
        };
        enum Part {
            Storage(RuleValue),
            Messages(RuleValue),
            Ignore(bool),
        }
        let part = match setting {
            "quota_storage_size" => Part::Storage(RuleValue::Absolute(
                parse_size_limit(value).map_err(err)?.unwrap_or(0),
            )),
            "quota_storage_extra" => {
                let n = parse_size(value).map_err(err)?;
                Part::Storage(RuleValue::Relative(
                    i64::try_from(n).map_err(|_| format!("{f}: too large"))?,
                ))
            }
            "quota_storage_percentage" => Part::Storage(RuleValue::Percent(percent()?)),
            "quota_message_count" => Part::Messages(RuleValue::Absolute(
                parse_count_limit(value).map_err(err)?.unwrap_or(0),
            )),
            "quota_message_percentage" => Part::Messages(RuleValue::Percent(percent()?)),
            "quota_ignore" => Part::Ignore(match value.trim().to_ascii_lowercase().as_str() {
                "yes" | "y" | "1" => true,
                "no" => false,
                _ => return Err(format!("{f}: want yes or no")),
            }),
            _ => return Ok(false),
        };
        let what = |w: &str| format!("{w} of folder {mailbox}");
        let folder = self.folder(mailbox, u32::MAX);
        match part {
            Part::Storage(v) => give(&mut folder.storage, v, &f, &what(STORAGE))?,
            Part::Messages(v) => give(&mut folder.messages, v, &f, &what(MESSAGES))?,
            Part::Ignore(v) => give(&mut folder.ignore, v, &f, &what("quota_ignore"))?,
        }
        Ok(true)
    }

    /// The user's own limit (`None`: no field named one, the default
    /// applies) and folder rules (empty: the defaults apply). A resource
    /// no field names is unlimited after a 2.3 `quota_rule` (it replaces
    /// the default rule whole) and the default's otherwise (a 2.4 field
    /// overrides only its own setting).
    pub fn finish(mut self, default: QuotaLimit) -> (Option<QuotaLimit>, Vec<QuotaRule>) {
        let limit = (self.rule || self.storage.is_some() || self.messages.is_some()).then(|| {
            let part = |g: Option<Given<Option<u64>>>, d: Option<u64>| match g {
                Some(g) => g.value,
                None if self.rule => None,
                None => d,
            };
            QuotaLimit {
                storage: part(self.storage.take(), default.storage),
                messages: part(self.messages.take(), default.messages),
            }
        });
        // Stable: 2.4 folders keep the order they came in.
        self.folders.sort_by_key(|f| f.order);
        let rules = self
            .folders
            .into_iter()
            .filter_map(|f| {
                let ignore = f.ignore.is_some_and(|g| g.value);
                let storage = f.storage.map(|g| g.value);
                let messages = f.messages.map(|g| g.value);
                (ignore || storage.is_some() || messages.is_some())
                    .then(|| QuotaRule::from_parts(&f.mailbox, storage, messages, ignore))
            })
            .collect();
        (limit, rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("1024k").unwrap(), 1 << 20);
        assert_eq!(parse_size("100B").unwrap(), 100);
        assert_eq!(parse_size("77").unwrap(), 77);
        for bad in ["", "G", "10X", "-1G", "1.5G", "99999999999999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn folder_rules_parse_and_render() {
        let r = QuotaRule::parse("Trash:storage=+500M").unwrap();
        assert_eq!(r.storage, Some(RuleValue::Relative(500 << 20)));
        assert_eq!(r.to_dovecot(), "Trash:storage=+524288000B");
        assert_eq!(r.storage_limit(Some(1000)), Some(1000 + (500 << 20)));
        let r = QuotaRule::parse("Junk:storage=10%:messages=+10").unwrap();
        assert_eq!(r.storage_limit(Some(1000)), Some(100));
        assert_eq!(r.to_dovecot(), "Junk:storage=10%:messages=+10");
        assert!(QuotaRule::parse("INBOX:ignore").unwrap().ignore);
        for bad in [
            "Trash",
            ":storage=1G",
            "Trash:",
            "Trash:size=1G",
            "Trash:storage=x",
        ] {
            assert!(QuotaRule::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn main_rule_accepts_rule_or_bare_size() {
        assert_eq!(parse_main_rule("1G").unwrap().storage, Some(1 << 30));
        let l = parse_main_rule("*:storage=2M:messages=10").unwrap();
        assert_eq!(
            l,
            QuotaLimit {
                storage: Some(2 << 20),
                messages: Some(10)
            }
        );
        assert_eq!(l.to_rule().unwrap(), "*:storage=2097152B:messages=10");
        assert_eq!(parse_main_rule("*:storage=0").unwrap().storage, None);
        assert!(parse_main_rule("Trash:storage=1G").is_err());
        assert!(parse_main_rule("*:storage=+1G").is_err());
    }

    #[test]
    fn sizes_take_dovecot_24_spellings_and_unlimited() {
        for (v, want) in [
            ("2 MiB", 2 << 20),
            ("1kib", 1 << 10),
            ("10g", 10 << 30),
            ("5MB", 5 << 20),
            ("7b", 7),
            ("3Ti", 3 << 40),
        ] {
            assert_eq!(parse_size(v).unwrap(), want, "{v}");
        }
        for bad in ["1Gx", "1BB", "1iB", "M", "1 G B"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        for v in ["0", "0B", "unlimited", "infinite"] {
            assert_eq!(parse_size_limit(v).unwrap(), None, "{v}");
        }
        assert_eq!(parse_size_limit("2M").unwrap(), Some(2 << 20));
        assert!(parse_size_limit("lots").is_err());
        assert_eq!(parse_count_limit("100").unwrap(), Some(100));
        assert_eq!(parse_count_limit("0").unwrap(), None);
        assert_eq!(parse_count_limit("unlimited").unwrap(), None);
        for bad in ["x", "-1", "4294967296", "1k"] {
            assert!(parse_count_limit(bad).is_err(), "{bad:?}");
        }
        assert!(
            QuotaRule::parse("Trash:storage=0%").is_err(),
            "2.4 refuses 0%"
        );
    }

    fn v24(rule: &str, main: QuotaLimit) -> Vec<String> {
        let mut out = Vec::new();
        QuotaRule::parse(rule)
            .unwrap()
            .v24_settings(main, |k, v| out.push(format!("{k}={v}")));
        out
    }

    #[test]
    fn folder_rules_in_24_settings() {
        let main = QuotaLimit {
            storage: Some(1000),
            messages: Some(50),
        };
        let unlimited = QuotaLimit::default();
        assert_eq!(
            v24("Trash:storage=+500M", main),
            ["quota_storage_extra=524288000B"]
        );
        assert_eq!(
            v24("Junk:storage=10%:messages=+10", main),
            ["quota_storage_percentage=10", "quota_message_count=60"]
        );
        assert_eq!(
            v24("Junk:storage=10%:messages=+10", unlimited),
            ["quota_storage_percentage=10"]
        );
        assert_eq!(
            v24("Big:storage=2G:messages=7", unlimited),
            ["quota_storage_size=2147483648B", "quota_message_count=7"]
        );
        assert_eq!(
            v24("Small:storage=-100B", main),
            ["quota_storage_size=900B"]
        );
        assert_eq!(v24("Small:storage=-2000B", main), ["quota_storage_size=1B"]);
        assert!(v24("Small:storage=-100B", unlimited).is_empty());
        assert_eq!(
            v24("Spam:messages=5%", main),
            ["quota_message_percentage=5"]
        );
        assert_eq!(v24("Spam:ignore", main), ["quota_ignore=yes"]);
    }

    #[test]
    fn folder_keys_hold_the_names_as_they_are() {
        assert_eq!(
            v24_folder_key("inbox", "Trash", "quota_storage_extra").unwrap(),
            "namespace/inbox/mailbox/Trash/quota_storage_extra"
        );
        let k = v24_folder_key("inbox", "Deleted Messages,\\x", "quota_ignore").unwrap();
        assert_eq!(
            k,
            "namespace/inbox/mailbox/Deleted Messages,\\x/quota_ignore"
        );
        assert_eq!(
            split_v24_folder_key(&k),
            Some(("inbox", "Deleted Messages,\\x", "quota_ignore"))
        );
        for (ns, mailbox) in [
            ("inbox", "Archive/2024"),
            ("inbox", "a=b"),
            ("", "T"),
            ("in/box", "T"),
        ] {
            assert_eq!(
                v24_folder_key(ns, mailbox, "quota_ignore"),
                None,
                "{ns} {mailbox}"
            );
        }
        for not in [
            "namespace/inbox/Trash/quota_ignore",
            "namespace//mailbox/Trash/x",
            "namespace/inbox/mailbox/Trash/",
            "namespace/inbox/mailbox/a/b/c",
            "quota_storage_size",
        ] {
            assert_eq!(split_v24_folder_key(not), None, "{not}");
        }
    }

    #[test]
    fn quota_fields_merge_both_spellings_and_refuse_conflicts() {
        let default = QuotaLimit {
            storage: Some(10 << 30),
            messages: Some(1000),
        };
        let lim = |s: Option<u64>, m: Option<u64>| QuotaLimit {
            storage: s,
            messages: m,
        };
        // 2.4 alone: the unnamed resource keeps the default.
        let mut q = QuotaFields::new();
        q.storage_size("userdb_quota_storage_size", "2M").unwrap();
        assert_eq!(q.finish(default).0, Some(lim(Some(2 << 20), Some(1000))));
        // 2.3 alone: the rule replaces the default whole.
        let mut q = QuotaFields::new();
        q.main_rule("userdb_quota_rule", "*:storage=2M").unwrap();
        assert_eq!(q.finish(default).0, Some(lim(Some(2 << 20), None)));
        // Both, agreeing (the same bytes in other units), and completing
        // each other.
        let mut q = QuotaFields::new();
        q.main_rule("userdb_quota_rule", "*:storage=2M").unwrap();
        q.storage_size("userdb_quota_storage_size", "2048k")
            .unwrap();
        q.message_count("userdb_quota_message_count", "9").unwrap();
        assert_eq!(q.finish(default).0, Some(lim(Some(2 << 20), Some(9))));
        // Unlimited in both spellings.
        let mut q = QuotaFields::new();
        q.main_rule("quota_rule", "*:storage=0").unwrap();
        q.storage_size("quota_storage_size", "unlimited").unwrap();
        assert_eq!(q.finish(default).0, Some(lim(None, None)));
        // Nothing given: the default applies (and follows it).
        assert_eq!(QuotaFields::new().finish(default), (None, vec![]));
        // Conflicts name both fields.
        let mut q = QuotaFields::new();
        q.main_rule("userdb_quota_rule", "*:storage=1G").unwrap();
        let e = q
            .storage_size("userdb_quota_storage_size", "2M")
            .unwrap_err();
        assert!(
            e.contains(
                "userdb_quota_storage_size=2M conflicts with userdb_quota_rule=*:storage=1G"
            ) && e.contains("storage limit"),
            "{e}"
        );
        let mut q = QuotaFields::new();
        q.message_count("userdb_quota_message_count", "5").unwrap();
        let e = q
            .main_rule("userdb_quota_rule", "*:storage=1G:messages=6")
            .unwrap_err();
        assert!(e.contains("message limit"), "{e}");
        let mut q = QuotaFields::new();
        q.main_rule("userdb_quota_rule", "*:storage=0").unwrap();
        assert!(q.storage_size("userdb_quota_storage_size", "1G").is_err());
        let mut q = QuotaFields::new();
        q.storage_size("a", "1G").unwrap();
        assert!(q.storage_size("a", "2G").is_err(), "same spelling twice");
        // A grace of one's own: a size, in either spelling.
        let mut q = QuotaFields::new();
        q.grace("userdb_quota_storage_grace", "5M").unwrap();
        q.grace("userdb_quota_grace", "5120k").unwrap();
        assert_eq!(q.own_grace(), Some(5 << 20));
        assert!(q.grace("userdb_quota_grace", "6M").is_err());
        assert!(!q.is_empty());
        assert_eq!(
            q.finish(default),
            (None, vec![]),
            "the limit stays the default"
        );
        let e = QuotaFields::new()
            .grace("userdb_quota_grace", "10%")
            .unwrap_err();
        assert!(e.contains("must be a size"), "{e}");
    }

    #[test]
    fn quota_fields_merge_folder_rules() {
        let rules = |q: QuotaFields| -> Vec<String> {
            q.finish(QuotaLimit::default())
                .1
                .iter()
                .map(|r| r.to_dovecot())
                .collect()
        };
        let mut q = QuotaFields::new();
        q.folder_setting("Spam", "quota_ignore", "f", "yes")
            .unwrap();
        q.folder_rule(3, "userdb_quota_rule3", "Junk:storage=+1M")
            .unwrap();
        q.folder_rule(2, "userdb_quota_rule2", "Trash:storage=+100M")
            .unwrap();
        // The same extra in 2.4's spelling agrees.
        assert!(
            q.folder_setting("Trash", "quota_storage_extra", "g", "100M")
                .unwrap()
        );
        q.folder_setting("Trash", "quota_message_count", "h", "10")
            .unwrap();
        // Not a quota setting: not ours.
        assert!(
            !q.folder_setting("Trash", "special_use", "i", "\\Trash")
                .unwrap()
        );
        assert_eq!(
            rules(q),
            [
                "Trash:storage=+104857600B:messages=10",
                "Junk:storage=+1048576B",
                "Spam:ignore"
            ]
        );
        let mut q = QuotaFields::new();
        q.folder_rule(2, "userdb_quota_rule2", "Trash:storage=+100M")
            .unwrap();
        let e = q
            .folder_setting(
                "Trash",
                "quota_storage_extra",
                "userdb_namespace/inbox/mailbox/Trash/quota_storage_extra",
                "200M",
            )
            .unwrap_err();
        assert!(e.contains("folder Trash"), "{e}");
        let mut q = QuotaFields::new();
        q.folder_setting("T", "quota_storage_extra", "a", "1M")
            .unwrap();
        assert!(
            q.folder_setting("T", "quota_storage_percentage", "b", "50")
                .is_err(),
            "one storage setting per folder"
        );
        for (setting, value) in [
            ("quota_storage_percentage", "0"),
            ("quota_storage_extra", "lots"),
            ("quota_ignore", "maybe"),
            ("quota_message_count", "-1"),
        ] {
            assert!(
                QuotaFields::new()
                    .folder_setting("T", setting, "f", value)
                    .is_err(),
                "{setting}={value}"
            );
        }
        assert!(
            QuotaFields::new()
                .folder_setting("a:b", "quota_ignore", "f", "yes")
                .is_err()
        );
        // `quota_ignore=no` alone sets nothing.
        let mut q = QuotaFields::new();
        q.folder_setting("T", "quota_ignore", "f", "no").unwrap();
        assert!(rules(q).is_empty());
        assert!(
            QuotaFields::new()
                .folder_rule(2, "userdb_quota_rule2", "*:storage=1G")
                .is_err()
        );
    }

    proptest::proptest! {
        /// Any value in any quota field: an error or a result, never a
        /// panic; and what parses renders for both versions without one.
        #[test]
        fn quota_fields_never_panic(
            fields in proptest::collection::vec(
                (0usize..9, "[*A-Za-z: =+%0-9kKMGTiB-]{0,24}"),
                0..6,
            )
        ) {
            let mut q = QuotaFields::new();
            for (kind, v) in &fields {
                let _ = match kind {
                    0 => q.main_rule("r", v),
                    1 => q.storage_size("s", v),
                    2 => q.message_count("m", v),
                    3 => q.grace("g", v),
                    4 => q.folder_rule(2, "r2", v),
                    5 => q.folder_setting("T", "quota_storage_extra", "x", v).map(|_| ()),
                    6 => q.folder_setting("T", "quota_storage_percentage", "x", v).map(|_| ()),
                    7 => q.folder_setting("T", "quota_message_count", "x", v).map(|_| ()),
                    _ => q.folder_setting("T", "quota_ignore", "x", v).map(|_| ()),
                };
            }
            let (limit, rules) = q.finish(QuotaLimit { storage: Some(1 << 30), messages: Some(10) });
            for r in &rules {
                let back = QuotaRule::parse(r.as_dovecot()).unwrap();
                proptest::prop_assert_eq!(&back, r);
                r.v24_settings(limit.unwrap_or_default(), |_, _| {});
            }
        }
    }
}
