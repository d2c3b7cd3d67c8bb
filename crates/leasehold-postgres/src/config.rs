//! Options, their URL form, and the names derived from them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use leasehold_core::config::{self, MAX_DURATION};
use leasehold_core::{Drift, LockError, SharedClock, system_clock};
use sha2::{Digest, Sha256};

/// Which Postgres mechanism carries the locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Session advisory locks (`pg_try_advisory_lock`) on a connection pinned
    /// to the lease; a fencing counter row per key. The lock lasts as long as
    /// the session ([`Expiry::Session`](leasehold_core::Expiry::Session)),
    /// which is watched: its end fires the lease's loss signal at once.
    Advisory,
    /// A lease table whose rows expire by the database clock
    /// ([`Expiry::Ttl`](leasehold_core::Expiry::Ttl)); works behind any
    /// connection pooler.
    Table,
}

impl Mode {
    /// The table a mode uses unless told otherwise.
    pub fn default_table(self) -> &'static str {
        match self {
            Mode::Advisory => "leasehold_fencing",
            Mode::Table => "leasehold_leases",
        }
    }
}

impl FromStr for Mode {
    type Err = LockError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "advisory" => Ok(Mode::Advisory),
            "table" => Ok(Mode::Table),
            other => Err(LockError::Config(format!(
                "mode must be `advisory` or `table`, not {other:?}"
            ))),
        }
    }
}

/// How a [`PostgresBackend`](crate::PostgresBackend) behaves.
///
/// Every option also has a URL query parameter (see
/// [`PostgresOptions::from_url`]).
#[derive(Clone)]
pub struct PostgresOptions {
    pub(crate) mode: Mode,
    pub(crate) namespace: String,
    pub(crate) schema: String,
    pub(crate) table: Option<String>,
    pub(crate) channel: String,
    pub(crate) operation_timeout: Duration,
    pub(crate) max_connections: u32,
    pub(crate) migrate: bool,
    pub(crate) holder: String,
    pub(crate) clock: SharedClock,
    pub(crate) drift: Drift,
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("mode", &self.mode)
            .field("namespace", &self.namespace)
            .field("schema", &self.schema)
            .field("table", &self.table_name())
            .field("channel", &self.channel)
            .field("operation_timeout", &self.operation_timeout)
            .field("max_connections", &self.max_connections)
            .field("migrate", &self.migrate)
            .finish_non_exhaustive()
    }
}

impl PostgresOptions {
    /// Defaults for `mode`: namespace `""`, schema `public`, the mode's default
    /// table, channel `leasehold_release`, 5 s per call, a lazily filled pool
    /// of at most 50 connections in advisory mode (one per held lock) and 10 in
    /// table mode (when the backend builds its own), migrations on.
    pub fn new(mode: Mode) -> Self {
        PostgresOptions {
            mode,
            namespace: String::new(),
            schema: "public".into(),
            table: None,
            channel: "leasehold_release".into(),
            operation_timeout: Duration::from_secs(5),
            max_connections: match mode {
                Mode::Advisory => 50,
                Mode::Table => 10,
            },
            migrate: true,
            holder: default_holder(),
            clock: system_clock(),
            drift: Drift::default(),
        }
    }

