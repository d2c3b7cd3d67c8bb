//! [`MysqlConfig`]: the URL options, the builder, and the settings a backend
//! resolves from them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use leasehold_core::config::{
    self, BackendConfig, MAX_DURATION, SharedConfig, apply_query, redact_url,
};
use leasehold_core::{Drift, LockError, SharedClock, system_clock};

use crate::MysqlBackend;
use crate::keys::quote_ident;

/// The shortest TTL accepted (both modes).
pub const MIN_TTL: Duration = Duration::from_millis(1);
/// The longest TTL accepted in table mode: one year
/// ([`leasehold_core::config::MAX_DURATION`], the bound on every store).
pub const MAX_TTL: Duration = MAX_DURATION;
/// The longest TTL accepted in named mode: 365 days, the largest
/// `wait_timeout` MySQL accepts on every platform (31 536 000 s).
pub const MAX_NAMED_TTL: Duration = Duration::from_secs(31_536_000);

/// The backend's name in named mode.
pub(crate) const NAMED: &str = "mysql-named";
/// The backend's name in table mode.
pub(crate) const TABLE: &str = "mysql-table";

/// Which MySQL mechanism carries the locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `GET_LOCK` on a session pinned to the lease; a fencing counter row per
    /// key. The lock lasts as long as the session
    /// ([`Expiry::Session`](leasehold_core::Expiry::Session)), which is
    /// watched: its end fires the lease's loss signal at once.
    Named,
    /// A lease table whose rows expire by the database clock
    /// ([`Expiry::Ttl`](leasehold_core::Expiry::Ttl)); works behind any
    /// connection pooler or proxy.
    Table,
}

impl Mode {
    /// The table a mode uses unless told otherwise.
    pub fn default_table(self) -> &'static str {
        match self {
            Mode::Named => "leasehold_fencing",
            Mode::Table => "leasehold_leases",
        }
    }

    /// The backend's name ([`LockBackend::name`](leasehold_core::LockBackend::name))
    /// in this mode.
    pub(crate) fn backend_name(self) -> &'static str {
        match self {
            Mode::Named => NAMED,
            Mode::Table => TABLE,
        }
    }

    fn default_max_connections(self) -> u32 {
        match self {
            Mode::Named => 50,
            Mode::Table => 10,
        }
    }
}

impl FromStr for Mode {
    type Err = LockError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "named" => Ok(Mode::Named),
            "table" => Ok(Mode::Table),
            other => Err(LockError::Config(format!(
                "mode must be `named` or `table`, not {other:?}"
            ))),
        }
    }
}

/// How a [`MysqlBackend`] connects and behaves: parsed from a `mysql://` or
/// `mariadb://` URL ([`MysqlConfig::from_url`]) or built in code
/// ([`MysqlConfig::new`] and the setters), then
/// [`MysqlBackend::connect_with`].
///
/// Defaults: mode named, namespace `""`, the URL's database, the mode's
/// default table, `timeout` 5 s per call, no `poll` cap (the wait policy's
/// own delays), `holder` this process's host and pid, drift
/// [`Drift::default`], a lazily filled pool of at most 50 connections in
/// named mode (each held lock pins one, and its watcher another, from pools
/// of that size) and 10 in table mode, migrations on.
#[derive(Clone)]
pub struct MysqlConfig {
    /// The sqlx URL (leasehold's options removed); `None` for a config used
    /// with [`MysqlBackend::from_pool`].
    url: Option<String>,
    shared: SharedConfig,
    mode: Mode,
    table: Option<String>,
    max_connections: Option<u32>,
    migrate: bool,
    clock: SharedClock,
}

impl fmt::Debug for MysqlConfig {
    // The URL may hold a password: shown only redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("shared", &self.shared)
            .field("mode", &self.mode)
            .field("table", &self.table_name())
            .field("max_connections", &self.max_connections_of())
            .field("migrate", &self.migrate)
            .finish_non_exhaustive()
    }
}

