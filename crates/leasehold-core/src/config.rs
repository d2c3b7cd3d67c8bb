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
use std::future::Future;
use std::time::Duration;

use crate::backend::LockBackend;
use crate::clock::Drift;
use crate::error::LockError;

pub use crate::clock::MAX_DURATION;

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

/// The options a [`Locker`](crate::Locker) applies, not a backend: a
/// backend's URL parser accepts them (so one URL works for both) and leaves
/// them to the locker (`leasehold::connect` applies them).
pub const LOCKER_OPTIONS: &[&str] = &["ttl", "wait", "retry_min", "retry_max", "auto_extend"];

/// Settings every backend has, under the same query names on every scheme:
/// `namespace`, `timeout` (per store call), `poll` (how often a waiter
/// re-checks without a notification), `holder` (who holds it, stored with
/// each lease), `drift_factor`, `drift_fixed`. `None` means the backend's
/// own default, which its docs state.
///
/// ```
/// use leasehold_core::config::SharedConfig;
/// use std::time::Duration;
/// let mut shared = SharedConfig::default();
/// assert!(shared.apply("timeout", "2s")?);
/// assert!(!shared.apply("mode", "table")?); // not a shared option
/// assert_eq!(shared.timeout, Some(Duration::from_secs(2)));
/// # Ok::<(), leasehold_core::LockError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct SharedConfig {
    /// Keeps one application's locks apart from another's on a shared store.
    pub namespace: Option<String>,
    /// The bound on each store call; past it the call is `Unavailable`.
    pub timeout: Option<Duration>,
    /// How often a waiter re-checks when no notification comes.
    pub poll: Option<Duration>,
    /// Who holds a lease, stored with it for tooling (default: host and pid).
    pub holder: Option<String>,
    /// The validity drift allowance.
    pub drift: Option<Drift>,
}

