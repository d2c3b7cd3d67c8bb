//! One configuration grammar for every backend: durations, booleans, option
//! names checked against the known ones, and secrets that never print.
//!
//! Every scheme's URL options go through these functions, so `ttl=2s` means
//! the same on every store, a bare number is an error (no guessing between
//! seconds and milliseconds), a misspelt option names the closest known one,
//! and a password never reaches an error message, a log line or `Debug`.
//!
//! ```
//! use leasehold_core::config;
//! use std::time::Duration;
//! assert_eq!(config::duration("ttl", "250ms")?, Duration::from_millis(250));
//! assert!(config::duration("ttl", "250").is_err());
//! let error = config::unknown_option("redis", "namspace", &["namespace", "ttl"]);
//! assert!(error.to_string().contains("did you mean `namespace`"));
//! assert_eq!(
//!     config::redact_url("redis://app:hunter2@cache:6379/0"),
//!     "redis://app:***@cache:6379/0"
//! );
//! # Ok::<(), leasehold_core::LockError>(())
//! ```

use std::fmt;
use std::time::Duration;

use crate::error::LockError;

/// The longest TTL any backend accepts, and the longest duration a
/// configuration value may name (one year). Longer values are almost always a
/// unit mistake, and bounding them keeps every `Instant + Duration` in range.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses `250ms`, `1.5s`, `2m` or `1h` (at most [`MAX_DURATION`]). A bare
/// number is an error: no store guesses the unit.
pub fn duration(name: &str, value: &str) -> Result<Duration, LockError> {
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "" => {
            return Err(invalid(
                name,
                value,
                "a duration needs a unit: ms, s, m or h (e.g. 500ms, 2s)",
            ));
        }
        _ => return Err(invalid(name, value, "unknown unit (use ms, s, m or h)")),
    };
    let number: f64 = number
        .parse()
        .map_err(|_| invalid(name, value, "expected a duration like 500ms, 2s, 1m"))?;
    let seconds = number * scale;
    if !seconds.is_finite() || seconds > MAX_DURATION.as_secs_f64() {
        return Err(invalid(name, value, "longer than the maximum of one year"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| invalid(name, value, "out of range"))
}

/// Parses `true|false` (also `1|0`, `yes|no`).
pub fn boolean(name: &str, value: &str) -> Result<bool, LockError> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(invalid(name, value, "expected true or false")),
    }
}

/// Parses an unsigned number.
pub fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, LockError> {
    value
        .parse()
        .map_err(|_| invalid(name, value, "expected a whole number"))
}

/// The error for an option value that does not parse; names the option and
/// the value (never pass a secret's value here: use [`Secret`]).
pub fn invalid(name: &str, value: &str, why: &str) -> LockError {
    LockError::Config(format!("option {name}={value:?}: {why}"))
}

/// The error for an option no one knows, naming the closest known one: a
/// typo must never silently fall back to a default (`?mod=table` running in
/// another mode, `?namspace=` sharing the default namespace).
pub fn unknown_option(scheme: &str, name: &str, known: &[&str]) -> LockError {
    let hint = closest(name, known)
        .map(|best| format!("; did you mean `{best}`?"))
        .unwrap_or_default();
    LockError::Config(format!(
        "unknown option `{name}` for {scheme}://{hint} (known: {})",
        known.join(", ")
    ))
}

