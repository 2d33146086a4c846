//! The milter's settings: the connection cap, Dovecot's grace, and the SMTP
//! reply given for a full mailbox.
//!
//! The reply is validated the way its two readers see it: Postfix
//! (`src/milter/milter8.c`: the first digit must be 4 or 5 and the enhanced
//! status code must have the same class) and indymilter (`context.rs`:
//! RFC 5321 reply codes, RFC 3463 enhanced codes, no CR/LF). A reply that
//! passes [`OverQuotaReply::from_str`] is never refused by either.

use std::fmt;
use std::str::FromStr;

use ramdir_core::check::Grace;

/// Default cap on concurrent MTA connections.
///
/// Postfix opens one milter connection per SMTP session and keeps it for the
/// whole session (protocols.md G19), so the milter must accept as many
/// connections as there can be `smtpd` processes: `default_process_limit`
/// is 100 per service, and busy sites raise it. indymilter's own default
/// is exactly 100, so the 101st session would wait in the listen backlog
/// until Postfix's `milter_connect_timeout` (30 s) and then get the milter's
/// `default_action`. 2048 leaves a wide margin; an idle connection costs one
/// small task.
pub const DEFAULT_MAX_CONNECTIONS: usize = 2048;

/// Longest reply text accepted, in bytes. An SMTP reply line is at most 512
/// octets including the code and CRLF (RFC 5321 section 4.5.3.1.5);
/// `"452 4.2.2 "` takes 10 of them and CRLF 2.
pub const MAX_TEXT_LEN: usize = 500;

/// Settings of the quota milter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Concurrent MTA connections; more wait in the listen backlog. Default
    /// [`DEFAULT_MAX_CONNECTIONS`]; must be at least 1.
    pub max_connections: usize,
    /// Dovecot's `quota_grace`, so that the milter accepts exactly what LMTP
    /// will (default 10%).
    pub grace: Grace,
    /// The reply for a recipient (or, at end of message, a message) that is
    /// over quota. Default `452 4.2.2 Mailbox full`.
    pub over_quota: OverQuotaReply,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            grace: Grace::default(),
            over_quota: OverQuotaReply::default(),
        }
    }
}

/// An SMTP reply such as `452 4.2.2 Mailbox full`: a 4xx code makes the
/// milter answer *tempfail* with it, a 5xx code *reject*.
///
/// 452 asks the sending MTA to retry (and eventually bounce if the mailbox
/// stays full); 552 is taken as permanent by Postfix's own SMTP client, and
/// other MTAs may retry it anyway (protocols.md G10). Parse one with
/// [`str::parse`]; [`Display`](fmt::Display) gives the same text back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverQuotaReply {
    /// The SMTP reply code, 400–559.
    pub code: u16,
    /// The enhanced status code (RFC 3463), same class as `code`: `4.2.2`.
    pub enhanced: String,
    /// The human-readable text: printable ASCII, 1 to [`MAX_TEXT_LEN`]
    /// bytes. A `%` is sent as `%%`, which Postfix turns back into `%`.
    pub text: String,
}

impl Default for OverQuotaReply {
    fn default() -> Self {
        OverQuotaReply {
            code: 452,
            enhanced: "4.2.2".into(),
            text: "Mailbox full".into(),
        }
    }
}

impl OverQuotaReply {
    /// Whether the reply is permanent (5xx: the milter rejects) rather than
    /// temporary (4xx: the milter tempfails).
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// Check every field, as [`from_str`](Self::from_str) does (the fields
    /// are public, so a reply built by hand is checked again before use).
    ///
    /// # Errors
    /// The first field that Postfix or indymilter would refuse.
    pub fn validate(&self) -> Result<(), ParseReplyError> {
        check_code(self.code)?;
        check_enhanced(&self.enhanced, self.code)?;
        check_text(&self.text)
    }
}

impl fmt::Display for OverQuotaReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.code, self.enhanced, self.text)
    }
}

impl FromStr for OverQuotaReply {
    type Err = ParseReplyError;

