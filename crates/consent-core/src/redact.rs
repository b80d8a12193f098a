//! Hides credentials in anything that may be printed, for every crate: logs, errors, CLI
//! output and `describe()` strings.
//!
//! - [`redact_url`] for a configured URL (the whole string is one URL): everything between
//!   the scheme and the last `@` after the user name is hidden, whatever characters the
//!   password holds (spaces, `#`, `?`... which a strict parser would stop at), and a URL
//!   missing its `//` (`postgres:secret@host`) still hides what stands before the `@`.
//! - [`register_secrets_of`] remembers the passwords of the configured URLs (as written and
//!   percent-decoded), and [`redact`] removes them from any text, wherever a driver's
//!   message quotes them.
//! - [`redact`] also takes any text (a URL, a comma-separated list of URLs, an error
//!   message quoting a URL) and replaces
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
    "options",
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

/// Secrets shorter than this are not registered: hiding every "pw" in every log line would
/// hide more than it protects.
const MIN_REGISTERED_SECRET: usize = 4;

/// The passwords of the configured URLs, removed from every text [`redact`] shows.
static SECRETS: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// `text` with every credential hidden (see the module docs).
pub fn redact(text: &str) -> String {
    let mut shown = text.to_owned();
    if let Ok(secrets) = SECRETS.read() {
        for secret in secrets.iter() {
            if shown.contains(secret.as_str()) {
                shown = shown.replace(secret.as_str(), REDACTED);
            }
        }
    }
    redact_parameters(&redact_userinfo(&shown))
}

/// Where the user information of a configured URL starts and ends (its `@`), and whether
/// the URL has its `//`. The `@` is the last one before the query, so an `@` inside a query
/// parameter (`?password=p@ss`) is not taken for it; but when what precedes the first `?`
/// has no `/` (no path yet), that `?` is inside a password (`u:ab?cd@host`) and the last
/// `@` of the URL ends the user information.
fn userinfo_span(url: &str) -> Option<(usize, usize, bool)> {
    let (start, with_slashes) = match url.find("://") {
        Some(i) => (i + 3, true),
        None => (url.find(':')? + 1, false),
    };
    let rest = &url[start..];
    let before_query = match rest.find('?') {
        Some(q) if rest[..q].contains('/') || rest[..q].contains('@') => &rest[..q],
        _ => rest,
    };
    let at = before_query.rfind('@')?;
    Some((start, start + at, with_slashes))
}

/// A configured URL with its credentials hidden (see the module docs).
pub fn redact_url(url: &str) -> String {
    let masked = match userinfo_span(url) {
        Some((start, at, with_slashes)) => {
            let userinfo = &url[start..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}{REDACTED}{}", &url[..start + colon + 1], &url[at..]),
                // `scheme://user@host`: a user name only. Without the `//`, what stands
                // before the `@` may well be a password.
                None if with_slashes => url.to_owned(),
                None => format!("{}{REDACTED}{}", &url[..start], &url[at..]),
            }
        }
        None => url.to_owned(),
    };
    redact(&masked)
}

/// The query of a configured URL: what follows the first `?` after its user information
/// (a `?` inside a password is not the start of the query).
pub fn query_of(url: &str) -> Option<&str> {
    let from = userinfo_span(url).map_or(0, |(_, at, _)| at);
    url[from..].split_once('?').map(|(_, query)| query)
}

/// Remembers the password of `url` (and the values of its secret query parameters), as
/// written and percent-decoded, so [`redact`] hides them in any text.
pub fn register_secrets_of(url: &str) {
    let mut found = Vec::new();
    if let Some((start, at, with_slashes)) = userinfo_span(url) {
        let userinfo = &url[start..at];
        match userinfo.find(':') {
            Some(colon) => found.push(userinfo[colon + 1..].to_owned()),
            None if !with_slashes => found.push(userinfo.to_owned()),
            None => {}
        }
    }
    if let Some(query) = query_of(url) {
        for pair in query.split('&') {
            if let Some((name, value)) = pair.split_once('=')
                && SECRET_PARAMETERS
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(name))
            {
                found.push(value.to_owned());
            }
        }
    }
    let Ok(mut secrets) = SECRETS.write() else {
        return;
    };
    for secret in found {
        for form in [percent_decoded(&secret), secret] {
            if form.len() >= MIN_REGISTERED_SECRET && !secrets.contains(&form) {
                secrets.push(form);
            }
        }
    }
    // Longest first, so a secret containing another is hidden whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// `%XX` sequences decoded (others kept as they are).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(Some(hi)), Some(Some(lo))) = (
                bytes.get(i + 1).map(|b| hex(*b)),
                bytes.get(i + 2).map(|b| hex(*b)),
            )
        {
            out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
    fn configured_urls_hide_passwords_a_strict_parser_would_miss() {
        for (url, shown) in [
            (
                "postgres://postgres:Zq7Secr Ww9@127.0.0.1:5432/db",
                "postgres://postgres:***@127.0.0.1:5432/db",
            ),
            ("postgres://u:ab#cd@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u:ab?cd@h/db?sslmode=require",
                "postgres://u:***@h/db?sslmode=require",
            ),
            ("postgres://u:a\tb\"c`d<e@h/db", "postgres://u:***@h/db"),
            (
                "postgres:PgS3cretQ9@127.0.0.1/db",
                "postgres:***@127.0.0.1/db",
            ),
            ("redis://:pw@h:6379", "redis://:***@h:6379"),
            ("postgres://postgres@h/db", "postgres://postgres@h/db"),
            ("sqlite://./data/consent.db", "sqlite://./data/consent.db"),
            (
                "postgres://h/db?options=-c%20secret%3Dx",
                "postgres://h/db?options=***",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn registered_passwords_are_hidden_in_any_text() {
        register_secrets_of("postgres://u:Reg1stered%20Pw@h/db?sslpassword=k3y-s3cret");
        let text = "driver said: password Reg1stered Pw rejected; Reg1stered%20Pw; key k3y-s3cret";
        let shown = redact(text);
        for secret in ["Reg1stered Pw", "Reg1stered%20Pw", "k3y-s3cret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.starts_with("driver said: password ***"));
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