    /// Keeps this application's locks apart from others on the same database:
    /// the namespace is its own column (and part of the advisory hash), so no
    /// namespace/key pair can alias another.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }
    /// The schema of the crate's table (created if missing, unless it is
    /// `public`).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }
    /// The table name (default [`Mode::default_table`]).
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = Some(table.into());
        self
    }
    /// The LISTEN/NOTIFY channel for release signals.
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }
    /// The bound on every call (default 5 s; positive, at most one year,
    /// else connecting is a [`LockError::Config`]); past it a call gives
    /// [`LockError::Unavailable`]. Also the pool's acquire timeout when the
    /// backend builds the pool.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }
    /// Pool size when the backend builds its own pool (default 50 in
    /// advisory mode, 10 in table mode). In advisory mode every held lease
    /// pins one session, so this bounds how many locks one backend can hold
    /// at once (pinned sessions have a private pool of this size; the
    /// backend's own pool, of the same size, serves `inspect` and
    /// migrations and opens connections only when used).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }
    /// Whether connecting runs the idempotent migration (default true).
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }
    /// Free-form, untrusted holder metadata shown by `inspect` (default: this
    /// process's host and pid).
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = holder.into();
        self
    }
    /// The clock for `valid_until` (inject a `TestClock` in tests).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }
    /// The drift allowance subtracted from validity (`factor` in `[0, 1)`,
    /// `fixed` at most one year, else connecting is a [`LockError::Config`]).
    pub fn drift(mut self, drift: Drift) -> Self {
        self.drift = drift;
        self
    }

    /// The mode.
    pub fn mode_of(&self) -> Mode {
        self.mode
    }

    /// The namespace in use.
    pub fn namespace_str(&self) -> &str {
        &self.namespace
    }

    /// The table name in use.
    pub fn table_name(&self) -> &str {
        self.table
            .as_deref()
            .unwrap_or_else(|| self.mode.default_table())
    }

    /// Reads leasehold's query parameters from a `postgres://` URL and
    /// returns the options plus the URL with those parameters removed (ready
    /// for sqlx).
    ///
    /// leasehold's parameters ([`OWN_OPTIONS`]): `mode=advisory|table`
    /// (default `advisory`), `namespace`, `schema`, `table`, `channel`,
    /// `timeout` (a duration with its unit: `250ms`, `5s`), `max_connections`,
    /// `migrate=true|false`, `holder`, `drift_factor`, `drift_fixed`. The
    /// parameters sqlx reads ([`SQLX_OPTIONS`]: `sslmode`, `sslrootcert`,
    /// `application_name`, `options`, ...) pass through to it. Any other name
    /// is a [`LockError::Config`] naming the closest known one: a typo such
    /// as `mod=table` must never run in the default mode. Errors never show
    /// the URL's password.
    pub fn from_url(url: &str) -> Result<(Self, String), LockError> {
        // The error never repeats the URL: a malformed one may hide its
        // password where no redaction can find it. A misspelt option is
        // still named (it is as wrong as the URL, and easier to miss).
        let mut parsed = url::Url::parse(url).map_err(|e| {
            unknown_name_in_malformed(url).unwrap_or_else(|| {
                LockError::Config(format!(
                    "not a URL ({e}); expected postgres://user:password@host:port/database?options"
                ))
            })
        })?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(LockError::Config(format!(
                "the URL scheme must be postgres or postgresql, not {:?}",
                parsed.scheme()
            )));
        }
        let mode = match parsed
            .query_pairs()
            .filter(|(name, _)| name == "mode")
            .last()
        {
            Some((_, value)) => value.parse()?,
            None => Mode::Advisory,
        };
        let mut options = PostgresOptions::new(mode);
        let mut rest = Vec::new();
        for (name, value) in parsed.query_pairs() {
            let value = value.into_owned();
            match &*name {
                "mode" => {}
                "namespace" => options.namespace = value,
                "schema" => options.schema = value,
                "table" => options.table = Some(value),
                "channel" => options.channel = value,
                "timeout" => options.operation_timeout = config::duration(&name, &value)?,
                "max_connections" => options.max_connections = config::number(&name, &value)?,
                "migrate" => options.migrate = config::boolean(&name, &value)?,
                "holder" => options.holder = value,
                "drift_factor" => options.drift.factor = config::number(&name, &value)?,
                "drift_fixed" => options.drift.fixed = config::duration(&name, &value)?,
                sqlx if SQLX_OPTIONS.contains(&sqlx) || sqlx.starts_with("options[") => {
                    rest.push((name.into_owned(), value))
                }
                unknown => {
                    let known: Vec<&str> =
                        OWN_OPTIONS.iter().chain(SQLX_OPTIONS).copied().collect();
                    return Err(config::unknown_option(parsed.scheme(), unknown, &known));
                }
            }
        }
        if rest.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(rest);
        }
        options.validate()?;
        Ok((options, parsed.into()))
    }

    pub(crate) fn validate(&self) -> Result<(), LockError> {
        for (what, name) in [
            ("schema", self.schema.as_str()),
            ("table", self.table_name()),
            ("channel", self.channel.as_str()),
        ] {
            if name.is_empty() || name.len() > 63 || name.contains('\0') {
                return Err(LockError::Config(format!(
                    "{what} name {name:?} must be 1 to 63 bytes without NUL"
                )));
            }
        }
        if self.namespace.len() > 1024 || self.namespace.contains('\0') {
            return Err(LockError::Config(
                "the namespace must be at most 1024 bytes without NUL".into(),
            ));
        }
        if self.holder.contains('\0') {
            return Err(LockError::Config("the holder must not contain NUL".into()));
        }
        if self.operation_timeout.is_zero() || self.operation_timeout > MAX_DURATION {
            return Err(LockError::Config(format!(
                "the operation timeout must be positive and at most one year, not {:?}",
                self.operation_timeout
            )));
        }
        if !(0.0..1.0).contains(&self.drift.factor) || self.drift.fixed > MAX_DURATION {
            return Err(LockError::Config(format!(
                "drift_factor must be in [0, 1) and drift_fixed at most one year, not {} and {:?}",
                self.drift.factor, self.drift.fixed
            )));
        }
        if self.max_connections == 0 {
            return Err(LockError::Config("max_connections must be positive".into()));
        }
        Ok(())
    }

    /// `"schema"."table"`, both quoted as identifiers.
    pub(crate) fn qualified_table(&self) -> String {
        format!(
            "{}.{}",
            quote_ident(&self.schema),
            quote_ident(self.table_name())
        )
    }
}

