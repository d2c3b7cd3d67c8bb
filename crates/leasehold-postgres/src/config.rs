//! [`PostgresConfig`]: the URL options, the builder, and the settings a
//! backend resolves from them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use leasehold_core::config::{
    self, BackendConfig, MAX_DURATION, SharedConfig, apply_query, redact_url,
};
use leasehold_core::{Drift, LockError, SharedClock, system_clock};

use crate::PostgresBackend;
use crate::keys::quote_ident;
use sha2::{Digest, Sha256};

/// The shortest TTL accepted (both modes).
pub const MIN_TTL: Duration = Duration::from_millis(1);
/// The longest TTL accepted in table mode: one year
/// ([`leasehold_core::config::MAX_DURATION`], the bound on every store).
pub const MAX_TTL: Duration = MAX_DURATION;
/// The longest TTL accepted in advisory mode: the largest
/// `idle_session_timeout` (2^31 - 1 ms, about 24.8 days).
pub const MAX_ADVISORY_TTL: Duration = Duration::from_millis(i32::MAX as u64);

/// The backend's name in advisory mode.
pub(crate) const ADVISORY: &str = "postgres-advisory";
/// The backend's name in table mode.
pub(crate) const TABLE: &str = "postgres-table";

/// Which Postgres mechanism carries the locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Session advisory locks (`pg_try_advisory_lock`) on a connection pinned
    /// to the lease; fencing tokens from one sequence. The lock lasts as long as
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

    /// The backend's name ([`LockBackend::name`](leasehold_core::LockBackend::name))
    /// in this mode.
    pub(crate) fn backend_name(self) -> &'static str {
        match self {
            Mode::Advisory => ADVISORY,
            Mode::Table => TABLE,
        }
    }

    fn default_max_connections(self) -> u32 {
        match self {
            Mode::Advisory => 50,
            Mode::Table => 10,
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

/// How a [`PostgresBackend`] connects and behaves: parsed from a
/// `postgres://` URL ([`PostgresConfig::from_url`]) or built in code
/// ([`PostgresConfig::new`] and the setters), then
/// [`PostgresBackend::connect_with`].
///
/// Defaults: mode advisory, namespace `""`, schema `public`, the mode's
/// default table, channel `leasehold_release`, `timeout` 5 s per call, no
/// `poll` cap (the wait policy's own delays), `holder` this process's host
/// and pid, drift [`Drift::default`], a lazily filled pool of at most 50
/// connections in advisory mode (one per held lock) and 10 in table mode,
/// migrations on.
///
/// `timeout_ms` (a bare number of milliseconds) is refused, not an alias: a
/// duration names its unit (`timeout=250ms`).
#[derive(Clone)]
pub struct PostgresConfig {
    /// The sqlx URL (leasehold's options removed); `None` for a config used
    /// with [`PostgresBackend::from_pool`].
    url: Option<String>,
    shared: SharedConfig,
    mode: Mode,
    schema: String,
    table: Option<String>,
    channel: String,
    max_connections: Option<u32>,
    migrate: bool,
    clock: SharedClock,
}

impl fmt::Debug for PostgresConfig {
    // The URL may hold a password: shown only redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("shared", &self.shared)
            .field("mode", &self.mode)
            .field("schema", &self.schema)
            .field("table", &self.table_name())
            .field("channel", &self.channel)
            .field("max_connections", &self.max_connections_of())
            .field("migrate", &self.migrate)
            .finish_non_exhaustive()
    }
}

impl PostgresConfig {
    /// Defaults for `mode`, without a URL: give one with
    /// [`url`](Self::url), or hand the config to
    /// [`PostgresBackend::from_pool`].
    pub fn new(mode: Mode) -> Self {
        PostgresConfig {
            url: None,
            shared: SharedConfig::default(),
            mode,
            schema: "public".into(),
            table: None,
            channel: "leasehold_release".into(),
            max_connections: None,
            migrate: true,
            clock: system_clock(),
        }
    }

    /// The server to connect to: a plain sqlx URL (its query is sqlx's, and
    /// checked by sqlx when connecting). To read leasehold's options from a
    /// URL too, use [`from_url`](Self::from_url).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }
    /// The mode (option `mode=advisory|table`).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }
    leasehold_core::shared_setters!();

    /// The schema of the crate's table (option `schema`; created if missing,
    /// unless it is `public`).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }
    /// The table name (option `table`; default [`Mode::default_table`]).
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = Some(table.into());
        self
    }
    /// The LISTEN/NOTIFY channel for release signals (option `channel`).
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }
    /// Pool size when the backend builds its own pool (option
    /// `max_connections`; default 50 in advisory mode, 10 in table mode). In
    /// advisory mode every held lease pins one session, so this bounds how
    /// many locks one backend can hold at once (pinned sessions have a
    /// private pool of this size; the backend's own pool, of the same size,
    /// serves `inspect` and migrations and opens connections only when used).
    /// Beside these, one connection LISTENs for release signals while a
    /// call waits, and in advisory mode one holds the marks of waiters that
    /// could not queue in the server, once such a waiter has waited.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = Some(n);
        self
    }
    /// Whether connecting runs the idempotent migration (option `migrate`;
    /// default true).
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }
    /// The clock for `valid_until` (inject a `TestClock` in tests).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The mode.
    pub fn mode_of(&self) -> Mode {
        self.mode
    }
    /// The namespace in use (`""` unless set).
    pub fn namespace_str(&self) -> &str {
        self.shared.namespace.as_deref().unwrap_or("")
    }
    /// The table name in use.
    pub fn table_name(&self) -> &str {
        self.table
            .as_deref()
            .unwrap_or_else(|| self.mode.default_table())
    }
    /// The pool size in use.
    pub fn max_connections_of(&self) -> u32 {
        self.max_connections
            .unwrap_or_else(|| self.mode.default_max_connections())
    }
    /// The sqlx URL (leasehold's options removed), if any. It holds the
    /// password: never log it.
    pub fn sqlx_url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// The settings a backend runs with (defaults filled in), unchecked.
    pub(crate) fn settings(&self) -> Settings {
        let shared = &self.shared;
        Settings {
            mode: self.mode,
            namespace: self.namespace_str().to_owned(),
            schema: self.schema.clone(),
            table: self.table_name().to_owned(),
            channel: self.channel.clone(),
            timeout: shared.timeout.unwrap_or(Duration::from_secs(5)),
            poll: shared.poll,
            max_connections: self.max_connections_of(),
            migrate: self.migrate,
            holder: shared.holder_or_default(),
            clock: self.clock.clone(),
            drift: shared.drift.unwrap_or_default(),
        }
    }

    /// Reads leasehold's query parameters from a `postgres://` URL and keeps
    /// the URL, with those removed, for sqlx (as
    /// [`BackendConfig::from_url`], without importing the trait).
    pub fn from_url(url: &str) -> Result<Self, LockError> {
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
        let scheme = parsed.scheme().to_owned();
        if !Self::SCHEMES.contains(&scheme.as_str()) {
            return Err(LockError::Config(format!(
                "the URL scheme must be postgres or postgresql, not {scheme:?}"
            )));
        }
        let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
        let mut config = PostgresConfig::new(Mode::Advisory);
        let mut rest = Vec::new();
        let own = |name: &str, value: &str| -> Result<bool, LockError> {
            match name {
                "mode" => config.mode = value.parse()?,
                "schema" => config.schema = value.to_owned(),
                "table" => config.table = Some(value.to_owned()),
                "channel" => config.channel = value.to_owned(),
                "max_connections" => config.max_connections = Some(config::number(name, value)?),
                "migrate" => config.migrate = config::boolean(name, value)?,
                sqlx if SQLX_OPTIONS.contains(&sqlx) || sqlx.starts_with("options[") => {
                    rest.push((name.to_owned(), value.to_owned()))
                }
                _ => return Ok(false),
            }
            Ok(true)
        };
        let mut shared = SharedConfig::default();
        let known: Vec<&str> = Self::OPTIONS.iter().chain(SQLX_OPTIONS).copied().collect();
        apply_query(
            &scheme,
            pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            &mut shared,
            &known,
            own,
        )?;
        config.shared = shared;
        crate::tls::check(&mut rest)?;
        if rest.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(rest);
        }
        config.settings().validate()?;
        config.url = Some(parsed.into());
        Ok(config)
    }
}