/// The known name closest to `name` by edit distance, if any is close enough
/// to be a plausible typo (at most a third of the name's length, and 3).
pub fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).clamp(1, 3);
    known
        .iter()
        .map(|candidate| (edit_distance(name, candidate), *candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Query options whose values are secrets; [`redact_url`] hides them.
const SECRET_OPTIONS: &[&str] = &[
    "password",
    "pass",
    "secret",
    "secret_key",
    "secret_access_key",
    "aws_secret_access_key",
    "session_token",
    "aws_session_token",
    "token",
    "auth",
];

/// `url` with its password and secret-valued options replaced by `***`, for
/// errors and logs. Works on malformed URLs too: everything between the
/// scheme and the last `@` is treated as user information, of which only the
/// user name (up to the first `:`) is kept.
pub fn redact_url(url: &str) -> String {
    // A scheme is letters, digits, `+`, `-`, `.` before the first `:`;
    // anything else (`user:pw@host`, `postgres//u:pw@h`) has none, and its
    // first `:` may be the password's.
    let (scheme, rest) = match url.find(':') {
        Some(at)
            if url[..at].starts_with(|c: char| c.is_ascii_alphabetic())
                && url[..at]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            // `user:pw@host` looks like a scheme `user`: a scheme is
            // followed by `/` when user information comes after it.
            && (url[at + 1..].starts_with('/') || !url[at + 1..].contains('@')) =>
        {
            url.split_at(at + 1)
        }
        _ => ("", url),
    };
    let slashes = rest.len() - rest.trim_start_matches('/').len();
    let (slashes, rest) = rest.split_at(slashes);
    let mut out = format!("{scheme}{slashes}");
    let rest = match rest.rfind('@') {
        Some(at) => {
            let (userinfo, host) = rest.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _)) => out.push_str(&format!("{user}:***")),
                None => out.push_str(userinfo),
            }
            host
        }
        None => rest,
    };
    match rest.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _))
                        if SECRET_OPTIONS.contains(&name.to_ascii_lowercase().as_str()) =>
                    {
                        format!("{name}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            out.push_str(&pairs.join("&"));
        }
        None => out.push_str(rest),
    }
    out
}

/// A secret (password, secret key, token): usable, but `Debug` and `Display`
/// print `***`, so an options struct that holds one can derive `Debug`.
///
/// ```
/// use leasehold_core::config::Secret;
/// let password = Secret::new("hunter2");
/// assert_eq!(format!("{password:?}"), "***");
/// assert_eq!(password.expose(), "hunter2");
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for handing to the store's client. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit_and_stay_bounded() {
        assert_eq!(duration("t", "250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("t", "1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("t", "2m").unwrap(), Duration::from_secs(120));
        assert_eq!(duration("t", "1h").unwrap(), Duration::from_secs(3600));
        for bad in [
            "",
            "40",
            "s",
            "1d",
            "-1s",
            "1e400s",
            "ten",
            "10000000000000000000s",
            "NaNs",
            "8761h",
        ] {
            let err = duration("ttl", bad).expect_err(bad).to_string();
            assert!(
                err.contains("ttl"),
                "error for {bad:?} does not name the option: {err}"
            );
        }
    }

    #[test]
    fn unknown_options_name_the_closest_known_one() {
        let known = ["namespace", "mode", "ttl", "timeout"];
        let err = unknown_option("postgres", "mod", &known).to_string();
        assert!(err.contains("did you mean `mode`"), "{err}");
        let err = unknown_option("redis", "namspace", &known).to_string();
        assert!(err.contains("did you mean `namespace`"), "{err}");
        let err = unknown_option("redis", "zzzzzzzz", &known).to_string();
        assert!(!err.contains("did you mean"), "{err}");
        assert!(err.contains("zzzzzzzz"), "{err}");
    }

    #[test]
    fn redaction_hides_passwords_even_in_malformed_urls() {
        let sentinel = "S3cr3t/+sent";
        for url in [
            format!("redis://user:{sentinel}@host:6379"),
            format!("redis:/user:{sentinel}@host"),
            format!("postgres://u:{sentinel}@h/db?mode=table"),
            format!("dynamodb://table?region=x&secret_key={sentinel}&access_key=AK"),
            format!("etcd://root:{sentinel}@h1:2379,h2:2379"),
            format!("zk://h?password={sentinel}"),
            format!("redis+unix:///run/redis.sock?db=1&pass={sentinel}"),
            format!("postgres//user:{sentinel}@host/db"),
            format!("user:{sentinel}@host"),
        ] {
            let shown = redact_url(&url);
            assert!(!shown.contains(sentinel), "{url} redacted to {shown}");
            assert!(!shown.contains("S3cr3t"), "{url} redacted to {shown}");
        }
        assert_eq!(redact_url("memory://x?ttl=1s"), "memory://x?ttl=1s");
    }
}