    /// Parse `"<code> <enhanced code> <text>"`, e.g. `452 4.2.2 Mailbox
    /// full`; surrounding whitespace is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (code, rest) = s.split_once(' ').unwrap_or((s, ""));
        let code = parse_code(code)?;
        let rest = rest.trim_start();
        let (enhanced, text) = rest.split_once(' ').unwrap_or((rest, ""));
        check_enhanced(enhanced, code)?;
        let text = text.trim_start();
        check_text(text)?;
        Ok(OverQuotaReply {
            code,
            enhanced: enhanced.to_string(),
            text: text.to_string(),
        })
    }
}

/// Why a reply was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseReplyError {
    /// The code is not three digits `4xx`/`5xx` with a second digit 0–5.
    BadCode(String),
    /// The enhanced status code is not `class.subject.detail` (RFC 3463)
    /// with the class of the reply code.
    BadEnhancedCode(String),
    /// The text is missing.
    EmptyText,
    /// The text is longer than [`MAX_TEXT_LEN`] bytes.
    TextTooLong(usize),
    /// The text has a character that is not printable ASCII.
    BadTextChar(char),
}

impl fmt::Display for ParseReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseReplyError::BadCode(c) => {
                write!(f, "reply code {c:?} is not a 4xx or 5xx SMTP code")
            }
            ParseReplyError::BadEnhancedCode(e) => write!(
                f,
                "enhanced status code {e:?} is not class.subject.detail with the class of the reply code"
            ),
            ParseReplyError::EmptyText => f.write_str("reply text is missing"),
            ParseReplyError::TextTooLong(n) => {
                write!(f, "reply text is {n} bytes, longer than {MAX_TEXT_LEN}")
            }
            ParseReplyError::BadTextChar(c) => {
                write!(f, "reply text has {c:?}, which is not printable ASCII")
            }
        }
    }
}

impl std::error::Error for ParseReplyError {}

fn parse_code(s: &str) -> Result<u16, ParseReplyError> {
    let bad = || ParseReplyError::BadCode(s.to_string());
    if s.len() != 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let code: u16 = s.parse().map_err(|_| bad())?;
    check_code(code).map_err(|_| bad())?;
    Ok(code)
}

fn check_code(code: u16) -> Result<(), ParseReplyError> {
    // RFC 5321 section 4.2.1: the second digit is 0–5. indymilter refuses
    // anything else, and Postfix only takes 4 or 5 as the first digit.
    if (400..600).contains(&code) && (code / 10) % 10 <= 5 {
        Ok(())
    } else {
        Err(ParseReplyError::BadCode(code.to_string()))
    }
}

fn check_enhanced(s: &str, code: u16) -> Result<(), ParseReplyError> {
    // RFC 3463: class "." subject "." detail, subject and detail 1–3 digits
    // without a leading zero. Postfix additionally wants the class to match
    // the reply code's first digit.
    fn number(p: &str) -> bool {
        p == "0"
            || (1..=3).contains(&p.len())
                && p.bytes().all(|b| b.is_ascii_digit())
                && !p.starts_with('0')
    }
    let class = char::from(b'0' + (code / 100 % 10) as u8);
    let mut parts = s.split('.');
    let ok = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(c), Some(subject), Some(detail), None) => {
            c.len() == 1 && c.starts_with(class) && number(subject) && number(detail)
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ParseReplyError::BadEnhancedCode(s.to_string()))
    }
}