impl MysqlConfig {
    /// Defaults for `mode`, without a URL: give one with [`url`](Self::url),
    /// or hand the config to [`MysqlBackend::from_pool`].
    pub fn new(mode: Mode) -> Self {
        MysqlConfig {
            url: None,
            shared: SharedConfig::default(),
            mode,
            table: None,
            max_connections: None,
            migrate: true,
            clock: system_clock(),
        }
    }

    /// The server to connect to: a plain sqlx `mysql://` URL (its query is
    /// sqlx's). To read leasehold's options from a URL too, use
    /// [`from_url`](Self::from_url).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }
    /// The mode (option `mode=named|table`).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }
    leasehold_core::shared_setters!();

    /// The table name, in the connection's database (option `table`; default
    /// [`Mode::default_table`]).
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = Some(table.into());
        self
    }
    /// Pool size when the backend builds its own pool (option
    /// `max_connections`; default 50 in named mode, 10 in table mode). In
    /// named mode every held lease pins one session (and one watcher), so
    /// this bounds how many locks one backend can hold at once.
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
            table: self.table_name().to_owned(),
            timeout: shared.timeout.unwrap_or(Duration::from_secs(5)),
            poll: shared.poll,
            max_connections: self.max_connections_of(),
            migrate: self.migrate,
            holder: shared.holder_or_default(),
            clock: self.clock.clone(),
            drift: shared.drift.unwrap_or_default(),
        }
    }

    /// Reads leasehold's query parameters from a `mysql://` or `mariadb://`
    /// URL and keeps the URL, with those removed and the scheme `mysql`, for
    /// sqlx (as [`BackendConfig::from_url`], without importing the trait).
    pub fn from_url(url: &str) -> Result<Self, LockError> {
        // The error never repeats the URL: a malformed one may hide its
        // password where no redaction can find it.
        let mut parsed = url::Url::parse(url).map_err(|e| {
            LockError::Config(format!(
                "not a URL ({e}); expected mysql://user:password@host:port/database?options"
            ))
        })?;
        let scheme = parsed.scheme().to_owned();
        if !Self::SCHEMES.contains(&scheme.as_str()) {
            return Err(LockError::Config(format!(
                "the URL scheme must be mysql or mariadb, not {scheme:?}"
            )));
        }
        let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
        let mut config = MysqlConfig::new(Mode::Named);
        let mut rest = Vec::new();
        let own = |name: &str, value: &str| -> Result<bool, LockError> {
            match name {
                "mode" => config.mode = value.parse()?,
                "table" => config.table = Some(value.to_owned()),
                "max_connections" => config.max_connections = Some(config::number(name, value)?),
                "migrate" => config.migrate = config::boolean(name, value)?,
                sqlx if SQLX_OPTIONS.contains(&sqlx) => {
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
        if rest.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(rest);
        }
        if parsed.set_scheme("mysql").is_err() {
            return Err(LockError::Config("cannot use this URL as mysql://".into()));
        }
        config.settings().validate()?;
        config.url = Some(parsed.into());
        Ok(config)
    }
}

impl BackendConfig for MysqlConfig {
    type Backend = MysqlBackend;
    const SCHEMES: &'static [&'static str] = &["mysql", "mariadb"];
    /// leasehold's own MySQL options; the ones sqlx reads ([`SQLX_OPTIONS`])
    /// pass through to it.
    const OPTIONS: &'static [&'static str] = &["mode", "table", "max_connections", "migrate"];

    /// Reads leasehold's query parameters and keeps the URL, with those
    /// removed, for sqlx. Shared options (`namespace`, `timeout`, `poll`,
    /// `holder`, `drift_factor`, `drift_fixed`) and the locker's (`ttl`,
    /// `wait`, ...) are accepted everywhere; this backend's own are `mode`
    /// (`named`, the default, or `table`), `table`, `max_connections` and
    /// `migrate`; the parameters sqlx reads ([`SQLX_OPTIONS`]: `ssl-mode`,
    /// `ssl-ca`, ...) pass through to it. Any other name is a
    /// [`LockError::Config`] naming the closest known one. Errors never show
    /// the URL's password.
    fn from_url(url: &str) -> Result<Self, LockError> {
        MysqlConfig::from_url(url)
    }

    fn shared(&self) -> &SharedConfig {
        &self.shared
    }

    fn shared_mut(&mut self) -> &mut SharedConfig {
        &mut self.shared
    }

    async fn connect(self) -> Result<MysqlBackend, LockError> {
        MysqlBackend::connect_with(self).await
    }
}

