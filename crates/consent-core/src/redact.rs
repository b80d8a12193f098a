//! Hides credentials in anything that may be printed: one function, [`redact`], used by every
//! crate for logs, errors, CLI output and `describe()` strings.
//!
//! It takes any text (a URL, a comma-separated list of URLs, an error message quoting a URL)
//! and replaces
//! - the password of every `scheme://user:password@host` (also `scheme://:password@host`,
//!   Redis's form without a user name) by `***`, keeping the user name;
//! - the value of every query parameter whose name says it is a secret (`password`,
//!   `sslpassword`, `pass`, `passwd`, `pwd`, `secret`, `token`, `apikey`, `api_key`, any case)
//!   by `***`.
//!
//! Everything else is kept, so an operator still sees which host and database is meant.

/// What replaces a secret.
pub const REDACTED: &str = "***";

/// Query parameter names whose values are secrets (compared case-insensitively).
const SECRET_PARAMETERS: &[&str] = &[
    "password",
    "sslpassword",
    "pass",
    "passwd",
    "pwd",
    "secret",
    "token",
    "apikey",
    "api_key",
];

/// Bytes that end a URL (or its part) inside a longer text.
fn ends_url(b: u8) -> bool {
    b.is_ascii_whitespace() || matches!(b, b',' | b'"' | b'\'' | b'`' | b'<' | b'>' | b')' | b';')
}

/// `text` with every credential hidden (see the module docs).
pub fn redact(text: &str) -> String {
    redact_parameters(&redact_userinfo(text))
}

/// Hides the password part of every `scheme://user:password@` in `text`.
fn redact_userinfo(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("://") {
        let authority_start = search + found + 3;
        // The user information ends at the last `@` before the query, the fragment or the
        // end of the URL (not at the first `/`: a password with an unescaped `/` is still
        // a password; hiding a little more than needed is the safe side).
        let head_end = bytes[authority_start..]
            .iter()
            .position(|&b| matches!(b, b'?' | b'#') || ends_url(b))
            .map_or(bytes.len(), |p| authority_start + p);
        let head = &text[authority_start..head_end];
        if let Some(at) = head.rfind('@')
            && let Some(colon) = head[..at].find(':')
        {
            let password_start = authority_start + colon + 1;
            out.push_str(&text[copied..password_start]);
            out.push_str(REDACTED);
            copied = authority_start + at;
        }
        search = head_end.max(authority_start);
    }
    out.push_str(&text[copied..]);
    out
}

/// Hides the values of secret query parameters (`?password=...`, `&sslpassword=...`).
fn redact_parameters(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if matches!(bytes[i], b'?' | b'&') {
            let name_start = i + 1;
            let name_end = bytes[name_start..]
                .iter()
                .position(|&b| matches!(b, b'=' | b'&' | b'#') || ends_url(b))
                .map_or(bytes.len(), |p| name_start + p);
            let name = &text[name_start..name_end];
            if bytes.get(name_end) == Some(&b'=')
                && SECRET_PARAMETERS
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(name))
            {
                let value_start = name_end + 1;
                let value_end = bytes[value_start..]
                    .iter()
                    .position(|&b| matches!(b, b'&' | b'#') || ends_url(b))
                    .map_or(bytes.len(), |p| value_start + p);
                out.push_str(&text[copied..value_start]);
                out.push_str(REDACTED);
                copied = value_end;
                i = value_end;
                continue;
            }
            i = name_end;
            continue;
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hides_every_form_of_credential() {
        let cases = [
            ("redis://:pw@127.0.0.1:6379", "redis://:***@127.0.0.1:6379"),
            (
                "redis://user:pw@127.0.0.1:6379/0",
                "redis://user:***@127.0.0.1:6379/0",
            ),
            (
                "rediss://default:p%40ss@cache.internal:6380",
                "rediss://default:***@cache.internal:6380",
            ),
            (
                "redis://:a@h1:7101,redis://u:b@h2:7102,redis://h3:7103",
                "redis://:***@h1:7101,redis://u:***@h2:7102,redis://h3:7103",
            ),
            ("postgres://u:pw@h:5432/db", "postgres://u:***@h:5432/db"),
            (
                "postgresql://u:p:w@h/db?sslmode=require",
                "postgresql://u:***@h/db?sslmode=require",
            ),
            ("redis://u:pa/ss@h:1/0", "redis://u:***@h:1/0"),
            (
                "postgres://u@h/db?password=pw&sslmode=verify-full&sslpassword=kp",
                "postgres://u@h/db?password=***&sslmode=verify-full&sslpassword=***",
            ),
            (
                "postgres://h/db?Password=pw",
                "postgres://h/db?Password=***",
            ),
            (
                "cannot connect to postgres://u:pw@h/db: timed out",
                "cannot connect to postgres://u:***@h/db: timed out",
            ),
            (
                "redis: Connection refused (redis://:pw@h:1)",
                "redis: Connection refused (redis://:***@h:1)",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(redact(input), expected, "{input}");
        }
    }

    #[test]
    fn keeps_what_is_not_a_secret() {
        for text in [
            "sqlite://./data/consent.db",
            "sqlite://./data/consent.db?mode=rwc",
            "postgres://u@h:5432/db",
            "redis://127.0.0.1:6379",
            "no url here: a@b:c",
            "https://example.com/path?q=1&passage=x",
            "",
        ] {
            assert_eq!(redact(text), text);
        }
    }

    proptest! {
        #[test]
        fn a_password_never_survives(user in "[a-z]{0,8}", password in "[A-Za-z0-9!$%+.~/:-]{1,24}", host in "[a-z]{1,10}", scheme in prop::sample::select(vec!["redis", "rediss", "postgres", "postgresql"])) {
            let url = format!("{scheme}://{user}:{password}@{host}:1/x?password={password}");
            let shown = redact(&format!("error: {url}, retrying"));
            prop_assert!(!shown.contains(&format!(":{password}@")), "{}", shown);
            prop_assert!(!shown.contains(&format!("={password}")), "{}", shown);
            prop_assert!(shown.contains(&host));
        }

        #[test]
        fn any_text_is_handled(text in ".{0,80}") {
            // Never panics on any input (byte boundaries are only ever ASCII delimiters).
            let _ = redact(&text);
        }
    }
}