fn check_text(s: &str) -> Result<(), ParseReplyError> {
    if s.is_empty() {
        return Err(ParseReplyError::EmptyText);
    }
    if s.len() > MAX_TEXT_LEN {
        return Err(ParseReplyError::TextTooLong(s.len()));
    }
    // Printable ASCII only: CR or LF would end the reply line early (and
    // indymilter refuses them), and libmilter's documentation warns that
    // other control characters give undefined behaviour.
    if let Some(c) = s.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(ParseReplyError::BadTextChar(c));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, enhanced: &str, text: &str) -> OverQuotaReply {
        OverQuotaReply {
            code,
            enhanced: enhanced.into(),
            text: text.into(),
        }
    }

    #[test]
    fn good_replies_parse_and_print_back() {
        let cases = [
            (
                "452 4.2.2 Mailbox full",
                reply(452, "4.2.2", "Mailbox full"),
            ),
            (
                "552 5.2.2 Mailbox full",
                reply(552, "5.2.2", "Mailbox full"),
            ),
            (
                "554 5.2.2 Quota exceeded",
                reply(554, "5.2.2", "Quota exceeded"),
            ),
            ("450 4.2.2 x", reply(450, "4.2.2", "x")),
            (
                "452 4.0.0 over 100% of quota",
                reply(452, "4.0.0", "over 100% of quota"),
            ),
            ("452 4.123.45 Full", reply(452, "4.123.45", "Full")),
        ];
        for (text, want) in cases {
            let got: OverQuotaReply = text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(got, want, "{text:?}");
            assert_eq!(got.to_string(), text);
            assert_eq!(got.validate(), Ok(()));
        }
        assert_eq!(
            "  452   4.2.2   Mailbox full  ".parse::<OverQuotaReply>(),
            Ok(reply(452, "4.2.2", "Mailbox full")),
            "surrounding and separating blanks are ignored"
        );
        assert!(!reply(452, "4.2.2", "x").is_permanent());
        assert!(reply(552, "5.2.2", "x").is_permanent());
    }

    #[test]
    fn the_default_is_452_4_2_2_mailbox_full() {
        assert_eq!(
            OverQuotaReply::default().to_string(),
            "452 4.2.2 Mailbox full"
        );
        let c = Config::default();
        assert_eq!(c.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(c.grace, Grace::Percent(10));
        assert_eq!(c.over_quota.validate(), Ok(()));
    }

    #[test]
    fn bad_replies_are_refused_with_the_reason() {
        use ParseReplyError::*;
        let cases = [
            ("", BadCode("".into())),
            ("250 2.0.0 Ok", BadCode("250".into())),
            ("352 3.2.2 Full", BadCode("352".into())),
            ("652 6.2.2 Full", BadCode("652".into())),
            ("462 4.2.2 Full", BadCode("462".into())),
            ("45 4.2.2 Full", BadCode("45".into())),
            ("4520 4.2.2 Full", BadCode("4520".into())),
            ("45x 4.2.2 Full", BadCode("45x".into())),
            ("+52 4.2.2 Full", BadCode("+52".into())),
            ("452 5.2.2 Full", BadEnhancedCode("5.2.2".into())),
            ("552 4.2.2 Full", BadEnhancedCode("4.2.2".into())),
            ("452 Mailbox full", BadEnhancedCode("Mailbox".into())),
            ("452 4.2 Full", BadEnhancedCode("4.2".into())),
            ("452 4.2.2.1 Full", BadEnhancedCode("4.2.2.1".into())),
            ("452 4.02.2 Full", BadEnhancedCode("4.02.2".into())),
            ("452 4.2.1000 Full", BadEnhancedCode("4.2.1000".into())),
            ("452 4..2 Full", BadEnhancedCode("4..2".into())),
            ("452", BadEnhancedCode("".into())),
            ("452 4.2.2", EmptyText),
            ("452 4.2.2   ", EmptyText),
            ("452 4.2.2 Mailbox\tfull", BadTextChar('\t')),
            ("452 4.2.2 Mailbox\r\nfull", BadTextChar('\r')),
            ("452 4.2.2 Boîte pleine", BadTextChar('î')),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<OverQuotaReply>(), Err(want), "{text:?}");
        }
        let long = format!("452 4.2.2 {}", "x".repeat(MAX_TEXT_LEN + 1));
        assert_eq!(
            long.parse::<OverQuotaReply>(),
            Err(TextTooLong(MAX_TEXT_LEN + 1))
        );
        let longest = format!("452 4.2.2 {}", "x".repeat(MAX_TEXT_LEN));
        assert!(longest.parse::<OverQuotaReply>().is_ok());
    }

    #[test]
    fn hand_built_replies_are_validated_too() {
        assert_eq!(reply(452, "4.2.2", "Full").validate(), Ok(()));
        assert!(matches!(
            reply(200, "2.0.0", "x").validate(),
            Err(ParseReplyError::BadCode(_))
        ));
        assert!(matches!(
            reply(452, "5.2.2", "x").validate(),
            Err(ParseReplyError::BadEnhancedCode(_))
        ));
        assert_eq!(
            reply(452, "4.2.2", "").validate(),
            Err(ParseReplyError::EmptyText)
        );
    }

    #[test]
    fn error_messages_are_lower_case_fragments() {
        let e = "250 2.0.0 Ok".parse::<OverQuotaReply>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "reply code \"250\" is not a 4xx or 5xx SMTP code"
        );
    }
}