impl BackendConfig for PostgresConfig {
    type Backend = PostgresBackend;
    const SCHEMES: &'static [&'static str] = &["postgres", "postgresql"];
    /// leasehold's own Postgres options; the ones sqlx reads
    /// ([`SQLX_OPTIONS`], besides `options[NAME]`) pass through to it.
    const OPTIONS: &'static [&'static str] = &[
        "mode",
        "schema",
        "table",
        "channel",
        "max_connections",
        "migrate",
    ];

    /// Reads leasehold's query parameters and keeps the URL, with those
    /// removed, for sqlx. Shared options (`namespace`, `timeout`, `poll`,
    /// `holder`, `drift_factor`, `drift_fixed`) and the locker's (`ttl`,
    /// `wait`, ...) are accepted everywhere; this backend's own are `mode`
    /// (`advisory`, the default, or `table`), `schema`, `table`, `channel`,
    /// `max_connections` and `migrate`; the parameters sqlx reads
    /// ([`SQLX_OPTIONS`]: `sslmode`, `application_name`, `options`, ...) pass
    /// through to it, the TLS ones (`sslmode`, `sslrootcert`, `sslcert`,
    /// `sslkey`) checked first: an unknown mode or a TLS file that cannot be
    /// read or holds no usable PEM is a [`LockError::Config`] naming the
    /// option and the path (see the crate docs' TLS section). Any other name is a [`LockError::Config`] naming the
    /// closest known one: a typo such as `mod=table` must never run in the
    /// default mode. Errors never show the URL's password.
    fn from_url(url: &str) -> Result<Self, LockError> {
        // The inherent function of the same name.
        PostgresConfig::from_url(url)
    }

    fn shared(&self) -> &SharedConfig {
        &self.shared
    }

    fn shared_mut(&mut self) -> &mut SharedConfig {
        &mut self.shared
    }

    async fn connect(self) -> Result<PostgresBackend, LockError> {
        PostgresBackend::connect_with(self).await
    }
}