/// The URL options leasehold reads itself (and removes before sqlx sees the
/// URL).
pub const OWN_OPTIONS: &[&str] = &[
    "mode",
    "namespace",
    "schema",
    "table",
    "channel",
    "timeout",
    "max_connections",
    "migrate",
    "holder",
    "drift_factor",
    "drift_fixed",
];

/// The URL options sqlx 0.8 reads (passed through to it), besides
/// `options[NAME]`. sqlx itself only logs a warning for names it does not
/// know, so leasehold rejects them instead.
pub const SQLX_OPTIONS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// The first unknown option name in a URL too malformed to parse, found
/// without echoing anything that could be a secret: only the part after the
/// last `@` (the password, if any, is before it) is read, and only names made
/// of ASCII letters, digits, `_`, `-`, `[`, `]` and `.` are considered.
fn unknown_name_in_malformed(url: &str) -> Option<LockError> {
    let after_userinfo = url.rsplit_once('@').map_or(url, |(_, rest)| rest);
    let (_, query) = after_userinfo.split_once('?')?;
    let known: Vec<&str> = OWN_OPTIONS.iter().chain(SQLX_OPTIONS).copied().collect();
    query
        .split('&')
        .map(|pair| pair.split_once('=').map_or(pair, |(name, _)| name))
        .filter(|name| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-[].".contains(&b))
        })
        .find(|name| !known.contains(name) && !name.starts_with("options["))
        .map(|name| config::unknown_option("postgres", name, &known))
}

fn default_holder() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.contains('\0'))
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host} pid {}", std::process::id())
}

/// Quotes a Postgres identifier: wraps it in double quotes and doubles any
/// double quote inside, so any name is taken literally.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The 64-bit advisory lock id of `key` in `namespace`: the first 8 bytes
/// (big-endian, as a signed `bigint`) of
/// `SHA-256("leasehold\0" || u32_be(len(namespace)) || namespace || key)`.
///
/// Stable across versions and platforms (it is part of the on-the-wire
/// contract between processes). The length prefix keeps `("a:b", "c")` and
/// `("a", "b:c")` apart; SHA-256 makes crafted collisions impractical. Two
/// keys whose ids collide anyway only contend falsely: exclusion is never
/// lost, because equal ids are one lock.
pub fn advisory_lock_id(namespace: &str, key: &str) -> i64 {
    let mut hash = Sha256::new();
    hash.update(b"leasehold\0");
    hash.update((namespace.len() as u32).to_be_bytes());
    hash.update(namespace.as_bytes());
    hash.update(key.as_bytes());
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// The NOTIFY payload (and release-hub key) for a key: its advisory id in
/// hex. A collision only costs a spurious wake-up.
pub(crate) fn signal_name(id: i64) -> String {
    format!("{:016x}", id as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parameters_are_read_and_removed() {
        let (options, rest) = PostgresOptions::from_url(
            "postgres://u:p@127.0.0.1:5432/db?mode=table&namespace=app&sslmode=disable&timeout=250ms&table=my%22t",
        )
        .unwrap();
        assert_eq!(options.mode, Mode::Table);
        assert_eq!(options.max_connections, 10, "table mode's default pool");
        assert_eq!(options.namespace, "app");
        assert_eq!(options.operation_timeout, Duration::from_millis(250));
        assert_eq!(options.qualified_table(), r#""public"."my""t""#);
        assert_eq!(rest, "postgres://u:p@127.0.0.1:5432/db?sslmode=disable");
    }

    #[test]
    fn bad_url_options_are_config_errors() {
        for url in [
            "postgres://h/db?mode=queue",
            "postgres://h/db?timeout=soon",
            "postgres://h/db?timeout=0s",
            "postgres://h/db?timeout=250",
            "postgres://h/db?timeout_ms=250",
            "postgres://h/db?mod=table",
            "mysql://h/db",
            "postgres://h/db?table=",
        ] {
            assert!(
                matches!(PostgresOptions::from_url(url), Err(LockError::Config(_))),
                "{url} should be rejected"
            );
        }
    }

    #[test]
    fn advisory_ids_are_stable_and_namespace_separated() {
        // Pinned: changing the hash would split the lock between versions.
        assert_eq!(advisory_lock_id("", "a"), advisory_lock_id("", "a"));
        assert_ne!(advisory_lock_id("a:b", "c"), advisory_lock_id("a", "b:c"));
        assert_ne!(advisory_lock_id("x", "k"), advisory_lock_id("y", "k"));
        assert_eq!(
            signal_name(advisory_lock_id("", "orders:42")),
            format!("{:016x}", advisory_lock_id("", "orders:42") as u64)
        );
    }
}