impl SharedConfig {
    /// The shared option names.
    pub const NAMES: &'static [&'static str] = &[
        "namespace",
        "timeout",
        "poll",
        "holder",
        "drift_factor",
        "drift_fixed",
    ];

    /// Applies one query option if it is a shared one; `Ok(false)` for any
    /// other name.
    pub fn apply(&mut self, name: &str, value: &str) -> Result<bool, LockError> {
        match name {
            "namespace" if value.is_empty() => {
                return Err(invalid(name, value, "must not be empty"));
            }
            "namespace" => self.namespace = Some(value.to_owned()),
            "timeout" => self.timeout = Some(positive(name, value)?),
            "poll" => self.poll = Some(positive(name, value)?),
            "holder" => self.holder = Some(value.to_owned()),
            "drift_factor" => {
                let factor: f64 = value
                    .parse()
                    .map_err(|_| invalid(name, value, "expected a number like 0.01"))?;
                if !(0.0..1.0).contains(&factor) {
                    return Err(invalid(name, value, "must be in [0, 1)"));
                }
                self.drift = Some(Drift {
                    factor,
                    ..self.drift.unwrap_or_default()
                });
            }
            "drift_fixed" => {
                self.drift = Some(Drift {
                    fixed: duration(name, value)?,
                    ..self.drift.unwrap_or_default()
                });
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// The default holder label: `"<host> pid <pid>"`, where host comes from
/// `HOSTNAME` or `/etc/hostname` (`unknown-host` if neither is there).
///
/// ```
/// let holder = leasehold_core::config::default_holder();
/// assert!(holder.contains(&format!("pid {}", std::process::id())));
/// ```
pub fn default_holder() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!("{host} pid {}", std::process::id())
}

impl SharedConfig {
    /// The holder label to store: the configured one, or [`default_holder`].
    pub fn holder_or_default(&self) -> String {
        self.holder.clone().unwrap_or_else(default_holder)
    }
}

/// A duration above zero.
pub fn positive(name: &str, value: &str) -> Result<Duration, LockError> {
    let parsed = duration(name, value)?;
    if parsed.is_zero() {
        return Err(invalid(name, value, "must be above zero"));
    }
    Ok(parsed)
}

/// Applies every query pair of a backend URL: shared options to `shared`,
/// the backend's own through `own` (which returns `Ok(false)` for a name it
/// does not know), the [`LOCKER_OPTIONS`] left to the locker; any other name
/// is [`unknown_option`] naming the closest of all of them.
pub fn apply_query<'a>(
    scheme: &str,
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    shared: &mut SharedConfig,
    own_names: &[&str],
    mut own: impl FnMut(&str, &str) -> Result<bool, LockError>,
) -> Result<(), LockError> {
    for (name, value) in pairs {
        if shared.apply(name, value)? || own(name, value)? || LOCKER_OPTIONS.contains(&name) {
            continue;
        }
        let known: Vec<&str> = SharedConfig::NAMES
            .iter()
            .chain(own_names)
            .chain(LOCKER_OPTIONS)
            .copied()
            .collect();
        return Err(unknown_option(scheme, name, &known));
    }
    Ok(())
}

/// The setters of the [`SharedConfig`] options, written once for every
/// backend's config: `shared_setters!();` inside `impl XConfig { .. }` (the
/// type implements [`BackendConfig`]) gives it `namespace`, `timeout`,
/// `poll`, `holder` and `drift`, each overriding what its URL said.
#[macro_export]
macro_rules! shared_setters {
    () => {
        /// Keeps this application's locks apart from others' on a shared
        /// store (URL option `namespace`).
        pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
            $crate::config::BackendConfig::shared_mut(&mut self).namespace = Some(namespace.into());
            self
        }

        /// The bound on each store call; past it a call is `Unavailable`
        /// (URL option `timeout`).
        pub fn timeout(mut self, timeout: ::std::time::Duration) -> Self {
            $crate::config::BackendConfig::shared_mut(&mut self).timeout = Some(timeout);
            self
        }

        /// How often a waiter re-checks without a notification (URL option
        /// `poll`).
        pub fn poll(mut self, poll: ::std::time::Duration) -> Self {
            $crate::config::BackendConfig::shared_mut(&mut self).poll = Some(poll);
            self
        }

        /// Who holds a lease, stored with it where the store keeps holder
        /// metadata (URL option `holder`).
        pub fn holder(mut self, holder: impl Into<String>) -> Self {
            $crate::config::BackendConfig::shared_mut(&mut self).holder = Some(holder.into());
            self
        }

        /// The validity drift allowance (URL options `drift_factor`,
        /// `drift_fixed`).
        pub fn drift(mut self, drift: $crate::Drift) -> Self {
            $crate::config::BackendConfig::shared_mut(&mut self).drift = Some(drift);
            self
        }
    };
}

/// One backend's configuration: parsed from its URL with the shared grammar,
/// built in code, and turned into a connected backend. Every backend crate
/// implements it in its `config.rs`, and offers `XBackend::connect(url)` and
/// `XBackend::connect_with(config)` on top of it.
pub trait BackendConfig: Sized + Clone + fmt::Debug + Send + Sync + 'static {
    /// The backend it connects.
    type Backend: LockBackend;

    /// The URL schemes it parses (`["redis", "rediss"]`).
    const SCHEMES: &'static [&'static str];

    /// Its own option names, beside [`SharedConfig::NAMES`].
    const OPTIONS: &'static [&'static str];

    /// Parses a URL of one of [`BackendConfig::SCHEMES`]. Errors are
    /// [`LockError::Config`] naming the option (and never the password).
    fn from_url(url: &str) -> Result<Self, LockError>;

    /// The shared settings.
    fn shared(&self) -> &SharedConfig;

    /// The shared settings, to change.
    fn shared_mut(&mut self) -> &mut SharedConfig;

    /// Connects.
    fn connect(self) -> impl Future<Output = Result<Self::Backend, LockError>> + Send;
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
