//! Quota limits and folder rules, written the way Dovecot's quota plugin
//! reads them (`src/plugins/quota/quota.c`, `quota_rule`/`quota_rule2…`):
//! `*:storage=10G`, `Trash:storage=+500M`, `*:messages=10000`, `INBOX:ignore`.
//!
//! Sizes use Dovecot's binary units: `B`, `k`/`K`, `M`, `G`, `T` (1024-based);
//! a bare number is bytes. A rule for a folder may be relative to the user's
//! `*` rule: `+500M`, `-1G` or `10%`.

use std::fmt;

/// Why a size or a rule could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaError {
    /// Not a number with an optional unit.
    BadSize(String),
    /// Not `<folder>:<limit>[:<limit>…]`.
    BadRule(String),
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
        }
    }
}

impl std::error::Error for QuotaError {}

/// Parse a size such as `10G`, `500M`, `1024k`, `100B` or `12345` into bytes.
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
    let mult: u64 = match &s_trim[digits_end..] {
        "" | "B" | "b" => 1,
        "k" | "K" | "kB" | "KB" => 1 << 10,
        "M" | "MB" => 1 << 20,
        "G" | "GB" => 1 << 30,
        "T" | "TB" => 1 << 40,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
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
        return p.parse().ok().map(RuleValue::Percent);
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
/// such as `1G`) into a limit. `storage=0` means unlimited, as in Dovecot.
pub fn parse_main_rule(s: &str) -> Result<QuotaLimit, QuotaError> {
    let s = s.trim();
    if !s.contains(':') {
        let n = parse_size(s)?;
        return Ok(QuotaLimit {
            storage: (n > 0).then_some(n),
            messages: None,
        });
    }
    let rule = QuotaRule::parse(s)?;
    if rule.mailbox != "*" {
        return Err(QuotaError::BadRule(s.to_string()));
    }
    let abs = |v: Option<RuleValue>| match v {
        None => Ok(None),
        Some(RuleValue::Absolute(0)) => Ok(None),
        Some(RuleValue::Absolute(n)) => Ok(Some(n)),
        Some(_) => Err(QuotaError::BadRule(s.to_string())),
    };
    Ok(QuotaLimit {
        storage: abs(rule.storage)?,
        messages: abs(rule.messages)?,
    })
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
}
