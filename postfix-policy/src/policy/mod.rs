//! Postfix SMTPD policy delegation (`SMTPD_POLICY_README`; the truth is
//! Postfix `src/smtpd/smtpd_check.c` `check_policy_service()` and
//! `src/util/attr_scan_plain.c`), used here for the SMTP-time quota check.
//!
//! ```text
//! request:  name=value\n … \n      (an empty line ends it)
//! reply:    action=<action>\n\n
//! ```
//! Each smtpd process keeps one connection per policy endpoint and sends one
//! request at a time.

pub mod codec;
pub mod server;
pub mod service;
