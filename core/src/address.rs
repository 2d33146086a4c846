//! Address normalisation: what ramdir does to a key before it looks it up.
//!
//! Postfix sends socketmap servers the *full* key only (its `DICT_FLAG_PATTERN`
//! maps get no partial-key lookups and no case folding, see Postfix
//! `src/util/dict_sockmap.c` and `src/global/mail_addr_find.c`), so the server
//! must do what Postfix would do for a hash table itself:
//! - fold the domain to lower case (and the local part, unless configured not to);
//! - split off the `recipient_delimiter` extension (`user+tag` → `user`, `+tag`);
//! - recognise keys that can never be ours: address literals (`[1.2.3.4]`),
//!   empty local parts (`""`), wildcards (`*`), bare domains where an address
//!   is expected. Those are "not found", never an error (protocols.md G3).

/// Longest key ramdir looks up. Postfix itself never sends a longer one: its
/// socketmap client treats a query over `DICT_SOCKMAP_DEF_MAX_QUERY` (10000
/// bytes, `src/util/dict_sockmap.c`) as "not found" without asking.
pub const MAX_KEY_LEN: usize = 10_000;

/// Longest local part or domain ramdir accepts (RFC 5321 allows 64 and 255;
/// real mail systems accept somewhat more, so be lenient but bounded).
const MAX_PART_LEN: usize = 1024;

/// An address split into its parts, folded as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Local part without the extension.
    pub local: String,
    /// The extension including its delimiter (`+tag`), if there was one.
    pub extension: Option<String>,
    /// Lower-case domain without a trailing dot.
    pub domain: String,
}

impl Address {
    /// `local@domain`, the key users and aliases are stored under.
    pub fn base(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }

    /// `local+ext@domain`, the full address as sent (folded).
    pub fn full(&self) -> String {
        match &self.extension {
            Some(ext) => format!("{}{}@{}", self.local, ext, self.domain),
            None => self.base(),
        }
    }

    /// `@domain`, the catch-all key.
    pub fn catch_all(&self) -> String {
        format!("@{}", self.domain)
    }
}

/// How to fold and split addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalizer {
    /// Characters that start an address extension, as Postfix's
    /// `recipient_delimiter` (any one of them; empty means no extensions).
    pub recipient_delimiter: String,
    /// Fold the local part to lower case as well as the domain.
    pub fold_local_part: bool,
}

impl Default for Normalizer {
    fn default() -> Self {
        Normalizer {
            recipient_delimiter: "+".into(),
            fold_local_part: true,
        }
    }
}

impl Normalizer {
    /// Split and fold an address key. `None` means the key cannot name
    /// anything ramdir holds (and so is "not found").
    pub fn address(&self, key: &str) -> Option<Address> {
        if key.len() > MAX_KEY_LEN {
            return None;
        }
        let at = key.rfind('@')?;
        let (local, domain) = (&key[..at], &key[at + 1..]);
        let domain = self.domain(domain)?;
        let local = unquote(local)?;
        if local.is_empty() || local.len() > MAX_PART_LEN || local.contains('@') {
            return None;
        }
        if local.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return None;
        }
        let local = if self.fold_local_part {
            local.to_lowercase()
        } else {
            local.to_string()
        };
        let (base, extension) = self.split_extension(&local);
        Some(Address {
            local: base.to_string(),
            extension: extension.map(str::to_string),
            domain,
        })
    }

    /// Whether `key` is already exactly its normalised full form (folded, no
    /// extension, no quotes, a plain domain), so that it can be looked up as
    /// it is, without allocating. A `false` only means "take the general
    /// path": [`Normalizer::address`] decides what the key really is.
    pub fn is_normal_form(&self, key: &str) -> bool {
        let b = key.as_bytes();
        if b.len() > MAX_KEY_LEN {
            return false;
        }
        let Some(at) = b.iter().rposition(|&c| c == b'@') else {
            return false;
        };
        let (local, domain) = (&b[..at], &b[at + 1..]);
        if local.is_empty()
            || local.len() > MAX_PART_LEN
            || domain.is_empty()
            || domain.len() > MAX_PART_LEN
        {
            return false;
        }
        let delim = self.recipient_delimiter.as_bytes();
        for (i, &c) in local.iter().enumerate() {
            let plain = c.is_ascii_graphic() && c != b'"' && c != b'@' && c != b'\\';
            let folded = !self.fold_local_part || !c.is_ascii_uppercase();
            if !plain || !folded || (i > 0 && delim.contains(&c)) {
                return false;
            }
        }
        if domain[0] == b'.' || domain[domain.len() - 1] == b'.' {
            return false;
        }
        let mut prev_dot = false;
        for &c in domain {
            let ok =
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_' || c == b'.';
            if !ok || (c == b'.' && prev_dot) {
                return false;
            }
            prev_dot = c == b'.';
        }
        true
    }

    /// Fold a bare domain. `None` for things that are not a domain name of
    /// ours: address literals, wildcards, empty or oversized names.
    pub fn domain(&self, domain: &str) -> Option<String> {
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        if domain.is_empty() || domain.len() > MAX_PART_LEN {
            return None;
        }
        // Letters, digits, hyphens, dots and (for IDN in UTF-8) non-ASCII;
        // this rejects `[1.2.3.4]`, `*`, `"…"` and anything with spaces.
        let ok = domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '.' || c == '_');
        if !ok || domain.starts_with('.') || domain.contains("..") {
            return None;
        }
        Some(domain.to_lowercase())
    }

    /// Split `local` at the first delimiter that is not its first character
    /// (Postfix does not split `+foo` or `-foo`, `src/global/split_addr.c`).
    fn split_extension<'a>(&self, local: &'a str) -> (&'a str, Option<&'a str>) {
        if self.recipient_delimiter.is_empty() {
            return (local, None);
        }
        let pos = local
            .char_indices()
            .skip(1)
            .find(|(_, c)| self.recipient_delimiter.contains(*c))
            .map(|(i, _)| i);
        match pos {
            Some(i) => (&local[..i], Some(&local[i..])),
            None => (local, None),
        }
    }
}

