//! Postfix-facing servers.