/// The URL options sqlx 0.8 reads (passed through to it), besides
/// `options[NAME]`. sqlx itself only logs a warning for names it does not
/// know, so leasehold rejects them instead. The TLS ones are checked before
/// they pass ([`SSL_MODES`](crate::SSL_MODES), readable PEM files).
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
    let known: Vec<&str> = SharedConfig::NAMES
        .iter()
        .chain(PostgresConfig::OPTIONS)
        .chain(SQLX_OPTIONS)
        .chain(config::LOCKER_OPTIONS)
        .copied()
        .collect();
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

/// What a backend runs with: a [`PostgresConfig`] with its defaults filled
/// in.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) mode: Mode,
    pub(crate) namespace: String,
    pub(crate) schema: String,
    pub(crate) table: String,
    pub(crate) channel: String,
    pub(crate) timeout: Duration,
    pub(crate) poll: Option<Duration>,
    pub(crate) max_connections: u32,
    pub(crate) migrate: bool,
    pub(crate) holder: String,
    pub(crate) clock: SharedClock,
    pub(crate) drift: Drift,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("mode", &self.mode)
            .field("namespace", &self.namespace)
            .field("table", &self.qualified_table())
            .field("channel", &self.channel)
            .field("timeout", &self.timeout)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl Settings {
    pub(crate) fn validate(&self) -> Result<(), LockError> {
        for (what, name) in [
            ("schema", self.schema.as_str()),
            ("table", self.table.as_str()),
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
        if self.timeout.is_zero() || self.timeout > MAX_DURATION {
            return Err(LockError::Config(format!(
                "the operation timeout must be positive and at most one year, not {:?}",
                self.timeout
            )));
        }
        if self.poll.is_some_and(|poll| poll.is_zero()) {
            return Err(LockError::Config("poll must be positive".into()));
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
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }

    /// `"schema"."<table>_shared"`: the shared-grant table, in the lease
    /// table's schema: one counter row per reader–writer lock or semaphore
    /// (`owner` empty), and in table mode one row per holder and per waiting
    /// writer.
    pub(crate) fn qualified_shared_table(&self) -> String {
        self.qualified_sibling("_shared")
    }

    /// `"schema"."<table><suffix>"`: a table the crate keeps beside the
    /// counter table ([`sibling_table_name`]).
    pub(crate) fn qualified_sibling(&self, suffix: &str) -> String {
        format!(
            "{}.{}",
            quote_ident(&self.schema),
            quote_ident(&sibling_table_name(&self.table, suffix))
        )
    }
}

/// `<table><suffix>`. A table name too long for the suffix within Postgres'
/// 63 bytes is shortened and made unique by a hash of the whole name
/// (Postgres would otherwise cut the suffix off silently, naming the table
/// itself).
pub(crate) fn sibling_table_name(table: &str, suffix: &str) -> String {
    if table.len() + suffix.len() <= 63 {
        return format!("{table}{suffix}");
    }
    let hash = Sha256::digest(table.as_bytes());
    let mut cut = 63 - suffix.len() - 9;
    while !table.is_char_boundary(cut) {
        cut -= 1;
    }
    let tag: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}_{tag}{suffix}", &table[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(table: &str) -> String {
        sibling_table_name(table, "_shared")
    }

    #[test]
    fn sibling_table_names_fit_and_stay_distinct() {
        assert_eq!(shared("leasehold_leases"), "leasehold_leases_shared");
        let long_a = "a".repeat(63);
        let long_b = format!("{}b", "a".repeat(62));
        let (a, b) = (shared(&long_a), shared(&long_b));
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert_ne!(a, b);
        assert_ne!(a, long_a);
        let wide = "é".repeat(31);
        assert!(shared(&wide).len() <= 63);
    }

    #[test]
    fn url_parameters_are_read_and_removed() {
        let config = PostgresConfig::from_url(
            "postgres://u:p@127.0.0.1:5432/db?mode=table&namespace=app&sslmode=disable&timeout=250ms&table=my%22t&ttl=2s&poll=50ms",
        )
        .unwrap();
        let settings = config.settings();
        assert_eq!(settings.mode, Mode::Table);
        assert_eq!(settings.max_connections, 10, "table mode's default pool");
        assert_eq!(settings.namespace, "app");
        assert_eq!(settings.timeout, Duration::from_millis(250));
        assert_eq!(settings.poll, Some(Duration::from_millis(50)));
        assert_eq!(settings.qualified_table(), r#""public"."my""t""#);
        assert_eq!(
            config.sqlx_url(),
            Some("postgres://u:p@127.0.0.1:5432/db?sslmode=disable")
        );
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
            "postgres://h/db?poll=0s",
        ] {
            assert!(
                matches!(PostgresConfig::from_url(url), Err(LockError::Config(_))),
                "{url} should be rejected"
            );
        }
    }
}