/// Remove the quotes of a quoted-string local part (`"john.doe"` → `john.doe`).
/// Postfix sends the external (quoted) form first; a quoted local part that
/// needs its quotes (it has spaces, say) is not an address ramdir can hold.
fn unquote(local: &str) -> Option<&str> {
    if let Some(inner) = local.strip_prefix('"') {
        let inner = inner.strip_suffix('"')?;
        if inner.contains(['"', '\\']) {
            return None;
        }
        return Some(inner);
    }
    Some(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n() -> Normalizer {
        Normalizer::default()
    }

    #[test]
    fn folds_and_splits_extension() {
        let a = n().address("John+Tag@Example.ORG").unwrap();
        assert_eq!(a.local, "john");
        assert_eq!(a.extension.as_deref(), Some("+tag"));
        assert_eq!(a.domain, "example.org");
        assert_eq!(a.base(), "john@example.org");
        assert_eq!(a.full(), "john+tag@example.org");
        assert_eq!(a.catch_all(), "@example.org");
    }

    #[test]
    fn leading_delimiter_is_not_an_extension() {
        let a = n().address("+foo@example.org").unwrap();
        assert_eq!(a.local, "+foo");
        assert_eq!(a.extension, None);
    }

    #[test]
    fn several_delimiters_split_at_the_first() {
        let norm = Normalizer {
            recipient_delimiter: "+-".into(),
            fold_local_part: true,
        };
        let a = norm.address("a-b+c@x.org").unwrap();
        assert_eq!(a.local, "a");
        assert_eq!(a.extension.as_deref(), Some("-b+c"));
    }

    #[test]
    fn no_delimiter_configured_keeps_local_part() {
        let norm = Normalizer {
            recipient_delimiter: String::new(),
            fold_local_part: true,
        };
        assert_eq!(norm.address("a+b@x.org").unwrap().local, "a+b");
    }

    #[test]
    fn local_part_case_kept_when_configured() {
        let norm = Normalizer {
            recipient_delimiter: "+".into(),
            fold_local_part: false,
        };
        let a = norm.address("John@EXAMPLE.org").unwrap();
        assert_eq!(a.local, "John");
        assert_eq!(a.domain, "example.org");
    }

    #[test]
    fn odd_keys_are_not_addresses() {
        for key in [
            "",
            "*",
            "example.org",
            "@example.org",
            "\"\"@example.org",
            "user@[1.2.3.4]",
            "user@",
            "user@*",
            "user@exa mple.org",
            "us er@example.org",
            "\"a b\"@example.org",
            "a@b@",
            "user@.example.org",
            "user@example..org",
        ] {
            assert_eq!(n().address(key), None, "{key:?}");
        }
    }

    #[test]
    fn normal_form_means_address_gives_the_key_back() {
        let n = n();
        for key in [
            "a@x.org",
            "john.doe@sub.example.org",
            "a_b-c@x-y.org",
            "+foo@x.org",
            "a!#$%&'*/=?^`{|}~@x.org",
        ] {
            assert!(n.is_normal_form(key), "{key}");
            let a = n.address(key).unwrap();
            assert_eq!(a.full(), key);
            assert_eq!(a.extension, None);
        }
        for key in [
            "A@x.org",
            "a@X.org",
            "a+b@x.org",
            "\"a\"@x.org",
            "a@x.org.",
            "a@.x.org",
            "a@x..org",
            "a@[1.2.3.4]",
            "a b@x.org",
            "@x.org",
            "a@",
            "x.org",
            "",
            "é@x.org",
            "a@x.org\n",
        ] {
            assert!(!n.is_normal_form(key), "{key:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn normal_form_agrees_with_address(key in "[a-zA-Z0-9+.@\"_ -]{0,20}") {
            let n = Normalizer::default();
            if n.is_normal_form(&key) {
                let a = n.address(&key);
                proptest::prop_assert!(a.is_some());
                proptest::prop_assert_eq!(a.unwrap().full(), key);
            }
        }
    }

    #[test]
    fn quoted_local_part_is_unquoted() {
        assert_eq!(n().address("\"john.doe\"@x.org").unwrap().local, "john.doe");
    }

    #[test]
    fn trailing_dot_in_domain_is_dropped() {
        assert_eq!(n().domain("Example.org.").as_deref(), Some("example.org"));
        assert_eq!(n().domain("[1.2.3.4]"), None);
    }

    #[test]
    fn oversized_key_is_not_an_address() {
        let key = format!("{}@x.org", "a".repeat(MAX_KEY_LEN));
        assert_eq!(n().address(&key), None);
    }
}