/// The URL options sqlx 0.8 reads for MySQL (passed through to it). sqlx
/// ignores names it does not know, so leasehold rejects them instead. TLS:
/// `ssl-mode=required|verify_ca|verify_identity` with `ssl-ca`, and
/// `ssl-cert`/`ssl-key` for a client certificate (rustls).
pub const SQLX_OPTIONS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslca",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "charset",
    "collation",
    "statement-cache-capacity",
    "socket",
    "timezone",
    "time-zone",
];

/// What a backend runs with: a [`MysqlConfig`] with its defaults filled in.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) mode: Mode,
    pub(crate) namespace: String,
    pub(crate) table: String,
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
            .field("table", &self.table)
            .field("timeout", &self.timeout)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl Settings {
    pub(crate) fn validate(&self) -> Result<(), LockError> {
        if self.table.is_empty() || self.table.len() > 64 || self.table.contains('\0') {
            return Err(LockError::Config(format!(
                "table name {:?} must be 1 to 64 bytes without NUL",
                self.table
            )));
        }
        if self.namespace.len() > 1024 {
            return Err(LockError::Config(
                "the namespace must be at most 1024 bytes".into(),
            ));
        }
        if self.holder.len() > 1024 {
            return Err(LockError::Config(
                "the holder must be at most 1024 bytes".into(),
            ));
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

    /// Refuses a table name too long to take `suffix` (MySQL names are at
    /// most 64 characters); `holds` says what `<table><suffix>` holds.
    pub(crate) fn check_suffix(&self, suffix: &str, holds: &str) -> Result<(), LockError> {
        let name = format!("{}{suffix}", self.table);
        if name.chars().count() > 64 {
            return Err(LockError::Config(format!(
                "table name {:?} is too long: {name:?}, which holds {holds}, must be at \
                 most 64 characters",
                self.table
            )));
        }
        Ok(())
    }

    /// The table, quoted as an identifier (in the connection's database).
    pub(crate) fn quoted_table(&self) -> String {
        quote_ident(&self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parameters_are_read_and_removed() {
        let config = MysqlConfig::from_url(
            "mariadb://u:p@127.0.0.1:3306/db?mode=table&namespace=app&ssl-mode=disabled&timeout=250ms&table=my%60t&ttl=2s&poll=50ms",
        )
        .unwrap();
        let settings = config.settings();
        assert_eq!(settings.mode, Mode::Table);
        assert_eq!(settings.max_connections, 10, "table mode's default pool");
        assert_eq!(settings.namespace, "app");
        assert_eq!(settings.timeout, Duration::from_millis(250));
        assert_eq!(settings.poll, Some(Duration::from_millis(50)));
        assert_eq!(settings.quoted_table(), "`my``t`");
        assert_eq!(
            config.sqlx_url(),
            Some("mysql://u:p@127.0.0.1:3306/db?ssl-mode=disabled")
        );
        let debug = format!("{config:?}");
        assert!(!debug.contains(":p@"), "the password leaked: {debug}");
    }

    #[test]
    fn bad_url_options_are_config_errors() {
        for url in [
            "mysql://h/db?mode=advisory",
            "mysql://h/db?timeout=soon",
            "mysql://h/db?timeout=0s",
            "mysql://h/db?timeout=250",
            "mysql://h/db?mod=table",
            "postgres://h/db",
            "mysql://h/db?table=",
            "mysql://h/db?poll=0s",
            "mysql://h/db?max_connections=0",
        ] {
            assert!(
                matches!(MysqlConfig::from_url(url), Err(LockError::Config(_))),
                "{url} should be rejected"
            );
        }
    }
}
